"""Table 1 over alignment seeds: one whole run per seed, the spread over seeds, and an interval that holds it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PARAMS, write_params

from irlnb.params_file import load_config
from irlnb.pipeline import replicates


def test_a_replicate_changes_the_alignment_seed_and_the_run_name_only():
    base = load_config(PARAMS / "default.yaml")
    config = replicates.replicate_config(base, 2)
    assert (config.rlhf.seed, config.run.name, config.run.figures_dir) == (2, "default-seed2", "")
    assert config.irl == base.irl and config.dpo == base.dpo and config.compute == base.compute


def test_the_seed_bootstrap_holds_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    base = np.full((3, 200), 0.2) + rng.normal(0, 0.01, (3, 200))
    ground_truth = base - 0.1  # R* halves it, every seed alike
    same = base - 0.05  # a share of 0.5 in every seed
    low, high = replicates.seed_bootstrap_share(base, ground_truth, same, samples=300, seed=0)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # no spread: a point interval
    varied = base - np.array([[0.02], [0.05], [0.08]])  # shares 0.2, 0.5, 0.8 over the seeds
    low, high = replicates.seed_bootstrap_share(base, ground_truth, varied, samples=300, seed=0)
    assert low < 0.35 and high > 0.65  # the seeds' spread, which one seed's interval (a point here) misses
    with pytest.raises(ValueError, match="no bootstrap resample had a seed whose R\\* reduced toxicity"):
        replicates.seed_bootstrap_share(base, base + 0.1, same, samples=20, seed=0)


def test_fewer_than_two_seeds_are_refused():
    with pytest.raises(ValueError, match="replicates need at least 2 alignment seeds to show a spread, got 1"):
        replicates.run_replicates(load_config(PARAMS / "smoke.yaml"), seeds=1, record=None)


@pytest.mark.slow(170)
def test_replicates_of_irl_alone_then_of_whole_runs_on_the_smoke_params(tmp_path):
    """Two seeds of the smoke run, IRL alone (each run stops after stage 04) and recorded over the seeds; then the
    whole runs, which go on where those stopped, and Table 1 over them, recorded."""
    base = load_config(write_params(tmp_path, **{"evaluation__bootstrap_samples": 100}))
    record = tmp_path / "replicates-irl.metrics.json"
    result = replicates.run_replicates(
        base, seeds=2, runs_dir=str(tmp_path / "replicates"), record=record, irl_only=True
    )
    folders = [tmp_path / "replicates" / f"smoke-seed{s}" for s in (0, 1)]
    assert all((folder / "irl" / "reward").is_dir() and not (folder / "rlhf_learned").exists() for folder in folders)
    runs = [json.loads((folder / "metrics.json").read_text()) for folder in folders]
    values = result["metrics"]
    over_seeds = [run["irl.test.spearman_mean"] for run in runs]
    assert values["replicates.irl.test.spearman_mean_sd"] == pytest.approx(np.std(over_seeds, ddof=1))
    assert "replicates.ground_truth.toxicity_mean_mean" in values and not any("learned" in key for key in values)
    saved = json.loads(record.read_text())
    assert saved["until"] == "04_irl"
    assert saved["sd_over_seeds"]["irl.test.spearman_mean"] == pytest.approx(np.std(over_seeds, ddof=1))
    irl_stages = [(folder / "stages" / "04_irl.json").read_bytes() for folder in folders]

    record = tmp_path / "replicates.metrics.json"
    result = replicates.run_replicates(base, seeds=2, runs_dir=str(tmp_path / "replicates"), record=record)
    assert [(folder / "stages" / "04_irl.json").read_bytes() for folder in folders] == irl_stages  # kept, not redone
    runs = [json.loads((folder / "metrics.json").read_text()) for folder in folders]
    values = result["metrics"]
    assert values["replicates.seeds"] == 2
    for policy in ("base", "ground_truth", "learned", "random"):
        toxicity = [run[f"rlhf.{policy}.toxicity_mean"] for run in runs]
        assert values[f"replicates.{policy}.toxicity_mean_mean"] == pytest.approx(np.mean(toxicity))
        assert values[f"replicates.{policy}.toxicity_mean_max"] == max(toxicity)
    # the base policy is not aligned: the same greedy continuations whatever the alignment seed
    assert values["replicates.base.toxicity_mean_sd"] == 0
    assert runs[0]["rlhf.ground_truth.toxicity_mean"] != runs[1]["rlhf.ground_truth.toxicity_mean"]  # seeds differ
    for key in [k for k in values if k.endswith("_reduction_share")]:
        assert values[key + "_ci_low"] <= values[key] <= values[key + "_ci_high"] or values[key + "_sd"] > 0
    for key in ("irl.test.auc_mean", "irl.test.within_prompt_spearman_mean", "irl.mean_shift.test.spearman_mean"):
        over_seeds = [run[key] for run in runs]
        assert values[f"replicates.{key}_mean"] == pytest.approx(np.mean(over_seeds))
        assert values[f"replicates.{key}_sd"] == pytest.approx(np.std(over_seeds, ddof=1))
    saved = json.loads(record.read_text())
    assert saved["metrics"] == values and saved["seeds"] == 2 and saved["git"]["commit"]
    # every metric's SD over the seeds, the spread regress tolerances are drawn from; timings are not results
    spread = saved["sd_over_seeds"]
    assert spread["irl.test.auc_mean"] == pytest.approx(np.std([run["irl.test.auc_mean"] for run in runs], ddof=1))
    assert spread["curate.n_train"] == 0 and spread["rlhf.ground_truth.toxicity_mean"] > 0
    assert not any(key.startswith("timing.") for key in spread)
