"""The pipeline's stages: which notebook each runs, which settings it reads, what it needs first.

A stage declares every setting its notebook may read (`settings`), and which of them change only
its own metrics and figures (`reports`, e.g. bootstrap resamples). From that the runner derives:
- the stage's **key**: a hash of the settings its artifacts depend on (all declared settings but
  the reports and those that never change a result) and of the keys of the stages it needs. A
  later stage that reads this one's artifacts depends on this key;
- the stage's **digest**: its key plus its reports. A finished stage is skipped when its digest is
  unchanged; otherwise it is redone (with --force), and the stages after it only when its key changed
  (or when they summarise its whole result, as the analysis does: `summarises` chains digests).

A notebook's `parameters` cell holds one dict per section with exactly the settings its stages
declare, at their defaults (`render_parameters_cell` writes it; `irlnb check` holds it to that),
plus `run_dir` and what the stage fixes. The stage's context (`irlnb.pipeline.context`) refuses
any read of a setting the stage did not declare, so a key can never miss one.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irlnb import metric_names
from irlnb.config import ALIGNMENT_KINDS, SECTIONS, changes_result, doc
from irlnb.errors import IrlnbError
from irlnb.layout import ANALYSIS_FOLDER, CURATE_FOLDER, GROUND_TRUTH_FOLDER, IRL_FOLDER, REPO_ROOT, rlhf_folder

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
EVERY_STAGE = ("compute.torch_threads", "compute.device")  # how a stage computes, never what it computes
RUNNER_STAGE = "IRLNB_RUNNER_STAGE"  # "<run directory>::<stage>" in the environment of a kernel the runner starts


class StageError(IrlnbError, ValueError):
    """A stage whose notebook does not match the config; the message is one line."""


def expand(patterns: tuple[str, ...]) -> list[str]:
    """'section' -> every 'section.key' of it; 'section.key' stays; order kept, duplicates dropped."""
    out: list[str] = []
    for pattern in patterns:
        section, _, key = pattern.partition(".")
        if section not in SECTIONS or (key and key not in SECTIONS[section].__dataclass_fields__):
            raise StageError(f"stage setting {pattern!r} is not a setting of irlnb/config.py")
        for name in [key] if key else SECTIONS[section].__dataclass_fields__:
            if f"{section}.{name}" not in out:
                out.append(f"{section}.{name}")
    return out


@dataclass(frozen=True)
class Stage:
    name: str  # also the executed notebook's name in the run directory
    notebook: str  # file under notebooks/
    output: str  # the stage's folder inside the run directory (cleared before a redo)
    metrics_prefixes: tuple[str, ...]  # every metrics.json key the stage writes starts with one of these
    settings: tuple[str, ...]  # settings its notebook reads: 'section' or 'section.key'
    reports: tuple[str, ...] = ()  # of those, the ones that change only its own metrics and figures
    needs: tuple[str, ...] = ()  # stages whose artifacts it reads (their keys)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # parameters set by the stage, not the params file
    summarises: tuple[str, ...] = ()  # stages whose whole results (metrics, reports) it reads (their digests)

    @property
    def notebook_path(self) -> Path:
        return NOTEBOOKS_DIR / self.notebook

    @property
    def readable(self) -> list[str]:
        """Every setting the stage's notebook may read, as 'section.key'."""
        return expand(EVERY_STAGE + self.settings)

    @property
    def keyed(self) -> list[str]:
        """The settings the stage's artifacts depend on: its key."""
        reports = set(expand(self.reports))
        return [name for name in self.readable if name not in reports and changes_result(*name.split("."))]

    def keyed_under(self, config) -> list[str]:
        """The settings its artifacts depend on under `config`: of the kinds' own sections, only the section of
        the kind the run aligns with (`rlhf.trainer`); another kind's settings never make a stage stale."""
        return [
            name
            for name in self.keyed
            if name.split(".")[0] not in ALIGNMENT_KINDS or name.split(".")[0] == config.rlhf.trainer
        ]

    @property
    def reported(self) -> list[str]:
        return [name for name in expand(self.reports) if changes_result(*name.split("."))]

    def sections(self) -> dict[str, list[str]]:
        """The settings the notebook receives: section -> keys, in declaration order."""
        out: dict[str, list[str]] = {}
        for name in self.readable:
            section, key = name.split(".")
            out.setdefault(section, []).append(key)
        return {
            section: [k for k in SECTIONS[section].__dataclass_fields__ if k in keys]
            for section, keys in sorted(out.items(), key=lambda item: list(SECTIONS).index(item[0]))
        }


RLHF_SETTINGS = (
    "compute.seed",
    "compute.inference_dtype",
    "compute.training_dtype",
    "compute.training_layers",
    "sources.policy",
    "sources.toxicity_classifier",
    "sources.evaluator",
    "ground_truth",
    "rlhf",
    *ALIGNMENT_KINDS,  # each kind's own section: the training key keeps only the chosen kind's
    "evaluation",
)
# Every evaluation setting changes only a policy's metrics: stage 04 draws its own demonstrations, so no later
# stage reads a policy's evaluation continuations.
RLHF_REPORTS = ("evaluation",)


def rlhf_stage(reward: str, needs: tuple[str, ...], metrics: tuple[str, ...], extra: tuple[str, ...] = ()) -> Stage:
    """Notebook 03 with a fixed reward: ground_truth (the expert), learned (IRL's) or random (the control)."""
    return Stage(
        f"03_rlhf_{reward}",
        "03_rlhf.ipynb",
        rlhf_folder(reward),
        metrics,
        RLHF_SETTINGS + extra,
        reports=RLHF_REPORTS,
        needs=needs,
        fixed={"reward": reward},
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "01_curate",
        "01_curate.ipynb",
        CURATE_FOLDER,
        (metric_names.CURATE,),
        ("compute.seed", "sources.prompts", "curate"),
    ),
    Stage(
        "02_ground_truth_rm",
        "02_ground_truth_rm.ipynb",
        GROUND_TRUTH_FOLDER,
        (metric_names.GROUND_TRUTH,),
        (
            "sources.toxicity_classifier",
            "sources.evaluator",
            "ground_truth",
            "compute.seed",
            "evaluation.bootstrap_samples",
        ),
        reports=("compute.seed", "evaluation.bootstrap_samples"),
        needs=("01_curate",),
    ),
    # The ground-truth run also evaluates the base policy (rlhf.base.*), the reference of every comparison.
    rlhf_stage(
        "ground_truth",
        ("01_curate",),
        (metric_names.policy_prefix("ground_truth"), metric_names.policy_prefix("base")),
        extra=("sources.expert",),
    ),
    # IRL reads the expert (03's policy), draws its demonstrations, and reads R* of the human texts (02).
    Stage(
        "04_irl",
        "04_irl.ipynb",
        IRL_FOLDER,
        (metric_names.IRL,),
        (
            "compute.seed",
            "compute.inference_dtype",
            "sources.policy",
            "sources.toxicity_classifier",
            "ground_truth",
            "rlhf.top_k",
            "rlhf.temperature",
            "irl",
        ),
        reports=("irl.audit_texts", "irl.audit_word_texts"),  # how long the audit report's lists are
        needs=("01_curate", "02_ground_truth_rm", "03_rlhf_ground_truth"),
    ),
    rlhf_stage("learned", ("01_curate", "04_irl"), (metric_names.policy_prefix("learned"),)),
    rlhf_stage("random", ("01_curate",), (metric_names.policy_prefix("random"),), extra=("random_reward",)),
    Stage(
        "05_analysis",
        "05_analysis.ipynb",
        ANALYSIS_FOLDER,
        (metric_names.ANALYSIS,),
        (
            "compute.seed",
            "sources.toxicity_classifier",
            "sources.evaluator",
            "ground_truth",
            "evaluation.bootstrap_samples",
            "analysis",
        ),
        needs=("03_rlhf_ground_truth", "04_irl", "03_rlhf_learned", "03_rlhf_random"),
        # Its tables and figures read every stage's metrics and reports.
        summarises=(
            "01_curate",
            "02_ground_truth_rm",
            "03_rlhf_ground_truth",
            "04_irl",
            "03_rlhf_learned",
            "03_rlhf_random",
        ),
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise StageError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def upstream(name: str) -> list[str]:
    """The stages whose outputs stage `name` reads, directly or not (in pipeline order)."""
    wanted = set(get_stage(name).needs)
    for stage in reversed(STAGES):
        if stage.name in wanted:
            wanted |= set(stage.needs)
    return [stage.name for stage in STAGES if stage.name in wanted]


# --------------------------------------------------------------------------------------------
# A notebook's parameters cell


def notebook_stages(notebook: str) -> list[Stage]:
    return [stage for stage in STAGES if stage.notebook == notebook]


def notebook_settings(notebook: str) -> dict[str, list[str]]:
    """Section -> keys over every stage that runs this notebook (notebook 03 runs three)."""
    out: dict[str, list[str]] = {}
    for stage in notebook_stages(notebook):
        for section, keys in stage.sections().items():
            out.setdefault(section, [])
            out[section] += [key for key in keys if key not in out[section]]
    return {
        section: [k for k in SECTIONS[section].__dataclass_fields__ if k in keys]
        for section, keys in sorted(out.items(), key=lambda item: list(SECTIONS).index(item[0]))
    }


FIXED_DOCS = {
    "reward": "which reward this RLHF stage trains with: ground_truth, learned or random (stage 03_rlhf_<reward>)"
}


def render_parameters_cell(notebook: str) -> str:
    """The `parameters` cell of a notebook: run_dir, what its stages fix, and one dict of defaults per section."""
    stages = notebook_stages(notebook)
    lines = [
        "# `irlnb run` replaces these with the params file's values; by hand, edit them here (irlnb check --describe).",
        'run_dir = "../runs/default"  # the run directory this notebook reads and writes',
    ]
    for key, value in stages[0].fixed.items():
        lines.append(f"{key} = {value!r}  # {FIXED_DOCS[key]}")
    for section, keys in notebook_settings(notebook).items():
        defaults = SECTIONS[section]()
        lines.append(f"{section} = dict(")
        lines += [f"    {key}={getattr(defaults, key)!r},  # {doc(section, key)}" for key in keys]
        lines.append(")")
    return "\n".join(lines)


def parameters_cell(path: Path) -> str:
    import nbformat  # here, not above: its validator takes a second to import, which every stage kernel would pay

    notebook = nbformat.read(path, as_version=4)
    cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    if len(cells) != 1:
        raise StageError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0].source


def parameter_names(source: str) -> list[str]:
    """The names a parameters cell assigns, in order."""
    return [
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]


def check_notebook(notebook: str) -> None:
    """The notebook's parameters cell must be exactly what `render_parameters_cell` writes.

    So it assigns the names the runner passes, and shows the defaults and descriptions of
    irlnb/config.py; `irlnb check --write-notebooks` rewrites the cells after a config change.
    """
    path = NOTEBOOKS_DIR / notebook
    if not path.is_file():
        raise StageError(
            f"{path}: notebook of stage(s) {', '.join(s.name for s in notebook_stages(notebook))} is missing"
        )
    source, expected = parameters_cell(path), render_parameters_cell(notebook)
    if source != expected:
        declared, wanted = parameter_names(source), parameter_names(expected)
        detail = (
            f"it assigns {', '.join(declared)} where {', '.join(wanted)} are expected"
            if declared != wanted
            else "its values or descriptions differ from irlnb/config.py"
        )
        raise StageError(
            f"{path}: the parameters cell is not the one irlnb/config.py defines ({detail}); "
            "run 'irlnb check --write-notebooks'"
        )


def write_parameters_cell(notebook: str) -> bool:
    """Rewrite a notebook's parameters cell from the config; True if it changed."""
    import nbformat  # as in parameters_cell

    path = NOTEBOOKS_DIR / notebook
    content = nbformat.read(path, as_version=4)
    cell = next(c for c in content.cells if "parameters" in c.metadata.get("tags", []))
    expected = render_parameters_cell(notebook)
    if cell.source == expected:
        return False
    cell.source = expected
    nbformat.write(content, path)
    return True


def notebooks() -> list[str]:
    return list(dict.fromkeys(stage.notebook for stage in STAGES))


def stage_parameters(stage: Stage, config) -> dict[str, Any]:
    """What the runner passes to a stage's notebook: its settings by section, and what the stage fixes."""
    return {
        **stage.fixed,
        **{
            section: {key: getattr(getattr(config, section), key) for key in keys}
            for section, keys in stage.sections().items()
        },
    }
