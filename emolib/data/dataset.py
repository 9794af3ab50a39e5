"""torch Dataset and collate over a processed cache, producing the batch contract every model consumes.

Batch keys: ``uid`` (list), ``faces`` uint8 (sum S_i, 3, H, W), ``face_lengths`` (B,), ``face_conf`` (sum S_i,),
``face_boxes`` (sum S_i, 4), ``audio`` float32 (B, T_max) 16 kHz mono zero-padded, ``audio_lengths`` (B,),
``text`` (list), ``labels`` float32 (B, C), ``present`` bool (B, 3): which of visual, audio, text each record
really holds (own data may lack some). Normalisation and spectrograms happen inside the models, as in the
papers; the dataset only selects and resizes frames.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from emolib.data.cache import Cache, Record
from emolib.data.prepare import record_modalities

MODALITIES = ("visual", "audio", "text")  # the order of an item's ``present`` flags

PRELOAD_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class FrameOptions:
    """How frames are chosen and sized per model.

    face_size: resize the cached crops to this side (None: as cached). Resizing uses antialiased bilinear
        interpolation on the uint8 crops.
    max_frames: keep at most this many frames per utterance (None: all).
    select: "uniform" spreads the kept frames over the utterance; "center" keeps consecutive frames centred in
        the utterance (E2EMAL's 16 centred frames).
    """

    face_size: int | None = None
    max_frames: int | None = None
    select: str = "uniform"


# What stands in for a modality a record does not hold when a model is asked to run on it anyway
# (``fill_missing``): one black face frame with confidence 0, silence of one STFT window (25 ms at 16 kHz, the
# shortest audio a record holds) and an empty transcript, the inputs a model sees for a clip without a face,
# a silent clip and a clip without words.
FILL_AUDIO_SAMPLES = 400


class CachedDataset(Dataset):
    """One split of a cache (or the records ``uids`` names) as model inputs.

    ``fill_missing``: records without a modality (own data) get the placeholders above instead of empty inputs;
    every item says which modalities are real in ``present`` (visual, audio, text).
    ``modalities``: the ones the reader uses (a model's ``input_modalities``; None: all). Faces and audio of the
    others are not decoded: their items hold no frames and no samples (``present`` still says what the record
    holds), so that e.g. a text-only run neither decodes nor keeps a single face.
    """

    def __init__(self, cache: Cache | str | Path, split: str | None = None, *, frames: FrameOptions | None = None,
                 preload: bool | None = None, uids: list[str] | None = None, fill_missing: bool = False,
                 modalities: Collection[str] | None = None) -> None:
        self.cache = cache if isinstance(cache, Cache) else Cache(cache)
        self.split = split
        self.frames = frames or FrameOptions()
        self.fill_missing = fill_missing
        unknown = set(modalities or ()) - set(MODALITIES)
        if unknown:
            raise ValueError(f"modalities must be a subset of {MODALITIES}, got {sorted(unknown)}")
        self.modalities = None if modalities is None else tuple(m for m in MODALITIES if m in modalities)
        if self.frames.select not in ("uniform", "center"):
            raise ValueError(f"FrameOptions.select must be 'uniform' or 'center', got {self.frames.select!r}")
        self.uids = list(uids) if uids is not None else self.cache.uids(split)
        if not self.uids:
            raise ValueError(f"{self.cache.root}: no utterances in split {split!r} "
                             f"(splits: {self.cache.provenance.get('splits')})")
        if preload is None:
            preload = self.decoded_bytes() <= PRELOAD_LIMIT_BYTES
        # Preloading keeps a CPU training step from waiting on disk and decompression.
        self._items = [self._make_item(u) for u in self.uids] if preload else None

    def decoded_bytes(self) -> int:
        """Memory the items take once decoded (faces at their model size, float32 audio); records on disk are
        smaller (JPEG faces, FLAC audio, deflate), so the preloading decision is made on this."""
        side = self.frames.face_size or int(self.cache.provenance.get("parameters", {}).get("face_size", 224))
        total = 0
        for u in self.uids:
            meta = self.cache.meta(u)
            n = meta.get("n_frames", 0) if self.reads("visual") else 0
            if self.frames.max_frames is not None:
                n = min(n, self.frames.max_frames)
            total += n * side * side * 3 + (4 * meta.get("n_samples", 0) if self.reads("audio") else 0)
        return total

    def reads(self, modality: str) -> bool:
        """Whether items hold ``modality``'s inputs (see ``modalities``)."""
        return self.modalities is None or modality in self.modalities

    @property
    def task(self) -> str:
        return self.cache.task

    @property
    def label_names(self) -> list[str]:
        return self.cache.label_names

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([self.cache.meta(u)["labels"] for u in self.uids], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._items[i] if self._items is not None else self._make_item(self.uids[i])

    def _make_item(self, uid: str) -> dict[str, Any]:
        return record_item(self.cache.load(uid, self.modalities), self.frames, self.fill_missing)


def record_item(rec: Record, frames: FrameOptions, fill_missing: bool = False) -> dict[str, Any]:
    """A dataset item (``collate``'s input) from a cache-format record: frames selected and resized as
    ``frames`` says, ``present`` flags, and with ``fill_missing`` placeholders for a missing face track or audio.
    Also serves records without frames (robustness conditions, raw-video prediction)."""
    keep = select_frames(len(rec.faces), frames.max_frames, frames.select)
    # all frames: no indexing copy (a JPEG record's faces are a channels-first buffer, so no copy at all)
    kept = rec.faces if len(keep) == len(rec.faces) else rec.faces[keep]
    faces = torch.from_numpy(kept).permute(0, 3, 1, 2).contiguous()
    if frames.face_size is not None and faces.shape[-1] != frames.face_size:
        faces = (resize_faces(faces, frames.face_size) if len(faces)
                 else faces.new_zeros((0, 3, frames.face_size, frames.face_size)))
    item = {"uid": rec.uid, "faces": faces, "face_conf": torch.from_numpy(rec.face_conf[keep]),
            "face_boxes": torch.from_numpy(rec.face_boxes[keep]), "audio": torch.from_numpy(rec.audio_float()),
            "text": rec.meta["text"], "labels": torch.from_numpy(rec.labels)}
    present = record_modalities(rec.meta)
    item["present"] = torch.tensor([m in present for m in MODALITIES])
    if fill_missing:
        if "visual" not in present:
            side = faces.shape[-1]
            item.update(faces=torch.zeros(1, 3, side, side, dtype=torch.uint8), face_conf=torch.zeros(1),
                        face_boxes=torch.full((1, 4), float("nan")))
        if "audio" not in present:
            item["audio"] = torch.zeros(FILL_AUDIO_SAMPLES)
    return item


def select_frames(n: int, max_frames: int | None, mode: str) -> np.ndarray:
    if max_frames is None or n <= max_frames:
        return np.arange(n)
    if mode == "center":
        start = (n - max_frames) // 2
        return np.arange(start, start + max_frames)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))


def resize_faces(faces: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(faces.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    audio_lengths = torch.tensor([it["audio"].shape[0] for it in items], dtype=torch.long)
    audio = torch.zeros(len(items), int(audio_lengths.max()), dtype=torch.float32)
    for i, it in enumerate(items):
        audio[i, : it["audio"].shape[0]] = it["audio"]
    return {
        "uid": [it["uid"] for it in items],
        "faces": torch.cat([it["faces"] for it in items]),
        "face_lengths": torch.tensor([it["faces"].shape[0] for it in items], dtype=torch.long),
        "face_conf": torch.cat([it["face_conf"] for it in items]),
        "face_boxes": torch.cat([it["face_boxes"] for it in items]),
        "audio": audio,
        "audio_lengths": audio_lengths,
        "text": [it["text"] for it in items],
        "labels": torch.stack([it["labels"] for it in items]),
        **({"present": torch.stack([it["present"] for it in items])} if all("present" in it for it in items) else {}),
    }
