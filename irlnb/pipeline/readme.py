"""The README's measured numbers, held to the recorded runs they come from.

A measured number in README.md carries, right after it, an HTML comment naming where it comes from:

    0.758<!--irl.test.auc_mean:.3f-->           key of regress/default.metrics.json, Python format spec
    7.06<!--bench:rlhf_step.seconds:.2f-->      key of regress/bench.metrics.json

GitHub shows only the number. `irlnb readme` checks that every such number is the recorded value
in that format (`--write` rewrites them from the records); the tests run the check, so the README
cannot drift from the runs it quotes. Between `<!-- measured -->` and `<!-- /measured -->`, a
number with a decimal point or a percent sign must carry a source, or `<!--given-->` when it is not
a measurement of this project (a paper's number, a setting).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, read_json

README = REPO_ROOT / "README.md"
RECORDS_DIR = REPO_ROOT / "regress"
DEFAULT_SOURCE = "default"
NUMBER = r"[−\-+]?\d[\d,]*(?:\.\d+)?%?"
MARKED = re.compile(rf"(?P<number>{NUMBER})<!--(?:(?P<source>[\w-]+):)?(?P<key>[\w.-]+):(?P<spec>[^>]*?)-->")
GIVEN = re.compile(rf"{NUMBER}<!--given-->")
SECTION = re.compile(r"<!-- measured -->(.*?)<!-- /measured -->", re.S)
UNMARKED = re.compile(r"(?<![\w.#/:-])\d[\d,]*\.\d+%?(?![\d<]|[\w-])|(?<![\w.#/-])\d+%(?!<)")


class ReadmeError(IrlnbError, ValueError):
    """A README that cannot be checked; the message is one line."""


@dataclass(frozen=True)
class Problem:
    line: int
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def records(directory: Path = RECORDS_DIR) -> dict[str, dict[str, float]]:
    """Every recorded run's metrics by name (regress/<name>.metrics.json)."""
    out = {}
    for path in sorted(directory.glob("*.metrics.json")):
        data = read_json(path)
        out[path.name.removesuffix(".metrics.json")] = data.get("metrics", {}) if isinstance(data, dict) else {}
    return out


def render(value: float, spec: str) -> str:
    return format(value, spec).replace("-", "−") if value < 0 else format(value, spec)


def _normal(text: str) -> str:
    return text.replace("−", "-")


def _blank(pattern: re.Pattern, text: str) -> str:
    """`text` with what `pattern` matches turned to spaces (newlines kept), so offsets still point into the README."""
    return pattern.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)


def check(text: str, recorded: dict[str, dict[str, float]]) -> list[Problem]:
    """Every marked number against its record, and every unmarked decimal inside a measured section."""
    problems = []
    for match in MARKED.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        source, key, spec = match["source"] or DEFAULT_SOURCE, match["key"], match["spec"]
        if source not in recorded:
            problems.append(Problem(line, f"no record regress/{source}.metrics.json for {key}"))
            continue
        if key not in recorded[source]:
            problems.append(Problem(line, f"{key} is not in regress/{source}.metrics.json"))
            continue
        value = recorded[source][key]
        try:
            expected = render(value, spec)
        except ValueError as err:
            problems.append(Problem(line, f"bad format {spec!r} for {key}: {err}"))
            continue
        if not math.isfinite(value) or _normal(match["number"]) != _normal(expected):
            problems.append(Problem(line, f"{match['number']} is not {source}:{key} = {expected}"))
    for section in SECTION.finditer(text):
        body = _blank(GIVEN, _blank(MARKED, section.group(1)))
        body = _blank(re.compile(r"```.*?```", re.DOTALL), body)  # code blocks
        body = _blank(re.compile(r"`[^`]*`|<!--.*?-->|\]\([^)]*\)"), body)  # code, comments and link targets
        for match in UNMARKED.finditer(body):
            line = text.count("\n", 0, section.start(1) + match.start()) + 1
            problems.append(Problem(line, f"{match.group(0)} has no source (<!--KEY:FORMAT--> or <!--given-->)"))
    return problems


def rewrite(text: str, recorded: dict[str, dict[str, float]]) -> str:
    """Every marked number replaced by its recorded value in its format."""

    def replace(match: re.Match) -> str:
        values = recorded.get(match["source"] or DEFAULT_SOURCE, {})
        if match["key"] not in values:
            return match.group(0)
        return render(values[match["key"]], match["spec"]) + match.group(0)[len(match["number"]) :]

    return MARKED.sub(replace, text)


def check_readme(path: Path = README, directory: Path = RECORDS_DIR) -> list[Problem]:
    if not path.is_file():
        raise ReadmeError(f"{path}: no README")
    return check(path.read_text(), records(directory))


def write_readme(path: Path = README, directory: Path = RECORDS_DIR) -> int:
    """Rewrite the marked numbers from the records; returns how many changed."""
    text = path.read_text()
    new = rewrite(text, records(directory))
    changed = sum(a != b for a, b in zip(MARKED.findall(text), MARKED.findall(new)))
    if new != text:
        path.write_text(new)
    return changed
