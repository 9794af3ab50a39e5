"""The cache's record encodings (JPEG faces, FLAC audio, raw arrays): round trips, determinism, old caches."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from emolib.data.cache import (
    CACHE_VERSION,
    Cache,
    CacheError,
    CacheWriter,
    Encoding,
    RecordArrays,
    decode_audio,
    decode_faces,
    encode_audio,
    encode_faces,
    encode_record,
    encoded_arrays,
    write_npz,
)
from emolib.data.dataset import CachedDataset
from emolib.data.prepare import PrepareParams, with_defaults


def _faces(n: int = 3, side: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth images with some texture, like face crops (pure noise would be JPEG's worst case)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([128 + 100 * np.sin(6 * x + k) * np.cos(4 * y) for k in range(3)], -1)
    return np.stack([np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(n)])


def _audio(n: int = 12000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    a = 8000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 500, n)
    a[:2] = (-32768, 32767)  # the extremes survive
    return np.clip(a, -32768, 32767).astype(np.int16)


def _arrays(n_frames: int = 3, n_samples: int = 12000) -> dict[str, np.ndarray]:
    return {"faces": _faces(n_frames), "face_conf": np.linspace(0.9, 1, n_frames, dtype=np.float32),
            "face_found": np.ones(n_frames, bool), "face_boxes": np.ones((n_frames, 4), np.float32),
            "frame_times": np.arange(n_frames, dtype=np.float32) / 2, "audio": _audio(n_samples),
            "labels": np.asarray([1, 0, 0, 1, 0, 0], np.float32)}


def _meta(uid: str, arrays: dict) -> dict:
    return {"uid": uid, "split": "train", "text": "hello", "labels": arrays["labels"].tolist(),
            "n_frames": len(arrays["faces"]), "n_samples": len(arrays["audio"]), "fallbacks": []}


def _finish(root, metas, provenance) -> None:
    writer = CacheWriter(root)
    writer.write_index(metas)
    (root / "provenance.json").write_text(json.dumps(provenance))


def test_jpeg_faces_round_trip_close_and_flac_audio_exact() -> None:
    faces, audio = _faces(4), _audio()
    members = encode_faces(faces, quality=90)
    decoded = decode_faces(members)
    assert decoded.dtype == np.uint8 and decoded.shape == faces.shape
    err = np.abs(decoded.astype(int) - faces).mean()
    assert 0 < err < 6, err  # lossy, but within a few grey levels at quality 90 (48 px crops lose the most)
    assert np.abs(decode_faces(encode_faces(faces, quality=20)).astype(int) - faces).mean() > err
    np.testing.assert_array_equal(decode_faces(members, keep=np.array([3, 1])), decoded[[3, 1]])
    assert len(members["faces_jpeg"]) < faces.nbytes / 3
    flac = encode_audio(audio)
    back = decode_audio(flac)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, audio)
    assert len(flac["audio_flac"]) < audio.nbytes
    # no frames, no samples
    assert decode_faces(encode_faces(np.zeros((0, 48, 48, 3), np.uint8), 90)).shape == (0, 48, 48, 3)
    assert decode_audio(encode_audio(np.zeros(0, np.int16))).shape == (0,)


def test_encodings_are_byte_deterministic_across_processes(tmp_path) -> None:
    """The same arrays give the same record file here and in a fresh interpreter (resumes depend on it)."""
    arrays = _arrays()
    np.savez(tmp_path / "in.npz", **arrays)
    write_npz(tmp_path / "a.npz", encode_record(arrays, Encoding("jpeg", 90, "flac")))
    write_npz(tmp_path / "b.npz", encode_record(arrays, Encoding("jpeg", 90, "flac")))
    code = ("import sys, numpy as np; from emolib.data.cache import Encoding, encode_record, write_npz; "
            "from pathlib import Path; d = dict(np.load(sys.argv[1])); "
            "write_npz(Path(sys.argv[2]), encode_record(d, Encoding('jpeg', 90, 'flac')))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "c.npz")], check=True)
    digests = {hashlib.sha256((tmp_path / f"{k}.npz").read_bytes()).hexdigest() for k in "abc"}
    assert len(digests) == 1
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds["faces_jpeg.npy"] == kinds["audio_flac.npy"] == zipfile.ZIP_STORED  # not deflated twice
    assert kinds["face_conf.npy"] == zipfile.ZIP_DEFLATED and "faces.npy" not in kinds


def test_written_record_reads_back_as_the_arrays_prepare_returns(tmp_path) -> None:
    """A JPEG record reads back exactly as the decoded faces ``encoded_arrays`` hands to prepare and predict."""
    arrays = _arrays()
    enc = encoded_arrays(arrays, Encoding("jpeg", 85, "flac"))
    assert isinstance(enc, RecordArrays) and not np.array_equal(enc["faces"], arrays["faces"])
    raw = encoded_arrays(arrays, Encoding())
    np.testing.assert_array_equal(raw["faces"], arrays["faces"])
    root = tmp_path / "cache"
    writer = CacheWriter(root)
    writer.write(_meta("a", arrays), enc)
    writer.write(_meta("b", arrays), arrays, Encoding("raw", 90, "flac"))
    _finish(root, [_meta("a", arrays), _meta("b", arrays)], {"cache_version": CACHE_VERSION})
    cache = Cache(root)
    a, b = cache.load("a"), cache.load("b")
    for key in ("faces", "face_conf", "face_found", "face_boxes", "frame_times", "audio", "labels"):
        np.testing.assert_array_equal(getattr(a, key), enc[key])
        np.testing.assert_array_equal(getattr(b, key), arrays[key])
    assert a.faces.dtype == np.uint8 and a.audio.dtype == np.int16
    item = CachedDataset(cache, preload=False)[0]
    assert item["faces"].shape == (3, 3, 48, 48)


def test_only_the_modalities_read_are_decoded(tmp_path, monkeypatch) -> None:
    """A reader of some modalities gets the others empty, without their JPEG or FLAC ever being decoded; what it
    reads is the same as a full load, in either encoding, and ``present`` still says what the record holds."""
    import emolib.data.cache as cache_module

    arrays = _arrays()
    root = tmp_path / "cache"
    writer = CacheWriter(root)
    writer.write(_meta("a", arrays), arrays, Encoding("jpeg", 85, "flac"))
    writer.write(_meta("b", arrays), arrays, Encoding())
    _finish(root, [_meta("a", arrays), _meta("b", arrays)], {"cache_version": CACHE_VERSION})
    cache = Cache(root)
    full = {uid: cache.load(uid) for uid in ("a", "b")}
    decoded = []
    for name in ("decode_faces", "decode_audio"):
        real = getattr(cache_module, name)
        monkeypatch.setattr(cache_module, name, lambda m, *a, _r=real, _n=name: decoded.append(_n) or _r(m, *a))
    for uid in ("a", "b"):
        audio_only, visual_only = cache.load(uid, ("audio",)), cache.load(uid, ("visual",))
        text_only = cache.load(uid, ("text",))
        for rec in (audio_only, text_only):
            assert rec.faces.shape == (0, *full[uid].faces.shape[1:]) and rec.faces.dtype == np.uint8
            for key in ("face_conf", "face_found", "face_boxes", "frame_times"):
                assert len(getattr(rec, key)) == 0
        for rec in (visual_only, text_only):
            assert rec.audio.shape == (0,) and rec.audio.dtype == np.int16
        np.testing.assert_array_equal(audio_only.audio, full[uid].audio)
        for key in ("faces", "face_conf", "face_found", "face_boxes", "frame_times", "labels"):
            np.testing.assert_array_equal(getattr(visual_only, key), getattr(full[uid], key))
    assert sorted(decoded) == ["decode_audio"] * 2 + ["decode_faces"] * 2  # the audio-only and visual-only loads
    read = []  # members read from the raw record: its faces are not even inflated
    real_get = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda z, key: read.append(key) or real_get(z, key))
    assert cache.load("b", ("audio",)).faces.shape == (0, 48, 48, 3) and "faces" not in read and "audio" in read
    everything = CachedDataset(cache)
    text = CachedDataset(cache, modalities=["text"])
    assert text.modalities == ("text",) and text.decoded_bytes() == 0 < everything.decoded_bytes()
    for i in range(2):
        item, ref = text[i], everything[i]
        assert item["faces"].shape == (0, 3, 48, 48) and item["audio"].shape == (0,)
        assert item["text"] == ref["text"] and torch.equal(item["present"], ref["present"])
        torch.testing.assert_close(item["labels"], ref["labels"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="subset of"):
        CachedDataset(cache, modalities=["video"])


def test_version_1_cache_still_loads_as_raw(tmp_path) -> None:
    """A cache written before the encodings existed: np.savez_compressed-style members, no codec parameters."""
    arrays = _arrays()
    root = tmp_path / "old"
    (root / "utterances").mkdir(parents=True)
    np.savez_compressed(root / "utterances" / "u1.npz", **arrays)
    (root / "utterances" / "u1.json").write_text(json.dumps(_meta("u1", arrays)))
    params = {k: v for k, v in PrepareParams().__dict__.items() if k not in ("face_codec", "face_quality",
                                                                              "audio_codec")}
    _finish(root, [_meta("u1", arrays)], {"cache_version": 1, "parameters": params})
    cache = Cache(root)
    rec = cache.load("u1")
    for key, value in arrays.items():
        np.testing.assert_array_equal(getattr(rec, key), value)
    recorded = with_defaults(cache.provenance["parameters"])
    assert (recorded["face_codec"], recorded["audio_codec"]) == ("raw", "raw")
    assert with_defaults({"face_codec": "jpeg"})["face_codec"] == "jpeg"


def test_newer_cache_and_damaged_records_give_clear_errors(tmp_path) -> None:
    arrays = _arrays()
    root = tmp_path / "cache"
    CacheWriter(root).write(_meta("a", arrays), encoded_arrays(arrays, Encoding("jpeg", 90, "flac")))
    _finish(root, [_meta("a", arrays)], {"cache_version": CACHE_VERSION + 1})
    with pytest.raises(CacheError, match="emolib prepare"):
        Cache(root)
    (root / "provenance.json").write_text(json.dumps({"cache_version": CACHE_VERSION}))
    members = encode_record(arrays, Encoding("jpeg", 90, "flac"))
    members["faces_jpeg"] = members["faces_jpeg"].copy()
    members["faces_jpeg"][:20] = 0  # the first JPEG's header is gone
    write_npz(root / "utterances" / "a.npz", members)
    with pytest.raises(CacheError, match="damaged record"):
        Cache(root).load("a")


def test_encoding_parameters_are_checked() -> None:
    assert PrepareParams().encoding == Encoding("jpeg", 80, "flac")
    for bad in ({"face_codec": "png"}, {"audio_codec": "mp3"}, {"face_quality": 0}, {"face_quality": 101},
                {"face_quality": 90.0}):
        with pytest.raises(ValueError):
            PrepareParams(**bad)


def test_prepare_cli_chooses_the_encoding(tiny_releases, tmp_path) -> None:
    from emolib.cli import main
    from emolib.data.cache import Cache

    out = tmp_path / "raw-cache"
    code = main(["prepare", "--dataset", "sims", str(tiny_releases["sims"]), str(out), "--face-size", "32",
                 "--device", "cpu", "--face-codec", "raw", "--audio-codec", "raw"])
    assert code == 0
    params = Cache(out).provenance["parameters"]
    assert (params["face_codec"], params["audio_codec"], params["min_face_size"]) == ("raw", "raw", 20)
    out = tmp_path / "q50-cache"
    assert main(["prepare", "--dataset", "sims", str(tiny_releases["sims"]), str(out), "--face-size", "32",
                 "--device", "cpu", "--face-quality", "50", "--min-face-size", "24"]) == 0
    params = Cache(out).provenance["parameters"]
    assert (params["face_codec"], params["face_quality"], params["audio_codec"]) == ("jpeg", 50, "flac")
    assert params["min_face_size"] == 24
