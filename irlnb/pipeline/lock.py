"""One writer per run directory: `irlnb run` holds a lock on the run it writes.

The lock is an advisory `flock` on `<run>/.irlnb.lock`, so the kernel frees it when its holder
dies, even by SIGKILL: a lock left by a killed run is simply taken over (and said so). The file
names the holder (pid, command, start time), so a second writer is refused in one line that says
who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from irlnb.errors import IrlnbError

LOCK_FILE = ".irlnb.lock"


class RunInUse(IrlnbError, RuntimeError):
    """A run directory another process is writing; the message names it."""


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (one of another user's counts: it cannot be signalled, but it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Held while a process writes a run directory (`with RunLock(root, "irlnb run"): ...`)."""

    def __init__(self, root: Path, holder: str):
        self.root, self.holder = Path(root), holder
        self.path = self.root / LOCK_FILE
        self.handle = None
        self.took_over: dict | None = None  # what a killed holder had written, when its lock was taken over

    def acquire(self) -> RunLock:
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _read_holder(handle.read())
            handle.close()
            raise RunInUse(
                f"{self.root} is in use by {describe(holder)}; wait for it to finish or stop it "
                "(a killed holder frees the lock)"
            ) from None
        handle.seek(0)
        previous = _read_holder(handle.read())
        if previous.get("pid") and previous.get("pid") != os.getpid() and not process_running(int(previous["pid"])):
            self.took_over = previous
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "holder": self.holder,
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv)[:200],
                    "since": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(text: str) -> dict:
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"{holder.get('holder', 'a process')} (pid {holder.get('pid')}, since {holder.get('since')})"


def check_free(root: Path, what: str) -> None:
    """Refuse (one line) when a process holds the lock of `root`; take nothing."""
    if (Path(root) / LOCK_FILE).is_file():
        RunLock(root, what).acquire().release()
