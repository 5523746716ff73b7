"""A params file is validated before anything runs; every mistake gets one line that says what to fix."""

from __future__ import annotations

import dataclasses
import shutil
import typing

import pytest
import yaml
from conftest import PARAMS, irlnb_cli, write_params

from irlnb.config import AUTO_LAYER, SECTIONS, Config, ConfigError
from irlnb.objectives import OBJECTIVES
from irlnb.params_file import describe_settings, load_config, parse_config, parse_section
from irlnb.pipeline import stages
from irlnb.pipeline.context import begin_stage
from irlnb.pipeline.stages import (
    STAGES,
    StageError,
    check_notebook,
    notebooks,
    render_parameters_cell,
    stage_parameters,
)


def smoke_data() -> dict:
    return yaml.safe_load((PARAMS / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS.glob("*.yaml")))
def test_every_shipped_params_file_validates(name):
    try:
        config = load_config(PARAMS / name)
    except ConfigError as err:  # the audit example reads a finished default run, which a fresh clone lacks
        assert (
            name == "audit-example.yaml" and "sources.expert: local path" in str(err) and "does not exist" in str(err)
        )
        return
    assert config.run.name


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("curate", "n_per_klass", 3, "curate.n_per_klass: unknown setting; known: n_per_class"),
        ("compute", "seed", "zero", "compute.seed: expected an integer >= 0, got 'zero'"),
        ("compute", "seed", True, "compute.seed: expected an integer >= 0, got True"),
        ("curate", "prompt_fraction", 1.5, "curate.prompt_fraction: expected a number > 0.0 and < 1.0, got 1.5"),
        ("compute", "device", "tpu", "compute.device: expected one of 'cpu', 'cuda', 'auto', got 'tpu'"),
        ("sources", "policy", "local:/no/such/model", "sources.policy: local path '/no/such/model' does not exist"),
        ("sources", "policy", "embedded:gpt5", "sources.policy: unknown embedded policy 'gpt5'"),
        ("sources", "prompts", "jigsaw", "sources.prompts: expected 'embedded:NAME', 'local:PATH' or 'hub:ORG/NAME'"),
        ("run", "name", "../escape", "run.name: expected letters, digits"),
        ("curate", "max_words", 3, "curate.max_words: expected >= curate.min_words"),
    ],
)
def test_bad_setting_is_refused_with_file_key_and_expectation(section, key, value, message):
    data = smoke_data()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(data, "params/smoke.yaml")
    text = str(err.value)
    assert text.startswith("params/smoke.yaml: ")
    assert message in text
    assert "\n" not in text


def test_a_left_out_setting_or_section_takes_its_default_but_the_run_must_be_named():
    config = parse_config({"run": {"name": "x"}}, "p.yaml")
    for name, cls in SECTIONS.items():
        if name != "run":
            # every default is written once, in irlnb/config.py ('auto' made concrete for this machine on parsing)
            assert getattr(config, name) == cls() or getattr(config, name) == cls().resolved()
    assert (
        config.rloo.max_steps == 40
        and config.irl.layer == AUTO_LAYER  # chosen by notebook 04, without R*
        and config.sources.policy == "embedded:smollm2-135m-instruct"
    )
    with pytest.raises(ConfigError, match="run: missing section"):
        parse_config({"rloo": {"max_steps": 3}}, "p.yaml")
    with pytest.raises(ConfigError, match=r"run\.name: missing; expected a string"):
        parse_config({"run": {"runs_dir": "runs"}}, "p.yaml")


def test_the_default_params_file_sets_only_the_expert_and_audit_chosen_for_its_backbone():
    """Every other setting of the embedded default is the config's default, written once in irlnb/config.py."""
    written = yaml.safe_load((PARAMS / "default.yaml").read_text())
    config = load_config(PARAMS / "default.yaml")
    assert {name: getattr(config, name) for name in SECTIONS if name != "run"} == {
        name: parse_section(name, written.get(name, {}), "defaults") for name in SECTIONS if name != "run"
    }
    assert {f"{name}.{key}" for name, section in written.items() if name != "run" for key in section} == {
        "rlhf.trainer",
        "rlhf.train_prompts",
        "infonca.prompts",
        "infonca.learning_rate",
        "infonca.num_train_epochs",
        "infonca.beta",
        "irl.prompt_pool",
        "irl.train_prompts",
        "irl.samples_per_prompt",
    }
    assert (config.rlhf.trainer, config.irl.samples_per_prompt) == ("infonca", 8)


def test_every_section_is_declared_once_as_a_field_of_config_in_the_params_file_order():
    sections = typing.get_type_hints(Config)
    assert list(SECTIONS.items()) == [
        (f.name, sections[f.name]) for f in dataclasses.fields(Config) if f.name != "path"
    ]
    assert list(SECTIONS) == [
        "run",
        "compute",
        "sources",
        "curate",
        "ground_truth",
        "rlhf",
        "dpo",
        "infonca",
        "rloo",
        "grpo",
        "rft",
        "best_of_n",
        "random_reward",
        "evaluation",
        "irl",
        "analysis",
    ]
    config = parse_config({"run": {"name": "x"}}, "p.yaml")
    assert list(config.to_dict()) == list(SECTIONS)
    assert all(isinstance(getattr(config, name), cls) for name, cls in SECTIONS.items())


def test_a_rule_across_sections_lives_on_its_section_and_parse_config_runs_every_one(monkeypatch):
    too_many = {"run": {"name": "x"}, "irl": {"train_prompts": 1000}}  # the default trainer is dpo, no expert brought
    message = (
        "irl.train_prompts: expected at most 800: IRL's 1200 train prompts of pool 'all' less the 400 that "
        "dpo.prompts trains the expert on (IRL never sees them), got 1000"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(too_many, "p.yaml")
    assert str(err.value) == f"p.yaml: {message}"
    balanced = {"run": {"name": "x"}, "irl": {"prompt_pool": "balanced"}}  # 800 prompts: 400 toxic, 200 left
    with pytest.raises(ConfigError, match=r"irl.train_prompts: expected at most 400: .* pool 'balanced' less the 400"):
        parse_config(balanced, "p.yaml")
    parse_config({**balanced, "irl": {"prompt_pool": "balanced", "train_prompts": 400}}, "p.yaml")
    ok = parse_config({"run": {"name": "x"}}, "p.yaml")
    crowded = dataclasses.replace(ok, irl=dataclasses.replace(ok.irl, train_prompts=1000))
    assert ok.dpo.cross_problems(crowded) == [tuple(message.split(": ", 1))]  # the rule is the dpo section's
    # another trainer, or an expert brought instead of trained here: dpo's rule does not apply
    assert parse_config({**too_many, "rlhf": {"trainer": "rloo"}}, "p.yaml").irl.train_prompts == 1000
    assert parse_config({**too_many, "sources": {"expert": f"local:{PARAMS}"}}, "p.yaml").irl.train_prompts == 1000
    best_of_n = {"run": {"name": "x"}, "rlhf": {"trainer": "best_of_n"}}
    with pytest.raises(ConfigError, match=r"^p\.yaml: irl\.matched: a best-of-n expert has no model of its own"):
        parse_config(best_of_n, "p.yaml")
    assert not parse_config({**best_of_n, "irl": {"matched": False}}, "p.yaml").irl.matched
    # parse_config asks every section, not a list of known rules
    monkeypatch.setattr(
        SECTIONS["analysis"], "cross_problems", lambda self, config: [("irl.layer", "made up")], raising=False
    )
    with pytest.raises(ConfigError, match=r"^p\.yaml: irl\.layer: made up$"):
        parse_config({"run": {"name": "x"}}, "p.yaml")


@pytest.mark.parametrize("loss", list(OBJECTIVES))
def test_an_objective_that_is_the_posteriors_mean_needs_the_posterior(loss):
    data = {"run": {"name": "x"}, "irl": {"loss": loss, "posterior": False}}
    if not OBJECTIVES[loss].needs_posterior:
        assert parse_config(data, "p.yaml").irl.loss == loss
        return
    with pytest.raises(ConfigError) as err:
        parse_config(data, "p.yaml")
    assert str(err.value) == f"p.yaml: irl.loss: '{loss}' is the posterior's mean: it needs irl.posterior: true"


def test_describe_shows_each_section_description_whole():
    lines = describe_settings().splitlines()
    for name, cls in SECTIONS.items():
        description = next(line for line in lines if line.startswith(f"{name}:  # ")).split("  # ", 1)[1]
        docstring = " ".join(cls.__doc__.split())
        assert docstring.startswith(description)
        assert description.endswith(".") or description == docstring, f"{name}: cut mid-sentence: {description!r}"
    assert "where TRL has one." in describe_settings()  # the dpo description, wrapped over two docstring lines


@pytest.mark.parametrize(
    "content, message",
    [
        ("run: {name: x\ncompute: [", "malformed YAML (line"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        ("run: {name: x}\nextra_section: {}\n", "extra_section: unknown section"),
    ],
)
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


@pytest.mark.parametrize("notebook", notebooks())
def test_each_notebook_parameters_cell_is_the_config_default_with_its_descriptions(notebook):
    check_notebook(notebook)  # the cell is exactly what irlnb/config.py renders: names, defaults, descriptions
    namespace = {}
    exec(render_parameters_cell(notebook), namespace)
    for stage in stages.notebook_stages(notebook):
        for section, keys in stage.sections().items():
            assert {key: namespace[section][key] for key in keys} == {
                key: getattr(SECTIONS[section](), key) for key in keys
            }


def _notebook_with_parameters_edited(tmp_path, monkeypatch, edit):
    import nbformat

    for notebook in notebooks():
        shutil.copy(stages.NOTEBOOKS_DIR / notebook, tmp_path / notebook)
    path = tmp_path / STAGES[0].notebook
    content = nbformat.read(path, as_version=4)
    cell = next(c for c in content.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = edit(cell.source)
    nbformat.write(content, path)
    monkeypatch.setattr(stages, "NOTEBOOKS_DIR", tmp_path)


def test_a_notebook_parameter_that_is_not_a_setting_is_an_error(tmp_path, monkeypatch):
    _notebook_with_parameters_edited(tmp_path, monkeypatch, lambda s: s + "\nstray_knob = 3")
    with pytest.raises(
        StageError, match="it assigns .*stray_knob where .* are expected\\); run 'irlnb check --write-notebooks'"
    ):
        check_notebook(STAGES[0].notebook)


def test_a_default_that_drifted_from_the_config_is_an_error_and_can_be_rewritten(tmp_path, monkeypatch):
    _notebook_with_parameters_edited(tmp_path, monkeypatch, lambda s: s.replace("min_words=8,", "min_words=9,"))
    with pytest.raises(StageError, match="its values or descriptions differ from irlnb/config.py"):
        check_notebook(STAGES[0].notebook)
    assert stages.write_parameters_cell(STAGES[0].notebook) is True
    check_notebook(STAGES[0].notebook)
    assert stages.write_parameters_cell(STAGES[0].notebook) is False


def test_begin_stage_validates_hand_edited_notebook_values(tmp_path):
    config = load_config(PARAMS / "smoke.yaml")
    namespace = {"run_dir": str(tmp_path / "smoke"), **stage_parameters(STAGES[0], config)}
    context = begin_stage("01_curate", namespace)
    assert context.curate.n_per_class == 60
    assert context.out == tmp_path.resolve() / "smoke.scratch" / "curate"  # by hand: the scratch run, never the run
    namespace["curate"] = {**namespace["curate"], "n_per_class": -1}
    with pytest.raises(ConfigError, match="notebook 01_curate.ipynb: curate.n_per_class: expected an integer >= 2"):
        begin_stage("01_curate", namespace)
    namespace["curate"] = {"n_per_klass": 3}
    with pytest.raises(ConfigError, match="notebook 01_curate.ipynb: curate.n_per_klass: unknown setting"):
        begin_stage("01_curate", namespace)


def test_a_stage_cannot_read_a_setting_it_does_not_declare(tmp_path):
    config = load_config(PARAMS / "smoke.yaml")
    context = begin_stage(
        "02_ground_truth_rm", {"run_dir": str(tmp_path / "run"), **stage_parameters(STAGES[1], config)}
    )
    assert context.sources.toxicity_classifier == "embedded:tox-block"
    with pytest.raises(AttributeError, match="stage 02_ground_truth_rm does not declare the setting sources.policy"):
        context.sources.policy  # noqa: B018 - the read itself is what is refused
    with pytest.raises(AttributeError, match="stage 02_ground_truth_rm reads no setting of section 'rlhf'"):
        context.rlhf  # noqa: B018


@pytest.mark.parametrize("notebook", notebooks())
def test_each_committed_notebook_is_clean_with_the_venv_kernelspec(notebook):
    import copy
    import json

    from irlnb.pipeline.lab import KERNELSPEC, clean_notebook

    content = json.loads((stages.NOTEBOOKS_DIR / notebook).read_text())
    assert content["metadata"]["kernelspec"] == KERNELSPEC  # the venv's: JupyterLab does not rewrite it on open
    assert clean_notebook(copy.deepcopy(content)) == content  # no outputs, counts or session metadata


def test_jupyter_saves_a_committed_notebook_back_clean_and_other_files_as_they_are():
    from irlnb.pipeline.lab import LANGUAGE_INFO, before_save

    cell = {
        "cell_type": "code",
        "source": "1 + 1",
        "execution_count": 3,
        "metadata": {"tags": ["x"], "scrolled": True},
        "outputs": [{"output_type": "execute_result", "data": {"text/plain": "2"}}],
    }
    session = {"kernelspec": {"name": "python3"}, "language_info": {"name": "python", "version": "3.11.9"}}

    def model():
        return {"type": "notebook", "content": {"cells": [dict(cell)], "metadata": dict(session)}}

    committed = model()
    before_save(committed, "notebooks/05_analysis.ipynb")
    saved = committed["content"]
    assert saved["cells"][0]["outputs"] == [] and saved["cells"][0]["execution_count"] is None
    assert saved["cells"][0]["metadata"] == {"tags": ["x"]} and saved["metadata"]["language_info"] == LANGUAGE_INFO
    elsewhere = model()
    before_save(elsewhere, "runs/default.scratch/mine.ipynb")
    assert elsewhere == model()


def test_set_changes_a_setting_through_the_same_validation_as_the_file():
    config = load_config(PARAMS / "smoke.yaml", ["rloo.max_steps=2", "rft.learning_rate=1e-5", "run.name=007"])
    assert (config.rloo.max_steps, config.rft.learning_rate, config.run.name) == (2, 1e-5, "007")
    assert config.path == str(PARAMS / "smoke.yaml")  # the file it came from; the changes are in the settings
    for override, message in (
        ("rloo.max_steps=0", "smoke.yaml with --set rloo.max_steps=0: rloo.max_steps: expected an integer >= 1, got 0"),
        ("rlhf.steps=2", "rlhf.steps: unknown setting; known: trainer, seed,"),
        ("rloo.max_steps", "--set 'rloo.max_steps': expected section.key=value"),
        ("nosuch.key=1", "--set nosuch.key: unknown section; known: run, compute"),
        ("rloo.num_generations=3", "rloo.per_device_train_batch_size: expected a multiple of num_generations (3)"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(PARAMS / "smoke.yaml", [override])
        assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_run_refuses_a_bad_set_in_one_line_and_writes_nothing(tmp_path):
    params = write_params(tmp_path)
    done = irlnb_cli("run", str(params), "--set", "rloo.max_steps=0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"irlnb: error: {params} with --set rloo.max_steps=0: rloo.max_steps: expected an integer >= 1, got 0"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [({"avx2", "avx512_bf16"}, "bfloat16"), ({"avx2", "amx_bf16"}, "bfloat16"), ({"avx2", "fma"}, "float32")],
)
def test_inference_dtype_auto_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, flags, expected):
    from irlnb import compute

    monkeypatch.setattr(compute, "cpu_flags", lambda: flags)
    assert parse_section("compute", {"device": "cpu"}, "p.yaml").inference_dtype == expected
    chosen = parse_section("compute", {"device": "cpu", "inference_dtype": "bfloat16"}, "p.yaml")
    assert chosen.inference_dtype == "bfloat16"  # a dtype the params name is kept


@pytest.mark.parametrize(
    "setting, device, compiler, expected",
    [
        ("auto", "cpu", "g++", "compiled"),
        ("auto", "cpu", "", "eager"),  # inductor has nothing to build its C++ with
        ("auto", "cuda", "g++", "eager"),  # untried on a GPU
        ("eager", "cpu", "g++", "eager"),
        ("compiled", "cpu", "g++", "compiled"),
    ],
)
def test_training_layers_auto_are_compiled_only_on_a_cpu_with_a_cpp_compiler(
    monkeypatch, setting, device, compiler, expected
):
    from irlnb import compute

    monkeypatch.setattr(compute, "cpp_compiler", lambda: compiler)
    assert compute.resolve_layers(setting, device) == expected
    if device == "cpu":
        parsed = parse_section("compute", {"device": "cpu", "training_layers": setting}, "p.yaml")
        assert parsed.training_layers == expected


def test_compiled_training_layers_without_a_cpp_compiler_are_refused_in_one_line(monkeypatch):
    from irlnb import compute

    monkeypatch.setattr(compute, "cpp_compiler", lambda: "")
    with pytest.raises(compute.DeviceError) as err:
        parse_section("compute", {"device": "cpu", "training_layers": "compiled"}, "p.yaml")
    message = str(err.value)
    assert message.startswith("compute.training_layers is 'compiled' but no C++ compiler") and "\n" not in message


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    from irlnb.compute import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: spectre\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
