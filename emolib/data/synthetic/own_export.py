"""The synthetic IEMOCAP release re-exported as own-data CSVs, one per modality mix.

A user's recordings rarely come in a dataset's layout; this writes what they typically have, from the synthetic
release's six-class utterances (so the generator's design still bounds what a model can reach, see
``cue_accuracy``): per utterance its speaker's half of the dialog video as an H.264 MP4 clip with the speaker's
channel as AAC audio (``clips/``), that channel as a 16 kHz wav (``audio/``), one PNG frame every 500 ms
(``images/<id>/``), and the transcript. The CSVs (``emolib.data.own`` columns, single-label ``label``):

==================  ===========================================================
``av_text.csv``     id, video, text, label, split, speaker
``audio.csv``       id, audio, label, split, speaker
``images.csv``      id, images, label, split, speaker
``text.csv``        id, text, label, split, speaker
==================  ===========================================================

Splits are the release's (a seeded random 70/10/20 split); the speaker column is session + actor (e.g.
``Ses01F``), for speaker-disjoint and k-fold splits.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from emolib import io as eio

MIXES = {
    "av_text": ("video", "text"),
    "audio": ("audio",),
    "images": ("images",),
    "text": ("text",),
}
CLIP_FPS = 10
IMAGE_INTERVAL_MS = 500


def export_own(release_root: str | os.PathLike, out: str | os.PathLike, mixes: tuple[str, ...] = tuple(MIXES)
               ) -> dict[str, Path]:
    """Write the media and one CSV per mix under ``out``; returns mix -> CSV path. Files already written are
    kept (the export is resumable and deterministic for a given release)."""
    from emolib.data import get_adapter
    from emolib.labels import IEMOCAP_CLASSES

    unknown = sorted(set(mixes) - set(MIXES))
    if unknown:
        raise ValueError(f"unknown own-data mix(es) {unknown}; choose from {', '.join(MIXES)}")
    out = Path(out)
    sources, _ = get_adapter("iemocap").sources(release_root)
    wanted = {col for mix in mixes for col in MIXES[mix]}
    rows = []
    for src in sources:
        label = IEMOCAP_CLASSES[int(np.argmax(src.labels))]
        row = {"id": src.uid, "text": src.text, "label": label, "split": src.split,
               "speaker": src.meta["dialog"][:5] + src.meta["speaker"]}
        if wanted & {"video", "audio", "images"}:
            row.update(_media(src, out, wanted))
        rows.append(row)
    paths = {}
    for mix in mixes:
        columns = ["id", *MIXES[mix], "label", "split", "speaker"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row[c] for c in columns})
        paths[mix] = out / f"{mix}.csv"
        eio.write_text(paths[mix], buf.getvalue())
    return paths


def _media(src, out: Path, wanted: set[str]) -> dict[str, str]:
    from emolib.data.media import iter_frames, read_audio
    from emolib.data.prepare import SAMPLE_RATE, _half
    from emolib.data.synthetic.render import write_wav

    audio = np.asarray(read_audio(src.audio, start_s=src.start, end_s=src.end, sample_rate=SAMPLE_RATE, mono=False,
                                  channel=src.audio_channel), dtype=np.float32).reshape(-1)
    row = {}
    clip, wav, folder = Path("clips") / f"{src.uid}.mp4", Path("audio") / f"{src.uid}.wav", Path("images") / src.uid
    need_video = "video" in wanted and not (out / clip).is_file()
    need_images = "images" in wanted and not (out / folder).is_dir()
    if need_video or need_images:  # one decoding pass serves the clip and the images
        frames = [_half(f, src.half) for _, f in iter_frames(src.video, start_s=src.start, end_s=src.end,
                                                             interval_ms=1000 / CLIP_FPS)]
        if need_video:
            _encode_clip(out / clip, frames, audio)
        if need_images:
            from PIL import Image

            tmp = out / "images" / f".{src.uid}.partial"
            tmp.mkdir(parents=True, exist_ok=True)
            for k, frame in enumerate(frames[:: IMAGE_INTERVAL_MS * CLIP_FPS // 1000]):
                Image.fromarray(frame).save(tmp / f"{k:03d}.png")
            tmp.rename(out / folder)
    if "audio" in wanted and not (out / wav).is_file():
        write_wav(out / wav, audio[None, :])
    row.update(video=str(clip), audio=str(wav), images=f"{folder}/*.png")
    return row


def _encode_clip(path: Path, frames: list[np.ndarray], audio: np.ndarray) -> None:
    import av

    from emolib.data.prepare import SAMPLE_RATE

    height, width = frames[0].shape[:2]
    with eio.atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=CLIP_FPS)
            stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
            stream.codec_context.thread_count = 1  # reproducible bytes
            stream.options = {"preset": "superfast", "crf": "23"}
            astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            for frame in frames:
                even = np.ascontiguousarray(frame[: stream.height, : stream.width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :]), format="fltp", layout="mono")
            aframe.sample_rate = SAMPLE_RATE
            for packet in astream.encode(aframe):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
