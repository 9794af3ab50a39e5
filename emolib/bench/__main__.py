"""Benchmarks (``make bench`` / ``python -m emolib.bench [name ...]``), each writing ``results/bench/<name>.json``.

Every record states the hardware it ran on. Compare ratios measured in one run, not absolute times across
machines.

- ``fv2es``: FV2ES visual-branch latency multi-branch vs re-parameterised, and clips/s of the in-model
  preprocessing pipeline vs a two-stage pipeline that writes frames and audio to disk (``emolib.bench.fv2es``).
- ``prepare``: the preprocessing engine on the synthetic CMU-MOSEI release (``emolib.bench.prepare``).
- ``inference``: ``emolib predict`` with the paper-size FV2ES on a fixed clip mix, per stage, at one thread and all
  cores, default (lossless) settings against the settings predict had before and the opt-in ones
  (``emolib.bench.inference``); with a trained FV2ES checkpoint present (``make reproduce`` or ``make rehearse
  REHEARSE=iemocap``), also the effect of the lossy settings on its test metrics.
- ``distributed-cpu``: the same training run in one process and in two (accelerate launch, gloo), and on one GPU
  when there is one (``emolib.bench.distributed``).

The smoke profile itself is timed by ``emolib run smoke --bench 3`` (``emolib.pipeline.benchmark``: it sits above
the runner), which ``make bench`` runs too.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emolib.bench.common import BENCH_DIR
from emolib.io import write_json


def _prepare(workdir: Path) -> dict[str, Any]:
    from emolib.bench.prepare import bench_prepare

    return bench_prepare(workdir)


def _fv2es(workdir: Path) -> dict[str, Any]:
    from emolib.bench.fv2es import bench_fv2es

    return bench_fv2es(workdir)


def _inference(workdir: Path) -> dict[str, Any]:
    from emolib.bench.inference import ACCURACY_CHECKPOINTS, bench_inference

    checkpoint = next((p for p in ACCURACY_CHECKPOINTS if p.is_file()), None)
    return bench_inference(workdir, accuracy_checkpoint=checkpoint)


def _distributed(workdir: Path) -> dict[str, Any]:
    from emolib.bench.distributed import bench_distributed

    return bench_distributed(workdir)


BENCHMARKS: dict[str, Callable[[Path], dict[str, Any]]] = {"prepare": _prepare, "fv2es": _fv2es,
                                                            "inference": _inference,
                                                            "distributed-cpu": _distributed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", default=str(BENCH_DIR))
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in args.names or list(BENCHMARKS):
        with tempfile.TemporaryDirectory(prefix=f"emolib-bench-{name}-") as tmp:
            result = BENCHMARKS[name](Path(tmp))
        path = Path(args.out) / f"{name}.json"
        write_json(path, result)
        print(f"{name}: {path}")
        print({k: v for k, v in result.items() if k not in ("hardware",)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
