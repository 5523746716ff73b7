"""The recoverability study: its points change only the expert, and its summary, record and figure read the runs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import PARAMS

from irlnb.config import ConfigError, load_config
from irlnb.layout import RunLayout
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


def test_a_point_with_a_bad_budget_is_refused_as_a_params_file_would_be():
    base = load_config(PARAMS / "default.yaml")
    with pytest.raises(ConfigError, match=r"recoverability point rloo-max_steps0, seed 0\): rloo\.max_steps: expected"):
        recoverability.point_config(base, recoverability.Point("rloo", 0), seed=0)


def _fake_run(tmp_path, name, auc, reduction):
    layout = RunLayout(tmp_path / name)
    layout.root.mkdir(parents=True)
    layout.record_metrics(
        {
            "irl.test.auc_mean": auc,
            "irl.mean_shift.test.auc_mean": auc - 0.05,
            "irl.supervised.test.auc_mean": 0.93,
            "rlhf.base.toxicity_mean": 0.1,
            "rlhf.ground_truth.toxicity_mean": 0.1 * (1 - reduction),
            "rlhf.base.perplexity": 100.0,
            "rlhf.ground_truth.perplexity": 105.0,
            "irl.log_ratio.test.expert_log_ratio_mean": 0.2,
            "irl.demos.train.sign_differs": 7,
        }
    )
    return layout


def test_the_summary_the_record_and_the_figure_read_each_runs_metrics(tmp_path):
    base = load_config(PARAMS / "default.yaml")
    rloo, bon = recoverability.Point("rloo", 40), recoverability.Point("best_of_n", 4)

    def collect(point, seed, run, auc, reduction):
        config = recoverability.point_config(base, point, seed)
        return recoverability.collect(point, seed, _fake_run(tmp_path, run, auc, reduction), config)

    rows = pd.DataFrame(
        [collect(rloo, 0, "a", 0.76, 0.6), collect(rloo, 1, "b", 0.78, 0.5), collect(bon, 0, "c", 0.88, 0.8)]
    )
    assert rows.loc[0, "toxicity_reduction"] == pytest.approx(0.6) and rows.loc[0, "perplexity_ratio"] == 1.05
    assert rows.loc[0, "kl"] == 0.2 and rows.loc[2, "kl"] == pytest.approx(math.log(4) - 3 / 4)  # best-of-n's bound
    assert math.isnan(rows.loc[0, "white_box"])  # not measured: missing, not zero
    record = recoverability.summarise(rows)
    assert record["recoverability.rloo.max_steps40.irl_mean"] == pytest.approx(0.77)
    assert (
        record["recoverability.rloo.max_steps40.irl_min"] == 0.76
        and record["recoverability.rloo.max_steps40.seeds"] == 2
    )
    assert record["recoverability.best_of_n.n4.ceiling_mean"] == 0.93
    from irlnb.report.plots import recoverability_figure

    figure = recoverability_figure(rows)
    figure.savefig(tmp_path / "recoverability.png")
    assert (tmp_path / "recoverability.png").stat().st_size > 10_000
    json.dumps(record)  # a record is plain JSON
