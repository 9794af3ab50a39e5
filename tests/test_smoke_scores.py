"""The smoke profile's own records (issue 18): each multimodal model's score next to the best unimodal score on its
dataset and the generator's all-modality bound, and every model clear of the best constant predictor.

Scores use each dataset's design metric on test, as tests/test_integration_baselines.py does: IEMOCAP the 6-class
accuracy of the argmax (from the run's best checkpoint), CMU-MOSEI the mean weighted accuracy of the dai-mosei
protocol (thresholds chosen on valid), CH-SIMS Acc2 of M. ``synthetic.chance_accuracy`` is the best constant
predictor C, ``synthetic.cue_accuracy`` the bound U of a rule that sees exactly which expression each modality
shows. A unimodal baseline must close a quarter of the gap to its modality's bound (the margin test); E2EMAL a
quarter of the gap to the bound of its three modalities (tests/test_e2emal_learns.py, here on the profile's own
run); every other multimodal model must beat C, and the table shows how far each gets.

The fixture runs ``emolib run smoke`` from a clean copy of the notebooks and the profile (about 10 minutes on two
cores), so this runs with ``make test-all``, not in the default suite. ``EMOLIB_SMOKE_ROOT=<folder>`` scores a
finished run instead: a folder holding ``results/smoke`` of the current profile, e.g. the last repeat of
``emolib run smoke --bench 3 --keep <folder>``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
import yaml

from emolib.data import synthetic
from emolib.data.dataset import collate
from emolib.experiment import load_splits
from emolib.io import read_json
from emolib.pipeline.benchmark import fresh_root
from emolib.pipeline.profile import load_profile
from emolib.pipeline.runner import run_profile
from emolib.predict import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GAP_FRACTION = 0.25
UNIMODAL = {"audio-only": "audio", "visual-only": "visual", "text-only": "text"}
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _argmax_accuracy(model, dataset) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dataset), 16):
            batch = collate([dataset[j] for j in range(i, min(i + 16, len(dataset)))])
            correct += int((model(batch)["logits"].argmax(1) == batch["labels"].argmax(1)).sum())
    return correct / len(dataset)


def design_score(record: dict, record_path: Path, base: Path) -> float:
    adapter = record["dataset_adapter"]
    if adapter == "mosei":
        return record["metrics"]["dai-mosei"]["test"]["average"]["wacc"]
    if adapter == "sims":
        return record["metrics"]["sims"]["test"]["average"]["acc2"]
    run, dataset = record_path.parts[-4], record_path.parts[-3]
    loaded = load_checkpoint(base / "checkpoints" / run / dataset / record_path.stem, record=record, device="cpu")
    data = load_splits(base / "cache" / adapter, loaded.frames)
    return _argmax_accuracy(loaded.model, data.test)


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> list[dict]:
    if os.environ.get("EMOLIB_SMOKE_ROOT"):
        root = Path(os.environ["EMOLIB_SMOKE_ROOT"])
        # the same steps and parameters (a comment edited since, e.g. a measured time, does not matter)
        assert yaml.safe_load((root / "params" / "smoke.yaml").read_text()) == yaml.safe_load(
            load_profile("smoke", ROOT).path.read_text()), f"{root}: ran another smoke profile than params/smoke.yaml"
    else:
        root = tmp_path_factory.mktemp("smoke-profile")
        profile = load_profile("smoke", ROOT)
        fresh_root(profile.path, ROOT, root, "smoke")
        out = io.StringIO()
        assert run_profile("smoke", root=root, out=out) == 0, out.getvalue()[-4000:]
    base = root / "results" / "smoke"
    rows = []
    for path in sorted((base / "runs").rglob("seed=*.json")):
        record = read_json(path)
        dataset = record["dataset_adapter"]
        modality = UNIMODAL.get(record["model"])
        rows.append({"dataset": dataset, "run": f"{record['model']}:{record['variant']}", "modality": modality,
                     "score": design_score(record, path, base), "chance": synthetic.chance_accuracy(dataset),
                     "bound": synthetic.cue_accuracy(dataset, [modality] if modality else list(synthetic.MODALITIES))})
    for row in rows:
        uni = [r["score"] for r in rows if r["dataset"] == row["dataset"] and r["modality"]]
        row["best_unimodal"] = max(uni) if uni else float("nan")
    print("\nsmoke scores (design metric, test):")
    print(f"  {'dataset':8} {'run':28} {'score':>6} {'best uni':>8} {'bound':>6} {'chance':>6}")
    for r in rows:
        print(f"  {r['dataset']:8} {r['run']:28} {r['score']:6.3f} {r['best_unimodal']:8.3f} {r['bound']:6.3f} "
              f"{r['chance']:6.3f}")
    return rows


def _bar(row: dict) -> float:
    return row["chance"] + GAP_FRACTION * (row["bound"] - row["chance"])


def test_every_run_of_the_profile_is_scored(scores) -> None:
    runs = {(r["dataset"], r["run"].split(":")[0]) for r in scores}
    for dataset in synthetic.DATASETS:
        for model in UNIMODAL:
            assert (dataset, model) in runs
    assert {("iemocap", "fe2e"), ("iemocap", "fv2es"), ("mosei", "e2emal"), ("sims", "emombt")} <= runs


def test_unimodal_baselines_close_a_quarter_of_the_gap(scores) -> None:
    failing = [r for r in scores if r["modality"] and r["score"] < _bar(r)]
    assert not failing, failing


# Issue 18: both E2EMAL rows were exactly 0.5, a constant predictor; tests/test_e2emal_learns.py says why and what
# fixed it (the profile's 16 epochs: 0.61-0.66 on seeds 0 and 1 against a bar of 0.61).
def test_e2emal_learns_in_the_smoke(scores) -> None:
    rows = [r for r in scores if r["run"].startswith("e2emal:")]
    assert {r["run"] for r in rows} == {"e2emal:adaptive", "e2emal:fused-only"}
    failing = [r for r in rows if r["score"] < _bar(r)]
    assert not failing, failing


def test_multimodal_models_beat_the_constant_predictor(scores) -> None:
    failing = [r for r in scores if not r["modality"] and r["score"] <= r["chance"]]
    assert not failing, failing
