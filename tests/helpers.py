"""Shared test inputs: the one builder of random batches in the collate contract (emolib/data/dataset.py), and
the parameters of the tiny synthetic releases and caches that conftest.py builds once per session."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The tiny synthetic releases (conftest.synthetic_release) use this seed; test_synthetic checks its manifest.
# Seed 7: at seed 3 the sparse MTCNN check of test_synthetic finds faces on 28/30 frames (< 95 %).
TINY_SEED = 7
# PrepareParams of the tiny caches (conftest.synthetic_cache): 48 px faces, MTCNN on the CPU in batches of 16.
TINY_PREPARE = {"face_size": 48, "mtcnn_batch": 16, "device": "cpu"}

CONTRACT_TEXT = ("I am so angry right now", "that is wonderful news", "okay")


def contract_batch(
    seed: int = 0,
    face_size: int = 48,
    num_classes: int = 6,
    *,
    face_lengths: Sequence[int] = (1, 4, 2),
    audio_lengths: Sequence[int] = (16000, 3000, 9000),
    audio_scale: float = 0.2,
    text: Sequence[str] = CONTRACT_TEXT,
    label_index: Sequence[int] = (0, 3, 5),
    face_conf: str | Sequence[float] | None = "random",
    face_boxes: Sequence[float] | None = None,
) -> dict:
    """A random batch of ``len(face_lengths)`` utterances, drawn from ``torch.Generator().manual_seed(seed)``.

    Defaults: three utterances with 1, 4 and 2 faces and 1 s, 0.19 s (less than one mel piece) and 0.56 s of
    audio. The draws come in a fixed order: each utterance's audio (``audio_scale`` x N(0, 1), zero-padded to the
    longest), then the uint8 faces, then ``face_conf`` when it is ``"random"`` (uniform). ``face_conf`` may
    instead give one value per face, or be None for a batch without the key; ``face_boxes`` (x1, y1, x2, y2) adds
    ``face_boxes`` with that box for every face. Labels are one-hot rows ``torch.eye(num_classes)[label_index]``.
    """
    n = len(face_lengths)
    if not len(audio_lengths) == len(text) == len(label_index) == n:
        raise ValueError(f"{n} utterances need {n} audio lengths, texts and labels")
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(n, max(audio_lengths))
    for i, length in enumerate(audio_lengths):
        audio[i, :length] = audio_scale * torch.randn(length, generator=g)
    n_faces = int(sum(face_lengths))
    batch = {
        "uid": [chr(ord("a") + i) for i in range(n)],
        "faces": torch.randint(0, 256, (n_faces, 3, face_size, face_size), dtype=torch.uint8, generator=g),
        "face_lengths": torch.tensor(list(face_lengths)),
    }
    if isinstance(face_conf, str):
        if face_conf != "random":
            raise ValueError(f"face_conf: 'random', one value per face or None, not {face_conf!r}")
        batch["face_conf"] = torch.rand(n_faces, generator=g)
    elif face_conf is not None:
        batch["face_conf"] = torch.tensor(list(face_conf), dtype=torch.float32)
        if len(batch["face_conf"]) != n_faces:
            raise ValueError(f"face_conf: {len(batch['face_conf'])} values for {n_faces} faces")
    if face_boxes is not None:
        batch["face_boxes"] = torch.tensor([list(face_boxes)], dtype=torch.float32).repeat(n_faces, 1)
    batch.update({
        "audio": audio,
        "audio_lengths": torch.tensor(list(audio_lengths)),
        "text": list(text),
        "labels": torch.eye(num_classes)[list(label_index)],
    })
    return batch
