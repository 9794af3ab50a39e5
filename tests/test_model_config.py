"""Model configurations are dataclasses that travel with the model: named configs, overrides, dict round trip."""

from __future__ import annotations

import json

import pytest

from emolib import registry
from emolib.models import build_model, model_class, model_config
from emolib.models.config import ModelConfig, SequenceConfig
from emolib.models.fe2e import FE2EConfig


@pytest.mark.parametrize("name", registry.names("model"))
def test_every_named_config_round_trips_through_json(name: str) -> None:
    cls = model_class(name)
    assert set(cls.configs) >= {"paper", "tiny"}
    for config in cls.configs.values():
        assert isinstance(config, cls.config_class)
        again = cls.config_class.from_dict(json.loads(json.dumps(config.to_dict())), name)
        assert again == config
    assert cls.resolve_config(None) == cls.configs["paper"]  # defaults are the paper's


def test_overrides_lists_and_unknown_keys() -> None:
    cfg = model_config("fe2e", "tiny", d=16, widths=[4, 4, 4, 4, 4, 8])
    assert cfg.d == 16 and cfg.widths == (4, 4, 4, 4, 4, 8) and cfg.nlayers == 1  # the rest stays tiny
    assert model_config("fe2e", {"d": 8}) == FE2EConfig(d=8)  # a dict is partial over the paper values
    with pytest.raises(TypeError, match=r"model 'fe2e' does not take \['depth'\]"):
        model_config("fe2e", "tiny", depth=3)
    with pytest.raises(TypeError, match="does not take"):
        model_config("visual-only", "tiny", text_model="minilm")  # another branch's key is refused
    with pytest.raises(ValueError, match="modalities"):
        model_config("visual-only", "tiny", modalities="va")
    with pytest.raises(ValueError, match="subset of 'tav'"):
        FE2EConfig(modalities="x")


def test_shared_parts_are_declared_once() -> None:
    # FE2E, FV2ES and the baselines take the sequence branch's fields from SequenceConfig, not from own copies
    for name in ("fe2e", "fv2es", "visual-only"):
        assert issubclass(model_class(name).config_class, SequenceConfig)
    assert issubclass(SequenceConfig, ModelConfig)


def test_model_carries_its_config() -> None:
    model = build_model("audio-only", "tiny", num_outputs=3, d=16, nheads=2)
    assert model.config == model_config("audio-only", "tiny", d=16, nheads=2)
    assert model.audio.d == 16
