"""Embedded assets verify by sha256, and the safetensors cache of SmolLM2 equals the GGUF it came from."""

from __future__ import annotations

import pytest
import torch

from irlnb.data import assets
from irlnb.data.assets import ARCHIVES, AssetError, asset_path, fetch_archive


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
