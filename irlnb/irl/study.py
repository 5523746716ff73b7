"""Step 4 of the paper, judged honestly: objectives x seeds, each run's epoch chosen on validation, test scored once.

Every epoch is judged after its updates, on validation only. Each run's epoch is chosen by
validation pair accuracy (which needs no R*), the threshold of R-hat on validation human texts;
test numbers are computed once for every seed and reported as mean and SD over seeds. The seeds
are also the non-identifiability study: the same data, other initialisations and orders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names, metrics
from irlnb.irl.baselines import mean_shift_head, supervised_head
from irlnb.irl.demonstrations import used_pairs
from irlnb.irl.feature_sets import PairSet, Standardizer, TextSet, prompt_ids, rewards_of
from irlnb.irl.objectives import Objective, fit_head
from irlnb.irl.posterior import Posterior, contraction, fit_posterior, uncertainty_metrics
from irlnb.layout import RunLayout
from irlnb.rewards.features import FeatureReward, load_reward, score_tolerance
from irlnb.rewards.likelihood import LogRatioReward
from irlnb.rl.policy_card import PolicyCard

SELECTION_METRIC = "pair_accuracy"  # validation pair accuracy: chosen from behaviour alone, without R*


def judge(head: torch.nn.Linear, human: TextSet, pairs: PairSet, threshold: float) -> dict[str, float]:
    """Every metric of one head on one split: human texts, and the demonstrations (both sides)."""
    return judge_rewards(
        rewards_of(head, human),
        rewards_of(head, pairs.expert),
        rewards_of(head, pairs.non_expert),
        human,
        pairs,
        threshold,
    )


def judge_rewards(
    r_human: np.ndarray,
    r_expert: np.ndarray,
    r_non_expert: np.ndarray,
    human: TextSet,
    pairs: PairSet,
    threshold: float,
) -> dict[str, float]:
    """Every metric of a reward's scores on one split (any reward: a head, the white-box log-ratio).

    With the pairs' prompts known, `starc_distance` compares R-hat with R* on both sides of every pair, each
    prompt's texts canonicalised together (`irlnb.metrics.starc_distance`).
    """
    values = {f"human_{k}": v for k, v in metrics.agreement(r_human, human.r_star, threshold, human.labels).items()}
    at_zero = metrics.agreement(r_human, human.r_star, 0.0)
    values.update({f"human_{k}_zero": at_zero[k] for k in ("accuracy", "f1")})
    demo_r_hat = np.concatenate([r_expert, r_non_expert])
    demo_r_star = np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star])
    values.update({f"demos_{k}": v for k, v in metrics.agreement(demo_r_hat, demo_r_star, threshold).items()})
    values["pair_accuracy"] = metrics.pair_accuracy(r_expert, r_non_expert)
    if pairs.prompt_ids is not None:
        groups = np.concatenate([pairs.prompt_ids, pairs.prompt_ids])
        values[metric_names.STARC_DISTANCE] = metrics.starc_distance(demo_r_hat, demo_r_star, groups)
    return values


@dataclass
class StudyResult:
    epochs: pd.DataFrame  # loss, seed, epoch, train_loss, validation metrics
    test: pd.DataFrame  # loss, seed, chosen epoch, threshold, test metrics
    scores: (
        pd.DataFrame
    )  # loss, seed, set, pair, text, r_star, r_hat, label, threshold: test rewards of every chosen head
    heads: dict[tuple[str, int], torch.nn.Linear]  # the chosen head of every (loss, seed), on standardised features


def label_free_threshold(head: torch.nn.Linear, validation_pairs: PairSet) -> float:
    """A threshold from demonstrations alone: the cut that best separates the expert's validation texts
    (read as the aligned side) from the non-expert's, by R-hat. It reads no R* and no human label."""
    r_expert, r_non_expert = rewards_of(head, validation_pairs.expert), rewards_of(head, validation_pairs.non_expert)
    sides = np.concatenate([np.ones(len(r_expert)), -np.ones(len(r_non_expert))])  # +1 aligned, -1 not
    return metrics.fit_threshold(np.concatenate([r_expert, r_non_expert]), sides)


def test_row(head: torch.nn.Linear, validation: tuple[TextSet, PairSet], test: tuple[TextSet, PairSet]) -> dict:
    """One head's test metrics: at the validation-fitted threshold (reads R* of validation human texts), at zero,
    and at the label-free threshold (`human_accuracy_label_free`, reads nothing but demonstrations)."""
    validation_human, validation_pairs = validation
    test_human, test_pairs = test
    threshold = metrics.fit_threshold(rewards_of(head, validation_human), validation_human.r_star)
    free = label_free_threshold(head, validation_pairs)
    label_free = metrics.agreement(rewards_of(head, test_human), test_human.r_star, free)
    return {
        "threshold": threshold,
        "threshold_label_free": free,
        **judge(head, test_human, test_pairs, threshold),
        "human_accuracy_label_free": label_free["accuracy"],
        "human_f1_label_free": label_free["f1"],
    }


def fit_irl_study(
    train: PairSet,
    validation: tuple[TextSet, PairSet],
    test: tuple[TextSet, PairSet],
    test_texts: dict[str, list[str]],
    *,
    objectives: list[Objective],
    seeds: int,
    fixed_heads: dict[str, torch.nn.Linear] | None = None,
) -> StudyResult:
    """Fit every objective over `seeds` seeds; choose each run's epoch on validation; score it once on test.

    `fixed_heads` (the floor and the ceiling, see `irlnb.irl.baselines`) are scored the same way,
    as one 'seed' each.
    """
    validation_human, validation_pairs = validation
    epoch_rows, test_rows, score_frames, chosen_heads = [], [], [], {}
    runs = []
    for objective in objectives:
        for seed in range(seeds):
            history, heads = fit_head(
                train,
                objective,
                seed,
                lambda epoch, head: judge(head, validation_human, validation_pairs, threshold=0.0),
            )
            epoch_rows += [{"loss": objective.loss, "seed": seed, **row} for row in history]
            chosen = max(range(1, len(history)), key=lambda e: (history[e][SELECTION_METRIC], -e))
            runs.append((objective.loss, seed, chosen, heads[chosen], history[chosen]))
    for name, head in (fixed_heads or {}).items():
        runs.append((name, 0, 0, head, judge(head, validation_human, validation_pairs, 0.0)))
    for loss, seed, epoch, head, on_validation in runs:
        row = test_row(head, validation, test)
        test_rows.append(
            {
                "loss": loss,
                "seed": seed,
                "epoch": epoch,
                f"validation_{SELECTION_METRIC}": on_validation[SELECTION_METRIC],
                "validation_auc": on_validation["human_auc"],  # ROC-AUC vs sign(R*) of validation human texts
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


def scored_test_texts(
    test: tuple[TextSet, PairSet],
    texts: dict[str, list[str]],
    scores: Callable[[TextSet], dict],
    **leading,
) -> pd.DataFrame:
    """One row per test text (human, expert, non-expert): the `leading` columns (constants), its set, pair
    (-1 for human texts), text and R*, then the columns `scores` gives for the texts of one set."""
    human, pairs = test
    frames = []
    for name, text_set in (("human", human), ("expert", pairs.expert), ("non_expert", pairs.non_expert)):
        n = len(text_set.r_star)
        frames.append(
            pd.DataFrame(
                {
                    **leading,
                    "set": name,
                    "pair": np.arange(n) if name != "human" else -1,
                    "text": texts[name],
                    "r_star": text_set.r_star,
                    **scores(text_set),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


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
    "epoch": "epoch",
    "validation_auc": "validation_auc",  # what choices are made on (never the test numbers)
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


def save_learned_reward(
    reader: FeatureReward,
    head: torch.nn.Linear,
    standardizer: Standardizer,
    folder: Path,
    covariance: torch.Tensor | None = None,
) -> Path:
    """The chosen head as a reward on raw backbone features, saved for notebook 03 and auditors
    (with the posterior covariance of its weights when it is a posterior mean)."""
    folded = standardizer.fold(head).to(reader.device)
    posterior = None if covariance is None else standardizer.fold_covariance(covariance)
    return FeatureReward(reader.spec, reader.backbone, reader.tokenizer, folded, posterior).save(folder)


def check_saved_reward(folder: Path, scores: pd.DataFrame, device: str = "cpu", texts: int = 64) -> float:
    """Load the saved reward as an auditor would and check it scores like the study's head did.

    Returns the largest difference; the allowed one is `score_tolerance` of the rewards' spread
    (bfloat16 features shift slightly with the batch a text is padded in).
    """
    reward = load_reward(folder, device=device)
    sample = scores.head(texts)
    gap = float(np.abs(reward.score(sample["text"].tolist()) - sample["r_hat"].to_numpy()).max())
    allowed = score_tolerance(reward.spec.dtype, float(np.std(scores["r_hat"])))
    if gap > allowed:
        raise ValueError(
            f"{folder}: the saved reward differs from the study's by up to {gap:.4g} (allowed {allowed:.4g})"
        )
    return gap


def white_box_rows(
    reward,
    demonstrations: pd.DataFrame,
    curated: pd.DataFrame,
    scores: pd.DataFrame,
    batch_size: int,
    cache_dir: Path | None = None,
) -> list[dict]:
    """The white-box log-ratio reward judged like the fitted heads: given the prompt (`log_ratio`) and on whole
    texts (`log_ratio_whole`), its threshold fitted on validation human texts. Its test scores are not saved.
    Read block by block (human texts, the expert's samples, the base's), the base's side kept in `cache_dir`."""
    sets = {}
    for split in ("validation", "test"):
        human = curated[curated["split"] == split].merge(scores[["id", "reward"]], on="id")
        pairs = used_pairs(demonstrations, split)
        blocks = [
            reward.gaps(prompts.tolist(), continuations.tolist(), batch_size, cache_dir)
            for prompts, continuations in (
                (human["prompt"], human["continuation"]),
                (pairs["prompt"], pairs["expert"]),
                (pairs["prompt"], pairs["non_expert"]),
            )
        ]
        whole, given = (np.concatenate(values) for values in zip(*blocks))
        human_set = TextSet(torch.zeros(len(human), 0), human["reward"].to_numpy(), human["label"].to_numpy())
        pair_set = PairSet(
            TextSet(torch.zeros(len(pairs), 0), pairs["expert_r_star"].to_numpy(), -np.ones(len(pairs))),
            TextSet(torch.zeros(len(pairs), 0), pairs["non_expert_r_star"].to_numpy(), -np.ones(len(pairs))),
            prompt_ids(pairs),
        )
        n = len(human)
        sets[split] = {
            name: (values[:n], values[n : n + len(pairs)], values[n + len(pairs) :], human_set, pair_set)
            for name, values in ((metric_names.WHITE_BOX, given), (metric_names.WHITE_BOX_WHOLE, whole))
        }
    rows = []
    for name in (metric_names.WHITE_BOX, metric_names.WHITE_BOX_WHOLE):
        r_human, _, _, human_set, _ = sets["validation"][name]
        threshold = metrics.fit_threshold(r_human, human_set.r_star)
        rows.append(
            {
                "loss": name,
                "seed": 0,
                "epoch": 0,
                "threshold": threshold,
                **judge_rewards(*sets["test"][name], threshold),
            }
        )
    # log pi_expert - log pi_base of the expert's own test continuations, given the prompt: a Monte-Carlo estimate
    # of KL(expert || base) per continuation (for the sampling decoding's distributions, top-k cut aside)
    rows[0]["expert_log_ratio_mean"] = float(np.mean(sets["test"][metric_names.WHITE_BOX][1]))
    return rows


def white_box_reward(layout: RunLayout, base: str, dtype: str, device: str):
    """The log-ratio reward of the expert (stage 03's policy aligned with R*) over the base, or None when the
    expert is a best-of-n policy (it has no weights, so no likelihood of its own)."""
    folder = layout.policy("ground_truth")
    if not PolicyCard.read(folder).has_weights:
        return None
    return LogRatioReward.from_sources(f"local:{folder}", base, dtype=dtype, device=device)


@dataclass
class ReferenceFits:
    """The fits beside the IRL objectives: floor, ceiling, R*'s own comparisons (where there are two base samples
    per prompt) and, with irl.posterior, the Laplace posterior."""

    heads: dict[str, torch.nn.Linear]
    posterior: Posterior | None


def reference_fits(
    train: PairSet, validation_pairs: PairSet, irl, base_comparisons: tuple[PairSet, PairSet] | None = None
) -> ReferenceFits:
    """One deterministic fit each: the floor and the ceiling (`irlnb.irl.baselines`), the Laplace posterior
    (irl.posterior), and the same Laplace head fitted on `base_comparisons` (`FeatureSets.base_comparisons`:
    pairs of base samples ordered by R*, train and validation), which shows what this head recovers from
    comparisons that follow R* exactly. It reads R*: a reference, not an IRL result; left out when None."""
    heads = {
        metric_names.FLOOR: mean_shift_head(train),
        metric_names.CEILING: supervised_head(train, validation_pairs)[0],
    }
    posterior = fit_posterior(train, validation_pairs) if irl.posterior else None
    if posterior is not None:
        heads[metric_names.POSTERIOR_MEAN] = posterior.head()
    if base_comparisons is not None:
        heads[metric_names.R_STAR_COMPARISONS] = fit_posterior(*base_comparisons).head()
    return ReferenceFits(heads, posterior)


def posterior_scores(posterior: Posterior, feature_sets) -> pd.DataFrame:
    """Posterior mean and spread of every test text: human texts, and both sides of the test pairs."""
    return scored_test_texts(
        feature_sets.test,
        feature_sets.test_texts,
        lambda texts: {
            "posterior_mean": (texts.features.double() @ posterior.mean).numpy(),
            "posterior_std": posterior.std(texts.features),
        },
    )


def posterior_report(posterior: Posterior, feature_sets, result: StudyResult, ood: torch.Tensor) -> tuple[dict, list]:
    """irl.posterior.* metrics (is the spread worth anything?) and the contraction rows, from the cached features.

    `ood` are raw features of out-of-domain texts (standardised here like every other text).
    """
    test_human = feature_sets.test[0]
    threshold = float(result.test.loc[result.test["loss"] == metric_names.POSTERIOR_MEAN, "threshold"].iloc[0])
    values = uncertainty_metrics(posterior, test_human, threshold, feature_sets.standardizer(ood))
    rows = contraction(feature_sets.train, feature_sets.validation[1], test_human)
    metrics_out = {metric_names.posterior_metric(key): value for key, value in values.items()}
    for row in rows:
        size = "all" if row is rows[-1] else str(row["pairs"])
        metrics_out.update(
            {
                metric_names.contraction_metric(size, "auc"): row["auc"],
                metric_names.contraction_metric(size, "std_mean"): row["std_mean"],
            }
        )
    return metrics_out, rows
