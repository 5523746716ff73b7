"""Fidelity where IRL can identify a reward: within a prompt.

Same-prompt pairs identify a reward only up to a per-prompt shift: for any h(x), r(x, y) + h(x) explains the same
behaviour. The paper's metric (sign of R-hat on whole human texts) compares across prompts, exactly the part IRL
cannot identify. So every held-out test prompt also gets `irl.within_prompt_samples` samples of the base policy
beside its human continuation, each labelled with the true reward R*, and a reward is judged by how it orders one
prompt's continuations: the mean over prompts of the per-prompt Spearman correlation with R*, and the accuracy over
a prompt's pairs of continuations by how far apart R* puts them (|delta R*| bins), with percentile bootstrap
intervals over prompts. The base samples are drawn like the demonstrations' (the frozen base, kept in the runs'
shared cache); R* only labels them.

And what else R-hat may track: its Spearman correlation, on the held-out human texts, with simple statistics of the
text (its length in tokens, its share of newlines and of punctuation): a reward that follows length follows
something every aligned model changes, not necessarily what it was aligned on.
"""

from __future__ import annotations

import string

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from irlnb import metrics
from irlnb.rewards.ground_truth import r_star_of

GAP_BINS = (0.0, 1.0, 3.0, np.inf)  # |delta R*| between two continuations of a prompt (nats of log-odds)
PROMPT_SETS_SEED = 300_007  # the prompt sets' base samples draw apart from the demonstrations' (whose seeds differ)
# What else a reward may track: a text's length, its share of newlines and of punctuation, and how likely the base
# model finds it (the mean log-probability of its tokens: fluent, typical text against odd text)
TEXT_STATISTICS = ("length_tokens", "newline_share", "punctuation_share", "base_log_likelihood")


def draw_prompt_sets(base, prompts: pd.DataFrame, samples: int, batch_size: int, seed: int, r_star) -> pd.DataFrame:
    """Per prompt (`prompts`: id, prompt, continuation): `samples` base continuations and the human one, labelled
    with R* of prompt + continuation (NaN without R*). Empty continuations and a prompt's repeated ones are dropped
    (they carry no order); `group` numbers the prompts."""
    drawn = base.samples(prompts["prompt"].tolist(), samples, batch_size, seed + PROMPT_SETS_SEED)
    rows = []
    for group, (row, continuations) in enumerate(zip(prompts.itertuples(index=False), drawn)):
        candidates = [*(("base", c) for c in continuations), ("human", row.continuation)]
        seen = set()
        for source, continuation in candidates:
            if not continuation.strip() or continuation.strip() in seen:
                continue
            seen.add(continuation.strip())
            rows.append(
                {"group": group, "id": row.id, "prompt": row.prompt, "continuation": continuation, "source": source}
            )
    sets = pd.DataFrame(rows, columns=["group", "id", "prompt", "continuation", "source"])
    sets["r_star"] = r_star_of(r_star, (sets["prompt"] + sets["continuation"]).tolist())
    return sets


def per_prompt_spearman(r_hat: np.ndarray, r_star: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Spearman correlation of R-hat with R* among each prompt's continuations (NaN where either is constant or a
    prompt has fewer than three), in the order of the prompts' first appearance."""
    frame = pd.DataFrame({"r_hat": r_hat, "r_star": r_star, "group": groups})
    values = []
    for _, rows in frame.groupby("group", sort=False):
        if len(rows) < 3 or rows["r_hat"].nunique() < 2 or rows["r_star"].nunique() < 2:
            values.append(np.nan)
        else:
            values.append(spearmanr(rows["r_hat"], rows["r_star"]).statistic)
    return np.asarray(values, dtype=np.float64)


def within_prompt_pairs(r_hat: np.ndarray, r_star: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of continuations of one prompt whose R* differ: whether R-hat orders it as R* does (a tie is
    wrong), and |delta R*|."""
    right, gaps = [], []
    frame = pd.DataFrame({"r_hat": r_hat, "r_star": r_star, "group": groups})
    for _, rows in frame.groupby("group", sort=False):
        hat, star = rows["r_hat"].to_numpy(), rows["r_star"].to_numpy()
        first, second = np.triu_indices(len(rows), k=1)
        differ = star[first] != star[second]
        first, second = first[differ], second[differ]
        right.append(np.sign(hat[first] - hat[second]) == np.sign(star[first] - star[second]))
        gaps.append(np.abs(star[first] - star[second]))
    return np.concatenate(right or [np.zeros(0, bool)]), np.concatenate(gaps or [np.zeros(0)])


def gap_label(low: float, high: float) -> str:
    """'gap_1_3' for |delta R*| in [1, 3); 'gap_3_inf' for 3 and more."""
    return f"gap_{low:g}_{'inf' if np.isinf(high) else f'{high:g}'}"


def within_prompt_metrics(
    r_hat: np.ndarray, r_star: np.ndarray, groups: np.ndarray, samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """`within_prompt_spearman` (mean over prompts, with its percentile bootstrap interval over prompts),
    `within_prompt_pair_accuracy` and its value in each |delta R*| bin (`within_prompt_pair_accuracy_gap_*`)."""
    per_prompt = per_prompt_spearman(r_hat, r_star, groups)
    per_prompt = per_prompt[np.isfinite(per_prompt)]
    values = {"within_prompt_spearman": float(np.mean(per_prompt)) if per_prompt.size else np.nan}
    if per_prompt.size > 1:
        low, high = metrics.bootstrap_interval(np.mean, per_prompt, samples=samples, seed=seed)
        values.update({"within_prompt_spearman_ci_low": low, "within_prompt_spearman_ci_high": high})
    right, gaps = within_prompt_pairs(r_hat, r_star, groups)
    values["within_prompt_pair_accuracy"] = float(right.mean()) if right.size else np.nan
    for low, high in zip(GAP_BINS[:-1], GAP_BINS[1:]):
        chosen = (gaps >= low) & (gaps < high)
        key = f"within_prompt_pair_accuracy_{gap_label(low, high)}"
        values[key] = float(right[chosen].mean()) if chosen.any() else np.nan
    return values


def paired_difference(
    r_a: np.ndarray, r_b: np.ndarray, r_star: np.ndarray, groups: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over prompts of reward a's per-prompt Spearman with R* minus reward b's, with a percentile bootstrap
    interval that resamples the same prompts for both (a paired interval)."""
    a, b = per_prompt_spearman(r_a, r_star, groups), per_prompt_spearman(r_b, r_star, groups)
    both = np.isfinite(a) & np.isfinite(b)
    difference = a[both] - b[both]
    low, high = metrics.bootstrap_interval(np.mean, difference, samples=samples, seed=seed)
    return float(difference.mean()), low, high


def text_statistics(texts: list[str], tokenizer, base_log_likelihood: np.ndarray | None = None) -> pd.DataFrame:
    """Simple statistics of each text: its length in tokens (the reward's tokenizer), its share of newline and of
    punctuation characters, and the base model's mean log-probability per token of it where given (else NaN)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    punctuation = set(string.punctuation)
    return pd.DataFrame(
        {
            "length_tokens": lengths,
            "newline_share": [t.count("\n") / max(len(t), 1) for t in texts],
            "punctuation_share": [sum(c in punctuation for c in t) / max(len(t), 1) for t in texts],
            "base_log_likelihood": np.full(len(texts), np.nan) if base_log_likelihood is None else base_log_likelihood,
        }
    )


def statistic_correlations(r_hat: np.ndarray, statistics: pd.DataFrame) -> dict[str, float]:
    """`<statistic>_spearman`: R-hat's Spearman correlation with each text statistic (NaN where one is constant or
    was not measured)."""
    values = {}
    for name in TEXT_STATISTICS:
        column = statistics[name].to_numpy(dtype=np.float64)
        unknown = np.isnan(column).any() or np.ptp(column) == 0 or np.ptp(r_hat) == 0
        values[f"{name}_spearman"] = np.nan if unknown else float(spearmanr(r_hat, column).statistic)
    return values


NOTABLE_SPEARMAN = 0.3  # a text statistic's |Spearman| with R-hat worth a sentence when there is nothing to compare


def statistic_warning(correlations: dict[str, float], r_star_spearman: float | None = None) -> str:
    """A plain sentence when a text statistic explains R-hat better than anything else it was compared with (R*
    when given; else at |Spearman| >= `NOTABLE_SPEARMAN`), '' otherwise. A reward whose strongest correlate is its
    texts' length learned length."""
    name, value = max(
        ((n, correlations[f"{n}_spearman"]) for n in TEXT_STATISTICS if np.isfinite(correlations[f"{n}_spearman"])),
        key=lambda item: abs(item[1]),
        default=("", np.nan),
    )
    if r_star_spearman is not None and not np.isfinite(r_star_spearman):
        r_star_spearman = None  # R* constant on these texts: nothing to compare with
    if not name or abs(value) < NOTABLE_SPEARMAN:
        return ""
    label = name.replace("_", " ")
    if r_star_spearman is not None and abs(r_star_spearman) >= abs(value):
        return ""
    versus = f", more than with R* ({r_star_spearman:+.2f})" if r_star_spearman is not None else ""
    return (
        f"Caution: the recovered reward tracks the texts' {label} (Spearman {value:+.2f} on held-out human texts"
        f"{versus}); it may have learned what the aligned model changed in its texts' {label}, not its reward."
    )
