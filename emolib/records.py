"""Run records: the JSON file every training run leaves behind, and the helpers that read them back.

A record is the only input of the tables and figures: it names the model, dataset, profile, primary metric
protocol and seed, holds all parameters, the valid and test metrics of every applicable protocol at the best
epoch, the chosen thresholds, learning curves, the environment, timings and memory. Layout on disk::

    results/<profile>/runs/<model>/<dataset>/<protocol>/seed=<seed>.json

``validate_record`` is the schema: ``write_record`` refuses an invalid record and ``load_records`` refuses to
read one, each with every problem listed.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from importlib import metadata
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from emolib.io import read_json, write_json

SCHEMA_VERSION = 2  # 2: dataset_adapter; params.model is the model's config dataclass as a dict

# The class label under which ``aggregate`` reports a protocol's average over classes.
AVERAGE = "avg"
SPLITS = ("valid", "test")
PEAK_MEMORY_KINDS = ("cuda", "cpu_rss")

# Distribution names (as pip knows them) reported by ``environment_info``.
_PACKAGES = ("torch", "torchaudio", "torchvision", "transformers", "timm", "facenet-pytorch", "accelerate",
             "numpy", "scikit-learn", "emolib")

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "model": str,
    "variant": str,
    "dataset": str,
    # The registered dataset (adapter) whose task, classes and protocols the run used; None for a dataset that
    # is not registered (e.g. a hand-made one in a test). Tables read the dataset's facts through it.
    "dataset_adapter": (str, type(None)),
    "profile": str,
    "protocol": str,
    "seed": int,
    "params": dict,
    # {parameter: value} of every paper/code/emolib difference of the run's model and dataset (emolib.deviations)
    "deviations": dict,
    "metrics": dict,
    "thresholds": dict,
    "best_epoch": int,
    "epochs_run": int,
    "stopped_early": bool,
    "curves": dict,
    "environment": dict,
    "wall_time_s": Real,
    "peak_memory_bytes": int,
    "peak_memory_kind": str,
    "n_params": int,
    "n_trainable_params": int,
    "created_at": str,
    "emolib_version": str,
    "git_commit": (str, type(None)),
}
_EVAL_KEYS = ("protocol", "per_class", "average", "thresholds", "n", "notes")


def record_path(results_root: str | os.PathLike, profile: str, model: str, dataset: str, protocol: str,
                seed: int, fold: int | None = None) -> Path:
    """``results_root/<profile>/runs/<model>/<dataset>/<protocol>/seed=<seed>.json`` (``seed=<seed>,fold=<k>.json``
    for one fold of a k-fold run)."""
    parts = {"profile": profile, "model": model, "dataset": dataset, "protocol": protocol}
    for what, value in parts.items():
        if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError(f"record_path: {what} must be a plain non-empty name, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"record_path: seed must be an int, got {seed!r}")
    name = f"seed={int(seed)}" + (f",fold={int(fold)}" if fold is not None else "")
    return Path(results_root) / profile / "runs" / model / dataset / protocol / f"{name}.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    if expected is int:
        return _is_int(value)
    if expected is Real:
        return _is_number(value)
    return isinstance(value, expected)


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join("None" if t is type(None) else t.__name__ for t in expected)
    return "number" if expected is Real else expected.__name__


def _check_values(where: str, values: Any, problems: list[str]) -> bool:
    """Append a problem for every non-number; return whether a NaN was seen (allowed only with a note)."""
    if not isinstance(values, Mapping):
        problems.append(f"{where}: expected a dict of metric values, got {type(values).__name__}")
        return False
    saw_nan = False
    for name, value in values.items():
        if value is None:
            # JSON has no NaN literal in strict readers; None is accepted as an explicit "not defined".
            saw_nan = True
        elif not _is_number(value):
            problems.append(f"{where}.{name}: expected a number, got {type(value).__name__}")
        elif math.isnan(value):
            saw_nan = True
        elif math.isinf(value):
            problems.append(f"{where}.{name}: infinite value")
    return saw_nan


def _check_eval(where: str, ev: Any, protocol: str, problems: list[str]) -> None:
    if not isinstance(ev, Mapping):
        problems.append(f"{where}: expected an evaluation dict, got {type(ev).__name__}")
        return
    missing = [k for k in _EVAL_KEYS if k not in ev]
    if missing:
        problems.append(f"{where}: missing keys {missing}")
    if "protocol" in ev and ev["protocol"] != protocol:
        problems.append(f"{where}.protocol: {ev['protocol']!r} does not match its key {protocol!r}")
    if "n" in ev and not (_is_int(ev["n"]) and ev["n"] >= 0):
        problems.append(f"{where}.n: expected a non-negative int, got {ev['n']!r}")
    notes = ev.get("notes")
    if "notes" in ev and not (isinstance(notes, str) or
                              (isinstance(notes, list) and all(isinstance(x, str) for x in notes))):
        problems.append(f"{where}.notes: expected a string or a list of strings")
    saw_nan = False
    if "average" in ev:
        saw_nan |= _check_values(f"{where}.average", ev["average"], problems)
    per_class = ev.get("per_class")
    if "per_class" in ev:
        if not isinstance(per_class, Mapping) or not per_class:
            problems.append(f"{where}.per_class: expected a non-empty dict class -> metrics")
        else:
            for cls, values in per_class.items():
                saw_nan |= _check_values(f"{where}.per_class.{cls}", values, problems)
    thresholds = ev.get("thresholds")
    if thresholds is not None and "thresholds" in ev:
        if not isinstance(thresholds, Mapping):
            problems.append(f"{where}.thresholds: expected a dict class -> threshold or None")
        else:
            bad = [c for c, t in thresholds.items() if not _is_number(t) or not math.isfinite(t)]
            if bad:
                problems.append(f"{where}.thresholds: non-numeric or non-finite threshold for {bad}")
    if saw_nan and not notes:
        problems.append(f"{where}: a metric is NaN/None but 'notes' does not explain it")


def _check_metrics(record: Mapping[str, Any], problems: list[str]) -> None:
    metrics = record["metrics"]
    if not metrics:
        problems.append("metrics: empty; expected at least the primary protocol")
    if isinstance(record.get("protocol"), str) and record["protocol"] not in metrics:
        problems.append(f"metrics: no entry for the primary protocol {record['protocol']!r}")
    for proto, splits in metrics.items():
        if not isinstance(splits, Mapping):
            problems.append(f"metrics.{proto}: expected {{'valid': ..., 'test': ...}}")
            continue
        for split in SPLITS:
            if split not in splits:
                problems.append(f"metrics.{proto}: missing split {split!r}")
            else:
                _check_eval(f"metrics.{proto}.{split}", splits[split], proto, problems)
    thresholds = record["thresholds"]
    for proto, value in thresholds.items():
        if proto not in metrics:
            problems.append(f"thresholds.{proto}: protocol has no metrics")
        if value is not None and not isinstance(value, Mapping):
            problems.append(f"thresholds.{proto}: expected a dict class -> threshold or None")


def _check_curves(curves: Mapping[str, Any], epochs_run: Any, problems: list[str]) -> None:
    for key in ("epoch", "train_loss"):
        if not isinstance(curves.get(key), list):
            problems.append(f"curves.{key}: expected a list")
    if isinstance(curves.get("epoch"), list) and _is_int(epochs_run) and len(curves["epoch"]) != epochs_run:
        problems.append(f"curves.epoch: {len(curves['epoch'])} entries but epochs_run is {epochs_run}")
    losses = curves.get("train_loss")
    if isinstance(losses, list) and not all(_is_number(v) for v in losses):
        problems.append("curves.train_loss: expected numbers")


def _check_scalars(record: Mapping[str, Any], problems: list[str]) -> None:
    if record.get("schema_version") != SCHEMA_VERSION and _is_int(record.get("schema_version")):
        problems.append(f"schema_version: {record['schema_version']} is not the supported {SCHEMA_VERSION}")
    for key in ("model", "variant", "dataset", "profile", "protocol"):
        if isinstance(record.get(key), str) and not record[key]:
            problems.append(f"{key}: empty string")
    if isinstance(record.get("params"), Mapping):
        for sub in ("model", "train", "data"):
            if not isinstance(record["params"].get(sub), Mapping):
                problems.append(f"params.{sub}: expected a dict")
    best, run = record.get("best_epoch"), record.get("epochs_run")
    if _is_int(best) and _is_int(run) and not 1 <= best <= run:
        problems.append(f"best_epoch: {best} is outside 1..epochs_run ({run})")
    for key in ("n_params", "n_trainable_params", "peak_memory_bytes"):
        if _is_int(record.get(key)) and record[key] < 0:
            problems.append(f"{key}: negative")
    if _is_int(record.get("n_params")) and _is_int(record.get("n_trainable_params")) \
            and record["n_trainable_params"] > record["n_params"]:
        problems.append("n_trainable_params: larger than n_params")
    if _is_number(record.get("wall_time_s")) and not (math.isfinite(record["wall_time_s"])
                                                       and record["wall_time_s"] >= 0):
        problems.append("wall_time_s: expected a finite number >= 0")
    if isinstance(record.get("peak_memory_kind"), str) and record["peak_memory_kind"] not in PEAK_MEMORY_KINDS:
        problems.append(f"peak_memory_kind: {record['peak_memory_kind']!r} not in {PEAK_MEMORY_KINDS}")
    if isinstance(record.get("created_at"), str):
        try:
            datetime.fromisoformat(record["created_at"])
        except ValueError:
            problems.append(f"created_at: {record['created_at']!r} is not an ISO 8601 time")


def record_problems(record: Any) -> list[str]:
    """Every schema problem of ``record`` (empty when it is valid)."""
    if not isinstance(record, Mapping):
        return [f"expected a JSON object, got {type(record).__name__}"]
    problems: list[str] = []
    for key, expected in _REQUIRED.items():
        if key not in record:
            problems.append(f"{key}: missing")
        elif not _type_ok(record[key], expected):
            problems.append(f"{key}: expected {_type_name(expected)}, got {type(record[key]).__name__}")
    _check_scalars(record, problems)
    if isinstance(record.get("metrics"), Mapping) and isinstance(record.get("thresholds"), Mapping):
        _check_metrics(record, problems)
    if isinstance(record.get("curves"), Mapping):
        _check_curves(record["curves"], record.get("epochs_run"), problems)
    return problems


def validate_record(record: Any, *, source: str | os.PathLike | None = None) -> None:
    """Raise ``ValueError`` listing every problem of ``record``; ``source`` names the file in the message."""
    problems = record_problems(record)
    if problems:
        where = f"{source}: " if source is not None else ""
        raise ValueError(f"{where}invalid run record ({len(problems)} problems):\n  - " + "\n  - ".join(problems))


def to_builtin(obj: Any) -> Any:
    """Plain-Python copy of ``obj`` (numpy scalars/arrays, tuples, paths) so that validation sees JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


RECORD_LOG_ENV = "EMOLIB_RECORD_LOG"
"""Where set (the pipeline runner sets it for each kernel), ``write_record`` appends the path of every record it
writes to this file: the runner learns which records a run wrote even while other runs write theirs."""


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Validate ``record`` and write it atomically as JSON to ``path`` (and note it in ``RECORD_LOG_ENV``)."""
    clean = to_builtin(record)
    validate_record(clean, source=path)
    write_json(path, clean)
    log = os.environ.get(RECORD_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{Path(path).resolve()}\n")
    return Path(path)


def load_records(profile_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under ``profile_root/runs`` (i.e. ``results/<profile>``), sorted by path, validated."""
    root = Path(profile_root)
    runs = root / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{runs}: no runs folder; has this profile trained anything yet?")
    records = []
    for path in sorted(runs.rglob("seed=*.json")):
        try:
            record = read_json(path)
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        validate_record(record, source=path)
        records.append(record)
    return records


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding emolib, or None (no git, not a repo, no commit yet)."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def environment_info() -> dict[str, Any]:
    """Python, platform, package versions, device, GPU name, CUDA version and CPU count of this process."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "device": "cuda" if cuda else "cpu",
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cuda_version": torch.version.cuda,
        "cpu_count": os.cpu_count(),
    }


def _metric_rows(record: Mapping[str, Any]) -> Iterable[tuple[tuple[str, ...], float]]:
    for proto, splits in record["metrics"].items():
        for split in SPLITS:
            ev = splits[split]
            for cls, values in ev["per_class"].items():
                for metric, value in values.items():
                    yield (proto, split, str(cls), metric), value
            for metric, value in ev["average"].items():
                yield (proto, split, AVERAGE, metric), value


def aggregate(records: Iterable[Mapping[str, Any]], *, ddof: int = 1):
    """Mean and standard deviation over seeds (and the folds of k-fold runs) of every metric.

    One row per (model, variant, dataset, protocol, split, class, metric); ``class`` is ``"avg"`` for the
    protocol's average over classes. ``std`` uses ``ddof`` (1: the sample standard deviation usually
    reported as "± std over seeds"; NaN for a single seed). NaN/None values are left out of the statistics
    and counted in ``n_missing``. The variant is part of the key so that, e.g., a paper-faithful and a
    code-faithful run of one model are never averaged together. Returns a pandas DataFrame.
    """
    import pandas as pd

    # A replicate is a seed, or a (seed, fold) pair of a k-fold run: folds are averaged like seeds.
    values: dict[tuple[str, ...], dict[tuple[int, int], float]] = {}
    for record in records:
        head = (record["model"], record["variant"], record["dataset"])
        fold = record.get("extra", {}).get("fold")
        replicate = (record["seed"], -1 if fold is None else int(fold))
        for key, value in _metric_rows(record):
            seeds = values.setdefault(head + key, {})
            if replicate in seeds:
                what = f"seed {record['seed']}" + (f", fold {fold}" if fold is not None else "")
                raise ValueError(f"aggregate: two records for {what} of {head + key[:1]}")
            seeds[replicate] = math.nan if value is None else float(value)
    rows = []
    for key, by_seed in values.items():
        arr = np.array([by_seed[s] for s in sorted(by_seed)], dtype=np.float64)
        ok = arr[~np.isnan(arr)]
        rows.append(dict(zip(("model", "variant", "dataset", "protocol", "split", "class", "metric"), key),
                         mean=float(ok.mean()) if ok.size else math.nan,
                         std=float(ok.std(ddof=ddof)) if ok.size > ddof else math.nan,
                         n_seeds=int(ok.size), n_missing=int(arr.size - ok.size),
                         seeds=sorted({s for s, _ in by_seed}), folds=sorted({f for _, f in by_seed if f >= 0})))
    columns = ["model", "variant", "dataset", "protocol", "split", "class", "metric", "mean", "std", "n_seeds",
               "n_missing", "seeds", "folds"]
    return pd.DataFrame(rows, columns=columns)
