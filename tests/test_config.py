"""A params file is validated before anything runs; every mistake gets one line that says what to fix."""

from __future__ import annotations

import shutil

import pytest
import yaml

from irlnb import stages
from irlnb.config import ConfigError, load_config, parse_config
from irlnb.notebook import begin_stage
from irlnb.stages import STAGES, StageError, check_notebook_parameters

from conftest import PARAMS, irlnb_cli


def smoke_data() -> dict:
    return yaml.safe_load((PARAMS / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS.glob("*.yaml")))
def test_every_shipped_params_file_validates(name):
    config = load_config(PARAMS / name)
    assert config.run.name


@pytest.mark.parametrize("section, key, value, message", [
    ("curate", "n_per_klass", 3, "smoke: curate.n_per_klass: unknown setting; known: n_per_class"),
    ("compute", "seed", "zero", "compute.seed: expected an integer >= 0, got 'zero'"),
    ("compute", "seed", True, "compute.seed: expected an integer >= 0, got True"),
    ("curate", "prompt_fraction", 1.5, "curate.prompt_fraction: expected a number > 0.0 and < 1.0, got 1.5"),
    ("compute", "device", "tpu", "compute.device: expected one of 'cpu', 'cuda', 'auto', got 'tpu'"),
    ("sources", "policy", "local:/no/such/model", "sources.policy: local path '/no/such/model' does not exist"),
    ("sources", "policy", "embedded:gpt5", "sources.policy: unknown embedded policy 'gpt5'"),
    ("sources", "prompts", "jigsaw", "sources.prompts: expected 'embedded:NAME', 'local:PATH' or 'hub:ORG/NAME'"),
    ("run", "name", "../escape", "run.name: expected letters, digits"),
    ("curate", "max_words", 3, "curate.max_words: expected >= curate.min_words"),
])
def test_bad_setting_is_refused_with_file_key_and_expectation(section, key, value, message):
    data = smoke_data()
    data[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(data, "params/smoke.yaml")
    text = str(err.value)
    assert text.startswith("params/smoke.yaml: ")
    assert message.removeprefix("smoke: ") in text
    assert "\n" not in text


def test_missing_section_and_missing_required_setting():
    data = smoke_data()
    del data["ground_truth"]
    with pytest.raises(ConfigError, match="ground_truth: missing section"):
        parse_config(data, "p.yaml")
    data = smoke_data()
    del data["sources"]["policy"]
    with pytest.raises(ConfigError, match=r"sources\.policy: missing; expected a string"):
        parse_config(data, "p.yaml")


@pytest.mark.parametrize("content, message", [
    ("run: {name: x\ncompute: [", "malformed YAML (line"),
    ("- just\n- a list\n", "expected a mapping of sections"),
    ("run: {name: x}\nextra_section: {}\n", "extra_section: unknown section"),
])
def test_cli_refuses_bad_files_with_one_line_and_writes_nothing(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    for command in (["check", str(bad)], ["run", str(bad), "--runs-dir", str(tmp_path / "runs")]):
        done = irlnb_cli(*command, cwd=tmp_path)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert str(bad) in lines[0] and message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_cli_missing_params_file(tmp_path):
    done = irlnb_cli("run", str(tmp_path / "nope.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"irlnb: error: {tmp_path / 'nope.yaml'}: no such params file"
    assert not (tmp_path / "runs").exists()


def test_cli_check_accepts_the_default():
    done = irlnb_cli("check", "params/default.yaml")
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_parameters_match_the_config_exactly(stage):
    check_notebook_parameters(stage)


def _notebook_with_parameters_edited(tmp_path, monkeypatch, edit):
    import nbformat

    for stage in STAGES:
        shutil.copy(stage.notebook_path, tmp_path / stage.notebook)
    path = tmp_path / STAGES[0].notebook
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = edit(cell.source)
    nbformat.write(notebook, path)
    monkeypatch.setattr(stages, "NOTEBOOKS_DIR", tmp_path)


def test_a_notebook_parameter_that_is_not_a_setting_is_an_error(tmp_path, monkeypatch):
    _notebook_with_parameters_edited(tmp_path, monkeypatch, lambda s: s + "\nstray_knob = 3")
    with pytest.raises(StageError, match="parameters stray_knob are not settings of sections"):
        check_notebook_parameters(STAGES[0])


def test_a_setting_missing_from_the_notebook_is_an_error(tmp_path, monkeypatch):
    _notebook_with_parameters_edited(
        tmp_path, monkeypatch, lambda s: "\n".join(l for l in s.splitlines() if not l.startswith("min_words")))
    with pytest.raises(StageError, match="does not define min_words"):
        check_notebook_parameters(STAGES[0])


def test_begin_stage_validates_hand_edited_notebook_values(tmp_path):
    config = load_config(PARAMS / "smoke.yaml")
    namespace = {"run_dir": str(tmp_path), **config.flat(STAGES[0].sections)}
    context = begin_stage("01_curate", namespace)
    assert context.curate.n_per_class == 60 and context.out == tmp_path.resolve() / "curate"
    namespace["n_per_class"] = -1
    with pytest.raises(ConfigError, match="notebook 01_curate.ipynb: curate.n_per_class: expected an integer >= 2"):
        begin_stage("01_curate", namespace)
