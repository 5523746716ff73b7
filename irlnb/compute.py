"""The compute settings applied: seeds, CPU threads, and which torch device a model goes to."""

from __future__ import annotations

import random

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
