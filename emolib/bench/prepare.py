"""Benchmark of the preprocessing engine on the synthetic CMU-MOSEI release, everything measured in one run:

- prepare's time against its floor: decoding the sampled frames plus MTCNN alone on the same clips, in the
  chunks and MTCNN batches prepare uses, in the same process (so the same thread count) -> ``prepare_over_floor``;
- the cache with today's default encoding (JPEG faces, FLAC audio) against the raw encoding of caches before
  format version 2 (deflated arrays): bytes per utterance, and the time to read every record once through
  ``CachedDataset.__getitem__`` as a training epoch does (preloading off, so every read decodes);
- bytes per utterance of a Dai-style dump (every video frame of the clip as a JPEG plus the wav) of the same clips;
- MTCNN frames/s batched vs one by one, peak RSS, and an extrapolation to the full CMU-MOSEI (~23k utterances).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from emolib.bench.common import decode_and_detect_seconds, hardware, peak_rss_bytes

FULL_MOSEI_UTTERANCES = 23453
DUMP_SAMPLE = 60  # clips of the Dai-style dump (every n-th utterance of the release)
READ_REPEATS = 3  # epochs read per cache (raw and encoded alternating); the fastest is reported


def _dai_dump_bytes(sources, quality: int = 95) -> int:
    """Bytes of a Dai-style dump: every frame of the utterance as a 224-px centre-cropped JPEG, and the wav."""
    from PIL import Image

    from emolib.data.media import iter_frames

    total = 0
    for src in sources:
        for _, frame in iter_frames(src.video, interval_ms=1.0, start_s=src.start, end_s=src.end):
            h, w = frame.shape[:2]
            s = min(224, h, w)
            crop = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="JPEG", quality=quality)  # OpenCV's default quality
            total += buf.tell()
        dur = (src.end or 0) - src.start
        total += 44 + int(dur * 16000) * 2
    return total


def utterance_bytes(cache: Path, uids) -> int:
    """Bytes of the records of ``uids``: their .npz and .json files."""
    folder = Path(cache) / "utterances"
    return sum((folder / f"{u}{ext}").stat().st_size for u in uids for ext in (".npz", ".json"))


def epoch_read_seconds(caches: dict[str, Path], repeats: int = READ_REPEATS) -> dict[str, float]:
    """Per cache, the fastest of ``repeats`` passes reading every record once through ``CachedDataset`` (no
    preloading, frames as cached), the caches taking turns so that both see the same machine state."""
    from emolib.data.dataset import CachedDataset

    datasets = {name: CachedDataset(path, preload=False) for name, path in caches.items()}
    best = dict.fromkeys(caches, math.inf)
    for _ in range(repeats):
        for name, ds in datasets.items():
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_prepare(workdir: Path) -> dict[str, Any]:
    import torch

    from emolib.data import get_adapter
    from emolib.data.faces import FaceCropper, benchmark_mtcnn
    from emolib.data.media import iter_frames
    from emolib.data.prepare import PrepareParams, make_cropper
    from emolib.data.release import synthesize_release

    root = synthesize_release("mosei", workdir / "raw", seed=0, size="smoke")
    adapter = get_adapter("mosei")
    params = PrepareParams(face_size=224)  # today's defaults: JPEG faces, FLAC audio
    raw_params = dataclasses.replace(params, face_codec="raw", audio_codec="raw")
    sources, _ = adapter.sources(root)

    cropper = make_cropper(params)  # load the networks and warm MTCNN up before timing anything
    cropper.crop([f for _, f in iter_frames(sources[0].video, interval_ms=500)][:8])
    floor = decode_and_detect_seconds(sources, SimpleNamespace(prepare=params, cropper=cropper))
    t0 = time.perf_counter()
    report = adapter.prepare(root, workdir / "cache", params=params, progress=False)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw_report = adapter.prepare(root, workdir / "cache-raw", params=raw_params, progress=False)
    raw_seconds = time.perf_counter() - t0

    caches = {"raw": workdir / "cache-raw", "encoded": workdir / "cache"}
    n = report.n_written
    written = sorted(p.stem for p in (caches["encoded"] / "utterances").glob("*.npz"))
    per_utt = {name: utterance_bytes(path, written) / n for name, path in caches.items()}
    # The Dai-style dump and our caches on the same clips: every n-th utterance of the release.
    kept = set(written)
    sample = [s for s in sources if s.uid in kept][:: max(1, n // DUMP_SAMPLE)]
    dai_bytes = _dai_dump_bytes(sample) / len(sample)
    sample_per_utt = {name: utterance_bytes(path, [s.uid for s in sample]) / len(sample)
                      for name, path in caches.items()}
    reads = epoch_read_seconds(caches)

    frames = [f for _, f in iter_frames(sample[0].video, interval_ms=100)][:32]
    FaceCropper(size=224)  # load the networks before timing
    mtcnn = benchmark_mtcnn(frames, [1, 8, 32])
    uts = n / seconds
    return {
        "benchmark": "prepare",
        "hardware": hardware(),
        "dataset": "synthetic CMU-MOSEI release (size smoke)",
        "parameters": {"img_interval_ms": params.img_interval, "face_size": params.face_size,
                       "mtcnn_batch": params.mtcnn_batch, "face_codec": params.face_codec,
                       "face_quality": params.face_quality, "audio_codec": params.audio_codec},
        "utterances": n,
        "seconds": round(seconds, 2),
        "utterances_per_s": round(uts, 3),
        "floor": {"what": "decode of the sampled frames + MTCNN alone, prepare's chunks and batch size, same process",
                  "seconds": round(floor, 2), "torch_threads": torch.get_num_threads()},
        "prepare_over_floor": round(seconds / floor, 3),
        "raw_encoding": {"what": "face_codec=raw, audio_codec=raw: deflated arrays, the only encoding of cache "
                                 "format version 1",
                         "seconds": round(raw_seconds, 2), "prepare_over_floor": round(raw_seconds / floor, 3),
                         "utterances": raw_report.n_written},
        "frames": report.face_stats["frames"],
        "face_rate": report.face_stats["face_rate"],
        "mtcnn": mtcnn,
        "peak_rss_bytes": peak_rss_bytes(),
        "cache_bytes_per_utterance": round(per_utt["encoded"]),
        "raw_cache_bytes_per_utterance": round(per_utt["raw"]),
        "raw_over_cache_ratio": round(per_utt["raw"] / per_utt["encoded"], 2),
        "dump_sample": {"utterances": len(sample),
                        "dai_style_dump_bytes_per_utterance": round(dai_bytes),
                        "cache_bytes_per_utterance": round(sample_per_utt["encoded"]),
                        "raw_cache_bytes_per_utterance": round(sample_per_utt["raw"])},
        "dai_style_dump_bytes_per_utterance": round(dai_bytes),
        "dump_over_cache_ratio": round(dai_bytes / sample_per_utt["encoded"], 2),
        "dump_over_raw_cache_ratio": round(dai_bytes / sample_per_utt["raw"], 2),
        "epoch_read": {"what": f"every record once through CachedDataset.__getitem__ (preload off, frames as "
                               f"cached); fastest of {READ_REPEATS} passes per cache, taking turns",
                       "raw_seconds": round(reads["raw"], 3), "encoded_seconds": round(reads["encoded"], 3),
                       "encoded_over_raw": round(reads["encoded"] / reads["raw"], 3)},
        "extrapolation_full_mosei": {
            "utterances": FULL_MOSEI_UTTERANCES,
            "hours_at_this_rate": round(FULL_MOSEI_UTTERANCES / uts / 3600, 2),
            "cache_gb": round(FULL_MOSEI_UTTERANCES * per_utt["encoded"] / 1e9, 2),
            "dai_style_dump_gb": round(FULL_MOSEI_UTTERANCES * dai_bytes / 1e9, 2),
            "caveat": "synthetic clips are 1.5-4 s at 320x240; real MOSEI clips are ~7 s at up to 1280x720, so "
                      "both rates and sizes scale with clip length and resolution",
        },
    }
