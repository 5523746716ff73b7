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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from irlnb import metric_names as names
from irlnb.config import Config, config_with
from irlnb.layout import REPO_ROOT, RunLayout, write_json_atomic
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import provenance
from irlnb.rl.kinds import KINDS


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


POINTS = (
    *(Point("dpo", prompts) for prompts in (100, 200, 400)),
    *(Point("rloo", steps) for steps in (20, 40, 120)),
    *(Point("best_of_n", n) for n in (2, 4, 8)),
    *(Point("rft", rounds) for rounds in (1, 2)),
)
STUDY_RUNS = "runs/recoverability"
# The IRL test metrics the figure shows: the fitted reward, its floor and ceiling, and the white-box reward.
METHODS = {
    "irl": names.irl_metric(None, "test", "auc_mean"),
    "floor": names.irl_metric(names.FLOOR, "test", "auc_mean"),
    "ceiling": names.irl_metric(names.CEILING, "test", "auc_mean"),
    "white_box": names.irl_metric(names.WHITE_BOX, "test", "auc_mean"),
}


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


def expert_kl(point: Point, config: Config, metrics: dict[str, float]) -> float:
    """KL(expert || base) of the expert's samples: known in closed form for some kinds (best-of-n), else the
    white-box mean log-ratio of its sampled continuations where it has weights."""
    kind = KINDS[point.kind]
    if kind.kl_to_base is not None:
        return kind.kl_to_base(getattr(config, point.kind))
    # Optional: the white-box reward is measured only for an expert with weights (and irl.white_box).
    return names.optional(metrics, names.irl_metric(names.WHITE_BOX, "test", "expert_log_ratio_mean"))


def collect(point: Point, seed: int, layout: RunLayout, config: Config) -> dict[str, Any]:
    values = layout.read_metrics()
    what = f"recoverability point {point.name}, seed {seed}"

    def read(policy: str, name: str) -> float:
        return names.require(values, names.policy_metric(policy, name), what)

    row = {
        "kind": point.kind,
        "budget": point.budget,
        "value": point.value,
        "seed": seed,
        **{
            # Optional: the white-box reward needs an expert with weights; its points are left out of the figure.
            method: names.optional(values, key) if method == "white_box" else names.require(values, key, what)
            for method, key in METHODS.items()
        },
        "toxicity_reduction": 1 - read("ground_truth", names.TOXICITY_MEAN) / read("base", names.TOXICITY_MEAN),
        "perplexity_ratio": read("ground_truth", names.PERPLEXITY) / read("base", names.PERPLEXITY),
        "kl": expert_kl(point, config, values),
        "pairs_sign_differs": names.require(values, names.demonstrations_metric("train", names.SIGN_DIFFERS), what),
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
            rows.append(collect(point, seed, RunLayout(root), config))
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
