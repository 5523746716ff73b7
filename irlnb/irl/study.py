"""Step 4 of the paper, judged honestly: objectives x seeds, each run's epoch chosen on validation, test scored once.

Every epoch is judged after its updates, on validation only (`irlnb.irl.judging`). Each run's epoch is chosen by
validation pair accuracy (which needs no R*), the threshold of R-hat on validation human texts; test numbers are
computed once for every seed and reported as mean and SD over seeds. The seeds are also the non-identifiability
study: the same data, other initialisations and orders. The objectives fitted once and the references are scored
the same way, as one 'seed' each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names, metrics
from irlnb.irl.feature_sets import PairSet, TextSet, rewards_of
from irlnb.irl.fitting import SeededFit, fit_head
from irlnb.irl.judging import SELECTION_METRIC, chosen_epoch, judge, scored_test_texts, test_row
from irlnb.irl.within_prompt import GAP_BINS, TEXT_STATISTICS, gap_label, paired_difference
from irlnb.layout import RunLayout, read_json
from irlnb.objectives import AUTO, OBJECTIVES

VALIDATION_REPETITION_SHIFT = "validation_repetition_shift"


@dataclass
class StudyResult:
    epochs: pd.DataFrame  # loss, seed, epoch, train_loss, validation metrics
    test: pd.DataFrame  # loss, seed, chosen epoch, threshold, test metrics
    scores: (
        pd.DataFrame
    )  # loss, seed, set, pair, text, r_star, r_hat, label, threshold: test rewards of every chosen head
    heads: dict[tuple[str, int], torch.nn.Linear]  # the chosen head of every (loss, seed), on standardised features


def fit_irl_study(
    train: PairSet,
    validation: tuple[TextSet, PairSet],
    test: tuple[TextSet, PairSet],
    test_texts: dict[str, list[str]],
    *,
    fits: list[SeededFit],
    seeds: int,
    fixed_heads: dict[str, torch.nn.Linear] | None = None,
    within_prompt: tuple[TextSet, np.ndarray] | None = None,
) -> StudyResult:
    """Fit every seeded objective over `seeds` seeds; choose each run's epoch on validation; score it once on test.

    `fixed_heads` (the objectives fitted once, `irlnb.irl.fitting.one_fits`, and the references,
    `irlnb.irl.references`) are scored the same way, as one 'seed' each. With `within_prompt` (the test prompts'
    continuations, `FeatureSets.within_prompt`), every test row also says how the head orders a prompt's
    continuations.
    """
    validation_human, validation_pairs = validation
    epoch_rows, test_rows, score_frames, chosen_heads = [], [], [], {}
    runs = []
    for fit in fits:
        name = fit.objective.name
        for seed in range(seeds):
            history, heads = fit_head(
                train,
                fit,
                seed,
                lambda epoch, head: judge(head, validation_human, validation_pairs, threshold=0.0),
            )
            epoch_rows += [{"loss": name, "seed": seed, **row} for row in history]
            chosen = chosen_epoch(history)
            runs.append((name, seed, chosen, heads[chosen], history[chosen]))
    for name, head in (fixed_heads or {}).items():
        runs.append((name, 0, 0, head, judge(head, validation_human, validation_pairs, 0.0)))
    for loss, seed, epoch, head, on_validation in runs:
        row = test_row(head, validation, test, within_prompt)
        test_rows.append(
            {
                "loss": loss,
                "seed": seed,
                "epoch": epoch,
                f"validation_{SELECTION_METRIC}": on_validation[SELECTION_METRIC],
                # R*-free, and it does not saturate: the criterion an auditor can choose between objectives by
                "validation_pair_log_likelihood": on_validation["pair_log_likelihood"],
                # ROC-AUC vs sign(R*) of validation human texts (none without R*)
                "validation_auc": on_validation.get("human_auc", np.nan),
                # R*-free: what it pays for a validation human text said twice (the saved reward's length guard)
                VALIDATION_REPETITION_SHIFT: on_validation.get("repetition_shift", np.nan),
                **row,
            }
        )
        score_frames.append(
            scored_test_texts(
                test,
                test_texts,
                lambda texts, head=head, threshold=row["threshold"]: {
                    "r_hat": rewards_of(head, texts),
                    "label": texts.labels,
                    "threshold": threshold,
                },
                loss=loss,
                seed=seed,
            )
        )
        chosen_heads[(loss, seed)] = head
    return StudyResult(
        pd.DataFrame(epoch_rows), pd.DataFrame(test_rows), pd.concat(score_frames, ignore_index=True), chosen_heads
    )


WITHIN_PROMPT_COLUMNS = (
    "within_prompt_spearman",
    "within_prompt_spearman_ci_low",
    "within_prompt_spearman_ci_high",
    "within_prompt_pair_accuracy",
    *(f"within_prompt_pair_accuracy_{gap_label(low, high)}" for low, high in zip(GAP_BINS[:-1], GAP_BINS[1:])),
)
HEADLINE = {
    "accuracy": "human_accuracy",
    "accuracy_zero": "human_accuracy_zero",
    "accuracy_label_free": "human_accuracy_label_free",
    "f1": "human_f1",
    "f1_zero": "human_f1_zero",
    "auc": "human_auc",
    "auc_human": "human_auc_human",
    "pearson": "human_pearson",
    "spearman": "human_spearman",
    "kendall": "human_kendall",
    "pair_accuracy": "pair_accuracy",
    "demos_accuracy": "demos_accuracy",
    "demos_auc": "demos_auc",
    "demos_spearman": "demos_spearman",
    metric_names.STARC_DISTANCE: metric_names.STARC_DISTANCE,  # both sides of the test pairs, per-prompt groups
    "expert_log_ratio": "expert_log_ratio_mean",  # KL(expert || base) estimate, white-box rows only
    # within the test prompts (irlnb.irl.within_prompt), and what else R-hat tracks on the human texts
    **{name: name for name in WITHIN_PROMPT_COLUMNS},
    **{f"{name}_spearman": f"{name}_spearman" for name in TEXT_STATISTICS},
    "repetition_shift": "repetition_shift",  # what R-hat pays for a held-out text said twice (irlnb.metrics)
    "epoch": "epoch",
    "validation_auc": "validation_auc",  # what choices were made on (reads R*: never the test numbers)
    "pair_log_likelihood": "pair_log_likelihood",
    "validation_pair_log_likelihood": "validation_pair_log_likelihood",  # R*-free (irlnb.metrics)
    "validation_pair_accuracy": f"validation_{SELECTION_METRIC}",
}


def summary_metrics(test: pd.DataFrame, chosen_loss: str) -> dict[str, float]:
    """irl.<loss>.test.<metric>_mean/_sd over seeds for each loss, and irl.test.* for the chosen loss
    (irl.<loss>.validation.auc_*: the validation ROC-AUC choices are made on).

    irl.<loss>.fits counts the fits a loss's means average. A loss fitted once (the floor, the ceiling, the
    posterior mean, the white-box reward: deterministic, one row each) has `_mean` keys only: no `_sd`, no
    accuracy_min/max, which would read as a spread over seeds that was never measured.

    `accuracy`/`f1` use the threshold fitted on validation; `accuracy_zero`/`f1_zero` read sign(R-hat)
    at zero, the paper's metric. Human texts are the curated test split (prompt + original continuation).
    """
    values = {}
    for loss, rows in test.groupby("loss"):
        fits = len(rows)
        for objective in [loss] + ([None] if loss == chosen_loss else []):
            values[metric_names.irl_fits(objective)] = float(fits)
        for name, column in HEADLINE.items():
            if column not in rows:
                continue
            column_values = rows[column].dropna().to_numpy(dtype=np.float64)
            if column_values.size == 0:
                continue
            split = "validation" if name.startswith("validation_") else "test"
            key = name.removeprefix("validation_")
            for objective in [loss] + ([None] if loss == chosen_loss else []):  # None: the chosen objective
                values[metric_names.irl_metric(objective, split, f"{key}_mean")] = float(column_values.mean())
                if fits == 1 or column_values.size == 1:  # one fit: no spread to report
                    continue
                values[metric_names.irl_metric(objective, split, f"{key}_sd")] = float(column_values.std(ddof=1))
                if name == "accuracy":
                    values[metric_names.irl_metric(objective, split, "accuracy_min")] = float(column_values.min())
                    values[metric_names.irl_metric(objective, split, "accuracy_max")] = float(column_values.max())
    values[metric_names.IRL_SEEDS] = float(test["seed"].nunique())
    return values


def seed_correlations(scores: pd.DataFrame, loss: str) -> pd.DataFrame:
    """Pairwise Spearman correlation between the seeds' rewards on the same test texts (human and demonstrations)."""
    wide = scores[scores["loss"] == loss].pivot_table(index=["set", "pair", "text"], columns="seed", values="r_hat")
    return wide.corr(method="spearman")


def seed_agreement(correlations: pd.DataFrame) -> dict[str, float]:
    """Median and minimum Spearman correlation between two different seeds' rewards."""
    values = correlations.to_numpy()
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    if off_diagonal.size == 0:
        return {}
    return {
        metric_names.SEED_SPEARMAN_MEDIAN: float(np.median(off_diagonal)),
        metric_names.SEED_SPEARMAN_MIN: float(off_diagonal.min()),
    }


def best_seed(test: pd.DataFrame, loss: str) -> int:
    """The seed whose chosen epoch has the best validation pair accuracy (never a test number); ties: lowest seed."""
    rows = test[test["loss"] == loss].sort_values("seed")
    return int(rows.loc[rows[f"validation_{SELECTION_METRIC}"].idxmax(), "seed"])


def within_prompt_against(
    result: StudyResult, within_prompt: tuple[TextSet, np.ndarray], first: tuple[str, int], second: tuple[str, int]
) -> dict[str, float]:
    """How much better the head `first` (objective, seed) orders the test prompts' continuations than `second`: the
    mean over prompts of the difference of their per-prompt Spearman correlations with R*, with a paired bootstrap
    interval over prompts (`irl.test.within_prompt_spearman_vs_<second>`, for the saved reward against `second`);
    nothing without R*."""
    texts, groups = within_prompt
    if not metrics.has_r_star(texts.r_star):
        return {}
    r_first, r_second = (rewards_of(result.heads[key], texts) for key in (first, second))
    difference, low, high = paired_difference(r_first, r_second, texts.r_star, groups)
    key = metric_names.within_prompt_vs(second[0])
    return dict(zip((key, *metric_names.interval(key)), (difference, low, high)))


def objective_ranking(test_by_fit: pd.DataFrame, saved: str) -> pd.DataFrame:
    """Every reward of the study ranked by what an auditor can choose by: validation pair log-likelihood (R*-free,
    `irlnb.metrics.pair_log_likelihood`), mean over seeds, with validation pair accuracy and what the reward pays for
    a validation human text said twice (`validation_repetition_shift`, R*-free) beside it, and validation ROC-AUC
    against R* (which an auditor does not have: shown for reading, never for the choice); `saved` marks the objective
    whose reward was saved (`saved_objective`)."""
    columns = [
        "validation_pair_log_likelihood",
        f"validation_{SELECTION_METRIC}",
        VALIDATION_REPETITION_SHIFT,
        "validation_auc",
    ]
    present = [column for column in columns if column in test_by_fit]
    table = test_by_fit.dropna(subset=present[:1]).groupby("loss")[present].mean()
    table = table.sort_values(present[0], ascending=False).rename(
        columns={"validation_auc": "validation_auc (reads R*; not an auditor's)"}
    )
    table["candidate"] = table.index.isin(list(OBJECTIVES))  # references and the white box are not IRL objectives
    table["saved"] = table.index == saved
    return table


def saved_objective(test_by_fit: pd.DataFrame, loss: str, max_repetition_shift: float) -> str:
    """The objective whose reward is saved: `irl.loss`, or with `auto` the candidate objective ranked first by
    validation pair log-likelihood (`objective_ranking`) among those that pay at most `max_repetition_shift` (mean
    over seeds, in size) for a validation human text said twice; when none does, the one that pays least. A choice
    that reads no R*: a reward that buys a sliver of pair likelihood with length is not saved."""
    if loss != AUTO:
        return loss
    ranking = objective_ranking(test_by_fit, saved="")
    candidates = ranking[ranking["candidate"]]
    if VALIDATION_REPETITION_SHIFT not in candidates or candidates[VALIDATION_REPETITION_SHIFT].isna().all():
        return str(candidates.index[0])  # no text was read said twice: the likelihood alone
    shift = candidates[VALIDATION_REPETITION_SHIFT].abs()
    within = candidates[shift <= max_repetition_shift]
    return str(within.index[0] if len(within) else shift.idxmin())


def length_guard_report(ranking: pd.DataFrame, max_repetition_shift: float) -> str:
    """In plain words, what the saved reward pays for a validation human text said twice (`objective_ranking`'s
    `validation_repetition_shift`) against `irl.max_repetition_shift`, and which objectives ranked above it were
    passed over for paying more; a caution when the saved reward pays more itself. Empty when no text was read said
    twice."""
    if VALIDATION_REPETITION_SHIFT not in ranking or not ranking["saved"].any():
        return ""
    saved = str(ranking.index[ranking["saved"]][0])
    shift = float(ranking.loc[saved, VALIDATION_REPETITION_SHIFT])
    if not np.isfinite(shift):
        return ""
    said = (
        f"the saved reward ({saved}) pays {shift:+.2f} of its spread for a validation human text said twice over "
        f"(irl.max_repetition_shift: {max_repetition_shift:g})"
    )
    if abs(shift) > max_repetition_shift:
        return f"Caution: {said}, more than allowed: its scores carry length as well as what the texts say."
    above = ranking.loc[:saved].iloc[:-1]
    over = above[above["candidate"] & (above[VALIDATION_REPETITION_SHIFT].abs() > max_repetition_shift)]
    if over.empty:
        return said[0].upper() + said[1:] + "."
    passed = ", ".join(f"{name} ({value:+.2f})" for name, value in over[VALIDATION_REPETITION_SHIFT].items())
    verb = "was" if len(over) == 1 else "were"
    return f"{said[0].upper() + said[1:]}; ranked above it, {passed} paid more and {verb} passed over."


def saved_objective_of(layout: RunLayout) -> str:
    """The objective a finished stage 04 saved, read back from its objective ranking (a run older than the ranking's
    `saved` column saved its params' irl.loss)."""
    if layout.objective_ranking.is_file():
        ranking = pd.read_csv(layout.objective_ranking, index_col=0)
        if "saved" in ranking:
            return str(ranking.index[ranking["saved"]][0])
    return str(read_json(layout.manifest, default={})["params"]["irl"]["loss"])
