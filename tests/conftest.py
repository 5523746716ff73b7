"""Shared fixtures: the repo, params files rewritten into a temporary runs dir, a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock

from irlnb.irl.feature_sets import PairSet, TextSet
from irlnb.models.policies import load_policy
from irlnb.rl.generation import Decoding

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params"

# Tests never reach the hub: everything they load is embedded or built in the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests marked `slow(seconds)` first, longest first; the rest after, in their order. pytest-xdist
    hands the tests out in this order, so each worker starts on a long one (one of them makes the shared smoke run
    while the other runs a test that makes its own) and both finish on quick ones, together."""

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.args[0] if marker else 0.0

    items.sort(key=seconds, reverse=True)  # stable: equal ones keep their order


def write_params(tmp_path: Path, base: str = "smoke.yaml", name: str = "params.yaml", **changes) -> Path:
    """A copy of params/<base> with its runs_dir in tmp_path and `section.key=value` changes applied."""
    data = yaml.safe_load((PARAMS / base).read_text())
    data["run"]["runs_dir"] = str(tmp_path / "runs")
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def irlnb_cli(
    *args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irlnb", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One complete smoke run (every stage, 01 to 05) shared by the tests that only read it (a test that writes
    into a run writes into `copy_of_smoke_run`). `make test` runs the tests in pytest-xdist workers: the first
    worker to ask makes the run, under a lock the others wait on, in the folder all workers share."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is a folder of the one they share
        shared = shared.parent
    tmp = shared / "smoke-run"
    with FileLock(shared / "smoke-run.lock"):
        if not (tmp / "complete").exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a worker that failed to make it left a part
            tmp.mkdir()
            done = irlnb_cli("run", str(write_params(tmp)))
            assert done.returncode == 0, done.stderr
            (tmp / "complete").touch()
    return tmp / "runs" / "smoke"


def copy_of_smoke_run(smoke_run: Path, tmp_path: Path) -> Path:
    """A copy of the smoke run in tmp_path/runs/smoke, which `write_params(tmp_path)` points at: for a test
    that writes into a finished run."""
    run_dir = tmp_path / "runs" / "smoke"
    shutil.copytree(smoke_run, run_dir, symlinks=True)
    return run_dir


def synthetic_pairs(n: int, seed: int) -> PairSet:
    """Expert texts lie further along a hidden direction than non-expert ones (each side its own noise);
    R* is that direction, so the truth is known."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.zeros(8)
    direction[0] = 1.0
    base = torch.randn(n, 8, generator=generator)
    expert = torch.randn(n, 8, generator=generator) + 2.5 * direction

    def r_star(x):
        return x[:, 0].double().numpy()

    return PairSet(TextSet(expert, r_star(expert), -np.ones(n)), TextSet(base, r_star(base), -np.ones(n)))


# The tiny offline GPT-NeoX the policy tests sample from, prompts to continue and a toy reward.
PROMPTS = ["You are such a", "The council voted to", "I really think that", "Thanks for the"]
SAMPLING = Decoding(max_new_tokens=6, do_sample=True, top_k=30)


def length_reward(texts):
    """A toy reward with an obvious preference: more characters score higher."""
    return np.array([float(len(t)) for t in texts])


def shorter_is_better(texts):
    """The opposite toy reward: fewer characters score higher (another alignment of the same samples)."""
    return -length_reward(texts)


@pytest.fixture(scope="module")
def tiny():
    return load_policy("embedded:tiny-gpt-neox")
