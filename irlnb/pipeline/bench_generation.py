"""`irlnb bench`'s generation benches: the package's decoding loop against `transformers`' `generate`.

Also the timing and the real inputs every bench shares (`best_seconds`, `matmul_peak_gflops`,
`real_prompts_and_texts`): `irlnb.pipeline.bench`, which runs the whole bench, imports them from here.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from irlnb.config import Config
from irlnb.data.insults import read_insults
from irlnb.models.policies import encode_prompts, load_policy
from irlnb.rl.generation import Decoding, generate_continuations, sample_continuations
from irlnb.rl.sampling import sampling_decoding

REFERENCE_BATCH_SIZE = 32  # prompts per `generate` call before the package had its own loop (irl, evaluation)


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


def real_prompts_and_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Prompts (first half of a comment) and whole comments from the embedded insults data."""
    comments = read_insults()
    comments = comments[comments["text"].str.split().str.len().between(8, 60)].sample(n=n, random_state=seed)
    texts = comments["text"].tolist()
    prompts = [" ".join(t.split()[: len(t.split()) // 2]) for t in texts]
    return prompts, texts


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


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
    values = sampling_rate(model, tokenizer, prompts, decoding, samples, batch, dtype)
    return {**values, **sampling_ratios(config, model, tokenizer, prompts, decoding, samples, batch)}


def sampling_rate(
    model, tokenizer, prompts: list[str], decoding: Decoding, samples: int, batch: int, dtype: str
) -> dict[str, float]:
    """One timed draw of `samples` continuations per prompt, `batch` prompts a batch: its rate, its FLOPs against
    the matmul peak in `dtype`, and the share of its time spent outside the model's forward."""
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
    return {
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


def sampling_ratios(
    config: Config, model, tokenizer, prompts: list[str], decoding: Decoding, samples: int, batch: int
) -> dict[str, float]:
    """The package's sampling against the alternatives, as ratios of new tokens per second (see `bench_sampling`)."""
    dtype = config.compute.inference_dtype

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

    values = {}
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
