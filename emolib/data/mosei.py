"""CMU-MOSEI: the raw release and Dai's processed layout (written by
``wenliangdai/Multimodal-End2end-Sparse: preprocessing/preprocess_mosei.ipynb``).

Raw release::

    Videos/Full/Combined/<vid>.mp4
    Audio/WAV_16000/<vid>.wav
    Transcript/Combined/<vid>.txt        lines  vid___clip___start___end___text
    Labels/*.csv                         raw MTurk answers, several annotators per clip

Labels: Dai's rule, all annotator rows of ``<vid>_<clip>`` summed per emotion, present iff the sum is > 0, in
Dai's order [anger, disgust, fear, happiness, sadness, surprise] (multi-label: 0, 1 or several positives). Only
ids with video, audio and transcript are kept (as Dai does).

Dai reads only the first 280 s of each video (a memory work-around in his notebook); we decode every utterance
in one streaming pass per video, so late utterances keep their frames instead of being dropped.

Folds: the CMU SDK standard folds (video-disjoint) from a user file (``folds=``: JSON of video ids per split or
a Dai split folder), from ``<root>/folds.json`` when present (the synthetic release writes its own), or from the
CMU-MultimodalSDK when installed. Split lists are never copied from other repositories.

Dai's processed layout (``MOSEI_RAW_PROCESSED/<id>/image_{i}.jpg``, ``audio.wav``, ``meta.pkl`` +
``MOSEI_SPLIT``): his notebook stores 2 frames per second, while his loader steps through the images as if they
were 30 fps (a quirk that keeps one image per 7.5 s). ``dai_fps`` (default 2, what the notebook writes) sets the
frame rate of the stored images, and frames are taken every ``img_interval`` ms of real time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from emolib.data.adapter import Adapter, ProtocolUse, VerifyReport, is_synthetic, problem_dicts
from emolib.data.formats import LineProblem, aggregate_mosei_labels, parse_mosei_labels, parse_mosei_transcript
from emolib.data.prepare import UtteranceSource
from emolib.data.splits import mosei_sdk_folds, read_mosei_folds, read_split_dir, write_split_dir
from emolib.deviations import Deviation
from emolib.labels import MOSEI_EMOTIONS
from emolib.registry import register

DAI_PROCESSED = "MOSEI_RAW_PROCESSED"
DAI_SPLIT = "MOSEI_SPLIT"
FULL_RELEASE = {"videos": 3837}
_IMAGE = re.compile(r"^image_(?P<i>\d+)\.jpg$")


@register("dataset", "mosei", summary="CMU-MOSEI 6 emotions, multi-label (Dai's order): raw release or Dai's layout",
          download="public zip (host availability varies)")
class MoseiAdapter(Adapter):
    name = "mosei"
    title = "CMU-MOSEI"
    label_names = MOSEI_EMOTIONS
    # src/datasets.py MOSEI: frames taller than 360 px halved, centre crop 360; MTCNN(48, margin 2) and its
    # no-face window. preprocess_mosei.ipynb stores 2 frames/s of the first 280 s, and the loader steps 15 stored
    # frames (it assumes 30 fps): one frame per 7.5 s.
    dai_prepare = {"frame_halve_above": 360, "frame_center_crop": 360, "margin_size": 48, "face_fallback": "dai",
                   "img_interval": 7500, "max_video_seconds": 280.0, "face_codec": "raw"}
    deviations = Adapter.deviations + (
        Deviation("data.folds", "folds: Dai's published lists (emolib download --splits dai; subsets of the SDK "
                  "folds) vs the CMU-MultimodalSDK standard folds", "emolib",
                  "'' (SDK / folds.json) | data/splits/dai/MOSEI_SPLIT (Dai's lists; the paper profile)",
                  "data split/MOSEI_split in wenliangdai/Multimodal-End2end-Sparse"),
        Deviation("prepare.img_interval", "Dai's notebook stores 2 frames/s and the loader steps 15 of them as if "
                  "they were 30 fps: one frame per 7.5 s instead of the intended 500 ms", "emolib",
                  "500 (Dai's intent) | 7500 (Dai's data; paper profile)", "src/datasets.py, preprocess_mosei.ipynb"),
        Deviation("prepare.max_video_seconds", "Dai's notebook reads only the first 280 s of each video; later "
                  "utterances have no frame and are dropped", "emolib", "None (all) | 280 (Dai)",
                  "preprocessing/preprocess_mosei.ipynb"),
        Deviation("prepare.frame_center_crop", "frames halved above 360 px and centre-cropped to 360 before MTCNN "
                  "in Dai's loader (prepare.frame_halve_above too)", "emolib", "None (emolib) | 360 (Dai)",
                  "src/datasets.py MOSEI.__getitem__"),
        Deviation("prepare.margin_size", "facenet's 2 px margin at Dai's 48 px output vs at the stored size",
                  "emolib", "None (emolib) | 48 (Dai)", "src/models/e2e.py"),
        Deviation("prepare.face_fallback", "frames without a face: Dai's 48 px window vs a centred square", "emolib",
                  "center (emolib) | dai (Dai)", "src/models/e2e.py"),
    )
    protocols = (
        ProtocolUse("dai-mosei", "primary: the protocol of Dai et al.'s MOSEI table (weighted accuracy + binary F1)"),
        ProtocolUse("dai-iemocap", "code variant: plain accuracy, as Dai's HEAD code and khanhnd185's code compute it "
                                   "on MOSEI"),
        ProtocolUse("e2emal", "E2EMAL's CMU-MOSEI protocol (0.5 threshold, wA, weighted 2-class F1)"),
    )
    # The CMU server has been down at times; the archive's hash is not published, so it is recorded on first
    # download (trust on first use) rather than verified.
    download_manifest = [{"name": "CMU_MOSEI.zip",
                          "url": "http://immortal.multicomp.cs.cmu.edu/raw_datasets/CMU_MOSEI.zip"}]
    download_help = "If the CMU host is down, request the raw release from the dataset authors."

    def verify(self, root: str | Path) -> VerifyReport:
        root = Path(root)
        report = VerifyReport(root)
        if (root / DAI_PROCESSED).is_dir():
            main = root / DAI_PROCESSED
            if not (main / "meta.pkl").is_file():
                report.missing.append(str(main / "meta.pkl"))
            report.counts["utterance_folders"] = sum(1 for p in main.iterdir() if p.is_dir())
            return report
        videos = {p.stem for p in (root / "Videos/Full/Combined").glob("*.mp4")}
        audios = {p.stem for p in (root / "Audio/WAV_16000").glob("*.wav")}
        texts = {p.stem for p in (root / "Transcript/Combined").glob("*.txt")}
        report.counts.update(videos=len(videos), audio=len(audios), transcripts=len(texts))
        for folder in ("Videos/Full/Combined", "Audio/WAV_16000", "Transcript/Combined"):
            if not (root / folder).is_dir():
                report.missing.append(f"{root / folder}/")
        for vid in sorted(videos | audios | texts):
            for folder, have, ext in (("Videos/Full/Combined", videos, "mp4"), ("Audio/WAV_16000", audios, "wav"),
                                      ("Transcript/Combined", texts, "txt")):
                if vid not in have:
                    report.missing.append(f"{root / folder / vid}.{ext}")
        labels = sorted((root / "Labels").glob("*.csv"))
        report.counts["label_csvs"] = len(labels)
        if not labels:
            report.missing.append(f"{root / 'Labels'}/*.csv")
        else:
            problems: list[LineProblem] = []
            agg = aggregate_mosei_labels(parse_mosei_labels(root / "Labels", problems=problems))
            report.counts["labelled_clips"] = len(agg)
            report.problems += [str(p) for p in problems]
        if not is_synthetic(root) and report.counts["videos"] != FULL_RELEASE["videos"]:
            report.problems.append(f"videos: found {report.counts['videos']}, the full release has "
                                   f"{FULL_RELEASE['videos']}")
        return report

    def _folds(self, root: Path, folds) -> tuple[dict[str, str], str]:
        if folds is not None:
            return read_mosei_folds(folds), str(folds)
        if (root / "folds.json").is_file():
            return read_mosei_folds(root / "folds.json"), str(root / "folds.json")
        return mosei_sdk_folds(), "CMU-MultimodalSDK standard folds"

    def sources(self, root: str | Path, *, folds: str | Path | None = None, img_interval: int = 500,
                dai_fps: float = 2.0, **_: Any):
        root = Path(root)
        if (root / DAI_PROCESSED).is_dir():
            return self._dai_sources(root, folds or root / DAI_SPLIT, img_interval, dai_fps)
        problems: list[LineProblem] = []
        labels = aggregate_mosei_labels(parse_mosei_labels(root / "Labels", problems=problems))
        fold, fold_source = self._folds(root, folds)
        items = []
        unlabelled = no_fold = 0
        for tpath in sorted((root / "Transcript/Combined").glob("*.txt")):
            vid = tpath.stem
            video = root / "Videos/Full/Combined" / f"{vid}.mp4"
            audio = root / "Audio/WAV_16000" / f"{vid}.wav"
            for seg in parse_mosei_transcript(tpath, problems=problems):
                uid = seg.utt_id
                if uid not in labels:
                    unlabelled += 1
                    continue
                split = fold.get(uid, fold.get(seg.video_id))
                if split is None:
                    no_fold += 1
                    continue
                items.append(UtteranceSource(
                    uid=uid, labels=[float(v) for v in labels[uid]], text=seg.text.replace("\n", " ").strip(),
                    split=split, video=video, audio=audio, start=max(seg.start, 0.0), end=seg.end,
                    meta={"video_id": seg.video_id, "clip": seg.clip},
                ))
        self._last = {"fold_source": fold_source, "unlabelled_segments": unlabelled, "segments_without_fold": no_fold}
        return items, problem_dicts(problems)

    def _dai_sources(self, root: Path, split_dir, img_interval: int, fps: float):
        from emolib.data.safe_pickle import load_restricted

        main = root / DAI_PROCESSED
        meta = load_restricted(main / "meta.pkl")
        split = read_split_dir(split_dir)
        step = max(1, round(img_interval / 1000 * fps))
        items, problems = [], []
        for uid in sorted(split):
            folder = main / uid
            m = meta.get(uid) if isinstance(meta, dict) else None
            if m is None or not folder.is_dir():
                problems.append({"file": str(main), "line": 0,
                                 "problem": f"{uid}: listed in the split but missing from meta.pkl or the folders"})
                continue
            indices = sorted(int(mm["i"]) for p in folder.iterdir() if (mm := _IMAGE.match(p.name)))
            chosen = [i for i in indices if i % step == 0]
            items.append(UtteranceSource(
                uid=uid, labels=[float(v) for v in m["label"]], text=str(m.get("text", "")), split=split[uid],
                audio=folder / "audio.wav", images=tuple(folder / f"image_{i}.jpg" for i in chosen),
                image_times=tuple(i / fps for i in chosen), meta={"layout": "dai"},
            ))
        self._last = {"fold_source": str(split_dir)}
        return items, problems

    def extra_provenance(self, root, sources, out, **options) -> dict[str, Any]:
        digest = write_split_dir({s.uid: s.split for s in sources}, Path(out) / "split")
        return {"split_hash": digest, **self._last}
