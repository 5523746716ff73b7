"""`irlnb run`: execute the stages' notebooks with papermill into runs/<name>/.

What the runner guarantees:
- everything is validated (params, notebook parameters cells, hub reachability) before a stage
  runs or anything is written under runs/;
- a stage counts as complete only once its marker `stages/<stage>.json` is written, which happens
  after its notebook finished; a stage killed mid-way has no marker and is redone from scratch
  (a training inside it resumes from its last checkpoint);
- a complete stage whose digest is unchanged is skipped; one whose digest changed is refused
  unless --force, so a finished run is never overwritten silently. A stage's digest covers only
  the settings that change its result (see `irlnb.pipeline.stages`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import papermill

from irlnb.config import Config, settings_digest
from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, RunLayout, read_json, write_json_atomic
from irlnb.pipeline.provenance import provenance
from irlnb.pipeline.stages import STAGES, Stage, check_notebook, get_stage, stage_parameters
from irlnb.sources import check_hub_source, parse_source


class RunError(IrlnbError, RuntimeError):
    """A run that cannot go ahead; the message is one line."""


@dataclasses.dataclass(frozen=True)
class StageIdentity:
    """What a stage's result depends on: `key` (what later stages read) and `digest` (its whole result)."""

    key: str
    digest: str


def stage_identities(config: Config) -> dict[str, StageIdentity]:
    """Each stage's key and digest, its key chained through the keys of the stages it needs."""
    identities: dict[str, StageIdentity] = {}
    for stage in STAGES:
        key = settings_digest(
            {
                "settings": {name: config.value(name) for name in stage.keyed},
                "fixed": dict(stage.fixed),
                "upstream": {need: identities[need].key for need in stage.needs},
            }
        )
        digest = settings_digest({"key": key, "reports": {name: config.value(name) for name in stage.reported}})
        identities[stage.name] = StageIdentity(key, digest)
    return identities


def hub_sources(config: Config) -> list:
    specs = dataclasses.asdict(config.sources)
    return [parse_source(spec, role) for role, spec in specs.items() if spec.startswith("hub:")]


def prepare_environment(config: Config) -> None:
    """Environment the notebook kernels inherit: offline unless the params name a hub source."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if not hub_sources(config):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def plan(config: Config, layout: RunLayout, only: str | None, force: bool) -> list[Stage]:
    """The stages to execute.

    A complete stage with an unchanged digest is skipped (unless it is the one `--only --force`
    names); one that finished with other settings is refused without --force.
    """
    identities = stage_identities(config)
    selected = [get_stage(only)] if only else list(STAGES)
    for notebook in dict.fromkeys(stage.notebook for stage in selected):
        check_notebook(notebook)
    if only:
        for name in selected[0].needs:
            marker = read_json(layout.marker(name))
            if not marker or marker.get("key") != identities[name].key:
                raise RunError(
                    f"{layout.root}: stage {only} needs {name}, which is not complete with these params; "
                    f"run it first (irlnb run {config.path} --only {name})"
                )
    todo = []
    for stage in selected:
        marker = read_json(layout.marker(stage.name))
        unchanged = bool(marker) and marker.get("digest") == identities[stage.name].digest
        if unchanged and not (force and only):
            continue
        if marker and not unchanged and not force:
            raise RunError(
                f"{layout.root}: stage {stage.name} already finished with other settings; rerun with "
                "--force to overwrite it, or choose another run.name"
            )
        todo.append(stage)
    return todo


def execute_stage(stage: Stage, config: Config, layout: RunLayout, identity: StageIdentity) -> float:
    marker = layout.marker(stage.name)
    marker.unlink(missing_ok=True)  # from here on the stage is incomplete until it finishes again
    shutil.rmtree(layout.output(stage.output), ignore_errors=True)
    layout.drop_metrics(stage.metrics_prefixes)
    executed = layout.notebooks / f"{stage.name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"run_dir": str(layout.root), **stage_parameters(stage, config)}
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(stage.notebook_path),
            str(executed),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(stage.notebook_path.parent),
            progress_bar=sys.stderr.isatty(),
            log_output=False,
        )
    except papermill.PapermillExecutionError as err:
        raise RunError(
            f"stage {stage.name} failed: {err.ename}: {err.evalue.splitlines()[0] if err.evalue else ''} "
            f"(see {executed})"
        ) from None
    seconds = time.perf_counter() - started
    write_json_atomic(
        marker,
        {
            "digest": identity.digest,
            "key": identity.key,
            "seconds": seconds,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return seconds


def publish_figures(layout: RunLayout, target: Path, manifest: dict) -> int:
    """Copy the run's figures to the configured figures directory, with a provenance note."""
    source = layout.figures
    if not source.is_dir():
        return 0
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if p.is_file())
    for path in files:
        shutil.copy2(path, target / path.name)
    write_json_atomic(
        target / "provenance.json",
        {
            "run_dir": str(layout.root),
            "params": manifest.get("params_file"),
            "git": manifest.get("git"),
            "published": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": [p.name for p in files],
        },
    )
    return len(files)


def run(
    config: Config,
    only: str | None = None,
    force: bool = False,
    runs_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Execute the pipeline (or one stage) of a validated config; returns the run directory."""
    layout = RunLayout.of_run(config.run, runs_dir)
    todo = plan(config, layout, only, force)
    for source in hub_sources(config):
        check_hub_source(source)
    if not todo:
        log(f"{layout.root}: every stage is complete with these settings; nothing to do (--force to redo)")
        return layout.root
    prepare_environment(config)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = read_json(layout.manifest, default={})
    manifest.update({"params_file": config.path, "params": config.to_dict(), **provenance(REPO_ROOT)})
    manifest.setdefault("stages", {})
    identities = stage_identities(config)
    for number, stage in enumerate(todo, 1):
        log(f"[{number}/{len(todo)}] {stage.name} ...")
        seconds = execute_stage(stage, config, layout, identities[stage.name])
        # Per stage, since stages of one run directory may come from different invocations and commits.
        manifest["stages"][stage.name] = {
            "seconds": round(seconds, 2),
            "digest": identities[stage.name].digest,
            "key": identities[stage.name].key,
            "git": manifest["git"],
            "notebook": f"notebooks/{stage.name}.ipynb",
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json_atomic(layout.manifest, manifest)
        layout.record_metrics({f"timing.{stage.name}_s": seconds})
        log(f"[{number}/{len(todo)}] {stage.name} done in {seconds:.1f} s")
    stage_seconds = [info["seconds"] for info in manifest["stages"].values()]
    layout.record_metrics({"timing.total_s": float(sum(stage_seconds))})
    if config.run.figures_dir:
        count = publish_figures(layout, REPO_ROOT / config.run.figures_dir, manifest)
        log(f"{count} figure files copied to {config.run.figures_dir}/")
    log(f"{layout.root}: metrics in {layout.metrics.name}, provenance in {layout.manifest.name}")
    return layout.root
