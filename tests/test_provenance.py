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
