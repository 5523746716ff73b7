"""Rewards on a causal-LM backbone: R(x) = w . phi(x) + b, with phi a pooled hidden state.

The learned reward of notebook 04 and the random baseline reward of notebook 03 are both of this
form, so they read the same features. Which hidden states feed the head is a setting: the paper's
choice (final layer, last non-padding token, `pooling="last"`) or the mean over tokens at a chosen
layer (`pooling="mean"`). A saved reward holds the head, its config, and the backbone's sha256;
`load_reward` refuses a reward whose backbone files are not the ones it was made on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from irlnb.data.assets import sha256_of
from irlnb.errors import IrlnbError
from irlnb.models.policies import load_policy, policy_dir, weights_sha256
from irlnb.progress import tracked
from irlnb.rewards.likelihood import LOG_RATIO_CONFIG, load_log_ratio

REWARD_CONFIG = "reward.json"
REWARD_HEAD = "head.safetensors"
REWARD_POSTERIOR = "posterior.safetensors"
POOLINGS = ("last", "mean")


class RewardLoadError(IrlnbError, RuntimeError):
    """A saved reward that cannot be used; the message is one line."""


@dataclass(frozen=True)
class RewardSpec:
    """What a saved reward is: its backbone source and fingerprint, and how features are read."""

    backbone: str  # a source spec, e.g. "embedded:smollm2-135m-instruct"
    backbone_sha256: str
    pooling: str  # irl.pooling or random_reward.pooling
    layer: int  # output of decoder block `layer` (1-based); -1 = the final, normed hidden state
    max_length: int  # longest text read, in tokens
    kind: str  # "learned" or "random" (the name is kept: saved rewards and the random policy's training key hold it)
    dtype: str  # the backbone's dtype when the features were read (the head is float32)


def score_tolerance(dtype: str, spread: float) -> float:
    """How far two computations of the same reward on the same text may differ.

    float32 gives the same score in any batch (measured: 3e-6). bfloat16 rounding shifts with the
    padding a text gets in its batch: measured up to 0.2 SD of the scores over 1,000 texts, with
    correlation 0.9999. A wrong head, layer or pooling differs by about the spread itself.
    """
    return (0.25 if dtype == "bfloat16" else 1e-3) * spread + 1e-5


@dataclass(frozen=True)
class HeadPosterior:
    """A Gaussian posterior over the head's weights on raw features: Var R(x) = (x - c)^T covariance (x - c)."""

    centre: torch.Tensor  # [d]
    covariance: torch.Tensor  # [d, d]

    def std(self, features: torch.Tensor) -> np.ndarray:
        x = features.double() - self.centre.double()
        return torch.sqrt(torch.clamp(((x @ self.covariance.double()) * x).sum(dim=1), min=0.0)).numpy()


class FeatureReward:
    """A linear head on pooled backbone hidden states; `.score(texts)` returns a numpy array.

    With a posterior over the head (`irlnb.irl.posterior`), `.score(texts, return_std=True)` also
    returns each text's posterior standard deviation: wide where a text lies far from the demonstrations (it was
    measured not to flag the scores whose sign is wrong).
    """

    def __init__(
        self, spec: RewardSpec, backbone, tokenizer, head: torch.nn.Linear, posterior: HeadPosterior | None = None
    ):
        if spec.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {spec.pooling!r}")
        self.spec, self.backbone, self.tokenizer, self.head = spec, backbone.eval(), tokenizer, head
        self.posterior = posterior
        self.backbone.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def features(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Pooled hidden states [n, d] (float32), length-sorted batches, in the callers' order."""
        form = (self.spec.layer, self.spec.pooling)
        return self.features_at(texts, [form], batch_size)[form]

    def per_text(self, texts: list[str], batch_size: int, what: str, read) -> torch.Tensor:
        """`read(batch)` (one row per text) of `texts` tokenized as the reward reads them, in length-sorted batches
        without gradients, returned on the CPU in the callers' order."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        parts = []
        with torch.inference_mode():
            for start in tracked(starts, len(starts), f"{what} of {len(texts)} texts"):
                parts.append(read(self.tokenize([texts[i] for i in order[start : start + batch_size]])).cpu())
        return torch.cat(parts)[torch.as_tensor(np.argsort(order, kind="stable"))]

    def tokenize(self, texts: list[str]):
        """A padded batch (the text's start is kept when it is longer than max_length)."""
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.spec.max_length
        ).to(self.device)
        if batch["attention_mask"].sum(dim=1).min() == 0:
            raise ValueError("an empty text has no token to read a reward from")
        return batch

    def pooled(self, batch) -> torch.Tensor:
        """The pooled features of a tokenized batch (differentiable when the backbone is trained)."""
        hidden = hidden_at(self.backbone, batch, self.spec.layer)
        return pool(hidden.float(), batch["attention_mask"], self.spec.pooling)

    def features_at(
        self, texts: list[str], forms: list[tuple[int, str]], batch_size: int = 32
    ) -> dict[tuple[int, str], torch.Tensor]:
        """`features(texts)` of this reward read at each (layer, pooling) of `forms` instead of its own, from one
        forward pass per batch (the same batches, so the same numbers as reading each form alone)."""
        texts, width = list(texts), self.head.in_features
        if not texts:
            return {form: torch.zeros(0, width) for form in forms}
        layers = list(dict.fromkeys(layer for layer, _ in forms))

        def pooled_at_each(batch) -> torch.Tensor:
            hidden = hidden_at_layers(self.backbone, batch, layers)
            mask = batch["attention_mask"]
            return torch.cat([pool(hidden[layer].float(), mask, pooling) for layer, pooling in forms], dim=1)

        what = "reading features" + (f" in {len(forms)} forms" if len(forms) > 1 else "")
        joined = self.per_text(texts, batch_size, what, pooled_at_each)
        return {form: part.clone() for form, part in zip(forms, joined.split(width, dim=1))}  # each its own

    def score(self, texts: list[str], batch_size: int = 32, return_std: bool = False):
        """The reward of each text (higher: more like the expert); with `return_std`, (mean, posterior std)."""
        if return_std and self.posterior is None:
            raise RewardLoadError("this reward has no posterior over its head (fit one with irl.loss: laplace)")
        features = self.features(texts, batch_size)  # float32, on the CPU
        with torch.inference_mode():
            weight, bias = self.head.weight.detach().float().cpu(), self.head.bias.detach().float().cpu()
            mean = torch.nn.functional.linear(features, weight, bias).squeeze(-1).double().numpy()
        return (mean, self.posterior.std(features)) if return_std else mean

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "weight": self.head.weight.detach().cpu().contiguous(),
                "bias": self.head.bias.detach().cpu().contiguous(),
            },
            str(folder / REWARD_HEAD),
        )
        if self.posterior is not None:
            save_file(
                {
                    "centre": self.posterior.centre.double().contiguous(),
                    "covariance": self.posterior.covariance.double().contiguous(),
                },
                str(folder / REWARD_POSTERIOR),
            )
        (folder / REWARD_CONFIG).write_text(
            json.dumps({**asdict(self.spec), "head_sha256": sha256_of(folder / REWARD_HEAD)}, indent=2)
        )
        return folder


class _StopForward(Exception):
    """Raised by a hook once the wanted layer has run: the blocks above it are never computed."""


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (Llama-style `layers` or GPT-2-style `h`)."""
    base = model.base_model
    for name in ("layers", "h"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks")


def hidden_at(model, batch, layer: int) -> torch.Tensor:
    """Hidden states [batch, tokens, d] after block `layer` (1-based), or the final normed ones for -1.

    Only the blocks up to `layer` run (a hook stops the forward pass), and the LM head never does,
    so reading a middle layer costs about that fraction of a forward pass.
    """
    return hidden_at_layers(model, batch, [layer])[layer]


def hidden_at_layers(model, batch, layers: list[int]) -> dict[int, torch.Tensor]:
    """`hidden_at` of several layers from one forward pass, which stops after the deepest (runs whole for -1)."""
    blocks = decoder_blocks(model) if any(layer != -1 for layer in layers) else []
    missing = [layer for layer in layers if not (layer == -1 or 1 <= layer <= len(blocks))]
    if missing:
        raise ValueError(
            f"layer {missing[0]} does not exist: the backbone has blocks 1..{len(blocks)} (or -1, the final normed "
            "state)"
        )
    captured: dict[int, torch.Tensor] = {}
    deepest = len(blocks) + 1 if -1 in layers else max(layers)

    def keeper(layer: int):
        def keep(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _StopForward

        return keep

    handles = [blocks[layer - 1].register_forward_hook(keeper(layer)) for layer in set(layers) if layer != -1]
    try:
        final = model.base_model(**batch).last_hidden_state
        captured[-1] = final
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {layer: captured[layer] for layer in layers}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """'last': the last non-padding token (any padding side); 'mean': the mean over real tokens."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * attention_mask).argmax(dim=1)  # index of the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def random_head(width: int, seed: int) -> torch.nn.Linear:
    """A linear head with weights drawn from the seed alone (N(0, 1/width)) and a zero bias.

    The random control reward's head, and the starting point of every IRL fit (whose seeds are the
    non-identifiability study: they vary only this and the data order).
    """
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(width, 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, width, generator=generator) / width**0.5)
        head.bias.zero_()
    return head


def reward_form(
    backbone: str,
    pooling: str,
    layer: int,
    max_length: int,
    kind: str = "learned",
    dtype: str = "float32",
    device: str = "cpu",
) -> FeatureReward:
    """A reward of this form with a zero head: the backbone loaded, its features ready to be read and fitted."""
    model, tokenizer = load_policy(backbone, device=device, dtype=dtype)
    spec = RewardSpec(backbone, weights_sha256(policy_dir(backbone)), pooling, layer, max_length, kind, dtype)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return FeatureReward(spec, model, tokenizer, head.to(model.device))


RANDOM_REWARD_MAX_LENGTH = 128  # longest text the random control reward reads, in tokens (as recorded in its key)


def random_reward(
    backbone: str, seed: int, pooling: str, layer: int, device: str = "cpu", dtype: str = "float32"
) -> FeatureReward:
    """A fixed, seeded random linear reward on the backbone's features (read in `dtype`): the 'training alone'
    baseline."""
    reward = reward_form(backbone, pooling, layer, RANDOM_REWARD_MAX_LENGTH, kind="random", dtype=dtype, device=device)
    reward.head = random_head(reward.head.in_features, seed).to(reward.device)
    return reward


def saved_spec(folder: Path) -> tuple[RewardSpec, str]:
    """The form of a saved feature reward (its layer, pooling, backbone...) and its head's sha256, read without
    loading any weights."""
    config_file, head_file = folder / REWARD_CONFIG, folder / REWARD_HEAD
    for file in (config_file, head_file):
        if not file.is_file():
            raise RewardLoadError(f"{folder}: not a saved reward ({file.name} is missing)")
    try:
        stored = json.loads(config_file.read_text())
        head_sha = stored.pop("head_sha256")
        return RewardSpec(**stored), head_sha
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RewardLoadError(f"{config_file}: unreadable reward config ({err})") from None


def load_reward(path: str | Path, device: str = "cpu"):
    """A saved reward (`.score(texts)`): a feature reward (refused if corrupted or made on another backbone),
    or a white-box log-ratio reward (`irlnb.rewards.likelihood`)."""
    folder = Path(path)
    if (folder / LOG_RATIO_CONFIG).is_file():
        return load_log_ratio(folder, device)
    spec, head_sha = saved_spec(folder)
    head_file = folder / REWARD_HEAD
    if sha256_of(head_file) != head_sha:
        raise RewardLoadError(f"{head_file}: sha256 mismatch; the reward head is corrupted")
    actual = weights_sha256(policy_dir(spec.backbone))
    if actual != spec.backbone_sha256:
        raise RewardLoadError(
            f"{folder}: made on backbone {spec.backbone} with sha256 {spec.backbone_sha256[:12]}..., "
            f"but that backbone's files now hash to {actual[:12]}...; retrain the reward"
        )
    weights = load_file(str(head_file))
    head = torch.nn.Linear(weights["weight"].shape[1], 1)
    with torch.no_grad():
        head.weight.copy_(weights["weight"])
        head.bias.copy_(weights["bias"])
    model, tokenizer = load_policy(spec.backbone, device=device, dtype=spec.dtype)
    if model.config.hidden_size != head.in_features:
        raise RewardLoadError(
            f"{folder}: head width {head.in_features} does not fit backbone width {model.config.hidden_size}"
        )
    posterior = None
    if (folder / REWARD_POSTERIOR).is_file():
        stored_posterior = load_file(str(folder / REWARD_POSTERIOR))
        posterior = HeadPosterior(stored_posterior["centre"], stored_posterior["covariance"])
    return FeatureReward(spec, model, tokenizer, head.to(device), posterior)
