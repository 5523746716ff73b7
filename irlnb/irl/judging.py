"""Judging a reward on one split: every metric of its scores on human texts and on the demonstration pairs.

Any reward is judged the same way: a fitted head, a deterministic fit, the white-box log-ratio. Choices are made on
validation only, by `SELECTION_METRIC` (validation pair accuracy, which needs no R*); R-hat's threshold is fitted on
validation human texts, or, label-free, on the validation demonstrations alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names, metrics
from irlnb.irl.feature_sets import PairSet, TextSet, head_scores, rewards_of
from irlnb.irl.within_prompt import statistic_correlations, within_prompt_metrics

SELECTION_METRIC = "pair_accuracy"  # validation pair accuracy: chosen from behaviour alone, without R*


def chosen_epoch(history: list[dict]) -> int:
    """The epoch (never the initial head, epoch 0) with the best validation `SELECTION_METRIC`; ties: the earliest."""
    return max(range(1, len(history)), key=lambda epoch: (history[epoch][SELECTION_METRIC], -epoch))


def judge(
    head: torch.nn.Linear,
    human: TextSet,
    pairs: PairSet,
    threshold: float,
    within_prompt: tuple[TextSet, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every metric of one head on one split: human texts, the demonstrations (both sides) and, where given, the
    continuations of each test prompt (`irlnb.irl.within_prompt`). Where the human texts were also read said twice,
    `repetition_shift` (`irlnb.metrics.repetition_shift`): what the reward pays for length alone."""
    r_human = rewards_of(head, human)
    values = judge_rewards(
        r_human,
        rewards_of(head, pairs.expert),
        rewards_of(head, pairs.non_expert),
        human,
        pairs,
        threshold,
        None if within_prompt is None else (rewards_of(head, within_prompt[0]), *within_prompt),
    )
    if human.repeated is not None:
        values["repetition_shift"] = metrics.repetition_shift(r_human, head_scores(head, human.repeated))
    return values


def judge_rewards(
    r_human: np.ndarray,
    r_expert: np.ndarray,
    r_non_expert: np.ndarray,
    human: TextSet,
    pairs: PairSet,
    threshold: float,
    within_prompt: tuple[np.ndarray, TextSet, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every metric of a reward's scores on one split (any reward: a head, the white-box log-ratio).

    With the pairs' prompts known, `starc_distance` compares R-hat with R* on both sides of every pair, each
    prompt's texts canonicalised together (`irlnb.metrics.starc_distance`). With the human texts' statistics, R-hat's
    Spearman correlation with each (`<statistic>_spearman`). With `within_prompt` (R-hat of each test prompt's
    continuations, their text set and prompt groups), how R-hat orders a prompt's continuations against R*.
    Without R* (an audit: NaN in its place) only what reads no R* is judged: the pairs, the text statistics.
    """
    values = {
        "pair_accuracy": metrics.pair_accuracy(r_expert, r_non_expert),
        "pair_log_likelihood": metrics.pair_log_likelihood(r_expert, r_non_expert),
    }
    if human.statistics is not None:
        values.update(statistic_correlations(r_human, human.statistics))
    if not metrics.has_r_star(human.r_star):
        return values
    on_human = metrics.agreement(r_human, human.r_star, threshold, human.labels)
    values.update({f"human_{k}": v for k, v in on_human.items()})
    at_zero = metrics.agreement(r_human, human.r_star, 0.0)
    values.update({f"human_{k}_zero": at_zero[k] for k in ("accuracy", "f1")})
    demo_r_hat = np.concatenate([r_expert, r_non_expert])
    demo_r_star = np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star])
    values.update({f"demos_{k}": v for k, v in metrics.agreement(demo_r_hat, demo_r_star, threshold).items()})
    if pairs.prompt_ids is not None:
        groups = np.concatenate([pairs.prompt_ids, pairs.prompt_ids])
        values[metric_names.STARC_DISTANCE] = metrics.starc_distance(demo_r_hat, demo_r_star, groups)
    if within_prompt is not None:
        r_within, texts, groups = within_prompt
        values.update(within_prompt_metrics(r_within, texts.r_star, groups))
    return values


def label_free_threshold(r_expert: np.ndarray, r_non_expert: np.ndarray) -> float:
    """A threshold from demonstrations alone: the cut that best separates the expert's validation texts
    (read as the aligned side, rewards `r_expert`) from the non-expert's, by R-hat. It reads no R* and no human
    label."""
    sides = np.concatenate([np.ones(len(r_expert)), -np.ones(len(r_non_expert))])  # +1 aligned, -1 not
    return metrics.fit_threshold(np.concatenate([r_expert, r_non_expert]), sides)


def validation_threshold(r_human: np.ndarray, human: TextSet, r_expert: np.ndarray, r_non_expert: np.ndarray) -> float:
    """R-hat's threshold, fitted on validation: the cut that best matches sign(R*) of the human texts, or, without R*,
    the label-free one (`label_free_threshold`)."""
    if metrics.has_r_star(human.r_star):
        return metrics.fit_threshold(r_human, human.r_star)
    return label_free_threshold(r_expert, r_non_expert)


def test_row(
    head: torch.nn.Linear,
    validation: tuple[TextSet, PairSet],
    test: tuple[TextSet, PairSet],
    within_prompt: tuple[TextSet, np.ndarray] | None = None,
) -> dict:
    """One head's test metrics: at the validation-fitted threshold (reads R* of validation human texts), at zero,
    and at the label-free threshold (`human_accuracy_label_free`, reads nothing but demonstrations); within the test
    prompts where `within_prompt` is given. Without R*, the threshold is the label-free one and nothing is judged
    against R*."""
    validation_human, validation_pairs = validation
    test_human, test_pairs = test
    r_expert, r_non_expert = rewards_of(head, validation_pairs.expert), rewards_of(head, validation_pairs.non_expert)
    threshold = validation_threshold(rewards_of(head, validation_human), validation_human, r_expert, r_non_expert)
    free = label_free_threshold(r_expert, r_non_expert)
    row = {"threshold": threshold, "threshold_label_free": free}
    row.update(judge(head, test_human, test_pairs, threshold, within_prompt))
    if metrics.has_r_star(test_human.r_star):
        label_free = metrics.agreement(rewards_of(head, test_human), test_human.r_star, free)
        row.update({"human_accuracy_label_free": label_free["accuracy"], "human_f1_label_free": label_free["f1"]})
    return row


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
