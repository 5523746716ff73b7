"""A saved policy and its card (`policy/irlnb_policy.json`): saving, reading and loading what stage 03 made.

Reading a finished policy loads neither TRL nor any trainer: the card names the kind, whose record
(irlnb.rl.kinds) says whether the policy has weights of its own; the card's settings are re-parsed
into the typed sections of irlnb/config.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from irlnb.config import ConfigError
from irlnb.layout import RunLayout, write_json_atomic
from irlnb.models.policies import load_policy
from irlnb.params_file import parse_section
from irlnb.rl.kinds import kind_of, seed_offset
from irlnb.rl.reward_signal import make_scorer
from irlnb.rl.sampling import BestOfN, ModelPolicy, sampling_decoding
from irlnb.rl.training_job import TrainingResult

POLICY_CARD = "irlnb_policy.json"


@dataclass(frozen=True)
class PolicyCard:
    """What made a saved policy: its reward, kind (`trainer`), training key, steps and the stage's settings.

    A policy without weights (best-of-n) has a folder holding only its card: its model is the base
    policy named in the settings.
    """

    reward: str
    trainer: str  # the name of its kind (irlnb.rl.kinds), or 'brought'
    training_key: str
    steps: int
    settings: dict[str, dict[str, Any]]
    prompt_ids: tuple[str, ...] | list[str] = ()  # curated ids of the prompts its alignment trained on
    path: str = ""  # the file it was read from, for messages

    @classmethod
    def read(cls, folder: Path) -> PolicyCard:
        path = Path(folder) / POLICY_CARD
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no saved policy ({POLICY_CARD} is missing); run its RLHF stage first")
        return cls(**json.loads(path.read_text()), path=str(path))

    def section(self, name: str):
        """One section of the settings that made the policy, typed and validated as a params file's is."""
        if name not in self.settings:
            raise ConfigError(f"{self.path}: the card holds no {name} settings; rerun its RLHF stage")
        return parse_section(name, self.settings[name], self.path)

    @property
    def has_weights(self) -> bool:
        return kind_of(self.trainer).has_weights

    @property
    def held_out_prompt_ids(self) -> set[str]:
        """The prompts IRL's demonstrations must never use: those its kind trained on apart from IRL's (dpo)."""
        return set(self.prompt_ids) if kind_of(self.trainer).holds_out_prompts else set()

    def label(self) -> str:
        """How figures name the alignment that made the policy (its kind's label, from its own settings)."""
        kind = kind_of(self.trainer)
        return kind.label(self.section(kind.settings_section) if kind.settings_section else None)


def save_policy(result: TrainingResult, folder: Path, card: PolicyCard) -> Path:
    """The trained policy as a plain `save_pretrained` folder, with its card (a policy without weights: the card)."""
    folder.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        result.model.save_pretrained(folder, safe_serialization=True)
        result.start.tokenizer.save_pretrained(folder)
    record = {key: value for key, value in asdict(card).items() if key != "path"}
    record["prompt_ids"] = list(record["prompt_ids"])
    write_json_atomic(folder / POLICY_CARD, record)
    return folder


def load_stage_policy(layout: RunLayout, reward: str, device: str, dtype: str, decoding, n: int | None = None):
    """The policy an RLHF stage made, as something that continues prompts (`.outputs(prompts, batch_size, seed)`).

    A policy with weights continues with `decoding` (greedy for the paper's evaluation); a policy
    without (best-of-n) samples its candidates (its kind's record says how many; or `n`) from the base
    model and keeps the one its reward scores highest.
    """
    folder = layout.policy(reward)
    card = PolicyCard.read(folder)
    kind = kind_of(card.trainer)
    if kind.has_weights:
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise ConfigError(
                f"{folder}: its card says the policy was aligned by {card.trainer}, a kind with weights of its own, "
                f"but the folder holds none; rerun its RLHF stage"
            )
        model, tokenizer = load_policy(f"local:{folder}", device=device, dtype=dtype)
        return ModelPolicy(model, tokenizer, decoding)
    sources, rlhf = card.section("sources"), card.section("rlhf")
    scorer, _ = make_scorer(
        reward,
        layout,
        sources=sources,
        ground_truth=card.section("ground_truth"),
        rlhf=rlhf,
        random_reward=card.section("random_reward") if reward == "random" else None,
        device=device,
        dtype=card.section("compute").inference_dtype,
    )
    model, tokenizer = load_policy(sources.policy, device=device, dtype=dtype)
    chosen = n or kind.candidates(card.section(kind.settings_section))
    return BestOfN(model, tokenizer, sampling_decoding(rlhf), chosen, scorer, seed_offset=seed_offset(rlhf))


def base_policy(spec: str, rlhf, decoding, device: str, dtype: str):
    """The base policy as the aligned policies of a run are decoded: with `decoding`, or, when they have no
    weights (best-of-n), as best of 1 (a plain sample), so that the comparison changes only the selection."""
    model, tokenizer = load_policy(spec, device=device, dtype=dtype)
    if not kind_of(rlhf.trainer).has_weights:
        return BestOfN(model, tokenizer, sampling_decoding(rlhf), 1, scorer=None)
    return ModelPolicy(model, tokenizer, decoding)
