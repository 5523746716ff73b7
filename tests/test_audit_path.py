"""The audit path as a newcomer meets it: a plain folder is a model, a relative path is the params file's, and
`irlnb check` refuses what `irlnb run` would (a foreign tokenizer, the base itself, a layer the base lacks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PARAMS, REPO, irlnb_cli, write_params
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig

from irlnb.models.policies import check_models, embedded_policy_dir, model_depth
from irlnb.params_file import load_config
from irlnb.sources import SourceError, parse_source


def save_expert(folder: Path, extra_tokens: tuple[str, ...] = ()) -> Path:
    """An 'aligned' tiny GPT-NeoX as an auditor brings it: the embedded one with other weights, saved plainly."""
    base = embedded_policy_dir("tiny-gpt-neox")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    with torch.no_grad():
        model.get_output_embeddings().weight.add_(0.01)
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
        model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> Path:
    return save_expert(tmp_path_factory.mktemp("brought") / "expert")


def refusal(done) -> str:
    """The one line a refused command printed (exit status 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    return lines[0]


def test_a_plain_save_pretrained_folder_is_a_local_source(expert, tmp_path):
    assert parse_source(str(expert), "expert").spec == f"local:{expert.resolve()}"
    config = load_config(write_params(tmp_path, sources__expert=str(expert)))
    assert config.sources.expert == f"local:{expert.resolve()}"
    assert check_models(config, on_disk_only=True) == []  # another model with the base's tokenizer: fine


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-folder", "got 'no-such-folder', which is no existing path either"),
        ("embeded:tiny-gpt-neox", "unknown source kind 'embeded'"),
    ],
)
def test_a_source_of_no_kind_that_is_no_path_is_refused_saying_a_folder_may_be_a_path(spec, message):
    with pytest.raises(SourceError) as err:
        parse_source(spec, "expert")
    assert message in str(err.value) and "a local folder may be given as its path or as local:PATH" in str(err.value)


def test_a_relative_local_path_is_relative_to_the_params_file_and_one_set_on_the_command_line_to_the_cwd(
    tmp_path, monkeypatch
):
    project = tmp_path / "project"
    model = save_expert(project / "models" / "expert")
    (project / "params").mkdir()
    params = write_params(project / "params", sources__expert="local:../models/expert")
    for cwd in (REPO, tmp_path):  # wherever it is run from, the file names the same model
        done = irlnb_cli("check", str(params), cwd=cwd)
        assert done.returncode == 0, done.stderr
    assert load_config(params).sources.expert == f"local:{model.resolve()}"
    bare = write_params(project / "params", name="bare.yaml", sources__expert="../models/expert")
    assert load_config(bare).sources.expert == f"local:{model.resolve()}"

    monkeypatch.chdir(project)  # typed here: relative to here, not to the params file
    assert load_config(params, ["sources.expert=local:models/expert"]).sources.expert == f"local:{model.resolve()}"
    assert load_config(params, ["sources.expert=models/expert"]).sources.expert == f"local:{model.resolve()}"


def test_the_shipped_audit_example_names_the_default_runs_expert_relative_to_itself(tmp_path):
    clone = tmp_path / "clone"
    (clone / "params").mkdir(parents=True)
    shutil.copy(PARAMS / "audit-example.yaml", clone / "params")
    save_expert(clone / "runs" / "default" / "rlhf_ground_truth" / "policy")
    # the tiny model stands in for SmolLM2 (the default run's base): same layout, seconds to check
    done = irlnb_cli(
        "check",
        str(clone / "params" / "audit-example.yaml"),
        "--set",
        "sources.policy=embedded:tiny-gpt-neox",
        "--set",
        "irl.layer=2",
    )
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load((PARAMS / "audit-example.yaml").read_text())
    assert data["run"]["name"] == "audit-example"


def test_check_refuses_an_expert_that_is_the_base_itself(tmp_path):
    copy = shutil.copytree(embedded_policy_dir("tiny-gpt-neox"), tmp_path / "copy")  # same weights, another folder
    for spec in (f"local:{copy}", "embedded:tiny-gpt-neox"):
        params = write_params(tmp_path, sources__expert=spec)
        line = refusal(irlnb_cli("check", str(params)))
        assert line == (
            f"irlnb: error: {params}: sources.expert is the base policy itself (same weights as "
            "embedded:tiny-gpt-neox): there is nothing to audit"
        )


def test_check_refuses_an_expert_with_another_tokenizer(tmp_path):
    foreign = save_expert(tmp_path / "foreign", extra_tokens=("<|audited|>",))
    line = refusal(irlnb_cli("check", str(write_params(tmp_path, sources__expert=str(foreign)))))
    assert "have different tokenizers (1025 vs 1024 tokens)" in line and "audited against its own base" in line


def test_check_refuses_a_layer_deeper_than_the_base(tmp_path):
    line = refusal(irlnb_cli("check", str(write_params(tmp_path)), "--set", "irl.layer=99"))
    assert line.endswith(
        "irl.layer: expected 1..2 (the base policy embedded:tiny-gpt-neox has 2 blocks), -1 "
        "(the final, normed state) or 0 (chosen by notebook 04), got 99"
    )


def test_the_depth_is_read_from_the_config_file_its_text_part_first_and_else_as_transformers_reads_it(tmp_path):
    def depth(config: dict) -> int:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        return model_depth(folder)

    assert depth({"model_type": "llama", "num_hidden_layers": 30}) == 30
    assert depth({"model_type": "gemma3", "num_hidden_layers": 99, "text_config": {"num_hidden_layers": 18}}) == 18
    assert depth({"model_type": "gpt_neox"}) == GPTNeoXConfig().num_hidden_layers  # left to the default


@pytest.mark.parametrize(
    "change, message",
    [
        ("irl.layer=-2", "irl.layer: expected 1..2"),
        ("sources.expert=embedded:tiny-gpt-neox", "sources.expert is the base policy itself"),
    ],
)
def test_run_refuses_them_before_any_stage_runs(tmp_path, change, message):
    params = write_params(tmp_path)
    line = refusal(irlnb_cli("run", str(params), "--set", change))
    assert message in line
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_check_leaves_a_hub_expert_it_does_not_have_unchecked_and_never_reaches_the_network(tmp_path):
    params = write_params(tmp_path, sources__expert="hub:irlnb-tests/not-cached")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    done = irlnb_cli("check", str(params), env=env)
    assert done.returncode == 0, done.stderr
    assert "hub:irlnb-tests/not-cached: not on this machine yet (irlnb run fetches it), so not checked" in done.stdout
