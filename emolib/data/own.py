"""Own data: run the models on your own recordings, listed in a CSV file.

Columns (header required; paths relative to the CSV's folder; every column but ``id`` and one label column is
optional, and a row may carry any subset of the four modalities):

===========  ========================================================================================
``id``       utterance id (unique; letters, digits, ``_``, ``-``, ``.``)
``video``    a video file, with or without an audio track (its audio is used unless ``audio`` is given)
``audio``    an audio file (wav, flac, mp3, m4a, ...: whatever FFmpeg decodes)
``images``   face or scene frames as image files: a ``;``-separated list or a glob pattern
``start``    / ``end``: seconds within the video/audio (optional; default: the whole file)
``text``     the transcript (an empty cell: no text for this clip)
label        the column's name states the task:
             ``label``  single-label (multiclass): exactly one class name per clip;
             ``labels`` multi-label: class names separated by ``;`` (none for a clip without any);
             ``value``  regression: one number, or ``M;T;A;V`` numbers like CH-SIMS
``split``    train / valid / test (optional; see ``split_by``)
``speaker``  optional; used by the speaker-disjoint splits
===========  ========================================================================================

Modalities of a row: *visual* when it has a video with a video track or images, *audio* when it has an audio
file or a video with an audio track, *text* when its text is not empty. The cache stores what exists, with the
list in each record's ``modalities``; models check at experiment start that the cache has what they read.

Options of ``prepare``/``verify`` (``emolib prepare --dataset own`` flags): ``task`` (overrides the label
column's task), ``classes`` (the declared class set and its order; default: the sorted classes seen),
``split_by`` ("" = the ``split`` column, rows without one drawn at random; "speaker" = a seeded
speaker-disjoint split of the rows without one), ``split_fractions`` (train/valid/test, default 0.7/0.1/0.2),
``seed``, ``name`` (the dataset name in run records and tables; default: the CSV's file name without suffix) and
``skip_bad_rows`` (``prepare`` refuses to start while ``verify`` rejects a row unless this is true; the skipped
rows are then listed and counted in the provenance).
"""

from __future__ import annotations

import csv
import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from emolib.data.adapter import Adapter, ProtocolUse, VerifyReport
from emolib.data.prepare import PrepareParams, PrepareReport, UtteranceSource
from emolib.data.splits import group_split, random_split
from emolib.labels import SPLITS, check_task
from emolib.registry import register

_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
# The label column's name states the task.
LABEL_COLUMNS = {"label": "multiclass", "labels": "multilabel", "value": "regression"}
MEDIA_COLUMNS = ("video", "audio", "images")
MODALITIES = ("visual", "audio", "text")


class BadRows(ValueError):
    """``prepare`` met rows that ``verify`` rejects; the message lists each with its CSV line."""


@dataclass
class ParsedCsv:
    """What the one row parser found: the utterances, the rejected rows and the kept-with-a-note rows."""

    task: str
    label_names: tuple[str, ...]
    sources: list[UtteranceSource] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)  # rejected rows: file, line, problem
    notes: list[dict[str, Any]] = field(default_factory=list)  # kept rows with a counted fallback
    n_rows: int = 0

    def modality_counts(self) -> dict[str, int]:
        return {m: sum(m in s.modalities for s in self.sources) for m in MODALITIES}


@register("dataset", "own", summary="your own recordings listed in a CSV (any mix of video, audio, images, text)",
          layout="CSV: id, video, audio, images, start, end, text, label | labels | value, split, speaker")
class OwnDataAdapter(Adapter):
    name = "own"
    title = "own data"
    # The task comes from the CSV (its label column, or ``task=``); the protocols follow from it.
    TASK_PROTOCOLS: ClassVar[dict[str, tuple[ProtocolUse, ...]]] = {
        "multiclass": (ProtocolUse("multiclass", "primary: argmax; WA, UA (mean class recall), macro-F1"),),
        "multilabel": (
            ProtocolUse("dai-iemocap", "primary: valid-tuned threshold per class, plain accuracy + binary F1"),
            ProtocolUse("e2emal", "fixed 0.5 threshold, weighted accuracy + weighted 2-class F1"),
        ),
        "regression": (ProtocolUse("sims", "primary: CH-SIMS-style regression metrics on the first label column "
                                           "(values clipped to [-1, 1])"),),
    }
    protocols = TASK_PROTOCOLS["multiclass"]
    task = "multiclass"
    download_help = "Own data is never downloaded: list your files in a CSV (see emolib.data.own)."

    def __init__(self) -> None:
        self.label_names: tuple[str, ...] = ()
        self._parsed: ParsedCsv | None = None  # set by prepare() for the sources() call it makes

    def protocols_for(self, task: str) -> tuple[ProtocolUse, ...]:
        if task not in self.TASK_PROTOCOLS:
            raise ValueError(f"own data: task must be one of {sorted(self.TASK_PROTOCOLS)}, got {task!r}")
        return self.TASK_PROTOCOLS[task]

    # ------------------------------------------------------------------------------------------ parsing

    def parse(self, root: str | Path, *, task: str | None = None, classes: list[str] | str | None = None,
              seed: int = 0, split_by: str = "", split_fractions: tuple[float, float, float] | str | None = None,
              probe_media: bool = True, **_: Any) -> ParsedCsv:
        """Every check that ``prepare`` needs, row by row: ``verify`` reports it, ``sources`` builds from it."""
        csv_path = Path(root)
        header, rows = _read_csv(csv_path)
        present = [c for c in LABEL_COLUMNS if c in header]
        if len(present) != 1:
            raise ValueError(f"{csv_path}: needs exactly one label column: label (one class per clip), labels "
                             f"(';'-separated classes) or value (regression); header has {header}")
        label_col = present[0]
        task = check_task(task) if task else LABEL_COLUMNS[label_col]
        self.protocols_for(task)
        if split_by not in ("", "speaker"):
            raise ValueError(f"own data: split_by must be '' (the split column) or 'speaker', got {split_by!r}")
        if split_by == "speaker" and "speaker" not in header:
            raise ValueError(f"{csv_path}: split_by='speaker' needs a speaker column (header: {header})")
        fractions = _fractions(split_fractions)
        declared = _class_list(classes)
        out = ParsedCsv(task, (), n_rows=len(rows))
        media = _MediaProbe(probe_media)
        seen: dict[str, int] = {}
        kept: list[tuple[int, dict[str, str], list[str], UtteranceSource]] = []
        for n, row in rows:
            problems: list[str] = []
            notes: list[str] = []
            uid = row.get("id", "")
            if not _ID.match(uid):
                problems.append(f"bad id {uid!r} (letters, digits, '_', '-', '.' only)")
            elif uid in seen:
                problems.append(f"duplicate id {uid!r} (first on line {seen[uid]})")
            else:
                seen[uid] = n
            split = row.get("split", "")
            if split and split not in SPLITS:
                problems.append(f"unknown split {split!r} (use {', '.join(SPLITS)}, or leave it empty)")
            raw_labels = [x.strip() for x in row.get(label_col, "").split(";") if x.strip()]
            problems += _label_problems(task, label_col, raw_labels, declared)
            src = self._row_source(csv_path, n, row, media, problems, notes)
            if problems:
                out.problems += [{"file": str(csv_path), "line": n, "problem": p} for p in problems]
                continue
            out.notes += [{"file": str(csv_path), "line": n, "problem": p} for p in notes]
            kept.append((n, row, raw_labels, src))
        if task == "regression":
            # The most common width is the CSV's; the rows that differ are the ones to flag (first row breaks ties).
            widths = [len(labels) for _, _, labels, _ in kept]
            width = max(widths, key=widths.count, default=1)
            for n, _, labels, _ in kept:
                if len(labels) != width:
                    out.problems.append({"file": str(csv_path), "line": n,
                                         "problem": f"expected {width} label values like the other rows, got "
                                                    f"{len(labels)}"})
            kept = [k for k in kept if len(k[2]) == width]
            out.label_names = ("M", "T", "A", "V")[:width] if width > 1 else ("M",)
        else:
            out.label_names = tuple(declared) if declared else tuple(sorted({c for *_, cs, _ in kept for c in cs}))
            if len(out.label_names) < 2 and kept:
                out.problems.append({"file": str(csv_path), "line": 1,
                                     "problem": f"needs at least two classes, found {list(out.label_names)}"})
        unsplit = [(row["id"], row.get("speaker", "")) for _, row, _, _ in kept if not row.get("split")]
        if split_by == "speaker":
            no_speaker = [n for n, row, _, _ in kept if not row.get("split") and not row.get("speaker")]
            for n in no_speaker:
                out.problems.append({"file": str(csv_path), "line": n, "problem": "split_by='speaker': empty speaker"})
            assign = group_split({u: s for u, s in unsplit if s}, seed=seed, fractions=fractions)
        else:
            assign = random_split([u for u, _ in unsplit], seed=seed, fractions=fractions)
        bad_lines = {p["line"] for p in out.problems}
        for n, row, labels, src in kept:
            if n in bad_lines:
                continue
            src.labels = _label_vector(task, labels, out.label_names)
            src.split = row.get("split") or assign[row["id"]]
            out.sources.append(src)
        return out

    def _row_source(self, csv_path: Path, n: int, row: dict[str, str], media: _MediaProbe, problems: list[str],
                    notes: list[str]) -> UtteranceSource:
        base = csv_path.parent
        video = base / row["video"] if row.get("video") else None
        audio = base / row["audio"] if row.get("audio") else None
        images: tuple[Path, ...] = ()
        for col, path in (("video", video), ("audio", audio)):
            if path is not None and not path.is_file():
                problems.append(f"{col} file not found: {row[col]}")
        if row.get("images"):
            images, missing = _images(base, row["images"])
            if not images:
                problems.append(f"images: no file matches {row['images']!r}")
            problems += [f"images: file not found: {m}" for m in missing]
        start, end = _times(row, problems)
        modalities = []
        if video is not None and video.is_file():
            info = media(video, problems)
            if info is not None and info.has_video and not images:
                modalities.append("visual")
            if info is not None and info.has_audio and audio is None:
                modalities.append("audio")
        if images:
            modalities.append("visual")
        if audio is not None and audio.is_file():
            info = media(audio, problems)
            if info is not None and info.has_audio:
                modalities.append("audio")
            elif info is not None:
                problems.append(f"audio file {row['audio']} has no audio track")
        text = row.get("text", "")
        if text.strip():
            modalities.append("text")
        elif "text" in row and modalities:
            notes.append("empty text (kept: no text for this clip)")
        if not modalities and not problems:
            problems.append("no modality: the row needs a video, an audio file, images or a text")
        return UtteranceSource(
            uid=row.get("id", ""), labels=(), text=text, video=video, audio=audio, start=start, end=end, images=images,
            modalities=tuple(m for m in MODALITIES if m in modalities),
            meta={"speaker": row.get("speaker") or None,
                  "label_raw": next((row[c] for c in LABEL_COLUMNS if c in row), "")},
        )

    # ------------------------------------------------------------------------------------ adapter API

    def verify(self, root: str | Path, **options: Any) -> VerifyReport:
        csv_path = Path(root)
        report = VerifyReport(csv_path)
        try:
            parsed = self.parse(csv_path, **options)
        except (ValueError, FileNotFoundError) as err:
            report.problems.append(str(err))
            return report
        report.counts = {"rows": parsed.n_rows, "usable": len(parsed.sources), "rejected": len(
            {p["line"] for p in parsed.problems}), **{m: c for m, c in parsed.modality_counts().items()}}
        report.problems += [f"{p['file']}: line {p['line']}: {p['problem']}" for p in parsed.problems]
        report.notes = [f"{p['file']}: line {p['line']}: {p['problem']}" for p in parsed.notes]
        return report

    def sources(self, root: str | Path, **options: Any) -> tuple[list[UtteranceSource], list[dict[str, Any]]]:
        parsed = self._parsed if self._parsed is not None else self.parse(root, **options)
        self._parsed = None
        self.task = parsed.task  # type: ignore[misc]
        self.label_names = parsed.label_names
        return parsed.sources, parsed.problems + parsed.notes

    def prepare(self, root: str | Path, out: str | Path, *, params: PrepareParams | None = None,
                shard: tuple[int, int] = (0, 1), progress: bool = True, skip_bad_rows: bool = False,
                name: str = "", **options: Any) -> PrepareReport:
        """Refuses rows that ``verify`` rejects (``BadRows`` lists each) unless ``skip_bad_rows``."""
        parsed = self.parse(root, **options)
        if parsed.problems and not skip_bad_rows:
            lines = [f"{p['file']}: line {p['line']}: {p['problem']}" for p in parsed.problems]
            raise BadRows(f"{root}: {len({p['line'] for p in parsed.problems})} bad row(s); fix them or pass "
                          f"skip_bad_rows (--skip-bad-rows) to leave them out:\n  " + "\n  ".join(lines))
        if not parsed.sources:
            raise ValueError(f"{root}: no usable row")
        self._parsed = parsed
        return super().prepare(root, out, params=params, shard=shard, progress=progress,
                               name=name or Path(root).stem, **options)

    def extra_provenance(self, root, sources, out, **options) -> dict[str, Any]:
        return {"name": options.get("name") or Path(root).stem}


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: CSV file not found")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path}: not UTF-8 ({err})") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "id" not in header:
        raise ValueError(f"{csv_path}: missing column id (header: {header})")
    rows = []
    for n, row in enumerate(reader, 2):
        rows.append((n, {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}))
    return header, rows


def _class_list(classes: list[str] | str | None) -> list[str]:
    if not classes:
        return []
    items = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
    if len(set(items)) != len(items) or not all(items):
        raise ValueError(f"own data: classes must be distinct non-empty names, got {items}")
    return items


def _fractions(value: tuple[float, float, float] | str | None) -> tuple[float, float, float]:
    if value is None or value == "":
        return (0.7, 0.1, 0.2)
    parts = [float(x) for x in (value.replace("/", ",").split(",") if isinstance(value, str) else value)]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"own data: split_fractions must be three numbers >= 0 summing to 1, got {value!r}")
    return (parts[0], parts[1], parts[2])


def _label_problems(task: str, column: str, labels: list[str], declared: list[str]) -> list[str]:
    if task == "regression":
        if not labels:
            return [f"empty {column}"]
        bad = [x for x in labels if not _is_number(x)]
        return [f"non-numeric {column} {bad}"] if bad else []
    problems = []
    if task == "multiclass" and len(labels) != 1:
        problems.append(f"single-label data needs exactly one class in column {column}, got {labels or 'none'}"
                        + (" (name the column 'labels' for multi-label data)" if len(labels) > 1 else ""))
    unknown = [c for c in labels if declared and c not in declared]
    if unknown:
        problems.append(f"class(es) {unknown} not in the declared set {declared}")
    return problems


def _is_number(x: str) -> bool:
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def _label_vector(task: str, labels: list[str], names: tuple[str, ...]) -> list[float]:
    if task == "regression":
        return [float(x) for x in labels]
    return [1.0 if c in labels else 0.0 for c in names]


def _times(row: dict[str, str], problems: list[str]) -> tuple[float, float | None]:
    values = {}
    for col in ("start", "end"):
        if row.get(col):
            if not _is_number(row[col]) or float(row[col]) < 0:
                problems.append(f"{col} must be a number of seconds >= 0, got {row[col]!r}")
            else:
                values[col] = float(row[col])
    start, end = values.get("start", 0.0), values.get("end")
    if end is not None and end <= start:
        problems.append(f"end ({end}) must be after start ({start})")
    return start, end


def _images(base: Path, spec: str) -> tuple[tuple[Path, ...], list[str]]:
    if any(ch in spec for ch in "*?["):
        return tuple(Path(p) for p in sorted(glob.glob(str(base / spec)))), []
    paths = [base / p.strip() for p in spec.split(";") if p.strip()]
    return tuple(p for p in paths if p.is_file()), [str(p.relative_to(base)) for p in paths if not p.is_file()]


class _MediaProbe:
    """Container headers of each media file, read once (which tracks a file has decides its modalities)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._memo: dict[Path, Any] = {}

    def __call__(self, path: Path, problems: list[str]):
        from emolib.data.media import MediaError, MediaInfo, probe

        if not self.enabled:  # assume every track; prepare finds out
            return MediaInfo(path=path, duration=None, has_video=True, fps=None, width=None, height=None,
                             n_frames=None, video_codec=None, has_audio=True, sample_rate=None, channels=None,
                             audio_codec=None)
        if path not in self._memo:
            try:
                self._memo[path] = probe(path)
            except MediaError as err:
                self._memo[path] = err
        info = self._memo[path]
        if isinstance(info, MediaError):
            problems.append(f"cannot read {path.name}: {str(info).removeprefix(f'{path}: ')}")
            return None
        return info
