"""Run-record schema, paths, reading back, and the multi-seed aggregate."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from emolib.records import (
    SCHEMA_VERSION,
    aggregate,
    environment_info,
    git_commit,
    load_records,
    record_path,
    validate_record,
    write_record,
)


def evaluation(protocol: str, f1: float, acc: float, n: int = 10) -> dict:
    return {
        "protocol": protocol,
        "per_class": {"hap": {"f1": f1, "acc": acc}, "sad": {"f1": f1 / 2, "acc": acc / 2}},
        "average": {"f1": 0.75 * f1, "acc": 0.75 * acc},
        "thresholds": {"hap": 0.35, "sad": 0.5},
        "n": n,
        "notes": [],
    }


def make_record(seed: int = 0, f1: float = 0.6, acc: float = 0.8, model: str = "fe2e", variant: str = "paper") -> dict:
    metrics = {"dai-iemocap": {"valid": evaluation("dai-iemocap", f1 + 0.1, acc),
                               "test": evaluation("dai-iemocap", f1, acc)}}
    return {
        "schema_version": SCHEMA_VERSION, "model": model, "variant": variant, "dataset": "iemocap",
        "dataset_adapter": "iemocap",
        "profile": "smoke", "protocol": "dai-iemocap", "seed": seed,
        "params": {"model": {"d": 64}, "train": {"lr": 5e-5}, "data": {}}, "deviations": {"model.d": 64},
        "metrics": metrics, "thresholds": {"dai-iemocap": {"hap": 0.35, "sad": 0.5}},
        "best_epoch": 2, "epochs_run": 3, "stopped_early": False,
        "curves": {"epoch": [1, 2, 3], "train_loss": [0.9, 0.7, 0.6]},
        "environment": {"python": "3.11"}, "wall_time_s": 12.5, "peak_memory_bytes": 1 << 20,
        "peak_memory_kind": "cpu_rss", "n_params": 100, "n_trainable_params": 90,
        "created_at": "2026-01-02T03:04:05+00:00", "emolib_version": "0.1.0", "git_commit": None,
    }


def test_record_path_layout(tmp_path):
    path = record_path(tmp_path, "smoke", "fe2e", "iemocap", "dai-iemocap", 3)
    assert path == tmp_path / "smoke" / "runs" / "fe2e" / "iemocap" / "dai-iemocap" / "seed=3.json"
    assert record_path("results", "p", "m", "d", "x", np.int64(0)).name == "seed=0.json"
    with pytest.raises(ValueError, match="model must be a plain non-empty name"):
        record_path(tmp_path, "smoke", "a/b", "iemocap", "dai-iemocap", 0)
    with pytest.raises(ValueError, match="seed must be an int"):
        record_path(tmp_path, "smoke", "fe2e", "iemocap", "dai-iemocap", "0")


def test_valid_record_passes():
    validate_record(make_record())


def test_validation_lists_every_problem():
    record = make_record()
    del record["seed"], record["curves"]
    record["model"] = 3
    record["best_epoch"] = 7
    record["metrics"]["dai-iemocap"]["test"]["per_class"]["hap"]["f1"] = "high"
    del record["metrics"]["dai-iemocap"]["valid"]["n"]
    with pytest.raises(ValueError) as err:
        validate_record(record, source="x.json")
    text = str(err.value)
    assert text.startswith("x.json: invalid run record (6 problems)")
    for fragment in ("seed: missing", "curves: missing", "model: expected str, got int",
                     "best_epoch: 7 is outside 1..epochs_run (3)",
                     "metrics.dai-iemocap.test.per_class.hap.f1: expected a number, got str",
                     "metrics.dai-iemocap.valid: missing keys ['n']"):
        assert fragment in text


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(seed=True), "seed: expected int, got bool"),
    (lambda r: r.update(git_commit=5), "git_commit: expected str or None"),
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), "is not the supported"),
    (lambda r: r.update(peak_memory_kind="gpu"), "peak_memory_kind: 'gpu' not in"),
    (lambda r: r.update(n_trainable_params=101), "n_trainable_params: larger than n_params"),
    (lambda r: r.update(created_at="yesterday"), "not an ISO 8601 time"),
    (lambda r: r.update(protocol="e2emal"), "no entry for the primary protocol 'e2emal'"),
    (lambda r: r["metrics"]["dai-iemocap"].pop("test"), "missing split 'test'"),
    (lambda r: r["metrics"]["dai-iemocap"]["valid"].update(protocol="sims"), "does not match its key"),
    (lambda r: r["metrics"]["dai-iemocap"]["valid"]["average"].update(f1=math.inf), "average.f1: infinite"),
    (lambda r: r["curves"].update(epoch=[1, 2]), "2 entries but epochs_run is 3"),
    (lambda r: r["params"].pop("train"), "params.train: expected a dict"),
])
def test_validation_catches(mutate, message):
    record = make_record()
    mutate(record)
    with pytest.raises(ValueError, match="invalid run record") as err:
        validate_record(record)
    assert message in str(err.value)


def test_nan_needs_a_note():
    record = make_record()
    record["metrics"]["dai-iemocap"]["test"]["per_class"]["sad"]["auc"] = math.nan
    with pytest.raises(ValueError, match="NaN/None but 'notes' does not explain it"):
        validate_record(record)
    record["metrics"]["dai-iemocap"]["test"]["notes"] = ["sad: no positive labels in this split"]
    validate_record(record)


def test_write_validates_first_and_load_round_trips(tmp_path):
    root = tmp_path / "results"
    bad = make_record()
    del bad["metrics"]
    target = record_path(root, "smoke", "fe2e", "iemocap", "dai-iemocap", 0)
    with pytest.raises(ValueError, match=r"seed=0\.json: invalid run record"):
        write_record(target, bad)
    assert not target.exists() and not list(tmp_path.rglob("*.tmp"))
    for seed in (1, 0):
        record = make_record(seed)
        record["metrics"]["dai-iemocap"]["test"]["n"] = np.int64(10)  # numpy scalars are converted
        write_record(record_path(root, "smoke", "fe2e", "iemocap", "dai-iemocap", seed), record)
    loaded = load_records(root / "smoke")
    assert [r["seed"] for r in loaded] == [0, 1]
    assert loaded[0] == json.loads(json.dumps(make_record(0)))


def test_load_names_the_bad_file(tmp_path):
    path = record_path(tmp_path, "smoke", "fe2e", "iemocap", "dai-iemocap", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "fe2e"}))
    with pytest.raises(ValueError, match=r"seed=0\.json: invalid run record"):
        load_records(tmp_path / "smoke")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"seed=0\.json: not valid JSON"):
        load_records(tmp_path / "smoke")
    with pytest.raises(FileNotFoundError, match="no runs folder"):
        load_records(tmp_path / "other")


def test_aggregate_matches_numpy():
    f1s, accs = [0.61, 0.58, 0.66], [0.80, 0.84, 0.79]
    records = [make_record(seed, f1, acc) for seed, (f1, acc) in enumerate(zip(f1s, accs))]
    records.append(make_record(0, 0.1, 0.1, variant="code"))
    table = aggregate(records)
    paper = table[table["variant"] == "paper"]
    # 2 splits x (2 classes + avg) x 2 metrics for the one protocol.
    assert len(paper) == 12 and len(table) == 24
    row = paper[(paper["split"] == "test") & (paper["class"] == "hap") & (paper["metric"] == "f1")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(f1s)) and row["std"] == pytest.approx(np.std(f1s, ddof=1))
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    avg = paper[(paper["split"] == "valid") & (paper["class"] == "avg") & (paper["metric"] == "acc")].iloc[0]
    assert avg["mean"] == pytest.approx(np.mean(0.75 * np.array(accs)))
    assert avg["std"] == pytest.approx(np.std(0.75 * np.array(accs), ddof=1))
    single = table[(table["variant"] == "code") & (table["metric"] == "f1")]
    assert single["n_seeds"].eq(1).all() and single["std"].isna().all()
    pop = aggregate(records[:3], ddof=0)
    row = pop[(pop["split"] == "valid") & (pop["class"] == "hap") & (pop["metric"] == "f1")].iloc[0]
    assert row["std"] == pytest.approx(np.std([f + 0.1 for f in f1s]))


def test_aggregate_skips_nan_and_refuses_duplicate_seeds():
    records = [make_record(0, 0.5), make_record(1, 0.7)]
    records[1]["metrics"]["dai-iemocap"]["test"]["per_class"]["hap"]["f1"] = math.nan
    table = aggregate(records)
    row = table[(table["split"] == "test") & (table["class"] == "hap") & (table["metric"] == "f1")].iloc[0]
    assert row["mean"] == 0.5 and row["n_seeds"] == 1 and row["n_missing"] == 1
    with pytest.raises(ValueError, match="two records for seed 0"):
        aggregate([make_record(0), copy.deepcopy(make_record(0))])


def test_environment_and_git(tmp_path):
    env = environment_info()
    assert env["packages"]["torch"] and env["packages"]["numpy"] and env["cpu_count"] >= 1
    assert env["device"] in ("cpu", "cuda") and set(env["packages"]) >= {"accelerate", "facenet-pytorch", "emolib"}
    assert git_commit(tmp_path) is None
