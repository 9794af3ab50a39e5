"""What every benchmark shares: the hardware description each record carries, peak memory, the output folder."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path("results") / "bench"


def cpuinfo(text: str) -> dict[str, Any]:
    """The first processor's identity from ``/proc/cpuinfo`` text. Virtual machines often report a bare model
    name ("AMD EPYC") for CPUs 2x apart in speed, so the family/model numbers and the widest vector unit go too."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block ends at the first blank line
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    vector = next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), None)
    return {"cpu": fields.get("model name", ""), "cpu_family": fields.get("cpu family"),
            "cpu_model": fields.get("model"), "cpu_vector": vector}


def hardware() -> dict[str, Any]:
    import torch

    try:
        info = cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        info = {}
    return {
        **info, "cpu": info.get("cpu") or platform.processor() or "", "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def decode_and_detect_seconds(sources, pipeline) -> float:
    """Seconds for the work no pipeline can skip: decode the sampled frames (with the speaker's half where the
    source names one) and crop faces with MTCNN, in the chunks ``prepare`` uses, with ``pipeline``'s cropper and
    parameters: the floor of raw video -> emotions."""
    from emolib.data.prepare import chunk_frames, chunks

    t0 = time.perf_counter()
    by_video: dict[str, list] = {}
    for s in sources:
        by_video.setdefault(str(s.video), []).append(s)
    for utts in by_video.values():
        for chunk in chunks(sorted(utts, key=lambda u: (u.start, u.uid)), pipeline.prepare.chunk_utterances):
            frames, _, _ = chunk_frames(chunk, pipeline.prepare)
            pipeline.cropper.crop([f for fs in frames for f in fs])
    return time.perf_counter() - t0
