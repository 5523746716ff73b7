"""The recoverability study: its points change only the expert, and its summary, record and figure read the runs."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from conftest import PARAMS, REPO, write_params

from irlnb.config import ConfigError
from irlnb.params_file import load_config
from irlnb.pipeline import recoverability


def test_a_point_changes_the_expert_and_the_alignment_seed_only():
    base = load_config(PARAMS / "default.yaml")
    point = recoverability.Point("best_of_n", 8)
    config = recoverability.point_config(base, point, seed=1)
    assert (config.rlhf.trainer, config.best_of_n.n, config.rlhf.seed) == ("best_of_n", 8, 1)
    assert config.irl.decoding == "sampled" and config.run.name == "best_of_n-n8-seed1" and config.run.figures_dir == ""
    assert config.curate == base.curate and config.sources == base.sources and config.compute == base.compute
    assert {p.kind for p in recoverability.POINTS} == {"dpo", "rloo", "best_of_n", "rft"}
    assert not config.irl.matched  # a best-of-n expert is sampled independently of the base
    assert recoverability.point_config(base, recoverability.Point("rloo", 120), 0).rloo.max_steps == 120


def test_a_seed_runs_each_kinds_smallest_then_largest_budget_first():
    order = [point.name for point in recoverability.run_order(recoverability.POINTS)]
    assert order[:4] == ["dpo-prompts25", "rloo-max_steps3", "best_of_n-n1", "rft-rounds1"]
    assert order[4:8] == ["dpo-prompts200", "rloo-max_steps24", "best_of_n-n8", "rft-rounds4"]
    assert sorted(order) == sorted(point.name for point in recoverability.POINTS)
    for kind in ("dpo", "rloo", "best_of_n", "rft"):
        values = [point.value for point in recoverability.POINTS if point.kind == kind]
        assert max(values) >= 8 * min(values) or kind == "rft"  # budgets span 8x (rft: 4x, README)


def test_a_point_with_a_bad_budget_is_refused_as_a_params_file_would_be():
    base = load_config(PARAMS / "default.yaml")
    with pytest.raises(ConfigError, match=r"recoverability point rloo-max_steps0, seed 0\): rloo\.max_steps: expected"):
        recoverability.point_config(base, recoverability.Point("rloo", 0), seed=0)


def _fake_metrics(auc, reduction, white_box=True):
    values = {
        "irl.demos.train.sign_differs": 7,
        "rlhf.base.toxicity_mean": 0.1,
        "rlhf.ground_truth.toxicity_mean": 0.1 * (1 - reduction),
        "rlhf.base.perplexity": 100.0,
        "rlhf.ground_truth.perplexity": 105.0,
    }
    methods = {"": auc, "mean_shift.": auc - 0.05, "supervised.": 0.93, "r_star_comparisons.": 0.9}
    if white_box:
        methods["log_ratio."] = 0.7
        values["irl.log_ratio.test.expert_log_ratio_mean"] = 0.2
    for method, value in methods.items():
        values[f"irl.{method}test.auc_mean"] = value
        values[f"irl.{method}test.spearman_mean"] = value - 0.3
        values[f"irl.{method}test.starc_distance_mean"] = 1 - value
    return values


def test_the_summary_the_record_and_the_figure_read_each_runs_metrics(tmp_path):
    base = load_config(PARAMS / "default.yaml")
    rloo, bon = recoverability.Point("rloo", 40), recoverability.Point("best_of_n", 4)

    def collect(point, seed, auc, reduction):
        config = recoverability.point_config(base, point, seed)
        values = _fake_metrics(auc, reduction, white_box=point.kind != "best_of_n")
        return {**recoverability.collect(point.kind, point.value, seed, values, config, "test"), "design": "reduced"}

    rows = pd.DataFrame([collect(rloo, 0, 0.76, 0.6), collect(rloo, 1, 0.78, 0.5), collect(bon, 0, 0.88, 0.8)])
    assert rows.loc[0, "toxicity_reduction"] == pytest.approx(0.6) and rows.loc[0, "perplexity_ratio"] == 1.05
    assert rows.loc[0, "kl"] == 0.2 and rows.loc[2, "kl"] == pytest.approx(math.log(4) - 3 / 4)  # best-of-n's bound
    assert rows.loc[0, "r_star_comparisons_auc"] == 0.9 and rows.loc[1, "irl_spearman"] == pytest.approx(0.48)
    assert math.isnan(rows.loc[2, "white_box_auc"])  # not measured: missing, not zero
    record = recoverability.summarise(rows)
    prefix = "recoverability.reduced.rloo.max_steps40."
    assert record[prefix + "irl_auc_mean"] == pytest.approx(0.77)
    assert record[prefix + "irl_auc_min"] == 0.76 and record[prefix + "seeds"] == 2
    assert record[prefix + "white_box_starc_mean"] == pytest.approx(0.3)
    assert record["recoverability.reduced.best_of_n.n4.ceiling_auc_mean"] == 0.93
    assert "recoverability.reduced.best_of_n.n4.white_box_auc_mean" not in record
    assert "recoverability.irl_vs_white_box_spearman" not in record  # 2 experts with weights: too few to rank
    more = pd.concat([rows, pd.DataFrame([collect(rloo, 2, 0.80, 0.7)])], ignore_index=True)
    more.loc[:, "white_box_spearman"] = [0.1, 0.3, float("nan"), 0.2]  # IRL's: 0.46, 0.48, -, 0.50
    assert recoverability.summarise(more)["recoverability.irl_vs_white_box_spearman"] == pytest.approx(0.5)
    from irlnb.report.study_plots import recoverability_figure

    calibration = recoverability.calibration_row()
    figure = recoverability_figure(pd.concat([rows, pd.DataFrame([calibration])], ignore_index=True))
    figure.savefig(tmp_path / "recoverability.png")
    assert (tmp_path / "recoverability.png").stat().st_size > 10_000
    json.dumps(record)  # a record is plain JSON


def test_the_default_run_is_the_full_size_point_read_from_its_record():
    recorded = json.loads((REPO / "regress" / "default-2ad361b.metrics.json").read_text())
    row = recoverability.calibration_row()
    assert (row["design"], row["kind"], row["value"], row["seed"]) == ("full", "dpo", 400, 0)
    assert row["irl_auc"] == recorded["metrics"]["irl.test.auc_mean"]
    assert row["white_box_spearman"] == recorded["metrics"]["irl.log_ratio.test.spearman_mean"]
    assert row["commit"] == recorded["git"]["commit"]
    stages = ("01_curate", "02_ground_truth_rm", "03_rlhf_ground_truth", "04_irl")
    assert row["seconds"] == pytest.approx(sum(recorded["metrics"][f"timing.{stage}_s"] for stage in stages))


def test_the_time_left_reads_each_points_own_time_at_another_seed():
    """A point run at another seed counts its own mean time; one not run yet the mean of every run point."""
    spent = {("rft-rounds4", 0): 2000.0, ("rft-rounds4", 1): 2200.0, ("best_of_n-n2", 0): 300.0}
    assert recoverability.time_left(["rft-rounds4", "best_of_n-n2"], spent) == 2100.0 + 300.0
    assert recoverability.time_left(["dpo-prompts50"], spent) == pytest.approx(4500.0 / 3)
    assert recoverability.time_left([], spent) == 0.0
    assert recoverability.time_left(["dpo-prompts50"], {}) is None


@pytest.mark.slow(120)
def test_the_study_runs_on_the_smoke_params_and_goes_on_where_it_stopped(tmp_path):
    """End to end on the smoke params: two points, one seed; a second invocation keeps both; one point lost from
    the record (a study killed after its run finished, before the record was written) is read again from its run
    directory, whose stages are not redone, the other kept."""
    base = load_config(write_params(tmp_path))
    points = (recoverability.Point("best_of_n", 2), recoverability.Point("rloo", 2))
    record = tmp_path / "recoverability.metrics.json"
    study = dict(
        seeds=1, points=points, runs_dir=str(tmp_path / "study"), figures_dir=tmp_path / "figures", record=record
    )
    lines = []
    table = recoverability.run_study(base, **study, calibration=None, log=lines.append)
    assert list(table["point"]) == ["best_of_n-n2", "rloo-max_steps2"] and (table["design"] == "reduced").all()
    assert table["irl_auc"].between(0, 1).all() and table["seconds"].gt(0).all()
    assert math.isnan(table.loc[0, "white_box_auc"]) and not math.isnan(table.loc[1, "white_box_spearman"])
    assert any("[2/2] rloo-max_steps2, alignment seed 0, about" in line for line in lines)  # time left
    saved = json.loads(record.read_text())
    assert saved["finished"] == 2 and saved["params_file"] == str(tmp_path / "params.yaml")
    assert saved["metrics"]["recoverability.reduced.rloo.max_steps2.irl_auc_mean"] == table.loc[1, "irl_auc"]
    assert (tmp_path / "figures" / "recoverability.png").stat().st_size > 10_000

    lines.clear()
    again = recoverability.run_study(base, **study, calibration=None, log=lines.append)
    assert sum(": kept (commit" in line for line in lines) == 2 and not any("01_curate" in line for line in lines)
    assert again["irl_auc"].tolist() == table["irl_auc"].tolist()

    saved["rows"] = saved["rows"][:1]  # the second point's row was never written
    record.write_text(json.dumps(saved))
    lines.clear()
    recoverability.run_study(base, **study, calibration=None, log=lines.append)
    assert "kept" in lines[0] and "[2/2] rloo-max_steps2, alignment seed 0" in lines[1]
    assert "every stage is complete with these settings; nothing to do" in lines[2]
    assert json.loads(record.read_text())["rows"][1]["irl_auc"] == table.loc[1, "irl_auc"]

    saved = json.loads(record.read_text())
    saved["rows"] = saved["rows"][1:]  # the first point lost, and its run too
    record.write_text(json.dumps(saved))
    shutil.rmtree(tmp_path / "study" / "best_of_n-n2-seed0")
    lines.clear()  # no time to run it, and a study of that point alone: the other point's row stays in the record
    recoverability.run_study(base, **{**study, "points": points[:1]}, calibration=None, log=lines.append, stop_after=0)
    assert lines == ["recoverability: no point starts after 0 min; run again to go on"]
    kept = json.loads(record.read_text())
    assert (kept["finished"], kept["planned"]) == (1, 1) and [row["point"] for row in kept["rows"]] == [
        "rloo-max_steps2"
    ]


def test_a_record_of_another_study_is_refused_not_overwritten(tmp_path):
    record = tmp_path / "recoverability.metrics.json"
    record.write_text(json.dumps({"params_file": "params/other.yaml", "rows": []}))
    base = load_config(PARAMS / "recoverability.yaml")
    with pytest.raises(recoverability.StudyError, match=r"the record of a study on params/other.yaml, not params/rec"):
        recoverability.run_study(base, record=record, runs_dir=str(tmp_path / "study"))
    assert json.loads(record.read_text())["params_file"] == "params/other.yaml"
