"""KL-regularised RLHF with TRL (groundwork for notebook 03).

PPO is gone from TRL (removed in 1.13) and trlx is unmaintained, so the policy is trained with
`RLOOTrainer`: REINFORCE with a leave-one-out baseline and a KL penalty `beta` against the frozen
starting policy. A reward is any function of texts; `PolicyReward` adapts it to TRL's reward
interface, normalises it with statistics fixed before training starts (never per batch, as the
reference code's min-max did), and stops the run on a NaN or infinite reward, naming the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from irlnb.classifiers import ground_truth_reward

TextScorer = Callable[[list[str]], np.ndarray]


class RewardError(RuntimeError):
    """A reward that cannot be trusted (NaN or infinite); the message names the text."""


@dataclass(frozen=True)
class Normalizer:
    """An affine map fixed before training: (r - mean) / std."""

    mean: float
    std: float

    @classmethod
    def fit(cls, rewards) -> "Normalizer":
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.size < 2 or not np.all(np.isfinite(rewards)):
            raise RewardError("normalisation needs at least two finite reference rewards")
        return cls(float(rewards.mean()), float(max(rewards.std(), 1e-8)))

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float64) - self.mean) / self.std


def ground_truth_scorer(classifier, clip: float, batch_size: int = 128) -> TextScorer:
    """R* of each text (prompt + completion), from the ground-truth classifier."""
    return lambda texts: ground_truth_reward(classifier.p_toxic(texts, batch_size=batch_size), clip)


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


def rloo_config(output_dir: str | Path, *, steps: int, learning_rate: float, beta: float, batch_size: int,
                num_generations: int, max_completion_length: int, top_k: int, temperature: float,
                save_steps: int, seed: int, use_cpu: bool):
    """The RLOOConfig with every setting that matters on CPU spelled out (TRL's defaults do not fit)."""
    from trl import RLOOConfig

    if batch_size % num_generations:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_generations ({num_generations})")
    return RLOOConfig(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, beta=beta,
        per_device_train_batch_size=batch_size, num_generations=num_generations,
        max_completion_length=max_completion_length, top_k=top_k, temperature=temperature,
        logging_steps=1, save_strategy="steps", save_steps=save_steps, save_only_model=False,
        report_to="none", seed=seed, use_cpu=use_cpu, bf16=False, activation_checkpointing=False,
        disable_dropout=True,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N folder of an interrupted training, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(output_dir)
    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def train_policy(policy_dir: str | Path, tokenizer, prompts: list[str], reward: PolicyReward, config):
    """Train with RLOO, resuming from the last checkpoint in config.output_dir when there is one.

    `policy_dir` must be a saved model folder: with beta > 0 TRL loads the frozen reference
    policy from the same path.
    """
    import datasets
    from trl import RLOOTrainer

    if any(not p.strip() for p in prompts):
        raise ValueError("an empty prompt cannot be trained on")
    trainer = RLOOTrainer(model=str(policy_dir), reward_funcs=reward, args=config,
                          train_dataset=datasets.Dataset.from_dict({"prompt": list(prompts)}),
                          processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir))
    return trainer
