"""Fidelity within a prompt, and what else a reward tracks: hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPTS, SAMPLING

from irlnb.irl import feature_sets, within_prompt
from irlnb.rewards.features import FeatureReward, RewardSpec
from irlnb.rl.sampling import ModelPolicy


def test_per_prompt_spearman_and_pair_accuracy_on_a_hand_case():
    # prompt 0: R-hat orders its three continuations as R* does; prompt 1: exactly reversed; prompt 2: one text only
    r_star = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 5.0])
    r_hat = np.array([0.1, 0.2, 0.3, 0.3, 0.2, 0.1, 9.0])
    groups = np.array([0, 0, 0, 1, 1, 1, 2])
    per_prompt = within_prompt.per_prompt_spearman(r_hat, r_star, groups)
    assert per_prompt[:2].tolist() == pytest.approx([1.0, -1.0]) and np.isnan(per_prompt[2])
    right, gaps = within_prompt.within_prompt_pairs(r_hat, r_star, groups)
    assert right.tolist() == [True, True, True, False, False, False]  # pairs (0,1), (0,2), (1,2) of each prompt
    assert gaps.tolist() == [1.0, 2.0, 1.0, 1.0, 2.0, 1.0]
    values = within_prompt.within_prompt_metrics(r_hat, r_star, groups, samples=200)
    assert values["within_prompt_spearman"] == pytest.approx(0.0)  # the mean over the two prompts that have an order
    assert values["within_prompt_spearman_ci_low"] <= 0.0 <= values["within_prompt_spearman_ci_high"]
    assert values["within_prompt_pair_accuracy"] == pytest.approx(0.5)
    assert values["within_prompt_pair_accuracy_gap_1_3"] == pytest.approx(0.5)  # every gap is 1 or 2
    assert np.isnan(values["within_prompt_pair_accuracy_gap_0_1"])  # no pair that close: no number
    assert np.isnan(values["within_prompt_pair_accuracy_gap_3_inf"])


def test_a_tie_in_the_reward_counts_as_wrong_and_equal_true_rewards_carry_no_order():
    right, gaps = within_prompt.within_prompt_pairs(
        np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.0]), np.array([0, 0, 0])
    )
    assert right.tolist() == [False, True] and gaps.tolist() == [1.0, 1.0]  # (0,1) tied by R-hat; (1,2) equal R*


def test_a_per_prompt_shift_changes_nothing_within_prompts_and_a_paired_interval_sees_a_real_difference():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 5)
    r_star = rng.normal(size=300)
    good = r_star + 0.3 * rng.normal(size=300)
    shifted = good + 10 * rng.normal(size=60)[groups]  # a shift per prompt: IRL cannot see it, nor can this metric
    assert within_prompt.within_prompt_metrics(shifted, r_star, groups, samples=100)[
        "within_prompt_spearman"
    ] == pytest.approx(within_prompt.within_prompt_metrics(good, r_star, groups, samples=100)["within_prompt_spearman"])
    noise = rng.normal(size=300)
    difference, low, high = within_prompt.paired_difference(good, noise, r_star, groups, samples=200)
    assert difference > 0.5 and 0 < low <= difference <= high


def test_text_statistics_and_a_reward_that_tracks_length_is_called_out():
    class Words:  # a tokenizer of whitespace words
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    texts = ["one two", "one two three four!", "a\nb c d e f", "x"]
    statistics = within_prompt.text_statistics(texts, Words())
    assert statistics["length_tokens"].tolist() == [2, 4, 6, 1]
    assert statistics["newline_share"].tolist() == pytest.approx([0.0, 0.0, 1 / 11, 0.0])
    assert statistics["punctuation_share"].tolist() == pytest.approx([0.0, 1 / 19, 0.0, 0.0])
    by_length = -statistics["length_tokens"].to_numpy(dtype=float)  # shorter is better: a length reward
    correlations = within_prompt.statistic_correlations(by_length, statistics)
    assert correlations["length_tokens_spearman"] == pytest.approx(-1.0)
    warning = within_prompt.statistic_warning(correlations, r_star_spearman=0.1)
    assert "length tokens (Spearman -1.00" in warning and "more than with R* (+0.10)" in warning
    assert within_prompt.statistic_warning(correlations, r_star_spearman=-1.0) == ""  # R* explains it as well
    assert "Caution" in within_prompt.statistic_warning(correlations)  # an auditor without R*
    assert "R*" not in within_prompt.statistic_warning(correlations, r_star_spearman=float("nan"))  # R* constant
    assert np.isnan(correlations["base_log_likelihood_spearman"])  # not measured: no correlation
    likely = within_prompt.text_statistics(texts, Words(), base_log_likelihood=np.array([-1.0, -2.0, -3.0, -4.0]))
    odd = within_prompt.statistic_correlations(np.array([4.0, 3.0, 2.0, 1.0]), likely)
    assert odd["base_log_likelihood_spearman"] == pytest.approx(1.0)
    assert "base log likelihood (Spearman +1.00" in within_prompt.statistic_warning(odd, r_star_spearman=0.2)


def test_the_base_log_likelihood_is_the_mean_log_probability_of_a_texts_tokens_whatever_the_padding(tiny):
    model, tokenizer = tiny
    reader = FeatureReward(
        RewardSpec("tiny", "sha", "mean", 1, 64, "learned", "float32"), model, tokenizer, torch.nn.Linear(8, 1)
    )
    texts = ["You are such a kind person", "Thanks for that"]
    by_hand = []
    for text in texts:  # each text alone, no padding
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        by_hand.append(log_probs.gather(-1, ids[0, 1:, None]).mean().item())
    kept = tokenizer.padding_side  # the fixture is shared: generation needs it left
    try:
        for side in ("left", "right"):
            tokenizer.padding_side = side
            both = feature_sets.mean_log_likelihood(reader, texts, batch_size=2)  # padded beside the short text
            np.testing.assert_allclose(both.numpy(), by_hand, atol=1e-4)
    finally:
        tokenizer.padding_side = kept


def test_prompt_sets_hold_the_base_samples_and_the_human_continuation_of_every_prompt(tiny):
    model, tokenizer = tiny
    prompts = pd.DataFrame({"id": ["a", "b"], "prompt": PROMPTS[:2], "continuation": [" it is.", " it was."]})
    sets = within_prompt.draw_prompt_sets(
        ModelPolicy(model, tokenizer, SAMPLING),
        prompts,
        3,
        batch_size=2,
        seed=0,
        r_star=lambda texts: [len(t) for t in texts],
    )
    assert (
        set(sets["group"]) == {0, 1}
        and (sets.groupby("group")["source"].apply(list).map(lambda s: s[-1]) == "human").all()
    )
    assert (sets.groupby("group").size() <= 4).all() and (sets["source"] == "base").sum() >= 2
    assert sets["r_star"].tolist() == [len(p + c) for p, c in zip(sets["prompt"], sets["continuation"])]
    again = within_prompt.draw_prompt_sets(
        ModelPolicy(model, tokenizer, SAMPLING), prompts, 3, batch_size=2, seed=0, r_star=lambda texts: [0] * len(texts)
    )
    assert again["continuation"].tolist() == sets["continuation"].tolist()  # the same seed draws the same samples
