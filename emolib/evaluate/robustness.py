"""Robustness of a trained run: its test split under missing modalities and corrupted raw inputs.

Given a run record and its ``best.pt`` (rebuilt with ``emolib.predict.load_checkpoint``, unfused, as the trainer
evaluated it), every condition is scored with the protocols of the record and the **valid thresholds stored in the
record** (never re-tuned on the corrupted data). The clean condition goes through the very same code path and must
reproduce the record's test score; ``clean_check`` says whether it does.

Conditions (``conditions()``):

* ``clean``;
* missing modalities: each modality removed, and each pair (``emolib.evaluate.corruptions.remove_modalities``);
* corruptions of the raw inputs at three severities (``emolib.evaluate.corruptions.CORRUPTIONS``), seeded per
  utterance so that every model sees the same inputs.

What "removed" means inside each model (``REMOVAL``) is the model's own handling of an absent input, reached
through the batch contract: ``face_lengths`` 0 with no face tensor, ``audio_lengths`` 0 (the waveform padded with
zeros), and an empty transcript.

A condition that only touches inputs a model never reads (e.g. audio noise for ``text-only``) cannot change its
outputs; it is not recomputed, the clean outputs are reused and the row says so (``reused_clean``). Within a model
that reads several inputs, the encoders of the inputs a condition leaves alone answer from their clean outputs
(``emolib.evaluate.encoder_memo``): the same numbers, about half the work of a multimodal run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolib.data.cache import Cache, Record
from emolib.data.dataset import FrameOptions, collate, record_item
from emolib.evaluate.corruptions import (
    CORRUPTIONS,
    MODALITIES,
    SEVERITIES,
    corrupt,
    missing_conditions,
    remove_modalities,
)
from emolib.evaluate.encoder_memo import EncoderMemo
from emolib.experiment import score, split_uids
from emolib.io import read_json
from emolib.metrics import get_protocol
from emolib.records import validate_record

_FE2E_REMOVAL = ("visual: no frames (face_lengths 0), the CLS transformer reads its CLS token alone; audio: an empty "
                 "waveform, which MelPieces turns into one all-zero mel piece; text: an empty transcript, encoded as "
                 "[CLS] [SEP]. The removed branch's logits still enter the weighted late fusion.")
REMOVAL: dict[str, str] = {
    "fe2e": _FE2E_REMOVAL,
    "fv2es": _FE2E_REMOVAL,
    "audio-only": "reads audio only: removing audio leaves one all-zero mel piece; other removals change nothing.",
    "visual-only": "reads faces only: removing them leaves the CLS token alone; other removals change nothing.",
    "text-only": "reads the transcript only: removing it leaves [CLS] [SEP]; other removals change nothing.",
    "e2emal": ("visual: no face passes the confidence filter, so all its frames (16 in the paper configuration) "
               "are black (E2EMAL's own rule for a clip without a confident face); audio: an empty waveform gives an "
               "all-zero dB spectrogram; text: 30 zero word vectors. The modality attention still weighs all three "
               "features."),
    "emombt": ("visual: no frames, the visual sequence holds its bottleneck tokens and CLS only (padding mask); audio: "
               "an empty waveform is zero-padded to one 0.96 s VGGish example of silence; text: [CLS] [SEP]. The "
               "bottleneck tokens still carry whatever the remaining modalities put in."),
}


# ------------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """A run record, where it lies, and its best checkpoint."""

    record: dict[str, Any]
    record_path: Path
    checkpoint: Path

    @property
    def name(self) -> str:
        """The run's label: model, variant when not the default."""
        r = self.record
        return r["model"] if r.get("variant") in (None, "", "default") else f"{r['model']} ({r['variant']})"


def find_runs(profile_root: str | Path) -> tuple[list[Run], list[str]]:
    """Every run record under ``profile_root/runs`` with its ``best.pt``; plus one line per record without one.

    Layout (``emolib.experiment``): ``runs/<run>/<dataset>/<protocol>/seed=<s>.json`` and
    ``checkpoints/<run>/<dataset>/seed=<s>/best.pt``.
    """
    root = Path(profile_root)
    if not (root / "runs").is_dir():
        raise FileNotFoundError(f"{root / 'runs'}: no runs folder; has this profile trained anything yet?")
    runs, missing = [], []
    for path in sorted((root / "runs").rglob("seed=*.json")):
        record = read_json(path)
        validate_record(record, source=path)
        run, dataset = path.parts[-4], path.parts[-3]
        ckpt = root / "checkpoints" / run / dataset / path.stem / "best.pt"
        if ckpt.is_file():
            runs.append(Run(record, path, ckpt))
        else:
            missing.append(f"{path}: no checkpoint at {ckpt}")
    return runs, missing


def resolve_cache(record: Mapping[str, Any], search: Sequence[str | Path] = ()) -> Path:
    """The cache a run was trained on: ``params.data.cache`` as written (relative to the working directory of the
    run), else relative to each folder of ``search``."""
    given = record.get("params", {}).get("data", {}).get("cache")
    if not given:
        raise ValueError(f"run record of {record.get('model')} names no cache (params.data.cache)")
    for base in (Path("."), *map(Path, search)):
        path = base / given if not Path(given).is_absolute() else Path(given)
        if (path / "index.jsonl").is_file():
            return path
    raise FileNotFoundError(f"cache {given} of the {record.get('model')} run on {record.get('dataset')} not found "
                            f"(looked relative to . and {', '.join(map(str, search)) or 'nothing else'})")


# ------------------------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    kind: str  # clean | missing | corruption
    name: str  # "clean", "-audio", "-audio-text", or a corruption name
    severity: int = 0
    removed: tuple[str, ...] = ()

    @property
    def touches(self) -> frozenset[str]:
        """The modalities whose inputs this condition changes."""
        if self.kind == "missing":
            return frozenset(self.removed)
        if self.kind == "corruption":
            return frozenset({CORRUPTIONS[self.name].modality})
        return frozenset()

    @property
    def label(self) -> str:
        if self.kind == "corruption":
            return CORRUPTIONS[self.name].label(self.severity)
        return self.name

    def apply(self, rec: Record, seed: int = 0) -> Record:
        if self.kind == "missing":
            return remove_modalities(rec, self.removed)
        if self.kind == "corruption":
            return corrupt(rec, self.name, self.severity, seed)
        return rec


CLEAN = Condition("clean", "clean")


def missing_name(removed: Iterable[str]) -> str:
    return "-" + "-".join(removed)


def conditions(corruptions: Iterable[str] | None = None, severities: Iterable[int] = SEVERITIES, *,
               missing: bool = True) -> list[Condition]:
    """clean, then every missing-modality condition, then each corruption at each severity."""
    out = [CLEAN]
    if missing:
        out += [Condition("missing", missing_name(r), 0, r) for r in missing_conditions()]
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    for name in names:
        if name not in CORRUPTIONS:
            raise KeyError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
        out += [Condition("corruption", name, int(s)) for s in severities]
    return out


def model_modalities(model: torch.nn.Module) -> frozenset[str]:
    """The inputs a model reads: FE2E-family models and EmoMBT name theirs (``modalities`` letters), E2EMAL reads
    all three."""
    letters = getattr(model, "modalities", None)
    if letters is None:
        letters = getattr(getattr(model, "config", None), "modalities", None)
    if letters is None:
        return frozenset(MODALITIES)
    names = {"t": "text", "v": "visual", "a": "audio"}
    return frozenset(names[str(m)[0].lower()] for m in letters)


# -------------------------------------------------------------------------------------------- evaluation


def split_records(cache: Cache, split: str = "test", record: Mapping[str, Any] | None = None) -> list[Record]:
    uids = split_uids(cache, record, split)
    if not uids:
        raise ValueError(f"{cache.root}: no utterances in split {split!r}")
    return [cache.load(u) for u in uids]


def fills_missing(record: Mapping[str, Any]) -> bool:
    """Whether the run gave records without a modality placeholders (``Experiment.missing_modalities="fill"``)."""
    return record.get("extra", {}).get("missing_modalities") == "fill"


def item_of(rec: Record, frames: FrameOptions, fill_missing: bool = False) -> dict[str, Any]:
    """A dataset item exactly as ``CachedDataset`` builds it (``emolib.data.dataset.record_item``)."""
    return record_item(rec, frames, fill_missing)


def batch_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate``, with a one-sample zero column when no utterance has audio (the lengths stay 0)."""
    batch = collate(items)
    if batch["audio"].shape[1] == 0:
        batch["audio"] = torch.zeros(len(items), 1)
    return batch


@torch.no_grad()
def predict_records(model: torch.nn.Module, records: Sequence[Record], frames: FrameOptions, *,
                    batch_size: int = 8, fill_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits ("logits" head, float32) and labels of ``records``, in order, as the trainer's ``predict``."""
    model.eval()
    outs, labs = [], []
    for start in range(0, len(records), batch_size):
        batch = batch_of([item_of(r, frames, fill_missing) for r in records[start:start + batch_size]])
        outs.append(model(batch)["logits"].float().cpu())
        labs.append(batch["labels"].float())
    return torch.cat(outs).numpy(), torch.cat(labs).numpy()


def clean_check(record: Mapping[str, Any], clean: Mapping[str, Mapping[str, Any]], tol: float = 1e-6) -> list[str]:
    """Differences between the recomputed clean averages and the record's test averages (empty: they agree)."""
    problems = []
    for name, average in clean.items():
        stored = record["metrics"][name]["test"]["average"]
        for key, value in stored.items():
            mine = average.get(key)
            if value is None or mine is None or isinstance(value, bool):
                if (value is None) != (mine is None or (isinstance(mine, float) and math.isnan(mine))):
                    problems.append(f"{name}.{key}: record {value}, recomputed {mine}")
                continue
            if isinstance(value, (int, float)) and not (abs(float(mine) - float(value)) <= tol
                                                        or (math.isnan(float(mine)) and math.isnan(float(value)))):
                problems.append(f"{name}.{key}: record {value}, recomputed {mine}")
    return problems


def evaluate_run(run: Run, conds: Sequence[Condition] | None = None, *, device: str | None = "cpu",
                 batch_size: int | None = None, seed: int = 0, cache_search: Sequence[str | Path] = (),
                 records: Sequence[Record] | None = None, reuse_unread: bool = True, reuse_encoders: bool = True,
                 progress: bool = False) -> list[dict[str, Any]]:
    """One row per (condition, protocol) for ``run``: the protocol's test averages (raw, not x100), the condition,
    whether the clean outputs were reused, and, for ``clean``, ``matches_record``.

    ``batch_size`` defaults to the run's evaluation batch size (padding does not change a model's outputs, but the
    same batches keep float rounding identical). ``records``: the test records of the run's cache, when the caller
    loaded them already (shared by the runs on one cache). ``reuse_encoders``: answer encoder calls whose inputs
    the clean pass saw from its outputs (``EncoderMemo``; False recomputes everything, for checking).
    """
    from emolib.predict import load_checkpoint

    conds = list(conds) if conds is not None else conditions()
    conds = [CLEAN, *(c for c in conds if c != CLEAN)]  # first: the others may reuse its outputs
    rec = run.record
    loaded = load_checkpoint(run.checkpoint, record=rec, device=device, fuse=False)
    model = loaded.model
    train = rec["params"]["train"]
    bs = int(batch_size or train.get("eval_batch_size") or train.get("batch_size") or 8)
    if records is None:
        records = split_records(Cache(resolve_cache(rec, cache_search)), "test", rec)
    reads = model_modalities(model)
    base = {"run": run.name, "model": rec["model"], "variant": rec.get("variant", "default"),
            "dataset": rec["dataset"], "adapter": rec.get("dataset_adapter"),
            "seed": rec["seed"], "primary": rec["protocol"], "n": len(records)}
    rows = []
    clean_out = None
    iterator = conds
    if progress:
        from tqdm import tqdm

        iterator = tqdm(conds, desc=run.name, leave=False)
    # The encoders of the modalities a condition leaves alone see the clean pass's inputs again: their clean
    # outputs are reused (the same tensors, so the rows are the ones a full recomputation gives).
    memo = EncoderMemo(model) if reuse_encoders else contextlib.nullcontext()
    with memo:
        for cond in iterator:
            reused = cond != CLEAN and reuse_unread and not (cond.touches & reads)
            if reused:
                outputs, labels = clean_out
            else:
                if reuse_encoders:
                    memo.recording = cond == CLEAN
                outputs, labels = predict_records(model, [cond.apply(r, seed) for r in records], loaded.frames,
                                                  batch_size=bs, fill_missing=fills_missing(rec))
            rows += _condition_rows(rec, base, cond, outputs, labels, reused)
            if cond == CLEAN:
                clean_out = (outputs, labels)
    return rows


def _condition_rows(rec: Mapping[str, Any], base: dict[str, Any], cond: Condition, outputs: np.ndarray,
                    labels: np.ndarray, reused: bool) -> list[dict[str, Any]]:
    """One row per protocol for one condition's outputs (the clean one checked against the run record)."""
    scores = score(rec, outputs, labels)
    mismatch = clean_check(rec, scores) if cond == CLEAN else None
    return [{**base, "kind": cond.kind, "condition": cond.name, "severity": cond.severity, "level": cond.label,
             "protocol": proto, "reused_clean": reused, "matches_record": None if mismatch is None else not mismatch,
             "mismatch": None if not mismatch else "; ".join(mismatch),
             **{k: v for k, v in average.items() if isinstance(v, (int, float)) or v is None}}
            for proto, average in scores.items()]


def evaluate_runs(runs: Sequence[Run], conds: Sequence[Condition] | None = None, *, device: str | None = "cpu",
                  seed: int = 0, cache_search: Sequence[str | Path] = (), progress: bool = True,
                  workers: int = 1):
    """``evaluate_run`` for every run (test records loaded once per cache) as one DataFrame, rows in run order.

    ``workers > 1`` evaluates the runs in that many processes, one thread each (tiny models use a second thread
    poorly: two processes evaluate about twice as many runs per second on two cores as one process with two
    threads); each process loads the test records of the caches it meets once. The rows are the same as with one
    process (the clean condition still has to reproduce every record)."""
    import pandas as pd

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and len(runs) > 1:
        return pd.DataFrame(_evaluate_in_processes(runs, conds, device, seed, cache_search, progress, workers))
    loaded: dict[tuple[str, str], list[Record]] = {}
    rows = []
    for run in runs:
        rows += evaluate_run(run, conds, device=device, seed=seed, records=_test_records(run, cache_search, loaded),
                             progress=progress)
    return pd.DataFrame(rows)


def _test_records(run: Run, cache_search: Sequence[str | Path],
                  loaded: dict[tuple[str, str], list[Record]]) -> list[Record]:
    """The test records of the run's cache and split, loaded once per (cache, split rule) into ``loaded``."""
    import json

    cache_dir = resolve_cache(run.record, cache_search).resolve()
    key = (str(cache_dir), json.dumps(run.record.get("extra", {}).get("split") or {}, sort_keys=True))
    if key not in loaded:
        loaded[key] = split_records(Cache(cache_dir), "test", run.record)
    return loaded[key]


def _evaluate_in_processes(runs, conds, device, seed, cache_search, progress, workers) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter (a forked Jupyter kernel with torch's thread pools is not safe to reuse)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(runs)), mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(_evaluate_one, run, conds, device, seed, tuple(cache_search)) for run in runs]
        rows = []
        for run, future in zip(runs, futures):
            rows += future.result()
            if progress:
                print(f"robustness: {run.name} done", flush=True)
    return rows


def _one_thread() -> None:
    torch.set_num_threads(1)


_WORKER_RECORDS: dict[tuple[str, str], list[Record]] = {}


def _evaluate_one(run: Run, conds, device, seed, cache_search) -> list[dict[str, Any]]:
    """One run in a worker process; the test records of each cache are loaded once per process."""
    return evaluate_run(run, conds, device=device, seed=seed,
                        records=_test_records(run, cache_search, _WORKER_RECORDS))


def headline_key(protocol: str) -> str:
    """The metric the robustness tables and figures show: the protocol's selection metric (Dai: F1, E2EMAL: weighted
    accuracy, CH-SIMS: F1); a "+" combination falls back to the last headline metric."""
    proto = get_protocol(protocol)
    return proto.select_key if "+" not in proto.select_key else proto.headline[-1]
