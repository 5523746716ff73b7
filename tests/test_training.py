"""RLHF pieces on the tiny offline GPT-NeoX: the reward adapter, fixed normalisation, training, resume."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch
import trl
from safetensors.torch import load_file

from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.params_file import parse_section
from irlnb.rl.kinds import KINDS
from irlnb.rl.policy_gradient import (
    PackageRollouts,
    lora_config,
    repeated_groups,
    rollout_trainer,
    train_policy,
    trl_config,
)
from irlnb.rl.reward_signal import Normalizer, PolicyReward, RewardError

PROMPTS = ["You are such a", "The council voted to", "I really think that", "Thanks for the"] * 4


def length_scorer(texts):
    """A deterministic toy reward: longer texts score higher."""
    return np.array([len(t) for t in texts], dtype=float)


def test_normalizer_is_fixed_and_affine():
    normalizer = Normalizer.fit([1.0, 3.0])
    np.testing.assert_allclose(normalizer(np.array([2.0, 4.0])), [0.0, 2.0])
    with pytest.raises(RewardError, match="at least two finite"):
        Normalizer.fit([1.0, np.inf])


def test_reward_adapter_scores_prompt_plus_completion_and_counts_empty_completions():
    reward = PolicyReward(length_scorer, Normalizer(0.0, 1.0), name="length")
    assert reward(["ab", "c"], ["cd", ""]) == [4.0, 1.0]
    assert reward.empty_completions == 1 and reward.scored == 2 and reward.__name__ == "length"


def test_a_nan_reward_stops_the_run_and_names_the_text():
    reward = PolicyReward(lambda texts: np.array([0.0, np.nan]), Normalizer(0.0, 1.0), name="broken")
    with pytest.raises(RewardError, match=r"reward broken is nan for text 'you are bad'"):
        reward(["ok", "you are"], [" fine", " bad"])


def _weights(path):
    return load_file(next(path.glob("*.safetensors")))


def test_rloo_training_changes_the_policy_and_resumes_from_its_checkpoint(tmp_path):
    policy_dir = embedded_policy_dir("tiny-gpt-neox")
    _, tokenizer = load_policy("embedded:tiny-gpt-neox")
    reward = PolicyReward(length_scorer, Normalizer(20.0, 5.0), name="length")

    rloo = parse_section("rloo", {"learning_rate": 1e-3, "save_steps": 2}, "test")
    rlhf = parse_section("rlhf", {"max_completion_length": 8}, "test")

    def config(steps):
        return trl_config(tmp_path / "train", KINDS["rloo"], rloo, rlhf, seed=0, use_cpu=True, max_steps=steps)

    assert config(2).per_device_train_batch_size == 8 and config(2).num_generations == 4  # TRL's names, unrenamed
    first = train_policy(policy_dir, tokenizer, PROMPTS, reward, config(2), KINDS["rloo"])
    assert (tmp_path / "train" / "checkpoint-2").is_dir()
    losses = [row["loss"] for row in first.state.log_history if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
    before, after = _weights(policy_dir), _weights(tmp_path / "train" / "checkpoint-2")
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not change the policy"

    resumed = train_policy(policy_dir, tokenizer, PROMPTS, reward, config(4), KINDS["rloo"])
    logged_steps = [row["step"] for row in resumed.state.log_history if "loss" in row]
    assert resumed.state.global_step == 4
    assert 1 in logged_steps and 4 in logged_steps  # history restored from checkpoint-2, then steps 3-4
    assert (tmp_path / "train" / "checkpoint-4").is_dir()
    assert reward.scored == 4 * 8  # steps 1-2 scored once, steps 3-4 once: nothing was redone

    finished = train_policy(policy_dir, tokenizer, PROMPTS, reward, config(4), KINDS["rloo"])
    assert finished.state.global_step == 4 and reward.scored == 4 * 8  # a finished training is only loaded
    trained = _weights(tmp_path / "train" / "checkpoint-4")
    loaded = {k: v for k, v in finished.model.state_dict().items()}
    assert all(torch.equal(trained[k], loaded[k]) for k in trained if k in loaded)
    assert not (tmp_path / "train" / "checkpoint-5").exists()


def test_grpo_option_trains_with_a_lora_adapter(tmp_path):
    policy_dir = embedded_policy_dir("tiny-gpt-neox")
    _, tokenizer = load_policy("embedded:tiny-gpt-neox")
    grpo = parse_section("grpo", {"max_steps": 2, "learning_rate": 1e-3, "save_steps": 2, "lora_rank": 4}, "test")
    rlhf = parse_section("rlhf", {"max_completion_length": 6}, "test")
    config = trl_config(tmp_path / "grpo", KINDS["grpo"], grpo, rlhf, seed=0, use_cpu=True)
    trainer = train_policy(
        policy_dir,
        tokenizer,
        PROMPTS,
        PolicyReward(length_scorer, Normalizer(20.0, 5.0), "length"),
        config,
        KINDS["grpo"],
        peft_config=lora_config(grpo),
    )
    assert isinstance(trainer, trl.GRPOTrainer) and isinstance(trainer, PackageRollouts)
    assert trainer.state.global_step == 2
    adapters = {k: v for k, v in trainer.model.state_dict().items() if "lora_B" in k}
    assert adapters and any(v.abs().sum() > 0 for v in adapters.values())  # B starts at zero: training moved it


def test_rollouts_come_from_the_package_sampler_one_prefill_per_prompt_and_at_top_k_1_are_trls_own(tmp_path):
    policy_dir = embedded_policy_dir("tiny-gpt-neox")
    _, tokenizer = load_policy("embedded:tiny-gpt-neox")
    reward = PolicyReward(length_scorer, Normalizer(20.0, 5.0), name="length")
    rloo = parse_section("rloo", {"learning_rate": 1e-3}, "test")

    def trainer(top_k: int):
        rlhf = parse_section("rlhf", {"max_completion_length": 8, "top_k": top_k}, "test")
        config = trl_config(tmp_path / f"top{top_k}", KINDS["rloo"], rloo, rlhf, seed=0, use_cpu=True, max_steps=1)
        dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})
        return rollout_trainer("RLOOTrainer")(
            model=str(policy_dir), reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer
        )

    greedy = trainer(1)
    prompts = [prompt for prompt in PROMPTS[:3] for _ in range(greedy.num_generations)]  # as TRL repeats them
    prompt_ids, images, fields = greedy._tokenize_prompts(prompts)
    prefills = []
    hook = greedy.model.register_forward_pre_hook(
        lambda module, args, kwargs: prefills.append(kwargs["input_ids"].shape) if not prefills else None,
        with_kwargs=True,
    )
    ours = greedy._generate_single_turn(prompt_ids, images, fields)
    hook.remove()
    assert prefills[0][0] == 3  # one row per prompt, its 4 samples drawn from it
    # top-k 1 leaves one token to draw: transformers' generate, as TRL calls it, gives the same completions
    assert ours == trl.RLOOTrainer._generate_single_turn(greedy, prompt_ids, images, fields)

    sampled = trainer(30)
    torch.manual_seed(0)
    first = sampled._generate_single_turn(prompt_ids, images, fields)
    torch.manual_seed(0)
    assert sampled._generate_single_turn(prompt_ids, images, fields) == first  # the trainer's seed decides the draws
    stops = set(sampled.eos_token_ids)
    assert all(1 <= len(ids) <= 8 and not stops & set(ids[:-1]) for ids in first)  # each ends at its first stop
    assert len({tuple(ids) for ids in first[:4]}) > 1  # a prompt's samples are drawn apart
    assert repeated_groups([[1], [1], [2], [1]]) == [([1], 2), ([2], 1), ([1], 1)]


def test_checkpoints_are_kept_for_the_same_settings_and_dropped_for_others(tmp_path):
    from irlnb.layout import RunLayout
    from irlnb.rl.training import checkpoint_dir

    layout = RunLayout(tmp_path)
    folder = checkpoint_dir(layout, "03_rlhf_ground_truth", "key-a")
    (folder / "checkpoint-5").mkdir()
    assert (checkpoint_dir(layout, "03_rlhf_ground_truth", "key-a") / "checkpoint-5").is_dir()
    again = checkpoint_dir(layout, "03_rlhf_ground_truth", "key-b")  # training changed: never resume those
    assert not (again / "checkpoint-5").exists()
    assert (again / "training_key.txt").read_text() == "key-b"


def test_a_checkpoint_cut_short_by_a_kill_is_ignored(tmp_path):
    from irlnb.rl.policy_gradient import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"half")  # killed before its state was written
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")
    assert not (tmp_path / "checkpoint-10").exists()
