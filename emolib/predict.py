"""FV2ES-style inference with the preprocessing inside the pipeline: raw video (+ transcript) in, emotions out.

FV2ES's inference system (``MultimodalAffectiveComputing/FV2ES: FV2ES/V2EM_prediction/``) reads a dialog's
video and audio, slices the utterances, samples
frames every 500 ms, detects faces, computes the mel spectrogram and tokenises the transcript in memory, runs
the (RepVGG-fused) model and averages the sigmoid scores over the utterances of the video. ``FV2ESPipeline``
does the same for any checkpoint of a registered model trained by ``emolib.train``:

* decoding, frame sampling, batched MTCNN crops and 16 kHz audio come from the very code that builds the
  training cache (``emolib.data.prepare``), with the parameters the training cache was built with, so a clip
  gets the same frame times, crops and samples here as in the cache (the cache stores audio as int16; the
  pipeline applies the same rounding). Nothing is written to disk: no frame JPEGs, no wav files;
* the frame selection of the training run (``FrameOptions``) and the shared ``collate`` build the batch;
* inside the model: face normalisation, mel spectrogram pieces, tokenisation (``emolib.models``);
* RepVGG blocks are fused before inference (the paper's single-branch deployment form);
* all of it runs batched, on CPU or CUDA.

``load_checkpoint`` finds the run record that ``emolib.experiment.run_experiment`` wrote next to the trainer's
``best.pt`` (``results/<profile>/checkpoints/<run>/<dataset>/seed=<s>/best.pt`` ->
``results/<profile>/runs/<run>/<dataset>/<protocol>/seed=<s>.json``) and rebuilds the model from the record's
``params.model`` (configuration name + overrides).

Outputs are per-utterance sigmoid probabilities for classification checkpoints (IEMOCAP, CMU-MOSEI) and the
regression values clipped to [-1, 1] for CH-SIMS checkpoints; ``Predictions.per_video()`` averages over the
utterances of each video, as FV2ES's system does.

IEMOCAP dialogs show two actors side by side and carry one stereo channel per actor (the audio is the dialog's
``wav/<dialog>.wav``: pass it as ``audio``). FV2ES's system keeps the speaker's half of every frame and the
speaker's channel, chosen from the utterance id by Dai's rule (``use_left`` in ``V2EM_prediction/src/datasets.py``:
session letter == speaker letter -> left half, channel 0). Here ``utterance_ids`` (one IEMOCAP id per segment)
choose them by the same rule (``emolib.data.formats.iemocap_use_left``, as the IEMOCAP adapter does), or
``speaker="L"|"R"`` (CLI ``--speaker``) sets them for every segment, overriding the ids. The choice fills the
``UtteranceSource`` fields the IEMOCAP adapter fills (``half``, ``audio_channel``), so a segment is cropped,
detected and sliced exactly as ``prepare`` made its cache record. Without either, whole frames and the mean of
the channels are used (every other dataset).

Differences from the reference inference code (``FV2ES/V2EM_prediction``: ``main.py``, ``src/datasets.py``,
``src/c_e2e.py``, ``src/trainers/r_emotiontrainer.py``), and why:

* colour: the reference decodes frames with OpenCV and feeds them to MTCNN and the model in BGR order, while
  its model was trained on RGB frames (``V2EM/main.py`` trains with Dai's ``src/datasets.py``, which reads the
  JPEGs with PIL; the face normalisation means [159, 111, 102] are RGB statistics). emolib feeds RGB, as its
  training cache holds;
* weights: the reference builds the multi-branch RepVGG model and loads a checkpoint saved after fusion with
  ``load_state_dict(checkpoint, False)``, so the branch weights it expects are absent from the file and stay at
  their random initialisation before ``switch_to_deploy`` fuses them (the fused keys are ignored). emolib loads
  the checkpoint strictly in the form it was saved (an error names any missing key), then fuses;
* frames: the reference slices the decoded frames at an assumed 29.97 fps and takes every 15th; emolib samples
  one frame every ``img_interval`` ms by timestamp with the training cache's parameters (frame interval, centre
  crop, MTCNN margin and no-face fallback), so inference sees what training saw;
* batches: the reference runs one utterance at a time; emolib batches utterances (padding masks keep the
  scores equal up to float rounding) and MTCNN sees ``prepare``'s chunks;
* inputs: the reference reads segments from an EmoEvaluation file (keeping the 6 classes) and texts from a
  transcription file and appends the mean scores to ``result.txt``; emolib takes segments, transcripts and
  utterance ids as arguments and returns (CLI: prints) per-utterance and per-video scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emolib.data.cache import Record
from emolib.data.dataset import FrameOptions, collate, record_item
from emolib.data.prepare import PrepareParams, Skip, UtteranceSource, with_defaults
from emolib.labels import check_task
from emolib.models.blocks import SequenceBranch
from emolib.timing import StageTimer, stage_of

Segment = tuple[float, float | None]


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a training run, with what inference needs to reproduce the training inputs."""

    model: nn.Module
    model_name: str
    class_names: list[str]
    task: str  # "multilabel" | "regression"
    prepare: PrepareParams  # how the training cache was built (frame interval, crop size, margin, ...)
    frames: FrameOptions  # the training run's frame selection
    record: dict[str, Any]
    checkpoint: Path
    epoch: int


def find_run_record(checkpoint: str | os.PathLike) -> Path:
    """The run record that belongs to ``.../checkpoints/<run>/<dataset>/seed=<s>/best.pt`` (or ``last.pt``)."""
    ckpt = Path(checkpoint)
    seed_dir = ckpt.parent
    parts = seed_dir.parts
    if len(parts) < 4 or parts[-4] != "checkpoints" or not seed_dir.name.startswith("seed="):
        raise FileNotFoundError(
            f"{ckpt}: not in emolib's checkpoint layout <profile>/checkpoints/<run>/<dataset>/seed=<s>/; "
            "pass the run record explicitly (record=path/to/seed=<s>.json)")
    run, dataset = parts[-3], parts[-2]
    runs = seed_dir.parents[3] / "runs" / run / dataset
    found = sorted(runs.glob(f"*/{seed_dir.name}.json"))
    if len(found) != 1:
        what = "no run record" if not found else f"{len(found)} run records ({', '.join(map(str, found))})"
        raise FileNotFoundError(f"{ckpt}: {what} under {runs}/<protocol>/{seed_dir.name}.json; "
                                "pass the run record explicitly (record=...)")
    return found[0]


def _task_of(record: Mapping[str, Any]) -> str:
    from emolib.metrics import get_protocol

    # The record's selection protocol states the task it was scored as (own data may be either).
    return get_protocol(record["protocol"]).task


def _known_fields(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def model_config_of(saved: Mapping[str, Any], record_params: Mapping[str, Any],
                    ckpt: Path) -> tuple[str | dict[str, Any], dict[str, Any]]:
    """The configuration to rebuild a checkpoint's model from: the one stored in ``best.pt``, else the run
    record's ``params.model``; records written before configurations were dataclasses hold a config name under
    ``size`` plus overrides, which are applied the way they were then."""
    if isinstance(saved.get("model_config"), Mapping):
        return dict(saved["model_config"]), {}
    params = dict(record_params)
    if "size" in params:
        return params.pop("size"), params
    if not params:
        raise ValueError(f"{ckpt}: neither the checkpoint nor its run record holds the model configuration")
    return params, {}


def load_checkpoint(path: str | os.PathLike, *, record: str | os.PathLike | Mapping[str, Any] | None = None,
                    device: str | torch.device | None = None, fuse: bool = True) -> LoadedCheckpoint:
    """Rebuild the model of a training run from ``best.pt`` (a file, or the run directory holding it).

    ``record`` (path or dict) is the run record; by default it is found from the checkpoint's location. The
    model is put in eval mode on ``device`` (default: CUDA when available) and, with ``fuse``, its RepVGG blocks
    are re-parameterised (models without them are unaffected).
    """
    from emolib.io import read_json
    from emolib.models import build_model, model_class

    ckpt = Path(path)
    if ckpt.is_dir():
        ckpt = ckpt / "best.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    if record is None:
        record = find_run_record(ckpt)
    rec = dict(record) if isinstance(record, Mapping) else read_json(Path(record))
    try:
        model_params = dict(rec["params"]["model"])
        name, class_names = rec["model"], list(rec["class_names"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{ckpt}: run record lacks {err} (needs model, class_names, params.model)") from None
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{ckpt}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"{ckpt}: not an emolib checkpoint (no 'model' state dict)")
    config, overrides = model_config_of(saved, model_params, ckpt)
    if isinstance(config, Mapping):  # a stored whole configuration: the dataclass (one-modality models refuse a dict)
        config = model_class(name).config_class.from_dict(config, name)
    model = build_model(name, config, num_outputs=len(class_names), **overrides)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ValueError(f"{ckpt}: weights do not fit model {name!r} built from its configuration: {err}") from None
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if fuse and callable(getattr(model, "fuse", None)):
        model.fuse()
    params = rec.get("params", {})
    if params.get("train", {}).get("channels_last"):
        # the layout the run was trained and tested in: the same convolution algorithms, so a re-evaluation
        # reproduces the record's test outputs to the last bit
        model.to(memory_format=torch.channels_last)
    data = params.get("data", {})
    # with_defaults: a checkpoint trained on an older cache reads its faces as that cache stored them (raw)
    prepare = PrepareParams(**_known_fields(PrepareParams, with_defaults(data.get("cache_parameters") or {})))
    frames = FrameOptions(**_known_fields(FrameOptions, data.get("frames") or {}))
    return LoadedCheckpoint(model=model, model_name=name, class_names=class_names, task=_task_of(rec),
                            prepare=prepare, frames=frames, record=rec, checkpoint=ckpt,
                            epoch=int(saved.get("epoch", rec.get("best_epoch", 0))))


# ------------------------------------------------------------------------------------------------ inputs


def parse_segments(text: str) -> list[Segment]:
    """"0:2.5,2.5:6,6:" -> [(0.0, 2.5), (2.5, 6.0), (6.0, None)] (an empty end means: to the end)."""
    segments: list[Segment] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        start, sep, end = part.partition(":")
        try:
            if not sep:
                raise ValueError
            seg = (float(start), float(end) if end.strip() else None)
        except ValueError:
            raise ValueError(f"segment {i + 1} {part!r}: expected start:end in seconds (e.g. 1.5:4.2)") from None
        if seg[0] < 0 or (seg[1] is not None and seg[1] <= seg[0]):
            raise ValueError(f"segment {i + 1} {part!r}: need 0 <= start < end")
        segments.append(seg)
    if not segments:
        raise ValueError("no segments given")
    return segments


def _as_list(value: Any, n: int, what: str) -> list[Any]:
    """One entry per video: a scalar/None is broadcast when there is one video, a list must have n entries."""
    if value is None or isinstance(value, (str, os.PathLike)):
        if n != 1 and value is not None:
            raise ValueError(f"{n} videos but a single {what}; pass a list with one entry per video")
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise ValueError(f"{n} videos but {len(items)} {what} entries")
    return items


def _is_segment(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(
        v is None or isinstance(v, (int, float)) for v in value)


SPEAKERS = {"L": ("left", 0), "R": ("right", 1)}
"""IEMOCAP speaker side -> (frame half, audio channel), as the IEMOCAP adapter sets ``half`` / ``audio_channel``."""


def speaker_side(utterance_id: str | None = None, speaker: str | None = None) -> str | None:
    """"L", "R" or None (whole frame, mean of the channels): ``speaker`` when given, else Dai's rule on an IEMOCAP
    ``utterance_id`` (``Ses01F_impro01_F000`` -> L, ``Ses01F_impro01_M000`` -> R)."""
    from emolib.data.formats import iemocap_use_left

    if speaker is not None:
        side = speaker.strip().upper() if isinstance(speaker, str) else None
        if side not in SPEAKERS:
            raise ValueError(f"speaker must be L (left half, audio channel 0) or R (right half, channel 1), "
                             f"got {speaker!r}")
        return side
    if utterance_id is None:
        return None
    if not isinstance(utterance_id, str):
        raise ValueError(f"utterance id {utterance_id!r}: expected a string such as Ses01F_impro01_F000")
    return "L" if iemocap_use_left(utterance_id.strip()) else "R"


@dataclass
class VideoRequest:
    """What to predict for one video: its segments (None end: to the end), one transcript per segment and,
    for IEMOCAP dialogs, one utterance id per segment and/or the speaker side of every segment."""

    video: Path
    segments: list[Segment]
    texts: list[str]
    audio: Path | None = None  # a separate audio file (e.g. CMU-MOSEI's WAV_16000); None: the video's track
    utterance_ids: list[str | None] = field(default_factory=list)  # empty: none given
    speaker: str | None = None  # "L" | "R": overrides the side the utterance ids give

    def sides(self) -> list[str | None]:
        """The speaker side of each segment ("L", "R" or None for the whole frame)."""
        ids = self.utterance_ids or [None] * len(self.segments)
        return [speaker_side(uid, self.speaker) for uid in ids]


def build_requests(videos: str | os.PathLike | Sequence[str | os.PathLike], transcripts: Any = None,
                   segments: Any = None, audio: Any = None, *, utterance_ids: Any = None,
                   speaker: str | None = None) -> list[VideoRequest]:
    """Normalise the flexible ``predict`` arguments into one ``VideoRequest`` per video.

    ``segments``: None (the whole video), a list of (start, end) for a single video, a "start:end,..." string,
    or one such entry per video. ``transcripts``: None (empty text), a string (one segment), or a list of
    strings (one per segment) -- or one such entry per video. ``utterance_ids``: IEMOCAP utterance ids in the
    same forms as ``transcripts`` (a "id,id,..." string counts as a list); each picks its speaker's half and
    channel. ``speaker``: "L" or "R" for every segment of every video (overrides the ids). Bad values raise
    ``ValueError`` before any video is decoded.
    """
    speaker = speaker_side(None, speaker)  # validated and normalised before anything is read
    vids = [Path(videos)] if isinstance(videos, (str, os.PathLike)) else [Path(v) for v in videos]
    if not vids:
        raise ValueError("no video given")
    for v in vids:
        if not v.is_file():
            raise FileNotFoundError(f"{v}: video file not found")
    n = len(vids)
    if segments is None or isinstance(segments, str) or (
            n == 1 and isinstance(segments, (list, tuple)) and segments and _is_segment(segments[0])):
        seg_lists = [segments] * n if segments is None or isinstance(segments, str) else [segments]
    else:
        seg_lists = _as_list(segments, n, "segment")
    if n == 1 and isinstance(transcripts, (list, tuple)) and all(isinstance(t, str) for t in transcripts):
        text_lists: list[Any] = [list(transcripts)]
    else:
        text_lists = _as_list(transcripts, n, "transcript")
    audios = _as_list(audio, n, "audio file")
    if n == 1 and (isinstance(utterance_ids, str) or isinstance(utterance_ids, (list, tuple))
                   and all(isinstance(u, str) for u in utterance_ids)):
        id_lists: list[Any] = [utterance_ids]
    else:
        id_lists = _as_list(utterance_ids, n, "utterance id")
    requests = []
    for video, segs, texts, aud, ids in zip(vids, seg_lists, text_lists, audios, id_lists):
        segs = parse_segments(segs) if isinstance(segs, str) else [(0.0, None)] if segs is None else \
            [(float(s), None if e is None else float(e)) for s, e in segs]
        if texts is None:
            texts = [""] * len(segs)
        elif isinstance(texts, str):
            if len(segs) != 1:
                raise ValueError(f"{video}: one transcript string for {len(segs)} segments; pass one per segment")
            texts = [texts]
        texts = list(texts)
        if len(texts) != len(segs):
            raise ValueError(f"{video}: {len(texts)} transcripts for {len(segs)} segments")
        if aud is not None and not Path(aud).is_file():
            raise FileNotFoundError(f"{aud}: audio file not found")
        ids = [] if ids is None else [u.strip() for u in ids.split(",")] if isinstance(ids, str) else list(ids)
        if ids and len(ids) != len(segs):
            raise ValueError(f"{video}: {len(ids)} utterance ids for {len(segs)} segments; pass one per segment")
        request = VideoRequest(video, segs, texts, None if aud is None else Path(aud), ids, speaker)
        request.sides()  # the ids must be IEMOCAP utterance ids unless speaker overrides them
        requests.append(request)
    return requests


# --------------------------------------------------------------------------------------------- pipeline


@dataclass
class Predictions:
    """Per-utterance scores (N, C) with one row description per utterance."""

    class_names: list[str]
    task: str
    scores: np.ndarray
    rows: list[dict[str, Any]] = field(default_factory=list)
    timing: StageTimer | None = None  # per-stage seconds when predicted with profile=True

    def per_video(self) -> dict[str, np.ndarray]:
        """FV2ES's video-level output: the mean score of all utterances of each video."""
        out: dict[str, list[np.ndarray]] = {}
        for row, score in zip(self.rows, self.scores):
            out.setdefault(row["video"], []).append(score)
        return {v: np.mean(s, axis=0) for v, s in out.items()}

    def to_frame(self):
        import pandas as pd

        meta = pd.DataFrame(self.rows)
        return pd.concat([meta, pd.DataFrame(self.scores, columns=self.class_names)], axis=1)


def sources_of(requests: Sequence[VideoRequest], num_outputs: int) -> list[UtteranceSource]:
    """One ``UtteranceSource`` per segment; a speaker side sets ``half`` and ``audio_channel`` as the IEMOCAP
    adapter does (L: left half, channel 0; R: right half, channel 1)."""
    sources = []
    for vi, req in enumerate(requests):
        ids = req.utterance_ids or [None] * len(req.segments)
        for si, ((start, end), text, uid, side) in enumerate(zip(req.segments, req.texts, ids, req.sides())):
            half, channel = SPEAKERS[side] if side is not None else (None, None)
            sources.append(UtteranceSource(
                uid=f"v{vi:04d}_s{si:04d}", labels=[0.0] * num_outputs, text=text, video=req.video,
                audio=req.audio, start=start, end=end, half=half, audio_channel=channel,
                meta={"video_index": vi, "segment_index": si, "utterance_id": uid, "side": side}))
    return sources


def item_from_record(rec: Record, frames: FrameOptions) -> dict[str, Any]:
    """A dataset item (``collate``'s input) from a cache-format record, selected as ``CachedDataset`` does."""
    return record_item(rec, frames)


def model_stages(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of a model a profile times: every direct child (branches, heads, fusion) and, inside a sequence
    branch, its input preparation (face normalisation / mel pieces), backbone (CNN / NesT), flatten MLP and CLS
    transformer; inside a text encoder, the transformer (the rest of ``text_encoder`` is tokenisation)."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        out[name] = child
        if isinstance(child, SequenceBranch):
            for part in ("prep", "backbone", "flatten", "transformer"):
                out[f"{name}.{part}"] = getattr(child, part)
        elif isinstance(getattr(child, "model", None), nn.Module) and callable(getattr(child, "tokenize", None)):
            out[f"{name}.model"] = child.model
    return out


@dataclass(frozen=True)
class InferenceOptions:
    """How ``FV2ESPipeline`` runs its model. Measured in ``results/bench/inference.json`` (``python -m emolib.bench
    inference``).

    Lossless (the scores equal the plain eval-mode model's up to float rounding; ``tests/test_predict.py``):

    * ``inference_mode``: ``torch.inference_mode`` instead of ``no_grad`` (no version counters, no views kept);
    * ``overlap``: decoding and face detection of the next chunk run in a worker thread while the model scores the
      current batch. ``None`` (default): on when the model runs on CUDA, off on the CPU. On this project's 2-core
      CPU it made a paper-size clip slower (2.61 vs 2.45 s with 2 threads: the worker's MTCNN and the model's
      matrix products then compete for the same cores; ``results/bench/inference.json``); on a GPU box the CPU is
      free while the GPU computes (not measured here: no GPU was available);
    * ``channels_last``: the model's 4-D weights in channels-last memory order, so the convolutions write
      channels-last maps, which timm's NesT permutes to anyway (idle probe, one thread: paper NesT over 20 mel
      pieces 3.38 -> 2.82 s with identical outputs, fused RepVGG CNN on 64 faces 0.32 -> 0.26 s; end to end
      within run-to-run noise, ``results/bench/inference.json``);
    * ``compile``: ``torch.compile`` on every branch backbone (CNNs, NesT). Off by default: compiling takes about
      80 s on a CPU before the first clip, which costs more than it saves on a handful of clips.

    Lossy, off by default (their effect on the scores is measured by the benchmark):

    * ``bf16``: bfloat16 autocast (CUDA, or a CPU with AVX512-BF16 / AMX);
    * ``int8``: dynamic int8 quantisation of every Linear layer (CPU only);
    * ``min_face_size``: MTCNN's smallest face in pixels (training caches use 20). A larger value drops the finest
      levels of MTCNN's image pyramid, which cost the most; faces smaller than it are missed. For clips where the
      faces are known to be large.
    """

    inference_mode: bool = True
    channels_last: bool = True
    overlap: bool | None = None
    compile: bool = False
    bf16: bool = False
    int8: bool = False
    min_face_size: int | None = None

    @classmethod
    def legacy(cls) -> InferenceOptions:
        """How ``predict`` ran before these options existed (the benchmark's reference row)."""
        return cls(inference_mode=False, channels_last=False, overlap=False)

    @property
    def lossy(self) -> bool:
        return self.bf16 or self.int8 or self.min_face_size is not None

    def overlaps(self, device: torch.device) -> bool:
        return self.overlap if self.overlap is not None else device.type == "cuda"


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (else autocast would emulate them slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its Linear layers dynamically quantised to int8 (weights int8, activations
    quantised per batch). The feed-forward Linears of ``nn.TransformerEncoderLayer`` stay float: the layer's
    fast-path check reads ``linear1.weight`` as a tensor, which a quantised Linear does not have."""
    inside_torch_layers = {f"{name}.{child}" if name else child
                           for name, module in model.named_modules() if isinstance(module, nn.TransformerEncoderLayer)
                           for child, _ in module.named_children()}
    names = {name for name, module in model.named_modules()
             if type(module) is nn.Linear and name not in inside_torch_layers}
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def _prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a worker thread up to ``depth`` ahead; its exceptions are raised here, in order. The
    worker stops when the consumer stops early (an exception in the model, a closed generator)."""
    import queue
    import threading

    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
        except Exception as err:  # noqa: BLE001  (handed to the consumer, which raises it)
            put((err, None))
        put((None, done))

    worker = threading.Thread(target=work, name="emolib-predict-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            err, item = buffer.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class FV2ESPipeline:
    """Raw videos -> per-utterance emotion scores, preprocessing and model in one in-memory pass.

    Holds the model (eval mode, RepVGG fused when it has such blocks), the MTCNN ``FaceCropper`` (built with the
    training cache's parameters) and, inside the model, the tokenizer. ``batch_size`` utterances go through the
    model at a time; MTCNN sees the frames of ``prepare.chunk_utterances`` utterances per batch, exactly as
    ``emolib.data.prepare`` does.
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str], task: str = "multilabel", *,
                 prepare: PrepareParams | None = None, frames: FrameOptions | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8,
                 options: InferenceOptions | None = None) -> None:
        from emolib.data.prepare import make_cropper

        check_task(task)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.options = options or InferenceOptions()
        if self.options.bf16 and not bf16_supported(self.device):
            raise ValueError(f"bf16: {self.device} has no native bfloat16 matrix products (CUDA with bf16, or a CPU "
                             "with AVX512-BF16 / AMX)")
        if self.options.int8 and self.device.type != "cpu":
            raise ValueError("int8: dynamic quantisation runs on the CPU only; use --device cpu or bf16 on CUDA")
        self.prepare = dataclasses.replace(prepare or PrepareParams(face_size=48), device=str(self.device))
        self.frames = frames or FrameOptions()
        self.model = model.to(self.device).eval()
        if callable(getattr(self.model, "fuse", None)):
            self.model.fuse()
        if self.options.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.options.int8:
            self.model = quantize_linear_int8(self.model)
        if self.options.compile:
            for module in self.model.modules():
                if isinstance(module, SequenceBranch):
                    module.backbone.compile()
        self.class_names, self.task, self.batch_size = list(class_names), task, batch_size
        faces = {} if self.options.min_face_size is None else {"min_face_size": int(self.options.min_face_size)}
        self.cropper = make_cropper(self.prepare, **faces)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, record: Any = None, device: str | torch.device | None = None,
                        batch_size: int = 8, options: InferenceOptions | None = None) -> FV2ESPipeline:
        loaded = load_checkpoint(path, record=record, device=device)
        return cls(loaded.model, loaded.class_names, loaded.task, prepare=loaded.prepare, frames=loaded.frames,
                   device=device, batch_size=batch_size, options=options)

    # -- preprocessing ---------------------------------------------------------------------------------

    def extract(self, sources: Sequence[UtteranceSource],
                timer: StageTimer | None = None) -> Iterator[tuple[UtteranceSource, Record]]:
        """Cache-format records of ``sources``, computed in memory with the cache builder's own code.

        Utterances are grouped per video and processed in the same fixed chunks as ``prepare`` (sorted by
        start time), so MTCNN sees the same batches. An utterance that cannot be read raises ``ValueError``
        naming the file and the problem. ``timer`` times decoding, face crops and audio reading.
        """
        from emolib.data.prepare import chunks, process_chunk

        groups: dict[str, list[UtteranceSource]] = {}
        for src in sources:
            groups.setdefault(src.group, []).append(src)
        for key in groups:
            utts = sorted(groups[key], key=lambda s: (s.start, s.uid))
            for chunk in chunks(utts, self.prepare.chunk_utterances):
                for src, result in zip(chunk, process_chunk(chunk, self.prepare, self.cropper, timer)):
                    if isinstance(result, Skip):
                        raise ValueError(f"{result.file}: {result.problem} (segment {src.start:.2f}-"
                                         f"{'end' if src.end is None else f'{src.end:.2f}'} s)")
                    meta, arrays = result
                    yield src, Record(meta=meta, **arrays)

    # -- model -----------------------------------------------------------------------------------------

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C) float32 logits of a collated batch, run as ``self.options`` say."""
        grad_off = torch.inference_mode() if self.options.inference_mode else torch.no_grad()
        cast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.options.bf16 \
            else contextlib.nullcontext()
        with grad_off, cast:
            return self.model(batch)["logits"].float()

    def scores(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C) probabilities (multilabel: sigmoid per class, multiclass: softmax over the classes) or clipped
        regression values of a collated batch."""
        logits = self.logits(batch)
        if self.task == "multilabel":
            return torch.sigmoid(logits)
        if self.task == "multiclass":
            return torch.softmax(logits, dim=1)
        return logits.clamp(-1.0, 1.0)

    def predict_sources(self, sources: Sequence[UtteranceSource],
                        timer: StageTimer | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Scores (N, C) and row descriptions of ``sources``. ``timer`` (``emolib.timing.StageTimer``) collects
        the time of every stage: decode, faces, audio read, batch, and the model's parts (``model_stages``)."""
        order = {s.uid: i for i, s in enumerate(sources)}
        scores = np.zeros((len(sources), len(self.class_names)), np.float32)
        rows: list[dict[str, Any] | None] = [None] * len(sources)
        pending: list[tuple[UtteranceSource, dict[str, Any]]] = []
        stage = stage_of(timer)
        hooks = timer.hooks(model_stages(self.model)) if timer is not None else contextlib.nullcontext()

        def flush() -> None:
            with stage("batch"):
                batch = collate([item for _, item in pending])
            with stage("model"):
                out = self.scores(batch).cpu().numpy()
            for (src, _), row in zip(pending, out):
                scores[order[src.uid]] = row
            pending.clear()

        records: Iterator[tuple[UtteranceSource, Record]] = self.extract(sources, timer)
        if timer is None and self.options.overlaps(self.device):  # a profile runs the stages one after another
            records = _prefetched(records, depth=2 * self.prepare.chunk_utterances)
        with hooks:
            for src, rec in records:
                rows[order[src.uid]] = {
                    "video": str(src.video), "start": src.start, "end": rec.meta["end"],
                    "n_frames": int(rec.meta["n_frames"]), "n_faces_found": int(rec.meta["n_faces_found"]),
                    "text": src.text, "utterance_id": src.meta.get("utterance_id"), "side": src.meta.get("side"),
                }
                with stage("batch"):
                    pending.append((src, item_from_record(rec, self.frames)))
                if len(pending) >= self.batch_size:
                    flush()
            if pending:
                flush()
        return scores, [r for r in rows if r is not None]

    def predict_requests(self, requests: Sequence[VideoRequest], profile: bool = False) -> Predictions:
        timer = StageTimer(self.device) if profile else None
        scores, rows = self.predict_sources(sources_of(requests, len(self.class_names)), timer)
        return Predictions(self.class_names, self.task, scores, rows, timer)

    def __call__(self, videos: Any, transcripts: Any = None, segments: Any = None, *, audio: Any = None,
                 utterance_ids: Any = None, speaker: str | None = None, profile: bool = False) -> Predictions:
        return self.predict_requests(build_requests(videos, transcripts, segments, audio,
                                                    utterance_ids=utterance_ids, speaker=speaker), profile)


def predict(videos: Any, transcripts: Any = None, segments: Any = None, *,
            checkpoint: str | os.PathLike | None = None, pipeline: FV2ESPipeline | None = None,
            device: str | torch.device | None = None, audio: Any = None, record: Any = None,
            batch_size: int = 8, utterance_ids: Any = None, speaker: str | None = None,
            profile: bool = False, options: InferenceOptions | None = None) -> Predictions:
    """Per-utterance emotion scores of raw video(s); see ``build_requests`` for the argument forms.

    Give either ``checkpoint`` (loaded with ``load_checkpoint``) or a ready ``pipeline`` (to reuse a loaded
    model across calls). IEMOCAP dialogs: ``utterance_ids`` (one per segment) pick each speaker's half and
    channel by Dai's rule, ``speaker="L"|"R"`` sets them for every segment (see the module docstring).
    ``profile``: ``Predictions.timing`` holds the seconds of every stage (decode, faces, audio read, batch, model
    parts). ``options`` (``InferenceOptions``, used when a checkpoint is loaded): how the model runs; the default is
    lossless. The arguments are checked before the checkpoint is loaded.
    """
    if pipeline is None and checkpoint is None:
        raise ValueError("predict needs checkpoint=... (a best.pt or its run directory) or pipeline=...")
    requests = build_requests(videos, transcripts, segments, audio, utterance_ids=utterance_ids, speaker=speaker)
    if pipeline is None:
        pipeline = FV2ESPipeline.from_checkpoint(checkpoint, record=record, device=device, batch_size=batch_size,
                                                 options=options)
    return pipeline.predict_requests(requests, profile)


# ---------------------------------------------------------------------------------------------- display


def format_table(probs: np.ndarray | Sequence[Sequence[float]], class_names: Sequence[str],
                 row_labels: Sequence[str] | None = None, digits: int = 3) -> str:
    """A fixed-width text table: one row per utterance (or video), one column per class."""
    arr = np.asarray(probs, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != len(class_names):
        raise ValueError(f"scores of shape {arr.shape} do not match {len(class_names)} class names")
    labels = list(row_labels) if row_labels is not None else [str(i) for i in range(len(arr))]
    if len(labels) != len(arr):
        raise ValueError(f"{len(labels)} row labels for {len(arr)} rows")
    width = max(digits + 3, *(len(c) for c in class_names))
    first = max(len("utterance"), *(len(s) for s in labels))
    lines = ["utterance".ljust(first) + "".join(f"  {c:>{width}}" for c in class_names)]
    lines += [lab.ljust(first) + "".join(f"  {v:>{width}.{digits}f}" for v in row) for lab, row in zip(labels, arr)]
    return "\n".join(lines)


def format_predictions(pred: Predictions) -> str:
    """Per-utterance table plus the per-video mean (the FV2ES system's output). A row names its video, segment,
    utterance id and speaker side (L / R) when given."""
    labels = [" ".join([f"{Path(r['video']).name} {r['start']:.2f}-"
                        f"{'end' if r['end'] is None else format(r['end'], '.2f')}",
                        *([r["utterance_id"]] if r.get("utterance_id") else []),
                        *([f"[{r['side']}]"] if r.get("side") else [])])
              for r in pred.rows]
    kind = {"multilabel": "probabilities (sigmoid per class)", "multiclass": "probabilities (softmax over the classes)",
            "regression": "scores in [-1, 1]"}[pred.task]
    parts = [f"per-utterance {kind}:", format_table(pred.scores, pred.class_names, labels)]
    videos = pred.per_video()
    parts += ["", "per-video mean:",
              format_table(np.stack(list(videos.values())), pred.class_names, [Path(v).name for v in videos])]
    if pred.timing is not None:
        parts += ["", f"time per stage ({torch.get_num_threads()} CPU threads"
                      f"{'' if pred.timing.device is None else f', device {pred.timing.device}'}):",
                  pred.timing.format()]
    return "\n".join(parts)


def _read_transcripts(value: Any) -> Any:
    """CLI transcripts: a text, or a file (one transcript per line, one line per segment)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    out = []
    for v in values:
        if not isinstance(v, str):  # already one transcript per segment (--inputs CSV)
            out.append(list(v))
            continue
        path = Path(v)
        if len(v) < 4096 and path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            out.append(lines if len(lines) != 1 else lines[0])
        else:
            out.append(v)
    return out[0] if isinstance(value, str) else out


def read_inputs_csv(path: str | os.PathLike) -> tuple[list[str], list[Any], list[Any]]:
    """``--inputs``: a CSV with columns ``video`` (required), ``transcript`` and ``segments`` ("start:end"); one row
    per utterance. Rows of one video are grouped in file order; paths are relative to the CSV's folder."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: inputs CSV not found")
    reader = csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines())
    if "video" not in (reader.fieldnames or []):
        raise ValueError(f"{path}: the inputs CSV needs a video column (header: {reader.fieldnames})")
    order: list[str] = []
    texts: dict[str, list[str]] = {}
    segs: dict[str, list[str]] = {}
    for n, row in enumerate(reader, 2):
        video = (row.get("video") or "").strip()
        if not video:
            raise ValueError(f"{path}: line {n}: empty video")
        video = str(path.parent / video)
        if video not in texts:
            order.append(video)
            texts[video], segs[video] = [], []
        texts[video].append((row.get("transcript") or "").strip())
        seg = (row.get("segments") or "").strip()
        if seg and not _is_segment_text(seg):
            raise ValueError(f"{path}: line {n}: segments must be start:end in seconds, got {seg!r}")
        segs[video].append(seg)
    if not order:
        raise ValueError(f"{path}: no rows")
    segments: list[Any] = []
    for v in order:
        given = [s for s in segs[v] if s]
        if given and len(given) != len(segs[v]):
            raise ValueError(f"{path}: {v}: give segments on every row of the video or on none")
        if not given and len(segs[v]) > 1:
            raise ValueError(f"{path}: {v}: several rows need segments (start:end) to tell the utterances apart")
        segments.append(",".join(given) if given else None)
    return order, [texts[v] for v in order], segments


def _is_segment_text(text: str) -> bool:
    try:
        parse_segments(text)
    except ValueError:
        return False
    return True


def predict_cli(args: Mapping[str, Any]) -> str:
    """What ``emolib predict VIDEO [VIDEO ...] --checkpoint C [--transcript T] [--segments s:e,...]`` prints.

    Keys: ``videos`` (list) or ``video``; ``checkpoint``; optional ``transcript`` (text or a file with one line
    per segment), ``segments`` ("start:end,..."), ``audio`` (separate audio file), ``utterance_ids``
    ("id,id,...", IEMOCAP ids, one per segment: each picks its speaker's half and channel), ``speaker`` (L or R
    for every segment, overriding the ids), ``record``, ``device``, ``batch_size``, ``profile`` (print the time of
    every stage), ``compile``, ``bf16``, ``int8``, ``min_face_size`` (``InferenceOptions``; the last three are
    lossy). Bad values raise
    ``ValueError`` before the checkpoint is loaded.
    """
    videos = args.get("videos") or args.get("video")
    transcripts = args.get("transcript")
    if args.get("inputs"):
        if videos or transcripts or args.get("segments"):
            raise ValueError("predict: give videos (with --transcript/--segments) or --inputs CSV, not both")
        videos, transcripts, segments = read_inputs_csv(args["inputs"])
        args = {**args, "segments": segments}
    elif isinstance(transcripts, (list, tuple)) and isinstance(videos, (list, tuple)) and len(videos) > 1:
        if len(transcripts) != len(videos):
            raise ValueError(f"predict: {len(transcripts)} --transcript for {len(videos)} videos; give one per video "
                             "(a text or a file with one line per segment) or none")
    if not videos:
        raise ValueError("predict: no video given")
    if isinstance(transcripts, (list, tuple)) and len(transcripts) == 1:
        transcripts = transcripts[0]
    if isinstance(videos, (list, tuple)) and len(videos) == 1:
        videos = videos[0]
    checkpoint = args.get("checkpoint")
    if not checkpoint:
        raise ValueError("predict: --checkpoint is required (a best.pt or its run directory)")
    pred = predict(videos, _read_transcripts(transcripts), args.get("segments"), checkpoint=checkpoint,
                   device=args.get("device"), audio=args.get("audio"), record=args.get("record"),
                   batch_size=int(args.get("batch_size") or 8), utterance_ids=args.get("utterance_ids"),
                   speaker=args.get("speaker"), profile=bool(args.get("profile")),
                   options=InferenceOptions(compile=bool(args.get("compile")), bf16=bool(args.get("bf16")),
                                            int8=bool(args.get("int8")), min_face_size=args.get("min_face_size")))
    return format_predictions(pred)

