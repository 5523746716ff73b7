"""The reward a policy is aligned with, as trainers read it: R*, the reward learned by IRL, or a random one.

`make_scorer` builds one of these text rewards with its identity (what its scores depend on);
`PolicyReward` adapts it to TRL's reward interface, normalises it with statistics fixed before
training starts (never per batch, as the reference code's min-max did), and stops the run on a NaN
or infinite reward, naming the text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from irlnb.compute import resolve_dtype
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout
from irlnb.rewards.features import REWARD_CONFIG, load_reward
from irlnb.rewards.features import random_reward as random_head_reward
from irlnb.rewards.ground_truth import GroundTruthReward

TextScorer = Callable[[list[str]], np.ndarray]
ALIGNMENT_REWARDS = ("ground_truth", "learned", "random")  # the rewards stage 03 aligns a policy with
NORMALIZER_TEXTS = 256  # train-split texts that fix the reward's scale before training


class RewardError(IrlnbError, RuntimeError):
    """A reward that cannot be trusted (NaN or infinite); the message names the text."""


@dataclass(frozen=True)
class Normalizer:
    """An affine map fixed before training: (r - mean) / std."""

    mean: float
    std: float

    @classmethod
    def fit(cls, rewards) -> Normalizer:
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.size < 2 or not np.all(np.isfinite(rewards)):
            raise RewardError("normalisation needs at least two finite reference rewards")
        return cls(float(rewards.mean()), float(max(rewards.std(), 1e-8)))

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float64) - self.mean) / self.std


class PolicyReward:
    """A text reward in TRL's form: `f(prompts, completions, **kwargs) -> list[float]`.

    Scores prompt + completion (the paper's reward reads the whole text). Counts the empty
    completions it saw, since a policy that learns to say nothing is a failure to report.
    """

    def __init__(self, scorer: TextScorer, normalizer: Normalizer, name: str):
        self.scorer, self.normalizer = scorer, normalizer
        self.__name__ = name  # TRL logs each reward function under its name
        self.empty_completions = 0
        self.scored = 0

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        raw = np.asarray(self.scorer(texts), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(raw))
        if bad.size:
            i = int(bad[0])
            raise RewardError(f"reward {self.__name__} is {raw[i]} for text {texts[i][:120]!r}; stopping the run")
        self.empty_completions += sum(1 for completion in completions if not completion.strip())
        self.scored += len(texts)
        return self.normalizer(raw).tolist()


def make_scorer(
    reward: str, layout: RunLayout, *, sources, ground_truth, rlhf, random_reward=None, device: str, dtype: str
) -> tuple[TextScorer | None, dict[str, Any]]:
    """The text reward a policy is trained with (R*, the reward learned by IRL, or a random one), and its identity.

    The settings are the typed sections of irlnb/config.py (`random_reward` only for the random
    reward). The identity is what the reward's scores depend on: the classifier and clip of R*, the
    saved learned reward's config (its head's sha256 included), the random reward's settings and the dtype it reads
    its features in (`dtype`: the stage's `compute.inference_dtype`; the others keep their own). The scorer is None
    for R* where there is none (sources.toxicity_classifier empty: an audit of a brought expert, which no stage
    trains).
    """
    if reward == "ground_truth":
        identity = {"classifier": sources.toxicity_classifier, "clip": ground_truth.reward_clip}
        return GroundTruthReward.load(sources, ground_truth, device), identity
    if reward == "random":
        r = random_reward
        reward_model = random_head_reward(
            sources.policy, r.seed, r.pooling, r.layer, device=device, dtype=resolve_dtype(dtype, device)
        )
        identity = {**asdict(reward_model.spec), "seed": random_reward.seed}
    elif reward == "learned":
        reward_model = load_reward(layout.learned_reward, device=device)
        identity = json.loads((layout.learned_reward / REWARD_CONFIG).read_text())
    else:
        raise ValueError(f"reward must be one of {', '.join(ALIGNMENT_REWARDS)}, got {reward!r}")
    batch_size = rlhf.reward_batch_size
    return (lambda texts: reward_model.score(texts, batch_size=batch_size)), identity


def normalizer_texts(curated: pd.DataFrame, seed: int) -> list[str]:
    """Human train texts (prompt + continuation) on which the reward's scale is fixed before training."""
    train = curated[curated["split"] == "train"]
    return train.sample(n=min(NORMALIZER_TEXTS, len(train)), random_state=seed)["text"].tolist()
