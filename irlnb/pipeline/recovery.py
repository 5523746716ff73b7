"""`irlnb recovery` (`make recovery`): does IRL recover rewards it was never tuned on?

The pipeline's defaults were chosen on toxicity. An auditor's model was aligned on a reward nobody tells them. The
suite aligns the base policy on rewards that are not toxicity (`REWARDS`: sentiment and readability, scorers from
maintained PyPI packages, `irlnb.models.classifiers.SCORERS`) by two alignment kinds (`default_kinds`: the params'
own and best-of-n), audits each expert with every other setting the params file's (the default's), and judges the
recovered reward against the expert's own reward on the held-out human texts. The default's toxicity expert is one
row.

Each row is one run of stages 01 to 04 with `sources.toxicity_classifier` naming the row's reward: stage 03 aligns
the expert on it, and stage 04 recovers a reward from demonstrations alone, reading R* only to judge after its choices
(the saved reward is the same whatever R* is: `tests/test_recovery.py` holds that). So each row is audited exactly as
a brought model is, and judged against its true reward. Finished runs are kept; a killed one goes on from its last
finished stage. Written to `regress/recovery.metrics.json` and the figure `recovery` (or, named, beside them:
`record_path`). With several alignment seeds each row is also run as its replicates (`irlnb.pipeline.replicates`)
and its values get their spread over the seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlnb import metric_names as names
from irlnb.config import Config
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative, save_figure, write_json_atomic
from irlnb.objectives import MEAN_SHIFT
from irlnb.params_file import config_with
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.pipeline.replicates import replicate_config, spread_over_seeds
from irlnb.rl.kinds import kind_of

RUNS = "runs/recovery"
RECORD = REPO_ROOT / "regress" / "recovery.metrics.json"
FIGURE = "recovery"
PREFIX = "recovery."
TOXICITY = "embedded:tox-block"
REWARDS = (TOXICITY, "embedded:vader-sentiment", "embedded:flesch-readability")
BESIDE = "best_of_n"  # the kind every suite audits beside the params' own: it trains nothing, the base's samples
LAST_STAGE = "04_irl"  # an audit stops after IRL: nothing after it changes what was recovered

# What each row reports (name in the record -> the run's metric). The saved reward (`irl.test.*`) and the mean-shift
# baseline against the row's own reward, across prompts and within them; what text statistics it tracks; the
# expert's own log-ratio within prompts where it has weights (how close the expert is to its optimum).
VS_MEAN_SHIFT = names.within_prompt_vs(MEAN_SHIFT.name)
ROW_METRICS = {
    "auc": names.irl_metric(None, "test", "auc_mean"),
    "spearman": names.irl_metric(None, "test", "spearman_mean"),
    "within_prompt_spearman": names.irl_metric(None, "test", "within_prompt_spearman_mean"),
    "within_prompt_spearman_ci_low": names.irl_metric(None, "test", "within_prompt_spearman_ci_low_mean"),
    "within_prompt_spearman_ci_high": names.irl_metric(None, "test", "within_prompt_spearman_ci_high_mean"),
    "length_tokens_spearman": names.irl_metric(None, "test", "length_tokens_spearman_mean"),
    "newline_share_spearman": names.irl_metric(None, "test", "newline_share_spearman_mean"),
    "punctuation_share_spearman": names.irl_metric(None, "test", "punctuation_share_spearman_mean"),
    "base_log_likelihood_spearman": names.irl_metric(None, "test", "base_log_likelihood_spearman_mean"),
    "repetition_shift": names.irl_metric(None, "test", "repetition_shift_mean"),
    "length_directions_removed": names.IRL_LENGTH_DIRECTIONS,
    "block_chosen": names.layers_chosen(names.IRL_LAYERS),  # the block stage 04 chose without R* (none: irl.layer set)
    "mean_shift_auc": names.irl_metric(MEAN_SHIFT.name, "test", "auc_mean"),
    "mean_shift_spearman": names.irl_metric(MEAN_SHIFT.name, "test", "spearman_mean"),
    "mean_shift_within_prompt_spearman": names.irl_metric(MEAN_SHIFT.name, "test", "within_prompt_spearman_mean"),
    # the saved reward minus the mean-shift baseline within prompts, paired over the same prompts, with its interval
    "within_prompt_vs_mean_shift": VS_MEAN_SHIFT,
    "within_prompt_vs_mean_shift_ci_low": names.interval(VS_MEAN_SHIFT)[0],
    "within_prompt_vs_mean_shift_ci_high": names.interval(VS_MEAN_SHIFT)[1],
    "log_ratio_within_prompt_spearman": names.irl_metric(names.WHITE_BOX, "test", "within_prompt_spearman_mean"),
    # references, not IRL: the same head fitted on the row's reward (its sign on the demonstration texts; R*'s own
    # ordering of pairs of base samples): how much of that reward the features carry at all
    "ceiling_spearman": names.irl_metric(names.CEILING, "test", "spearman_mean"),
    "r_star_comparisons_spearman": names.irl_metric(names.R_STAR_COMPARISONS, "test", "spearman_mean"),
    "expert_better_share": names.demonstrations_metric("test", "expert_better_share"),
    "base_reward_below_zero_share": names.policy_metric("base", "toxicity_ratio"),
    "expert_reward_below_zero_share": names.policy_metric("ground_truth", "toxicity_ratio"),
    "base_perplexity": names.policy_metric("base", "perplexity"),
    "expert_perplexity": names.policy_metric("ground_truth", "perplexity"),
}
# A best-of-n expert has no weights, so no log-ratio; a statistic constant over the held-out texts (no text with a
# line break) has no correlation, which the run leaves out of its metrics; R*'s own comparisons need two base
# samples per prompt; the base's log-likelihood of a text is measured since this suite's first record; a run whose
# params fix `irl.layer` chose no block.
OPTIONAL = (
    "base_log_likelihood_spearman",
    "block_chosen",
    "log_ratio_within_prompt_spearman",
    "newline_share_spearman",
    "punctuation_share_spearman",
    "r_star_comparisons_spearman",
)


def reward_name(reward: str) -> str:
    """'embedded:vader-sentiment' -> 'vader-sentiment' (the row's name in runs and the record)."""
    return reward.partition(":")[2] or reward


def row_config(base: Config, reward: str, kind: str) -> Config:
    """The params with R* the row's reward and the expert aligned by `kind`, a run name of its own, nothing published;
    every other setting the params file's. An expert with no model of its own (best-of-n) cannot share the base's random
    numbers in its demonstrations (`irl.matched: false`, which the config requires of it)."""
    changes: dict[str, Any] = {
        "sources.toxicity_classifier": reward,
        "rlhf.trainer": kind,
        "run.name": f"{base.run.name}-{reward_name(reward)}-{kind}",
        "run.figures_dir": "",
    }
    if not kind_of(kind).has_weights:
        changes["irl.matched"] = False
    return config_with(base, changes, f"recovery row {reward_name(reward)} by {kind}")


def row_values(metrics: dict[str, float], where: str) -> dict[str, float]:
    """The row's `ROW_METRICS` from one run's metrics; a missing one is refused in one line, but for `OPTIONAL` ones
    (left out of the row)."""
    values = {}
    for name, key in ROW_METRICS.items():
        if name in OPTIONAL:
            if key in metrics:
                values[name] = float(metrics[key])
        else:
            values[name] = float(names.require(metrics, key, f"the recovery row of {where}"))
    return values


def suite_table(values: dict[str, float]) -> pd.DataFrame:
    """The record's `recovery.<reward>.<kind>.<metric>` values as one row per (reward, kind)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in values.items():
        parts = key.removeprefix(PREFIX).split(".")
        if len(parts) != 3:
            continue
        reward, kind, name = parts
        rows.setdefault((reward, kind), {"reward": reward, "kind": kind})[name] = value
    return pd.DataFrame(list(rows.values()))


def default_kinds(config: Config) -> tuple[str, ...]:
    """The kinds a suite aligns by when none are named: the params' own (so the default's expert is one of its rows)
    and `BESIDE`, which trains nothing; beside a best-of-n params file, the config's default trainer."""
    own = config.rlhf.trainer
    return (own, BESIDE) if own != BESIDE else (own, type(config.rlhf)().trainer)


def suite_rows(rewards: tuple[str, ...], kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (reward, kind) of the suite: each reward aligned by each kind."""
    return [(reward, kind) for reward in rewards for kind in kinds]


def record_path(name: str = "") -> Path:
    """Where the suite is recorded: `RECORD`, or with `name` regress/recovery-NAME.metrics.json beside it (rows of
    other params, or the same rows over more alignment seeds), which leaves `RECORD` as it is."""
    return RECORD.with_name(f"recovery-{name}.metrics.json") if name else RECORD


def seed_config(row: Config, seed: int) -> Config:
    """A row at alignment seed `seed`: the row itself for 0, else its replicate (`rlhf.seed`, `<row>-seed<S>`)."""
    return row if seed == 0 else replicate_config(row, seed)


def run_suite(
    base: Config,
    rows: list[tuple[str, str]],
    runs_dir: str = RUNS,
    record: Path | None = RECORD,
    figures_dir: Path | None = REPO_ROOT / "figures",
    log: Callable[[str], None] = print,
    seeds: int = 1,
) -> dict[str, Any]:
    """Every row's (reward, kind) run up to IRL (finished ones kept), then the table of rows, recorded with its
    figure. With `seeds` > 1 each row is also aligned and audited at alignment seeds 1 to `seeds` - 1: the row's
    values stay seed 0's, and each gets `<name>_seeds_mean` and `<name>_seeds_sd` over the seeds beside it."""
    if seeds < 1:
        raise ValueError(f"a suite needs at least 1 alignment seed, got {seeds}")
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    values: dict[str, float] = {}
    runs = []
    for number, (reward, kind) in enumerate(rows, 1):
        row = row_config(base, reward, kind)
        per_seed = []
        for seed in range(seeds):
            log(f"recovery [{number}/{len(rows)}] reward {reward_name(reward)}, aligned by {kind}, seed {seed}")
            layout = RunLayout(runner.run(seed_config(row, seed), runs_dir=runs_dir, log=log, until=LAST_STAGE))
            runs.append(repo_relative(layout.root))
            per_seed.append(row_values(layout.read_metrics(), str(layout.root)))
        key = f"{PREFIX}{reward_name(reward)}.{kind}."
        values.update({key + name: value for name, value in per_seed[0].items()})
        if seeds > 1:
            for name in set.intersection(*(set(seed_values) for seed_values in per_seed)):
                spread = spread_over_seeds(np.array([seed_values[name] for seed_values in per_seed]))
                values.update({f"{key}{name}_seeds_{how}": spread[how] for how in ("mean", "sd")})
    result = {
        "metrics": values,
        "params_file": repo_relative(base.path),
        "seeds": seeds,
        "runs": runs,
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    if figures_dir is not None:
        from irlnb.report.study_plots import recovery_figure  # matplotlib loads only once the suite publishes

        save_figure(recovery_figure(suite_table(values)), Path(figures_dir), FIGURE)
    return result
