"""E2EMAL: inputs from the batch contract, the LFE, attention, the full model, size helpers, the E2EMAL schedule,
SWA in the trainer, and training through run_experiment on a tiny synthetic CMU-MOSEI cache."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import contract_batch
from torch import nn
from torch.utils.data import Dataset

from emolib.data.cache import CacheWriter
from emolib.data.faces import aspect_pad_48
from emolib.data.prepare import PrepareParams, make_cropper
from emolib.experiment import Experiment, run_experiment
from emolib.labels import MOSEI_EMOTIONS
from emolib.losses import (
    adaptive,  # noqa: F401  (registers the E2EMAL losses)
    build_loss,
)
from emolib.models import build_model
from emolib.models.blocks import count_parameters as count_params
from emolib.models.e2emal import (
    E2EMAL,
    AFCNet,
    GaussianDropout,
    KerasConv2d,
    SigmoidAttention,
    keras_pad,
)
from emolib.models.e2emal_inputs import (
    E2EMALSpectrogram,
    GloveVectors,
    TokenEmbeddingVectors,
    WordVectors,
    center_crop,
    chunk_mean,
    keras_face_augment,
    read_glove,
    restore_aspect_faces,
    select_face_clips,
    spec_augment,
    text_sequences,
    tf_mel_weights,
)
from emolib.models.input_memo import InputMemo
from emolib.recipes.e2emal import (
    E2EMAL_FRAMES,
    E2EMAL_PREPARE,
    e2emal_loss_params,
    e2emal_train_config,
    modality_attention,
    s_curves,
    size_breakdown,
)
from emolib.records import validate_record
from emolib.train import LrSchedule, TrainConfig, build_optimizer, fit, parameter_groups

GLOVE = """3 4
i 0.1 0.2 0.3 0.4
am -0.1 0.0 0.5 1.0
so 1 1 1 1
angry 0.9 -0.9 0.5 0.25

. . . 2 2 2 2
so 9 9 9 9
"""


@pytest.fixture(scope="module")
def glove_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glove") / "tiny_glove.txt"
    path.write_text(GLOVE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(glove_file) -> E2EMAL:
    torch.manual_seed(0)
    return build_model("e2emal", "tiny", num_outputs=6, glove_path=str(glove_file))


# E2EMAL's inputs for contract_batch: 96 px facenet-style crops with boxes (20, 5 and 2 faces; the last clip has
# no confident face), 4 s, 1 s and 0.31 s of audio, an empty transcript.
E2EMAL_BATCH = {
    "face_size": 96, "face_lengths": (20, 5, 2), "face_conf": [0.95] * 25 + [0.3] * 2,
    "face_boxes": (20.0, 10.0, 70.0, 90.0), "audio_lengths": (64000, 16000, 5000), "audio_scale": 0.1,
    "text": ("I am so angry", "", "so so so unknown"),
}


# ----------------------------------------------------------------------------------------------- LFE


def test_lfe_parameter_count_and_float32_size() -> None:
    video, audio = AFCNet(3), AFCNet(1, pooling=None, rescale=False)
    # stem 3x3x3x32 + BN, stages as in the spec, top 3x3x32x32 + BN; BN gamma/beta counted as parameters.
    assert count_params(video) == 188_896
    assert count_params(audio) == 188_320
    buffers = sum(b.numel() for b in video.buffers() if b.is_floating_point())
    assert buffers == 9_520  # BN running mean / variance
    assert count_params(video) * 4 <= 1_000_000 and (count_params(video) + buffers) * 4 <= 1_000_000
    n_skips = sum(1 for b in video.blocks if b.skip)
    assert n_skips == 6  # every block after the first of each stage


def test_lfe_shapes_follow_keras_padding() -> None:
    video, audio = AFCNet(3).eval(), AFCNet(1, pooling=None, rescale=False).eval()
    with torch.no_grad():
        assert video(torch.rand(4, 3, 48, 48) * 255).shape == (4, 32)
        assert audio(torch.randn(2, 1, 400, 40)).shape == (2, 32, 50, 5)
    assert audio.output_hw(400, 40) == (50, 5) and video.output_hw(47, 48) == (6, 6)
    x = torch.ones(1, 1, 4, 5)
    assert keras_pad(x, 3, 2).shape[-2:] == (4 + 0 + 1, 5 + 1 + 1)  # even H: (0, 1); odd W: (1, 1)
    assert keras_pad(x, 5, 2).shape[-2:] == (4 + 1 + 2, 5 + 2 + 2)
    assert keras_pad(x, 5, 1).shape[-2:] == (8, 9)


@pytest.mark.parametrize("channels,kernel,shape", [(32, 3, (4, 48, 48)), (48, 5, (3, 24, 23)), (16, 3, (2, 150, 20))])
def test_depthwise_conv_padding_inside_the_conv_equals_padding_a_copy(channels, kernel, shape) -> None:
    torch.manual_seed(0)
    conv = KerasConv2d(channels, channels, kernel, groups=channels).to(memory_format=torch.channels_last)
    x = torch.randn(shape[0], channels, *shape[1:]).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape[0], channels, *shape[1:])
    outs = []
    for path in ("conv", "copy"):
        xi = x.clone().requires_grad_()
        conv.zero_grad()
        y = conv(xi) if path == "conv" else nn.functional.conv2d(keras_pad(xi, kernel, 1), conv.weight, None, 1, 0, 1,
                                                                 channels)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, conv.weight.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sigmoid_attention_and_gaussian_dropout() -> None:
    att = SigmoidAttention(2)
    with torch.no_grad():
        for layer in (att.att0, att.att1):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    x = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])  # (B=1, C=2, T=2)
    pooled, weights = att(x)
    expected_w = torch.sigmoid(torch.tanh(x))
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(pooled, (x * expected_w).mean(-1))
    drop = GaussianDropout(0.5)
    ones = torch.ones(200_000)
    assert torch.equal(drop.eval()(ones), ones)
    torch.manual_seed(0)
    noisy = drop.train()(ones)
    assert abs(float(noisy.mean()) - 1) < 0.01 and abs(float(noisy.var()) - 1.0) < 0.02  # rate / (1 - rate)


# --------------------------------------------------------------------------------------------- faces


def test_face_selection_keeps_confident_centred_frames() -> None:
    lengths = torch.tensor([20, 5, 3])
    n = int(lengths.sum())
    faces = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 48, 48).contiguous()
    conf = torch.full((n,), 0.9)
    conf[[3, 7]] = 0.64  # dropped: below 0.65
    conf[25:] = 0.1  # third clip: no face at all
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]]).repeat(n, 1)
    boxes[11] = float("nan")  # a kept-looking crop without a box is dropped too
    clips, counts = select_face_clips(faces, lengths, conf, boxes, restore_aspect=False)
    assert clips.shape == (3, 16, 3, 48, 48)
    kept = [i for i in range(20) if i not in (3, 7, 11)]  # 17 faces -> start (17 - 16) // 2 = 0
    assert clips[0, :, 0, 0, 0].tolist() == kept[:16]
    assert clips[1, :5, 0, 0, 0].tolist() == [20, 21, 22, 23, 24] and clips[1, 5:].abs().sum() == 0
    assert clips[2].abs().sum() == 0
    assert counts.tolist() == [16, 5, 0]


def _smooth_frame(h: int = 240, w: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (h + w)], -1).astype(np.uint8)


@pytest.mark.parametrize("crop_size", [48, 96])
@pytest.mark.parametrize("box", [[100.3, 50.7, 160.2, 140.9], [20.0, 30.0, 140.0, 90.0], [-5.0, 10.0, 60.0, 100.0]])
def test_aspect_restoration_matches_e2emal_crop_of_the_frame(box, crop_size) -> None:
    from facenet_pytorch.models.utils.detect_face import extract_face

    frame = _smooth_frame()
    crop = extract_face(torch.from_numpy(frame), np.array(box), crop_size, 2).round().to(torch.uint8)
    restored = restore_aspect_faces(crop[None], torch.tensor([box]), margin=2, size=48)[0]
    x1, y1, x2, y2 = max(int(box[0]), 0), max(int(box[1]), 0), int(box[2]), int(box[3])
    expected = torch.from_numpy(aspect_pad_48(frame[y1:y2, x1:x2])).permute(2, 0, 1).float()
    assert torch.equal(restored.sum(0) > 0, expected.sum(0) > 0), "same face area on the 48x48 canvas"
    assert float((restored - expected).abs().mean()) < 2.0
    square = torch.nn.functional.interpolate(crop[None].float(), size=(48, 48), mode="area")[0]
    assert float((square - expected).abs().mean()) > 10.0, "the unrestored crop is far from E2EMAL's face"


# ---------------------------------------------------------------------------------------------- audio


def _tf_mel_reference(n_mels: int = 40) -> np.ndarray:
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    edges = np.linspace(mel(0.0), mel(8000.0), n_mels + 2)
    out = np.zeros((257, n_mels))
    for k in range(1, 257):
        m = mel(k * 8000.0 / 256)
        for j in range(n_mels):
            lo, c, hi = edges[j], edges[j + 1], edges[j + 2]
            out[k, j] = max(0.0, min((m - lo) / (c - lo), (hi - m) / (hi - c)))
    return out


def _tf_logmel_reference(x: np.ndarray) -> np.ndarray:
    """tensorflow-io spectrogram -> melscale -> dbscale(top_db=80), written frame by frame."""
    n = -(-len(x) // 160)
    padded = np.pad(x.astype(np.float64), (0, (n - 1) * 160 + 400 - len(x)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    frames = np.stack([padded[t * 160: t * 160 + 400] * window for t in range(n)])
    mel = np.abs(np.fft.rfft(frames, n=512)) @ _tf_mel_reference()
    db = 20 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - 80)


def test_tf_mel_matrix() -> None:
    weights = tf_mel_weights(257, 40, 16000, 0, 8000).double().numpy()
    np.testing.assert_allclose(weights, _tf_mel_reference(), atol=1e-6)
    assert weights[0].sum() == 0 and weights.max() <= 1.0


def test_spectrogram_matches_tensorflow_io_pipeline() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([64_000 + 3_037, 5_000, 64_000])
    audio = torch.zeros(3, int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = 0.2 * torch.randn(n, generator=g)
    front = E2EMALSpectrogram()
    db, counts = front.spectrogram(audio, lengths)
    assert counts.tolist() == [419, 32, 400]
    for i, n in enumerate(lengths.tolist()):
        ref = _tf_logmel_reference(audio[i, :n].double().numpy())
        np.testing.assert_allclose(db[i, : counts[i]].double().numpy(), ref, atol=2e-3)
        assert db[i, counts[i]:].abs().sum() == 0
    out = front(audio, lengths)
    assert out.shape == (3, 400, 40)
    ref0 = _tf_logmel_reference(audio[0, : lengths[0]].double().numpy())
    expected = np.zeros((800, 40))
    expected[:419] = ref0
    np.testing.assert_allclose(out[0].double().numpy(), expected.reshape(2, 400, 40).mean(0), atol=2e-3)
    # exactly 400 frames: one chunk, or with the code's padding quirk an extra zero chunk halving the values
    quirk = E2EMALSpectrogram(chunk_pad_quirk=True)(audio, lengths)
    torch.testing.assert_close(quirk[2], out[2] / 2)
    torch.testing.assert_close(quirk[0], out[0])
    crop = E2EMALSpectrogram(mode="center-crop")(audio, lengths)
    torch.testing.assert_close(crop[0], db[0, 9:409])  # start (419 - 400) // 2
    torch.testing.assert_close(crop[1, :32], db[1, :32])
    assert crop[1, 32:].abs().sum() == 0


def test_chunk_mean_and_center_crop_by_hand() -> None:
    x = torch.arange(1, 9, dtype=torch.float32).view(1, 8, 1).repeat(3, 1, 1)
    lengths = torch.tensor([4, 3, 0])
    fixed = chunk_mean(x, lengths, 2)
    assert fixed[:, :, 0].tolist() == [[2.0, 3.0], [2.0, 1.0], [0.0, 0.0]]  # [1,2]+[3,4]; [1,2]+[3,0]
    quirk = chunk_mean(x, lengths, 2, quirk=True)
    torch.testing.assert_close(quirk[:, :, 0], torch.tensor([[4 / 3, 2.0], [2.0, 1.0], [0.0, 0.0]]))  # + zero chunk
    crop = center_crop(x, torch.tensor([7, 2, 3]), 3)
    assert crop[:, :, 0].tolist() == [[3.0, 4.0, 5.0], [1.0, 2.0, 0.0], [1.0, 2.0, 3.0]]


def test_spec_augment_masks_bands_and_frames() -> None:
    spec = torch.ones(64, 400, 40)
    assert torch.equal(spec_augment(spec, p=0.0), spec)
    torch.manual_seed(0)
    out = spec_augment(spec, p=1.0)
    for clip in out:
        zero_bins = torch.nonzero((clip == 0).all(dim=0)).flatten().tolist()
        zero_frames = torch.nonzero((clip == 0).all(dim=1)).flatten().tolist()
        assert len(zero_bins) <= 4 and len(zero_frames) <= 9
        for run in (zero_bins, zero_frames):
            if run:
                assert run == list(range(run[0], run[0] + len(run))), "one contiguous mask"
    widths = [int((c == 0).all(dim=0).sum()) for c in out]
    assert max(widths) == 4 and min(widths) == 0
    torch.manual_seed(1)
    sometimes = spec_augment(spec, p=0.4)
    hit = sum(bool((c == 0).any()) for c in sometimes)
    assert 10 < hit < 50


def test_keras_face_augment() -> None:
    torch.manual_seed(0)
    faces = torch.rand(6, 3, 48, 48) * 255
    out = keras_face_augment(faces, translation=0, rotation=0)
    mean = faces.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out.mean(dim=(2, 3), keepdim=True), mean, rtol=1e-4, atol=1e-3)
    factor = (out - mean) / (faces - mean)
    assert 0.5 <= float(factor.median()) <= 1.5 and float(factor.std()) < 1e-2  # one factor for the call
    flat = torch.full((4, 3, 48, 48), 100.0)
    torch.testing.assert_close(keras_face_augment(flat, contrast=0, rotation=0), flat)  # reflect fill
    torch.manual_seed(3)
    rotated = keras_face_augment(flat, contrast=0, translation=0, rotation=0.2)
    assert torch.allclose(rotated[:, :, 20:28, 20:28], flat[:, :, 20:28, 20:28])  # the centre stays
    assert bool((rotated[:, :, 0, 0] == 0).any()), "zero fill enters at the corners"
    with pytest.raises(ValueError):
        keras_face_augment(torch.zeros(2, 1, 48, 48))


# ----------------------------------------------------------------------------------------------- text


def test_read_glove(glove_file, tmp_path) -> None:
    index, table = read_glove(glove_file)
    assert list(index) == ["i", "am", "so", "angry", ". . ."]  # header skipped, first "so" wins
    np.testing.assert_allclose(table[index["so"]], [1, 1, 1, 1])
    np.testing.assert_allclose(table[index[". . ."]], [2, 2, 2, 2])
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 1 x\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: non-numeric"):
        read_glove(bad)
    bad.write_text("a 1 2\nb 1\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: expected a word and 2 numbers"):
        read_glove(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_glove(tmp_path / "missing.txt")


def test_glove_words_and_chunk_averaged_sequences(glove_file) -> None:
    vectors = GloveVectors(glove_file)
    assert vectors.dim == 4 and vectors.description.startswith("glove:")
    assert vectors.words("I'm so ANGRY, really!") == ["I'm", "so", "ANGRY", "really"]
    np.testing.assert_allclose(vectors.vector("ANGRY"), [0.9, -0.9, 0.5, 0.25])
    assert not vectors.vector("really").any()
    seq = text_sequences(["I am so angry", "so", ""], vectors, words=2)
    i, am, so, angry = (np.asarray(v) for v in ([0.1, 0.2, 0.3, 0.4], [-0.1, 0, 0.5, 1], [1] * 4,
                                                [0.9, -0.9, 0.5, 0.25]))
    np.testing.assert_allclose(seq[0].numpy(), np.stack([(i + so) / 2, (am + angry) / 2]), rtol=1e-6)
    np.testing.assert_allclose(seq[1].numpy(), np.stack([so, np.zeros(4)]))
    assert seq[2].abs().sum() == 0
    quirk = text_sequences(["I am so angry"], vectors, words=2, quirk=True)
    np.testing.assert_allclose(quirk[0].numpy(), np.stack([(i + so) / 3, (am + angry) / 3]), rtol=1e-6)


def test_token_embedding_vectors_are_the_offline_default() -> None:
    vectors = TokenEmbeddingVectors("minilm", dim=300, seed=0)
    assert vectors.words("I'm so angry, café!") == ["i", "m", "so", "angry", "cafe"]
    p = vectors.projection
    assert p.shape == (384, 300)
    np.testing.assert_allclose(p.T @ p, np.eye(300), atol=1e-5)
    ids = vectors.tokenizer("unbelievably", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    np.testing.assert_allclose(vectors.vector("unbelievably"), vectors.table[ids].mean(0) @ p, rtol=1e-5, atol=1e-6)
    assert "projection 384->300, seed 0" in vectors.description
    np.testing.assert_allclose(TokenEmbeddingVectors("minilm", dim=300, seed=0).projection, p)


# ---------------------------------------------------------------------------------------------- model


class _ZeroVectors(WordVectors):
    dim, description = 300, "zeros (test)"

    def words(self, text: str) -> list[str]:
        return text.split()

    def vector(self, word: str) -> np.ndarray:
        return np.zeros(300, np.float32)


def test_paper_configuration_size() -> None:
    model = build_model("e2emal", "paper", num_outputs=6, word_vectors=_ZeroVectors())
    rows = {r["part"]: r for r in size_breakdown(model)}
    assert rows["LFE visual"]["params"] == 188_896 and rows["LFE visual"]["float32_MB"] <= 1.0
    assert rows["total"]["params"] == count_params(model) == 6_727_968  # ~27 MB float32, as the spec estimates
    assert rows["TCN text"]["params"] > rows["TCN audio"]["params"] > rows["TCN visual"]["params"]


def test_tiny_differs_from_the_paper_only_where_it_says() -> None:
    """tiny: narrow TCNs, AFCNet stages 2-3 expanded 2x, 6 faces and 3 s of audio per clip (smoke speed), dropout
    0.1 (narrow features), BatchNorm momentum 0.1 (few steps) and no augmentation; the rest is the paper's."""
    import dataclasses

    from emolib.models.e2emal import AFCNET_STAGES, E2EMAL_CONFIGS, KERAS_BN_MOMENTUM

    paper, tiny = E2EMAL_CONFIGS["paper"], E2EMAL_CONFIGS["tiny"]
    assert (paper.lfe_expand, paper.video_frames) == (12, 16) and [s.expand for s in AFCNET_STAGES] == [1, 12, 12]
    assert (paper.audio_frames, paper.bn_momentum, paper.augment) == (400, KERAS_BN_MOMENTUM, True)
    differ = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(tiny, f.name)}
    assert differ == {"tcn_filters", "lfe_expand", "video_frames", "audio_frames", "feature_dropout",
                      "fusion_dropout", "bn_momentum", "augment"}
    model = build_model("e2emal", "tiny", num_outputs=6, word_vectors=_ZeroVectors())
    expands = [b.body[0].out_channels // b.body[0].in_channels for b in model.visual_lfe.blocks
               if len(b.body) == 8]  # blocks with an expansion conv
    assert expands and set(expands) == {2}
    with pytest.raises(ValueError, match="lfe_expand"):
        build_model("e2emal", "tiny", num_outputs=6, word_vectors=_ZeroVectors(), lfe_expand=0)


@pytest.mark.parametrize("config", ["paper", "tiny"])
def test_every_lfe_batchnorm_uses_the_configured_momentum(config) -> None:
    model = build_model("e2emal", config, num_outputs=6, word_vectors=_ZeroVectors())
    momenta = {m.momentum for lfe in (model.visual_lfe, model.audio_lfe) for m in lfe.modules()
               if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {model.config.bn_momentum} and model.config.bn_momentum == (0.01 if config == "paper" else 0.1)
    with pytest.raises(ValueError, match="bn_momentum"):
        build_model("e2emal", config, num_outputs=6, word_vectors=_ZeroVectors(), bn_momentum=0)


def test_every_branch_has_the_spec_shapes(tiny_model) -> None:
    batch = contract_batch(**E2EMAL_BATCH)
    tiny_model.eval()
    with torch.no_grad():
        frames = tiny_model.config.video_frames  # the paper's 16; tiny 6
        assert tiny_model.face_clips(batch).shape == (3, frames, 3, 48, 48)
        spec = tiny_model.audio_input(batch)
        steps = tiny_model.config.audio_frames  # the paper's 400; tiny 300
        assert spec.shape == (3, steps, 40)
        assert tiny_model.audio_lfe(spec.unsqueeze(1)).shape == (3, 32, -(-steps // 8), 5)
        assert tiny_model.text_input(batch).shape == (3, 30, 4)
        state = tiny_model.run(batch)
    assert {k: tuple(v.shape) for k, v in state.outputs.items()} == {
        "logits": (3, 6), "audio": (3, 6), "visual": (3, 6), "text": (3, 6)}
    width = tiny_model.config.tcn_filters[-1]  # the paper's 256; tiny 64
    assert {k: tuple(v.shape) for k, v in state.temporal_attention.items()} == {
        "audio": (3, width, -(-steps // 8)), "visual": (3, width, frames), "text": (3, width, 30)}
    assert state.modality_attention.shape == (3, 32, 3)
    assert tiny_model.text_vectors_description.startswith("glove:")


def test_training_mode_gradients_l2_and_augmentation(tiny_model) -> None:
    batch = contract_batch(**E2EMAL_BATCH)
    tiny_model.eval()
    with torch.no_grad():
        a, b = tiny_model(batch), tiny_model(batch)
    assert torch.equal(a["logits"], b["logits"]) and "l2_penalty" not in a
    tiny_model.train()
    tiny_model.zero_grad()
    out = tiny_model(batch)
    expected_l2 = 1e-5 * sum(float(w.detach().pow(2).sum()) for w in tiny_model.l2_weights())
    assert float(out["l2_penalty"].detach()) == pytest.approx(expected_l2, rel=1e-5)
    assert len(tiny_model.l2_weights()) == 11
    loss = build_loss("adaptive", train_labels=np.eye(6), **e2emal_loss_params("mosei"))
    total, parts = loss(out, batch["labels"])
    total.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert set(parts) >= {"loss_audio", "loss_visual", "loss_text", "loss_fused", "s_fused", "l2"}
    with torch.no_grad():
        assert not torch.equal(tiny_model(batch)["logits"], tiny_model(batch)["logits"])  # GaussianDropout noise
        # tiny trains without augmentation; the paper's configuration (augment=True) augments faces and spectrograms
        assert torch.equal(tiny_model.face_clips(batch), tiny_model.face_clips(batch))
        augmenting = build_model("e2emal", "tiny", num_outputs=6, word_vectors=_ZeroVectors(), augment=True).train()
        assert not torch.equal(augmenting.face_clips(batch), augmenting.face_clips(batch))
    tiny_model.eval()


def test_modality_attention_helper(tiny_model) -> None:
    tiny_model.train()
    weights = modality_attention(tiny_model, contract_batch(**E2EMAL_BATCH))
    assert weights.shape == (3, 3) and bool(((weights > 0) & (weights < 1)).all())
    assert tiny_model.training, "the helper restores the training flag"
    assert modality_attention(tiny_model, contract_batch(**E2EMAL_BATCH), per_feature=True).shape == (3, 32, 3)
    tiny_model.eval()


def test_configuration_errors(glove_file) -> None:
    with pytest.raises(ValueError, match="glove_path"):
        E2EMAL(6, text_vectors="glove")
    with pytest.raises(ValueError, match="audio_mode"):
        E2EMAL(6, audio_mode="crop", glove_path=str(glove_file))
    with pytest.raises(KeyError, match="face_boxes"):
        batch = contract_batch(**E2EMAL_BATCH)
        del batch["face_boxes"]
        E2EMAL(6, tcn_filters=[4], glove_path=str(glove_file))(batch)


def test_loss_params_per_dataset() -> None:
    assert e2emal_loss_params("mosei") == {"base": "mosei-emotion", "lam": 0.5, "fused_only": False}
    assert e2emal_loss_params("iemocap", adaptive=False) == {"base": "bce", "lam": 1.0, "fused_only": True}
    with pytest.raises(ValueError, match="regression"):
        e2emal_loss_params("sims", task="regression")


# ------------------------------------------------------------------------------------------- schedule


def _cus_lr(step: int, lr: float, min_lr: float, warmup: int, t_max: int) -> float:
    """E2EMAL's CusLRScheduler (lr_start_warmup 0, no constant phase, one half cycle) at optimiser step ``step``."""
    warm = lr * step / warmup if step <= warmup else 0.0
    cosine = (min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (t_max - warmup))) / 2
              if warmup < step <= t_max else 0.0)
    return warm + cosine + (min_lr if t_max <= step else 0.0)


def test_schedule_matches_e2emal_cus_lr_scheduler() -> None:
    config = TrainConfig(**e2emal_train_config(epochs=20))
    assert config.primary_protocol == "e2emal" and config.optimizer == "adam"
    steps = 10
    schedule = LrSchedule(config, steps)
    for step in range(200):
        ours = config.lr * schedule(step)
        if step < 50:  # warm-up: ours is one step ahead ((i + 1) / W), so the first step does not use lr 0
            assert ours == pytest.approx(_cus_lr(step + 1, 1e-3, 1e-4, 50, 150), rel=1e-9)
        elif step != 150:  # TF adds min_lr twice at exactly step T_max
            assert ours == pytest.approx(_cus_lr(step, 1e-3, 1e-4, 50, 150), rel=1e-9)
    assert config.lr * schedule(199) == pytest.approx(1e-4)


def test_e2emal_adam_uses_keras_epsilon() -> None:
    # th2l/E2EMAL main.py: tf.keras.optimizers.Adam(learning_rate=...) keeps Keras's default epsilon 1e-7.
    config = TrainConfig(**e2emal_train_config())
    assert config.adam_eps == 1e-7 and TrainConfig().adam_eps == 1e-8
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(parameter_groups(model, nn.Identity(), config), config)
    assert {g["eps"] for g in optimizer.param_groups} == {1e-7}
    assert TrainConfig(**e2emal_train_config(adam_eps=1e-8)).adam_eps == 1e-8  # PyTorch's, for comparison


def test_e2emal_cache_keeps_the_largest_face_of_at_least_its_threshold() -> None:
    # The face E2EMAL's face_extractor.py keeps: the largest of the detections >= 0.65, the model's own threshold.
    params = PrepareParams(**E2EMAL_PREPARE)
    assert params.min_face_conf == 0.65 == E2EMAL.default_config().min_face_conf
    assert make_cropper(dataclasses.replace(params, device="cpu")).min_conf == 0.65
    assert PrepareParams().min_face_conf == 0.0  # the shared caches keep the largest face of any confidence


# ------------------------------------------------------------------------------------------------ SWA


class _Vectors(Dataset):
    task, label_names = "multilabel", list(MOSEI_EMOTIONS)

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 5)).astype(np.float32)
        self.y = ((self.x[:, :1] + rng.normal(scale=0.5, size=(n, 6))) > 0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.from_numpy(self.x[i]), "labels": torch.from_numpy(self.y[i])}


def _collate(items: list[dict]) -> dict:
    return {"x": torch.stack([it["x"] for it in items]), "labels": torch.stack([it["labels"] for it in items])}


class _Recorder(nn.Module):
    """A linear model with BatchNorm that remembers its weights at every training forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 6)
        self.snapshots: list[torch.Tensor] = []

    def forward(self, batch: dict) -> dict:
        if self.training:
            self.snapshots.append(self.out.weight.detach().clone())
        return {"logits": self.out(self.norm(batch["x"]))}


def _fit_swa(tmp_path: Path, epochs: int, resume: bool = False, **swa) -> tuple[dict, _Recorder]:
    torch.manual_seed(0)
    model = _Recorder()
    train, valid, test = _Vectors(24, 0), _Vectors(12, 1), _Vectors(12, 2)
    config = TrainConfig(epochs=epochs, batch_size=6, lr=0.05, progress=False,
                         eval_protocols=["dai-mosei", "dai-iemocap", "e2emal"], **swa)
    record = fit(model, build_loss("bce", train_labels=train.y), train, valid, test, config=config,
                 class_names=MOSEI_EMOTIONS, dataset_name="synthetic-mosei", run_dir=tmp_path / "run",
                 record_path=None, collate_fn=_collate, run_info={"model": "recorder", "profile": "test"},
                 resume=resume)
    return record, model


def test_swa_averages_the_weights_after_the_start_step(tmp_path) -> None:
    record, model = _fit_swa(tmp_path, epochs=3, swa_start_epoch=1.5, swa_period_steps=2)
    swa = record["swa"]
    # 4 steps per epoch; steps 6, 8, 10 (0-based) are averaged
    assert (swa["start_step"], swa["n_averaged"], swa["period_steps"]) == (6, 3, 2)
    after_step = model.snapshots[1:] + [torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"][
        "out.weight"]]
    expected = torch.stack([after_step[i] for i in (6, 8, 10)]).mean(0)
    saved = torch.load(tmp_path / "run" / "swa.pt", weights_only=True)
    torch.testing.assert_close(saved["model"]["out.weight"], expected)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    torch.testing.assert_close(saved["model"]["norm.running_mean"], last["norm.running_mean"])  # bn "last"
    assert set(swa["metrics"]) == {"dai-mosei", "dai-iemocap", "e2emal"} and math.isfinite(swa["select"])
    validate_record(record)


def test_swa_survives_a_resume(tmp_path) -> None:
    whole, _ = _fit_swa(tmp_path / "a", epochs=3, swa_start_epoch=1, swa_bn="recompute")
    _fit_swa(tmp_path / "b", epochs=2, swa_start_epoch=1, swa_bn="recompute")
    resumed, _ = _fit_swa(tmp_path / "b", epochs=3, resume=True, swa_start_epoch=1, swa_bn="recompute")
    assert whole["swa"]["n_averaged"] == resumed["swa"]["n_averaged"] == 8
    a = torch.load(tmp_path / "a" / "run" / "swa.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "run" / "swa.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    none, _ = _fit_swa(tmp_path / "c", epochs=1)
    assert "swa" not in none


def test_swa_config_validation() -> None:
    with pytest.raises(ValueError, match="swa_period_steps"):
        TrainConfig(swa_start_epoch=1, swa_period_steps=0)
    with pytest.raises(ValueError, match="swa_bn"):
        TrainConfig(swa_bn="mean")
    with pytest.raises(ValueError, match="swa_start_epoch"):
        TrainConfig(swa_start_epoch=-1)


# ----------------------------------------------------------------------------------- run_experiment


@pytest.fixture(scope="module")
def tiny_mosei_cache(tmp_path_factory) -> Path:
    """A tiny synthetic CMU-MOSEI cache in the real cache format: 96 px facenet-style crops with boxes and
    confidences (some below 0.65), 16 kHz audio, transcripts, multi-hot labels in Dai's order."""
    root = tmp_path_factory.mktemp("cache") / "mosei"
    writer = CacheWriter(root)
    rng = np.random.default_rng(0)
    metas = []
    for k, split in enumerate(["train"] * 8 + ["valid"] * 4 + ["test"] * 4):
        uid = f"clip{k:02d}"
        n_frames = int(rng.integers(1, 24))
        labels = (rng.random(6) < 0.35).astype(np.float32)
        labels[k % 6] = 1.0
        conf = rng.uniform(0.5, 1.0, n_frames).astype(np.float32)
        boxes = np.tile(np.array([[40.0, 30.0, 100.0, 110.0]], np.float32), (n_frames, 1))
        seconds = float(rng.uniform(0.5, 3.0))
        text = "i am so angry" if labels[0] else "so so"
        meta = {"uid": uid, "split": split, "text": text, "labels": labels.tolist()}
        writer.write(meta, {
            "faces": rng.integers(0, 256, (n_frames, 96, 96, 3), dtype=np.uint8), "face_conf": conf,
            "face_found": np.ones(n_frames, bool), "face_boxes": boxes,
            "frame_times": (0.5 * np.arange(n_frames)).astype(np.float32),
            "audio": (rng.normal(0, 3000, int(16000 * seconds))).astype(np.int16), "labels": labels})
        metas.append(meta)
    writer.write_index(metas)
    writer.write_provenance({"dataset": "mosei", "synthetic": True, "label_names": list(MOSEI_EMOTIONS),
                             "task": "multilabel", "parameters": {"face_size": 96, "face_margin": 2}})
    return root


@pytest.mark.parametrize("adaptive_loss", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_run_experiment_trains_and_records(tiny_mosei_cache, glove_file, tmp_path, adaptive_loss) -> None:
    exp = Experiment(
        profile="test", model="e2emal", cache_dir=tiny_mosei_cache, config="tiny",
        model_overrides={"glove_path": str(glove_file), "text_vectors": "glove", "tcn_filters": [8]},
        loss="adaptive", loss_params=e2emal_loss_params("mosei", adaptive=adaptive_loss),
        train=e2emal_train_config(epochs=1, batch_size=4, max_steps_per_epoch=2, progress=False, device="cpu"),
        frames=E2EMAL_FRAMES, variant="adaptive" if adaptive_loss else "fused-only", results_root=tmp_path)
    (record,) = run_experiment(exp, seeds=[0])
    validate_record(record)
    assert record["protocol"] == "e2emal" and set(record["metrics"]) == {"dai-mosei", "dai-iemocap", "e2emal"}
    assert record["params"]["model"]["text_vectors"] == "glove"
    assert record["params"]["loss"]["fused_only"] is (not adaptive_loss)
    curves = s_curves(record)
    assert (sorted(curves) == ["audio", "fused", "text", "visual"]) is adaptive_loss
    assert "loss_visual" in record["curves"]["train_parts"]
    assert (tmp_path / "test" / "runs" / exp.run_name).is_dir()


# ------------------------------------------------------------------------------------------- input memo


def test_input_memo_stacks_stored_rows_within_its_budget() -> None:
    calls = []

    def compute(uids):
        calls.append(list(uids))
        return (torch.tensor([[float(u[-1])] * 2 for u in uids]), torch.arange(len(uids)).float())

    memo = InputMemo(max_bytes=3 * (8 + 4))  # three utterances' rows
    first = memo.get(["u1", "u2"], lambda: compute(["u1", "u2"]))
    again = memo.get(["u2", "u1"], lambda: compute(["u2", "u1"]))
    assert calls == [["u1", "u2"]] and memo.hits == 1 and memo.misses == 1
    assert torch.equal(again[0], first[0].flip(0)) and torch.equal(again[1], first[1].flip(0))
    assert again[0].data_ptr() != first[0].data_ptr()  # stored copies, not views of the first batch
    memo.get(["u3", "u4"], lambda: compute(["u3", "u4"]))  # u4 does not fit any more
    assert sorted(memo.rows) == ["u1", "u2", "u3"] and memo.bytes == 36
    memo.get(["u3", "u4"], lambda: compute(["u3", "u4"]))
    assert calls[-1] == ["u3", "u4"]  # a partial hit recomputes the whole batch
    memo.get(["u5", "u5"], lambda: compute(["u5", "u5"]))
    assert "u5" not in memo.rows  # a repeated id is not an utterance key
    with pytest.raises(ValueError, match="max_bytes"):
        InputMemo(-1)


def test_e2emal_memo_serves_the_deterministic_inputs_and_augments_after_it(tiny_model, monkeypatch) -> None:
    batch = contract_batch(**E2EMAL_BATCH)
    batch["uid"] = ["a", "b", "c"]
    model = build_model("e2emal", "tiny", num_outputs=6, augment=True, word_vectors=tiny_model.word_vectors).eval()
    plain = model.inputs(batch)
    spectrograms = []
    monkeypatch.setattr(model, "_spectrogram", lambda b: spectrograms.append(1) or E2EMAL._spectrogram(model, b))
    with model.input_memo() as memo:
        for _ in range(3):
            for got, want in zip(model.inputs(batch), plain):
                assert torch.equal(got, want)
        assert len(spectrograms) == 1 and memo.hits == 2
        model.train()
        torch.manual_seed(5)
        clips, spec, _ = model.inputs(batch)  # augmentation still draws fresh per batch, after the memo
    assert model._memo is None and len(spectrograms) == 1
    model.inputs(batch)
    assert len(spectrograms) == 2  # outside the context: computed every time (robustness evaluation)
    torch.manual_seed(5)
    clips2, spec2, _ = model.inputs(batch)
    assert torch.equal(clips, clips2) and torch.equal(spec, spec2) and not torch.equal(spec, plain[1])
    with build_model("e2emal", "tiny", num_outputs=6, input_memo_mb=0,
                     word_vectors=tiny_model.word_vectors).input_memo() as off:
        assert off is None


@pytest.mark.parametrize("augment", [False, True])
def test_training_with_the_input_memo_gives_the_same_record(tiny_mosei_cache, glove_file, tmp_path, augment) -> None:
    def train(memo_mb: int) -> dict:
        exp = Experiment(
            profile="test", model="e2emal", cache_dir=tiny_mosei_cache, config="tiny",
            model_overrides={"glove_path": str(glove_file), "text_vectors": "glove", "tcn_filters": [8],
                             "augment": augment, "input_memo_mb": memo_mb},
            loss="adaptive", loss_params=e2emal_loss_params("mosei", adaptive=True),
            train=e2emal_train_config(epochs=3, batch_size=4, progress=False, device="cpu"),
            frames=E2EMAL_FRAMES, variant="adaptive", results_root=tmp_path / str(memo_mb))
        (record,) = run_experiment(exp, seeds=[0])
        return record

    with_memo, without = train(64), train(0)
    assert with_memo["params"]["model"]["input_memo_mb"] == 64
    for key in ("metrics", "thresholds", "best_epoch", "epochs_run", "curves"):
        assert with_memo[key] == without[key], key
