"""The experts beyond RLOO: best-of-n (no training), rejection-sampling fine-tuning and DPO, on the tiny offline model.

The demonstrations IRL draws from them are tested in test_demonstrations.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPTS, SAMPLING, length_reward

from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.params_file import parse_section
from irlnb.rl.generation import Decoding, sample_continuations
from irlnb.rl.rejection import continuation_batch, rejection_sampling_finetune
from irlnb.rl.sampling import BestOfN


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


def fine_tune_tiny(tokenizer, checkpoints, guard_texts: list[str], scorer=length_reward, **rft_changes):
    """Rejection-sampling fine-tuning of the tiny model on the test prompts (each twice), in float32."""
    return rejection_sampling_finetune(
        embedded_policy_dir("tiny-gpt-neox"),
        tokenizer,
        PROMPTS * 2,
        scorer,
        rft=rft_settings(**rft_changes),
        rlhf=RLHF,
        guard_texts=guard_texts,
        checkpoints=checkpoints,
        seed=0,
        inference_dtype="float32",
    )


def test_rejection_sampling_fine_tunes_on_the_winners_and_resumes_after_its_last_round(tmp_path, tiny):
    _, tokenizer = tiny
    start = _weights(load_policy("embedded:tiny-gpt-neox")[0])
    guard = ["What a lovely day it is", "Thank you for the help"]
    result = fine_tune_tiny(tokenizer, tmp_path, guard)
    assert result.rounds == 1 and result.resumed_from_round == 0 and not result.guard_tripped
    assert len(result.log) == 1 and math.isfinite(result.log.loc[0, "loss"])
    winners = result.chosen[0]
    assert (winners["reward"] == winners["prompt"].str.len() + winners["continuation"].str.len()).all()
    assert result.log.loc[0, "reward_chosen_mean"] >= result.log.loc[0, "reward_candidates_mean"]
    trained = _weights(result.model)
    assert any(not torch.equal(start[k], trained[k]) for k in start), "fine-tuning did not change the policy"
    assert (tmp_path / "round-1" / "config.json").is_file()

    again = fine_tune_tiny(tokenizer, tmp_path, guard, scorer=lambda texts: pytest.fail("a finished round was redone"))
    assert again.resumed_from_round == 1 and again.rounds == 1
    assert all(torch.equal(trained[k], v) for k, v in _weights(again.model).items())


def test_an_epoch_that_hurts_fluency_past_the_bound_is_undone(tmp_path, tiny):
    _, tokenizer = tiny
    start = _weights(load_policy("embedded:tiny-gpt-neox")[0])
    result = fine_tune_tiny(
        tokenizer, tmp_path, ["What a lovely day it is"], max_perplexity_ratio=1.0000001, learning_rate=5e-2
    )
    assert result.guard_tripped and bool(result.log.loc[0, "undone"]) and result.log.loc[0, "perplexity_ratio"] > 1
    assert all(torch.equal(start[k], v) for k, v in _weights(result.model).items())  # back where it started


def test_the_launcher_refuses_trainers_it_cannot_run(tmp_path):
    from conftest import write_params

    from irlnb.rl.launch import main

    params = write_params(tmp_path, rlhf__trainer="rft")
    assert main([str(params)]) == 2


def test_the_base_samples_are_drawn_once_and_kept_for_every_run_beside(tiny, tmp_path):
    """The base is frozen: the runs of one runs directory that draw the same prompts with the same seed (the
    points of a study) read its samples from the shared cache, and anything else draws anew."""
    from irlnb.layout import RunLayout
    from irlnb.rl.sampling import KeptSamples, ModelPolicy

    model, tokenizer = tiny
    shared = RunLayout(tmp_path / "runs" / "a").cache
    assert shared == RunLayout(tmp_path / "runs" / "b").cache != RunLayout(tmp_path / "other" / "a").cache
    drawn = []

    class Counted(ModelPolicy):
        def samples(self, prompts, count, batch_size, seed):
            drawn.append(seed)
            return super().samples(prompts, count, batch_size, seed)

    kept = KeptSamples(Counted(model, tokenizer, SAMPLING), shared, {"weights_sha256": "w0", "dtype": "float32"})
    first = kept.samples(PROMPTS, 2, batch_size=4, seed=5)
    assert first == sample_continuations(model, tokenizer, PROMPTS, SAMPLING, 2, batch_size=4, seed=5)
    assert kept.samples(PROMPTS, 2, batch_size=4, seed=5) == first and drawn == [5]  # read, not drawn
    kept.samples(PROMPTS, 2, batch_size=4, seed=6)
    kept.samples(PROMPTS[:2], 2, batch_size=4, seed=5)
    other_weights = KeptSamples(kept.policy, shared, {"weights_sha256": "w1", "dtype": "float32"})
    other_weights.samples(PROMPTS, 2, batch_size=4, seed=5)
    assert drawn == [5, 6, 5, 5]  # another seed, other prompts, another model: drawn anew


def test_dpo_pairs_are_the_rewards_best_against_its_worst_and_ties_carry_no_preference():
    from irlnb.rl.dpo import preference_pairs

    prompts = ["p1 ", "p2 ", "p3 "]
    candidates = [["a", "bb", "c"], ["same", "same", "x"], ["u", "v", "w"]]
    scores = np.array([[0.5, 2.0, -1.0], [1.0, 3.0, 3.0], [1.0, 1.0, 1.0]])
    pairs = preference_pairs(prompts, candidates, scores)
    # p2: best "same" (3.0, first of the tie), worst "same" (1.0): the same text; p3: every score equal
    assert pairs.to_dict(orient="records") == [
        {"prompt": "p1 ", "chosen": "bb", "rejected": "c", "chosen_reward": 2.0, "rejected_reward": -1.0}
    ]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rlhf.trainer": "best_of_n"}, "irl.matched: a best-of-n expert has no model of its own"),
        ({"dpo.beta": 0}, "dpo.beta: expected a number > 0.0, got 0"),
        ({"irl.train_prompts": 801}, "irl.train_prompts: expected at most 800: IRL's 1200 train prompts"),
        ({"dpo.prompts": 601}, "dpo.prompts: expected at most 600"),
    ],
)
def test_expert_settings_that_would_break_irl_are_refused_in_one_line(changes, message):
    from irlnb.config import ConfigError
    from irlnb.params_file import config_with, parse_config

    defaults = parse_config({"run": {"name": "test"}}, "p.yaml")  # the config's defaults: a DPO expert
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as error:
        config_with(defaults, changes, "test")
    assert "\n" not in str(error.value)


@pytest.mark.slow(50)
def test_a_dpo_expert_trains_on_prompts_irl_never_sees_and_reports_its_distance_from_the_base(tmp_path):
    """Stage 03 trains the dpo expert with TRL on reward-ordered pairs of base samples; stage 04 draws its
    demonstrations on other prompts and measures the expert's log-ratio against the base (its KL estimate)."""
    from conftest import irlnb_cli, write_params

    from irlnb.irl.demonstrations import load_demonstrations
    from irlnb.layout import RunLayout, read_json
    from irlnb.rl.policy_card import PolicyCard

    params = write_params(
        tmp_path,
        rlhf__trainer="dpo",
        dpo__prompts=12,
        dpo__per_device_train_batch_size=4,
        dpo__learning_rate=1.0e-3,
        dpo__num_train_epochs=1,
        irl__seeds=1,
        irl__compare_losses=False,
    )
    done = irlnb_cli("run", str(params), "--until", "04_irl")
    assert done.returncode == 0, done.stderr
    layout = RunLayout(tmp_path / "runs" / "smoke")
    card = PolicyCard.read(layout.policy("ground_truth"))
    assert card.trainer == "dpo" and len(card.prompt_ids) == 12 and card.steps >= 1
    demonstrations = load_demonstrations(layout)
    assert not set(demonstrations["id"]) & set(card.prompt_ids)  # disjoint prompt sets
    assert set(card.prompt_ids) & set(load_curated_ids(layout, "train"))  # they are train prompts
    log = pd.read_csv(layout.train_log("ground_truth"))
    assert len(log) == card.steps and np.isfinite(log["loss"]).all()
    metrics = read_json(layout.metrics)
    assert math.isfinite(metrics["irl.log_ratio.test.expert_log_ratio_mean"])
    assert metrics["irl.log_ratio.test.expert_log_ratio_mean"] != 0.0  # the trained expert moved from the base


def load_curated_ids(layout, split: str) -> list[str]:
    from irlnb.data.curation import load_curated

    curated = load_curated(layout)
    return curated.loc[curated["split"] == split, "id"].tolist()
