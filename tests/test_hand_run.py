"""Notebooks run by hand (as JupyterLab runs them) work in a scratch run; one writer per run directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, copy_of_smoke_run, irlnb_cli, write_params
from nbclient import NotebookClient

from irlnb.pipeline.stages import NOTEBOOKS_DIR


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under a run directory (symlinks not followed) with its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_by_hand(notebook: str, run_dir: Path, edit=lambda source: source) -> nbformat.NotebookNode:
    """Execute a committed notebook the way JupyterLab does: a kernel runs its cells, no runner around it."""
    content = nbformat.read(NOTEBOOKS_DIR / notebook, as_version=4)
    cell = next(c for c in content.cells if "parameters" in c.metadata.get("tags", []))
    lines = [
        f"run_dir = {str(run_dir)!r}" if line.startswith("run_dir = ") else line for line in cell.source.splitlines()
    ]
    cell.source = edit("\n".join(lines))
    NotebookClient(
        content, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    ).execute()
    return content


def replaced(source: str, edits: dict[str, str]) -> str:
    """`source` with each edit made, as a user edits the parameters cell (an edit that no longer matches fails)."""
    for old, new in edits.items():
        assert old in source, f"the parameters cell no longer holds {old!r}"
        source = source.replace(old, new)
    return source


def outputs(content) -> str:
    return "".join(o.get("text", "") for c in content.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.fixture()
def finished_run(smoke_run, tmp_path):
    return copy_of_smoke_run(smoke_run, tmp_path)


@pytest.mark.slow(55)
def test_a_notebook_run_by_hand_never_changes_a_finished_run(finished_run):
    before = tree_digest(finished_run)
    smoke_irl = "    layer=0,"  # the parameters cell shows the default (chosen by 04), as the smoke run does
    ran = run_by_hand(
        "04_irl.ipynb",
        finished_run,
        lambda source: replaced(
            source,
            {
                smoke_irl: "    layer=2,",
                "    seeds=10,": "    seeds=2,",
                "policy='embedded:smollm2-135m-instruct'": "policy='embedded:tiny-gpt-neox'",
                "    train_prompts=800,": "    train_prompts=20,",
                "    validation_prompts=200,": "    validation_prompts=12,",
                "    samples_per_prompt=2,": "    samples_per_prompt=1,",
            },
        ),
    )
    scratch = finished_run.with_name("smoke.scratch")
    assert f"Run by hand: 04_irl reads {finished_run} and writes {scratch}" in outputs(ran)
    assert tree_digest(finished_run) == before  # markers, metrics, artifacts: all as they were
    assert (scratch / "irl" / "reward" / "reward.json").is_file()
    assert json.loads((scratch / "irl" / "reward" / "reward.json").read_text())["layer"] == 2
    assert (scratch / "rlhf_ground_truth").is_symlink()  # what 04 reads is linked, not copied or changed
    assert json.loads((scratch / "metrics.json").read_text())["irl.seeds"] == 2

    ran = run_by_hand("05_analysis.ipynb", finished_run)  # composes: reads the reward 04 left in the scratch run
    assert tree_digest(finished_run) == before
    assert (scratch / "analysis" / "disagreements.csv").is_file()
    assert json.loads((scratch / "hand_stages.json").read_text()) == ["04_irl", "05_analysis"]

    done = irlnb_cli("run", str(write_params(finished_run.parent.parent)))  # the run itself is still complete
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stderr


def _start_run(params: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "irlnb", "run", str(params), "--force"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow(35)
def test_a_second_writer_is_refused_and_a_killed_runs_lock_is_taken_over(finished_run):
    params = write_params(finished_run.parent.parent, evaluation__bootstrap_samples=300)  # 02, 03, 05 redo
    lock = finished_run / ".irlnb.lock"
    first = _start_run(params)
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.05)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == first.pid and holder["holder"] == "irlnb run"

    second = irlnb_cli("run", str(params), "--force")
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"{finished_run} is in use by irlnb run (pid {first.pid}, since" in second.stderr
    with pytest.raises(Exception, match=f"is in use by irlnb run \\(pid {first.pid}"):
        run_by_hand("05_analysis.ipynb", finished_run)  # a notebook run by hand is refused too

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # One stage that always runs (no upstream; --force with --only redoes it) is enough to see the take-over.
    third = irlnb_cli("run", str(params), "--force", "--only", "01_curate")
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of a run that was killed (pid {first.pid})" in third.stdout
