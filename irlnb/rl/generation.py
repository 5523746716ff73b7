"""Batched continuations of prompts: length-sorted, left-padded, with the KV cache of `generate`.

Used for the policy evaluation (notebook 03) and the IRL demonstrations (notebook 04). Sorting by
prompt length keeps padding small; left padding keeps every prompt's last token at the end, where
generation continues. The result is in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from irlnb.models.policies import encode_prompts
from irlnb.progress import tracked


@dataclass(frozen=True)
class Decoding:
    """How continuations are drawn."""

    max_new_tokens: int = 32
    do_sample: bool = False  # False = greedy, the paper's decoding for evaluation and demonstrations
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k cut (the paper's RLHF sampling used 30)
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        return kwargs


def generate_continuations(
    model,
    tokenizer,
    prompts: list[str],
    decoding: Decoding,
    batch_size: int = 32,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """One continuation per prompt (the new text only, special tokens removed)."""
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a left-padding tokenizer (see irlnb.models.policies.prepare_tokenizer)")
    # Keep each prompt's end (it is what gets continued) and leave room for the new tokens.
    limit = context_limit(model.config, decoding.max_new_tokens)
    if max_prompt_tokens is not None:
        limit = min(limit, max_prompt_tokens)
    encoded = encode_prompts(tokenizer, prompts, limit)
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("an empty prompt cannot be continued")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    out: list[str] = [""] * len(encoded)
    model.eval()
    with torch.inference_mode():
        starts = range(0, len(order), batch_size)
        for start in tracked(starts, len(starts), f"generating {len(order)} continuations"):
            index = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, return_tensors="pt").to(device)
            torch.manual_seed(seed + start)  # sampled decoding is reproducible per batch
            tokens = model.generate(**batch, **decoding.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
            new = tokens[:, batch["input_ids"].shape[1] :]
            for i, text in zip(index, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = text
    return out


def context_limit(model_config, new_tokens: int) -> int:
    """The most prompt tokens that leave room for `new_tokens` in the model's context window."""
    window = getattr(model_config, "max_position_embeddings", None) or 2048
    if new_tokens >= window:
        raise ValueError(f"{new_tokens} new tokens do not fit the model's context of {window}")
    return window - new_tokens


def fit_prompts(prompts: list[str], tokenizer, max_tokens: int) -> tuple[list[str], int]:
    """Prompts cut to their last `max_tokens` tokens (the end is what gets continued); returns (prompts, n_cut)."""
    fitted, cut = [], 0
    for prompt, ids in zip(prompts, tokenizer(list(prompts), add_special_tokens=False)["input_ids"]):
        if len(ids) > max_tokens:
            prompt = tokenizer.decode(ids[-max_tokens:])
            cut += 1
        fitted.append(prompt)
    return fitted, cut
