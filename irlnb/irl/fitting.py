"""Fitting a reward head on cached features: the loop of the seeded objectives, and the deterministic fits.

What an objective is (its loss per pair, its bound, its reweighting, whether it is fitted once) is its record in
`irlnb.objectives`; this module only carries out what the record says. What differs from the reference code, on
purpose: gradients are zeroed every step; the max-margin objective has a margin and a bound on |w|; batches are
shuffled with a seeded generator; every epoch is measured after its updates (the reference measured before them,
and saved the metric under the wrong weights).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from irlnb.irl.feature_sets import PairSet
from irlnb.irl.posterior import Posterior, fit_posterior
from irlnb.objectives import AUTO, LAPLACE, MEAN_SHIFT, OBJECTIVES, IrlObjective, objective_of
from irlnb.rewards.features import random_head


def pair_loss(
    objective: IrlObjective, advantage: torch.Tensor, margin: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss over pairs of a seeded objective, with advantage x = R(expert) - R(non-expert) (weighted mean
    when `weights` are given)."""
    if objective.per_pair is None:
        raise ValueError(f"{objective.name} is fitted once, not by gradient steps: it has no loss per pair")
    per_pair = objective.per_pair(advantage, margin)
    if weights is None:
        return per_pair.mean()
    return (weights * per_pair).sum() / weights.sum()


def failure_weights(advantage: torch.Tensor, near: float, focus: float) -> torch.Tensor:
    """Failure-aware IRL (arXiv 2510.06092): pairs the reward misranks or nearly ties (advantage < `near`)
    weigh 1 + `focus`, the others 1. The curriculum raises `focus` from 0 to its maximum over the epochs."""
    return 1.0 + focus * (advantage < near).to(advantage.dtype)


@dataclass(frozen=True)
class SeededFit:
    """How a seeded objective's head is fitted: the objective, its margin and bound, and the optimiser's schedule."""

    objective: IrlObjective
    margin: float
    max_head_norm: float  # applied to the bounded objectives only: the paper's and the logistic are compared unbounded
    learning_rate: float
    epochs: int
    batch_size: int
    failure_focus: float = 0.0  # failure-weighted objectives: the largest extra weight of a failing pair
    failure_near: float = 0.0  # failure-weighted: an advantage below this counts as a failure (misranked or a tie)

    @classmethod
    def from_settings(cls, irl, objective: IrlObjective) -> SeededFit:
        if not objective.seeded:
            raise ValueError(f"{objective.name} is fitted once, not by gradient steps")
        return cls(
            objective,
            irl.margin,
            irl.max_head_norm,
            irl.learning_rate,
            irl.epochs,
            irl.batch_size,
            irl.failure_focus,
            irl.failure_near,
        )


def seeded_fits(irl) -> list[SeededFit]:
    """The seeded objective of `irl.loss` (the one saved) first, then, with `irl.compare_losses` or when the saved
    objective is fitted once or chosen (`auto`), the other seeded ones."""
    saved = None if irl.loss == AUTO else objective_of(irl.loss)  # auto: chosen among all of them
    first = [saved] if saved is not None and saved.seeded else []
    others = [o for o in OBJECTIVES.values() if o.seeded and o not in first] if irl.compare_losses or not first else []
    return [SeededFit.from_settings(irl, objective) for objective in [*first, *others]]


def fit_head(
    train: PairSet, fit: SeededFit, seed: int, on_epoch: Callable[[int, torch.nn.Linear], dict]
) -> tuple[list[dict], list[torch.nn.Linear]]:
    """Fit a linear head on cached features; returns per-epoch records and the head after each epoch.

    Epoch 0 is the initial head. `on_epoch(epoch, head)` is called after that epoch's updates.
    """
    objective = fit.objective
    head = random_head(train.expert.features.shape[1], seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=fit.learning_rate)
    order = torch.Generator().manual_seed(seed + 1)
    n = train.expert.features.shape[0]
    history, heads = [{"epoch": 0, "train_loss": float("nan"), **on_epoch(0, head)}], [copy.deepcopy(head)]
    for epoch in range(1, fit.epochs + 1):
        weights, failures = None, float("nan")
        if objective.failure_weighted:  # this epoch's focus, from where the reward stands now
            with torch.no_grad():
                advantage = (head(train.expert.features) - head(train.non_expert.features)).squeeze(-1)
            weights = failure_weights(advantage, fit.failure_near, fit.failure_focus * epoch / fit.epochs)
            failures = float((advantage < fit.failure_near).sum())
        losses = []
        for batch in torch.randperm(n, generator=order).split(fit.batch_size):
            optimizer.zero_grad()
            advantage = (head(train.expert.features[batch]) - head(train.non_expert.features[batch])).squeeze(-1)
            loss = pair_loss(objective, advantage, fit.margin, None if weights is None else weights[batch])
            loss.backward()
            optimizer.step()
            if objective.bounded:
                bound_norm(head, fit.max_head_norm)
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


def head_of(weight: np.ndarray, bias: float = 0.0) -> torch.nn.Linear:
    """A linear head with these weights and bias."""
    head = torch.nn.Linear(len(weight), 1)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(np.asarray(weight, dtype=np.float32)).view(1, -1))
        head.bias.fill_(float(bias))
    return head


def mean_shift_head(train: PairSet) -> torch.nn.Linear:
    """The mean-shift estimator: the mean feature difference expert - non-expert, scaled to unit norm. It is the
    first step of feature-expectation matching, unfitted: what "the expert moved somewhere" alone gives."""
    shift = (train.expert.features.mean(dim=0) - train.non_expert.features.mean(dim=0)).double().numpy()
    return head_of(shift / max(np.linalg.norm(shift), 1e-12))


@dataclass
class OneFits:
    """The objectives fitted once (deterministic), each as a head, and the Laplace posterior when it was fitted."""

    heads: dict[str, torch.nn.Linear]
    posterior: Posterior | None


# How each objective fitted once is fitted, from the train and validation pairs (and the posterior, fitted once
# for every objective that needs it).
ONE_FIT: dict[str, Callable[[PairSet, PairSet, Posterior | None], torch.nn.Linear]] = {
    LAPLACE.name: lambda train, validation, posterior: posterior.head(),
    MEAN_SHIFT.name: lambda train, validation, posterior: mean_shift_head(train),
}


def one_fits(train: PairSet, validation: PairSet, posterior: bool) -> OneFits:
    """Every objective fitted once (those needing the posterior only when `posterior`, irl.posterior)."""
    fitted = fit_posterior(train, validation) if posterior else None
    heads = {
        objective.name: ONE_FIT[objective.name](train, validation, fitted)
        for objective in OBJECTIVES.values()
        if not objective.seeded and (fitted is not None or not objective.needs_posterior)
    }
    return OneFits(heads, fitted)
