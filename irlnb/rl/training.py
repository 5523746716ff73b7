"""One alignment stage (notebook 03, and `accelerate launch` through irlnb.rl.launch): the reward, the prompts,
the training key, then the kind's own train function (irlnb.rl.kinds).

A training is keyed by what it depends on and nothing else (the base policy's weights, the
settings its kind reads, the seed, the reward's identity, the exact prompts and scale texts), and
its resumable checkpoints are kept under that key, so an evaluation setting never retrains a
policy and a killed training resumes only if it trains the same thing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import AutoConfig

from irlnb.data.curation import load_curated
from irlnb.layout import RunLayout
from irlnb.models.policies import check_same_vocabulary, load_tokenizer, policy_dir, weights_sha256
from irlnb.params_file import settings_digest
from irlnb.rl.generation import context_limit, fit_prompts
from irlnb.rl.kinds import BROUGHT, AlignmentKind, kind_of, kind_section, seed_offset
from irlnb.rl.reward_signal import Normalizer, PolicyReward, make_scorer, normalizer_texts
from irlnb.rl.training_job import StageTraining, TrainingJob, TrainingResult

GUARD_TEXTS = 100  # validation human non-toxic texts whose perplexity guards rejection-sampling fine-tuning


def training_rows(curated: pd.DataFrame, rlhf, kind: AlignmentKind, section, seed: int) -> pd.DataFrame:
    """The curated train comments whose prompts an alignment trains on: the pool of `rlhf.train_prompts`, or, for
    a kind that holds its prompts out of IRL's (dpo), a seeded sample of `<section>.prompts` of that pool."""
    train = curated[curated["split"] == "train"]
    if rlhf.train_prompts == "toxic":
        train = train[train["label"] == 1]
    if kind.holds_out_prompts:
        train = train.sample(n=section.prompts, random_state=seed)
    return train


def alignment_seed(compute, rlhf) -> int:
    """The seed of an alignment: compute.seed, moved by rlhf.seed (the recoverability study varies only this)."""
    return compute.seed + seed_offset(rlhf)


def stage_kind(settings, reward_kind: str) -> AlignmentKind:
    """The kind a stage aligns with: rlhf.trainer, or the brought model for the expert of an audit."""
    if reward_kind == "ground_truth" and settings.sources.expert:
        return BROUGHT
    return kind_of(settings.rlhf.trainer)


def training_key(
    settings, kind: AlignmentKind, reward_identity: dict[str, Any], prompts: list[str], scale_texts: list[str]
) -> str:
    """What a trained policy depends on, and nothing else: its checkpoints are kept under this key.

    The base policy's weights, the settings its kind reads, the seed, the reward's identity and the
    exact prompts and scale texts. An evaluation setting is not part of it, so changing one
    re-evaluates a finished policy instead of training it again.
    """
    if kind is BROUGHT:  # a model brought to be audited is what it is
        return settings_digest({"expert": weights_sha256(policy_dir(settings.sources.expert))})
    rlhf = kind.key_settings(settings.rlhf, kind_section(settings, kind))
    if kind.samples_in_inference_dtype:
        rlhf["inference_dtype"] = settings.compute.inference_dtype
    if kind.trains_in_training_dtype:
        rlhf["training_dtype"] = settings.compute.training_dtype
    if kind.compiles_layers:
        rlhf["training_layers"] = settings.compute.training_layers
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


def prepare_training(layout: RunLayout, reward_kind: str, kind: AlignmentKind, settings, device: str) -> StageTraining:
    """The reward of `reward_kind`, its scale fixed on human train texts; the train prompts; the key of `kind`.

    `settings`: a stage's settings or a Config (anything with the typed sections as attributes).
    """
    curated = load_curated(layout)
    scorer, identity = make_scorer(
        reward_kind,
        layout,
        sources=settings.sources,
        ground_truth=settings.ground_truth,
        rlhf=settings.rlhf,
        random_reward=settings.random_reward if reward_kind == "random" else None,
        device=device,
        dtype=settings.compute.inference_dtype,
    )
    scale_texts = normalizer_texts(curated, settings.compute.seed)
    # No scorer: R* of an audit without R* (only a brought expert, never trained: the config refuses the rest).
    normalizer = Normalizer(0.0, 1.0) if scorer is None else Normalizer.fit(scorer(scale_texts))
    reward = PolicyReward(scorer, normalizer, name=reward_kind)
    folder = policy_dir(settings.sources.policy)
    tokenizer = load_tokenizer(settings.sources.policy)
    limit = context_limit(AutoConfig.from_pretrained(folder), settings.rlhf.max_completion_length)
    section = kind_section(settings, kind)
    rows = training_rows(curated, settings.rlhf, kind, section, alignment_seed(settings.compute, settings.rlhf))
    prompts, prompts_cut = fit_prompts(rows["prompt"].tolist(), tokenizer, limit)
    validation = curated[(curated["split"] == "validation") & (curated["label"] == 0)]
    guard = validation["text"].head(GUARD_TEXTS).tolist()
    brought = settings.sources.expert if kind is BROUGHT else ""
    key = training_key(settings, kind, identity, prompts, scale_texts)
    return StageTraining(reward, prompts, prompts_cut, folder, tokenizer, key, guard, brought, rows["id"].tolist())


def training_job(layout: RunLayout, stage_name: str, start: StageTraining, kind: AlignmentKind, settings, device: str):
    """The job a kind's train function receives: its checkpoint folder (under the training key), seed and settings."""
    return TrainingJob(
        kind=kind,
        start=start,
        checkpoints=checkpoint_dir(layout, stage_name, start.key),
        frozen_cache=layout.cache,
        seed=alignment_seed(settings.compute, settings.rlhf),
        rlhf=settings.rlhf,
        section=kind_section(settings, kind),
        inference_dtype=settings.compute.inference_dtype,
        device=device,
        training_dtype=settings.compute.training_dtype if kind.trains_in_training_dtype else "float32",
        compiled_layers=kind.compiles_layers and settings.compute.training_layers == "compiled",
    )


def run_stage_training(stage, reward_kind: str) -> tuple[AlignmentKind, TrainingResult]:
    """Align the base policy with the chosen reward by the stage's kind, resuming if interrupted.

    `stage`: notebook 03's stage context (its layout, name, settings and device). A training that
    finished earlier under the same training key is only loaded; a brought expert is loaded as it is.
    """
    kind = stage_kind(stage, reward_kind)
    start = prepare_training(stage.layout, reward_kind, kind, stage, stage.device)
    if kind is BROUGHT:
        check_same_vocabulary(start.brought, stage.sources.policy)
    return kind, kind.train(training_job(stage.layout, stage.name, start, kind, stage, stage.device))
