"""`irlnb recoverability`: when can a reward be recovered? IRL fidelity against how the expert was aligned.

Each point of the study aligns the base policy with R* in one way and budget (RLOO for more or
fewer steps, best-of-n for larger n, rejection-sampling fine-tuning for more rounds), with several
alignment seeds (`rlhf.seed`), and runs the pipeline up to IRL (stages 01 to 04) in a run
directory of its own. Everything else is the base params file's. The study then reads each run's
metrics: the IRL test AUC with its floor (mean shift) and ceiling (supervised), the white-box
log-ratio where the expert has weights, and the expert's toxicity reduction, perplexity and KL.
It writes `summary.csv`, `figures/recoverability.{png,pdf}` and a record `regress/recoverability.metrics.json`
(the README quotes it). Opt-in: it takes hours on 2 cores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from irlnb.config import Config
from irlnb.layout import REPO_ROOT, RunLayout, write_json_atomic
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import provenance


@dataclass(frozen=True)
class Point:
    """One way and budget of aligning the expert: what it changes in the params."""

    kind: str  # rloo, best_of_n, rft
    budget: str  # the setting that grows: steps, n, rounds
    value: int
    changes: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.budget}{self.value}"


POINTS = (
    *(Point("rloo", "steps", steps, {"rlhf.trainer": "rloo", "rlhf.steps": steps}) for steps in (20, 40, 120)),
    *(Point("best_of_n", "n", n, {"rlhf.trainer": "best_of_n", "rlhf.best_of_n": n}) for n in (2, 4, 8)),
    *(Point("rft", "rounds", rounds, {"rlhf.trainer": "rft", "rlhf.rft_rounds": rounds}) for rounds in (1, 2)),
)
STUDY_RUNS = "runs/recoverability"
# The IRL test metrics the figure shows: the fitted reward, its floor and ceiling, and the white-box reward.
METHODS = {
    "irl": "irl.test.auc_mean",
    "floor": "irl.mean_shift.test.auc_mean",
    "ceiling": "irl.supervised.test.auc_mean",
    "white_box": "irl.log_ratio.test.auc_mean",
}


def point_config(base: Config, point: Point, seed: int) -> Config:
    """The base params with the point's changes, alignment seed `seed`, its own run name, nothing published.

    Demonstrations are sampled for every point (a best-of-n expert has no greedy output), so the
    points differ only in the expert.
    """
    sections = {name: dataclasses.asdict(getattr(base, name)) for name in base.to_dict()}
    for dotted, value in {**point.changes, "rlhf.seed": seed, "irl.decoding": "sampled"}.items():
        section, key = dotted.split(".")
        sections[section][key] = value
    sections["run"].update(name=f"{point.name}-seed{seed}", figures_dir="")
    changed = {name: dataclasses.replace(getattr(base, name), **values) for name, values in sections.items()}
    return dataclasses.replace(base, **changed)


def expert_kl(point: Point, layout: RunLayout, metrics: dict[str, float]) -> float:
    """KL(expert || base) of the expert's samples: the white-box mean log-ratio of its sampled continuations
    where it has weights, log n - (n - 1) / n for best-of-n (the known bound)."""
    if point.kind == "best_of_n":
        return math.log(point.value) - (point.value - 1) / point.value
    return metrics.get("irl.log_ratio.test.expert_log_ratio_mean", math.nan)


def collect(point: Point, seed: int, layout: RunLayout) -> dict[str, Any]:
    values = layout.read_metrics()
    base_toxicity = values.get("rlhf.base.toxicity_mean", math.nan)
    row = {
        "kind": point.kind,
        "budget": point.budget,
        "value": point.value,
        "seed": seed,
        **{method: values.get(key, math.nan) for method, key in METHODS.items()},
        "toxicity_reduction": 1 - values.get("rlhf.ground_truth.toxicity_mean", math.nan) / base_toxicity,
        "perplexity_ratio": values.get("rlhf.ground_truth.perplexity", math.nan)
        / values.get("rlhf.base.perplexity", math.nan),
        "kl": expert_kl(point, layout, values),
        "pairs_sign_differs": values.get("irl.demos.train.sign_differs", math.nan),
    }
    return row


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    """The record the README quotes: each point's mean over seeds, as `recoverability.<point>.<quantity>`."""
    record = {}
    for (kind, budget, value), group in rows.groupby(["kind", "budget", "value"]):
        prefix = f"recoverability.{kind}.{budget}{value}."
        for column in (*METHODS, "toxicity_reduction", "perplexity_ratio", "kl"):
            data = group[column].dropna()
            if len(data):
                record[prefix + column + "_mean"] = float(data.mean())
                record[prefix + column + "_min"] = float(data.min())
                record[prefix + column + "_max"] = float(data.max())
        record[prefix + "seeds"] = float(group["seed"].nunique())
    return record


def run_study(
    base: Config,
    seeds: int = 2,
    kinds: tuple[str, ...] | None = None,
    runs_dir: str = STUDY_RUNS,
    figures_dir: Path | None = REPO_ROOT / "figures",
    record: Path | None = None,
    log=print,
    points: tuple[Point, ...] | None = None,
) -> pd.DataFrame:
    """Every point x seed up to IRL (finished runs are kept), then the summary, the figure and the record."""
    from irlnb.report.plots import recoverability_figure  # matplotlib loads only once the runs are done

    rows = []
    chosen = [point for point in (points or POINTS) if kinds is None or point.kind in kinds]
    for number, point in enumerate(chosen, 1):
        for seed in range(seeds):
            config = point_config(base, point, seed)
            log(f"recoverability [{number}/{len(chosen)}] {point.name}, alignment seed {seed}")
            root = runner.run(config, runs_dir=runs_dir, until="04_irl", log=log)
            rows.append(collect(point, seed, RunLayout(root)))
    table = pd.DataFrame(rows)
    study_dir = REPO_ROOT / runs_dir
    table.to_csv(study_dir / "summary.csv", index=False)
    figure = recoverability_figure(table)
    for folder in (study_dir, figures_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for ext in ("png", "pdf"):
                figure.savefig(folder / f"recoverability.{ext}", dpi=150, bbox_inches="tight")
    if record is not None:
        write_json_atomic(
            record,
            {
                "metrics": summarise(table),
                "params_file": base.path,
                "points": [p.name for p in chosen],
                "seeds": seeds,
                "runs_dir": runs_dir,
                **provenance(REPO_ROOT),
            },
        )
    return table


def read_summary(runs_dir: str = STUDY_RUNS) -> pd.DataFrame:
    return pd.read_csv(REPO_ROOT / runs_dir / "summary.csv")
