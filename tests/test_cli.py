"""The command line's help: what a person reads before running anything."""

from __future__ import annotations

import pytest

from irlnb.pipeline.cli import build_parser
from irlnb.pipeline.stages import STAGES


def test_run_help_lists_every_stage_name(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["run", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--only", "--until"):
        assert option in help_text
    missing = [stage.name for stage in STAGES if stage.name not in help_text]
    assert not missing, f"`irlnb run --help` does not list the stages {missing}"
