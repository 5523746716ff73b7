"""Every key of a run's metrics.json, named once.

The stages that write metrics (curation, the ground-truth reward, each policy's evaluation, the IRL
study, the analysis, the runner's timings) and the code that reads them back (tables, figures, the
reward explorer, the recoverability study, regress) build their keys with this module, so a metric
renamed here is renamed for its writer and for every reader at once.

A key is `<stage prefix><name>`: `curate.`, `gt.`, `rlhf.<policy>.`, `irl.`, `analysis.`, `timing.`.
A reader gets a metric with `require` (a missing key raises `MissingMetricError`, naming the key and
the stage that writes it: a figure is never silently blank) or, for the few metrics a finished run may
legitimately lack, with `optional` (each call says why). `parse` names the family of any key the
package writes, and refuses one it does not know.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from irlnb.errors import IrlnbError

# --------------------------------------------------------------------------------------------
# Stage prefixes (each stage owns the keys under its prefix)

CURATE = "curate."
GROUND_TRUTH = "gt."
RLHF = "rlhf."
IRL = "irl."
ANALYSIS = "analysis."
TIMING = "timing."

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"  # a statistic's 95% interval: its key with these suffixes


def interval(key: str) -> tuple[str, str]:
    """The keys of the 95% interval of the statistic `key`: (`key`_ci_low, `key`_ci_high)."""
    return key + CI_LOW, key + CI_HIGH


# --------------------------------------------------------------------------------------------
# 01 curate


def curate_metric(name: str) -> str:
    return f"{CURATE}{name}"


def split_size(split: str) -> str:
    """How many curated comments a split holds."""
    return curate_metric(f"n_{split}")


def length_median(column: str) -> str:
    """The median of a length column of the curated comments (n_words, prompt_words, continuation_words)."""
    return curate_metric(f"{column}_median")


TOXIC_SHARE = curate_metric("toxic_share")


# --------------------------------------------------------------------------------------------
# 02 ground-truth reward


def ground_truth_prefix(all_texts: bool = False) -> str:
    """`gt.` for the test split (the numbers to report), `gt.all.` for every curated text (the paper's)."""
    return f"{GROUND_TRUTH}all." if all_texts else GROUND_TRUTH


GT_AUC_HUMAN = f"{GROUND_TRUTH}auc_human"
GT_EVALUATOR_AUC_HUMAN = f"{GROUND_TRUTH}evaluator_auc_human"  # the evaluator against the human labels
GT_TEXTS_PER_S = f"{GROUND_TRUTH}texts_per_s"


# --------------------------------------------------------------------------------------------
# 03 policies: rlhf.<policy>.<name>, and rlhf.<policy>.<decoding>.<name> for extra decodings

# The policies stage 03 evaluates, in the order the paper's Table 1 lists them: the base policy and
# the policies aligned with R* (ground_truth), the learned reward and a random reward.
POLICIES = ("base", "ground_truth", "learned", "random")
RETRAINED = ("learned", "random")  # aligned with a reward other than R*
# The statistics of a policy's continuations (each with an interval), by the ground-truth classifier
# and by the independent evaluator (EVALUATOR + statistic).
TOXICITY_MEAN, TOXICITY_RATIO = "toxicity_mean", "toxicity_ratio"
EVALUATOR = "evaluator_"
DISTINCT2, EMPTY_SHARE, PERPLEXITY = "distinct2", "empty_share", "perplexity"
# What stage 03 records of a training run.
TRAIN_PROMPTS = "train_prompts"
TRAIN_PROMPTS_CUT = "train_prompts_cut"
TRAIN_EMPTY_COMPLETIONS = "train_empty_completions"
TRAIN_RESUMED_FROM_STEP = "train_resumed_from_step"


def policy_prefix(policy: str, decoding: str | None = None) -> str:
    """`rlhf.<policy>.` (its own outputs), or `rlhf.<policy>.<decoding>.` (another decoding, e.g. sampled)."""
    return f"{RLHF}{policy}." if decoding is None else f"{RLHF}{policy}.{decoding}."


def policy_metric(policy: str, name: str) -> str:
    return policy_prefix(policy) + name


def r_star_in(values) -> bool:
    """Whether stage 03 judged its policies by R* (a run without R* records only the evaluator's toxicity)."""
    return any(policy_metric(tag, TOXICITY_MEAN) in values for tag in POLICIES)


# --------------------------------------------------------------------------------------------
# 04 IRL

SPLITS = ("train", "validation", "test")  # the curated comments' splits (stage 01), named in IRL's keys too
IRL_SEEDS = f"{IRL}seeds"
IRL_SAVED_SEED = f"{IRL}saved_seed"  # the repeat saved as irl/reward
IRL_TIME = f"{IRL}time."  # + part + "_s": where stage 04's time went (sampling, features, fitting, ...)
IRL_LENGTH = f"{IRL}length."  # + name: the repetition directions removed (irlnb.irl.repetition)
IRL_LENGTH_DIRECTIONS = f"{IRL_LENGTH}directions"  # how many were removed
IRL_LENGTH_SHIFT = f"{IRL_LENGTH}validation_repetition_shift"  # what the chosen map's Laplace head pays for repetition


def irl_metric(objective: str | None, split: str, name: str) -> str:
    """`irl.<objective>.<split>.<name>` for one objective (`irlnb.objectives`) or reference (the ceiling, the white-box
    log-ratio), or `irl.<split>.<name>` for the objective whose reward is saved (`objective` None)."""
    return f"{IRL}{split}.{name}" if objective is None else f"{IRL}{objective}.{split}.{name}"


def within_prompt_vs(objective: str) -> str:
    """`irl.test.within_prompt_spearman_vs_<objective>`: how much better the saved reward orders the test prompts'
    continuations than `objective`'s head (the mean over prompts of the paired difference; its interval beside it)."""
    return irl_metric(None, "test", f"within_prompt_spearman_vs_{objective}")


def demonstrations_metric(split: str, name: str) -> str:
    """`irl.demos.<split>.<name>`: counts and R* evidence of a split's demonstration pairs."""
    return f"{IRL}demos.{split}.{name}"


def posterior_metric(name: str) -> str:
    """`irl.posterior.test.<name>`: is the posterior's spread worth anything on test texts?"""
    return f"{IRL}posterior.test.{name}"


def contraction_metric(pairs: str, name: str) -> str:
    """`irl.posterior.contraction.<pairs>.<name>`: the posterior fitted on `pairs` pairs ('all': every one)."""
    return f"{IRL}posterior.contraction.{pairs}.{name}"


def irl_fits(objective: str | None) -> str:
    """`irl.<objective>.fits`: how many fits its `_mean` keys average (1: one deterministic fit, which has no
    `_sd` and no accuracy_min/max), or `irl.fits` for the objective whose reward is saved (`objective` None)."""
    return f"{IRL}fits" if objective is None else f"{IRL}{objective}.fits"


SIGN_DIFFERS = "sign_differs"  # irl.demos.<split>.sign_differs: pairs whose two texts R* calls differently
SEED_SPEARMAN_MEDIAN = irl_metric(None, "test", "seed_spearman_median")
SEED_SPEARMAN_MIN = irl_metric(None, "test", "seed_spearman_min")
# STARC distance of R-hat to R* on both sides of the test pairs (0: the same up to a per-prompt shift and a
# positive scale; 2: opposite), see irlnb.metrics.starc_distance
STARC_DISTANCE = "starc_distance"
# The references beside the IRL objectives (whose names are their records', irlnb.objectives), each one
# deterministic fit: the ceiling, the Laplace head on R*'s own comparisons of base samples, and the white-box reward
# (given the prompt, and on whole texts). They read R* or the expert's weights: references, not IRL results.
CEILING, R_STAR_COMPARISONS = "supervised", "r_star_comparisons"
WHITE_BOX, WHITE_BOX_WHOLE = "log_ratio", "log_ratio_whole"


# --------------------------------------------------------------------------------------------
# 05 analysis

SCORER_SUFFIXES = ("", "_evaluator")  # the ground-truth classifier's share, the independent evaluator's


def reduction_share(policy: str, scorer_suffix: str = "") -> str:
    """`analysis.<policy>_reduction_share[_evaluator]`: the share of R*'s toxicity reduction `policy` achieves."""
    return f"{ANALYSIS}{policy}_reduction_share{scorer_suffix}"


# --------------------------------------------------------------------------------------------
# Timings, written by the runner

TOTAL_SECONDS = f"{TIMING}total_s"


def stage_seconds(stage: str) -> str:
    return f"{TIMING}{stage}_s"


# --------------------------------------------------------------------------------------------
# The layer choice (irlnb.irl.layer_choice): made by stage 04 (irl.layers.*) or by `irlnb layers` on a finished run
# (layers.*, in regress/layers-<run>.metrics.json)

LAYERS = "layers."
IRL_LAYERS = f"{IRL}{LAYERS}"


def layers_chosen(prefix: str = LAYERS) -> str:
    return f"{prefix}chosen"


def layers_seeds(prefix: str = LAYERS) -> str:
    return f"{prefix}seeds"


# `irlnb layers --average`: the reading that averages every block swept (`irlnb.irl.layer_choice.averaged_reading`),
# recorded as a layer of its own beside the blocks and the final normed state (-1)
AVERAGE_LAYER = -2
LAYER_NAMES = {-1: "final", AVERAGE_LAYER: "average"}


def layer_metric(layer: int, name: str, prefix: str = LAYERS, pooling: str | None = None) -> str:
    """`layers.<block>.<name>`, `layers.final.<name>` for -1 (the final normed state), `layers.average.<name>` for -2
    (the blocks' average, `AVERAGE_LAYER`), `layers.<block>.<pooling>.<name>` where poolings were
    compared; `prefix` IRL_LAYERS: the stage's."""
    return f"{prefix}{LAYER_NAMES.get(layer, layer)}.{f'{pooling}.' if pooling else ''}{name}"


# Two runs' saved rewards compared on the same held-out texts (`irlnb compare`, irlnb.irl.comparison)

COMPARE = "compare."


def compare_metric(name: str) -> str:
    """`compare.test.<name>`: of the first run's saved reward (`_first`), the second's (`_second`), or their
    difference (`_difference`, with `_ci_low`/`_ci_high`)."""
    return f"{COMPARE}test.{name}"


# An expert's distance from its KL optimum on validation, per candidate of `irlnb tune-expert` (irlnb.irl.optimum)

TUNE = "tune."
OPTIMUM_MEASURES = ("within_prompt_spearman", "perplexity_ratio", "toxicity_reduction", "distinct_2_ratio")


def tune_metric(candidate: str, measure: str) -> str:
    """`tune.<candidate>.<measure>`: a candidate (the digest of its settings' changes, or `chosen`)."""
    return f"{TUNE}{candidate}.{measure}"


# R* distilled into the policy's backbone at an expert's budget, per candidate of `irlnb distill` (irlnb.irl.distilled)

DISTILL = "distill."


def distill_metric(part: str, measure: str) -> str:
    """`distill.<part>.<measure>`: a candidate (the digest of its fitting), `chosen`, `train` (its own train
    prompts), `test` (stage 04's test prompt sets) or `budget` (`prompts`, `samples`)."""
    return f"{DISTILL}{part}.{measure}"


# --------------------------------------------------------------------------------------------
# Reading


class MissingMetricError(IrlnbError, LookupError):
    """A metric a reader needs is not in metrics.json; the message is one line naming it."""


def writer_stage(key: str) -> str:
    """The stage that writes `key` (the one to rerun when it is missing)."""
    if key.startswith(CURATE):
        return "01_curate"
    if key.startswith(GROUND_TRUTH):
        return "02_ground_truth_rm"
    if key.startswith(RLHF):
        policy = key.removeprefix(RLHF).split(".")[0]
        return f"03_rlhf_{'ground_truth' if policy == 'base' else policy}"  # base is evaluated with R*'s run
    if key.startswith(IRL):
        return "04_irl"
    if key.startswith(ANALYSIS):
        return "05_analysis"
    return "the run (irlnb run)"


def require(metrics: Mapping[str, Any], key: str, what: str) -> Any:
    """`metrics[key]`, or a one-line `MissingMetricError` naming `what` needs it, the key and the stage to rerun.

    `metrics` is a run's metrics (or any mapping or frame keyed by metric names, e.g. a runs table).
    """
    if key not in metrics:
        raise MissingMetricError(
            f"{what}: metric {key!r} is missing from metrics.json; rerun stage {writer_stage(key)}"
        )
    return metrics[key]


def optional(metrics: Mapping[str, Any], key: str, default: Any = math.nan) -> Any:
    """`metrics[key]`, or `default` when it is absent: only for a metric a finished run may legitimately lack
    (the white-box reward of an expert without weights, the posterior when it is off...); say why at the call."""
    return metrics.get(key, default)


# --------------------------------------------------------------------------------------------
# Parsing: every key the package writes belongs to one family

_WORD = r"[a-z0-9_]+"
_SPLIT = "|".join(SPLITS)
_POLICY = "|".join(POLICIES)
_INTERVAL = f"(?:{CI_LOW}|{CI_HIGH})?"
_POLICY_NAMES = "|".join(
    [
        rf"(?:{EVALUATOR})?(?:{TOXICITY_MEAN}|{TOXICITY_RATIO}){_INTERVAL}",
        DISTINCT2,
        EMPTY_SHARE,
        PERPLEXITY,
        TRAIN_PROMPTS,
        TRAIN_PROMPTS_CUT,
        TRAIN_EMPTY_COMPLETIONS,
        TRAIN_RESUMED_FROM_STEP,
    ]
)
_SCORERS = "|".join(SCORER_SUFFIXES)
FAMILIES = {  # family -> pattern of its keys; the first family that matches names a key
    "curate.split_size": rf"curate\.n_(?:{_SPLIT})",
    "curate.toxic_share": r"curate\.toxic_share",
    "curate.length_median": rf"curate\.{_WORD}_median",
    "gt.all": rf"gt\.all\.{_WORD}",
    "gt": rf"gt\.{_WORD}",
    "rlhf.policy": rf"rlhf\.(?:{_POLICY})\.(?:{_POLICY_NAMES})",
    "rlhf.policy.decoding": rf"rlhf\.(?:{_POLICY})\.{_WORD}\.(?:{_POLICY_NAMES})",
    "irl.seeds": r"irl\.seeds",
    "irl.saved_seed": r"irl\.saved_seed",
    "irl.fits": rf"irl\.(?:{_WORD}\.)?fits",
    "irl.demos": rf"irl\.demos\.(?:{_SPLIT})\.{_WORD}",
    "irl.time": rf"irl\.time\.{_WORD}_s",
    "irl.length": r"irl\.length\.(?:directions|validation_repetition_shift)",
    "irl.posterior": rf"irl\.posterior\.test\.{_WORD}",
    "irl.posterior.contraction": r"irl\.posterior\.contraction\.(?:\d+|all)\.(?:auc|std_mean)",
    "irl.chosen": rf"irl\.(?:{_SPLIT})\.{_WORD}",
    "irl.objective": rf"irl\.{_WORD}\.(?:{_SPLIT})\.{_WORD}",
    "analysis.reduction_share": rf"analysis\.(?:{'|'.join(RETRAINED)})_reduction_share(?:{_SCORERS}){_INTERVAL}",
    "layers.chosen": r"(?:irl\.)?layers\.(?:chosen|seeds)",
    "layers.layer": rf"(?:irl\.)?layers\.(?:\d+|{'|'.join(LAYER_NAMES.values())})\.(?:(?:last|mean)\.)?{_WORD}",
    "compare": rf"compare\.test\.{_WORD}",
    "tune": rf"tune\.(?:[0-9a-f]{{8}}|chosen)\.(?:{'|'.join(OPTIMUM_MEASURES)})",
    "distill": rf"distill\.(?:[0-9a-f]{{8}}|chosen|train|test|budget)\.{_WORD}",
    "timing.total": r"timing\.total_s",
    "timing.stage": rf"timing\.{_WORD}_s",
}
_COMPILED = {family: re.compile(pattern) for family, pattern in FAMILIES.items()}


def parse(key: str) -> str:
    """The family of a metric key (see FAMILIES); a key no family describes is refused."""
    for family, pattern in _COMPILED.items():
        if pattern.fullmatch(key):
            return family
    raise ValueError(f"metric {key!r} is not a name irlnb.metric_names knows")
