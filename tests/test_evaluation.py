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


def test_greedy_decoding_gives_the_tokens_of_transformers_generate(tiny):
    """The package's decoding loop (one prefill, a preallocated KV cache, left padding) against `generate`."""
    model, tokenizer = tiny
    prompts = ["You are such a", "The council voted yesterday to approve the new", "Hi", "What a lovely"]
    ours = generate_continuations(model, tokenizer, prompts, Decoding(max_new_tokens=8), batch_size=4)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        tokens = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def test_samples_of_a_prompt_come_from_one_prefill_are_reproducible_and_differ(tiny):
    from irlnb.rl.generation import sample_continuations

    model, tokenizer = tiny
    prompts = ["You are", "I think that the", "The council"]
    decoding = Decoding(max_new_tokens=6, do_sample=True, top_k=30)
    drawn = sample_continuations(model, tokenizer, prompts, decoding, samples=3, batch_size=2, seed=1)
    assert [len(texts) for texts in drawn] == [3, 3, 3]
    assert drawn == sample_continuations(model, tokenizer, prompts, decoding, samples=3, batch_size=2, seed=1)
    assert all(len(set(texts)) > 1 for texts in drawn)  # each sample has its own random numbers
    assert drawn != sample_continuations(model, tokenizer, prompts, decoding, samples=3, batch_size=2, seed=2)
    whole_vocabulary = Decoding(max_new_tokens=6, do_sample=True, top_k=0)
    assert all(len(texts) == 2 for texts in sample_continuations(model, tokenizer, prompts, whole_vocabulary, 2))
    with pytest.raises(ValueError, match="greedy decoding gives one continuation"):
        sample_continuations(model, tokenizer, prompts, Decoding(max_new_tokens=2), samples=2)


def test_two_models_drawing_with_one_seed_share_their_random_numbers(tiny):
    """Common random numbers (irl.matched): a slightly changed model drawing with the expert's seed mostly picks
    the same tokens; with another seed it agrees only by chance."""
    import copy

    from irlnb.rl.generation import sample_continuations

    model, tokenizer = tiny
    nudged = copy.deepcopy(model)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in nudged.parameters():
            parameter.add_(0.001 * parameter.std() * torch.randn(parameter.shape, generator=noise))
    prompts = ["You are", "I think that the", "The council", "What a", "Hi there", "Nobody"]
    decoding = Decoding(max_new_tokens=8, do_sample=True, top_k=30)

    def agreement(seed_a, seed_b):
        a = sample_continuations(model, tokenizer, prompts, decoding, 4, seed=seed_a)
        b = sample_continuations(nudged, tokenizer, prompts, decoding, 4, seed=seed_b)
        return sum(x == y for xs, ys in zip(a, b) for x, y in zip(xs, ys)) / (4 * len(prompts))

    assert agreement(3, 3) > 0.5 > 0.2 > agreement(3, 4)
