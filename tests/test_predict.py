"""In-model preprocessing: raw video -> scores equals the cached path; checkpoints from the real trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import emolib.models.fe2e
import emolib.models.fv2es  # noqa: F401  (registers "fv2es")
from emolib.cli import main as cli_main
from emolib.data.cache import Cache
from emolib.data.dataset import CachedDataset, FrameOptions, collate
from emolib.data.formats import parse_mosei_transcript
from emolib.data.media import read_audio
from emolib.data.prepare import to_int16
from emolib.experiment import Experiment, run_experiment
from emolib.models import model_config
from emolib.predict import (
    FV2ESPipeline,
    InferenceOptions,
    build_requests,
    find_run_record,
    format_table,
    item_from_record,
    load_checkpoint,
    parse_segments,
    predict,
    predict_cli,
    sources_of,
    speaker_side,
)

TRAIN = {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 1, "device": "cpu", "progress": False, "lr": 1e-3}


@pytest.fixture(scope="session")
def mosei(synthetic_release, synthetic_cache, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny CMU-MOSEI release, prepared (TINY_PREPARE) with folds of its own."""
    root = synthetic_release("mosei")
    # The tiny release has two videos, too few for video-disjoint train/valid/test folds: assign utterances.
    uids = sorted(seg.utt_id for t in (root / "Transcript/Combined").glob("*.txt") for seg in parse_mosei_transcript(t))
    folds = {s: [u for i, u in enumerate(uids) if ("train", "train", "valid", "test")[i % 4] == s]
             for s in ("train", "valid", "test")}
    cache = synthetic_cache("mosei", folds=folds)
    return {"root": root, "cache": cache, "results": tmp_path_factory.mktemp("predict") / "results"}


@pytest.fixture(scope="session")
def fv2es_run(mosei) -> dict:
    """A tiny code-faithful FV2ES trained 2 epochs by the real trainer: fused at the first validation."""
    exp = Experiment(profile="test", model="fv2es", cache_dir=mosei["cache"], config="tiny",
                     model_overrides={"fuse_at_first_validation": True, "train_visual_head": False},
                     train=TRAIN, frames={"face_size": 48}, variant="code", results_root=mosei["results"])
    models = []
    (record,) = run_experiment(exp, seeds=[0], resume=False, model_hook=models.append)
    run_dir = mosei["results"] / "test" / "checkpoints" / "fv2es-code" / record["dataset"] / "seed=0"
    return {"record": record, "best": run_dir / "best.pt", "model": models[0]}


def test_trainer_runs_fv2es_with_the_released_code_quirks(fv2es_run) -> None:
    record, model = fv2es_run["record"], fv2es_run["model"]
    assert record["model"] == "fv2es" and record["variant"] == "code" and record["epochs_run"] == 2
    # the record holds the whole configuration (the model's config dataclass) and which named one it started from
    assert record["params"]["model"] == model_config("fv2es", "tiny", fuse_at_first_validation=True,
                                                     train_visual_head=False).to_dict()
    assert record["extra"]["model_config_name"] == "tiny"
    assert torch.load(fv2es_run["best"], map_location="cpu", weights_only=True)["model_config"] == \
        record["params"]["model"]
    assert model.is_fused  # fused at the first validation and trained on in that form
    # v_out (frozen) and the fused convs (created after the optimiser) are not trainable
    assert record["n_trainable_params"] < record["n_params"]
    state = torch.load(fv2es_run["best"], map_location="cpu", weights_only=True)["model"]
    assert any(k.endswith("fused.weight") for k in state)


def test_trainer_runs_fe2e_and_learns_fusion_weights(mosei, monkeypatch) -> None:
    import emolib.models

    # The fusion weights of the model run_experiment builds, before the trainer touches it.
    built, build_model = [], emolib.models.build_model

    def recording_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append((model, model.fusion_weights()))
        return model

    monkeypatch.setattr(emolib.models, "build_model", recording_build_model)
    exp = Experiment(profile="test", model="fe2e", cache_dir=mosei["cache"], config="tiny", train=TRAIN,
                     frames={"face_size": 48}, results_root=mosei["results"])
    models = []
    (record,) = run_experiment(exp, seeds=[0], resume=False, model_hook=models.append)
    model = models[0]
    assert record["model"] == "fe2e" and set(record["metrics"]) >= {"dai-mosei"}
    weights = model.fusion_weights()
    assert set(weights) == {"text", "visual", "audio"} and all(np.isfinite(list(weights.values())))
    assert len(built) == 1 and built[0][0] is model, "run_experiment builds the model through emolib.models"
    initial = built[0][1]
    assert set(initial) == set(weights)
    # Adam at lr 1e-3 moves each scalar by about 1e-3 (measured: 1.0e-3 each); float32 rounding of these ~0.2
    # values is ~1e-8, so 1e-4 separates training from noise.
    moved = {k: abs(weights[k] - initial[k]) for k in weights}
    assert all(d > 1e-4 for d in moved.values()), f"fusion weights did not train: {initial} -> {weights}"
    slow = 1 / 10.0
    assert model.lr_factors() == {"text_encoder": slow, "t_out": slow}


def test_load_checkpoint_finds_the_run_record_and_fuses(fv2es_run) -> None:
    record_path = find_run_record(fv2es_run["best"])
    assert record_path.name == "seed=0.json" and record_path.parent.name == "dai-mosei"
    loaded = load_checkpoint(fv2es_run["best"].parent, device="cpu")
    assert loaded.model_name == "fv2es" and loaded.task == "multilabel" and loaded.model.is_fused
    assert loaded.class_names == fv2es_run["record"]["class_names"]
    assert loaded.prepare.face_size == 48 and loaded.prepare.img_interval == 500
    assert loaded.frames == FrameOptions(face_size=48)
    trained = fv2es_run["model"].state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    with pytest.raises(FileNotFoundError, match="checkpoint layout"):
        find_run_record(Path("/tmp/elsewhere/best.pt"))


def _video_clips(cache_dir: Path) -> tuple[Cache, list[str], dict]:
    """The cached utterances of the first video of the cache, sorted by start time."""
    cache = Cache(cache_dir)
    video = sorted({cache.meta(u)["sources"]["video"] for u in cache.uids()})[0]
    uids = sorted((u for u in cache.uids() if cache.meta(u)["sources"]["video"] == video),
                  key=lambda u: cache.meta(u)["start"])
    metas = [cache.meta(u) for u in uids]
    request = {"videos": video, "segments": [(m["start"], m["end"]) for m in metas],
               "transcripts": [m["text"] for m in metas], "audio": metas[0]["sources"]["audio"]}
    return cache, uids, request


def test_pipeline_on_raw_video_equals_the_cached_path(mosei, fv2es_run) -> None:
    cache, uids, request = _video_clips(mosei["cache"])
    assert len(uids) >= 2
    pipeline = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu")

    # the same records: frame times, face crops (bit-exact) and audio samples
    sources = sources_of(
        build_requests(request["videos"], request["transcripts"], request["segments"], request["audio"]),
        len(pipeline.class_names))
    extracted = [rec for _, rec in pipeline.extract(sources)]
    for uid, rec in zip(uids, extracted):
        cached = cache.load(uid)
        np.testing.assert_array_equal(rec.frame_times, cached.frame_times)
        np.testing.assert_array_equal(rec.faces, cached.faces)
        np.testing.assert_array_equal(rec.audio, cached.audio)

    pred = pipeline(request["videos"], request["transcripts"], request["segments"], audio=request["audio"])
    dataset = CachedDataset(cache, frames=FrameOptions(face_size=48))
    batch = collate([dataset[dataset.uids.index(u)] for u in uids])
    with torch.no_grad():
        cached_probs = torch.sigmoid(pipeline.model(batch)["logits"]).numpy()
    assert pred.scores.shape == (len(uids), len(pipeline.class_names))
    np.testing.assert_allclose(pred.scores, cached_probs, atol=1e-4, rtol=0)
    assert [r["n_frames"] for r in pred.rows] == [cache.meta(u)["n_frames"] for u in uids]
    video_mean = pred.per_video()[str(request["videos"])]
    np.testing.assert_allclose(video_mean, cached_probs.mean(0), atol=1e-4)


def test_predict_whole_video_and_cli_output(mosei, fv2es_run) -> None:
    _, _, request = _video_clips(mosei["cache"])
    pred = predict(request["videos"], "what a day", checkpoint=fv2es_run["best"], device="cpu")
    assert pred.scores.shape == (1, 6) and np.all((pred.scores > 0) & (pred.scores < 1))
    assert pred.rows[0]["start"] == 0.0 and pred.rows[0]["end"] is None and pred.rows[0]["n_frames"] >= 2
    text = predict_cli({"videos": [request["videos"]], "checkpoint": str(fv2es_run["best"]),
                        "segments": "0:1.5,1.5:3", "device": "cpu"})
    assert "per-video mean" in text and "happiness" in text
    assert text.count(Path(request["videos"]).name) == 3  # two utterance rows + the video row


def _iemocap_dialog(cache_dir: Path) -> tuple[Cache, list[str], dict]:
    """The cached utterances of an IEMOCAP dialog in which both actors speak, sorted by start time, and the
    request that predicts them: the dialog's video, its stereo wav, the segments, texts and utterance ids."""
    cache = Cache(cache_dir)
    videos = sorted({cache.meta(u)["sources"]["video"] for u in cache.uids()})
    for video in videos:
        uids = sorted((u for u in cache.uids() if cache.meta(u)["sources"]["video"] == video),
                      key=lambda u: cache.meta(u)["start"])
        if {cache.meta(u)["side"] for u in uids} == {"L", "R"}:
            break
    else:
        raise AssertionError("no dialog of the tiny IEMOCAP release has utterances of both actors")
    metas = [cache.meta(u) for u in uids]
    request = {"videos": video, "segments": [(m["start"], m["end"]) for m in metas],
               "transcripts": [m["text"] for m in metas], "audio": metas[0]["sources"]["audio"],
               "utterance_ids": uids}
    return cache, uids, request


def test_iemocap_speaker_from_the_utterance_id_gives_the_cached_inputs(tiny_releases, tiny_caches, fv2es_run) -> None:
    cache, uids, request = _iemocap_dialog(tiny_caches["iemocap"])
    assert Path(request["videos"]).is_relative_to(tiny_releases["iemocap"])
    pipeline = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu")
    # the checkpoint's cache and the IEMOCAP cache were prepared alike: the pipeline must reproduce the latter
    ignore = ("device",)
    ours = {k: v for k, v in dataclasses.asdict(pipeline.prepare).items() if k not in ignore}
    assert ours == {k: v for k, v in cache.provenance["parameters"].items() if k not in ignore}

    requests = build_requests(request["videos"], request["transcripts"], request["segments"], request["audio"],
                              utterance_ids=request["utterance_ids"])
    sources = sources_of(requests, len(pipeline.class_names))
    sides = [cache.meta(u)["side"] for u in uids]
    assert requests[0].sides() == sides == [speaker_side(u) for u in uids]
    assert [(s.half, s.audio_channel) for s in sources] == [("left", 0) if d == "L" else ("right", 1) for d in sides]
    # the same model inputs as the records prepare wrote: frame times, face crops, boxes and audio, bit-exact
    extracted = [rec for _, rec in pipeline.extract(sources)]
    assert len(extracted) == len(uids)
    for uid, rec in zip(uids, extracted):
        cached = cache.load(uid)
        for key in ("frame_times", "faces", "face_conf", "face_boxes", "face_found", "audio"):
            np.testing.assert_array_equal(getattr(rec, key), getattr(cached, key), err_msg=f"{uid}: {key}")
        mine, theirs = item_from_record(rec, pipeline.frames), item_from_record(cached, pipeline.frames)
        assert torch.equal(mine["faces"], theirs["faces"]) and torch.equal(mine["audio"], theirs["audio"])

    pred = predict(request["videos"], request["transcripts"], request["segments"], pipeline=pipeline,
                   audio=request["audio"], utterance_ids=",".join(uids))
    assert [r["side"] for r in pred.rows] == sides and [r["utterance_id"] for r in pred.rows] == uids
    dataset = CachedDataset(cache, frames=pipeline.frames)
    batch = collate([dataset[dataset.uids.index(u)] for u in uids])
    with torch.no_grad():
        cached_probs = torch.sigmoid(pipeline.model(batch)["logits"]).numpy()
    np.testing.assert_allclose(pred.scores, cached_probs, atol=1e-4, rtol=0)


def test_speaker_overrides_the_utterance_id(tiny_caches, fv2es_run, capsys) -> None:
    cache, uids, request = _iemocap_dialog(tiny_caches["iemocap"])
    uid = next(u for u in uids if cache.meta(u)["side"] == "L")
    meta = cache.meta(uid)
    segment = (meta["start"], meta["end"])
    pipeline = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu")
    (request_r,) = build_requests(request["videos"], meta["text"], [segment], request["audio"], utterance_ids=uid,
                                  speaker="r")
    assert request_r.speaker == "R" and request_r.sides() == ["R"]
    (source,) = sources_of([request_r], 6)
    assert (source.half, source.audio_channel) == ("right", 1)
    (_, rec), = pipeline.extract([source])
    cached = cache.load(uid)
    # the other actor's channel of the dialog's wav, and faces cropped from the other half
    other = to_int16(read_audio(request["audio"], start_s=segment[0], end_s=segment[1], mono=False, channel=1))
    np.testing.assert_array_equal(rec.audio, other)
    assert not np.array_equal(rec.audio, cached.audio)
    assert rec.faces.shape == cached.faces.shape and not np.array_equal(rec.faces, cached.faces)
    assert (rec.face_boxes[rec.face_found][:, 2] <= 320).all()  # boxes inside the 320 px half
    assert source.meta["utterance_id"] == uid and source.meta["side"] == "R"

    # the CLI: --speaker overrides the side the id gives; the rows name id and side
    args = [request["videos"], "--checkpoint", str(fv2es_run["best"]), "--segments", f"{segment[0]}:{segment[1]}",
            "--audio", request["audio"], "--utterance-ids", uid, "--device", "cpu"]
    assert cli_main(["predict", *args]) == 0
    assert f"{uid} [L]" in capsys.readouterr().out
    assert cli_main(["predict", *args, "--speaker", "R"]) == 0
    assert f"{uid} [R]" in capsys.readouterr().out
    # bad values: one clear error line, before the checkpoint is loaded
    for extra, message in ((["--speaker", "X"], "speaker must be L (left half, audio channel 0) or R"),
                           (["--utterance-ids", "Ses01_bad"], "not an IEMOCAP utterance id: 'Ses01_bad'"),
                           (["--utterance-ids", f"{uid},{uid}"], "2 utterance ids for 1 segments")):
        assert cli_main(["predict", *args, *extra]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
        assert captured.out == ""
    with pytest.raises(ValueError, match="speaker must be L"):
        predict(request["videos"], speaker="left", pipeline=pipeline)
    assert speaker_side() is None and speaker_side("Ses01M_impro01_F000") == "R"
    assert speaker_side("Ses01M_impro01_F000", "l") == "L"


def test_parse_segments_and_request_errors(tmp_path) -> None:
    assert parse_segments("0:2.5, 2.5:6,6:") == [(0.0, 2.5), (2.5, 6.0), (6.0, None)]
    for bad in ("3", "2:1", "a:b", "-1:2"):
        with pytest.raises(ValueError, match="segment 1"):
            parse_segments(bad)
    with pytest.raises(FileNotFoundError, match="video file not found"):
        build_requests(tmp_path / "missing.mp4")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError, match="2 transcripts for 1 segments"):
        build_requests(video, ["a", "b"])
    with pytest.raises(ValueError, match="one transcript string for 2 segments"):
        build_requests(video, "hello", "0:1,1:2")
    reqs = build_requests([video, video], [["x", "y"], None], ["0:1,1:2", None])
    assert reqs[0].texts == ["x", "y"] and reqs[1].segments == [(0.0, None)] and reqs[1].texts == [""]


def test_format_table() -> None:
    text = format_table(np.array([[0.12345, 0.9], [0.5, 0.25]]), ["anger", "joy"], ["clip a", "clip b"])
    lines = text.splitlines()
    assert lines[0].split() == ["utterance", "anger", "joy"]
    assert lines[1].split() == ["clip", "a", "0.123", "0.900"]
    with pytest.raises(ValueError, match="do not match 3 class names"):
        format_table(np.zeros((1, 2)), ["a", "b", "c"])


def test_profile_times_every_stage_and_changes_no_score(mosei, fv2es_run) -> None:
    _, _, request = _video_clips(mosei["cache"])
    args = (request["videos"], request["transcripts"], request["segments"])
    plain = predict(*args, audio=request["audio"], checkpoint=fv2es_run["best"], device="cpu")
    profiled = predict(*args, audio=request["audio"], checkpoint=fv2es_run["best"], device="cpu", profile=True)
    np.testing.assert_array_equal(plain.scores, profiled.scores)
    assert plain.timing is None
    seconds = profiled.timing.seconds
    for stage in ("decode", "faces", "audio read", "batch", "model", "text_encoder", "text_encoder.model",
                  "visual.prep", "visual.backbone", "audio.prep", "audio.backbone", "fusion"):
        assert seconds.get(stage, 0.0) > 0.0, stage
    parents = profiled.timing.parent
    assert parents["audio.backbone"] == "audio" and parents["audio"] == "model" and parents["model"] is None
    # the model's parts fit inside the model stage
    assert seconds["text_encoder"] + seconds["visual"] + seconds["audio"] <= seconds["model"]
    text = predict_cli({"videos": [request["videos"]], "checkpoint": str(fv2es_run["best"]), "device": "cpu",
                        "profile": True})
    table = text.split("time per stage")[1]
    assert "audio.backbone" in table and "decode" in table and "total" in table


def _all_video_sources(cache_dir: Path, n_classes: int) -> list:
    """Every cached utterance as a raw-video request, one request per video (several videos in one call)."""
    cache = Cache(cache_dir)
    by_video: dict[str, list[dict]] = {}
    for u in cache.uids():
        by_video.setdefault(cache.meta(u)["sources"]["video"], []).append(cache.meta(u))
    videos = sorted(by_video)
    metas = [sorted(by_video[v], key=lambda m: m["start"]) for v in videos]
    requests = build_requests(videos, [[m["text"] for m in ms] for ms in metas],
                              [[(m["start"], m["end"]) for m in ms] for ms in metas],
                              [ms[0]["sources"]["audio"] for ms in metas])
    return sources_of(requests, n_classes)


def test_default_settings_equal_the_reference_computation(mosei, fv2es_run) -> None:
    """The lossless defaults (inference_mode, decoding overlapped with the model, blocks folded into the batch of
    NesT's attention, utterances of several videos in one batch) give the scores of the computation predict ran
    before them: no_grad, no overlap, timm's own NesT attention, one utterance per model call."""
    from timm.models.nest import Attention as TimmNestAttention

    from emolib.models.nest_audio import BlockAttention

    fast = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu", options=InferenceOptions(overlap=True))
    before = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu", batch_size=1,
                                           options=InferenceOptions.legacy())
    swapped = 0
    for module in before.model.modules():
        if type(module) is BlockAttention:
            module.__class__ = TimmNestAttention
            swapped += 1
    assert swapped > 0 and not InferenceOptions().lossy
    sources = _all_video_sources(mosei["cache"], len(fast.class_names))
    assert len({s.video for s in sources}) >= 2
    ours, rows = fast.predict_sources(sources)
    theirs, rows_before = before.predict_sources(sources)
    assert rows == rows_before
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_backbones_give_the_default_scores(mosei, fv2es_run) -> None:
    sources = _all_video_sources(mosei["cache"], 6)[:4]
    plain = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu").predict_sources(sources)[0]
    compiled = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu",
                                             options=InferenceOptions(compile=True)).predict_sources(sources)[0]
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-5)


def test_lossy_settings_are_opt_in_and_checked(mosei, fv2es_run, monkeypatch) -> None:
    import emolib.predict as predict_module

    assert InferenceOptions(bf16=True).lossy and InferenceOptions(int8=True).lossy
    sources = _all_video_sources(mosei["cache"], 6)[:3]
    plain = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu").predict_sources(sources)[0]
    int8 = FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu", options=InferenceOptions(int8=True))
    assert any("quantized" in type(m).__module__ for m in int8.model.modules())
    q_scores = int8.predict_sources(sources)[0]
    assert q_scores.shape == plain.shape and np.abs(q_scores - plain).max() < 0.1
    monkeypatch.setattr(predict_module, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="bf16"):
        FV2ESPipeline.from_checkpoint(fv2es_run["best"], device="cpu", options=InferenceOptions(bf16=True))


def test_prefetched_keeps_order_raises_errors_and_stops_its_worker() -> None:
    import threading

    from emolib.predict import _prefetched

    assert list(_prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("bad video")

    got = []
    with pytest.raises(RuntimeError, match="bad video"):
        for x in _prefetched(failing(), depth=2):
            got.append(x)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = _prefetched(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early: the worker must not keep producing
    count = len(produced)
    assert count <= 5
    assert not any(t.name == "emolib-predict-prefetch" and t.is_alive() for t in threading.enumerate())
