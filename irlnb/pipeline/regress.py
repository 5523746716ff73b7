"""`irlnb regress`: rerun the pipeline and compare its metrics with a committed reference.

The reference `regress/<run name>.metrics.json` holds the metrics of one run together with the
params, git state, packages and hardware it was recorded with, so a failure can be told apart
from a change of machine. `regress/tolerances.yaml` says how far each metric may move: per key
prefix (the longest matching prefix wins) an absolute and/or a relative tolerance; a value passes
when |measured − reference| <= max(abs, rel × |reference|). Those were measured from changes that keep
every random draw (threads, machines). `replicates` names records of `irlnb replicates` (over alignment seeds,
or over draws of the demonstrations with `--draws`), each with a number k: a key also passes within k × its SD over
a record's replicates, the spread of a change that draws again. Each failure says which set its tolerance.
Timing keys (`timing.*`, and stage 04's own `irl.time.*`) and bootstrap interval bounds (`*_ci_*`) are ignored:
the first measure the machine, the second move with their point.

A reference holds only on the machine kind it was recorded on (bfloat16 rounds otherwise on another CPU, and every
draw after the first rounding differs). `regress/references.yaml` lists, per run name, references recorded on other
kinds; a run is compared with the one recorded on its own kind (`chosen_reference`), and where there is none, with
`regress/<run name>.metrics.json` after one line saying the kinds differ.
"""

from __future__ import annotations

import fnmatch
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from irlnb import metric_names
from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, RunLayout, read_json, write_json_atomic
from irlnb.params_file import config_with
from irlnb.pipeline import provenance, runner
from irlnb.pipeline.lock import check_free
from irlnb.pipeline.replicates import VARIED

REFERENCE_DIR = REPO_ROOT / "regress"
TOLERANCES_FILE = "tolerances.yaml"
REFERENCES_FILE = "references.yaml"  # per run name: its references recorded on other machine kinds
REGRESS_RUNS_DIR = "runs/regress"
ALWAYS_IGNORED = (f"{metric_names.TIMING}*", f"{metric_names.IRL_TIME}*", "*_ci_*")  # the machine; the point
SPREAD = "SD over"  # how a deviation names a tolerance set by a spread over replicates: "4.24 SD over seeds"
# What a replicates record varies (its `varied`; records before irl.draw existed vary the alignment seed), as a
# deviation names it ("seeds") and as the check's summary does ("alignment seeds").
SPREAD_NAMES = {setting: (over, what) for over, (setting, _, what) in VARIED.items()}
# Where two runs' params may differ and still be the same experiment.
NOT_COMPARED_PARAMS = ("run",)


class RegressError(IrlnbError, ValueError):
    """A regression check that cannot be made (no reference, bad tolerances); the message is one line."""


@dataclass(frozen=True)
class Tolerance:
    absolute: float = 0.0
    relative: float = 0.0

    def allowed(self, reference: float) -> float:
        return max(self.absolute, self.relative * abs(reference))


@dataclass(frozen=True)
class Spread:
    """Each metric's SD over one record's replicates, and how many of those a key may move."""

    sd: Mapping[str, float]
    count: float
    record: str  # the replicates record's file name
    varied: str  # what differs between its replicates: rlhf.seed or irl.draw

    @property
    def source(self) -> str:
        return f"{self.count:g} {SPREAD} {SPREAD_NAMES[self.varied][0]}"


@dataclass(frozen=True)
class Tolerances:
    default: Tolerance
    prefixes: Mapping[str, Tolerance]
    ignore: tuple[str, ...]
    spreads: tuple[Spread, ...] = ()

    def ignored(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in (*ALWAYS_IGNORED, *self.ignore))

    def prefix(self, key: str) -> str | None:
        matches = [prefix for prefix in self.prefixes if key.startswith(prefix)]
        return max(matches, key=len) if matches else None

    def for_key(self, key: str) -> Tolerance:
        prefix = self.prefix(key)
        return self.prefixes[prefix] if prefix is not None else self.default

    def allowed(self, key: str, reference: float) -> tuple[float, str]:
        """How far `key` may move from `reference`, and where that tolerance came from: the prefix (or default)
        tolerance, or the widest spread over replicates where that is wider."""
        prefix = self.prefix(key)
        allowed, source = self.for_key(key).allowed(reference), f"prefix {prefix}" if prefix is not None else "default"
        for spread in self.spreads:
            if (drawn := spread.count * spread.sd.get(key, 0.0)) > allowed:
                allowed, source = drawn, spread.source
        return allowed, source


@dataclass(frozen=True)
class Deviation:
    key: str
    reference: float
    measured: float  # NaN when the run lacks the key
    allowed: float
    source: str = ""  # where `allowed` came from: a prefix, the default, or a spread over replicates

    @property
    def difference(self) -> float:
        return self.measured - self.reference


def reference_file(run_name: str, reference_dir: Path = REFERENCE_DIR) -> Path:
    return Path(reference_dir) / f"{run_name}.metrics.json"


def _tolerance(value: Any, where: str) -> Tolerance:
    if not isinstance(value, Mapping) or not value or set(value) - {"abs", "rel"}:
        raise RegressError(f"{where}: expected a mapping with 'abs' and/or 'rel', got {value!r}")
    numbers = {}
    for key in ("abs", "rel"):
        number = value.get(key, 0.0)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not number >= 0:
            raise RegressError(f"{where}.{key}: expected a number >= 0, got {number!r}")
        numbers[key] = float(number)
    return Tolerance(numbers["abs"], numbers["rel"])


def load_tolerances(path: str | Path) -> Tolerances:
    """Read and validate tolerances.yaml (keys: default, prefixes, ignore), refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise RegressError(f"{path}: no tolerances file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RegressError(f"{path}: malformed YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or set(data) - {"default", "prefixes", "ignore", "replicates"}:
        raise RegressError(
            f"{path}: expected keys default, prefixes, ignore, replicates; "
            f"got {sorted(data) if isinstance(data, Mapping) else data!r}"
        )
    prefixes = data.get("prefixes") or {}
    ignore = data.get("ignore") or []
    if not isinstance(prefixes, Mapping):
        raise RegressError(f"{path}: prefixes: expected a mapping of key prefix -> tolerance")
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise RegressError(f"{path}: ignore: expected a list of key patterns (fnmatch, e.g. 'rlhf.*.train_*')")
    return Tolerances(
        default=_tolerance(data.get("default", {"abs": 0.0}), f"{path}: default"),
        prefixes={str(k): _tolerance(v, f"{path}: prefixes.{k}") for k, v in prefixes.items()},
        ignore=tuple(ignore),
        spreads=tuple(_spreads(data.get("replicates", []), path)),
    )


def _spreads(value: Any, path: Path) -> list[Spread]:
    """`replicates: {record: FILE, sd: K}`, or a list of them (each FILE beside the tolerances): each key's SD over
    each record's replicates."""
    return [_spread(one, path) for one in (value if isinstance(value, list) else [value])]


def _spread(value: Any, path: Path) -> Spread:
    where = f"{path}: replicates"
    if not isinstance(value, Mapping) or set(value) != {"record", "sd"}:
        raise RegressError(f"{where}: expected {{record: FILE, sd: K}} or a list of them, got {value!r}")
    count = value["sd"]
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not count > 0:
        raise RegressError(f"{where}.sd: expected a number > 0, got {count!r}")
    record = path.parent / str(value["record"])
    data = (read_json(record) or {}) if record.is_file() else {}
    spread, varied = data.get("sd_over_seeds"), data.get("varied", "rlhf.seed")
    if not isinstance(spread, Mapping) or not spread:
        raise RegressError(f"{where}.record: {record} holds no sd_over_seeds; record it with 'irlnb replicates'")
    if varied not in SPREAD_NAMES:
        raise RegressError(f"{where}.record: {record} varies {varied!r}, not one of {', '.join(SPREAD_NAMES)}")
    return Spread({str(k): float(v) for k, v in spread.items()}, float(count), record.name, varied)


def compare_metrics(
    measured: Mapping[str, float], reference: Mapping[str, float], tolerances: Tolerances
) -> tuple[list[Deviation], int, int]:
    """The reference keys out of tolerance (or missing from the run), how many keys were compared, and how many of
    those took their tolerance from each spread over replicates (by its source, e.g. "4.24 SD over seeds").

    Keys the run has but the reference lacks are new metrics, not regressions: they are not compared.
    """
    deviations, compared = [], 0
    by_spread = {spread.source: 0 for spread in tolerances.spreads}
    for key in sorted(reference):
        if tolerances.ignored(key):
            continue
        compared += 1
        expected = float(reference[key])
        allowed, source = tolerances.allowed(key, expected)
        if source in by_spread:
            by_spread[source] += 1
        value = float(measured.get(key, math.nan))
        if not math.isfinite(value) or abs(value - expected) > allowed:
            deviations.append(Deviation(key, expected, value, allowed, source))
    return deviations, compared, by_spread


def deviation_table(deviations: list[Deviation]) -> str:
    rows = [("key", "reference", "measured", "difference", "allowed", "allowed by")]
    rows += [
        (
            d.key,
            f"{d.reference:.6g}",
            "missing" if math.isnan(d.measured) else f"{d.measured:.6g}",
            "" if math.isnan(d.measured) else f"{d.difference:+.3g}",
            f"{d.allowed:.3g}",
            d.source,
        )
        for d in deviations
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def machine_kind(hardware: Mapping[str, Any]) -> str:
    """A machine as far as the rounding of its results goes: CPU model, whether it computes bfloat16 natively
    (where recorded: references before that field say only the model), and its GPUs."""
    native = hardware.get("bfloat16_native")
    bfloat16 = "" if native is None else (", native bfloat16" if native else ", bfloat16 emulated")
    gpus = hardware.get("gpus") or []
    return f"{hardware.get('cpu', '?')}{bfloat16}" + (f" with {', '.join(gpus)}" if gpus else "")


def same_machine_kind(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    """Whether a reference recorded on `recorded` holds on `here` (a field one side lacks is not compared)."""
    return all(
        recorded.get(field) == here.get(field)
        for field in ("cpu", "bfloat16_native", "gpus")
        if recorded.get(field) is not None and here.get(field) is not None
    )


def listed_references(run_name: str, reference_dir: Path = REFERENCE_DIR) -> list[Path]:
    """The references of `run_name` that `references.yaml` lists (recorded on other machine kinds than its
    `<run name>.metrics.json`); each must exist."""
    path = Path(reference_dir) / REFERENCES_FILE
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RegressError(f"{path}: malformed YAML ({str(err).splitlines()[0]})") from None
    names = data.get(run_name, []) if isinstance(data, Mapping) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RegressError(f"{path}: expected run name -> list of reference file names, got {run_name}: {names!r}")
    files = [Path(reference_dir) / name for name in names]
    if missing := [str(file) for file in files if not file.is_file()]:
        raise RegressError(f"{path}: lists {', '.join(missing)}, which does not exist")
    return files


def chosen_reference(run_name: str, here: Mapping[str, Any], reference_dir: Path = REFERENCE_DIR) -> tuple[Path, str]:
    """The reference a run of `run_name` on the machine `here` (`provenance.hardware()`) is compared with: the first
    of `<run name>.metrics.json` and those `references.yaml` lists recorded on this machine kind (or not saying
    where), else `<run name>.metrics.json`; and a line saying so when its kind is another."""
    primary = reference_file(run_name, reference_dir)
    candidates = [file for file in (primary, *listed_references(run_name, reference_dir)) if file.is_file()]
    for file in candidates:
        if same_machine_kind(read_reference(file).get("hardware") or {}, here):
            return file, ""
    recorded = machine_kind(read_reference(primary).get("hardware") or {})  # refuses a missing one in one line
    return primary, (
        f"regress: warning: {primary} was recorded on another machine kind ({recorded}; here: {machine_kind(here)}): "
        f"bfloat16 rounds otherwise there, so metrics move that no change of code moved; record a reference on this "
        f"kind (irlnb regress --record PARAMS --reference FILE) and list it in {Path(reference_dir) / REFERENCES_FILE}"
    )


def read_reference(path: Path) -> dict:
    if not path.is_file():
        raise RegressError(
            f"{path}: no regression reference for this run; record one with "
            f"'irlnb regress --record PARAMS' from a finished run"
        )
    reference = read_json(path)
    if not isinstance(reference, Mapping) or not isinstance(reference.get("metrics"), Mapping):
        raise RegressError(f"{path}: not a regression reference (no 'metrics' mapping)")
    return dict(reference)


def check_run(
    run_dir: str | Path, reference_path: Path, tolerances_path: Path, log: Callable[[str], None] = print
) -> int:
    """Compare a finished run's metrics.json with a reference; prints the failures, returns 0 (pass) or 1."""
    reference = read_reference(reference_path)
    tolerances = load_tolerances(tolerances_path)
    layout = RunLayout(run_dir)
    if not layout.metrics.is_file():
        raise RegressError(f"{layout.metrics}: missing; the run did not finish")
    deviations, compared, by_spread = compare_metrics(layout.read_metrics(), reference["metrics"], tolerances)
    recorded = reference.get("git", {}).get("commit", "?")
    sources = (
        "; "
        + ", ".join(
            f"{by_spread[spread.source]} tolerances from the spread over {SPREAD_NAMES[spread.varied][1]} in "
            f"{spread.record}"
            for spread in tolerances.spreads
        )
        + f", the others from {Path(tolerances_path).name}'s prefixes"
        if tolerances.spreads
        else ""
    )
    if deviations:
        log(deviation_table(deviations))
        log(
            f"regress: FAILED: {len(deviations)} of {compared} metrics out of tolerance against {reference_path} "
            f"(recorded at commit {str(recorded)[:10]}; tolerances in {tolerances_path}{sources})"
        )
        return 1
    log(
        f"regress: ok: {compared} metrics within tolerance of {reference_path} "
        f"(recorded at commit {str(recorded)[:10]}{sources})"
    )
    return 0


def _params_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(
        f"{section}.{key}"
        for section in set(a) | set(b)
        if section not in NOT_COMPARED_PARAMS
        for key in set(a.get(section, {})) | set(b.get(section, {}))
        if a.get(section, {}).get(key) != b.get(section, {}).get(key)
    )


def record_reference(
    config, run_dir: str | Path, reference_dir: Path = REFERENCE_DIR, path: Path | None = None
) -> Path:
    """Write the reference of `config`'s run from a finished run made with the same params, to `path` (default
    `<run name>.metrics.json`), never over a reference recorded on another machine kind.

    The file carries the run's params, git state, packages and hardware (from its manifest), so a
    later failure can be traced to a change of code, of settings, or of machine.
    """
    layout = RunLayout(run_dir)
    metrics = layout.read_metrics()
    manifest = read_json(layout.manifest, default={})
    if not metrics or not manifest.get("params"):
        raise RegressError(f"{run_dir}: no metrics.json or manifest.json; run 'irlnb run {config.path}' first")
    if differences := _params_differences(manifest["params"], config.to_dict()):
        raise RegressError(
            f"{run_dir}: made with other params than {config.path} ({', '.join(differences[:5])}); "
            "record from a run of this params file"
        )
    path = Path(path) if path is not None else reference_file(config.run.name, reference_dir)
    if path.is_file():
        recorded, made = read_reference(path).get("hardware") or {}, manifest.get("hardware") or {}
        if not same_machine_kind(recorded, made):
            raise RegressError(
                f"{path}: recorded on {machine_kind(recorded)}, and {run_dir} was made on {machine_kind(made)}; "
                f"record it under a name of its own (--reference) and list it in {REFERENCES_FILE}"
            )
    write_json_atomic(
        path,
        {
            "metrics": metrics,
            "params": manifest["params"],
            "params_file": config.path,
            "git": manifest.get("git"),
            "packages": manifest.get("packages"),
            "hardware": manifest.get("hardware"),
            "stages": manifest.get("stages"),
            "run_dir": str(layout.root),
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return path


def regress(
    config,
    runs_dir: str = REGRESS_RUNS_DIR,
    reuse: bool = False,
    reference_dir: Path = REFERENCE_DIR,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    reference_path: Path | None = None,
) -> int:
    """Run the pipeline of `config` afresh into `runs_dir` and check it against its reference; 0 pass, 1 fail.

    The reference and the tolerances are read before anything runs, so a missing reference costs
    seconds, not a pipeline. The run starts from an empty run directory unless `reuse`: a regression
    test that resumed from old checkpoints would not exercise today's training code. `threads`
    overrides compute.torch_threads (a setting that never changes a result by intent, but does
    change floating-point sums: the tolerances were measured with it). The reference is `reference_path`, else the
    one recorded on this machine kind (`chosen_reference`).
    """
    if reference_path is None:
        reference_path, other_kind = chosen_reference(config.run.name, provenance.hardware(), reference_dir)
        if other_kind:
            log(other_kind)
    reference = read_reference(reference_path)
    log(f"regress: comparing with {reference_path}")
    tolerances_path = Path(reference_dir) / TOLERANCES_FILE
    load_tolerances(tolerances_path)
    if differences := _params_differences(reference.get("params", {}), config.to_dict()):
        log(f"regress: warning: {reference_path} was recorded with other params ({', '.join(differences[:5])})")
    run_dir = RunLayout.of_run(config.run, runs_dir).root
    if run_dir == RunLayout.of_run(config.run).root:
        raise RegressError(
            f"{run_dir}: is the run of {config.path} itself; regress into another runs dir (default {REGRESS_RUNS_DIR})"
        )
    if run_dir.exists() and not reuse:
        check_free(run_dir, "irlnb regress")  # never delete a run another process is writing
        shutil.rmtree(run_dir)
    # The regression run must not overwrite the published figures of the real run.
    changes = {"run.figures_dir": "", **({"compute.torch_threads": threads} if threads is not None else {})}
    config = config_with(config, changes, "irlnb regress")
    runner.run(config, runs_dir=runs_dir, log=log)
    return check_run(run_dir, reference_path, tolerances_path, log=log)
