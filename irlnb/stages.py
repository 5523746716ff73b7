"""The pipeline's stages: which notebook each runs, which params sections it reads, what it needs first.

A stage's notebook receives `run_dir` plus every setting of its sections as flat papermill
parameters; the names must match its `parameters` cell exactly (checked before anything runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


class StageError(ValueError):
    """A stage whose notebook does not match the config; the message is one line."""


@dataclass(frozen=True)
class Stage:
    name: str  # also the executed notebook's name in the run directory
    notebook: str  # file under notebooks/
    sections: tuple[str, ...]  # params sections passed as parameters
    output: str  # the stage's folder inside the run directory
    metrics_prefixes: tuple[str, ...]  # every metrics.json key the stage writes starts with one of these
    needs: tuple[str, ...] = ()  # stages whose outputs it reads
    fixed: Mapping[str, Any] = field(default_factory=dict)  # parameters set by the stage, not the params file

    @property
    def notebook_path(self) -> Path:
        return NOTEBOOKS_DIR / self.notebook


RLHF_SECTIONS = ("compute", "sources", "ground_truth", "rlhf")

STAGES: tuple[Stage, ...] = (
    Stage("01_curate", "01_curate.ipynb", ("compute", "sources", "curate"), "curate", ("curate.",)),
    Stage("02_ground_truth_rm", "02_ground_truth_rm.ipynb", ("compute", "sources", "ground_truth"),
          "ground_truth", ("gt.",), needs=("01_curate",)),
    # The ground-truth RLHF run also evaluates the base policy (rlhf.base.*), the reference of every comparison.
    Stage("03_rlhf_ground_truth", "03_rlhf.ipynb", RLHF_SECTIONS, "rlhf_ground_truth",
          ("rlhf.ground_truth.", "rlhf.base."), needs=("01_curate", "02_ground_truth_rm"),
          fixed={"reward": "ground_truth"}),
    # IRL reads the expert (03's policy) and its test continuations; the decoding is 03's evaluation decoding.
    Stage("04_irl", "04_irl.ipynb", ("compute", "sources", "ground_truth", "irl"), "irl", ("irl.",),
          needs=("01_curate", "02_ground_truth_rm", "03_rlhf_ground_truth")),
    Stage("03_rlhf_learned", "03_rlhf.ipynb", RLHF_SECTIONS, "rlhf_learned", ("rlhf.learned.",),
          needs=("01_curate", "02_ground_truth_rm", "04_irl"), fixed={"reward": "learned"}),
    Stage("03_rlhf_random", "03_rlhf.ipynb", RLHF_SECTIONS, "rlhf_random", ("rlhf.random.",),
          needs=("01_curate", "02_ground_truth_rm"), fixed={"reward": "random"}),
    Stage("05_analysis", "05_analysis.ipynb", ("compute", "sources", "ground_truth", "analysis"), "analysis",
          ("analysis.",), needs=("03_rlhf_ground_truth", "04_irl", "03_rlhf_learned", "03_rlhf_random")),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise StageError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def expected_parameters(stage: Stage) -> set[str]:
    from dataclasses import fields

    from irlnb.config import SECTIONS

    return {"run_dir", *stage.fixed} | {f.name for section in stage.sections for f in fields(SECTIONS[section])}


def check_notebook_parameters(stage: Stage) -> None:
    """The notebook's parameters cell must define exactly the names the runner passes."""
    import papermill

    path = stage.notebook_path
    if not path.is_file():
        raise StageError(f"{path}: notebook of stage {stage.name} is missing")
    declared = set(papermill.inspect_notebook(str(path)))
    if not declared:
        raise StageError(f"{path}: no cell tagged 'parameters'")
    expected = expected_parameters(stage)
    if missing := sorted(expected - declared):
        raise StageError(f"{path}: the parameters cell does not define {', '.join(missing)} "
                         f"(settings of sections {', '.join(stage.sections)}, or set by stage {stage.name})")
    if extra := sorted(declared - expected):
        raise StageError(f"{path}: parameters {', '.join(extra)} are not settings of sections "
                         f"{', '.join(stage.sections)}; add them to irlnb/config.py or remove them")
