"""A length-free reward (irl.length_free): the features lose their covariance with length on the IRL-train texts, so an
expert that writes shorter texts cannot teach a reward that shorter is better, and the saved reward (the projection
folded into a plain head on raw features) scores as the study's head did."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from irlnb.irl.feature_sets import PairSet, Standardizer, TextSet, length_covariates
from irlnb.irl.fitting import head_of, mean_shift_head
from irlnb.irl.judging import judge
from irlnb.irl.posterior import fit_posterior
from irlnb.metrics import repetition_shift
from irlnb.models.policies import load_policy


def texts_of_length(lengths: np.ndarray, truth: np.ndarray, seed: int) -> torch.Tensor:
    """Raw features of texts: three columns follow the text's length (one its log), one the true reward, four noise;
    all on different scales, as hidden states are."""
    generator = np.random.default_rng(seed)
    noise = generator.normal(size=(len(lengths), 8))
    columns = [
        3.0 * lengths + noise[:, 0],
        np.log(lengths) + 0.1 * noise[:, 1],
        -0.5 * lengths + truth + noise[:, 2],
        5.0 * truth + noise[:, 3],
        *(noise[:, 4:].T * np.array([[1.0], [10.0], [0.1], [2.0]])),
    ]
    return torch.tensor(np.column_stack(columns), dtype=torch.float32)


def shorter_expert(n: int = 400, seed: int = 0):
    """Pairs whose expert side is shorter and a little better; the texts' lengths as covariates."""
    generator = np.random.default_rng(seed)
    expert_length, base_length = generator.uniform(5, 15, n), generator.uniform(12, 30, n)
    expert_truth, base_truth = generator.normal(0.5, 1.0, n), generator.normal(0.0, 1.0, n)
    expert = texts_of_length(expert_length, expert_truth, seed + 1)
    base = texts_of_length(base_length, base_truth, seed + 2)
    lengths = np.concatenate([expert_length, base_length])
    covariates = np.column_stack([lengths, np.log(lengths)])
    return expert, base, covariates


@pytest.mark.parametrize("length_free", [False, True])
def test_no_head_scores_the_train_texts_by_their_length_once_length_is_removed(length_free):
    expert, base, covariates = shorter_expert()
    standardizer = Standardizer.fit(torch.cat([expert, base]), covariates if length_free else None)
    features = standardizer(torch.cat([expert, base])).double()
    heads = torch.randn(5, features.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    heads[0] = 0.0
    heads[0, 0] = 1.0  # the head that reads length itself
    rewards = (features @ heads.T).numpy()
    covariance = np.abs((rewards - rewards.mean(0)).T @ (covariates - covariates.mean(0)) / len(rewards))
    if length_free:
        assert standardizer.nuisance.shape == (features.shape[1], 2)
        assert covariance.max() < 1e-4
    else:
        assert standardizer.nuisance is None and covariance[0, 0] > 1.0


def test_a_shorter_expert_teaches_length_unless_the_reward_is_length_free():
    expert, base, covariates = shorter_expert()
    generator = np.random.default_rng(9)
    test_length, test_truth = generator.uniform(5, 30, 300), generator.normal(size=300)
    test = texts_of_length(test_length, test_truth, 10)
    correlations = {}
    for length_free in (False, True):
        standardizer = Standardizer.fit(torch.cat([expert, base]), covariates if length_free else None)
        pairs = PairSet(*(TextSet(standardizer(side), np.zeros(len(side)), -np.ones(len(side))) for side in (expert, base)))
        head = mean_shift_head(pairs)
        with torch.no_grad():
            r_hat = head(standardizer(test)).squeeze(-1).numpy()
        correlations[length_free] = spearmanr(r_hat, test_length).statistic, spearmanr(r_hat, test_truth).statistic
    assert correlations[False][0] < -0.8  # the mean shift learned that shorter is better
    assert abs(correlations[True][0]) < 0.15 and correlations[True][1] > 0.6  # it learned the truth instead


def test_the_folded_head_and_covariance_score_raw_features_as_the_study_did():
    expert, base, covariates = shorter_expert(n=150)
    standardizer = Standardizer.fit(torch.cat([expert, base]), covariates)
    sides = [TextSet(standardizer(side), np.zeros(len(side)), -np.ones(len(side))) for side in (expert, base)]
    posterior = fit_posterior(PairSet(*sides), PairSet(*sides))
    head, raw = posterior.head(), torch.cat([expert, base])
    folded = standardizer.fold(head)
    with torch.no_grad():
        assert torch.allclose(folded(raw), head(standardizer(raw)), atol=1e-3)
    projected = standardizer(raw).double()
    expected = torch.sqrt(((projected @ posterior.covariance.double()) * projected).sum(dim=1)).numpy()
    assert np.allclose(standardizer.fold_covariance(posterior.covariance).std(raw), expected, rtol=1e-4)


def test_length_covariates_count_the_reward_tokenizer_tokens_as_read():
    _, tokenizer = load_policy("embedded:tiny-gpt-neox")
    texts = ["a b c d e f g h i j", "hi"]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    covariates = length_covariates(texts, tokenizer, max_length=4)
    assert covariates[:, 0].tolist() == [min(n, 4) for n in lengths]
    assert np.allclose(covariates[:, 1], np.log(covariates[:, 0]))


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
