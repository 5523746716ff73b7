"""The embedded tiny GPT-NeoX (smoke policy) is built offline and is a working causal LM."""

from __future__ import annotations

import torch

from irlnb.models.policies import load_policy


def test_tiny_gpt_neox_loads_and_generates_left_padded():
    model, tokenizer = load_policy("embedded:tiny-gpt-neox")
    assert model.config.model_type == "gpt_neox" and model.num_parameters() < 1_000_000
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    text = "You are such a"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    batch = tokenizer(["You are such a", "Hello"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)
