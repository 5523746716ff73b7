"""`irlnb bench`: speed ratios measured side by side in one process, written to runs/bench.json.

Each ratio compares the way this project does a piece of work with the way the reference code did
it, on the same inputs, in the same process, one after the other, so that machine load affects
both alike. Keys are flat `name -> number`; later stages add theirs here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from irlnb import runio
from irlnb.provenance import provenance
from irlnb.stages import REPO_ROOT


def best_seconds(work, repeats: int = 3) -> float:
    """The fastest of a few runs: the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_peak_gflops(n: int = 1024) -> float:
    """The machine's fp32 matmul rate at the current thread count (the reference for model work)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats=10) / 1e9


def bench_ground_truth_scoring(n_texts: int = 2000) -> dict[str, float]:
    """Batched tox-block scoring vs the reference's one-text-at-a-time loop, on real comments."""
    from irlnb.classifiers import ToxBlockClassifier
    from irlnb.curate import read_insults

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
    return {"gt_score.batched_vs_loop": loop / batched, "gt_score.texts_per_s": len(texts) / batched,
            "gt_score.loop_texts_per_s": len(texts) / loop, "gt_score.n_texts": float(len(texts))}


def bench_rlhf_step(params: str | Path = "params/default.yaml", steps: int = 3) -> dict[str, float]:
    """One RLOO step of the default configuration (policy, reward, batch and lengths from the params file).

    The model FLOPs of a step are estimated as 2N per generated token (sampling with the KV cache)
    plus 2N (reference policy) + 6N (policy forward and backward) per token of prompt + completion,
    with N the policy's parameter count; the rate is those FLOPs over the step's wall time.
    """
    import tempfile

    from irlnb.classifiers import ToxBlockClassifier
    from irlnb.config import load_config
    from irlnb.curate import curate, read_insults
    from irlnb.reward_model import backbone_dir
    from irlnb.rlhf import (PolicyReward, fit_normalizer, ground_truth_scorer, rl_config, train_policy,
                            training_prompts)
    from irlnb.sources import load_policy

    config = load_config(REPO_ROOT / params)
    r = config.rlhf
    curated = curate(read_insults(), config.curate, config.compute.seed)
    scorer = ground_truth_scorer(ToxBlockClassifier.embedded(), config.ground_truth.reward_clip)
    reward = PolicyReward(scorer, fit_normalizer(scorer, curated, config.compute.seed), name="ground_truth")
    model, tokenizer = load_policy(config.sources.policy)
    n_params = model.num_parameters()
    del model
    with tempfile.TemporaryDirectory() as folder:
        args = rl_config(folder, steps=steps, learning_rate=r.learning_rate, beta=r.beta,
                           batch_size=r.completions_per_step, num_generations=r.generations_per_prompt,
                           max_completion_length=r.max_completion_tokens, top_k=r.top_k, temperature=r.temperature,
                           save_steps=10 * steps, seed=0, use_cpu=True)
        trainer = train_policy(backbone_dir(config.sources.policy), tokenizer, training_prompts(curated, r), reward, args)
    rows = [row for row in trainer.state.log_history if "step_time" in row]
    last, before = rows[-1], rows[-2]  # the last step, after warm-up
    tokens = last["num_tokens"] - before["num_tokens"]
    generated = last["completions/mean_length"] * r.completions_per_step
    flops = n_params * (2 * generated + 8 * tokens)
    return {"rlhf_step.seconds": last["step_time"], "rlhf_step.gflops": flops / last["step_time"] / 1e9,
            "rlhf_step.tokens": float(tokens), "rlhf_step.generated_tokens": float(generated)}


def run_bench(threads: int = 1, out: str | Path = "runs/bench.json", rlhf_threads: int = 2) -> dict[str, float]:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    results = {"bench.torch_threads": float(threads), "matmul.peak_gflops": matmul_peak_gflops()}
    results.update(bench_ground_truth_scoring())
    # The RLHF step runs at the default's thread count; the matmul peak at that count is its reference.
    torch.set_num_threads(rlhf_threads)
    results[f"matmul.peak_gflops_{rlhf_threads}_threads"] = matmul_peak_gflops()
    results.update(bench_rlhf_step())
    results["bench.rlhf_torch_threads"] = float(rlhf_threads)
    torch.set_num_threads(threads)
    results["bench.total_s"] = time.perf_counter() - started
    out = Path(out) if Path(out).is_absolute() else REPO_ROOT / out
    merged = {**runio.read_json(out, default={}), **results}  # keep other stages' keys
    runio.write_json_atomic(out, merged)
    runio.write_json_atomic(out.with_suffix(".manifest.json"), provenance(REPO_ROOT))
    for name, value in sorted(results.items()):
        print(f"{name}: {value:.4g}")
    return results
