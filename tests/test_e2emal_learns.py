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
# 2026-12-03, another machine: 0.673 / 0.580; on seeds 0 and 1, 12 epochs, batch 4, lr 0.003 and lr 0.005 gave
# 0.50-0.64, the paper's augmentation 0.52-0.57, dropout 0.3 0.53-0.56 and dropout 0 0.59-0.66: none clears the
# bar for both variants and seeds (75 test clips: ~0.04 between seeds; the mean stays near 0.60). Three times the
# steps do: 24 epochs gave 0.611 / 0.674 (adaptive, seeds 0 / 1) and 0.688 / 0.664 (fused-only), still rising at
# the end. It is too few steps, not a defect; the smoke cannot afford them (each variant ~135 s instead of ~55 s
# on one core: the profile would pass 10 minutes), so test_e2emal_learns_given_enough_steps checks the model.
# 2026-12-03 (later): bn_momentum 0.5, lr 0.001 and no warmup at 8 epochs stay at 0.54-0.63; 16 epochs clear the bar
# on both seeds and variants, thinly (adaptive 0.622 / 0.660, fused-only 0.627 / 0.613; ~100 s per variant).
PROPOSED_SMOKE_SCHEDULE: dict = {}
ENOUGH_STEPS: dict = {"epochs": 24, "cosine_epochs": 24}

# Slow (the profile's two runs ~2 min, the longer schedule's four ~9 min of one core): `make test-all` only.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _profile_parameters(variant: str, **schedule) -> dict:
    run = next(r for r in load_profile("smoke", ROOT).runs if r.key == f"adaptive-loss:{variant}")
    params = {k: v for k, v in run.parameters.items() if k not in ("seeds", "profile", "variants")}
    params.update(PROPOSED_SMOKE_SCHEDULE)
    params.update(schedule)
    return params


def _bar() -> tuple[float, float, float]:
    chance = synthetic.chance_accuracy("mosei")
    bound = synthetic.cue_accuracy("mosei", MODALITIES)
    return chance + GAP_FRACTION * (bound - chance), chance, bound


def _runs(variant: str, seeds: list[int], cache: Path, results_root: Path, **schedule) -> list[dict]:
    """The profile's E2EMAL run of ``variant`` (``schedule`` laid over its parameters), one record per seed."""
    params = _profile_parameters(variant, **schedule)
    assert params["dataset"] == "mosei"
    data = load_splits(cache, FrameOptions(**E2EMAL_FRAMES))
    exp = e2emal_experiment(**params, variant=variant, profile="itest", cache_dir=str(cache),
                            results_root=results_root, progress=False)
    return run_experiment(exp, seeds, data=data)


def _score(record: dict) -> float:
    return record["metrics"]["dai-mosei"]["test"]["average"]["wacc"]


# Known open defect (issue 18): strict, so the day the smoke schedule makes E2EMAL learn this turns into a failure
# that asks for the marker to go. Both variants must clear the bar, as in tests/test_smoke_scores.py: one alone is
# decided by float rounding (seed 0, adaptive: 0.673 on a Zen 5 machine, 0.560 on a Zen 3 one; fused-only 0.580 /
# 0.602), so a per-variant xfail passed on some machines and failed on others.
@pytest.mark.xfail(strict=True, reason="issue 18: E2EMAL learns in the smoke schedule but its dai-mosei score "
                                        "stays near, not above, a quarter of the gap for both variants")
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


@pytest.mark.parametrize("variant", ["adaptive", "fused-only"])
def test_e2emal_learns_given_enough_steps(variant, smoke_caches, tmp_path) -> None:
    """The profile's parameters with three times its epochs (ENOUGH_STEPS): the mean over seeds 0 and 1 of the
    dai-mosei test score clears the bar (one seed alone moves by ~0.04 on 75 test clips), every seed beats chance."""
    bar, chance, bound = _bar()
    scores = [_score(r) for r in _runs(variant, [0, 1], smoke_caches["mosei"], tmp_path, **ENOUGH_STEPS)]
    assert all(np.isfinite(x) and x > chance for x in scores), scores
    assert np.mean(scores) >= bar, (f"E2EMAL ({variant}), {ENOUGH_STEPS}: seeds 0, 1 {scores} -> mean "
                                    f"{np.mean(scores):.3f} < {bar:.3f} (chance {chance:.3f}, bound {bound:.3f})")
