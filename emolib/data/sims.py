"""CH-SIMS in the MMSA layout (``thuiar/MMSA: README.md``, ``thuiar/MMSA-FET: src/MSA_FET/dataset.py``).

::

    SIMS/label.csv                      video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode
    SIMS/Raw/<video_id>/<clip_id>.mp4   clip with its audio track

Targets are regression values in [-1, 1]: the multimodal label M and the independent unimodal annotations
T, A, V (columns in ``SIMS_TARGETS`` order). The split is the official ``mode`` column. The cache id of a clip is
``<video_id>_<clip_id>``; MMSA's ``video_id$_$clip_id`` is kept in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emolib.data.adapter import Adapter, ProtocolUse, VerifyReport, is_synthetic, problem_dicts
from emolib.data.formats import LineProblem, parse_sims_labels
from emolib.data.prepare import UtteranceSource
from emolib.labels import SIMS_TARGETS
from emolib.registry import register

FULL_RELEASE = {"clips": 2281}


@register("dataset", "sims", summary="CH-SIMS sentiment regression with M/T/A/V labels (MMSA layout)",
          download="by request (MMSA README links)")
class SimsAdapter(Adapter):
    name = "sims"
    title = "CH-SIMS"
    task = "regression"
    label_names = SIMS_TARGETS
    protocols = (ProtocolUse("sims", "primary: MMSA / khanhnd185 CH-SIMS regression metrics on the M label"),)
    download_help = ("CH-SIMS is distributed by the MMSA authors through cloud-drive links in the thuiar/MMSA "
                     "README; put label.csv and Raw/ under one folder.")

    def verify(self, root: str | Path) -> VerifyReport:
        root = Path(root)
        report = VerifyReport(root)
        label = root / "label.csv"
        if not label.is_file():
            report.missing.append(str(label))
            return report
        problems: list[LineProblem] = []
        rows = parse_sims_labels(label, problems=problems)
        report.problems += [str(p) for p in problems]
        report.counts["clips"] = len(rows)
        for split in ("train", "valid", "test"):
            report.counts[split] = sum(r.mode == split for r in rows)
        for r in rows:
            path = root / "Raw" / r.video_id / f"{r.clip_id}.mp4"
            if not path.is_file():
                report.missing.append(str(path))
        if not is_synthetic(root) and len(rows) != FULL_RELEASE["clips"]:
            report.problems.append(f"clips: found {len(rows)}, the full release has {FULL_RELEASE['clips']}")
        return report

    def sources(self, root: str | Path, **_: Any):
        root = Path(root)
        label = root / "label.csv"
        if not label.is_file():
            raise FileNotFoundError(f"{label}: file not found (CH-SIMS needs label.csv and Raw/)")
        problems: list[LineProblem] = []
        items = []
        for r in parse_sims_labels(label, problems=problems):
            items.append(UtteranceSource(
                uid=f"{r.video_id}_{r.clip_id}", labels=[r.label, r.label_T, r.label_A, r.label_V], text=r.text,
                split=r.mode, video=root / "Raw" / r.video_id / f"{r.clip_id}.mp4",
                meta={"mmsa_id": r.uid, "video_id": r.video_id, "clip_id": r.clip_id, "annotation": r.annotation},
            ))
        return items, problem_dicts(problems)
