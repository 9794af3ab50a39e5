"""Dai et al.'s face pipeline (the "dai" preprocessing recipe) against a direct re-implementation of Dai's steps.

Dai's steps (preprocess_iemocap.ipynb, src/datasets.py, src/models/e2e.py of wenliangdai/Multimodal-End2end-Sparse):
split each IEMOCAP dialog frame into halves, keep the speaker's half (session gender letter == speaker letter ->
left), centre-crop it to 224 x 224 with floor offsets, run facenet's MTCNN(image_size=48, margin=2,
post_process=False) on it, and take rows [off, off+48), columns [off-24, off+24) with off = (H-48)//2 where no face
is found. The re-implementation below calls facenet's public MTCNN API on the same decoded frames.

Tolerance: exact equality of the uint8 faces. Both sides skip the JPEG round trip of Dai's stored 224 px crops
(lossy, quality of OpenCV's default) and both feed facenet torch tensors (Dai fed numpy arrays, for which facenet
resizes with OpenCV INTER_AREA instead of torch's area interpolation; OpenCV is not installed here).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from helpers import TINY_PREPARE

from emolib.data import get_adapter
from emolib.data.cache import Cache
from emolib.data.media import iter_frames
from emolib.data.prepare import PrepareParams, prepare_frame


def dai_faces(frames: list[np.ndarray], uid: str) -> np.ndarray:
    entries = uid.split("_")
    left = entries[0][-1] == entries[-1][0]  # src/datasets.py IEMOCAP.use_left
    crops = []
    for frame in frames:
        w = frame.shape[1] // 2
        half = frame[:, :w] if left else frame[:, w: 2 * w]
        h, w = half.shape[:2]
        top, lft = (h - 224) // 2, (w - 224) // 2
        crops.append(np.ascontiguousarray(half[top: top + 224, lft: lft + 224]))
    mtcnn = MTCNN(image_size=48, margin=2, post_process=False, device="cpu")
    out = []
    for crop in crops:
        face = mtcnn(torch.from_numpy(crop))
        if face is None:
            off = (224 - 48) // 2
            out.append(crop[off: off + 48, off - 24: off + 24])
        else:
            out.append(face.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def dai_cache(synthetic_cache):
    params = get_adapter("iemocap").prepare_params("dai", **{**TINY_PREPARE, "face_size": 48})
    return synthetic_cache("iemocap", params=params)


def test_dai_recipe_values() -> None:
    iemocap, mosei = get_adapter("iemocap"), get_adapter("mosei")
    assert iemocap.prepare_params("dai") == PrepareParams(frame_center_crop=224, margin_size=48, face_fallback="dai",
                                                          face_codec="raw")  # Dai keeps exact crops
    p = mosei.prepare_params("dai", face_size=96)
    assert (p.frame_halve_above, p.frame_center_crop, p.margin_size, p.img_interval, p.max_video_seconds,
            p.face_size) == (360, 360, 48, 7500, 280.0, 96)
    assert get_adapter("sims").dai_prepare == {}
    with pytest.raises(ValueError, match="no Dai et al. preprocessing recipe"):
        get_adapter("sims").prepare_params("dai")
    assert iemocap.prepare_params() == PrepareParams()  # "emolib" reproduces the behaviour before the recipe


def test_dai_recipe_faces_equal_a_reimplementation_of_dais_steps(dai_cache, tiny_releases) -> None:
    cache = Cache(dai_cache)
    assert cache.provenance["parameters"]["frame_center_crop"] == 224
    root = tiny_releases["iemocap"]
    checked = faces_found = 0
    for uid in cache.uids()[:4]:
        rec, meta = cache.load(uid), cache.meta(uid)
        dialog = "_".join(uid.split("_")[:-1])
        video = next(root.glob(f"Session*/dialog/avi/DivX/{dialog}.avi"))
        frames = [f for _, f in iter_frames(video, interval_ms=500, start_s=meta["start"], end_s=meta["end"])]
        assert len(frames) == len(rec.faces)
        expected = dai_faces(frames, uid)
        np.testing.assert_array_equal(rec.faces, expected)
        checked += len(frames)
        faces_found += int(rec.face_found.sum())
    assert checked >= 4 and 0 < faces_found  # real detections were compared, not only fallbacks


def test_prepare_frame_follows_torchvision_resize_and_center_crop() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    tall = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    out = prepare_frame(tall, PrepareParams(frame_halve_above=360, frame_center_crop=360))
    halved = np.asarray(Image.fromarray(tall).resize((640, 360), Image.BILINEAR))
    np.testing.assert_array_equal(out, halved[:, 140:500])
    small = rng.integers(1, 256, (240, 320, 3), dtype=np.uint8)
    padded = prepare_frame(small, PrepareParams(frame_halve_above=360, frame_center_crop=360))
    assert padded.shape == (360, 360, 3)
    np.testing.assert_array_equal(padded[60:300, 20:340], small)
    assert (padded[:60] == 0).all() and (padded[300:] == 0).all()
    assert prepare_frame(small, PrepareParams()) is small


def test_margin_applied_as_at_48_px() -> None:
    from test_faces import draw_face

    from emolib.data.faces import FaceCropper

    frame = np.ascontiguousarray(draw_face())
    at48 = FaceCropper(size=48, margin=2).crop([frame])
    big = FaceCropper(size=144, margin=2, margin_size=48).crop([frame])
    plain = FaceCropper(size=144, margin=2).crop([frame])
    assert at48.found[0] and big.found[0]
    # The same region: area-downscaling the 144 px crop to 48 gives the 48 px crop up to resampling differences
    # (two resamplings of a non-integer region size); with the margin at 144 px the region is smaller.
    def down(faces: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(faces[:1]).permute(0, 3, 1, 2).float()
        return torch.nn.functional.interpolate(x, size=(48, 48), mode="area")[0].permute(1, 2, 0).numpy()

    same = np.abs(down(big.faces) - at48.faces[0]).mean()
    other = np.abs(down(plain.faces) - at48.faces[0]).mean()
    assert same < 1.5 and other > 2 * same, (same, other)


def test_model_warns_when_the_cache_is_not_dais(tiny_caches, dai_cache) -> None:
    from emolib.experiment import warn_recipe_mismatch
    from emolib.models import build_model

    model = build_model("visual-only", "tiny", num_outputs=6)
    with pytest.warns(UserWarning, match=r"frame_center_crop=None \(dai: 224\)"):
        diffs = warn_recipe_mismatch(model, Cache(tiny_caches["iemocap"]), tiny_caches["iemocap"])
    assert len(diffs) == 4  # the crop, the margin, the no-face window and the exact (raw) faces
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_recipe_mismatch(model, Cache(dai_cache), dai_cache) == []
        audio = build_model("audio-only", "tiny", num_outputs=6)  # sees no faces: no warning
        assert warn_recipe_mismatch(audio, Cache(tiny_caches["iemocap"]), tiny_caches["iemocap"]) == []
        e2emal = build_model("e2emal", "tiny", num_outputs=6)  # not a Dai model: no warning
        assert warn_recipe_mismatch(e2emal, Cache(tiny_caches["iemocap"]), tiny_caches["iemocap"]) == []
