"""The recovered reward as a folder anyone can load (`irlnb.load_reward`), and the check that it scores as the study's
head did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from irlnb.irl.feature_sets import Standardizer
from irlnb.rewards.features import FeatureReward, load_reward, score_tolerance


def save_learned_reward(
    reader: FeatureReward,
    head: torch.nn.Linear,
    standardizer: Standardizer,
    folder: Path,
    covariance: torch.Tensor | None = None,
) -> Path:
    """The chosen head as a reward on raw backbone features, saved for notebook 03 and auditors
    (with the posterior covariance of its weights when it is a posterior mean)."""
    folded = standardizer.fold(head).to(reader.device)
    posterior = None if covariance is None else standardizer.fold_covariance(covariance)
    return FeatureReward(reader.spec, reader.backbone, reader.tokenizer, folded, posterior).save(folder)


def check_saved_reward(folder: Path, scores: pd.DataFrame, device: str = "cpu", texts: int = 64) -> float:
    """Load the saved reward as an auditor would and check it scores like the study's head did.

    Returns the largest difference; the allowed one is `score_tolerance` of the rewards' spread
    (bfloat16 features shift slightly with the batch a text is padded in).
    """
    reward = load_reward(folder, device=device)
    sample = scores.head(texts)
    gap = float(np.abs(reward.score(sample["text"].tolist()) - sample["r_hat"].to_numpy()).max())
    allowed = score_tolerance(reward.spec.dtype, float(np.std(scores["r_hat"])))
    if gap > allowed:
        raise ValueError(
            f"{folder}: the saved reward differs from the study's by up to {gap:.4g} (allowed {allowed:.4g})"
        )
    return gap
