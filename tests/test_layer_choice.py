"""`irlnb layers`: irl.layer chosen on validation pair log-likelihood from a finished run's demonstrations."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from irlnb import metric_names as names
from irlnb.irl import layer_choice, repetition
from irlnb.irl.demonstrations import load_demonstrations, pair_texts, used_pairs
from irlnb.irl.feature_sets import PairSet, cached_features, cached_readings, prompt_ids, reading, rewards_of
from irlnb.irl.fitting import SeededFit, fit_head
from irlnb.irl.halves import halves
from irlnb.irl.judging import chosen_epoch, judge
from irlnb.layout import RunLayout
from irlnb.objectives import epochs_objective
from irlnb.params_file import load_config
from irlnb.pipeline import layers
from irlnb.rewards.features import FeatureReward, decoder_blocks, reward_form
from irlnb.rewards.ground_truth import load_scores
from tests.conftest import PARAMS, copy_of_smoke_run, irlnb_cli, write_params


def test_the_default_sweep_spans_the_depth_and_ends_at_the_final_state():
    assert layer_choice.candidate_layers(18) == [4, 9, 14, 16, 18, -1]  # Gemma-3-270M: 16, the carried-over one
    assert layer_choice.candidate_layers(30) == [8, 15, 22, 26, 30, -1]  # SmolLM2-135M: 26, the default's
    assert layer_choice.candidate_layers(2) == [1, 2, -1]


def test_the_best_mean_validation_pair_log_likelihood_wins_and_a_tie_goes_to_the_shallower_layer():
    rows = pd.DataFrame(
        {
            "layer": [-1, -1, 4, 4, 9, 9],
            "pooling": ["mean"] * 6,
            "seed": [0, 1] * 3,
            "epoch": [1] * 6,
            "validation_pair_log_likelihood": [-0.30, -0.26, -0.50, -0.48, -0.28, -0.28],
            "validation_pair_accuracy": [0.99, 0.99, 0.99, 0.99, 0.98, 0.98],  # saturated: it does not decide
            "validation_auc": [0.9, 0.9, 0.5, 0.5, 0.6, 0.6],
        }
    )
    table = layer_choice.layer_table(rows)
    assert table["layer"].tolist() == [9, -1, 4]  # -0.28 ties with -1's mean: the shallower block is chosen
    assert table["validation_pair_log_likelihood_mean"].tolist() == pytest.approx([-0.28, -0.28, -0.49])
    assert table["validation_pair_log_likelihood_std"].iloc[0] == 0.0
    assert table["validation_pair_accuracy_mean"].tolist() == pytest.approx([0.98, 0.99, 0.99])  # shown beside it
    assert layer_choice.chosen_layer(table) == 9
    values = layer_choice.layer_metrics(table, seeds=2)
    assert values["layers.chosen"] == 9 and values["layers.seeds"] == 2
    assert values["layers.final.validation_auc_mean"] == pytest.approx(0.9)  # R*'s view, reported, never chosen on
    without_r_star = layer_choice.layer_table(rows.assign(validation_auc=np.nan))  # an audit with no R*
    assert layer_choice.chosen_layer(without_r_star) == 9  # the same choice: it never read R*
    unjudged = layer_choice.layer_metrics(without_r_star, seeds=2)
    assert not [key for key in unjudged if "auc" in key] and unjudged["layers.9.validation_pair_accuracy_mean"] == 0.98


def test_where_poolings_are_compared_the_best_form_wins_and_each_is_named_by_its_pooling():
    rows = pd.DataFrame(
        {
            "layer": [9, 9, 9, 9, -1, -1],
            "pooling": ["mean", "mean", "last", "last", "last", "last"],
            "seed": [0, 1] * 3,
            "epoch": [1] * 6,
            "validation_pair_log_likelihood": [-0.30, -0.26, -0.20, -0.22, -0.40, -0.40],
            "validation_pair_accuracy": [0.9] * 6,
            "validation_auc": [0.9, 0.9, 0.6, 0.6, 0.7, 0.7],
        }
    )
    table = layer_choice.layer_table(rows)
    assert list(zip(table["layer"], table["pooling"])) == [(9, "last"), (9, "mean"), (-1, "last")]
    assert layer_choice.chosen_form(table) == (9, "last")  # R*'s view (0.6) would not have chosen it
    values = layer_choice.layer_metrics(table, seeds=2, prefix="irl.layers.")
    assert values["irl.layers.9.last.validation_pair_log_likelihood_mean"] == pytest.approx(-0.21)
    assert values["irl.layers.final.last.validation_auc_mean"] == pytest.approx(0.7)
    assert values["irl.layers.chosen"] == 9 and all(names.parse(key) for key in values)
    irl = load_config(PARAMS / "default.yaml").irl
    assert layer_choice.candidate_forms(irl, 2) == [(layer, p) for layer in (1, 2, -1) for p in ("last", "mean")]
    assert layer_choice.candidate_forms(replace(irl, pooling="mean"), 2) == [(1, "mean"), (2, "mean"), (-1, "mean")]
    assert layer_choice.candidate_forms(replace(irl, layer=2), 2) == [(2, "last"), (2, "mean")]


def test_a_layer_is_chosen_on_the_smoke_run_without_changing_it(smoke_run, tmp_path):
    smoke_run = copy_of_smoke_run(smoke_run, tmp_path)  # it writes its table into the run
    params = write_params(tmp_path)
    metrics_before = (smoke_run / "metrics.json").read_bytes()
    run_form = json.loads((smoke_run / "irl" / "reward" / "reward.json").read_text())
    record = tmp_path / "layers-smoke.metrics.json"
    result = layers.choose_layer(load_config(params), [1, -1], seeds=2, record=record)
    table = result["table"]
    assert sorted(zip(table["layer"], table["pooling"])) == [(-1, "last"), (-1, "mean"), (1, "last"), (1, "mean")]
    assert table[["validation_pair_accuracy_mean", "validation_auc_mean"]].apply(lambda c: c.between(0, 1)).all().all()
    # at its best scale a reward's pair log-likelihood is at least that of no preference, log 0.5, and at most 0
    assert table["validation_pair_log_likelihood_mean"].between(np.log(0.5) - 1e-9, 0).all()
    saved = json.loads(record.read_text())
    assert saved["metrics"]["layers.chosen"] == table["layer"].iloc[0]
    assert (
        saved["metrics"]["layers.seeds"] == 2
        and saved["git"]["commit"]
        and saved["run_form"] == f"layer {run_form['layer']}, {run_form['pooling']} pooling"
    )
    assert pd.read_csv(smoke_run / "layer_choice.csv")["layer"].tolist() == table["layer"].tolist()
    assert (smoke_run / "metrics.json").read_bytes() == metrics_before


def test_the_blocks_average_is_swept_beside_them_and_recorded_by_name(smoke_run, tmp_path):
    copy_of_smoke_run(smoke_run, tmp_path)  # it writes its table into the run
    params = write_params(tmp_path)
    record = tmp_path / "layers-smoke.metrics.json"
    table = layers.choose_layer(load_config(params), [1, 2], seeds=1, record=record, average=True)["table"]
    average = table[table["layer"] == names.AVERAGE_LAYER]
    assert average["pooling"].tolist() == ["mean"] and len(table) == 5  # 2 blocks x 2 poolings, and the average
    assert average["validation_pair_log_likelihood_mean"].between(np.log(0.5) - 1e-9, 0).all()
    saved = json.loads(record.read_text())
    assert saved["params"] == load_config(params).to_dict()  # the settings swept, as --set may have changed them
    metrics = saved["metrics"]
    assert metrics["layers.average.mean.validation_pair_log_likelihood_mean"] == pytest.approx(
        average["validation_pair_log_likelihood_mean"].iloc[0]
    )
    assert layers.form_name(names.AVERAGE_LAYER, "mean") == "the average of the blocks compared, mean pooling"


def test_the_average_reads_each_block_standardised_on_the_train_texts_then_averages_them(smoke_run):
    config = load_config(smoke_run.parent.parent / "params.yaml")
    layout = RunLayout(smoke_run)
    demos = load_demonstrations(layout)
    final = reward_form(config.sources.policy, "mean", -1, config.irl.max_length)
    averaged = layer_choice.averaged_reading(final, [1, 2], demos, layout.cache, config.irl)
    train = [text for side in pair_texts(used_pairs(demos, "train")) for text in side]
    standardised = []
    for block in (1, 2):
        reader = layer_choice.reader_of(final, block, "mean")
        seen = reader.features(train)
        standardised.append((reader.features(TEXTS) - seen.mean(dim=0)) / seen.std(dim=0))
    assert torch.allclose(averaged(TEXTS), (standardised[0] + standardised[1]) / 2, atol=1e-4)


def test_a_layer_the_backbone_lacks_is_refused_in_one_line(smoke_run):
    done = irlnb_cli("layers", str(smoke_run.parent.parent / "params.yaml"), "--layers", "1,99", "--no-record")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "irlnb: error: layers [99] do not exist: "
        f"{load_config(smoke_run.parent.parent / 'params.yaml').sources.policy} has blocks 1..2 "
        "(or -1, the final normed state)"
    ]


def test_the_sweep_reads_the_features_as_stage_04_maps_them(smoke_run):
    irl = load_config(smoke_run.parent.parent / "params.yaml").irl
    layout = RunLayout(smoke_run)
    demos, human = load_demonstrations(layout), load_scores(layout).query("split == 'validation'")
    reader = reward_form(load_config(smoke_run.parent.parent / "params.yaml").sources.policy, "mean", 1, 64)
    read = reading(reader, layout.cache, 8)
    train, _, _ = layer_choice.validation_sets(read, demos, human, irl)
    expected, _ = repetition.standardizer(
        read, demos, human["text"].tolist(), irl.length_probes, irl.max_repetition_shift
    )
    raw = cached_features(reader, pair_texts(used_pairs(demos, "train"))[0], layout.cache, 8)
    assert torch.allclose(train.expert.features, expected(raw))
    if expected.nuisance is not None:  # what repetition moves is gone from what the sweep fits on
        assert torch.allclose(train.expert.features @ expected.nuisance, torch.zeros(1), atol=1e-4)


TEXTS = ["You are such a nice person.", "Shut up.", "The council voted to raise taxes again this year, sadly."]


def test_every_form_read_in_one_pass_is_what_that_form_alone_reads():
    final = reward_form("embedded:tiny-gpt-neox", "mean", -1, 64)
    forms = [(1, "mean"), (2, "mean"), (2, "last"), (-1, "last")]
    together = final.features_at(TEXTS, forms, batch_size=8)  # one batch
    for layer, pooling in forms:
        alone = layer_choice.reader_of(final, layer, pooling)
        with torch.inference_mode():  # the forward pass stopped at that layer, as training reads it
            assert torch.equal(together[layer, pooling], alone.pooled(alone.tokenize(TEXTS)).float())
        assert torch.equal(together[layer, pooling], alone.features(TEXTS, batch_size=8))
    assert not torch.equal(together[1, "mean"], together[2, "mean"])  # each its own layer
    assert not torch.equal(together[2, "mean"], together[2, "last"])  # and pooling
    runs = []
    handle = decoder_blocks(final.backbone)[1].register_forward_hook(lambda *args: runs.append(1))
    final.features_at(TEXTS, [(1, "mean"), (1, "last")], batch_size=8)
    assert runs == []  # the pass stopped after block 1: block 2 never ran
    final.features_at(TEXTS, [(1, "mean"), (2, "mean")], batch_size=8)
    handle.remove()
    assert runs == [1]


def test_one_pass_keeps_each_layer_where_that_layer_alone_would_find_it(tmp_path, monkeypatch):
    final = reward_form("embedded:tiny-gpt-neox", "mean", -1, 64)
    read = cached_readings(final, TEXTS, [(2, "last"), (-1, "mean")], tmp_path, 8)
    passes = []
    monkeypatch.setattr(FeatureReward, "features_at", lambda *args, **kwargs: passes.append(1))
    last_of_two = layer_choice.reader_of(final, 2, "last")
    assert torch.equal(cached_features(last_of_two, TEXTS, tmp_path, 8), read[2, "last"])
    assert torch.equal(cached_features(final, TEXTS, tmp_path, 8), read[-1, "mean"])
    assert passes == []  # both found in the cache


def test_stage_04_chose_the_layer_and_pooling_of_the_smoke_run_by_its_criterion(smoke_run):
    table = pd.read_csv(smoke_run / "irl" / "layer_choice.csv")
    criterion = table["validation_pair_log_likelihood_mean"]
    assert criterion.is_monotonic_decreasing  # best first
    assert sorted(zip(table["layer"], table["pooling"])) == sorted(  # the sweep of a 2-block backbone, both poolings
        (layer, pooling) for layer in (1, 2, -1) for pooling in ("last", "mean")
    )
    saved = json.loads((smoke_run / "irl" / "reward" / "reward.json").read_text())
    assert (saved["layer"], saved["pooling"]) == (table["layer"].iloc[0], table["pooling"].iloc[0])
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert metrics["irl.layers.chosen"] == table["layer"].iloc[0] and metrics["irl.layers.seeds"] == layer_choice.SEEDS
    assert metrics["irl.time.layer_choice_s"] > 0
    assert (smoke_run / "figures" / "layer_choice.png").is_file()


def test_split_half_agreement_is_the_spearman_of_two_heads_each_fitted_on_half_the_prompts(smoke_run):
    config = load_config(smoke_run.parent.parent / "params.yaml")
    layout, irl = RunLayout(smoke_run), config.irl
    demos, human = load_demonstrations(layout), load_scores(layout).query("split == 'validation'")
    final = reward_form(config.sources.policy, "mean", -1, irl.max_length)
    sweep = layer_choice.sweep_rows(final, demos, human, layout.cache, irl, [(1, "mean")], 1, split_half=True)
    plain = layer_choice.sweep_rows(final, demos, human, layout.cache, irl, [(1, "mean")], 1)
    assert layer_choice.SPLIT_HALF not in plain  # opt-in: the same rows without it
    assert plain.iloc[0].equals(sweep.drop(columns=layer_choice.SPLIT_HALF).iloc[0])

    train, validation, texts = layer_choice.validation_sets(
        reading(layer_choice.reader_of(final, 1, "mean"), layout.cache, 8), demos, human, irl
    )
    prompts = used_pairs(demos, "train")["prompt"].to_numpy()
    fit = SeededFit.from_settings(irl, epochs_objective(irl.loss))
    first, second = halves(PairSet(train.expert, train.non_expert, prompt_ids(used_pairs(demos, "train"))), 0)
    rewards = []
    for half in (first, second):
        history, heads = fit_head(half, fit, 0, lambda epoch, head: judge(head, texts, validation, 0.0))
        rewards.append(rewards_of(heads[chosen_epoch(history)], texts))
    by_hand = spearmanr(*rewards).statistic
    assert sweep[layer_choice.SPLIT_HALF].iloc[0] == pytest.approx(by_hand)
    assert not set(first.prompt_ids) & set(second.prompt_ids)  # split by prompt: no prompt in both halves
    assert len(first.prompt_ids) + len(second.prompt_ids) == len(prompts) and len(first.prompt_ids) > 0
