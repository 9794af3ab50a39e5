"""emolib.evaluate: seeded corruptions of raw inputs, the robustness evaluation of trained runs, efficiency counts.

The corruption tests use a hand-built record (textured random face crops, a tone with noise, a long transcript)
on which each severity ordering is certain. The evaluation tests train tiny models for one step on the shared
tiny synthetic IEMOCAP cache (conftest ``tiny_caches``) and check that the clean condition, recomputed through
the robustness code path, equals the test score the trainer wrote into the run record.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from emolib.data.cache import Record
from emolib.evaluate import corruptions as C
from emolib.evaluate import efficiency as E
from emolib.evaluate import robustness as R

WORDS = 200


def _record(uid: str = "utt-1", n_frames: int = 12, side: int = 48, seed: int = 0) -> Record:
    rng = np.random.default_rng(seed)
    t = np.arange(16000 * 2) / 16000.0
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    text = " ".join(f"w{i}" for i in range(WORDS))
    return Record(
        meta={"uid": uid, "text": text},
        faces=rng.integers(0, 256, (n_frames, side, side, 3), dtype=np.uint8),
        face_conf=rng.uniform(0.9, 1.0, n_frames).astype(np.float32),
        face_found=np.ones(n_frames, dtype=bool),
        face_boxes=np.tile(np.array([[0, 0, side, side]], dtype=np.float32), (n_frames, 1)),
        frame_times=(0.5 * np.arange(n_frames)).astype(np.float32),
        audio=np.round(audio * 32767).astype(np.int16),
        labels=np.eye(6, dtype=np.float32)[2],
    )


def _same(a: Record, b: Record) -> bool:
    arrays = ("faces", "face_conf", "face_found", "face_boxes", "frame_times", "audio", "labels")
    return a.meta == b.meta and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in arrays)


# ------------------------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_severity_zero_is_the_identity(name: str) -> None:
    rec = _record()
    kept = _record()
    out = C.corrupt(rec, name, 0, seed=3)
    assert _same(out, kept)
    assert _same(rec, kept)  # the input is not touched either
    assert C.CORRUPTIONS[name].label(0) == "clean"
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(rec, name, 4)


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_corruptions_are_seeded_and_leave_the_input_alone(name: str) -> None:
    rec = _record()
    for severity in C.SEVERITIES:
        a = C.corrupt(rec, name, severity, seed=5)
        b = C.corrupt(_record(), name, severity, seed=5)
        assert _same(a, b), (name, severity)
        assert not _same(a, rec), f"{name} at severity {severity} changed nothing"
    assert _same(rec, _record())
    # the same draw for every severity and every model: only the utterance, the corruption and the seed matter
    g1, g2 = C.utterance_rng("u", name, 1), C.utterance_rng("u", name, 1)
    assert np.array_equal(g1.random(4), g2.random(4))


@pytest.mark.parametrize("name", ["audio-noise", "frame-drop", "word-dropout"])
def test_random_corruptions_depend_on_seed_and_utterance(name: str) -> None:
    a = C.corrupt(_record(), name, 2, seed=0)
    b = C.corrupt(_record(), name, 2, seed=1)
    c = C.corrupt(_record(uid="utt-2"), name, 2, seed=0)
    assert not _same(a, b) and not _same(a, c)


def test_audio_noise_power_grows_with_severity_at_the_stated_snr() -> None:
    rec = _record()
    x = rec.audio.astype(np.float64)
    signal = float(np.mean(x ** 2))
    noise = []
    for severity, snr in zip(C.SEVERITIES, C.CORRUPTIONS["audio-noise"].levels):
        y = C.corrupt(rec, "audio-noise", severity).audio.astype(np.float64)
        assert y.shape == x.shape and C.corrupt(rec, "audio-noise", severity).audio.dtype == np.int16
        power = float(np.mean((y - x) ** 2))
        # 32 000 samples: the measured SNR is within 0.2 dB of the stated one (rounding to int16 adds ~1/12)
        assert abs(10 * math.log10(signal / power) - snr) < 0.2, (snr, 10 * math.log10(signal / power))
        noise.append(power)
    assert noise[0] < noise[1] < noise[2]
    # silence stays silent
    silent = _record()
    silent.audio[:] = 0
    assert not C.corrupt(silent, "audio-noise", 3).audio.any()


@pytest.mark.parametrize("name", ["face-jpeg", "face-blur"])
def test_face_degradation_grows_with_severity(name: str) -> None:
    rec = _record()
    errors = []
    for severity in C.SEVERITIES:
        out = C.corrupt(rec, name, severity).faces
        assert out.shape == rec.faces.shape and out.dtype == np.uint8
        errors.append(float(np.mean((out.astype(np.float64) - rec.faces) ** 2)))
    assert 0 < errors[0] < errors[1] < errors[2], errors


@pytest.mark.parametrize("name", ["occlude-eyes", "occlude-mouth"])
def test_occlusion_boxes_grow_around_the_same_centre(name: str) -> None:
    rec = _record()
    rec.faces[:] = np.maximum(rec.faces, 1)  # no black pixel before the box
    masks = [(C.corrupt(rec, name, s).faces == 0).all(axis=-1) for s in C.SEVERITIES]
    counts = [int(m.sum()) for m in masks]
    assert 0 < counts[0] < counts[1] < counts[2]
    assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()  # nested
    rows = np.nonzero(masks[0][0].any(axis=1))[0]
    centre = (rows.min() + rows.max() + 1) / 2 / rec.faces.shape[1]
    expected = C.EYES_CENTRE if name == "occlude-eyes" else C.MOUTH_CENTRE
    assert abs(centre - expected) < 0.03


def test_frame_drop_keeps_fewer_frames_nested_and_in_order() -> None:
    rec = _record(n_frames=20)
    kept = [C.corrupt(rec, "frame-drop", s) for s in C.SEVERITIES]
    assert [len(k.faces) for k in kept] == [15, 10, 5]
    times = [set(k.frame_times.tolist()) for k in kept]
    assert times[2] < times[1] < times[0] < set(rec.frame_times.tolist())
    for k in kept:
        assert np.all(np.diff(k.frame_times) > 0)
        assert len(k.face_conf) == len(k.face_found) == len(k.face_boxes) == len(k.faces)
        index = np.searchsorted(rec.frame_times, k.frame_times)
        assert np.array_equal(k.faces, rec.faces[index]) and np.array_equal(k.face_conf, rec.face_conf[index])
    # at least one frame is kept
    assert len(C.corrupt(_record(n_frames=1), "frame-drop", 3).faces) == 1


def test_word_dropout_removes_fewer_words_nested_and_in_order() -> None:
    rec = _record()
    words = [C.corrupt(rec, "word-dropout", s).meta["text"].split() for s in C.SEVERITIES]
    assert [len(w) for w in words] == [180, 140, 100]
    original = rec.meta["text"].split()
    for w in words:
        assert w == [x for x in original if x in set(w)]  # order kept
    assert set(words[2]) < set(words[1]) < set(words[0])
    empty = _record()
    empty.meta["text"] = ""
    assert C.corrupt(empty, "word-dropout", 3).meta["text"] == ""


def test_remove_modalities() -> None:
    rec = _record()
    out = C.remove_modalities(rec, "text+visual")
    assert len(out.faces) == len(out.face_conf) == len(out.frame_times) == 0 and out.meta["text"] == ""
    assert np.array_equal(out.audio, rec.audio)
    assert out.meta["modalities"] == ["audio"] and "modalities" not in rec.meta
    assert len(C.remove_modalities(rec, ["audio"]).audio) == 0
    assert C.parse_removed(["text", "audio"]) == ("audio", "text")
    with pytest.raises(ValueError, match="unknown modalities"):
        C.parse_removed("smell")
    assert len(C.missing_conditions()) == 6
    conds = R.conditions(["audio-noise"], [1, 3])
    assert [c.label for c in conds][:1] == ["clean"] and len(conds) == 1 + 6 + 2
    with pytest.raises(KeyError):
        R.conditions(["nope"])


def test_items_follow_the_dataset_split_and_fill_rules(tiny_caches) -> None:
    from emolib.data.cache import Cache
    from emolib.data.dataset import CachedDataset, FrameOptions, collate
    from emolib.experiment import SplitRule

    cache = Cache(tiny_caches["iemocap"])
    assert R.split_uids(cache, {}) == cache.uids("test")
    spec = {"by": "speaker", "fractions": [0.5, 0.25, 0.25], "seed": 1}  # as run_experiment stores it
    assignment = SplitRule.parse(spec).assign(cache)
    assert R.split_uids(cache, {"extra": {"split": spec}}) == [u for u in cache.uids() if assignment[u] == "test"]
    frames = FrameOptions(face_size=32)
    for fill in (False, True):
        data = CachedDataset(cache, "test", frames=frames, fill_missing=fill)
        records = R.split_records(cache, "test")
        ours, theirs = R.batch_of([R.item_of(r, frames, fill) for r in records]), collate(list(data))
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):  # face_boxes hold NaN for frames without a face
                torch.testing.assert_close(ours[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
            else:
                assert ours[key] == value, key
    gone = C.remove_modalities(records[0], "visual+audio")
    item = R.item_of(gone, frames, fill_missing=True)
    assert item["faces"].shape == (1, 3, 32, 32) and not item["faces"].any() and len(item["audio"]) > 0
    assert item["present"].tolist() == [False, False, True]
    empty = R.item_of(gone, frames)
    assert empty["faces"].shape == (0, 3, 32, 32) and len(empty["audio"]) == 0


# --------------------------------------------------------------------------------------------- efficiency


def test_flops_of_known_layers_match_hand_counts() -> None:
    assert E.count_flops(nn.Linear(64, 32), torch.randn(1, 10, 64)) == 2 * 10 * 64 * 32
    # a 3x3 convolution, 3 -> 8 channels, on 16x16 without padding: 14x14 outputs
    assert E.count_flops(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 16, 16)) == 2 * 8 * 14 * 14 * 3 * 3 * 3

    class OnBatch(nn.Module):  # models take a batch dict
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 6)

        def forward(self, batch):
            return {"logits": self.b(torch.relu(self.a(batch["x"])))}

    assert E.count_flops(OnBatch(), {"x": torch.randn(4, 64)}) == 2 * 4 * (64 * 32 + 32 * 6)


def test_parameter_counts() -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_encoder = nn.Linear(4, 3)  # 15
            self.head = nn.Linear(3, 2)  # 8
            self.visual_lfe = nn.Conv2d(1, 2, 3)  # 20
            self.head.bias.requires_grad_(False)

    counts = E.parameter_counts(Small())
    assert counts["total"] == 43 and counts["trainable"] == 41 and counts["text_encoder"] == 15
    assert counts["text_share"] == pytest.approx(15 / 43)
    assert counts["visual_lfe"] == {"params": 20, "bytes_float32": 80} and "audio_lfe" not in counts


def test_spec_checks_skip_what_was_not_measured() -> None:
    # the spec's totals count ALBERT's pooler, which emolib does not build: 36.8 M - 0.59 M
    rows = {"fe2e": {"paper": {"params": {"total": 36_191_893}}},
            "fv2es": {"paper": {"params": {"total": 90_000_000}}}}
    checks = {c["what"].split()[0]: c for c in E.spec_checks(rows)}
    assert checks["fe2e"]["ok"] is True and checks["fv2es"]["ok"] is False
    assert checks["e2emal"]["measured"] is None and checks["e2emal"]["ok"] is None


def test_measure_model_on_a_tiny_registered_model() -> None:
    model, overrides = E.build_for_efficiency("audio-only", "tiny")
    assert overrides == {}
    spec = E.StatedInput(clip_seconds=1.0, faces=2, face_size=48, words=5)
    row = E.measure_model(model, batch_sizes=(1, 2), repeats=1, warmup=0, spec=spec)
    assert row["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert row["flops_per_utterance"] > 0
    cpu = row["devices"]["cpu"]
    assert set(cpu["latency_ms"]) == {"1", "2"} and cpu["latency_ms_per_utterance"]["2"] == cpu["latency_ms"]["2"] / 2
    assert cpu["memory"]["peak_bytes"] >= cpu["memory"]["weights_bytes"] > 0
    table = E.efficiency_table({"models": {"audio-only": {"tiny": row}}})
    assert list(table["model"]) == ["audio-only"] and table["params (M)"].iloc[0] > 0


# ------------------------------------------------------------------------------------------ trained runs

TRAIN = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, "device": "cpu", "progress": False, "lr": 1e-3}


def _train(model: str, cache: Path, results: Path) -> dict:
    from emolib.experiment import Experiment, run_experiment

    exp = Experiment(profile="ev", model=model, cache_dir=cache, config="tiny", train=TRAIN,
                     frames={"face_size": 48}, results_root=results)
    (record,) = run_experiment(exp, seeds=[0], resume=False)
    return record


def _clean_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["condition"] == "clean"]


def test_clean_condition_reproduces_the_record_test_score(tiny_caches, tmp_path) -> None:
    record = _train("audio-only", tiny_caches["iemocap"], tmp_path)
    runs, missing = R.find_runs(tmp_path / "ev")
    assert not missing and [r.name for r in runs] == ["audio-only"]
    conds = R.conditions(["audio-noise", "word-dropout"], [3])
    rows = R.evaluate_run(runs[0], conds)
    clean = _clean_rows(rows)
    assert {r["protocol"] for r in clean} == set(record["metrics"])
    for row in clean:
        assert row["matches_record"] is True, row["mismatch"]
        stored = record["metrics"][row["protocol"]]["test"]["average"]
        for key, value in stored.items():
            if isinstance(value, float) and not math.isnan(value):
                assert row[key] == pytest.approx(value, abs=1e-6), (row["protocol"], key)
    # an input the model does not read: the clean outputs are reused; one it reads: recomputed
    by = {(r["condition"], r["protocol"]): r for r in rows}
    primary = record["protocol"]
    assert by[("-text", primary)]["reused_clean"] and by[("word-dropout", primary)]["reused_clean"]
    assert not by[("-audio", primary)]["reused_clean"] and not by[("audio-noise", primary)]["reused_clean"]
    assert R.clean_check(record, {primary: {**record["metrics"][primary]["test"]["average"]}}) == []
    # in worker processes (one thread each): the same rows, in run order
    import pandas as pd

    one = R.evaluate_runs([runs[0], runs[0]], conds, progress=False)
    two = R.evaluate_runs([runs[0], runs[0]], conds, progress=False, workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 2 * len(rows)
    pd.testing.assert_frame_equal(one.iloc[: len(rows)], pd.DataFrame(rows))
    with pytest.raises(ValueError, match="workers"):
        R.evaluate_runs(runs, conds, workers=0)
    broken = {primary: {k: (v + 0.1 if isinstance(v, float) else v)
                        for k, v in record["metrics"][primary]["test"]["average"].items()}}
    assert R.clean_check(record, broken)


def _reuse_check(run, conds, monkeypatch) -> int:
    """Rows of ``run`` with the encoder memo equal those recomputed without it; the encoder calls it answered."""
    import pandas as pd

    memos = []

    class Kept(R.EncoderMemo):
        def __exit__(self, *exc):
            memos.append((self.hits, self.misses))
            return super().__exit__(*exc)

    monkeypatch.setattr(R, "EncoderMemo", Kept)
    with_memo = pd.DataFrame(R.evaluate_run(run, conds))
    without = pd.DataFrame(R.evaluate_run(run, conds, reuse_encoders=False))
    pd.testing.assert_frame_equal(with_memo, without)
    assert with_memo["matches_record"].dropna().all()
    (counts,) = memos
    return counts[0]


@pytest.mark.filterwarnings("ignore:.*follows Dai et al.'s preprocessing")
def test_reused_encoder_outputs_give_the_recomputed_rows(tiny_caches, tmp_path, monkeypatch) -> None:
    """FE2E reads all three inputs: under a visual corruption its text and audio encoders answer from the clean
    pass (issue 18: about half the robustness step's work), and every row is what a full recomputation gives."""
    record = _train("fe2e", tiny_caches["iemocap"], tmp_path)
    (run,) = R.find_runs(tmp_path / "ev")[0]
    conds = R.conditions(["face-blur", "word-dropout"], [3])
    hits = _reuse_check(run, conds, monkeypatch)
    batches = -(-len(R.split_records(R.Cache(R.resolve_cache(record)), "test", record)) // TRAIN["batch_size"])
    # per batch: -audio / -visual / -text reuse 2 encoders each, the pairs 1 each, face-blur and word-dropout 2 each
    assert hits == batches * (3 * 2 + 3 * 1 + 2 + 2)


def test_report_tables_and_findings_from_evaluated_rows(tiny_caches, tmp_path) -> None:
    import pandas as pd

    from emolib.evaluate import report as P

    _train("audio-only", tiny_caches["iemocap"], tmp_path)
    runs, _ = R.find_runs(tmp_path / "ev")
    frame = pd.DataFrame(R.evaluate_run(runs[0], R.conditions(["audio-noise", "face-blur"], [1, 2])))
    (rob,) = P.robustness_tables(frame)
    (mis,) = P.missing_tables(frame)
    assert rob.frame.loc[0, "face-blur"] == P.NOT_READ and rob.frame.loc[0, "audio-noise"].count("/") == 1
    assert mis.frame.loc[0, "-text"] == P.NOT_READ
    paths = rob.write(tmp_path / "tables") + mis.write(tmp_path / "tables")
    assert sorted(p.suffix for p in paths) == [".csv", ".csv", ".md", ".md", ".tex", ".tex"]
    assert rob.stem == "robustness_iemocap_dai-iemocap"
    assert "reproduces the test score of all 1 run" in P.clean_summary(frame)

    # the robustness figure gives each run one colour in every panel, so the legend is right
    import matplotlib

    matplotlib.use("Agg")
    other = frame.assign(run="other-run")
    fig = P.robustness_figure(pd.concat([frame, other], ignore_index=True), frame["dataset"].iloc[0])
    colours: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert len(colours) == 2 and all(len(c) == 1 for c in colours.values())
    assert colours[frame["run"].iloc[0]] != colours["other-run"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*follows Dai et al.'s preprocessing")
def test_clean_condition_reproduces_every_model(tiny_caches, tmp_path, monkeypatch) -> None:
    """Every registered model, tiny, one training step, all conditions (about a minute on 2 cores)."""
    from emolib.predict import load_checkpoint

    models = E.registered_models()
    for model in models:
        _train(model, tiny_caches["iemocap"], tmp_path)
    runs, missing = R.find_runs(tmp_path / "ev")
    assert not missing and sorted(r.record["model"] for r in runs) == sorted(models)
    frame = R.evaluate_runs(runs, progress=False)
    clean = frame[frame["condition"] == "clean"]
    assert clean["matches_record"].all(), clean["mismatch"].dropna().tolist()
    assert len(frame) == len(runs) * len(R.conditions()) * frame["protocol"].nunique()
    # reused encoder outputs: the same rows as recomputing, for every model
    for run in runs:
        hits = _reuse_check(run, R.conditions(["audio-noise", "face-blur", "word-dropout"], [3]), monkeypatch)
        model = load_checkpoint(run.checkpoint, record=run.record, device="cpu", fuse=False).model
        assert (hits > 0) == (len(R.model_modalities(model)) > 1), (run.name, hits)
