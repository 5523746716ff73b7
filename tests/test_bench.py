"""`irlnb bench` end to end on the smoke params: every value is measured, and the derived ones are what they are
made of (ratios are quotients of their times, rates of their counts and times, shares add up). No wall-clock
threshold: only relations between values measured in the same run."""

from __future__ import annotations

import json
import math

import pytest
from conftest import PARAMS

from irlnb.compute import resolve_dtype
from irlnb.models.policies import load_policy
from irlnb.params_file import load_config
from irlnb.pipeline.bench import run_bench
from irlnb.rewards.features import score_tolerance

RLHF_PARTS = ("generation", "reference_forward", "policy_forward_backward", "optimizer_update")


@pytest.mark.slow(35)
def test_the_bench_measures_every_key_and_its_values_agree_with_each_other(tmp_path):
    out = tmp_path / "bench.json"
    params = PARAMS / "smoke.yaml"
    results = run_bench(threads=1, out=out, rlhf_threads=1, params=params)
    for key, value in results.items():
        assert math.isfinite(value) and value >= 0, key
    for key in ("matmul.peak_gflops", "rlhf_step.seconds", "irl_epoch.cached_s", "irl_epoch.full_s"):
        assert results[key] > 0, key
    assert results["bench.torch_threads"] == 1 and results["bench.rlhf_torch_threads"] == 1
    approx = pytest.approx

    # A ratio is the quotient of the two rates (or times) it compares.
    assert results["gt_score.batched_vs_loop"] == approx(
        results["gt_score.texts_per_s"] / results["gt_score.loop_texts_per_s"]
    )
    assert results["irl_epoch.cached_vs_full"] == approx(results["irl_epoch.full_s"] / results["irl_epoch.cached_s"])
    assert results["irl_epoch.pairs"] == 64

    # A share of the peak is the rate over the peak measured at the same thread count.
    assert results["reward_score.peak_fraction"] == approx(
        results["reward_score.gflops"] / results["matmul.peak_gflops"]
    )
    assert results["rlhf_step.peak_fraction"] == approx(
        results["rlhf_step.gflops"] / results["matmul.peak_gflops_1_threads"]
    )

    # The RLHF step's rate is its estimated FLOPs (2N per generated token, 8N per token) over its time.
    config = load_config(params)
    n_params = load_policy(config.sources.policy)[0].num_parameters()
    flops = n_params * (2 * results["rlhf_step.generated_tokens"] + 8 * results["rlhf_step.tokens"])
    assert results["rlhf_step.gflops"] == approx(flops / results["rlhf_step.seconds"] / 1e9)
    assert 0 < results["rlhf_step.generated_tokens"] <= results["rlhf_step.tokens"]

    # The InfoNCA step in both dtypes: 4N per token, the LM head's part only at the continuations' tokens, over
    # each one's time, over the matmul peak in that dtype; the bfloat16 step against its two alternatives.
    n_head = load_policy(config.sources.policy)[0].get_output_embeddings().weight.numel()
    assert 0 < results["infonca_step.scored_tokens"] < results["infonca_step.tokens"]
    for dtype in ("float32", "bfloat16"):
        tokens, scored = results["infonca_step.tokens"], results["infonca_step.scored_tokens"]
        gflops = 4 * ((n_params - n_head) * tokens + n_head * scored) / results[f"infonca_step.{dtype}_s"] / 1e9
        assert results[f"infonca_step.{dtype}_gflops"] == approx(gflops)
        assert results[f"infonca_step.{dtype}_peak_fraction"] == approx(gflops / results[f"matmul.{dtype}_peak_gflops"])
    bfloat16_s = results["infonca_step.bfloat16_s"]
    assert results["infonca_step.bfloat16_speedup"] == approx(results["infonca_step.float32_s"] / bfloat16_s)
    assert results["infonca_step.eager_attention_speedup"] == approx(
        results["infonca_step.default_attention_s"] / bfloat16_s
    )
    assert results["infonca_step.frozen_bfloat16_speedup"] == approx(
        results["infonca_step.frozen_cast_each_use_s"] / bfloat16_s
    )
    eager_layers_s = results["infonca_step.eager_layers_s"]
    assert results["infonca_step.compiled_layers_speedup"] == approx(eager_layers_s / bfloat16_s)
    assert results["infonca_step.sequences"] == config.infonca.per_device_train_batch_size * config.infonca.n

    # The DPO step (TRL's trainer) in both dtypes, the same way, its LM head counted only where it projects (the
    # completions' tokens); the time outside the model is a share.
    assert 0 < results["dpo_step.scored_tokens"] < results["dpo_step.tokens"]
    for dtype in ("float32", "bfloat16"):
        tokens, scored = results["dpo_step.tokens"], results["dpo_step.scored_tokens"]
        gflops = 4 * ((n_params - n_head) * tokens + n_head * scored) / results[f"dpo_step.{dtype}_s"] / 1e9
        assert results[f"dpo_step.{dtype}_gflops"] == approx(gflops)
        assert results[f"dpo_step.{dtype}_peak_fraction"] == approx(gflops / results[f"matmul.{dtype}_peak_gflops"])
        assert 0 <= results[f"dpo_step.{dtype}_outside_model_share"] < 1
    speedup = results["dpo_step.float32_s"] / results["dpo_step.bfloat16_s"]
    assert results["dpo_step.bfloat16_speedup"] == approx(speedup)
    every_position = results["dpo_step.bfloat16_every_position_s"]
    assert results["dpo_step.completions_only_speedup"] == approx(every_position / results["dpo_step.bfloat16_s"])
    assert results["dpo_step.pairs"] == config.dpo.per_device_train_batch_size

    # A white-box batch: the package's per-sequence log-softmax against one over the whole batch, the same numbers.
    assert results["log_probs.per_sequence_vs_batch"] == approx(
        results["log_probs.batch_s"] / results["log_probs.seconds"]
    )
    assert results["log_probs.max_abs_diff"] == 0 and 0 < results["log_probs.forward_share"]
    assert 0 < results["log_probs.tokens"] <= results["log_probs.padded_tokens"]
    inference = resolve_dtype(config.compute.inference_dtype, "cpu")
    assert results["log_probs.peak_fraction"] == approx(
        results["log_probs.gflops"] / results[f"matmul.{inference}_peak_gflops"]
    )

    # The parts of a step: each share is its time over their sum, and the shares add up to one.
    seconds = {part: results[f"rlhf_step.{part}_s"] for part in RLHF_PARTS}
    for part in RLHF_PARTS:
        assert results[f"rlhf_step.{part}_share"] == approx(seconds[part] / sum(seconds.values()))
    assert sum(results[f"rlhf_step.{part}_share"] for part in RLHF_PARTS) == approx(1.0)
    assert results["rlhf_step.sampler_speedup"] == approx(results["rlhf_step.generate_s"] / seconds["generation"])
    trls = results["rlhf_step.trl_rollouts_seconds"]
    assert results["rlhf_step.rollouts_speedup"] == approx(trls / results["rlhf_step.seconds"])
    assert results["rlhf_step.trl_rollouts_tokens"] > 0

    # Shares, counts and differences are within their ranges; the batched rewards match one-at-a-time ones.
    assert 0 <= results["demo_generate.same_text_share"] <= 1
    assert results["reward_score.n_texts"] == 1000 and results["gt_score.n_texts"] > 0
    assert results["reward_score.max_abs_diff"] <= score_tolerance(
        config.compute.inference_dtype, results["reward_score.spread"]
    )
    # The whole bench took at least as long as the timed pieces inside it.
    assert results["bench.total_s"] >= results["irl_epoch.cached_s"] + results["irl_epoch.full_s"] + sum(
        seconds.values()
    )

    # Sampling: its rate is its FLOPs over its time, against the peak in its own dtype at the same thread count.
    dtype = config.compute.inference_dtype
    assert results["sample.tokens_per_s"] == approx(results["sample.new_tokens"] / results["sample.seconds"])
    sample_flops = 2 * n_params * (results["sample.new_tokens"] + results["sample.prompt_tokens"])
    assert results["sample.gflops"] == approx(sample_flops / results["sample.seconds"] / 1e9)
    assert results["sample.peak_fraction"] == approx(results["sample.gflops"] / results[f"matmul.peak_gflops_{dtype}"])
    assert 0 <= results["sample.outside_model_share"] < 1 and results["sample.torch_threads"] == 1
    assert results["sample.samples_per_prompt"] == max(config.irl.samples_per_prompt, 2)
    ratios = ("vs_generate", "greedy_vs_generate", "shared_prefill_vs_separate", "double_batch_vs_default")
    for ratio in (*ratios, "bfloat16_vs_float32"):
        assert results[f"sample.{ratio}"] > 0, ratio

    assert json.loads(out.read_text())["rlhf_step.seconds"] == results["rlhf_step.seconds"]
    assert out.with_suffix(".manifest.json").is_file()  # the bench's provenance
