"""Streaming video-frame and audio decoding with PyAV (its bundled FFmpeg; no system ffmpeg needed).

Nothing here holds a whole video in memory: frames are decoded one at a time and converted to RGB only
when they are yielded; audio is decoded chunk by chunk and only the requested slices are kept.

Time conventions (documented deviations from Dai's preprocessing notebooks, which index stored frames):

* A frame's time is its presentation timestamp relative to the video stream's start.
* :func:`iter_frames` keeps, within ``[start_s, end_s)``, the first frame at or after ``start_s`` and then
  the first frame at or after each further multiple of ``interval_ms`` counted from that first frame. Dai
  keeps every 15th stored frame starting at frame ``int(fps*start)`` (the frame at or *before* start); for
  a 30 fps video both give the same frames up to that first-frame choice, for 29.97 fps ours stays on the
  500 ms grid instead of drifting by 1 frame every ~33 s.
* Audio sample ``i`` of the output is at ``i / sample_rate`` from the first decoded sample, and a segment is
  samples ``int(sr*start_s) .. int(sr*end_s)`` exactly as Dai slices numpy arrays.

Every problem with a file raises :class:`MediaError` whose message starts with the path:
``"<path>: file not found"``, ``"<path>: no audio track"``, ``"<path>: cannot decode: <ffmpeg message>
(truncated or corrupt file?)"``, ``"<path>: decoding stopped at ... (truncated file?)"``, ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

__all__ = [
    "MediaError",
    "MediaInfo",
    "iter_frames",
    "iter_frames_multi",
    "probe",
    "read_audio",
    "read_audio_multi",
]

log = logging.getLogger(__name__)

_EPS = 1e-6  # seconds; absorbs float error of pts * time_base, far below any frame period
_SEEK_MARGIN_S = 1.0  # seek this far before the first wanted time; sequential decoding covers the rest

Segment = tuple[float, float | None]


class MediaError(Exception):
    """A media file is missing, unreadable, lacks a needed track, or holds less than its header says."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` reads from the container headers (no decoding)."""

    path: Path
    duration: float | None
    has_video: bool
    fps: float | None
    width: int | None
    height: int | None
    n_frames: int | None
    video_codec: str | None
    has_audio: bool
    sample_rate: int | None
    channels: int | None
    audio_codec: str | None


# ----------------------------------------------------------------------------------------------- opening


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot decode: {_ffmpeg_message(exc)} (truncated or corrupt file?)") from exc
    try:
        yield container
    finally:
        container.close()


def _ffmpeg_message(exc: av.FFmpegError) -> str:
    # str(exc) repeats the file name; the strerror part is FFmpeg's own wording.
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot decode: {_ffmpeg_message(exc)} (truncated or corrupt file?)") from exc


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(path, "no video track")
    return container.streams.video[0]


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise MediaError(path, "no audio track")
    return container.streams.audio[0]


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _stream_offset(stream: av.stream.Stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return float(rate) if rate else None


# ----------------------------------------------------------------------------------------------- probe


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read duration, video geometry / rate and audio format from the headers of ``path``."""
    path = Path(path)
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / av.time_base if container.duration is not None else None
        if duration is None:
            candidates = [d for d in (_stream_duration(s) for s in (video, audio) if s) if d is not None]
            duration = max(candidates) if candidates else None
        if video is None and audio is None:
            raise MediaError(path, "no video or audio track")
        return MediaInfo(
            path=path,
            duration=duration,
            has_video=video is not None,
            fps=_fps(video) if video else None,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            n_frames=(video.frames or None) if video else None,
            video_codec=video.codec_context.name if video else None,
            has_audio=audio is not None,
            sample_rate=audio.codec_context.sample_rate if audio else None,
            channels=audio.codec_context.channels if audio else None,
            audio_codec=audio.codec_context.name if audio else None,
        )


# ----------------------------------------------------------------------------------------------- frames


@dataclasses.dataclass
class _Sampler:
    """Interval sampling state of one segment."""

    start: float
    end: float | None
    interval: float
    next_t: float | None = None
    done: bool = False

    def wants(self, t: float) -> bool:
        if self.done or t < self.start - _EPS:
            return False
        if self.end is not None and t >= self.end - _EPS:
            self.done = True
            return False
        if self.next_t is None:
            self.next_t = t + self.interval
            return True
        if t < self.next_t - _EPS:
            return False
        while self.next_t <= t + _EPS:  # a sparse video may skip several grid points at once
            self.next_t += self.interval
        return True


def _check_segments(segments: Sequence[Segment], interval_ms: float) -> list[Segment]:
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
    checked = []
    for i, seg in enumerate(segments):
        start, end = float(seg[0]), (None if seg[1] is None else float(seg[1]))
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"segment {i}: start must be a finite time >= 0 s, got {seg[0]}")
        if end is not None and not end > start:
            raise ValueError(f"segment {i}: end ({end}) must be after start ({start})")
        checked.append((start, end))
    return checked


def iter_frames(
    path: str | os.PathLike,
    *,
    interval_ms: float = 500,
    start_s: float = 0.0,
    end_s: float | None = None,
    strict: bool = True,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(t_s, frame)`` with ``frame`` an H×W×3 uint8 RGB array, one every ``interval_ms`` in
    ``[start_s, end_s)`` (``end_s=None``: to the end of the video).

    Seeks to about a second before ``start_s`` when it lies more than 2 s in, then decodes sequentially. With
    ``strict`` a file that ends before the range its header promises raises :class:`MediaError`; otherwise
    this is logged as a warning.
    """
    for _, t, frame in iter_frames_multi(path, [(start_s, end_s)], interval_ms=interval_ms, strict=strict):
        yield t, frame


def iter_frames_multi(
    path: str | os.PathLike,
    segments: Sequence[Segment],
    *,
    interval_ms: float = 500,
    strict: bool = True,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """One sequential decoding pass yielding ``(segment_index, t_s, frame)`` for every segment.

    Each segment is sampled exactly as :func:`iter_frames` would sample it alone (segments may overlap; a
    frame shared by several segments is yielded to each as its own array). Output is ordered by time,
    then by segment index. Meant for long dialog videos (IEMOCAP: one avi, ~60 utterances) that should be
    decoded once, not once per utterance.
    """
    path = Path(path)
    segs = _check_segments(segments, interval_ms)
    if not segs:
        return
    samplers = [_Sampler(start, end, interval_ms / 1000.0) for start, end in segs]
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = _fps(stream)
        last_t: float | None = None
        with _decode_errors(path):
            for t, frame in _timed_frames(container, stream, min(s for s, _ in segs), fps):
                last_t = t
                wanted = [i for i, s in enumerate(samplers) if s.wants(t)]
                if wanted:
                    rgb = frame.to_ndarray(format="rgb24")
                    for k, i in enumerate(wanted):
                        yield i, t, (rgb if k == 0 else rgb.copy())
                if all(s.done for s in samplers):
                    return
        _check_complete(path, stream, segs, last_t, fps, strict)


def _timed_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    first_wanted: float,
    fps: float | None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their times, starting at or before ``first_wanted``."""
    offset = _stream_offset(stream)
    seeked = first_wanted > 2 * _SEEK_MARGIN_S and stream.time_base is not None
    if seeked:
        target = first_wanted - _SEEK_MARGIN_S + offset
        container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
    prev: float | None = None
    for frame in container.decode(stream):
        if frame.time is not None:
            t = frame.time - offset
        elif prev is not None and fps:
            t = prev + 1.0 / fps  # some AVI frames carry no pts; continue the grid
        else:
            t = 0.0
        if seeked and prev is None and t > first_wanted + _EPS:
            # The demuxer landed after the wanted time (imprecise AVI index): decode from the start.
            container.seek(0, stream=stream, backward=True, any_frame=False)
            yield from _timed_frames(container, stream, 0.0, fps)
            return
        prev = t
        yield t, frame


def _check_complete(
    path: Path,
    stream: av.video.stream.VideoStream,
    segs: list[Segment],
    last_t: float | None,
    fps: float | None,
    strict: bool,
) -> None:
    """Complain when decoding ended before a requested range that the header says exists."""
    # FFmpeg re-estimates the duration of an AVI that lost its index from what is left, while the frame
    # count still comes from the header; the larger of the two is what the file promised.
    candidates = [_stream_duration(stream), stream.frames / fps if stream.frames and fps else None]
    candidates = [c for c in candidates if c is not None]
    if not candidates:
        return
    header_end = max(candidates)
    frame_period = 1.0 / fps if fps else 0.04
    decoded_end = (last_t + frame_period) if last_t is not None else 0.0
    tolerance = max(0.5, 3 * frame_period)
    wanted_end = max(min(end if end is not None else header_end, header_end) for _, end in segs)
    if decoded_end < wanted_end - tolerance:
        problem = (
            f"decoding stopped at {decoded_end:.3f} s but the header says the video lasts {header_end:.3f} s "
            f"and frames up to {wanted_end:.3f} s were requested (truncated file?)"
        )
        if strict:
            raise MediaError(path, problem)
        log.warning("%s: %s", path, problem)


# ----------------------------------------------------------------------------------------------- audio


def read_audio(
    path: str | os.PathLike,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    sample_rate: int | None = 16000,
    mono: bool = True,
    channel: int | None = None,
    min_samples: int = 1,
) -> np.ndarray:
    """Samples ``int(sr*start_s) .. int(sr*end_s)`` of the first audio track of ``path`` as float32 in
    [-1, 1] at ``sample_rate`` (``None``: the file's own rate).

    ``channel`` picks one channel (shape ``(T,)``); otherwise ``mono`` averages the channels (``(T,)``) or
    keeps them (``(C, T)``). Works for wav and for the audio track of mp4 / avi. A result with fewer than
    ``min_samples`` samples (e.g. shorter than one analysis window) raises :class:`MediaError`.
    """
    return read_audio_multi(
        path, [(start_s, end_s)], sample_rate=sample_rate, mono=mono, channel=channel, min_samples=min_samples
    )[0]


def read_audio_multi(
    path: str | os.PathLike,
    segments: Sequence[Segment],
    *,
    sample_rate: int | None = 16000,
    mono: bool = True,
    channel: int | None = None,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """:func:`read_audio` for many segments of one file in a single decoding pass (same slicing rules)."""
    path = Path(path)
    segs = _check_segments(segments, interval_ms=1.0)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    with _open(path) as container:
        stream = _audio_stream(container, path)
        rate = sample_rate or stream.codec_context.sample_rate
        n_channels = stream.codec_context.channels
        if channel is not None and not 0 <= channel < n_channels:
            raise MediaError(path, f"asked for audio channel {channel} but the track has {n_channels} channel(s)")
        bounds = [(int(rate * start), None if end is None else int(rate * end)) for start, end in segs]
        pieces: list[list[np.ndarray]] = [[] for _ in segs]
        with _decode_errors(path):
            total = _collect_audio(container, stream, rate, bounds, pieces)
    out = []
    for (start, end), (_, b), parts in zip(segs, bounds, pieces):
        data = np.concatenate(parts, axis=1) if parts else np.zeros((n_channels, 0), np.float32)
        needed = max(min_samples, 1)
        if data.shape[1] < needed:
            ended = b is None or total < b
            where = f"the track ends at {total / rate:.3f} s" if ended else "the segment itself is that short"
            stop = "end" if end is None else f"{end:.3f}"
            raise MediaError(
                path,
                f"audio segment [{start:.3f}, {stop}) s has {data.shape[1]} samples at {rate} Hz, fewer than "
                f"the {needed} needed ({where})",
            )
        if b is not None and total < b:
            log.warning("%s: audio ends at %.3f s, before the requested end %.3f s; returning %d samples",
                        path, total / rate, end, data.shape[1])
        out.append(_select_channels(data, mono=mono, channel=channel))
    return out


def _collect_audio(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    rate: int,
    bounds: list[tuple[int, int | None]],
    pieces: list[list[np.ndarray]],
) -> int:
    """Decode and resample sequentially, copying each output chunk's overlap with every segment; return
    the number of output samples seen."""
    stream.thread_type = "AUTO"
    # layout=None keeps the source channels (also FFmpeg's unnamed "2 channels" layouts of PCM AVI);
    # mixing to mono is done afterwards as a plain mean, not with FFmpeg's downmix coefficients.
    resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
    stop = None if any(b is None for _, b in bounds) else max(b for _, b in bounds)
    pos = 0

    def take(chunk: np.ndarray) -> None:
        nonlocal pos
        n = chunk.shape[1]
        for (a, b), parts in zip(bounds, pieces):
            lo, hi = max(a, pos), min(b if b is not None else pos + n, pos + n)
            if lo < hi:
                parts.append(chunk[:, lo - pos: hi - pos].copy())
        pos += n

    for frame in container.decode(stream):
        frame.pts = None  # resample by sample count; gaps in source pts must not shift the slices
        for out in resampler.resample(frame):
            take(out.to_ndarray())
        if stop is not None and pos >= stop:
            return pos
    for out in resampler.resample(None):
        take(out.to_ndarray())
    return pos


def _select_channels(data: np.ndarray, *, mono: bool, channel: int | None) -> np.ndarray:
    data = data.astype(np.float32, copy=False)
    if channel is not None:
        return np.ascontiguousarray(data[channel])
    if mono:
        return data.mean(axis=0, dtype=np.float32) if data.shape[0] > 1 else np.ascontiguousarray(data[0])
    return data
