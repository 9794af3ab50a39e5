"""The cost estimate that ends a rehearsal (``emolib run PROFILE --rehearse``).

A rehearsal measures, on the paper-size models and batch sizes, the seconds per training step and per evaluation
batch (``record["timing"]``, from its second epoch, after the first steps' one-off costs), the peak memory of
each training run, and the preprocessing seconds and cache bytes per utterance (the cache's ``timing.json`` and
files). The full run is then the real dataset's utterance counts x the profile's epochs x seeds:

    hours = seeds x epochs x (ceil(N_train / batch) x s_per_step + eval_batches x s_per_eval_batch) x scale / 3600

``scale`` is the ratio of the real dataset's mean utterance duration to the synthetic release's (the CNNs, NesT
and transformers see more frames and mel pieces on longer utterances; linear is an assumption). Early stopping can
only shorten a run, so the training rows are upper bounds. Everything is written to
``results/<profile>-rehearsal/estimate.{md,json}`` with the hardware it was measured on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emolib.io import read_json, write_json, write_text

# Real sizes. Counts: Dai et al.'s IEMOCAP 6-class and CMU-MOSEI split lists (5162/737/1481, 14524/1765/4188;
# wenliangdai/Multimodal-End2end-Sparse "data split/"), CH-SIMS's official split 1368/456/457 (Yu et al. 2020).
# Mean utterance durations in seconds: commonly reported values (IEMOCAP ~4.5 s, CMU-MOSEI sentences ~7.3 s,
# CH-SIMS 3.67 s in Yu et al. 2020); the first two are not from the papers reproduced here.
REAL_DATASETS: dict[str, dict[str, Any]] = {
    "iemocap": {"train": 5162, "valid": 737, "test": 1481, "mean_seconds": 4.5},
    "mosei": {"train": 14524, "valid": 1765, "test": 4188, "mean_seconds": 7.3},
    "sims": {"train": 1368, "valid": 456, "test": 457, "mean_seconds": 3.67},
}


def _cache_stats(cache_dir: Path) -> dict[str, Any] | None:
    prov_path = cache_dir / "provenance.json"
    if not prov_path.is_file():
        return None
    prov = read_json(prov_path)
    n = int(prov.get("n_utterances") or 0)
    timing = read_json(cache_dir / "timing.json") if (cache_dir / "timing.json").is_file() else {}
    processed = int(timing.get("utterances_processed") or 0)
    size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    seconds = [json.loads(line).get("n_samples", 0) / 16000
               for line in (cache_dir / "index.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"dataset": prov.get("dataset"), "utterances": n, "bytes_per_utterance": size / n if n else None,
            "prepare_s_per_utterance": timing["seconds"] / processed if processed else None,
            "mean_seconds": sum(seconds) / len(seconds) if seconds else None}


def estimate(base: Path, real_params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of the estimate from a rehearsal's results folder and the real profile's run parameters."""
    from emolib.bench.common import hardware

    base = Path(base)
    state = read_json(base / ".runner" / "state.json") if (base / ".runner" / "state.json").is_file() else {}
    caches = {}
    for prov in sorted((base / "cache").glob("*/provenance.json")):
        stats = _cache_stats(prov.parent)
        if stats:
            caches[prov.parent.name] = stats
    rows, data_rows = [], []
    by_dataset_scale: dict[str, float] = {}
    for name, c in caches.items():
        real = REAL_DATASETS.get(c["dataset"])
        if real is None:
            continue
        n = real["train"] + real["valid"] + real["test"]
        scale = real["mean_seconds"] / c["mean_seconds"] if c["mean_seconds"] else 1.0
        by_dataset_scale[c["dataset"]] = scale
        data_rows.append({
            "cache": name, "dataset": c["dataset"], "utterances": n, "duration_scale": round(scale, 2),
            "prepare_s_per_utterance": c["prepare_s_per_utterance"],
            "prepare_hours": (n * c["prepare_s_per_utterance"] * scale / 3600
                              if c["prepare_s_per_utterance"] is not None else None),
            "cache_gb": n * c["bytes_per_utterance"] * scale / 1e9 if c["bytes_per_utterance"] else None,
        })
    for key, entry in state.items():
        for rel in entry.get("records", []):
            rec = read_json(base / rel)
            real = REAL_DATASETS.get(rec.get("dataset_adapter"))
            timing = rec.get("timing") or {}
            step_s = timing.get("warm_train_step_s") or timing.get("train_step_s")
            batch_s = timing.get("warm_eval_batch_s") or timing.get("eval_batch_s") or 0.0
            if real is None or not step_s:
                continue
            params = dict(real_params.get(key, {}))
            fe2e = rec["model"] == "fe2e" and params.get("fe2e_epochs")
            train = rec["params"]["train"]
            epochs = int(params.get("fe2e_epochs") if fe2e else params.get("epochs") or train["epochs"])
            seeds = len(params.get("seeds") or [0])
            batch = int(train["batch_size"])
            eval_batch = int(train.get("eval_batch_size") or batch)
            steps = math.ceil(real["train"] / batch)
            cap = params.get("max_steps_per_epoch")
            steps = min(steps, int(cap)) if cap else steps
            eval_batches = math.ceil(real["valid"] / eval_batch) + math.ceil(real["test"] / eval_batch)
            scale = by_dataset_scale.get(rec["dataset_adapter"], 1.0)
            epoch_s = (steps * step_s + eval_batches * batch_s) * scale
            rows.append({
                "run": key,
                "model": rec["model"] + ("" if rec["variant"] in ("", "default") else f" ({rec['variant']})"),
                "dataset": rec["dataset_adapter"], "batch": batch, "epochs": epochs, "seeds": seeds,
                "steps_per_epoch": steps, "s_per_step": step_s, "s_per_eval_batch": batch_s,
                "duration_scale": round(scale, 2),
                "hours": seeds * epochs * epoch_s / 3600,
                "peak_memory_gb": rec["peak_memory_bytes"] / 1e9, "peak_memory_kind": rec["peak_memory_kind"],
                "params_m": rec["n_params"] / 1e6,
                "stand_ins": sorted(v for k, v in rec["params"]["model"].items()
                                    if isinstance(v, str) and v.startswith("stand-in:")),
            })
    total = sum(r["hours"] for r in rows) + sum(r["prepare_hours"] or 0 for r in data_rows)
    return {"profile": base.name, "hardware": hardware(), "training": rows, "data": data_rows,
            "total_hours": total, "notes": [
                "training hours are upper bounds (early stopping only shortens a run) and assume step time grows "
                "linearly with utterance duration (duration_scale)",
                "peak memory: process RSS on CPU, torch.cuda.max_memory_allocated on GPU, at the paper batch size "
                "on synthetic utterances (longer real utterances need more)",
                "stand-ins: random-initialised models of the same architecture replaced absent pretrained weights",
            ]}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value)


def to_markdown(est: Mapping[str, Any]) -> str:
    import pandas as pd

    from emolib.tables import markdown_table

    hw = est["hardware"]
    lines = [f"# REHEARSAL estimate of the full `{est['profile'].removesuffix('-rehearsal')}` run",
             "", f"Measured on: {hw.get('gpu') or 'CPU ' + str(hw.get('cpu'))} ({hw.get('cpu_count')} cores, "
             f"torch {hw.get('torch')}, {hw.get('torch_threads')} threads).", "",
             f"**Estimated total: {est['total_hours']:.1f} hours** (one process).", ""]
    if est["data"]:
        lines += ["## Preprocessing", "", markdown_table(pd.DataFrame(
            [{k: _fmt(v) for k, v in r.items()} for r in est["data"]])), ""]
    if est["training"]:
        lines += ["## Training (per run: seeds x epochs)", "", markdown_table(pd.DataFrame(
            [{k: _fmt(v) for k, v in r.items()} for r in est["training"]])), ""]
    lines += ["Notes:", *[f"- {n}" for n in est["notes"]], ""]
    return "\n".join(lines)


def write_estimate(base: Path, real_params: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    est = estimate(base, real_params)
    base = Path(base)
    write_json(base / "estimate.json", est)
    write_text(base / "estimate.md", to_markdown(est))
    return [base / "estimate.json", base / "estimate.md"]
