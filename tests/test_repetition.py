"""A reward that does not pay for length (`irlnb.irl.repetition`): what a text said twice over moves in the features
is removed from what every head reads, so an expert that writes shorter texts cannot teach a reward that shorter is
better; the saved reward (the removal folded into a plain head on raw features) scores as the study's head did."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from irlnb import metric_names
from irlnb.irl import repetition
from irlnb.irl.feature_sets import PairSet, Standardizer, TextSet, reading
from irlnb.irl.fitting import head_of, mean_shift_head
from irlnb.irl.judging import judge
from irlnb.irl.posterior import fit_posterior
from irlnb.metrics import repetition_shift
from irlnb.rewards.features import reward_form

BACKBONE = "embedded:tiny-gpt-neox"


def texts_of_length(lengths: np.ndarray, truth: np.ndarray, seed: int) -> torch.Tensor:
    """Raw features of texts: two columns follow the text's length, one mixes length and the true reward, one is the
    true reward, four are noise; all on different scales, as hidden states are."""
    noise = np.random.default_rng(seed).normal(size=(len(lengths), 8))
    columns = [
        3.0 * lengths + noise[:, 0],
        np.log(lengths) + 0.1 * noise[:, 1],
        -0.5 * lengths + truth + noise[:, 2],
        5.0 * truth + noise[:, 3],
        *(noise[:, 4:].T * np.array([[1.0], [10.0], [0.1], [2.0]])),
    ]
    return torch.tensor(np.column_stack(columns), dtype=torch.float32)


def shorter_expert(n: int = 400, seed: int = 0):
    """Pairs whose expert side is shorter and a little better, and the same texts said twice (twice the length, the
    same truth and noise)."""
    generator = np.random.default_rng(seed)
    expert_length, base_length = generator.uniform(5, 15, n), generator.uniform(12, 30, n)
    expert_truth, base_truth = generator.normal(0.5, 1.0, n), generator.normal(0.0, 1.0, n)
    once = [texts_of_length(expert_length, expert_truth, seed + 1), texts_of_length(base_length, base_truth, seed + 2)]
    twice = [
        texts_of_length(2 * expert_length, expert_truth, seed + 1),
        texts_of_length(2 * base_length, base_truth, seed + 2),
    ]
    return once, twice


def removed(standardizer: Standardizer, once, twice, count: int) -> Standardizer:
    directions = repetition.movement_directions(standardizer(torch.cat(once)), standardizer(torch.cat(twice)))
    return Standardizer(standardizer.mean, standardizer.std, directions[:count].T.float())


def test_a_shorter_expert_teaches_length_unless_what_repetition_moves_is_removed():
    once, twice = shorter_expert()
    generator = np.random.default_rng(9)
    test_length, test_truth = generator.uniform(5, 30, 300), generator.normal(size=300)
    test = texts_of_length(test_length, test_truth, 10)
    plain = Standardizer.fit(torch.cat(once))
    correlations = {}
    for count in (0, 3):
        standardizer = removed(plain, once, twice, count) if count else plain
        pairs = PairSet(*(TextSet(standardizer(side), np.zeros(len(side)), -np.ones(len(side))) for side in once))
        with torch.no_grad():
            r_hat = mean_shift_head(pairs)(standardizer(test)).squeeze(-1).numpy()
        correlations[count] = spearmanr(r_hat, test_length).statistic, spearmanr(r_hat, test_truth).statistic
    assert correlations[0][0] < -0.8  # the mean shift learned that shorter is better
    assert abs(correlations[3][0]) < 0.15 and correlations[3][1] > 0.6  # it learned the truth instead


def test_no_head_reads_a_removed_direction_and_the_folded_head_and_covariance_score_raw_features_alike():
    once, twice = shorter_expert(n=150)
    standardizer = removed(Standardizer.fit(torch.cat(once)), once, twice, 2)
    assert torch.allclose(standardizer(torch.cat(once)) @ standardizer.nuisance, torch.zeros(300, 2), atol=1e-4)
    sides = [TextSet(standardizer(side), np.zeros(len(side)), -np.ones(len(side))) for side in once]
    posterior = fit_posterior(PairSet(*sides), PairSet(*sides))
    head, raw = posterior.head(), torch.cat(once + twice)
    with torch.no_grad():
        assert torch.allclose(standardizer.fold(head)(raw), head(standardizer(raw)), atol=1e-3)
    projected = standardizer(raw).double()
    expected = torch.sqrt(((projected @ posterior.covariance.double()) * projected).sum(dim=1)).numpy()
    assert np.allclose(standardizer.fold_covariance(posterior.covariance).std(raw), expected, rtol=1e-4)


def demonstrations() -> pd.DataFrame:
    rows = []
    for split in ("train", "validation"):
        for i in range(12):
            rows.append(
                {
                    "split": split,
                    "prompt": f"{split} prompt {i}:",
                    "expert": " thanks, well said",
                    "non_expert": " no, that is a long and rambling answer that goes on" + " and on" * (i % 4),
                    "excluded": "",
                }
            )
    return pd.DataFrame(rows)


def test_the_map_is_chosen_from_demonstrations_alone_and_every_candidate_is_recorded(tmp_path):
    read = reading(reward_form(BACKBONE, "mean", 1, 64), tmp_path, 8)
    check = ["a comment of a few words", "another, longer comment that goes on for a while"] * 3
    plain, none = repetition.standardizer(read, demonstrations(), check, probes=0, max_shift=0.1)
    assert plain.nuisance is None and none.empty and repetition.choice_metrics(none) == {}
    chosen, table = repetition.standardizer(read, demonstrations(), check, probes=6, max_shift=0.1)
    assert table["directions"].tolist() == [0, 1, 2, 5, 10]  # at most 12 probe texts: no more directions exist
    assert table["chosen"].sum() == 1 and np.isfinite(table["validation_pair_log_likelihood"]).all()
    row = table[table["chosen"]].iloc[0]
    count = 0 if chosen.nuisance is None else chosen.nuisance.shape[1]
    assert row["directions"] == count and torch.equal(chosen.mean, plain.mean)
    first_below = table[table["validation_repetition_shift"].abs() <= 0.1]
    assert count == (first_below["directions"].iloc[0] if len(first_below) else 10)
    assert repetition.choice_metrics(table) == {
        metric_names.IRL_LENGTH_DIRECTIONS: count,
        metric_names.IRL_LENGTH_SHIFT: row["validation_repetition_shift"],
    }
    # Stopped at the chosen count (as the layer choice reads it for each candidate): the same map, and the table up
    # to it. A bound that one of the first three counts meets, so that the stop skips some.
    loose = float(table["validation_repetition_shift"].abs().iloc[:3].min())
    full, whole = repetition.standardizer(read, demonstrations(), check, probes=6, max_shift=loose)
    early, shorter = repetition.standardizer(
        read, demonstrations(), check, probes=6, max_shift=loose, until_chosen=True
    )
    assert len(shorter) <= 3 < len(whole) and shorter.equals(whole.iloc[: len(shorter)])
    assert shorter["chosen"].iloc[-1]
    assert (early.nuisance is None) == (full.nuisance is None)
    assert early.nuisance is None or torch.equal(early.nuisance, full.nuisance)


def test_the_repetition_shift_is_the_mean_change_in_units_of_the_rewards_spread():
    assert repetition_shift([0.0, 2.0], [-1.0, 1.0]) == pytest.approx(-1.0)  # std of [0, 2] is 1; each loses 1
    assert repetition_shift([1.0, 3.0], [1.0, 3.0]) == 0.0
    assert np.isnan(repetition_shift([1.0, 1.0], [2.0, 2.0]))


def test_a_head_is_judged_on_what_it_pays_for_a_text_said_twice():
    human = TextSet(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), np.array([1.0, -1.0]), np.array([0, 1]))
    human.repeated = human.features * 2.0  # said twice: the first feature (length-like) doubles
    pairs = PairSet(TextSet(torch.eye(2), np.zeros(2), -np.ones(2)), TextSet(-torch.eye(2), np.zeros(2), -np.ones(2)))
    head = head_of(np.array([1.0, 0.0]))  # reads only the first feature: rewards 0, 2 once and 0, 4 twice
    assert judge(head, human, pairs, threshold=0.0)["repetition_shift"] == pytest.approx(1.0)
    human.repeated = None
    assert "repetition_shift" not in judge(head, human, pairs, threshold=0.0)
