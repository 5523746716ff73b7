"""KL-regularised RLHF with TRL: the train function of the `rloo` and `grpo` kinds.

PPO is gone from TRL (removed in 1.13) and trlx is unmaintained, so the policy is trained with
`RLOOTrainer` (REINFORCE with a leave-one-out baseline and a KL penalty `beta` against the frozen
starting policy) or `GRPOTrainer`. The kind's settings section carries TRL's own config names, so
they reach TRL unrenamed. This module imports TRL; only a training loads it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch
import trl
from transformers.trainer_callback import TrainerCallback, TrainerState

from irlnb.progress import Progress
from irlnb.rl.reward_signal import PolicyReward
from irlnb.rl.training_job import TrainingJob, TrainingResult


def trl_config(output_dir: str | Path, kind, section, rlhf, seed: int, use_cpu: bool, max_steps: int | None = None):
    """The TRL config of a policy-gradient kind: its section's settings under their own names, the shared
    sampling settings of `rlhf`, and every setting that matters on CPU spelled out (TRL's defaults do not fit).
    `kind`: its record in irlnb.rl.kinds (which names its TRL classes)."""
    trainer_name, config_name = kind.trl_classes
    return getattr(trl, config_name)(
        output_dir=str(output_dir),
        max_steps=max_steps or section.max_steps,
        learning_rate=section.learning_rate,
        beta=section.beta,
        per_device_train_batch_size=section.per_device_train_batch_size,
        num_generations=section.num_generations,
        max_completion_length=rlhf.max_completion_length,
        top_k=rlhf.top_k,
        temperature=rlhf.temperature,
        **checkpointing(section.save_steps, seed, use_cpu),
        bf16=False,
        activation_checkpointing=False,
        disable_dropout=True,
    )


def checkpointing(save_steps: int, seed: int, use_cpu: bool) -> dict[str, Any]:
    """What every trainer here logs and keeps, under the argument names transformers' and TRL's configs share: a log
    row per step, one resumable checkpoint (weights, optimiser and random state) every `save_steps`, the seed, and
    the CPU where asked."""
    return {
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_only_model": False,
        "save_total_limit": 1,
        "report_to": "none",
        "seed": seed,
        "use_cpu": use_cpu,
    }


def trained_policy(trainer):
    """The trainer's policy as a plain model (a LoRA adapter merged into its weights)."""
    return trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model


def finished_training(trainer, job: TrainingJob, log: Callable[[Any], pd.DataFrame]) -> TrainingResult:
    """Train (resuming from the last checkpoint; a finished training of the same key is only loaded) and return
    the policy with its log (`log(trainer)`)."""
    resumed_from = resume_or_finish(trainer, job.checkpoints)
    return TrainingResult(
        model=trained_policy(trainer).eval(),
        log=log(trainer),
        steps=trainer.state.global_step,
        resumed_from=resumed_from,
        start=job.start,
    )


@contextmanager
def scoring_completions_only() -> Iterator[None]:
    """While open, TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, through which DPOTrainer,
    RLOOTrainer and GRPOTrainer read the log-probabilities of completions) projects only the positions it scores,
    the completion's, on every device. TRL does so only on Triton devices (CUDA, XPU) and elsewhere projects every
    position, prompt included, so that a compiler (Neuron) sees fixed tile shapes; on a CPU nothing is compiled and
    the prompt positions are half a DPO batch's positions or more. The values, and the gradient they pass back to
    the backbone, are the same row for row (tests/test_dpo.py); only a trained LM head's own gradient (full
    fine-tuning, not LoRA) sums its rows in another order."""
    from trl.trainer import utils as trl_utils

    scores_on_triton_only = trl_utils._use_triton  # what decides it, read on each forward
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = scores_on_triton_only


class PackageRollouts:
    """A TRL policy-gradient trainer (RLOO, GRPO) whose rollouts are drawn by this package's sampler
    (`irlnb.rl.generation.decode`) instead of transformers' `generate`, which on a CPU spends most of a sampled step
    outside the model. Where the sampler cannot stand in, TRL's own path runs: vLLM or continuous batching, images,
    or sampling settings it does not have (top-p, min-p, a repetition penalty, extra `generation_kwargs`).

    TRL repeats each prompt `num_generations` times, adjacently; the samples of one prompt share one prefill. The
    draws take their seed from torch's global generator, which the trainer seeds and keeps in each checkpoint, so a
    resumed training draws what the uninterrupted one would. A completion ends after its first stop token, as
    TRL's does."""

    def _package_sampler_applies(self, images, multimodal_fields) -> bool:
        return not (
            self.use_vllm
            or self.use_transformers_continuous_batching
            or images
            or multimodal_fields
            or self.args.generation_kwargs
            or (self.top_p is not None and self.top_p < 1.0)
            or self.min_p
            or (self.repetition_penalty is not None and self.repetition_penalty != 1.0)
        )

    def _package_rollouts(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        import torch
        from trl.models import unwrap_model_for_generation
        from trl.trainer.utils import pad

        from irlnb.rl.generation import Decoding, decode

        groups = repeated_groups(prompt_ids)
        samples = len(prompt_ids) // len(groups)
        if any(count != samples for _, count in groups):
            groups, samples = [(ids, 1) for ids in prompt_ids], 1
        pad_id = self._tokenizer.pad_token_id
        rows = [torch.tensor(ids) for ids, _ in groups]
        input_ids = pad(rows, padding_value=pad_id, padding_side="left")  # as TRL's own path pads them
        attention_mask = pad([torch.ones_like(row) for row in rows], padding_value=0, padding_side="left")
        decoding = Decoding(
            max_new_tokens=self.max_completion_length,
            do_sample=True,
            temperature=self.temperature,
            top_k=self.top_k or 0,
        )
        device = self.accelerator.device
        seed = int(torch.randint(0, 2**62, (1,)))  # from the global generator the trainer seeds and checkpoints
        stops = torch.tensor(self.eos_token_ids, dtype=torch.long)
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
        ):
            # a PEFT wrapper's forward hides `logits_to_keep` (the prefill's last position only); its base model,
            # the adapters in place, takes it
            model = unwrapped_model.get_base_model() if hasattr(unwrapped_model, "get_base_model") else unwrapped_model
            new = decode(
                model,
                input_ids.to(device),
                attention_mask.to(device),
                decoding,
                samples,
                torch.Generator(device=device).manual_seed(seed),
                stops,
                pad_id,
            )
        return [until_stop(row, stops) for row in new.cpu().tolist()]


def repeated_groups(rows: list[list[int]]) -> list[tuple[list[int], int]]:
    """Runs of equal adjacent rows, as (row, how many)."""
    groups: list[tuple[list[int], int]] = []
    for row in rows:
        if groups and groups[-1][0] == row:
            groups[-1] = (row, groups[-1][1] + 1)
        else:
            groups.append((row, 1))
    return groups


def until_stop(tokens: list[int], stops) -> list[int]:
    """`tokens` up to and including the first stop token (all of them when none stops it)."""
    stop_ids = set(stops.tolist())
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: position + 1]
    return tokens


def rollout_trainer(name: str):
    """TRL's trainer class `name` ("RLOOTrainer", "GRPOTrainer") with its rollouts drawn by `PackageRollouts`."""
    trl_trainer = getattr(trl, name)
    if name == "GRPOTrainer":

        class Trainer(PackageRollouts, trl_trainer):
            def _generate_single_turn(
                self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
            ):
                if not self._package_sampler_applies(images, multimodal_fields):
                    return super()._generate_single_turn(
                        prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                    )
                return self._package_rollouts(prompt_ids), None  # no log-probabilities, as TRL's own path

    else:

        class Trainer(PackageRollouts, trl_trainer):
            def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
                if not self._package_sampler_applies(images, multimodal_fields):
                    return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
                return self._package_rollouts(prompt_ids)

    Trainer.__name__ = Trainer.__qualname__ = f"PackageRollouts{name}"
    return Trainer


def lora_config(section):
    """The LoRA adapter of the section's `lora_rank` on every linear layer, or None for full fine-tuning."""
    if not section.lora_rank:
        return None
    from peft import LoraConfig  # peft loads only when LoRA is asked for

    return LoraConfig(
        r=section.lora_rank, lora_alpha=2 * section.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
    )


class FrozenWeightsInBfloat16(TrainerCallback):
    """While a LoRA policy trains under bfloat16 autocast, the frozen linear weights its adapters sit on are held
    in bfloat16, and given back in float32 when training ends (before the adapter is merged into them). Autocast
    casts a weight that takes no gradient anew at each use; the cast is exact rounding, so the step's numbers are
    the same bit for bit (tests/test_infonca.py), without casting every frozen matrix at every step (`irlnb bench`:
    `infonca_step.frozen_bfloat16_speedup`)."""

    def __init__(self) -> None:
        self.float32_weights: dict[torch.nn.Parameter, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for layer in model.modules():
            base = getattr(layer, "base_layer", None)  # a peft LoRA layer's frozen layer
            if isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
                self.float32_weights[base.weight] = base.weight.data
                base.weight.data = base.weight.data.to(torch.bfloat16)

    def on_train_end(self, args, state, control, **kwargs):
        for weight, float32 in self.float32_weights.items():
            weight.data = float32
        self.float32_weights = {}


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


def train_policy(
    policy_dir: str | Path,
    tokenizer,
    prompts: list[str],
    reward: PolicyReward,
    config,
    kind,
    peft_config=None,
    trainer_class=None,
):
    """Train with the kind's TRL trainer, its rollouts drawn by the package's sampler (`rollout_trainer`; or
    `trainer_class`: the bench times TRL's own beside it), resuming from the last checkpoint in config.output_dir.

    `policy_dir` must be a saved model folder: with beta > 0 TRL loads the frozen reference
    policy from the same path.
    """
    if any(not p.strip() for p in prompts):
        raise ValueError("an empty prompt cannot be trained on")
    trainer = (trainer_class or rollout_trainer(kind.trl_classes[0]))(
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


def job_trainer(job: TrainingJob):
    """The TRL trainer of a job, trained or, when finished under the same training key, loaded."""
    config = trl_config(job.checkpoints, job.kind, job.section, job.rlhf, job.seed, use_cpu=job.device == "cpu")
    start = job.start
    return train_policy(
        start.policy_dir, start.tokenizer, start.prompts, start.reward, config, job.kind, lora_config(job.section)
    )


def train_policy_gradient(job: TrainingJob) -> TrainingResult:
    """The train function of the policy-gradient kinds (`rloo`, `grpo`: irlnb.rl.kinds)."""
    with scoring_completions_only():
        trainer = job_trainer(job)
    return TrainingResult(
        model=trained_policy(trainer),
        log=training_log(trainer, job.start.reward),
        steps=trainer.state.global_step,
        resumed_from=trainer.resumed_from_step,
        start=job.start,
    )


class StepProgress(TrainerCallback):
    """Step i/N, the raw reward mean (RL) or the loss (DPO), seconds per step and time left, in the notebook and
    on the runner's terminal."""

    def __init__(self, reward: PolicyReward, what: str = "RLHF"):
        self.reward, self.what, self.progress = reward, what, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(args.max_steps, f"{self.what} ({self.reward.__name__} reward)", unit="step")
        self.progress.update(state.global_step)  # a resumed training starts where it stopped

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "reward" in logs:
            raw = logs["reward"] * self.reward.normalizer.std + self.reward.normalizer.mean
            self.progress.update(state.global_step - self.progress.done, reward_mean=raw)
        elif "loss" in logs:
            self.progress.update(state.global_step - self.progress.done, loss=logs["loss"])

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
