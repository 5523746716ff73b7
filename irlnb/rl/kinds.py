"""The kinds of alignment, one record each: everything the package knows about a kind lives here.

A kind's record says which settings section it reads (the section of its name in irlnb/config.py,
plus the shared `rlhf` settings it names), whether its policy has weights of its own (and, if not,
how many base samples it picks from), how figures name and colour it, how it trains (or loads) a
policy, which of its settings measures its budget and which budgets the recoverability study runs,
and whether it runs TRL's RL loop (so `accelerate launch` can run it). Nothing else in the package
compares a kind's name: code asks the record.

Adding a kind: a settings section in irlnb/config.py (and its name in `ALIGNMENT_KINDS`), a train
function, and one record below.

Reading this module does not load TRL: a kind's train function imports its trainer when it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from irlnb.config import ALIGNMENT_KINDS, SECTIONS
from irlnb.errors import IrlnbError
from irlnb.rl.training_job import TrainingJob, TrainingResult


class KindError(IrlnbError, ValueError):
    """A kind of alignment that does not exist, or cannot do what was asked of it."""


@dataclass(frozen=True)
class AlignmentKind:
    """One way of aligning the base policy with a reward."""

    name: str  # also its settings section in irlnb/config.py (none for a brought model)
    has_weights: bool  # its policy is a model of its own (else: the base model plus the reward, decoded)
    train: Callable[[TrainingJob], TrainingResult]  # trains, resumes or loads the policy of a job
    label: Callable[[Any], str]  # its name in figures, from its settings section
    shared_settings: tuple[str, ...] = ()  # the rlhf settings it reads (its whole section counts too)
    budget: str = ""  # the setting of its section that measures how much alignment it buys
    short_label: str = ""  # its name where figures compare kinds (a legend; the title of its budget's panels)
    budget_axis: str = ""  # what its budget counts: the axis label of figures that grow it
    colour: str = "black"  # its colour where figures compare kinds
    study_budgets: tuple[int, ...] = ()  # the values of its budget the recoverability study runs (none: not studied)
    study_order: int = 0  # its place among the studied kinds, in which each seed of the study runs them
    candidates: Callable[[Any], int] | None = None  # without weights: how many base samples its policy picks from
    trl_classes: tuple[str, str] = ("", "")  # its TRL trainer and config class: it runs TRL's RL loop (accelerate)
    samples_in_inference_dtype: bool = False  # it samples with the inference dtype: part of its training key
    kl_to_base: Callable[[Any], float] | None = None  # KL(policy || base) known in closed form from its settings
    holds_out_prompts: bool = False  # trains on a sample of `<section>.prompts` train prompts that IRL never uses
    trains_in_training_dtype: bool = False  # its step runs in compute.training_dtype (others train in float32)
    compiles_layers: bool = False  # its step runs its decoder layers compiled where compute.training_layers says so

    def __post_init__(self) -> None:
        if not self.has_weights and self.candidates is None:
            raise KindError(
                f"alignment kind {self.name!r} has no weights of its own: its record must say how many base samples "
                "its policy picks from (candidates)"
            )

    @property
    def budget_label(self) -> str:
        """The title of its budget's panels in figures: which kind, and what its budget counts."""
        return f"{self.short_label}: {self.budget_axis}"

    @property
    def policy_gradient(self) -> bool:
        """It trains with TRL's RL loop, so `accelerate launch -m irlnb.rl.launch` can run it."""
        return bool(self.trl_classes[0])

    @property
    def settings_section(self) -> str | None:
        return self.name if self.name in SECTIONS else None

    def budget_setting(self) -> str:
        """'section.key' of its budget (the recoverability study grows it)."""
        if not self.budget:
            raise KindError(f"alignment kind {self.name!r} has no budget setting")
        return f"{self.name}.{self.budget}"

    def key_settings(self, rlhf, section) -> dict[str, Any]:
        """The settings a trained policy of this kind depends on (its training key covers these and no other)."""
        values = {"trainer": self.name, **{key: getattr(rlhf, key) for key in self.shared_settings}}
        if section is not None:
            values[self.name] = {
                f.name: getattr(section, f.name) for f in fields(SECTIONS[self.name]) if f.metadata["result"]
            }
        return values


# --------------------------------------------------------------------------------------------
# Train functions: each imports its trainer only when it runs (TRL and peft take seconds to load)


def _train_policy_gradient(job: TrainingJob) -> TrainingResult:
    from irlnb.rl.policy_gradient import train_policy_gradient  # loads TRL

    return train_policy_gradient(job)


def _train_dpo(job: TrainingJob) -> TrainingResult:
    from irlnb.rl.dpo import train_dpo  # loads TRL

    return train_dpo(job)


def _train_infonca(job: TrainingJob) -> TrainingResult:
    from irlnb.rl.infonca import train_infonca  # loads transformers' Trainer, peft and TRL's callbacks

    return train_infonca(job)


def _train_rejection_sampling(job: TrainingJob) -> TrainingResult:
    from irlnb.rl.rejection import train_rejection_sampling

    return train_rejection_sampling(job)


def _train_nothing(job: TrainingJob) -> TrainingResult:
    """Best-of-n trains nothing: its policy is the base model plus the reward (irlnb.rl.sampling.BestOfN)."""
    import pandas as pd

    return TrainingResult(model=None, log=pd.DataFrame(columns=["step"]), steps=0, resumed_from=0, start=job.start)


def _load_brought(job: TrainingJob) -> TrainingResult:
    """A model brought to be audited is what it is: loaded, never trained."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from irlnb.models.policies import policy_dir

    model = AutoModelForCausalLM.from_pretrained(policy_dir(job.start.brought), dtype=torch.float32)
    return TrainingResult(
        model=model.eval(), log=pd.DataFrame(columns=["step"]), steps=0, resumed_from=0, start=job.start
    )


# The rlhf settings of a kind that trains on top-k samples of the train prompts, scored by the reward in batches.
SAMPLED_TRAINING = ("seed", "max_completion_length", "top_k", "temperature", "train_prompts", "reward_batch_size")


def _policy_gradient_kind(
    name: str, acronym: str, colour: str, study_budgets: tuple[int, ...] = (), study_order: int = 0
) -> AlignmentKind:
    """A kind trained by TRL's `<acronym>Trainer` with its `<acronym>Config` (RLOO, GRPO): the same settings."""
    return AlignmentKind(
        name,
        has_weights=True,
        train=_train_policy_gradient,
        label=lambda section: f"RLHF ({acronym})",
        shared_settings=SAMPLED_TRAINING,
        budget="max_steps",
        short_label=acronym,
        budget_axis="optimiser steps",
        colour=colour,
        study_budgets=study_budgets,
        study_order=study_order,
        trl_classes=(f"{acronym}Trainer", f"{acronym}Config"),
    )


# The recoverability study's budgets span 8x for each kind (rft 4x: a round samples and fine-tunes on every toxic
# train prompt, minutes each); it runs the kinds in `study_order`, rft, the slowest, last.
KINDS: dict[str, AlignmentKind] = {
    kind.name: kind
    for kind in (
        AlignmentKind(
            "dpo",
            has_weights=True,
            train=_train_dpo,
            label=lambda section: f"DPO (beta {section.beta:g})",
            shared_settings=SAMPLED_TRAINING,
            budget="prompts",
            short_label="DPO",
            budget_axis="preference pairs' prompts",
            colour="#4C72B0",
            study_budgets=(25, 50, 200),
            study_order=0,
            samples_in_inference_dtype=True,
            holds_out_prompts=True,
            # its TRL step in bfloat16 autocast: 1.47x on an AMD EPYC with AVX512-BF16, 0.99x on an AMX Xeon
            # (irlnb bench: dpo_step.bfloat16_speedup; regress/bench-epyc and bench-xeon)
            trains_in_training_dtype=True,
        ),
        AlignmentKind(
            "infonca",
            has_weights=True,
            train=_train_infonca,
            label=lambda section: f"InfoNCA (n {section.n}, beta {section.beta:g})",
            shared_settings=SAMPLED_TRAINING,
            budget="prompts",
            short_label="InfoNCA",
            budget_axis="scored prompts",
            colour="#937860",
            samples_in_inference_dtype=True,
            holds_out_prompts=True,
            trains_in_training_dtype=True,
            compiles_layers=True,
        ),
        _policy_gradient_kind("rloo", "RLOO", "#C44E52", study_budgets=(3, 8, 24), study_order=1),
        _policy_gradient_kind("grpo", "GRPO", "#8172B2"),
        AlignmentKind(
            "rft",
            has_weights=True,
            train=_train_rejection_sampling,
            label=lambda section: "rejection-sampling FT",
            shared_settings=("seed", "max_completion_length", "temperature", "train_prompts", "reward_batch_size"),
            budget="rounds",
            short_label="rejection sampling",
            budget_axis="rounds",
            colour="#55A868",
            study_budgets=(1, 2, 4),
            study_order=3,
            samples_in_inference_dtype=True,
        ),
        AlignmentKind(
            "best_of_n",
            has_weights=False,
            train=_train_nothing,
            label=lambda section: f"best of {section.n}",
            shared_settings=("seed", "max_completion_length", "top_k", "temperature", "reward_batch_size"),
            budget="n",
            short_label="best-of-n",
            budget_axis="n",
            colour="#DD8452",
            study_budgets=(1, 2, 8),  # n=1 is the base policy itself (KL 0): what IRL finds where nothing was aligned
            study_order=2,
            candidates=lambda section: section.n,
            # KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020; exact for distinct samples)
            kl_to_base=lambda section: math.log(section.n) - (section.n - 1) / section.n,
        ),
    )
}
# A model brought to be audited (sources.expert): not a way of aligning, but a policy with weights all the same.
BROUGHT = AlignmentKind("brought", has_weights=True, train=_load_brought, label=lambda section: "audited model")
# The RL step `irlnb bench` times when the params' kind runs no RL loop.
BENCH_POLICY_GRADIENT = KINDS["rloo"]

if tuple(KINDS) != ALIGNMENT_KINDS:  # irlnb/config.py lists the kinds its rlhf.trainer accepts
    raise RuntimeError(f"irlnb.rl.kinds {tuple(KINDS)} and config.ALIGNMENT_KINDS {ALIGNMENT_KINDS} differ")


def kind_of(name: str) -> AlignmentKind:
    """The record of a kind by its name (as rlhf.trainer and a policy card write it)."""
    if name == BROUGHT.name:
        return BROUGHT
    try:
        return KINDS[name]
    except KeyError:
        raise KindError(f"unknown alignment kind {name!r}; known: {', '.join(KINDS)}") from None


def seed_offset(rlhf) -> int:
    """How far `rlhf.seed` moves every seed of an alignment: another draw of the same kind and budget."""
    return 1000 * rlhf.seed


def kind_section(settings, kind: AlignmentKind):
    """The kind's own settings section from a config, a stage's settings or a policy card (None for a brought model)."""
    return getattr(settings, kind.settings_section) if kind.settings_section else None


def alignment_label(settings) -> str:
    """How the figures name the alignment of `settings` (rlhf.trainer and its section)."""
    kind = kind_of(settings.rlhf.trainer)
    return kind.label(kind_section(settings, kind))
