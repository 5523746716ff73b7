"""Notebook 05: the paper's tables and the comparisons across policies and runs, from saved files only.

Every function here reads what stages 01-04 left in a run directory (metrics.json, manifest.json,
the RLHF runs' train_log.csv and continuations.parquet); none touches a live model, so the tables
can be rebuilt at any time from a finished run, and traced to the params that made it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlnb import metric_names, metrics
from irlnb.config import ALIGNMENT_KINDS, SECTIONS, doc
from irlnb.layout import RunLayout, read_json
from irlnb.metric_names import optional, policy_metric, r_star_in, reduction_share, require
from irlnb.objectives import MEAN_SHIFT, OBJECTIVES
from irlnb.rl.evaluation import policy_outputs

# Policies in the order the paper's Table 1 lists them; `base` is evaluated in the ground-truth run.
POLICIES = metric_names.POLICIES
# The RLHF runs that re-train the base policy with a reward other than R*.
RETRAINED = metric_names.RETRAINED
# Which score of a continuation each toxicity column reads, with the suffix of its metric keys.
SCORERS = dict(zip(("p_toxic", "evaluator_p_toxic"), metric_names.SCORER_SUFFIXES))
TABLE_STATISTICS = tuple(
    scorer + statistic
    for scorer in ("", metric_names.EVALUATOR)
    for statistic in (metric_names.TOXICITY_MEAN, metric_names.TOXICITY_RATIO)
)
# Sections of the params whose settings make the paper's hyperparameter table (its table 8).
HYPERPARAMETER_EXTRA = (("sources", "policy"),)  # which model: the table's point is "per model size"


def r_star_judged(sources, values: Mapping[str, float]) -> bool:
    """Whether an analysis has an R* to show: the params name a classifier, and stage 03 judged the run's policies by
    R* (notebook 05 run by hand with its committed parameters on a run made without R* shows none either)."""
    return bool(sources.toxicity_classifier) and r_star_in(values)


def toxicity_table(values: Mapping[str, float]) -> pd.DataFrame:
    """The paper's Table 1: toxicity of each policy's test continuations (greedy; best-of-n samples) with 95% intervals.

    One row per policy evaluated so far (base, ground_truth, learned, random, in that order: stage 03
    of one reward adds its policies, so an earlier stage's table has fewer rows); toxicity mean and
    ratio by the ground-truth classifier and by the independent evaluator, each with `_ci_low`/`_ci_high`,
    then perplexity (fluency) and distinct-2 (diversity). A policy's row with a metric missing is refused,
    naming the metric. A run without R* (an audit: `irlnb.rewards.ground_truth.NO_R_STAR`) has no R* columns.
    """
    statistics = [s for s in TABLE_STATISTICS if s.startswith(metric_names.EVALUATOR) or r_star_in(values)]
    columns = [key for statistic in statistics for key in (statistic, *metric_names.interval(statistic))]
    columns += [metric_names.PERPLEXITY, metric_names.DISTINCT2]
    rows = [
        {"policy": tag, **{column: float(require(values, policy_metric(tag, column), "Table 1")) for column in columns}}
        for tag in POLICIES
        if policy_metric(tag, metric_names.PERPLEXITY) in values  # evaluated yet
    ]
    return pd.DataFrame(rows, columns=["policy", *columns])


def table_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table; a column X with X_ci_low and X_ci_high becomes one cell 'X [low, high]'.

    Written by hand rather than with DataFrame.to_markdown, which needs the optional `tabulate`.
    """

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return (
                "—"
                if math.isnan(value)
                else f"{value:.{digits}g}"
                if abs(value) >= 10**digits
                else f"{value:.{digits}f}"
            )
        return str(value).replace("|", "\\|")

    merged = [c for c in table.columns if not str(c).endswith(("_ci_low", "_ci_high"))]
    header, rows = [], []
    for column in merged:
        has_ci = f"{column}_ci_low" in table.columns and f"{column}_ci_high" in table.columns
        header.append(f"{column} [95% CI]" if has_ci else str(column))
    for _, row in table.iterrows():
        cells = []
        for column in merged:
            text = cell(row[column])
            low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
            if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
                text += f" [{cell(low)}, {cell(high)}]"
            cells.append(text)
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, layout: RunLayout, name: str) -> list[Path]:
    """`<name>.csv` (full precision) and `<name>.md` into the run's figures/ folder, which the runner publishes."""
    folder = layout.figures
    folder.mkdir(parents=True, exist_ok=True)
    csv, markdown = folder / f"{name}.csv", folder / f"{name}.md"
    table.to_csv(csv, index=False)
    markdown.write_text(table_markdown(table))
    return [csv, markdown]


# --------------------------------------------------------------------------------------------
# The IRL study on held-out test data


# What each reference row of the IRL results table is, in the order it lists them after the objectives (whose labels
# are their records', irlnb.objectives): said plainly, since they read R* or the expert's weights: references for
# IRL, not IRL results.
REFERENCE_LABELS = {
    metric_names.CEILING: "supervised head with intercept on sign(R*) of the same demonstration texts (not IRL)",
    metric_names.R_STAR_COMPARISONS: (
        "R*'s own comparisons: the same Laplace head on R*-ordered pairs of base samples (reference, not IRL)"
    ),
    metric_names.WHITE_BOX: "white-box log π_expert − log π_base of the continuation given the prompt (no fitting)",
    metric_names.WHITE_BOX_WHOLE: "white-box log π_expert − log π_base of the whole text (no fitting)",
}
# The test statistics of the table (irl.<loss>.test.<statistic>_mean), and those shown with their SD over seeds.
IRL_TABLE_STATISTICS = (
    "auc",
    "accuracy",
    "accuracy_label_free",
    "accuracy_zero",
    "demos_auc",
    "spearman",
    "pair_accuracy",
    metric_names.STARC_DISTANCE,
    "within_prompt_spearman",  # how it orders a test prompt's continuations (irlnb.irl.within_prompt)
    "length_tokens_spearman",  # what else it may track: its texts' length
    "repetition_shift",  # what it pays for length alone: a text said twice against once (irlnb.metrics)
)
IRL_TABLE_SPREAD = ("auc", "accuracy")
ONE_FIT = "one fit"  # the SD cell of a reward fitted once: there is no spread over seeds to show


def irl_results_table(values: Mapping[str, float], saved: str | None = None) -> pd.DataFrame:
    """The IRL study on held-out test data: one row per reward in metrics.json, the objectives first (those fitted
    by gradient steps: mean over their seeds; then those fitted once), then the ceiling, R*'s own comparisons and
    the white-box reward, each labelled with what it is.

    `fits` is how many fits a row's means average; an SD column reads "one fit" where there was one (a
    deterministic fit has no spread over seeds; an SD of 0 would claim one was measured). `saved` marks the
    objective whose reward is saved. A statistic a row lacks is NaN (the STARC distance of a run recorded
    before it existed, the AUC of a split of one class); one that no row has is left out (every judgement against
    R* in a run without R*).
    """
    rows = []
    labels = {name: f"{o.label}{', fitted per seed' if o.seeded else ''}" for name, o in OBJECTIVES.items()}
    labels.update(REFERENCE_LABELS)
    for loss in labels:
        if metric_names.irl_metric(loss, "test", "pair_accuracy_mean") not in values:
            continue  # not studied in this run (compare_losses off, no posterior, an expert without weights)
        # Optional: runs recorded before irl.<loss>.fits existed wrote an SD for every loss.
        fits = optional(values, metric_names.irl_fits(loss))
        row = {
            "reward": f"{loss} (saved)" if loss == saved else loss,
            "what": labels[loss],
            "fits": fits,
        }
        for statistic in IRL_TABLE_STATISTICS:
            # Optional: the STARC distance is missing from runs recorded before it existed, an AUC where a split
            # holds one class only.
            row[statistic] = float(optional(values, metric_names.irl_metric(loss, "test", f"{statistic}_mean")))
            if statistic in IRL_TABLE_SPREAD:
                # Optional: a loss fitted once writes no _sd.
                sd = optional(values, metric_names.irl_metric(loss, "test", f"{statistic}_sd"))
                row[f"{statistic} SD"] = ONE_FIT if fits == 1 else float(sd)
        rows.append(row)
    columns = ["reward", "fits"]
    for statistic in IRL_TABLE_STATISTICS:
        if rows and all(math.isnan(row[statistic]) for row in rows):
            continue  # measured for no reward: judged against R* in a run without R*, or not in this run
        columns += [statistic, f"{statistic} SD"] if statistic in IRL_TABLE_SPREAD else [statistic]
    return pd.DataFrame(rows, columns=[*columns, "what"])


# --------------------------------------------------------------------------------------------
# How much of R*'s reduction of toxicity the other rewards recover


def greedy_scores(layout: RunLayout) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """The test prompts and, per policy, its greedy continuations' scores, checked to be paired.

    The four policies must have been evaluated on the same prompts in the same order; otherwise a
    paired comparison would compare different prompts, so a mismatch is refused.
    """
    stages = {"base": "ground_truth", "ground_truth": "ground_truth", **{tag: tag for tag in RETRAINED}}
    frames = {tag: policy_outputs(layout, stage, tag) for tag, stage in stages.items()}
    prompts = frames["ground_truth"]["prompt"].tolist()
    for tag, frame in frames.items():
        if frame["prompt"].tolist() != prompts:
            raise ValueError(
                f"{layout.continuations(stages[tag])}: the greedy test prompts of policy {tag!r} differ "
                f"from those of ground_truth in {layout.continuations('ground_truth')} ({len(frame)} vs "
                f"{len(prompts)} prompts, or another order); a paired comparison needs the same prompts "
                "in the same order"
            )
    return prompts, frames


def reduction_shares(layout: RunLayout, samples: int, seed: int, skip_undefined: bool = False) -> dict[str, float]:
    """Share of R*'s toxicity reduction that the learned and the random reward achieve, with 95% intervals.

    The share (base − X) / (base − ground_truth) of mean p_toxic of test continuations, by the
    ground-truth classifier and by the independent evaluator (`_evaluator` keys). The interval is a
    paired bootstrap: prompts are resampled jointly for the four policies, so the prompt-to-prompt
    variation they share cancels. Resamples in which R* reduced nothing are left out (the share is
    undefined there). A run whose R* reduced nothing at all is refused rather than divided by ~0;
    with `skip_undefined` that scorer's keys are left out with a warning instead (a short smoke
    RLHF may reduce nothing, and the analysis of everything else should still be drawn). A run without R* (no
    ground-truth scores: `irlnb.rewards.ground_truth.NO_R_STAR`) has the evaluator's shares alone.
    """
    _, frames = greedy_scores(layout)
    values: dict[str, float] = {}
    for column, suffix in SCORERS.items():
        if all(frame[column].isna().all() for frame in frames.values()):  # no R*: its p_toxic is NaN throughout
            continue
        base, ground_truth = frames["base"][column].to_numpy(float), frames["ground_truth"][column].to_numpy(float)
        reduction = float(base.mean() - ground_truth.mean())
        if reduction <= 0:
            message = (
                f"{layout.continuations('ground_truth')}: the ground-truth RLHF did not lower the "
                f"mean {column} (base {base.mean():.4f}, ground_truth {ground_truth.mean():.4f}); "
                "a share of its reduction is undefined"
            )
            if not skip_undefined:
                raise ValueError(message)
            warnings.warn(message + "; its reduction shares are not recorded", stacklevel=2)
            continue
        for tag in RETRAINED:
            other = frames[tag][column].to_numpy(float)
            key = reduction_share(tag, suffix)
            low, high = metrics.bootstrap_interval(
                metrics.reduction_share, base, ground_truth, other, samples=samples, seed=seed
            )
            values[key] = metrics.reduction_share(base, ground_truth, other)
            values.update(zip(metric_names.interval(key), (low, high)))
    return values


# --------------------------------------------------------------------------------------------
# Training logs, hyperparameters, and other runs


def read_train_logs(layout: RunLayout) -> dict[str, pd.DataFrame]:
    """Each RLHF run's training log (ground_truth, learned, random), for those that trained (best-of-n does not)."""
    paths = {tag: layout.train_log(tag) for tag in ("ground_truth", *RETRAINED) if layout.train_log(tag).is_file()}
    if not paths:
        raise FileNotFoundError(f"{layout.root}: no rlhf_*/train_log.csv; run stage 03 first")
    logs = {tag: pd.read_csv(path) for tag, path in paths.items()}
    return {tag: log for tag, log in logs.items() if len(log)}


def parse_run_names(compare_runs: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (the analysis.compare_runs setting); empty entries are dropped."""
    return [name.strip() for name in compare_runs.split(",") if name.strip()]


def run_dirs(layout: RunLayout, compare_runs: str) -> dict[str, RunLayout]:
    """This run and the runs named in `compare_runs`, which live beside it under the same runs_dir.

    A named run without a metrics.json and manifest.json is refused by name: a comparison that
    silently drops a run would be read as the full comparison.
    """
    runs = {layout.root.name: layout}
    parent = layout.root.parent
    for name in parse_run_names(compare_runs):
        other = RunLayout(parent / name)
        for file in (other.metrics, other.manifest):
            if not file.is_file():
                known = ", ".join(sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")))
                raise FileNotFoundError(
                    f"analysis.compare_runs: run {name!r} has no {file}; runs under {parent}: {known}"
                )
        runs[name] = other
    return runs


def run_params(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """The resolved params a run was made with, from its manifest.json (written by the runner)."""
    path = layout.manifest
    params = read_json(path, default={}).get("params")
    if not isinstance(params, Mapping):
        raise FileNotFoundError(f"{path}: missing or without 'params'; the run was not made by irlnb run")
    return dict(params)


def read_manifests(runs: Mapping[str, RunLayout]) -> dict[str, dict]:
    return {name: read_json(layout.manifest, default={}) for name, layout in runs.items()}


def hyperparameter_table(manifests: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's hyperparameter table: RLHF and IRL settings (and the policy) per run, from manifests.

    Rows are `section.setting`, one column per run, and a description column from irlnb.config; a
    setting a run's manifest lacks (an older run) is shown as missing, not guessed.
    """
    for name, manifest in manifests.items():
        if not isinstance(manifest.get("params"), Mapping):
            raise ValueError(f"run {name!r}: manifest.json has no 'params'; it was not written by irlnb run")
    # The shared rlhf settings, then the section of each kind the runs aligned with (named after the kind), then IRL's.
    kinds = {manifest["params"].get("rlhf", {}).get("trainer") for manifest in manifests.values()}
    sections = ("rlhf", *(kind for kind in ALIGNMENT_KINDS if kind in kinds), "irl")
    keys = [
        *HYPERPARAMETER_EXTRA,
        *((section, key) for section in sections for key in SECTIONS[section].__dataclass_fields__),
    ]
    rows = []
    for section, key in keys:
        row = {"setting": f"{section}.{key}"}
        for name, manifest in manifests.items():
            value = manifest["params"].get(section, {}).get(key)
            row[name] = "—" if value is None else str(value)
        row["description"] = doc(section, key)
        rows.append(row)
    return pd.DataFrame(rows, columns=["setting", *manifests, "description"])


# Headline metrics of a run, in the order the comparison table shows them.
HEADLINE_METRICS = (
    *(
        metric_names.irl_metric(None, "test", name)
        for name in (
            "accuracy_mean",
            "accuracy_sd",
            "accuracy_zero_mean",
            "f1_mean",
            "f1_sd",
            "auc_mean",
            "auc_sd",
            "spearman_mean",
        )
    ),
    metric_names.irl_fits(None),
    metric_names.irl_metric(None, "test", f"{metric_names.STARC_DISTANCE}_mean"),
    metric_names.SEED_SPEARMAN_MEDIAN,
    metric_names.irl_metric(MEAN_SHIFT.name, "test", "auc_mean"),
    metric_names.irl_metric(metric_names.CEILING, "test", "auc_mean"),
    metric_names.irl_metric(metric_names.R_STAR_COMPARISONS, "test", "auc_mean"),
    metric_names.irl_metric(metric_names.WHITE_BOX, "test", "auc_mean"),
    metric_names.posterior_metric("std_auc_wrong"),
    *(reduction_share(tag, suffix) for suffix in metric_names.SCORER_SUFFIXES for tag in RETRAINED),
    *(policy_metric(tag, metric_names.TOXICITY_MEAN) for tag in POLICIES),
    *(policy_metric(tag, metric_names.EVALUATOR + metric_names.TOXICITY_MEAN) for tag in POLICIES),
)
# The headline metrics a finished run may lack, shown as missing (NaN): the seeds' agreement needs two
# seeds or more; an objective fitted once (the default's laplace, the posterior mean) has no SD over seeds;
# runs recorded before them lack irl.fits and the STARC distance; R*'s own comparisons need two base samples
# per prompt; the white-box reward needs an expert with weights and irl.white_box; the posterior
# needs irl.posterior; notebook 05 leaves a reduction share out where R*'s own alignment reduced nothing.
OPTIONAL_HEADLINE_METRICS = frozenset(
    {
        *(metric_names.irl_metric(None, "test", f"{name}_sd") for name in ("accuracy", "f1", "auc")),
        metric_names.irl_fits(None),
        metric_names.irl_metric(None, "test", f"{metric_names.STARC_DISTANCE}_mean"),
        metric_names.irl_metric(metric_names.R_STAR_COMPARISONS, "test", "auc_mean"),
        metric_names.SEED_SPEARMAN_MEDIAN,
        metric_names.irl_metric(metric_names.WHITE_BOX, "test", "auc_mean"),
        metric_names.posterior_metric("std_auc_wrong"),
        *(reduction_share(tag, suffix) for suffix in metric_names.SCORER_SUFFIXES for tag in RETRAINED),
    }
)


def runs_table(runs: Mapping[str, RunLayout]) -> pd.DataFrame:
    """One row per run with its policy and headline metrics (IRL test accuracy/AUC, reduction shares, toxicity).

    This is the model-size comparison of the paper (70M vs 410M) for any set of finished runs.
    """
    rows = []
    for name, layout in runs.items():
        values = layout.read_metrics()
        params = read_json(layout.manifest, default={}).get("params", {})
        rows.append(
            {
                "run": name,
                "policy": params.get("sources", {}).get("policy", "—"),
                **{
                    key: float(
                        optional(values, key)
                        if key in OPTIONAL_HEADLINE_METRICS
                        else require(values, key, f"the runs comparison (run {name!r})")
                    )
                    for key in HEADLINE_METRICS
                },
            }
        )
    return pd.DataFrame(rows, columns=["run", "policy", *HEADLINE_METRICS])
