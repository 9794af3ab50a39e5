"""The preprocessing engine shared by every dataset adapter.

An adapter turns a raw release (real or synthetic, same layout) into a list of ``UtteranceSource``; this module
turns those into the processed cache (see ``emolib.data.cache``):

- video decoded with PyAV in one streaming pass per file and chunk of utterances (never a whole video in memory),
  one frame every ``img_interval`` ms; IEMOCAP frames are split into the speaker's half first;
- faces cropped with facenet-pytorch MTCNN in batches (CUDA when available), a counted fallback crop when no face
  is found;
- 16 kHz mono audio (IEMOCAP: the speaker's channel), stored as int16, each audio file of a chunk decoded once;
- transcript and labels from the adapter;
- records stored in the encoding of ``face_codec`` / ``face_quality`` / ``audio_codec`` (``emolib.data.cache``:
  JPEG faces and FLAC audio by default, or the raw arrays).

Decoding and writing overlap with MTCNN: a worker thread decodes the next chunk and encodes and writes the
previous one while MTCNN runs on the current one, with the same chunks and batches, so the cache is the one a
sequential run (``process_chunk``) gives.

Bad input never stops the whole run. Each problem is either a documented fallback, counted in the provenance and
in the utterance's ``fallbacks`` list, or the utterance is skipped and listed with file and reason:

=====================================  ==========================================================================
problem                                handling
=====================================  ==========================================================================
missing video/audio/image file         skipped ("file not found")
corrupt or truncated video             skipped if no frame of the utterance decodes, else kept with the frames
                                       that did decode (fallback ``video_truncated``)
video without an audio track           skipped unless the adapter names a separate audio file
audio shorter than one STFT frame      zero-padded to ``min_audio_samples`` (fallback ``short_audio``)
empty transcript                       kept with an empty string (fallback ``empty_text``)
non-UTF-8 transcript                   decoded with U+FFFD replacement by the format parser (fallback
                                       ``text_decode``), reported by the adapter
unparsable label line                  the line is skipped by the parser and listed in ``problems``
no face in any frame                   centre fallback crops (fallback ``no_face``; per-frame counts too)
=====================================  ==========================================================================

Resuming: utterances whose record exists and was built from the same source are skipped; work is organised in
fixed chunks of utterances per source file, so a resumed run feeds MTCNN exactly the batches an uninterrupted run
would, and the cache comes out byte-identical. Every record (and every skip note) carries a ``source_key``: a
sha256 over the content of its video/audio/image files and everything the adapter says about the utterance (text,
labels, split, times, channel, ...). A record whose key no longer matches (a regenerated synthetic release, a
corrected label file, a replaced video) is rebuilt and counted as ``rebuilt`` in the report; it is never served
stale. ``shard=(i, n)`` processes every n-th source file, so several processes or GPUs can share the work;
the index and provenance are written by whichever process finds every utterance finished.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emolib.data.cache import CacheError, CacheWriter
from emolib.io import read_json, sha256_file, write_json
from emolib.timing import stage_of

SAMPLE_RATE = 16000


@dataclass
class UtteranceSource:
    """Everything needed to build one cache record, as found by an adapter."""

    uid: str
    labels: Sequence[float]
    text: str
    split: str | None = None
    video: Path | None = None
    audio: Path | None = None  # None: the video's audio track
    start: float = 0.0
    end: float | None = None
    half: str | None = None  # "left" / "right": keep that half of each frame (IEMOCAP's two speakers)
    audio_channel: int | None = None  # pick one channel of a stereo file instead of the mean
    images: tuple[Path, ...] = ()  # frames given as image files (Dai's processed layout, own data)
    image_times: tuple[float, ...] = ()
    fallbacks: tuple[str, ...] = ()  # problems the adapter already handled (e.g. text_decode)
    meta: dict[str, Any] = field(default_factory=dict)
    # The modalities the record holds ("visual", "audio", "text"); None: every one (the datasets' releases). An
    # absent one is stored empty (no frames, no samples, empty text) and listed in the record's ``modalities``.
    modalities: tuple[str, ...] | None = None

    def has(self, modality: str) -> bool:
        return self.modalities is None or modality in self.modalities

    def files(self) -> dict[str, list[str]]:
        """The files the record is built from, by role."""
        roles = {"video": [self.video], "audio": [self.audio], "images": list(self.images)}
        return {role: [str(p) for p in paths if p is not None] for role, paths in roles.items()}

    def source_key(self, file_hash) -> str:
        """sha256 over the content of this utterance's files (``file_hash(path) -> hex``, None for a missing file)
        and every other field that shapes its record; independent of where the release lies."""
        described = {k: v for k, v in asdict(self).items() if k not in ("video", "audio", "images", "uid")}
        described["content"] = {role: [file_hash(p) for p in paths] for role, paths in self.files().items()}
        blob = json.dumps(described, sort_keys=True, default=_plain, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def group(self) -> str:
        """Utterances of one source file are decoded together."""
        if self.video is not None:
            return str(self.video)
        if self.images:
            return str(self.images[0].parent)
        return str(self.audio)


@dataclass
class PrepareParams:
    img_interval: int = 500  # ms between sampled frames (Dai: 500)
    face_size: int = 224  # square crop side stored in the cache (EmoMBT uses 224, resized later)
    face_margin: int = 2  # MTCNN margin in pixels of the output crop (Dai, khanhnd: 2)
    mtcnn_batch: int = 32
    # MTCNN's smallest face in pixels (facenet-pytorch's default 20, which Dai et al. and khanhnd keep). Its image
    # pyramid starts at scale 12 / min_face_size, so the finest (costliest) scales go when faces are known to be
    # larger: the smoke profile uses 60 on the synthetic releases, whose faces are >= ~100 px tall (2-2.3x faster
    # detection on CPU; boxes move by a few pixels, as the refinement starts from other proposals).
    min_face_size: int = 20
    # Detections below are ignored: the stored face is the largest detection at or above it, "no face" when none is.
    # 0: the largest face of any confidence. E2EMAL's caches use 0.65 (th2l/E2EMAL face_extractor.py keeps the
    # largest face among those >= 0.65; emolib.recipes.e2emal.E2EMAL_PREPARE), and its loader drops frames below.
    min_face_conf: float = 0.0
    # Frame preparation before MTCNN. Dai et al. 2021 feed MTCNN IEMOCAP's speaker half centre-cropped to 224 px
    # (preprocess_iemocap.ipynb) and CMU-MOSEI frames halved when taller than 360 px, then centre-cropped to 360
    # (src/datasets.py MOSEI.__getitem__); None leaves the frames whole (emolib's default before the Dai recipe).
    frame_halve_above: int | None = None  # halve (bilinear) frames taller than this many pixels
    frame_center_crop: int | None = None  # centre square of this side (zero-padded where a frame is smaller)
    # facenet's margin is in pixels of its output crop: Dai's MTCNN(image_size=48, margin=2) grows the box by
    # 2/46 of its size. margin_size = 48 applies the margin as at 48 px whatever face_size is; None: at face_size.
    margin_size: int | None = None
    face_fallback: str = "center"  # crop for frames without a face: center | dai (Dai's 48 px window) | black
    max_video_seconds: float | None = None  # decode only the first seconds of each video (Dai's MOSEI: 280)
    max_frames: int | None = None  # cap per utterance (None: all sampled frames)
    min_audio_samples: int = 400  # one 25 ms STFT window at 16 kHz
    chunk_utterances: int = 8  # utterances per decoding chunk (bounds memory; fixed for byte-identical resumes)
    device: str | None = None  # None or "auto": CUDA when available
    # How the cache stores faces and audio (emolib.data.cache.Encoding). "jpeg" is lossy and a deviation: Dai et
    # al. run MTCNN on frames they stored as JPEGs (OpenCV's default quality 95) and keep the crops exact, and
    # "raw" keeps emolib's crops exact (the only encoding of caches before format version 2). Measured on the
    # synthetic MOSEI release (emolib.bench.prepare, 224 px faces): the mean absolute difference from the raw crop
    # is about 1.2 grey levels at quality 90, 1.4 at 85 and 1.5 at 80, and Dai's dump / cache is 9.2 at 90, 10.0 at
    # 85. Quality 80 is the highest that keeps the issue-18 target (>= 10x smaller than Dai's dump) with a margin;
    # FLAC audio is then about 60% of the cache. The issue-18 note reports one model's accuracy on both caches.
    face_codec: str = "jpeg"  # jpeg | raw
    face_quality: int = 80  # JPEG quality (1..100) of the "jpeg" face codec
    audio_codec: str = "flac"  # flac (lossless) | raw

    def __post_init__(self) -> None:
        from emolib.data.cache import check_encoding

        if self.min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1 pixel, got {self.min_face_size}")
        check_encoding(self.face_codec, self.face_quality, self.audio_codec)

    @property
    def encoding(self):
        from emolib.data.cache import Encoding

        return Encoding(self.face_codec, self.face_quality, self.audio_codec)


# What a parameter added after caches existed meant before it existed, where that is not today's default: caches
# of format version 1 hold raw faces and raw audio.
BEFORE_PARAMETER = {"face_codec": "raw", "audio_codec": "raw"}


def with_defaults(parameters: dict[str, Any]) -> dict[str, Any]:
    """A cache's recorded parameters completed for fields added after the cache was written, with the value that
    reproduces the behaviour before they existed (``BEFORE_PARAMETER``, else today's default)."""
    return {**asdict(PrepareParams()), **BEFORE_PARAMETER, **parameters}


@dataclass
class PrepareReport:
    cache: Path
    n_sources: int
    n_written: int
    n_resumed: int
    n_rebuilt: int  # records (or skip notes) made again because their source changed; included in n_written
    skipped: list[dict[str, str]]
    complete: bool
    seconds: float
    face_stats: dict[str, Any]

    def summary(self) -> str:
        fs = self.face_stats
        lines = [
            f"cache {self.cache}: {self.n_written} utterances written, {self.n_resumed} already done, "
            f"{len(self.skipped)} skipped, {self.seconds:.1f}s",
        ]
        if self.n_rebuilt:
            lines.append(f"{self.n_rebuilt} records rebuilt because their source files or labels changed")
        if fs and fs["frames"]:
            lines.append(
                f"faces: {fs['frames_with_face']}/{fs['frames']} frames ({100 * fs['face_rate']:.1f}%) had a face; "
                f"{fs['fallback_frames']} fallback crops; {fs['utterances_without_face']} utterances with no face"
            )
        for s in self.skipped[:20]:
            lines.append(f"  skipped {s['uid']}: {s['file']}: {s['problem']}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see provenance.json)")
        return "\n".join(lines)


def prepare_sources(
    sources: list[UtteranceSource],
    out: str | Path,
    *,
    dataset: str,
    label_names: Sequence[str],
    task: str,
    params: PrepareParams | None = None,
    shard: tuple[int, int] = (0, 1),
    problems: list[dict[str, Any]] | None = None,
    extra_provenance: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Build (or resume) the cache at ``out`` from ``sources``."""
    # Plain lines in the runner's log (a tqdm widget never reaches it; see emolib.progress), a bar interactively.
    from emolib.progress import progress_bar

    params = params or PrepareParams()
    t0 = time.monotonic()
    out = Path(out)
    writer = CacheWriter(out)
    _check_params(out, dataset, params, label_names)
    _check_unique([s.uid for s in sources])
    skip_dir = out / "skipped"

    groups: dict[str, list[UtteranceSource]] = defaultdict(list)
    for s in sources:
        groups[s.group].append(s)
    keys = sorted(groups)
    index, count = shard
    mine = [k for i, k in enumerate(keys) if i % count == index]

    file_hash = _FileHashes()
    work = [chunk for key in mine for chunk in chunks(sorted(groups[key], key=lambda s: (s.start, s.uid)),
                                                      params.chunk_utterances)]
    counts = {"written": 0, "resumed": 0, "rebuilt": 0}
    bar = progress_bar(sum(len(c) for c in work), f"prepare {dataset}", unit="utt", enabled=progress)

    def look(chunk: list[UtteranceSource]):
        """Source keys and record states of a chunk, and its decoded frames and audio unless all are current."""
        keys = {s.uid: s.source_key(file_hash) for s in chunk}
        state = {s.uid: _record_state(writer, skip_dir, s.uid, keys[s.uid]) for s in chunk}
        # The whole chunk is recomputed so MTCNN sees the same batches as in an uninterrupted run.
        read = None if all(v == "current" for v in state.values()) else read_chunk(chunk, params)
        return keys, state, read

    def store(chunk: list[UtteranceSource], keys, state, results) -> dict[str, int]:
        done = {"written": 0, "resumed": 0, "rebuilt": 0, "utterances": len(chunk)}
        for src, result in zip(chunk, results):
            if state[src.uid] == "current":
                done["resumed"] += 1
                continue
            _forget(writer, skip_dir, src.uid)
            if isinstance(result, Skip):
                write_json(skip_dir / f"{src.uid}.json", {"uid": src.uid, "file": result.file,
                                                           "problem": result.problem, "source_key": keys[src.uid]})
            else:
                meta, arrays = result
                writer.write({**meta, "source_key": keys[src.uid]}, arrays)
                done["written"] += 1
            done["rebuilt"] += state[src.uid] == "stale"
        return done

    def stored(future) -> None:
        done = future.result()
        for k in counts:
            counts[k] += done[k]
        bar.update(done["utterances"])

    # A pipeline of two threads with the outputs of a sequential run: while this thread runs MTCNN on one chunk,
    # a worker decodes the next chunk's frames and audio, then encodes and writes the records of the chunk
    # before (PyAV, Pillow, libsndfile and zlib release the GIL). The worker runs its tasks in order, the next
    # read is queued before the previous write, and a failed write stops the run before the write after it.
    cropper = None
    writing = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as worker:
        looked = worker.submit(look, work[0]) if work else None
        for i, chunk in enumerate(work):
            keys, state, read = looked.result()
            looked = worker.submit(look, work[i + 1]) if i + 1 < len(work) else None
            if read is None:
                counts["resumed"] += len(chunk)
                bar.update(len(chunk))
                continue
            if cropper is None:
                cropper = make_cropper(params)
            crops = detect_chunk(read, params, cropper)
            if writing is not None:
                stored(writing)
            writing = worker.submit(lambda c=chunk, k=keys, st=state, r=read, cr=crops:
                                    store(c, k, st, chunk_records(c, params, r, cr)))
        if writing is not None:
            stored(writing)
    n_written, n_resumed, n_rebuilt = counts["written"], counts["resumed"], counts["rebuilt"]
    bar.close()

    all_uids = {s.uid for s in sources}
    metas = writer.finished_metas()
    skipped = sorted((read_json(p) for p in skip_dir.glob("*.json")), key=lambda d: d["uid"]) if skip_dir.is_dir() \
        else []
    finished = {m["uid"] for m in metas} | {s["uid"] for s in skipped}
    complete = all_uids <= finished
    face_stats = _face_stats(metas)
    if complete:
        metas = [m for m in metas if m["uid"] in all_uids]
        writer.write_index(metas)
        writer.write_timing(time.monotonic() - t0, n_written)
        writer.write_provenance({
            "dataset": dataset,
            "task": task,
            "label_names": list(label_names),
            "parameters": asdict(params),
            "versions": _versions(),
            "code_version": _code_version(),
            "n_utterances": len(metas),
            "splits": _split_counts(metas),
            "face_detection": face_stats,
            "modalities": modality_counts(metas),
            "fallbacks": _fallback_counts(metas),
            "skipped": skipped,
            "problems": problems or [],
            "sources": _sources(sources, file_hash),
            **(extra_provenance or {}),
        })
    return PrepareReport(out, len(sources), n_written, n_resumed, n_rebuilt, skipped, complete,
                         time.monotonic() - t0, face_stats)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return str(value)


class _FileHashes:
    """sha256 of each source file, computed once per run (None for a file that does not exist)."""

    def __init__(self) -> None:
        self._memo: dict[str, str | None] = {}

    def __call__(self, path: str | Path) -> str | None:
        key = str(path)
        if key not in self._memo:
            self._memo[key] = sha256_file(Path(path)) if Path(path).is_file() else None
        return self._memo[key]


def _record_state(writer: CacheWriter, skip_dir: Path, uid: str, key: str) -> str:
    """"missing", "current" (a record or skip note built from this very source) or "stale"."""
    for path in (writer.utt_dir / f"{uid}.json", skip_dir / f"{uid}.json"):
        if path.is_file() and (path.parent == skip_dir or writer.done(uid)):
            return "current" if read_json(path).get("source_key") == key else "stale"
    return "missing"


def _forget(writer: CacheWriter, skip_dir: Path, uid: str) -> None:
    """Drop an outdated record or skip note before its replacement is written (the outcome may change kind)."""
    for path in (writer.utt_dir / f"{uid}.json", writer.utt_dir / f"{uid}.npz", skip_dir / f"{uid}.json"):
        path.unlink(missing_ok=True)


@dataclass
class Skip:
    file: str
    problem: str


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def make_cropper(params: PrepareParams, **overrides: Any):
    """The MTCNN cropper of ``params``; ``overrides`` are further ``FaceCropper`` arguments (``min_face_size``)."""
    from emolib.data.faces import FaceCropper

    # "auto" (the profiles' device parameter) means what None means: CUDA when available
    device = None if params.device in (None, "", "auto") else params.device
    return FaceCropper(size=params.face_size, margin=params.face_margin, device=device,
                       batch_size=params.mtcnn_batch, min_conf=params.min_face_conf, fallback=params.face_fallback,
                       margin_size=params.margin_size, **{"min_face_size": params.min_face_size, **overrides})


def process_chunk(chunk: list[UtteranceSource], params: PrepareParams, cropper, timer=None) -> list:
    """Frames and audio of every utterance of the chunk (``read_chunk``), then one batched MTCNN call
    (``detect_chunk``), then the records (``chunk_records``): a ``Skip`` or ``(meta, arrays)`` per utterance.

    Each record's arrays are a ``emolib.data.cache.RecordArrays``: faces and audio as the cache will return them
    (decoded from the stored JPEGs when ``params.face_codec`` is lossy) with the encoded members the writer
    stores. ``timer`` (an ``emolib.timing.StageTimer``) times the stages ``decode``, ``audio read``, ``faces``
    and ``encode``."""
    stage = stage_of(timer)
    read = read_chunk(chunk, params, timer)
    with stage("faces"):
        crops = detect_chunk(read, params, cropper)
    return chunk_records(chunk, params, read, crops, timer)


def read_chunk(chunk: list[UtteranceSource], params: PrepareParams, timer=None):
    """The decoding part of ``process_chunk``: ``chunk_frames`` and the audio of every utterance whose frames
    did not fail (one decoding pass per audio file of the chunk)."""
    stage = stage_of(timer)
    with stage("decode"):
        frames = chunk_frames(chunk, params)
    with stage("audio read"):
        audios = _chunk_audio(chunk, params, [isinstance(p, Skip) for p in frames[2]])
    return frames, audios


def detect_chunk(read, params: PrepareParams, cropper):
    """The MTCNN part of ``process_chunk``: one ``cropper.crop`` call on every frame of the chunk."""
    flat = [f for fs in read[0][0] for f in fs]
    return cropper.crop(flat) if flat else _no_crops(params.face_size)


def chunk_records(chunk: list[UtteranceSource], params: PrepareParams, read, crops, timer=None) -> list:
    """The records part of ``process_chunk``: per utterance a ``Skip`` or ``(meta, arrays)``, encoded."""
    from emolib.data.cache import encoded_arrays

    stage = stage_of(timer)
    (frames, times, frame_problems), audios = read
    encoding = params.encoding
    results: list = []
    pos = 0
    for i, src in enumerate(chunk):
        n = len(frames[i])
        sl = slice(pos, pos + n)
        pos += n
        if isinstance(frame_problems[i], Skip):
            results.append(frame_problems[i])
            continue
        audio = audios[i]
        if isinstance(audio, Skip):
            results.append(audio)
            continue
        audio, audio_fallbacks = audio
        fallbacks = list(src.fallbacks) + audio_fallbacks + ([frame_problems[i]] if frame_problems[i] else [])
        found = crops.found[sl]
        if src.has("visual") and not found.any():
            fallbacks.append("no_face")
        if src.has("text") and not src.text.strip():
            fallbacks.append("empty_text")
        if "\ufffd" in src.text:  # the format parser replaced undecodable bytes
            fallbacks.append("text_decode")
        labels = np.asarray(src.labels, dtype=np.float32)
        meta = {
            "uid": src.uid,
            "split": src.split,
            "text": src.text,
            "labels": labels.tolist(),
            "start": src.start,
            "end": src.end,
            "n_frames": n,
            "n_faces_found": int(found.sum()),
            "n_samples": int(audio.shape[0]),
            "fallbacks": sorted(set(fallbacks)),
            "sources": {k: str(v) for k, v in (("video", src.video), ("audio", src.audio)) if v is not None},
            **src.meta,
        }
        if src.modalities is not None:
            meta["modalities"] = list(src.modalities)
        arrays = {
            "faces": crops.faces[sl],
            "face_conf": crops.conf[sl].astype(np.float32),
            "face_found": found.astype(bool),
            "face_boxes": crops.boxes[sl].astype(np.float32),
            "frame_times": np.asarray(times[i], dtype=np.float32),
            "audio": to_int16(audio),
            "labels": labels,
        }
        with stage("encode"):
            results.append((meta, encoded_arrays(arrays, encoding)))
    return results


def _chunk_audio(chunk: list[UtteranceSource], params: PrepareParams, skipped: list[bool]) -> list:
    """``_utterance_audio`` of every utterance of the chunk (None where ``skipped``), reading each audio file of
    the chunk in one decoding pass (``read_audio_multi``: the same samples as one read per utterance)."""
    from emolib.data.media import MediaError, read_audio_multi

    out: list = [None] * len(chunk)
    together: dict[tuple, list[int]] = defaultdict(list)
    for i, src in enumerate(chunk):
        path = src.audio or src.video
        if skipped[i]:
            continue
        if src.has("audio") and path is not None and Path(path).is_file():
            together[(str(path), src.audio_channel)].append(i)
        else:
            out[i] = _utterance_audio(src, params)
    for (path, channel), idx in together.items():
        if len(idx) > 1:
            try:
                audios = read_audio_multi(path, [(chunk[i].start, chunk[i].end) for i in idx],
                                          sample_rate=SAMPLE_RATE, mono=channel is None, channel=channel)
            except MediaError:
                audios = None  # one segment cannot be read: each utterance on its own says which and why
            if audios is not None:
                for i, audio in zip(idx, audios):
                    out[i] = _audio_fallbacks(audio, params)
                continue
        for i in idx:
            out[i] = _utterance_audio(chunk[i], params)
    return out


def chunk_frames(chunk: list[UtteranceSource], params: PrepareParams):
    """Per utterance: list of RGB frames, their times (s from utterance start), and None / a fallback / a Skip."""
    from emolib.data.media import MediaError, iter_frames_multi

    frames: list[list[np.ndarray]] = [[] for _ in chunk]
    times: list[list[float]] = [[] for _ in chunk]
    problems: list[Any] = [None] * len(chunk)
    if not any(s.has("visual") for s in chunk):  # audio-only or text-only utterances: nothing to decode
        return frames, times, problems
    first = chunk[0]
    if first.images:
        for i, src in enumerate(chunk):
            frames[i], times[i], problems[i] = _image_frames(src, params)
        return frames, times, problems
    video = first.video
    if video is None:
        return frames, times, [Skip(str(s.audio), "no video or images for this utterance") for s in chunk]
    if not Path(video).is_file():
        return frames, times, [Skip(str(video), "file not found") for _ in chunk]
    segments = [(s.start, s.end) for s in chunk]
    error = None
    try:
        for seg, t, frame in iter_frames_multi(video, segments, interval_ms=params.img_interval):
            if params.max_frames is not None and len(frames[seg]) >= params.max_frames:
                continue
            if params.max_video_seconds is not None and t >= params.max_video_seconds:
                continue  # Dai's MOSEI notebook reads only the first 280 s of each video
            frames[seg].append(prepare_frame(_half(frame, chunk[seg].half), params))
            times[seg].append(t - chunk[seg].start)
    except MediaError as err:
        error = str(err)
    for i, src in enumerate(chunk):
        if not frames[i]:
            problems[i] = Skip(str(video), error or f"no frame between {src.start:.2f}s and {src.end}s")
        elif error:
            problems[i] = "video_truncated"
    return frames, times, problems


def _image_frames(src: UtteranceSource, params: PrepareParams):
    from PIL import Image, UnidentifiedImageError

    frames, times = [], []
    paths = src.images[: params.max_frames] if params.max_frames else src.images
    for j, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                frames.append(prepare_frame(np.asarray(im.convert("RGB")), params))
        except FileNotFoundError:
            return [], [], Skip(str(p), "file not found")
        except (UnidentifiedImageError, OSError) as err:
            return [], [], Skip(str(p), f"cannot decode image ({err})")
        times.append(src.image_times[j] if j < len(src.image_times) else j * params.img_interval / 1000)
    if not frames:
        return [], [], Skip(str(src.group), "no image frames for this utterance")
    return frames, times, None


def prepare_frame(frame: np.ndarray, params: PrepareParams) -> np.ndarray:
    """A frame as MTCNN sees it: halved when taller than ``frame_halve_above`` (PIL bilinear to (H//2, W//2), as
    torchvision's Resize on Dai's PIL images), then the centre square of ``frame_center_crop`` (torchvision
    CenterCrop: zero padding where the frame is smaller, offsets rounded)."""
    if params.frame_halve_above is not None and frame.shape[0] > params.frame_halve_above:
        from PIL import Image

        h, w = frame.shape[:2]
        frame = np.asarray(Image.fromarray(frame).resize((w // 2, h // 2), Image.BILINEAR))
    size = params.frame_center_crop
    if size is None:
        return frame
    h, w = frame.shape[:2]
    if h < size or w < size:
        top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
        padded = np.zeros((max(h, size), max(w, size), 3), frame.dtype)
        padded[top: top + h, left: left + w] = frame
        frame, (h, w) = padded, padded.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.ascontiguousarray(frame[top: top + size, left: left + size])


def _half(frame: np.ndarray, half: str | None) -> np.ndarray:
    if half is None:
        return frame
    w = frame.shape[1] // 2
    return frame[:, :w] if half == "left" else frame[:, w:2 * w]


def _utterance_audio(src: UtteranceSource, params: PrepareParams):
    from emolib.data.media import MediaError, read_audio

    if not src.has("audio"):
        return np.zeros(0, dtype=np.float32), []
    path = src.audio or src.video
    if path is None:
        return Skip(src.uid, "no audio source")
    if not Path(path).is_file():
        return Skip(str(path), "file not found")
    try:
        audio = read_audio(path, start_s=src.start, end_s=src.end, sample_rate=SAMPLE_RATE,
                           mono=src.audio_channel is None, channel=src.audio_channel)
    except MediaError as err:
        return Skip(str(path), str(err).removeprefix(f"{path}: "))
    return _audio_fallbacks(audio, params)


def _audio_fallbacks(audio: np.ndarray, params: PrepareParams):
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    fallbacks = []
    if audio.shape[0] < params.min_audio_samples:
        audio = np.pad(audio, (0, params.min_audio_samples - audio.shape[0]))
        fallbacks.append("short_audio")
    return audio, fallbacks


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _check_unique(uids: list[str]) -> None:
    seen, dup = set(), set()
    for u in uids:
        (dup if u in seen else seen).add(u)
    if dup:
        raise ValueError(f"duplicate utterance ids from the adapter: {sorted(dup)[:5]}")


def _check_params(out: Path, dataset: str, params: PrepareParams, label_names: Sequence[str]) -> None:
    """Refuse to mix records made with different parameters in one cache folder."""
    path = out / "params.json"
    current = {"dataset": dataset, "label_names": list(label_names), **asdict(params)}
    # the device does not change the records ("checksums" was an option of caches written before source keys)
    ignored = ("device", "checksums")
    comparable = {k: v for k, v in current.items() if k not in ignored}
    if path.is_file():
        # parameters added after a cache was written take their defaults (which reproduce the old behaviour)
        old = {k: v for k, v in with_defaults(read_json(path)).items() if k not in ignored}
        if old != comparable:
            diff = sorted(k for k in set(old) | set(comparable) if old.get(k) != comparable.get(k))
            change = ", ".join(f"{k}: {old.get(k)!r} -> {comparable.get(k)!r}" for k in diff)
            raise CacheError(f"{out}: the cache was built with different parameters ({change}); "
                             "use another output folder or delete this one (or prepare with its parameters)")
    else:
        write_json(path, current)


def _no_crops(size: int):
    """The cropper's result for a chunk without frames (its utterances have no visual modality)."""
    from emolib.data.faces import FaceCrops

    return FaceCrops.empty(size)


def record_modalities(meta: dict[str, Any]) -> list[str]:
    """The modalities a record holds (records written before per-modality presence hold all three)."""
    return list(meta.get("modalities", ("visual", "audio", "text")))


def modality_counts(metas: list[dict]) -> dict[str, int]:
    """How many records hold each modality."""
    return {m: sum(m in record_modalities(meta) for meta in metas) for m in ("visual", "audio", "text")}


def _face_stats(metas: list[dict]) -> dict[str, Any]:
    frames = sum(m["n_frames"] for m in metas)
    found = sum(m["n_faces_found"] for m in metas)
    return {
        "frames": frames,
        "frames_with_face": found,
        "fallback_frames": frames - found,
        "face_rate": found / frames if frames else 0.0,
        "utterances_without_face": sum(1 for m in metas if m["n_faces_found"] == 0
                                       and "visual" in record_modalities(m)),
    }


def _fallback_counts(metas: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in metas:
        for f in m["fallbacks"]:
            counts[f] += 1
    return dict(sorted(counts.items()))


def _split_counts(metas: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in metas:
        counts[str(m.get("split"))] += 1
    return dict(sorted(counts.items()))


def _sources(sources: list[UtteranceSource], file_hash: _FileHashes) -> dict[str, dict[str, Any]]:
    files = {p for s in sources for paths in s.files().values() for p in paths}
    return {p: {"bytes": Path(p).stat().st_size, "sha256": file_hash(p)} for p in sorted(files) if Path(p).is_file()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("emolib", "torch", "torchvision", "facenet-pytorch", "av", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _code_version() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None

