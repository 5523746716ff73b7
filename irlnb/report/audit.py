"""What an auditor reads of a recovered reward without R*: the held-out texts it ranks highest and lowest, and the
words whose presence moves it most.

Both read the saved reward's scores of the held-out human texts (`irl/test_scores.parquet`) and nothing of R*. A
word's effect is an association over those texts (the mean R-hat of the texts holding it minus that of the others,
in units of R-hat's standard deviation), not a cause: a word common in long texts carries their length with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from irlnb import metric_names
from irlnb.irl.within_prompt import NOTABLE_SPEARMAN, TEXT_STATISTICS, statistic_warning

WORD = re.compile(r"[a-z']+")


def saved_human_scores(scores: pd.DataFrame, loss: str, seed: int) -> pd.DataFrame:
    """The saved reward's (`loss`, `seed`) scores of the held-out human texts: text and r_hat, one row per text."""
    rows = scores[(scores["loss"] == loss) & (scores["seed"] == seed) & (scores["set"] == "human")]
    if rows.empty:
        raise ValueError(f"no human test scores for loss {loss!r}, seed {seed}")
    return rows[["text", "r_hat"]].drop_duplicates("text").reset_index(drop=True)


FAR_PERCENTILE = 0.95  # a held-out text whose posterior spread exceeds this share of the others' lies far out


def with_spread(human: pd.DataFrame, posterior_scores: pd.DataFrame) -> pd.DataFrame:
    """`human` (`saved_human_scores`) with each text's posterior std of R-hat (`irlnb.irl.posterior.posterior_scores`)
    and its percentile among the held-out texts: how far the text lies from the demonstrations, whatever objective
    the saved reward is (the spread depends on the text's features alone). It reads no R*."""
    spread = posterior_scores[posterior_scores["set"] == "human"][["text", "posterior_std"]].drop_duplicates("text")
    out = human.merge(spread, on="text", how="left")
    return out.assign(spread_percentile=out["posterior_std"].rank(pct=True))


def extremes(human: pd.DataFrame, count: int) -> pd.DataFrame:
    """The `count` texts R-hat ranks highest and the `count` it ranks lowest, with their rank percentile (and, after
    `with_spread`, their posterior spread and its percentile)."""
    ranked = human.assign(percentile=human["r_hat"].rank(pct=True)).sort_values("r_hat", ascending=False)
    top, bottom = ranked.head(count).assign(end="highest"), ranked.tail(count).assign(end="lowest")
    spread = [column for column in ("posterior_std", "spread_percentile") if column in human]
    return pd.concat([top, bottom], ignore_index=True)[["end", "r_hat", "percentile", *spread, "text"]]


def far_extremes(table: pd.DataFrame) -> str:
    """A plain sentence when some of the extreme texts (`extremes` after `with_spread`) lie among the held-out texts
    farthest from the demonstrations (posterior spread above `FAR_PERCENTILE` of them), '' otherwise."""
    if "spread_percentile" not in table:
        return ""
    far = table[table["spread_percentile"] > FAR_PERCENTILE]
    if far.empty:
        return ""
    counts = [(end, (far["end"] == end).sum(), (table["end"] == end).sum()) for end in ("highest", "lowest")]
    ends = " and ".join(f"{found} of the {shown} {end}" for end, found, shown in counts if found)
    return (
        f"Caution: {ends}-scored texts lie among the {1 - FAR_PERCENTILE:.0%} of held-out texts farthest from the "
        "demonstrations (the posterior's spread): the reward was not fitted on texts like them, so their scores say "
        "little about it."
    )


def word_effects(human: pd.DataFrame, min_texts: int, count: int) -> pd.DataFrame:
    """The `count` words (lower-cased) that raise R-hat most and the `count` that lower it most, among words held by
    at least `min_texts` texts and missed by as many: `effect` = mean R-hat with the word - mean without, over R-hat's
    standard deviation; `texts` how many hold it."""
    r_hat = human["r_hat"].to_numpy(dtype=np.float64)
    spread = float(np.std(r_hat))
    words = [set(WORD.findall(str(text).lower())) for text in human["text"]]
    vocabulary = sorted(set().union(*words)) if words else []
    rows = []
    for word in vocabulary:
        holds = np.array([word in text_words for text_words in words])
        if min_texts <= holds.sum() <= len(holds) - min_texts and spread > 0:
            rows.append(
                {
                    "word": word,
                    "effect": (r_hat[holds].mean() - r_hat[~holds].mean()) / spread,
                    "texts": int(holds.sum()),
                }
            )
    table = pd.DataFrame(rows, columns=["word", "effect", "texts"]).sort_values("effect", ascending=False)
    if len(table) <= 2 * count:
        return table.reset_index(drop=True)
    return pd.concat([table.head(count), table.tail(count)], ignore_index=True)


def caution(metrics: Mapping[str, float], tolerance: float = 0.1) -> str:
    """What a text statistic explains of the saved reward, in plain words, from the run's metrics: the sentence notebook
    04 prints when a statistic tracks R-hat more than R* does (`statistic_warning`; without R* in the metrics, more
    than |0.3|), and one when R-hat pays more than `tolerance` of its spread for a held-out text said twice."""

    def saved(name: str) -> float:
        return metrics.get(metric_names.irl_metric(None, "test", f"{name}_mean"), float("nan"))

    correlations = {f"{name}_spearman": saved(f"{name}_spearman") for name in TEXT_STATISTICS}
    r_star = saved("spearman")
    sentences = [statistic_warning(correlations, r_star if np.isfinite(r_star) else None)]
    shift = saved("repetition_shift")
    if np.isfinite(shift) and abs(shift) > tolerance:
        side = "more" if shift > 0 else "less"
        sentences.append(
            f"Caution: the recovered reward scores a held-out text said twice over {abs(shift):.2f} of its spread "
            f"{side} than the text said once: it pays for length as such."
        )
    said = " ".join(sentence for sentence in sentences if sentence)
    versus = "more than R* does" if np.isfinite(r_star) else f"(|Spearman| < {NOTABLE_SPEARMAN}; no R* to compare with)"
    nothing = f"No simple text statistic tracks the recovered reward {versus}"
    return said or f"{nothing}, and repeating a text barely moves it."


def length_figure(human: pd.DataFrame):
    """The saved reward against the length of each held-out human text (words), its Spearman correlation
    in the title: a reward that follows this line learned length (no R* is read)."""
    import matplotlib.pyplot as plt

    words = human["text"].str.split().str.len().clip(lower=1)
    rho = spearmanr(words, human["r_hat"]).statistic
    figure, axes = plt.subplots(figsize=(6, 3.8))
    axes.scatter(words, human["r_hat"], s=8, alpha=0.5)
    axes.set_xlabel("length of the held-out human text (words)")
    axes.set_ylabel("recovered reward R̂")
    axes.set_title(f"The saved reward against length: Spearman {rho:+.2f}")
    figure.tight_layout()
    return figure
