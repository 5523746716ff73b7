"""The runner on the smoke params: papermill runs, manifest and metrics, skip, refusal, --force, kill."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, copy_of_smoke_run, irlnb_cli, write_params

from irlnb.pipeline.stages import STAGES

STAGE_NAMES = [stage.name for stage in STAGES]


def test_a_run_writes_notebooks_metrics_manifest_and_figures(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in (
        "curate.n_train",
        "gt.auc_human",
        "gt.accuracy_human",
        "gt.f1_human",
        "gt.evaluator_spearman",
        "gt.auc_human_ci_low",
        "gt.all.auc_human",
        "timing.total_s",
        "timing.01_curate_s",
        *(
            f"rlhf.{tag}.{name}"
            for tag in ("base", "ground_truth")
            for name in (
                "toxicity_ratio",
                "toxicity_mean",
                "evaluator_toxicity_ratio",
                "evaluator_toxicity_mean",
                "perplexity",
                "distinct2",
                "toxicity_mean_ci_low",
                "sampled.toxicity_mean",
            )
        ),
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    # the real classifier separates real insults from non-insults far better than chance
    assert metrics["gt.auc_human"] > 0.7
    assert metrics["gt.auc_human_ci_low"] <= metrics["gt.auc_human"] <= metrics["gt.auc_human_ci_high"]
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["params"]["run"]["name"] == "smoke"
    assert set(manifest["stages"]) == set(STAGE_NAMES)
    from importlib.metadata import version

    assert manifest["git"]["commit"] and manifest["packages"]["torch"] == version("torch")  # what made the run
    assert manifest["hardware"]["cpu_count"] >= 1
    for stage in STAGES:
        assert (smoke_run / "notebooks" / f"{stage.name}.ipynb").is_file()
        assert (smoke_run / "stages" / f"{stage.name}.json").is_file()
    for figure in (
        "curation",
        "gt_reward_distribution",
        "gt_confusion",
        "rlhf_ground_truth_training",
        "toxicity_table",
        "irl_epochs",
        "irl_confusion",
        "non_identifiability",
        "rlhf_learned_training",
        "rlhf_random_training",
    ):
        for ext in ("png", "pdf"):
            assert (smoke_run / "figures" / f"{figure}.{ext}").stat().st_size > 1000


def test_executed_notebooks_carry_the_injected_parameters(smoke_run):
    import nbformat

    notebook = nbformat.read(smoke_run / "notebooks" / "01_curate.ipynb", as_version=4)
    rlhf = nbformat.read(smoke_run / "notebooks" / "03_rlhf_ground_truth.ipynb", as_version=4)
    assert any(
        'reward = "ground_truth"' in c.source for c in rlhf.cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and '"n_per_class": 60' in injected[0].source


@pytest.mark.slow(22)
def test_rerun_skips_and_changed_params_are_refused_without_force(smoke_run, tmp_path):
    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    metrics_before = (run_dir / "metrics.json").read_bytes()
    params = write_params(tmp_path)
    done = irlnb_cli("run", str(params))
    assert done.returncode == 0 and "nothing to do" in done.stdout
    assert (run_dir / "metrics.json").read_bytes() == metrics_before

    changed = write_params(tmp_path, name="changed.yaml", evaluation__bootstrap_samples=300)
    done = irlnb_cli("run", str(changed))
    assert done.returncode == 2
    assert "stage 02_ground_truth_rm already finished with other settings; rerun with --force" in done.stderr
    assert (run_dir / "metrics.json").read_bytes() == metrics_before

    done = irlnb_cli("run", str(changed), "--force", "--only", "02_ground_truth_rm")
    assert done.returncode == 0, done.stderr
    assert "01_curate" not in done.stdout  # only the asked stage ran
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["params"]["evaluation"]["bootstrap_samples"] == 300


def _stages_run(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("[") and line.endswith(" ...")]


def test_keys_follow_what_a_result_depends_on():
    from irlnb.params_file import config_with, load_config
    from irlnb.pipeline.runner import stage_identities

    smoke = load_config(REPO / "params" / "smoke.yaml")
    base = stage_identities(smoke)

    def changed(**changes):
        dotted = {name.replace("__", "."): value for name, value in changes.items()}
        return stage_identities(config_with(smoke, dotted, "the keys test"))

    resampled = changed(evaluation__bootstrap_samples=300)  # a report: digests change, keys do not
    assert {name for name in base if resampled[name].digest != base[name].digest} == {
        "02_ground_truth_rm",
        "03_rlhf_ground_truth",
        "03_rlhf_learned",
        "03_rlhf_random",
        "05_analysis",
    }
    assert all(resampled[name].key == base[name].key for name in base if name != "05_analysis")
    fewer_prompts = changed(evaluation__prompts=12)  # each policy's report changes, not the policy IRL reads
    assert {name for name in base if fewer_prompts[name].digest != base[name].digest} == {
        "03_rlhf_ground_truth",
        "03_rlhf_learned",
        "03_rlhf_random",
        "05_analysis",
    }
    assert {name for name in base if fewer_prompts[name].key != base[name].key} == {"05_analysis"}
    retrained = changed(rloo__learning_rate=5e-4)  # the expert changes: IRL, and what is trained with its reward
    assert {name for name in base if retrained[name].key != base[name].key} == {
        "03_rlhf_ground_truth",
        "04_irl",
        "03_rlhf_learned",
        "03_rlhf_random",
        "05_analysis",
    }
    threads = changed(compute__torch_threads=2, rloo__save_steps=3, ground_truth__batch_size=7)
    assert threads == base  # settings that never change a result never make a stage stale
    assert changed(rft__rounds=3, best_of_n__n=8, grpo__beta=0.5) == base  # the sections of kinds not aligned with


@pytest.mark.slow(45)
def test_an_evaluation_setting_reevaluates_and_a_training_setting_retrains(smoke_run, tmp_path):
    """End to end on the expert's stage (which stages a change redoes is checked on the keys, above)."""
    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    resampled = write_params(tmp_path, name="resampled.yaml", evaluation__bootstrap_samples=300)
    done = irlnb_cli("run", str(resampled))
    assert done.returncode == 2 and "02_ground_truth_rm already finished with other settings" in done.stderr
    done = irlnb_cli("run", str(resampled), "--force", "--only", "03_rlhf_ground_truth")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rlhf.ground_truth.train_resumed_from_step"] == 4  # the finished policy was loaded, not trained

    done = irlnb_cli(
        "run", str(resampled), "--force", "--only", "03_rlhf_ground_truth", "--set", "rloo.learning_rate=5e-4"
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rlhf.ground_truth.train_resumed_from_step"] == 0  # trained afresh
    log = (run_dir / "rlhf_ground_truth" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4


def test_the_runner_loads_no_model_library_and_no_notebook_executor_before_a_stage_runs():
    """`irlnb run` checks the params and the models first, in seconds (a refusal, or a run with nothing to do, costs no
    more); papermill loads where a stage runs, torch where a compute section resolves 'auto' or a model loads."""
    probe = "import sys, irlnb.pipeline.runner; print(sorted({'torch', 'papermill'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def test_only_refuses_a_stage_whose_inputs_are_missing(tmp_path):
    params = write_params(tmp_path)
    done = irlnb_cli("run", str(params), "--only", "02_ground_truth_rm")
    assert done.returncode == 2
    assert "stage 02_ground_truth_rm needs 01_curate, which is not complete" in done.stderr


def test_a_kernels_sockets_go_where_their_paths_fit(tmp_path, monkeypatch):
    """Under the temp folder where a socket's path fits in sockaddr_un (107 bytes), else under /tmp: a run started
    from a deep temp folder would otherwise fail with zmq's `File name too long`."""
    from irlnb.pipeline import runner

    shallow = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(shallow))
        near = runner.kernel_folder()
        assert near.parent == shallow and near.name.startswith(runner.KERNEL_FOLDER_PREFIX)
        monkeypatch.setattr(tempfile, "tempdir", str(deep))
        far = runner.kernel_folder()
        assert far.parent == Path("/tmp") and len(str(far / "kernel-99999")) <= 107
        assert not list(deep.iterdir())  # the folder tried in the deep one was removed
        shutil.rmtree(far)
    finally:
        shutil.rmtree(shallow, ignore_errors=True)


def test_the_kernel_folders_a_killed_run_left_are_removed_by_the_next_and_no_other(tmp_path, monkeypatch):
    """A killed run cannot remove its kernel's folder (its sockets stay); the next stage's kernel folder removes
    those whose maker no longer runs, and keeps a running one's and any folder without a maker's id."""
    from irlnb.pipeline import runner

    ended = subprocess.Popen(["true"])  # a process that ran and ended: its id is free (reaped)
    ended.wait()
    abandoned, running, foreign = (tmp_path / f"{runner.KERNEL_FOLDER_PREFIX}{name}" for name in "abc")
    for folder, owner in ((abandoned, ended.pid), (running, os.getpid()), (foreign, None)):
        folder.mkdir()
        (folder / "kernel-1").write_text("")
        if owner is not None:
            (folder / runner.KERNEL_OWNER).write_text(str(owner))
    assert runner.abandoned_kernel_folders(tmp_path) == [abandoned]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = runner.kernel_folder()
    assert (made / runner.KERNEL_OWNER).read_text() == str(os.getpid())
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([made.name, running.name, foreign.name])


def test_a_stage_is_not_started_on_a_full_disk_and_a_failed_one_says_the_disk_is_full(tmp_path, monkeypatch):
    """Under 1 GiB free, no stage starts (one line; what is finished stays); a stage that failed while the disk
    filled says so beside its error, instead of leaving torch's `unexpected pos` to explain it."""
    import papermill

    from irlnb.params_file import load_config
    from irlnb.pipeline import runner

    config = load_config(write_params(tmp_path))
    free = {"bytes": 5 << 30}
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: SimpleNamespace(free=free["bytes"]))
    monkeypatch.setattr(runner, "prepare_environment", lambda config: None)

    def fills_the_disk(*args, **kwargs):
        free["bytes"] = 1 << 20
        raise papermill.PapermillExecutionError(0, 1, "", "RuntimeError", "unexpected pos 64 vs 0", [])

    monkeypatch.setattr(papermill, "execute_notebook", fills_the_disk)
    with pytest.raises(runner.RunError) as failed:
        runner.run(config, runs_dir=str(tmp_path / "runs"))
    message = str(failed.value)
    assert (
        message.startswith("stage 01_curate failed: RuntimeError: unexpected pos 64 vs 0 (see ") and "\n" not in message
    )
    assert message.endswith(
        f"the likely cause: 0.00 GiB free on the disk of {tmp_path / 'runs' / 'smoke'} (a stage writes up to 0.6 GiB)"
    )
    with pytest.raises(runner.RunError) as refused:
        runner.run(config, runs_dir=str(tmp_path / "runs"))
    assert str(refused.value).startswith("stage 01_curate not started: 0.00 GiB free on the disk of ")
    assert str(refused.value).endswith("; free some and run again (finished stages are kept)")
    assert not (tmp_path / "runs" / "smoke" / "stages" / "01_curate.json").exists()


@pytest.mark.slow(30)
def test_a_stage_killed_midway_is_redone_and_finished_stages_are_kept(tmp_path):
    params = write_params(tmp_path)
    run_dir = tmp_path / "runs" / "smoke"
    first_marker = run_dir / "stages" / "01_curate.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "irlnb", "run", str(params)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not first_marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert first_marker.exists(), "stage 01 never finished"
    time.sleep(1.0)  # stage 02 is now starting its kernel or scoring
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "stages" / "02_ground_truth_rm.json").exists()
    curate_marker = first_marker.read_bytes()

    # the kernel's sockets go in a folder of their own here, removed with the kernel (a short path: a socket's must fit)
    temp = Path(tempfile.mkdtemp(prefix="irlnb-test-"))
    try:
        done = irlnb_cli("run", str(params), "--until", "02_ground_truth_rm", env={"TMPDIR": str(temp)})
        assert done.returncode == 0, done.stderr
        assert _stages_run(done.stdout) == ["02_ground_truth_rm"]  # 01 kept, 02 redone, nothing after it
        from irlnb.pipeline.runner import KERNEL_FOLDER_PREFIX

        assert not list(temp.glob(f"{KERNEL_FOLDER_PREFIX}*"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert first_marker.read_bytes() == curate_marker
    assert (run_dir / "stages" / "02_ground_truth_rm.json").exists()
    assert "gt.auc_human" in json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow(30)
def test_rlhf_trains_unchanged_under_accelerate_with_two_cpu_processes(smoke_run, tmp_path):
    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    params = write_params(tmp_path)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    done = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "irlnb.rl.launch",
            str(params),
            "--reward",
            "ground_truth",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained to step 4 on 2 process(es)" in done.stdout
    checkpoints = run_dir / "checkpoints" / "03_rlhf_ground_truth"
    assert (checkpoints / "checkpoint-4").is_dir()
    # the runner then finds the finished training, only loads it, saves and evaluates the policy
    done = irlnb_cli("run", str(params), "--force", "--only", "03_rlhf_ground_truth")
    assert done.returncode == 0, done.stderr
    assert not (checkpoints / "checkpoint-5").exists()
    log = (run_dir / "rlhf_ground_truth" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4


@pytest.mark.slow(35)
def test_a_training_killed_midway_resumes_from_its_last_checkpoint(smoke_run, tmp_path):
    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    params = write_params(tmp_path, rloo__max_steps=60, rloo__save_steps=5)
    checkpoints = run_dir / "checkpoints" / "03_rlhf_ground_truth"
    process = subprocess.Popen(
        [sys.executable, "-m", "irlnb", "run", str(params), "--force", "--only", "03_rlhf_ground_truth"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and process.poll() is None
        and not list(checkpoints.glob("checkpoint-*/trainer_state.json"))
    ):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/trainer_state.json"))
    assert saved and saved[-1] < 60, "the training was not killed midway"
    assert not (run_dir / "stages" / "03_rlhf_ground_truth.json").exists()

    done = irlnb_cli("run", str(params), "--only", "03_rlhf_ground_truth")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rlhf.ground_truth.train_resumed_from_step"] >= saved[-1] > 0
    log = (run_dir / "rlhf_ground_truth" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 60  # every step once in the log: history restored, nothing redone


@pytest.mark.slow(55)
def test_a_brought_model_is_audited_instead_of_aligned_and_a_foreign_tokenizer_is_refused(smoke_run, tmp_path):
    from irlnb.models.policies import embedded_policy_dir

    expert = smoke_run / "rlhf_ground_truth" / "policy"
    params = write_params(tmp_path, name="audit.yaml", run__name="audit", sources__expert=f"local:{expert}")
    done = irlnb_cli("run", str(params), "--until", "04_irl")  # the audit: the brought expert, then IRL of it
    assert done.returncode == 0, done.stderr
    audit = tmp_path / "runs" / "audit"
    card = json.loads((audit / "rlhf_ground_truth" / "policy" / "irlnb_policy.json").read_text())
    assert card["trainer"] == "brought"  # nothing was trained: the brought model is the expert
    from safetensors.torch import load_file

    brought, copied = (
        load_file(next(expert.glob("*.safetensors"))),
        load_file(next((audit / "rlhf_ground_truth" / "policy").glob("*.safetensors"))),
    )
    assert all(torch_equal(brought[k], copied[k]) for k in brought)
    metrics = json.loads((audit / "metrics.json").read_text())
    assert math.isfinite(metrics["irl.test.auc_mean"]) and math.isfinite(metrics["rlhf.ground_truth.toxicity_mean"])
    assert not (audit / "stages" / "05_analysis.json").exists()  # --until stops after IRL
    assert not (audit / "checkpoints" / "03_rlhf_ground_truth").exists() or not any(
        (audit / "checkpoints" / "03_rlhf_ground_truth").glob("checkpoint-*")
    )

    foreign = write_params(
        tmp_path,
        name="foreign.yaml",
        run__name="foreign",
        sources__expert=f"local:{embedded_policy_dir('smollm2-135m-instruct')}",
    )
    done = irlnb_cli("run", str(foreign))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "have different tokenizers" in done.stderr and "audited against its own base" in done.stderr
    assert not (tmp_path / "runs" / "foreign").exists()  # refused before anything was written


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_publishing_removes_what_an_earlier_run_published_and_this_one_did_not_make(tmp_path):
    from irlnb.layout import RunLayout
    from irlnb.pipeline.runner import publish_figures

    layout = RunLayout(tmp_path / "run")
    layout.figures.mkdir(parents=True)
    (layout.figures / "kept.png").write_text("new")
    target = tmp_path / "figures"
    target.mkdir()
    for name in ("kept.png", "stale.png"):
        (target / name).write_text("old")
    (target / "provenance.json").write_text(json.dumps({"files": ["kept.png", "stale.png"]}))
    (target / "README-note.txt").write_text("never published by a run")
    assert publish_figures(layout, target, {"params_file": "p.yaml", "git": {}}) == 1
    assert (target / "kept.png").read_text() == "new" and not (target / "stale.png").exists()
    assert (target / "README-note.txt").is_file()  # a file no run published is left alone
    assert json.loads((target / "provenance.json").read_text())["files"] == ["kept.png"]


@pytest.mark.slow(40)
def test_figures_are_published_only_by_a_complete_run_of_the_params_file_as_written(smoke_run, tmp_path):
    published = tmp_path / "published"
    (tmp_path / "partial").mkdir()
    partial = write_params(tmp_path / "partial", run__figures_dir=str(published))
    done = irlnb_cli("run", str(partial), "--until", "01_curate")
    assert done.returncode == 0, done.stderr
    assert "figures not published" in done.stdout and "02_ground_truth_rm" in done.stdout
    assert not published.exists()  # a partial run would have removed what a complete one published

    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    params = write_params(tmp_path, run__figures_dir=str(published))
    done = irlnb_cli("run", str(params), "--only", "05_analysis", "--force", "--set", "analysis.explorer_texts=7")
    assert done.returncode == 0, done.stderr
    assert "its settings differ from" in done.stdout and not published.exists()

    done = irlnb_cli("run", str(params), "--only", "05_analysis", "--force")
    assert done.returncode == 0, done.stderr
    provenance = json.loads((published / "provenance.json").read_text())
    assert provenance["run_dir"] == str(run_dir) and provenance["files"]
    assert sorted(provenance["files"]) == sorted(p.name for p in (run_dir / "figures").iterdir() if p.is_file())
