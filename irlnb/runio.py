"""Reading and writing a run directory: atomic JSON, metrics.json, figures, stage folders."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so that a reader (or a kill) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupted JSON ({err.msg} at line {err.lineno}); delete it or rerun with --force") from None


def read_metrics(run_dir: str | Path) -> dict[str, float]:
    return read_json(Path(run_dir) / METRICS_FILE, default={})


def record_metrics(run_dir: str | Path, values: Mapping[str, float]) -> dict[str, float]:
    """Add flat name -> number entries to the run's metrics.json; NaN or inf is refused, not saved."""
    clean = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {name!r} must be a finite number, got {value!r}")
        clean[name] = float(value)
    metrics = read_metrics(run_dir)
    metrics.update(clean)
    write_json_atomic(Path(run_dir) / METRICS_FILE, metrics)
    return metrics


def drop_metrics(run_dir: str | Path, prefixes: tuple[str, ...]) -> None:
    """Forget the metrics of a stage that is about to be redone."""
    metrics = read_metrics(run_dir)
    kept = {k: v for k, v in metrics.items() if not k.startswith(prefixes)}
    if kept != metrics:
        write_json_atomic(Path(run_dir) / METRICS_FILE, kept)


def figures_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, run_dir: str | Path, name: str) -> list[Path]:
    """Save a matplotlib figure as PNG and PDF under the run's figures/ folder."""
    paths = [figures_dir(run_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths
