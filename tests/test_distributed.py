"""Training and preprocessing in 2 processes on the CPU (torch.distributed on gloo, started by accelerate launch).

One tiny EmoMBT trained with DRUW (learned sigma, DWA loss history: both kinds of loss state that must stay equal
on every process) on conftest's tiny synthetic IEMOCAP cache (6 train, 1 valid, 2 test utterances), batch 2,
2 epochs:

* in one process (in this pytest process) and in two (``run_experiment(num_processes=2)``, i.e. ``accelerate
  launch -m emolib train``): both evaluate every valid and test utterance exactly once; the two-process record's
  metrics are reproduced exactly by evaluating its ``best.pt`` in one process (gathering and thresholds on the
  whole valid split are exact); training itself agrees within a tolerance (below), not exactly;
* killed after epoch 1 and resumed, both in two processes == the uninterrupted two-process run;
* ``accelerate launch -m emolib prepare`` in two processes writes the same cache, byte for byte, as one process.

Why one and two processes do not train identically, with the same global batch (2) and seed: each process runs
BatchNorm on its own half of the batch (no SyncBatchNorm on CPU) and keeps rank 0's running statistics, each
draws its own dropout masks (both seeded alike, so a half-batch gets other masks than in one process), and
gradients are summed in another order. Stated tolerance: every epoch's training loss within 5 % (measured: 2 %),
every learned sigma within 1e-3 (measured: 1e-5), the loss parts' DWA weights within 2 %.

This file is also the worker that gets killed: ``python tests/test_distributed.py kill SPEC`` under accelerate.
Each launch starts 2 fresh Python processes (~30-60 s on a loaded 2-core machine), so the module takes a few
minutes there; it stays in the default selection because it is the only check of the multi-process code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NPROC = 2
TRAIN = {"epochs": 2, "batch_size": 2, "lr": 1e-3, "device": "cpu", "progress": False}
ROOT = Path(__file__).resolve().parents[1]


def spec(cache: Path, results: Path) -> dict:
    return {"profile": "dist", "model": "emombt", "variant": "druw", "config": "tiny", "cache_dir": str(cache),
            "model_overrides": {"text_model": "tiny-random", "image_size": 32}, "loss": "druw",
            "results_root": str(results), "train": dict(TRAIN), "seeds": [0]}


def accelerate(*args: str) -> list[str]:
    from emolib.launch import _free_port

    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(NPROC),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def run_dir(exp) -> Path:
    return Path(exp.results_root) / exp.profile / "checkpoints" / exp.run_name / "synthetic-iemocap" / "seed=0"


@pytest.fixture(scope="module")
def runs(tiny_caches, tmp_path_factory):
    """{"one": 1-process record, "two": 2-process record, "resumed": killed + resumed 2-process record, ...}."""
    from emolib.experiment import run_experiment
    from emolib.launch import experiment_from_spec

    base = tmp_path_factory.mktemp("distributed")
    exp, seeds, _ = experiment_from_spec(spec(tiny_caches["iemocap"], base / "one"))
    out = {"exp_one": exp, "one": run_experiment(exp, seeds, resume=False)[0]}
    exp_two = dataclasses.replace(exp, results_root=str(base / "two"))
    out["exp_two"], out["two"] = exp_two, run_experiment(exp_two, seeds, resume=False, num_processes=NPROC)[0]

    exp_k = dataclasses.replace(exp, results_root=str(base / "killed"))
    spec_file = base / "killed.json"
    spec_file.write_text(json.dumps(spec(tiny_caches["iemocap"], base / "killed")))
    killed = subprocess.run(accelerate(__file__, "kill", str(spec_file)), capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)
    out["killed"] = killed
    out["killed_last"] = _checkpoint(run_dir(exp_k) / "last.pt")
    out["resumed"] = run_experiment(exp_k, seeds, resume=True, num_processes=NPROC)[0]
    return out


def _checkpoint(path: Path) -> dict | None:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def test_every_sample_is_evaluated_once_in_two_processes(runs, tiny_caches) -> None:
    from emolib.data.cache import Cache

    cache = Cache(tiny_caches["iemocap"])
    sizes = {split: len(cache.uids(split)) for split in ("valid", "test")}
    # valid has 1 utterance and batch 2: the sharded loader pads it to one per process; the pad must not count
    assert sizes == {"valid": 1, "test": 2}
    for key in ("one", "two"):
        for proto, result in runs[key]["metrics"].items():
            assert {split: result[split]["n"] for split in sizes} == sizes, (key, proto)
    assert runs["two"]["environment"]["num_processes"] == NPROC and runs["one"]["environment"]["num_processes"] == 1


def test_two_process_metrics_are_those_of_the_whole_splits(runs) -> None:
    """The record's best-epoch metrics (gathered over 2 processes, thresholds chosen on the gathered valid split)
    equal a one-process evaluation of the same weights."""
    import numpy as np

    from emolib.data.dataset import collate
    from emolib.experiment import load_splits
    from emolib.predict import load_checkpoint
    from emolib.train import TrainConfig, evaluate_epoch, resolve_protocols

    record, exp = runs["two"], runs["exp_two"]
    model = load_checkpoint(run_dir(exp) / "best.pt", record=record, device="cpu", fuse=False).model.eval()
    data = load_splits(exp.cache_dir)

    def outputs(ds):
        import torch

        with torch.no_grad():
            batch = collate([ds[i] for i in range(len(ds))])
            return model(batch)["logits"].float().numpy(), batch["labels"].float().numpy()

    config = TrainConfig(**{k: v for k, v in record["params"]["train"].items()})
    protocols, _ = resolve_protocols(config, record["dataset"])
    again = evaluate_epoch(protocols, outputs(data.valid), outputs(data.test), record["class_names"])
    for proto, result in record["metrics"].items():
        for split in ("valid", "test"):
            mine, theirs = again[proto][split], result[split]
            assert mine["thresholds"] == theirs["thresholds"], (proto, split)
            for key, value in theirs["average"].items():
                if isinstance(value, float) and not math.isnan(value):
                    assert np.isclose(mine["average"][key], value, atol=1e-6), (proto, split, key)


def test_two_processes_train_like_one_within_tolerance(runs) -> None:
    one, two = runs["one"]["curves"], runs["two"]["curves"]
    assert one["epoch"] == two["epoch"] == [1, 2]
    # same global batch: the same number of optimiser steps per epoch as one process
    assert runs["one"]["timing"]["train_steps"] == runs["two"]["timing"]["train_steps"] == 2 * 3
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=0.05)
    parts_one, parts_two = one["train_parts"], two["train_parts"]
    sigmas = [k for k in parts_one if k.startswith("sigma_")]
    assert len(sigmas) == 4
    for key in sigmas:
        assert parts_one[key] == pytest.approx(parts_two[key], abs=1e-3), key
        assert parts_two[key][-1] != pytest.approx(0.25, abs=1e-6), key  # sigma is learned in two processes too
    for key in (k for k in parts_one if k.startswith("dwa_")):
        assert parts_one[key] == pytest.approx(parts_two[key], rel=0.02), key
    # not identical: if it were, the test would not be running two processes
    assert one["train_loss"] != two["train_loss"]


def test_killed_and_resumed_in_two_processes_equals_uninterrupted(runs) -> None:
    from test_train import comparable

    killed = runs["killed"]
    assert killed.returncode != 0, killed.stdout[-3000:] + killed.stderr[-3000:]
    ckpt = runs["killed_last"]
    assert ckpt is not None and ckpt["epoch"] == 1, killed.stderr[-3000:]
    assert len(ckpt["rng_processes"]) == NPROC  # every process's RNG state, not only rank 0's
    resumed, full = runs["resumed"], runs["two"]
    assert resumed["environment"]["num_processes"] == NPROC
    assert comparable(resumed) == comparable(full)


def test_batch_sizes_must_split_evenly_over_the_processes() -> None:
    """The fast check behind the launch below: the trainer refuses batch sizes that the processes cannot share."""
    from emolib.train import TrainConfig, _check_split

    _check_split(TrainConfig(batch_size=3), 1)
    _check_split(TrainConfig(batch_size=4, eval_batch_size=6), 2)
    with pytest.raises(ValueError, match="batch_size 3 is not a multiple of the 2 processes"):
        _check_split(TrainConfig(batch_size=3), 2)
    with pytest.raises(ValueError, match="eval_batch_size 5 is not a multiple of the 2 processes"):
        _check_split(TrainConfig(batch_size=4, eval_batch_size=5), 2)


# Slow: a whole launch (two fresh processes) for one error line; the test above checks the rule, and
# test_bad_spec_is_one_line the one-line error of `emolib train`.
@pytest.mark.slow
def test_bad_batch_split_is_one_clear_line(tiny_caches, tmp_path) -> None:
    """batch 3 cannot be split over 2 processes: the launch fails, naming the batch size and the processes."""
    spec_file = tmp_path / "odd.yaml"
    odd = spec(tiny_caches["iemocap"], tmp_path / "odd")
    odd["train"]["batch_size"] = 3
    spec_file.write_text(json.dumps(odd))
    done = subprocess.run(accelerate("-m", "emolib", "train", str(spec_file)), capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert done.returncode != 0
    assert "error: batch_size 3 is not a multiple of the 2 processes" in done.stderr


def test_prepare_takes_its_shard_from_the_launchers_rank(tiny_releases, tmp_path, monkeypatch, capsys) -> None:
    """The fast check of `accelerate launch -m emolib prepare` (the launch itself is the slow test below): with the
    launcher's RANK / WORLD_SIZE set, `emolib prepare` processes its share only, and the rank that finishes last
    finalises a cache byte-identical to a one-process run."""
    from emolib.cli import main
    from emolib.data.cache import TIMING_FILE

    args = ["prepare", "--dataset", "iemocap", str(tiny_releases["iemocap"])]
    options = ["--face-size", "48", "--batch", "16", "--device", "cpu"]
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(NPROC))
        assert main([*args, str(tmp_path / "two"), *options]) == 0
        out = capsys.readouterr().out
        assert ("cache not finalised yet" in out) == (rank == 1), out
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main([*args, str(tmp_path / "one"), *options]) == 0

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != TIMING_FILE}

    mine, reference = files(tmp_path / "two"), files(tmp_path / "one")
    assert mine and mine == reference


# Slow: one accelerate launch (two fresh processes) plus a one-process reference; the test above covers the same
# code path in this process.
@pytest.mark.slow
def test_prepare_in_two_processes_is_byte_identical(tiny_releases, tmp_path) -> None:
    """Same cache, byte for byte, from one and from two processes at the same thread count: MTCNN's float
    results (and so the face boxes) may differ between thread counts, and accelerate launch runs each process at
    OMP_NUM_THREADS=1, so the one-process reference runs at one thread too."""
    from emolib.data.cache import TIMING_FILE

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ("-m", "emolib", "prepare", "--dataset", "iemocap", str(tiny_releases["iemocap"]))
    options = ("--face-size", "48", "--batch", "16", "--device", "cpu")
    done = subprocess.run(accelerate(*args, str(tmp_path / "two"), *options),
                          capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one"), *options],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert one.returncode == 0, one.stderr[-3000:]

    def files(folder: Path) -> dict[str, bytes]:  # as tests/test_prepare.py: timing.json is not content
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != TIMING_FILE}

    mine, reference = files(tmp_path / "two"), files(tmp_path / "one")
    assert mine and sorted(mine) == sorted(reference)
    assert [k for k in mine if mine[k] != reference[k]] == []
    # both ranks took a share of the source files (the two dialogs of the tiny release)
    assert done.stdout.count("utterances written") == NPROC


# ------------------------------------------------------------------------------------ the spec (no launches)


def test_spec_file_and_flags_build_the_notebooks_experiment(tiny_caches, tmp_path) -> None:
    from emolib.experiment import Experiment
    from emolib.launch import apply_sets, experiment_from_spec, load_spec, spec_of

    cache = tiny_caches["iemocap"]
    path = tmp_path / "exp.yaml"
    path.write_text(f"profile: p\nmodel: fv2es\ncache_dir: {cache}\ntrain: {{epochs: 3}}\nseeds: [1, 2]\n")
    spec = apply_sets(load_spec(path), ["train.lr=1e-5", "frames.face_size=48", "variant=code"])
    exp, seeds, resume = experiment_from_spec(spec, str(path))
    assert exp == Experiment(profile="p", model="fv2es", cache_dir=str(cache), train={"epochs": 3, "lr": 1e-5},
                             frames={"face_size": 48}, variant="code")
    assert (seeds, resume) == ([1, 2], True)
    assert experiment_from_spec(spec_of(exp, seeds, False))[0] == exp  # what launch() hands to the processes


@pytest.mark.parametrize("change, message", [
    ({"epoch": 3}, "exp.yaml: unknown key(s) epoch"),
    ({"train": {"epoch": 3}}, "exp.yaml: train: unknown training parameters ['epoch']"),
    ({"train": {"seed": 3}}, "exp.yaml: train.seed is set per run from seeds"),
    ({"cache_dir": "nowhere"}, "exp.yaml: cache_dir nowhere: not a finished emolib cache"),
    ({"seeds": "0"}, "exp.yaml: seeds must be a non-empty list of integers"),
])
def test_bad_spec_is_one_line(tiny_caches, tmp_path, capsys, change, message) -> None:
    from emolib.launch import main

    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps({"profile": "p", "model": "fv2es", "cache_dir": str(tiny_caches["iemocap"]),
                                **change}))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {tmp_path / message}"), err


# ---------------------------------------------------------------------------------------- worker (not a test)


def _kill_worker(spec_path: str) -> None:
    """Train the spec in this launched process and die, without any cleanup, right after epoch 1's checkpoint."""
    from emolib.experiment import run_experiment
    from emolib.launch import experiment_from_spec, load_spec

    exp, seeds, _ = experiment_from_spec(load_spec(spec_path), spec_path)

    def die(epoch: int, history: list) -> None:  # called on the main process only
        if epoch == 1:
            sys.stdout.flush()
            os._exit(17)

    run_experiment(exp, seeds, resume=False, on_epoch_end=die)


if __name__ == "__main__":
    if sys.argv[1:2] == ["kill"]:
        _kill_worker(sys.argv[2])
