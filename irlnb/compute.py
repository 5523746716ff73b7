"""The compute settings applied: seeds, CPU threads, and which torch device a model goes to; and what a frozen
model computed, kept so that no run computes it twice."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from irlnb.errors import IrlnbError
from irlnb.layout import write_atomic

Value = TypeVar("Value")


class DeviceError(IrlnbError, RuntimeError):
    """A device that was asked for and is not there; the message is one line."""


def seed_everything(seed: int, torch_threads: int) -> None:
    """Seed Python, NumPy and torch, and fix torch's intra-op thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(torch_threads)


def resolve_device(device: str) -> str:
    """'auto' means CUDA when there is one; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("compute.device is 'cuda' but torch sees no CUDA device; use 'cpu' or 'auto'")
    return device


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, device: str) -> str:
    """A dtype setting made concrete (compute.inference_dtype, compute.training_dtype). 'auto': bfloat16 where the
    device computes it natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX), else float32.
    Where a CPU only emulates bfloat16 its matmuls run ~35x slower than float32."""
    if dtype != "auto":
        return dtype
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = bool(NATIVE_BFLOAT16_FLAGS & cpu_flags())
    return "bfloat16" if native else "float32"


def training_attention(device: str) -> str | None:
    """The attention a policy trains with (transformers' `attn_implementation`): on a CPU the eager one, whose
    backward at this package's lengths (under 128 tokens) is cheaper than torch's fused CPU kernel (`irlnb bench`:
    `infonca_step.eager_attention_speedup`, 1.37x on the 2-core Xeon: regress/bench-0499553-xeon.metrics.json);
    elsewhere transformers' default (None)."""
    return "eager" if device == "cpu" else None


def resolve_layers(setting: str, device: str) -> str:
    """compute.training_layers made concrete: 'auto' is 'compiled' on a CPU where a C++ compiler is found (inductor
    writes C++ for a CPU; `irlnb bench`: `infonca_step.compiled_layers_speedup`), else 'eager'; 'compiled' on a
    CPU without one is an error, not a failure at the first step."""
    if setting == "eager" or (setting == "auto" and device != "cpu"):
        return "eager"
    if device == "cpu" and not cpp_compiler():
        if setting == "compiled":
            raise DeviceError(
                "compute.training_layers is 'compiled' but no C++ compiler is found for torch.compile on a CPU "
                "(install g++ or set CXX); use 'eager' or 'auto'"
            )
        return "eager"
    return "compiled"


def cpp_compiler() -> str:
    """The C++ compiler torch's inductor would build with on a CPU, or '' where there is none."""
    from torch._inductor.cpp_builder import get_cpp_compiler  # inductor's own search (CXX, then g++ / clang++)

    try:
        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - inductor raises its own error types when it finds none
        return ""


@contextmanager
def compiled_decoder_layers(model, compiled: bool) -> Iterator[None]:
    """While open, each decoder layer of `model` (a transformers model, maybe under a LoRA adapter) runs compiled
    by torch.compile with free shapes: the layers are alike, so a graph traced once serves all of them (the first
    has one of its own: its input takes no gradient) at every batch length (`continuation_log_probs` keeps the
    key-value cache out of it). Inductor fuses the elementwise work between the matrix products, half a CPU
    training step's time at this package's sizes. Closed, the layers run eagerly again: the merged policy generates
    as any other. Nothing happens where `compiled` is false."""
    from transformers.modeling_layers import GradientCheckpointingLayer  # every decoder layer of transformers

    layers = [layer for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)] if compiled else []
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set, undone (torch has no public call)


def cache_file(directory: Path, kind: str, key: object, suffix: str = ".pt") -> Path:
    """Where what a frozen model computed for `key` is kept: `directory`/<kind>-<digest of key and torch's
    version><suffix> (`key`: JSON, everything the value depends on)."""
    identity = json.dumps({"torch": torch.__version__, "key": key}, sort_keys=True, default=str)
    return Path(directory) / f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:24]}{suffix}"


def frozen_cached(
    directory: Path, kind: str, key: object, compute: Callable[[], Value], usable: Callable[[Value], bool]
) -> Value:
    """`compute()`, or what it returned before for the same `key`: everything the value depends on (JSON; for a
    model, its weights' sha256, never only its name), to which torch's version is added. A frozen model's features,
    samples and log-probabilities are kept this way in a cache that the runs of one runs directory share
    (`RunLayout.cache`). A kept file that a kill cut short, that is damaged or that `usable` refuses is recomputed.
    """
    path = cache_file(directory, kind, key)
    if path.is_file():
        try:
            kept = torch.load(path, weights_only=True)
            if usable(kept):
                return kept
        except Exception:  # noqa: BLE001 - any unreadable cache file is recomputed
            pass
    value = compute()
    write_atomic(path, lambda tmp: torch.save(value, tmp))
    return value
