"""The rehearsal of a paper profile, end to end (slow: about 5 minutes on 2 CPU cores; `.ci/run` also runs
`make rehearse REHEARSE=iemocap`), and the estimate arithmetic on a hand-made rehearsal folder (fast)."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest

from emolib.pipeline.rehearsal import REAL_DATASETS, estimate
from emolib.pipeline.runner import run_profile

ROOT = Path(__file__).resolve().parents[1]


def test_estimate_arithmetic(tmp_path: Path) -> None:
    base = tmp_path / "results" / "x-rehearsal"
    cache = base / "cache" / "iemocap"
    cache.mkdir(parents=True)
    (cache / "provenance.json").write_text(json.dumps({"dataset": "iemocap", "n_utterances": 2}))
    (cache / "timing.json").write_text(json.dumps({"seconds": 4.0, "utterances_processed": 2}))
    (cache / "index.jsonl").write_text("\n".join(json.dumps({"n_samples": 16000 * s}) for s in (2, 7)) + "\n")
    record = {"model": "fe2e", "variant": "default", "dataset_adapter": "iemocap", "n_params": 10**6,
              "peak_memory_bytes": 2 * 10**9, "peak_memory_kind": "cpu_rss",
              "params": {"train": {"epochs": 1, "batch_size": 8}, "model": {"text_model": "stand-in:albert-base-v2"}},
              "timing": {"train_step_s": 2.0, "eval_batch_s": 0.5}}
    rec_path = base / "runs" / "fe2e" / "synthetic-iemocap" / "dai-iemocap" / "seed=0.json"
    rec_path.parent.mkdir(parents=True)
    rec_path.write_text(json.dumps(record))
    (base / ".runner").mkdir()
    (base / ".runner" / "state.json").write_text(json.dumps(
        {"fv2es:paper": {"records": [str(rec_path.relative_to(base))]}}))
    est = estimate(base, {"fv2es:paper": {"epochs": 30, "fe2e_epochs": 40, "seeds": [0, 1, 2]}})
    (row,) = est["training"]
    real = REAL_DATASETS["iemocap"]
    scale = real["mean_seconds"] / 4.5  # the synthetic utterances average (2 + 7) / 2 s
    eval_batches = math.ceil(real["valid"] / 8) + math.ceil(real["test"] / 8)
    epoch_s = math.ceil(real["train"] / 8) * 2.0 + eval_batches * 0.5
    assert row["epochs"] == 40 and row["seeds"] == 3  # FE2E's own epochs, the profile's seeds
    assert row["hours"] == pytest.approx(3 * 40 * epoch_s * scale / 3600)
    assert row["stand_ins"] == ["stand-in:albert-base-v2"]
    (data,) = est["data"]
    assert data["prepare_hours"] == pytest.approx(7380 * 2.0 * scale / 3600)


@pytest.mark.slow
def test_iemocap_profile_rehearses_end_to_end(tmp_path: Path) -> None:
    for folder in ("notebooks", "params"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    out = io.StringIO()
    assert run_profile("iemocap", root=tmp_path, rehearse=True, out=out) == 0, out.getvalue()[-4000:]
    base = tmp_path / "results" / "iemocap-rehearsal"
    assert not (tmp_path / "results" / "iemocap").exists()  # never the real results folder
    est = json.loads((base / "estimate.json").read_text())
    models = sorted(r["model"] for r in est["training"])
    assert models == ["audio-only", "fe2e", "fv2es", "fv2es (code)", "text-only", "visual-only"]
    assert all(r["hours"] > 0 and r["peak_memory_gb"] > 0 for r in est["training"])
    assert est["data"][0]["utterances"] == 7380
    table = (base / "tables" / "iemocap_dai-iemocap.md").read_text()
    # no published rows beside rehearsal numbers (the deviation card below may still cite "Dai's published lists")
    assert table.startswith("**REHEARSAL") and "\n| published |" not in table and "\n| this package |" in table
    records = [json.loads(p.read_text()) for p in (base / "runs").rglob("seed=*.json")]
    # the paper-size models (d = 64, ALBERT-base's 768-wide text head), the profile's batch sizes
    assert all(r["params"]["model"]["d"] == 64 for r in records)
    assert {r["params"]["train"]["batch_size"] for r in records} == {2, 8}
    assert any(r["params"]["model"].get("text_model") == "stand-in:albert-base-v2" for r in records)
