"""What made an artifact: git commit, package versions, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "irlnb",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "tokenizers",
    "safetensors",
    "gguf",
    "papermill",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "h5py",
    "alt-profanity-check",
    "matplotlib",
    "seaborn",
)


def git_state(repo: Path) -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    # Tracked files that differ from HEAD (staged or not); `git status --porcelain` output, once
    # stripped, lost the first character of the first name.
    changed = git("diff", "--name-only", "HEAD").splitlines()
    # Which files differ from the commit, so a dirty run can be judged (a README edit is not a code change).
    return {"commit": commit or None, "dirty": bool(changed) if commit else None, "changed_files": changed}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    import torch  # loaded when a run starts, not by `irlnb check`

    from irlnb.compute import NATIVE_BFLOAT16_FLAGS, cpu_flags  # loads torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        # where bfloat16 is only emulated it rounds (and runs) otherwise: a CPU model name does not say (EPYCs differ)
        "bfloat16_native": bool(NATIVE_BFLOAT16_FLAGS & cpu_flags()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def provenance(repo: Path) -> dict:
    return {"git": git_state(repo), "packages": package_versions(), "hardware": hardware()}


def held_provenance(started: dict, repo: Path) -> dict:
    """`started` (`provenance(repo)` read when a command began: the code it loaded), with `checkout_moved_to` (the
    git state now) where the checkout changed while it ran: read at the end alone, a long command's record would name
    code that did not measure it, and a module it imported late may be the newer one's."""
    now = git_state(repo)
    return started if now == started["git"] else {**started, "checkout_moved_to": now}
