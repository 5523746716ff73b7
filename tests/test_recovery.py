"""The recovery suite: rewards that are not toxicity, and an audit that never reads the reward it recovers."""

from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import pandas as pd
import pytest
from conftest import PARAMS, irlnb_cli, write_params

from irlnb import metric_names as names
from irlnb.metric_names import MissingMetricError
from irlnb.models.classifiers import ReadabilityScorer, SentimentScorer, load_classifier
from irlnb.params_file import config_with, load_config
from irlnb.pipeline import recovery
from irlnb.rewards.features import load_reward
from irlnb.rewards.ground_truth import GroundTruthReward, ground_truth_reward
from irlnb.rl.policy_card import PolicyCard
from irlnb.sources import SourceError

TEXTS = ["Thanks, that was lovely!", "You are an idiot and I hate you.", "The cat sat on the mat.", ""]


def test_the_sentiment_reward_is_four_times_vaders_compound_valence():
    scorer = load_classifier("embedded:vader-sentiment")
    scores = scorer.score(TEXTS)
    assert scores[0] > 2 and scores[1] < -2 and scores[3] == 0.0  # pleased, hostile, nothing said
    assert scores[0] == pytest.approx(4 * 0.7901, abs=1e-4)  # VADER 3.3.2 gives it compound 0.7901
    assert np.all(np.abs(scores) <= SentimentScorer.SCALE)
    # R* is the score itself: -logit of the probability the scorer exposes
    np.testing.assert_allclose(ground_truth_reward(scorer.p_toxic(TEXTS), clip=10.0), scores, atol=1e-9)


def test_the_readability_reward_is_flesch_reading_ease_centred_and_scaled():
    scorer = load_classifier("embedded:flesch-readability")
    # "The cat sat on the mat.": 6 words (the full stop is none) in 1 sentence, 4 syllables by the package's own
    # heuristic: 206.835 - 1.015 * 6 - 84.6 * 4 / 6 = 144.345
    assert scorer.score(["The cat sat on the mat."])[0] == pytest.approx((144.345 - 60) / 20, abs=1e-6)
    hard = "The committee deliberated extensively regarding the institutional ramifications."
    assert scorer.score([hard])[0] < -3 < scorer.score(["Go home now."])[0]
    # a text said twice over reads as easily as once; nothing to read scores 0
    assert scorer.score(["You are nice. " * 2])[0] == pytest.approx(scorer.score(["You are nice."])[0])
    assert scorer.score(["", " ... "]).tolist() == [0.0, 0.0]
    assert ReadabilityScorer.tokenized("Hi, you! Fine.\nBye") == "Hi , you !\nFine .\nBye\n"


def test_ground_truth_reward_loads_a_scorer_and_clamps_it():
    config = load_config(PARAMS / "default.yaml")
    sources = type(config.sources)(**{**config.sources.__dict__, "toxicity_classifier": "embedded:vader-sentiment"})
    r_star = GroundTruthReward.load(sources, config.ground_truth)
    np.testing.assert_allclose(r_star(TEXTS), SentimentScorer().score(TEXTS), atol=1e-9)
    with pytest.raises(SourceError, match="flesch-readability"):  # the error lists the embedded choices
        load_classifier("embedded:sentiment")


def test_a_row_aligns_on_its_reward_by_its_kind_and_keeps_every_other_setting():
    base = load_config(PARAMS / "default.yaml")
    row = recovery.row_config(base, "embedded:vader-sentiment", "dpo")
    assert (row.sources.toxicity_classifier, row.rlhf.trainer) == ("embedded:vader-sentiment", "dpo")
    assert (row.run.name, row.run.figures_dir) == ("default-vader-sentiment-dpo", "")
    assert row.irl == base.irl and row.dpo == base.dpo and row.sources.policy == base.sources.policy
    best_of_n = recovery.row_config(base, "embedded:flesch-readability", "best_of_n")
    assert best_of_n.rlhf.trainer == "best_of_n" and best_of_n.irl.matched is False  # what the config requires of it
    assert best_of_n.irl == type(base.irl)(**{**base.irl.__dict__, "matched": False})


def test_a_suite_aligns_by_the_params_own_kind_and_by_best_of_n_unless_told_otherwise():
    default = load_config(PARAMS / "default.yaml")
    assert recovery.default_kinds(default) == ("infonca", "best_of_n")  # the default's expert is one of its rows
    assert recovery.default_kinds(config_with(default, {"rlhf.trainer": "dpo"}, "a dpo run")) == ("dpo", "best_of_n")
    best_of_n = config_with(default, {"rlhf.trainer": "best_of_n", "irl.matched": False}, "a best-of-n run")
    assert recovery.default_kinds(best_of_n) == ("best_of_n", "dpo")  # the config's default trainer beside it
    assert recovery.suite_rows(("a", "b"), ("k",)) == [("a", "k"), ("b", "k")]


def test_a_rows_metrics_are_read_from_its_run_and_a_missing_one_is_refused():
    metrics = {key: 0.5 for name, key in recovery.ROW_METRICS.items() if name not in recovery.OPTIONAL}
    values = recovery.row_values(metrics, "runs/x")
    assert set(values) == set(recovery.ROW_METRICS) - set(recovery.OPTIONAL)  # no log-ratio: a best-of-n expert
    assert recovery.row_values({**metrics, "irl.layers.chosen": 15.0}, "runs/x")["block_chosen"] == 15.0
    missing = names.irl_metric(None, "test", "auc_mean")
    with pytest.raises(MissingMetricError, match=f"runs/x: metric '{missing}' is missing from metrics.json; rerun"):
        recovery.row_values({k: v for k, v in metrics.items() if k != missing}, "runs/x")


def test_the_suite_table_has_one_row_per_reward_and_kind_and_the_figure_draws_it():
    values = {
        "recovery.vader-sentiment.dpo.spearman": 0.4,
        "recovery.vader-sentiment.dpo.length_tokens_spearman": -0.2,
        "recovery.vader-sentiment.best_of_n.spearman": 0.1,
        "recovery.tox-block.dpo.spearman": 0.6,
    }
    table = recovery.suite_table(values)
    assert table[["reward", "kind"]].values.tolist() == [
        ["vader-sentiment", "dpo"],
        ["vader-sentiment", "best_of_n"],
        ["tox-block", "dpo"],
    ]
    assert table["spearman"].tolist() == [0.4, 0.1, 0.6] and np.isnan(table["length_tokens_spearman"].iloc[1])
    from irlnb.report.study_plots import RECOVERY_BARS, recovery_figure

    figure = recovery_figure(table)
    bars = [patch for patch in figure.axes[0].patches]
    assert len(bars) == len(RECOVERY_BARS) * len(table)


def test_over_alignment_seeds_a_row_keeps_seed_zeros_values_with_their_mean_and_sd_beside_them(tmp_path, monkeypatch):
    """With --seeds 3 each row is also run at alignment seeds 1 and 2 (its replicates, `<row>-seed<S>`); the row's
    values stay seed 0's and each gets its mean and sd over the three. The runs are stood in for by their metrics
    (what the suite reads of a run): stage 03 and 04 are tested by the smoke row below."""
    from irlnb.layout import RunLayout

    ran = []

    def fake_run(config, runs_dir, log, until):
        layout = RunLayout.of_run(config.run, runs_dir)
        layout.root.mkdir(parents=True)
        seed = config.rlhf.seed
        metrics = {key: 0.5 for name, key in recovery.ROW_METRICS.items() if name not in recovery.OPTIONAL}
        metrics[names.irl_metric(None, "test", "spearman_mean")] = 0.1 * (seed + 1)  # 0.1, 0.2, 0.3
        layout.record_metrics(metrics)
        ran.append((config.run.name, seed, config.sources.toxicity_classifier, until))
        return layout.root

    monkeypatch.setattr(recovery.runner, "run", fake_run)
    base = load_config(PARAMS / "default.yaml")
    record = recovery.record_path("seeds")
    assert record.name == "recovery-seeds.metrics.json" and record.parent == recovery.RECORD.parent
    result = recovery.run_suite(
        base, [("embedded:vader-sentiment", "infonca")], str(tmp_path), tmp_path / "r.json", None, lambda _: None, 3
    )
    assert ran == [
        (f"default-vader-sentiment-infonca{suffix}", seed, "embedded:vader-sentiment", "04_irl")
        for seed, suffix in ((0, ""), (1, "-seed1"), (2, "-seed2"))
    ]
    values, row = result["metrics"], "recovery.vader-sentiment.infonca."
    assert values[row + "spearman"] == 0.1 and values[row + "spearman_seeds_mean"] == pytest.approx(0.2)
    assert values[row + "spearman_seeds_sd"] == pytest.approx(0.1) and values[row + "auc_seeds_sd"] == 0.0
    assert result["seeds"] == 3 and json.loads((tmp_path / "r.json").read_text())["metrics"] == values
    assert recovery.suite_table(values)["spearman"].tolist() == [0.1]  # the figure draws seed 0's row
    with pytest.raises(ValueError, match="at least 1 alignment seed"):
        recovery.run_suite(base, [], str(tmp_path), None, None, seeds=0)


@pytest.mark.slow(50)
def test_the_suite_runs_a_row_on_the_smoke_params_and_records_it_with_its_figure(tmp_path):
    """One row of the suite end to end on the smoke params: an expert aligned on sentiment (best-of-2, which trains
    nothing), audited up to stage 04 and judged against sentiment; the record holds the row's numbers as its run's
    metrics say, and the figure is drawn. A second call keeps the finished run."""
    config = load_config(write_params(tmp_path))
    record, figures = tmp_path / "recovery.metrics.json", tmp_path / "figures"
    rows = [("embedded:vader-sentiment", "best_of_n")]
    result = recovery.run_suite(config, rows, str(tmp_path / "runs"), record, figures, log=lambda line: None)
    run = tmp_path / "runs" / "smoke-vader-sentiment-best_of_n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["irl.test.spearman_mean"] == result["metrics"]["recovery.vader-sentiment.best_of_n.spearman"]
    assert json.loads(record.read_text())["metrics"] == result["metrics"]
    assert (figures / "recovery.png").is_file() and not (run / "stages" / "03_rlhf_learned.json").exists()
    assert PolicyCard.read(run / "rlhf_ground_truth" / "policy").trainer == "best_of_n"
    markers = {path.name: path.stat().st_mtime for path in (run / "stages").iterdir()}
    again = recovery.run_suite(config, rows, str(tmp_path / "runs"), None, None, log=lambda line: None)
    assert again["metrics"] == result["metrics"]
    assert {path.name: path.stat().st_mtime for path in (run / "stages").iterdir()} == markers  # nothing redone


@pytest.mark.slow(220)  # 140 s, and first in line, it makes the shared smoke run (80 s)
def test_the_recovered_reward_is_the_same_with_r_star_or_without_any(smoke_run, tmp_path):
    """Stage 04 reads R* only to judge: an expert audited with R* toxicity and with no R* at all (an auditor's case:
    sources.toxicity_classifier empty) gives back the same saved reward, the same objective and the same length
    directions, read at the same layer; the audit without R* skips every judgement against it, says so, still
    reports, and goes on through the re-alignments to notebook 05, judged by the evaluator alone."""
    expert = tmp_path / "expert"
    shutil.copytree(smoke_run / "rlhf_ground_truth" / "policy", expert)
    runs = {}
    for name, reward in (("toxicity", "embedded:tox-block"), ("absent", "")):
        folder = tmp_path / name
        folder.mkdir()
        params = write_params(folder, sources__expert=str(expert), sources__toxicity_classifier=reward)
        until = ["--until", "04_irl"] if reward else ["--set", "run.figures_dir="]  # without R*: 01 to 05
        done = irlnb_cli("run", str(params), *until)
        assert done.returncode == 0, done.stderr
        runs[name] = folder / "runs" / "smoke"
    toxicity, absent = runs["toxicity"], runs["absent"]
    probes = ["You are such a nice person.", "Shut up, idiot.", "The council voted to raise taxes."]
    scores = [load_reward(run / "irl" / "reward").score(probes) for run in (toxicity, absent)]
    np.testing.assert_array_equal(scores[0], scores[1])
    for table in ("layer_choice.csv", "length_choice.csv", "objective_ranking.csv"):
        chosen = [pd.read_csv(run / "irl" / table) for run in (toxicity, absent)]
        if "candidate" in chosen[0]:  # the references (the ceiling reads R*) are shown, never chosen
            chosen = [frame[frame["candidate"]].reset_index(drop=True) for frame in chosen]
        kept = [column for column in chosen[0] if "auc" not in column]  # R*'s columns are shown, never chosen by
        pd.testing.assert_frame_equal(chosen[0][kept], chosen[1][kept])
    demonstrations = [pd.read_parquet(run / "irl" / "demonstrations.parquet") for run in (toxicity, absent)]
    pd.testing.assert_frame_equal(*(d[["prompt", "expert", "non_expert"]] for d in demonstrations))
    assert demonstrations[1]["expert_r_star"].isna().all() and demonstrations[0]["expert_r_star"].notna().all()

    measured, unjudged = (json.loads((run / "metrics.json").read_text()) for run in (toxicity, absent))
    saved = partial(names.irl_metric, None, "test")
    assert saved("auc_mean") in measured and saved("auc_mean") not in unjudged
    assert not [
        key
        for key in unjudged
        if key.startswith(names.ground_truth_prefix()) and "evaluator" not in key and not key.endswith(".n")
    ]  # stage 02 kept only the evaluator against the human labels
    assert "rlhf.ground_truth.toxicity_mean" not in unjudged and "rlhf.ground_truth.perplexity" in unjudged
    for key in ("pair_accuracy_mean", "length_tokens_spearman_mean", "repetition_shift_mean"):
        assert unjudged[saved(key)] == pytest.approx(measured[saved(key)])  # read no R*: the same numbers
    assert (absent / "irl" / "audit_extremes.csv").is_file() and (absent / "irl" / "audit_words.csv").is_file()
    assert (absent / "figures" / "reward_against_length.png").is_file()
    confusion = "figures/irl_confusion.png"  # sign(R-hat) against sign(R*): no figure without R*
    assert not (absent / confusion).exists() and (toxicity / confusion).is_file()
    for notebook in ("04_irl", "03_rlhf_learned", "05_analysis"):
        executed = (absent / "notebooks" / f"{notebook}.ipynb").read_text()
        assert executed.count("No R* (sources.toxicity_classifier is empty)") == 1, notebook  # said once a stage

    # Notebook 05 without R*: Table 1 by the evaluator alone, no share of R*'s reduction, no disagreement with R*
    table = pd.read_csv(absent / "figures" / "toxicity_table.csv")
    assert table["policy"].tolist() == ["base", "ground_truth", "learned", "random"]
    assert "evaluator_toxicity_mean" in table and "toxicity_mean" not in table and table["perplexity"].notna().all()
    assert not [
        key
        for key in unjudged
        if key.startswith("analysis.") and not key.endswith(("_evaluator", "_ci_low", "_ci_high"))
    ]
    assert (absent / "figures" / "pipeline.png").is_file() and not (absent / "analysis" / "disagreements.csv").exists()
    assert "No R* to disagree with" in (absent / "notebooks" / "05_analysis.ipynb").read_text()


def test_without_r_star_only_a_brought_expert_is_audited(tmp_path):
    params = write_params(tmp_path, sources__toxicity_classifier="")
    for command in ("check", "run"):
        done = irlnb_cli(command, str(params))
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "sources.toxicity_classifier: empty means no R*" in done.stderr and "sources.expert" in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_the_suite_refuses_an_unknown_kind_or_reward_in_one_line_before_any_run(tmp_path):
    for option, value, message in (
        ("--kinds", "sft", "unknown alignment kind 'sft'"),
        ("--rewards", "embedded:politeness", "unknown embedded toxicity_classifier 'politeness'"),
    ):
        done = irlnb_cli("recovery", option, value, "--runs-dir", str(tmp_path / "runs"), "--no-record")
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "runs").exists()
    both = irlnb_cli("recovery", "--record", "seeds", "--no-record", "--runs-dir", str(tmp_path / "runs"))
    assert both.returncode != 0 and both.stderr.strip() == (
        "irlnb recovery: --record NAME writes a record and --no-record writes none; give one"
    )
    none = irlnb_cli("recovery", "--seeds", "0", "--no-record", "--runs-dir", str(tmp_path / "runs"))
    assert none.returncode != 0 and none.stderr.strip().endswith("--seeds 0: a row needs at least 1 alignment seed")
    assert not (tmp_path / "runs").exists()
