"""Step 1 of the paper: labelled comments -> balanced prompts with their original continuations.

Each comment is cut at a word boundary into a `prompt` (its first words) and the `continuation`
that the human wrote after it, so that `prompt + continuation == text` exactly. Comments are
assigned to train / validation / test splits (stratified by label, fixed seed) before anything
else sees them, so no comment is in two splits.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from irlnb import metric_names
from irlnb.config import CurateSettings
from irlnb.data.insults import read_insults
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout
from irlnb.metric_names import SPLITS
from irlnb.sources import hub_snapshot, parse_source


class CurateError(IrlnbError, ValueError):
    """Data that cannot be curated as asked; the message is one line."""


def load_comments(spec: str, text_column: str, label_column: str) -> pd.DataFrame:
    """Labelled comments from a prompts source, as columns text, label, source_row.

    A data set that is already cut into prompts (the paper's `jaredjoss/jigsaw-long-2000`, with
    `prompt` and `original_output`) keeps its cut: the frame then also has prompt and continuation.
    """
    source = parse_source(spec, "prompts")
    if source.scheme == "embedded":
        return read_insults()
    # A hub data set is read from its local snapshot: when only the cache has it, nothing goes online.
    path = hub_snapshot(source) if source.scheme == "hub" else Path(source.name)
    frame = _read_local_table(path)
    return _normalise_columns(frame, spec, text_column, label_column)


def _read_local_table(path: Path) -> pd.DataFrame:
    """A csv/jsonl/parquet file, a `save_to_disk` folder, or a data set repository's files (a hub snapshot)."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
        parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
        return pd.concat([part.to_pandas() for part in parts], ignore_index=True)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}
    if path.suffix not in readers:
        raise CurateError(f"{path}: expected a .csv, .jsonl or .parquet file or a saved datasets folder")
    return readers[path.suffix](path)


def _normalise_columns(frame: pd.DataFrame, spec: str, text_column: str, label_column: str) -> pd.DataFrame:
    presplit = {"prompt", "original_output"} <= set(frame.columns)
    needed = [label_column] + ([] if presplit else [text_column])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise CurateError(
            f"{spec}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))}); "
            "set curate.text_column / curate.label_column"
        )
    labels = pd.to_numeric(frame[label_column], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise CurateError(f"{spec}: column {label_column!r} must hold 0/1 labels")
    out = pd.DataFrame({"label": labels.astype(int), "source_row": np.arange(len(frame))})
    if presplit:
        out["prompt"] = frame["prompt"].astype(str)
        out["continuation"] = frame["original_output"].astype(str)
        out["text"] = out["prompt"] + out["continuation"]
    else:
        out["text"] = frame[text_column].astype(str).map(lambda t: " ".join(t.split()))
    return out


# --------------------------------------------------------------------------------------------
# Curation


def split_prompt(
    text: str, prompt_fraction: float, min_prompt_words: int, min_continuation_words: int
) -> tuple[str, str]:
    """Cut `text` after a whole word: (prompt, continuation), with prompt + continuation == text."""
    words = list(re.finditer(r"\S+", text))
    n = len(words)
    if n < min_prompt_words + min_continuation_words:
        raise CurateError(
            f"a comment of {n} words cannot give {min_prompt_words} prompt words and "
            f"{min_continuation_words} continuation words"
        )
    k = min(max(round(prompt_fraction * n), min_prompt_words), n - min_continuation_words)
    cut = words[k - 1].end()
    return text[:cut], text[cut:]


def select_comments(comments: pd.DataFrame, settings: CurateSettings, seed: int) -> pd.DataFrame:
    """Drop empty and duplicate comments, keep those within the word range, sample a balanced set."""
    frame = comments.copy()
    frame["n_words"] = frame["text"].str.split().str.len()
    frame = frame[frame["n_words"] > 0]
    # Duplicates (same text up to case) would leak between splits: keep the first of each.
    frame = frame[~frame["text"].str.lower().duplicated(keep="first")]
    frame = frame[(frame["n_words"] >= settings.min_words) & (frame["n_words"] <= settings.max_words)]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (1, 0):
        pool = frame[frame["label"] == label]
        if len(pool) < settings.n_per_class:
            kind = "toxic" if label else "non-toxic"
            raise CurateError(
                f"only {len(pool)} {kind} comments have {settings.min_words}-{settings.max_words} "
                f"words; lower curate.n_per_class ({settings.n_per_class}) or widen the word range"
            )
        chosen.append(pool.iloc[rng.permutation(len(pool))[: settings.n_per_class]])
    return pd.concat(chosen, ignore_index=True)


def assign_splits(labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """A split name per item, stratified by label so every split keeps the class balance."""
    rng = np.random.default_rng(seed)
    splits = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(validation_fraction * len(index))
        n_test = round(test_fraction * len(index))
        splits[index[:n_test]] = "test"
        splits[index[n_test : n_test + n_val]] = "validation"
        splits[index[n_test + n_val :]] = "train"
    return splits


def curate(comments: pd.DataFrame, settings: CurateSettings, seed: int) -> pd.DataFrame:
    """Balanced comments cut into prompt + continuation, with a `split` column and a stable `id`."""
    chosen = select_comments(comments, settings, seed)
    if "prompt" not in chosen.columns:
        cuts = [
            split_prompt(t, settings.prompt_fraction, settings.min_prompt_words, settings.min_continuation_words)
            for t in chosen["text"]
        ]
        chosen["prompt"] = [p for p, _ in cuts]
        chosen["continuation"] = [c for _, c in cuts]
    chosen["split"] = assign_splits(
        chosen["label"].to_numpy(), settings.validation_fraction, settings.test_fraction, seed
    )
    chosen = chosen.sort_values(["split", "source_row"]).reset_index(drop=True)
    chosen.insert(0, "id", [f"c{row:05d}" for row in chosen["source_row"]])
    chosen["prompt_words"] = chosen["prompt"].str.split().str.len()
    chosen["continuation_words"] = chosen["continuation"].str.split().str.len()
    return chosen[
        [
            "id",
            "split",
            "label",
            "text",
            "prompt",
            "continuation",
            "n_words",
            "prompt_words",
            "continuation_words",
            "source_row",
        ]
    ]


def save_curated(curated: pd.DataFrame, layout: RunLayout) -> Path:
    """The curated frame as a `datasets.DatasetDict` (one dataset per split) in the run directory."""
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(
                curated[curated["split"] == split].drop(columns="split"), preserve_index=False
            )
            for split in SPLITS
        }
    )
    dataset.save_to_disk(str(layout.curated))
    return layout.curated


def load_curated(layout: RunLayout) -> pd.DataFrame:
    """The curated comments saved by notebook 01, as one frame with a `split` column."""
    path = layout.curated
    if not path.is_dir():
        raise CurateError(f"{path}: no curated data set; run stage 01_curate first")
    loaded = datasets.load_from_disk(str(path))
    return pd.concat([loaded[s].to_pandas().assign(split=s) for s in SPLITS], ignore_index=True)


def summary_metrics(curated: pd.DataFrame) -> dict[str, float]:
    """curate.* keys for metrics.json: split sizes, balance and lengths."""
    values = {metric_names.split_size(split): float((curated["split"] == split).sum()) for split in SPLITS}
    values[metric_names.TOXIC_SHARE] = float(curated["label"].mean())
    for column in ("n_words", "prompt_words", "continuation_words"):
        values[metric_names.length_median(column)] = float(curated[column].median())
    return values
