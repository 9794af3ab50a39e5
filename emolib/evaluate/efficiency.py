"""Efficiency of every registered model: parameters, FLOPs, latency, peak memory, raw video to emotions.

FV2ES claims "fast yet effective" inference and E2EMAL a ~1 MB feature extractor; their tables measure neither.
Everything here is measured on one **stated input** (``StatedInput``: an 8 s clip at 16 kHz, 16 face crops, a
30-word transcript), the same for every model:

* parameters: total, trainable, and the share of the text encoder (``text_encoder`` modules; E2EMAL's word vectors);
* FLOPs per utterance: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass at batch 1 (it counts
  matrix products and convolutions, 2 FLOPs per multiply-add; element-wise work, resizing, STFTs and the
  tokeniser are not counted);
* latency: the median of ``repeats`` timed eval-mode forward passes (after warm-up) at batch 1 and batch 8, per
  batch and per utterance, on the CPU and on the GPU when there is one;
* peak memory: weights and buffers plus the peak of the tensors a batch-8 forward pass allocates, from the
  profiler's allocation events on the CPU (``torch.cuda.max_memory_allocated`` on a GPU);
* raw video to emotions: seconds per utterance of ``emolib.predict.FV2ESPipeline`` (decoding, 500 ms frame
  sampling, MTCNN, audio and the model in one pass) on raw clips, which every checkpoint of ``emolib.train`` can
  run (FV2ES is the paper whose system takes raw video).

``efficiency_benchmark`` measures every registered model in its ``tiny`` and ``paper`` configurations (the paper
configurations with random-initialised stand-ins of the same architecture where pretrained weights are not on
the machine: ``stand-in:albert-base-v2``, ``stand-in:enet_b2_8``) and checks the parameter counts against the
specification (``SPEC``). ``python -m emolib.evaluate efficiency`` writes ``results/bench/efficiency.json``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STAND_IN = "stand-in:"
# The 30-word transcript of the stated input: ordinary words, so that every tokenizer splits them alike.
_WORDS = ("well i really did not expect that to happen today but honestly it made me feel much better about the "
          "whole situation and now i think we should talk about it again").split()


@dataclass(frozen=True)
class StatedInput:
    """The one input every model is measured on."""

    clip_seconds: float = 8.0
    sample_rate: int = 16000
    faces: int = 16
    face_size: int = 96  # side of the cached face crops (the smoke cache's); models resize them as they need
    words: int = 30

    def describe(self) -> str:
        return (f"{self.clip_seconds:g} s of 16 kHz audio, {self.faces} face crops of {self.face_size} px, "
                f"a {self.words}-word transcript")


STATED = StatedInput()


def stated_batch(batch_size: int = 1, num_outputs: int = 6, spec: StatedInput = STATED, seed: int = 0) -> dict:
    """A batch of ``batch_size`` identical-shape utterances of the stated input (random pixels and audio)."""
    g = torch.Generator().manual_seed(seed)
    samples = int(spec.clip_seconds * spec.sample_rate)
    n_faces = spec.faces * batch_size
    text = " ".join((_WORDS * (spec.words // len(_WORDS) + 1))[:spec.words])
    side = spec.face_size
    return {
        "uid": [f"u{i}" for i in range(batch_size)],
        "faces": torch.randint(0, 256, (n_faces, 3, side, side), dtype=torch.uint8, generator=g),
        "face_lengths": torch.full((batch_size,), spec.faces, dtype=torch.long),
        # confident faces with a box of the crop's size: E2EMAL keeps every one
        "face_conf": torch.ones(n_faces),
        "face_boxes": torch.tensor([[0.0, 0.0, float(side), float(side)]]).repeat(n_faces, 1),
        "audio": 0.1 * torch.randn(batch_size, samples, generator=g),
        "audio_lengths": torch.full((batch_size,), samples, dtype=torch.long),
        "text": [text] * batch_size,
        "labels": torch.zeros(batch_size, num_outputs),
    }


def _to(batch: Mapping[str, Any], device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- counting


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Total, trainable and text-encoder parameters (and E2EMAL's LFE sizes, the paper's "~1 MB" claim)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text_modules = [m for n, m in model.named_modules() if n.split(".")[-1] in ("text_encoder", "word_vectors")]
    text = sum(p.numel() for m in text_modules for p in m.parameters())
    out: dict[str, Any] = {"total": total, "trainable": trainable, "text_encoder": text,
                           "text_share": text / total if total else 0.0}
    for name in ("visual_lfe", "audio_lfe"):
        lfe = getattr(model, name, None)
        if isinstance(lfe, nn.Module):
            n = sum(p.numel() for p in lfe.parameters())
            out[name] = {"params": n, "bytes_float32": 4 * n}
    return out


def count_flops(model: nn.Module, batch: Mapping[str, Any]) -> int:
    """FLOPs of one eval-mode forward pass of ``batch`` (``torch.utils.flop_counter``; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_ms(model: nn.Module, batch: Mapping[str, Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (ms) of an eval-mode forward pass of ``batch`` on the model's device."""
    device = next(iter(model.parameters())).device
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(batch)
            _sync(device)
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - t0))
    return float(statistics.median(times))


def peak_memory(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Weights + buffers, and the peak of what one forward pass of ``batch`` allocates on top (bytes)."""
    device = next(iter(model.parameters())).device
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    inputs = sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            model(batch)
        torch.cuda.synchronize(device)
        activations, how = torch.cuda.max_memory_allocated(device) - start, "torch.cuda.max_memory_allocated"
    else:
        activations, how = _cpu_peak_allocations(model, batch), "profiler allocation events (CPU)"
    return {"weights_bytes": int(weights), "input_bytes": int(inputs), "activation_peak_bytes": int(activations),
            "peak_bytes": int(weights + inputs + activations), "method": how}


def _cpu_peak_allocations(model: nn.Module, batch: Mapping[str, Any]) -> int:
    """Peak of the running sum of the bytes each operator allocates minus what is freed, in time order."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": one cycle here
        warnings.filterwarnings("ignore", message=".*Profiler clears events", category=UserWarning)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(batch)
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # Operators carry their own (self) allocations; frees outside any operator are "[memory]" events.
        current += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


# ------------------------------------------------------------------------------------------ one model


def paper_overrides(name: str) -> dict[str, Any]:
    """Stand-ins for the pretrained weights a model's paper configuration names but this machine lacks."""
    from emolib.models import model_config
    from emolib.models.text import MINILM_ALIASES

    cfg = model_config(name, "paper")
    out: dict[str, Any] = {}
    # one-modality models refuse the keys of the branches they do not build
    letters = str(getattr(cfg, "modalities", "tav")).lower()
    text = getattr(cfg, "text_model", None) if "t" in letters else None
    if isinstance(text, str) and text.lower() not in MINILM_ALIASES and not text.startswith(STAND_IN) \
            and not Path(text).is_dir() and not _in_hf_cache(text):
        out["text_model"] = STAND_IN + text
    if "v" in letters and getattr(cfg, "visual_backbone", None) and not getattr(cfg, "visual_weights", None) \
            and not str(cfg.visual_backbone).startswith(STAND_IN):
        out["visual_backbone"] = STAND_IN + str(cfg.visual_backbone)
    return out


def _in_hf_cache(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure to find it means "not available"
        return False


def measure_model(model: nn.Module, *, devices: Sequence[str] = ("cpu",), batch_sizes: Sequence[int] = (1, 8),
                  repeats: int = 5, warmup: int = 1, spec: StatedInput = STATED, num_outputs: int = 6,
                  memory: bool = True) -> dict[str, Any]:
    """Parameters, FLOPs per utterance, latency per device and batch size, and peak memory of ``model``."""
    model.eval()
    out: dict[str, Any] = {"params": parameter_counts(model), "input": asdict(spec)}
    cpu_batch = stated_batch(1, num_outputs, spec)
    out["flops_per_utterance"] = count_flops(model.to("cpu"), cpu_batch)
    out["devices"] = {}
    for dev in devices:
        device = torch.device(dev)
        model.to(device)
        per: dict[str, Any] = {"latency_ms": {}, "latency_ms_per_utterance": {}}
        for b in batch_sizes:
            batch = _to(stated_batch(b, num_outputs, spec), device)
            ms = latency_ms(model, batch, repeats=repeats, warmup=warmup)
            per["latency_ms"][str(b)] = ms
            per["latency_ms_per_utterance"][str(b)] = ms / b
        if memory:
            per["memory"] = peak_memory(model, _to(stated_batch(max(batch_sizes), num_outputs, spec), device))
        out["devices"][dev] = per
    model.to("cpu")
    return out


def raw_video_seconds(model: nn.Module, class_names: Sequence[str], sources: Sequence[Any], *,
                      task: str = "multilabel", prepare: Any = None, frames: Any = None, device: str = "cpu",
                      batch_size: int = 8) -> dict[str, Any]:
    """Seconds per utterance from raw video (+ transcript) to emotion scores through ``FV2ESPipeline``.

    The pipeline fuses RepVGG blocks in place, so it runs on a copy of ``model``. MTCNN's construction is not
    timed; decoding, frame sampling, face detection, audio and the model are.
    """
    from emolib.predict import FV2ESPipeline

    if not sources:
        raise ValueError("raw_video_seconds: no utterance sources given")
    pipe = FV2ESPipeline(copy.deepcopy(model), class_names, task, prepare=prepare, frames=frames, device=device,
                         batch_size=batch_size)
    t0 = time.perf_counter()
    pipe.predict_sources(list(sources))
    seconds = time.perf_counter() - t0
    clip = sum(float((s.end or 0.0) - s.start) for s in sources if s.end is not None)
    return {"utterances": len(sources), "seconds": seconds, "seconds_per_utterance": seconds / len(sources),
            "clip_seconds": clip or None, "device": device}


# ----------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SpecCheck:
    what: str
    expected: str
    check: Callable[[Mapping[str, Any]], tuple[float, bool]]  # paper-config measurement -> (value, ok)


def _total_near(model: str, value: float, rel: float = 0.01) -> Callable[[Mapping[str, Any]], tuple[float, bool]]:
    def check(rows: Mapping[str, Any]) -> tuple[float, bool]:
        got = float(rows[model]["paper"]["params"]["total"])
        return got, abs(got - value) <= rel * value

    return check


def _lfe_within(limit_bytes: float) -> Callable[[Mapping[str, Any]], tuple[float, bool]]:
    def check(rows: Mapping[str, Any]) -> tuple[float, bool]:
        p = rows["e2emal"]["paper"]["params"]
        biggest = max(p["visual_lfe"]["bytes_float32"], p["audio_lfe"]["bytes_float32"])
        return float(biggest), biggest <= limit_bytes

    return check


# The reference spec's totals count ALBERT-base with its pooler (Linear 768 -> 768 on [CLS], 11.68 M in all); the
# models never use the pooler and emolib never builds it (emolib.models.text), so a built model holds that many
# parameters fewer than the spec's arithmetic.
ALBERT_POOLER = 768 * 768 + 768

SPEC: tuple[SpecCheck, ...] = (
    SpecCheck("fe2e total parameters (paper config, ALBERT-base)",
              f"~36.8 M in the reference spec, with ALBERT's unused pooler ({ALBERT_POOLER:,}) that emolib does not "
              f"build: ~{(36.8e6 - ALBERT_POOLER) / 1e6:.2f} M (within 1 %)",
              _total_near("fe2e", 36.8e6 - ALBERT_POOLER)),
    SpecCheck("fv2es total parameters (paper config, ALBERT-base)",
              f"~121 M in the reference spec, with ALBERT's unused pooler ({ALBERT_POOLER:,}) that emolib does not "
              f"build: ~{(121e6 - ALBERT_POOLER) / 1e6:.1f} M (within 1 %)",
              _total_near("fv2es", 121e6 - ALBERT_POOLER)),
    SpecCheck("e2emal LFE size (each of visual and audio, float32)", "<= 1 MB (paper: ~1 MB; spec: ~0.8 MB each)",
              _lfe_within(1 << 20)),
)


def spec_checks(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The specification's parameter claims against measured paper-config rows (skipped when not measured)."""
    out = []
    for s in SPEC:
        try:
            value, ok = s.check(rows)
        except KeyError:
            out.append({"what": s.what, "expected": s.expected, "measured": None, "ok": None})
            continue
        out.append({"what": s.what, "expected": s.expected, "measured": value, "ok": bool(ok)})
    return out


# ------------------------------------------------------------------------------------------ benchmark


def registered_models() -> list[str]:
    from emolib import registry

    registry.load_all()
    return registry.REGISTRY.names("model")


def build_for_efficiency(name: str, config: str, num_outputs: int = 6) -> tuple[nn.Module, dict[str, Any]]:
    """Model ``name`` in a named configuration (paper: with stand-ins for absent weights) and the overrides used."""
    from emolib.models import build_model

    overrides = paper_overrides(name) if config == "paper" else {}
    torch.manual_seed(0)
    return build_model(name, config, num_outputs=num_outputs, **overrides), overrides


def synthetic_sources(workdir: Path, dataset: str = "mosei", n: int = 4) -> list[Any]:
    """``n`` utterance sources of a freshly written tiny synthetic release (for raw-video timings)."""
    from emolib.data import get_adapter
    from emolib.data.release import synthesize_release

    root = synthesize_release(dataset, Path(workdir) / "raw" / dataset, seed=7, size="tiny")
    sources, _ = get_adapter(dataset).sources(root)
    return list(sources)[:n]


def efficiency_benchmark(workdir: str | Path, *, models: Sequence[str] | None = None,
                         configs: Sequence[str] = ("tiny", "paper"), repeats: int = 5,
                         raw_video_configs: Sequence[str] = ("tiny",), raw_video_clips: int = 4,
                         progress: bool = True) -> dict[str, Any]:
    """Every registered model (or ``models``) in each configuration; the record ``results/bench/efficiency.json``
    holds. ``raw_video_configs``: configurations timed from raw video (each model's pipeline, MTCNN included)."""
    from emolib import registry
    from emolib.bench.common import hardware
    from emolib.data.prepare import PrepareParams

    registry.load_all()
    names = list(models) if models is not None else registry.REGISTRY.names("model")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sources = synthetic_sources(Path(workdir), n=raw_video_clips) if raw_video_configs and raw_video_clips else []
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        for config in configs:
            if progress:
                print(f"efficiency: {name} {config}", flush=True)
            model, overrides = build_for_efficiency(name, config)
            row = measure_model(model, devices=devices, repeats=repeats)
            row["overrides"] = overrides
            if config in raw_video_configs and sources:
                row["raw_video"] = raw_video_seconds(model, [f"c{i}" for i in range(6)], sources,
                                                     prepare=PrepareParams(face_size=STATED.face_size),
                                                     device=devices[-1])
            rows.setdefault(name, {})[config] = row
            del model
    return {
        "benchmark": "efficiency",
        "hardware": hardware(),
        "input": {**asdict(STATED), "describe": STATED.describe()},
        "repeats": repeats,
        "models": rows,
        "spec": spec_checks(rows),
        "notes": [
            "FLOPs: torch.utils.flop_counter at batch 1 (matmuls and convolutions, 2 FLOPs per multiply-add)",
            "latency: median of timed eval-mode forward passes after one warm-up pass, ms per batch",
            "peak memory: weights + buffers + inputs + the peak of what a batch-8 forward pass allocates",
            "paper configs: random-initialised stand-ins of the real architectures where weights are absent "
            "(see each row's overrides); parameter counts equal the real models'",
            "raw_video: FV2ESPipeline on tiny synthetic CMU-MOSEI clips (decode, MTCNN, audio, model)",
        ],
    }


def efficiency_table(result: Mapping[str, Any], device: str = "cpu"):
    """One row per (model, configuration) of an ``efficiency_benchmark`` result (or of ``measure_model`` rows
    shaped alike), in display units."""
    import pandas as pd

    rows = []
    for name, by_config in result["models"].items():
        for config, row in by_config.items():
            dev = row["devices"].get(device) or next(iter(row["devices"].values()))
            mem = dev.get("memory", {})
            rows.append({
                "model": name, "config": config, "params (M)": round(row["params"]["total"] / 1e6, 3),
                "trainable (M)": round(row["params"]["trainable"] / 1e6, 3),
                "text share (%)": round(100 * row["params"]["text_share"], 1),
                "GFLOPs / utt": round(row["flops_per_utterance"] / 1e9, 3),
                "ms / utt (b=1)": round(dev["latency_ms_per_utterance"].get("1", float("nan")), 2),
                "ms / utt (b=8)": round(dev["latency_ms_per_utterance"].get("8", float("nan")), 2),
                "peak MB (b=8)": round(mem["peak_bytes"] / 2**20, 1) if mem else None,
                "raw video s / utt": (round(row["raw_video"]["seconds_per_utterance"], 3)
                                      if row.get("raw_video") else None),
            })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- trained runs


def raw_sources_of(cache_dir: str | Path, n: int, split: str = "test") -> list[Any]:
    """The first ``n`` utterance sources of ``split`` in the raw release a cache was built from (its provenance's
    ``source_root`` and options), or [] when that release is not on this machine."""
    from emolib.data import get_adapter
    from emolib.data.cache import Cache

    cache = Cache(cache_dir)
    root = cache.provenance.get("source_root")
    if not root or not Path(root).exists() or n < 1:
        return []
    options = {k: v for k, v in (cache.provenance.get("options") or {}).items() if v is not None}
    sources, _ = get_adapter(cache.dataset).sources(root, **options)
    chosen = [s for s in sources if s.split == split] or list(sources)
    return chosen[:n]


def run_efficiency(runs: Sequence[Any], *, devices: Sequence[str] = ("cpu",), repeats: int = 3,
                   memory: bool = True, raw_video_clips: int = 2, cache_search: Sequence[str | Path] = (),
                   progress: bool = True):
    """``measure_model`` of every trained run's checkpoint (as ``robustness.Run``), plus raw video to emotions on
    ``raw_video_clips`` test clips of the run's raw release (0: not timed), as one DataFrame."""
    import pandas as pd

    from emolib.evaluate.robustness import resolve_cache
    from emolib.predict import load_checkpoint

    rows = []
    for run in runs:
        if progress:
            print(f"efficiency: {run.name} ({run.record['dataset']})", flush=True)
        loaded = load_checkpoint(run.checkpoint, record=run.record, device="cpu", fuse=True)
        m = measure_model(loaded.model, devices=devices, repeats=repeats, memory=memory,
                          num_outputs=len(loaded.class_names))
        dev = m["devices"][devices[0]]
        row = {"run": run.name, "dataset": run.record["dataset"], "seed": run.record["seed"],
               "params": m["params"]["total"], "text_share": m["params"]["text_share"],
               "flops_per_utterance": m["flops_per_utterance"], "device": devices[0],
               "ms_per_utterance": dev["latency_ms_per_utterance"].get("1"),
               "ms_per_utterance_b8": dev["latency_ms_per_utterance"].get("8"),
               "peak_bytes": dev.get("memory", {}).get("peak_bytes"), "raw_video_s_per_utterance": None}
        sources = raw_sources_of(resolve_cache(run.record, cache_search), raw_video_clips) if raw_video_clips else []
        if sources:
            raw = raw_video_seconds(loaded.model, loaded.class_names, sources, task=loaded.task,
                                    prepare=loaded.prepare, frames=loaded.frames, device=devices[0])
            row["raw_video_s_per_utterance"] = raw["seconds_per_utterance"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_efficiency_table(frame):
    """``run_efficiency`` rows in display units."""
    import pandas as pd

    return pd.DataFrame({
        "model": frame["run"], "data": frame["dataset"], "params (M)": (frame["params"] / 1e6).round(3),
        "text share (%)": (100 * frame["text_share"]).round(1),
        "GFLOPs / utt": (frame["flops_per_utterance"] / 1e9).round(3),
        "ms / utt (b=1)": frame["ms_per_utterance"].round(2), "ms / utt (b=8)": frame["ms_per_utterance_b8"].round(2),
        "peak MB (b=8)": (frame["peak_bytes"] / 2**20).round(1),
        "raw video s / utt": frame["raw_video_s_per_utterance"].map(lambda v: None if v is None else round(v, 3)),
    })
