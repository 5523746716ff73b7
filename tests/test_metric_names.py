"""Metric names live in one module: writers' keys parse as its names, and a reader missing a key says which."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from irlnb import metric_names as names
from irlnb.errors import IrlnbError
from irlnb.irl import demonstrations, references, study
from irlnb.rl.evaluation import toxicity_summary


def test_the_builders_spell_the_keys_the_records_hold():
    assert names.policy_metric("learned", names.TOXICITY_MEAN) == "rlhf.learned.toxicity_mean"
    assert names.policy_prefix("base", "sampled") == "rlhf.base.sampled."
    assert names.irl_metric("laplace", "test", "auc_mean") == "irl.laplace.test.auc_mean"
    assert names.irl_metric(None, "test", "auc_mean") == "irl.test.auc_mean"
    assert names.demonstrations_metric("train", names.SIGN_DIFFERS) == "irl.demos.train.sign_differs"
    assert names.contraction_metric("all", "auc") == "irl.posterior.contraction.all.auc"
    assert names.reduction_share("random", "_evaluator") == "analysis.random_reduction_share_evaluator"
    assert names.interval("gt.auc_human") == ("gt.auc_human_ci_low", "gt.auc_human_ci_high")
    assert names.split_size("test") == "curate.n_test" and names.stage_seconds("04_irl") == "timing.04_irl_s"
    assert names.parse("irl.demos.test.pairs") == "irl.demos"  # not an objective named 'demos'
    assert names.parse("irl.posterior.test.wrong_share") == "irl.posterior"
    assert names.irl_fits("laplace") == "irl.laplace.fits" and names.irl_fits(None) == "irl.fits"
    assert names.parse("irl.r_star_comparisons.fits") == names.parse("irl.fits") == "irl.fits"
    assert names.parse(names.irl_metric("laplace", "test", f"{names.STARC_DISTANCE}_mean")) == "irl.objective"
    assert names.layer_metric(-1, "validation_auc_mean") == "layers.final.validation_auc_mean"
    assert names.tune_metric("chosen", "perplexity_ratio") == "tune.chosen.perplexity_ratio"
    assert names.parse(names.tune_metric("1339b6b9", "within_prompt_spearman")) == "tune"
    assert names.parse(names.layer_metric(9, "validation_pair_accuracy_std")) == "layers.layer"
    average = names.layer_metric(names.AVERAGE_LAYER, "validation_auc_mean", pooling="mean")
    assert average == "layers.average.mean.validation_auc_mean" and names.parse(average) == "layers.layer"
    assert names.parse("rlhf.ground_truth.sampled.evaluator_toxicity_ratio_ci_low") == "rlhf.policy.decoding"
    for unknown in ("rlhf.nobody.toxicity_mean", "rlhf.base.toxicity_median", "irl.test", "analysis.x", "gt."):
        with pytest.raises(ValueError, match="is not a name irlnb.metric_names knows"):
            names.parse(unknown)


def test_every_recorded_metric_parses_as_one_of_the_names():
    records = sorted((REPO / "regress").glob("*.metrics.json"))
    not_runs = ("bench", "recoverability", "replicates", "recovery")  # and their earlier records, e.g. bench-generate
    runs = [path for path in records if path.name.split(".")[0].split("-")[0] not in not_runs]
    assert runs, "no recorded run under regress/"
    for path in runs:
        for key in json.loads(path.read_text())["metrics"]:
            names.parse(key)  # raises, naming the key


def test_the_writers_build_keys_the_module_knows():
    keys = [
        *toxicity_summary([0.9, 0.1], names.policy_prefix("base"), samples=20, seed=0),
        *toxicity_summary([0.9, 0.1], names.policy_prefix("base", "sampled") + names.EVALUATOR, samples=20, seed=0),
    ]
    test = pd.DataFrame(
        {
            "loss": ["max_margin"] * 2 + ["mean_shift"],
            "seed": [0, 1, 0],
            "human_auc": [0.7, 0.8, 0.6],
            "human_accuracy": [0.6, 0.7, 0.5],
            "validation_auc": [0.7, 0.7, 0.6],
        }
    )
    keys += study.summary_metrics(test, "max_margin")
    keys += study.seed_agreement(pd.DataFrame(np.array([[1.0, 0.5], [0.5, 1.0]])))
    pairs = pd.DataFrame(
        {
            "split": ["train", "train", "test"],
            "excluded": ["", "empty continuation", ""],
            "expert_r_star": [1.0, 2.0, -1.0],
            "non_expert_r_star": [-1.0, 0.5, -2.0],
            "expert": ["a b c", "", "d e"],
            "non_expert": ["a b", "c d", "e f"],
        }
    )
    keys += demonstrations.demonstration_counts(pairs)
    keys += references.demonstration_evidence(pairs)
    assert "irl.test.auc_mean" in keys and "irl.demos.train.sign_differs" in keys and "irl.mean_shift.fits" in keys
    for key in keys:
        names.parse(key)


def test_the_smoke_run_writes_only_keys_the_module_knows(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    families = {names.parse(key) for key in metrics}
    assert {"curate.split_size", "gt", "rlhf.policy", "rlhf.policy.decoding", "irl.chosen", "timing.total"} <= families


def test_a_missing_metric_is_one_line_naming_it_and_the_stage_to_rerun():
    with pytest.raises(names.MissingMetricError) as caught:
        names.require({"gt.auc_human": 0.8}, "rlhf.base.perplexity", "Table 1")
    assert isinstance(caught.value, IrlnbError)
    assert str(caught.value) == (
        "Table 1: metric 'rlhf.base.perplexity' is missing from metrics.json; rerun stage 03_rlhf_ground_truth"
    )
    assert names.require({"gt.auc_human": 0.8}, "gt.auc_human", "x") == 0.8
    assert math.isnan(names.optional({}, names.posterior_metric("std_auc_wrong")))
    assert names.optional({}, names.IRL_SAVED_SEED, default=None) is None


def test_the_stopwatch_of_a_stage_adds_its_laps_under_names_the_registry_knows(monkeypatch):
    from irlnb import metric_names, progress

    now = iter([10.0, 12.5, 13.0, 20.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    clock = progress.Stopwatch()
    clock.lap("sampling")
    clock.lap("features")
    clock.lap("sampling")  # a part timed twice adds up
    assert clock.metrics(metric_names.IRL_TIME) == {"irl.time.sampling_s": 9.5, "irl.time.features_s": 0.5}
    assert {metric_names.parse(key) for key in clock.metrics(metric_names.IRL_TIME)} == {"irl.time"}
