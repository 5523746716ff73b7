"""The compute settings applied: seeds, CPU threads, and which torch device a model goes to."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from irlnb.errors import IrlnbError


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


def resolve_inference_dtype(dtype: str, device: str) -> str:
    """'auto': bfloat16 where the device computes it natively (a CUDA GPU that supports it; a CPU with AVX512-BF16
    or AMX), else float32. Where a CPU only emulates bfloat16 its matmuls run ~35x slower than float32."""
    if dtype != "auto":
        return dtype
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = bool(NATIVE_BFLOAT16_FLAGS & cpu_flags())
    return "bfloat16" if native else "float32"
