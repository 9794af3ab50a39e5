"""MTCNN face cropping on drawn faces: detection, fallbacks, batching, E2EMAL's aspect-kept crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import detect_face
from PIL import Image, ImageDraw, ImageFilter

from emolib.data.faces import FaceCropper, FaceCrops, aspect_pad_48, benchmark_mtcnn
from emolib.data.prepare import PrepareParams, make_cropper
from emolib.models.e2emal_inputs import restore_aspect_faces, select_face_clips


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


@pytest.fixture(scope="module")
def two_faces():
    """A 480x260 frame with two drawn faces: a large one on the left (narrowed eyes and a frown lower its MTCNN
    probability to ~0.987) and a smaller one on the right (~0.997); and every detection (x1, y1, x2, y2, p) of
    facenet's detector, largest first."""
    frame = draw_face(w=480, h=260, cx=140, cy=130, fw=150, eye_open=0.3, mouth=-0.5).copy()
    frame[:, 260:] = draw_face(w=480, h=260, cx=370, cy=130, fw=100)[:, 260:]
    m = MTCNN()
    with torch.no_grad():
        boxes, _ = detect_face(torch.as_tensor(frame[None]), m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds,
                               m.factor, "cpu")
    dets = np.asarray(boxes[0], dtype=float).reshape(-1, 5)
    dets = dets[np.argsort(-(dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))]
    assert len(dets) == 2 and dets[0, 0] < 240 < dets[1, 0], dets  # the large face left, the small one right
    assert dets[0, 4] < dets[1, 4], "the larger face must be the less confident one"
    return frame, dets


def test_min_conf_keeps_the_largest_passing_face(two_faces):
    # E2EMAL (th2l/E2EMAL face_extractor.py) keeps the largest face among those with confidence >= 0.65. MTCNN's
    # output stage already rejects p <= 0.7, so no real detection is below 0.65: the threshold is placed between
    # the two faces' probabilities instead, which exercises the same rule.
    frame, (big, small) = two_faces
    cut = float((big[4] + small[4]) / 2)
    largest = FaceCropper(size=48).crop([frame])  # min_conf 0: the largest face, whatever its confidence
    np.testing.assert_allclose(largest.boxes[0], big[:4], atol=1e-3)
    assert largest.conf[0] == pytest.approx(big[4], abs=1e-6)
    passing = FaceCropper(size=48, min_conf=cut).crop([frame])
    assert passing.found[0] and passing.conf[0] == pytest.approx(small[4], abs=1e-6)
    np.testing.assert_allclose(passing.boxes[0], small[:4], atol=1e-3)
    aspect = FaceCropper(size=48, crop="aspect", min_conf=cut, fallback="black").crop([frame])
    x1, y1, x2, y2 = (int(v) for v in small[:4])
    np.testing.assert_array_equal(aspect.faces[0], aspect_pad_48(frame[y1:y2, x1:x2], 48))
    none = FaceCropper(size=48, min_conf=float(small[4]) + 1e-4).crop([frame])
    assert not none.found[0] and none.conf[0] == 0


def test_prepare_params_set_mtcnn_smallest_face() -> None:
    assert make_cropper(PrepareParams(device="cpu")).mtcnn.min_face_size == 20  # facenet's, the papers' default
    assert make_cropper(PrepareParams(min_face_size=60, device="cpu")).mtcnn.min_face_size == 60
    assert make_cropper(PrepareParams(min_face_size=60, device="cpu"), min_face_size=40).mtcnn.min_face_size == 40
    with pytest.raises(ValueError, match="min_face_size"):
        PrepareParams(min_face_size=0)


def test_e2emal_sees_the_smaller_passing_face_only_in_a_cache_built_with_its_threshold(two_faces):
    frame, (big, small) = two_faces
    cut = float((big[4] + small[4]) / 2)  # stands for E2EMAL's 0.65 (see the test above)

    def e2emal_clip(min_face_conf: float):
        crops = make_cropper(PrepareParams(face_size=96, min_face_conf=min_face_conf, device="cpu")).crop([frame])
        faces = torch.from_numpy(crops.faces).permute(0, 3, 1, 2)
        return crops, select_face_clips(faces, torch.tensor([1]), torch.from_numpy(crops.conf),
                                        torch.from_numpy(crops.boxes), min_conf=cut)

    # A cache of the largest face of any confidence (min_face_conf 0): the frame is dropped at load time.
    _, (clips, counts) = e2emal_clip(0.0)
    assert counts.tolist() == [0] and clips.abs().sum() == 0
    # A cache built with E2EMAL's threshold stores the smaller face that passes, and E2EMAL uses it.
    crops, (clips, counts) = e2emal_clip(cut)
    np.testing.assert_allclose(crops.boxes[0], small[:4], atol=1e-3)
    assert counts.tolist() == [1] and clips[0, 1:].abs().sum() == 0
    expected = restore_aspect_faces(torch.from_numpy(crops.faces).permute(0, 3, 1, 2), torch.from_numpy(crops.boxes))
    torch.testing.assert_close(clips[0, 0], expected[0])
    assert clips[0, 0].abs().sum() > 0


def test_benchmark_reports_rates(faces):
    report = benchmark_mtcnn(faces[:2], batch_sizes=(1, 2), size=48)
    assert report["n_frames"] == 2 and report["device"] in ("cpu", "cuda", "cuda:0")
    assert set(report["frames_per_s"]) == {"1", "2"} and all(v > 0 for v in report["frames_per_s"].values())
    assert report["faces_found"] == {"1": 2, "2": 2}
    assert report["speedup_vs_one_by_one"]["1"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape,k,s", [((3, 10, 47, 63), 2, 2), ((5, 28, 22, 22), 3, 2), ((4, 32, 46, 46), 3, 2),
                                       ((2, 64, 21, 21), 3, 2), ((2, 64, 9, 8), 2, 2), ((1, 1, 5, 5), 3, 2),
                                       ((2, 48, 4, 4), 3, 2), ((2, 3, 2, 3), 3, 2)])
def test_strided_max_pool_equals_torch_max_pool(shape, k, s):
    from emolib.data.faces import StridedMaxPool

    torch.manual_seed(0)
    x = torch.randn(*shape)
    x.view(-1)[::97] = float("inf")
    x.view(-1)[5::101] = float("-inf")
    x.view(-1)[7::211] = float("nan")
    ref_pool = torch.nn.MaxPool2d(k, s, ceil_mode=True)
    fast = StridedMaxPool.replacing(ref_pool)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, : max(1, shape[3] - 1)]):
        ref, out = ref_pool(inp), fast(inp)
        assert out.shape == ref.shape and out.stride() == ref.stride()
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)


def test_strided_max_pool_replaces_only_what_it_reproduces():
    from emolib.data.faces import StridedMaxPool

    assert StridedMaxPool.replacing(torch.nn.MaxPool2d(3, 2, ceil_mode=True)) is not None
    assert StridedMaxPool.replacing(torch.nn.MaxPool2d(3, 2)) is None  # floor mode
    assert StridedMaxPool.replacing(torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)) is None
    assert StridedMaxPool.replacing(torch.nn.MaxPool2d((3, 2), 2, ceil_mode=True)) is None
    assert StridedMaxPool.replacing(torch.nn.MaxPool2d(3, 2, dilation=2, ceil_mode=True)) is None


def test_cpu_cropper_detects_exactly_as_facenets_networks(faces, gradient):
    from emolib.data.faces import StridedMaxPool

    cropper = FaceCropper(size=96, batch_size=8, min_face_size=40, device="cpu")
    m = cropper.mtcnn
    assert sum(isinstance(c, StridedMaxPool) for net in (m.pnet, m.rnet, m.onet) for c in net.children()) == 6
    ref = MTCNN(min_face_size=40, device="cpu").eval()
    frames = torch.as_tensor(np.stack(faces + [gradient]))
    with torch.no_grad():
        ours = detect_face(frames, 40, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, "cpu")
        theirs = detect_face(frames, 40, ref.pnet, ref.rnet, ref.onet, ref.thresholds, ref.factor, "cpu")
    for a, b in zip(ours[0], theirs[0]):
        np.testing.assert_array_equal(np.asarray(a, float), np.asarray(b, float))
    assert sum(len(b) for b in ours[0]) >= len(faces)
