"""Direct preference optimisation: the train function of the `dpo` kind.

The base policy samples `dpo.n` continuations of each of its `dpo.prompts` train prompts; the
reward orders them, and its best and worst form a preference pair (a pair whose two sides score
the same, or read the same, says nothing and is left out). TRL's `DPOTrainer` then fits the policy
to the pairs, with the base as the frozen reference (its log-probabilities computed once). DPO's
fixed point is pi_base * exp(r / beta) / Z for the Bradley-Terry reward r the pairs reveal, the
same optimum as KL-regularised RL: what a trained expert carries of its reward is what IRL reads.

The prompts are a seeded sample of the train prompts (irlnb.rl.training.training_rows); IRL's
demonstrations never use them (irlnb.irl.demonstrations). This module imports TRL; only a training
loads it.

The alignments of one run with R*, R-hat and a random reward order the same base samples into pairs
(irlnb.rl.candidates), so the reference's log-probability of each sample given its prompt is read once:
the first alignment reads its pairs through TRL's precomputation, exactly as TRL alone would, and keeps
each sample's value beside the samples (`ReferenceLogProbs`); a later alignment reads its pairs' values
there and sends only samples not yet read through the reference.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
import trl
from transformers import AutoModelForCausalLM

from irlnb.compute import cache_file
from irlnb.layout import read_json, write_json_atomic
from irlnb.models.policies import weights_sha256
from irlnb.rl.candidates import base_candidates, candidates_folder
from irlnb.rl.policy_gradient import (
    FrozenWeightsInBfloat16,
    StepProgress,
    checkpointing,
    finished_training,
    lora_config,
    scoring_completions_only,
)
from irlnb.rl.training_job import TrainingJob, TrainingResult

PAIRS_FILE = "dpo_pairs.json"  # the pairs of a training key, kept beside its checkpoints (a resume reuses them)


def preference_pairs(prompts: list[str], candidates: list[list[str]], scores: np.ndarray) -> pd.DataFrame:
    """Per prompt, the reward's best candidate (chosen) against its worst (rejected), with both scores; prompts
    whose best and worst score the same or read the same are left out (they carry no preference)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(prompts), -1)
    rows = []
    for prompt, options, row in zip(prompts, candidates, scores):
        best, worst = int(row.argmax()), int(row.argmin())
        if row[best] == row[worst] or options[best].strip() == options[worst].strip():
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": options[best],
                "rejected": options[worst],
                "chosen_reward": float(row[best]),
                "rejected_reward": float(row[worst]),
            }
        )
    return pd.DataFrame(rows, columns=["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"])


def draw_pairs(job: TrainingJob) -> pd.DataFrame:
    """The preference pairs of a job: `dpo.n` base samples per prompt (inference dtype), ordered by its reward.
    Kept beside the checkpoints, so a resumed training fits the same pairs without sampling again."""
    saved = job.checkpoints / PAIRS_FILE
    if saved.is_file():
        return pd.DataFrame(read_json(saved))
    start = job.start
    candidates = base_candidates(job)
    texts = [prompt + option for prompt, options in zip(start.prompts, candidates) for option in options]
    pairs = preference_pairs(start.prompts, candidates, start.reward.scorer(texts))
    write_json_atomic(saved, pairs.to_dict(orient="list"))
    return pairs


class ReferenceLogProbs:
    """The reference policy's log-probability of each completion given its prompt, keyed by their token ids, as TRL's
    precomputation read them: a JSON object {"<prompt ids>|<completion ids>": value}. Its file is named by what the
    values depend on (the reference's weights, the step's dtype and device, the precomputation's batch, as bfloat16
    rounds a row by its batch's padding, and TRL's version), so a value is never read under other settings."""

    def __init__(self, path: Path):
        self.path = path
        try:
            kept = read_json(path, default={})
        except ValueError:  # a damaged file is read again, as any frozen cache is (irlnb.compute.frozen_cached)
            kept = {}
        usable = isinstance(kept, dict) and all(isinstance(value, float) for value in kept.values())
        self.values: dict[str, float] = kept if usable else {}

    @classmethod
    def of_job(cls, job: TrainingJob, batch_size: int) -> ReferenceLogProbs:
        key = {
            "reference": weights_sha256(job.start.policy_dir),
            "dtype": job.training_dtype,
            "device": job.device,
            "batch_size": batch_size,
            "trl": trl.__version__,  # whose precomputation read them
        }
        return cls(cache_file(candidates_folder(job), "dpo-reference-log-probs", key, suffix=".json"))

    @staticmethod
    def keys(rows: datasets.Dataset, side: str) -> list[str]:
        """The keys of the `side` ("chosen" or "rejected") of TRL's tokenized pairs (`prompt_ids`, `<side>_ids`)."""
        return [
            f"{','.join(map(str, prompt))}|{','.join(map(str, completion))}"
            for prompt, completion in zip(rows["prompt_ids"], rows[f"{side}_ids"], strict=True)
        ]

    def missing(self, rows: datasets.Dataset) -> list[int]:
        """Indices of the pairs with a side not yet read."""
        sides = zip(self.keys(rows, "chosen"), self.keys(rows, "rejected"))
        return [index for index, keys in enumerate(sides) if any(key not in self.values for key in keys)]

    def add(self, rows: datasets.Dataset, read: datasets.Dataset) -> None:
        """Keep what TRL's precomputation `read` of `rows` (its `ref_<side>_logps`) and write the file atomically."""
        for side in ("chosen", "rejected"):
            self.values.update(zip(self.keys(rows, side), map(float, read[f"ref_{side}_logps"]), strict=True))
        write_json_atomic(self.path, self.values)

    def columns(self, rows: datasets.Dataset) -> datasets.Dataset:
        """The `ref_chosen_logps` and `ref_rejected_logps` columns of `rows`, as TRL's precomputation adds them."""
        names = {side: f"ref_{side}_logps" for side in ("chosen", "rejected")}
        values = {name: [self.values[key] for key in self.keys(rows, side)] for side, name in names.items()}
        features = datasets.Features({name: datasets.Value("float32") for name in names.values()})
        return datasets.Dataset.from_dict(values, features=features)


class SharedReferenceDPOTrainer(trl.DPOTrainer):
    """TRL's DPOTrainer whose reference log-probabilities of the pairs are read from `reference` where an earlier
    alignment of the same base samples read them, and through TRL's precomputation (then kept there) where not."""

    def __init__(self, *args, reference: ReferenceLogProbs, **kwargs):
        self.reference = reference  # TRL's __init__ precomputes: set first
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: datasets.Dataset, name: str, batch_size: int) -> datasets.Dataset:
        missing = self.reference.missing(dataset)
        if missing:
            rows = dataset if len(missing) == len(dataset) else dataset.select(missing)  # all: TRL's own batches
            self.reference.add(rows, super()._precompute_ref_logps(rows, name, batch_size))
        return datasets.concatenate_datasets([dataset, self.reference.columns(dataset)], axis=1)


def dpo_config(output_dir: Path, section, seed: int, use_cpu: bool, max_steps: int, bf16: bool):
    """TRL's DPOConfig from the section's settings (under TRL's names), with every setting that matters on CPU
    spelled out. `bf16`: the step (and the reference log-probabilities, computed once before it) under bfloat16
    autocast over float32 weights (accelerate's mixed precision), else float32: the job's training_dtype, which is
    compute.training_dtype (`irlnb bench`'s `dpo_step.*` measure the two side by side)."""
    return trl.DPOConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=section.learning_rate,
        beta=section.beta,
        per_device_train_batch_size=section.per_device_train_batch_size,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=2 * section.per_device_train_batch_size,
        max_length=None,
        **checkpointing(section.save_steps, seed, use_cpu),
        bf16=bf16,
        disable_dropout=True,
        dataloader_num_workers=0,
    )


def train_dpo(job: TrainingJob) -> TrainingResult:
    """Draw the pairs, then fit them with TRL's DPOTrainer (`finished_training`: resumed or only loaded)."""
    pairs = draw_pairs(job)
    if len(pairs) < job.section.per_device_train_batch_size:
        raise ValueError(
            f"only {len(pairs)} of {len(job.start.prompts)} dpo prompts gave a preference pair (the reward scored "
            f"their samples equal); raise dpo.prompts or dpo.n"
        )
    section = job.section
    max_steps = section.num_train_epochs * math.ceil(len(pairs) / section.per_device_train_batch_size)
    model = AutoModelForCausalLM.from_pretrained(job.start.policy_dir, dtype=torch.float32)
    args = dpo_config(
        job.checkpoints, section, job.seed, job.device == "cpu", max_steps, job.training_dtype == "bfloat16"
    )
    with scoring_completions_only():  # the reference's precomputation (in __init__) and the steps
        trainer = SharedReferenceDPOTrainer(
            reference=ReferenceLogProbs.of_job(job, args.precompute_ref_batch_size),
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_pandas(pairs[["prompt", "chosen", "rejected"]], preserve_index=False),
            processing_class=copy.deepcopy(job.start.tokenizer),
            peft_config=lora_config(section),
            callbacks=[
                StepProgress(job.start.reward, what="DPO"),
                *([FrozenWeightsInBfloat16()] if section.lora_rank and args.bf16 else []),
            ],
        )
        return finished_training(trainer, job, dpo_log)


DPO_LOG_COLUMNS = {
    "loss": "loss",
    "rewards/chosen": "implicit_reward_chosen",
    "rewards/rejected": "implicit_reward_rejected",
    "rewards/accuracies": "implicit_reward_accuracy",
    "rewards/margins": "implicit_reward_margin",
    "grad_norm": "grad_norm",
}


def dpo_log(trainer) -> pd.DataFrame:
    """One row per step: DPO loss, the implicit reward beta * log pi / pi_base of chosen and rejected, and how
    often it orders a training pair as the reward did."""
    rows = [row for row in trainer.state.log_history if "loss" in row and "step" in row]
    return pd.DataFrame(
        [{"step": row["step"], **{name: row.get(key) for key, name in DPO_LOG_COLUMNS.items()}} for row in rows],
        columns=["step", *DPO_LOG_COLUMNS.values()],
    )
