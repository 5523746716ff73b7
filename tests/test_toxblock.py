"""The PyTorch port of tox-block against outputs of the original Keras model (fixtures made once,
by tests/fixtures/make_toxblock_parity.py), and the safety of its pickle loading."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from irlnb.models.toxblock import ENCODER_FILE, HEADS, MODEL_FILE, ToxBlock

FIXTURE = Path(__file__).parent / "fixtures" / "toxblock_parity.json"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def toxblock_dir():
    from irlnb.data.assets import asset_path

    return asset_path("tox-block") / "tox_block" / "trained_models"


@pytest.fixture(scope="module")
def insults_csv():
    from irlnb.data.assets import asset_path

    return asset_path("insults") / "insults" / "data" / "Inputs" / "fulltrain.csv"


@pytest.fixture(scope="module")
def parity() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model(toxblock_dir) -> ToxBlock:
    return ToxBlock.from_dir(toxblock_dir)


@pytest.fixture(scope="module")
def texts(parity, insults_csv) -> list[str]:
    """The fixture texts: csv rows are stored by index only, so they are read from the Kaggle csv."""
    expected = parity["header"]["csv"]["sha256"]
    assert hashlib.sha256(insults_csv.read_bytes()).hexdigest() == expected, f"{insults_csv} is not the fixture's csv"
    comments = pd.read_csv(insults_csv)["Comment"]
    return [comments[item["csv_row"]] if "csv_row" in item else item["text"] for item in parity["items"]]


def test_fixture_is_for_this_model(parity):
    from irlnb.data.assets import ARCHIVES

    assert tuple(parity["header"]["heads"]) == HEADS
    assert parity["header"]["wheel"]["sha256"] == ARCHIVES["tox-block"].sha256
    assert len(parity["items"]) >= 250


def test_encoding_equals_keras(model, parity, texts):
    ids = model.encode(texts)
    assert ids.shape == (len(texts), 100)
    wrong = []
    for item, row in zip(parity["items"], ids.tolist()):
        if "token_ids" in item:
            same = row == item["token_ids"]
        else:  # csv rows: only a digest of the ids is stored (they would spell out the comment)
            same = hashlib.sha256(",".join(map(str, row)).encode()).hexdigest() == item["token_ids_sha256"]
        if not same:
            wrong.append(item.get("csv_row", item.get("name")))
    assert not wrong, f"token ids differ from Keras for {len(wrong)} texts: {wrong[:10]}"


def test_probabilities_equal_keras(model, parity, texts):
    proba = model.predict_proba(texts)
    expected = np.array([item["proba"] for item in parity["items"]])
    assert proba.shape == (len(texts), len(HEADS)) and proba.dtype == np.float32
    diff = np.abs(proba - expected)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= TOLERANCE, f"max abs diff {diff.max():.3g} at item {worst[0]}, head {HEADS[worst[1]]}"


def test_batching_and_forward_agree(model, texts):
    full = model.predict_proba(texts)
    assert np.allclose(model.predict_proba(texts, batch_size=7), full, rtol=0, atol=1e-6)
    assert np.allclose(model(model.encode(texts[:5])).detach().numpy(), full[:5], rtol=0, atol=1e-6)
    assert model.predict_proba([]).shape == (0, len(HEADS))


def test_non_str_text_is_refused(model):
    with pytest.raises(TypeError, match="index 1"):
        model.encode(["fine", None])
    with pytest.raises(TypeError, match="single str"):
        model.predict_proba("not a list")


class _Exploit:
    """Pickles as a call of `func(arg)`: what a tampered encoder file would contain."""

    def __init__(self, func, arg: str):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, builtins.exec], ids=["os.system", "exec"])
def test_unpickler_refuses_foreign_globals(tmp_path, func):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    (tmp_path / ENCODER_FILE).write_bytes(pickle.dumps(_Exploit(func, command)))
    (tmp_path / MODEL_FILE).write_bytes(b"")  # never read: the encoder is loaded first
    with pytest.raises(pickle.UnpicklingError, match=func.__name__):
        ToxBlock.from_dir(tmp_path)
    assert not marker.exists()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / MODEL_FILE))):
        ToxBlock.from_dir(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / ENCODER_FILE))):
        ToxBlock.from_dir(tmp_path)
