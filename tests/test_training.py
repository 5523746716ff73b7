"""RLHF pieces on the tiny offline GPT-NeoX: the reward adapter, fixed normalisation, training, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.params_file import parse_section
from irlnb.rl.kinds import KINDS
from irlnb.rl.policy_gradient import lora_config, train_policy, trl_config
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
    assert type(trainer).__name__ == "GRPOTrainer" and trainer.state.global_step == 2
    adapters = {k: v for k, v in trainer.model.state_dict().items() if "lora_B" in k}
    assert adapters and any(v.abs().sum() > 0 for v in adapters.values())  # B starts at zero: training moved it


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
