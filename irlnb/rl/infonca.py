"""InfoNCA (Chen et al. 2024, arXiv 2402.05369): the train function of the `infonca` kind.

The base policy samples `infonca.n` continuations of each of its `infonca.prompts` train prompts (the samples DPO
draws for the same n: irlnb.rl.candidates), and the reward scores every one, scaled to unit sd on human train texts.
Within a prompt, the policy's softmax over its log-ratios log pi(y | x) - log pi_base(y | x) of the samples is
fitted to the soft target softmax(R(x, y) / beta) by cross-entropy. The loss is least where
log pi(y | x) - log pi_base(y | x) = R(x, y) / beta + c(x) on every sample: the KL-regularised optimum
pi_base * exp(R / beta) / Z itself, on the support the samples show. DPO fits a hard preference between two samples;
this fits how much better each of n samples is, so the log-ratio can order a prompt's continuations as R does
(issue: the expert at its optimum; `irl.log_ratio.*.within_prompt_spearman` measures it).

The base's log-probabilities of the samples are read once, before the first step, by the same forward and dtype the
policy trains in (its LoRA adapter starts at zero), and kept beside the checkpoints with the scored samples, so a
resumed training fits the same targets; the alignments of one run that share the samples read them once
(`shared_reference`). The step runs in `compute.training_dtype`: bfloat16 autocast over float32
weights where the device computes it natively (`irlnb bench`'s `infonca_step` keys compare it with float32), the
frozen weights under the adapter held in bfloat16 meanwhile (`FrozenWeightsInBfloat16`, the same numbers); the
policy reads with `irlnb.compute.training_attention` (eager on a CPU) and projects only the samples' positions
(`continuation_log_probs`); its decoder layers run compiled where `compute.training_layers` is 'compiled'
(`irlnb.compute.compiled_decoder_layers`), for the reference pass too, so the log-ratios start at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from irlnb.compute import compiled_decoder_layers, frozen_cached, training_attention
from irlnb.layout import read_json, write_json_atomic
from irlnb.models.policies import weights_sha256
from irlnb.progress import tracked
from irlnb.rewards.likelihood import continuation_log_probs, continuation_rows, padded_rows
from irlnb.rl.candidates import base_candidates, candidates_folder
from irlnb.rl.policy_gradient import (
    FrozenWeightsInBfloat16,
    StepProgress,
    checkpointing,
    finished_training,
    lora_config,
)
from irlnb.rl.training_job import TrainingJob, TrainingResult

SAMPLES_FILE = "infonca_samples.json"  # the scored samples and base log-probabilities of a training key


def soft_targets(rewards: np.ndarray, beta: float) -> np.ndarray:
    """softmax(R / beta) over each row's samples: the optimum's distribution over a prompt's samples."""
    scaled = np.asarray(rewards, dtype=np.float64) / beta
    scaled -= scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=1, keepdims=True)


def infonca_loss(log_ratios: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the soft targets [prompts, n] against the softmax of the log-ratios, averaged over prompts;
    least where the log-ratios equal log(targets) plus a per-prompt constant."""
    return -(targets * torch.log_softmax(log_ratios.float(), dim=-1)).sum(dim=-1).mean()


@dataclass
class ScoredSamples:
    """Per prompt, the base's `n` samples, their scaled rewards and the base's log-probability of each."""

    prompts: list[str]
    samples: list[list[str]]
    rewards: np.ndarray  # [prompts, n], the reward scaled to unit sd on human train texts
    reference: np.ndarray  # [prompts, n], log pi_base(sample | prompt)

    def to_json(self) -> dict:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "rewards": self.rewards.tolist(),
            "reference": self.reference.tolist(),
        }

    @classmethod
    def from_json(cls, kept: dict) -> ScoredSamples:
        return cls(kept["prompts"], kept["samples"], np.asarray(kept["rewards"]), np.asarray(kept["reference"]))


class PromptSamples(torch.utils.data.Dataset):
    """One item per prompt: its samples' token rows, soft targets and base log-probabilities."""

    def __init__(self, samples: ScoredSamples, tokenizer, beta: float):
        n = samples.rewards.shape[1]
        rows = continuation_rows(
            tokenizer,
            [prompt for prompt in samples.prompts for _ in range(n)],
            [sample for drawn in samples.samples for sample in drawn],
        )
        self.rows = [rows[i * n : (i + 1) * n] for i in range(len(samples.prompts))]
        self.targets = soft_targets(samples.rewards, beta)
        self.reference = samples.reference

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"rows": self.rows[i], "targets": self.targets[i], "reference": self.reference[i]}


def collate(pad_id: int):
    """Prompts' samples flattened into one right-padded batch [prompts * n, length], with their targets [prompts, n]."""

    def batch(items: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask, scored = padded_rows([row for item in items for row in item["rows"]], pad_id)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "scored": scored,
            "targets": torch.tensor(np.stack([item["targets"] for item in items]), dtype=torch.float32),
            "reference": torch.tensor(np.stack([item["reference"] for item in items]), dtype=torch.float64),
        }

    return batch


class InfoNcaTrainer(Trainer):
    """transformers' Trainer with the InfoNCA loss (checkpoints, resumption, autocast and the schedule are its)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_metrics: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = inputs["targets"]
        log_probs = continuation_log_probs(model, inputs["input_ids"], inputs["attention_mask"], inputs["scored"])
        log_ratios = log_probs.double().view(targets.shape) - inputs["reference"]
        loss = infonca_loss(log_ratios, targets)
        with torch.no_grad():
            for name, value in batch_agreement(log_ratios.detach().float(), targets).items():
                self.step_metrics.setdefault(name, []).append(value)
        return (loss, log_ratios) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update({name: float(np.mean(values)) for name, values in self.step_metrics.items()})
            self.step_metrics = {}
        super().log(logs, *args, **kwargs)


def batch_agreement(log_ratios: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """How far a batch is from the optimum: the share of prompts whose highest log-ratio is the reward's best
    sample, and the mean log-ratio."""
    best = (log_ratios.argmax(dim=-1) == targets.argmax(dim=-1)).float().mean()
    return {"best_sample_accuracy": float(best), "log_ratio_mean": float(log_ratios.mean())}


def scored_samples(job: TrainingJob, model) -> ScoredSamples:
    """The prompts' base samples scored by the reward, with the base's log-probabilities read by `model` (the LoRA
    policy before its first step, in the training dtype). Kept beside the checkpoints: a resume reads them back."""
    saved = job.checkpoints / SAMPLES_FILE
    if saved.is_file():
        return ScoredSamples.from_json(read_json(saved))
    start = job.start
    candidates = base_candidates(job)
    prompts = [prompt for prompt in start.prompts for _ in range(job.section.n)]
    flat = [sample for drawn in candidates for sample in drawn]
    rewards = np.asarray(start.reward(prompts, flat)).reshape(len(start.prompts), job.section.n)
    reference = shared_reference(job, model, prompts, flat)
    samples = ScoredSamples(list(start.prompts), candidates, rewards, reference.reshape(rewards.shape))
    write_json_atomic(saved, samples.to_json())
    return samples


def shared_reference(job: TrainingJob, model, prompts: list[str], samples: list[str]) -> np.ndarray:
    """`sample_log_probs` of the base samples, read once for the alignments of one run that share them (with R*,
    R-hat and a random reward: irlnb.rl.candidates) and kept beside them: the same rows, batches and dtype give the
    same numbers, so a later alignment reads them back (`frozen_cached`). The LoRA policy before its first step
    reads as its base (its adapter adds an exact zero)."""
    key = {
        "reference": weights_sha256(job.start.policy_dir),
        "prompts": prompts,
        "samples": samples,
        "batch": job.section.per_device_train_batch_size * job.section.n,
        "dtype": job.training_dtype,
        "device": job.device,
        "attention": training_attention(job.device),
        "projected": "scored positions",  # continuation_log_probs' output layer
        "compiled": job.compiled_layers,
    }
    return frozen_cached(
        candidates_folder(job),
        "infonca-reference-log-probs",
        key,
        lambda: torch.from_numpy(sample_log_probs(model, job.start.tokenizer, prompts, samples, job)),
        lambda kept: isinstance(kept, torch.Tensor) and kept.shape == (len(samples),),
    ).numpy()


def sample_log_probs(model, tokenizer, prompts, continuations, job: TrainingJob) -> np.ndarray:
    """log model(continuation | prompt), read as the training step reads it (same rows, dtype and autocast)."""
    rows = continuation_rows(tokenizer, prompts, continuations)
    batch = job.section.per_device_train_batch_size * job.section.n
    out = np.zeros(len(rows))
    model.eval()
    with torch.no_grad(), training_autocast(job):
        starts = range(0, len(rows), batch)
        for begin in tracked(starts, len(starts), f"base log-probabilities of {len(rows)} samples"):
            ids, mask, scored = padded_rows(rows[begin : begin + batch], tokenizer.pad_token_id)
            out[begin : begin + batch] = continuation_log_probs(model, ids, mask, scored).double().numpy()
    return out


def training_autocast(job: TrainingJob):
    """The autocast the Trainer's step runs under (accelerate's mixed precision): bfloat16 or none."""
    return torch.autocast(job.device, dtype=torch.bfloat16, enabled=job.training_dtype == "bfloat16")


def infonca_arguments(job: TrainingJob, max_steps: int) -> TrainingArguments:
    section = job.section
    return TrainingArguments(
        output_dir=str(job.checkpoints),
        max_steps=max_steps,
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.per_device_train_batch_size,
        **checkpointing(section.save_steps, job.seed, job.device == "cpu"),
        bf16=job.training_dtype == "bfloat16",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def train_infonca(job: TrainingJob) -> TrainingResult:
    """Score the samples, then fit their soft targets (`finished_training`: resumed or only loaded)."""
    from peft import get_peft_model  # LoRA is this kind's default; peft loads only with it

    section, start = job.section, job.start
    model = AutoModelForCausalLM.from_pretrained(
        start.policy_dir, dtype=torch.float32, attn_implementation=training_attention(job.device)
    ).to(job.device)
    adapter = lora_config(section)
    if adapter is not None:
        torch.manual_seed(job.seed)  # its initialisation: the same whether the samples were drawn now or read back
        model = get_peft_model(model, adapter)
    with compiled_decoder_layers(model, job.compiled_layers):  # the reference pass and the steps alike
        samples = scored_samples(job, model)
        dataset = PromptSamples(samples, start.tokenizer, section.beta)
        max_steps = section.num_train_epochs * math.ceil(len(dataset) / section.per_device_train_batch_size)
        trainer = InfoNcaTrainer(
            model=model,
            args=infonca_arguments(job, max_steps),
            train_dataset=dataset,
            data_collator=collate(start.tokenizer.pad_token_id),
            callbacks=[
                StepProgress(start.reward, what="InfoNCA"),
                *([FrozenWeightsInBfloat16()] if adapter is not None and job.training_dtype == "bfloat16" else []),
            ],
        )
        return finished_training(trainer, job, infonca_log)


INFONCA_LOG_COLUMNS = ("loss", "best_sample_accuracy", "log_ratio_mean", "grad_norm")


def infonca_log(trainer) -> pd.DataFrame:
    """One row per step: the loss, how often the highest log-ratio is the reward's best sample, the mean
    log-ratio and the gradient norm."""
    rows = [row for row in trainer.state.log_history if "loss" in row and "step" in row]
    return pd.DataFrame(
        [{"step": row["step"], **{name: row.get(name) for name in INFONCA_LOG_COLUMNS}} for row in rows],
        columns=["step", *INFONCA_LOG_COLUMNS],
    )
