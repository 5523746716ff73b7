"""Metrics and the ground-truth reward against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from irlnb import metrics
from irlnb.rewards.ground_truth import ground_truth_reward


def test_roc_auc_hand_cases():
    # Pairs (pos, neg): (0.35>0.1 yes), (0.35>0.4 no), (0.8>0.1 yes), (0.8>0.4 yes) -> 3/4
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert metrics.roc_auc([1, 0, 1], [3, 1, 2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.roc_auc([1, 1], [0.2, 0.3])


def test_accuracy_f1_and_confusion_hand_cases():
    predicted = [1, 1, 0, 0, 1]
    labels = [1, 0, 0, 1, 1]
    assert metrics.accuracy(predicted, labels) == pytest.approx(3 / 5)
    # TP = 2, FP = 1, FN = 1 -> F1 = 2*2 / (2*2 + 1 + 1) = 4/6
    assert metrics.f1(predicted, labels) == pytest.approx(4 / 6)
    assert metrics.f1([0, 0], [0, 0]) == 0.0
    np.testing.assert_array_equal(metrics.confusion(predicted, labels), [[1, 1], [1, 2]])


def test_a_reward_of_zero_reads_as_toxic():
    np.testing.assert_array_equal(metrics.toxic_by_reward([-1.0, 0.0, 0.5]), [True, True, False])


def test_ground_truth_reward_is_minus_the_logit():
    reward = ground_truth_reward(np.array([0.5, 0.9, 0.1]), clip=10)
    np.testing.assert_allclose(reward, [0.0, -math.log(9), math.log(9)], rtol=1e-12)
    np.testing.assert_allclose(ground_truth_reward(np.array([0.0, 1.0]), clip=10), [10.0, -10.0])
    with pytest.raises(ValueError, match="finite probabilities"):
        ground_truth_reward(np.array([np.nan]), clip=10)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 50)
    large = rng.integers(0, 2, 5000)
    low, high = metrics.bootstrap_interval(np.mean, small, samples=500, seed=0)
    assert low <= small.mean() <= high
    low_l, high_l = metrics.bootstrap_interval(np.mean, large, samples=500, seed=0)
    assert high_l - low_l < high - low
    assert metrics.bootstrap_interval(np.mean, small, samples=200, seed=3) == metrics.bootstrap_interval(
        np.mean, small, samples=200, seed=3
    )


# --- the STARC distance between two rewards ---------------------------------------------------------

PROMPTS = np.array([0, 0, 1, 1, 1])  # two texts on prompt 0, three on prompt 1


def test_starc_distance_is_zero_for_the_same_reward_up_to_a_per_prompt_shift_and_a_positive_scale():
    r_star = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
    assert metrics.starc_distance(r_star, r_star, PROMPTS) == pytest.approx(0.0, abs=1e-12)
    shifted = 3 * r_star + np.array([10.0, 10.0, -4.0, -4.0, -4.0])  # 3 R* + a constant per prompt
    assert metrics.starc_distance(shifted, r_star, PROMPTS) == pytest.approx(0.0, abs=1e-12)
    # a shift that differs within a prompt changes comparisons between its texts: no longer the same reward
    assert metrics.starc_distance(r_star + np.array([0.0, 1.0, 0.0, 0.0, 0.0]), r_star, PROMPTS) > 0.1


def test_starc_distance_is_two_for_the_opposite_reward_and_root_two_for_an_orthogonal_one():
    r_star = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
    assert metrics.starc_distance(-r_star, r_star, PROMPTS) == pytest.approx(2.0)
    # centred: R* -> [1.5, -1.5, 0, 0, 0] (prompt 1 made constant), R-hat -> [0, 0, 1, -1, 0]: orthogonal
    assert metrics.starc_distance([5.0, 5.0, 1.0, -1.0, 0.0], [1.0, -2.0, 7.0, 7.0, 7.0], PROMPTS) == pytest.approx(
        math.sqrt(2)
    )


def test_starc_distance_on_a_hand_computed_case():
    # R* centred per prompt: [1, -1 | 1, -1], norm 2 -> [.5, -.5, .5, -.5]
    # R-hat [1, 0 | 0, 0] centred: [.5, -.5 | 0, 0], norm sqrt(.5) -> [1/sqrt2, -1/sqrt2, 0, 0]
    # cosine = 2 * .5 / sqrt2 = 1/sqrt2; distance = sqrt(2 - 2 cosine) = sqrt(2 - sqrt2)
    distance = metrics.starc_distance([1.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0], ["a", "a", "b", "b"])
    assert distance == pytest.approx(math.sqrt(2 - math.sqrt(2)))
    # without the per-prompt canonicalisation (one group) the same rewards are further apart
    ungrouped = metrics.starc_distance([1.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0], [0, 0, 0, 0])
    # centred over all four: [.75, -.25, -.25, -.25] and [.5, -1.5, 1.5, -.5]; dot .5, norms sqrt(.75) and sqrt5
    assert ungrouped == pytest.approx(math.sqrt(2 - 2 / math.sqrt(15)))


def test_starc_distance_is_undefined_for_a_reward_constant_on_every_prompt_and_refuses_ragged_input():
    r_star = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
    per_prompt_constant = np.array([0.3, 0.3, -7.1, -7.1, -7.1])  # orders no two texts of one prompt
    assert math.isnan(metrics.starc_distance(per_prompt_constant, r_star, PROMPTS))
    assert math.isnan(metrics.starc_distance(r_star, np.zeros(5), PROMPTS))
    with pytest.raises(ValueError, match="one reward and one group per text"):
        metrics.starc_distance(r_star, r_star, PROMPTS[:4])


def test_pair_log_likelihood_takes_the_best_scale_and_keeps_rewarding_a_surer_margin():
    from irlnb.metrics import pair_log_likelihood

    r_expert, r_non_expert = np.array([2.0, 1.0, 0.5, -0.2]), np.zeros(4)
    value = pair_log_likelihood(r_expert, r_non_expert)
    assert value == pytest.approx(pair_log_likelihood(10 * r_expert, r_non_expert), abs=1e-9)  # scale-free
    scales = np.linspace(0.01, 20, 4000)
    brute = max(np.mean(-np.logaddexp(0.0, -s * (r_expert - r_non_expert))) for s in scales)
    assert value == pytest.approx(brute, abs=1e-6) and value > np.log(0.5)
    # the same pair accuracy (3 of 4), but a surer margin on the pairs it gets right: a higher likelihood
    surer = pair_log_likelihood(np.array([6.0, 5.0, 4.0, -0.2]), r_non_expert)
    assert surer > value
    assert pair_log_likelihood(-r_expert, r_non_expert) == pytest.approx(np.log(0.5))  # no positive scale helps
