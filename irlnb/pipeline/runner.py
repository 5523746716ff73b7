"""`irlnb run`: execute the stages' notebooks with papermill into runs/<name>/.

What the runner guarantees:
- everything is validated (params, notebook parameters cells, hub reachability) before a stage
  runs or anything is written under runs/;
- a stage counts as complete only once its marker `stages/<stage>.json` is written, which happens
  after its notebook finished; a stage killed mid-way has no marker and is redone from scratch
  (a training inside it resumes from its last checkpoint);
- a complete stage whose digest is unchanged is skipped; one whose digest changed is refused
  unless --force, so a finished run is never overwritten silently. A stage's digest covers only
  the settings that change its result (see `irlnb.pipeline.stages`);
- one writer per run directory: a second `irlnb run` on a run in use is refused in one line that
  names the holder; the lock of a killed run is taken over;
- the notebooks it executes know they run under the runner (`RUNNER_STAGE`); the same notebook run
  by hand works in a scratch run instead (see `irlnb.pipeline.context`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from irlnb import metric_names
from irlnb.config import Config
from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, RunLayout, read_json, write_json_atomic
from irlnb.models.policies import check_models
from irlnb.params_file import load_config, settings_digest
from irlnb.pipeline.lock import RunLock, check_free, process_running
from irlnb.pipeline.provenance import provenance
from irlnb.pipeline.stages import (
    RUNNER_STAGE,
    STAGES,
    Stage,
    check_notebook,
    get_stage,
    stage_parameters,
)
from irlnb.progress import TERMINAL
from irlnb.sources import check_hub_source, parse_source


class RunError(IrlnbError, RuntimeError):
    """A run that cannot go ahead; the message is one line."""


KERNEL_FOLDER_PREFIX = "irlnb-kernel-"  # each stage's kernel sockets, in a folder of their own under the temp folder
# An IPC socket's path must fit sockaddr_un's 107 bytes; jupyter_client names the sockets `kernel-<n>` in the folder.
KERNEL_FOLDER_MAX_LENGTH = 107 - len("/kernel-99999")
SHORT_TEMP = "/tmp"  # where the folder goes when the temp folder's path is too long for a socket's
KERNEL_OWNER = "owner.pid"  # in each kernel folder: the id of the process that made it


def kernel_folder() -> Path:
    """A private folder for a kernel's sockets, under the temp folder, or under /tmp where the temp folder's path
    is so long that a socket's path in it would not fit (zmq: `File name too long`). It holds the id of the process
    that made it, and the folders beside it that a killed run left are removed (`abandoned_kernel_folders`)."""
    folder = Path(tempfile.mkdtemp(prefix=KERNEL_FOLDER_PREFIX))
    if len(str(folder)) > KERNEL_FOLDER_MAX_LENGTH and Path(SHORT_TEMP).is_dir():
        folder.rmdir()
        folder = Path(tempfile.mkdtemp(prefix=KERNEL_FOLDER_PREFIX, dir=SHORT_TEMP))
    (folder / KERNEL_OWNER).write_text(str(os.getpid()))
    for abandoned in abandoned_kernel_folders(folder.parent):
        shutil.rmtree(abandoned, ignore_errors=True)
    return folder


def abandoned_kernel_folders(where: Path) -> list[Path]:
    """The kernel folders under `where` whose maker is no longer running: a killed run cannot remove its own, and
    its sockets would stay. A folder without an owner's id (being made, or not this package's) is never one."""
    abandoned = []
    for folder in Path(where).glob(f"{KERNEL_FOLDER_PREFIX}*"):
        try:
            owner = int((folder / KERNEL_OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not process_running(owner):
            abandoned.append(folder)
    return abandoned


class IpcKernelManager(AsyncKernelManager):
    """A kernel reached through IPC sockets in a private temporary folder, not TCP ports."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        # jupyter_client would put the sockets in the working directory (notebooks/), where a killed run leaves them.
        return str(kernel_folder() / "kernel")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        """jupyter_client's cleanup (it removes the sockets), then the private folder they were in, unless the kernel
        restarts into it."""
        await super()._async_cleanup_resources(restart=restart)
        folder = Path(self.ip).parent
        if not restart and folder.name.startswith(KERNEL_FOLDER_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources  # what nbclient calls when a kernel fails to start


@dataclasses.dataclass(frozen=True)
class StageIdentity:
    """What a stage's result depends on: `key` (what later stages read) and `digest` (its whole result)."""

    key: str
    digest: str


def stage_identities(config: Config) -> dict[str, StageIdentity]:
    """Each stage's key and digest: its key chained through the keys of the stages it needs, and the digests
    of the stages it summarises."""
    identities: dict[str, StageIdentity] = {}
    for stage in STAGES:
        key = settings_digest(
            {
                "settings": {name: config.value(name) for name in stage.keyed_under(config)},
                "fixed": dict(stage.fixed),
                "upstream": {need: identities[need].key for need in stage.needs},
                "summarised": {name: identities[name].digest for name in stage.summarises},
            }
        )
        digest = settings_digest({"key": key, "reports": {name: config.value(name) for name in stage.reported}})
        identities[stage.name] = StageIdentity(key, digest)
    return identities


def finished_as(marker: dict | None, identity: StageIdentity) -> bool:
    """Whether a stage's marker says it finished with the settings of `identity` (its digest)."""
    return bool(marker) and marker.get("digest") == identity.digest


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


def stages_until(until: str | None) -> list[Stage]:
    """The pipeline's stages up to and including `until` (None: all of them)."""
    return list(STAGES)[: STAGES.index(get_stage(until)) + 1] if until else list(STAGES)


def plan(config: Config, layout: RunLayout, only: str | None, force: bool, until: str | None = None) -> list[Stage]:
    """The stages to execute (`until`: the pipeline up to and including that stage).

    A complete stage with an unchanged digest is skipped (unless it is the one `--only --force`
    names); one that finished with other settings is refused without --force.
    """
    identities = stage_identities(config)
    selected = [get_stage(only)] if only else stages_until(until)
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
        unchanged = finished_as(marker, identities[stage.name])
        if unchanged and not (force and only):
            continue
        if marker and not unchanged and not force:
            raise RunError(
                f"{layout.root}: stage {stage.name} already finished with other settings; rerun with "
                "--force to overwrite it, or choose another run.name"
            )
        todo.append(stage)
    return todo


LOW_DISK_BYTES = 1 << 30  # a default stage writes up to 0.6 GiB: a trained policy in float32 and its checkpoints


def disk_problem(root: Path) -> str:
    """Why a stage could not write its results, in words: under LOW_DISK_BYTES free on the disk of `root` (a full
    disk otherwise shows as torch's `unexpected pos` in the middle of a save); '' where there is room."""
    folder = Path(root)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the run directory before its first stage
    free = shutil.disk_usage(folder).free
    if free >= LOW_DISK_BYTES:
        return ""
    return f"{free / 2**30:.2f} GiB free on the disk of {root} (a stage writes up to 0.6 GiB)"


def execute_notebook(stage: Stage, layout: RunLayout, parameters: dict, executed: Path) -> None:
    """Execute a stage's notebook as the runner does: its kernel knows it runs under the runner."""
    import papermill  # a second or so of imports (nbformat's schema checkers), paid only where a stage runs

    os.environ[RUNNER_STAGE] = f"{layout.root}::{stage.name}"
    os.environ[TERMINAL] = stage.name
    try:
        papermill.execute_notebook(
            str(stage.notebook_path),
            str(executed),
            parameters={"run_dir": str(layout.root), **parameters},
            kernel_name="python3",
            cwd=str(stage.notebook_path.parent),
            progress_bar=False,
            log_output=False,
            kernel_manager_class=IpcKernelManager,  # IPC sockets, not TCP ports: nothing listens on the network
        )
    except papermill.PapermillExecutionError as err:
        full = disk_problem(layout.root)
        raise RunError(
            f"stage {stage.name} failed: {err.ename}: {err.evalue.splitlines()[0] if err.evalue else ''} "
            f"(see {executed})" + (f"; the likely cause: {full}" if full else "")
        ) from None
    finally:
        os.environ.pop(RUNNER_STAGE, None)
        os.environ.pop(TERMINAL, None)


def execute_stage(stage: Stage, config: Config, layout: RunLayout, identity: StageIdentity) -> float:
    marker = layout.marker(stage.name)
    marker.unlink(missing_ok=True)  # from here on the stage is incomplete until it finishes again
    shutil.rmtree(layout.output(stage.output), ignore_errors=True)
    layout.drop_metrics(stage.metrics_prefixes)
    executed = layout.notebooks / f"{stage.name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    execute_notebook(stage, layout, stage_parameters(stage, config), executed)
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


def publication_problem(config: Config, layout: RunLayout) -> str:
    """Why the run's figures may not replace those in run.figures_dir, or '' when they may.

    The folder shows one complete run of its params file as written: a run stopped early (--until,
    --only) or changed on the command line (--set, other than the run section) would put a partial or
    different experiment under the params file's name and remove the figures it did not make.
    """
    identities = stage_identities(config)
    unfinished = [
        stage.name for stage in STAGES if not finished_as(read_json(layout.marker(stage.name)), identities[stage.name])
    ]
    if unfinished:
        return f"the run is not complete with these settings ({', '.join(unfinished)} to run)"
    path = Path(config.path)
    as_written = load_config(path).to_dict() if path.is_file() else {}
    if {k: v for k, v in as_written.items() if k != "run"} != {k: v for k, v in config.to_dict().items() if k != "run"}:
        return f"its settings differ from {config.path} as written (--set)"
    return ""


def publish_figures(layout: RunLayout, target: Path, manifest: dict) -> int:
    """Copy the run's figures to the configured figures directory, with a provenance note.

    Files an earlier publication put there (named in its provenance.json) that this run did not
    make are removed, so the folder shows one run's figures; files it never published stay.
    """
    source = layout.figures
    if not source.is_dir():
        return 0
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if p.is_file())
    earlier = read_json(target / "provenance.json", default={}).get("files", [])
    for name in set(earlier) - {p.name for p in files}:
        (target / name).unlink(missing_ok=True)
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
    until: str | None = None,
) -> Path:
    """Execute the pipeline (or one stage, or the stages up to `until`) of a validated config; returns the run."""
    layout = RunLayout.of_run(config.run, runs_dir)
    todo = plan(config, layout, only, force, until)
    for source in hub_sources(config):
        check_hub_source(source)
    if any("sources.policy" in stage.readable for stage in todo):  # a stage that loads the policy: before it runs
        check_models(config)  # irl.layer within the policy; a brought expert that is not the base, same tokenizer
    if not todo:
        log(f"{layout.root}: every stage is complete with these settings; nothing to do (--force to redo)")
        return layout.root
    prepare_environment(config)
    with RunLock(layout.root, "irlnb run") as lock:
        if lock.took_over:
            log(f"{layout.root}: took over the lock of a run that was killed (pid {lock.took_over.get('pid')})")
        _run_stages(config, layout, todo, log)
    return layout.root


def adopt_finished_stages(
    config: Config, source: Path, runs_dir: str | None = None, until: str | None = None
) -> list[str]:
    """Copy into the run of `config` the stages (up to `until`) that the run at `source` finished with the digest
    `config` gives them, and that the run has not finished itself: their outputs, markers, executed notebooks,
    metrics and manifest entries. Equal digests mean the same settings and the same upstream, so the copy is the
    result the run would compute again (replicates that redraw only IRL's demonstrations share the expert this way,
    not by training it again). Returns the names adopted; the source is only read, and must not be in use."""
    layout, origin = RunLayout.of_run(config.run, runs_dir), RunLayout(source)
    if origin.root.resolve() == layout.root.resolve() or not origin.manifest.is_file():
        return []
    check_free(origin.root, "adopting its finished stages")
    identities = stage_identities(config)
    adopted: list[str] = []
    with RunLock(layout.root, "irlnb run (adopting finished stages)"):
        manifest = read_json(layout.manifest, default={})
        manifest.update({"params_file": config.path, "params": config.to_dict(), **provenance(REPO_ROOT)})
        source_manifest = read_json(origin.manifest)
        metrics = origin.read_metrics()
        for stage in stages_until(until):
            identity = identities[stage.name]
            if layout.marker(stage.name).is_file():
                continue  # finished here, alike or (refused by the run, never overwritten here) with other settings
            if not finished_as(read_json(origin.marker(stage.name)), identity) or any(
                not finished_as(read_json(layout.marker(need)), identities[need]) for need in stage.needs
            ):
                continue  # not finished alike there, or it reads a stage that must run here first
            shutil.rmtree(layout.output(stage.output), ignore_errors=True)
            shutil.copytree(origin.output(stage.output), layout.output(stage.output))
            executed = origin.notebooks / f"{stage.name}.ipynb"
            if executed.is_file():
                layout.notebooks.mkdir(parents=True, exist_ok=True)
                shutil.copy2(executed, layout.notebooks / executed.name)
            layout.drop_metrics(stage.metrics_prefixes)
            layout.record_metrics(
                {
                    key: value
                    for key, value in metrics.items()
                    if key.startswith(stage.metrics_prefixes) or key == metric_names.stage_seconds(stage.name)
                }
            )
            manifest.setdefault("stages", {})[stage.name] = {
                **source_manifest["stages"][stage.name],
                "adopted_from": str(origin.root),
            }
            write_json_atomic(layout.manifest, manifest)
            layout.marker(stage.name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin.marker(stage.name), layout.marker(stage.name))  # last: now it is finished here
            adopted.append(stage.name)
    return adopted


def _run_stages(config: Config, layout: RunLayout, todo: list[Stage], log: Callable[[str], None]) -> None:
    manifest = read_json(layout.manifest, default={})
    manifest.update({"params_file": config.path, "params": config.to_dict(), **provenance(REPO_ROOT)})
    manifest.setdefault("stages", {})
    identities = stage_identities(config)
    for number, stage in enumerate(todo, 1):
        if full := disk_problem(layout.root):
            raise RunError(
                f"stage {stage.name} not started: {full}; free some and run again (finished stages are kept)"
            )
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
        layout.record_metrics({metric_names.stage_seconds(stage.name): seconds})
        log(f"[{number}/{len(todo)}] {stage.name} done in {seconds:.1f} s")
    stage_seconds = [info["seconds"] for info in manifest["stages"].values()]
    layout.record_metrics({metric_names.TOTAL_SECONDS: float(sum(stage_seconds))})
    if config.run.figures_dir:
        if problem := publication_problem(config, layout):
            log(f"figures not published to {config.run.figures_dir}/: {problem}")
        else:
            count = publish_figures(layout, REPO_ROOT / config.run.figures_dir, manifest)
            log(f"{count} figure files copied to {config.run.figures_dir}/")
    log(f"{layout.root}: metrics in {layout.metrics.name}, provenance in {layout.manifest.name}")
