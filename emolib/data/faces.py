"""Batched MTCNN face cropping (facenet-pytorch) with counted fallbacks, plus E2EMAL's aspect-kept crops.

:class:`FaceCropper` wraps one ``facenet_pytorch.MTCNN(image_size=size, margin=margin, post_process=False,
select_largest=True)`` (Dai / FV2ES: size 48 inside the model; khanhnd185: size 224, later resized to 260),
built once, on CUDA when available. :meth:`FaceCropper.crop` runs the three-stage detector on batches of
equally sized frames, keeps the largest face whose probability is at least ``min_conf`` and crops it:

* ``crop="mtcnn"``: facenet's own crop (box plus ``margin`` pixels of the output size, resized to a square
  with area interpolation) — identical to calling ``MTCNN(...)(frames)``.
* ``crop="aspect"``: E2EMAL's crop: the box clipped to the frame, without margin, resized so that its
  longer side is ``size`` with nearest neighbour, centred on a zero ``size``×``size`` canvas
  (:func:`aspect_pad_48`). Use ``min_conf=0.65, fallback="black", size=48`` for E2EMAL; the 0.5 frame
  downscale E2EMAL applies before detection is the caller's choice. E2EMAL ranks faces by clipped box area
  and uses the TF ``mtcnn`` package; here the facenet detector and unclipped area are used.

``min_conf`` filters the detections before the largest one is chosen: a frame whose largest detection is below it
keeps the largest one at or above it (E2EMAL's ``face_extractor.py`` with 0.65), and counts as faceless only when
none passes. MTCNN's output stage already drops detections scoring <= ``thresholds[2]`` (0.7 by default, as in
E2EMAL's TF ``mtcnn``), so ``min_conf`` changes nothing unless it is above that threshold or the threshold is lowered.

Frames without an accepted face get a fallback crop and ``found = False``, ``conf = 0``, ``boxes = nan``:

* ``"center"`` (default): the largest centred square of the frame, resized to ``size`` like a face crop.
* ``"dai"``: Dai's exact window, rows ``[off, off+48)`` and columns ``[off-24, off+24)`` with
  ``off = (H-48)//2`` (the column window sits 24 px left of centre, and ``off`` uses the height for both
  axes, as Dai's code does on its square 224 px frames); resized to ``size`` when that is not 48.

``margin_size``: facenet's margin is in pixels of its output crop, so the same ``margin`` grows the box by
``margin / (size - margin)``. Dai runs ``MTCNN(image_size=48, margin=2)``: ``margin_size=48`` applies that
margin whatever ``size`` the crop is stored at (``None``: at ``size``, facenet's own arithmetic).
* ``"black"``: an all-zero crop (E2EMAL drops such frames; a clip with no face becomes black frames).

facenet-pytorch 2.5.3 with numpy 2 returns object-dtype arrays from ``MTCNN.detect``; this module calls the
lower-level ``detect_face`` and converts each image's boxes with ``np.asarray(..., dtype=float)``, and it
passes frames as torch tensors because facenet's numpy crop path needs OpenCV, which is not installed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import crop_resize, detect_face, extract_face
from tqdm.auto import tqdm

__all__ = ["FaceCropper", "FaceCrops", "aspect_pad_48", "benchmark_mtcnn"]

FALLBACKS = ("center", "dai", "black")
CROPS = ("mtcnn", "aspect")


@dataclasses.dataclass(frozen=True)
class FaceCrops:
    """Per-frame results of :meth:`FaceCropper.crop` (N frames)."""

    faces: np.ndarray  # uint8 (N, size, size, 3) RGB
    conf: np.ndarray  # float32 (N,), MTCNN probability of the kept face, 0 where the fallback was used
    found: np.ndarray  # bool (N,)
    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2 in frame pixels, nan where no face was kept

    def __len__(self) -> int:
        return len(self.found)

    @property
    def n_fallback(self) -> int:
        return int((~self.found).sum())

    @classmethod
    def empty(cls, size: int) -> FaceCrops:
        """No frames (utterances without a visual modality)."""
        return cls(faces=np.zeros((0, size, size, 3), np.uint8), conf=np.zeros(0, np.float32),
                   found=np.zeros(0, bool), boxes=np.zeros((0, 4), np.float32))


def aspect_pad_48(face_rgb: np.ndarray, size: int = 48) -> np.ndarray:
    """Resize ``face_rgb`` (h×w×3) so that its longer side is ``size`` (nearest neighbour, aspect kept) and
    centre it on a zero ``size``×``size`` canvas (E2EMAL's face format).

    The resize follows OpenCV ``INTER_NEAREST`` with a scale factor: output side ``round(side * r)`` and
    source index ``floor(i / r)`` with ``r = size / max(h, w)``.
    """
    if face_rgb.ndim != 3 or face_rgb.shape[0] == 0 or face_rgb.shape[1] == 0:
        raise ValueError(f"aspect_pad_48: expected a non-empty h x w x C image, got shape {face_rgb.shape}")
    h, w = face_rgb.shape[:2]
    ratio = size / max(h, w)
    out_h, out_w = min(size, max(1, round(h * ratio))), min(size, max(1, round(w * ratio)))
    rows = np.minimum(np.floor(np.arange(out_h) * (1.0 / ratio)).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (1.0 / ratio)).astype(int), w - 1)
    resized = face_rgb[rows][:, cols]
    canvas = np.zeros((size, size, face_rgb.shape[2]), dtype=face_rgb.dtype)
    top, left = (size - out_h) // 2, (size - out_w) // 2
    canvas[top: top + out_h, left: left + out_w] = resized
    return canvas


class FaceCropper:
    """Batched MTCNN face crops with a counted fallback (see the module docstring)."""

    def __init__(
        self,
        size: int = 224,
        margin: int = 2,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        min_conf: float = 0.0,
        fallback: str = "center",
        *,
        crop: str = "mtcnn",
        margin_size: int | None = None,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if margin_size is not None and margin_size <= margin:
            raise ValueError(f"margin_size must be larger than the margin ({margin}), got {margin_size}")
        if size < 1 or batch_size < 1:
            raise ValueError(f"size and batch_size must be >= 1, got {size} and {batch_size}")
        self.size = size
        self.margin = margin
        self.margin_size = margin_size
        self.batch_size = batch_size
        self.min_conf = float(min_conf)
        self.fallback = fallback
        self.crop_mode = crop
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.mtcnn = MTCNN(
            image_size=size, margin=margin, post_process=False, select_largest=True, keep_all=False,
            min_face_size=min_face_size, thresholds=list(thresholds), factor=factor, device=self.device,
        ).eval()
        if self.device.type == "cpu":
            for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
                _use_strided_max_pools(net)

    # ------------------------------------------------------------------------------------------- public

    def crop(self, frames: Sequence[np.ndarray], *, progress: bool = False) -> FaceCrops:
        """Face crops of ``frames`` (each an H×W×3 uint8 RGB array; sizes may differ between frames)."""
        for i, frame in enumerate(frames):
            _check_frame(frame, i)
        n = len(frames)
        faces = np.zeros((n, self.size, self.size, 3), np.uint8)
        conf = np.zeros(n, np.float32)
        boxes = np.full((n, 4), np.nan, np.float32)
        found = np.zeros(n, bool)

        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, frame in enumerate(frames):
            groups[frame.shape].append(i)
        chunks = [idx[k: k + self.batch_size] for idx in groups.values() for k in range(0, len(idx), self.batch_size)]
        for chunk in tqdm(chunks, desc="MTCNN", unit="batch", disable=not progress, leave=False):
            batch = torch.as_tensor(np.stack([frames[i] for i in chunk]), device=self.device)
            for i, img, det in zip(chunk, batch, self._detect(batch)):
                if det is not None:
                    box, prob = det
                    faces[i] = self._face_crop(img, box)
                    boxes[i], conf[i], found[i] = box, prob, True
                else:
                    faces[i] = self._fallback_crop(img)
        return FaceCrops(faces=faces, conf=conf, found=found, boxes=boxes)

    # ------------------------------------------------------------------------------------------- detection

    @torch.no_grad()
    def _detect(self, batch: torch.Tensor) -> list[tuple[np.ndarray, float] | None]:
        """For each image of a (B,H,W,3) uint8 batch: (box x1,y1,x2,y2, prob) of the largest accepted face."""
        m = self.mtcnn
        if min(batch.shape[1:3]) < m.min_face_size:
            return [None] * len(batch)  # no pyramid scale fits; facenet would fail on an empty list
        per_image, _ = detect_face(batch, m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds, m.factor,
                                   self.device)
        out: list[tuple[np.ndarray, float] | None] = []
        for i in range(len(batch)):
            dets = np.asarray(per_image[i], dtype=np.float64).reshape(-1, 5)
            dets = dets[dets[:, 4] >= self.min_conf]
            if len(dets) == 0:
                out.append(None)
                continue
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            best = dets[int(np.argmax(area))]  # first of equal areas, as facenet's stable ordering gives
            out.append((best[:4].astype(np.float32), float(best[4])))
        return out

    # ------------------------------------------------------------------------------------------- cropping

    def _face_crop(self, img: torch.Tensor, box: np.ndarray) -> np.ndarray:
        if self.crop_mode == "aspect":
            h, w = img.shape[:2]
            x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
            x2, y2 = min(int(box[2]), w), min(int(box[3]), h)
            if x2 <= x1 or y2 <= y1:
                return np.zeros((self.size, self.size, 3), np.uint8)
            return aspect_pad_48(img[y1:y2, x1:x2].cpu().numpy(), self.size)
        if self.margin_size is not None and self.margin_size != self.size:
            # facenet's margin arithmetic at margin_size (extract_face), the region resized to size.
            x1, y1, x2, y2 = (float(v) for v in box)
            mx = self.margin * (x2 - x1) / (self.margin_size - self.margin)
            my = self.margin * (y2 - y1) / (self.margin_size - self.margin)
            h, w = img.shape[:2]
            region = [int(max(x1 - mx / 2, 0)), int(max(y1 - my / 2, 0)), int(min(x2 + mx / 2, w)),
                      int(min(y2 + my / 2, h))]
            face = crop_resize(img.cpu(), region, self.size).float().permute(2, 0, 1)
        else:
            # facenet's crop converts through numpy, so it needs a CPU tensor; returns float (3,S,S) in 0..255.
            face = extract_face(img.cpu(), box, self.size, self.margin)
        return face.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def _fallback_crop(self, img: torch.Tensor) -> np.ndarray:
        h, w = img.shape[:2]
        if self.fallback == "black":
            return np.zeros((self.size, self.size, 3), np.uint8)
        if self.fallback == "dai":
            off = (h - 48) // 2
            if off < 24 or off + 24 > w or off + 48 > h:
                raise ValueError(
                    f"fallback='dai' needs frames with (H-48)//2 >= 24 and W >= (H-48)//2 + 24; got {h}x{w}"
                )
            window = img[off: off + 48, off - 24: off + 24]
            if self.size == 48:
                return window.cpu().numpy()
            # Other crop sizes: Dai's 48 px window resized to the cache's size (the models resize it back to 48).
            return crop_resize(window, [0, 0, 48, 48], self.size).cpu().numpy()
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return crop_resize(img, [left, top, left + side, top + side], self.size).cpu().numpy()


class StridedMaxPool(torch.nn.Module):
    """``nn.MaxPool2d(k, s, ceil_mode=True)`` (no padding or dilation) with the same outputs, faster on CPU.

    PyTorch's CPU max-pool kernel for NCHW tensors is slow: on R-Net's and O-Net's NCHW activations it took about
    30 % of an MTCNN call on one core (measured on the synthetic releases; the channels-last kernel is several times
    faster). A maximum is exact, so taking it in two separable passes of ``torch.maximum`` over strided views
    (rows, then columns; ``-inf`` where ``ceil_mode`` lets the last window run past the edge) returns the same
    values, in the same memory format. Other inputs (channels-last ones, already fast, such as P-Net's, whose input
    facenet permutes from NHWC; layouts that are both) keep PyTorch's kernel, so every later layer sees the layout
    it saw before."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    @classmethod
    def replacing(cls, pool: torch.nn.MaxPool2d) -> StridedMaxPool | None:
        """The replacement of ``pool``, or None where its settings are not the ones this class reproduces."""
        k, s, p, d = (pool.kernel_size, pool.stride, pool.padding, pool.dilation)
        square = all(isinstance(v, int) or len(set(v)) == 1 for v in (k, s, p, d))
        one = [v if isinstance(v, int) else v[0] for v in (k, s, p, d)]
        if not (square and pool.ceil_mode and not pool.return_indices and one[2] == 0 and one[3] == 1):
            return None
        return cls(one[0], one[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
            return torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride, ceil_mode=True)
        k, s = self.kernel_size, self.stride
        h, w = x.shape[2:]
        oh, ow = _ceil_pool_size(h, k, s), _ceil_pool_size(w, k, s)
        need_h, need_w = (oh - 1) * s + k, (ow - 1) * s + k
        if need_h > h or need_w > w:
            x = torch.nn.functional.pad(x, (0, need_w - w, 0, need_h - h), value=-math.inf)
        rows = x[:, :, 0: (oh - 1) * s + 1: s].clone(memory_format=torch.contiguous_format)
        for i in range(1, k):
            torch.maximum(rows, x[:, :, i: i + (oh - 1) * s + 1: s], out=rows)
        out = rows[:, :, :, 0: (ow - 1) * s + 1: s].clone(memory_format=torch.contiguous_format)
        for j in range(1, k):
            torch.maximum(out, rows[:, :, :, j: j + (ow - 1) * s + 1: s], out=out)
        return out


def _ceil_pool_size(n: int, k: int, s: int) -> int:
    """Output length of a ceil-mode pooling without padding (the last window must start inside the input)."""
    out = -(-(n - k) // s) + 1
    return out - 1 if (out - 1) * s >= n else out


def _use_strided_max_pools(net: torch.nn.Module) -> None:
    for name, child in list(net.named_children()):
        if isinstance(child, torch.nn.MaxPool2d) and (fast := StridedMaxPool.replacing(child)) is not None:
            setattr(net, name, fast)


def _check_frame(frame: np.ndarray, index: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"frame {index}: expected an H x W x 3 uint8 RGB array, got shape {shape} dtype {dtype}")


def benchmark_mtcnn(
    frames: Sequence[np.ndarray],
    batch_sizes: Sequence[int] = (1, 8, 32),
    *,
    device: str | torch.device | None = None,
    size: int = 224,
    repeats: int = 1,
) -> dict:
    """Frames per second of :meth:`FaceCropper.crop` for each batch size (1 = one frame at a time).

    Each setting runs once untimed (warm-up), then ``repeats`` timed runs; the best time is reported.
    """
    if not frames:
        raise ValueError("benchmark_mtcnn needs at least one frame")
    results: dict[str, float] = {}
    detected = {}
    resolved = None
    for bs in batch_sizes:
        cropper = FaceCropper(size=size, device=device, batch_size=bs)
        resolved = str(cropper.device)
        detected[str(bs)] = int(cropper.crop(frames).found.sum())
        best = math.inf
        for _ in range(max(1, repeats)):
            if cropper.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            cropper.crop(frames)
            if cropper.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        results[str(bs)] = len(frames) / best
    return {
        "device": resolved,
        "n_frames": len(frames),
        "frame_shape": list(frames[0].shape),
        "crop_size": size,
        "torch_threads": torch.get_num_threads(),
        "frames_per_s": results,
        "faces_found": detected,
        "speedup_vs_one_by_one": {bs: fps / results[str(batch_sizes[0])] for bs, fps in results.items()}
        if batch_sizes and batch_sizes[0] == 1 else {},
    }
