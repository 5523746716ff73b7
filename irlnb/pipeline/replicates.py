"""`irlnb replicates` (`make replicates`): the paper's Table 1 over alignment seeds.

One run of the whole pipeline per alignment seed (`rlhf.seed` 0, 1, ...: the expert aligned with R*,
IRL from it, and the policies re-aligned with R-hat and with a random reward all draw again), each in
a run directory of its own under runs/replicates/, every other setting the params file's. Finished
runs are kept, a killed one goes on from its last finished stage (the runner's resume).

Table 1 over the seeds: each policy's toxicity (mean, SD and range over seeds), and the share of R*'s
reduction that R-hat and the random reward keep, with a 95% interval from a two-level bootstrap that
resamples the seeds and, within them, the test prompts (paired across the four policies, as one run's
interval is), so it holds the seed-to-seed variance that one run's interval cannot. Written to
`regress/replicates.metrics.json` (the README's Table 1 reads it), with every metric's SD over the seeds
(`sd_over_seeds`: the spread `irlnb regress` draws its tolerances from). Opt-in: a default run per seed.

With `irl_only` each run stops after IRL (`IRL_END`): the expert aligned with R* and audited, per seed, without the
re-alignments; its record (`IRL_RECORD`) holds the IRL metrics and the expert's and base's toxicity over the seeds.

With `over="draws"` the replicates keep the alignment seed and redraw IRL's demonstrations instead (`irl.draw` 0, 1,
...: the same prompts, other samples; records `DRAWS_RECORD`, `DRAWS_IRL_RECORD`): the spread a change that only
resamples the demonstrations moves a metric by. Every replicate first adopts the stages that the params' own run, or
the first replicate, finished with the same settings (`runner.adopt_finished_stages`), so replicates of the draws
share one expert and the seeds share curation and R*; and they share its frozen cache (`share_frozen_cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from irlnb import metric_names as names
from irlnb.config import Config
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative, write_json_atomic
from irlnb.objectives import MEAN_SHIFT
from irlnb.params_file import config_with
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import held_provenance, provenance

REPLICATE_RUNS = "runs/replicates"
RECORD = REPO_ROOT / "regress" / "replicates.metrics.json"
IRL_END = "04_irl"  # where an IRL-only replicate stops
IRL_RECORD = REPO_ROOT / "regress" / "replicates-irl.metrics.json"
DRAWS_RECORD = REPO_ROOT / "regress" / "replicates-draws.metrics.json"
DRAWS_IRL_RECORD = REPO_ROOT / "regress" / "replicates-draws-irl.metrics.json"
PREFIX = "replicates."
METRICS_SUFFIX = ".metrics.json"
# What a replicate varies: the setting, the run name's suffix, and how records and regress name the spread.
VARIED = {"seeds": ("rlhf.seed", "seed", "alignment seeds"), "draws": ("irl.draw", "draw", "demonstration draws")}


def record_path(over: str, irl_only: bool, name: str = "") -> Path:
    """Where `irlnb replicates` records its replicates: the mode's record, or with `name` one beside it that keeps
    the mode's record as it is (regress/replicates-irl-NAME.metrics.json)."""
    record = {
        ("seeds", False): RECORD,
        ("seeds", True): IRL_RECORD,
        ("draws", False): DRAWS_RECORD,
        ("draws", True): DRAWS_IRL_RECORD,
    }[(over, irl_only)]
    return record.with_name(record.name.replace(METRICS_SUFFIX, f"-{name}{METRICS_SUFFIX}")) if name else record


def replicate_config(base: Config, seed: int, over: str = "seeds") -> Config:
    """The params with alignment seed (or demonstration draw) `seed`, a run name of its own, nothing published."""
    setting, suffix, what = VARIED[over]
    changes = {setting: seed, "run.name": f"{base.run.name}-{suffix}{seed}", "run.figures_dir": ""}
    return config_with(base, changes, f"replicate over {what}: {setting} {seed}")


def seed_bootstrap_share(
    base: np.ndarray, ground_truth: np.ndarray, other: np.ndarray, samples: int, seed: int
) -> tuple[float, float]:
    """95% interval of the mean over seeds of (base - other) / (base - ground_truth), each (seeds, prompts):
    each resample draws seeds with replacement, and prompts with replacement (the same prompts for every
    policy of a seed: paired). A drawn seed whose R* reduced nothing on the drawn prompts is left out of
    that resample (its share is undefined), and a resample with none left is skipped."""
    rng = np.random.default_rng(seed)
    count, prompts = base.shape
    values = []
    for _ in range(samples):
        seeds = rng.integers(0, count, count)
        shares = []
        for row in seeds:
            index = rng.integers(0, prompts, prompts)
            reduction = base[row, index].mean() - ground_truth[row, index].mean()
            if reduction > 0:
                shares.append((base[row, index].mean() - other[row, index].mean()) / reduction)
        if shares:
            values.append(np.mean(shares))
    if not values:
        raise ValueError("no bootstrap resample had a seed whose R* reduced toxicity")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# IRL of each seed's expert, summarised over the seeds: the saved reward's (and the mean-shift baseline's and the
# white-box log-ratio's) test numbers, across prompts and within them, and what else it tracks; the saved reward
# against the baseline within prompts; and the block the auditor's layer choice read
WITHIN_PROMPT_VS_MEAN_SHIFT = names.within_prompt_vs(MEAN_SHIFT.name)  # the saved reward against the baseline
IRL_OVER_SEEDS = (
    *(
        names.irl_metric(objective, "test", f"{statistic}_mean")
        for objective in (None, MEAN_SHIFT.name, names.WHITE_BOX)
        for statistic in ("auc", "spearman", "within_prompt_spearman", "length_tokens_spearman", "repetition_shift")
    ),
    WITHIN_PROMPT_VS_MEAN_SHIFT,
    *names.interval(WITHIN_PROMPT_VS_MEAN_SHIFT),
    names.layers_chosen(names.IRL_LAYERS),  # the block the auditor's choice read
)


def sd_over_seeds(per_run: list[Mapping[str, float]]) -> dict[str, float]:
    """Each finite metric every run holds, timings aside, with its SD over the runs: the spread between alignment
    seeds from which `irlnb regress` draws its tolerances (regress/tolerances.yaml, `replicates`)."""
    shared = set.intersection(*(set(run) for run in per_run))
    return {
        key: float(np.std([run[key] for run in per_run], ddof=1))
        for key in sorted(shared)
        if not key.startswith(names.TIMING) and all(np.isfinite(run[key]) for run in per_run)
    }


SPREAD = ("mean", "sd", "min", "max")  # what `spread_over_seeds` gives of a metric, in this order


def spread_over_seeds(data: np.ndarray) -> dict[str, float]:
    """`mean`, `sd`, `min`, `max` of one metric over the seeds' runs."""
    return dict(zip(SPREAD, (data.mean(), data.std(ddof=1), data.min(), data.max()), strict=True))


def table_over_seeds(layouts: list[RunLayout], samples: int, seed: int, irl_only: bool = False) -> dict[str, float]:
    """`replicates.<policy>.<statistic>_{mean,sd,min,max}` of each policy's toxicity, perplexity and distinct-2 over
    the runs, `replicates.<tag>_reduction_share[_evaluator]` (mean over seeds) with `_sd`, `_ci_low`, `_ci_high`, and
    `replicates.<IRL metric>_{mean,sd,min,max}` for each of `IRL_OVER_SEEDS` every run holds. With `irl_only` (runs
    that stopped after IRL) only the base and the expert are policies, and no share is computed."""
    from irlnb.report.tables import SCORERS, greedy_scores

    values: dict[str, float] = {"replicates.seeds": float(len(layouts))}
    per_run = [layout.read_metrics() for layout in layouts]
    for policy in names.POLICIES[:2] if irl_only else names.POLICIES:
        for statistic in (
            names.TOXICITY_MEAN,
            names.EVALUATOR + names.TOXICITY_MEAN,
            names.PERPLEXITY,
            names.DISTINCT2,
        ):
            data = np.array(
                [names.require(run, names.policy_metric(policy, statistic), "Table 1 over seeds") for run in per_run]
            )
            for how, value in spread_over_seeds(data).items():
                values[f"{PREFIX}{policy}.{statistic}_{how}"] = float(value)
    for key in IRL_OVER_SEEDS:
        if all(key in run for run in per_run):  # a white-box row only where the expert has weights
            for how, value in spread_over_seeds(np.array([run[key] for run in per_run])).items():
                values[f"{PREFIX}{key}_{how}"] = float(value)
    if irl_only:
        return values
    scored = [greedy_scores(layout) for layout in layouts]
    prompts = scored[0][0]
    for layout, (other, _) in zip(layouts, scored):
        if other != prompts:
            raise ValueError(
                f"{layout.root}: its test prompts differ from those of {layouts[0].root}; "
                "replicates differ only in the alignment seed or the demonstrations' draw"
            )
    for column, suffix in SCORERS.items():
        stacked = {
            tag: np.stack([frames[tag][column].to_numpy(float) for _, frames in scored]) for tag in names.POLICIES
        }
        for tag in names.RETRAINED:
            key = PREFIX + names.reduction_share(tag, suffix).removeprefix(names.ANALYSIS)
            shares = [run.get(names.reduction_share(tag, suffix)) for run in per_run]
            if any(share is None for share in shares):
                continue  # R* reduced nothing in a run by this scorer: its share is undefined there
            values[key] = float(np.mean(shares))
            values[key + "_sd"] = float(np.std(shares, ddof=1))
            low, high = seed_bootstrap_share(
                stacked["base"], stacked["ground_truth"], stacked[tag], samples=samples, seed=seed
            )
            values.update(zip(names.interval(key), (low, high)))
    return values


def summary_lines(values: Mapping[str, float]) -> list[str]:
    """The table over seeds as a person reads it, one line a metric: `key: mean ± sd (min to max)` for a metric's
    spread (`_mean`, `_sd`, `_min`, `_max`), `key: mean ± sd [ci_low, ci_high]` for a share with its interval, and
    any other value as it is."""
    lines, shown = [], set()
    for key, value in values.items():
        if key in shown:
            continue
        stem = key.removesuffix("_mean")
        spread = [f"{stem}_{statistic}" for statistic in SPREAD]
        with_interval = [f"{key}_sd", *names.interval(key)]
        if key.endswith("_mean") and all(part in values for part in spread):
            mean, sd, low, high = (values[part] for part in spread)
            lines.append(f"{stem}: {mean:.4f} ± {sd:.4f} ({low:.4f} to {high:.4f})")
            shown.update(spread)
        elif all(part in values for part in with_interval):
            sd, low, high = (values[part] for part in with_interval)
            lines.append(f"{key}: {value:.4f} ± {sd:.4f} [{low:.4f}, {high:.4f}]")
            shown.update([key, *with_interval])
        else:
            lines.append(f"{key}: {value:.4f}")
            shown.add(key)
    return lines


def share_frozen_cache(replicate: RunLayout, own_run: RunLayout) -> bool:
    """Link the replicates' runs directory's frozen cache to that of the params' own run, so what a frozen model
    computed there (the human texts' features, the base's samples of the test prompts, ...) is read, not computed
    again; content keys make every kept value valid in both (`irlnb.compute.frozen_cached`). Only where the
    replicates' directory has no cache of its own yet; returns whether it linked. The own cache is made first, so a
    link whose target was deleted with the own run's directory points at a folder again."""
    mine, theirs = replicate.cache, own_run.cache
    if mine.parent.resolve() == theirs.parent.resolve():
        return False  # one runs directory: one cache already
    theirs.mkdir(parents=True, exist_ok=True)
    if mine.exists() or mine.is_symlink():
        return False
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.symlink_to(theirs.resolve(), target_is_directory=True)
    return True


def run_replicates(
    base: Config,
    seeds: int = 3,
    runs_dir: str = REPLICATE_RUNS,
    record: Path | None = RECORD,
    log: Callable[[str], None] = print,
    irl_only: bool = False,
    over: str = "seeds",
) -> dict[str, Any]:
    """Every replicate's run (finished ones kept; with `irl_only` up to `IRL_END`), then Table 1 (or IRL) over them,
    recorded. `over`: what the replicates vary, the alignment seed ("seeds") or IRL's demonstrations ("draws")."""
    if over not in VARIED:
        raise ValueError(f"replicates vary {' or '.join(VARIED)}, not {over!r}")
    setting, _, what = VARIED[over]
    if seeds < 2:
        raise ValueError(f"replicates need at least 2 {what} to show a spread, got {seeds}")
    until = IRL_END if irl_only else None
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    own_run = RunLayout.of_run(base.run).root  # finished stages of the params' own run are shared, not redone
    if share_frozen_cache(RunLayout.of_run(replicate_config(base, 0, over).run, runs_dir), RunLayout(own_run)):
        log(f"replicates read and add to the frozen cache of {repo_relative(own_run.parent)}")
    layouts: list[RunLayout] = []
    for seed in range(seeds):
        config = replicate_config(base, seed, over)
        log(f"replicates [{seed + 1}/{seeds}] {setting} {seed}")
        for source in [own_run, *(layout.root for layout in layouts[:1])]:
            if adopted := runner.adopt_finished_stages(config, source, runs_dir, until):
                log(f"  {', '.join(adopted)}: finished with these settings in {repo_relative(source)}; copied")
        layouts.append(RunLayout(runner.run(config, runs_dir=runs_dir, log=log, until=until)))
    values = table_over_seeds(layouts, base.evaluation.bootstrap_samples, base.compute.seed, irl_only)
    result = {
        "metrics": values,
        "sd_over_seeds": sd_over_seeds([layout.read_metrics() for layout in layouts]),
        "params_file": repo_relative(base.path),
        "seeds": seeds,
        "varied": setting,  # what differs between the replicates, so what `sd_over_seeds` is a spread over
        "until": until,
        "runs": [repo_relative(layout.root) for layout in layouts],
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    return result
