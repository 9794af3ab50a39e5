"""Tests of the unimodal baselines and ``build_model``: batch contract, gradients, paper parameter counts."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import contract_batch
from torch import nn

from emolib.models import build_model, model_config
from emolib.models.fe2e import AudioOnly, TextOnly, VisualOnly
from emolib.models.text import TextEncoder
from emolib.registry import REGISTRY

C = 6


def _assert_every_parameter_gets_gradient(model: nn.Module, batch: dict) -> None:
    model.train()
    out = model(batch)
    # FE2E restricted to one modality: the logits are that modality's head, also returned under its name
    (head,) = set(out) - {"logits"}
    assert head in ("text", "visual", "audio") and out["logits"] is out[head] and out["logits"].shape == (3, C)
    nn.functional.binary_cross_entropy_with_logits(out["logits"], batch["labels"]).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero gradient"


def test_registry_lists_the_baselines_with_their_configs() -> None:
    for name in ("visual-only", "audio-only", "text-only"):
        entry = REGISTRY.entry("model", name)
        assert set(entry.meta["configs"]) == {"paper", "tiny"}
    assert REGISTRY.get("model", "visual-only") is VisualOnly
    assert model_config("text-only", "paper").text_model == "albert-base-v2"


@pytest.mark.parametrize("name", ["visual-only", "audio-only"])
def test_tiny_visual_and_audio_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, "tiny", num_outputs=C)
    _assert_every_parameter_gets_gradient(model, contract_batch(face_size=64, num_classes=C))


def test_tiny_text_only_uses_minilm_and_trains_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("text-only", "tiny", num_outputs=C)
    assert model.text_encoder.source.kind == "wheel" and model.t_out.in_features == 384
    _assert_every_parameter_gets_gradient(model, contract_batch(face_size=64, num_classes=C))


def test_text_only_lr_factors_follow_text_lr_factor() -> None:
    model = TextOnly(C, text_encoder=TextEncoder.tiny_random(), text_lr_factor=10)
    factors = model.lr_factors()
    assert factors == {"text_encoder": pytest.approx(0.1), "t_out": pytest.approx(0.1)}
    for key in factors:
        model.get_submodule(key)  # keys name real submodules
    assert TextOnly(C, text_encoder=TextEncoder.tiny_random(), text_lr_factor=4).lr_factors()["t_out"] == 0.25
    assert model.lr_factors(text_lr_factor=2) == {"text_encoder": 0.5, "t_out": 0.5}  # the trainer's value wins
    assert build_model("visual-only", num_outputs=C).lr_factors() == {}


def test_outputs_ignore_audio_padding_and_other_utterances() -> None:
    torch.manual_seed(0)
    model = build_model("audio-only", "tiny", num_outputs=C).eval()
    batch = contract_batch(face_size=64, num_classes=C)
    noisy = dict(batch, audio=batch["audio"].clone())
    noisy["audio"][1, 3000:] = 0.5  # garbage in the zero padding of the short utterance
    single = dict(batch, audio=batch["audio"][1:2, :3000], audio_lengths=batch["audio_lengths"][1:2])
    with torch.no_grad():
        ref = model(batch)["logits"]
        torch.testing.assert_close(model(noisy)["logits"], ref)
        torch.testing.assert_close(model(single)["logits"][0], ref[1], rtol=1e-5, atol=1e-5)


def test_visual_output_of_an_utterance_is_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    model = build_model("visual-only", "tiny", num_outputs=C).eval()
    batch = contract_batch(face_size=64, num_classes=C)
    single = dict(batch, faces=batch["faces"][1:5], face_lengths=torch.tensor([4]))
    with torch.no_grad():
        torch.testing.assert_close(model(single)["logits"][0], model(batch)["logits"][1], rtol=1e-5, atol=1e-5)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _vgg_params(c_in: int, c_out: int) -> int:
    """Two 3x3 convs with bias plus two BNs (weight and bias)."""
    return (c_in * c_out * 9 + c_out) + (c_out * c_out * 9 + c_out) + 4 * c_out


def _cnn_params(in_channels: int) -> int:
    stem = in_channels * 64 * 25 + 64 + 2 * 64
    return stem + _vgg_params(64, 64) * 2 + _vgg_params(64, 128) + _vgg_params(128, 256) + _vgg_params(256, 512)


def _transformer_params(d: int = 64, ff: int = 2048, layers: int = 4) -> int:
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
    return layers * per_layer + d  # + the CLS embedding


def test_paper_parameter_counts_match_the_spec_arithmetic() -> None:
    visual = build_model("visual-only", "paper", num_outputs=C).visual
    audio = build_model("audio-only", "paper", num_outputs=C).audio
    expected = {
        "V": (visual.backbone, _cnn_params(3), 4.80),
        "A": (audio.backbone, _cnn_params(1), 4.80),
        "v_flatten": (visual.flatten, 4608 * 1024 + 1024 + 1024 * 64 + 64, 4.79),
        "a_flatten": (audio.flatten, 8192 * 1024 + 1024 + 1024 * 64 + 64, 8.46),
        "v_transformer": (visual.transformer, _transformer_params(), 1.12),
        "a_transformer": (audio.transformer, _transformer_params(), 1.12),
    }
    for name, (module, exact, millions) in expected.items():
        assert _count(module) == exact, name
        assert round(exact / 1e6, 2) == millions, name
    assert _cnn_params(3) == 4_803_456 and _transformer_params() == 1_124_672


def test_paper_configs_run_on_a_small_batch() -> None:
    torch.manual_seed(0)
    batch = contract_batch(face_size=64, num_classes=C)
    for name in ("visual-only", "audio-only"):
        model = build_model(name, "paper", num_outputs=C).eval()
        with torch.no_grad():
            assert model(batch)["logits"].shape == (3, C)


def test_build_model_configs_and_overrides() -> None:
    model = build_model("visual-only", "tiny", num_outputs=4, d=16, nheads=4)
    assert model.v_out.out_features == 4 and model.visual.transformer.d == 16
    from_dict = build_model("audio-only", {"d": 8, "nlayers": 1, "nheads": 2, "widths": (4, 4, 4, 4, 4, 4)},
                            num_outputs=2)
    assert from_dict.audio.flatten[0].in_features == 4 * 8 * 2 and from_dict.audio.flatten[0].out_features == 1024
    with pytest.raises(KeyError, match="no config 'huge'"):
        build_model("visual-only", "huge", num_outputs=C)
    with pytest.raises(TypeError, match=r"does not take \['text_model'\]"):
        build_model("visual-only", "tiny", num_outputs=C, text_model="minilm")
    with pytest.raises(KeyError, match="unknown model 'no-such-model'"):
        build_model("no-such-model", num_outputs=C)


def test_missing_batch_key_names_the_model_and_key() -> None:
    model = AudioOnly(C, d=8, nlayers=1, nheads=2, widths=(4, 4, 4, 4, 4, 4), flatten_hidden=8)
    batch = contract_batch(face_size=64, num_classes=C)
    del batch["audio"]
    with pytest.raises(KeyError, match=r"'audio-only' needs batch\['audio'\]"):
        model(batch)


# Issue 18: a run loads only the modalities its model reads (a text-only run decodes no face and no audio); the
# record must be the one a run on fully decoded splits gives.
@pytest.mark.parametrize("model", ["text-only", "audio-only", "visual-only"])
def test_a_run_decodes_only_what_its_model_reads_and_records_the_same(model, tiny_caches, tmp_path,
                                                                      monkeypatch) -> None:
    import emolib.experiment as experiment
    from emolib.data.dataset import FrameOptions

    cache = tiny_caches["iemocap"]
    train = {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 3, "device": "cpu", "progress": False, "lr": 1e-3}
    frames = {"face_size": 48}
    loads = []
    real = experiment.load_splits
    monkeypatch.setattr(experiment, "load_splits", lambda *a, **k: loads.append(k.get("modalities")) or real(*a, **k))
    records = []
    for name, data in (("read", None), ("full", real(cache, FrameOptions(**frames)))):
        exp = experiment.Experiment(profile=name, model=model, cache_dir=cache, config="tiny", train=train,
                                    frames=frames, results_root=tmp_path)
        records += experiment.run_experiment(exp, [0], resume=False, data=data)
    assert loads == [(model.split("-")[0],)]
    read, full = records
    for key in ("metrics", "curves", "best_epoch", "thresholds"):  # as JSON: a NaN metric equals itself
        assert json.dumps(read.get(key), sort_keys=True) == json.dumps(full.get(key), sort_keys=True), key
