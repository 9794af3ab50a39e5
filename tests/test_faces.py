"""MTCNN face cropping on drawn faces: detection, fallbacks, batching, E2EMAL's aspect-kept crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from PIL import Image, ImageDraw, ImageFilter

from emolib.data.faces import FaceCropper, FaceCrops, aspect_pad_48, benchmark_mtcnn


def draw_face(
    *, w: int = 320, h: int = 240, cx: float = 160, cy: float = 120, fw: float = 120,
    bg=(200, 210, 220), skin=(224, 172, 140), mouth: float = 0.0, brow: float = 0.0, eye_open: float = 1.0,
) -> np.ndarray:
    """A cartoon face MTCNN detects reliably (216/216 variants, p >= 0.91, when tuned; see the report):
    bald skin ellipse (fw x 1.25 fw) on a plain background, small eyes at 8 % of the face height above
    the centre with dark pupils, brows, a shaded nose with nostrils, filled lips or an arc mouth, and a
    Gaussian blur of radius 3 (sharp cartoon edges lower the scores). ``mouth`` > 0 smiles, < 0 frowns;
    ``brow`` tilts the brows; ``eye_open`` in (0, 1] narrows the eyes."""
    fh = 1.25 * fw
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    d.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=skin)
    ey, ex, er = cy - 0.08 * fh, 0.21 * fw, 0.068 * fw
    for s in (-1, 1):
        ecx = cx + s * ex
        d.ellipse([ecx - 1.4 * er, ey - er * eye_open, ecx + 1.4 * er, ey + er * eye_open], fill=(250, 250, 250))
        d.ellipse([ecx - 0.65 * er, ey - 0.65 * er * eye_open, ecx + 0.65 * er, ey + 0.65 * er * eye_open],
                  fill=(40, 30, 20))
        by = ey - 0.11 * fh
        d.line([ecx - 1.6 * er, by + s * brow * er, ecx + 1.6 * er, by - s * brow * er], fill=(70, 45, 25),
               width=max(2, int(0.04 * fw)))
    ny = ey + 0.2 * fh
    d.polygon([(cx, ey + 0.5 * er), (cx - 0.08 * fw, ny), (cx + 0.08 * fw, ny)],
              fill=tuple(int(0.88 * c) for c in skin))
    for s in (-1, 1):
        d.ellipse([cx + s * 0.045 * fw - 0.02 * fw, ny - 0.03 * fw, cx + s * 0.045 * fw + 0.02 * fw, ny],
                  fill=(110, 60, 50))
    my, mw, col, lw = ey + 0.36 * fh, 0.2 * fw, (160, 50, 55), max(2, int(0.05 * fw))
    if abs(mouth) < 1e-3:
        d.ellipse([cx - mw, my - 0.03 * fw, cx + mw, my + 0.03 * fw], fill=col)
    elif mouth > 0:
        d.arc([cx - mw, my - mw * mouth, cx + mw, my + mw * mouth], 0, 180, fill=col, width=lw)
    else:
        d.arc([cx - mw, my, cx + mw, my + 2 * mw * -mouth], 180, 360, fill=col, width=lw)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(3)))


VARIANTS = [
    dict(fw=120),
    dict(fw=150, cx=140, mouth=0.5, brow=0.5),
    dict(fw=100, cx=190, mouth=-0.5, brow=-0.5, eye_open=0.6, bg=(60, 80, 60)),
    dict(fw=135, cy=115, mouth=0.5, eye_open=0.6),
    dict(fw=110, cx=130, mouth=-0.5, bg=(60, 80, 60)),
]


@pytest.fixture(scope="module")
def faces():
    return [draw_face(**v) for v in VARIANTS]


@pytest.fixture(scope="module")
def gradient():
    # Smooth colour ramp: no face, and its centre-square area resize is easy to compute by hand.
    y, x = np.mgrid[0:240, 0:320]
    return np.stack([x * 255 // 319, y * 255 // 239, (x + y) * 255 // 558], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def cropper():
    return FaceCropper(size=224, batch_size=8)


def test_drawn_faces_are_detected(cropper, faces):
    out = cropper.crop(faces)
    assert out.found.all() and out.n_fallback == 0
    assert (out.conf > 0.9).all(), out.conf
    for v, box in zip(VARIANTS, out.boxes):
        fw, cx, cy = v["fw"], v.get("cx", 160), v.get("cy", 120)
        bx, by = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert abs(bx - cx) < 0.15 * fw and abs(by - cy) < 0.25 * fw
        assert 0.5 * fw < box[2] - box[0] < 1.3 * fw


def test_shapes_dtypes_and_empty_input(cropper, faces):
    out = cropper.crop(faces[:2])
    assert isinstance(out, FaceCrops) and len(out) == 2
    assert out.faces.shape == (2, 224, 224, 3) and out.faces.dtype == np.uint8
    assert out.conf.dtype == np.float32 and out.found.dtype == bool
    assert out.boxes.shape == (2, 4) and out.boxes.dtype == np.float32
    empty = cropper.crop([])
    assert empty.faces.shape == (0, 224, 224, 3) and empty.conf.shape == (0,) and empty.n_fallback == 0


def test_same_crops_as_facenet_mtcnn_forward(faces):
    cropper = FaceCropper(size=48, batch_size=8)
    ours = cropper.crop(faces)
    ref_faces, ref_probs = MTCNN(image_size=48, margin=2, post_process=False)(
        torch.as_tensor(np.stack(faces)), return_prob=True
    )
    for i in range(len(faces)):
        np.testing.assert_array_equal(ours.faces[i], ref_faces[i].permute(1, 2, 0).numpy().astype(np.uint8))
        assert ours.conf[i] == pytest.approx(float(ref_probs[i][0]), abs=1e-6)


def test_blank_frame_uses_counted_center_fallback(cropper, faces, gradient):
    out = cropper.crop([faces[0], gradient, np.full((240, 320, 3), 90, np.uint8)])
    assert out.found.tolist() == [True, False, False] and out.n_fallback == 2
    assert out.conf[1] == 0 and out.conf[2] == 0 and np.isnan(out.boxes[1:]).all()
    assert (out.faces[2] == 90).all()
    # 240x240 centre square -> 48: area resize = mean of 5x5 blocks, truncated to uint8 (facenet's crop).
    small = FaceCropper(size=48).crop([gradient])
    assert not small.found[0]
    square = gradient[:, 40:280].astype(np.float64)
    expected = square.reshape(48, 5, 48, 5, 3).mean(axis=(1, 3))
    assert np.abs(small.faces[0].astype(np.float64) - expected).max() < 1.0 + 1e-6
    np.testing.assert_array_equal(small.faces[0], np.floor(expected + 1e-4).astype(np.uint8))


def test_dai_and_black_fallbacks(gradient):
    frame = np.ascontiguousarray(gradient[:224, :224])
    dai = FaceCropper(size=48, fallback="dai").crop([frame])
    assert not dai.found[0]
    np.testing.assert_array_equal(dai.faces[0], frame[88:136, 64:112])
    black = FaceCropper(size=64, fallback="black").crop([frame])
    assert (black.faces == 0).all() and black.faces.shape == (1, 64, 64, 3)
    # other crop sizes: Dai's 48 px window resized to the stored size
    big = FaceCropper(size=96, fallback="dai").crop([frame])
    window = torch.from_numpy(frame[88:136, 64:112]).permute(2, 0, 1)[None].float()
    expected = torch.nn.functional.interpolate(window, size=(96, 96), mode="area")[0].permute(1, 2, 0).byte()
    np.testing.assert_array_equal(big.faces[0], expected.numpy())
    with pytest.raises(ValueError, match=r"needs frames .* got 60x60"):
        FaceCropper(size=48, fallback="dai").crop([np.zeros((60, 60, 3), np.uint8)])


def test_batched_equals_one_by_one_and_mixed_shapes(faces, gradient):
    small = np.ascontiguousarray(draw_face(w=200, h=180, cx=100, cy=90, fw=110))
    frames = [faces[0], small, gradient, faces[1], small[:, ::-1].copy(), faces[2]]
    batched = FaceCropper(size=96, batch_size=32).crop(frames)
    single = FaceCropper(size=96, batch_size=1).crop(frames)
    assert batched.found.tolist() == single.found.tolist() == [True, True, False, True, True, True]
    np.testing.assert_allclose(batched.conf, single.conf, atol=1e-5)
    np.testing.assert_allclose(batched.boxes, single.boxes, atol=1e-2)
    assert np.abs(batched.faces.astype(int) - single.faces).max() <= 1
    alone = FaceCropper(size=96).crop([small])
    np.testing.assert_allclose(batched.boxes[1], alone.boxes[0], atol=1e-2)


def test_min_conf_rejects_weak_detections(faces):
    base = FaceCropper(size=64).crop(faces[:3])
    cut = float(np.sort(base.conf)[1])
    strict = FaceCropper(size=64, min_conf=cut).crop(faces[:3])
    assert strict.found.tolist() == (base.conf >= cut).tolist() and strict.found.sum() == 2
    assert (strict.conf[~strict.found] == 0).all()
    none = FaceCropper(size=64, min_conf=1.01).crop(faces[:2])
    assert not none.found.any() and (none.conf == 0).all()


def test_tiny_frames_and_bad_input():
    out = FaceCropper(size=32).crop([np.full((10, 12, 3), 7, np.uint8)])
    assert not out.found[0] and (out.faces == 7).all()
    with pytest.raises(ValueError, match=r"frame 1: expected an H x W x 3 uint8 RGB array, got shape \(4, 4\)"):
        FaceCropper(size=32).crop([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="dtype float32"):
        FaceCropper(size=32).crop([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="fallback must be one of"):
        FaceCropper(fallback="blur")


def test_aspect_pad_48_hand_computed():
    img = np.arange(4 * 2 * 1, dtype=np.uint8).reshape(4, 2, 1) + 1  # h=4, w=2
    out = aspect_pad_48(img, size=8)  # ratio 2: 8x4, padded 2 columns left and right
    expected = np.zeros((8, 8, 1), np.uint8)
    expected[:, 2:6, 0] = np.repeat(np.repeat(img[..., 0], 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(out, expected)

    img = (np.arange(15, dtype=np.uint8).reshape(3, 5, 1) + 1).repeat(3, axis=2)  # h=3, w=5 -> ratio 0.8
    out = aspect_pad_48(img, size=4)  # 2 x 4: rows floor([0, 1.25]) = [0, 1], cols [0, 1, 2, 3]; top pad 1
    expected = np.zeros((4, 4, 3), np.uint8)
    expected[1:3] = img[[0, 1]][:, [0, 1, 2, 3]]
    np.testing.assert_array_equal(out, expected)
    assert aspect_pad_48(np.ones((100, 60, 3), np.uint8)).shape == (48, 48, 3)
    with pytest.raises(ValueError, match="non-empty"):
        aspect_pad_48(np.zeros((0, 5, 3), np.uint8))


def test_aspect_crop_mode_for_e2emal(faces):
    out = FaceCropper(size=48, crop="aspect", min_conf=0.65, fallback="black").crop([faces[0], np.zeros_like(faces[0])])
    assert out.found.tolist() == [True, False] and (out.faces[1] == 0).all()
    x1, y1, x2, y2 = (int(v) for v in out.boxes[0])
    np.testing.assert_array_equal(out.faces[0], aspect_pad_48(faces[0][y1:y2, x1:x2], 48))


def test_benchmark_reports_rates(faces):
    report = benchmark_mtcnn(faces[:2], batch_sizes=(1, 2), size=48)
    assert report["n_frames"] == 2 and report["device"] in ("cpu", "cuda", "cuda:0")
    assert set(report["frames_per_s"]) == {"1", "2"} and all(v > 0 for v in report["frames_per_s"].values())
    assert report["faces_found"] == {"1": 2, "2": 2}
    assert report["speedup_vs_one_by_one"]["1"] == pytest.approx(1.0)
