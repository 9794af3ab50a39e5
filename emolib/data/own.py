"""Own data: run the models on your own recordings, listed in a CSV file.

Columns (header required; paths relative to the CSV's folder):

=========  ==========================================================================================
``id``     utterance id (unique; letters, digits, ``_``, ``-``, ``.``)
``video``  a video file with or without audio track (optional when ``images`` is given)
``audio``  an audio file (optional; default: the video's audio track)
``images`` frames as image files when there is no video: a ``;``-separated list or a glob pattern
``start``  / ``end``: seconds within the video/audio (optional; default: the whole file)
``text``   the transcript (may be empty)
``label``  classification: class names separated by ``;`` (multi-label allowed);
           regression (``task="regression"``): one number, or ``M;T;A;V`` numbers like CH-SIMS
``split``  train / valid / test (optional; missing splits are drawn at random 70/10/20 with ``seed``)
``speaker`` optional, kept in the metadata
=========  ==========================================================================================
"""

from __future__ import annotations

import csv
import glob
import re
from pathlib import Path
from typing import Any, ClassVar

from emolib.data.adapter import Adapter, ProtocolUse, VerifyReport
from emolib.data.prepare import UtteranceSource
from emolib.data.splits import random_split
from emolib.labels import SPLITS
from emolib.registry import register

_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
REQUIRED = ("id", "text", "label")


@register("dataset", "own", summary="your own recordings listed in a CSV (video or audio+images, text, labels)",
          layout="CSV: id, video, audio, images, start, end, text, label, split, speaker")
class OwnDataAdapter(Adapter):
    name = "own"
    title = "own data"
    # The task is chosen per CSV (``task=``); the protocols follow from it.
    TASK_PROTOCOLS: ClassVar[dict[str, tuple[ProtocolUse, ...]]] = {
        "multilabel": (
            ProtocolUse("dai-iemocap", "primary: valid-tuned threshold per class, plain accuracy + binary F1"),
            ProtocolUse("e2emal", "fixed 0.5 threshold, weighted accuracy + weighted 2-class F1"),
        ),
        "regression": (ProtocolUse("sims", "primary: CH-SIMS-style regression metrics on the first label column "
                                           "(values clipped to [-1, 1])"),),
    }
    protocols = TASK_PROTOCOLS["multilabel"]
    download_help = "Own data is never downloaded: list your files in a CSV (see emolib.data.own)."

    def __init__(self) -> None:
        self.label_names: tuple[str, ...] = ()

    def protocols_for(self, task: str) -> tuple[ProtocolUse, ...]:
        if task not in self.TASK_PROTOCOLS:
            raise ValueError(f"own data: task must be one of {sorted(self.TASK_PROTOCOLS)}, got {task!r}")
        return self.TASK_PROTOCOLS[task]

    def _rows(self, csv_path: Path) -> list[tuple[int, dict[str, str]]]:
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: CSV file not found")
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"{csv_path}: not UTF-8 ({err})") from None
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        return [(n, {k: (v or "").strip() for k, v in row.items() if k}) for n, row in enumerate(reader, 2)]

    def verify(self, root: str | Path, **options: Any) -> VerifyReport:
        csv_path = Path(root)
        report = VerifyReport(csv_path)
        rows = self._rows(csv_path)
        report.counts["rows"] = len(rows)
        for n, row in rows:
            for col in ("video", "audio"):
                if row.get(col) and not (csv_path.parent / row[col]).is_file():
                    report.missing.append(f"{csv_path}: line {n}: {col} {row[col]}")
            if not row.get("video") and not row.get("images"):
                report.problems.append(f"{csv_path}: line {n}: needs a video or images")
        return report

    def sources(self, root: str | Path, *, task: str = "multilabel", classes: list[str] | None = None,
                seed: int = 0, **_: Any) -> tuple[list[UtteranceSource], list[dict[str, Any]]]:
        csv_path = Path(root)
        base = csv_path.parent
        rows = self._rows(csv_path)
        self.protocols_for(task)  # validates the task
        self.task = task  # type: ignore[misc]
        problems: list[dict[str, Any]] = []
        parsed: list[tuple[int, dict[str, str], list[str]]] = []
        for n, row in rows:
            uid = row["id"]
            if not _ID.match(uid):
                problems.append({"file": str(csv_path), "line": n, "problem": f"bad id {uid!r}"})
                continue
            parsed.append((n, row, [x.strip() for x in row["label"].split(";") if x.strip()]))
        if task == "regression":
            width = max((len(p[2]) for p in parsed), default=1)
            self.label_names = ("M", "T", "A", "V")[:width] if width > 1 else ("M",)
        else:
            self.label_names = tuple(classes) if classes else tuple(sorted({c for *_, cs in parsed for c in cs}))
        assign = random_split([row["id"] for _, row, _ in parsed if not row.get("split")], seed=seed)
        sources = []
        for n, row, labels in parsed:
            vec = self._label_vector(labels, csv_path, n, problems)
            if vec is None:
                continue
            split = row.get("split") or assign[row["id"]]
            if split not in SPLITS:
                problems.append({"file": str(csv_path), "line": n, "problem": f"unknown split {split!r}"})
                continue
            images = self._images(base, row.get("images", ""))
            sources.append(UtteranceSource(
                uid=row["id"], labels=vec, text=row.get("text", ""), split=split,
                video=base / row["video"] if row.get("video") else None,
                audio=base / row["audio"] if row.get("audio") else None,
                start=float(row["start"]) if row.get("start") else 0.0,
                end=float(row["end"]) if row.get("end") else None,
                images=images,
                meta={"speaker": row.get("speaker") or None, "label_raw": row["label"]},
            ))
        return sources, problems

    def _label_vector(self, labels: list[str], csv_path: Path, line: int, problems: list) -> list[float] | None:
        if self.task == "regression":
            try:
                values = [float(x) for x in labels]
            except ValueError:
                problems.append({"file": str(csv_path), "line": line, "problem": f"non-numeric label {labels}"})
                return None
            if len(values) != len(self.label_names):
                problems.append({"file": str(csv_path), "line": line,
                                 "problem": f"expected {len(self.label_names)} label values, got {len(values)}"})
                return None
            return values
        unknown = [c for c in labels if c not in self.label_names]
        if unknown:
            problems.append({"file": str(csv_path), "line": line, "problem": f"unknown class(es) {unknown}"})
            return None
        return [1.0 if c in labels else 0.0 for c in self.label_names]

    @staticmethod
    def _images(base: Path, spec: str) -> tuple[Path, ...]:
        if not spec:
            return ()
        if any(ch in spec for ch in "*?["):
            return tuple(Path(p) for p in sorted(glob.glob(str(base / spec))))
        return tuple(base / p.strip() for p in spec.split(";") if p.strip())
