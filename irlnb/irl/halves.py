"""Agreement across halves of the demonstrations (R*-free): each objective fitted once (the Laplace posterior's mean,
the mean shift) is fitted again on two halves of the IRL-train pairs, split by prompt, and the two halves' rewards
are compared on the held-out human texts by Spearman correlation. A reward that changes with the half of the
demonstrations it saw is not pinned down by them, whatever R* would say of it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from irlnb import metric_names
from irlnb.irl.feature_sets import PairSet, TextSet, rewards_of
from irlnb.irl.fitting import one_fits

SPLIT_HALF_SPEARMAN = "split_half_spearman"  # irl.<objective>.test.split_half_spearman


def halves(pairs: PairSet, seed: int) -> tuple[PairSet, PairSet]:
    """Two halves of `pairs`, every prompt's pairs in one half (a pair is its own prompt where prompts are unknown),
    the prompts shuffled with `seed`."""
    n = len(pairs.expert.r_star)
    ids = pairs.prompt_ids if pairs.prompt_ids is not None else np.arange(n)
    prompts = np.random.default_rng(seed).permutation(np.unique(ids))
    first = np.isin(ids, prompts[: len(prompts) // 2])
    return part(pairs, first), part(pairs, ~first)


def part(pairs: PairSet, chosen: np.ndarray) -> PairSet:
    def side(texts: TextSet) -> TextSet:
        return TextSet(texts.features[chosen], texts.r_star[chosen], texts.labels[chosen])

    ids = None if pairs.prompt_ids is None else pairs.prompt_ids[chosen]
    return PairSet(side(pairs.expert), side(pairs.non_expert), ids)


def split_half_agreement(
    train: PairSet, validation: PairSet, human: TextSet, posterior: bool, seed: int
) -> dict[str, float]:
    """`irl.<objective>.test.split_half_spearman` for each objective fitted once (with `posterior`, irl.posterior,
    the Laplace one too): how alike its rewards fitted on two halves of the train pairs order the human texts."""
    first, second = (one_fits(half, validation, posterior).heads for half in halves(train, seed))
    return {
        metric_names.irl_metric(name, "test", SPLIT_HALF_SPEARMAN): float(
            spearmanr(rewards_of(first[name], human), rewards_of(second[name], human)).statistic
        )
        for name in first
    }
