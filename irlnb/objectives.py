"""The IRL objectives, one record each: everything the package knows about an objective lives here.

An objective's record says its name (the value of `irl.loss` and its metric prefix `irl.<name>.`), how it
is fitted (by gradient steps from a seeded start, repeated over `irl.seeds`, or once, deterministically),
its loss per demonstration pair when it is fitted by gradient steps, whether its head is bounded or its
pairs reweighted, and its label in tables and figures. Nothing else in the package compares an
objective's name: code asks the record (`tests/test_objectives.py` walks the package to hold that).

Adding an objective: a record below, its fitting code (a `per_pair` loss here for a gradient-fitted one,
or an entry of `irlnb.irl.fitting.ONE_FIT` for a deterministic one) and its test.

This module is plain Python (config reads it to validate `irl.loss`); torch is imported only when a loss is
computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from irlnb.errors import IrlnbError


class ObjectiveError(IrlnbError, ValueError):
    """An IRL objective that does not exist; the message is one line."""


@dataclass(frozen=True)
class IrlObjective:
    """One way of fitting the reward head on demonstration pairs (advantage x = R(expert) - R(non-expert))."""

    name: str  # the value of irl.loss, and the metric prefix irl.<name>.
    label: str  # its row in tables and figures
    seeded: bool  # fitted by gradient steps from a seeded start over irl.seeds; else one deterministic fit
    per_pair: Callable[[Any, float], Any] | None = None  # seeded: loss of each pair from (advantage, margin)
    bounded: bool = False  # seeded: |w| <= irl.max_head_norm, projected after each step (max-margin is ill-posed
    # without a bound)
    failure_weighted: bool = False  # seeded: pairs it misranks or nearly ties weigh more, ramped over the epochs
    needs_posterior: bool = False  # one fit: it is the Laplace posterior's mean (needs irl.posterior)
    # One fit: the seeded objective whose epochs the per-epoch and seed figures show in its place (the same
    # likelihood, fitted by gradient steps)
    epochs_stand_in: str = ""

    def metric_prefix(self) -> str:
        return f"irl.{self.name}."


def _asymmetric(advantage, margin: float):
    import torch

    return torch.where(advantage > 0, -advantage, -2 * advantage)


def _hinge(advantage, margin: float):
    import torch

    return torch.relu(margin - advantage)


def _logistic(advantage, margin: float):
    import torch

    return torch.nn.functional.softplus(-advantage)


MAX_MARGIN = IrlObjective(
    "max_margin", "max-margin (hinge, margin 1, bounded |w|)", seeded=True, per_pair=_hinge, bounded=True
)
PAPER_ASYMMETRIC = IrlObjective(
    "paper_asymmetric", "the paper's loss (-x if x > 0 else -2x; unbounded)", seeded=True, per_pair=_asymmetric
)
LOGISTIC = IrlObjective("logistic", "logistic (Bradley-Terry)", seeded=True, per_pair=_logistic)
FAILURE_AWARE = IrlObjective(
    "failure_aware",
    "failure-aware hinge (misranked pairs weigh more)",
    seeded=True,
    per_pair=_hinge,
    bounded=True,
    failure_weighted=True,
)
LAPLACE = IrlObjective(
    "laplace",
    "Laplace posterior mean (one deterministic fit)",
    seeded=False,
    needs_posterior=True,
    epochs_stand_in=LOGISTIC.name,
)
# The first step of feature-expectation matching (the logistic gradient at w = 0): an IRL estimator in its own
# right, and the baseline every fitted objective is compared with.
MEAN_SHIFT = IrlObjective(
    "mean_shift",
    "mean-shift baseline: mean feature shift expert − base (one deterministic fit)",
    seeded=False,
    epochs_stand_in=LOGISTIC.name,
)

# In the order tables list them: the seeded objectives, then the deterministic fits.
OBJECTIVES: dict[str, IrlObjective] = {
    objective.name: objective
    for objective in (MAX_MARGIN, PAPER_ASYMMETRIC, LOGISTIC, FAILURE_AWARE, LAPLACE, MEAN_SHIFT)
}
SEEDED = tuple(name for name, objective in OBJECTIVES.items() if objective.seeded)
# irl.loss: auto saves the objective an auditor would choose: of those fitted, the best validation pair
# log-likelihood, expert over base (`irlnb.irl.study.chosen_objective`; no R*). Its epochs are shown as laplace's are.
AUTO = "auto"
LOSS_CHOICES = (*OBJECTIVES, AUTO)


def objective_of(name: str) -> IrlObjective:
    """The record of an objective by its name (as irl.loss and the study's tables write it)."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(f"unknown IRL objective {name!r}; known: {', '.join(OBJECTIVES)}") from None


def epochs_objective(name: str) -> IrlObjective:
    """Whose epochs the per-epoch and seed figures show for objective `name`: its own, or its stand-in (for `AUTO`,
    before the choice: laplace's)."""
    objective = objective_of(LAPLACE.name if name == AUTO else name)
    return objective if objective.seeded else objective_of(objective.epochs_stand_in)
