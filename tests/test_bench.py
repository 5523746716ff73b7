"""`irlnb bench` end to end on the smoke params: every ratio and rate is measured and finite."""

from __future__ import annotations

import json
import math

from conftest import PARAMS

from irlnb.pipeline.bench import run_bench


def test_the_bench_measures_every_key_on_the_smoke_params(tmp_path):
    out = tmp_path / "bench.json"
    results = run_bench(threads=1, out=out, rlhf_threads=1, params=PARAMS / "smoke.yaml")
    for key in (
        "matmul.peak_gflops",
        "gt_score.batched_vs_loop",
        "demo_generate.batched_vs_loop",
        "reward_score.gflops",
        "reward_score.peak_fraction",
        "irl_epoch.cached_vs_full",
        "rlhf_step.seconds",
        "rlhf_step.peak_fraction",
        "rlhf_step.generation_share",
    ):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert json.loads(out.read_text())["rlhf_step.seconds"] == results["rlhf_step.seconds"]
    assert out.with_suffix(".manifest.json").is_file()  # the bench's provenance
