"""Benchmark of multi-process training: the same run (tiny FV2ES on a synthetic IEMOCAP cache) in one process and
in two (``emolib train --num-processes 2``: accelerate launch, gloo on the CPU), and on one GPU when there is one.

Each configuration runs ``emolib train`` in a fresh subprocess, so each pays the same start-up (imports, model
build); the record keeps both the command's wall time and the trainer's own time (``wall_time_s`` and the warm
per-step times of the run record), which leaves the start-up out. CPU threads: one process uses all the cores,
N processes ``cores / N`` each (set through OMP_NUM_THREADS), so both configurations use the same cores.

``python -m emolib.bench distributed-cpu`` measures on the smoke-size release; ``python -m emolib.bench.distributed
--size tiny --epochs 1`` is a quick check that the benchmark runs (its record says so: not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emolib.bench.common import BENCH_DIR, hardware

NAME = "distributed-cpu"


def _prepare(workdir: Path, size: str) -> Path:
    from emolib.data import get_adapter
    from emolib.data.prepare import PrepareParams
    from emolib.data.release import synthesize_release

    root = synthesize_release("iemocap", workdir / "raw", seed=0, size=size)
    cache = workdir / "cache" / "iemocap"
    report = get_adapter("iemocap").prepare(root, cache, params=PrepareParams(face_size=48, device="cpu"),
                                            progress=False)
    if not report.complete:
        raise RuntimeError(f"{cache}: the benchmark cache is incomplete")
    return cache


def _train(spec: dict[str, Any], workdir: Path, label: str, num_processes: int, threads: int) -> dict[str, Any]:
    spec_path = workdir / f"{label}.json"
    spec_path.write_text(json.dumps({**spec, "results_root": str(workdir / label)}), encoding="utf-8")
    cmd = [sys.executable, "-m", "emolib", "train", str(spec_path), "--no-resume"]
    if num_processes > 1:
        cmd += ["--num-processes", str(num_processes)]
    records = workdir / f"{label}-records.json"
    cmd += ["--records-out", str(records)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{label}: `{' '.join(cmd)}` failed with exit status {done.returncode}:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    (path,) = json.loads(records.read_text(encoding="utf-8"))
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    timing = record["timing"]
    return {
        "processes": num_processes, "threads_per_process": threads, "device": record["environment"]["device"],
        "command_wall_s": round(wall, 2), "train_wall_s": round(record["wall_time_s"], 2),
        "warm_train_step_s": timing["warm_train_step_s"], "warm_eval_batch_s": timing["warm_eval_batch_s"],
        "train_steps": timing["train_steps"], "best_epoch": record["best_epoch"],
        "test_f1": record["metrics"][record["protocol"]]["test"]["average"].get("f1"),
    }


def bench_distributed(workdir: Path, *, size: str = "smoke", epochs: int = 2, batch_size: int = 8) -> dict[str, Any]:
    import torch

    cache = _prepare(workdir, size)
    spec = {"profile": "bench", "model": "fv2es", "config": "tiny", "cache_dir": str(cache), "seeds": [0],
            "frames": {"face_size": 48},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "device": "cpu", "progress": False}}
    cores = os.cpu_count() or 1
    runs = {"cpu_1_process": _train(spec, workdir, "cpu1", 1, cores),
            "cpu_2_processes": _train(spec, workdir, "cpu2", 2, max(1, cores // 2))}
    if torch.cuda.is_available():
        gpu_spec = {**spec, "train": {**spec["train"], "device": "auto"}}
        runs["gpu_1"] = _train(gpu_spec, workdir, "gpu1", 1, cores)
    one, two = runs["cpu_1_process"], runs["cpu_2_processes"]
    result: dict[str, Any] = {
        "benchmark": NAME,
        "hardware": hardware(),
        "run": {"model": "fv2es", "config": "tiny", "dataset": f"synthetic IEMOCAP release (size {size})",
                "epochs": epochs, "global_batch": batch_size, "cache_utterances": _count(cache)},
        "runs": runs,
        "speedup_2_processes_train": round(one["train_wall_s"] / two["train_wall_s"], 3),
        "speedup_2_processes_command": round(one["command_wall_s"] / two["command_wall_s"], 3),
    }
    if "gpu_1" in runs:
        result["speedup_gpu_over_cpu_1_process_train"] = round(one["train_wall_s"] / runs["gpu_1"]["train_wall_s"], 3)
    if size == "tiny":
        result["status"] = "check that the benchmark runs (tiny input); not a measurement"
    return result


def _count(cache: Path) -> dict[str, int]:
    from emolib.data.cache import Cache

    c = Cache(cache)
    return {s: len(c.uids(s)) for s in ("train", "valid", "test")}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from emolib.io import write_json

    parser = argparse.ArgumentParser(prog="python -m emolib.bench.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="smoke", help="synthetic release size: smoke (default) or tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(BENCH_DIR))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="emolib-bench-distributed-") as tmp:
        result = bench_distributed(Path(tmp), size=args.size, epochs=args.epochs, batch_size=args.batch_size)
    path = Path(args.out) / f"{NAME}.json"
    write_json(path, result)
    print(f"{NAME}: {path}")
    print({k: v for k, v in result.items() if k != "hardware"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
