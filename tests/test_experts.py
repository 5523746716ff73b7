"""The experts beyond RLOO: best-of-n (no training) and rejection-sampling fine-tuning, on the tiny offline model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from irlnb.config import parse_section
from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.rl.generation import Decoding
from irlnb.rl.rejection import continuation_batch, rejection_sampling_finetune
from irlnb.rl.sampling import BestOfN

PROMPTS = ["You are such a", "The council voted to", "I really think that", "Thanks for the"]
SAMPLING = Decoding(max_new_tokens=6, do_sample=True, top_k=30)


def length_reward(texts):
    """A toy reward with an obvious preference: more characters score higher."""
    return np.array([float(len(t)) for t in texts])


@pytest.fixture(scope="module")
def tiny():
    return load_policy("embedded:tiny-gpt-neox")


def test_best_of_n_keeps_the_candidate_the_reward_scores_highest(tiny):
    model, tokenizer = tiny
    policy = BestOfN(model, tokenizer, SAMPLING, n=4, scorer=length_reward)
    candidates = policy.candidates(PROMPTS, batch_size=4, seed=0)
    assert [len(options) for options in candidates] == [4] * len(PROMPTS)
    assert any(len(set(options)) > 1 for options in candidates)  # the candidates really differ
    chosen = policy.choose(PROMPTS, candidates)
    for prompt, options, (best, score) in zip(PROMPTS, candidates, chosen):
        assert best == max(options, key=len) and score == len(prompt + best)
    assert policy.outputs(PROMPTS, batch_size=4, seed=0) == [best for best, _ in chosen]  # same seeds, same choice


def test_best_of_one_is_a_plain_sample_and_never_asks_the_reward(tiny):
    model, tokenizer = tiny
    plain = BestOfN(model, tokenizer, SAMPLING, n=1, scorer=lambda texts: pytest.fail("the reward was queried"))
    candidates = plain.candidates(PROMPTS, batch_size=4, seed=3)
    assert plain.outputs(PROMPTS, batch_size=4, seed=3) == [options[0] for options in candidates]
    with pytest.raises(ValueError, match="a best-of-n policy samples its candidates"):
        BestOfN(model, tokenizer, Decoding(max_new_tokens=6), n=2, scorer=length_reward)


def test_fine_tuning_batches_score_only_the_continuation(tiny):
    _, tokenizer = tiny
    batch = continuation_batch(tokenizer, ["You are", "Hi"], [" kind", " there friend"], max_new_tokens=6)
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in ("You are", "Hi")]
    for row, length in enumerate(prompt_lengths):
        labels = batch["labels"][row]
        assert (labels[:length] == -100).all() and (
            labels[length:][batch["attention_mask"][row][length:] == 1] >= 0
        ).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never a target


def rft_settings(**changes):
    """The rft section of a tiny run (typed and validated as a params file's)."""
    values = dict(n=3, max_perplexity_ratio=10.0, learning_rate=5e-3, top_k=30, per_device_train_batch_size=4)
    return parse_section("rft", {**values, **changes}, "test")


RLHF = parse_section("rlhf", {"max_completion_length": 6, "reward_batch_size": 8}, "test")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_rejection_sampling_fine_tunes_on_the_winners_and_resumes_after_its_last_round(tmp_path, tiny):
    _, tokenizer = tiny
    start = _weights(load_policy("embedded:tiny-gpt-neox")[0])
    guard = ["What a lovely day it is", "Thank you for the help"]
    result = rejection_sampling_finetune(
        embedded_policy_dir("tiny-gpt-neox"),
        tokenizer,
        PROMPTS * 2,
        length_reward,
        rft=rft_settings(),
        rlhf=RLHF,
        guard_texts=guard,
        checkpoints=tmp_path,
        seed=0,
        inference_dtype="float32",
    )
    assert result.rounds == 1 and result.resumed_from_round == 0 and not result.guard_tripped
    assert len(result.log) == 1 and math.isfinite(result.log.loc[0, "loss"])
    winners = result.chosen[0]
    assert (winners["reward"] == winners["prompt"].str.len() + winners["continuation"].str.len()).all()
    assert result.log.loc[0, "reward_chosen_mean"] >= result.log.loc[0, "reward_candidates_mean"]
    trained = _weights(result.model)
    assert any(not torch.equal(start[k], trained[k]) for k in start), "fine-tuning did not change the policy"
    assert (tmp_path / "round-1" / "config.json").is_file()

    again = rejection_sampling_finetune(
        embedded_policy_dir("tiny-gpt-neox"),
        tokenizer,
        PROMPTS * 2,
        lambda texts: pytest.fail("a finished round was redone"),
        rft=rft_settings(),
        rlhf=RLHF,
        guard_texts=guard,
        checkpoints=tmp_path,
        seed=0,
        inference_dtype="float32",
    )
    assert again.resumed_from_round == 1 and again.rounds == 1
    assert all(torch.equal(trained[k], v) for k, v in _weights(again.model).items())


def test_an_epoch_that_hurts_fluency_past_the_bound_is_undone(tmp_path, tiny):
    _, tokenizer = tiny
    start = _weights(load_policy("embedded:tiny-gpt-neox")[0])
    result = rejection_sampling_finetune(
        embedded_policy_dir("tiny-gpt-neox"),
        tokenizer,
        PROMPTS * 2,
        length_reward,
        rft=rft_settings(max_perplexity_ratio=1.0000001, learning_rate=5e-2),
        rlhf=RLHF,
        guard_texts=["What a lovely day it is"],
        checkpoints=tmp_path,
        seed=0,
        inference_dtype="float32",
    )
    assert result.guard_tripped and bool(result.log.loc[0, "undone"]) and result.log.loc[0, "perplexity_ratio"] > 1
    assert all(torch.equal(start[k], v) for k, v in _weights(result.model).items())  # back where it started


def test_the_launcher_refuses_trainers_it_cannot_run(tmp_path):
    from conftest import write_params

    from irlnb.rl.launch import main

    params = write_params(tmp_path, rlhf__trainer="rft")
    assert main([str(params)]) == 2


def test_a_best_of_n_expert_cannot_be_demonstrated_greedily(tmp_path, monkeypatch):
    from irlnb.irl import demonstrations
    from irlnb.layout import RunLayout

    model, tokenizer = load_policy("embedded:tiny-gpt-neox")
    monkeypatch.setattr(
        demonstrations,
        "load_stage_policy",
        lambda *args, **kwargs: BestOfN(model, tokenizer, SAMPLING, 2, length_reward),
    )
    irl = SimpleNamespace(decoding="greedy", max_new_tokens=6)
    with pytest.raises(demonstrations.DemonstrationError, match="the expert is a best-of-n policy, which only samples"):
        demonstrations.demonstration_policies(
            RunLayout(tmp_path),
            "embedded:tiny-gpt-neox",
            irl,
            SimpleNamespace(top_k=30, temperature=1.0),
            "cpu",
            "float32",
        )


def test_demonstration_prompts_follow_the_pool_and_refuse_more_than_there_are():
    from irlnb.irl.demonstrations import DemonstrationError, split_prompts

    curated = pd.DataFrame(
        {
            "split": ["train"] * 6 + ["test"] * 3,
            "label": [1, 0, 1, 0, 1, 0, 1, 0, 1],
            "prompt": [f"p{i}" for i in range(9)],
        }
    )
    irl = SimpleNamespace(prompt_pool="toxic", train_prompts=3, validation_prompts=1)
    assert set(split_prompts(curated, irl, "train", 0)["label"]) == {1}
    assert len(split_prompts(curated, irl, "test", 0)) == 3  # every test prompt, both labels
    with pytest.raises(DemonstrationError, match="irl.train_prompts is 4, but the train split has 3 prompts"):
        split_prompts(curated, SimpleNamespace(prompt_pool="toxic", train_prompts=4), "train", 0)


def test_matched_pairs_of_a_best_of_n_expert_hold_the_base_sample_drawn_with_the_same_seed(tiny):
    from irlnb.irl.demonstrations import generate_pairs

    model, tokenizer = tiny
    expert = BestOfN(model, tokenizer, SAMPLING, n=3, scorer=length_reward)
    base = BestOfN(model, tokenizer, SAMPLING, n=1, scorer=None)
    prompts = pd.DataFrame({"prompt": PROMPTS, "label": [1, 0, 1, 0]})
    pairs = generate_pairs(prompts, expert, base, samples=2, batch_size=4, seed=5, matched=True)
    for sample in (0, 1):
        rows = pairs[pairs["sample"] == sample]
        assert rows["non_expert"].tolist() == base.outputs(PROMPTS, 4, 5 + 2 * sample)  # the base's own draw
        assert rows["expert"].tolist() == expert.outputs(PROMPTS, 4, 5 + 2 * sample)
        candidates = expert.candidates(PROMPTS, 4, 5 + 2 * sample)
        assert rows["non_expert"].tolist() == [options[0] for options in candidates]
    unmatched = generate_pairs(prompts, expert, base, samples=1, batch_size=4, seed=5, matched=False)
    assert unmatched["non_expert"].tolist() == base.outputs(PROMPTS, 4, 6)  # its own seed: an independent draw
