"""Writing a release: every file of a plan, the manifest with its provenance, and reading a manifest back."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from emolib import io as eio
from emolib.data import formats
from emolib.data.synthetic.design import SYNTH_DESIGN
from emolib.data.synthetic.plan import ClipPlan, ReleasePlan, VideoPlan, plan_release
from emolib.data.synthetic.render import _render_video

log = logging.getLogger(__name__)

MANIFEST_NAME = "synthetic_manifest.json"
GENERATOR = "emolib.data.synthetic"
GENERATOR_VERSION = 2


def synthesize(dataset: str, root: str | os.PathLike, *, seed: int = 0, size: str = "smoke",
               sims_script: str = "pinyin", progress: bool = True) -> Path:
    """Write a synthetic raw release of ``dataset`` ("iemocap", "mosei" or "sims") under ``root``.

    Every file is (re)written atomically on every call; files that an earlier synthetic release in the same
    root listed but this one does not are removed. A non-empty ``root`` that holds no synthetic manifest is
    refused, so a real release is never mixed with synthetic files. Returns ``root`` as a Path."""
    from tqdm import tqdm

    plan = plan_release(dataset, seed=seed, size=size, sims_script=sims_script)
    root = Path(root)
    old_files = _claim_root(root)
    texts = _text_files(plan)
    media = _media_jobs(plan)
    written = set(texts) | {rel for job in media for rel in (job.video_rel, job.wav_rel) if rel is not None}
    # An incomplete manifest first: an interrupted run still marks the folder as ours (and lists old files).
    eio.write_json(root / MANIFEST_NAME,
                   {"generator": GENERATOR, "complete": False, "files": sorted(set(old_files) | written)})
    for rel, text in texts.items():
        eio.write_text(root / rel, text)
    for job in tqdm(media, desc=f"synth {dataset}", unit="video", disable=not progress):
        _render_video(plan, job.video, root / job.video_rel, root / job.wav_rel if job.wav_rel else None,
                      job.embed_audio)
    _remove_stale(root, set(old_files) - written)
    eio.write_json(root / MANIFEST_NAME, _manifest(plan, root, sorted(written)))
    log.info("synthetic %s release (%s, seed %d): %d clips in %d files under %s",
             dataset, size, seed, len(plan.clips), len(written), root)
    return root


def _claim_root(root: Path) -> list[str]:
    """Files of an earlier synthetic release in ``root`` (empty for a new root); refuses foreign data."""
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        try:
            old = eio.read_json(manifest)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{manifest}: unreadable synthetic manifest ({err}); delete it or choose another root") from None
        if not isinstance(old, dict) or old.get("generator") != GENERATOR:
            raise ValueError(f"{manifest}: not written by {GENERATOR}; refusing to overwrite {root}")
        return [str(f) for f in old.get("files", [])]
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: folder is not empty and holds no {MANIFEST_NAME}; refusing to write a "
                         "synthetic release over other data (choose an empty or new folder)")
    root.mkdir(parents=True, exist_ok=True)
    return []


def _remove_stale(root: Path, stale: set[str]) -> None:
    for rel in sorted(stale):
        path = root / rel
        if path.is_file():
            path.unlink()
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _text_files(plan: ReleasePlan) -> dict[str, str]:
    if plan.dataset == "iemocap":
        out = {}
        for video in plan.videos:
            base = f"Session{int(video.name[3:5])}/dialog"
            out[f"{base}/EmoEvaluation/{video.name}.txt"] = formats.format_iemocap_evaluation(
                c.annotation for c in video.clips)
            turns = [formats.IemocapTurn(c.uid, c.start, c.end, c.text) for c in video.clips] + video.extra_turns
            turns.sort(key=lambda t: (t.start, t.utt_id))
            out[f"{base}/transcriptions/{video.name}.txt"] = formats.format_iemocap_transcription(turns)
        return out
    if plan.dataset == "mosei":
        out = {}
        batches: list[list[dict[str, Any]]] = [[], []]
        for video in plan.videos:
            segments = [formats.MoseiSegment(video.name, i, c.start, c.end, c.text) for i, c in enumerate(video.clips)]
            out[f"Transcript/Combined/{video.name}.txt"] = formats.format_mosei_transcript(segments)
            for clip in video.clips:
                batches[video.index % 2].extend(clip.annotation)
        for b, rows in enumerate(batches):
            if rows:
                out[f"Labels/Batch_{3171000 + 17 * b}_batch_results.csv"] = _mosei_csv(rows)
        return out
    rows = []
    for clip in plan.clips:
        video_id, clip_id = clip.video.split("/")
        lab = clip.label
        rows.append(formats.SimsRow(video_id, clip_id, clip.text, lab["M"], lab["T"], lab["A"], lab["V"],
                                    formats.sims_annotation(lab["M"]), clip.split))
    return {"label.csv": formats.format_sims_labels(rows)}


def _mosei_csv(rows: list[dict[str, Any]]) -> str:
    annotations = [formats.MoseiAnnotation(r["video"], r["clip"], r["WorkerId"], tuple(r["answers"])) for r in rows]
    extra = [{"HITId": r["HITId"], "AssignmentId": r["AssignmentId"], "Answer.sentiment": str(r["sentiment"])}
             for r in rows]
    return formats.format_mosei_label_csv(annotations, extra)


@dataclass(frozen=True)
class _MediaJob:
    video: VideoPlan
    video_rel: str
    wav_rel: str | None
    embed_audio: bool  # an AAC track inside the mp4


def _media_jobs(plan: ReleasePlan) -> list[_MediaJob]:
    jobs = []
    for video in plan.videos:
        if plan.dataset == "iemocap":
            base = f"Session{int(video.name[3:5])}/dialog"
            jobs.append(_MediaJob(video, f"{base}/avi/DivX/{video.name}.avi", f"{base}/wav/{video.name}.wav", False))
        elif plan.dataset == "mosei":
            jobs.append(_MediaJob(video, f"Videos/Full/Combined/{video.name}.mp4",
                                  f"Audio/WAV_16000/{video.name}.wav", True))
        else:
            jobs.append(_MediaJob(video, f"Raw/{video.name}.mp4", None, True))
    return jobs


def _manifest(plan: ReleasePlan, root: Path, files: list[str]) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": True,
        "dataset": plan.dataset,
        "seed": plan.seed,
        "size": plan.size,
        "sims_script": plan.sims_script if plan.dataset == "sims" else None,
        "design": _design_json(plan.dataset),
        "files": files,
        "sha256": {rel: eio.sha256_file(root / rel) for rel in files},
        "clips": [_clip_json(c) for c in plan.clips],
    }


def _design_json(dataset: str) -> dict[str, Any]:
    out = {}
    for key, value in SYNTH_DESIGN[dataset].items():
        if key == "cues":
            value = {m: asdict(c) for m, c in value.items()}
        elif isinstance(value, Fraction):
            value = f"{value.numerator}/{value.denominator}"
        elif isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        out[key] = value
    return out


def _clip_json(clip: ClipPlan) -> dict[str, Any]:
    return {
        "uid": clip.uid, "video": clip.video, "start": clip.start, "end": clip.end, "slot": clip.slot,
        "label": list(clip.label) if isinstance(clip.label, tuple) else clip.label,
        "split": clip.split, "text": clip.text,
        "displays": {m: {"outcome": d.outcome, "shown": [list(s) for s in d.shown], "sentiment": d.sentiment}
                     for m, d in clip.displays.items()},
    }


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete synthetic release (raises if missing or the release is incomplete)."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no synthetic manifest; {root} is not a synthetic release")
    manifest = eio.read_json(path)
    if not manifest.get("complete"):
        raise ValueError(f"{path}: the synthetic release is incomplete (generation was interrupted); rerun synthesize")
    return manifest
