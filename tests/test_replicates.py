"""Table 1 over alignment seeds: one whole run per seed, the spread over seeds, and an interval that holds it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import PARAMS, irlnb_cli, write_params

from irlnb.layout import RunLayout
from irlnb.params_file import load_config
from irlnb.pipeline import replicates, runner


def test_a_replicate_changes_the_alignment_seed_and_the_run_name_only():
    base = load_config(PARAMS / "default.yaml")
    config = replicates.replicate_config(base, 2)
    assert (config.rlhf.seed, config.run.name, config.run.figures_dir) == (2, "default-seed2", "")
    assert config.irl == base.irl and config.dpo == base.dpo and config.compute == base.compute


def test_a_replicate_of_the_demonstrations_changes_their_draw_and_the_run_name_only():
    base = load_config(PARAMS / "default.yaml")
    config = replicates.replicate_config(base, 1, over="draws")
    assert (config.irl.draw, config.run.name, config.run.figures_dir) == (1, "default-draw1", "")
    assert config.rlhf == base.rlhf and config.compute == base.compute
    assert {**vars(config.irl), "draw": 0} == vars(base.irl)
    assert replicates.record_path("draws", True).name == "replicates-draws-irl.metrics.json"


def test_a_named_record_goes_beside_the_modes_own_and_contradicting_flags_are_refused():
    assert replicates.record_path("seeds", True, "dpo").name == "replicates-irl-dpo.metrics.json"
    assert replicates.record_path("seeds", False, "dpo").name == "replicates-dpo.metrics.json"
    assert replicates.record_path("draws", False, "x").name == "replicates-draws-x.metrics.json"
    assert replicates.record_path("seeds", False, "dpo").parent == replicates.RECORD.parent
    refused = irlnb_cli("replicates", str(PARAMS / "smoke.yaml"), "--record", "dpo", "--no-record")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        "irlnb replicates: --record NAME writes a record and --no-record writes none; give one"
    )


def test_replicates_share_the_frozen_cache_of_the_params_own_run(tmp_path):
    own = RunLayout(tmp_path / "runs" / "default")
    replicate = RunLayout(tmp_path / "runs" / "replicates" / "default-seed1")
    assert replicates.share_frozen_cache(replicate, own)
    (replicate.cache / "kept.pt").write_bytes(b"x")  # what a replicate keeps lands in the own run's cache
    assert (own.cache / "kept.pt").read_bytes() == b"x" and replicate.cache.is_symlink()
    assert not replicates.share_frozen_cache(replicate, own)  # linked once
    shutil.rmtree(own.cache)  # the own run's directory deleted: the link dangles, and is mended by the next replicates
    assert not replicates.share_frozen_cache(replicate, own) and replicate.cache.is_dir()
    other = RunLayout(tmp_path / "elsewhere" / "default-seed1")
    other.cache.mkdir(parents=True)
    assert not replicates.share_frozen_cache(other, own) and not other.cache.is_symlink()  # its own cache is kept
    beside = RunLayout(tmp_path / "runs" / "default-seed1")  # the same runs directory: one cache already
    assert not replicates.share_frozen_cache(beside, own) and not beside.cache.is_symlink()


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


def test_the_summary_reads_one_line_a_metric_with_its_spread_or_interval():
    values = {
        "replicates.seeds": 3.0,
        "replicates.expert.tox_mean": 0.04,
        "replicates.expert.tox_sd": 0.003,
        "replicates.expert.tox_min": 0.038,
        "replicates.expert.tox_max": 0.0465,
        "replicates.learned_reduction_share": 1.18,
        "replicates.learned_reduction_share_sd": 0.1,
        "replicates.learned_reduction_share_ci_low": 1.06,
        "replicates.learned_reduction_share_ci_high": 1.35,
        "replicates.auc_mean": 0.85,  # a mean without the rest of its spread stays as it is
    }
    assert replicates.summary_lines(values) == [
        "replicates.seeds: 3.0000",
        "replicates.expert.tox: 0.0400 ± 0.0030 (0.0380 to 0.0465)",
        "replicates.learned_reduction_share: 1.1800 ± 0.1000 [1.0600, 1.3500]",
        "replicates.auc_mean: 0.8500",
    ]


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
    assert (tmp_path / "replicates" / ".frozen-cache").resolve() == (tmp_path / "runs" / ".frozen-cache").resolve()

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
        distinct = [run[f"rlhf.{policy}.distinct2"] for run in runs]
        assert values[f"replicates.{policy}.distinct2_min"] == min(distinct)
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


@pytest.mark.slow(70)
def test_replicates_of_the_demonstrations_share_the_finished_expert_and_redraw_only_the_pairs(smoke_run, tmp_path):
    """Two draws of the smoke run's demonstrations, IRL alone: each replicate adopts the stages the params' own run
    (the shared smoke run) finished with its settings, so the expert is trained once and draw 0 is that run; draw 1
    runs stage 04 only, on the same prompts with other samples. The smoke run is only read."""
    base = load_config(smoke_run.parent.parent / "params.yaml")  # its runs_dir holds the smoke run
    marker_before = (smoke_run / "stages" / "04_irl.json").read_bytes()
    lines: list[str] = []
    record = tmp_path / "replicates-draws-irl.metrics.json"
    result = replicates.run_replicates(
        base, seeds=2, runs_dir=str(tmp_path / "draws"), record=record, irl_only=True, over="draws", log=lines.append
    )
    first, second = (RunLayout(tmp_path / "draws" / f"smoke-draw{draw}") for draw in (0, 1))
    adopted = [line for line in lines if "copied" in line]
    assert adopted[0].startswith("  01_curate, 02_ground_truth_rm, 03_rlhf_ground_truth, 04_irl: finished")
    assert adopted[1].startswith("  01_curate, 02_ground_truth_rm, 03_rlhf_ground_truth: finished")
    assert len(adopted) == 2 and any("04_irl done" in line for line in lines)  # draw 1 ran 04, nothing else
    for layout in (first, second):
        manifest = json.loads(layout.manifest.read_text())
        assert manifest["stages"]["03_rlhf_ground_truth"]["adopted_from"] == str(smoke_run)
        for name in ("01_curate", "03_rlhf_ground_truth"):
            assert layout.marker(name).read_bytes() == (smoke_run / "stages" / f"{name}.json").read_bytes()
        trained = sorted((smoke_run / "rlhf_ground_truth" / "policy").rglob("*.safetensors"))
        assert trained and all(
            (layout.policy("ground_truth") / path.relative_to(smoke_run / "rlhf_ground_truth" / "policy")).read_bytes()
            == path.read_bytes()
            for path in trained
        )
    smoke = json.loads((smoke_run / "metrics.json").read_text())
    drawn_first = first.read_metrics()
    assert "irl.test.auc_mean" in drawn_first and drawn_first == {k: smoke[k] for k in drawn_first}  # the smoke run's
    assert (smoke_run / "stages" / "04_irl.json").read_bytes() == marker_before
    pairs = [pd.read_parquet(layout.demonstrations) for layout in (first, second)]
    assert pairs[0][["split", "prompt"]].equals(pairs[1][["split", "prompt"]])  # the same prompts
    assert (pairs[0]["expert"] != pairs[1]["expert"]).mean() > 0.5  # other samples
    assert pd.read_parquet(first.prompt_sets).equals(pd.read_parquet(second.prompt_sets))  # judged on the same
    again = replicates.replicate_config(base, 1, over="draws")  # its 04 finished otherwise there: never overwritten
    assert runner.adopt_finished_stages(again, smoke_run, str(tmp_path / "draws"), until="04_irl") == []
    assert second.marker("04_irl").read_bytes() != marker_before
    # past 04: the random reward's alignment reads no IRL, so the smoke run's is this draw's; R-hat's is not
    assert runner.adopt_finished_stages(again, smoke_run, str(tmp_path / "draws")) == ["03_rlhf_random"]
    # the same from the command line: a run of the same settings elsewhere copies every stage and runs none
    params, elsewhere = smoke_run.parent.parent / "params.yaml", str(tmp_path / "elsewhere")
    done = irlnb_cli("run", str(params), "--runs-dir", elsewhere, "--reuse-from", str(smoke_run), "--until", "04_irl")
    assert done.returncode == 0, done.stderr
    assert "01_curate, 02_ground_truth_rm, 03_rlhf_ground_truth, 04_irl: finished with these settings" in done.stdout
    assert "every stage is complete with these settings; nothing to do" in done.stdout
    refused = irlnb_cli("run", str(params), "--runs-dir", elsewhere, "--reuse-from", str(tmp_path))
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        f"irlnb run: --reuse-from {tmp_path}: not a run directory (no manifest.json)"
    ]
    saved = json.loads(record.read_text())
    assert saved["varied"] == "irl.draw" and saved["until"] == "04_irl" and saved["metrics"] == result["metrics"]
    spread = saved["sd_over_seeds"]
    assert spread["rlhf.ground_truth.toxicity_mean"] == 0 and spread["irl.test.auc_mean"] > 0
