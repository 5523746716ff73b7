"""A params file read into a `Config`: parsing, validation, `--set` overrides, the described settings, digests.

The sections themselves, their defaults and their rules are declared in `irlnb.config`; this module applies
them. Unknown keys, wrong types, out-of-range values, missing local files and malformed YAML are refused
with one line that names the file, the key and what was expected. The same checks run on the values of a
notebook's `parameters` cell when it is run by hand (`parse_section`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from irlnb.config import SECTIONS, Config, ConfigError
from irlnb.sources import anchored


def settings_digest(values: Any) -> str:
    """A stable hash of settings (and of the digests they depend on)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Validation


def _describe(meta: Mapping[str, Any], kind: type) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    bounds = [
        f"{op} {meta[key]}"
        for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if meta.get(key) is not None
    ]
    return names[kind] + (" " + " and ".join(bounds) if bounds else "")


def _kind(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]


def _check_value(where: str, value: Any, kind: type, meta: Mapping[str, Any]) -> Any:
    ok_type = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[kind]
    bad = not ok_type
    if ok_type:
        value = float(value) if kind is float else value
        bad = (
            (meta.get("choices") and value not in meta["choices"])
            or (meta.get("ge") is not None and value < meta["ge"])
            or (meta.get("gt") is not None and value <= meta["gt"])
            or (meta.get("le") is not None and value > meta["le"])
            or (meta.get("lt") is not None and value >= meta["lt"])
        )
    if bad:
        raise ConfigError(f"{where}: expected {_describe(meta, kind)}, got {value!r}")
    return value


def parse_section(name: str, values: Any, where: str) -> Any:
    """Build one section from a mapping (missing keys take their defaults), refusing anything not exactly right:
    each value, then the section's own rules (its `problems()`).

    `where` prefixes every message: the params file, or the notebook whose parameters cell was edited.
    """
    cls = SECTIONS[name]
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {name}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: {name}.{key}: unknown setting; known: {', '.join(known)}")
    parsed = {}
    for key, f in known.items():
        if key in values:
            parsed[key] = _check_value(f"{where}: {name}.{key}", values[key], _kind(f), f.metadata)
        elif f.default is dataclasses.MISSING:
            raise ConfigError(
                f"{where}: {name}.{key}: missing; expected {_describe(f.metadata, _kind(f))} ({f.metadata['doc']})"
            )
    section = cls(**parsed)
    for key, problem in getattr(section, "problems", list)():
        raise ConfigError(f"{where}: {name}.{key}: {problem}")
    return section.resolved() if hasattr(section, "resolved") else section


def parse_config(data: Any, path: str) -> Config:
    """Validate an already-parsed YAML document; sections and settings it leaves out take their defaults.

    Each section is parsed alone, then every section's rules on the others (its `cross_problems(config)`).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: {key}: unknown section; known: {', '.join(SECTIONS)}")
    if "run" not in data:
        raise ConfigError(f"{path}: run: missing section (every params file names its run: run.name)")
    config = Config(**{name: parse_section(name, data.get(name), path) for name in SECTIONS}, path=path)
    for name in SECTIONS:
        cross_problems = getattr(getattr(config, name), "cross_problems", None)
        for dotted, problem in cross_problems(config) if cross_problems else ():
            raise ConfigError(f"{path}: {dotted}: {problem}")
    return config


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a params file, with `overrides` ('section.key=value', as `irlnb run --set` takes them)
    applied before validation; raises ConfigError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    # A relative local path in the file is relative to the file's folder (run from anywhere, it names the same
    # model); one typed with --set is relative to the current directory, where it was typed. Both are made
    # absolute here, before validation, since the notebooks that load them run in notebooks/.
    data = anchored_sources(data, path.parent)
    if not overrides:
        return parse_config(data, str(path))
    changes = {
        dotted: anchored(value, Path.cwd()) if dotted.startswith("sources.") and isinstance(value, str) else value
        for dotted, value in (parse_override(text, str(path)) for text in overrides)
    }
    config = parse_config(with_changes(data, changes, str(path)), f"{path} with --set {' --set '.join(overrides)}")
    return dataclasses.replace(config, path=str(path))


def anchored_sources(data: Any, base_dir: Path) -> Any:
    """A params document with its sources' relative local paths made absolute against `base_dir`
    (`irlnb.sources.anchored`); anything malformed is left for `parse_config` to refuse."""
    sources = data.get("sources") if isinstance(data, Mapping) else None
    if not isinstance(sources, Mapping):
        return data
    return {
        **data,
        "sources": {key: anchored(spec, base_dir) if isinstance(spec, str) else spec for key, spec in sources.items()},
    }


# --------------------------------------------------------------------------------------------
# Changes: `irlnb run --set`, a study's points, a regression run


def parse_override(text: str, where: str) -> tuple[str, Any]:
    """'section.key=value' -> ('section.key', value), the value read as YAML reads it ('2' is 2, 'true' is True).

    A float setting also takes what YAML leaves a string ('1e-5'); the value's type and range are
    checked later, with the rest of the params, by `parse_config`.
    """
    dotted, equals, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not (equals and dot and section and key):
        raise ConfigError(f"{where}: --set {text!r}: expected section.key=value (e.g. rlhf.seed=1)")
    if section not in SECTIONS:
        raise ConfigError(f"{where}: --set {dotted}: unknown section; known: {', '.join(SECTIONS)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    f = SECTIONS[section].__dataclass_fields__.get(key)
    if f is not None and _kind(f) is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if f is not None and _kind(f) is str and not isinstance(value, str):
        value = raw.strip()  # a run name of digits, a 'local:...' path: a string setting takes the text as written
    return dotted.strip(), value


def with_changes(data: Mapping[str, Any], changes: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A copy of a params document with 'section.key' -> value changes applied (unvalidated: parse it next)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    changed = {name: dict(values or {}) if isinstance(values, Mapping) else values for name, values in data.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(f"{where}: {dotted}: unknown setting; sections: {', '.join(SECTIONS)}")
        if not isinstance(changed.setdefault(section, {}), dict):
            changed[section] = {}
        changed[section][key] = value
    return changed


def config_with(base: Config, changes: Mapping[str, Any], why: str) -> Config:
    """`base` with 'section.key' -> value changes, validated exactly as a params file is (one-line errors).

    Every changed config (a study's point, a regression run, `irlnb run --set`) goes through here or
    `load_config`, so a bad value is refused with the same message wherever it comes from.
    """
    config = parse_config(with_changes(base.to_dict(), changes, base.path), f"{base.path} ({why})")
    return dataclasses.replace(config, path=base.path)


# --------------------------------------------------------------------------------------------
# Description


def section_summary(cls: type) -> str:
    """The first paragraph of a section's docstring on one line (its wrapped lines joined, never cut)."""
    paragraph = cls.__doc__.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def describe_settings() -> str:
    """Every setting with its type, range, default and description (for `irlnb check --describe`)."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"{name}:  # {section_summary(cls)}")
        for f in fields(cls):
            default = "(required)" if f.default is dataclasses.MISSING else f"= {f.default!r}"
            never = "; never changes a result" if not f.metadata["result"] else ""
            lines.append(f"  {f.name} {default}  # {_describe(f.metadata, _kind(f))}: {f.metadata['doc']}{never}")
    return "\n".join(lines)
