"""The processed cache: one record per utterance, an index and a provenance file.

Layout of a cache folder (one per dataset and parameter set)::

    <cache>/
      utterances/<uid>.npz     faces uint8 (S,H,W,3), face_conf float32 (S,), face_found bool (S,),
                               face_boxes float32 (S,4), frame_times float32 (S,) [s from utterance start],
                               audio int16 (T,) [16 kHz mono], labels float32 (C,)
      utterances/<uid>.json    metadata of the record (uid, split, text, labels, source files, counts, fallbacks,
                               source_key: the hash of what it was built from); written after the .npz, so its
                               presence marks the utterance as finished
      index.jsonl              one metadata line per utterance, sorted by uid (rebuilt from the .json files)
      provenance.json          parameters, versions, face statistics, sources with sizes and checksums,
                               skipped utterances with reasons, code version
      timing.json              seconds and utterances of the invocation that finished the cache (cost estimates;
                               the one file that is not deterministic, so it is not part of the cache's content)

Records are written atomically and byte-deterministically (fixed zip timestamps), so an interrupted and resumed
``prepare`` produces the same files as an uninterrupted one (``timing.json`` aside).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emolib.io import atomic_path, read_json, write_json, write_text

RECORD_ARRAYS = ("faces", "face_conf", "face_found", "face_boxes", "frame_times", "audio", "labels")
CACHE_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class CacheError(Exception):
    """A cache folder is missing, incomplete or inconsistent; the message names the path."""


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-identical for identical arrays (no wall-clock zip timestamps)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())


@dataclass
class Record:
    """One utterance as stored in the cache."""

    meta: dict[str, Any]
    faces: np.ndarray
    face_conf: np.ndarray
    face_found: np.ndarray
    face_boxes: np.ndarray
    frame_times: np.ndarray
    audio: np.ndarray
    labels: np.ndarray

    @property
    def uid(self) -> str:
        return self.meta["uid"]

    def audio_float(self) -> np.ndarray:
        return self.audio.astype(np.float32) / 32768.0


class CacheWriter:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.utt_dir = self.root / "utterances"
        self.utt_dir.mkdir(parents=True, exist_ok=True)

    def done(self, uid: str) -> bool:
        return (self.utt_dir / f"{uid}.json").is_file() and (self.utt_dir / f"{uid}.npz").is_file()

    def write(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        missing = set(RECORD_ARRAYS) - set(arrays)
        if missing:
            raise ValueError(f"record {meta.get('uid')}: missing arrays {sorted(missing)}")
        uid = meta["uid"]
        write_npz(self.utt_dir / f"{uid}.npz", {k: arrays[k] for k in RECORD_ARRAYS})
        write_json(self.utt_dir / f"{uid}.json", meta)

    def finished_metas(self) -> list[dict[str, Any]]:
        metas = []
        for p in sorted(self.utt_dir.glob("*.json")):
            if (p.with_suffix(".npz")).is_file():
                metas.append(read_json(p))
        return sorted(metas, key=lambda m: m["uid"])

    def write_index(self, metas: list[dict[str, Any]]) -> Path:
        path = self.root / "index.jsonl"
        write_text(path, "".join(json.dumps(m, sort_keys=True, ensure_ascii=False) + "\n" for m in metas))
        return path

    def write_timing(self, seconds: float, utterances: int) -> Path:
        path = self.root / TIMING_FILE
        write_json(path, {"seconds": seconds, "utterances_processed": utterances})
        return path

    def write_provenance(self, provenance: dict[str, Any]) -> Path:
        path = self.root / "provenance.json"
        write_json(path, {"cache_version": CACHE_VERSION, **provenance})
        return path


TIMING_FILE = "timing.json"


class Cache:
    """Read access to a finished cache folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / "index.jsonl"
        if not index.is_file():
            raise CacheError(f"{self.root}: not a finished emolib cache (no index.jsonl; run prepare first)")
        self.index = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        prov = self.root / "provenance.json"
        self.provenance = read_json(prov) if prov.is_file() else {}
        self._by_uid = {m["uid"]: m for m in self.index}

    @property
    def label_names(self) -> list[str]:
        return list(self.provenance.get("label_names", []))

    @property
    def task(self) -> str:
        return self.provenance.get("task", "multilabel")

    @property
    def dataset(self) -> str:
        return self.provenance.get("dataset", "")

    @property
    def display_name(self) -> str:
        """Dataset name for records and tables: synthetic copies never pass for the real data."""
        name = self.provenance.get("name") or self.dataset  # own data: the CSV's name (one table per CSV)
        return f"synthetic-{name}" if self.provenance.get("synthetic") else name

    def modality_counts(self) -> dict[str, int]:
        """How many records hold each modality ("visual", "audio", "text")."""
        from emolib.data.prepare import modality_counts

        return modality_counts(self.index)

    def uids(self, split: str | None = None) -> list[str]:
        return [m["uid"] for m in self.index if split is None or m.get("split") == split]

    def meta(self, uid: str) -> dict[str, Any]:
        return self._by_uid[uid]

    def load(self, uid: str) -> Record:
        path = self.root / "utterances" / f"{uid}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in RECORD_ARRAYS}
        except FileNotFoundError:
            raise CacheError(f"{path}: record listed in the index is missing") from None
        except (zipfile.BadZipFile, ValueError, KeyError) as err:
            raise CacheError(f"{path}: damaged record ({err})") from None
        return Record(meta=self._by_uid[uid], **arrays)

    def __iter__(self) -> Iterator[Record]:
        for m in self.index:
            yield self.load(m["uid"])

    def __len__(self) -> int:
        return len(self.index)
