"""Provenance names the files a dirty run differed in, exactly."""

from __future__ import annotations

import subprocess

from irlnb.pipeline.provenance import git_state


def test_git_state_names_the_changed_files_exactly(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "README.md").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "README.md").write_text("b\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed_files"] == ["README.md"]


def test_a_long_command_names_the_code_it_started_with_and_says_when_the_checkout_moved(tmp_path):
    from irlnb.pipeline.provenance import held_provenance

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    started = {"git": git_state(tmp_path), "packages": {}, "hardware": {}}
    assert held_provenance(started, tmp_path) == started  # nothing moved: the record is what it started with
    (tmp_path / "code.py").write_text("x = 2\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "second")  # a pull while it ran
    held = held_provenance(started, tmp_path)
    assert held["git"] == started["git"]  # still the code that measured
    assert held["checkout_moved_to"]["commit"] != started["git"]["commit"]
    assert held["checkout_moved_to"]["commit"] == git_state(tmp_path)["commit"]
