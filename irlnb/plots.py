"""Figures, drawn only from saved artifacts (data frames read back from the run directory)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from irlnb import metrics

LABEL_NAMES = {0: "non-toxic", 1: "toxic"}
LABEL = "human label"
PALETTE = {LABEL_NAMES[0]: "#4C72B0", LABEL_NAMES[1]: "#C44E52"}


def curation_figure(curated: pd.DataFrame) -> plt.Figure:
    """Comment, prompt and continuation lengths by label, and the label counts per split."""
    frame = curated.assign(**{LABEL: curated["label"].map(LABEL_NAMES)})
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, column, title in zip(axes, ("n_words", "prompt_words", "continuation_words"),
                                 ("comment", "prompt", "original continuation")):
        sns.histplot(frame, x=column, hue=LABEL, palette=PALETTE, element="step", ax=ax, binwidth=2)
        ax.set(title=f"{title} length", xlabel="words")
    counts = frame.groupby(["split", LABEL]).size().rename("comments").reset_index()
    sns.barplot(counts, x="split", y="comments", hue=LABEL, palette=PALETTE, ax=axes[3],
                order=["train", "validation", "test"])
    axes[3].set(title="comments per split")
    fig.tight_layout()
    return fig


def reward_distribution_figure(scores: pd.DataFrame, classifier_name: str) -> plt.Figure:
    """The paper's Figure 2: R* split by human label, and mean R* by label."""
    frame = scores.assign(**{LABEL: scores["label"].map(LABEL_NAMES)})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    sns.histplot(frame, x="reward", hue=LABEL, palette=PALETTE, element="step", bins=40, ax=left)
    left.axvline(0, color="black", lw=0.8, ls="--")
    left.set(title=f"R* = -logit p_toxic ({classifier_name}) on prompt + original continuation",
             xlabel="R* (> 0: non-toxic)")
    sns.barplot(frame, x=LABEL, y="reward", hue=LABEL, palette=PALETTE, errorbar=("ci", 95), ax=right)
    right.axhline(0, color="black", lw=0.8)
    right.set(title="mean R* by human label (95% CI)", xlabel="", ylabel="mean R*")
    fig.tight_layout()
    return fig


def confusion_figure(predicted_toxic, labels, title: str, predicted_name: str, true_name: str) -> plt.Figure:
    """A 2x2 confusion matrix with counts and row shares."""
    matrix = metrics.confusion(predicted_toxic, labels)
    shares = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    annotations = np.array([[f"{matrix[i, j]}\n{shares[i, j]:.0%}" for j in range(2)] for i in range(2)])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    sns.heatmap(shares, annot=annotations, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                xticklabels=["non-toxic", "toxic"], yticklabels=["non-toxic", "toxic"])
    ax.set(title=title, xlabel=predicted_name, ylabel=true_name)
    fig.tight_layout()
    return fig


def rlhf_training_figure(log: pd.DataFrame, title: str) -> plt.Figure:
    """Training dynamics of one RLHF run, from its saved per-step log."""
    panels = [("reward_mean", "reward (raw, mean over completions)"), ("kl", "KL to the starting policy"),
              ("loss", "loss (on-policy: ~0 by construction)"), ("entropy", "entropy"), ("completion_length", "completion length (tokens)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (column, label) in zip(axes, panels):
        ax.plot(log["step"], log[column], marker=".", lw=1)
        if column == "reward_mean" and "reward_std" in log:
            ax.fill_between(log["step"], log[column] - log["reward_std"], log[column] + log["reward_std"], alpha=0.2)
            ax.plot(log["step"], log[column].rolling(5, min_periods=1).mean(), color="black", lw=1.5,
                    label="5-step mean")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=label, xlabel="step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def toxicity_comparison_figure(table: pd.DataFrame) -> plt.Figure:
    """Toxicity mean with 95% intervals per policy, by the ground-truth classifier and the evaluator."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=False)
    for ax, (prefix, label) in zip(axes, (("", "ground-truth classifier"), ("evaluator_", "independent evaluator"))):
        mean = table[f"{prefix}toxicity_mean"]
        errors = [mean - table[f"{prefix}toxicity_mean_ci_low"], table[f"{prefix}toxicity_mean_ci_high"] - mean]
        ax.bar(table["policy"], mean, yerr=errors, capsize=4, color="#8172B2")
        ax.set(title=f"mean p_toxic of greedy continuations\n({label}, 95% CI)", ylabel="mean p_toxic")
    fig.tight_layout()
    return fig
