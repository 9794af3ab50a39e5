"""``python -m emolib.evaluate efficiency``: the efficiency benchmark -> ``results/bench/efficiency.json``.

It sits here, not in ``emolib.bench``, because ``emolib.evaluate`` is a layer above the benchmarks (it reads run
records and writes report tables); ``make bench`` can call it after ``python -m emolib.bench``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from emolib.bench.common import BENCH_DIR
from emolib.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["efficiency"])
    parser.add_argument("--models", nargs="*", default=None, help="registered models (default: all)")
    parser.add_argument("--configs", nargs="*", default=["tiny", "paper"])
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per latency (median)")
    parser.add_argument("--raw-video-configs", nargs="*", default=["tiny"])
    parser.add_argument("--raw-video-clips", type=int, default=4)
    parser.add_argument("--out", default=str(BENCH_DIR))
    args = parser.parse_args(argv)
    from emolib.evaluate.efficiency import efficiency_benchmark, efficiency_table, spec_checks

    with tempfile.TemporaryDirectory(prefix="emolib-bench-efficiency-") as tmp:
        result = efficiency_benchmark(Path(tmp), models=args.models, configs=args.configs, repeats=args.repeats,
                                      raw_video_configs=args.raw_video_configs, raw_video_clips=args.raw_video_clips)
    path = Path(args.out) / "efficiency.json"
    write_json(path, result)
    print(efficiency_table(result).to_string(index=False))
    for check in spec_checks(result["models"]):
        print(f"spec: {check['what']}: expected {check['expected']}, measured {check['measured']}, ok {check['ok']}")
    print(f"efficiency: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
