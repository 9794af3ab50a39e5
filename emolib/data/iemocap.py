"""IEMOCAP: the original release and Dai's processed layout (written by
``wenliangdai/Multimodal-End2end-Sparse: preprocessing/preprocess_iemocap.ipynb``, read by ``src/datasets.py``).

Original release (gated; the user brings the copy)::

    Session{1..5}/dialog/avi/DivX/<dialog>.avi        two actors side by side
    Session{1..5}/dialog/wav/<dialog>.wav             stereo 16 kHz, one channel per actor
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt   consensus labels with start/end times
    Session{1..5}/dialog/transcriptions/<dialog>.txt

Each utterance keeps the speaker's half of the frame and the speaker's channel (Dai's rule: the session's
gender letter equals the utterance's speaker letter -> left half and channel 0, else right and channel 1). The
6-class protocol keeps ang, exc, fru, hap, neu, sad (one-hot, Dai's order) and drops every other label.

Dai's processed layout (``IEMOCAP_RAW_PROCESSED/<dialog>/<uid>/image_{L,R}_{i}.jpg``, ``audio_{L,R}.wav``,
``meta.pkl`` and ``IEMOCAP_SPLIT/*_split.txt``) is read directly: frames are taken from the stored JPEGs every
``round(img_interval / 1000 * fps)`` images (Dai's loader assumes 30 fps), no video is decoded again, and
``meta.pkl`` is read with a restricted unpickler.

Splits: Dai's random utterance-level 70/10/20 over all sessions, drawn with a seed (``seed``), or a user's split
folder in Dai's format (``split_dir``). The split used is written next to the cache (``split/``) with its hash.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from emolib.data.adapter import Adapter, ProtocolUse, VerifyReport, is_synthetic, problem_dicts
from emolib.data.formats import (
    LineProblem,
    iemocap_dialog,
    iemocap_use_left,
    parse_iemocap_evaluation,
    parse_iemocap_transcription,
)
from emolib.data.prepare import UtteranceSource
from emolib.data.splits import random_split, read_split_dir, write_split_dir
from emolib.deviations import Deviation
from emolib.labels import IEMOCAP_CLASSES
from emolib.registry import register

DAI_PROCESSED = "IEMOCAP_RAW_PROCESSED"
DAI_SPLIT = "IEMOCAP_SPLIT"
# Counts of the full release (7380 = the ids in Dai's split files,
# wenliangdai/Multimodal-End2end-Sparse "data split/IEMOCAP_split/"); checked by verify() on a non-synthetic copy.
FULL_RELEASE = {"sessions": 5, "utterances_6class": 7380}
_IMAGE = re.compile(r"^image_(?P<side>[LR])_(?P<i>\d+)\.jpg$")


def _one_hot(label: str) -> list[float]:
    return [1.0 if c == label else 0.0 for c in IEMOCAP_CLASSES]


@register("dataset", "iemocap", summary="IEMOCAP 6-class (ang exc fru hap neu sad): original release or Dai's layout",
          download="gated (bring your own copy)")
class IemocapAdapter(Adapter):
    name = "iemocap"
    title = "IEMOCAP"
    label_names = IEMOCAP_CLASSES
    # preprocess_iemocap.ipynb: the speaker's half centre-cropped to 224 px; MTCNN(image_size=48, margin=2) and
    # its no-face window in src/models/e2e.py.
    dai_prepare = {"frame_center_crop": 224, "margin_size": 48, "face_fallback": "dai", "face_codec": "raw"}
    deviations = Adapter.deviations + (
        Deviation("data.split_dir", "split: Dai's published lists (emolib download --splits dai) vs a seeded random "
                  "utterance-level 70/10/20 drawn like Dai's", "emolib",
                  "'' (seeded 70/10/20) | data/splits/dai/IEMOCAP_SPLIT (Dai's lists; the paper profile)",
                  "data split/IEMOCAP_split in wenliangdai/Multimodal-End2end-Sparse"),
        Deviation("prepare.frame_center_crop", "MTCNN sees the speaker's half centre-cropped to 224 px in Dai's data; "
                  "the emolib recipe gives it the whole half", "emolib", "None (emolib) | 224 (Dai; paper profile)",
                  "preprocessing/preprocess_iemocap.ipynb"),
        Deviation("prepare.margin_size", "facenet's 2 px margin is defined at Dai's 48 px output (box +4 %); the "
                  "emolib recipe applies it at the stored crop size", "emolib", "None (emolib) | 48 (Dai)",
                  "src/models/e2e.py"),
        Deviation("prepare.face_fallback", "frames without a face: Dai's 48 px window (24 px left of centre) vs a "
                  "centred square", "emolib", "center (emolib) | dai (Dai)", "src/models/e2e.py"),
    )
    protocols = (
        ProtocolUse("dai-iemocap", "primary: the protocol of Dai et al.'s IEMOCAP table (plain accuracy + binary F1)"),
        ProtocolUse("e2emal", "E2EMAL's metric definitions (0.5 threshold, wA, weighted F1); E2EMAL did not use "
                              "IEMOCAP"),
    )
    download_help = ("IEMOCAP is gated: request it from USC SAIL (https://sail.usc.edu/iemocap/), then point "
                     "prepare/verify at the folder holding Session1..Session5.")

    # -- discovery ---------------------------------------------------------------------------------------------
    @staticmethod
    def dialogs(root: Path) -> list[tuple[str, Path]]:
        """(dialog name, session folder) for every EmoEvaluation file."""
        out = []
        for ev in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
            out.append((ev.stem, ev.parents[2]))
        return out

    def verify(self, root: str | Path) -> VerifyReport:
        root = Path(root)
        report = VerifyReport(root)
        if (root / DAI_PROCESSED).is_dir():
            return self._verify_dai(root, report)
        sessions = sorted(p for p in root.glob("Session*") if p.is_dir())
        report.counts["sessions"] = len(sessions)
        if not sessions:
            report.missing.append(f"{root}/Session1..Session5 (no Session* folder)")
            return report
        dialogs = self.dialogs(root)
        report.counts["dialogs"] = len(dialogs)
        n6 = 0
        problems: list[LineProblem] = []
        for dialog, session in dialogs:
            d = session / "dialog"
            for rel in (f"avi/DivX/{dialog}.avi", f"wav/{dialog}.wav", f"transcriptions/{dialog}.txt"):
                if not (d / rel).is_file():
                    report.missing.append(str(d / rel))
            rows = parse_iemocap_evaluation(d / "EmoEvaluation" / f"{dialog}.txt", problems=problems)
            n6 += sum(r.label in IEMOCAP_CLASSES for r in rows)
        report.counts["utterances_6class"] = n6
        report.problems += [str(p) for p in problems]
        if not is_synthetic(root):
            for key, expected in FULL_RELEASE.items():
                if report.counts.get(key) != expected:
                    report.problems.append(f"{key}: found {report.counts.get(key)}, the full release has {expected}")
        return report

    def _verify_dai(self, root: Path, report: VerifyReport) -> VerifyReport:
        main = root / DAI_PROCESSED
        if not (main / "meta.pkl").is_file():
            report.missing.append(str(main / "meta.pkl"))
        split_dir = root / DAI_SPLIT
        try:
            split = read_split_dir(split_dir)
        except (FileNotFoundError, ValueError) as err:
            report.missing.append(str(err))
            return report
        report.counts["split_ids"] = len(split)
        folders = {p.name: p for p in main.glob("*/*") if p.is_dir()}
        report.counts["utterance_folders"] = len(folders)
        for uid in sorted(split):
            side = "L" if iemocap_use_left(uid) else "R"
            folder = folders.get(uid)
            if folder is None:
                report.missing.append(f"{main}/<dialog>/{uid}/")
                continue
            if not (folder / f"audio_{side}.wav").is_file():
                report.missing.append(str(folder / f"audio_{side}.wav"))
            if not any(folder.glob(f"image_{side}_*.jpg")):
                report.missing.append(f"{folder}/image_{side}_*.jpg")
        return report

    # -- sources -----------------------------------------------------------------------------------------------
    def sources(self, root: str | Path, *, split_dir: str | Path | None = None, seed: int = 0,
                img_interval: int = 500, dai_fps: float = 30.0, **_: Any):
        root = Path(root)
        if (root / DAI_PROCESSED).is_dir():
            return self._dai_sources(root, split_dir or root / DAI_SPLIT, img_interval, dai_fps)
        problems: list[LineProblem] = []
        items = []
        dropped: dict[str, int] = {}
        for dialog, session in self.dialogs(root):
            d = session / "dialog"
            texts = {t.utt_id: t.text for t in
                     parse_iemocap_transcription(d / "transcriptions" / f"{dialog}.txt", problems=problems)} \
                if (d / "transcriptions" / f"{dialog}.txt").is_file() else {}
            for row in parse_iemocap_evaluation(d / "EmoEvaluation" / f"{dialog}.txt", problems=problems):
                if row.label not in IEMOCAP_CLASSES:
                    dropped[row.label] = dropped.get(row.label, 0) + 1
                    continue
                left = iemocap_use_left(row.utt_id)
                items.append(UtteranceSource(
                    uid=row.utt_id, labels=_one_hot(row.label), text=texts.get(row.utt_id, ""),
                    video=d / "avi" / "DivX" / f"{dialog}.avi", audio=d / "wav" / f"{dialog}.wav",
                    start=row.start, end=row.end, half="left" if left else "right", audio_channel=0 if left else 1,
                    meta={"label_raw": row.label, "dialog": dialog, "speaker": row.utt_id.rsplit("_", 1)[1][0],
                          "side": "L" if left else "R", "vad": list(row.vad)},
                ))
        split = self._split(items, split_dir, seed)
        kept = []
        for s in items:
            if s.uid in split:
                s.split = split[s.uid]
                kept.append(s)
        self._last = {"dropped_labels": dict(sorted(dropped.items())), "split": split}
        return kept, problem_dicts(problems)

    def _split(self, items: list[UtteranceSource], split_dir, seed: int) -> dict[str, str]:
        if split_dir is not None:
            return read_split_dir(split_dir)
        return random_split([s.uid for s in items], seed=seed)

    def _dai_sources(self, root: Path, split_dir, img_interval: int, fps: float):
        from emolib.data.safe_pickle import load_restricted

        main = root / DAI_PROCESSED
        meta = load_restricted(main / "meta.pkl")
        if not isinstance(meta, dict):
            raise ValueError(f"{main / 'meta.pkl'}: expected a dict of utterance id -> metadata")
        split = read_split_dir(split_dir)
        folders = {p.name: p for p in main.glob("*/*") if p.is_dir()}
        step = max(1, int(img_interval / 1000 * fps))
        items, problems = [], []
        for uid in sorted(split):
            m = meta.get(uid)
            if m is None or uid not in folders:
                problems.append({"file": str(main), "line": 0,
                                 "problem": f"{uid}: listed in the split but missing from meta.pkl or the folders"})
                continue
            label = m.get("label")
            if label not in IEMOCAP_CLASSES:
                problems.append({"file": str(main / "meta.pkl"), "line": 0, "problem": f"{uid}: label {label!r}"})
                continue
            side = "L" if iemocap_use_left(uid) else "R"
            # Count image files explicitly (Dai's loader infers the count from the number of files).
            indices = sorted(int(mm["i"]) for p in folders[uid].iterdir()
                             if (mm := _IMAGE.match(p.name)) and mm["side"] == side)
            chosen = [i for i in indices if i % step == 0]
            items.append(UtteranceSource(
                uid=uid, labels=_one_hot(label), text=str(m.get("text", "")), split=split[uid],
                audio=folders[uid] / f"audio_{side}.wav",
                images=tuple(folders[uid] / f"image_{side}_{i}.jpg" for i in chosen),
                image_times=tuple(i / float(m.get("fps") or fps) for i in chosen),
                start=0.0, end=None,
                meta={"label_raw": label, "dialog": iemocap_dialog(uid), "side": side, "layout": "dai"},
            ))
        self._last = {"dropped_labels": {}, "split": split}
        return items, problems

    def extra_provenance(self, root, sources, out, **options) -> dict[str, Any]:
        split = {s.uid: s.split for s in sources}
        digest = write_split_dir(split, Path(out) / "split")
        return {"split_hash": digest, "split_source": str(options.get("split_dir") or f"random seed "
                f"{options.get('seed', 0)}"), "dropped_labels": self._last.get("dropped_labels", {})}

