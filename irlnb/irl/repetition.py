"""A reward that does not pay for length: the directions along which the features move when a text is said twice
over are removed from what every head reads.

An aligned model that writes shorter (or longer) texts than its base teaches a reward that shorter is better: a head
on mean-pooled hidden states reads a text's length as well as what it says. A text said twice over (`repeated`)
says the same thing at twice the length, so the feature change from a text to its repetition is a change of length,
not of content. The principal directions of those changes, over the texts of some IRL-train pairs, are removed
from the standardised features (`Standardizer.nuisance`): the fewest of `DIRECTIONS` for which the Laplace head
fitted on what remains pays at most `irl.max_repetition_shift` (in units of its spread) for a validation human
text said twice. Every choice reads the demonstrations and the words of unlabelled texts, never R*.

The check reads human texts, not demonstrations: a demonstration is a prompt and a continuation of fixed length, and
on those one direction removed sufficed (repetition shift 0.01) while held-out comments of every length still paid
0.2 of the reward's spread for being said twice.

Removing instead the features' covariance with length over the IRL-train texts was measured first and rejected
(README, length): it cost the saved reward 0.08 of test ROC-AUC and turned its correlation with length positive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names
from irlnb.irl.demonstrations import pair_texts, used_pairs
from irlnb.irl.feature_sets import PairSet, Reading, Standardizer, TextSet, head_scores, repeated
from irlnb.irl.posterior import fit_posterior
from irlnb.metrics import pair_log_likelihood, repetition_shift

DIRECTIONS = (0, 1, 2, 5, 10, 20, 50)  # the numbers of repetition directions tried, fewest first


def standardizer(
    features: Reading,
    demonstrations: pd.DataFrame,
    check: list[str],
    probes: int,
    max_shift: float,
    until_chosen: bool = False,
) -> tuple[Standardizer, pd.DataFrame]:
    """The map from raw features (`features` of texts: `irlnb.irl.feature_sets.reading`) to what the heads read:
    standardised on the IRL-train texts, without the repetition directions of the texts of `probes` train pairs (0:
    none removed), as many as the criterion asks on the `check` texts (the validation split's human texts: their words
    only, never their R* or label). Returns it with one row per number of directions tried (`directions`,
    `validation_repetition_shift`, `validation_pair_log_likelihood`, `chosen`). `until_chosen`: no count is tried
    after the one chosen (the same map; a choice that only needs the map, as the layer choice's for each of its
    candidates, skips the rest of the table)."""
    sides = {split: pair_texts(used_pairs(demonstrations, split)) for split in ("train", "validation")}
    train = [features(texts) for texts in sides["train"]]  # the blocks the feature sets read: cache hits
    plain = Standardizer.fit(torch.cat(train))
    if probes == 0:
        return plain, pd.DataFrame()
    probe = probe_texts(demonstrations, probes)
    directions = movement_directions(plain(features(probe)), plain(features([repeated(t) for t in probe])))
    validation = [features(texts) for texts in sides["validation"]]
    check_once, check_twice = features(check), features([repeated(t) for t in check])
    rows, chosen = [], None
    for count in (k for k in DIRECTIONS if k <= directions.shape[0]):
        candidate = Standardizer(plain.mean, plain.std, directions[:count].T.to(plain.mean.dtype) if count else None)
        head = fit_posterior(*(pairs_of(candidate, sides_features) for sides_features in (train, validation))).head()
        once, twice = (head_scores(head, candidate(f)) for f in (check_once, check_twice))
        expert, other = (head_scores(head, candidate(f)) for f in validation)
        shift = repetition_shift(once, twice)
        rows.append(
            {
                "directions": count,
                "validation_repetition_shift": shift,
                "validation_pair_log_likelihood": pair_log_likelihood(expert, other),
            }
        )
        if chosen is None and abs(shift) <= max_shift:
            chosen = candidate
            if until_chosen:
                break
    table = pd.DataFrame(rows)
    chosen = chosen or candidate  # none paid little enough: the most directions tried
    table["chosen"] = table["directions"] == (0 if chosen.nuisance is None else chosen.nuisance.shape[1])
    return chosen, table


def probe_texts(demonstrations: pd.DataFrame, probes: int) -> list[str]:
    """The texts of the first `probes` IRL-train pairs, both sides: read once and said twice over."""
    return [text for texts in pair_texts(used_pairs(demonstrations, "train")) for text in texts[:probes]]


def texts_read(demonstrations: pd.DataFrame, check: list[str], probes: int) -> list[list[str]]:
    """Every list of texts whose features `standardizer` reads, as it reads them (to read them ahead in several
    layers and poolings in one pass: `irlnb.irl.layer_choice`)."""
    sides = [texts for split in ("train", "validation") for texts in pair_texts(used_pairs(demonstrations, split))]
    if probes == 0:
        return sides
    probe = probe_texts(demonstrations, probes)
    return [*sides, probe, [repeated(t) for t in probe], check, [repeated(t) for t in check]]


def movement_directions(once: torch.Tensor, twice: torch.Tensor) -> torch.Tensor:
    """The principal directions (rows, the largest first) of how standardised features move from texts said once to
    the same texts said twice."""
    return torch.linalg.svd((twice - once).double(), full_matrices=False).Vh


def pairs_of(standardizer: Standardizer, sides: list[torch.Tensor]) -> PairSet:
    """Pairs of standardised features without R* (the choice reads none)."""
    nothing = np.zeros(len(sides[0]))
    return PairSet(*(TextSet(standardizer(side), nothing, nothing - 1) for side in sides))


def choice_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`irl.length.directions` removed and the chosen map's `validation_repetition_shift` (none without probes)."""
    if table.empty:
        return {}
    chosen = table[table["chosen"]].iloc[0]
    return {
        metric_names.IRL_LENGTH_DIRECTIONS: int(chosen["directions"]),
        metric_names.IRL_LENGTH_SHIFT: float(chosen["validation_repetition_shift"]),
    }
