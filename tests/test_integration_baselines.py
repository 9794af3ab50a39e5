"""Every unimodal baseline beats chance on every synthetic dataset by a margin derived from the generator.

The generator shows the label in a modality with a known probability; ``synthetic.cue_accuracy`` turns that
into the score of the best rule that sees exactly which expression the modality shows (an upper bound U for a
model of that modality), and ``synthetic.chance_accuracy`` gives the best constant predictor C. A baseline must
close at least a quarter of the gap: score >= C + 0.25 (U - C). The fraction was fixed before any run, as a
deliberately loose bar for tiny models trained for a few epochs on ~280 clips; it is not tuned to the results.

Scores use each dataset's design metric on the test split: IEMOCAP 6-class accuracy of the argmax, CMU-MOSEI
the mean weighted accuracy (dai-mosei protocol, thresholds chosen on valid), CH-SIMS Acc2 of M. Each run uses
exactly the parameters that params/smoke.yaml gives notebook 02, on freshly built smoke-size releases (the
session fixture ``smoke_caches`` of conftest.py, prepared with the parameters the profile gives notebook 01).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emolib.data import synthetic
from emolib.data.dataset import collate
from emolib.experiment import load_splits, run_experiment
from emolib.pipeline.profile import load_profile
from emolib.recipes.baselines import unimodal_experiment

GAP_FRACTION = 0.25
ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("audio", "visual", "text")
# Slow (about 9 minutes on 2 idle cores), so it runs with `make test-all`, not in the default suite.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _argmax_accuracy(model, dataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dataset), 16):
            batch = collate([dataset[j] for j in range(i, min(i + 16, len(dataset)))])
            logits = model(batch)["logits"]
            correct += int((logits.argmax(1) == batch["labels"].argmax(1)).sum())
    return correct / len(dataset)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("dataset", synthetic.DATASETS)
def test_unimodal_baseline_beats_chance(dataset, modality, smoke_caches, tmp_path) -> None:
    chance = synthetic.chance_accuracy(dataset)
    bound = synthetic.cue_accuracy(dataset, [modality])
    bar = chance + GAP_FRACTION * (bound - chance)
    data = load_splits(smoke_caches[dataset])
    run = next(r for r in load_profile("smoke", ROOT).runs if r.key == f"baselines:{dataset}-{modality}")
    params = {k: v for k, v in run.parameters.items() if k not in ("seeds", "profile")}
    params.update(profile="itest", cache_dir=str(smoke_caches[dataset]), results_root=tmp_path, progress=False)
    exp = unimodal_experiment(**params)
    kept = {}
    record = run_experiment(exp, [0], data=data, model_hook=lambda m: kept.update(model=m))[0]
    if dataset == "iemocap":
        score = _argmax_accuracy(kept["model"], data.test)
    elif dataset == "mosei":
        score = record["metrics"]["dai-mosei"]["test"]["average"]["wacc"]
    else:
        score = record["metrics"]["sims"]["test"]["average"]["acc2"]
    assert np.isfinite(score)
    assert score >= bar, (f"{modality}-only on synthetic {dataset}: {score:.3f} < {bar:.3f} "
                          f"(chance {chance:.3f}, design bound {bound:.3f})")
