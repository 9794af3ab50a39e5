"""Checkpoints written before the model refactor (tests/fixtures/legacy_checkpoints, made by emolib c3c5c42) still
load: the unimodal baselines' ``head`` is now the one-modality FE2E's ``<m>_out``, the sequence branches' ``cnn`` /
``nest`` is ``backbone``, and EmoMBT's flat branch parts are ``visual.*`` / ``audio.*``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import contract_batch

from emolib.models import build_model
from emolib.models.emombt import EmoMBT

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
LEGACY = json.loads((FIXTURES / "legacy.json").read_text())
OVERRIDES = {"fe2e-va": {"modalities": "va"}, "fv2es-va": {"modalities": "va"}}


@pytest.mark.parametrize("key", sorted(LEGACY["outputs"]))
def test_legacy_checkpoint_loads_and_gives_the_same_outputs(key: str) -> None:
    name = key.removesuffix("-va")
    torch.manual_seed(123)  # other initial weights than the checkpoint's: every weight must come from the file
    model = build_model(name, "tiny", num_outputs=6, **OVERRIDES.get(key, {}))
    state = torch.load(FIXTURES / f"{key}.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith(("head.", "visual.cnn.", "audio.cnn.", "audio.nest.")) for k in state)  # old names
    result = model.load_state_dict(state)  # strict: no key missing, none left over
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        out = model.eval()(contract_batch(0, face_size=48))
    expected = LEGACY["outputs"][key]
    assert out["logits"].double().sum().item() == pytest.approx(expected["logits"], rel=1e-6, abs=1e-6)
    for head in ("text", "visual", "audio"):
        if head in expected:
            assert out[head].double().sum().item() == pytest.approx(expected[head], rel=1e-6, abs=1e-6)
    assert sum(p.numel() for p in model.parameters()) == expected["n_params"]


def test_emombt_legacy_key_map_covers_the_old_state_dict_exactly() -> None:
    old = LEGACY["emombt_state_shapes"]
    torch.manual_seed(0)
    model = build_model("emombt", "tiny", num_outputs=6, text_model="tiny-random")
    new = {k: list(v.shape) for k, v in model.state_dict().items()}
    renamed = dict(old)
    EmoMBT._legacy_keys(renamed, "")
    assert any(k.startswith("visual_backbone.") for k in old) and not any(k.startswith("visual_") for k in renamed)
    assert renamed == new
    # and a state dict with the old names loads, strictly, into the new model
    state = {k_old: v for (k_old, _), v in zip(sorted(old.items(), key=lambda kv: _new_name(kv[0])),
                                                 (model.state_dict()[k] for k in sorted(new)))}
    assert model.load_state_dict(state) is not None


def _new_name(old_key: str) -> str:
    d = {old_key: None}
    EmoMBT._legacy_keys(d, "")
    return next(iter(d))
