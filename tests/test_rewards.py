"""Feature rewards on the tiny offline backbone: pooling, the random reward, save/load and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irlnb.rewards.features import (
    REWARD_CONFIG,
    REWARD_HEAD,
    FeatureReward,
    RewardLoadError,
    load_reward,
    pool,
    random_reward,
)
from irlnb.rl.reward_signal import make_scorer

BACKBONE = "embedded:tiny-gpt-neox"
TEXTS = ["You are such an idiot", "What a lovely day", "ok"]


def test_last_token_pooling_ignores_padding_on_either_side():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, left, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 5.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 4.0]


def test_a_score_does_not_depend_on_the_batch_it_is_in():
    reward = random_reward(BACKBONE, seed=0, pooling="last", layer=-1)
    together = reward.score(TEXTS, batch_size=3)
    alone = np.array([reward.score([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_random_reward_is_fixed_by_its_seed():
    np.testing.assert_array_equal(
        random_reward(BACKBONE, seed=3, pooling="last", layer=-1).score(TEXTS),
        random_reward(BACKBONE, seed=3, pooling="last", layer=-1).score(TEXTS),
    )
    assert not np.allclose(
        random_reward(BACKBONE, seed=3, pooling="last", layer=-1).score(TEXTS),
        random_reward(BACKBONE, seed=4, pooling="last", layer=-1).score(TEXTS),
    )


def test_save_and_load_round_trip(tmp_path):
    reward = random_reward(BACKBONE, seed=0, pooling="mean", layer=1)
    reward.save(tmp_path / "reward")
    loaded = load_reward(tmp_path / "reward")
    assert isinstance(loaded, FeatureReward) and loaded.spec == reward.spec
    np.testing.assert_allclose(loaded.score(TEXTS), reward.score(TEXTS), atol=1e-6)


def test_a_missing_or_corrupted_or_foreign_reward_is_refused(tmp_path):
    with pytest.raises(RewardLoadError, match="not a saved reward"):
        load_reward(tmp_path / "nowhere")
    folder = random_reward(BACKBONE, seed=0, pooling="last", layer=-1).save(tmp_path / "reward")
    head = (folder / REWARD_HEAD).read_bytes()
    (folder / REWARD_HEAD).write_bytes(head[:-4] + b"XXXX")
    with pytest.raises(RewardLoadError, match="sha256 mismatch; the reward head is corrupted"):
        load_reward(folder)
    (folder / REWARD_HEAD).write_bytes(head)
    config = json.loads((folder / REWARD_CONFIG).read_text())
    config["backbone_sha256"] = "0" * 64
    (folder / REWARD_CONFIG).write_text(json.dumps(config))
    with pytest.raises(RewardLoadError, match="made on backbone embedded:tiny-gpt-neox with sha256 000000000000"):
        load_reward(folder)


def test_make_scorer_gives_each_reward_source_and_what_identifies_it(tmp_path):
    from irlnb.layout import RunLayout
    from irlnb.params_file import load_config

    config, layout = load_config("params/smoke.yaml"), RunLayout(tmp_path)
    sections = dict(
        sources=config.sources, ground_truth=config.ground_truth, rlhf=config.rlhf, device="cpu", dtype="float32"
    )
    ground_truth, identity = make_scorer("ground_truth", layout, **sections)
    scores = ground_truth(["You are a stupid idiot", "Thank you, that was kind"])
    assert scores[0] < 0 < scores[1]  # R*: toxic below zero
    assert identity == {"classifier": "embedded:tox-block", "clip": 10.0}
    random, identity = make_scorer("random", layout, **sections, random_reward=config.random_reward)
    assert np.isfinite(random(TEXTS)).all() and identity["seed"] == config.random_reward.seed
    # the random reward reads its features in the stage's inference dtype, which its identity (the training key) holds
    in_bfloat16, identity_bfloat16 = make_scorer(
        "random", layout, **{**sections, "dtype": "bfloat16"}, random_reward=config.random_reward
    )
    assert identity["dtype"] == "float32" and identity_bfloat16["dtype"] == "bfloat16"
    read_in_bfloat16, read_in_float32 = np.asarray(in_bfloat16(TEXTS)), np.asarray(random(TEXTS))
    assert np.corrcoef(read_in_bfloat16, read_in_float32)[0, 1] > 0.95
    assert not np.array_equal(read_in_bfloat16, read_in_float32)
    with pytest.raises(RewardLoadError, match="not a saved reward"):
        make_scorer("learned", layout, **sections)
    random_reward(BACKBONE, seed=9, pooling="last", layer=-1).save(
        layout.learned_reward
    )  # stands in for notebook 04's output
    learned, identity = make_scorer("learned", layout, **sections)
    np.testing.assert_allclose(
        learned(TEXTS), random_reward(BACKBONE, seed=9, pooling="last", layer=-1).score(TEXTS), atol=1e-6
    )
    assert identity["head_sha256"] == json.loads((layout.learned_reward / REWARD_CONFIG).read_text())["head_sha256"]
    with pytest.raises(ValueError, match="reward must be one of ground_truth, learned, random"):
        make_scorer("oracle", layout, **sections)


def test_the_flop_count_of_a_partial_forward_counts_the_blocks_that_run():
    from irlnb.pipeline.bench import blocks_parameters
    from irlnb.rewards.features import decoder_blocks, reward_form

    model = reward_form(BACKBONE, "mean", 1, 128).backbone
    first, second = (sum(p.numel() for p in block.parameters()) for block in decoder_blocks(model))
    assert blocks_parameters(model, 1) == first
    assert blocks_parameters(model, -1) == first + second + model.get_output_embeddings().weight.numel()
