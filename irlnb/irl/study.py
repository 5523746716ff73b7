"""Step 4 of the paper, judged honestly: objectives x seeds, each run's epoch chosen on validation, test scored once.

Every epoch is judged after its updates, on validation only. Each run's epoch is chosen by
validation pair accuracy (which needs no R*), the threshold of R-hat on validation human texts;
test numbers are computed once for every seed and reported as mean and SD over seeds. The seeds
are also the non-identifiability study: the same data, other initialisations and orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from irlnb import metrics
from irlnb.irl.features import PairSet, Standardizer, TextSet, rewards_of
from irlnb.irl.objectives import Objective, fit_head
from irlnb.rewards.features import FeatureReward, load_reward, score_tolerance

SELECTION_METRIC = "pair_accuracy"  # validation pair accuracy: chosen from behaviour alone, without R*


def judge(head: torch.nn.Linear, human: TextSet, pairs: PairSet, threshold: float) -> dict[str, float]:
    """Every metric of one head on one split: human texts, and the demonstrations (both sides)."""
    r_human = rewards_of(head, human)
    r_expert, r_non_expert = rewards_of(head, pairs.expert), rewards_of(head, pairs.non_expert)
    values = {f"human_{k}": v for k, v in metrics.agreement(r_human, human.r_star, threshold, human.labels).items()}
    values.update(
        {
            f"human_{k}_zero": v
            for k, v in metrics.agreement(r_human, human.r_star, 0.0).items()
            if k in ("accuracy", "f1")
        }
    )
    demo_r_hat = np.concatenate([r_expert, r_non_expert])
    demo_r_star = np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star])
    values.update({f"demos_{k}": v for k, v in metrics.agreement(demo_r_hat, demo_r_star, threshold).items()})
    values["pair_accuracy"] = metrics.pair_accuracy(r_expert, r_non_expert)
    return values


@dataclass
class StudyResult:
    epochs: pd.DataFrame  # loss, seed, epoch, train_loss, validation metrics
    test: pd.DataFrame  # loss, seed, chosen epoch, threshold, test metrics
    scores: (
        pd.DataFrame
    )  # loss, seed, set, pair, text, r_star, r_hat, label, threshold: test rewards of every chosen head
    heads: dict[tuple[str, int], torch.nn.Linear]  # the chosen head of every (loss, seed), on standardised features


def run_study(
    train: PairSet,
    validation: tuple[TextSet, PairSet],
    test: tuple[TextSet, PairSet],
    test_texts: dict[str, list[str]],
    objectives: list[Objective],
    seeds: int,
) -> StudyResult:
    """Fit every objective over `seeds` seeds; choose each run's epoch on validation; score it once on test."""
    validation_human, validation_pairs = validation
    test_human, test_pairs = test
    epoch_rows, test_rows, score_frames, chosen_heads = [], [], [], {}
    for objective in objectives:
        for seed in range(seeds):
            history, heads = fit_head(
                train,
                objective,
                seed,
                lambda epoch, head: judge(head, validation_human, validation_pairs, threshold=0.0),
            )
            epoch_rows += [{"loss": objective.loss, "seed": seed, **row} for row in history]
            chosen = max(range(1, len(history)), key=lambda e: (history[e][SELECTION_METRIC], -e))
            head = heads[chosen]
            threshold = metrics.fit_threshold(rewards_of(head, validation_human), validation_human.r_star)
            test_rows.append(
                {
                    "loss": objective.loss,
                    "seed": seed,
                    "epoch": chosen,
                    "threshold": threshold,
                    f"validation_{SELECTION_METRIC}": history[chosen][SELECTION_METRIC],
                    **judge(head, test_human, test_pairs, threshold),
                }
            )
            score_frames.append(
                scored_test_texts(head, test_human, test_pairs, test_texts, objective.loss, seed, threshold)
            )
            chosen_heads[(objective.loss, seed)] = head
    return StudyResult(
        pd.DataFrame(epoch_rows), pd.DataFrame(test_rows), pd.concat(score_frames, ignore_index=True), chosen_heads
    )


def scored_test_texts(
    head, human: TextSet, pairs: PairSet, texts: dict[str, list[str]], loss: str, seed: int, threshold: float
) -> pd.DataFrame:
    """One row per test text (human, expert, non-expert) with its R* and this head's R-hat."""
    frames = []
    for name, text_set in (("human", human), ("expert", pairs.expert), ("non_expert", pairs.non_expert)):
        n = len(text_set.r_star)
        frames.append(
            pd.DataFrame(
                {
                    "loss": loss,
                    "seed": seed,
                    "set": name,
                    "pair": np.arange(n) if name != "human" else -1,
                    "text": texts[name],
                    "r_star": text_set.r_star,
                    "r_hat": rewards_of(head, text_set),
                    "label": text_set.labels,
                    "threshold": threshold,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


HEADLINE = {
    "accuracy": "human_accuracy",
    "accuracy_zero": "human_accuracy_zero",
    "f1": "human_f1",
    "f1_zero": "human_f1_zero",
    "auc": "human_auc",
    "auc_human": "human_auc_human",
    "pearson": "human_pearson",
    "spearman": "human_spearman",
    "kendall": "human_kendall",
    "pair_accuracy": "pair_accuracy",
    "demos_accuracy": "demos_accuracy",
    "demos_auc": "demos_auc",
    "demos_spearman": "demos_spearman",
    "epoch": "epoch",
}


def summary_metrics(test: pd.DataFrame, chosen_loss: str) -> dict[str, float]:
    """irl.<loss>.test.<metric>_mean/_sd over seeds for each loss, and irl.test.* for the chosen loss.

    `accuracy`/`f1` use the threshold fitted on validation; `accuracy_zero`/`f1_zero` read sign(R-hat)
    at zero, the paper's metric. Human texts are the curated test split (prompt + original continuation).
    """
    values = {}
    for loss, rows in test.groupby("loss"):
        for name, column in HEADLINE.items():
            if column not in rows:
                continue
            column_values = rows[column].dropna().to_numpy(dtype=np.float64)
            if column_values.size == 0:
                continue
            for prefix in [f"irl.{loss}.test."] + (["irl.test."] if loss == chosen_loss else []):
                values[prefix + f"{name}_mean"] = float(column_values.mean())
                values[prefix + f"{name}_sd"] = float(column_values.std(ddof=1)) if column_values.size > 1 else 0.0
                if name == "accuracy":
                    values[prefix + "accuracy_min"] = float(column_values.min())
                    values[prefix + "accuracy_max"] = float(column_values.max())
    values["irl.seeds"] = float(test["seed"].nunique())
    return values


def seed_correlations(scores: pd.DataFrame, loss: str) -> pd.DataFrame:
    """Pairwise Spearman correlation between the seeds' rewards on the same test texts (human and demonstrations)."""
    wide = scores[scores["loss"] == loss].pivot_table(index=["set", "pair", "text"], columns="seed", values="r_hat")
    return wide.corr(method="spearman")


def seed_agreement(correlations: pd.DataFrame) -> dict[str, float]:
    """Median and minimum Spearman correlation between two different seeds' rewards."""
    values = correlations.to_numpy()
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    if off_diagonal.size == 0:
        return {}
    return {
        "irl.test.seed_spearman_median": float(np.median(off_diagonal)),
        "irl.test.seed_spearman_min": float(off_diagonal.min()),
    }


def best_seed(test: pd.DataFrame, loss: str) -> int:
    """The seed whose chosen epoch has the best validation pair accuracy (never a test number); ties: lowest seed."""
    rows = test[test["loss"] == loss].sort_values("seed")
    return int(rows.loc[rows[f"validation_{SELECTION_METRIC}"].idxmax(), "seed"])


def save_learned_reward(reader: FeatureReward, head: torch.nn.Linear, standardizer: Standardizer, folder: Path) -> Path:
    """The chosen head as a reward on raw backbone features, saved for notebook 03 and auditors."""
    folded = standardizer.fold(head).to(reader.device)
    return FeatureReward(reader.spec, reader.backbone, reader.tokenizer, folded).save(folder)


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
