"""What a policy outputs for a prompt: a model's own continuation, or the best of n under a reward.

A trained policy (RLOO, GRPO, rejection-sampling fine-tuning) continues a prompt with its model:
greedily (the paper's evaluation) or by sampling. A best-of-n policy has no model of its own: it
samples n continuations from the base model and keeps the one the reward scores highest, the
classic cheap approximation of the KL-regularised optimum pi_ref * exp(R / beta) / Z. With n = 1
it is the base model's plain sample, the reference a best-of-n policy is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irlnb.compute import frozen_cached
from irlnb.rl.generation import Decoding, sample_continuations

TextScorer = Callable[[list[str]], np.ndarray]


@dataclass
class ModelPolicy:
    """A causal LM continuing prompts with `decoding` (greedy or sampled)."""

    model: object
    tokenizer: object
    decoding: Decoding

    def samples(self, prompts: list[str], count: int, batch_size: int, seed: int) -> list[list[str]]:
        """`count` continuations of each prompt, drawn from one prefill of it."""
        return sample_continuations(self.model, self.tokenizer, prompts, self.decoding, count, batch_size, seed)

    def outputs(self, prompts: list[str], batch_size: int, seed: int) -> list[str]:
        return [first for (first,) in self.samples(prompts, 1, batch_size, seed)]


@dataclass
class BestOfN:
    """The best of `n` sampled continuations of the base model under `scorer` (which reads prompt + continuation)."""

    model: object
    tokenizer: object
    decoding: Decoding  # must sample
    n: int
    scorer: TextScorer | None  # None only for n = 1, which chooses nothing
    seed_offset: int = 0  # moves every seed: another draw of the same policy (rlhf.seed)

    def __post_init__(self) -> None:
        if not self.decoding.do_sample:
            raise ValueError("a best-of-n policy samples its candidates; give it a sampling decoding")
        if self.n < 1:
            raise ValueError(f"best-of-n needs n >= 1, got {self.n}")

    def candidates(self, prompts: list[str], batch_size: int, seed: int) -> list[list[str]]:
        """n sampled continuations per prompt, drawn from one prefill of it."""
        return sample_continuations(
            self.model, self.tokenizer, prompts, self.decoding, self.n, batch_size, self.seed_offset + seed
        )

    def samples(self, prompts: list[str], count: int, batch_size: int, seed: int) -> list[list[str]]:
        """`count` chosen continuations of each prompt, each the best of its own n candidates (rejected
        candidates are never handed out); all `count * n` candidates of a prompt come from one prefill."""
        drawn = sample_continuations(
            self.model, self.tokenizer, prompts, self.decoding, count * self.n, batch_size, self.seed_offset + seed
        )
        groups = [options[j * self.n : (j + 1) * self.n] for options in drawn for j in range(count)]
        chosen = [best for best, _ in self.choose([p for p in prompts for _ in range(count)], groups)]
        return [chosen[i * count : (i + 1) * count] for i in range(len(prompts))]

    def outputs(self, prompts: list[str], batch_size: int, seed: int) -> list[str]:
        """The chosen continuation of each prompt (its candidates rejected are never handed out)."""
        return [first for (first,) in self.samples(prompts, 1, batch_size, seed)]

    def choose(self, prompts: list[str], candidates: list[list[str]]) -> list[tuple[str, float]]:
        """The highest-scoring candidate of each prompt and its score (ties: the first drawn)."""
        if self.n == 1:  # nothing to choose: the reward is not even queried
            return [(options[0], float("nan")) for options in candidates]
        texts = [prompt + option for prompt, options in zip(prompts, candidates) for option in options]
        scores = np.asarray(self.scorer(texts), dtype=np.float64).reshape(len(prompts), self.n)
        best = scores.argmax(axis=1)
        return [(options[j], float(scores[i, j])) for i, (options, j) in enumerate(zip(candidates, best))]


@dataclass
class KeptSamples:
    """A frozen policy (the base) whose samples are kept in `cache_dir` (`frozen_cached`) under `identity` (its
    weights' sha256, dtype, device and how it draws) and what is drawn: every run that draws the same samples of
    it reads them once."""

    policy: ModelPolicy | BestOfN
    cache_dir: Path
    identity: dict

    def samples(self, prompts: list[str], count: int, batch_size: int, seed: int) -> list[list[str]]:
        key = {**self.identity, "prompts": list(prompts), "count": count, "batch_size": batch_size, "seed": seed}
        return frozen_cached(
            self.cache_dir,
            "samples",
            key,
            lambda: self.policy.samples(prompts, count, batch_size, seed),
            lambda kept: len(kept) == len(prompts) and all(len(drawn) == count for drawn in kept),
        )


def sampling_decoding(rlhf, max_new_tokens: int | None = None) -> Decoding:
    """How every policy samples: `rlhf`'s top-k and temperature, for its completion length or `max_new_tokens`
    (an evaluation's or a demonstration's own length)."""
    length = max_new_tokens or rlhf.max_completion_length
    return Decoding(length, do_sample=True, top_k=rlhf.top_k, temperature=rlhf.temperature)
