"""What a kind's train function receives and returns (irlnb.rl.kinds holds the functions, one per kind)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: reading a kind's record loads neither torch nor pandas
    import pandas as pd

    from irlnb.rl.reward_signal import PolicyReward


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
    prompt_ids: tuple[str, ...] | list[str] = ()  # curated ids of the prompts (a saved policy records them)


@dataclass(frozen=True)
class TrainingJob:
    """What a kind's train function receives: where to checkpoint, the seed, and the typed settings it reads."""

    kind: Any  # its kind's record (irlnb.rl.kinds.AlignmentKind)
    start: StageTraining
    checkpoints: Path  # resumable checkpoints of this training key (emptied when the key changed)
    frozen_cache: Path  # what the frozen base drew or read, shared by the runs of one runs directory (RunLayout.cache)
    seed: int  # the alignment's seed (compute.seed moved by rlhf.seed)
    rlhf: Any  # the shared rlhf settings (irlnb.config.RlhfSettings)
    section: Any  # the kind's own settings (its section of irlnb/config.py), None for a brought model
    inference_dtype: str
    device: str
    training_dtype: str = "float32"  # the dtype of a training step where its kind reads compute.training_dtype
    compiled_layers: bool = False  # the step's decoder layers run compiled (compute.training_layers, resolved)


@dataclass
class TrainingResult:
    model: object | None  # the trained policy; None for a kind without weights (best-of-n)
    log: pd.DataFrame  # one row per optimiser step (RLOO, GRPO) or per round and epoch (RFT)
    steps: int  # optimiser steps (RLOO, GRPO), fine-tuning epochs kept (RFT), 0 (best-of-n)
    resumed_from: int  # the step (or round) a killed training resumed from; 0 for a fresh start
    start: StageTraining
