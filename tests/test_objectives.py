"""Each IRL objective has one home (irlnb.objectives): its record, its fitting code, its loss on hand-made pairs."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_pairs

from irlnb import metrics
from irlnb.config import SECTIONS, ConfigError
from irlnb.irl import fitting, study
from irlnb.irl.feature_sets import rewards_of
from irlnb.objectives import AUTO, OBJECTIVES, SEEDED, ObjectiveError, epochs_objective, objective_of
from irlnb.params_file import parse_config

PACKAGE = Path(__file__).resolve().parent.parent / "irlnb"


def seeded_fit(name: str, epochs: int = 5, **schedule) -> fitting.SeededFit:
    return fitting.SeededFit(objective_of(name), 1.0, 1.0, 0.05, epochs, 16, **schedule)


# --- the record ---------------------------------------------------------------------------------


def test_every_objective_is_a_choice_of_irl_loss_and_is_fitted_one_way():
    assert SECTIONS["irl"].__dataclass_fields__["loss"].metadata["choices"] == (*OBJECTIVES, AUTO)
    for name, objective in OBJECTIVES.items():
        assert objective.name == name and objective.metric_prefix() == f"irl.{name}." and objective.label
        if objective.seeded:  # fitted by gradient steps: a loss per pair, no entry among the fits made once
            assert objective.per_pair is not None and name not in fitting.ONE_FIT
        else:  # fitted once: its fitting code, and a seeded stand-in for the per-epoch figures
            assert objective.per_pair is None and name in fitting.ONE_FIT
            assert epochs_objective(name).seeded
    with pytest.raises(ObjectiveError, match="unknown IRL objective 'hinge2'; known: max_margin, paper_asymmetric"):
        objective_of("hinge2")


def test_no_code_outside_the_objectives_record_compares_an_objectives_name():
    names = set(OBJECTIVES)
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "objectives.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                constants = [o for o in operands if isinstance(o, ast.Constant)]
                constants += [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set)) for e in o.elts]
                if {c.value for c in constants if isinstance(c, ast.Constant)} & names:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, "comparisons with an objective's name outside irlnb/objectives.py: " + ", ".join(found)


def test_an_objective_that_needs_the_posterior_is_refused_without_it():
    needing = [name for name, objective in OBJECTIVES.items() if objective.needs_posterior]
    assert needing
    for name in needing:
        with pytest.raises(ConfigError, match=f"irl.loss: '{name}' is the posterior's mean: it needs irl.posterior"):
            parse_config({"run": {"name": "x"}, "irl": {"loss": name, "posterior": False}}, "p.yaml")


def test_the_saved_objective_is_fitted_first_and_the_others_are_its_comparison():
    irl = parse_config({"run": {"name": "x"}, "irl": {"loss": "logistic"}}, "p.yaml").irl
    assert [fit.objective.name for fit in fitting.seeded_fits(irl)] == [
        "logistic",
        *(n for n in SEEDED if n != "logistic"),
    ]
    alone = parse_config({"run": {"name": "x"}, "irl": {"loss": "logistic", "compare_losses": False}}, "p.yaml").irl
    assert [fit.objective.name for fit in fitting.seeded_fits(alone)] == ["logistic"]
    once = parse_config({"run": {"name": "x"}, "irl": {"loss": "laplace", "compare_losses": False}}, "p.yaml").irl
    assert [fit.objective.name for fit in fitting.seeded_fits(once)] == list(SEEDED)  # laplace is fitted once
    chosen = parse_config({"run": {"name": "x"}, "irl": {"compare_losses": False}}, "p.yaml").irl  # auto
    assert [fit.objective.name for fit in fitting.seeded_fits(chosen)] == list(SEEDED)  # every candidate


def test_auto_saves_the_candidate_with_the_best_validation_pair_log_likelihood_and_never_a_reference():
    rows = pd.DataFrame(
        {
            "loss": ["logistic", "logistic", "max_margin", "laplace", "supervised"],
            "seed": [0, 1, 0, 0, 0],
            "validation_pair_log_likelihood": [-0.10, -0.30, -0.15, -0.19, -0.01],  # logistic's mean: -0.20
            "validation_pair_accuracy": [0.9, 0.8, 0.9, 0.9, 0.99],
            "validation_auc": [0.1, 0.1, 0.1, 0.99, 0.99],  # R*'s view, never read by the choice
        }
    )
    assert study.saved_objective(rows, AUTO, 0.1) == "max_margin"  # the ceiling ranks first but is not IRL
    assert study.saved_objective(rows, "logistic", 0.1) == "logistic"  # a named objective is saved as named
    ranking = study.objective_ranking(rows, saved="max_margin")
    assert ranking.index.tolist() == ["supervised", "max_margin", "laplace", "logistic"]
    assert ranking["saved"].tolist() == [False, True, False, False] and not ranking.loc["supervised", "candidate"]


def test_auto_never_saves_a_candidate_that_pays_for_length_while_another_does_not():
    rows = pd.DataFrame(
        {
            "loss": ["failure_aware", "failure_aware", "laplace", "max_margin", "supervised"],
            "seed": [0, 1, 0, 0, 0],
            "validation_pair_log_likelihood": [-0.664, -0.664, -0.665, -0.670, -0.60],
            "validation_pair_accuracy": [0.6, 0.6, 0.6, 0.6, 0.7],
            # failure_aware pays 0.05 and 0.35 for a text said twice (mean 0.20); the reference pays nothing
            "validation_repetition_shift": [0.05, 0.35, -0.06, 0.02, 0.0],
            "validation_auc": [0.9, 0.9, 0.1, 0.1, 0.99],
        }
    )
    assert study.saved_objective(rows, AUTO, 0.1) == "laplace"  # the best likelihood of those that pay at most 0.1
    assert study.saved_objective(rows, AUTO, 0.3) == "failure_aware"
    assert study.saved_objective(rows, AUTO, 0.01) == "max_margin"  # none pays that little: the one that pays least
    ranking = study.objective_ranking(rows, saved="laplace")
    assert ranking.loc["failure_aware", "validation_repetition_shift"] == pytest.approx(0.20)
    assert study.saved_objective(rows.drop(columns="validation_repetition_shift"), AUTO, 0.1) == "failure_aware"
    assert study.length_guard_report(ranking, 0.1) == (
        "The saved reward (laplace) pays -0.06 of its spread for a validation human text said twice over "
        "(irl.max_repetition_shift: 0.1); ranked above it, failure_aware (+0.20) paid more and was passed over."
    )
    fallback = study.objective_ranking(rows, saved="max_margin")
    assert study.length_guard_report(fallback, 0.01).startswith("Caution: the saved reward (max_margin) pays +0.02")
    assert study.length_guard_report(study.objective_ranking(rows, saved="failure_aware"), 0.3).endswith(
        "(irl.max_repetition_shift: 0.3)."
    )
    assert (
        study.length_guard_report(
            study.objective_ranking(rows.drop(columns="validation_repetition_shift"), saved="laplace"), 0.1
        )
        == ""
    )


def test_every_objective_fitted_once_is_fitted_and_the_posterior_only_when_asked():
    train, validation = synthetic_pairs(120, 0), synthetic_pairs(60, 1)
    with_posterior = fitting.one_fits(train, validation, posterior=True)
    assert set(with_posterior.heads) == {n for n, o in OBJECTIVES.items() if not o.seeded}
    assert with_posterior.posterior is not None
    without = fitting.one_fits(train, validation, posterior=False)
    assert set(without.heads) == {n for n, o in OBJECTIVES.items() if not o.seeded and not o.needs_posterior}
    assert without.posterior is None
    for head in with_posterior.heads.values():  # each finds the planted direction
        weight = head.weight.detach().flatten()
        assert weight[0] == weight.abs().max()


# --- losses on hand-made pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, expected",
    [
        # advantages x = [2, -1, 0.5]
        ("paper_asymmetric", (-2 + 2 - 0.5) / 3),  # -x if x > 0 else -2x
        ("max_margin", (0 + 2 + 0.5) / 3),  # max(0, 1 - x)
        ("logistic", float(np.mean(np.log1p(np.exp(-np.array([2.0, -1.0, 0.5])))))),
    ],
)
def test_each_loss_value_on_hand_made_pairs(loss, expected):
    advantage = torch.tensor([2.0, -1.0, 0.5])
    assert float(fitting.pair_loss(objective_of(loss), advantage, margin=1.0)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss", SEEDED)
def test_every_loss_pushes_the_expert_up(loss):
    """The gradient with respect to the advantage is negative: descending it widens the expert's lead."""
    advantage = torch.tensor([-0.5, 0.3], requires_grad=True)
    fitting.pair_loss(objective_of(loss), advantage, margin=1.0).backward()
    assert (advantage.grad < 0).all()


def test_the_paper_loss_doubles_the_push_on_wrong_pairs_and_the_hinge_stops_past_the_margin():
    advantage = torch.tensor([-0.5, 0.3, 2.0], requires_grad=True)
    fitting.pair_loss(objective_of("paper_asymmetric"), advantage).backward()
    assert advantage.grad.tolist() == pytest.approx([-2 / 3, -1 / 3, -1 / 3])
    advantage.grad = None
    fitting.pair_loss(objective_of("max_margin"), advantage, margin=1.0).backward()
    assert advantage.grad.tolist() == pytest.approx([-1 / 3, -1 / 3, 0.0])  # a pair past the margin teaches nothing


def test_an_objective_fitted_once_has_no_loss_per_pair():
    with pytest.raises(ValueError, match="laplace is fitted once, not by gradient steps"):
        fitting.pair_loss(objective_of("laplace"), torch.zeros(2))


# --- fitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", SEEDED)
def test_fitting_changes_the_head_and_recovers_the_direction(loss):
    train, validation = synthetic_pairs(200, 0), synthetic_pairs(100, 1)
    objective = seeded_fit(loss)
    history, heads = fitting.fit_head(
        train,
        objective,
        seed=0,
        on_epoch=lambda epoch, head: {
            "pair_accuracy": metrics.pair_accuracy(
                rewards_of(head, validation.expert), rewards_of(head, validation.non_expert)
            )
        },
    )
    assert [row["epoch"] for row in history] == list(range(6))
    assert all(np.isfinite(row["train_loss"]) for row in history[1:])
    assert not torch.equal(heads[0].weight, heads[-1].weight)
    assert history[-1]["pair_accuracy"] > max(0.85, history[0]["pair_accuracy"])

    def alignment(head):  # cosine between the head and the hidden direction
        weight = head.weight.detach()
        return float(weight[0, 0] / weight.norm())

    assert alignment(heads[-1]) > alignment(heads[0]) + 0.25  # fitting, not the initial head, found the direction
    weight = heads[-1].weight.detach().flatten()
    assert weight[0] == weight.abs().max()  # the hidden direction carries the largest weight
    if objective_of(loss).bounded:
        assert float(weight.norm()) <= 1.0 + 1e-6  # the bound holds after every step


def test_the_same_seed_gives_the_same_head_and_another_seed_another():
    train = synthetic_pairs(64, 0)
    objective = seeded_fit("logistic", epochs=2)

    def fit(seed):
        return fitting.fit_head(train, objective, seed, on_epoch=lambda e, h: {})[1][-1].weight

    assert torch.equal(fit(3), fit(3)) and not torch.equal(fit(3), fit(4))


def test_failure_aware_weights_misranked_and_nearly_tied_pairs():
    advantage = torch.tensor([2.0, 0.3, -1.0])  # a clear win, a near tie, a misranking (near = 0.5)
    weights = fitting.failure_weights(advantage, near=0.5, focus=3.0)
    assert weights.tolist() == [1.0, 4.0, 4.0]
    # the hinge max(0, 1 - x) = [0, 0.7, 2], weighted [1, 4, 4]: (0 + 2.8 + 8) / 9
    value = fitting.pair_loss(objective_of("failure_aware"), advantage, margin=1.0, weights=weights)
    assert float(value) == pytest.approx(10.8 / 9)
    assert float(fitting.pair_loss(objective_of("failure_aware"), advantage, margin=1.0)) == pytest.approx(2.7 / 3)


def test_failure_aware_fitting_counts_failures_and_respects_the_bound():
    train = synthetic_pairs(200, 0)
    objective = seeded_fit("failure_aware", failure_focus=4.0, failure_near=0.5)
    history, heads = fitting.fit_head(train, objective, seed=0, on_epoch=lambda epoch, head: {})
    failures = [row["train_failures"] for row in history[1:]]
    assert all(np.isfinite(failures)) and failures[-1] < failures[0]  # the curriculum works the failures down
    assert float(heads[-1].weight.detach().norm()) <= 1.0 + 1e-6
