"""Dai et al. (2021)'s published IEMOCAP and CMU-MOSEI split lists, fetched at a pinned commit (never committed here).

Dai, Cahyawijaya, Liu, Fung, "Multimodal End-to-End Sparse Model for Emotion Recognition" (NAACL 2021) publish
their train/valid/test utterance ids in the repository ``wenliangdai/Multimodal-End2end-Sparse``, folder
``data split/`` (with a space). :func:`fetch_dai_splits` downloads the six lists from raw.githubusercontent.com at
:data:`DAI_COMMIT` with the resumable, SHA-256-checking downloader of :mod:`emolib.data.download` and lays them
out in the folder format the adapters read::

    <out>/IEMOCAP_SPLIT/{train,valid,test}_split.txt   -> IEMOCAP ``split_dir=``
    <out>/MOSEI_SPLIT/{train,valid,test}_split.txt     -> CMU-MOSEI ``folds=``

Only the commit, the paths, the SHA-256s and the line counts live in this package; the lists themselves do not.
A file that is already in place with the right hash is kept (so files copied by hand are verified offline by
running the command again).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from emolib.data.download import (
    DEFAULT_TIMEOUT_S,
    ChecksumMismatchError,
    DownloadError,
    Manifest,
    ManifestEntry,
    download,
)

__all__ = [
    "DAI_COMMIT",
    "DAI_DATASETS",
    "DAI_REPO",
    "DAI_SPLIT_FILES",
    "DEFAULT_DAI_SPLITS_DIR",
    "DaiSplitFile",
    "DaiSplitsChecksumError",
    "DaiSplitsUnavailableError",
    "dai_manifest",
    "fetch_dai_splits",
    "manual_instructions",
]

DAI_REPO = "wenliangdai/Multimodal-End2end-Sparse"
DAI_COMMIT = "d9c54550d75bb624da934f120823ddf149910050"  # "Add data splits", 2021-08-13
DAI_SOURCE_FOLDER = "data split"
RAW_BASE_URL = f"https://raw.githubusercontent.com/{DAI_REPO}/{DAI_COMMIT}"

#: Default output folder, relative to the current working directory (the repository root when profiles run).
DEFAULT_DAI_SPLITS_DIR = Path("data/splits/dai")

#: dataset -> (folder in Dai's repository below ``data split/``, folder our adapters read)
DAI_DATASETS = {"iemocap": ("IEMOCAP_split", "IEMOCAP_SPLIT"), "mosei": ("MOSEI_split", "MOSEI_SPLIT")}


@dataclasses.dataclass(frozen=True)
class DaiSplitFile:
    """One published list: ``source`` is its path in Dai's repository, ``target`` its path below the output."""

    dataset: str
    split: str
    sha256: str
    lines: int

    @property
    def source(self) -> str:
        return f"{DAI_SOURCE_FOLDER}/{DAI_DATASETS[self.dataset][0]}/{self.split}_split.txt"

    @property
    def target(self) -> str:
        return f"{DAI_DATASETS[self.dataset][1]}/{self.split}_split.txt"

    def url(self, base_url: str | None = None) -> str:
        base = (base_url or RAW_BASE_URL).rstrip("/")
        return f"{base}/{urllib.parse.quote(self.source)}"


DAI_SPLIT_FILES: tuple[DaiSplitFile, ...] = (
    DaiSplitFile("iemocap", "train", "4bbed431d4cad9545d66a360ac302da217ab360fa7ef33b58b92a9b82eba9b99", 5162),
    DaiSplitFile("iemocap", "valid", "30e2de76d9760099685621e7d84590975b52f1c8800786911c91c123e8677d9f", 737),
    DaiSplitFile("iemocap", "test", "7604ec34399079ea5f6caf6b73eea916ce9b8959a0248fa8d5bd39f2b9a9ac62", 1481),
    DaiSplitFile("mosei", "train", "fdc8022a362564551bc9d480ebf3ddac49887c20b1bec38cf7eeb90d52a2e81d", 14524),
    DaiSplitFile("mosei", "valid", "ecba7540d59d9cee8c296d69d5381ddab70da35533d611b29045cace9b1cca3f", 1765),
    DaiSplitFile("mosei", "test", "cf79da76c8268a893ff13567f573bd20c0486ffd52d15f4bae491da3ae71905d", 4188),
)


class DaiSplitsChecksumError(ChecksumMismatchError):
    """A downloaded list does not have the pinned SHA-256 (nothing was written to its final path)."""

    def __init__(self, path: Path, url: str, expected: str, actual: str) -> None:
        self.path = path
        super().__init__(url, expected, actual)
        self.args = (
            f"{path}: SHA-256 mismatch for {url}: expected {expected}, got {actual}; refusing the file "
            "(nothing was written to that path)",
        )


class DaiSplitsUnavailableError(DownloadError):
    """The lists cannot be downloaded (no network, DNS failure, refused connection, timeout, HTTP error)."""


def _select(datasets: Iterable[str]) -> list[DaiSplitFile]:
    if isinstance(datasets, str):
        datasets = (datasets,)
    wanted = list(dict.fromkeys(datasets))
    unknown = [d for d in wanted if d not in DAI_DATASETS]
    if unknown or not wanted:
        raise ValueError(f"Dai split datasets must be among {', '.join(DAI_DATASETS)}; got {wanted!r}")
    return [f for f in DAI_SPLIT_FILES if f.dataset in wanted]


def dai_manifest(*, datasets: Iterable[str] = tuple(DAI_DATASETS), base_url: str | None = None) -> Manifest:
    """The lists of ``datasets`` as a :class:`~emolib.data.download.Manifest` (names are the output paths)."""
    return Manifest(tuple(ManifestEntry(name=f.target, url=f.url(base_url), sha256=f.sha256)
                          for f in _select(datasets)))


def manual_instructions(out_dir: str | os.PathLike = DEFAULT_DAI_SPLITS_DIR,
                        datasets: Iterable[str] = tuple(DAI_DATASETS)) -> str:
    """How to put the lists in place by hand (the text of :class:`DaiSplitsUnavailableError`)."""
    out = Path(out_dir)
    files = _select(datasets)
    rows = "\n".join(f"  {f.source}  ->  {out / f.target}  (sha256 {f.sha256}, {f.lines} lines)" for f in files)
    return (
        f"To supply them by hand, copy these {len(files)} files of https://github.com/{DAI_REPO} at commit "
        f"{DAI_COMMIT}, folder '{DAI_SOURCE_FOLDER}/' (note the space), byte for byte:\n{rows}\n"
        f"e.g. git clone https://github.com/{DAI_REPO} && git -C Multimodal-End2end-Sparse checkout {DAI_COMMIT}; "
        f"or download https://github.com/{DAI_REPO}/archive/{DAI_COMMIT}.zip. "
        f"The default folder is {DEFAULT_DAI_SPLITS_DIR} (relative to the folder you run from, the repository root "
        f"for the profiles). Then run `emolib download --splits dai --out {out}` again to check the hashes offline. "
        "The data step's split_dir (IEMOCAP) and folds (CMU-MOSEI) can also point at any folder holding "
        "train_split.txt, valid_split.txt and test_split.txt."
    )


def fetch_dai_splits(
    out_dir: str | os.PathLike = DEFAULT_DAI_SPLITS_DIR,
    *,
    datasets: Iterable[str] = tuple(DAI_DATASETS),
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Path]:
    """Download Dai's split lists of ``datasets`` below ``out_dir``; return dataset -> split folder.

    ``base_url`` replaces ``https://raw.githubusercontent.com/<repo>/<commit>`` (the file's repository path,
    URL-encoded, is appended). Each file is written atomically after its SHA-256 is checked; a mismatch raises
    :class:`DaiSplitsChecksumError` and leaves nothing at the final path. When the server cannot be reached,
    :class:`DaiSplitsUnavailableError` says how to supply the files by hand.
    """
    out = Path(out_dir)
    files = _select(datasets)
    manifest = dai_manifest(datasets=[f.dataset for f in files], base_url=base_url)
    for entry in manifest:
        dest = out / entry.name
        try:
            download(entry.url, dest, sha256=entry.sha256, progress=progress, timeout=timeout)
        except ChecksumMismatchError as err:
            raise DaiSplitsChecksumError(dest, err.url, err.expected, err.actual) from None
        except DownloadError as err:
            raise DaiSplitsUnavailableError(
                f"cannot download Dai et al. (2021)'s split lists ({err}).\n"
                + manual_instructions(out, [f.dataset for f in files])
            ) from err
    return {d: out / DAI_DATASETS[d][1] for d in dict.fromkeys(f.dataset for f in files)}
