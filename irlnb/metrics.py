"""Metrics with no hidden conventions: the positive class is always 'toxic' (label 1).

A reward says "toxic" when it is <= 0 (the paper's convention for sign agreement); a toxicity
score (a probability, or minus a reward) says "more toxic" when it is higher.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import rankdata


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


def toxic_by_reward(reward) -> np.ndarray:
    """The paper's reading of a reward: toxic when reward <= 0."""
    return np.asarray(reward) <= 0


def bootstrap_interval(metric: Callable[..., float], *arrays, samples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
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
