"""DPO's training step in a job's training dtype: bfloat16 autocast over float32 weights against float32, on the same
pairs of the tiny offline model (the dpo kind trains in compute.training_dtype: `irlnb bench` measured its bfloat16
step 1.47x faster on an AMD EPYC with AVX512-BF16, 0.99x on an AMX Xeon)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trl
from conftest import PROMPTS, length_reward, shorter_is_better

from irlnb.layout import read_json
from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.params_file import parse_section
from irlnb.rl.dpo import PAIRS_FILE, ReferenceLogProbs, train_dpo
from irlnb.rl.kinds import KINDS
from irlnb.rl.policy_gradient import scoring_completions_only
from irlnb.rl.reward_signal import Normalizer, PolicyReward
from irlnb.rl.training_job import StageTraining, TrainingJob


def dpo_job(tmp_path, dtype: str, scorer=length_reward, folder: str = "") -> TrainingJob:
    """A dpo training of the tiny model on a length reward (longer continuations preferred), or on `scorer`,
    checkpointed in tmp_path/`folder` (default: the dtype's name)."""
    _, tokenizer = load_policy("embedded:tiny-gpt-neox")
    prompts = PROMPTS * 3
    reward = PolicyReward(scorer, Normalizer.fit(scorer(PROMPTS + [p + " and so on" for p in PROMPTS])), "ground_truth")
    start = StageTraining(reward, prompts, 0, embedded_policy_dir("tiny-gpt-neox"), tokenizer, "key", [])
    settings = dict(prompts=len(prompts), n=4, learning_rate=1e-3, per_device_train_batch_size=4, lora_rank=8)
    section = parse_section("dpo", settings, "test")
    rlhf = parse_section("rlhf", {"trainer": "dpo", "max_completion_length": 6}, "test")
    return TrainingJob(
        KINDS["dpo"], start, tmp_path / (folder or dtype), tmp_path / "cache", 0, rlhf, section, "float32", "cpu", dtype
    )


def test_the_bfloat16_dpo_step_follows_the_float32_step_on_the_same_pairs(tmp_path):
    """Before the first step the policy is its reference in both dtypes (the reference log-probabilities are read
    under the same autocast as the step), so the first loss is ln 2; the steps after it agree to bfloat16's
    precision (measured: 1e-4 apart)."""
    exact = train_dpo(dpo_job(tmp_path, "float32"))
    mixed = train_dpo(dpo_job(tmp_path, "bfloat16"))
    assert read_json(tmp_path / "float32" / PAIRS_FILE) == read_json(tmp_path / "bfloat16" / PAIRS_FILE)
    assert exact.steps == mixed.steps >= 2
    assert exact.log["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert mixed.log["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert np.allclose(mixed.log["loss"], exact.log["loss"], atol=0.005), (mixed.log["loss"], exact.log["loss"])
    base = dict(load_policy("embedded:tiny-gpt-neox")[0].named_parameters())
    moved = [name for name, p in mixed.model.named_parameters() if not torch.equal(p, base[name])]
    assert moved  # the merged LoRA changed the policy
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}  # autocast: float32 weights


def test_frozen_weights_held_in_bfloat16_change_no_dpo_number(tmp_path, monkeypatch):
    """FrozenWeightsInBfloat16 around TRL's DPO step: the log and the merged policy equal, bit for bit, those of the
    same training with autocast casting the frozen weights at each use (the callback replaced by one that casts
    nothing)."""
    from irlnb.rl import dpo
    from irlnb.rl.policy_gradient import FrozenWeightsInBfloat16

    held = train_dpo(dpo_job(tmp_path, "bfloat16", folder="held"))
    began = []

    class CastingNothing(FrozenWeightsInBfloat16):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            began.append(model is not None)

    monkeypatch.setattr(dpo, "FrozenWeightsInBfloat16", CastingNothing)
    cast_at_each_use = train_dpo(dpo_job(tmp_path, "bfloat16", folder="cast"))
    assert began == [True]  # the dpo kind holds the frozen weights in bfloat16 when it trains in it
    assert held.log["loss"].tolist() == cast_at_each_use.log["loss"].tolist()
    for (name, a), (_, b) in zip(held.model.state_dict().items(), cast_at_each_use.model.state_dict().items()):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), name


def test_a_second_alignment_of_the_same_samples_reads_the_reference_log_probabilities_the_first_kept(
    tmp_path, monkeypatch
):
    """The alignments of one run order the same base samples by their own rewards: the reference's log-probabilities
    the first read are kept beside the samples, and a second alignment (here the opposite reward: the same pairs
    reversed) reads none through the reference again. In float32 a row's log-probability does not depend on its
    batch, so the second training is the one it would be alone, loss for loss; bfloat16 keeps a file of its own."""
    read_through_reference = []
    precompute = trl.DPOTrainer._precompute_ref_logps

    def counted(self, dataset, name, batch_size):
        read_through_reference.append(len(dataset))
        return precompute(self, dataset, name, batch_size)

    monkeypatch.setattr(trl.DPOTrainer, "_precompute_ref_logps", counted)
    train_dpo(dpo_job(tmp_path / "run", "float32", folder="03_rlhf_ground_truth"))
    pairs = len(read_json(tmp_path / "run" / "03_rlhf_ground_truth" / PAIRS_FILE)["prompt"])
    assert read_through_reference == [pairs]
    kept = list((tmp_path / "run" / "cache" / "base_candidates").glob("dpo-reference-log-probs-*.json"))
    assert len(kept) == 1 and len(read_json(kept[0])) == 2 * pairs  # each pair's two samples

    shared = train_dpo(dpo_job(tmp_path / "run", "float32", shorter_is_better, folder="03_rlhf_learned"))
    assert read_through_reference == [pairs]  # nothing read again
    alone = train_dpo(dpo_job(tmp_path / "alone", "float32", shorter_is_better, folder="03_rlhf_learned"))
    assert read_through_reference == [pairs, pairs]
    assert shared.steps == alone.steps >= 2
    assert shared.log["loss"].tolist() == alone.log["loss"].tolist()
    assert shared.log["implicit_reward_margin"].tolist() == alone.log["implicit_reward_margin"].tolist()

    job = dpo_job(tmp_path / "run", "float32")
    assert ReferenceLogProbs.of_job(job, 8).path == kept[0]
    assert ReferenceLogProbs.of_job(dpo_job(tmp_path / "run", "bfloat16"), 8).path != kept[0]
    assert ReferenceLogProbs.of_job(job, 4).path != kept[0]  # another precomputation batch
    kept[0].write_text('{"1,2|3": ')  # cut short by a kill
    assert ReferenceLogProbs(kept[0]).values == {}  # read again, not trusted


def test_trls_lm_head_projects_only_the_completion_positions_and_reads_the_same_values_and_gradients(monkeypatch):
    from trl.trainer import utils as trl_utils

    model, tokenizer = load_policy("embedded:tiny-gpt-neox")
    model.get_output_embeddings().weight.requires_grad_(False)  # frozen, as under LoRA
    trl_utils.add_fused_lm_head(model)
    batch = tokenizer(["You are such a nice person, really", "The council voted"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :3] = -100  # the prompt
    projected = []  # how many positions each forward sends through the LM head
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(hidden, *rest):
        projected.append(len(hidden))
        return apply(hidden, *rest)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting_apply)

    def read():
        model.zero_grad()
        log_probs = model(**batch, labels=labels, fused_lm_head=True).log_probs
        log_probs.sum().backward()
        return log_probs.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    every_position = read()
    with scoring_completions_only():
        completions_only = read()
    assert projected == [labels[:, 1:].numel(), int((labels[:, 1:] != -100).sum())]
    assert trl_utils._use_triton(torch.device("cpu")) is False  # TRL's own choice again, outside the context
    assert torch.equal(every_position[0], completions_only[0])
    assert every_position[1].keys() == completions_only[1].keys() and len(every_position[1]) > 0
    assert all(torch.equal(every_position[1][name], completions_only[1][name]) for name in every_position[1])
