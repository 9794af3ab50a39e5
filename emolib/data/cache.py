"""The processed cache: one record per utterance, an index and a provenance file.

Layout of a cache folder (one per dataset and parameter set)::

    <cache>/
      utterances/<uid>.npz     a zip of npy arrays: face_conf float32 (S,), face_found bool (S,), face_boxes
                               float32 (S,4), frame_times float32 (S,) [s from utterance start], labels float32
                               (C,), and the faces and the audio in the encoding the cache was prepared with:
                               faces: ``faces`` uint8 (S,H,W,3) (codec "raw") or ``faces_jpeg`` (the S JPEG
                               files one after another, uint8) + ``faces_jpeg_sizes`` int64 (S,) + ``faces_shape``
                               int64 (4,) (codec "jpeg"); audio [16 kHz mono]: ``audio`` int16 (T,) ("raw") or
                               ``audio_flac`` (one FLAC file, uint8; lossless) ("flac")
      utterances/<uid>.json    metadata of the record (uid, split, text, labels, source files, counts, fallbacks,
                               source_key: the hash of what it was built from); written after the .npz, so its
                               presence marks the utterance as finished
      index.jsonl              one metadata line per utterance, sorted by uid (rebuilt from the .json files)
      provenance.json          parameters (the encoding among them), versions, face statistics, sources with
                               sizes and checksums, skipped utterances with reasons, code version
      timing.json              seconds and utterances of the invocation that finished the cache (cost estimates;
                               the one file that is not deterministic, so it is not part of the cache's content)

Records are written atomically and byte-deterministically (fixed zip timestamps; the JPEG and FLAC encoders are
deterministic for one libjpeg / libFLAC build), so an interrupted and resumed ``prepare`` produces the same files
as an uninterrupted one (``timing.json`` aside).

Reading decodes transparently: :meth:`Cache.load` returns faces as uint8 (S,H,W,3) and audio as int16 whatever
the encoding, and it tells the encoding from the members a record holds, so caches of format version 1 (raw
arrays only, before the encodings existed) load unchanged. The JPEG face codec is lossy: the faces a record
returns are the decoded JPEGs, and ``emolib.data.prepare.process_chunk`` returns the same decoded faces, so what
a model sees in training and in ``emolib predict`` is identical.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emolib.io import atomic_path, read_json, write_json, write_text

RECORD_ARRAYS = ("faces", "face_conf", "face_found", "face_boxes", "frame_times", "audio", "labels")
FRAME_ARRAYS = ("face_conf", "face_found", "face_boxes", "frame_times")  # one entry per sampled frame, as faces
# 1: raw arrays only. 2: faces and audio in the encoding of the prepare parameters (face_codec, audio_codec);
# version-1 records are still read (their members are version 2's "raw" encoding).
CACHE_VERSION = 2
FACE_CODECS = ("raw", "jpeg")
AUDIO_CODECS = ("raw", "flac")
# Members that hold already compressed bytes: stored in the zip as they are (deflating them again gains nothing).
_STORED_MEMBERS = ("faces_jpeg", "audio_flac")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SAMPLE_RATE = 16000


class CacheError(Exception):
    """A cache folder is missing, incomplete or inconsistent; the message names the path."""


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-identical for identical arrays (no wall-clock zip timestamps);
    members named in ``_STORED_MEMBERS`` (encoded bytes) are stored without deflate."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED if name in _STORED_MEMBERS else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())


# ----------------------------------------------------------------------------------------------- encodings


@dataclass(frozen=True)
class Encoding:
    """How a record stores its faces and audio (``PrepareParams.face_codec``, ``face_quality``, ``audio_codec``).

    face_codec "jpeg": each face crop a baseline JPEG of Pillow's libjpeg at ``face_quality`` (4:2:0 chroma,
    optimised Huffman tables): lossy. "raw": the uint8 array, deflated (lossless; format version 1's only form).
    audio_codec "flac": the int16 samples as one FLAC file (libsndfile; lossless). "raw": the int16 array,
    deflated."""

    face_codec: str = "raw"
    face_quality: int = 90
    audio_codec: str = "raw"

    def __post_init__(self) -> None:
        check_encoding(self.face_codec, self.face_quality, self.audio_codec)

    @property
    def lossy(self) -> bool:
        return self.face_codec == "jpeg"


def check_encoding(face_codec: str, face_quality: int, audio_codec: str) -> None:
    if face_codec not in FACE_CODECS:
        raise ValueError(f"face_codec must be one of {FACE_CODECS}, got {face_codec!r}")
    if audio_codec not in AUDIO_CODECS:
        raise ValueError(f"audio_codec must be one of {AUDIO_CODECS}, got {audio_codec!r}")
    if isinstance(face_quality, bool) or not isinstance(face_quality, int) or not 1 <= face_quality <= 100:
        raise ValueError(f"face_quality must be an integer from 1 to 100, got {face_quality!r}")


def encode_faces(faces: np.ndarray, quality: int) -> dict[str, np.ndarray]:
    """The "jpeg" members of uint8 (S,H,W,3) faces: the S JPEG files concatenated, their sizes and the shape."""
    from PIL import Image

    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3:
        raise ValueError(f"faces must be uint8 (S, H, W, 3), got {faces.dtype} {faces.shape}")
    files = []
    for face in faces:
        buf = io.BytesIO()
        Image.fromarray(face).save(buf, format="JPEG", quality=quality, optimize=True)
        files.append(buf.getvalue())
    return {"faces_jpeg": np.frombuffer(b"".join(files), dtype=np.uint8),
            "faces_jpeg_sizes": np.asarray([len(f) for f in files], dtype=np.int64),
            "faces_shape": np.asarray(faces.shape, dtype=np.int64)}


def decode_faces(members: Any, keep: np.ndarray | None = None) -> np.ndarray:
    """uint8 (S,H,W,3) faces of a record's members in either encoding (``keep``: only these frames, in order).

    JPEGs are decoded by torchvision's libjpeg-turbo in one batched call (faster per face than Pillow's); every
    path that reads faces back (``Cache.load``, ``encoded_arrays`` for prepare and predict) decodes here."""
    if "faces" in members:
        faces = members["faces"]
        return faces if keep is None else faces[keep]
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    shape = tuple(int(v) for v in members["faces_shape"])
    data = members["faces_jpeg"]
    data = torch.from_numpy(data if data.flags.writeable else data.copy())
    sizes = [int(v) for v in members["faces_jpeg_sizes"]]
    if len(sizes) != shape[0] or sum(sizes) != len(data):
        raise ValueError(f"faces_jpeg holds {len(data)} bytes in {len(sizes)} files for {shape[0]} faces")
    files = torch.split(data, sizes)
    index = range(shape[0]) if keep is None else [int(i) for i in keep]
    if not index:
        return np.zeros((0, *shape[1:]), np.uint8)
    out = decode_jpeg([files[i] for i in index], mode=ImageReadMode.RGB)
    faces = torch.stack(out).permute(0, 2, 3, 1)
    if tuple(faces.shape[1:]) != shape[1:]:
        raise ValueError(f"faces_jpeg decodes to {tuple(faces.shape[1:])}, expected {shape[1:]}")
    # an (S,H,W,3) view of the decoder's (S,3,H,W) memory: no transposing copy (models read channels first)
    return faces.numpy()


def encode_audio(audio: np.ndarray) -> dict[str, np.ndarray]:
    """The "flac" member of int16 (T,) audio (no bytes for no samples: FLAC cannot hold an empty stream)."""
    import soundfile

    audio = np.asarray(audio)
    if audio.dtype != np.int16 or audio.ndim != 1:
        raise ValueError(f"audio must be int16 (T,), got {audio.dtype} {audio.shape}")
    buf = io.BytesIO()
    if len(audio):
        soundfile.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {"audio_flac": np.frombuffer(buf.getvalue(), dtype=np.uint8)}


def decode_audio(members: Any) -> np.ndarray:
    """int16 (T,) audio of a record's members in either encoding."""
    if "audio" in members:
        return members["audio"]
    import soundfile

    data = members["audio_flac"].tobytes()
    if not data:
        return np.zeros(0, np.int16)
    audio, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=False)
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"audio_flac: {rate} Hz, {audio.ndim} dimensions; expected {SAMPLE_RATE} Hz mono")
    return audio


def encode_record(arrays: dict[str, np.ndarray], encoding: Encoding) -> dict[str, np.ndarray]:
    """The zip members of a record's arrays (RECORD_ARRAYS) in ``encoding``."""
    members = {k: arrays[k] for k in RECORD_ARRAYS if k not in ("faces", "audio")}
    members.update(encode_faces(arrays["faces"], encoding.face_quality) if encoding.face_codec == "jpeg"
                   else {"faces": arrays["faces"]})
    members.update(encode_audio(arrays["audio"]) if encoding.audio_codec == "flac" else {"audio": arrays["audio"]})
    return members


def decode_record(members: Any, modalities: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays (RECORD_ARRAYS) of a record's members, in whichever encoding each is stored.

    ``modalities``: decode only these of "visual" and "audio" (None: both). The face track of an undecoded
    visual modality comes back with no frames (its per-frame arrays too), undecoded audio with no samples: what
    a reader that never looks at them needs, without the JPEG and FLAC decoding."""
    arrays = {k: members[k] for k in RECORD_ARRAYS if k not in ("faces", "audio")}
    if modalities is None or "visual" in modalities:
        arrays["faces"] = decode_faces(members)
    else:
        shape = tuple(int(v) for v in members["faces_shape"]) if "faces_shape" in members else _raw_shape(members)
        arrays["faces"] = np.zeros((0, *shape[1:]), np.uint8)
        arrays.update({k: arrays[k][:0] for k in FRAME_ARRAYS})
    arrays["audio"] = decode_audio(members) if modalities is None or "audio" in modalities else np.zeros(0, np.int16)
    return arrays


def _raw_shape(members: Any) -> tuple[int, ...]:
    """The shape of raw "faces" from the .npy header of an opened npz, without inflating the array."""
    zf = getattr(members, "zip", None)
    if zf is None:
        return tuple(members["faces"].shape)
    with zf.open("faces.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


class RecordArrays(dict):
    """A record's arrays (RECORD_ARRAYS, as a model sees them) together with their encoded zip ``members``, so
    that the writer stores the very bytes the arrays were decoded from instead of encoding them again."""

    def __init__(self, arrays: dict[str, np.ndarray], members: dict[str, np.ndarray]) -> None:
        super().__init__(arrays)
        self.members = members


def encoded_arrays(arrays: dict[str, np.ndarray], encoding: Encoding) -> RecordArrays:
    """``arrays`` encoded, with faces replaced by their decoded JPEGs when the face codec is lossy: what
    :meth:`Cache.load` will return for the record."""
    members = encode_record(arrays, encoding)
    if encoding.lossy:
        arrays = {**arrays, "faces": decode_faces(members)}
    return RecordArrays(arrays, members)


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

    def write(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], encoding: Encoding | None = None) -> None:
        """Store one record: ``arrays`` (RECORD_ARRAYS) in ``encoding`` (None: raw), or, for ``RecordArrays``,
        the members they carry."""
        missing = set(RECORD_ARRAYS) - set(arrays)
        if missing:
            raise ValueError(f"record {meta.get('uid')}: missing arrays {sorted(missing)}")
        uid = meta["uid"]
        members = arrays.members if isinstance(arrays, RecordArrays) else encode_record(arrays, encoding or Encoding())
        write_npz(self.utt_dir / f"{uid}.npz", members)
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
        version = self.provenance.get("cache_version", 1)
        if not isinstance(version, int) or version > CACHE_VERSION:
            raise CacheError(f"{self.root}: cache format version {version!r} is newer than this emolib reads "
                             f"({CACHE_VERSION}); update emolib, or rebuild the cache with `emolib prepare` into a "
                             "new folder")
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

    def load(self, uid: str, modalities: Collection[str] | None = None) -> Record:
        """The record of ``uid``, faces and audio decoded (uint8 faces, int16 audio) whatever their encoding
        (``modalities``: only these, see :func:`decode_record`)."""
        path = self.root / "utterances" / f"{uid}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = decode_record(z, modalities)
        except FileNotFoundError:
            raise CacheError(f"{path}: record listed in the index is missing") from None
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, RuntimeError) as err:
            # RuntimeError: libjpeg cannot read a JPEG, or libsndfile the FLAC
            raise CacheError(f"{path}: damaged record ({err})") from None
        return Record(meta=self._by_uid[uid], **arrays)

    def __iter__(self) -> Iterator[Record]:
        for m in self.index:
            yield self.load(m["uid"])

    def __len__(self) -> int:
        return len(self.index)
