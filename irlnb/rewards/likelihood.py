"""The white-box reward: how much more likely the aligned policy finds a text than its base did.

For KL-regularised RLHF the optimal policy is pi_ref * exp(R / beta) / Z(x), so at the optimum
log pi(y | x) - log pi_ref(y | x) = R(x, y) / beta - log Z(x): the reward, up to a per-prompt shift
and a scale. `LogRatioReward` reads it off two models that share a tokenizer:
- `score_pairs(prompts, continuations)`: the log-ratio of the continuation given the prompt;
- `score(texts)`: the log-ratio of a whole text (every token after the first).
It needs the expert's weights (a best-of-n policy has none). Saved with `save`, loaded by
`irlnb.rewards.features.load_reward` like any reward.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from irlnb.compute import frozen_cached
from irlnb.errors import IrlnbError
from irlnb.models.policies import encode_prompts, load_policy, policy_dir, weights_sha256
from irlnb.progress import tracked

LOG_RATIO_CONFIG = "log_ratio.json"


class LogRatioError(IrlnbError, ValueError):
    """A log-ratio reward that cannot be made or used; the message is one line."""


class TokenizerMismatch(LogRatioError):
    """Two models whose tokens do not mean the same thing."""


@dataclass(frozen=True)
class LogRatioSpec:
    expert: str  # policy sources (local:PATH, embedded:NAME, hub:ID)
    base: str
    expert_sha256: str
    base_sha256: str
    dtype: str = "float32"
    max_length: int = 128
    kind: str = "log_ratio"


def check_same_tokenizer(expert_tokenizer, base_tokenizer, expert_model, base_model, names: tuple[str, str]) -> None:
    """Refuse two models whose vocabularies differ: a log-ratio of different token sequences means nothing."""
    if expert_tokenizer.get_vocab() != base_tokenizer.get_vocab():
        raise TokenizerMismatch(
            f"{names[0]} and {names[1]} have different tokenizers "
            f"({len(expert_tokenizer)} vs {len(base_tokenizer)} tokens); a log-likelihood ratio "
            "needs both models to read the same tokens"
        )
    if expert_model.config.vocab_size != base_model.config.vocab_size:
        raise TokenizerMismatch(
            f"{names[0]} and {names[1]} have output vocabularies of "
            f"{expert_model.config.vocab_size} and {base_model.config.vocab_size} tokens"
        )


def token_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1, [batch, length - 1], zero where t is padding."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return picked_log_probs(logits, input_ids[:, 1:]) * attention_mask[:, 1:]


def picked_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32 at each position, [batch, length]: normalised over the vocabulary one
    sequence at a time. Each position's normalisation is its own, so the numbers are those of one pass over the
    batch, bit for bit, without a float32 copy of every logit of the batch and its log-softmax (a third of a
    white-box pass's time on the 2-core EPYC: `irlnb bench`, `log_probs.*`)."""
    return torch.stack(
        [
            torch.log_softmax(row.float(), dim=-1).gather(-1, target[:, None]).squeeze(-1)
            for row, target in zip(logits, targets)
        ]
    )


def continuation_rows(tokenizer, prompts: list[str], continuations: list[str], max_length: int | None = None):
    """Per text, the token ids of prompt + continuation (the prompt as a model reads the start of a text) and which
    of them are the continuation's (1) and so scored, both cut at `max_length` tokens (None: not cut)."""
    prompt_ids = encode_prompts(tokenizer, prompts)
    continuation_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    return [
        ((p + c)[:max_length], ([0] * len(p) + [1] * len(c))[:max_length])
        for p, c in zip(prompt_ids, continuation_ids, strict=True)
    ]


def padded_rows(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of (ids, scored) right-padded to the longest: ids, attention mask and scored mask."""
    width = max(len(row_ids) for row_ids, _ in rows)
    gaps = [width - len(row_ids) for row_ids, _ in rows]
    ids = torch.tensor([row_ids + [pad_id] * gap for (row_ids, _), gap in zip(rows, gaps)])
    mask = torch.tensor([[1] * (width - gap) + [0] * gap for gap in gaps])
    scored = torch.tensor([list(flags) + [0] * gap for (_, flags), gap in zip(rows, gaps)])
    return ids, mask, scored


def continuation_log_probs(model, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """log p(continuation | prompt) per row: the scored tokens' log-probabilities summed (differentiable). The
    output layer projects only the positions that predict a scored token (`projecting_only`), not the prompt's and
    the padding's: a third of a training batch's positions or more, with the log-softmax over the vocabulary at
    each. The sums agree with every position's projected to float rounding (tests/test_infonca.py)."""
    targets = scored[:, 1:].bool()
    with projecting_only(model, torch.nn.functional.pad(targets, (0, 1))):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [scored tokens, vocabulary]
    picked = picked_log_probs(logits[None], ids[:, 1:][targets][None])[0]
    return torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device).masked_scatter(targets, picked).sum(1)


@contextmanager
def projecting_only(model, positions: torch.Tensor) -> Iterator[None]:
    """While open, `model`'s output layer projects only the hidden states at `positions` ([batch, length], bool),
    in row-major order: its logits are [positions, vocabulary]. The layer's input is selected before it runs, so a
    model's own scaling of logits (Gemma's soft cap) applies unchanged. `model` may be wrapped (DDP, PEFT)."""
    from accelerate.utils import extract_model_from_parallel

    head = extract_model_from_parallel(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _layer, args: (args[0][positions], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class LogRatioReward:
    """R(x, y) = log pi_expert(y | x) - log pi_base(y | x), summed over tokens."""

    def __init__(self, spec: LogRatioSpec, expert, base, tokenizer):
        self.spec, self.expert, self.base, self.tokenizer = spec, expert.eval(), base.eval(), tokenizer

    @classmethod
    def from_sources(
        cls, expert: str, base: str, dtype: str = "float32", device: str = "cpu", max_length: int = 128
    ) -> LogRatioReward:
        expert_model, expert_tokenizer = load_policy(expert, device=device, dtype=dtype)
        base_model, base_tokenizer = load_policy(base, device=device, dtype=dtype)
        check_same_tokenizer(expert_tokenizer, base_tokenizer, expert_model, base_model, (expert, base))
        spec = LogRatioSpec(
            expert, base, weights_sha256(policy_dir(expert)), weights_sha256(policy_dir(base)), dtype, max_length
        )
        return cls(spec, expert_model, base_model, base_tokenizer)

    def _batches(self, prompts: list[str], continuations: list[str], batch_size: int):
        """Right-padded prompt + continuation ids, with the mask of the tokens scored (the continuation's)."""
        rows = continuation_rows(self.tokenizer, prompts, continuations, self.spec.max_length)
        order = np.argsort([len(ids) for ids, _ in rows], kind="stable")
        starts = range(0, len(rows), batch_size)
        for start in tracked(starts, len(starts), f"log-ratio of {len(rows)} texts"):
            index = order[start : start + batch_size]
            yield (index, *padded_rows([rows[i] for i in index], self.tokenizer.pad_token_id))

    def log_likelihoods(self, model, prompts: list[str], continuations: list[str], batch_size: int) -> torch.Tensor:
        """[2, n]: one model's log-likelihood of each whole text (every token after the first) and of its
        continuation given its prompt, summed in float64."""
        out = torch.zeros(2, len(prompts), dtype=torch.float64)
        device = next(model.parameters()).device
        with torch.inference_mode():
            for index, ids, mask, scored in self._batches(prompts, continuations, batch_size):
                log_probs = token_log_probs(model, ids.to(device), mask.to(device)).double().cpu()
                out[0, index] = log_probs.sum(dim=1)
                out[1, index] = (log_probs * scored[:, 1:]).sum(dim=1)
        return out

    def gaps(
        self, prompts: list[str], continuations: list[str], batch_size: int = 16, cache_dir: Path | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The log-ratio of each whole text (every token after the first) and of its continuation given its prompt.
        With `cache_dir` the base's log-likelihoods are kept there (`frozen_cached`): the base is frozen, so the
        texts every expert is judged on (human texts, the base's own samples) are read through it once."""

        def base() -> torch.Tensor:
            return self.log_likelihoods(self.base, prompts, continuations, batch_size)

        if cache_dir is not None:
            key = {
                "base_sha256": self.spec.base_sha256,
                "dtype": self.spec.dtype,
                "max_length": self.spec.max_length,
                "device": next(self.base.parameters()).device.type,
                "batch_size": batch_size,
                "prompts": list(prompts),
                "continuations": list(continuations),
            }
            base_values = frozen_cached(
                cache_dir, "base-log-likelihoods", key, base, lambda kept: kept.shape == (2, len(prompts))
            )
        else:
            base_values = base()
        whole, given = (self.log_likelihoods(self.expert, prompts, continuations, batch_size) - base_values).numpy()
        return whole, given

    def score_pairs(self, prompts: list[str], continuations: list[str], batch_size: int = 16) -> np.ndarray:
        """The log-ratio of each continuation given its prompt (prompt tokens are conditioned on, not scored)."""
        return self.gaps(prompts, continuations, batch_size)[1]

    def score(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        """The log-ratio of whole texts (every token after the first is scored)."""
        return self.gaps([""] * len(texts), list(texts), batch_size)[0]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LOG_RATIO_CONFIG).write_text(json.dumps(asdict(self.spec), indent=2))
        return folder


def load_log_ratio(folder: Path, device: str = "cpu") -> LogRatioReward:
    """A saved log-ratio reward, refused if either model's weights changed since."""
    spec = LogRatioSpec(**json.loads((Path(folder) / LOG_RATIO_CONFIG).read_text()))
    for role, source, sha in (("expert", spec.expert, spec.expert_sha256), ("base", spec.base, spec.base_sha256)):
        if weights_sha256(policy_dir(source)) != sha:
            raise LogRatioError(f"{folder}: the {role} {source} is not the model the reward was made with")
    return LogRatioReward.from_sources(spec.expert, spec.base, spec.dtype, device, spec.max_length)
