"""Figures across runs, drawn only from saved artifacts: the runs compared side by side (notebook 05's
`analysis.compare_runs`) and the recoverability study's points (`irlnb recoverability`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from irlnb import metric_names
from irlnb.metric_names import policy_metric, reduction_share, require
from irlnb.objectives import MEAN_SHIFT
from irlnb.report.plots import POLICY_COLORS, POLICY_LABELS
from irlnb.rl.kinds import KINDS


def runs_comparison_figure(table: pd.DataFrame) -> plt.Figure:
    """Several runs side by side (the paper's model-size comparison): the learned reward's test accuracy, F1 and
    ROC-AUC (± SD over seeds; no bar where the saved reward is one deterministic fit) with its mean-shift baseline,
    ceiling and R*'s own comparisons; how much the seeds agree; Table 1; the reduction shares."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.0))
    x = np.arange(len(table))
    labels = [f"{run}\n{policy}" for run, policy in zip(table["run"], table["policy"])]
    width = 0.26

    def column(name: str) -> pd.Series:
        """A column of the runs table (`irlnb.report.tables.runs_table`); NaN where a run lacks an optional metric."""
        return require(table, name, "the runs comparison figure")

    for offset, (name, label, color) in zip(
        (-width, 0.0, width),
        (("accuracy", "accuracy", "#4C72B0"), ("f1", "F1 (toxic)", "#CCB974"), ("auc", "ROC-AUC", "#55A868")),
    ):
        # NaN where the saved objective was fitted once (no SD over seeds): no error bar
        errors = column(metric_names.irl_metric(None, "test", f"{name}_sd")).fillna(0)
        axes[0].bar(
            x + offset,
            column(metric_names.irl_metric(None, "test", f"{name}_mean")),
            width,
            yerr=errors,
            capsize=3,
            label=label,
            color=color,
        )
    for objective, color, label in (
        (MEAN_SHIFT.name, "black", "mean-shift baseline, AUC"),
        (metric_names.CEILING, "#C44E52", "ceiling (supervised on sign(R*), not IRL), AUC"),
        (metric_names.R_STAR_COMPARISONS, "#55A868", "R*'s own comparisons (reference, not IRL), AUC"),
    ):
        key = metric_names.irl_metric(objective, "test", "auc_mean")
        axes[0].scatter(x + width, column(key), marker="_", s=400, color=color, label=label, zorder=3)
    axes[0].axhline(0.5, color="black", lw=0.6, ls="--")
    axes[0].set(title="learned reward vs R* on held-out test texts", ylim=(0, 1))
    axes[1].bar(
        x - width / 2,
        column(metric_names.SEED_SPEARMAN_MEDIAN),
        width,
        color="#8172B2",
        label="median Spearman between seeds' rewards",
    )
    accuracy_sd = column(metric_names.irl_metric(None, "test", "accuracy_sd"))
    axes[1].bar(x + width / 2, accuracy_sd * 10, width, color="#937860", label="SD of test accuracy over seeds (x10)")
    for position, fits in zip(x, column(metric_names.irl_fits(None))):
        if fits == 1:  # the saved reward is one deterministic fit: there is no SD to draw
            axes[1].text(position + width / 2, 0.02, "one fit", rotation=90, ha="center", va="bottom", fontsize=7)
    axes[1].set(title="non-identifiability: how much the seeds agree", ylim=(0, 1.05))
    tags = list(POLICY_COLORS)
    step = 0.8 / len(tags)
    for i, tag in enumerate(tags):
        axes[2].bar(
            x - 0.4 + step * (i + 0.5),
            column(policy_metric(tag, metric_names.TOXICITY_MEAN)),
            step,
            color=POLICY_COLORS[tag],
            label=POLICY_LABELS[tag],
        )
    axes[2].set(title="Table 1: mean p_toxic of test continuations")
    for offset, tag in ((-width / 2, "learned"), (width / 2, "random")):
        axes[3].bar(
            x + offset,
            column(reduction_share(tag)),
            width,
            color=POLICY_COLORS[tag],
            label=POLICY_LABELS[tag],
        )
    axes[3].axhline(1.0, color=POLICY_COLORS["ground_truth"], lw=1, ls="--", label="R*'s own reduction")
    axes[3].axhline(0.0, color="black", lw=0.8)
    axes[3].set(title="share of R*'s toxicity reduction (GT classifier)")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlim(-0.6, len(table) - 0.4)  # a run without a value keeps its slot
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.suptitle("Runs compared (model sizes, or any runs named in analysis.compare_runs)")
    fig.tight_layout()
    return fig


METHOD_STYLES = {
    "irl": ("IRL (saved objective)", "#4C72B0", "-"),
    "floor": ("mean-shift baseline", "#8C8C8C", ":"),
    "ceiling": ("ceiling: supervised on R*", "#55A868", "--"),
    "r_star_comparisons": ("reference: R*'s own comparisons", "#DD8452", (0, (5, 1, 1, 1))),
    "white_box": ("white-box log-ratio", "#C44E52", "-."),
}


def _spread(axis, stats: pd.DataFrame, **style) -> None:
    """Mean with min-max bars (over alignment seeds) of a groupby().agg(["mean", "min", "max"]) frame."""
    axis.errorbar(
        stats.index,
        stats["mean"],
        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
        capsize=3,
        **style,
    )


def _fidelity_by_budget(top, table: pd.DataFrame, kind: str) -> None:
    """One kind's IRL test ROC-AUC and its references against its budget (mean, min-max over seeds), with the
    full-size point of the default run as a star."""
    rows = table[(table["design"] == "reduced") & (table["kind"] == kind)].groupby("value")
    full = table[table["design"] == "full"]
    for method, (label, color, style) in METHOD_STYLES.items():
        stats = rows[f"{method}_auc"].agg(["mean", "min", "max"]).dropna() if len(rows) else pd.DataFrame()
        if not stats.empty:
            _spread(top, stats, color=color, ls=style, marker="o", label=label)
        calibration = full[full["kind"] == kind]
        if len(calibration) and not calibration[f"{method}_auc"].isna().all():
            top.scatter(calibration["value"], calibration[f"{method}_auc"], color=color, marker="*", s=110, zorder=3)
    top.axhline(0.5, color="black", lw=0.6, ls="--")
    top.set(title=KINDS[kind].budget_label, ylabel="test ROC-AUC vs sign(R*)", ylim=(0.45, 1.0))
    top.set_xscale("log", base=2)


def _expert_by_budget(bottom, table: pd.DataFrame, kind: str) -> None:
    """One kind's expert against its budget: toxicity reduction and KL (mean, min-max over seeds), and, on a twin
    axis, its perplexity ratio; one legend for both axes."""
    rows = table[(table["design"] == "reduced") & (table["kind"] == kind)].groupby("value")
    for quantity, color in (("toxicity_reduction", "#4C72B0"), ("kl", "#C44E52")):
        stats = rows[quantity].agg(["mean", "min", "max"]).dropna() if len(rows) else pd.DataFrame()
        if len(stats):
            _spread(bottom, stats, color=color, marker="o", label=quantity.replace("_", " "))
    twin = bottom.twinx()
    if len(rows):
        ratio = rows["perplexity_ratio"].mean().dropna()
        twin.plot(ratio.index, ratio, color="#8172B2", marker="s", ls=":", label="perplexity ratio")
    twin.set_ylabel("perplexity / base")
    bottom.set(xlabel=KINDS[kind].budget_axis, ylabel="reduction of GT toxicity; KL (nats)")
    bottom.set_xscale("log", base=2)
    handles, labels = (
        sum(pair, []) for pair in zip(bottom.get_legend_handles_labels(), twin.get_legend_handles_labels())
    )
    if handles:  # one legend for both axes, drawn on the twin so that no line crosses it
        twin.legend(handles, labels, fontsize=7, loc="upper left")


def _recovered_against_learned(scatter, table: pd.DataFrame, kinds: list[str]) -> None:
    """IRL's Spearman with R* against the white-box log-ratio's (how far the expert learned R*), one marker per
    point and seed, a point's seeds joined by a line."""
    for kind in kinds:
        record = KINDS[kind]
        for design, marker, size in (("reduced", "o", 30), ("full", "*", 140)):
            rows = table[(table["kind"] == kind) & (table["design"] == design)].dropna(subset=["white_box_spearman"])
            if len(rows):
                scatter.scatter(
                    rows["white_box_spearman"],
                    rows["irl_spearman"],
                    color=record.colour,
                    marker=marker,
                    s=size,
                    label=record.short_label if design == "reduced" else None,
                )
            if design == "reduced":  # a point's alignment seeds joined, so that its seed spread shows
                for _, seeds in rows.groupby("value"):
                    scatter.plot(
                        seeds["white_box_spearman"], seeds["irl_spearman"], color=record.colour, lw=0.6, alpha=0.5
                    )
    scatter.axline((0, 0), slope=1, color="black", lw=0.6, ls="--")
    scatter.set(
        xlabel="white-box log-ratio: Spearman with R* (how far the expert learned R*)",
        ylabel="IRL reward: test Spearman with R*",
        title="Does IRL recover what the policy learned?",
    )
    if scatter.get_legend_handles_labels()[0]:  # none where no expert has weights
        scatter.legend(fontsize=7, loc="lower right")


def recoverability_figure(table: pd.DataFrame) -> plt.Figure:
    """Top: IRL test ROC-AUC against the kind and budget of the expert (mean over alignment seeds, bars: min-max),
    with the mean-shift baseline, the ceiling, R*'s own comparisons and the white-box reward; the full-size point of
    the default run as a star. Below: each expert's toxicity reduction, KL and perplexity. Right: IRL's Spearman with R*
    against the white-box log-ratio's (how far the expert learned R*), one marker per point and seed, a point's seeds
    joined by a line."""
    kinds = [kind for kind in KINDS if kind in set(table["kind"])]
    fig = plt.figure(figsize=(4.6 * (len(kinds) + 1), 7.6))
    grid = fig.add_gridspec(2, len(kinds) + 1)
    for column, kind in enumerate(kinds):
        top, bottom = fig.add_subplot(grid[0, column]), fig.add_subplot(grid[1, column])
        _fidelity_by_budget(top, table, kind)
        _expert_by_budget(bottom, table, kind)
        budgets = sorted(set(table.loc[table["kind"] == kind, "value"]))
        for axis in (top, bottom):
            axis.set_xticks(budgets, [f"{value:g}" for value in budgets])
            axis.minorticks_off()
        if column == 0:  # one legend for every top panel, above them, where it hides no point
            top.scatter([], [], color="black", marker="*", s=80, label="default run (full size)")
            fig.legend(*top.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=6)
    _recovered_against_learned(fig.add_subplot(grid[:, len(kinds)]), table, kinds)
    fig.suptitle("When can the reward be recovered? IRL fidelity against how the expert was aligned", y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


RECOVERY_BARS = (  # (column of the recovery table, label, colour)
    ("spearman", "R̂ vs its true reward, across prompts", "tab:blue"),
    ("within_prompt_spearman", "R̂ vs its true reward, within prompts", "tab:cyan"),
    ("mean_shift_spearman", "mean-shift baseline, across prompts", "tab:gray"),
    ("ceiling_spearman", "ceiling: the head fitted on the true reward (not IRL)", "tab:olive"),
    ("length_tokens_spearman", "R̂ vs text length (tokens)", "tab:red"),
    ("log_ratio_within_prompt_spearman", "expert's log-ratio, within prompts (white box)", "tab:green"),
)


def recovery_figure(table: pd.DataFrame) -> plt.Figure:
    """The recovery suite (`irlnb recovery`): per expert (its reward, its alignment kind), the saved reward's
    Spearman correlation with the expert's own reward on held-out human texts, across prompts and within them,
    beside the mean-shift baseline, R̂'s correlation with length, and how far the expert's own log-ratio orders a
    prompt's continuations as its reward does (no bar where the expert has no weights)."""
    fig, axis = plt.subplots(figsize=(max(7.0, 1.6 * len(table) + 2), 4.2))
    x = np.arange(len(table))
    width = 0.8 / len(RECOVERY_BARS)
    for index, (column, label, color) in enumerate(RECOVERY_BARS):
        values = table[column] if column in table else pd.Series(np.nan, index=table.index)
        axis.bar(x + (index - (len(RECOVERY_BARS) - 1) / 2) * width, values, width, label=label, color=color)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(x, [f"{reward}\n{kind}" for reward, kind in zip(table["reward"], table["kind"])])
    axis.set_ylabel("Spearman correlation (held-out human texts)")
    axis.set_ylim(-1, 1)
    axis.set_title("Recovery of rewards the pipeline was not told: one run per expert")
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    return fig
