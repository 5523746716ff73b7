"""Where every artifact of a run lives, and how the run's shared files are written.

A run directory (`runs/<run.name>/`) is the only channel between stages: each stage writes its
folder, later stages read it back. `RunLayout` names every path in it, so no other module spells
out a run-directory path. Shared files (metrics.json, markers, manifests) are written atomically:
a reader, or a kill, never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent  # `run.runs_dir` is relative to it

# Stage output folders inside a run directory (`_FOLDER`: not the metric prefixes of irlnb.metric_names).
CURATE_FOLDER = "curate"
GROUND_TRUTH_FOLDER = "ground_truth"
IRL_FOLDER = "irl"
ANALYSIS_FOLDER = "analysis"


def rlhf_folder(reward: str) -> str:
    """The output folder of the RLHF stage trained with `reward` (ground_truth, learned, random)."""
    return f"rlhf_{reward}"


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def of_run(cls, run, runs_dir: str | None = None) -> RunLayout:
        """The run directory of the `run` settings: <repo>/<runs_dir>/<name> (`runs_dir` overrides the setting)."""
        return cls(REPO_ROOT / (runs_dir or run.runs_dir) / run.name)

    # The run as a whole
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def cache(self) -> Path:
        """What frozen models computed (the backbone's features, the base's samples and log-probabilities), keyed
        by what each depends on, so shared by the runs of one runs directory (safe to delete)."""
        return self.root.parent / ".frozen-cache"

    def marker(self, stage: str) -> Path:
        """Written when a stage finishes: its digest, key and time. No marker, no finished stage."""
        return self.root / "stages" / f"{stage}.json"

    def checkpoints(self, stage: str) -> Path:
        """Resumable training state of a stage; outside its output folder, which a redo clears."""
        return self.root / "checkpoints" / stage

    def output(self, folder: str) -> Path:
        return self.root / folder

    # 01 and 02
    @property
    def curated(self) -> Path:
        return self.root / CURATE_FOLDER / "dataset"

    @property
    def ground_truth_scores(self) -> Path:
        return self.root / GROUND_TRUTH_FOLDER / "scores.parquet"

    # 03
    def policy(self, reward: str) -> Path:
        return self.root / rlhf_folder(reward) / "policy"

    def continuations(self, reward: str) -> Path:
        return self.root / rlhf_folder(reward) / "continuations.parquet"

    def train_log(self, reward: str) -> Path:
        return self.root / rlhf_folder(reward) / "train_log.csv"

    # 04
    @property
    def demonstrations(self) -> Path:
        return self.root / IRL_FOLDER / "demonstrations.parquet"

    @property
    def length_choice(self) -> Path:
        """How many repetition directions were removed from the features, each candidate's criterion
        (`irlnb.irl.repetition`)."""
        return self.root / IRL_FOLDER / "length_choice.csv"

    @property
    def layer_choice(self) -> Path:
        """Each candidate layer's criterion when notebook 04 chose the layer (`layer_choice.layer_table`)."""
        return self.root / IRL_FOLDER / "layer_choice.csv"

    @property
    def objective_ranking(self) -> Path:
        """The study's rewards ranked by validation pair log-likelihood, R*-free (`study.objective_ranking`)."""
        return self.root / IRL_FOLDER / "objective_ranking.csv"

    @property
    def prompt_sets(self) -> Path:
        """Each test prompt's base samples and human continuation with their R* (`irlnb.irl.within_prompt`)."""
        return self.root / IRL_FOLDER / "prompt_sets.parquet"

    @property
    def irl_epochs(self) -> Path:
        return self.root / IRL_FOLDER / "epochs.csv"

    @property
    def irl_test_by_seed(self) -> Path:
        return self.root / IRL_FOLDER / "test_by_seed.csv"

    @property
    def irl_test_scores(self) -> Path:
        return self.root / IRL_FOLDER / "test_scores.parquet"

    @property
    def learned_reward(self) -> Path:
        return self.root / IRL_FOLDER / "reward"

    @property
    def white_box_reward(self) -> Path:
        return self.root / IRL_FOLDER / "white_box_reward"

    @property
    def posterior_reward(self) -> Path:
        """The Laplace posterior's mean as a reward, with its covariance: `score(texts, return_std=True)`."""
        return self.root / IRL_FOLDER / "posterior_reward"

    @property
    def posterior_scores(self) -> Path:
        """Posterior mean and spread of every test text (human and demonstrations)."""
        return self.root / IRL_FOLDER / "posterior_scores.parquet"

    @property
    def posterior_contraction(self) -> Path:
        return self.root / IRL_FOLDER / "posterior_contraction.csv"

    @property
    def audit_extremes(self) -> Path:
        """The held-out human texts the saved reward ranks highest and lowest (`irlnb.report.audit`)."""
        return self.root / IRL_FOLDER / "audit_extremes.csv"

    @property
    def audit_words(self) -> Path:
        """The words whose presence moves the saved reward most on held-out human texts (`irlnb.report.audit`)."""
        return self.root / IRL_FOLDER / "audit_words.csv"

    # 05
    @property
    def disagreements(self) -> Path:
        return self.root / ANALYSIS_FOLDER / "disagreements.csv"

    # Shared files
    def read_metrics(self) -> dict[str, float]:
        return read_json(self.metrics, default={})

    def record_metrics(self, values: Mapping[str, float]) -> dict[str, float]:
        """Add flat name -> number entries to metrics.json; NaN or inf is refused, not saved."""
        clean = {}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metric {name!r} must be a finite number, got {value!r}")
            clean[name] = float(value)
        metrics = {**self.read_metrics(), **clean}
        write_json_atomic(self.metrics, metrics)
        return metrics

    def drop_metrics(self, prefixes: tuple[str, ...]) -> None:
        """Forget the metrics of a stage that is about to be redone."""
        metrics = self.read_metrics()
        kept = {k: v for k, v in metrics.items() if not k.startswith(prefixes)}
        if kept != metrics:
            write_json_atomic(self.metrics, kept)

    def save_figure(self, fig, name: str) -> list[Path]:
        """A matplotlib figure as PNG and PDF under figures/."""
        return save_figure(fig, self.figures, name)


def save_figure(fig, folder: Path, name: str) -> list[Path]:
    """A matplotlib figure as `folder`/`name`.png and .pdf (a run's under its figures/, a study's in its runs
    directory and the repository's figures/)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


# --------------------------------------------------------------------------------------------
# Atomic writes: a file or folder appears whole or not at all


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_atomic(
        path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    )


def build_folder_atomic(target: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a staging folder beside `target`, then rename it into place (a killed build never shows)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def repo_relative(path: str | Path) -> str:
    """A path as records name it: relative to the repository where it lies in it, else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: corrupted JSON ({err.msg} at line {err.lineno}); delete it or rerun with --force"
        ) from None
