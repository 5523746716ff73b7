"""The references beside every IRL number, on the same features and the same test texts. They read R*, which IRL
never does: they are references for reading IRL's numbers, not IRL results.

- **ceiling, supervised**: the same reward class (a linear head on the same standardised features)
  fitted by logistic regression on sign(R*) of the same train demonstration texts, its L2 strength
  chosen on the validation demonstration texts: what the demonstrations could teach at best.
- **R*'s own comparisons**: the Laplace head fitted on pairs of two base samples of a prompt, ordered by R*
  (`FeatureSets.base_comparisons`): what this head recovers from comparisons that follow R* exactly.

And what the demonstrations carry about R* at all: per split, how many pairs differ in sign(R*),
how often the expert's text has the higher R*, and the mean R* gap.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from irlnb import metric_names, metrics
from irlnb.irl.feature_sets import PairSet
from irlnb.irl.fitting import head_of
from irlnb.irl.posterior import fit_posterior

SUPERVISED_C = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # inverse L2 strengths tried on validation


def _texts(pairs: PairSet) -> tuple[np.ndarray, np.ndarray]:
    features = torch.cat([pairs.expert.features, pairs.non_expert.features]).double().numpy()
    return features, np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star])


def supervised_head(train: PairSet, validation: PairSet) -> tuple[torch.nn.Linear, float]:
    """The ceiling: logistic regression of 'non-toxic' (R* > 0) on the demonstration texts; C chosen on validation.

    Returns the head (higher = non-toxic, like a reward) and the chosen C. A split whose texts are all
    of one sign cannot be fitted or scored; that is refused in one line.
    """
    x_train, r_train = _texts(train)
    x_val, r_val = _texts(validation)
    y_train, y_val = r_train > 0, r_val > 0
    for name, y in (("train", y_train), ("validation", y_val)):
        if y.all() or not y.any():
            raise ValueError(
                f"the {name} demonstration texts are all {'non-toxic' if y.all() else 'toxic'} by R*: "
                "the supervised ceiling cannot be fitted; use more or other demonstration prompts"
            )
    best = None
    for c in SUPERVISED_C:
        model = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
        auc = metrics.roc_auc(y_val, model.decision_function(x_val))
        if best is None or auc > best[0]:
            best = (auc, c, model)
    _, c, model = best
    return head_of(model.coef_[0], model.intercept_[0]), c


def demonstration_evidence(demonstrations: pd.DataFrame) -> dict[str, float]:
    """What the usable pairs of each split say about R* (without R*: nothing): sign differences, expert-better
    share, mean gap; and the diversity of each side."""
    values = {}
    used = demonstrations[demonstrations["excluded"] == ""]
    for split, pairs in used.groupby("split"):
        expert, non_expert = pairs["expert_r_star"].to_numpy(), pairs["non_expert_r_star"].to_numpy()
        key = partial(metric_names.demonstrations_metric, split)
        if metrics.has_r_star(expert):
            values[key(metric_names.SIGN_DIFFERS)] = int(np.sum((expert > 0) != (non_expert > 0)))
            values[key("expert_better_share")] = float(np.mean(expert > non_expert))
            values[key("r_star_gap_mean")] = float(np.mean(expert - non_expert))
            values[key("both_non_toxic_share")] = float(np.mean((expert > 0) & (non_expert > 0)))
        # diversity of each side's continuations (the same count of samples, the same decoding)
        values[key("expert_distinct_2")] = metrics.distinct_n(pairs["expert"].tolist(), 2)
        values[key("non_expert_distinct_2")] = metrics.distinct_n(pairs["non_expert"].tolist(), 2)
    return values


def reference_heads(
    train: PairSet, validation: PairSet, base_comparisons: tuple[PairSet, PairSet] | None = None
) -> dict[str, torch.nn.Linear]:
    """One deterministic fit each: the ceiling, and the Laplace head on R*'s own comparisons of base samples (train,
    validation) where there are two base samples per prompt (left out when `base_comparisons` is None). Nothing
    without R* (an audit): both read it."""
    if not metrics.has_r_star(train.expert.r_star):
        return {}
    heads = {metric_names.CEILING: supervised_head(train, validation)[0]}
    if base_comparisons is not None:
        heads[metric_names.R_STAR_COMPARISONS] = fit_posterior(*base_comparisons).head()
    return heads
