"""Metrics with no hidden conventions: the positive class is always 'toxic' (label 1).

A reward says "toxic" when it is <= 0 (the paper's convention for sign agreement); a toxicity
score (a probability, or minus a reward) says "more toxic" when it is higher.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import kendalltau, pearsonr, rankdata, spearmanr


def roc_auc(labels, scores) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    ranks = rankdata(scores)  # average ranks handle ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(predicted, labels) -> float:
    predicted, labels = np.asarray(predicted).astype(bool), np.asarray(labels).astype(bool)
    return float(np.mean(predicted == labels))


def f1(predicted, labels) -> float:
    """F1 of the positive (toxic) class; 0 when nothing is predicted or present."""
    predicted, labels = np.asarray(predicted).astype(bool), np.asarray(labels).astype(bool)
    tp = int(np.sum(predicted & labels))
    denominator = int(predicted.sum() + labels.sum())
    return 2 * tp / denominator if denominator else 0.0


def confusion(predicted, labels) -> np.ndarray:
    """[[TN, FP], [FN, TP]] with rows = true label (0, 1) and columns = predicted."""
    predicted, labels = np.asarray(predicted).astype(int), np.asarray(labels).astype(int)
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def has_r_star(r_star) -> bool:
    """Whether these R* values were measured: an audit without R* carries NaN in their place
    (`irlnb.rewards.ground_truth.r_star_of`), and every judgement that reads R* is then skipped."""
    values = np.asarray(r_star, dtype=np.float64)
    return values.size > 0 and not np.isnan(values).all()


def toxic_by_reward(reward) -> np.ndarray:
    """The paper's reading of a reward: toxic when reward <= 0."""
    return np.asarray(reward) <= 0


def bootstrap_interval(
    metric: Callable[..., float], *arrays, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric(*arrays)`, resampling items with replacement."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        index = rng.integers(0, n, n)
        try:
            values.append(metric(*(a[index] for a in arrays)))
        except ValueError:  # a resample with one class only: skip it
            continue
    if not values:
        raise ValueError("no bootstrap resample could be scored")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# A learned reward judged against R*


def fit_threshold(r_hat, r_star) -> float:
    """The cut t that best separates toxic (R* <= 0) from non-toxic by R-hat <= t.

    A learned reward has no natural zero, so its threshold is fitted (on validation texts).
    """
    r_hat = np.asarray(r_hat, dtype=np.float64)
    toxic = toxic_by_reward(r_star)
    values = np.sort(r_hat)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    accuracies = [np.mean((r_hat <= t) == toxic) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def agreement(r_hat, r_star, threshold: float = 0.0, labels=None) -> dict[str, float]:
    """R-hat against R*: sign agreement and F1 (toxic = positive class), ROC-AUC, and rank/linear correlations.

    `auc` is the ROC-AUC of -R-hat for toxicity by sign(R*); `auc_human` the same against human
    labels (where given). Correlations are NaN when either side is constant.
    """
    r_hat, r_star = np.asarray(r_hat, dtype=np.float64), np.asarray(r_star, dtype=np.float64)
    toxic, predicted = toxic_by_reward(r_star), r_hat <= threshold
    values = {"accuracy": accuracy(predicted, toxic), "f1": f1(predicted, toxic)}
    values["auc"] = roc_auc(toxic, -r_hat) if 0 < toxic.sum() < len(toxic) else float("nan")
    if labels is not None and (labels >= 0).all() and 0 < labels.sum() < len(labels):
        values["auc_human"] = roc_auc(labels, -r_hat)
    constant = np.ptp(r_hat) == 0 or np.ptp(r_star) == 0
    for name, function in (("pearson", pearsonr), ("spearman", spearmanr), ("kendall", kendalltau)):
        values[name] = float("nan") if constant else float(function(r_hat, r_star)[0])
    return values


def pair_accuracy(r_expert, r_non_expert) -> float:
    """Share of pairs where the reward prefers the expert's text (ties count as wrong)."""
    return float(np.mean(np.asarray(r_expert) > np.asarray(r_non_expert)))


def pair_log_likelihood(r_expert, r_non_expert, steps: int = 50) -> float:
    """Mean log-probability that the expert's text is preferred, log sigmoid(s * (r_expert - r_non_expert)), at the
    scale s >= 0 that maximises it: a reward's scale is arbitrary (a hinge bounds it, a mean shift is unit-norm),
    so each reward gets the best Bradley-Terry temperature on these pairs (one parameter; log 0.5 when no positive
    scale helps). Unlike pair accuracy it keeps rewarding a wider, surer margin, so it does not saturate."""
    difference = np.asarray(r_expert, dtype=np.float64) - np.asarray(r_non_expert, dtype=np.float64)
    spread = float(np.std(difference)) or float(np.mean(np.abs(difference))) or 1.0
    scale = 1.0 / spread
    for _ in range(steps):  # Newton's method on a concave function of the scale
        p = 1.0 / (1.0 + np.exp(-scale * difference))
        gradient, curvature = np.mean((1 - p) * difference), -np.mean(p * (1 - p) * difference**2)
        if curvature >= 0 or not np.isfinite(curvature):
            break
        scale = max(scale - gradient / curvature, 0.0)
        if abs(gradient) < 1e-10:
            break
    return float(np.mean(-np.logaddexp(0.0, -scale * difference)))


def repetition_shift(r_once, r_twice) -> float:
    """How much a reward moves when a text says the same thing twice over (`text + " " + text`): the mean of
    R(twice) - R(once), in units of R's standard deviation over the texts said once. 0: the reward does not pay for
    length as such; negative: it prefers the shorter saying. NaN when R is constant on the texts."""
    once, twice = np.asarray(r_once, dtype=np.float64), np.asarray(r_twice, dtype=np.float64)
    spread = float(np.std(once))
    return float(np.mean(twice - once) / spread) if spread > 0 else float("nan")


def starc_distance(r_hat, r_star, groups) -> float:
    """STARC-style distance between two rewards on the same texts (Skalse et al. 2024, arXiv 2309.15257).

    Each reward is canonicalised by subtracting its mean over the texts of each group (the continuations of
    one prompt: a per-prompt shift changes no comparison between them), then normalised to unit L2 norm over
    all texts; the distance is the L2 distance of the two normalised vectors: 0 when R-hat equals R* up to a
    per-prompt shift and a positive scale, sqrt(2) when unrelated (orthogonal), 2 when R-hat = -R*. NaN when
    either reward is constant within every group (its norm is 0: no direction to compare).
    """
    r_hat, r_star = np.asarray(r_hat, dtype=np.float64), np.asarray(r_star, dtype=np.float64)
    groups = np.asarray(groups)
    if not r_hat.shape == r_star.shape == groups.shape or r_hat.ndim != 1:
        raise ValueError(
            f"starc_distance needs one reward and one group per text: shapes {r_hat.shape}, {r_star.shape}, "
            f"{groups.shape}"
        )
    _, index = np.unique(groups, return_inverse=True)
    counts = np.bincount(index)
    normalised = []
    for reward in (r_hat, r_star):
        centred = reward - (np.bincount(index, weights=reward) / counts)[index]
        norm = float(np.linalg.norm(centred))
        # relative to the reward's own size: a per-group constant leaves only rounding error behind
        if norm == 0.0 or norm <= 1e-12 * float(np.linalg.norm(reward)):
            return float("nan")
        normalised.append(centred / norm)
    return float(np.linalg.norm(normalised[0] - normalised[1]))


# --------------------------------------------------------------------------------------------
# Policies


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of whitespace words, pooled over the texts (0 if none)."""
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def reduction_share(base, ground_truth, other) -> float:
    """(mean base - mean other) / (mean base - mean ground_truth): 1 = as much as R*, 0 = none, < 0 = worse."""
    reduction = float(np.mean(base) - np.mean(ground_truth))
    if reduction <= 0:
        raise ValueError(f"the ground-truth RLHF reduced nothing (base - ground_truth = {reduction:.4g})")
    return float(np.mean(base) - np.mean(other)) / reduction
