"""A run's figures, drawn only from saved artifacts (data frames read back from the run directory); the figures
across runs (the runs compared, the recoverability study) are irlnb.report.study_plots'."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from irlnb import metric_names, metrics
from irlnb.metric_names import optional, policy_metric, r_star_in, reduction_share, require

LABEL_NAMES = {0: "non-toxic", 1: "toxic"}
LABEL = "human label"
PALETTE = {LABEL_NAMES[0]: "#4C72B0", LABEL_NAMES[1]: "#C44E52"}


def curation_figure(curated: pd.DataFrame) -> plt.Figure:
    """Comment, prompt and continuation lengths by label, and the label counts per split."""
    frame = curated.assign(**{LABEL: curated["label"].map(LABEL_NAMES)})
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, column, title in zip(
        axes, ("n_words", "prompt_words", "continuation_words"), ("comment", "prompt", "original continuation")
    ):
        sns.histplot(frame, x=column, hue=LABEL, palette=PALETTE, element="step", ax=ax, binwidth=2)
        ax.set(title=f"{title} length", xlabel="words")
    counts = frame.groupby(["split", LABEL]).size().rename("comments").reset_index()
    sns.barplot(
        counts, x="split", y="comments", hue=LABEL, palette=PALETTE, ax=axes[3], order=["train", "validation", "test"]
    )
    axes[3].set(title="comments per split")
    fig.tight_layout()
    return fig


def reward_distribution_figure(scores: pd.DataFrame, classifier_name: str) -> plt.Figure:
    """The paper's Figure 2: R* split by human label, and mean R* by label (its interval a seeded bootstrap: the
    same figure from the same scores)."""
    frame = scores.assign(**{LABEL: scores["label"].map(LABEL_NAMES)})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    sns.histplot(frame, x="reward", hue=LABEL, palette=PALETTE, element="step", bins=40, ax=left)
    left.axvline(0, color="black", lw=0.8, ls="--")
    left.set(
        title=f"R* = -logit p_toxic ({classifier_name}) on prompt + original continuation", xlabel="R* (> 0: non-toxic)"
    )
    sns.barplot(frame, x=LABEL, y="reward", hue=LABEL, palette=PALETTE, errorbar=("ci", 95), seed=0, ax=right)
    right.axhline(0, color="black", lw=0.8)
    right.set(title="mean R* by human label (95% CI)", xlabel="", ylabel="mean R*")
    fig.tight_layout()
    return fig


def confusion_heatmap(ax, predicted_toxic, labels, title: str, predicted_name: str, true_name: str) -> None:
    """A 2x2 confusion matrix on `ax`, with counts and row shares (rows: true label; toxic = positive)."""
    matrix = metrics.confusion(predicted_toxic, labels)
    shares = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    annotations = np.array([[f"{matrix[i, j]}\n{shares[i, j]:.0%}" for j in range(2)] for i in range(2)])
    sns.heatmap(
        shares,
        annot=annotations,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=1,
        cbar=False,
        ax=ax,
        xticklabels=["non-toxic", "toxic"],
        yticklabels=["non-toxic", "toxic"],
    )
    ax.set(title=title, xlabel=predicted_name, ylabel=true_name)


def confusion_figure(predicted_toxic, labels, title: str, predicted_name: str, true_name: str) -> plt.Figure:
    """One confusion matrix as a figure."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    confusion_heatmap(ax, predicted_toxic, labels, title, predicted_name, true_name)
    fig.tight_layout()
    return fig


# The panels of a training log: RLOO/GRPO logs one row per step; rejection-sampling fine-tuning one row per epoch.
TRAINING_PANELS = (
    ("reward_mean", "reward (raw, mean over completions)"),
    ("reward_chosen_mean", "reward of the winners (raw)"),
    ("reward_candidates_mean", "reward of all candidates (raw)"),
    ("kl", "KL to the starting policy"),
    ("loss", "loss"),
    ("implicit_reward_margin", "DPO implicit reward: chosen - rejected"),
    ("implicit_reward_accuracy", "pairs its implicit reward orders as the reward does"),
    ("perplexity_ratio", "held-out perplexity / starting policy's"),
    ("entropy", "entropy"),
    ("completion_length", "completion length (tokens)"),
)


def rlhf_training_figure(log: pd.DataFrame, title: str) -> plt.Figure:
    """Training dynamics of one aligned policy, from its saved log (the panels its trainer logs)."""
    panels = [(column, label) for column, label in TRAINING_PANELS if column in log and log[column].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        ax.plot(log["step"], log[column], marker=".", lw=1)
        if column == "reward_mean" and "reward_std" in log:
            ax.fill_between(log["step"], log[column] - log["reward_std"], log[column] + log["reward_std"], alpha=0.2)
            ax.plot(
                log["step"], log[column].rolling(5, min_periods=1).mean(), color="black", lw=1.5, label="5-step mean"
            )
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=label, xlabel="step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Notebook 05: the paper's overview, RLHF dynamics and Table 1 (its comparison of runs: irlnb.report.study_plots)

POLICY_COLORS = {"base": "#8C8C8C", "ground_truth": "#4C72B0", "learned": "#55A868", "random": "#DD8452"}
POLICY_LABELS = {
    "base": "base policy",
    "ground_truth": "RLHF with R*",
    "learned": "RLHF with learned reward",
    "random": "RLHF with random reward",
}
POLICY_SHORT = {"base": "base", "ground_truth": "R*", "learned": "learned", "random": "random"}  # axis ticks


def _measured(values, template: str, *keys: str) -> str:
    """`template` filled with the metrics named by `keys`; a missing one is refused, naming it."""
    return template.format(*(require(values, key, "the pipeline figure") for key in keys))


def _aligned_again(values, policy: str, by_r_star: bool) -> str:
    """A retrained policy's mean p_toxic and, when the analysis defined it, its share of the expert's reduction, by
    the ground-truth classifier (`by_r_star`) or else by the independent evaluator (a run without R*)."""
    scorer, suffix = ("", "") if by_r_star else (metric_names.EVALUATOR, metric_names.SCORER_SUFFIXES[1])
    toxicity = _measured(
        values, f"mean {scorer}p_toxic {{:.3f}}", policy_metric(policy, scorer + metric_names.TOXICITY_MEAN)
    )
    # Optional: notebook 05 leaves the share out when the expert's own alignment reduced nothing (a short smoke run).
    share = optional(values, reduction_share(policy, suffix))
    if math.isnan(share):
        return toxicity + ("\nno reduction by R* to share" if by_r_star else "\nthe expert reduced nothing to share")
    return toxicity + f"\n{share:.0%} of {'R*' if by_r_star else 'the expert'}'s reduction"


STEP_BOX = (0.8, 0.62)  # width and height of a step's box in the pipeline figure (axis units: a step is 1 apart)
# Each step that aligns a policy takes the colour of its policy elsewhere; the other steps are grey.
STEP_COLORS = {
    "rlhf": POLICY_COLORS["ground_truth"],
    "learned": POLICY_COLORS["learned"],
    "random": POLICY_COLORS["random"],
}
# What each step hands over to the next: (from, to, label of the arrow).
HANDOVERS = (
    ("curate", "gt", "labelled texts"),
    ("gt", "rlhf", "reward"),
    ("rlhf", "irl", "demonstrations"),
    ("irl", "learned", "learned reward"),
)


def _pipeline_steps(values, alignment: str, by_r_star: bool) -> dict[str, tuple[float, float, str, str]]:
    """The steps of the pipeline figure, name: (x, y, title, what this run measured there). A run without R* (an
    audit of a brought expert: not `by_r_star`) shows the independent evaluator's numbers and IRL's pair accuracy."""
    scorer = "" if by_r_star else metric_names.EVALUATOR
    return {
        "curate": (
            0.0,
            1.0,
            "1. curate comments\nprompt + continuation",
            _measured(
                values, "{:.0f} train / {:.0f} test", metric_names.split_size("train"), metric_names.split_size("test")
            ),
        ),
        "gt": (
            1.0,
            1.0,
            "2. ground-truth reward\nR* = -logit p_toxic"
            if by_r_star
            else "2. no R*: an independent\nevaluator judges",
            _measured(
                values,
                "AUC vs humans {:.2f}",
                metric_names.GT_AUC_HUMAN if by_r_star else metric_names.GT_EVALUATOR_AUC_HUMAN,
            ),
        ),
        "rlhf": (
            2.0,
            1.0,
            f"3. align with R*:\n{alignment}\n(expert policy)" if by_r_star else f"3. the expert policy:\n{alignment}",
            _measured(
                values,
                f"mean {scorer}p_toxic {{:.3f}} → {{:.3f}}",
                policy_metric("base", scorer + metric_names.TOXICITY_MEAN),
                policy_metric("ground_truth", scorer + metric_names.TOXICITY_MEAN),
            ),
        ),
        "irl": (
            3.0,
            1.0,
            "4. IRL: learn $\\hat{R}$ from\nexpert vs base continuations",
            _measured(
                values,
                "test AUC {:.2f}\naccuracy {:.2f} (label-free cut)",
                metric_names.irl_metric(None, "test", "auc_mean"),
                metric_names.irl_metric(None, "test", "accuracy_label_free_mean"),
            )
            if by_r_star
            else _measured(
                values, "test pair accuracy {:.2f}", metric_names.irl_metric(None, "test", "pair_accuracy_mean")
            ),
        ),
        "learned": (
            3.0,
            0.0,
            "5. align with learned $\\hat{R}$",
            _aligned_again(values, "learned", by_r_star),
        ),
        "random": (
            2.0,
            0.0,
            "control: align with\na random reward",
            _aligned_again(values, "random", by_r_star),
        ),
    }


def _draw_step(ax, x: float, y: float, title: str, measured: str, color: str) -> None:
    """A step as a rounded box centred on (x, y): its title in bold, what the run measured below it in italics."""
    width, height = STEP_BOX
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02",
            facecolor=color,
            alpha=0.25,
            edgecolor=color,
            lw=1.5,
        )
    )
    ax.text(x, y + 0.08, title, ha="center", va="center", fontsize=10, weight="bold")
    if measured:
        ax.text(x, y - 0.18, measured, ha="center", va="center", fontsize=9, style="italic")


def _draw_handover(ax, start: tuple[float, float], end: tuple[float, float], label: str) -> None:
    """A labelled arrow from the box centred on `start` to the box centred on `end` (beside it or below it)."""
    width, height = STEP_BOX
    (x0, y0), (x1, y1) = start, end
    horizontal = y0 == y1
    begin = (x0 + width / 2, y0) if horizontal else (x0, y0 - height / 2)
    finish = (x1 - width / 2, y1) if horizontal else (x1, y1 + height / 2)
    ax.add_patch(FancyArrowPatch(begin, finish, arrowstyle="-|>", mutation_scale=16, color="black", lw=1.2))
    ax.text(
        (begin[0] + finish[0]) / 2 + (0 if horizontal else 0.05),
        (begin[1] + finish[1]) / 2 + (0.06 if horizontal else 0),
        label,
        ha="center" if horizontal else "left",
        va="bottom" if horizontal else "center",
        fontsize=8,
    )


def pipeline_figure(values, alignment: str = "RLHF") -> plt.Figure:
    """The paper's pipeline overview, drawn as boxes and arrows, annotated with this run's numbers when present
    (`alignment`: how the run aligned its policies, irlnb.rl.kinds' label of the expert's card)."""
    by_r_star = r_star_in(values)
    steps = _pipeline_steps(values, alignment, by_r_star)
    fig, ax = plt.subplots(figsize=(13, 4.6))
    for name, (x, y, title, measured) in steps.items():
        _draw_step(ax, x, y, title, measured, STEP_COLORS.get(name, "#B0B0B0"))
    for start, end, label in HANDOVERS:
        label = label if by_r_star or (start, end) != ("gt", "rlhf") else "judges"  # no R*: nothing to align with
        _draw_handover(ax, steps[start][:2], steps[end][:2], label)
    ax.text(
        0.5,
        0.0,
        "every policy is scored on held-out test prompts\nby "
        + (
            "the ground-truth classifier and an independent evaluator"
            if by_r_star
            else "an independent evaluator (no R*)"
        )
        + ";\nTable 1 compares them",
        ha="center",
        va="center",
        fontsize=9,
    )
    ax.set(xlim=(-0.5, 3.5), ylim=(-0.45, 1.45))
    ax.axis("off")
    ax.set_title("Recovering the reward a policy was aligned with, and aligning with it again")
    fig.tight_layout()
    return fig


def rlhf_dynamics_figure(logs) -> plt.Figure:
    """The paper's Fig. 5: loss, normalised reward mean and KL per step, one line per reward, from saved logs.

    The reward is each run's reward in its own normalised units (mean 0, std 1 on human texts), so
    runs with different rewards share an axis: raw R*, the learned reward and a random reward have unrelated scales.
    """
    candidates = [
        ("loss", "loss (on-policy RLOO: ~0 by construction)"),
        ("reward_normalised_mean", "reward (normalised, mean over completions)"),
        ("kl", "KL to the starting policy"),
        ("implicit_reward_margin", "DPO implicit reward: chosen - rejected"),
        ("implicit_reward_accuracy", "pairs its implicit reward orders as the reward does"),
        ("best_sample_accuracy", "InfoNCA: reward's best sample ranked first"),
        ("log_ratio_mean", "InfoNCA: mean log-ratio to the base"),
    ]
    # the panels some trainer logged (DPO logs no sampled reward or KL; RLOO no implicit reward; InfoNCA its own)
    panels = [(column, title) for column, title in candidates if any(column in log for log in logs.values())]
    if not any("kl" in log for log in logs.values()):  # the title's remark is RLOO's (which logs a KL)
        panels[0] = ("loss", "loss")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    axes = axes[0]
    for ax, (column, title) in zip(axes, panels):
        for tag, log in logs.items():
            if column not in log:  # a trainer that does not log it (rejection sampling has no KL term)
                continue
            color = POLICY_COLORS.get(tag)
            ax.plot(log["step"], log[column], lw=0.8, alpha=0.35, color=color)
            ax.plot(
                log["step"],
                log[column].rolling(5, min_periods=1).mean(),
                lw=1.8,
                color=color,
                label=POLICY_LABELS.get(tag, tag),
            )
        ax.set(title=title, xlabel="step")
    axes[-1].legend(fontsize=8, title="5-step mean; faint: per step", title_fontsize=8)
    fig.suptitle("RLHF training dynamics by reward")
    fig.tight_layout()
    return fig


def toxicity_table_figure(table: pd.DataFrame) -> plt.Figure:
    """Table 1 as bars: toxicity mean and ratio per policy, by both scorers, with 95% interval error bars (by the
    evaluator alone in a run without R*, whose table has no ground-truth columns)."""
    panels = [
        (column, title)
        for column, title in (
            ("toxicity_mean", "mean p_toxic, ground-truth classifier"),
            ("toxicity_ratio", "share p_toxic > 0.5, ground-truth classifier"),
            ("evaluator_toxicity_mean", "mean p_toxic, independent evaluator"),
            ("evaluator_toxicity_ratio", "share p_toxic > 0.5, independent evaluator"),
        )
        if column in table
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    x = np.arange(len(table))
    colors = [POLICY_COLORS.get(tag, "#8172B2") for tag in table["policy"]]
    short = POLICY_SHORT if "toxicity_mean" in table else {**POLICY_SHORT, "ground_truth": "expert"}  # no R*
    for ax, (column, title) in zip(axes, panels):
        value = table[column].to_numpy(float)
        errors = np.vstack(
            [value - table[f"{column}_ci_low"].to_numpy(float), table[f"{column}_ci_high"].to_numpy(float) - value]
        )
        ax.bar(x, value, yerr=np.nan_to_num(errors), capsize=4, color=colors)
        ax.set_xticks(x, [short.get(tag, tag) for tag in table["policy"]])
        ax.set(title=title, ylim=(0, None), xlabel="policy (aligned with which reward)")
        ax.title.set_fontsize(9)
    fig.suptitle("Toxicity of test continuations by policy (greedy; best-of-n samples), 95% bootstrap intervals")
    fig.tight_layout()
    return fig


def irl_epochs_figure(epochs: pd.DataFrame, title: str) -> plt.Figure:
    """The paper's Figure 3 for one IRL run: validation accuracy per epoch (bars), Pearson/Spearman/Kendall lines."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.bar(epochs["epoch"], epochs["human_accuracy_zero"], color="#CCB974", label="accuracy of sign(R-hat) vs sign(R*)")
    for column, color in (("human_pearson", "#4C72B0"), ("human_spearman", "#55A868"), ("human_kendall", "#C44E52")):
        ax.plot(epochs["epoch"], epochs[column], marker=".", color=color, label=column.removeprefix("human_"))
    ax.plot(epochs["epoch"], epochs["human_auc"], color="black", ls="--", label="ROC-AUC vs sign(R*)")
    ax.plot(epochs["epoch"], epochs["pair_accuracy"], color="#8172B2", ls=":", label="pair accuracy (demonstrations)")
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set(
        title=title,
        xlabel="epoch (0: initial head)",
        ylabel="validation metric",
        ylim=(min(0, epochs["human_pearson"].min()) - 0.05, 1.0),
    )
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def irl_confusion_figure(scores: pd.DataFrame, title: str) -> plt.Figure:
    """The paper's Figure 4 on held-out human texts: R-hat vs sign(R*), R-hat vs people, R* vs people."""
    human = scores[scores["set"] == "human"]
    predicted = (human["r_hat"] <= human["threshold"]).to_numpy()
    r_star_toxic = metrics.toxic_by_reward(human["r_star"])
    panels = [
        (predicted, r_star_toxic, "R-hat (validation threshold)", "sign(R*)"),
        (predicted, human["label"].to_numpy(), "R-hat (validation threshold)", "human label"),
        (r_star_toxic, human["label"].to_numpy(), "sign(R*)", "human label"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.8))
    for ax, (pred, truth, pred_name, truth_name) in zip(axes, panels):
        confusion_heatmap(ax, pred, truth, f"accuracy {metrics.accuracy(pred, truth):.1%}", pred_name, truth_name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def non_identifiability_figure(epochs: pd.DataFrame, correlations: pd.DataFrame, loss: str) -> plt.Figure:
    """The paper's Figure 6: seeds x epochs accuracy, mean +- SD per objective, and how alike the seeds' rewards are."""
    chosen = epochs[epochs["loss"] == loss]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2), gridspec_kw={"width_ratios": [1.3, 1.3, 1.2, 1]})
    for ax, column, name in (
        (axes[0], "human_accuracy_zero", "accuracy of sign(R-hat)"),
        (axes[1], "human_auc", "ROC-AUC"),
    ):
        grid = chosen.pivot_table(index="seed", columns="epoch", values=column)
        sns.heatmap(
            grid,
            cmap="viridis",
            vmin=0.3 if column.endswith("zero") else 0.5,
            vmax=1.0,
            ax=ax,
            cbar_kws={"label": name},
        )
        ax.set(title=f"{loss}: validation {name}", xlabel="epoch", ylabel="seed")
    for objective, rows in epochs.groupby("loss"):
        curve = rows.groupby("epoch")["human_accuracy_zero"].agg(["mean", "std"])
        axes[2].plot(curve.index, curve["mean"], label=objective)
        axes[2].fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.2)
    axes[2].set(
        title="validation accuracy of sign(R-hat)\nmean +- SD over seeds, per objective",
        xlabel="epoch",
        ylabel="accuracy",
    )
    axes[2].legend(fontsize=8)
    sns.heatmap(
        correlations,
        cmap="mako",
        vmin=0,
        vmax=1,
        annot=len(correlations) <= 12,
        fmt=".2f",
        ax=axes[3],
        annot_kws={"fontsize": 6},
    )
    axes[3].set(title=f"{loss}: Spearman between\nseeds' rewards (test texts)", xlabel="seed", ylabel="seed")
    fig.tight_layout()
    return fig


def posterior_contraction_figure(rows: pd.DataFrame) -> plt.Figure:
    """The posterior as evidence arrives: test ROC-AUC of its mean and its mean spread, against the number of pairs."""
    fig, left = plt.subplots(figsize=(6.4, 3.6))
    left.plot(rows["pairs"], rows["auc"], marker="o", color="#4C72B0", label="test ROC-AUC of the posterior mean")
    left.set(xscale="log", xlabel="demonstration pairs the posterior is fitted on", ylabel="ROC-AUC vs sign(R*)")
    right = left.twinx()
    right.plot(rows["pairs"], rows["std_mean"], marker="s", color="#C44E52", ls="--", label="mean posterior std")
    right.set_ylabel("mean posterior std of R-hat (test texts)")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    left.set_title("Posterior contraction: more pairs, a surer and better reward")
    fig.tight_layout()
    return fig


def layer_choice_figure(table: pd.DataFrame) -> plt.Figure:
    """Notebook 04's choice of the layer and pooling (`irl/layer_choice.csv`): each candidate's criterion, the
    validation pair log-likelihood of expert over base (mean ± SD over head seeds; R*-free), one line per pooling, the
    chosen one marked, and beside it on its own axis the validation ROC-AUC against R* where the run has R* (read,
    never chosen on)."""
    rows = table.assign(_depth=table["layer"].where(table["layer"] != -1, np.inf))
    layers = sorted(rows["layer"].unique(), key=lambda layer: np.inf if layer == -1 else layer)
    position = {layer: index for index, layer in enumerate(layers)}
    fig, left = plt.subplots(figsize=(6.4, 4.6))
    right = left.twinx() if rows["validation_auc_mean"].notna().any() else None
    for (pooling, group), color in zip(rows.sort_values("_depth").groupby("pooling"), ("#4C72B0", "#55A868")):
        x = group["layer"].map(position)
        left.errorbar(
            x,
            group["validation_pair_log_likelihood_mean"],
            yerr=group["validation_pair_log_likelihood_std"].fillna(0),
            marker="o",
            color=color,
            capsize=3,
            label=f"{pooling} pooling: validation pair log-likelihood (the criterion; no R*)",
        )
        if right is not None:
            right.plot(
                x,
                group["validation_auc_mean"],
                marker="s",
                ls="--",
                color=color,
                alpha=0.6,
                label=f"{pooling} pooling: validation ROC-AUC vs sign(R*) (reads R*: not an auditor's)",
            )
    best = table.iloc[0]
    left.scatter(
        [position[best["layer"]]],
        [best["validation_pair_log_likelihood_mean"]],
        s=160,
        facecolors="none",
        edgecolors="black",
        zorder=3,
        label=f"chosen: layer {'final' if best['layer'] == -1 else best['layer']}, {best['pooling']} pooling",
    )
    names = ["final" if layer == -1 else str(layer) for layer in layers]
    left.set(
        xticks=range(len(layers)), xticklabels=names, xlabel="hidden-state layer (block)", ylabel="pair log-likelihood"
    )
    handles = left.get_legend_handles_labels()[0]
    if right is not None:
        right.set_ylabel("ROC-AUC vs sign(R*)")
        handles += right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    left.set_title("What the reward reads (chosen without R*)")
    fig.tight_layout()
    return fig
