"""IRL's demonstrations (irlnb.irl.demonstrations): which prompts they are drawn on, what a best-of-n expert hands
out, and the designs it refuses; on the tiny offline model."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import PROMPTS, SAMPLING, length_reward

from irlnb.config import IrlSettings, RlhfSettings
from irlnb.irl.demonstrations import (
    EXPERT_REWARD,
    DemonstrationError,
    demonstration_policies,
    generate_pairs,
    split_prompts,
)
from irlnb.layout import RunLayout
from irlnb.rl.generation import sample_continuations
from irlnb.rl.policy_card import PolicyCard, save_policy
from irlnb.rl.sampling import BestOfN
from irlnb.rl.training_job import TrainingResult


@pytest.mark.parametrize(
    "irl, message",
    [
        (
            IrlSettings(decoding="greedy", samples_per_prompt=1, max_new_tokens=6),
            "the expert is a best-of-n policy, which only samples",
        ),
        (
            IrlSettings(decoding="sampled", matched=True, max_new_tokens=6),
            "irl.matched is true, but the expert is a best-of-n",
        ),
    ],
    ids=["greedy", "matched"],
)
def test_a_best_of_n_expert_cannot_be_demonstrated_greedily_or_matched(tmp_path, irl, message):
    """The expert's kind, read from its saved card, refuses the design before any model loads."""
    layout = RunLayout(tmp_path)
    card = PolicyCard(reward=EXPERT_REWARD, trainer="best_of_n", training_key="test", steps=0, settings={})
    no_weights = TrainingResult(model=None, log=pd.DataFrame(columns=["step"]), steps=0, resumed_from=0, start=None)
    save_policy(no_weights, layout.policy(EXPERT_REWARD), card)
    with pytest.raises(DemonstrationError, match=message):
        demonstration_policies(
            layout, "embedded:tiny-gpt-neox", irl, RlhfSettings(top_k=30, temperature=1.0), "cpu", "float32"
        )


def test_demonstration_prompts_follow_the_pool_and_refuse_more_than_there_are():
    curated = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(9)],
            "split": ["train"] * 6 + ["test"] * 3,
            "label": [1, 0, 1, 0, 1, 0, 1, 0, 1],
            "prompt": [f"p{i}" for i in range(9)],
        }
    )
    irl = IrlSettings(prompt_pool="toxic", train_prompts=3, test_prompts=0)
    assert set(split_prompts(curated, irl, "train", 0)["label"]) == {1}
    assert len(split_prompts(curated, irl, "test", 0)) == 3  # every test prompt, both labels
    fewer = IrlSettings(prompt_pool="toxic", test_prompts=2)
    drawn = split_prompts(curated, fewer, "test", 0)
    assert len(drawn) == 2 and set(drawn["id"]) < {"c6", "c7", "c8"}  # a sample of the test prompts, any label
    assert drawn["id"].tolist() == split_prompts(curated, fewer, "test", 0)["id"].tolist()  # seeded
    with pytest.raises(DemonstrationError, match=r"irl.test_prompts is 4, but the test split has 3 prompts$"):
        split_prompts(curated, IrlSettings(prompt_pool="toxic", test_prompts=4), "test", 0)
    with pytest.raises(DemonstrationError, match="irl.train_prompts is 4, but the train split has 3 prompts"):
        split_prompts(curated, IrlSettings(prompt_pool="toxic", train_prompts=4), "train", 0)


def test_a_balanced_pool_draws_each_label_at_the_test_splits_share_whatever_the_expert_took():
    curated = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(14)],
            "split": ["train"] * 10 + ["test"] * 4,
            "label": [1, 0] * 7,
            "prompt": [f"p{i}" for i in range(14)],
        }
    )
    held_out = {"c0", "c2", "c4"}  # an expert trained on three of the five toxic train prompts
    irl = IrlSettings(prompt_pool="balanced", train_prompts=4)
    drawn = split_prompts(curated, irl, "train", 0, held_out)
    assert sorted(drawn["label"]) == [0, 0, 1, 1] and not set(drawn["id"]) & held_out
    assert drawn["id"].tolist() == split_prompts(curated, irl, "train", 0, held_out)["id"].tolist()  # seeded
    assert sorted(split_prompts(curated, irl, "train", 0)["label"]) == [0, 0, 1, 1]
    with pytest.raises(
        DemonstrationError,
        match=r"irl.train_prompts is 6: 3 of label 1 for the test split's toxic share 0.50, but the train split "
        r"has 2 of them besides the 3 the expert was trained on$",
    ):
        split_prompts(curated, IrlSettings(prompt_pool="balanced", train_prompts=6), "train", 0, held_out)


def test_more_samples_per_prompt_for_the_fit_draw_no_more_test_pairs_than_the_test_count():
    from irlnb.irl.demonstrations import pairs_per_prompt

    irl = IrlSettings(samples_per_prompt=8, test_samples_per_prompt=2)
    assert [pairs_per_prompt(irl, split) for split in ("train", "validation", "test")] == [8, 8, 2]
    irl = IrlSettings(samples_per_prompt=1)  # greedy or a study's single pair: the test pairs follow it down
    assert [pairs_per_prompt(irl, split) for split in ("train", "validation", "test")] == [1, 1, 1]


def test_demonstration_prompts_never_include_those_a_dpo_expert_was_trained_on():
    curated = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(8)],
            "split": ["train"] * 6 + ["test"] * 2,
            "label": [1, 0] * 4,
            "prompt": list("abcdefgh"),
        }
    )
    irl = IrlSettings(prompt_pool="all", train_prompts=4)
    held_out = {"c0", "c3"}
    assert set(split_prompts(curated, irl, "train", 0, held_out)["id"]) == {"c1", "c2", "c4", "c5"}
    with pytest.raises(Exception, match="has 4 prompts in the pool 'all' besides the 2 the expert was trained on"):
        split_prompts(curated, IrlSettings(prompt_pool="all", train_prompts=5), "train", 0, held_out)


def test_a_best_of_n_expert_is_sampled_independently_and_hands_out_only_its_chosen_continuation(tiny):
    """IRL sees what an auditor could draw: the expert's chosen sample and a base sample of its own random
    numbers, never the candidate the expert rejected."""
    model, tokenizer = tiny
    expert = BestOfN(model, tokenizer, SAMPLING, n=3, scorer=length_reward)
    base = BestOfN(model, tokenizer, SAMPLING, n=1, scorer=None)
    prompts = pd.DataFrame({"id": ["a", "b", "c", "d"], "prompt": PROMPTS, "label": [1, 0, 1, 0]})
    pairs = generate_pairs(prompts, expert, base, samples=2, batch_size=4, seed=5, matched=False)
    assert not hasattr(expert, "outputs_and_first")  # nothing hands out a rejected candidate
    # Both samples of a prompt come from one prefill: 2 x 3 candidates of the expert, 2 of the base (its own seed).
    candidates = sample_continuations(model, tokenizer, PROMPTS, SAMPLING, 2 * 3, batch_size=4, seed=5)
    base_samples = sample_continuations(model, tokenizer, PROMPTS, SAMPLING, 2, batch_size=4, seed=6)
    for sample in (0, 1):
        rows = pairs[pairs["sample"] == sample]
        options = [drawn[3 * sample : 3 * sample + 3] for drawn in candidates]
        assert rows["expert"].tolist() == [best for best, _ in expert.choose(PROMPTS, options)]
        assert rows["non_expert"].tolist() == [drawn[sample] for drawn in base_samples]
        rejected = {(p, c) for p, group, best in zip(PROMPTS, options, rows["expert"]) for c in group if c != best}
        assert not rejected & set(zip(rows["prompt"], rows["non_expert"]))
    assert pairs["id"].tolist() == ["a", "b", "c", "d"] * 2
