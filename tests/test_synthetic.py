"""Synthetic raw releases: layout, determinism, ground truth through the real parsers, detectable faces,
voiced audio on the right channel, and the design numbers behind the cues."""

from __future__ import annotations

import hashlib
import json
import wave
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SEED

from emolib.data import formats as F
from emolib.data import synthetic as S
from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS

SEED = TINY_SEED  # the tests read conftest's tiny_releases: synthesize_release(ds, seed=SEED, size="tiny")
Releases = Mapping[str, Path]  # dataset -> release root


@pytest.fixture(scope="module")
def plans() -> dict[str, S.ReleasePlan]:
    return {ds: S.plan_release(ds, seed=SEED, size="tiny") for ds in S.DATASETS}


def rel_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return w.getframerate(), data.T.astype(np.float32) / 32768


def decode_frames(path: Path, count: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [frames[i] for i in np.linspace(0, len(frames) - 1, count).astype(int)]


# ---------------------------------------------------------------------------------------------- layout


def test_iemocap_layout(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    root = tiny_releases["iemocap"]
    expected = {S.MANIFEST_NAME}
    for dialog in ("Ses01F_impro01", "Ses01M_impro01"):
        expected |= {f"Session1/dialog/{sub}/{dialog}.{ext}" for sub, ext in
                     (("avi/DivX", "avi"), ("wav", "wav"), ("EmoEvaluation", "txt"), ("transcriptions", "txt"))}
    assert rel_files(root) == expected
    labels = [c.label for c in plans["iemocap"].clips]
    assert len(labels) == 10 and set(IEMOCAP_CLASSES) <= set(labels) and "xxx" in labels


def test_mosei_and_sims_layout(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    vids = [v.name for v in plans["mosei"].videos]
    expected = {S.MANIFEST_NAME, "Labels/Batch_3171000_batch_results.csv", "Labels/Batch_3171017_batch_results.csv"}
    for vid in vids:
        expected |= {f"Videos/Full/Combined/{vid}.mp4", f"Audio/WAV_16000/{vid}.wav", f"Transcript/Combined/{vid}.txt"}
    # The generator's own files; synthesize_release adds the fold file that a real copy takes from the SDK.
    assert set(S.read_manifest(tiny_releases["mosei"])["files"]) == expected - {S.MANIFEST_NAME}
    assert rel_files(tiny_releases["mosei"]) == expected | {"folds.json"}
    assert rel_files(tiny_releases["sims"]) == {S.MANIFEST_NAME, "label.csv"} | {
        f"Raw/video_000{v}/000{c}.mp4" for v in (1, 2) for c in (1, 2, 3)}
    assert {c.split for c in plans["sims"].clips} == {"train", "valid", "test"}


def test_video_containers(tiny_releases: Releases) -> None:
    import av

    with av.open(str(tiny_releases["iemocap"] / "Session1/dialog/avi/DivX/Ses01F_impro01.avi")) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.codec_tag, v.width, v.height) == ("mpeg4", "DIVX", 640, 240)
        assert v.average_rate == S.SYNTH_DESIGN["iemocap"]["fps"]
    mp4 = next((tiny_releases["sims"] / "Raw").rglob("*.mp4"))
    with av.open(str(mp4)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].sample_rate == 16000
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert np.sqrt(np.mean(audio**2)) > 0.01  # the track carries the voice


def test_manifest_records_truth_and_checksums(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    manifest = S.read_manifest(tiny_releases["mosei"])
    assert manifest["complete"] and manifest["seed"] == SEED and manifest["size"] == "tiny"
    assert [c["uid"] for c in manifest["clips"]] == [c.uid for c in plans["mosei"].clips]
    assert manifest["design"]["cues"]["visual"]["informative"] == S.informative_probability("mosei", "visual")
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((tiny_releases["mosei"] / rel).read_bytes()).hexdigest() == digest


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_label_text_and_wav_files(tmp_path: Path, tiny_releases: Releases) -> None:
    for ds in S.DATASETS:
        again = S.synthesize(ds, tmp_path / ds, seed=SEED, size="tiny", progress=False)
        files = sorted(f for f in rel_files(again) if f.endswith((".txt", ".csv", ".wav")))
        assert files
        for rel in files:
            assert (again / rel).read_bytes() == (tiny_releases[ds] / rel).read_bytes(), rel
    other = S.plan_release("iemocap", seed=SEED + 1, size="tiny")
    assert [c.text for c in other.clips] != [c.text for c in S.plan_release("iemocap", seed=SEED, size="tiny").clips]


def test_rerun_overwrites_and_removes_stale_files(tmp_path: Path) -> None:
    root = tmp_path / "sims"
    S.synthesize("sims", root, seed=1, size="tiny", progress=False)
    stray = root / "Raw" / "video_0009" / "0001.mp4"
    manifest = S.read_manifest(root)
    manifest["files"].append("Raw/video_0009/0001.mp4")  # as if an earlier, larger release had written it
    (root / S.MANIFEST_NAME).write_text(json.dumps(manifest))
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"old")
    S.synthesize("sims", root, seed=1, size="tiny", progress=False)
    assert not stray.exists() and not stray.parent.exists()
    assert len(list((root / "Raw").rglob("*.mp4"))) == 6


def test_refuses_foreign_root(tmp_path: Path) -> None:
    (tmp_path / "Session1").mkdir()
    with pytest.raises(ValueError, match="not empty and holds no synthetic_manifest.json"):
        S.synthesize("iemocap", tmp_path, size="tiny", progress=False)
    with pytest.raises(ValueError, match="unknown synthetic dataset 'meld'"):
        S.synthesize("meld", tmp_path / "x", size="tiny")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        S.plan_release("sims", size="huge")


# ---------------------------------------------------------------------------------------------- ground truth


def test_iemocap_files_parse_back_to_the_plan(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    root = tiny_releases["iemocap"]
    evals, turns = [], []
    for video in plans["iemocap"].videos:
        evals += F.parse_iemocap_evaluation(root / f"Session1/dialog/EmoEvaluation/{video.name}.txt")
        turns += F.parse_iemocap_transcription(root / f"Session1/dialog/transcriptions/{video.name}.txt")
    clips = {c.uid: c for c in plans["iemocap"].clips}
    assert sorted(e.utt_id for e in evals) == sorted(clips) == sorted(t.utt_id for t in turns)
    for e in evals:
        c = clips[e.utt_id]
        assert (e.label, e.start, e.end) == (c.label, c.start, c.end)
        assert F.iemocap_dialog(e.utt_id) == c.video
    for t in turns:
        assert (t.text, t.start, t.end) == (clips[t.utt_id].text, clips[t.utt_id].start, clips[t.utt_id].end)


def test_iemocap_speaker_side_follows_dais_rule(plans: dict[str, S.ReleasePlan]) -> None:
    for video in plans["iemocap"].videos:
        for clip in video.clips:
            assert clip.slot == (0 if F.iemocap_use_left(clip.uid) else 1)
            assert video.actors[clip.slot].gender == clip.uid.split("_")[-1][0]


def test_iemocap_audio_voices_the_speaker_channel(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    for video in plans["iemocap"].videos:
        sr, audio = read_wav(tiny_releases["iemocap"] / f"Session1/dialog/wav/{video.name}.wav")
        assert sr == 16000 and audio.shape[0] == 2
        assert audio.shape[1] == round(video.duration * sr)
        for clip in video.clips:
            seg = audio[:, int(clip.start * sr):int(clip.end * sr)]
            rms = np.sqrt(np.mean(seg**2, axis=1))
            speaker = 0 if F.iemocap_use_left(clip.uid) else 1
            # The other channel holds crosstalk at -18 dB plus microphone noise.
            assert rms[speaker] > 2.5 * rms[1 - speaker], (clip.uid, rms)


def test_mosei_files_parse_back_to_the_plan(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    root = tiny_releases["mosei"]
    rows = F.parse_mosei_labels(root / "Labels")
    truth = {c.uid: c for c in plans["mosei"].clips}
    assert F.aggregate_mosei_labels(rows) == {uid: c.label for uid, c in truth.items()}
    assert {sum(c.label) for c in truth.values()} == {0, 1, 2}
    assert all(sum(1 for r in rows if r.utt_id == uid) == 3 for uid in truth)
    for video in plans["mosei"].videos:
        segments = F.parse_mosei_transcript(root / f"Transcript/Combined/{video.name}.txt")
        assert [(s.utt_id, s.start, s.end, s.text) for s in segments] == [
            (c.uid, c.start, c.end, c.text) for c in video.clips]
        sr, audio = read_wav(root / f"Audio/WAV_16000/{video.name}.wav")
        assert sr == 16000 and audio.shape[0] == 1


def test_sims_label_csv_parses_back_to_the_plan(tiny_releases: Releases, plans: dict[str, S.ReleasePlan]) -> None:
    rows = F.parse_sims_labels(tiny_releases["sims"] / "label.csv")
    assert [(r.uid, r.text, r.mode) for r in rows] == [(c.uid, c.text, c.split) for c in plans["sims"].clips]
    for row, clip in zip(rows, plans["sims"].clips):
        assert (row.label, row.label_T, row.label_A, row.label_V) == tuple(clip.label[k] for k in "MTAV")
        assert row.annotation == F.sims_annotation(row.label)


def test_sims_hanzi_script(tmp_path: Path) -> None:
    plan = S.plan_release("sims", seed=3, size="tiny", sims_script="hanzi")
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in c.text) for c in plan.clips)
    root = S.synthesize("sims", tmp_path, seed=3, size="tiny", sims_script="hanzi", progress=False)
    assert [r.text for r in F.parse_sims_labels(root / "label.csv")] == [c.text for c in plan.clips]


# ---------------------------------------------------------------------------------------------- cues


def detection_rate(releases: Releases, per_video: int, sims_clips: int) -> tuple[float, int]:
    """Share of sampled frames (IEMOCAP: each half) where MTCNN finds a face with probability > 0.7."""
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.set_num_threads(1)
    images = []
    for avi in sorted(releases["iemocap"].rglob("*.avi")):
        for frame in decode_frames(avi, per_video):
            images += [frame[:, :320], frame[:, 320:]]
    for mp4 in sorted(releases["mosei"].rglob("*.mp4")) + sorted(releases["sims"].rglob("*.mp4"))[:sims_clips]:
        images += decode_frames(mp4, per_video)
    _, probs = MTCNN(keep_all=False).detect([Image.fromarray(im) for im in images])
    found = [p is not None and p[0] is not None and p[0] > 0.7 for p in probs]
    return float(np.mean(found)), len(found)


def test_faces_are_detected_by_mtcnn(tiny_releases: Releases) -> None:
    rate, count = detection_rate(tiny_releases, per_video=3, sims_clips=4)
    assert count == 2 * 3 * 2 + 3 * 3 + 4 * 3  # IEMOCAP halves, 3 MOSEI videos, 4 SIMS clips
    assert rate >= 0.95


@pytest.mark.slow
def test_faces_are_detected_by_mtcnn_dense(tiny_releases: Releases) -> None:
    rate, count = detection_rate(tiny_releases, per_video=12, sims_clips=6)
    assert count == 2 * 12 * 2 + 3 * 12 + 6 * 12  # IEMOCAP halves, 3 MOSEI videos, 6 SIMS clips
    assert rate >= 0.95


def test_text_cue_follows_the_display(plans: dict[str, S.ReleasePlan]) -> None:
    plan = S.plan_release("iemocap", seed=SEED, size="smoke")
    for clip in plan.clips:
        shown = clip.displays["text"].shown[0][0]
        emotion_words = [w for e, words in S.WORDS_EN.items() for w in words if f" {w}" in f" {clip.text}"]
        if shown == "neutral":
            assert emotion_words == [], clip.text
        else:
            assert any(w in S.WORDS_EN[shown] for w in emotion_words), (shown, clip.text)


def _f0_and_rate(signal: np.ndarray, env: np.ndarray, sr: int = 16000) -> tuple[float, float, float]:
    voiced = signal[env > 0.5]
    frame = voiced[: sr // 2]
    ac = np.correlate(frame, frame, "full")[len(frame) - 1:]
    lo, hi = sr // 500, sr // 70
    f0 = sr / (lo + int(np.argmax(ac[lo:hi])))
    onsets = np.count_nonzero((env[1:] > 0) & (env[:-1] == 0))
    return f0, onsets / (len(signal) / sr), float(np.sqrt(np.mean(voiced**2)))


def test_voice_pitch_rate_and_energy_follow_the_expression() -> None:
    rng = np.random.default_rng(0)
    stats = {}
    for name in ("sadness", "neutral", "excitement"):
        voice = S.EXPRESSIONS[name][1]
        stats[name] = _f0_and_rate(*S.synthesize_speech(rng, [voice], 3.0, f0=120.0))
    sad, neutral, excited = stats["sadness"], stats["neutral"], stats["excitement"]
    for k in range(3):  # f0, syllable rate, RMS energy
        assert sad[k] < neutral[k] < excited[k], (k, stats)


def test_faces_differ_by_expression() -> None:
    rng = np.random.default_rng(0)
    actor = S._make_actor(rng, "a", "F")
    happy = S.render_head(actor, S.EXPRESSIONS["happiness"][0], 100)
    sad = S.render_head(actor, S.EXPRESSIONS["sadness"][0], 100)
    assert happy.y.shape == sad.y.shape and happy.y.shape[0] % 2 == 0
    lower = slice(happy.cy + 20, happy.cy + 50)  # mouth
    upper = slice(happy.cy - 40, happy.cy)  # eyes and brows
    for band in (lower, upper):
        diff = np.abs(happy.y[band].astype(int) - sad.y[band].astype(int))
        assert np.count_nonzero(diff > 40) > 60


def test_design_bounds_rank_modalities_and_fusion() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        S.CueDesign(0.5, 0.3, 0.3)
    assert S.informative_probability("iemocap", "visual") == S.SYNTH_DESIGN["iemocap"]["cues"]["visual"].informative
    for ds in S.DATASETS:
        chance = S.chance_accuracy(ds)
        single = {m: S.cue_accuracy(ds, [m], n=6000) for m in S.MODALITIES}
        fused = S.cue_accuracy(ds, S.MODALITIES, n=6000)
        assert abs(S.cue_accuracy(ds, [], n=6000) - chance) < 0.03
        assert min(single.values()) > chance + 0.15, (ds, single, chance)
        assert fused > max(single.values()) + 0.05, (ds, fused, single)


def test_smoke_plan_sizes() -> None:
    iemocap = S.plan_release("iemocap", size="smoke")
    six = [c for c in iemocap.clips if c.label in IEMOCAP_CLASSES]
    assert 360 <= len(six) <= 480
    assert min(sum(c.label == k for c in six) for k in IEMOCAP_CLASSES) >= 50
    assert {"xxx", "sur", "oth"} <= {c.label for c in iemocap.clips}
    mosei = S.plan_release("mosei", size="smoke")
    assert len(mosei.videos) >= 24 and 360 <= len(mosei.clips) <= 480
    assert all(sum(c.label[i] for c in mosei.clips) >= 40 for i in range(len(MOSEI_EMOTIONS)))
    sims = S.plan_release("sims", size="smoke")
    splits = [c.split for c in sims.clips]
    assert 360 <= len(sims.clips) <= 480 and min(splits.count(s) for s in ("train", "valid", "test")) >= 80
    m = np.array([c.label["M"] for c in sims.clips])
    for key in "TAV":
        x = np.array([c.label[key] for c in sims.clips])
        assert 0.3 < np.mean(x != m) < 0.7  # unimodal labels differ from M where that cue does
        assert np.corrcoef(x, m)[0, 1] > 0.3
    assert all(round(v * 5) == v * 5 for c in sims.clips for v in c.label.values())
    for plan in (iemocap, mosei, sims):
        assert all(1.5 <= c.end - c.start <= 4.0 for c in plan.clips)


def test_2x2_block_sums_keep_the_bits_of_numpys_reduction() -> None:
    """The chroma subsampling's block sums must equal numpy's reshape-sum bit for bit on what it sums (planes of
    non-negative chroma times 0/1 weights, at least 4 pixels wide): the releases' bytes, and every cache and score
    made from them, must not move with the faster sum. (The three smoke releases were checked byte for byte
    too: every file's SHA-256, before and after.)"""
    from emolib.data.synthetic.face import _sum2x2

    rng = np.random.default_rng(0)
    for h in range(2, 64, 6):
        for w in (*range(4, 64, 6), 182, 640):
            plane = rng.uniform(0, 255, (h, w)).astype(np.float32) * (rng.uniform(size=(h, w)) > 0.3)
            plane = plane.astype(np.float32)
            reference = plane.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
            assert np.array_equal(_sum2x2(plane).view(np.uint32), reference.view(np.uint32)), (h, w)
