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

# Findings (issue 18): the smoke rows were exactly 0.5 because (1) the code's class weight is a per-class constant
# (emolib.losses.adaptive, QUIRK), so the sigmoids settle at the emotions' rates, all below 0.5 on the synthetic
# release, and E2EMAL's weighted accuracy at its fixed 0.5 threshold is then exactly 0.5; (2) model selection uses
# that accuracy, so it kept epoch 1; (3) in the tiny configuration GaussianDropout(0.5) on 16-d features drowned the
# signal; (4) Keras' BatchNorm momentum left the LFEs' running statistics near their initial values after the
# smoke's ~200 steps, and the visual head, evaluated with them, stayed at chance (tiny: bn_momentum 0.1). With those
# fixed it was too few steps, not a defect: at 8 epochs the score scattered over 0.50-0.64 across seeds, variants,
# learning rates, batch sizes, dropout and augmentation (75 test clips: ~0.04 between seeds), none clearing the bar
# for both variants and seeds; 24 epochs gave 0.61-0.69, 16 epochs (the profile since) 0.61-0.66 on seeds 0 and 1.
# Slow (the profile's two runs, ~3 min of one core): `make test-all` only.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _profile_parameters(variant: str) -> dict:
    run = next(r for r in load_profile("smoke", ROOT).runs if r.key == f"adaptive-loss:{variant}")
    params = {k: v for k, v in run.parameters.items() if k not in ("seeds", "profile", "variants")}
    return params


def _bar() -> tuple[float, float, float]:
    chance = synthetic.chance_accuracy("mosei")
    bound = synthetic.cue_accuracy("mosei", MODALITIES)
    return chance + GAP_FRACTION * (bound - chance), chance, bound


def _runs(variant: str, seeds: list[int], cache: Path, results_root: Path) -> list[dict]:
    """The profile's E2EMAL run of ``variant``, one record per seed."""
    params = _profile_parameters(variant)
    assert params["dataset"] == "mosei"
    data = load_splits(cache, FrameOptions(**E2EMAL_FRAMES))
    exp = e2emal_experiment(**params, variant=variant, profile="itest", cache_dir=str(cache),
                            results_root=results_root, progress=False)
    return run_experiment(exp, seeds, data=data)


def _score(record: dict) -> float:
    return record["metrics"]["dai-mosei"]["test"]["average"]["wacc"]


# Both variants must clear the bar, as in tests/test_smoke_scores.py.
def test_e2emal_beats_constant_predictor(smoke_caches, tmp_path) -> None:
    bar, chance, bound = _bar()
    scores = {}
    for variant in ("adaptive", "fused-only"):
        (record,) = _runs(variant, [0], smoke_caches["mosei"], tmp_path / variant)
        scores[variant] = (_score(record), record["best_epoch"])
        assert np.isfinite(scores[variant][0])
    failing = {v: s for v, s in scores.items() if s[0] < bar}
    assert not failing, (f"E2EMAL on synthetic mosei (score, best epoch): {scores}; bar {bar:.3f} (chance "
                         f"{chance:.3f}, design bound {bound:.3f})")

