"""`irlnb bench`: speed ratios measured side by side in one process, written to runs/bench.json.

Each ratio compares the way this project does a piece of work with the way the reference code did
it, on the same inputs, in the same process, one after the other, so that machine load affects
both alike. Keys are flat `name -> number`; later stages add theirs here. The generation benches
(the package's decoding loop against `transformers`' `generate`) are in `irlnb.pipeline.bench_generation`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trl

from irlnb.config import AUTO_LAYER, Config
from irlnb.data.curation import curate
from irlnb.data.insults import read_insults
from irlnb.irl import feature_sets as irl_features
from irlnb.irl import fitting
from irlnb.layout import REPO_ROOT, read_json, write_json_atomic
from irlnb.models.classifiers import ToxBlockClassifier
from irlnb.models.policies import load_policy, load_tokenizer, policy_dir
from irlnb.objectives import AUTO, epochs_objective
from irlnb.params_file import load_config
from irlnb.pipeline.bench_generation import (
    bench_demo_generation,
    bench_sampling,
    best_seconds,
    count_tokens,
    generate_reference,
    matmul_peak_gflops,
    real_prompts_and_texts,
)
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.rewards.features import decoder_blocks, random_head, reward_form, score_tolerance
from irlnb.rewards.ground_truth import GroundTruthReward
from irlnb.rl.generation import sample_continuations
from irlnb.rl.kinds import BENCH_POLICY_GRADIENT, kind_of, kind_section
from irlnb.rl.policy_gradient import lora_config, scoring_completions_only, train_policy, trl_config
from irlnb.rl.reward_signal import Normalizer, PolicyReward, normalizer_texts
from irlnb.rl.sampling import sampling_decoding
from irlnb.rl.training import training_rows

DEFAULT_PARAMS = REPO_ROOT / "params" / "default.yaml"


def bench_ground_truth_scoring(n_texts: int = 2000) -> dict[str, float]:
    """Batched tox-block scoring vs the reference's one-text-at-a-time loop, on real comments."""
    classifier = ToxBlockClassifier.embedded()
    comments = read_insults()
    texts = comments[comments["text"].str.split().str.len() >= 8]["text"].head(n_texts).tolist()
    classifier.p_toxic(texts[:64])  # warm-up
    batched = best_seconds(lambda: classifier.p_toxic(texts), repeats=2)
    started = time.perf_counter()
    looped = [classifier.p_toxic([text])[0] for text in texts]
    loop = time.perf_counter() - started
    same = np.allclose(looped, classifier.p_toxic(texts), atol=1e-5)
    if not same:
        raise AssertionError("batched and one-at-a-time scores differ: padding leaks into the result")
    return {
        "gt_score.batched_vs_loop": loop / batched,
        "gt_score.texts_per_s": len(texts) / batched,
        "gt_score.loop_texts_per_s": len(texts) / loop,
        "gt_score.n_texts": float(len(texts)),
    }


def bench_rlhf_step(config: Config, steps: int = 3) -> dict[str, float]:
    """One RLHF step of the params' configuration (trainer, LoRA, policy, reward, batch and lengths), its rollouts
    drawn by the package's sampler as the trainers here draw them, and beside it the same step with TRL's own
    rollouts (`rlhf_step.trl_rollouts_seconds`, `rlhf_step.rollouts_speedup`; each draws its own completions, so
    their lengths differ: `rlhf_step.tokens`, `rlhf_step.trl_rollouts_tokens`).

    The model FLOPs of a step are estimated as 2N per generated token (sampling with the KV cache)
    plus 2N (reference policy) + 6N (policy forward and backward) per token of prompt + completion,
    with N the policy's parameter count; the rate is those FLOPs over the step's wall time.
    """
    kind = kind_of(config.rlhf.trainer)
    if not kind.policy_gradient:  # the params' kind runs no RL loop: time the RL step of the bench's kind
        kind = BENCH_POLICY_GRADIENT
    section = kind_section(config, kind)
    curated = curate(read_insults(), config.curate, config.compute.seed)
    r_star = GroundTruthReward.load(config.sources, config.ground_truth)
    reward = PolicyReward(
        r_star, Normalizer.fit(r_star(normalizer_texts(curated, config.compute.seed))), name="ground_truth"
    )
    model, _ = load_policy(config.sources.policy)
    n_params = model.num_parameters()
    del model
    prompts = training_rows(curated, config.rlhf, kind, section, seed=0)["prompt"].tolist()

    def last_step(trainer_class=None) -> dict:  # the last logged step of a short training, after warm-up
        with tempfile.TemporaryDirectory() as folder:
            args = trl_config(Path(folder), kind, section, config.rlhf, seed=0, use_cpu=True, max_steps=steps)
            trainer = train_policy(
                policy_dir(config.sources.policy),
                load_tokenizer(config.sources.policy),
                prompts,
                reward,
                args,
                kind,
                lora_config(section),
                trainer_class,
            )
        rows = [row for row in trainer.state.log_history if "step_time" in row]
        last, before = rows[-1], rows[-2]
        return {**last, "tokens": last["num_tokens"] - before["num_tokens"]}

    last = last_step()
    tokens = last["tokens"]
    generated = last["completions/mean_length"] * section.per_device_train_batch_size
    flops = n_params * (2 * generated + 8 * tokens)
    trls = last_step(getattr(trl, kind.trl_classes[0]))  # the same training with TRL's own rollouts (`generate`)
    values = {
        "rlhf_step.seconds": last["step_time"],
        "rlhf_step.gflops": flops / last["step_time"] / 1e9,
        "rlhf_step.tokens": float(tokens),
        "rlhf_step.generated_tokens": float(generated),
        "rlhf_step.trl_rollouts_seconds": trls["step_time"],
        "rlhf_step.trl_rollouts_tokens": float(trls["tokens"]),
        "rlhf_step.rollouts_speedup": trls["step_time"] / last["step_time"],
    }
    return {**values, **rlhf_step_parts(config, section, prompts)}


def rlhf_step_parts(config: Config, section, prompts: list[str]) -> dict[str, float]:
    """Where an RLOO step's time goes, each part timed alone on the step's shapes with the float32 policy:
    sampling the completions (this package's sampler, one prefill per prompt, as the trainers here draw their
    rollouts: `irlnb.rl.policy_gradient.PackageRollouts`), the reference policy's forward pass, the policy's
    forward and backward passes, and the AdamW update. Beside them, the same completions drawn by `transformers`'
    `generate`, as TRL alone draws them (`rlhf_step.generate_s`), and how much faster the sampler is
    (`rlhf_step.sampler_speedup`)."""
    model, tokenizer = load_policy(config.sources.policy)
    reference, _ = load_policy(config.sources.policy)
    step_prompts = prompts[: section.per_device_train_batch_size // section.num_generations]
    batch_prompts = [p for p in step_prompts for _ in range(section.num_generations)]
    decoding = sampling_decoding(config.rlhf)

    def sample():  # as the trainers here draw their rollouts: each prompt prefilled once for its samples
        drawn = sample_continuations(
            model, tokenizer, step_prompts, decoding, section.num_generations, len(step_prompts), seed=0
        )
        return [text for texts in drawn for text in texts]

    def generate():  # as TRL alone draws them: `transformers`' `generate`, every sample's prompt prefilled
        return generate_reference(model, tokenizer, batch_prompts, decoding, len(batch_prompts), seed=0)

    completions = sample()
    generation = best_seconds(sample, repeats=2)
    generate_s = best_seconds(generate, repeats=2)
    batch = tokenizer([p + c for p, c in zip(batch_prompts, completions)], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference_s = best_seconds(lambda: reference(**batch), repeats=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=section.learning_rate)
    model.train()

    def forward_backward():
        optimizer.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()

    policy_s = best_seconds(forward_backward, repeats=2)
    update_s = best_seconds(optimizer.step, repeats=2)
    parts = {
        "generation": generation,
        "reference_forward": reference_s,
        "policy_forward_backward": policy_s,
        "optimizer_update": update_s,
    }
    total = sum(parts.values())
    return {
        **{f"rlhf_step.{name}_s": seconds for name, seconds in parts.items()},
        **{f"rlhf_step.{name}_share": seconds / total for name, seconds in parts.items()},
        "rlhf_step.generate_s": generate_s,
        "rlhf_step.sampler_speedup": generate_s / generation,
    }


def split_in_halves(texts: list[str]) -> tuple[list[str], list[str]]:
    """Each comment's first half of words as a prompt and the rest, after a space, as its continuation."""
    words = [text.split() for text in texts]
    return [" ".join(w[: len(w) // 2]) for w in words], [" " + " ".join(w[len(w) // 2 :]) for w in words]


def lora_step_gflops(n_params: int, n_head: int, tokens: int, scored: int, seconds: float) -> float:
    """A LoRA training step's model FLOPs over its time: 4N per token (forward 2N; backward through the activations
    2N, the frozen weights taking no gradient), the LM head's part of N counted only at the scored tokens, the only
    positions it projects."""
    return 4 * ((n_params - n_head) * tokens + n_head * scored) / seconds / 1e9


def bench_infonca_step(config: Config, peaks: dict[str, float]) -> dict[str, float]:
    """One InfoNCA optimiser step (forward, backward, AdamW) on the infonca section's shapes, `prompts per step x n`
    real comments split into prompt and continuation, with its LoRA, as the kind trains on a CPU (eager attention,
    `irlnb.compute.training_attention`; only the continuations' positions projected): in float32 and in bfloat16
    autocast (`compute.training_dtype`) with the frozen weights held in bfloat16 (`FrozenWeightsInBfloat16`), side
    by side on the same batch, its decoder layers compiled where `compute.training_layers` resolves to compiled; beside
    it the bfloat16 step with transformers' default attention (`eager_attention_speedup`), with autocast casting
    the frozen weights at each use (`frozen_bfloat16_speedup`) and with its layers run eagerly
    (`compiled_layers_speedup`; `first_step_s`: the first compiled step, compilation included, with torch's
    compile cache as this machine had it). Model FLOPs: `lora_step_gflops`; each dtype's rate over
    `peaks[dtype]`, the matmul peak in that dtype."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from irlnb.compute import compiled_decoder_layers, training_attention
    from irlnb.rewards.likelihood import continuation_log_probs, continuation_rows, padded_rows
    from irlnb.rl.infonca import infonca_loss, soft_targets
    from irlnb.rl.policy_gradient import FrozenWeightsInBfloat16

    section = config.infonca
    width = section.per_device_train_batch_size * section.n
    prompts, continuations = split_in_halves(real_prompts_and_texts(width, seed=3)[1])
    model, tokenizer = load_policy(config.sources.policy)
    n_params, n_head, source = model.num_parameters(), model.get_output_embeddings().weight.numel(), model.name_or_path
    del model
    rows = continuation_rows(tokenizer, prompts, continuations)
    ids, mask, scored = padded_rows(rows, tokenizer.pad_token_id)
    shape = (section.per_device_train_batch_size, section.n)
    targets = torch.tensor(soft_targets(np.random.default_rng(0).normal(size=shape), section.beta))

    compiled_as_trained = config.compute.training_layers == "compiled"
    first_steps: list[float] = []

    def seconds_per_step(dtype: str, attention: str | None, frozen_in_bfloat16: bool, compiled: bool) -> float:
        """The fastest of 3 steps after a warm-up, of a fresh policy read with `attention`."""
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=attention)
        model = get_peft_model(model, lora_config(section)) if section.lora_rank else model
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=section.learning_rate)
        model.train()
        frozen = FrozenWeightsInBfloat16()
        if frozen_in_bfloat16:
            frozen.on_train_begin(None, None, None, model=model)

        def step() -> None:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                log_probs = continuation_log_probs(model, ids, mask, scored)
            infonca_loss(log_probs.double().view(shape), targets).backward()
            optimizer.step()

        with compiled_decoder_layers(model, compiled):
            started = time.perf_counter()
            step()  # warm-up (and compilation)
            first_steps.append(time.perf_counter() - started)
            seconds = best_seconds(step, repeats=3)
        frozen.on_train_end(None, None, None)
        return seconds

    tokens, scored_tokens = int(mask.sum()), int(scored.sum())
    values = {
        "infonca_step.tokens": float(tokens),
        "infonca_step.scored_tokens": float(scored_tokens),
        "infonca_step.sequences": float(width),
    }
    trained = training_attention("cpu")
    for dtype in ("float32", "bfloat16"):
        seconds = seconds_per_step(dtype, trained, frozen_in_bfloat16=dtype == "bfloat16", compiled=compiled_as_trained)
        if dtype == "bfloat16":
            values["infonca_step.first_step_s"] = first_steps[-1]
        gflops = lora_step_gflops(n_params, n_head, tokens, scored_tokens, seconds)
        values.update(
            {
                f"infonca_step.{dtype}_s": seconds,
                f"infonca_step.{dtype}_gflops": gflops,
                f"infonca_step.{dtype}_peak_fraction": gflops / peaks[dtype],
            }
        )
    bfloat16 = values["infonca_step.bfloat16_s"]
    values["infonca_step.bfloat16_speedup"] = values["infonca_step.float32_s"] / bfloat16
    variants = {  # the bfloat16 step with one thing changed: its seconds' key, its speedup's key, the change
        ("default_attention_s", "eager_attention_speedup"): dict(attention=None),
        ("frozen_cast_each_use_s", "frozen_bfloat16_speedup"): dict(frozen_in_bfloat16=False),
        ("eager_layers_s", "compiled_layers_speedup"): dict(compiled=not compiled_as_trained),
    }
    for (seconds_key, speedup_key), change in variants.items():
        as_trained = dict(attention=trained, frozen_in_bfloat16=True, compiled=compiled_as_trained)
        values[f"infonca_step.{seconds_key}"] = seconds_per_step("bfloat16", **{**as_trained, **change})
        values[f"infonca_step.{speedup_key}"] = values[f"infonca_step.{seconds_key}"] / bfloat16
    return values


def bench_log_probs(config: Config, peaks: dict[str, float]) -> dict[str, float]:
    """A white-box batch (`irlnb.rewards.likelihood.LogRatioReward`): the log-probabilities of one length-sorted batch
    of `irl.inference_batch_size` real comments, split into prompt and continuation, under the base policy in the
    inference dtype, by the package (`token_log_probs`, normalised one sequence at a time) against one log-softmax
    over the whole batch's logits, side by side; the forward pass alone gives the share the model takes. Model
    FLOPs: 2N per real token (every block and the LM head), over the matmul peak in that dtype."""
    from irlnb.compute import resolve_dtype
    from irlnb.rewards.likelihood import continuation_rows, padded_rows, token_log_probs

    dtype = resolve_dtype(config.compute.inference_dtype, "cpu")
    batch = config.irl.inference_batch_size
    prompts, continuations = split_in_halves(real_prompts_and_texts(4 * batch, seed=4)[1])
    model, tokenizer = load_policy(config.sources.policy, dtype=dtype)
    model.eval()
    rows = continuation_rows(tokenizer, prompts, continuations, 128)
    rows = sorted(rows, key=lambda row: len(row[0]))[len(rows) // 2 - batch // 2 :][:batch]  # as the pass sorts them
    ids, mask, _ = padded_rows(rows, tokenizer.pad_token_id)

    def whole_batch() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]

    with torch.inference_mode():
        packaged, reference = token_log_probs(model, ids, mask), whole_batch()  # also the warm-up
        gap = float((packaged - reference).abs().max())
        if gap != 0.0:
            raise AssertionError(f"per-sequence log-probabilities differ from the whole batch's by {gap:.3g}")
        rounds = [  # interleaved, so that a disturbance of the machine falls on all three alike
            [
                best_seconds(work, repeats=1)
                for work in (
                    lambda: token_log_probs(model, ids, mask),
                    whole_batch,
                    lambda: model(input_ids=ids, attention_mask=mask).logits,
                )
            ]
            for _ in range(5)
        ]
        seconds, batch_s, forward_s = np.min(rounds, axis=0)
    tokens = int(mask.sum())
    gflops = 2 * blocks_parameters(model, -1) * tokens / seconds / 1e9
    return {
        "log_probs.per_sequence_vs_batch": batch_s / seconds,
        "log_probs.seconds": seconds,
        "log_probs.batch_s": batch_s,
        "log_probs.forward_share": forward_s / seconds,
        "log_probs.tokens": float(tokens),
        "log_probs.padded_tokens": float(ids.numel()),
        "log_probs.gflops": gflops,
        "log_probs.peak_fraction": gflops / peaks[dtype],
        "log_probs.max_abs_diff": gap,
    }


class StepTimer:
    """A trainer callback that keeps the wall time of each optimiser step (`on_step_begin` to `on_step_end`)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer.started)

        self.seconds: list[float] = []
        self.started = 0.0
        self.callback = Callback()


def bench_dpo_step(config: Config, peaks: dict[str, float], steps: int = 4) -> dict[str, float]:
    """DPO optimiser steps of TRL's DPOTrainer as the dpo kind runs them (`irlnb.rl.dpo.dpo_config`: the dpo section's
    batch, LoRA and beta, reference log-probabilities computed once before the first step), on real comments split
    into prompt and continuation, another comment's second half rejected: in float32, as the kind trains, and in
    bfloat16 autocast over float32 weights, as infonca trains where `compute.training_dtype` resolves to it (whether
    dpo should too is read from `bfloat16_speedup`), on the same pairs. A dtype's step time is its fastest after the
    first.
    Model FLOPs: 4N per token of prompt + chosen and prompt + rejected (forward 2N; backward through the
    activations 2N, the frozen weights taking no gradient), the LM head's part of N counted only at the completion
    tokens, the only ones it projects (`scoring_completions_only`); each dtype's rate over the matmul peak in it.
    Where the time goes: the share of the step spent outside the policy's forward and backward on the pairs' batch
    (`outside_model_share`: TRL's log-probability head, loss, optimiser and bookkeeping), the forward and backward
    timed alone under the same autocast (with the LM head at every position: a lower bound of that share since the
    step projects only the completions); and the bfloat16 step with TRL's head at every position, as TRL projects
    off Triton devices (`bfloat16_every_position_s`, `completions_only_speedup`), side by side."""
    import datasets

    from irlnb.rl.dpo import dpo_config
    from irlnb.rl.policy_gradient import FrozenWeightsInBfloat16

    section = config.dpo
    width = section.per_device_train_batch_size
    prompts, endings = split_in_halves(real_prompts_and_texts(2 * width, seed=4)[1])
    prompts, chosen, rejected = prompts[:width], endings[:width], endings[width:]
    pairs = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    model, tokenizer = load_policy(config.sources.policy)
    n_params, n_head = model.num_parameters(), model.get_output_embeddings().weight.numel()
    del model
    sequences = [prompt + side for prompt, pair in zip(prompts, zip(chosen, rejected)) for side in pair]
    tokens, scored = count_tokens(tokenizer, sequences), count_tokens(tokenizer, chosen + rejected)
    batch = tokenizer(sequences, return_tensors="pt", padding=True)
    values = {"dpo_step.tokens": float(tokens), "dpo_step.scored_tokens": float(scored), "dpo_step.pairs": float(width)}

    def train(dtype: str, completions_only: bool = True):
        """The trainer after `steps` steps in `dtype`, and its fastest step after the first (warm-up); its LM head
        projecting only the completions' positions, as the kind trains, or every position, as TRL alone does."""
        timer = StepTimer()
        scoring = scoring_completions_only() if completions_only else contextlib.nullcontext()
        with tempfile.TemporaryDirectory() as folder, scoring:
            args = dpo_config(Path(folder), section, 0, True, steps, bf16=dtype == "bfloat16")
            policy, _ = load_policy(config.sources.policy)
            trainer = trl.DPOTrainer(
                model=policy,
                args=args,
                train_dataset=pairs.select([i % width for i in range(steps * width)]),
                processing_class=tokenizer,
                peft_config=lora_config(section),
                # as the kind trains: its frozen weights held in bfloat16 while the step runs in it
                callbacks=[timer.callback, *([FrozenWeightsInBfloat16()] if args.bf16 and section.lora_rank else [])],
            )
            trainer.train()
        return trainer, min(timer.seconds[1:])

    for dtype in ("float32", "bfloat16"):
        trainer, step_s = train(dtype)

        def forward_backward(model=trainer.model, dtype=dtype):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                logits = model(**batch).logits
            logits.float().logsumexp(-1).mean().backward()

        model_s = best_seconds(forward_backward, repeats=2)
        gflops = lora_step_gflops(n_params, n_head, tokens, scored, step_s)
        values.update(
            {
                f"dpo_step.{dtype}_s": step_s,
                f"dpo_step.{dtype}_gflops": gflops,
                f"dpo_step.{dtype}_peak_fraction": gflops / peaks[dtype],
                f"dpo_step.{dtype}_outside_model_share": max(0.0, 1.0 - model_s / step_s),
            }
        )
    values["dpo_step.bfloat16_speedup"] = values["dpo_step.float32_s"] / values["dpo_step.bfloat16_s"]
    every_position_s = train("bfloat16", completions_only=False)[1]
    values["dpo_step.bfloat16_every_position_s"] = every_position_s
    values["dpo_step.completions_only_speedup"] = every_position_s / values["dpo_step.bfloat16_s"]
    return values


def irl_reader(config: Config):
    """The learned reward's form of the params (backbone, layer, pooling, dtype), with a zero head; where notebook 04
    chooses them (`AUTO_LAYER`, `AUTO`), the final layer, the dearest it may choose, and mean pooling."""
    irl = config.irl
    layer = -1 if irl.layer == AUTO_LAYER else irl.layer
    pooling = "mean" if irl.pooling == AUTO else irl.pooling
    return reward_form(config.sources.policy, pooling, layer, irl.max_length, dtype=config.compute.inference_dtype)


def bench_reward_scoring(reader, n_texts: int = 1000) -> dict[str, float]:
    """The learned reward's form scoring real comments: length-sorted batches vs one text at a time.

    A seeded random head on standardised features stands in for a learned one (notebook 04 folds the
    same standardisation into its head), so that the two paths' scores can be compared.
    """
    _, texts = real_prompts_and_texts(n_texts, seed=1)
    standardizer = irl_features.Standardizer.fit(reader.features(texts[:64]))  # also the warm-up
    reader.head = standardizer.fold(random_head(reader.head.in_features, seed=0))
    started = time.perf_counter()
    batched = reader.score(texts, batch_size=32)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    looped = np.array([reader.score([text], batch_size=1)[0] for text in texts])
    loop_s = time.perf_counter() - started
    gap = float(np.abs(batched - looped).max())
    encoded = reader.tokenizer(texts, truncation=True, max_length=reader.spec.max_length)
    tokens = sum(len(ids) for ids in encoded["input_ids"])  # real tokens: padding is not useful work
    if gap > score_tolerance(reader.spec.dtype, float(np.std(looped))):
        raise AssertionError(f"batched and one-at-a-time rewards differ by {gap:.3g}: padding leaks into the result")
    return {
        "reward_score.batched_vs_loop": loop_s / batched_s,
        "reward_score.texts_per_s": n_texts / batched_s,
        "reward_score.gflops": 2 * blocks_parameters(reader.backbone, reader.spec.layer) * tokens / batched_s / 1e9,
        "reward_score.n_texts": float(n_texts),
        "reward_score.max_abs_diff": gap,
        "reward_score.spread": float(np.std(looped)),
    }


def blocks_parameters(model, layer: int) -> int:
    """Parameters a forward pass up to block `layer` multiplies with (-1: every block and the LM head; the
    embedding is a lookup): a forward pass costs about 2 FLOPs per such parameter and token."""
    blocks = decoder_blocks(model)
    used = blocks if layer == -1 else blocks[:layer]
    count = sum(p.numel() for block in used for p in block.parameters())
    return count + (model.get_output_embeddings().weight.numel() if layer == -1 else 0)


class BackboneFeatures:
    """Features that run the backbone again for every batch of pairs read from them, as the reference's
    training loop did (it cached nothing): stands in for a cached feature tensor in `fitting.fit_head`."""

    def __init__(self, reader, texts: list[str]):
        self.reader, self.texts = reader, texts
        self.shape = (len(texts), reader.head.in_features)

    def __getitem__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.reader.features([self.texts[i] for i in batch.tolist()])


def bench_irl_epoch(reader, irl_settings, n_pairs: int = 64) -> dict[str, float]:
    """One IRL epoch on cached frozen features vs the same epoch recomputing the backbone for every batch.

    Both are `fitting.fit_head`, the package's own training loop, on the same pairs and objective.
    """
    _, texts = real_prompts_and_texts(2 * n_pairs, seed=2)
    expert_texts, non_expert_texts = texts[:n_pairs], texts[n_pairs:]
    # An epoch of gradient steps: the posterior (laplace) is timed on its likelihood's objective. The failure-aware
    # loss reads every pair's features at once each epoch, which uncached features cannot: its hinge is timed.
    objective = epochs_objective(irl_settings.loss)
    if objective.failure_weighted:  # the same hinge, without the curriculum's pass over every pair
        objective = dataclasses.replace(objective, failure_weighted=False)
    fit = dataclasses.replace(fitting.SeededFit.from_settings(irl_settings, objective), epochs=1)

    def epoch(pairs: irl_features.PairSet) -> None:
        fitting.fit_head(pairs, fit, 0, on_epoch=lambda e, h: {})

    # The features, computed once outside the timed epoch, as notebook 04 caches them.
    cached = irl_features.PairSet(
        irl_features.TextSet(reader.features(expert_texts), None, None),
        irl_features.TextSet(reader.features(non_expert_texts), None, None),
    )
    cached_s = best_seconds(lambda: epoch(cached), repeats=3)
    uncached = irl_features.PairSet(
        irl_features.TextSet(BackboneFeatures(reader, expert_texts), None, None),
        irl_features.TextSet(BackboneFeatures(reader, non_expert_texts), None, None),
    )
    full_s = best_seconds(lambda: epoch(uncached), repeats=1)
    return {
        "irl_epoch.cached_vs_full": full_s / cached_s,
        "irl_epoch.cached_s": cached_s,
        "irl_epoch.full_s": full_s,
        "irl_epoch.pairs": float(n_pairs),
    }


def run_bench(
    threads: int = 1, out: str | Path = "runs/bench.json", rlhf_threads: int = 2, params: str | Path = DEFAULT_PARAMS
) -> dict[str, float]:
    config = load_config(params)
    measuring = provenance(REPO_ROOT)  # the code that measures: read before it runs
    torch.set_num_threads(threads)
    started = time.perf_counter()
    results = {"bench.torch_threads": float(threads), "matmul.peak_gflops": matmul_peak_gflops()}
    results.update(bench_ground_truth_scoring())
    results.update(bench_demo_generation(config))
    reader = irl_reader(config)
    results.update(bench_reward_scoring(reader))
    results["reward_score.peak_fraction"] = results["reward_score.gflops"] / results["matmul.peak_gflops"]
    results.update(bench_irl_epoch(reader, config.irl))
    del reader
    # The RLHF step runs at the default's thread count; the matmul peak at that count is its reference.
    torch.set_num_threads(rlhf_threads)
    results[f"matmul.peak_gflops_{rlhf_threads}_threads"] = matmul_peak_gflops()
    results.update(bench_rlhf_step(config))
    # The training steps' peaks: each dtype's matmul at the same thread count, measured once for both steps.
    peaks = {dtype: matmul_peak_gflops(dtype=getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    results.update({f"matmul.{dtype}_peak_gflops": peak for dtype, peak in peaks.items()})
    results.update(bench_infonca_step(config, peaks))
    results.update(bench_dpo_step(config, peaks))
    results.update(bench_log_probs(config, peaks))
    results.update(bench_sampling(config))
    results["rlhf_step.peak_fraction"] = (
        results["rlhf_step.gflops"] / results[f"matmul.peak_gflops_{rlhf_threads}_threads"]
    )
    results["bench.rlhf_torch_threads"] = float(rlhf_threads)
    torch.set_num_threads(threads)
    results["bench.total_s"] = time.perf_counter() - started
    out = Path(out) if Path(out).is_absolute() else REPO_ROOT / out
    merged = {**read_json(out, default={}), **results}  # keep other stages' keys
    write_json_atomic(out, merged)
    write_json_atomic(out.with_suffix(".manifest.json"), held_provenance(measuring, REPO_ROOT))
    for name, value in sorted(results.items()):
        print(f"{name}: {value:.4g}")
    return results
