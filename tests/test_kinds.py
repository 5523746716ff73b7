"""Each kind of alignment has one home (irlnb.rl.kinds): its record, its settings section, its training key."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from irlnb.config import ALIGNMENT_KINDS, SECTIONS, ConfigError
from irlnb.params_file import parse_config
from irlnb.rl.kinds import BROUGHT, KINDS, AlignmentKind, KindError, alignment_label, kind_of
from irlnb.rl.policy_card import POLICY_CARD, PolicyCard

PACKAGE = Path(__file__).resolve().parent.parent / "irlnb"


def test_every_kind_has_a_record_and_a_settings_section_of_its_name():
    assert tuple(KINDS) == ALIGNMENT_KINDS == SECTIONS["rlhf"].__dataclass_fields__["trainer"].metadata["choices"]
    for name, kind in KINDS.items():
        assert kind.settings_section == name and name in SECTIONS
        assert kind.budget in SECTIONS[name].__dataclass_fields__  # the study grows a setting of its own section
    assert kind_of("brought") is BROUGHT and BROUGHT.has_weights and BROUGHT.settings_section is None
    known = "dpo, infonca, rloo, grpo, rft, best_of_n"
    with pytest.raises(ValueError, match=f"unknown alignment kind 'ppo'; known: {known}"):
        kind_of("ppo")


def test_no_code_outside_the_kinds_record_compares_a_kinds_name():
    names = {*ALIGNMENT_KINDS, BROUGHT.name}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "kinds.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                strings = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
                tuples = {
                    e.value
                    for o in operands
                    if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                    for e in o.elts
                    if isinstance(e, ast.Constant)
                }
                if (strings | tuples) & names:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, "comparisons with a kind's name outside irlnb/rl/kinds.py: " + ", ".join(found)


def test_at_most_three_modules_spell_a_kinds_name():
    """A kind's name is spelt where kinds are defined (its settings section, its record) and next to nowhere else:
    other code asks the record. A docstring or comment that names a kind in prose spells no name's constant."""
    names = {*ALIGNMENT_KINDS, BROUGHT.name}
    spelling = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert len(spelling) <= 3, "modules that spell a kind's name as a string (at most 3): " + ", ".join(spelling)


def test_a_kind_without_weights_says_how_many_base_samples_its_policy_picks_from():
    with pytest.raises(KindError, match="alignment kind 'x' has no weights of its own: its record must say how many"):
        AlignmentKind("x", has_weights=False, train=lambda job: None, label=lambda section: "x")
    config = parse_config({"run": {"name": "x"}, "best_of_n": {"n": 5}}, "p.yaml")
    assert KINDS["best_of_n"].candidates(config.best_of_n) == 5
    assert KINDS["rft"].budget_label == "rejection sampling: rounds"  # its panels' title in the study's figure


def test_a_training_key_covers_its_kinds_section_and_the_shared_settings_it_reads_and_nothing_else():
    base = parse_config({"run": {"name": "x"}, "rlhf": {"trainer": "rloo"}}, "p.yaml")
    rloo = KINDS["rloo"]

    def key(config):
        return rloo.key_settings(config.rlhf, config.rloo)

    def changed(section, **values):
        data = {"run": {"name": "x"}, "rlhf": {"trainer": "rloo"}}
        data.setdefault(section, {}).update(values)
        return parse_config(data, "p.yaml")

    assert key(changed("rloo", learning_rate=1e-4)) != key(base)
    assert key(changed("rlhf", top_k=10)) != key(base)
    assert key(changed("rft", rounds=3)) == key(base)  # another kind's settings
    assert key(changed("best_of_n", n=8)) == key(base)
    assert key(changed("rloo", save_steps=3)) == key(base)  # a checkpoint interval never changes a result
    assert key(base)["rloo"]["per_device_train_batch_size"] == 8 and key(base)["trainer"] == "rloo"


def test_figures_name_each_kind_from_its_own_settings():
    config = parse_config(
        {"run": {"name": "x"}, "rlhf": {"trainer": "best_of_n"}, "best_of_n": {"n": 4}, "irl": {"matched": False}},
        "p.yaml",
    )
    assert alignment_label(config) == "best of 4"
    dpo = parse_config({"run": {"name": "x"}, "dpo": {"beta": 0.25}}, "p.yaml")
    assert alignment_label(dpo) == "DPO (beta 0.25)"  # the default kind
    rloo = parse_config({"run": {"name": "x"}, "rlhf": {"trainer": "rloo"}}, "p.yaml")
    assert alignment_label(rloo) == "RLHF (RLOO)"
    assert KINDS["best_of_n"].kl_to_base(config.best_of_n) == pytest.approx(math.log(4) - 3 / 4)
    assert KINDS["rloo"].kl_to_base is None  # measured from its samples (white-box log-ratio), not known


def _card(folder: Path, **changes) -> Path:
    config = parse_config({"run": {"name": "x"}}, "p.yaml").to_dict()
    settings = {name: config[name] for name in ("sources", "ground_truth", "rlhf", *ALIGNMENT_KINDS)}
    card = {"reward": "ground_truth", "trainer": "best_of_n", "training_key": "k", "steps": 0, "settings": settings}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        settings[section][key] = value
    folder.mkdir(parents=True)
    (folder / POLICY_CARD).write_text(json.dumps(card))
    return folder


def test_a_policy_cards_settings_are_reparsed_into_the_typed_sections(tmp_path):
    card = PolicyCard.read(_card(tmp_path / "ok", best_of_n__n=3))
    assert type(card.section("best_of_n")).__name__ == "BestOfNSettings" and card.section("best_of_n").n == 3
    assert not card.has_weights and card.label() == "best of 3"
    bad = PolicyCard.read(_card(tmp_path / "bad", best_of_n__n=0))
    with pytest.raises(ConfigError) as err:
        bad.section("best_of_n")
    assert str(err.value) == f"{bad.path}: best_of_n.n: expected an integer >= 1, got 0"


def test_a_trained_kind_whose_folder_holds_no_weights_is_refused_in_one_line(tmp_path):
    from irlnb.layout import RunLayout
    from irlnb.rl.policy_card import load_stage_policy

    layout = RunLayout(tmp_path / "run")
    folder = _card(layout.policy("ground_truth"))
    card = json.loads((folder / POLICY_CARD).read_text())
    (folder / POLICY_CARD).write_text(json.dumps({**card, "trainer": "dpo", "steps": 50}))
    with pytest.raises(ConfigError) as err:
        load_stage_policy(layout, "ground_truth", "cpu", "float32", decoding=None)
    assert str(err.value) == (
        f"{folder}: its card says the policy was aligned by dpo, a kind with weights of its own, but the folder "
        "holds none; rerun its RLHF stage"
    )
    assert PolicyCard.read(folder).held_out_prompt_ids == set()  # an old card without prompt ids holds none out


def test_reading_a_finished_policy_loads_no_trainer():
    code = (
        "import sys; import irlnb.rl.policy_card, irlnb.rl.training, irlnb.report.study_plots; "
        "print(sorted(m for m in ('trl', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_training_dtype_is_in_the_key_of_the_kinds_that_train_in_it_and_of_no_other():
    """dpo's and infonca's steps run in compute.training_dtype, the others' in float32, so a change of the setting
    retrains those two experts and no other."""
    from irlnb.rl.training import training_key

    def key(trainer: str, dtype: str) -> str:
        config = parse_config(
            {"run": {"name": "x"}, "rlhf": {"trainer": trainer}, "compute": {"training_dtype": dtype}}, "p.yaml"
        )
        return training_key(config, KINDS[trainer], {"reward": "r"}, ["a prompt"], ["a text"])

    for trainer in ("dpo", "infonca"):
        assert key(trainer, "float32") != key(trainer, "bfloat16"), trainer
    for trainer in ("rloo", "rft"):
        assert key(trainer, "float32") == key(trainer, "bfloat16"), trainer


def test_training_layers_are_in_the_key_of_the_kind_that_compiles_its_layers_and_of_no_other(monkeypatch):
    """infonca's step runs its layers compiled where compute.training_layers says so: its sums rounded in another
    order, so switching it retrains that expert, and no other."""
    from irlnb import compute
    from irlnb.rl.training import training_key

    monkeypatch.setattr(compute, "cpp_compiler", lambda: "g++")  # compiling needs one

    def key(trainer: str, layers: str) -> str:
        config = parse_config(
            {"run": {"name": "x"}, "rlhf": {"trainer": trainer}, "compute": {"training_layers": layers}}, "p.yaml"
        )
        return training_key(config, KINDS[trainer], {"reward": "r"}, ["a prompt"], ["a text"])

    assert key("infonca", "eager") != key("infonca", "compiled")
    for trainer in ("dpo", "rloo", "rft"):
        assert key(trainer, "eager") == key(trainer, "compiled"), trainer
