"""Agreement across halves of the demonstrations (`irlnb.irl.halves`): R*-free, high where the pairs pin a reward
down, low where they carry nothing."""

import numpy as np
import torch
from conftest import synthetic_pairs

from irlnb.irl import halves
from irlnb.irl.feature_sets import PairSet, TextSet


def with_prompts(pairs: PairSet) -> PairSet:
    return PairSet(pairs.expert, pairs.non_expert, np.arange(len(pairs.expert.r_star)) // 2)  # two pairs a prompt


def test_the_halves_split_by_prompt_cover_every_pair_once_and_are_seeded():
    pairs = with_prompts(synthetic_pairs(40, 0))
    first, second = halves.halves(pairs, seed=3)
    assert len(first.expert.r_star) + len(second.expert.r_star) == 40
    assert not set(first.prompt_ids) & set(second.prompt_ids) and len(set(first.prompt_ids)) == 10
    again, _ = halves.halves(pairs, seed=3)
    assert torch.equal(again.expert.features, first.expert.features)
    other, _ = halves.halves(pairs, seed=4)
    assert not torch.equal(other.expert.features, first.expert.features)


def test_halves_agree_where_the_pairs_carry_a_reward_and_not_where_they_carry_none():
    human = synthetic_pairs(300, 9).expert
    informative = halves.split_half_agreement(
        with_prompts(synthetic_pairs(400, 1)), synthetic_pairs(100, 2), human, posterior=True, seed=0
    )
    assert set(informative) == {"irl.laplace.test.split_half_spearman", "irl.mean_shift.test.split_half_spearman"}
    assert min(informative.values()) > 0.9
    noise = synthetic_pairs(400, 5)
    same = PairSet(
        TextSet(noise.non_expert.features.flip(0), noise.non_expert.r_star, noise.non_expert.labels), noise.non_expert
    )  # both sides drawn alike: the pairs prefer nothing
    uninformative = halves.split_half_agreement(same, synthetic_pairs(100, 2), human, posterior=False, seed=0)
    assert list(uninformative) == ["irl.mean_shift.test.split_half_spearman"]
    assert uninformative["irl.mean_shift.test.split_half_spearman"] < 0.5
