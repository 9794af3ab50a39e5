"""Parsers and writers for the raw label/transcript files of IEMOCAP, CMU-MOSEI and CH-SIMS.

The synthetic generator (``emolib.data.synthetic``) writes its miniature releases with the ``format_*``
functions below and the preprocessing code reads real and synthetic releases with the ``parse_*`` functions,
so both sides agree on one definition of each layout:

* IEMOCAP ``Session*/dialog/EmoEvaluation/<dialog>.txt``: a ``%`` header, then blank-line separated blocks
  whose first line is ``[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]`` followed by evaluator lines
  (``C-E1:<TAB>Neutral state;<TAB>()``, ``A-E1:<TAB>val 3; act 2; dom  3;<TAB>()``). Only ``[``-lines carry
  the consensus label and are parsed; evaluator lines are ignored.
* IEMOCAP ``Session*/dialog/transcriptions/<dialog>.txt``: ``utt_id [SSS.SSSS-EEE.EEEE]: text``. Lines of
  non-utterances (``Ses01F_impro01_MXX0 ...`` overlaps, ``M: [BREATHING]`` notes) are not data and are skipped
  by design; a line whose id *is* an utterance id but is malformed is a problem.
* CMU-MOSEI ``Transcript/Combined/<vid>.txt``: ``vid___clip___start___end___text``; the text may itself
  contain ``___`` (only the first four separators split).
* CMU-MOSEI ``Labels/*.csv``: raw MTurk answer CSVs. Dai's notebook reads ``Input.VIDEO_ID`` (last ``/``
  component), ``Input.CLIP`` and ``Answer.{anger,disgust,fear,happiness,sadness,surprise}``, forms the id
  ``<video_id>_<clip>``, sums every emotion over all annotator rows of an id and marks it present iff the sum
  is > 0 (``aggregate_mosei_labels``).
* CH-SIMS ``label.csv`` (MMSA layout): ``video_id, clip_id, text, label, label_T, label_A, label_V,
  annotation, mode``; ids and text stay strings (``clip_id`` keeps its zero padding).

Error policy, shared by every parser: by default the first bad line raises :class:`FormatError`
(a ``ValueError``) whose message starts with ``"<file>: line <n>: "``. Passing a list as ``problems`` switches
to skip-and-report: bad lines are left out of the result and a :class:`LineProblem` is appended for each.
Files must be UTF-8 (a leading BOM is ignored); invalid bytes raise, or in skip-and-report mode the file is
decoded with U+FFFD replacement characters and every affected line is reported (the line itself is still
parsed, because a damaged character in a transcript rarely makes the row useless).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from emolib.labels import IEMOCAP_CLASSES, IEMOCAP_OTHER, MOSEI_EMOTIONS, SPLITS

PathLike = str | os.PathLike


class LineProblem(NamedTuple):
    """One unusable line: which file, which 1-based line, and what is wrong with it."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}: line {self.line}: {self.message}"


class FormatError(ValueError):
    """A raw-release file does not follow its format; the message names the file and the line."""

    def __init__(self, problem: LineProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class _Reporter:
    """Raises on the first problem, or collects problems when the caller passed a list."""

    def __init__(self, path: PathLike, problems: list[LineProblem] | None) -> None:
        self.path = os.fspath(path)
        self.problems = problems

    @property
    def collecting(self) -> bool:
        return self.problems is not None

    def report(self, line: int, message: str) -> None:
        problem = LineProblem(self.path, line, message)
        if self.problems is None:
            raise FormatError(problem)
        self.problems.append(problem)


# --------------------------------------------------------------------------------------------------------
# Decoding


def read_text(path: PathLike, *, problems: list[LineProblem] | None = None) -> str:
    """Return the UTF-8 text of ``path`` (BOM removed), applying the module's decoding policy."""
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        reporter = _Reporter(path, problems)
        bad_lines = _undecodable_lines(raw)
        if not reporter.collecting:
            line = raw.count(b"\n", 0, err.start) + 1
            reporter.report(line, f"not valid UTF-8 (byte offset {err.start}: {err.reason})")
        for line in bad_lines:
            reporter.report(line, "not valid UTF-8; undecodable bytes replaced by U+FFFD")
        return raw.decode("utf-8", errors="replace")


def _undecodable_lines(raw: bytes) -> list[int]:
    bad = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(number)
    return bad


def _lines(text: str) -> list[str]:
    # str.splitlines would also break on \x0b, \x1c, U+2028 ..., which can occur inside transcripts.
    return [line.rstrip("\r") for line in text.split("\n")]


def _float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {text!r}")
    return value


# --------------------------------------------------------------------------------------------------------
# IEMOCAP

IEMOCAP_LABEL_CODES = IEMOCAP_CLASSES + IEMOCAP_OTHER
# Category names the IEMOCAP evaluators use in the "C-" lines, by consensus code.
IEMOCAP_CATEGORY_NAMES = {
    "ang": "Anger",
    "exc": "Excited",
    "fru": "Frustration",
    "hap": "Happiness",
    "neu": "Neutral state",
    "sad": "Sadness",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}
IEMOCAP_EVALUATION_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

# Ses01F_impro01_F000, Ses03M_script02_1_M012: session token, dialog name, speaker gender, 3-digit index.
IEMOCAP_UTTERANCE_RE = re.compile(
    r"^(?P<dialog>(?P<session>Ses\d\d[FM])_[A-Za-z0-9_]+?)_(?P<gender>[FM])(?P<index>\d{3})$"
)
_NUM = r"[-+]?\d+(?:\.\d*)?"
_EVAL_RE = re.compile(
    rf"^\[\s*(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+"
    rf"\[\s*(?P<v>{_NUM})\s*,\s*(?P<a>{_NUM})\s*,\s*(?P<d>{_NUM})\s*\]\s*$"
)
_TRANS_RE = re.compile(rf"^(?P<utt>\S+)\s+\[(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\]:\s?(?P<text>.*)$")


class IemocapEvaluation(NamedTuple):
    """Consensus annotation of one utterance: times in seconds, 3-letter label, mean (V, A, D)."""

    utt_id: str
    start: float
    end: float
    label: str
    vad: tuple[float, float, float]


class IemocapTurn(NamedTuple):
    """One transcription line: utterance id, times in seconds, transcript text."""

    utt_id: str
    start: float
    end: float
    text: str


class IemocapBlock(NamedTuple):
    """Everything a writer needs for one EmoEvaluation block (consensus line plus evaluator lines)."""

    evaluation: IemocapEvaluation
    categorical: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # (rater, category names, comment)
    dimensional: tuple[tuple[str, tuple[int, int, int]], ...] = ()  # (rater, (val, act, dom))


def is_iemocap_utterance_id(utt_id: str) -> bool:
    return IEMOCAP_UTTERANCE_RE.match(utt_id) is not None


def iemocap_dialog(utt_id: str) -> str:
    """Dialog name of an utterance id: everything before the speaker token (``Ses01F_script01_1``)."""
    return _iemocap_match(utt_id).group("dialog")


def iemocap_use_left(utt_id: str) -> bool:
    """Dai's speaker-side rule (``IEMOCAP.use_left`` in ``wenliangdai/Multimodal-End2end-Sparse: src/datasets.py``):
    left image half / channel 0 iff the session's gender letter equals the speaker letter of the utterance
    (``Ses01F_..._F000`` -> left, ``Ses01F_..._M000`` -> right)."""
    match = _iemocap_match(utt_id)
    return match.group("session")[-1] == match.group("gender")


def _iemocap_match(utt_id: str) -> re.Match[str]:
    match = IEMOCAP_UTTERANCE_RE.match(utt_id)
    if match is None:
        raise ValueError(f"not an IEMOCAP utterance id: {utt_id!r} (expected e.g. Ses01F_impro01_F000)")
    return match


def parse_iemocap_evaluation(
    path: PathLike, *, problems: list[LineProblem] | None = None
) -> list[IemocapEvaluation]:
    """Consensus lines (those starting with ``[``) of one EmoEvaluation file, in file order."""
    reporter = _Reporter(path, problems)
    rows: list[IemocapEvaluation] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(_lines(read_text(path, problems=problems)), start=1):
        if not line.startswith("["):
            continue
        match = _EVAL_RE.match(line)
        if match is None:
            expected = "'[start - end]<TAB>id<TAB>label<TAB>[V, A, D]'"
            reporter.report(number, f"malformed evaluation line (expected {expected}): {line!r}")
            continue
        start, end = float(match["start"]), float(match["end"])
        utt, label = match["utt"], match["label"]
        problem = _check_iemocap_row(utt, start, end, seen)
        if problem is None and label not in IEMOCAP_LABEL_CODES:
            problem = f"unknown label {label!r} (expected one of {', '.join(IEMOCAP_LABEL_CODES)})"
        if problem is not None:
            reporter.report(number, problem)
            continue
        seen[utt] = number
        vad = (float(match["v"]), float(match["a"]), float(match["d"]))
        rows.append(IemocapEvaluation(utt, start, end, label, vad))
    return rows


def parse_iemocap_transcription(
    path: PathLike, *, problems: list[LineProblem] | None = None
) -> list[IemocapTurn]:
    """Utterance lines of one transcription file, in file order; non-utterance lines are skipped."""
    reporter = _Reporter(path, problems)
    rows: list[IemocapTurn] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(_lines(read_text(path, problems=problems)), start=1):
        token = line.split(maxsplit=1)[0] if line.strip() else ""
        if not is_iemocap_utterance_id(token):
            continue
        match = _TRANS_RE.match(line)
        if match is None:
            reporter.report(number, f"malformed transcription line (expected 'id [start-end]: text'): {line!r}")
            continue
        start, end = float(match["start"]), float(match["end"])
        problem = _check_iemocap_row(token, start, end, seen)
        if problem is not None:
            reporter.report(number, problem)
            continue
        seen[token] = number
        rows.append(IemocapTurn(token, start, end, match["text"].strip()))
    return rows


def _check_iemocap_row(utt: str, start: float, end: float, seen: dict[str, int]) -> str | None:
    if not is_iemocap_utterance_id(utt):
        return f"not an IEMOCAP utterance id: {utt!r}"
    if utt in seen:
        return f"duplicate utterance id {utt} (first on line {seen[utt]})"
    if not 0 <= start < end:
        return f"bad time interval [{start} - {end}] for {utt}"
    return None


def format_iemocap_evaluation(blocks: Iterable[IemocapBlock]) -> str:
    """Text of an EmoEvaluation file: header, blank line, one block per utterance, each followed by a blank."""
    parts = [IEMOCAP_EVALUATION_HEADER, ""]
    for block in blocks:
        ev = block.evaluation
        v, a, d = ev.vad
        parts.append(f"[{ev.start:.4f} - {ev.end:.4f}]\t{ev.utt_id}\t{ev.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
        for rater, categories, comment in block.categorical:
            parts.append(f"{rater}:\t{''.join(c + '; ' for c in categories).rstrip()}\t({comment})")
        for rater, (val, act, dom) in block.dimensional:
            parts.append(f"{rater}:\tval {val}; act {act}; dom {dom:>2};\t()")
        parts.append("")
    return "\n".join(parts) + "\n"


def format_iemocap_transcription(turns: Iterable[IemocapTurn]) -> str:
    """Text of a transcription file; ids that are not utterance ids (``..._MXX0``) are written as given."""
    return "".join(f"{t.utt_id} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}\n" for t in turns)


# --------------------------------------------------------------------------------------------------------
# CMU-MOSEI

MOSEI_VIDEO_COLUMN = "Input.VIDEO_ID"
MOSEI_CLIP_COLUMN = "Input.CLIP"
MOSEI_ANSWER_COLUMNS = tuple(f"Answer.{name}" for name in MOSEI_EMOTIONS)
MOSEI_WORKER_COLUMN = "WorkerId"
_MOSEI_SEGMENT_RE = re.compile(rf"^(?P<vid>.+?)___(?P<clip>\d+)___(?P<start>{_NUM})___(?P<end>{_NUM})___(?P<text>.*)$")


class MoseiSegment(NamedTuple):
    """One transcript segment: the utterance ``<video_id>_<clip>`` with its times (s) and text."""

    video_id: str
    clip: int
    start: float
    end: float
    text: str

    @property
    def utt_id(self) -> str:
        return mosei_utterance_id(self.video_id, self.clip)


class MoseiAnnotation(NamedTuple):
    """One MTurk answer row: which clip, which worker, and the six intensities in MOSEI_EMOTIONS order."""

    video_id: str
    clip: int
    worker: str
    answers: tuple[float, ...]

    @property
    def utt_id(self) -> str:
        return mosei_utterance_id(self.video_id, self.clip)


def mosei_utterance_id(video_id: str, clip: int | str) -> str:
    """Dai's id: last ``/`` component of the video id, underscore, clip index."""
    return f"{str(video_id).split('/')[-1]}_{clip}"


def parse_mosei_transcript(path: PathLike, *, problems: list[LineProblem] | None = None) -> list[MoseiSegment]:
    """Segments of one ``Transcript/Combined/<vid>.txt`` file, in file order (blank lines are ignored)."""
    reporter = _Reporter(path, problems)
    rows: list[MoseiSegment] = []
    seen: dict[tuple[str, int], int] = {}
    for number, line in enumerate(_lines(read_text(path, problems=problems)), start=1):
        if not line.strip():
            continue
        match = _MOSEI_SEGMENT_RE.match(line)
        if match is None:
            reporter.report(number, f"malformed segment (expected 'vid___clip___start___end___text'): {line!r}")
            continue
        key = (match["vid"], int(match["clip"]))
        start, end = float(match["start"]), float(match["end"])
        if key in seen:
            reporter.report(number, f"duplicate clip {key[1]} of {key[0]} (first on line {seen[key]})")
            continue
        if not start < end:
            reporter.report(number, f"bad time interval {start}..{end}")
            continue
        seen[key] = number
        rows.append(MoseiSegment(key[0], key[1], start, end, match["text"].strip()))
    return rows


def format_mosei_transcript(segments: Iterable[MoseiSegment]) -> str:
    return "".join(f"{s.video_id}___{s.clip}___{s.start:.3f}___{s.end:.3f}___{s.text}\n" for s in segments)


def parse_mosei_label_csv(path: PathLike, *, problems: list[LineProblem] | None = None) -> list[MoseiAnnotation]:
    """Answer rows of one MTurk CSV. Empty answer cells count as 0 (as pandas' NaN-skipping sum does).

    A missing required column is a file-level error and raises even when ``problems`` is given."""
    reporter = _Reporter(path, problems)
    reader = csv.DictReader(io.StringIO(read_text(path, problems=problems), newline=""))
    required = (MOSEI_VIDEO_COLUMN, MOSEI_CLIP_COLUMN, *MOSEI_ANSWER_COLUMNS)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        _Reporter(path, None).report(1, f"missing column(s) {', '.join(missing)}")
    rows: list[MoseiAnnotation] = []
    for record in reader:
        try:
            rows.append(_mosei_annotation(record))
        except ValueError as err:
            reporter.report(reader.line_num, str(err))
    return rows


def _mosei_annotation(record: dict[str, str | None]) -> MoseiAnnotation:
    if None in record:
        raise ValueError("more fields than the header has columns")
    if any(record[c] is None for c in (MOSEI_VIDEO_COLUMN, MOSEI_CLIP_COLUMN, *MOSEI_ANSWER_COLUMNS)):
        raise ValueError("fewer fields than the header has columns")
    video = (record[MOSEI_VIDEO_COLUMN] or "").strip()
    if not video or not video.split("/")[-1]:
        raise ValueError(f"empty {MOSEI_VIDEO_COLUMN}")
    clip_text = (record[MOSEI_CLIP_COLUMN] or "").strip()
    if not clip_text.isdigit():
        raise ValueError(f"{MOSEI_CLIP_COLUMN} is not a clip index: {clip_text!r}")
    answers = []
    for column in MOSEI_ANSWER_COLUMNS:
        cell = (record[column] or "").strip()
        try:
            value = _float(cell) if cell else 0.0
        except ValueError:
            raise ValueError(f"{column} is not a number: {cell!r}") from None
        if value < 0:
            raise ValueError(f"{column} is negative: {cell!r}")
        answers.append(value)
    worker = (record.get(MOSEI_WORKER_COLUMN) or "").strip()
    return MoseiAnnotation(video.split("/")[-1], int(clip_text), worker, tuple(answers))


def parse_mosei_labels(labels_dir: PathLike, *, problems: list[LineProblem] | None = None) -> list[MoseiAnnotation]:
    """Answer rows of every ``*.csv`` in ``labels_dir`` (sorted by file name, so the order is stable)."""
    paths = sorted(Path(labels_dir).glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"{labels_dir}: no label CSV files")
    rows: list[MoseiAnnotation] = []
    for path in paths:
        rows.extend(parse_mosei_label_csv(path, problems=problems))
    return rows


def aggregate_mosei_labels(annotations: Iterable[MoseiAnnotation]) -> dict[str, tuple[int, ...]]:
    """Dai's rule: per id, sum each emotion over all annotator rows; present (1) iff the sum is > 0.

    Keys keep the order of first appearance; the vector is in ``labels.MOSEI_EMOTIONS`` order."""
    sums: dict[str, list[float]] = {}
    for row in annotations:
        acc = sums.setdefault(row.utt_id, [0.0] * len(MOSEI_EMOTIONS))
        for i, value in enumerate(row.answers):
            acc[i] += value
    return {uid: tuple(int(v > 0) for v in acc) for uid, acc in sums.items()}


def format_mosei_label_csv(
    annotations: Iterable[MoseiAnnotation], extra: Sequence[dict[str, str]] | None = None
) -> str:
    """CSV text with the columns Dai reads plus ``WorkerId``.

    ``extra`` holds one dict per row of further MTurk columns (same keys in every row): ``Answer.*`` columns
    go after the six emotions, all others (``HITId``, ``AssignmentId`` ...) before ``WorkerId``."""
    rows = list(annotations)
    extra_rows = list(extra) if extra is not None else [{} for _ in rows]
    if len(extra_rows) != len(rows):
        raise ValueError("extra must have one dict per annotation row")
    extra_cols = list(extra_rows[0]) if extra_rows else []
    before = [c for c in extra_cols if not c.startswith("Answer.")]
    after = [c for c in extra_cols if c.startswith("Answer.")]
    header = [*before, MOSEI_WORKER_COLUMN, MOSEI_VIDEO_COLUMN, MOSEI_CLIP_COLUMN, *MOSEI_ANSWER_COLUMNS, *after]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row, more in zip(rows, extra_rows):
        cells = {MOSEI_WORKER_COLUMN: row.worker, MOSEI_VIDEO_COLUMN: row.video_id, MOSEI_CLIP_COLUMN: str(row.clip)}
        cells.update({c: _number_text(v) for c, v in zip(MOSEI_ANSWER_COLUMNS, row.answers)})
        cells.update(more)
        writer.writerow([cells[c] for c in header])
    return out.getvalue()


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------------------------------------
# CH-SIMS

SIMS_COLUMNS = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode")
SIMS_ANNOTATIONS = ("Negative", "Neutral", "Positive")


class SimsRow(NamedTuple):
    """One ``label.csv`` row; the four labels are floats in [-1, 1]."""

    video_id: str
    clip_id: str
    text: str
    label: float
    label_T: float
    label_A: float
    label_V: float
    annotation: str
    mode: str

    @property
    def uid(self) -> str:
        """MMSA's id, ``video_id$_$clip_id``."""
        return f"{self.video_id}$_${self.clip_id}"


def sims_annotation(label: float) -> str:
    """Polarity word of a multimodal label, as ``annotation`` stores it."""
    return "Negative" if label < 0 else ("Positive" if label > 0 else "Neutral")


def parse_sims_labels(path: PathLike, *, problems: list[LineProblem] | None = None) -> list[SimsRow]:
    """Rows of an MMSA ``label.csv``; extra columns are allowed, the nine standard ones are required (a missing
    one raises even when ``problems`` is given)."""
    reporter = _Reporter(path, problems)
    reader = csv.DictReader(io.StringIO(read_text(path, problems=problems), newline=""))
    missing = [c for c in SIMS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        _Reporter(path, None).report(1, f"missing column(s) {', '.join(missing)}")
    rows: list[SimsRow] = []
    seen: dict[tuple[str, str], int] = {}
    for record in reader:
        try:
            row = _sims_row(record)
        except ValueError as err:
            reporter.report(reader.line_num, str(err))
            continue
        key = (row.video_id, row.clip_id)
        if key in seen:
            reporter.report(reader.line_num, f"duplicate clip {row.uid} (first on line {seen[key]})")
            continue
        seen[key] = reader.line_num
        rows.append(row)
    return rows


def _sims_row(record: dict[str, str | None]) -> SimsRow:
    if None in record:
        raise ValueError("more fields than the header has columns")
    if any(record[c] is None for c in SIMS_COLUMNS):
        raise ValueError("fewer fields than the header has columns")
    video_id, clip_id = record["video_id"].strip(), record["clip_id"].strip()
    if not video_id or not clip_id:
        raise ValueError("empty video_id or clip_id")
    values = []
    for column in ("label", "label_T", "label_A", "label_V"):
        try:
            value = _float(record[column].strip())
        except ValueError:
            raise ValueError(f"{column} is not a number: {record[column]!r}") from None
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{column} = {value} is outside [-1, 1]")
        values.append(value)
    annotation, mode = record["annotation"].strip(), record["mode"].strip()
    if annotation not in SIMS_ANNOTATIONS:
        raise ValueError(f"annotation {annotation!r} is not one of {', '.join(SIMS_ANNOTATIONS)}")
    if mode not in SPLITS:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(SPLITS)}")
    return SimsRow(video_id, clip_id, record["text"], *values, annotation, mode)


def format_sims_labels(rows: Iterable[SimsRow]) -> str:
    """CSV text with the nine MMSA columns; fields with commas, quotes or newlines are quoted."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(SIMS_COLUMNS)
    for row in rows:
        writer.writerow([row.video_id, row.clip_id, row.text, *map(_label_text, row[3:7]), row.annotation, row.mode])
    return out.getvalue()


def _label_text(value: float) -> str:
    # CH-SIMS labels live on a 0.2 grid and are written "-0.8"; anything else keeps full precision.
    short = f"{value:.1f}"
    return short if float(short) == value else repr(float(value))
