"""Two runs' saved rewards compared on the same held-out texts, with paired intervals (`irlnb compare`).

Two rewards recovered from one expert under different settings (a layer fixed in advance against the one notebook
04 chose, say) are judged on the same texts: the test split's human texts and, where both runs drew them, the test
prompts' continuations (`irl/prompt_sets.parquet`). Each reward is loaded as an auditor loads it (`load_reward`) and
scores those texts; a difference between the two is reported with a percentile bootstrap interval that resamples the
same texts (ROC-AUC and Spearman against R*) or the same prompts (within-prompt Spearman) for both: a paired
interval, so the spread the two share cancels. Texts or prompt sets that differ between the runs are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from irlnb import metric_names, metrics
from irlnb.errors import IrlnbError
from irlnb.irl.within_prompt import paired_difference, per_prompt_spearman
from irlnb.layout import RunLayout
from irlnb.rewards.features import load_reward
from irlnb.rewards.ground_truth import load_scores


class ComparisonError(IrlnbError, ValueError):
    """Two runs that cannot be compared text for text; the message is one line."""


def _test_human(layout: RunLayout) -> pd.DataFrame:
    scores = load_scores(layout)
    return scores[scores["split"] == "test"][["text", "reward"]].reset_index(drop=True)


def _prompt_sets(layout: RunLayout) -> pd.DataFrame | None:
    return pd.read_parquet(layout.prompt_sets) if layout.prompt_sets.is_file() else None


def _cross_text(r_first: np.ndarray, r_second: np.ndarray, r_star: np.ndarray, samples: int, seed: int) -> dict:
    """ROC-AUC and Spearman with R* of each reward, as a run's judging reads them (`metrics.agreement`), and their
    differences with paired intervals over texts."""
    values = {}
    for name in ("auc", "spearman"):

        def measure(r_hat, star, name=name) -> float:
            return metrics.agreement(r_hat, star)[name]

        a, b = measure(r_first, r_star), measure(r_second, r_star)
        low, high = metrics.bootstrap_interval(
            lambda x, y, star: measure(x, star) - measure(y, star),
            r_first,
            r_second,
            r_star,
            samples=samples,
            seed=seed,
        )
        values.update({f"{name}_first": a, f"{name}_second": b, f"{name}_difference": a - b})
        values.update({f"{name}_difference_ci_low": low, f"{name}_difference_ci_high": high})
    values["texts"] = float(len(r_star))
    return values


def compare_runs(first: Path, second: Path, device: str = "cpu", samples: int = 1000, seed: int = 0) -> dict:
    """`compare.test.<measure>_{first,second,difference}` and the difference's `_ci_low`/`_ci_high`: the saved
    reward of run `first` against that of run `second` (run directories), on the same held-out texts."""
    layouts = [RunLayout(Path(folder)) for folder in (first, second)]
    for layout in layouts:
        if not layout.learned_reward.is_dir():
            raise ComparisonError(f"{layout.root}: no saved reward (irl/reward); run its stage 04_irl first")
    human = [_test_human(layout) for layout in layouts]
    if not human[0]["text"].equals(human[1]["text"]):
        raise ComparisonError(f"{first} and {second} hold different test texts: they cannot be compared text for text")
    if not human[0]["reward"].equals(human[1]["reward"]):
        raise ComparisonError(f"{first} and {second} judge by different R*: compare rewards judged by the same one")
    sets = [_prompt_sets(layout) for layout in layouts]
    same_sets = all(s is not None for s in sets) and sets[0][["group", "prompt", "continuation"]].equals(
        sets[1][["group", "prompt", "continuation"]]
    )
    rewards = [load_reward(layout.learned_reward, device=device) for layout in layouts]
    texts, r_star = human[0]["text"].tolist(), human[0]["reward"].to_numpy()
    if not metrics.has_r_star(r_star):
        raise ComparisonError(f"{first}: no R* (an audit without it): there is nothing to judge the two rewards by")
    scored = [reward.score(texts) for reward in rewards]
    values = _cross_text(*scored, r_star, samples, seed)
    if same_sets:
        within = sets[0]
        continuations = (within["prompt"] + within["continuation"]).tolist()
        within_scores = [reward.score(continuations) for reward in rewards]
        r_star_within, groups = within["r_star"].to_numpy(), within["group"].to_numpy()
        for name, r_hat in zip(("first", "second"), within_scores):
            values[f"within_prompt_spearman_{name}"] = float(
                np.nanmean(per_prompt_spearman(r_hat, r_star_within, groups))
            )
        difference, low, high = paired_difference(*within_scores, r_star_within, groups, samples=samples, seed=seed)
        values.update(
            {
                "within_prompt_spearman_difference": difference,
                "within_prompt_spearman_difference_ci_low": low,
                "within_prompt_spearman_difference_ci_high": high,
            }
        )
    return {metric_names.compare_metric(name): float(value) for name, value in values.items()}
