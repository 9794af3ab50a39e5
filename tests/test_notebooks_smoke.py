"""Papermill smoke run of every notebook through the pipeline runner, on the tiny synthetic releases.

The profile below is the smoke profile shrunk to seconds: one tiny release, one epoch. A notebook added to
notebooks/ must be added here too (the first test checks that).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from emolib.pipeline.runner import run_profile

ROOT = Path(__file__).resolve().parents[1]

PROFILE = """
name: nbsmoke
parameters: {device: cpu}
steps:
  - name: data
    notebook: notebooks/01_data.ipynb
    parameters: {synth_size: tiny, face_size: 48, mtcnn_batch: 16}
    runs: [{id: sims, dataset: sims}, {id: iemocap, dataset: iemocap, face_recipe: dai}]
    outputs: ['results/nbsmoke/cache/{dataset}/index.jsonl']
  - name: baselines
    notebook: notebooks/02_unimodal_baselines.ipynb
    parameters: {dataset: sims, model_config: tiny, epochs: 1, batch_size: 4, lr: 0.001}
    runs:
      - {id: audio, modality: audio}
      - {id: visual, modality: visual}
  - name: fv2es
    notebook: notebooks/03_fv2es.ipynb
    parameters: {dataset: sims, model_config: tiny, epochs: 1, batch_size: 4, lr: 0.001, fe2e_lr: 0.001,
                 fe2e_early_stop: 0}
  - name: adaptive
    notebook: notebooks/04_adaptive_loss.ipynb
    parameters: {dataset: iemocap, model_config: tiny, epochs: 1, batch_size: 4, warmup_epochs: 0, cosine_epochs: 1,
                 max_steps_per_epoch: 1, attention_clips: 2}
  - name: multitask
    notebook: notebooks/05_multitask.ipynb
    parameters: {dataset: sims, model_config: tiny, losses: [mean, druw], epochs: 1, batch_size: 4, lr: 0.001,
                 early_stop: 0, face_size: 48}
  - name: robustness
    notebook: notebooks/07_robustness_efficiency.ipynb
    # one corruption: the others are covered by tests/test_evaluate.py; the notebook's path is the same for each
    parameters: {corruptions: [audio-noise], severities: [3], latency_repeats: 1,
                 raw_video_clips: 1, model_configs: [tiny]}
    outputs: [results/nbsmoke/tables/efficiency_runs.md]
  - name: tables
    notebook: notebooks/06_tables_figures.ipynb
    outputs: [results/nbsmoke/tables/sims_sims.md]
"""


def test_every_notebook_is_in_the_smoke_profile() -> None:
    named = {line.split("notebooks/")[1].strip() for line in PROFILE.splitlines() if "notebooks/" in line}
    assert named == {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}


@pytest.mark.integration
def test_notebooks_run_through_the_runner(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "nbsmoke.yaml").write_text(PROFILE)
    out = io.StringIO()
    code = run_profile("nbsmoke", root=tmp_path, out=out)
    assert code == 0, out.getvalue()[-4000:]
    results = tmp_path / "results" / "nbsmoke"
    executed = sorted(p.name for p in (results / "notebooks").glob("*.ipynb"))
    assert executed == ["adaptive.ipynb", "baselines__audio.ipynb", "baselines__visual.ipynb", "data__iemocap.ipynb",
                        "data__sims.ipynb", "fv2es.ipynb", "multitask.ipynb", "robustness.ipynb", "tables.ipynb"]
    for p in (results / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{p.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    records = sorted((results / "runs").rglob("seed=*.json"))
    datasets = sorted(json.loads(r.read_text())["dataset"] for r in records)
    assert datasets == ["synthetic-iemocap"] * 2 + ["synthetic-sims"] * 6, datasets
    table = (results / "tables" / "sims_sims.md").read_text()
    assert "this package" in table and "published" in table and "synthetic-sims" in table
    # the deviation card of the rows shown sits under the table
    assert "*Deviation card*" in table and "model.swap_text_visual_keys" in table and "loss.freeze_sigma" in table
    provenance = json.loads((results / "cache" / "iemocap" / "provenance.json").read_text())
    assert provenance["parameters"]["frame_center_crop"] == 224  # notebook 01's face_recipe: dai
    assert sorted(p.name for p in (results / "figures").glob("*.png"))
    # notebook 07: robustness and efficiency of every checkpoint, linked from notebook 06
    tables = {p.name for p in (results / "tables").iterdir()}
    for stem in ("robustness_sims_sims", "missing_modalities_sims_sims", "robustness_iemocap_e2emal",
                 "efficiency_runs", "efficiency_models"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= tables, (stem, sorted(tables))
    assert {"robustness_sims.png", "missing_modalities_sims.png", "accuracy_latency.png"} <= {
        p.name for p in (results / "figures").glob("*.png")}
    robustness = (results / "tables" / "robustness_sims_sims.md").read_text()
    assert "audio-noise" in robustness and "fv2es" in robustness
    assert "efficiency_runs.md" in json.dumps(nbformat.read(results / "notebooks" / "tables.ipynb", as_version=4))
    # a second run with nothing changed skips every step
    again = io.StringIO()
    assert run_profile("nbsmoke", root=tmp_path, out=again) == 0
    assert again.getvalue().count("skipped (notebook, parameters and inputs unchanged)") == len(executed)


# Notebook 03 with num_processes 2: FE2E and FV2ES each trained by `accelerate launch -m emolib train` (2 gloo
# processes) from inside the papermill kernel, records read back. Slow: two launches, each starting two fresh
# Python processes (2 min 15 s on a loaded 2-core machine, data step included).
DISTRIBUTED_PROFILE = """
name: nbdist
parameters: {device: cpu}
steps:
  - name: data
    notebook: notebooks/01_data.ipynb
    parameters: {synth_size: tiny, face_size: 48, mtcnn_batch: 16}
    runs: [{id: sims, dataset: sims}]
    outputs: ['results/nbdist/cache/{dataset}/index.jsonl']
  - name: fv2es
    notebook: notebooks/03_fv2es.ipynb
    parameters: {dataset: sims, model_config: tiny, epochs: 1, batch_size: 4, lr: 0.001, fe2e_lr: 0.001,
                 fe2e_early_stop: 0, num_processes: 2}
"""


@pytest.mark.slow
def test_notebook_03_trains_in_two_processes(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "nbdist.yaml").write_text(DISTRIBUTED_PROFILE)
    out = io.StringIO()
    assert run_profile("nbdist", root=tmp_path, out=out) == 0, out.getvalue()[-4000:]
    results = tmp_path / "results" / "nbdist"
    nb = nbformat.read(results / "notebooks" / "fv2es.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}"
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("seed=*.json"))]
    assert sorted(r["model"] for r in records) == ["fe2e", "fv2es"]
    assert all(r["environment"]["num_processes"] == 2 for r in records)
    assert "in 2 processes" in out.getvalue()  # the launch streamed its output into the notebook's log
