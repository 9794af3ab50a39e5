"""What every benchmark shares: the hardware description each record carries, peak memory, the output folder."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path("results") / "bench"


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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
