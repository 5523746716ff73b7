"""KL-regularised RLHF with TRL (groundwork for notebook 03).

PPO is gone from TRL (removed in 1.13) and trlx is unmaintained, so the policy is trained with
`RLOOTrainer`: REINFORCE with a leave-one-out baseline and a KL penalty `beta` against the frozen
starting policy. A reward is any function of texts; `PolicyReward` adapts it to TRL's reward
interface, normalises it with statistics fixed before training starts (never per batch, as the
reference code's min-max did), and stops the run on a NaN or infinite reward, naming the text.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.trainer_callback import TrainerCallback, TrainerState
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from irlnb.config import settings_digest
from irlnb.data.curation import load_curated
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout, write_json_atomic
from irlnb.models.policies import check_same_vocabulary, load_policy, load_tokenizer, policy_dir, weights_sha256
from irlnb.progress import Progress
from irlnb.rewards.features import REWARD_CONFIG, load_reward, random_reward
from irlnb.rewards.ground_truth import GroundTruthReward
from irlnb.rl.generation import context_limit, fit_prompts
from irlnb.rl.rejection import rejection_sampling_finetune
from irlnb.rl.sampling import BestOfN, ModelPolicy, sampling_decoding

TextScorer = Callable[[list[str]], np.ndarray]
REWARD_KINDS = ("ground_truth", "learned", "random")
RL_TRAINERS = ("rloo", "grpo")  # the trainers that run TRL's RL loop (and `accelerate launch`)
NORMALIZER_TEXTS = 256  # train-split texts that fix the reward's scale before training
POLICY_CARD = "irlnb_policy.json"


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


def rl_config(
    output_dir: str | Path,
    *,
    trainer: str = "rloo",
    steps: int,
    learning_rate: float,
    beta: float,
    batch_size: int,
    num_generations: int,
    max_completion_length: int,
    top_k: int,
    temperature: float,
    save_steps: int,
    seed: int,
    use_cpu: bool,
):
    """RLOOConfig (or GRPOConfig) with every setting that matters on CPU spelled out (TRL's defaults do not fit)."""
    if batch_size % num_generations:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_generations ({num_generations})")
    config_class = {"rloo": RLOOConfig, "grpo": GRPOConfig}[trainer]
    return config_class(
        output_dir=str(output_dir),
        max_steps=steps,
        learning_rate=learning_rate,
        beta=beta,
        per_device_train_batch_size=batch_size,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        top_k=top_k,
        temperature=temperature,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_only_model=False,
        save_total_limit=1,
        report_to="none",
        seed=seed,
        use_cpu=use_cpu,
        bf16=False,
        activation_checkpointing=False,
        disable_dropout=True,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint-N folder of an interrupted training, if any.

    transformers writes a checkpoint's trainer_state.json last (after weights, optimizer and RNG
    state) and deletes older checkpoints only after it, so a folder without a readable one was cut
    short by a kill: it is removed, and the previous complete checkpoint is used.
    """
    complete = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        try:
            json.loads((folder / "trainer_state.json").read_text())
            complete.append(folder)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if complete else None


def train_policy(policy_dir: str | Path, tokenizer, prompts: list[str], reward: PolicyReward, config, peft_config=None):
    """Train with RLOO (or GRPO, by the config's type), resuming from the last checkpoint in config.output_dir.

    `policy_dir` must be a saved model folder: with beta > 0 TRL loads the frozen reference
    policy from the same path.
    """
    if any(not p.strip() for p in prompts):
        raise ValueError("an empty prompt cannot be trained on")
    trainer_class = GRPOTrainer if isinstance(config, GRPOConfig) else RLOOTrainer
    trainer = trainer_class(
        model=str(policy_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=datasets.Dataset.from_dict({"prompt": list(prompts)}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[StepProgress(reward)],
    )
    trainer.resumed_from_step = resume_or_finish(trainer, Path(config.output_dir))
    return trainer


class StepProgress(TrainerCallback):
    """Step i/N, the raw reward mean, seconds per step and time left, in the notebook and on the runner's terminal."""

    def __init__(self, reward: PolicyReward):
        self.reward, self.progress = reward, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(args.max_steps, f"RLHF ({self.reward.__name__} reward)", unit="step")
        self.progress.update(state.global_step)  # a resumed training starts where it stopped

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "reward" in logs:
            raw = logs["reward"] * self.reward.normalizer.std + self.reward.normalizer.mean
            self.progress.update(state.global_step - self.progress.done, reward_mean=raw)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()


def resume_or_finish(trainer, output_dir: Path) -> int:
    """Train from the last checkpoint; if that checkpoint already reached max_steps, only load it.

    Returns the step training resumed from (0 for a fresh start). (transformers' Trainer, resumed
    at its final step, would run one step more.)
    """
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


LOG_COLUMNS = {
    "loss": "loss",
    "reward": "reward_normalised_mean",
    "reward_std": "reward_normalised_std",
    "kl": "kl",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "grad_norm": "grad_norm",
    "step_time": "step_seconds",
}


def training_log(trainer, reward: PolicyReward):
    """One row per step: loss, reward (normalised and raw), KL, entropy, completion length, seconds."""
    rows = [row for row in trainer.state.log_history if "loss" in row and "step" in row]
    log = pd.DataFrame(
        [{"step": row["step"], **{name: row.get(key) for key, name in LOG_COLUMNS.items()}} for row in rows]
    )
    if len(log):
        log["reward_mean"] = log["reward_normalised_mean"] * reward.normalizer.std + reward.normalizer.mean
        log["reward_std"] = log["reward_normalised_std"] * reward.normalizer.std
    return log


# --------------------------------------------------------------------------------------------
# One RLHF stage: the same code runs in notebook 03 and under `accelerate launch` (irlnb.rl.launch)


def make_scorer(kind: str, layout: RunLayout, settings, device: str) -> tuple[TextScorer, dict[str, Any]]:
    """The text reward a policy is trained with (R*, the reward learned by IRL, or a random one), and its identity.

    The identity is what the reward's scores depend on: the classifier and clip of R*, the saved
    learned reward's config (its head's sha256 included), the random reward's settings.
    """
    if kind == "ground_truth":
        identity = {"classifier": settings.sources.toxicity_classifier, "clip": settings.ground_truth.reward_clip}
        return GroundTruthReward.load(settings.sources, settings.ground_truth, device), identity
    if kind == "random":
        r = settings.random_reward
        reward = random_reward(settings.sources.policy, r.seed, r.pooling, r.layer, device=device)
        identity = {**asdict(reward.spec), "seed": r.seed}
    elif kind == "learned":
        reward = load_reward(layout.learned_reward, device=device)
        identity = json.loads((layout.learned_reward / REWARD_CONFIG).read_text())
    else:
        raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    batch_size = settings.rlhf.reward_batch_size
    return (lambda texts: reward.score(texts, batch_size=batch_size)), identity


def training_prompts(curated: pd.DataFrame, rlhf) -> list[str]:
    train = curated[curated["split"] == "train"]
    if rlhf.train_prompts == "toxic":
        train = train[train["label"] == 1]
    return train["prompt"].tolist()


def normalizer_texts(curated: pd.DataFrame, seed: int) -> list[str]:
    """Human train texts (prompt + continuation) on which the reward's scale is fixed before training."""
    train = curated[curated["split"] == "train"]
    return train.sample(n=min(NORMALIZER_TEXTS, len(train)), random_state=seed)["text"].tolist()


def trainer_config(output_dir: Path, rlhf, seed: int, device: str, steps: int | None = None):
    """The TRL config of the rlhf settings (GRPO gets the same KL coefficient as RLOO)."""
    return rl_config(
        output_dir,
        trainer=rlhf.trainer,
        steps=steps or rlhf.steps,
        learning_rate=rlhf.learning_rate,
        beta=rlhf.beta,
        batch_size=rlhf.completions_per_step,
        num_generations=rlhf.generations_per_prompt,
        max_completion_length=rlhf.max_completion_tokens,
        top_k=rlhf.top_k,
        temperature=rlhf.temperature,
        save_steps=rlhf.checkpoint_steps,
        seed=seed,
        use_cpu=device == "cpu",
    )


def lora_config(rlhf):
    """The LoRA adapter of `rlhf.lora_rank` on every linear layer, or None for full fine-tuning."""
    if not rlhf.lora_rank:
        return None
    from peft import LoraConfig  # peft loads only when LoRA is asked for

    return LoraConfig(
        r=rlhf.lora_rank, lora_alpha=2 * rlhf.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
    )


# The rlhf settings each trainer reads: a training key covers those, and no other.
TRAINER_SETTINGS = {
    "rloo": (
        "seed",
        "steps",
        "learning_rate",
        "beta",
        "completions_per_step",
        "generations_per_prompt",
        "max_completion_tokens",
        "top_k",
        "temperature",
        "train_prompts",
        "lora_rank",
        "reward_batch_size",
    ),
    "rft": (
        "seed",
        "rft_learning_rate",
        "rft_top_k",
        "completions_per_step",
        "max_completion_tokens",
        "temperature",
        "train_prompts",
        "reward_batch_size",
        "best_of_n",
        "rft_rounds",
        "rft_epochs",
        "rft_max_perplexity_ratio",
    ),
    "best_of_n": ("seed", "max_completion_tokens", "top_k", "temperature", "best_of_n", "reward_batch_size"),
}
TRAINER_SETTINGS["grpo"] = TRAINER_SETTINGS["rloo"]
GUARD_TEXTS = 100  # validation human non-toxic texts whose perplexity guards rejection-sampling fine-tuning


def alignment_seed(settings) -> int:
    """The seed of an alignment: compute.seed, moved by rlhf.seed (the recoverability study varies only this)."""
    return settings.compute.seed + 1000 * settings.rlhf.seed


def training_key(
    settings, reward_identity: dict[str, Any], prompts: list[str], scale_texts: list[str], brought: str = ""
) -> str:
    """What a trained policy depends on, and nothing else: its checkpoints are kept under this key.

    The base policy's weights, the rlhf settings its trainer reads, the seed, the reward's identity
    and the exact prompts and scale texts. An evaluation setting is not part of it, so changing one
    re-evaluates a finished policy instead of training it again.
    """
    if brought:  # a model brought to be audited is what it is
        return settings_digest({"expert": weights_sha256(policy_dir(brought))})
    rlhf = {key: getattr(settings.rlhf, key) for key in ("trainer", *TRAINER_SETTINGS[settings.rlhf.trainer])}
    if settings.rlhf.trainer == "rft":  # its rounds sample in the inference dtype
        rlhf["inference_dtype"] = settings.compute.inference_dtype
    return settings_digest(
        {
            "policy": weights_sha256(policy_dir(settings.sources.policy)),
            "rlhf": rlhf,
            "seed": settings.compute.seed,
            "reward": reward_identity,
            "prompts": settings_digest(prompts),
            "scale_texts": settings_digest(scale_texts),
        }
    )


def checkpoint_dir(layout: RunLayout, stage_name: str, key: str) -> Path:
    """Where a stage's resumable checkpoints live; emptied when they were made for another training key.

    It sits outside the stage's output folder (which the runner clears before a redo), so a killed
    training resumes from its last checkpoint, and only if it trains the same thing.
    """
    folder = layout.checkpoints(stage_name)
    stamp = folder / "training_key.txt"
    if folder.is_dir() and (not stamp.is_file() or stamp.read_text().strip() != key):
        shutil.rmtree(folder, ignore_errors=True)  # several accelerate ranks may do this at once
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return folder


@dataclass
class StageTraining:
    """Everything a training stage starts from: the reward (scaled), the prompts, the base policy and the key."""

    reward: PolicyReward
    prompts: list[str]
    prompts_cut: int  # prompts longer than the context allows, cut from the front
    policy_dir: Path
    tokenizer: object
    key: str
    guard_texts: list[str]
    brought: str = ""  # the aligned model brought to be audited, when stage 03 trains nothing itself


def prepare_training(layout: RunLayout, reward_kind: str, settings, device: str) -> StageTraining:
    """The reward of `reward_kind`, its scale fixed on human train texts; the train prompts; the training key."""
    curated = load_curated(layout)
    scorer, identity = make_scorer(reward_kind, layout, settings, device)
    scale_texts = normalizer_texts(curated, settings.compute.seed)
    reward = PolicyReward(scorer, Normalizer.fit(scorer(scale_texts)), name=reward_kind)
    folder = policy_dir(settings.sources.policy)
    tokenizer = load_tokenizer(settings.sources.policy)
    limit = context_limit(AutoConfig.from_pretrained(folder), settings.rlhf.max_completion_tokens)
    prompts, prompts_cut = fit_prompts(training_prompts(curated, settings.rlhf), tokenizer, limit)
    validation = curated[(curated["split"] == "validation") & (curated["label"] == 0)]
    guard = validation["text"].head(GUARD_TEXTS).tolist()
    brought = getattr(settings.sources, "expert", "") if reward_kind == "ground_truth" else ""
    key = training_key(settings, identity, prompts, scale_texts, brought)
    return StageTraining(reward, prompts, prompts_cut, folder, tokenizer, key, guard, brought)


def train_rloo(layout: RunLayout, stage_name: str, start: StageTraining, settings, device: str):
    """The TRL trainer (RLOO or GRPO) of a stage, trained or, when finished under the same key, loaded."""
    config = trainer_config(
        checkpoint_dir(layout, stage_name, start.key), settings.rlhf, alignment_seed(settings), device
    )
    return train_policy(
        start.policy_dir, start.tokenizer, start.prompts, start.reward, config, lora_config(settings.rlhf)
    )


@dataclass
class TrainingResult:
    model: object | None  # the trained policy; None for best-of-n, which has no model of its own
    log: pd.DataFrame  # one row per optimiser step (RLOO, GRPO) or per round and epoch (RFT)
    steps: int  # optimiser steps (RLOO, GRPO), fine-tuning epochs kept (RFT), 0 (best-of-n)
    resumed_from: int  # the step (or round) a killed training resumed from; 0 for a fresh start
    start: StageTraining
    trainer: str  # rloo, grpo, rft, best_of_n, or brought (a model brought to be audited)


def run_stage_training(layout: RunLayout, stage_name: str, reward_kind: str, settings, device: str) -> TrainingResult:
    """Align the base policy of `settings.sources` with the chosen reward by `rlhf.trainer`, resuming if interrupted.

    RLOO and GRPO train with TRL; `rft` runs rejection-sampling fine-tuning; `best_of_n` trains
    nothing (its policy is the base model plus the reward, see `irlnb.rl.sampling.BestOfN`). A
    training that finished earlier under the same training key is only loaded.
    """
    start = prepare_training(layout, reward_kind, settings, device)
    if start.brought:  # a model brought to be audited: nothing to train
        check_same_vocabulary(start.brought, settings.sources.policy)
        model = AutoModelForCausalLM.from_pretrained(policy_dir(start.brought), dtype=torch.float32)
        return TrainingResult(model.eval(), pd.DataFrame(columns=["step"]), 0, 0, start, "brought")
    trainer_kind = settings.rlhf.trainer
    if trainer_kind in RL_TRAINERS:
        trainer = train_rloo(layout, stage_name, start, settings, device)
        model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
        return TrainingResult(
            model,
            training_log(trainer, start.reward),
            trainer.state.global_step,
            trainer.resumed_from_step,
            start,
            trainer_kind,
        )
    if trainer_kind == "rft":
        result = rejection_sampling_finetune(
            start.policy_dir,
            start.tokenizer,
            start.prompts,
            start.reward.scorer,
            settings.rlhf,
            start.guard_texts,
            checkpoint_dir(layout, stage_name, start.key),
            alignment_seed(settings),
            settings.compute.inference_dtype,
            device,
        )
        kept = int((~result.log["undone"]).sum()) if len(result.log) else 0
        return TrainingResult(result.model, result.log, kept, result.resumed_from_round, start, "rft")
    return TrainingResult(None, pd.DataFrame(columns=["step"]), 0, 0, start, "best_of_n")


@dataclass(frozen=True)
class PolicyCard:
    """What made a saved policy (`policy/irlnb_policy.json`): trainer, reward, training key, steps and settings.

    A best-of-n policy's folder holds only its card: its model is the base policy named in the settings.
    """

    reward: str
    trainer: str
    training_key: str
    steps: int
    settings: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, folder: Path) -> PolicyCard:
        path = Path(folder) / POLICY_CARD
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no saved policy ({POLICY_CARD} is missing); run its RLHF stage first")
        return cls(**json.loads(path.read_text()))


def save_policy(result: TrainingResult, folder: Path, card: PolicyCard) -> Path:
    """The trained policy as a plain `save_pretrained` folder, with its card (a best-of-n policy: the card alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        result.model.save_pretrained(folder, safe_serialization=True)
        result.start.tokenizer.save_pretrained(folder)
    write_json_atomic(folder / POLICY_CARD, asdict(card))
    return folder


def load_stage_policy(layout: RunLayout, reward_kind: str, device: str, dtype: str, decoding, n: int | None = None):
    """The policy an RLHF stage made, as something that continues prompts (`.outputs(prompts, batch_size, seed)`).

    A trained policy continues with `decoding` (greedy for the paper's evaluation); a best-of-n
    policy samples `rlhf.best_of_n` candidates (or `n`) from the base model and keeps the one its
    reward scores highest.
    """
    folder = layout.policy(reward_kind)
    card = PolicyCard.read(folder)
    if card.trainer != "best_of_n":
        model, tokenizer = load_policy(f"local:{folder}", device=device, dtype=dtype)
        return ModelPolicy(model, tokenizer, decoding)
    settings = SimpleNamespace(**{name: SimpleNamespace(**values) for name, values in card.settings.items()})
    scorer, _ = make_scorer(reward_kind, layout, settings, device)
    model, tokenizer = load_policy(settings.sources.policy, device=device, dtype=dtype)
    return BestOfN(
        model,
        tokenizer,
        sampling_decoding(settings.rlhf),
        n or settings.rlhf.best_of_n,
        scorer,
        seed_offset=1000 * settings.rlhf.seed,
    )


def base_policy(spec: str, rlhf, decoding, device: str, dtype: str):
    """The base policy as the aligned policies of a run are decoded: with `decoding`, or, when they are
    best-of-n policies, as best of 1 (a plain sample), so that the comparison changes only the selection."""
    model, tokenizer = load_policy(spec, device=device, dtype=dtype)
    if rlhf.trainer == "best_of_n":
        return BestOfN(model, tokenizer, sampling_decoding(rlhf), 1, scorer=None)
    return ModelPolicy(model, tokenizer, decoding)
