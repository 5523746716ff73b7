"""The infonca kind: soft targets softmax(R / beta) over a prompt's scored base samples, fitted by the policy's
log-ratios; on the tiny offline model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPTS, length_reward, shorter_is_better
from peft import get_peft_model
from scipy.stats import spearmanr

from irlnb import metric_names
from irlnb.layout import read_json
from irlnb.models.policies import embedded_policy_dir, load_policy
from irlnb.params_file import parse_section
from irlnb.rewards.likelihood import continuation_log_probs, continuation_rows, padded_rows, token_log_probs
from irlnb.rl.infonca import (
    SAMPLES_FILE,
    PromptSamples,
    ScoredSamples,
    collate,
    infonca_loss,
    soft_targets,
    train_infonca,
)
from irlnb.rl.kinds import KINDS
from irlnb.rl.policy_gradient import lora_config
from irlnb.rl.reward_signal import Normalizer, PolicyReward
from irlnb.rl.training_job import StageTraining, TrainingJob


def test_soft_targets_are_the_softmax_of_the_reward_over_beta_per_prompt():
    rewards = np.array([[0.0, math.log(3.0)], [1.0, 1.0]])
    assert np.allclose(soft_targets(rewards, beta=1.0), [[0.25, 0.75], [0.5, 0.5]])
    assert np.allclose(soft_targets(rewards * 2, beta=2.0), [[0.25, 0.75], [0.5, 0.5]])  # only R / beta counts
    assert np.allclose(soft_targets(np.array([[1000.0, 0.0]]), beta=1.0), [[1.0, 0.0]])  # no overflow


def test_the_loss_is_least_where_the_log_ratios_are_the_log_targets_up_to_a_shift():
    targets = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=torch.float64)
    at_optimum = (targets.log() + torch.tensor([[3.0], [-2.0]], dtype=torch.float64)).requires_grad_()
    loss = infonca_loss(at_optimum, targets)
    entropy = -(targets * targets.log()).sum(dim=1).mean()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-6)
    loss.backward()
    assert float(at_optimum.grad.abs().max()) < 1e-6  # a minimum: the per-prompt shift is free
    elsewhere = torch.zeros_like(targets)  # the base itself: every log-ratio 0, the uniform distribution
    assert float(infonca_loss(elsewhere, targets)) == pytest.approx(math.log(3.0))
    assert float(infonca_loss(elsewhere, targets)) > float(entropy)


def infonca_job(tmp_path, dtype: str, folder: str = "", scorer=length_reward, **changes) -> TrainingJob:
    """An infonca training of the tiny model on a length reward (longer continuations score higher), or `scorer`."""
    model, tokenizer = load_policy("embedded:tiny-gpt-neox")
    prompts = PROMPTS * 3
    reward = PolicyReward(scorer, Normalizer.fit(scorer(PROMPTS + [p + " and so on" for p in PROMPTS])), "ground_truth")
    start = StageTraining(reward, prompts, 0, embedded_policy_dir("tiny-gpt-neox"), tokenizer, "key", [])
    settings = dict(
        prompts=len(prompts),
        n=4,
        beta=1.0,
        learning_rate=2e-2,
        num_train_epochs=4,
        per_device_train_batch_size=4,
        lora_rank=8,
        save_steps=50,
    )
    section = parse_section("infonca", {**settings, **changes}, "test")
    rlhf = parse_section("rlhf", {"trainer": "infonca", "max_completion_length": 6}, "test")
    folder = tmp_path / (folder or dtype)
    return TrainingJob(KINDS["infonca"], start, folder, tmp_path / "cache", 0, rlhf, section, "float32", "cpu", dtype)


def log_ratios(job: TrainingJob, trained) -> tuple[np.ndarray, ScoredSamples]:
    """The trained policy's log-ratio over the base of each kept sample, and the kept samples."""
    samples = ScoredSamples.from_json(read_json(job.checkpoints / SAMPLES_FILE))
    base, tokenizer = load_policy("embedded:tiny-gpt-neox")
    n = samples.rewards.shape[1]
    rows = continuation_rows(
        tokenizer, [p for p in samples.prompts for _ in range(n)], [s for drawn in samples.samples for s in drawn]
    )
    ids, mask, scored = padded_rows(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        ratio = continuation_log_probs(trained, ids, mask, scored) - continuation_log_probs(base, ids, mask, scored)
    return ratio.double().numpy().reshape(samples.rewards.shape), samples


def test_an_infonca_policy_orders_each_prompts_samples_as_its_reward_does(tmp_path):
    job = infonca_job(tmp_path, "float32")
    result = train_infonca(job)
    log = result.log
    assert len(log) == result.steps == 4 * 3 and np.isfinite(log["loss"]).all()
    # before the first step the policy is the base: every log-ratio is 0 and the loss is log n
    assert log["loss"].iloc[0] == pytest.approx(math.log(4), abs=1e-4)
    ratio, samples = log_ratios(job, result.model)
    base_log_probs, _ = log_ratios(job, load_policy("embedded:tiny-gpt-neox")[0])
    assert np.abs(base_log_probs).max() < 1e-4
    agreement = [spearmanr(r, s).statistic for r, s in zip(ratio, samples.rewards) if np.ptp(s) > 0]
    assert np.mean(agreement) > 0.6, agreement  # within a prompt, the log-ratio orders the samples as R does
    assert log["loss"].iloc[-3:].mean() < log["loss"].iloc[:3].mean()


def test_a_finished_infonca_training_is_loaded_not_trained_again(tmp_path):
    job = infonca_job(tmp_path, "float32", num_train_epochs=1, save_steps=1)
    first = train_infonca(job)
    again = train_infonca(job)
    assert again.resumed_from == first.steps == 3
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_training_whose_samples_were_drawn_before_trains_the_same_policy(tmp_path):
    """The base samples are cached beside the checkpoints' folder; reading them back instead of drawing them leaves
    the random numbers in another state, which must not change the LoRA's initialisation."""
    drawn = train_infonca(infonca_job(tmp_path, "float32", num_train_epochs=1))
    torch.rand(1000)  # whatever else drew random numbers in between
    read_back = train_infonca(infonca_job(tmp_path, "float32", folder="again", num_train_epochs=1))
    assert (tmp_path / "again" / SAMPLES_FILE).is_file() and read_back.resumed_from == 0
    for (name, a), (_, b) in zip(drawn.model.state_dict().items(), read_back.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_alignments_of_one_run_read_the_base_log_probabilities_of_their_shared_samples_once(tmp_path, monkeypatch):
    """A second alignment of the same samples with another reward (shorter continuations score higher) reads the
    base's log-probabilities the first kept beside the samples: the numbers a reading of its own gives, bit for bit."""
    from irlnb.rl import infonca

    reads = []
    read = infonca.sample_log_probs
    monkeypatch.setattr(infonca, "sample_log_probs", lambda *args: reads.append(1) or read(*args))
    train_infonca(infonca_job(tmp_path / "run", "float32", folder="03_rlhf_ground_truth", num_train_epochs=1))
    train_infonca(infonca_job(tmp_path / "run", "float32", "03_rlhf_learned", shorter_is_better, num_train_epochs=1))
    assert len(reads) == 1
    train_infonca(infonca_job(tmp_path / "alone", "float32", "03_rlhf_learned", shorter_is_better, num_train_epochs=1))
    assert len(reads) == 2
    first, shared, alone = (
        ScoredSamples.from_json(read_json(tmp_path / run / folder / SAMPLES_FILE))
        for run, folder in (("run", "03_rlhf_ground_truth"), ("run", "03_rlhf_learned"), ("alone", "03_rlhf_learned"))
    )
    assert np.array_equal(shared.reference, first.reference) and np.array_equal(shared.reference, alone.reference)
    assert np.array_equal(shared.rewards, -first.rewards)  # another reward, the same samples


def test_the_bfloat16_step_follows_the_float32_step_on_the_same_batches(tmp_path):
    """compute.training_dtype bfloat16 (autocast over float32 weights) against float32: same samples, same order;
    the losses of the first steps agree to bfloat16's precision, and before the first step both are exactly log n."""
    exact = train_infonca(infonca_job(tmp_path, "float32", num_train_epochs=1, learning_rate=1e-3))
    mixed = train_infonca(infonca_job(tmp_path, "bfloat16", num_train_epochs=1, learning_rate=1e-3))
    assert mixed.log["loss"].iloc[0] == pytest.approx(math.log(4), abs=1e-4)
    assert np.allclose(mixed.log["loss"], exact.log["loss"], atol=0.05), (mixed.log["loss"], exact.log["loss"])
    # one step's gradient, both dtypes from the same weights and batch: the same direction
    job = infonca_job(tmp_path, "float32", num_train_epochs=1)
    samples = ScoredSamples.from_json(read_json(job.checkpoints / SAMPLES_FILE))
    batch = collate(job.start.tokenizer.pad_token_id)(list(PromptSamples(samples, job.start.tokenizer, beta=1.0)))
    gradients = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)  # the same LoRA initialisation
        model = get_peft_model(load_policy("embedded:tiny-gpt-neox")[0], lora_config(job.section))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            log_probs = continuation_log_probs(model, batch["input_ids"], batch["attention_mask"], batch["scored"])
        ratios = log_probs.double().view(batch["targets"].shape) - batch["reference"]
        infonca_loss(ratios, batch["targets"]).backward()
        gradients[dtype] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(gradients["float32"], gradients["bfloat16"], dim=0)
    assert cosine > 0.99


def test_the_output_layer_projects_only_the_scored_positions_and_the_sums_are_those_of_every_position(tmp_path):
    """continuation_log_probs projects the hidden states that predict a continuation's token, not the prompt's or
    the padding's, through a LoRA policy as it trains: values and gradients those of the full projection."""
    job = infonca_job(tmp_path, "float32")
    rows = continuation_rows(job.start.tokenizer, PROMPTS[:3], [" yes", " no, not at all", " maybe so"])
    ids, mask, scored = padded_rows(rows, job.start.tokenizer.pad_token_id)
    results = {}
    for how in ("scored", "every"):
        torch.manual_seed(0)
        model = get_peft_model(load_policy("embedded:tiny-gpt-neox")[0], lora_config(job.section))
        projected = []
        model.get_output_embeddings().register_forward_hook(
            lambda _l, _a, out, projected=projected: projected.append(out.shape[:-1])
        )
        if how == "scored":
            sums = continuation_log_probs(model, ids, mask, scored)
        else:
            sums = (token_log_probs(model, ids, mask) * scored[:, 1:]).sum(dim=1)
        sums.sum().backward()
        results[how] = sums.detach(), [p.grad for p in model.parameters() if p.grad is not None], projected
    assert results["scored"][2] == [(int(scored[:, 1:].sum()),)] and results["every"][2] == [ids.shape]
    assert int(scored[:, 1:].sum()) < int(mask.sum()) / 2  # the prompts' and padding's positions are not projected
    assert torch.allclose(results["scored"][0], results["every"][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results["scored"][1], results["every"][1]))


def test_frozen_weights_held_in_bfloat16_while_training_change_no_number_and_are_given_back(tmp_path, monkeypatch):
    """FrozenWeightsInBfloat16: the bfloat16 training's log and policy equal, bit for bit, those of the same training
    with autocast casting the frozen weights at each use; during training they were bfloat16, after it float32."""
    from irlnb.rl import infonca
    from irlnb.rl.policy_gradient import FrozenWeightsInBfloat16

    held = train_infonca(infonca_job(tmp_path, "bfloat16", folder="held", num_train_epochs=1))
    seen = []

    class Recording(FrozenWeightsInBfloat16):  # records the dtypes it leaves, and leaves them float32
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.extend({p.dtype for p in model.parameters() if not p.requires_grad})

    monkeypatch.setattr(infonca, "FrozenWeightsInBfloat16", Recording)
    cast_at_each_use = train_infonca(infonca_job(tmp_path, "bfloat16", folder="cast", num_train_epochs=1))
    assert seen == [torch.float32]
    assert held.log["loss"].tolist() == cast_at_each_use.log["loss"].tolist()
    for (name, a), (_, b) in zip(held.model.state_dict().items(), cast_at_each_use.model.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert {p.dtype for p in held.model.parameters()} == {torch.float32}
    assert held.model.config._attn_implementation == "eager"  # irlnb.compute.training_attention on a CPU

    callback, model = (
        FrozenWeightsInBfloat16(),
        get_peft_model(
            load_policy("embedded:tiny-gpt-neox")[0], lora_config(infonca_job(tmp_path, "bfloat16").section)
        ),
    )
    callback.on_train_begin(None, None, None, model=model)
    frozen = [layer.base_layer.weight for layer in model.modules() if hasattr(layer, "base_layer")]
    assert frozen and {w.dtype for w in frozen} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # the adapter trains in float32
    callback.on_train_end(None, None, None)
    assert {w.dtype for w in frozen} == {torch.float32}


def test_the_choice_prefers_candidates_within_every_guard_then_the_closest_to_the_optimum():
    from irlnb.pipeline.tune_expert import choice_table

    fluent = {"perplexity_ratio": 1.05, "toxicity_reduction": 0.6, "distinct_2_ratio": 0.95}
    rows = [
        {"infonca.beta": 0.1, **fluent, "perplexity_ratio": 1.3, "within_prompt_spearman": 0.95},  # not fluent
        {"infonca.beta": 0.5, **fluent, "within_prompt_spearman": 0.7},
        {"infonca.beta": 1.0, **fluent, "within_prompt_spearman": 0.8},
        {"infonca.beta": 2.0, **fluent, "toxicity_reduction": 0.2, "within_prompt_spearman": 0.9},  # too weak
    ]
    table = choice_table(rows)
    assert table["infonca.beta"].tolist() == [1.0, 0.5, 0.1, 2.0]
    assert table["passes_guards"].tolist() == [True, True, False, False]


@pytest.mark.slow(65)
def test_tune_expert_trains_each_candidate_once_and_measures_it_on_validation_prompts_only(tmp_path):
    from conftest import write_params

    from irlnb.data.curation import load_curated
    from irlnb.layout import RunLayout, read_json
    from irlnb.params_file import load_config
    from irlnb.pipeline.tune_expert import candidate_config, tune_expert

    params = write_params(
        tmp_path,
        rlhf__trainer="infonca",
        infonca__prompts=12,
        infonca__n=3,
        infonca__per_device_train_batch_size=4,
    )
    config = load_config(params)
    grid = {"infonca.learning_rate": [1e-3, 1e-2]}
    record = tmp_path / "tune.json"
    result = tune_expert(config, grid, samples=3, record=record, log=lambda line: None)
    table = result["table"]
    assert sorted(table["infonca.learning_rate"]) == [1e-3, 1e-2]
    for measure in ("within_prompt_spearman", "perplexity_ratio", "toxicity_reduction", "distinct_2_ratio"):
        assert np.isfinite(table[measure]).all(), measure
    assert read_json(record)["chosen"] == {"infonca.learning_rate": table.iloc[0]["infonca.learning_rate"]}
    assert read_json(record)["params"]["infonca"]["prompts"] == 12  # the settings it started from, as set
    assert {metric_names.parse(key) for key in read_json(record)["metrics"]} == {"tune"}
    layouts = [RunLayout.of_run(candidate_config(config, {"infonca.learning_rate": v}).run) for v in (1e-3, 1e-2)]
    policies = [layout.policy("ground_truth") / "model.safetensors" for layout in layouts]
    assert all(policy.is_file() for policy in policies)
    curated = load_curated(layouts[0])
    cache = list(layouts[0].cache.glob("validation-prompt-sets-*.pt"))
    kept = torch.load(cache[0], weights_only=True)
    split = dict(zip(curated["id"], curated["split"]))
    assert {split[i] for i in kept["id"]} == {"validation"}
    # the candidates align the same base on the same prompts: its samples and their log-probabilities, drawn and
    # read once, serve both
    shared = layouts[0].cache / "base_candidates"
    assert len(list(shared.glob("samples-*.pt"))) == len(list(shared.glob("infonca-reference-log-probs-*.pt"))) == 1
    stamps = [policy.stat().st_mtime_ns for policy in policies]
    again = tune_expert(config, grid, samples=3, log=lambda line: None)
    assert [policy.stat().st_mtime_ns for policy in policies] == stamps  # finished candidates are not trained again
    assert again["chosen"] == result["chosen"]


def test_the_base_measured_against_its_own_side_reads_no_change_and_its_log_ratio_orders_nothing(tiny):
    from irlnb.config import GroundTruthSettings, SourcesSettings
    from irlnb.irl.optimum import base_side, optimum_measures
    from irlnb.irl.within_prompt import draw_prompt_sets
    from irlnb.rewards.ground_truth import GroundTruthReward
    from irlnb.rl.generation import Decoding
    from irlnb.rl.sampling import ModelPolicy

    model, tokenizer = tiny
    sentiment = SourcesSettings(toxicity_classifier="embedded:vader-sentiment")
    r_star = GroundTruthReward.load(sentiment, GroundTruthSettings())
    prompts = ["The weather today", "My neighbour said", "Thank you for"]
    texts = ["A quiet day by the sea.", "You are wrong about this."]
    greedy = Decoding(max_new_tokens=6)
    reference = base_side(
        model, tokenizer, prompts=prompts, human_texts=texts, r_star=r_star, greedy=greedy, batch_size=2
    )
    table = pd.DataFrame({"id": [0, 1, 2], "prompt": prompts, "continuation": [" sunny", " hello", " all"]})
    sets = draw_prompt_sets(ModelPolicy(model, tokenizer, Decoding(6, do_sample=True)), table, 3, 2, 0, r_star)
    values = optimum_measures(
        model,
        model,
        tokenizer,
        reference=reference,
        prompt_sets=sets,
        prompts=prompts,
        human_texts=texts,
        r_star=r_star,
        greedy=greedy,
        batch_size=2,
    )
    assert values["perplexity_ratio"] == 1.0
    assert values["toxicity_reduction"] == 0.0
    assert values["distinct_2_ratio"] == 1.0
    assert np.isnan(values["within_prompt_spearman"])  # log-ratios all 0: no order within any prompt


def test_compiled_layers_train_what_eager_layers_train_start_at_zero_and_run_eagerly_again(tmp_path, monkeypatch):
    """compute.training_layers compiled: the decoder layers run compiled for the reference pass and every step (each
    layer handed to torch.compile); in float32 the log and the policy follow the eager training's to float rounding;
    in bfloat16, as the default trains, the log-ratios before the first step are exactly 0 (the reference read by the
    same compiled forward); after training every layer runs eagerly again."""
    import dataclasses

    from transformers.modeling_layers import GradientCheckpointingLayer

    compiled_callables = []
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_callables.append(fn) or compile(fn, **kw))
    results = {}
    for dtype, compiled in (("float32", False), ("float32", True), ("bfloat16", True)):
        job = infonca_job(tmp_path, dtype, folder=f"{dtype}-{compiled}", num_train_epochs=1, learning_rate=1e-3)
        results[dtype, compiled] = train_infonca(dataclasses.replace(job, compiled_layers=compiled))
    layers = [m for m in results["float32", True].model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(compiled_callables) == 2 * len(layers) == 4  # the tiny model's 2 layers, in each compiled training
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again: it generates as any other
    eager, compiled = results["float32", False], results["float32", True]
    assert np.allclose(compiled.log["loss"], eager.log["loss"], rtol=1e-4), (compiled.log, eager.log)
    for (name, a), (_, b) in zip(compiled.model.state_dict().items(), eager.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name
    base = load_policy("embedded:tiny-gpt-neox")[0].state_dict()
    assert any(not torch.equal(a, base[name]) for name, a in compiled.model.state_dict().items())  # it trained
    mixed = results["bfloat16", True].log
    assert mixed["log_ratio_mean"].iloc[0] == 0.0 and mixed["loss"].iloc[0] == pytest.approx(math.log(4), abs=1e-4)
    assert np.isfinite(mixed["loss"]).all()
