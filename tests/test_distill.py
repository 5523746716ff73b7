"""R* distilled into the policy's backbone (`irlnb distill`): the reference for how far a reward of this backbone can
order a prompt's continuations as R* does, at an expert's budget of scored samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPTS, copy_of_smoke_run, irlnb_cli, write_params

from irlnb import metric_names
from irlnb.config import InfoncaSettings
from irlnb.data.curation import load_curated
from irlnb.irl.distilled import Distillation, centred_loss, fit_distilled, judged_within_prompts
from irlnb.layout import RunLayout, read_json
from irlnb.models.policies import load_policy
from irlnb.params_file import load_config
from irlnb.pipeline.distill import DistillError, distill
from irlnb.rl.kinds import kind_of
from irlnb.rl.training import alignment_seed, training_rows


def test_the_centred_loss_is_the_hand_computed_one_and_blind_to_a_shift_per_prompt():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # centred rewards (-1, 0, 1 | 0, 0), centred targets (-2/3, 1/3, 1/3 | -1, 1)
    expected = np.mean([(1 / 3) ** 2, (1 / 3) ** 2, (2 / 3) ** 2, 1.0, 1.0])
    assert float(centred_loss(rewards, targets, groups)) == pytest.approx(expected)
    shifted = rewards + torch.tensor([5.0, 5.0, 5.0, -7.0, -7.0])
    assert float(centred_loss(shifted, targets, groups)) == pytest.approx(expected)
    assert float(centred_loss(targets + 3.0, targets, groups)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("rank", [4, 0])
def test_a_distilled_reward_learns_the_order_its_scores_give_each_prompts_samples(rank):
    score = {" good": 2.0, " fine": 1.0, " bad": 0.0}
    rows = [
        {"group": g, "prompt": prompt, "continuation": ending, "r_star": value + 10.0 * g}  # a shift per prompt
        for g, prompt in enumerate(PROMPTS)
        for ending, value in score.items()
    ]
    sets = pd.DataFrame(rows)
    before = {name: p.detach().clone() for name, p in load_policy("embedded:tiny-gpt-neox")[0].named_parameters()}
    reward, losses = fit_distilled(
        "embedded:tiny-gpt-neox", InfoncaSettings(lora_rank=rank), sets, Distillation(20, 1e-2), 0, "float32", "cpu"
    )
    assert len(losses) == 20 and np.isfinite(losses).all() and losses[-1] < 0.1 * losses[0]
    trained = {name: p for name, p in reward.backbone.named_parameters() if p.requires_grad}
    if rank:  # only the adapter trains, and it moved from its zero start
        assert trained and all("lora_" in name for name in trained)
        assert any(p.abs().sum() > 0 for name, p in trained.items() if "lora_B" in name)
    else:  # every weight trains
        assert len(trained) == len(before)
        assert any(not torch.equal(p.detach(), before[name]) for name, p in trained.items())
    assert reward.head.weight.abs().sum() > 0
    assert judged_within_prompts(reward, sets, 8)["within_prompt_spearman"] == pytest.approx(1.0)


@pytest.mark.slow(40)
def test_distill_fits_the_experts_prompts_chooses_on_validation_and_judges_the_test_sets(smoke_run, tmp_path):
    run_dir = copy_of_smoke_run(smoke_run, tmp_path)
    params = write_params(tmp_path, rlhf__trainer="infonca", infonca__prompts=12, infonca__n=3)
    config = load_config(params)
    record = tmp_path / "distill.json"
    lines = []
    result = distill(config, [1, 2], [1e-3], record=record, log=lines.append)
    table = result["table"]
    assert sorted(table["epochs"]) == [1, 2] and np.isfinite(table[["validation_within_prompt_spearman"]]).all().all()
    kept = read_json(record)
    metrics = kept["metrics"]
    assert {metric_names.parse(key) for key in metrics} == {"distill"}
    assert kept["kind"] == "infonca" and kept["chosen"]["epochs"] == int(table["epochs"].iloc[0])
    assert kept["params"]["infonca"]["n"] == 3 and kept["params"]["rlhf"]["trainer"] == "infonca"
    assert (
        metrics["distill.chosen.validation_within_prompt_spearman"]
        == table.iloc[0]["validation_within_prompt_spearman"]
    )
    assert metrics["distill.budget.samples"] == 3 and metrics["distill.budget.prompts"] <= 12
    assert np.isfinite(metrics["distill.test.within_prompt_spearman"])
    assert np.isfinite(metrics["distill.train.within_prompt_spearman"])  # n = 3: a Spearman per prompt
    assert 0.0 <= metrics["distill.train.within_prompt_pair_accuracy"] <= 1.0
    layout = RunLayout(run_dir)
    curated = load_curated(layout)
    split = dict(zip(curated["id"], curated["split"]))
    expert_rows = training_rows(
        curated, config.rlhf, kind_of("infonca"), config.infonca, alignment_seed(config.compute, config.rlhf)
    )
    (train_cache,) = layout.cache.glob("distill-train-sets-*.pt")
    trained_on = torch.load(train_cache, weights_only=True)
    assert set(trained_on["id"]) <= set(expert_rows["id"])  # the expert's own prompts (a prompt's empty samples drop)
    (validation_cache,) = layout.cache.glob("validation-prompt-sets-*.pt")  # the texts tune-expert measures on
    assert {split[i] for i in torch.load(validation_cache, weights_only=True)["id"]} == {"validation"}
    layout.prompt_sets.unlink()  # a run whose stage 04 has not run: no test number, and a line that says so
    again = distill(config, [1], [1e-3], samples=2, log=lines.append)
    assert not any(key.startswith("distill.test.") for key in again["metrics"])
    assert again["metrics"]["distill.budget.samples"] == 2  # two samples of a prompt order as a pair, no Spearman:
    assert "distill.train.within_prompt_spearman" not in again["metrics"]
    assert 0.0 <= again["metrics"]["distill.train.within_prompt_pair_accuracy"] <= 1.0
    assert any("no test number" in line for line in lines)


def test_distill_refuses_a_run_without_r_star_and_a_kind_without_n_in_one_line(tmp_path):
    params = write_params(tmp_path, sources__toxicity_classifier="", sources__expert="embedded:tiny-gpt-neox")
    with pytest.raises(DistillError, match="no sources.toxicity_classifier"):
        distill(load_config(params), [1], [1e-3])
    done = irlnb_cli("distill", str(write_params(tmp_path, name="rloo.yaml")))  # smoke's rloo draws no n
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "irlnb: error: rlhf.trainer rloo draws no n samples per prompt: give --samples (2 or more)"
    ]
