"""A posterior over the recovered reward: how sure it is about a text.

The reward is linear on standardised frozen features, R(x) = w . phi(x), and the demonstrations
are read as Bradley-Terry preferences: P(expert's text preferred) = sigmoid(w . (phi_e - phi_n)).
With a Gaussian prior w ~ N(0, s^2 I) the posterior is approximated by Laplace's method: a
Gaussian at the maximum a posteriori w (found by Newton's method: the log-posterior is concave)
with covariance the inverse Hessian there,

    Sigma = (X^T diag(p (1 - p)) X + I / s^2)^-1,   X = phi_expert - phi_non_expert per pair.

Why Laplace and not variational inference: the likelihood is log-concave, so the mode is unique and
Newton finds it in a few steps; the Gaussian around it is deterministic (no sampling noise between
runs), costs one d x d inverse (d = 576 here), and refits in seconds when pairs are added, which
is all the auditor's "refined as evidence arrives" needs. The predictive spread of a text's reward
is sqrt(phi(x)^T Sigma phi(x)): large where the demonstrations said little, which is where a
text's features lie far from the directions the pairs varied along (shortcuts, other domains).
The shift of a pairwise reward is not identified, so there is no bias and the spread is relative
to the average IRL-train text (the standardisation centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names, metrics
from irlnb.irl.feature_sets import PairSet, TextSet
from irlnb.irl.judging import scored_test_texts
from irlnb.objectives import LAPLACE

PRIOR_STDS = (0.03, 0.1, 0.3, 1.0)  # prior scales tried; the one with the best validation pair log-likelihood is kept


@dataclass
class Posterior:
    """A Gaussian posterior over the head's weights (on standardised features)."""

    mean: torch.Tensor  # [d]
    covariance: torch.Tensor  # [d, d]
    prior_std: float

    def head(self) -> torch.nn.Linear:
        """The posterior mean as a head (the reward an auditor reads)."""
        head = torch.nn.Linear(len(self.mean), 1)
        with torch.no_grad():
            head.weight.copy_(self.mean.view(1, -1).float())
            head.bias.zero_()
        return head

    def std(self, features: torch.Tensor) -> np.ndarray:
        """The posterior standard deviation of each text's reward, sqrt(phi^T Sigma phi)."""
        x = features.double()
        return torch.sqrt(torch.clamp(((x @ self.covariance) * x).sum(dim=1), min=0.0)).numpy()

    def pair_log_likelihood(self, pairs: PairSet) -> float:
        """Mean log-probability the posterior mean gives to the expert being preferred."""
        difference = (pairs.expert.features - pairs.non_expert.features).double()
        return float(torch.nn.functional.logsigmoid(difference @ self.mean).mean())


def laplace_posterior(train: PairSet, prior_std: float, steps: int = 50, tolerance: float = 1e-8) -> Posterior:
    """The Laplace approximation of the Bradley-Terry posterior with prior N(0, prior_std^2 I) (Newton's method)."""
    x = (train.expert.features - train.non_expert.features).double()
    n, d = x.shape
    w = torch.zeros(d, dtype=torch.float64)
    precision = torch.eye(d, dtype=torch.float64) / prior_std**2
    for _ in range(steps):
        p = torch.sigmoid(x @ w)
        gradient = x.T @ (1 - p) - precision @ w
        hessian = (x.T * (p * (1 - p))) @ x + precision
        step = torch.linalg.solve(hessian, gradient)
        w = w + step
        if float(step.abs().max()) < tolerance:
            break
    p = torch.sigmoid(x @ w)
    hessian = (x.T * (p * (1 - p))) @ x + precision
    return Posterior(w, torch.linalg.inv(hessian), prior_std)


def fit_posterior(train: PairSet, validation: PairSet, prior_stds=PRIOR_STDS) -> Posterior:
    """The posterior whose prior scale gives the validation pairs the highest log-likelihood (no R* read)."""
    fits = [laplace_posterior(train, s) for s in prior_stds]
    return max(fits, key=lambda posterior: posterior.pair_log_likelihood(validation))


def subset(pairs: PairSet, count: int, seed: int) -> PairSet:
    index = torch.randperm(len(pairs.expert.r_star), generator=torch.Generator().manual_seed(seed))[:count]
    return PairSet(
        *(
            TextSet(side.features[index], side.r_star[index.numpy()], side.labels[index.numpy()])
            for side in (pairs.expert, pairs.non_expert)
        )
    )


def uncertainty_metrics(posterior: Posterior, human: TextSet, threshold: float, ood: torch.Tensor) -> dict[str, float]:
    """Is the spread worth anything? On held-out human texts, for 'the posterior mean disagrees with sign(R*)' (at
    the validation threshold): the ROC-AUC of the std (`std_auc_wrong`), of the posterior probability that the
    text's reward lies on the other side of the threshold, Phi(-|mean - threshold| / std)
    (`other_side_probability_auc_wrong`), and of the plain nearness of the mean to the threshold, with no spread in
    it (`nearness_auc_wrong`: what the posterior must beat to add anything); mean std there and on out-of-domain
    texts. Without R* there is no wrong sign to flag: the spreads alone."""
    r_hat = (human.features.double() @ posterior.mean).numpy()
    std = posterior.std(human.features)
    values = {
        "std_mean_human": float(std.mean()),
        "std_mean_ood": float(posterior.std(ood).mean()),
        "prior_std": posterior.prior_std,
    }
    if not metrics.has_r_star(human.r_star):
        return values
    wrong = (r_hat <= threshold) != metrics.toxic_by_reward(human.r_star)
    values["wrong_share"] = float(wrong.mean())
    distance = np.abs(r_hat - threshold)
    flags = {
        "std_auc_wrong": std,
        "other_side_probability_auc_wrong": -distance / std,  # Phi(-z) is monotone in -z: the same ranking
        "nearness_auc_wrong": -distance,
    }
    for name, flag in flags.items():
        values[name] = metrics.roc_auc(wrong, flag) if 0 < wrong.sum() < len(wrong) else float("nan")
    return values


def contraction(
    train: PairSet, validation: PairSet, human: TextSet, counts=(25, 50, 100, 200), seed: int = 0
) -> list[dict[str, float]]:
    """Posterior contraction as evidence arrives: the test AUC (where there is R*) and mean std from the first n
    train pairs."""
    rows = []
    for count in [*[c for c in counts if c < len(train.expert.r_star)], len(train.expert.r_star)]:
        posterior = fit_posterior(subset(train, count, seed), validation)
        row = {"pairs": count}
        if metrics.has_r_star(human.r_star):
            r_hat = (human.features.double() @ posterior.mean).numpy()
            row["auc"] = metrics.roc_auc(metrics.toxic_by_reward(human.r_star), -r_hat)
        rows.append({**row, "std_mean": float(posterior.std(human.features).mean()), "prior_std": posterior.prior_std})
    return rows


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


def posterior_report(
    posterior: Posterior, feature_sets, test_by_fit: pd.DataFrame, ood: torch.Tensor
) -> tuple[dict, list]:
    """irl.posterior.* metrics (is the spread worth anything?) and the contraction rows, from the cached features.

    `test_by_fit` is the study's test rows (`StudyResult.test`), whose posterior-mean row holds the threshold fitted
    on validation; `ood` are raw features of out-of-domain texts (standardised here like every other text).
    """
    test_human = feature_sets.test[0]
    threshold = float(test_by_fit.loc[test_by_fit["loss"] == LAPLACE.name, "threshold"].iloc[0])
    values = uncertainty_metrics(posterior, test_human, threshold, feature_sets.standardizer(ood))
    rows = contraction(feature_sets.train, feature_sets.validation[1], test_human)
    metrics_out = {metric_names.posterior_metric(key): value for key, value in values.items()}
    for row in rows:
        size = "all" if row is rows[-1] else str(row["pairs"])
        metrics_out.update(
            {metric_names.contraction_metric(size, key): row[key] for key in ("auc", "std_mean") if key in row}
        )
    return metrics_out, rows
