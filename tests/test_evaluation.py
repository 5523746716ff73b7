"""Policy evaluation pieces on hand-computed cases and on the tiny offline GPT-NeoX."""

from __future__ import annotations

import math

import pytest
import torch

from irlnb.metrics import distinct_n
from irlnb.models.policies import load_policy
from irlnb.rl.evaluation import perplexity, toxicity_summary
from irlnb.rl.generation import Decoding, generate_continuations


@pytest.fixture(scope="module")
def tiny():
    return load_policy("embedded:tiny-gpt-neox")


def test_distinct_2_hand_case():
    # bigrams: (a b) (b a) (a b) | (a b) -> 4 bigrams, 2 distinct
    assert distinct_n(["a b a b", "a b"], n=2) == pytest.approx(2 / 4)
    assert distinct_n(["one", ""], n=2) == 0.0
    assert distinct_n(["x y z"], n=1) == 1.0


def test_toxicity_summary_hand_case():
    values = toxicity_summary([0.9, 0.1, 0.6, 0.2], prefix="rlhf.base.", samples=200, seed=0)
    assert values["rlhf.base.toxicity_ratio"] == pytest.approx(0.5)  # 0.9 and 0.6 are > 0.5
    assert values["rlhf.base.toxicity_mean"] == pytest.approx(0.45)
    assert values["rlhf.base.toxicity_ratio_ci_low"] <= 0.5 <= values["rlhf.base.toxicity_ratio_ci_high"]
    with pytest.raises(ValueError, match="no continuations"):
        toxicity_summary([], prefix="x.", samples=10, seed=0)


def test_perplexity_equals_the_exponentiated_token_loss(tiny):
    model, tokenizer = tiny
    texts = ["You are such an idiot", "What a lovely thoughtful comment, thank you"]
    expected_nll, expected_tokens = 0.0, 0
    for text in texts:  # one text at a time: no padding involved
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            loss = model(ids, labels=ids).loss
        expected_nll += float(loss) * (ids.shape[1] - 1)
        expected_tokens += ids.shape[1] - 1
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(
        math.exp(expected_nll / expected_tokens), rel=1e-4
    )


def test_batched_greedy_generation_matches_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = ["You are such a", "The council voted yesterday to approve the new", "Hi"]
    decoding = Decoding(max_new_tokens=6)
    batched = generate_continuations(model, tokenizer, prompts, decoding, batch_size=3)
    single = [generate_continuations(model, tokenizer, [p], decoding, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_sampled_generation_is_reproducible_with_a_seed_and_really_samples(tiny):
    model, tokenizer = tiny
    prompts = ["You are", "I think", "The council", "What a"]
    decoding = Decoding(max_new_tokens=6, do_sample=True, top_k=30)
    first = generate_continuations(model, tokenizer, prompts, decoding, seed=3)
    assert first == generate_continuations(model, tokenizer, prompts, decoding, seed=3)
    # a silently greedy decoder would give the same texts for every seed, and the greedy ones
    assert first != generate_continuations(model, tokenizer, prompts, decoding, seed=4)
    assert first != generate_continuations(model, tokenizer, prompts, Decoding(max_new_tokens=6), seed=3)


def test_empty_prompt_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="empty prompt"):
        generate_continuations(model, tokenizer, ["ok", ""], Decoding(max_new_tokens=2))


def test_prompts_longer_than_the_context_are_cut_from_the_front(tiny):
    from irlnb.rl.generation import context_limit, fit_prompts

    model, tokenizer = tiny
    assert context_limit(model.config, 12) == model.config.max_position_embeddings - 12
    long_prompt = "word " * 2000
    fitted, cut = fit_prompts(["short one", long_prompt], tokenizer, max_tokens=50)
    assert cut == 1 and fitted[0] == "short one"
    assert len(tokenizer(fitted[1], add_special_tokens=False)["input_ids"]) <= 50
    out = generate_continuations(model, tokenizer, [long_prompt], Decoding(max_new_tokens=3))
    assert len(out) == 1  # no position overflow: the prompt was cut to the context window
