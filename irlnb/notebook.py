"""What a notebook calls first: validate its parameters, fix seeds and threads, locate its folders."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from irlnb.config import SECTIONS, parse_section
from irlnb.stages import Stage, get_stage


@dataclass(frozen=True)
class StageContext:
    """A running stage: its validated settings (by section), its run directory and output folder."""

    stage: Stage
    run_dir: Path
    out: Path
    settings: Mapping[str, Any]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The stage's settings by section, plus what the stage fixes (for provenance files)."""
        from dataclasses import asdict

        return {**{name: asdict(section) for name, section in self.settings.items()}, "stage": dict(self.stage.fixed)}

    @property
    def digest(self) -> str:
        """The stage's settings digest (its own settings and its upstream stages'), as the runner computes it."""
        from dataclasses import asdict

        from irlnb.runner import digest_from_markers

        settings = {key: value for section in self.settings.values() for key, value in asdict(section).items()}
        return digest_from_markers(self.run_dir, self.stage, settings)

    def __getattr__(self, section: str) -> Any:
        try:
            return self.settings[section]
        except KeyError:
            raise AttributeError(f"stage {self.stage.name} does not read section {section!r}") from None


def set_seed_and_threads(seed: int, torch_threads: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(torch_threads)


def begin_stage(name: str, namespace: Mapping[str, Any]) -> StageContext:
    """Validate the notebook's parameters (as `irlnb check` does) and set up the stage.

    `namespace` is the notebook's globals(): the values of its parameters cell, possibly edited
    by hand in JupyterLab, are checked with the same messages as a params file.
    """
    stage = get_stage(name)
    settings = {}
    for section in stage.sections:
        names = [f.name for f in fields(SECTIONS[section])]
        values = {key: namespace[key] for key in names if key in namespace}
        settings[section] = parse_section(SECTIONS[section], values, f"notebook {stage.notebook}: {section}")
    for key, value in stage.fixed.items():
        if namespace.get(key) != value:
            raise ValueError(f"notebook {stage.notebook}: stage {stage.name} runs with {key}={value!r}, "
                             f"got {namespace.get(key)!r}; use the stage that fits (irlnb.stages.STAGES)")
    run_dir = Path(namespace["run_dir"]).resolve()
    out = run_dir / stage.output
    out.mkdir(parents=True, exist_ok=True)
    compute = settings.get("compute")
    if compute is not None:
        set_seed_and_threads(compute.seed, compute.torch_threads)
    return StageContext(stage, run_dir, out, settings)
