"""`irlnb regress`: tolerances, comparing with a reference, recording one, a fresh run that publishes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, irlnb_cli, write_params
from test_report import make_run

from irlnb.params_file import load_config
from irlnb.pipeline import regress


def copy_shipped_tolerances(folder: Path) -> None:
    """regress/tolerances.yaml and the replicates records it names for its spreads."""
    spreads = regress.load_tolerances(REPO / "regress" / "tolerances.yaml").spreads
    for name in ("tolerances.yaml", *(spread.record for spread in spreads)):
        (folder / name).write_text((REPO / "regress" / name).read_text())


def _reference(tmp_path, metrics: dict) -> tuple:
    folder = tmp_path / "regress"
    folder.mkdir(exist_ok=True)
    (folder / "smoke.metrics.json").write_text(json.dumps({"metrics": metrics, "git": {"commit": "abc1234567"}}))
    (folder / "tolerances.yaml").write_text(
        "default: {abs: 1.0e-6}\nprefixes:\n  rlhf.: {abs: 0.02, rel: 0.1}\n  rlhf.base.: {abs: 0.0}\n"
        "ignore: ['gt.texts_per_s']\n"
    )
    return folder / "smoke.metrics.json", folder / "tolerances.yaml"


def test_regress_passes_within_tolerance_and_fails_outside_it(tmp_path, capsys):
    reference = {
        "gt.auc_human": 0.8,
        "rlhf.ground_truth.toxicity_mean": 0.05,
        "rlhf.ground_truth.perplexity": 150.0,
        "rlhf.base.toxicity_mean": 0.1,
        "gt.auc_human_ci_low": 0.7,
        "timing.total_s": 100.0,
        "irl.time.layer_choice_s": 400.0,
        "gt.texts_per_s": 5000.0,
    }
    reference_path, tolerances_path = _reference(tmp_path, reference)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    measured = {
        **reference,
        "rlhf.ground_truth.toxicity_mean": 0.069,  # within abs 0.02
        "rlhf.ground_truth.perplexity": 164.0,  # within rel 0.1 of 150
        "gt.auc_human_ci_low": 0.1,
        "timing.total_s": 900.0,
        "irl.time.layer_choice_s": 55.0,  # stage 04's own timing: a speed-up is no regression
        "gt.texts_per_s": 1.0,  # ignored
        "irl.test.accuracy_mean": 0.7,
    }  # new key: not a regression
    (run_dir / "metrics.json").write_text(json.dumps(measured))
    assert regress.check_run(run_dir, reference_path, tolerances_path) == 0
    assert "regress: ok: 4 metrics within tolerance" in capsys.readouterr().out

    measured.update({"rlhf.ground_truth.toxicity_mean": 0.08, "rlhf.base.toxicity_mean": 0.1000001})
    del measured["gt.auc_human"]
    (run_dir / "metrics.json").write_text(json.dumps(measured))
    assert regress.check_run(run_dir, reference_path, tolerances_path) == 1
    out = capsys.readouterr().out
    assert "regress: FAILED: 3 of 4 metrics out of tolerance" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert lines["gt.auc_human"][2] == "missing"
    assert lines["rlhf.ground_truth.toxicity_mean"][1:] == ["0.05", "0.08", "+0.03", "0.02", "prefix", "rlhf."]
    assert "rlhf.base.toxicity_mean" in lines  # the longest prefix (abs 0) wins over rlhf.


def test_tolerances_are_validated(tmp_path):
    path = tmp_path / "tolerances.yaml"
    path.write_text("default: {abs: 0.1}\nprefixes:\n  gt.: {abs: -1}\n")
    with pytest.raises(regress.RegressError, match=r"prefixes.gt..abs: expected a number >= 0, got -1"):
        regress.load_tolerances(path)
    path.write_text("default: {abs: 0.1}\nprefix: {}\n")
    with pytest.raises(regress.RegressError, match="expected keys default, prefixes, ignore, replicates"):
        regress.load_tolerances(path)
    shipped = regress.load_tolerances(REPO / "regress" / "tolerances.yaml")
    assert shipped.ignored("timing.total_s") and shipped.ignored("gt.auc_human_ci_low")
    assert shipped.ignored("irl.time.white_box_s") and not shipped.ignored("irl.test.auc_mean")
    assert shipped.for_key("rlhf.base.toxicity_mean") != shipped.for_key("rlhf.learned.toxicity_mean")


def test_regress_cli_records_a_reference_and_refuses_a_missing_one(tmp_path):
    params = write_params(tmp_path)
    references = tmp_path / "references"
    done = irlnb_cli("regress", str(params), "--reference-dir", str(references))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "smoke.metrics.json: no regression reference" in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything ran

    run_dir = make_run(tmp_path / "finished", "smoke", saved_loss=None)  # made with params/smoke.yaml, as `params` is
    done = irlnb_cli("regress", "--record", str(params), "--run-dir", str(run_dir), "--reference-dir", str(references))
    assert done.returncode == 0, done.stderr
    recorded = json.loads((references / "smoke.metrics.json").read_text())
    assert recorded["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert recorded["params"]["rloo"]["learning_rate"] == 1e-3 and recorded["git"]["commit"] == "0" * 40
    copy_shipped_tolerances(references)
    assert regress.check_run(run_dir, references / "smoke.metrics.json", references / "tolerances.yaml") == 0

    other = make_run(tmp_path / "elsewhere", "smoke", learning_rate=0.5)
    done = irlnb_cli("regress", "--record", str(params), "--run-dir", str(other), "--reference-dir", str(references))
    assert done.returncode == 2 and "made with other params than" in done.stderr and "rloo.learning_rate" in done.stderr


def test_regress_runs_afresh_without_publishing_figures_then_compares(tmp_path, monkeypatch, capsys):
    from irlnb.pipeline import runner

    config = load_config(write_params(tmp_path, run__figures_dir="published"))
    references = tmp_path / "references"
    references.mkdir()
    copy_shipped_tolerances(references)
    (references / "smoke.metrics.json").write_text(
        json.dumps({"metrics": {"gt.auc_human": 0.8}, "params": config.to_dict()})
    )
    runs_dir = tmp_path / "regress_runs"
    stale = runs_dir / "smoke" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier regression run")
    seen = []

    def fake_run(run_config, runs_dir, log):  # stands in for the 30-minute pipeline
        seen.append(run_config)
        assert not stale.exists()  # the regression run starts from an empty run directory
        (Path(runs_dir) / run_config.run.name).mkdir(parents=True, exist_ok=True)
        (Path(runs_dir) / run_config.run.name / "metrics.json").write_text(json.dumps({"gt.auc_human": measured}))
        return Path(runs_dir) / run_config.run.name

    monkeypatch.setattr(runner, "run", fake_run)
    measured = 0.8
    assert regress.regress(config, runs_dir=str(runs_dir), reference_dir=references) == 0
    assert seen[0].run.figures_dir == "" and seen[0].rlhf == config.rlhf  # the published figures stay untouched
    measured = 0.7
    assert regress.regress(config, runs_dir=str(runs_dir), reference_dir=references) == 1
    assert "gt.auc_human" in capsys.readouterr().out
    with pytest.raises(regress.RegressError, match="is the run of .* itself; regress into another runs dir"):
        regress.regress(config, runs_dir=config.run.runs_dir, reference_dir=references)


def test_a_key_may_also_move_within_its_spread_over_alignment_seeds_and_the_failure_says_which_tolerance(
    tmp_path, capsys
):
    reference = {"gt.auc_human": 0.8, "irl.test.auc_mean": 0.80, "irl.test.spearman_mean": 0.60}
    reference_path, tolerances_path = _reference(tmp_path, reference)
    spread = {"gt.auc_human": 0.0, "irl.test.auc_mean": 0.01, "irl.test.spearman_mean": 0.0001}
    (tolerances_path.parent / "replicates.metrics.json").write_text(json.dumps({"sd_over_seeds": spread}))
    tolerances_path.write_text(
        "default: {abs: 0.001}\nreplicates: {record: replicates.metrics.json, sd: 4}\nignore: []\n"
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    measured = {"gt.auc_human": 0.8, "irl.test.auc_mean": 0.839, "irl.test.spearman_mean": 0.6009}
    (run_dir / "metrics.json").write_text(json.dumps(measured))
    assert regress.check_run(run_dir, reference_path, tolerances_path) == 0  # 0.039 within 4 SD of 0.01
    out = capsys.readouterr().out
    assert "regress: ok: 3 metrics" in out and "1 tolerances from the spread over alignment seeds" in out

    measured.update({"irl.test.auc_mean": 0.841, "irl.test.spearman_mean": 0.602})
    (run_dir / "metrics.json").write_text(json.dumps(measured))
    assert regress.check_run(run_dir, reference_path, tolerances_path) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:3]}
    assert rows["irl.test.auc_mean"].split()[4:] == ["0.04", "4", "SD", "over", "seeds"]
    assert rows["irl.test.spearman_mean"].split()[4:] == ["0.001", "default"]  # the seeds' 0.0004 is narrower


def test_a_key_moves_within_the_widest_of_the_spreads_over_seeds_and_over_draws_and_the_summary_counts_each(
    tmp_path, capsys
):
    reference = {"gt.auc_human": 0.8, "irl.test.auc_mean": 0.80, "irl.test.spearman_mean": 0.60}
    reference_path, tolerances_path = _reference(tmp_path, reference)
    folder = tolerances_path.parent
    (folder / "seeds.json").write_text(
        json.dumps({"sd_over_seeds": {"irl.test.auc_mean": 0.01, "irl.test.spearman_mean": 0.001}})
    )
    (folder / "draws.json").write_text(
        json.dumps({"sd_over_seeds": {"irl.test.spearman_mean": 0.005}, "varied": "irl.draw"})
    )
    tolerances_path.write_text(
        "default: {abs: 0.001}\nreplicates:\n  - {record: seeds.json, sd: 4}\n  - {record: draws.json, sd: 2}\n"
    )
    tolerances = regress.load_tolerances(tolerances_path)
    assert tolerances.allowed("irl.test.auc_mean", 0.8) == (pytest.approx(0.04), "4 SD over seeds")
    assert tolerances.allowed("irl.test.spearman_mean", 0.6) == (pytest.approx(0.01), "2 SD over draws")  # > 0.004
    assert tolerances.allowed("gt.auc_human", 0.8) == (0.001, "default")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    measured = {"gt.auc_human": 0.8, "irl.test.auc_mean": 0.83, "irl.test.spearman_mean": 0.611}
    (run_dir / "metrics.json").write_text(json.dumps(measured))
    assert regress.check_run(run_dir, reference_path, tolerances_path) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["irl.test.spearman_mean", "0.6", "0.611", "+0.011", "0.01", "2", "SD",
                                           "over", "draws"]  # fmt: skip
    assert (
        "1 tolerances from the spread over alignment seeds in seeds.json, 1 tolerances from the spread over "
        "demonstration draws in draws.json" in out
    )
    (folder / "draws.json").write_text(json.dumps({"sd_over_seeds": {"x": 1.0}, "varied": "compute.seed"}))
    with pytest.raises(regress.RegressError, match=r"draws.json varies 'compute.seed', not one of rlhf.seed, irl.draw"):
        regress.load_tolerances(tolerances_path)


def test_a_replicates_tolerance_without_its_record_is_refused_in_one_line(tmp_path):
    path = tmp_path / "tolerances.yaml"
    path.write_text("default: {abs: 0.1}\nreplicates: {record: gone.metrics.json, sd: 3}\n")
    with pytest.raises(regress.RegressError, match=r"replicates.record: .*gone.metrics.json holds no sd_over_seeds"):
        regress.load_tolerances(path)
    path.write_text("default: {abs: 0.1}\nreplicates: {record: gone.metrics.json, sd: 0}\n")
    with pytest.raises(regress.RegressError, match=r"replicates.sd: expected a number > 0, got 0"):
        regress.load_tolerances(path)


def _recorded_on(folder: Path, name: str, hardware: dict | None, value: float) -> Path:
    record = {"metrics": {"gt.auc_human": value}, **({"hardware": hardware} if hardware else {})}
    (folder / name).write_text(json.dumps(record))
    return folder / name


EPYC = {"cpu": "AMD EPYC", "gpus": []}
XEON_AMX = {"cpu": "Intel(R) Xeon(R) Processor", "bfloat16_native": True, "gpus": []}


def test_a_run_is_compared_with_the_reference_of_its_own_machine_kind_else_the_main_one_with_a_warning(tmp_path):
    folder = tmp_path / "regress"
    folder.mkdir()
    main = _recorded_on(folder, "smoke.metrics.json", EPYC, 0.8)
    xeon = _recorded_on(folder, "smoke-xeon.metrics.json", XEON_AMX, 0.7)
    (folder / "references.yaml").write_text("smoke:\n  - smoke-xeon.metrics.json\n")

    assert regress.chosen_reference("smoke", XEON_AMX, folder) == (xeon, "")
    assert regress.chosen_reference("smoke", {**EPYC, "bfloat16_native": True}, folder) == (main, "")  # not recorded
    # a Xeon that only emulates bfloat16, and a machine with a GPU, are other kinds: the main reference, and a line
    for here in ({**XEON_AMX, "bfloat16_native": False}, {**EPYC, "gpus": ["NVIDIA H100"]}):
        chosen, warning = regress.chosen_reference("smoke", here, folder)
        assert chosen == main and warning.count("\n") == 0
        assert "was recorded on another machine kind (AMD EPYC;" in warning and "references.yaml" in warning
    (folder / "references.yaml").write_text("smoke:\n  - smoke-gone.metrics.json\n")
    with pytest.raises(regress.RegressError, match=r"references.yaml: lists .*smoke-gone.metrics.json, which does not"):
        regress.chosen_reference("smoke", XEON_AMX, folder)
    (folder / "references.yaml").write_text("smoke: smoke-xeon.metrics.json\n")
    with pytest.raises(regress.RegressError, match="expected run name -> list of reference file names"):
        regress.chosen_reference("smoke", XEON_AMX, folder)


def test_regress_reads_the_reference_of_this_machine_and_recording_never_overwrites_another_kinds(
    tmp_path, monkeypatch, capsys
):
    from irlnb.pipeline import provenance, runner

    config = load_config(write_params(tmp_path))
    folder = tmp_path / "references"
    folder.mkdir()
    copy_shipped_tolerances(folder)
    _recorded_on(folder, "smoke.metrics.json", EPYC, 0.8)
    xeon = _recorded_on(folder, "smoke-xeon.metrics.json", XEON_AMX, 0.7)
    (folder / "references.yaml").write_text("smoke:\n  - smoke-xeon.metrics.json\n")

    def fake_run(run_config, runs_dir, log):  # a run on the Xeon: 0.7, as the Xeon's reference says
        (Path(runs_dir) / run_config.run.name).mkdir(parents=True, exist_ok=True)
        (Path(runs_dir) / run_config.run.name / "metrics.json").write_text(json.dumps({"gt.auc_human": 0.7}))

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(provenance, "hardware", lambda: XEON_AMX)
    assert regress.regress(config, runs_dir=str(tmp_path / "r"), reference_dir=folder) == 0
    out = capsys.readouterr().out
    assert f"regress: comparing with {xeon}" in out and "another machine kind" not in out
    monkeypatch.setattr(provenance, "hardware", lambda: {**XEON_AMX, "bfloat16_native": False})
    assert regress.regress(config, runs_dir=str(tmp_path / "r"), reference_dir=folder) == 1  # against the EPYC's
    assert "regress: warning: " in (out := capsys.readouterr().out) and "another machine kind" in out

    run_dir = make_run(tmp_path / "finished", "smoke", saved_loss=None)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "hardware": XEON_AMX}))
    with pytest.raises(regress.RegressError, match="recorded on AMD EPYC, and .* was made on Intel.* name of its own"):
        regress.record_reference(config, run_dir, folder)
    assert json.loads((folder / "smoke.metrics.json").read_text())["metrics"] == {"gt.auc_human": 0.8}  # untouched
    written = regress.record_reference(config, run_dir, folder, folder / "smoke-xeon.metrics.json")
    assert json.loads(written.read_text())["hardware"] == XEON_AMX


def test_the_shipped_references_are_each_of_another_machine_kind_and_of_the_same_params():
    """A run is compared with the reference of its own machine kind: one recorded with other params (a default that
    has since changed, as the DPO default's two references did) would fail every run of today's params."""
    default = load_config(REPO / "params" / "default.yaml")
    recorded = regress.read_reference(regress.reference_file("default"))["params"]
    assert regress._params_differences(recorded, default.to_dict()) == [], "record the default again"
    listed = yaml.safe_load((regress.REFERENCE_DIR / regress.REFERENCES_FILE).read_text()) or {}
    for run_name in listed:
        main = regress.read_reference(regress.reference_file(run_name))
        for file in regress.listed_references(run_name):
            other = regress.read_reference(file)
            assert not regress.same_machine_kind(other["hardware"], main["hardware"]), file
            assert regress._params_differences(other["params"], main["params"]) == [], file
