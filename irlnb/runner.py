"""`irlnb run`: execute the stages' notebooks with papermill into runs/<name>/.

What the runner guarantees:
- everything is validated (params, notebook parameter names, hub reachability) before a stage runs
  or anything is written under runs/;
- a stage counts as complete only once its marker `stages/<stage>.json` is written, which happens
  after its notebook finished; a stage killed mid-way has no marker and is redone from scratch;
- a complete stage with identical settings (its own and its upstream stages') is skipped; one with
  different settings is refused unless --force, so a finished run is never overwritten silently.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from irlnb import runio
from irlnb.config import Config, settings_digest
from irlnb.provenance import provenance
from irlnb.sources import check_hub_source, parse_source
from irlnb.stages import REPO_ROOT, STAGES, Stage, check_notebook_parameters, get_stage


class RunError(RuntimeError):
    """A run that cannot go ahead; the message is one line."""


def stage_digest(stage: Stage, settings: dict, upstream: dict[str, str]) -> str:
    """What identifies a stage's result: its settings, what the stage fixes, and its upstream digests."""
    return settings_digest({"settings": {**settings, **stage.fixed}, "upstream": upstream})


def stage_digests(config: Config) -> dict[str, str]:
    """Each stage's settings digest, chained through the stages it needs."""
    digests: dict[str, str] = {}
    for stage in STAGES:
        digests[stage.name] = stage_digest(stage, config.flat(stage.sections),
                                           {name: digests[name] for name in stage.needs})
    return digests


def marker_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / f"{stage.name}.json"


def digest_from_markers(run_dir: Path, stage: Stage, settings: dict) -> str:
    """A stage's digest from its settings and the markers of the upstream stages it reads.

    Equals `stage_digests(config)[stage.name]` when the upstream stages finished with that config;
    a notebook (which sees only its own settings) uses it to key its resumable state.
    """
    upstream = {}
    for name in stage.needs:
        marker = runio.read_json(marker_path(Path(run_dir), get_stage(name)))
        if not marker:
            raise RunError(f"{run_dir}: stage {stage.name} needs {name}, which is not complete")
        upstream[name] = marker["digest"]
    return stage_digest(stage, settings, upstream)


def is_complete(run_dir: Path, stage: Stage, digest: str) -> bool:
    marker = runio.read_json(marker_path(run_dir, stage))
    return bool(marker) and marker.get("digest") == digest


def hub_sources(config: Config) -> list:
    specs = {role: spec for role, spec in config.to_dict()["sources"].items()}
    return [parse_source(spec, role) for role, spec in specs.items() if spec.startswith("hub:")]


def prepare_environment(config: Config) -> None:
    """Environment the notebook kernels inherit: offline unless the params name a hub source."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if not hub_sources(config):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def plan(config: Config, run_dir: Path, only: str | None, force: bool) -> list[Stage]:
    """The stages to execute; refuses to overwrite finished work without --force."""
    digests = stage_digests(config)
    selected = [get_stage(only)] if only else list(STAGES)
    for stage in selected:
        check_notebook_parameters(stage)
    if only:
        for name in selected[0].needs:
            if not is_complete(run_dir, get_stage(name), digests[name]):
                raise RunError(f"{run_dir}: stage {only} needs {name}, which is not complete with these params; "
                               f"run it first (irlnb run {config.path} --only {name})")
    todo = []
    for stage in selected:
        marker = runio.read_json(marker_path(run_dir, stage))
        if marker and marker.get("digest") == digests[stage.name] and not force:
            continue
        if marker and not force:
            raise RunError(f"{run_dir}: stage {stage.name} already finished with other settings; rerun with --force "
                           "to overwrite it, or choose another run.name")
        todo.append(stage)
    return todo


def execute_stage(stage: Stage, config: Config, run_dir: Path, digest: str, log: Callable[[str], None]) -> float:
    import papermill

    marker = marker_path(run_dir, stage)
    marker.unlink(missing_ok=True)  # from here on the stage is incomplete until it finishes again
    shutil.rmtree(run_dir / stage.output, ignore_errors=True)
    runio.drop_metrics(run_dir, stage.metrics_prefixes)
    executed = run_dir / "notebooks" / f"{stage.name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"run_dir": str(run_dir.resolve()), **config.flat(stage.sections), **stage.fixed}
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(stage.notebook_path), str(executed), parameters=parameters,
                                   kernel_name="python3", cwd=str(stage.notebook_path.parent),
                                   progress_bar=sys.stderr.isatty(), log_output=False)
    except papermill.PapermillExecutionError as err:
        raise RunError(f"stage {stage.name} failed: {err.ename}: {err.evalue.splitlines()[0] if err.evalue else ''} "
                       f"(see {executed})") from None
    seconds = time.perf_counter() - started
    runio.write_json_atomic(marker, {"digest": digest, "seconds": seconds,
                                     "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return seconds


def publish_figures(run_dir: Path, target: Path, manifest: dict) -> int:
    """Copy the run's figures to the configured figures directory, with a provenance note."""
    source = run_dir / "figures"
    if not source.is_dir():
        return 0
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if p.is_file())
    for path in files:
        shutil.copy2(path, target / path.name)
    runio.write_json_atomic(target / "provenance.json", {
        "run_dir": str(run_dir), "params": manifest.get("params_file"), "git": manifest.get("git"),
        "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [p.name for p in files],
    })
    return len(files)


def run(config: Config, only: str | None = None, force: bool = False, runs_dir: str | None = None,
        log: Callable[[str], None] = print) -> Path:
    """Execute the pipeline (or one stage) of a validated config; returns the run directory."""
    run_dir = (REPO_ROOT / (runs_dir or config.run.runs_dir) / config.run.name).resolve()
    todo = plan(config, run_dir, only, force)
    for source in hub_sources(config):
        check_hub_source(source)
    if not todo:
        log(f"{run_dir}: every stage is complete with these settings; nothing to do (--force to redo)")
        return run_dir
    prepare_environment(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = run_dir / runio.MANIFEST_FILE
    manifest = runio.read_json(manifest_file, default={})
    manifest.update({"params_file": config.path, "params": config.to_dict(), **provenance(REPO_ROOT)})
    manifest.setdefault("stages", {})
    digests = stage_digests(config)
    for number, stage in enumerate(todo, 1):
        log(f"[{number}/{len(todo)}] {stage.name} ...")
        seconds = execute_stage(stage, config, run_dir, digests[stage.name], log)
        # Per stage, since stages of one run directory may come from different invocations and commits.
        manifest["stages"][stage.name] = {"seconds": round(seconds, 2), "digest": digests[stage.name],
                                          "git": manifest["git"], "notebook": f"notebooks/{stage.name}.ipynb",
                                          "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        runio.write_json_atomic(manifest_file, manifest)
        runio.record_metrics(run_dir, {f"timing.{stage.name}_s": seconds})
        log(f"[{number}/{len(todo)}] {stage.name} done in {seconds:.1f} s")
    stage_seconds = [info["seconds"] for info in manifest["stages"].values()]
    runio.record_metrics(run_dir, {"timing.total_s": float(sum(stage_seconds))})
    if config.run.figures_dir:
        count = publish_figures(run_dir, REPO_ROOT / config.run.figures_dir, manifest)
        log(f"{count} figure files copied to {config.run.figures_dir}/")
    log(f"{run_dir}: metrics in {runio.METRICS_FILE}, provenance in {runio.MANIFEST_FILE}")
    return run_dir
