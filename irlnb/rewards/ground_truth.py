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

from irlnb import metric_names, metrics
from irlnb.layout import RunLayout
from irlnb.models.classifiers import load_classifier


def ground_truth_reward(p_toxic: np.ndarray, clip: float) -> np.ndarray:
    """R* = log((1 - p) / p), clamped to [-clip, clip]; R* > 0 means non-toxic."""
    p = np.asarray(p_toxic, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p_toxic must be finite probabilities in [0, 1]")
    # Clamp p first so that p = 0 or 1 (float32 saturation) maps to +-clip instead of +-inf.
    eps = 1.0 / (1.0 + np.exp(clip))
    p = np.clip(p, eps, 1.0 - eps)
    return np.clip(np.log1p(-p) - np.log(p), -clip, clip)


class GroundTruthReward:
    """R*(texts) -> np.ndarray: the ground-truth classifier's -logit p_toxic, clamped; > 0 means non-toxic.

    The one R* of the project: notebook 02 scores the curated texts with it, notebook 03 trains and
    evaluates policies with it, notebook 04 labels demonstrations with it, the explorer shows it.
    """

    def __init__(self, classifier, clip: float, batch_size: int = 128):
        self.classifier, self.clip, self.batch_size = classifier, clip, batch_size

    @classmethod
    def load(cls, sources, ground_truth, device: str = "cpu") -> GroundTruthReward | None:
        """From the settings: `sources.toxicity_classifier`, `ground_truth.reward_clip` and `.batch_size`; None when
        the classifier is empty (an audit without R*: `NO_R_STAR`)."""
        if not sources.toxicity_classifier:
            return None
        return cls(
            load_classifier(sources.toxicity_classifier, device=device),
            ground_truth.reward_clip,
            ground_truth.batch_size,
        )

    def p_toxic(self, texts: list[str]) -> np.ndarray:
        return self.classifier.p_toxic(texts, batch_size=self.batch_size)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return ground_truth_reward(self.p_toxic(texts), self.clip)


# What a stage says, once, when it runs without R* (sources.toxicity_classifier empty).
NO_R_STAR = "No R* (sources.toxicity_classifier is empty): every judgement against R* is skipped."


def r_star_of(r_star: GroundTruthReward | None, texts: list[str]) -> np.ndarray:
    """R* of `texts`, or NaN for each where there is no R*: the texts' place in a table is kept, and every judge
    skips what reads R* (`irlnb.metrics.has_r_star`)."""
    return np.full(len(texts), np.nan) if r_star is None else r_star(texts)


def p_toxic_of(r_star: GroundTruthReward | None, texts: list[str]) -> np.ndarray:
    """The ground-truth classifier's p_toxic of `texts`, or NaN for each where there is no R* (as `r_star_of`)."""
    return np.full(len(texts), np.nan) if r_star is None else r_star.p_toxic(texts)


def score_curated(curated: pd.DataFrame, r_star: GroundTruthReward | None, evaluator) -> tuple[pd.DataFrame, dict]:
    """R* (NaN without one) and the evaluator's p_toxic for every curated text, batched; returns (scores, timing)."""
    texts = curated["text"].tolist()
    started = time.perf_counter()
    p_toxic = p_toxic_of(r_star, texts)
    classifier_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluator_p_toxic = evaluator.p_toxic(texts)
    evaluator_seconds = time.perf_counter() - started
    scores = curated[["id", "split", "label", "text"]].copy()
    scores["p_toxic"] = p_toxic
    scores["reward"] = p_toxic if r_star is None else ground_truth_reward(p_toxic, r_star.clip)
    scores["evaluator_p_toxic"] = evaluator_p_toxic
    timing = {
        "classifier_s": classifier_seconds,
        "evaluator_s": evaluator_seconds,
        "texts_per_s": len(texts) / max(classifier_seconds, 1e-9),
    }
    return scores, timing


def save_scores(scores: pd.DataFrame, layout: RunLayout) -> Path:
    scores.to_parquet(layout.ground_truth_scores, index=False)
    return layout.ground_truth_scores


def load_scores(layout: RunLayout) -> pd.DataFrame:
    path = layout.ground_truth_scores
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground-truth scores; run stage 02_ground_truth_rm first")
    return pd.read_parquet(path)


def agreement_metrics(scores: pd.DataFrame, prefix: str, samples: int, seed: int) -> dict[str, float]:
    """R* against the human labels, and the evaluator against R*, on the rows of `scores`; without R*, only the
    evaluator against the human labels."""
    labels = scores["label"].to_numpy()
    reward = scores["reward"].to_numpy()
    evaluator = scores["evaluator_p_toxic"].to_numpy()
    if not metrics.has_r_star(reward):
        return {f"{prefix}evaluator_auc_human": metrics.roc_auc(labels, evaluator), f"{prefix}n": float(len(scores))}
    predicted_toxic = metrics.toxic_by_reward(reward)
    toxicity = -reward  # higher = more toxic, for ROC-AUC
    auc_low, auc_high = metrics.bootstrap_interval(metrics.roc_auc, labels, toxicity, samples=samples, seed=seed)
    acc_low, acc_high = metrics.bootstrap_interval(
        metrics.accuracy, predicted_toxic, labels, samples=samples, seed=seed
    )
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


def ground_truth_metrics(scores: pd.DataFrame, bootstrap_samples: int, seed: int) -> dict[str, float]:
    """gt.* on the test split (the numbers to report) and gt.all.* on every curated text (the paper's)."""
    test = scores[scores["split"] == "test"]
    return {
        **agreement_metrics(test, metric_names.ground_truth_prefix(), bootstrap_samples, seed),
        **agreement_metrics(scores, metric_names.ground_truth_prefix(all_texts=True), bootstrap_samples, seed),
    }
