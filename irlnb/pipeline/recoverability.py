"""`irlnb recoverability`: when can a reward be recovered? IRL fidelity against how the expert was aligned.

Each point of the study aligns the base policy with R* in one way and budget (DPO on more preference
pairs, RLOO for more steps, best-of-n for larger n, rejection-sampling fine-tuning for more rounds),
with several alignment seeds (`rlhf.seed`), and runs the pipeline up to IRL (stages 01 to 04) in a
run directory of its own. Everything else is the base params file's (params/recoverability.yaml: the
default with a reduced demonstration design, so that a point takes minutes). The study reads each
run's metrics: IRL's test ROC-AUC, Spearman and STARC-style distance with R*, its floor (mean shift),
ceiling (supervised) and the reference of R*'s own comparisons; the expert's white-box log-ratio
(how far the policy learned R*: its Spearman with R*), its KL to the base, toxicity reduction and
perplexity. The DPO default of commit 2ad361b (regress/default-2ad361b.metrics.json; the default until its expert
became InfoNCA) is the study's full-size point for calibration.

Resumable point by point: every finished point x seed is written to the record
`regress/recoverability.metrics.json` with the digest of its IRL stage (the runner's: the settings
its result depends on) and its commit, and is never redone while that digest is unchanged; a killed
point goes on from its last finished stage (the runner's resume). Opt-in: hours on 2 cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from irlnb import metric_names as names
from irlnb.config import Config
from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, RunLayout, read_json, repo_relative, save_figure, write_json_atomic
from irlnb.objectives import MEAN_SHIFT
from irlnb.params_file import config_with, parse_config
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.rl.kinds import KINDS, kind_section

STUDY_RUNS = "runs/recoverability"
RECORD = REPO_ROOT / "regress" / "recoverability.metrics.json"
CALIBRATION_RECORD = REPO_ROOT / "regress" / "default-2ad361b.metrics.json"  # the DPO default: the full-size point
IRL_STAGE = "04_irl"
POINT_STAGES = ("01_curate", "02_ground_truth_rm", "03_rlhf_ground_truth", IRL_STAGE)  # what a point runs


class StudyError(IrlnbError, ValueError):
    """A study that cannot go on as asked (its record belongs to another base params file)."""


@dataclass(frozen=True)
class Point:
    """One kind and budget of aligning the expert (the budget is the setting its kind's record names)."""

    kind: str  # the name of a kind in irlnb.rl.kinds
    value: int  # its budget setting's value

    @property
    def budget(self) -> str:
        return KINDS[self.kind].budget

    @property
    def changes(self) -> dict[str, Any]:
        kind = KINDS[self.kind]
        # common random numbers only between two models of their own (a best-of-n expert is sampled independently)
        return {"rlhf.trainer": self.kind, kind.budget_setting(): self.value, "irl.matched": kind.has_weights}

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.budget}{self.value}"


# Each studied kind's budgets, from its record (irlnb.rl.kinds: `study_budgets`), the kinds in their `study_order`.
POINTS = tuple(
    Point(kind.name, value)
    for kind in sorted((kind for kind in KINDS.values() if kind.study_budgets), key=lambda kind: kind.study_order)
    for value in kind.study_budgets
)
# The IRL test metrics of each point: the fitted reward, its references, and the white-box reward.
METHODS = {
    "irl": None,
    "floor": MEAN_SHIFT.name,
    "ceiling": names.CEILING,
    "r_star_comparisons": names.R_STAR_COMPARISONS,
    "white_box": names.WHITE_BOX,
}
# Measured only for an expert with weights (white box), and two base samples per prompt (R*'s comparisons).
OPTIONAL_METHODS = ("white_box", "r_star_comparisons")
# Per method: test ROC-AUC against sign(R*), Spearman with R*, STARC-style distance to R*.
MEASURES = {"auc": "auc_mean", "spearman": "spearman_mean", "starc": names.STARC_DISTANCE + "_mean"}
EXPERT = ("toxicity_reduction", "perplexity_ratio", "kl")
SUMMARISED = (*(f"{method}_{measure}" for method in METHODS for measure in MEASURES), *EXPERT, "seconds")


def run_order(points: tuple[Point, ...] | list[Point]) -> list[Point]:
    """The order a seed's points run in: each kind's smallest budget, then each kind's largest, then the ones between,
    so that a study stopped early has every kind and the widest span first."""
    kinds = list(dict.fromkeys(point.kind for point in points))
    spread = {}
    for kind in kinds:
        budgets = [point for point in points if point.kind == kind]
        spread[kind] = budgets[:1] + budgets[-1:] + budgets[1:-1] if len(budgets) > 1 else budgets
    depth = max(len(budgets) for budgets in spread.values())
    return [spread[kind][rank] for rank in range(depth) for kind in kinds if rank < len(spread[kind])]


def point_config(base: Config, point: Point, seed: int) -> Config:
    """The base params with the point's changes, alignment seed `seed`, its own run name, nothing published.

    Demonstrations are sampled for every point (a best-of-n expert has no greedy output), so the
    points differ only in the expert. Validated as a params file is (`config_with`).
    """
    changes = {
        **point.changes,
        "rlhf.seed": seed,
        "irl.decoding": "sampled",
        "run.name": f"{point.name}-seed{seed}",
        "run.figures_dir": "",
    }
    return config_with(base, changes, f"recoverability point {point.name}, seed {seed}")


def point_digest(config: Config) -> str:
    """What a point's result depends on: the runner's digest of its IRL stage (settings of stages 01 to 04)."""
    return runner.stage_identities(config)[IRL_STAGE].digest


def expert_kl(kind: str, config: Config, metrics: dict[str, float]) -> float:
    """KL(expert || base) of the expert's samples: known in closed form for some kinds (best-of-n), else the
    white-box mean log-ratio of its sampled continuations where it has weights."""
    record = KINDS[kind]
    if record.kl_to_base is not None:
        return record.kl_to_base(kind_section(config, record))
    # Optional: the white-box reward is measured only for an expert with weights (and irl.white_box).
    return names.optional(metrics, names.irl_metric(names.WHITE_BOX, "test", "expert_log_ratio_mean"))


def collect(kind: str, value: int, seed: int, values: dict[str, float], config: Config, what: str) -> dict[str, Any]:
    """One row of the study from a run's metrics."""

    def read(policy: str, name: str) -> float:
        return names.require(values, names.policy_metric(policy, name), what)

    row: dict[str, Any] = {"kind": kind, "budget": KINDS[kind].budget, "value": value, "seed": seed}
    for method, objective in METHODS.items():
        for measure, metric in MEASURES.items():
            key = names.irl_metric(objective, "test", metric)
            # Optional (OPTIONAL_METHODS): missing, not zero, where the run has none.
            optional = method in OPTIONAL_METHODS
            row[f"{method}_{measure}"] = names.optional(values, key) if optional else names.require(values, key, what)
    row.update(
        toxicity_reduction=1 - read("ground_truth", names.TOXICITY_MEAN) / read("base", names.TOXICITY_MEAN),
        perplexity_ratio=read("ground_truth", names.PERPLEXITY) / read("base", names.PERPLEXITY),
        kl=expert_kl(kind, config, values),
        pairs_sign_differs=names.require(values, names.demonstrations_metric("train", names.SIGN_DIFFERS), what),
    )
    return row


def calibration_row(path: Path = CALIBRATION_RECORD) -> dict[str, Any] | None:
    """A recorded run's full-size point (the default's: its kind, budget and alignment seed), read from its record
    with the params it ran with; None when it has no record or its expert is not of a kind with a budget."""
    record = read_json(path)
    if record is None:
        return None
    default = parse_config(record["params"], str(path))
    kind = default.rlhf.trainer
    if kind not in KINDS or not KINDS[kind].budget:
        return None
    value = getattr(getattr(default, kind), KINDS[kind].budget)
    row = collect(kind, value, default.rlhf.seed, record["metrics"], default, f"{path.name} (calibration)")
    return {
        **row,
        "point": f"{kind}-{KINDS[kind].budget}{value}",
        "design": "full",
        "commit": (record.get("git") or {}).get("commit"),
        # its stages up to IRL, as a point's seconds count them
        "seconds": sum(record["metrics"][names.stage_seconds(stage)] for stage in POINT_STAGES),
    }


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    """The record the README quotes: per point and design, the mean, min and max over seeds of each quantity, as
    `recoverability.<design>.<point>.<quantity>_{mean,min,max}`, and its number of seeds; over every point x seed
    whose expert has weights, the rank correlation of IRL's Spearman with R* and the white-box one's."""
    record = {}
    for (design, kind, budget, value), group in rows.groupby(["design", "kind", "budget", "value"]):
        prefix = f"recoverability.{design}.{kind}.{budget}{value}."
        for column in (column for column in SUMMARISED if column in group):
            data = group[column].dropna()
            if len(data):
                record[prefix + column + "_mean"] = float(data.mean())
                record[prefix + column + "_min"] = float(data.min())
                record[prefix + column + "_max"] = float(data.max())
        record[prefix + "seeds"] = float(group["seed"].nunique())
    learned = rows.dropna(subset=["white_box_spearman", "irl_spearman"])
    if len(learned) >= 3:  # does IRL recover the reward as far as the policies learned it? (rank correlation)
        record["recoverability.irl_vs_white_box_spearman"] = float(
            learned["irl_spearman"].corr(learned["white_box_spearman"], method="spearman")
        )
        record["recoverability.points_with_weights"] = float(len(learned))
    return record


def finished_rows(record: Path | None, base: Config) -> dict[tuple[str, int], dict[str, Any]]:
    """The points x seeds a record already holds, by (point name, seed); refused when it is another study's."""
    data = read_json(record) if record is not None else None
    if not data:
        return {}
    if data.get("params_file") != repo_relative(base.path):
        raise StudyError(
            f"{record}: the record of a study on {data.get('params_file')}, not {repo_relative(base.path)}; "
            "move it away or pass --no-record"
        )
    return {(row["point"], row["seed"]): row for row in data.get("rows", []) if row.get("design") == "reduced"}


def run_timing(root: Path) -> tuple[float, str | None]:
    """The seconds a point's stages took and the commit its IRL stage ran at, from its run's manifest."""
    stages = read_json(RunLayout(root).manifest, default={})["stages"]
    return float(sum(stages[name]["seconds"] for name in POINT_STAGES)), stages[IRL_STAGE]["git"]["commit"]


def run_complete(config: Config, runs_dir: str) -> bool:
    """A point's run holds every stage up to IRL with its settings (reading it runs nothing)."""
    try:
        return not runner.plan(config, RunLayout.of_run(config.run, runs_dir), None, False, IRL_STAGE)
    except runner.RunError:  # a stage finished with other settings: running it says so
        return False


def time_left(points: list[str], seconds: dict[tuple[str, int], float]) -> float | None:
    """Seconds the named points (one entry per point x seed still to run) will take: each point's mean over the
    seeds it ran at, a point not yet run at any seed the mean of every run point x seed (a budget's time differs
    tenfold between kinds, so the mean alone misleads); None before anything ran."""
    if not seconds:
        return None
    overall = sum(seconds.values()) / len(seconds)
    by_point: dict[str, list[float]] = {}
    for (name, _), value in seconds.items():
        by_point.setdefault(name, []).append(value)
    return sum(sum(by_point[name]) / len(by_point[name]) if name in by_point else overall for name in points)


def clock(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def kept_rows(
    record: Path | None, base: Config, digests: dict[tuple[str, int], str]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows of the record a study keeps: a row whose settings have changed since is not kept (its point runs
    again); the rows of points this invocation does not cover (other kinds, other seeds) stay as they are."""
    return {
        key: row
        for key, row in finished_rows(record, base).items()
        if key not in digests or row.get("digest") == digests[key]
    }


def study_table(
    rows: list[dict[str, Any]], kept: dict[tuple[str, int], dict[str, Any]], reference: dict[str, Any] | None
) -> tuple[pd.DataFrame, int]:
    """The study so far: the rows this invocation ran or kept, the kept rows it has not reached yet, and the
    full-size point; with how many points x seeds it holds (the full-size point apart)."""
    reached = {(row["point"], row["seed"]) for row in rows}
    ahead = [row for key, row in kept.items() if key not in reached]
    return pd.DataFrame(rows + ahead + ([reference] if reference else [])), len(rows) + len(ahead)


@dataclass(frozen=True)
class StudyOutputs:
    """What a study writes after each point: its summary table and figure in its runs directory (the figure also in
    `figures`) and its record."""

    runs: Path  # the study's runs directory: a run directory per point x seed, summary.csv, the figure
    figures: Path | None  # another folder for the figure (the repository's figures/; None: none)
    record: Path | None  # the record (None: not written)
    plan: dict[str, Any]  # what the record says of the study beside its rows: params file, points, seeds, ...
    started: dict[str, Any]  # the provenance of the code this invocation loaded (each row names its own commit)

    def publish(self, table: pd.DataFrame, finished: int) -> pd.DataFrame:
        from irlnb.report.study_plots import recoverability_figure  # matplotlib loads only once the study publishes

        table.to_csv(self.runs / "summary.csv", index=False)
        figure = recoverability_figure(table)
        for folder in (self.runs, self.figures):
            if folder is not None:
                save_figure(figure, folder, "recoverability")
        if self.record is not None:
            rows = table.astype(object).where(table.notna(), None).to_dict("records")
            write_json_atomic(
                self.record,
                {
                    "metrics": summarise(table),
                    "rows": rows,
                    "finished": finished,
                    **self.plan,
                    **held_provenance(self.started, REPO_ROOT),
                },
            )
        return table


def run_point(point: Point, seed: int, config: Config, digest: str, runs_dir: str, log) -> dict[str, Any]:
    """Run a point x seed up to IRL (a complete run is only read) and return its row of the study."""
    root = runner.run(config, runs_dir=runs_dir, until=IRL_STAGE, log=log)
    seconds, commit = run_timing(root)
    values = RunLayout(root).read_metrics()
    row = collect(point.kind, point.value, seed, values, config, f"recoverability point {point.name}, seed {seed}")
    return {**row, "point": point.name, "design": "reduced", "digest": digest, "commit": commit, "seconds": seconds}


def run_study(
    base: Config,
    seeds: int = 2,
    kinds: tuple[str, ...] | None = None,
    runs_dir: str = STUDY_RUNS,
    figures_dir: Path | None = REPO_ROOT / "figures",
    record: Path | None = None,
    log: Callable[[str], None] = print,
    points: tuple[Point, ...] | None = None,
    calibration: Path | None = CALIBRATION_RECORD,
    stop_after: float | None = None,
) -> pd.DataFrame:
    """Every point x seed up to IRL, seed by seed (each seed covers every point, in `run_order`, before the next
    seed starts); the summary, the figure and the record are rewritten after each point. A point x seed the record
    holds with the same digest is kept, never redone. `stop_after`: seconds after which no further point starts
    (the study goes on at the next point when it is run again; 0 redraws the figure and the record from the points
    the record holds)."""
    chosen = [point for point in (points or POINTS) if kinds is None or point.kind in kinds]
    todo = [(point, seed, point_config(base, point, seed)) for seed in range(seeds) for point in run_order(chosen)]
    digests = {(point.name, seed): point_digest(config) for point, seed, config in todo}
    kept = kept_rows(record, base, digests)
    plan = {
        "params_file": repo_relative(base.path),
        "points": [point.name for point in chosen],
        "seeds": seeds,
        "planned": len(todo),
        "runs_dir": runs_dir,
    }
    outputs = StudyOutputs(REPO_ROOT / runs_dir, figures_dir, record, plan, provenance(REPO_ROOT))
    outputs.runs.mkdir(parents=True, exist_ok=True)
    reference = calibration_row(calibration) if calibration is not None else None
    rows: list[dict[str, Any]] = []
    # the seconds every finished point x seed took, kept or run now: what the time left is estimated from
    spent = {key: float(row["seconds"]) for key, row in kept.items() if row.get("seconds") is not None}
    started, stopped = time.monotonic(), False
    for number, (point, seed, config) in enumerate(todo, 1):
        key = (point.name, seed)
        if key in kept:
            log(f"recoverability [{number}/{len(todo)}] {point.name}, seed {seed}: kept (commit {kept[key]['commit']})")
            rows.append(kept[key])
            continue
        late = stopped or (stop_after is not None and time.monotonic() - started > stop_after)
        if late and not run_complete(config, runs_dir):  # a complete run is read, whatever the time
            if not stopped:
                log(f"recoverability: no point starts after {clock(time.monotonic() - started)}; run again to go on")
            stopped = True
            continue  # the points the record holds further on are still kept
        to_run = [later.name for later, later_seed, _ in todo[number - 1 :] if (later.name, later_seed) not in kept]
        seconds_left = time_left(to_run, spent)
        estimate = f", about {clock(seconds_left)} left" if seconds_left is not None else ""
        log(f"recoverability [{number}/{len(todo)}] {point.name}, alignment seed {seed}{estimate}")
        row = run_point(point, seed, config, digests[key], runs_dir, log)
        spent[key] = row["seconds"]
        rows.append(row)
        outputs.publish(*study_table(rows, kept, reference))
    return outputs.publish(*study_table(rows, kept, reference))
