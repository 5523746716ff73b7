"""Step 2 of the paper: the ground-truth reward R* on every curated text, and how well it matches people.

R*(x) = -logit p_toxic(x) on prompt + original continuation (the full comment). It is judged
against the human labels on the test split (ROC-AUC, sign accuracy, F1, with bootstrap
intervals), and the independent evaluator's agreement with it is measured by rank correlation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from irlnb import metrics
from irlnb.classifiers import ground_truth_reward
from irlnb.config import GroundTruthSettings

SCORES_FILE = "scores.parquet"


def score_curated(curated: pd.DataFrame, classifier, evaluator, settings: GroundTruthSettings) -> tuple[pd.DataFrame, dict]:
    """R* and the evaluator's p_toxic for every curated text, batched; returns (scores, timing)."""
    texts = curated["text"].tolist()
    started = time.perf_counter()
    p_toxic = classifier.p_toxic(texts, batch_size=settings.score_batch_size)
    classifier_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluator_p_toxic = evaluator.p_toxic(texts)
    evaluator_seconds = time.perf_counter() - started
    scores = curated[["id", "split", "label", "text"]].copy()
    scores["p_toxic"] = p_toxic
    scores["reward"] = ground_truth_reward(p_toxic, settings.reward_clip)
    scores["evaluator_p_toxic"] = evaluator_p_toxic
    timing = {"classifier_s": classifier_seconds, "evaluator_s": evaluator_seconds,
              "texts_per_s": len(texts) / max(classifier_seconds, 1e-9)}
    return scores, timing


def save_scores(scores: pd.DataFrame, out: Path) -> Path:
    path = Path(out) / SCORES_FILE
    scores.to_parquet(path, index=False)
    return path


def load_scores(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "ground_truth" / SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground-truth scores; run stage 02_ground_truth_rm first")
    return pd.read_parquet(path)


def agreement_metrics(scores: pd.DataFrame, prefix: str, samples: int, seed: int) -> dict[str, float]:
    """R* against the human labels, and the evaluator against R*, on the rows of `scores`."""
    labels = scores["label"].to_numpy()
    reward = scores["reward"].to_numpy()
    predicted_toxic = metrics.toxic_by_reward(reward)
    toxicity = -reward  # higher = more toxic, for ROC-AUC
    auc_low, auc_high = metrics.bootstrap_interval(metrics.roc_auc, labels, toxicity, samples=samples, seed=seed)
    acc_low, acc_high = metrics.bootstrap_interval(metrics.accuracy, predicted_toxic, labels, samples=samples, seed=seed)
    evaluator = scores["evaluator_p_toxic"].to_numpy()
    return {
        f"{prefix}auc_human": metrics.roc_auc(labels, toxicity),
        f"{prefix}auc_human_ci_low": auc_low,
        f"{prefix}auc_human_ci_high": auc_high,
        f"{prefix}accuracy_human": metrics.accuracy(predicted_toxic, labels),
        f"{prefix}accuracy_human_ci_low": acc_low,
        f"{prefix}accuracy_human_ci_high": acc_high,
        f"{prefix}f1_human": metrics.f1(predicted_toxic, labels),
        f"{prefix}toxic_predicted_share": float(predicted_toxic.mean()),
        f"{prefix}evaluator_auc_human": metrics.roc_auc(labels, evaluator),
        f"{prefix}evaluator_spearman": float(spearmanr(evaluator, toxicity).statistic),
        f"{prefix}reward_mean_toxic": float(reward[labels == 1].mean()),
        f"{prefix}reward_mean_nontoxic": float(reward[labels == 0].mean()),
        f"{prefix}n": float(len(scores)),
    }


def ground_truth_metrics(scores: pd.DataFrame, settings: GroundTruthSettings, seed: int) -> dict[str, float]:
    """gt.* on the test split (the numbers to report) and gt.all.* on every curated text (the paper's)."""
    test = scores[scores["split"] == "test"]
    return {**agreement_metrics(test, "gt.", settings.bootstrap_samples, seed),
            **agreement_metrics(scores, "gt.all.", settings.bootstrap_samples, seed)}
