"""Tests of the FE2E building blocks: shapes, hand-computed references and padding/masking behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from emolib.models.blocks import (
    AudioBranch,
    ClsTransformerEncoder,
    FaceNormalize,
    FlattenMLP,
    MelPieces,
    VggBlock,
    VggCNN,
    VisualBranch,
    WeightedLateFusion,
    pad_by_lengths,
)
from emolib.models.config import SequenceConfig

TINY = (8, 8, 8, 16, 16, 32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- VGG ----------------------------------------------------------------------------------------------------------


def test_vgg_block_layer_order_and_params() -> None:
    block = VggBlock(4, 6)
    kinds = [type(m) for m in block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block[0].kernel_size == (3, 3) and block[0].padding == (1, 1) and block[0].bias is not None
    # conv1 4*6*9+6, conv2 6*6*9+6, two BNs 2*6 each
    assert sum(p.numel() for p in block.parameters()) == (4 * 6 * 9 + 6) + (6 * 6 * 9 + 6) + 2 * 12
    assert block(torch.randn(2, 4, 10, 7)).shape == (2, 6, 10, 7)


@pytest.mark.parametrize(
    ("in_ch", "h", "w", "expected"),
    [(3, 48, 48, (512, 3, 3)), (1, 128, 32, (512, 8, 2))],
)
def test_paper_vgg_cnn_output_shapes(in_ch: int, h: int, w: int, expected: tuple[int, int, int]) -> None:
    cnn = VggCNN(in_ch)
    assert cnn.output_shape(h, w) == expected
    assert cnn(torch.randn(2, in_ch, h, w)).shape == (2, *expected)


def test_vgg_cnn_layer_list_matches_fe2e() -> None:
    cnn = VggCNN(3, TINY)
    stem = cnn[0]
    assert stem.kernel_size == (5, 5) and stem.padding == (2, 2) and stem.out_channels == 8
    kinds = [type(m).__name__ for m in cnn]
    assert kinds == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "VggBlock", "VggBlock", "VggBlock", "MaxPool2d",
        "VggBlock", "MaxPool2d", "VggBlock", "MaxPool2d",
    ]
    blocks = [(m[0].in_channels, m[3].out_channels) for m in cnn if isinstance(m, VggBlock)]
    assert blocks == [(8, 8), (8, 8), (8, 16), (16, 16), (16, 32)]
    assert cnn(torch.randn(3, 3, 48, 48)).shape == (3, 32, 3, 3)
    assert cnn.flat_features(128, 32) == 32 * 8 * 2


def test_vgg_cnn_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="6 positive widths"):
        VggCNN(3, (8, 8, 8))


def test_flatten_mlp_structure() -> None:
    mlp = FlattenMLP(4608, 1024, 64)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (4608, 1024, 64)
    assert sum(p.numel() for p in mlp.parameters()) == 4608 * 1024 + 1024 + 1024 * 64 + 64


# --- padding and the CLS transformer ------------------------------------------------------------------------------


def test_pad_by_lengths_exact_values() -> None:
    flat = torch.arange(1.0, 7.0).unsqueeze(1)  # items 1..6
    padded, valid = pad_by_lengths(flat, torch.tensor([2, 0, 3, 1]))
    assert padded.squeeze(-1).tolist() == [[1, 2, 0], [0, 0, 0], [3, 4, 5], [6, 0, 0]]
    assert valid.tolist() == [
        [True, True, False], [False, False, False], [True, True, True], [True, False, False],
    ]


def test_pad_by_lengths_rejects_wrong_total() -> None:
    with pytest.raises(ValueError, match="sum to 4 but the flat tensor has 5"):
        pad_by_lengths(torch.zeros(5, 2), torch.tensor([1, 3]))


def _manual_post_ln_layer(x: torch.Tensor, layer: nn.TransformerEncoderLayer, nheads: int) -> torch.Tensor:
    """One post-LN ReLU encoder layer computed from its weights, for an unpadded (L, d) sequence."""
    length, d = x.shape
    dh = d // nheads
    attn = layer.self_attn
    qkv = x @ attn.in_proj_weight.T + attn.in_proj_bias
    q, k, v = (t.reshape(length, nheads, dh).transpose(0, 1) for t in qkv.split(d, dim=1))
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1)
    heads = (weights @ v).transpose(0, 1).reshape(length, d)
    sa = heads @ attn.out_proj.weight.T + attn.out_proj.bias
    x = F.layer_norm(x + sa, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    ff = torch.relu(x @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias
    return F.layer_norm(x + ff, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def test_cls_transformer_matches_hand_computed_post_ln_without_positions() -> None:
    enc = ClsTransformerEncoder(d=8, nlayers=2, nheads=2, dim_feedforward=16).eval()
    lengths = [3, 1, 5]
    flat = torch.randn(sum(lengths), 8)
    with torch.no_grad():
        cls = enc(flat, torch.tensor(lengths))
        for i, item in enumerate(flat.split(lengths)):
            x = torch.cat([enc.cls_emb.weight, item])  # CLS first, no positional encoding added
            for layer in enc.encoder.layers:
                x = _manual_post_ln_layer(x, layer, nheads=2)
            torch.testing.assert_close(cls[i], x[0], rtol=1e-5, atol=1e-5)


def test_cls_transformer_sequence_output_and_mask() -> None:
    enc = ClsTransformerEncoder(d=8, nlayers=1, nheads=2, dim_feedforward=16).eval()
    out = enc(torch.randn(6, 8), [2, 4], return_sequence=True)
    assert out.cls.shape == (2, 8) and out.sequence.shape == (2, 5, 8)
    assert out.padding_mask.tolist() == [[False, False, False, True, True], [False] * 5]
    torch.testing.assert_close(out.cls, out.sequence[:, 0])


def test_padding_mask_masks_padded_positions() -> None:
    enc = ClsTransformerEncoder(d=8, nlayers=2, nheads=2, dim_feedforward=16).eval()
    flat = torch.randn(7, 8)
    with torch.no_grad():
        out = enc(flat, [1, 6], return_sequence=True)
        # Re-run the encoder with garbage in the padded slots: the unpadded outputs must not move.
        padded, _ = pad_by_lengths(flat, torch.tensor([1, 6]))
        tokens = torch.cat([enc.cls_emb.weight.expand(2, 1, 8), padded], dim=1)
        noisy = tokens.masked_fill(out.padding_mask.unsqueeze(-1), 1e3)
        again = enc.encoder(noisy, src_key_padding_mask=out.padding_mask)
        keep = ~out.padding_mask
        torch.testing.assert_close(again[keep], out.sequence[keep], rtol=1e-5, atol=1e-5)
        # And each utterance's CLS equals the CLS of that utterance run alone (no padding at all).
        alone = enc(flat[:1], [1])
        torch.testing.assert_close(out.cls[:1], alone, rtol=1e-5, atol=1e-5)


def test_cls_transformer_is_order_invariant_without_positional_encoding() -> None:
    enc = ClsTransformerEncoder(d=8, nlayers=1, nheads=2, dim_feedforward=16).eval()
    flat = torch.randn(4, 8)
    with torch.no_grad():
        a = enc(flat, [4])
        b = enc(flat[[2, 0, 3, 1]], [4])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cls_transformer_defaults_and_gradients() -> None:
    torch.manual_seed(0)
    enc = ClsTransformerEncoder(d=64, nlayers=4, nheads=4)
    layer = enc.encoder.layers[0]
    assert layer.linear1.out_features == 2048 and layer.dropout.p == 0.1 and not layer.norm_first
    assert layer.activation_relu_or_gelu == 1  # ReLU
    # A weighted sum: the plain sum of a post-LN output is constant (sum of the LN bias), with no gradient.
    (enc(torch.randn(5, 64), [2, 3]) * torch.randn(2, 64)).sum().backward()
    assert enc.cls_emb.weight.grad is not None and enc.cls_emb.weight.grad.abs().sum() > 0


def test_cls_transformer_rejects_bad_input() -> None:
    enc = ClsTransformerEncoder(d=8, nlayers=1, nheads=2)
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        enc(torch.randn(3, 4), [3])
    with pytest.raises(ValueError, match="not divisible"):
        ClsTransformerEncoder(d=10, nlayers=1, nheads=4)


# --- faces --------------------------------------------------------------------------------------------------------


def test_face_normalize_uses_dai_mean_and_std() -> None:
    faces = torch.zeros(1, 3, 48, 48, dtype=torch.uint8)
    faces[:, 0], faces[:, 1], faces[:, 2] = 196, 45, 166  # = mean + (1, -2, 2) std
    out = FaceNormalize()(faces)
    assert out.shape == (1, 3, 48, 48) and out.dtype == torch.float32
    assert out[0, :, 5, 7].tolist() == [1.0, -2.0, 2.0]


def test_face_normalize_area_resize_is_block_average() -> None:
    faces = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    norm = FaceNormalize(mean=(0, 0, 0), std=(1, 1, 1))
    expected = faces.float().reshape(2, 3, 48, 2, 48, 2).mean(dim=(3, 5))
    torch.testing.assert_close(norm(faces), expected)


def test_face_normalize_bilinear_antialias_keeps_constants() -> None:
    faces = torch.full((1, 3, 160, 160), 200, dtype=torch.uint8)
    out = FaceNormalize(mean=(0, 0, 0), std=(1, 1, 1), resize_mode="bilinear")(faces)
    assert out.shape == (1, 3, 48, 48)
    torch.testing.assert_close(out, torch.full_like(out, 200.0))


def test_face_normalize_rejects_float_and_bad_shape() -> None:
    with pytest.raises(TypeError, match="uint8"):
        FaceNormalize()(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        FaceNormalize()(torch.zeros(1, 1, 48, 48, dtype=torch.uint8))


# --- audio --------------------------------------------------------------------------------------------------------


def _reference_pieces(wave: torch.Tensor) -> torch.Tensor:
    """Per-utterance FE2E pieces computed the direct way, with torchaudio defaults (centred STFT)."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, win_length=400, n_fft=400, hop_length=200)
    spec = mel(wave)  # (128, T)
    n_pieces = math.ceil(spec.shape[-1] / 32)
    spec = F.pad(spec, (0, n_pieces * 32 - spec.shape[-1]))
    return torch.stack(spec.split(32, dim=-1)).unsqueeze(1)


@pytest.mark.filterwarnings("ignore:At least one mel filterbank")
def test_mel_pieces_equal_per_utterance_torchaudio() -> None:
    # 3000 samples: 16 frames (< one piece); 6200: exactly 32 frames; 12600: 64 frames; 16000: 81 frames.
    lengths = torch.tensor([16000, 3000, 6200, 12600, 9999])
    audio = torch.zeros(len(lengths), 16000)
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = 0.3 * torch.randn(n)
    pieces, counts = MelPieces()(audio, lengths)
    reference = [_reference_pieces(audio[i, :n]) for i, n in enumerate(lengths.tolist())]
    assert counts.tolist() == [r.shape[0] for r in reference] == [3, 1, 1, 2, 2]
    assert pieces.shape == (9, 1, 128, 32)
    torch.testing.assert_close(pieces, torch.cat(reference), rtol=1e-5, atol=1e-4)


def test_mel_pieces_ignore_padding_content_and_zero_pad_last_piece() -> None:
    lengths = torch.tensor([3000, 8000])
    audio = 0.3 * torch.randn(2, 8000)
    clean = audio.clone()
    clean[0, 3000:] = 0
    mp = MelPieces()
    a, _ = mp(audio, lengths)  # noise in the padded tail of utterance 0
    b, _ = mp(clean, lengths)
    torch.testing.assert_close(a, b)
    assert a[0, 0, :, 16:].abs().max() == 0  # 3000 samples -> 16 real frames, the rest is zero padding
    assert a[0, 0, :, :16].sum(dim=0).min() > 0  # every real frame carries energy


def test_mel_pieces_very_short_and_empty_utterances() -> None:
    pieces, counts = MelPieces()(0.3 * torch.randn(3, 400), torch.tensor([400, 150, 0]))
    assert counts.tolist() == [1, 1, 1] and pieces.shape == (3, 1, 128, 32)
    assert torch.isfinite(pieces).all()
    assert pieces[2].abs().max() == 0  # empty utterance: one silent piece
    assert pieces[1, 0, :, :1].abs().sum() > 0 and pieces[1, 0, :, 1:].abs().max() == 0


def test_mel_pieces_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="exceeds the padded width"):
        MelPieces()(torch.zeros(1, 100), torch.tensor([200]))
    with pytest.raises(ValueError, match="2 audio lengths for a batch of 1"):
        MelPieces()(torch.zeros(1, 100), torch.tensor([50, 50]))


# --- fusion and branches ------------------------------------------------------------------------------------------


def test_weighted_late_fusion_exact() -> None:
    fusion = WeightedLateFusion(3)
    assert fusion.weights.bias is None
    with torch.no_grad():
        fusion.weights.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    t, v, a = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0, -2.0]])
    expected = torch.tensor([[1 - 6 + 2.0, 2 + 0 - 1.0]])
    torch.testing.assert_close(fusion([t, v, a]), expected)
    torch.testing.assert_close(fusion(torch.stack([t, v, a], dim=-1)), expected)
    with pytest.raises(ValueError, match=r"\(B, C, 3\)"):
        fusion(torch.zeros(1, 2, 2))


def test_branches_return_cls_and_sequence() -> None:
    config = SequenceConfig(d=16, nlayers=1, nheads=2, dim_feedforward=32, widths=TINY, flatten_hidden=32)
    visual = VisualBranch(config)
    faces = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    assert visual(faces, [2, 3]).shape == (2, 16)
    assert visual(faces, [2, 3], return_sequence=True).sequence.shape == (2, 4, 16)
    audio = AudioBranch(config)
    out = audio(0.1 * torch.randn(2, 9000), torch.tensor([9000, 2000]), return_sequence=True)
    assert out.cls.shape == (2, 16) and out.padding_mask.tolist() == [[False] * 3, [False, False, True]]
