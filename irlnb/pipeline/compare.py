"""`irlnb compare`: two runs' saved rewards on the same held-out texts, with paired intervals
(`irlnb.irl.comparison`), recorded in regress/compare-<name>.metrics.json with both runs' provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from irlnb import metric_names
from irlnb.compute import resolve_device
from irlnb.irl import comparison
from irlnb.layout import REPO_ROOT, RunLayout, read_json, repo_relative, write_json_atomic
from irlnb.pipeline.provenance import held_provenance, provenance

MEASURES = ("auc", "spearman", "within_prompt_spearman")


def record_path(name: str) -> Path:
    return REPO_ROOT / "regress" / f"compare-{name}.metrics.json"


def run_provenance(folder: Path) -> dict[str, Any]:
    """Where a compared run lives and the commit its stage 04 ran at (from its manifest)."""
    manifest = read_json(RunLayout(folder).manifest, default={})
    stage = manifest.get("stages", {}).get("04_irl", {})
    return {"run": repo_relative(folder), "04_irl_commit": stage.get("git", {}).get("commit")}


def compare(first: Path, second: Path, device: str = "cpu", record: Path | None = None) -> dict[str, Any]:
    """The comparison's metrics and provenance, written to `record` when given."""
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    values = comparison.compare_runs(first, second, resolve_device(device))
    result = {
        "metrics": values,
        "first": run_provenance(first),
        "second": run_provenance(second),
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    return result


def comparison_table(values: dict[str, float]) -> pd.DataFrame:
    """One row per measure: the first run's value, the second's, their difference and its paired interval."""
    rows = []
    for measure in MEASURES:
        key = metric_names.compare_metric
        if key(f"{measure}_difference") not in values:
            continue  # no prompt sets in common: no within-prompt row
        rows.append(
            {
                "measure": measure,
                "first": values[key(f"{measure}_first")],
                "second": values[key(f"{measure}_second")],
                "difference": values[key(f"{measure}_difference")],
                "ci_low": values[key(f"{measure}_difference_ci_low")],
                "ci_high": values[key(f"{measure}_difference_ci_high")],
            }
        )
    return pd.DataFrame(rows)
