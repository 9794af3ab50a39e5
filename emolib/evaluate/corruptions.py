"""Seeded corruptions of the raw inputs a deployed system sees, applied to cache records (``emolib.data.cache.Record``).

Peer toolkits (MultiBench's ``robustness.py``, the MER2023/24 noise tracks) corrupt precomputed features. emolib
keeps the raw media in its cache (face crops as uint8 pixels, the 16 kHz waveform, the transcript), so it corrupts
those, before any model-specific preprocessing, and every model sees the same corrupted utterance.

Every corruption has three severities (index 1, 2, 3; 0 is the identity) and draws its randomness from a generator
seeded by (utterance id, corruption name, ``seed``) only, never by the severity or the model. So a model sees exactly
the inputs every other model sees, and the severities are nested wherever that makes sense: the same noise draw at
a growing amplitude, the same word order of dropping, the same frame order of dropping, boxes that grow around the
same centre.

=================  ===============================  ==========================================================
corruption         severities 1 / 2 / 3             what it does
=================  ===============================  ==========================================================
``audio-noise``    SNR 20 / 10 / 0 dB               white Gaussian noise at that SNR relative to the utterance's
                                                    mean power; the result is rounded and clipped to int16 as
                                                    the cache stores audio
``face-blur``      sigma 1 / 2 / 4 px (at 48 px)    Gaussian blur of every face crop; sigma scales with the
                                                    crop side (48 px is the FE2E/FV2ES model input)
``face-jpeg``      quality 30 / 15 / 5              JPEG round trip of every face crop (PIL, 4:2:0)
``occlude-eyes``   box height 15 / 25 / 35 %        a black box across the eye band of every crop (centre at
                                                    38 % of the crop height, 80 % of its width)
``occlude-mouth``  box height 15 / 25 / 35 %        the same box across the mouth band (centre at 75 %)
``frame-drop``     25 / 50 / 75 % of the frames     sampled frames removed (faces, confidences, boxes, times);
                                                    at least one frame is kept
``word-dropout``   10 / 30 / 50 % of the words      whitespace-separated words removed from the transcript
=================  ===============================  ==========================================================

The band positions assume MTCNN crops (face box plus a small margin), where the eyes sit a little above the middle
and the mouth in the lower quarter; ``face_band_preview`` draws the boxes on real crops so this can be checked.

``remove_modalities`` is the missing-modality condition: faces, audio or text replaced by nothing (no frames, an
empty waveform, an empty transcript); what that means inside each model is in ``emolib.evaluate.robustness``.
"""

from __future__ import annotations

import dataclasses
import io
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from emolib.data.cache import Record

MODALITIES = ("audio", "visual", "text")
_INT16 = 32768.0


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``levels[k - 1]`` is the parameter of severity k (1..3)."""

    name: str
    modality: str  # the input it touches: audio | visual | text
    levels: tuple[float, ...]
    unit: str  # how a level reads (a format string), e.g. "SNR {:g} dB"
    apply: Callable[[Record, float, np.random.Generator], Record]

    def label(self, severity: int) -> str:
        return "clean" if severity == 0 else self.unit.format(self.levels[severity - 1])


def utterance_rng(uid: str, name: str, seed: int = 0) -> np.random.Generator:
    """The generator of one (utterance, corruption): the same for every model and every severity."""
    key = [int(seed), zlib.crc32(uid.encode("utf-8")), zlib.crc32(name.encode("utf-8"))]
    return np.random.default_rng(np.random.SeedSequence(key))


def _replace(rec: Record, **arrays) -> Record:
    return dataclasses.replace(rec, meta=dict(rec.meta), **arrays)


# ------------------------------------------------------------------------------------------------ audio


def audio_noise(rec: Record, snr_db: float, rng: np.random.Generator) -> Record:
    """White Gaussian noise at ``snr_db`` relative to the utterance's mean power (silence stays silent)."""
    x = rec.audio.astype(np.float64) / _INT16
    noise = rng.standard_normal(x.shape[0])
    power = float(np.mean(x ** 2)) if x.size else 0.0
    y = x + noise * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return _replace(rec, audio=np.clip(np.round(y * _INT16), -_INT16, _INT16 - 1).astype(np.int16))


# ------------------------------------------------------------------------------------------------ faces


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def face_blur(rec: Record, sigma48: float, rng: np.random.Generator) -> Record:
    """Separable Gaussian blur (reflect borders) with sigma ``sigma48`` px at a 48-px crop, scaled to the crop side."""
    faces = rec.faces
    if not len(faces):
        return _replace(rec)
    import torch
    import torch.nn.functional as F

    sigma = sigma48 * faces.shape[1] / 48.0
    k = torch.from_numpy(_gaussian_kernel(sigma)).float()
    r = (len(k) - 1) // 2
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().reshape(-1, 1, *faces.shape[1:3])
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    kh = k[r - pad_h: r + pad_h + 1]
    kw = k[r - pad_w: r + pad_w + 1]
    x = F.conv2d(F.pad(x, (0, 0, pad_h, pad_h), mode="reflect"), (kh / kh.sum()).view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect"), (kw / kw.sum()).view(1, 1, 1, -1))
    out = x.reshape(len(faces), 3, *faces.shape[1:3]).permute(0, 2, 3, 1).round().clamp(0, 255)
    return _replace(rec, faces=out.to(torch.uint8).numpy())


def face_jpeg(rec: Record, quality: float, rng: np.random.Generator) -> Record:
    """Every crop through a JPEG encode/decode at ``quality`` (PIL, baseline, 4:2:0 chroma)."""
    from PIL import Image

    out = np.empty_like(rec.faces)
    for i, face in enumerate(rec.faces):
        buf = io.BytesIO()
        Image.fromarray(face).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return _replace(rec, faces=out)


EYES_CENTRE, MOUTH_CENTRE, BOX_WIDTH = 0.38, 0.75, 0.8


def band_box(side_h: int, side_w: int, centre: float, height: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of a box of ``height`` (fraction of the crop) centred at ``centre``."""
    top = int(round((centre - height / 2) * side_h))
    bottom = int(round((centre + height / 2) * side_h))
    left = int(round((1 - BOX_WIDTH) / 2 * side_w))
    right = int(round((1 + BOX_WIDTH) / 2 * side_w))
    return max(0, top), min(side_h, bottom), max(0, left), min(side_w, right)


def _occlude(centre: float) -> Callable[[Record, float, np.random.Generator], Record]:
    def occlude(rec: Record, height: float, rng: np.random.Generator) -> Record:
        faces = rec.faces.copy()
        if len(faces):
            top, bottom, left, right = band_box(faces.shape[1], faces.shape[2], centre, height)
            faces[:, top:bottom, left:right] = 0
        return _replace(rec, faces=faces)

    return occlude


# ----------------------------------------------------------------------------------------------- frames


def frame_drop(rec: Record, fraction: float, rng: np.random.Generator) -> Record:
    """Remove ``fraction`` of the sampled frames (rounded, at least one kept), in an order fixed per utterance."""
    n = len(rec.faces)
    drop = min(int(round(fraction * n)), max(n - 1, 0))
    order = rng.permutation(n)  # drawn whatever the severity, so the dropped sets are nested
    keep = np.sort(order[drop:])
    return _replace(rec, faces=rec.faces[keep], face_conf=rec.face_conf[keep], face_found=rec.face_found[keep],
                    face_boxes=rec.face_boxes[keep], frame_times=rec.frame_times[keep])


# ------------------------------------------------------------------------------------------------- text


def word_dropout(rec: Record, fraction: float, rng: np.random.Generator) -> Record:
    """Remove ``fraction`` of the transcript's words (rounded), in an order fixed per utterance."""
    words = str(rec.meta.get("text", "")).split()
    drop = int(round(fraction * len(words)))
    order = rng.permutation(len(words))
    keep = sorted(order[drop:].tolist())
    out = _replace(rec)
    out.meta["text"] = " ".join(words[i] for i in keep)
    return out


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("audio-noise", "audio", (20.0, 10.0, 0.0), "SNR {:g} dB", audio_noise),
    Corruption("face-blur", "visual", (1.0, 2.0, 4.0), "blur sigma {:g} px at 48 px", face_blur),
    Corruption("face-jpeg", "visual", (30.0, 15.0, 5.0), "JPEG q{:g}", face_jpeg),
    Corruption("occlude-eyes", "visual", (0.15, 0.25, 0.35), "eye box {:.0%} high", _occlude(EYES_CENTRE)),
    Corruption("occlude-mouth", "visual", (0.15, 0.25, 0.35), "mouth box {:.0%} high", _occlude(MOUTH_CENTRE)),
    Corruption("frame-drop", "visual", (0.25, 0.5, 0.75), "{:.0%} of frames dropped", frame_drop),
    Corruption("word-dropout", "text", (0.1, 0.3, 0.5), "{:.0%} of words dropped", word_dropout),
)}
SEVERITIES = (1, 2, 3)


def get_corruption(name: str) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}") from None


def corrupt(rec: Record, name: str, severity: int, seed: int = 0) -> Record:
    """``rec`` under corruption ``name`` at ``severity`` (0: the record itself, unchanged)."""
    c = get_corruption(name)
    if severity == 0:
        return rec
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 0 (clean) or one of {SEVERITIES}, got {severity!r}")
    return c.apply(rec, c.levels[severity - 1], utterance_rng(rec.uid, name, seed))


# ---------------------------------------------------------------------------------------- missing modalities


def parse_removed(removed: str | Iterable[str]) -> tuple[str, ...]:
    """"audio+text" or ["text", "audio"] -> ("audio", "text") in MODALITIES order; unknown names are an error."""
    names = [m for m in (removed.split("+") if isinstance(removed, str) else removed) if m]
    unknown = sorted(set(names) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
    return tuple(m for m in MODALITIES if m in names)


def remove_modalities(rec: Record, removed: str | Iterable[str]) -> Record:
    """The record with the named modalities absent: no frames, an empty waveform, an empty transcript; its
    ``meta["modalities"]`` no longer names them (``emolib.data.prepare.record_modalities``)."""
    gone = parse_removed(removed)
    arrays = {}
    if "visual" in gone:
        arrays.update(faces=rec.faces[:0], face_conf=rec.face_conf[:0], face_found=rec.face_found[:0],
                      face_boxes=rec.face_boxes[:0], frame_times=rec.frame_times[:0])
    if "audio" in gone:
        arrays["audio"] = rec.audio[:0]
    out = _replace(rec, **arrays)
    if "text" in gone:
        out.meta["text"] = ""
    if gone:  # the item's ``present`` flags (and a "fill" run's placeholders) follow, as for own-data records
        held = out.meta.get("modalities", ("visual", "audio", "text"))
        out.meta["modalities"] = [m for m in held if m not in gone]
    return out


def missing_conditions() -> list[tuple[str, ...]]:
    """Each modality alone, then each pair, removed."""
    from itertools import combinations

    return [c for k in (1, 2) for c in combinations(MODALITIES, k)]


def face_band_preview(faces: np.ndarray, severities: Sequence[int] = SEVERITIES) -> np.ndarray:
    """Crops (N, H, W, 3) with the eye and mouth boxes of ``severities`` outlined (eyes red, mouth blue)."""
    out = faces.copy()
    for severity in severities:
        for centre, colour in ((EYES_CENTRE, (255, 0, 0)), (MOUTH_CENTRE, (0, 0, 255))):
            height = CORRUPTIONS["occlude-eyes"].levels[severity - 1]
            top, bottom, left, right = band_box(out.shape[1], out.shape[2], centre, height)
            bottom, right = max(top, bottom - 1), max(left, right - 1)
            out[:, [top, bottom], left:right + 1] = colour
            out[:, top:bottom + 1, [left, right]] = colour
    return out
