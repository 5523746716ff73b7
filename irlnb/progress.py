"""Progress of long work inside a stage: a bar in the notebook, and lines on the terminal of `irlnb run`.

A notebook's output is invisible while papermill runs it, so a stage run by `irlnb run` also
writes each update as one line to the kernel's own stderr, which the runner's terminal shows
(`IRLNB_PROGRESS_TO_TERMINAL` is set by the runner). By hand in JupyterLab only the bar shows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

TERMINAL = "IRLNB_PROGRESS_TO_TERMINAL"  # set to the stage's name by the runner
T = TypeVar("T")
_quiet = False


@contextmanager
def quiet():
    """No bars and no terminal lines inside (the explorer scores a few texts: a bar would only linger)."""
    global _quiet
    before, _quiet = _quiet, True
    previous = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' own loading bars
    try:
        yield
    finally:
        _quiet = before
        if previous:
            hf_logging.enable_progress_bar()


def _terminal_line(text: str) -> None:
    try:
        os.write(2, f"    {os.environ[TERMINAL]}: {text}\n".encode())
    except OSError:  # no terminal to write to: the notebook's bar is enough
        pass


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Counts done units of `total`; shows rate, time left and any named values (e.g. the reward mean).

    Terminal lines come at most every `every` seconds, plus the first and the last.
    """

    def __init__(self, total: int, what: str, unit: str = "it", every: float = 15.0):
        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.done, self.started, self.last_line = 0, time.perf_counter(), -1.0
        self.bar = tqdm(
            total=total, desc=what, unit=unit, mininterval=every, file=sys.stderr, leave=True, disable=_quiet
        )

    def update(self, count: int = 1, **values: float) -> None:
        self.done += count
        self.bar.update(count)
        if values:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        now = time.perf_counter()
        if (
            not _quiet
            and TERMINAL in os.environ
            and (self.done >= self.total or now - self.last_line >= self.every or self.last_line < 0)
        ):
            self.last_line = now
            elapsed = now - self.started
            rate = elapsed / self.done if self.done else 0.0
            shown = "".join(f" · {k} {v:.3g}" for k, v in values.items())
            _terminal_line(
                f"{self.what} {self.done}/{self.total}{shown} · {rate:.2f} s/{self.unit} · "
                f"{format_seconds(rate * (self.total - self.done))} left"
            )

    def close(self) -> None:
        self.bar.close()


def tracked(items: Iterable[T], total: int, what: str, unit: str = "batch") -> Iterator[T]:
    """Iterate over `items`, reporting progress after each one."""
    progress = Progress(total, what, unit)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()


class Stopwatch:
    """Where a stage's time goes: `lap(part)` ends a part begun at the previous lap (or at the start)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> float:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last
        self._last = now
        return self.seconds[part]

    def metrics(self, prefix: str) -> dict[str, float]:
        """`{prefix}{part}_s` for every part."""
        return {f"{prefix}{part}_s": seconds for part, seconds in self.seconds.items()}
