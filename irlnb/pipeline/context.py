"""What a notebook calls first: `begin_stage` validates its parameters, seeds, sets threads and locates its folders.

The returned `StageContext` is the notebook's handle on the run: its settings by section (only
those the stage declares: reading another one is an error, so a stage's key never misses a
setting it uses), its run directory's layout, its output folder, and metrics and figures.

**A notebook run by hand never writes into a run.** Under `irlnb run` a notebook writes the run
directory it is given. Run any other way (JupyterLab, nbclient, a script) it works in the scratch
run beside it, `runs/<name>.scratch/`: the outputs of the stages it reads are linked there from the
run (unless an earlier notebook run by hand made its own), its own output and metrics go there,
and one line in the notebook says so. So exploring (another layer, another seed, the explorer)
can never change a finished run or leave its completion markers stale; `irlnb run` is the record.
A notebook is refused while `irlnb run` is writing the run it reads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irlnb.compute import resolve_device, seed_everything
from irlnb.layout import RunLayout, read_json, write_json_atomic
from irlnb.params_file import parse_section
from irlnb.pipeline.lock import RunLock, check_free
from irlnb.pipeline.stages import RUNNER_STAGE, Stage, StageError, get_stage, upstream

SCRATCH_SUFFIX = ".scratch"
HAND_STAGES = "hand_stages.json"  # the stages a notebook run by hand has written into a scratch run


class SectionSettings:
    """One section's settings as a stage sees them: the declared keys, read-only."""

    def __init__(self, section: str, values: Any, keys: list[str], stage: str):
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_values", {key: getattr(values, key) for key in keys})
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, key: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        section, stage = object.__getattribute__(self, "_section"), object.__getattribute__(self, "_stage")
        raise AttributeError(
            f"stage {stage} does not declare the setting {section}.{key}; add it to the stage's "
            "settings in irlnb/pipeline/stages.py (its digest must cover what it reads)"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("settings are read-only; change them in the params file or the parameters cell")

    def as_dict(self) -> dict[str, Any]:
        return dict(object.__getattribute__(self, "_values"))

    def __repr__(self) -> str:
        return f"{object.__getattribute__(self, '_section')}({object.__getattribute__(self, '_values')})"


@dataclass(frozen=True)
class StageContext:
    """A running stage: its settings (by section), its run directory's layout and its output folder."""

    stage: Stage
    layout: RunLayout
    settings: Mapping[str, SectionSettings]

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def out(self) -> Path:
        return self.layout.output(self.stage.output)

    @property
    def device(self) -> str:
        """The torch device of `compute.device` ('auto' resolved)."""
        return resolve_device(self.settings["compute"].device)

    def __getattr__(self, section: str) -> SectionSettings:
        try:
            return self.settings[section]
        except KeyError:
            raise AttributeError(f"stage {self.stage.name} reads no setting of section {section!r}") from None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The stage's settings by section, plus what the stage fixes (for provenance files)."""
        return {**{name: section.as_dict() for name, section in self.settings.items()}, "stage": dict(self.stage.fixed)}

    def record_metrics(self, values: Mapping[str, float]) -> dict[str, float]:
        """Add metrics; each key must start with one of the stage's prefixes (so a redo can drop them all)."""
        stray = [key for key in values if not key.startswith(self.stage.metrics_prefixes)]
        if stray:
            raise StageError(
                f"stage {self.stage.name} writes metrics starting with {', '.join(self.stage.metrics_prefixes)}; "
                f"got {', '.join(stray[:3])}"
            )
        return self.layout.record_metrics(values)

    def read_metrics(self) -> dict[str, float]:
        return self.layout.read_metrics()

    def save_figure(self, fig, name: str) -> list[Path]:
        return self.layout.save_figure(fig, name)


def begin_stage(name: str, namespace: Mapping[str, Any]) -> StageContext:
    """Validate the notebook's parameters (as `irlnb check` does) and set up the stage.

    `namespace` is the notebook's globals(): the section dicts of its parameters cell, possibly
    edited by hand in JupyterLab, are checked with the same one-line messages as a params file.
    """
    stage = get_stage(name)
    where = f"notebook {stage.notebook}"
    settings = {}
    for section, keys in stage.sections().items():
        values = namespace.get(section)
        if not isinstance(values, Mapping):
            raise StageError(f"{where}: the parameters cell must define {section} = dict(...), got {values!r}")
        parsed = parse_section(section, values, where)  # a missing key takes its default, an unknown one is refused
        settings[section] = SectionSettings(section, parsed, keys, stage.name)
    for key, value in stage.fixed.items():
        if namespace.get(key) != value:
            raise StageError(
                f"{where}: stage {stage.name} runs with {key}={value!r}, got {namespace.get(key)!r}; "
                "use the stage that fits (irlnb.pipeline.stages.STAGES)"
            )
    requested = RunLayout(Path(namespace["run_dir"]))
    if os.environ.get(RUNNER_STAGE) == f"{requested.root}::{stage.name}":
        layout = requested
    else:
        layout = open_scratch(requested, stage)
        print(
            f"Run by hand: {stage.name} reads {requested.root} and writes {layout.root} (a run changes only "
            "through irlnb run)."
        )
    context = StageContext(stage, layout, settings)
    context.out.mkdir(parents=True, exist_ok=True)
    seed_everything(context.compute.seed, context.compute.torch_threads)
    return context


def scratch_of(run: RunLayout) -> RunLayout:
    """The scratch run beside a run: where its notebooks write when they are run by hand."""
    return RunLayout(run.root.with_name(run.root.name + SCRATCH_SUFFIX))


def open_scratch(run: RunLayout, stage: Stage) -> RunLayout:
    """Prepare the scratch run for `stage` run by hand: upstream outputs linked, its own cleared, metrics merged."""
    check_free(run.root, f"notebook {stage.notebook} run by hand")
    scratch = scratch_of(run)
    with RunLock(scratch.root, f"notebook {stage.notebook} run by hand"):
        hand = [name for name in read_json(scratch.root / HAND_STAGES, default=[]) if name != stage.name]
        for name in upstream(stage.name):
            if name in hand:
                continue  # a notebook run by hand made this output here: later hand runs read it
            folder, source = scratch.output(get_stage(name).output), run.output(get_stage(name).output)
            _remove(folder)
            if source.exists():
                folder.symlink_to(source, target_is_directory=True)
        _remove(scratch.output(stage.output))
        own = tuple(prefix for name in hand for prefix in get_stage(name).metrics_prefixes)
        redone = own + stage.metrics_prefixes
        metrics = {k: v for k, v in run.read_metrics().items() if not k.startswith(redone)}
        metrics.update({k: v for k, v in scratch.read_metrics().items() if own and k.startswith(own)})
        write_json_atomic(scratch.metrics, metrics)
        if run.manifest.is_file():
            shutil.copyfile(run.manifest, scratch.manifest)
        write_json_atomic(scratch.root / HAND_STAGES, [*hand, stage.name])
    return scratch


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
