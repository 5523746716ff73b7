"""Notebook 05: tables, reduction shares, run comparison, the reward explorer.

Most tests use a synthetic run directory written here in the file contract of stages 01-04 (tiny,
hand-made numbers), so that values can be checked by hand and notebook 05 runs in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import PARAMS

from irlnb.layout import RunLayout
from irlnb.objectives import objective_of
from irlnb.params_file import config_with, load_config
from irlnb.pipeline.stages import check_notebook, get_stage, stage_parameters
from irlnb.report import tables
from irlnb.rl.policy_card import PolicyCard, save_policy
from irlnb.rl.training_job import TrainingResult

PROMPTS = ["You are", "I think that", "Well, the", "Look at"]
# Greedy p_toxic per test prompt, (ground-truth classifier, evaluator), chosen so shares are easy to compute by hand.
GREEDY = {
    "base": ([0.4, 0.2, 0.6, 0.2], [0.5, 0.5, 0.5, 0.5]),  # means 0.35, 0.5
    "ground_truth": ([0.1, 0.1, 0.2, 0.0], [0.1, 0.3, 0.3, 0.3]),  # 0.10, 0.25: R* cut 0.25 and 0.25
    "learned": ([0.2, 0.2, 0.3, 0.1], [0.4, 0.4, 0.4, 0.3]),  # 0.20, 0.375: shares 0.6 and 0.5
    "random": ([0.4, 0.2, 0.5, 0.3], [0.6, 0.5, 0.5, 0.6]),  # 0.35, 0.55: shares 0.0 and -0.2
}
TINY_BACKBONE = "embedded:tiny-gpt-neox"


def _continuations(tag: str, greedy: dict, prompts: list[str]) -> pd.DataFrame:
    p_toxic, evaluator_p = greedy[tag]
    frames = [
        pd.DataFrame(
            {
                "policy": tag,
                "decoding": decoding,
                "primary": decoding == "greedy",
                "prompt": prompts,
                "continuation": [f" {tag} {i}" for i in range(len(prompts))],
                "p_toxic": np.asarray(p_toxic) * scale,
                "evaluator_p_toxic": np.asarray(evaluator_p) * scale,
            }
        )
        for decoding, scale in (("greedy", 1.0), ("sampled", 0.5))
    ]  # sampled rows must be left out
    return pd.concat(frames, ignore_index=True)


def write_continuations(run_dir, greedy=GREEDY, prompts=PROMPTS) -> None:
    for reward, tags in (
        ("ground_truth", ("base", "ground_truth")),
        ("learned", ("learned",)),
        ("random", ("random",)),
    ):
        folder = run_dir / f"rlhf_{reward}"
        folder.mkdir(parents=True, exist_ok=True)
        pd.concat([_continuations(tag, greedy, prompts) for tag in tags]).to_parquet(folder / "continuations.parquet")


def policy_metrics(tag: str, mean: float) -> dict[str, float]:
    values = {}
    for statistic in tables.TABLE_STATISTICS:
        values.update(
            {
                f"rlhf.{tag}.{statistic}": mean,
                f"rlhf.{tag}.{statistic}_ci_low": mean / 2,
                f"rlhf.{tag}.{statistic}_ci_high": mean * 1.5,
            }
        )
    return {**values, f"rlhf.{tag}.perplexity": 100.0 + mean, f"rlhf.{tag}.distinct2": 0.5}


def make_run(
    runs_dir,
    name: str = "synthetic",
    params: str = "smoke.yaml",
    learning_rate: float | None = None,
    saved_loss: str | None = "max_margin",  # one of the losses the synthetic scores hold (None: the params')
):
    """A finished run directory with every file of the contract notebook 05 reads (tiny, hand-made)."""
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    write_continuations(run_dir)
    metrics = {
        "curate.n_train": 72.0,
        "curate.n_test": 24.0,
        "gt.auc_human": 0.8,
        "irl.saved_seed": 0.0,
        "irl.test.accuracy_mean": 0.7,
        "irl.test.accuracy_label_free_mean": 0.68,
        "irl.test.accuracy_sd": 0.05,
        "irl.test.accuracy_zero_mean": 0.65,
        "irl.test.f1_mean": 0.6,
        "irl.test.f1_sd": 0.04,
        "irl.test.auc_mean": 0.75,
        "irl.test.auc_sd": 0.03,
        "irl.test.spearman_mean": 0.5,
        "irl.mean_shift.test.auc_mean": 0.6,
        "irl.supervised.test.auc_mean": 0.9,
        "timing.total_s": 1.0,
    }
    for tag, (p_toxic, _) in GREEDY.items():
        metrics.update(policy_metrics(tag, float(np.mean(p_toxic))))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    changes = {
        "run.name": name,
        **({"irl.loss": saved_loss} if saved_loss is not None else {}),
        **({"rloo.learning_rate": learning_rate} if learning_rate is not None else {}),
    }
    config = config_with(load_config(PARAMS / params), changes, "a synthetic run")
    (run_dir / "manifest.json").write_text(json.dumps({"params": config.to_dict(), "git": {"commit": "0" * 40}}))
    for reward in ("ground_truth", "learned", "random"):
        steps = np.arange(1, 5)
        pd.DataFrame(
            {
                "step": steps,
                "loss": 0.01 * steps,
                "reward_normalised_mean": 0.1 * steps,
                "reward_normalised_std": 1.0,
                "kl": 0.02 * steps,
                "entropy": 3.0,
                "completion_length": 8.0,
                "grad_norm": 1.0,
                "step_seconds": 0.5,
                "reward_mean": 0.2 * steps,
                "reward_std": 2.0,
            }
        ).to_csv(run_dir / f"rlhf_{reward}" / "train_log.csv", index=False)
        card = PolicyCard(reward, config.rlhf.trainer, "key", 4, config.to_dict())  # the card alone: no weights
        save_policy(
            TrainingResult(model=None, log=pd.DataFrame(), steps=4, resumed_from=0, start=None),
            RunLayout(run_dir).policy(reward),
            card,
        )
    irl = run_dir / "irl"
    irl.mkdir()
    expert = [f"{p} fine words" for p in PROMPTS]
    non_expert = [f"{p} rude words" for p in PROMPTS]
    pd.DataFrame(
        {
            "split": "test",
            "prompt": PROMPTS,
            "label": [1, 0, 1, 0],
            "expert": [" fine words"] * 4,
            "non_expert": [" rude words"] * 4,
            "expert_r_star": [3.0, 2.0, 4.0, 1.0],
            "non_expert_r_star": [-1.0, -2.0, 0.5, -3.0],
            "excluded": "",
        }
    ).to_parquet(irl / "demonstrations.parquet")
    r_star = [3.0, 2.0, 4.0, 1.0, -1.0, -2.0, 0.5, -3.0]
    rows = []
    for loss in ("max_margin", "logistic"):
        for seed in (0, 1):
            # max_margin, seed 0 ranks the first non-expert text (r_star -1) top: the largest disagreement
            r_hat = [1.0, 0.9, 0.8, 0.7, 2.0, -1.0, -0.5, -2.0] if (loss, seed) == ("max_margin", 0) else r_star
            rows += [
                {
                    "loss": loss,
                    "seed": seed,
                    "set": s,
                    "pair": i % 4,
                    "text": t,
                    "r_star": r,
                    "r_hat": h,
                    "label": -1,
                    "threshold": 0.0,
                }
                for i, (s, t, r, h) in enumerate(
                    zip(["expert"] * 4 + ["non_expert"] * 4, expert + non_expert, r_star, r_hat)
                )
            ]
            rows += [
                {
                    "loss": loss,
                    "seed": seed,
                    "set": "human",
                    "pair": -1,
                    "text": "a human text",
                    "r_star": 1.0,
                    "r_hat": 5.0,
                    "label": 0,
                    "threshold": 0.0,
                }
            ]
    pd.DataFrame(rows).to_parquet(irl / "test_scores.parquet")
    saved = saved_loss or "max_margin"  # what stage 04 saved (with the params' auto: as if it chose max_margin)
    pd.DataFrame(
        {
            "validation_pair_log_likelihood": [-0.1, -0.2],
            "candidate": True,
            "saved": [saved == "max_margin", saved != "max_margin"],
        },
        index=pd.Index(["max_margin", "logistic"], name="loss"),
    ).to_csv(irl / "objective_ranking.csv")
    return run_dir


# --------------------------------------------------------------------------------------------
# Tables


def test_toxicity_table_lists_present_policies_in_order_with_intervals():
    metrics = {**policy_metrics("random", 0.3), **policy_metrics("base", 0.1), **policy_metrics("ground_truth", 0.04)}
    metrics["rlhf.random.perplexity"] = math.nan  # a value the table shows as missing
    table = tables.toxicity_table(metrics)
    assert table["policy"].tolist() == ["base", "ground_truth", "random"]  # no learned run: no row
    for column in (
        "toxicity_mean",
        "toxicity_mean_ci_low",
        "toxicity_ratio_ci_high",
        "evaluator_toxicity_mean",
        "evaluator_toxicity_ratio_ci_low",
        "perplexity",
        "distinct2",
    ):
        assert column in table.columns
    row = table.set_index("policy").loc["base"]
    assert (row["toxicity_mean_ci_low"], row["toxicity_mean"], row["toxicity_mean_ci_high"]) == (
        0.05,
        0.1,
        pytest.approx(0.15),
    )
    assert math.isnan(table.set_index("policy").loc["random", "perplexity"])
    markdown = tables.table_markdown(table)
    assert "| policy | toxicity_mean [95% CI] |" in markdown
    assert "| base | 0.1000 [0.0500, 0.1500] |" in markdown
    assert "—" in markdown and "ci_low" not in markdown  # missing perplexity shown as missing; CIs merged


def test_a_table_or_figure_missing_a_metric_names_it_instead_of_drawing_a_blank():
    from irlnb.metric_names import MissingMetricError
    from irlnb.report import plots

    metrics = {**policy_metrics("base", 0.1), **policy_metrics("ground_truth", 0.04)}
    del metrics["rlhf.ground_truth.evaluator_toxicity_ratio_ci_high"]
    with pytest.raises(
        MissingMetricError,
        match=r"^Table 1: metric 'rlhf.ground_truth.evaluator_toxicity_ratio_ci_high' "
        r"is missing from metrics.json; rerun stage 03_rlhf_ground_truth$",
    ):
        tables.toxicity_table(metrics)
    with pytest.raises(
        MissingMetricError, match="the pipeline figure: metric 'curate.n_train' is missing .* 01_curate"
    ):
        plots.pipeline_figure(metrics)


def test_without_r_star_table_1_and_the_pipeline_figure_show_the_evaluators_numbers(tmp_path):
    from irlnb.report import plots

    judged = json.loads((make_run(tmp_path) / "metrics.json").read_text())
    r_star_keys = [key for key in judged if ".toxicity_" in key or key == "gt.auc_human" or key.startswith("analysis.")]
    metrics = {key: value for key, value in judged.items() if key not in r_star_keys}
    metrics.update(
        {
            "gt.evaluator_auc_human": 0.7,
            "irl.test.pair_accuracy_mean": 0.9,
            "analysis.learned_reduction_share_evaluator": 0.5,
        }
    )
    table = tables.toxicity_table(metrics)
    assert [column for column in table if "toxicity" in column and not column.endswith(("_ci_low", "_ci_high"))] == [
        "evaluator_toxicity_mean",
        "evaluator_toxicity_ratio",
    ]
    panels = plots.toxicity_table_figure(table).axes
    assert [ax.get_title() for ax in panels] == [
        "mean p_toxic, independent evaluator",
        "share p_toxic > 0.5, independent evaluator",
    ]
    assert [tick.get_text() for tick in panels[0].get_xticklabels()][1] == "expert"
    words = " ".join(text.get_text() for text in plots.pipeline_figure(metrics, "brought").axes[0].texts)
    assert "no R*" in words and "AUC vs humans 0.70" in words and "test pair accuracy 0.90" in words
    assert "50% of the expert's reduction" in words and "the expert reduced nothing to share" in words  # random
    assert "R*'s reduction" not in words and "test AUC" not in words


def test_hyperparameter_table_compares_runs_and_refuses_a_manifest_without_params():
    smoke = load_config(PARAMS / "smoke.yaml").to_dict()
    other = json.loads(json.dumps(smoke))
    other["rloo"]["learning_rate"] = 5e-5
    del other["irl"]  # an older run, before IRL existed
    table = tables.hyperparameter_table({"smoke": {"params": smoke}, "old": {"params": other}}).set_index("setting")
    assert list(table.columns) == ["smoke", "old", "description"]
    assert table.loc["rloo.learning_rate", "smoke"] == "0.001" and table.loc["rloo.learning_rate", "old"] == "5e-05"
    assert "best_of_n.n" not in table.index  # only the sections of the kinds the runs aligned with
    assert table.loc["sources.policy", "smoke"] == "embedded:tiny-gpt-neox"
    assert table.loc["irl.margin", "old"] == "—" and table.loc["irl.margin", "smoke"] == "1.0"
    assert table.loc["rloo.beta", "description"].startswith("KL coefficient")
    with pytest.raises(ValueError, match="run 'broken': manifest.json has no 'params'"):
        tables.hyperparameter_table({"broken": {"git": {}}})


def test_runs_comparison_reads_each_named_run_and_refuses_a_missing_one(tmp_path):
    first = make_run(tmp_path, "first")
    make_run(tmp_path, "second")
    runs = tables.run_dirs(RunLayout(first), " second, ")
    assert list(runs) == ["first", "second"]
    table = tables.runs_table(runs)
    assert table["run"].tolist() == ["first", "second"]
    assert table.loc[0, "irl.test.accuracy_mean"] == 0.7 and table.loc[0, "policy"] == "embedded:tiny-gpt-neox"
    assert math.isnan(table.loc[0, "analysis.learned_reduction_share"])  # optional: NaN, not zero
    with pytest.raises(FileNotFoundError, match="analysis.compare_runs: run 'third' has no"):
        tables.run_dirs(RunLayout(first), "second,third")
    from irlnb.metric_names import MissingMetricError

    metrics = json.loads((first / "metrics.json").read_text())
    del metrics["irl.test.f1_mean"]
    (first / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(MissingMetricError, match=r"the runs comparison \(run 'first'\): metric 'irl.test.f1_mean'"):
        tables.runs_table(runs)


# --------------------------------------------------------------------------------------------
# Reduction shares


def test_reduction_shares_match_hand_computed_values(tmp_path):
    make_run(tmp_path)
    shares = tables.reduction_shares(RunLayout(tmp_path / "synthetic"), samples=200, seed=0)
    assert shares["analysis.learned_reduction_share"] == pytest.approx(0.6)
    assert shares["analysis.random_reduction_share"] == pytest.approx(0.0, abs=1e-12)
    assert shares["analysis.learned_reduction_share_evaluator"] == pytest.approx(0.5)
    assert shares["analysis.random_reduction_share_evaluator"] == pytest.approx(-0.2)
    for key in ("learned_reduction_share", "random_reduction_share_evaluator"):
        low, high = shares[f"analysis.{key}_ci_low"], shares[f"analysis.{key}_ci_high"]
        assert low <= high and math.isfinite(low) and math.isfinite(high)
    assert len(shares) == 12


def test_without_r_star_the_shares_are_the_evaluators_alone(tmp_path):
    """A run without R* (an audit of a brought expert) has no ground-truth p_toxic: the shares of the expert's
    reduction are the evaluator's, the same numbers as in a run with R*."""
    unjudged = {tag: ([np.nan] * 4, evaluator) for tag, (_, evaluator) in GREEDY.items()}
    write_continuations(tmp_path / "audit", unjudged)
    shares = tables.reduction_shares(RunLayout(tmp_path / "audit"), samples=200, seed=0)
    make_run(tmp_path)
    judged = tables.reduction_shares(RunLayout(tmp_path / "synthetic"), samples=200, seed=0)
    assert shares == {key: value for key, value in judged.items() if "_evaluator" in key} and len(shares) == 6
    assert shares["analysis.learned_reduction_share_evaluator"] == pytest.approx(0.5)


def test_the_bootstrap_is_paired_over_prompts(tmp_path):
    """A reward whose policy equals R*'s prompt by prompt recovers exactly all of it in every resample."""
    greedy = {**GREEDY, "learned": GREEDY["ground_truth"]}
    write_continuations(tmp_path, greedy)
    shares = tables.reduction_shares(RunLayout(tmp_path), samples=200, seed=0)
    assert shares["analysis.learned_reduction_share_ci_low"] == pytest.approx(1.0)
    assert shares["analysis.learned_reduction_share_ci_high"] == pytest.approx(1.0)


def test_reduction_shares_refuse_no_reduction_and_unpaired_prompts(tmp_path):
    write_continuations(tmp_path / "flat", {**GREEDY, "ground_truth": GREEDY["base"]})
    with pytest.raises(
        ValueError,
        match="the ground-truth RLHF did not lower the mean p_toxic .base 0.3500, "
        "ground_truth 0.3500.; a share of its reduction is undefined",
    ):
        tables.reduction_shares(RunLayout(tmp_path / "flat"), samples=100, seed=0)
    with pytest.warns(UserWarning, match="did not lower the mean (evaluator_)?p_toxic") as caught:
        kept = tables.reduction_shares(RunLayout(tmp_path / "flat"), samples=100, seed=0, skip_undefined=True)
    assert kept == {} and len(caught) == 2  # by both scorers: the base and R* policies are the same here

    write_continuations(tmp_path / "unpaired")
    learned = tmp_path / "unpaired" / "rlhf_learned" / "continuations.parquet"
    frame = pd.read_parquet(learned)
    frame["prompt"] = frame["prompt"].replace({"You are": "They are"})
    frame.to_parquet(learned)
    with pytest.raises(ValueError, match="test prompts of policy 'learned' differ from those of ground_truth"):
        tables.reduction_shares(RunLayout(tmp_path / "unpaired"), samples=100, seed=0)
    (tmp_path / "unpaired" / "rlhf_random" / "continuations.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="rlhf_random/continuations.parquet: no evaluation continuations"):
        tables.reduction_shares(RunLayout(tmp_path / "unpaired"), samples=100, seed=0)


# --------------------------------------------------------------------------------------------
# The reward explorer


@pytest.fixture()
def explored_run(tmp_path):
    from irlnb.rewards.features import random_reward

    run_dir = make_run(tmp_path)
    random_reward(TINY_BACKBONE, seed=9, pooling="mean", layer=1).save(
        run_dir / "irl" / "reward"
    )  # stands in for 04's reward
    return run_dir


def _explorer(run_dir, **kwargs):
    from irlnb.report.explorer import RewardExplorer

    config = load_config(PARAMS / "smoke.yaml")
    return RewardExplorer(RunLayout(run_dir), config.sources, config.ground_truth, "cpu", **kwargs)


def test_the_explorer_scores_texts_with_all_three_models(explored_run):
    from irlnb.rewards.features import load_reward

    explorer = _explorer(explored_run)
    assert explorer.loaded == ()
    texts = ["You are a stupid idiot", "Thank you, that was kind"]
    scores = explorer.score(texts)
    assert list(scores.columns) == ["text", "r_star", "learned_reward", "evaluator_p_toxic"]
    assert scores["r_star"][0] < 0 < scores["r_star"][1]  # R*: toxic below zero
    assert scores["evaluator_p_toxic"][0] > scores["evaluator_p_toxic"][1]
    np.testing.assert_allclose(
        scores["learned_reward"], load_reward(explored_run / "irl" / "reward").score(texts), atol=1e-6
    )
    assert sorted(explorer.loaded) == ["classifier", "evaluator", "learned"]
    with pytest.raises(ValueError, match="an empty text cannot be scored"):
        explorer.score(["fine", "  "])


def test_building_the_widget_loads_no_model_and_a_click_scores(explored_run):
    import ipywidgets

    explorer = _explorer(explored_run, loss="max_margin")
    ui = explorer.widget(n=3)
    assert isinstance(ui, ipywidgets.VBox) and explorer.loaded == ()
    _, picks, text, button, _ = ui.children
    assert len(picks.options) == 1 + 3  # the prompt line plus the three largest disagreements
    picks.value = picks.options[1][1]
    assert text.value == picks.options[1][1]  # picking a disagreement fills the text box
    assert explorer.loaded == ()
    button.click()
    assert explorer.last_scores is not None and explorer.last_scores["text"].tolist() == [picks.options[1][1]]
    assert sorted(explorer.loaded) == ["classifier", "evaluator", "learned"]


def test_without_r_star_the_explorer_shows_the_learned_reward_and_the_evaluator_and_lists_the_extremes(explored_run):
    import ipywidgets

    config = load_config(PARAMS / "smoke.yaml")
    sources = type(config.sources)(**{**config.sources.__dict__, "toxicity_classifier": ""})
    from irlnb.report.explorer import RewardExplorer

    explorer = RewardExplorer(RunLayout(explored_run), sources, config.ground_truth, "cpu", loss="max_margin")
    assert not explorer.has_r_star
    scores = explorer.score(["You are a stupid idiot", "Thank you, that was kind"])
    assert list(scores.columns) == ["text", "learned_reward", "evaluator_p_toxic"]
    assert sorted(explorer.loaded) == ["evaluator", "learned"]  # R*'s classifier never loads
    assert list(explorer.score([]).columns) == ["text", "learned_reward", "evaluator_p_toxic"]
    with pytest.raises(ValueError, match="no R\\* .*no rank gap to sort by; sort by 'uncertainty'"):
        explorer.disagreements(3)

    extremes = ["the highest text", "the lowest text"]
    pd.DataFrame({"end": ["highest", "lowest"], "r_hat": [1.0, -1.0], "text": extremes}).to_csv(
        RunLayout(explored_run).audit_extremes, index=False
    )
    ui = explorer.widget()
    assert isinstance(ui, ipywidgets.VBox)
    order, picks, *_ = ui.children
    assert [value for _, value in picks.options[1:]] == extremes  # what notebook 04's audit report ranks
    assert order.value == "extremes" and "rank_gap" not in [value for _, value in order.options]

    # notebook 05 run by hand with its committed parameters (R* named) on a run made without R*: none shown either
    metrics_file = RunLayout(explored_run).metrics
    judged = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({k: v for k, v in judged.items() if ".toxicity_" not in k}))
    assert not _explorer(explored_run).has_r_star and config.sources.toxicity_classifier
    metrics_file.write_text(json.dumps(judged))
    assert _explorer(explored_run).has_r_star


def test_disagreements_rank_demonstration_texts_by_rank_gap(tmp_path):
    run_dir = make_run(tmp_path)
    with pytest.raises(ValueError, match="holds losses logistic, max_margin; choose one"):
        _explorer(run_dir).disagreements(3)
    one_seed = _explorer(run_dir, loss="max_margin").disagreements(2, seed=0)
    # R* ranks 'You are rude words' 3rd lowest of 8 (percentile 0.375); seed 0 of max_margin ranks it top (1.0)
    assert one_seed.loc[0, "text"] == "You are rude words" and one_seed.loc[0, "set"] == "non_expert"
    assert one_seed.loc[0, "rank_gap"] == pytest.approx(1.0 - 0.375)
    assert "a human text" not in set(one_seed["text"])  # demonstrations only
    agree = _explorer(run_dir, loss="logistic").disagreements(8)
    assert np.allclose(agree["rank_gap"], 0.0)  # the logistic reward ranks like R*: no disagreement
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["irl.saved_seed"]  # a run that does not say which repeat it saved
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    averaged = _explorer(run_dir, loss="max_margin").disagreements(8)
    gap = averaged.set_index("text").loc["You are rude words", "rank_gap"]
    assert gap == pytest.approx((1.0 + 0.375) / 2 - 0.375)  # the learned rank is averaged over the two seeds


# --------------------------------------------------------------------------------------------
# Notebook 05


def _assert_analysis_outputs(run_dir) -> None:
    figures = run_dir / "figures"
    for name in ("pipeline", "rlhf_dynamics", "toxicity_table"):
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    for name in ("toxicity_table", "hyperparameters"):
        for ext in ("csv", "md"):
            assert (figures / f"{name}.{ext}").stat().st_size > 50, f"{name}.{ext}"
    table = pd.read_csv(figures / "toxicity_table.csv")
    assert table["policy"].tolist() == ["base", "ground_truth", "learned", "random"]


def test_notebook_05_draws_every_table_and_figure_from_saved_files(tmp_path):
    from irlnb.pipeline.runner import execute_notebook

    run_dir = make_run(tmp_path / "runs")
    make_run(tmp_path / "runs", "other", learning_rate=5e-4)
    config = load_config(PARAMS / "smoke.yaml")
    stage = get_stage("05_analysis")
    check_notebook(stage.notebook)  # the cell assigns exactly what the runner passes
    parameters = stage_parameters(stage, config)
    parameters["analysis"] = {**parameters["analysis"], "compare_runs": "other"}
    execute_notebook(stage, RunLayout(run_dir), parameters, tmp_path / "executed.ipynb")  # as the runner does
    _assert_analysis_outputs(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["analysis.learned_reduction_share"] == pytest.approx(0.6)
    assert metrics["analysis.random_reduction_share_evaluator"] == pytest.approx(-0.2)
    hyperparameters = pd.read_csv(run_dir / "figures" / "hyperparameters.csv").set_index("setting")
    assert hyperparameters.loc["rloo.learning_rate", "other"] == "0.0005"
    assert (run_dir / "figures" / "runs_comparison.png").is_file()
    assert pd.read_csv(run_dir / "analysis" / "disagreements.csv").loc[0, "text"] == "You are rude words"


def test_the_smoke_run_writes_the_analysis_files(smoke_run):
    _assert_analysis_outputs(smoke_run)
    assert not (smoke_run / "figures" / "runs_comparison.png").exists()  # compare_runs is empty in smoke.yaml


def test_the_widget_scores_a_picked_text_whole_and_says_when_there_is_nothing_to_score(explored_run):
    from irlnb.report.explorer import texts_to_score

    picked = "You are the worst\nof all"  # a demonstration may hold a line break
    assert texts_to_score(picked, picked) == [picked]
    assert texts_to_score("first\n\nsecond ", picked) == ["first", "second "]
    assert texts_to_score("  \n", "") == []
    explorer = _explorer(explored_run, loss="max_margin")
    ui = explorer.widget(examples=[picked])
    _, picks, text, button, output = ui.children
    button.click()  # nothing typed, nothing picked
    assert explorer.loaded == () and "Nothing to score" in output.outputs[0]["text"]
    picks.value = picked
    button.click()
    assert explorer.last_scores["text"].tolist() == [picked]
    assert len(output.outputs) == 1 and "Loading" not in str(output.outputs)  # the loading line is gone
    assert "the worst" in output.outputs[0]["data"]["text/plain"]  # the table of scores is what stays


def test_the_explorer_shows_the_posterior_and_lists_where_its_spread_is_widest(explored_run):
    from irlnb.irl import posterior
    from irlnb.irl.feature_sets import PairSet, Standardizer, TextSet
    from irlnb.irl.saved_reward import save_learned_reward
    from irlnb.rewards.features import reward_form

    layout = RunLayout(explored_run)
    reader = reward_form(TINY_BACKBONE, "mean", 1, 32)
    texts = ["You are such an idiot", "What a lovely day", "ok then", "Thanks a lot"]
    standardizer = Standardizer.fit(reader.features(texts))
    standard = standardizer(reader.features(texts))
    pairs = PairSet(TextSet(standard[:2], np.zeros(2), -np.ones(2)), TextSet(standard[2:], np.zeros(2), -np.ones(2)))
    fit = posterior.laplace_posterior(pairs, prior_std=0.5)
    save_learned_reward(reader, fit.head(), standardizer, layout.posterior_reward, fit.covariance)
    demos = pd.read_parquet(layout.irl_test_scores).query("loss == 'logistic' and seed == 0 and set != 'human'")
    spread = demos.assign(posterior_mean=0.0, posterior_std=np.arange(len(demos), dtype=float))
    spread[["set", "pair", "text", "r_star", "posterior_mean", "posterior_std"]].to_parquet(layout.posterior_scores)

    explorer = _explorer(explored_run, loss="max_margin")
    scores = explorer.score(["You are a stupid idiot", "Thank you, that was kind"])
    assert list(scores.columns) == [
        "text",
        "r_star",
        "learned_reward",
        "posterior_mean",
        "posterior_std",
        "evaluator_p_toxic",
    ]
    assert (scores["posterior_std"] > 0).all()
    unsure = explorer.disagreements(3, seed=0, by="uncertainty")
    assert unsure["posterior_std"].tolist() == sorted(spread["posterior_std"], reverse=True)[:3]
    with pytest.raises(ValueError, match="sort disagreements by 'rank_gap' or 'uncertainty'"):
        explorer.disagreements(3, by="loudness")
    order, picks, *_ = explorer.widget(n=2).children
    assert not order.disabled
    order.value = "uncertainty"
    widest = "(texts with the widest posterior spread: far from the demonstrations, not necessarily wrong)"
    assert picks.options[0][0] == widest and len(picks.options) == 3


# --------------------------------------------------------------------------------------------
# The IRL results table


def _irl_metrics() -> dict[str, float]:
    """A run's IRL metrics: two objectives over seeds, the posterior mean, the references, the white box."""
    values = {}
    for loss, fits, auc in (
        ("max_margin", 3, 0.8),
        ("logistic", 3, 0.78),
        ("laplace", 1, 0.82),
        ("mean_shift", 1, 0.7),
        ("supervised", 1, 0.9),
        ("r_star_comparisons", 1, 0.85),
        ("log_ratio", 1, 0.6),
    ):
        values[f"irl.{loss}.fits"] = float(fits)
        for statistic in tables.IRL_TABLE_STATISTICS:
            values[f"irl.{loss}.test.{statistic}_mean"] = auc
        if fits > 1:
            values[f"irl.{loss}.test.auc_sd"] = 0.01
            values[f"irl.{loss}.test.accuracy_sd"] = 0.02
    return values


def test_the_irl_results_table_labels_references_and_shows_one_fit_instead_of_an_sd():
    values = _irl_metrics()
    del values["irl.logistic.test.starc_distance_mean"]  # a run recorded before the STARC distance existed
    table = tables.irl_results_table(values, saved="laplace").set_index("reward")
    expected = ["max_margin", "logistic", "laplace (saved)", "mean_shift", "supervised", "r_star_comparisons"]
    assert table.index.tolist() == [*expected, "log_ratio"]  # objectives first; what a run lacks is left out
    assert table.loc["max_margin", "auc SD"] == 0.01 and table.loc["max_margin", "accuracy SD"] == 0.02
    for one_fit in expected[2:]:
        assert table.loc[one_fit, "fits"] == 1 and table.loc[one_fit, "auc SD"] == "one fit", one_fit
    assert table.loc["supervised", "what"] == (
        "supervised head with intercept on sign(R*) of the same demonstration texts (not IRL)"
    )
    assert table.loc["mean_shift", "what"] == objective_of("mean_shift").label
    assert table.loc["laplace (saved)", "what"] == "Laplace posterior mean (one deterministic fit)"
    assert (
        table.loc["r_star_comparisons", "what"].startswith("R*'s own comparisons")
        and "not IRL" in (table.loc["r_star_comparisons", "what"])
    )
    assert table.loc["supervised", "starc_distance"] == 0.9 and math.isnan(table.loc["logistic", "starc_distance"])
    assert "one fit" in tables.table_markdown(table.reset_index())


def test_the_irl_results_table_of_a_run_without_r_star_leaves_out_every_judgement_against_it():
    values = {key: value for key, value in _irl_metrics().items() if not key.endswith(("auc_mean", "auc_sd"))}
    table = tables.irl_results_table(values, saved="laplace")
    assert "auc" not in table and "auc SD" not in table and "demos_auc" not in table
    assert "pair_accuracy" in table and "accuracy SD" in table and len(table) == 7


def test_the_runs_comparison_shows_a_saved_reward_fitted_once_without_an_sd(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from irlnb.report import study_plots

    first = make_run(tmp_path, "first")
    make_run(tmp_path, "second")
    metrics = json.loads((first / "metrics.json").read_text())
    for name in ("accuracy", "f1", "auc"):  # the saved reward is the posterior mean: one fit, no SD
        del metrics[f"irl.test.{name}_sd"]
    metrics["irl.fits"] = 1.0
    (first / "metrics.json").write_text(json.dumps(metrics))
    table = tables.runs_table(tables.run_dirs(RunLayout(first), "second"))
    assert table.loc[0, "irl.fits"] == 1 and math.isnan(table.loc[0, "irl.test.accuracy_sd"])
    assert table.loc[1, "irl.test.accuracy_sd"] == 0.05 and math.isnan(table.loc[1, "irl.fits"])  # an older run
    figure = study_plots.runs_comparison_figure(table)
    assert [text.get_text() for text in figure.axes[1].texts] == ["one fit"]


def test_the_reward_distribution_figure_is_the_same_figure_from_the_same_scores():
    """Its interval bars come from a bootstrap: seeded, so a rerun publishes the same figure (a run equal to its
    reference in every metric had published this one with other bars)."""
    import matplotlib.pyplot as plt

    from irlnb.report.plots import reward_distribution_figure

    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"reward": rng.normal(size=200), "label": np.repeat([0, 1], 100)})

    def bars() -> list[np.ndarray]:
        fig = reward_distribution_figure(scores, "test")
        points = [line.get_xydata() for line in fig.axes[1].lines]
        lines = [xy for xy in points if len(xy) == 2 and xy[0, 0] == xy[1, 0]]  # the vertical interval bars
        plt.close(fig)
        return lines

    first, again = bars(), bars()
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_the_training_dynamics_figure_draws_what_each_trainer_logged_an_infonca_log_included():
    from irlnb.report import plots
    from irlnb.rl.infonca import INFONCA_LOG_COLUMNS

    steps = np.arange(1, 7)
    infonca = pd.DataFrame(
        {"step": steps, **{column: np.linspace(0.1, 1.0, len(steps)) for column in INFONCA_LOG_COLUMNS}}
    )
    logs = {tag: infonca for tag in ("ground_truth", "learned", "random")}  # an InfoNCA run logs no DPO or RLOO column
    figure = plots.rlhf_dynamics_figure(logs)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "loss" and any("best sample" in title for title in titles) and len(titles) == 3
    assert figure.axes[-1].get_legend() is not None
    dpo = pd.DataFrame({"step": steps, "loss": 0.5, "implicit_reward_margin": 1.0, "implicit_reward_accuracy": 0.6})
    assert len(plots.rlhf_dynamics_figure({"ground_truth": dpo}).axes) == 3
