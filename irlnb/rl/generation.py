"""Batched continuations of prompts: length-sorted, left-padded, one prefill per prompt, a KV-cached decoding loop.

Used for the policy evaluation and the DPO candidates (notebook 03) and the IRL demonstrations (notebook 04).
Sorting by prompt length keeps padding small; left padding keeps every prompt's last token at the end, where
generation continues. A prompt is read (prefilled) once for all the samples drawn from it: its KV cache is
repeated for them. The result is in the caller's order.

The loop is this package's own rather than `transformers`' `generate`, because on a CPU `generate` spends
most of a sampled step outside the model: it draws from the whole vocabulary (an exponential per token of
49,152, then a softmax over all of them) after the top-k cut, and converts the logits to float32 first.
Here top-k is taken on the logits as the model returns them, and only the k survivors are normalised and
drawn from. Greedy decoding gives `generate`'s tokens (tested).

A sampled token is drawn by inverse CDF: one uniform number per sequence and step, over the top-k tokens in
token-id order. Two models drawing with the same seed therefore share their random numbers token by token
(`irl.matched`): where their top-k distributions agree they pick the same token. The same seed, prompts,
batch size and dtype give the same tokens on the same machine.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from irlnb.models.policies import encode_prompts
from irlnb.progress import tracked


@dataclass(frozen=True)
class Decoding:
    """How continuations are drawn."""

    max_new_tokens: int = 32
    do_sample: bool = False  # False = greedy, the paper's decoding for evaluation and demonstrations
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k cut (the paper's RLHF sampling used 30)


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
    drawn = sample_continuations(model, tokenizer, prompts, decoding, 1, batch_size, seed, max_prompt_tokens)
    return [first for first, *_ in drawn]


def sample_continuations(
    model,
    tokenizer,
    prompts: list[str],
    decoding: Decoding,
    samples: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> list[list[str]]:
    """`samples` continuations of each prompt, drawn from one prefill of it; `batch_size` prompts a batch (so
    `batch_size * samples` sequences are decoded together). Batch `b` of the length-sorted prompts draws with
    seed `seed + b * batch_size`."""
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a left-padding tokenizer (see irlnb.models.policies.prepare_tokenizer)")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if samples > 1 and not decoding.do_sample:
        raise ValueError("greedy decoding gives one continuation per prompt; sample to draw more")
    # Keep each prompt's end (it is what gets continued) and leave room for the new tokens.
    limit = context_limit(model.config, decoding.max_new_tokens)
    if max_prompt_tokens is not None:
        limit = min(limit, max_prompt_tokens)
    encoded = encode_prompts(tokenizer, prompts, limit)
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("an empty prompt cannot be continued")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    stop = stop_tokens(model, tokenizer)
    out: list[list[str]] = [[] for _ in encoded]
    model.eval()
    with torch.inference_mode():
        starts = range(0, len(order), batch_size)
        for start in tracked(starts, len(starts), f"generating {len(order) * samples} continuations"):
            index = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, return_tensors="pt").to(device)
            generator = torch.Generator(device=device).manual_seed(seed + start)
            new = decode(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                decoding,
                samples,
                generator,
                stop,
                tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for row, i in enumerate(index):
                out[i] = texts[row * samples : (row + 1) * samples]
    return out


def stop_tokens(model, tokenizer) -> torch.Tensor:
    """The token ids that end a continuation: the model's generation config's, as `generate` uses them."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return torch.tensor(eos, dtype=torch.long)


def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding: Decoding,
    samples: int,
    generator: torch.Generator,
    stop: torch.Tensor,
    pad_token_id: int,
) -> torch.Tensor:
    """New token ids, `samples` rows per (left-padded) prompt row, each row's samples adjacent; after a stop
    token a row holds padding. The prompts are prefilled once and their cache repeated for the samples."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens
    cache = preallocated_cache(model.config, input_ids.shape[1] + decoding.max_new_tokens)
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        **keep_last,
    )
    logits = output.logits[:, -1]
    if samples > 1:
        cache.batch_repeat_interleave(samples)
        attention_mask = attention_mask.repeat_interleave(samples, dim=0)
        position_ids = position_ids.repeat_interleave(samples, dim=0)
        logits = logits.repeat_interleave(samples, dim=0)
    rows = attention_mask.shape[0]
    stop = stop.to(input_ids.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    position = position_ids[:, -1:]
    tokens = []
    for step in range(decoding.max_new_tokens):
        token = next_token(logits, decoding, generator)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        finished |= torch.isin(token, stop)
        if step == decoding.max_new_tokens - 1 or bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
        position = position + 1
        output = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position, cache=cache)
        logits = output.logits[:, -1]
    return torch.stack(tokens, dim=1)


class PreallocatedLayer(DynamicLayer):
    """A layer of the KV cache that writes each step's keys and values into room allocated at the prefill, instead
    of concatenating the whole cache anew every step (which copies it: quadratic in the length)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.is_initialized, self.device = True, key_states.device
            shape = (*key_states.shape[:2], self.capacity)
            self.key_room = key_states.new_empty((*shape, key_states.shape[-1]))
            self.value_room = value_states.new_empty((*shape, value_states.shape[-1]))
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} tokens; {end} were asked for")
        self.key_room[:, :, self.length : end] = key_states
        self.value_room[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_room[:, :, :end], self.value_room[:, :, :end]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.key_room = self.key_room.repeat_interleave(repeats, dim=0)
            self.value_room = self.value_room.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self.key_room[:, :, : self.length], self.value_room[:, :, : self.length]


def preallocated_cache(model_config, capacity: int) -> DynamicCache:
    """The model's KV cache with its full-attention layers preallocated for `capacity` tokens (sliding-window
    layers, as Gemma's, stay as `transformers` builds them)."""
    cache = DynamicCache(config=model_config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def next_token(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator) -> torch.Tensor:
    """The next token of each row: the argmax, or a top-k sample at the decoding's temperature.

    The top-k cut is taken on the logits in the model's dtype (converting to float32 is exact and keeps the
    order, so it would pick the same tokens); only the k survivors are normalised in float32. They are put in
    token-id order and one uniform number per row picks a token by inverse CDF."""
    if not decoding.do_sample:
        return logits.argmax(dim=-1)
    if decoding.top_k and decoding.top_k < logits.shape[-1]:
        values, ids = logits.topk(decoding.top_k, dim=-1)
        ids, order = ids.sort(dim=-1)
        values = values.gather(-1, order)
    else:  # the whole vocabulary, already in token-id order
        values, ids = logits, None
    cumulative = torch.softmax(values.float() / decoding.temperature, dim=-1).cumsum(dim=-1)
    uniform = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device) * cumulative[:, -1:]
    pick = torch.searchsorted(cumulative, uniform, right=True).clamp(max=values.shape[-1] - 1)
    return pick.squeeze(-1) if ids is None else ids.gather(-1, pick).squeeze(-1)


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
