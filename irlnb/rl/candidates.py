"""The base policy's samples of a kind's train prompts, drawn once: the kinds that fit scored base samples (dpo,
infonca) read them, and every alignment of the same base on the same prompts shares them (a run's alignments with
R*, R-hat and a random reward, and the candidates of `irlnb tune-expert` in one runs directory)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from irlnb.compute import frozen_cached
from irlnb.models.policies import weights_sha256
from irlnb.rl.generation import sample_continuations
from irlnb.rl.sampling import sampling_decoding
from irlnb.rl.training_job import TrainingJob


def candidates_folder(job: TrainingJob) -> Path:
    """Where the alignments of one base keep what they share: the base's samples and what the reference reads of
    them, in the frozen cache of the runs directory, each file named by a digest of what it depends on."""
    return job.frozen_cache / "base_candidates"


def base_candidates(job: TrainingJob) -> list[list[str]]:
    """`<kind>.n` samples of the base policy per prompt (dpo, infonca). They depend on the base, the prompts, the
    decoding, the seed, the dtype, the device and the batch size, never on the reward: every alignment that draws them
    orders the same samples, drawn once and cached under a digest of what they depend on (`frozen_cached`)."""
    start, section = job.start, job.section
    decoding = sampling_decoding(job.rlhf)
    batch_size = 2 * job.rlhf.reward_batch_size  # each batch draws with its own seed; bfloat16 depends on padding
    key = {
        "policy": weights_sha256(start.policy_dir),
        "prompts": start.prompts,
        "decoding": asdict(decoding),
        "n": section.n,
        "seed": job.seed,
        "dtype": job.inference_dtype,
        "device": job.device,
        "batch_size": batch_size,
    }

    def draw() -> list[list[str]]:
        model = AutoModelForCausalLM.from_pretrained(start.policy_dir, dtype=getattr(torch, job.inference_dtype))
        return sample_continuations(
            model.to(job.device), start.tokenizer, start.prompts, decoding, section.n, batch_size, job.seed
        )

    return frozen_cached(
        candidates_folder(job),
        "samples",
        key,
        draw,
        lambda kept: len(kept) == len(start.prompts) and all(len(drawn) == section.n for drawn in kept),
    )
