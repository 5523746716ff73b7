"""IRL objectives on demonstration pairs, and the loop that fits a linear head on cached features.

What differs from the reference code, on purpose: gradients are zeroed every step; the max-margin
objective has a margin and a bound on |w|; batches are shuffled with a seeded generator; every
epoch is measured after its updates (the reference measured before them, and saved the metric under
the wrong weights).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from irlnb.irl.feature_sets import PairSet
from irlnb.rewards.features import random_head

LOSSES = ("max_margin", "paper_asymmetric", "logistic", "failure_aware")
BOUNDED = ("max_margin", "failure_aware")  # the forms with a bound on |w|: max-margin IRL is ill-posed without it


def pair_loss(
    loss: str, advantage: torch.Tensor, margin: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss over pairs, with advantage x = R(expert) - R(non-expert) (weighted mean when `weights` are given).

    paper_asymmetric: -x if x > 0 else -2x (the paper's, unbounded below: it rewards ever larger gaps);
    max_margin: max(0, margin - x) (the hinge; with a bound on |w| the classic max-margin IRL);
    logistic: log(1 + exp(-x)) (Bradley-Terry, i.e. maximum entropy over the pair);
    failure_aware: the hinge, each pair weighted by how much the curriculum focuses on it (see `failure_weights`).
    """
    if loss == "paper_asymmetric":
        per_pair = torch.where(advantage > 0, -advantage, -2 * advantage)
    elif loss in ("max_margin", "failure_aware"):
        per_pair = torch.relu(margin - advantage)
    elif loss == "logistic":
        per_pair = torch.nn.functional.softplus(-advantage)
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if weights is None:
        return per_pair.mean()
    return (weights * per_pair).sum() / weights.sum()


def failure_weights(advantage: torch.Tensor, near: float, focus: float) -> torch.Tensor:
    """Failure-aware IRL (arXiv 2510.06092): pairs the reward misranks or nearly ties (advantage < `near`)
    weigh 1 + `focus`, the others 1. The curriculum raises `focus` from 0 to its maximum over the epochs."""
    return 1.0 + focus * (advantage < near).to(advantage.dtype)


@dataclass(frozen=True)
class Objective:
    """How a head is fitted: the loss, its margin and bound, and the optimiser's schedule."""

    loss: str
    margin: float
    max_head_norm: float  # applied to the bounded forms only: the paper's and the logistic are compared unbounded
    learning_rate: float
    epochs: int
    batch_size: int
    failure_focus: float = 0.0  # failure_aware: the largest extra weight of a failing pair
    failure_near: float = 0.0  # failure_aware: an advantage below this counts as a failure (misranked or a near tie)

    @classmethod
    def from_settings(cls, irl, loss: str | None = None) -> Objective:
        return cls(
            loss or irl.loss,
            irl.margin,
            irl.max_head_norm,
            irl.learning_rate,
            irl.epochs,
            irl.batch_size,
            irl.failure_focus,
            irl.failure_near,
        )


def study_objectives(irl) -> list[Objective]:
    """The objective of `irl.loss` (the one saved) first, then, with `irl.compare_losses`, the other ones.

    `laplace` (the posterior mean) is not fitted by epochs: with it, the gradient objectives are the comparison.
    """
    first = [irl.loss] if irl.loss in LOSSES else []
    others = [loss for loss in LOSSES if loss not in first] if irl.compare_losses or not first else []
    return [Objective.from_settings(irl, loss) for loss in [*first, *others]]


def epochs_loss(loss: str) -> str:
    """Whose epochs the per-epoch and seed figures show: the saved objective's, or the logistic (the posterior's
    likelihood) when the saved reward is the posterior mean."""
    return loss if loss in LOSSES else "logistic"


def fit_head(
    train: PairSet, objective: Objective, seed: int, on_epoch: Callable[[int, torch.nn.Linear], dict]
) -> tuple[list[dict], list[torch.nn.Linear]]:
    """Fit a linear head on cached features; returns per-epoch records and the head after each epoch.

    Epoch 0 is the initial head. `on_epoch(epoch, head)` is called after that epoch's updates.
    """
    head = random_head(train.expert.features.shape[1], seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=objective.learning_rate)
    order = torch.Generator().manual_seed(seed + 1)
    n = train.expert.features.shape[0]
    history, heads = [{"epoch": 0, "train_loss": float("nan"), **on_epoch(0, head)}], [copy.deepcopy(head)]
    for epoch in range(1, objective.epochs + 1):
        weights, failures = None, float("nan")
        if objective.loss == "failure_aware":  # this epoch's focus, from where the reward stands now
            with torch.no_grad():
                advantage = (head(train.expert.features) - head(train.non_expert.features)).squeeze(-1)
            weights = failure_weights(
                advantage, objective.failure_near, objective.failure_focus * epoch / objective.epochs
            )
            failures = float((advantage < objective.failure_near).sum())
        losses = []
        for batch in torch.randperm(n, generator=order).split(objective.batch_size):
            optimizer.zero_grad()
            advantage = (head(train.expert.features[batch]) - head(train.non_expert.features[batch])).squeeze(-1)
            loss = pair_loss(objective.loss, advantage, objective.margin, None if weights is None else weights[batch])
            loss.backward()
            optimizer.step()
            if objective.loss in BOUNDED:
                bound_norm(head, objective.max_head_norm)
            losses.append(loss.item())
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), "train_failures": failures, **on_epoch(epoch, head)}
        )
        heads.append(copy.deepcopy(head))
    return history, heads


def bound_norm(head: torch.nn.Linear, max_norm: float) -> None:
    """Project the head's weights back onto |w| <= max_norm (the max-margin bound)."""
    with torch.no_grad():
        norm = head.weight.norm()
        if norm > max_norm:
            head.weight.mul_(max_norm / norm)
