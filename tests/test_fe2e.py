"""FE2E: batch contract, weighted late fusion, modality selection, parameter groups, paper parameter count."""

from __future__ import annotations

import pytest
import torch
from helpers import contract_batch
from torch import nn

from emolib.models import build_model, model_config
from emolib.models.fe2e import FE2E, parse_modalities
from emolib.models.text import TextEncoder
from emolib.registry import REGISTRY
from emolib.train import TrainConfig, parameter_groups

C = 6
# ALBERT-base-v2: 11.68 M with the pooler FE2E's AlbertModel builds but never reads;
# emolib's TextEncoder leaves the pooler (768*768 + 768) out.
ALBERT_BASE_WITH_POOLER = 11_683_584
ALBERT_POOLER = 768 * 768 + 768


def tiny_fe2e(modalities: str = "tav", **kw) -> FE2E:
    torch.manual_seed(0)
    cfg = model_config("fe2e", "tiny", modalities=modalities, **kw)
    text = TextEncoder.tiny_random() if "t" in modalities else None
    return FE2E(C, cfg, text_encoder=text)


def test_registered_with_paper_and_tiny_configs() -> None:
    entry = REGISTRY.entry("model", "fe2e")
    assert entry.obj is FE2E and set(entry.meta["configs"]) == {"paper", "tiny"}
    paper = model_config("fe2e", "paper")
    assert (paper.d, paper.nlayers, paper.nheads, paper.text_model, paper.text_max_length) == \
        (64, 4, 4, "albert-base-v2", 100)


def test_outputs_and_weighted_late_fusion_in_dai_order() -> None:
    model = tiny_fe2e().eval()
    with torch.no_grad():
        model.fusion.weights.weight.copy_(torch.tensor([[0.5, -2.0, 3.0]]))
        out = model(contract_batch(num_classes=C))
    assert set(out) == {"logits", "text", "visual", "audio"}
    assert all(v.shape == (3, C) for v in out.values())
    expected = 0.5 * out["text"] - 2.0 * out["visual"] + 3.0 * out["audio"]
    torch.testing.assert_close(out["logits"], expected)
    assert model.fusion_weights() == {"text": 0.5, "visual": -2.0, "audio": 3.0}


def test_every_parameter_gets_a_gradient() -> None:
    model = tiny_fe2e().train()
    batch = contract_batch(num_classes=C)
    out = model(batch)
    nn.functional.binary_cross_entropy_with_logits(out["logits"], batch["labels"]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("mods,heads", [("a", {"audio"}), ("v", {"visual"}), ("va", {"visual", "audio"}),
                                         ("at", {"text", "audio"})])
def test_modality_subsets(mods: str, heads: set[str]) -> None:
    model = tiny_fe2e(mods).eval()
    with torch.no_grad():
        out = model(contract_batch(num_classes=C))
    assert set(out) == {"logits"} | heads
    if len(heads) == 1:
        assert model.fusion is None
        torch.testing.assert_close(out["logits"], out[heads.pop()])
    else:
        assert model.fusion.weights.in_features == len(heads)
    assert hasattr(model, "text_encoder") == ("t" in mods)
    assert hasattr(model, "visual") == ("v" in mods) and hasattr(model, "audio") == ("a" in mods)


def test_parse_modalities() -> None:
    assert parse_modalities("avt") == ("t", "v", "a")
    assert parse_modalities("AV") == ("v", "a")
    for bad in ("", "x", "tt", "tavx"):
        with pytest.raises(ValueError, match="subset of 'tav'"):
            parse_modalities(bad)


def test_text_encoder_and_t_out_train_at_lr_over_text_lr_factor() -> None:
    model = tiny_fe2e()
    assert model.lr_factors() == {"text_encoder": 0.1, "t_out": 0.1}
    groups = parameter_groups(model, nn.Identity(), TrainConfig(lr=5e-5, text_lr_factor=10.0))
    by_name = {g["name"]: g for g in groups}
    slow = by_name["lr_x0.1"]
    assert slow["lr"] == pytest.approx(5e-6)
    assert all(n.startswith(("text_encoder.", "t_out.")) for n in slow["param_names"])
    assert {"t_out.weight", "t_out.bias"} <= set(slow["param_names"])
    base = by_name["base"]["param_names"]
    assert {"v_out.weight", "a_out.weight", "fusion.weights.weight"} <= set(base)
    assert tiny_fe2e("va").lr_factors() == {}


def _vgg(c_in: int, c_out: int) -> int:
    return (c_in * c_out * 9 + c_out) + (c_out * c_out * 9 + c_out) + 4 * c_out


def _cnn(c_in: int) -> int:
    return c_in * 64 * 25 + 64 + 128 + 2 * _vgg(64, 64) + _vgg(64, 128) + _vgg(128, 256) + _vgg(256, 512)


def _transformer(d: int = 64, ff: int = 2048, layers: int = 4) -> int:
    return layers * ((3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d) + d


def test_paper_parameter_count_matches_the_spec_arithmetic() -> None:
    # ALBERT is not available offline: build the visual+audio part and add the text part by arithmetic.
    model = build_model("fe2e", "paper", num_outputs=C, modalities="va")
    non_text = (_cnn(3) + _cnn(1) + (4608 * 1024 + 1024 + 1024 * 64 + 64) + (8192 * 1024 + 1024 + 1024 * 64 + 64)
                + 2 * _transformer() + 2 * (64 * C + C))
    assert sum(p.numel() for p in model.parameters()) == non_text + 2  # + the two fusion scalars of "va"
    text_part = 768 * C + C + 3  # t_out and the three fusion scalars of "tav"
    total_spec = non_text + text_part + ALBERT_BASE_WITH_POOLER
    assert round(total_spec / 1e6, 1) == 36.8  # hand count of Dai's src/models/e2e.py at d = 64
    assert round((total_spec - ALBERT_POOLER) / 1e6, 1) == 36.2  # what emolib builds (no pooler)
