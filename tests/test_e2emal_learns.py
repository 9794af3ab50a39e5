"""E2EMAL learns on the synthetic CMU-MOSEI release: it beats the best constant predictor by a margin derived from
the generator's design (issue 18: both E2EMAL rows of the smoke tables were exactly 50.0, a constant predictor).

As in tests/test_integration_baselines.py: ``synthetic.chance_accuracy`` is the score C of the best constant
predictor (0.5 weighted accuracy), ``synthetic.cue_accuracy`` the score U of the best rule that sees exactly which
expression every modality E2EMAL reads (audio, visual, text) shows. The run must close a quarter of the gap:
score >= C + 0.25 (U - C), score = the mean weighted accuracy of the dai-mosei protocol on test (thresholds chosen
on valid, the table's protocol) at the epoch the recipe selects. The run uses the parameters params/smoke.yaml
gives notebook 04 (step ``adaptive-loss``), on the smoke-size release prepared as the profile's notebook 01 does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emolib.data import synthetic
from emolib.experiment import load_splits, run_experiment
from emolib.pipeline.profile import load_profile
from emolib.recipes.e2emal import E2EMAL_FRAMES, FrameOptions, e2emal_experiment

GAP_FRACTION = 0.25
ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("audio", "visual", "text")

# Parameters laid over the profile's step ``adaptive-loss`` (issue 18), for a smoke schedule under trial before
# params/smoke.yaml carries it; empty: the test checks the profile as it stands. Findings: the smoke rows were exactly
# 0.5 because (1) the code's class weight is a per-class constant (emolib.losses.adaptive, QUIRK), so the sigmoids
# settle at the emotions' rates, all below 0.5 on the synthetic release, and E2EMAL's weighted accuracy at its fixed
# 0.5 threshold is then exactly 0.5; (2) model selection uses that accuracy, so it kept epoch 1; (3) in the tiny
# configuration GaussianDropout(0.5) on 16-d features drowned the signal; (4) Keras' BatchNorm momentum left the
# LFEs' running statistics near their initial values after the smoke's ~200 steps, and the visual head, evaluated
# with them, stayed at chance (tiny: bn_momentum 0.1). With all four fixed the profile's run learns (test AUC
# ~0.69-0.72, E2EMAL's own weighted accuracy 0.63-0.65) and its dai-mosei test weighted accuracy, with thresholds
# picked on 45 valid clips, lands at 0.58-0.60 (2026-12-02 evening, several schedules), at or just under the bar.
# 2026-12-03, another machine: 0.673 / 0.580; 12 epochs, batch 4, lr 0.003 and lr 0.005 on seeds 0 and 1 gave
# 0.50-0.64, none clearing the bar for both variants and seeds (75 test clips: ~0.04 between seeds).
PROPOSED_SMOKE_SCHEDULE: dict = {}

# Slow (the profile's run alone: about 4 minutes on a 2-core machine): runs with `make test-all`, not in the default
# suite.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _profile_parameters(variant: str) -> dict:
    run = next(r for r in load_profile("smoke", ROOT).runs if r.key == f"adaptive-loss:{variant}")
    params = {k: v for k, v in run.parameters.items() if k not in ("seeds", "profile", "variants")}
    params.update(PROPOSED_SMOKE_SCHEDULE)
    return params


# Known open defect (issue 18): strict, so the day the smoke schedule makes E2EMAL learn this turns into a failure
# that asks for the marker to go.
@pytest.mark.xfail(strict=True, reason="issue 18: E2EMAL learns in the smoke schedule but its dai-mosei score "
                                        "stays just below a quarter of the gap")
@pytest.mark.parametrize("variant", ["adaptive"])
def test_e2emal_beats_constant_predictor(variant, smoke_caches, tmp_path) -> None:
    chance = synthetic.chance_accuracy("mosei")
    bound = synthetic.cue_accuracy("mosei", MODALITIES)
    bar = chance + GAP_FRACTION * (bound - chance)
    params = _profile_parameters(variant)
    assert params["dataset"] == "mosei"
    cache = smoke_caches["mosei"]
    data = load_splits(cache, FrameOptions(**E2EMAL_FRAMES))
    exp = e2emal_experiment(**params, variant=variant, profile="itest", cache_dir=str(cache), results_root=tmp_path,
                            progress=False)
    record = run_experiment(exp, [0], data=data)[0]
    score = record["metrics"]["dai-mosei"]["test"]["average"]["wacc"]
    assert np.isfinite(score)
    assert score >= bar, (f"E2EMAL ({variant}) on synthetic mosei: {score:.3f} < {bar:.3f} (chance {chance:.3f}, "
                          f"design bound {bound:.3f}; best epoch {record['best_epoch']})")
