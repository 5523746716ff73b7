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


def rl_config(output_dir: str | Path, *, trainer: str = "rloo", steps: int, learning_rate: float, beta: float,
              batch_size: int, num_generations: int, max_completion_length: int, top_k: int, temperature: float,
              save_steps: int, seed: int, use_cpu: bool):
    """RLOOConfig (or GRPOConfig) with every setting that matters on CPU spelled out (TRL's defaults do not fit)."""
    from trl import GRPOConfig, RLOOConfig

    if batch_size % num_generations:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_generations ({num_generations})")
    config_class = {"rloo": RLOOConfig, "grpo": GRPOConfig}[trainer]
    return config_class(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, beta=beta,
        per_device_train_batch_size=batch_size, num_generations=num_generations,
        max_completion_length=max_completion_length, top_k=top_k, temperature=temperature,
        logging_steps=1, save_strategy="steps", save_steps=save_steps, save_only_model=False, save_total_limit=1,
        report_to="none", seed=seed, use_cpu=use_cpu, bf16=False, activation_checkpointing=False,
        disable_dropout=True,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint-N folder of an interrupted training, if any.

    transformers writes a checkpoint's trainer_state.json last (after weights, optimizer and RNG
    state) and deletes older checkpoints only after it, so a folder without a readable one was cut
    short by a kill: it is removed, and the previous complete checkpoint is used.
    """
    import json
    import shutil

    complete = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        try:
            json.loads((folder / "trainer_state.json").read_text())
            complete.append(folder)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if complete else None


def train_policy(policy_dir: str | Path, tokenizer, prompts: list[str], reward: PolicyReward, config,
                 peft_config=None):
    """Train with RLOO (or GRPO, by the config's type), resuming from the last checkpoint in config.output_dir.

    `policy_dir` must be a saved model folder: with beta > 0 TRL loads the frozen reference
    policy from the same path.
    """
    import datasets
    from trl import GRPOConfig, GRPOTrainer, RLOOTrainer

    if any(not p.strip() for p in prompts):
        raise ValueError("an empty prompt cannot be trained on")
    trainer_class = GRPOTrainer if isinstance(config, GRPOConfig) else RLOOTrainer
    trainer = trainer_class(model=str(policy_dir), reward_funcs=reward, args=config,
                            train_dataset=datasets.Dataset.from_dict({"prompt": list(prompts)}),
                            processing_class=tokenizer, peft_config=peft_config)
    trainer.resumed_from_step = resume_or_finish(trainer, Path(config.output_dir))
    return trainer


# --------------------------------------------------------------------------------------------
# One RLHF stage: the same code runs in notebook 03 and under `accelerate launch` (irlnb.rlhf_launch)

REWARD_KINDS = ("ground_truth", "learned", "random")
LEARNED_REWARD_DIR = ("irl", "reward")  # where notebook 04 saves the learned reward, inside the run directory
NORMALIZER_TEXTS = 256  # train-split texts that fix the reward's scale before training


def checkpoint_dir(run_dir: Path, stage_name: str, digest: str) -> Path:
    """Where a stage's resumable checkpoints live; emptied when the settings changed since they were made.

    It sits outside the stage's output folder (which the runner clears before a redo), so a killed
    training resumes from its last checkpoint, and only with the settings it was started with.
    """
    import shutil

    folder = Path(run_dir) / "checkpoints" / stage_name
    stamp = folder / "settings_digest.txt"
    if folder.is_dir() and (not stamp.is_file() or stamp.read_text().strip() != digest):
        shutil.rmtree(folder, ignore_errors=True)  # several accelerate ranks may do this at once
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return folder


def make_scorer(kind: str, run_dir: Path, sources, ground_truth, rlhf, device: str) -> TextScorer:
    """The text reward a policy is trained with: R*, the reward learned by IRL, or a random one."""
    from irlnb import reward_model
    from irlnb.sources import load_toxicity_classifier

    if kind == "ground_truth":
        classifier = load_toxicity_classifier(sources.toxicity_classifier, device=device)
        return ground_truth_scorer(classifier, ground_truth.reward_clip, ground_truth.score_batch_size)
    if kind == "random":
        reward = reward_model.random_reward(sources.policy, rlhf.random_reward_seed, rlhf.reward_pooling,
                                            rlhf.reward_layer, device=device)
    elif kind == "learned":
        reward = reward_model.load_reward(Path(run_dir).joinpath(*LEARNED_REWARD_DIR), device=device)
    else:
        raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    return lambda texts: reward.score(texts, batch_size=rlhf.reward_batch_size)


def training_prompts(curated, rlhf) -> list[str]:
    train = curated[curated["split"] == "train"]
    if rlhf.train_prompts == "toxic":
        train = train[train["label"] == 1]
    return train["prompt"].tolist()


def fit_normalizer(scorer: TextScorer, curated, seed: int) -> Normalizer:
    """Scale fixed before training: the reward's mean and std on human train texts (prompt + continuation)."""
    train = curated[curated["split"] == "train"]
    sample = train.sample(n=min(NORMALIZER_TEXTS, len(train)), random_state=seed)
    return Normalizer.fit(scorer(sample["text"].tolist()))


def trainer_config(output_dir: Path, rlhf, seed: int, device: str):
    """The TRL config of the rlhf settings (GRPO gets the same KL coefficient as RLOO)."""
    return rl_config(output_dir, trainer=rlhf.trainer, steps=rlhf.steps, learning_rate=rlhf.learning_rate,
                     beta=rlhf.beta, batch_size=rlhf.completions_per_step, num_generations=rlhf.generations_per_prompt,
                     max_completion_length=rlhf.max_completion_tokens, top_k=rlhf.top_k,
                     temperature=rlhf.temperature, save_steps=rlhf.checkpoint_steps, seed=seed,
                     use_cpu=device == "cpu")


@dataclass
class TrainingResult:
    trainer: object
    reward: PolicyReward
    prompts: int  # train prompts used
    prompts_cut: int  # of which were longer than the context allows and were cut from the front


def run_stage_training(run_dir: Path, stage_name: str, digest: str, reward_kind: str, settings, device: str) -> TrainingResult:
    """Train the base policy of `settings.sources` with the chosen reward, resuming if it was interrupted."""
    from transformers import AutoConfig, AutoTokenizer

    from irlnb.curate import load_curated
    from irlnb.generation import context_limit, fit_prompts
    from irlnb.models import prepare_tokenizer
    from irlnb.reward_model import backbone_dir

    curated = load_curated(run_dir)
    scorer = make_scorer(reward_kind, run_dir, settings.sources, settings.ground_truth, settings.rlhf, device)
    reward = PolicyReward(scorer, fit_normalizer(scorer, curated, settings.compute.seed), name=reward_kind)
    prompts = training_prompts(curated, settings.rlhf)
    output_dir = checkpoint_dir(run_dir, stage_name, digest)
    config = trainer_config(output_dir, settings.rlhf, settings.compute.seed, device)
    peft_config = None
    if settings.rlhf.lora_rank:
        from peft import LoraConfig

        peft_config = LoraConfig(r=settings.rlhf.lora_rank, lora_alpha=2 * settings.rlhf.lora_rank,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    policy_dir = backbone_dir(settings.sources.policy)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)  # TRL loads the model itself, from the folder
    prepare_tokenizer(tokenizer)
    limit = context_limit(AutoConfig.from_pretrained(policy_dir), settings.rlhf.max_completion_tokens)
    prompts, prompts_cut = fit_prompts(prompts, tokenizer, limit)
    trainer = train_policy(policy_dir, tokenizer, prompts, reward, config, peft_config)
    return TrainingResult(trainer, reward, len(prompts), prompts_cut)


def resume_or_finish(trainer, output_dir: Path) -> int:
    """Train from the last checkpoint; if that checkpoint already reached max_steps, only load it.

    Returns the step training resumed from (0 for a fresh start). (transformers' Trainer, resumed
    at its final step, would run one step more.)
    """
    from transformers.trainer_callback import TrainerState

    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        trainer.train()
        return 0
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if state.global_step >= trainer.args.max_steps:
        trainer._load_from_checkpoint(checkpoint)  # weights (or LoRA adapter) of the finished run
        trainer.state = state
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    return state.global_step


LOG_COLUMNS = {"loss": "loss", "reward": "reward_normalised_mean", "reward_std": "reward_normalised_std",
               "kl": "kl", "entropy": "entropy", "completions/mean_length": "completion_length",
               "grad_norm": "grad_norm", "step_time": "step_seconds"}


def training_log(trainer, reward: PolicyReward):
    """One row per step: loss, reward (normalised and raw), KL, entropy, completion length, seconds."""
    import pandas as pd

    rows = [row for row in trainer.state.log_history if "loss" in row and "step" in row]
    log = pd.DataFrame([{"step": row["step"], **{name: row.get(key) for key, name in LOG_COLUMNS.items()}}
                        for row in rows])
    if len(log):
        log["reward_mean"] = log["reward_normalised_mean"] * reward.normalizer.std + reward.normalizer.mean
        log["reward_std"] = log["reward_normalised_std"] * reward.normalizer.std
    return log


def save_policy(trainer, folder: Path, about: dict) -> Path:
    """The trained policy as a plain `save_pretrained` folder (LoRA merged), with what made it."""
    import json

    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    trainer.processing_class.save_pretrained(folder)
    (folder / "irlnb_policy.json").write_text(json.dumps(about, indent=2, default=str))
    return folder
