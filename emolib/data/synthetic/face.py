"""Face rendering: drawn heads as YUV 4:2:0 sprites, the frame buffer they are pasted into, per-clip face jitter."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from emolib.data.synthetic.expressions import EXPRESSIONS, FaceParams
from emolib.data.synthetic.plan import Actor

_SS = 2  # supersampling factor: shapes are drawn at twice the size and box-filtered down (anti-aliasing)


@dataclass(frozen=True)
class Sprite:
    """A head cut-out in YUV 4:2:0 (the encoders' input format, so frames need no per-frame conversion)."""

    y: np.ndarray  # (h, w) uint8 luma; h and w are even
    u: np.ndarray  # (h/2, w/2) uint8 chroma
    v: np.ndarray
    mask: np.ndarray  # (h, w) bool
    mask_c: np.ndarray  # (h/2, w/2) bool
    cx: int  # face centre inside the sprite; even, so that chroma stays aligned
    cy: int


def rgb_to_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited-range Y, U, V planes (float) of an RGB image: what swscale uses for yuv420p by default."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return y, u, v


def _sum2x2(a: np.ndarray) -> np.ndarray:
    """Sums of the 2x2 blocks of ``a``, added as (top left + top right) + (bottom left + bottom right): the order
    in which numpy's ``a.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))`` adds the blocks of the planes summed
    here (non-negative, at least 4 pixels wide), so the same float32 bits and byte-identical releases; about 10x
    faster than that reduction (tests/test_synthetic.py)."""
    return (a[0::2, 0::2] + a[0::2, 1::2]) + (a[1::2, 0::2] + a[1::2, 1::2])


def _subsample(plane: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """2x2 chroma subsampling averaging only the pixels with weight (no dark fringe at cut-out edges)."""
    return _sum2x2(plane * weight) / np.maximum(_sum2x2(weight), 1e-6)


def _to_u8(plane: np.ndarray) -> np.ndarray:
    return np.clip(np.round(plane), 0, 255).astype(np.uint8)


def _sprite_from_rgba(rgba: np.ndarray, cx: int, cy: int) -> Sprite:
    h, w = rgba.shape[:2]
    pad_top, pad_left = cy % 2, cx % 2  # make the face centre even
    H, W = h + pad_top, w + pad_left
    H, W = H + H % 2, W + W % 2
    full = np.zeros((H, W, 4), np.uint8)
    full[pad_top:pad_top + h, pad_left:pad_left + w] = rgba
    mask = full[..., 3] > 127
    y, u, v = rgb_to_yuv(full)
    weight = mask.astype(np.float32)
    mask_c = _sum2x2(weight) >= 2
    return Sprite(_to_u8(y), _to_u8(_subsample(u, weight)), _to_u8(_subsample(v, weight)), mask, mask_c,
                  cx + pad_left, cy + pad_top)


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
                    n: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-9)
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


Colour = tuple[int, ...]


def _shade(colour: Colour, k: float) -> Colour:
    return tuple(int(min(255, c * k)) for c in colour)


class _FaceCanvas:
    """Draws in face units (x in face widths, y in face heights, origin at the face centre), rotated by the
    head tilt, onto a supersampled RGBA image."""

    def __init__(self, face_w: float, tilt_deg: float) -> None:
        from PIL import Image, ImageDraw

        self.fw, self.fh = face_w, face_w * 1.3
        self.width, self.height = int(1.9 * self.fw), int(1.8 * self.fh)
        self.cx, self.cy = self.width / 2, 0.78 * self.fh
        self.image = Image.new("RGBA", (self.width * _SS, self.height * _SS), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        th = math.radians(tilt_deg)
        self.cos_t, self.sin_t = math.cos(th), math.sin(th)

    def poly(self, points: Iterable[tuple[float, float]], colour: Colour) -> None:
        pixels = []
        for x, y in points:
            px, py = x * self.fw, y * self.fh
            pixels.append(((self.cx + px * self.cos_t - py * self.sin_t) * _SS,
                           (self.cy + px * self.sin_t + py * self.cos_t) * _SS))
        self.draw.polygon(pixels, fill=tuple(colour) + (255,))

    def ellipse(self, x: float, y: float, rx: float, ry: float, colour: Colour) -> None:
        self.poly(_ellipse_points(x, y, rx, ry), colour)

    def sprite(self) -> Sprite:
        from PIL import Image

        small = np.asarray(self.image.resize((self.width, self.height), Image.BOX))
        return _sprite_from_rgba(small, int(round(self.cx)), int(round(self.cy)))


def render_head(actor: Actor, face: FaceParams, face_w: float, tilt_deg: float = 0.0,
                gaze: tuple[float, float] = (0.0, 0.0)) -> Sprite:
    """Draw one head (hair, ears, neck and shoulders) showing ``face``; the sprite is cut out by its mask."""
    canvas = _FaceCanvas(face_w, tilt_deg)
    _draw_head(canvas, actor)
    _draw_eyes(canvas, actor, face, gaze)
    _draw_nose(canvas, actor.skin)
    _draw_mouth(canvas, actor.lips, face)
    return canvas.sprite()


def _draw_head(c: _FaceCanvas, actor: Actor) -> None:
    skin, hair = actor.skin, actor.hair
    c.poly([(-0.92, 1.02), (-0.86, 0.8), (-0.62, 0.66), (0.62, 0.66), (0.86, 0.8), (0.92, 1.02)], actor.shirt)
    c.poly([(-0.17, 0.3), (0.17, 0.3), (0.17, 0.7), (-0.17, 0.7)], _shade(skin, 0.85))
    c.ellipse(0.0, -0.2, 0.58, 0.44, hair)
    if actor.long_hair:
        c.ellipse(0.0, 0.12, 0.6, 0.5, hair)
    for side in (-1, 1):
        c.ellipse(side * 0.5, 0.02, 0.08, 0.11, _shade(skin, 0.92))
    c.ellipse(0.0, 0.0, 0.5, 0.5, skin)
    parting = 0.06 if actor.long_hair else 0.0
    c.poly(_ellipse_points(parting, -0.31, 0.53, 0.27, math.pi, 2 * math.pi, 30), hair)


def _draw_eyes(c: _FaceCanvas, actor: Actor, face: FaceParams, gaze: tuple[float, float]) -> None:
    eye_y, eh = -0.06, 0.045 * max(0.3, face.eye_open)
    for side in (-1, 1):
        ex = side * 0.2
        # Shadowed eye sockets, dark lids and large irises: at detection scale real eyes are dark blobs.
        c.ellipse(ex, eye_y - 0.005, 0.16, 0.085, _shade(actor.skin, 0.86))
        c.ellipse(ex, eye_y, 0.125, eh + 0.014, (40, 28, 26))
        c.ellipse(ex, eye_y + 0.004, 0.11, eh, (235, 232, 228))
        r_iris = 0.05  # face widths; y radii are divided by 1.3 (face heights) to stay round
        ix, iy = ex + gaze[0] * 0.03, eye_y + 0.004 + gaze[1] * 0.008
        # The lids cover the iris of a narrowed eye.
        c.ellipse(ix, iy, r_iris * min(1.0, 0.6 + eh / 0.05), min(r_iris / 1.3, eh), actor.iris)
        c.ellipse(ix, iy, r_iris * 0.5, min(r_iris * 0.5 / 1.3, eh), (12, 8, 8))
        brow_y = eye_y - 0.11 - 0.07 * face.brow_raise
        inner = (side * 0.08, brow_y + 0.08 * face.brow_tilt)
        outer = (side * 0.33, brow_y - 0.04 * face.brow_tilt)
        t = 0.03
        c.poly([(inner[0], inner[1] - t), (outer[0], outer[1] - t), (outer[0], outer[1] + t),
                (inner[0], inner[1] + t)], _shade(actor.hair, 0.7))


def _draw_nose(c: _FaceCanvas, skin: Colour) -> None:
    c.poly([(-0.02, -0.02), (0.015, -0.02), (-0.02, 0.12), (-0.06, 0.12)], _shade(skin, 0.9))
    c.poly([(0.0, -0.02), (0.015, -0.02), (-0.025, 0.12), (-0.045, 0.12)], _shade(skin, 0.72))
    c.ellipse(-0.055, 0.125, 0.03, 0.015, _shade(skin, 0.55))
    c.ellipse(0.045, 0.125, 0.03, 0.015, _shade(skin, 0.55))


def _draw_mouth(c: _FaceCanvas, lips: Colour, face: FaceParams) -> None:
    mw = 0.21 * face.mouth_width
    curve, opening = 0.1 * face.mouth_curve, 0.11 * max(0.0, face.mouth_open)
    xs = np.linspace(-1, 1, 24)
    bow = 1 - xs**2
    base = 0.27 + curve * bow - curve  # corners rise by ``curve`` when smiling
    upper = list(zip(mw * xs, base - opening * 0.35 * bow - 0.02 * bow))
    lower = list(zip(mw * xs[::-1], (base + (opening + 0.026) * bow)[::-1]))
    c.poly(upper + lower, lips)
    # Mouth opening, or the dark line where closed lips meet.
    inner_upper = list(zip(0.9 * mw * xs, base - opening * 0.2 * bow))
    inner_lower = list(zip(0.9 * mw * xs[::-1], (base + (opening * 0.85 + 0.007) * bow)[::-1]))
    c.poly(inner_upper + inner_lower, (60, 18, 24))


class YuvFrame:
    """One yuv420p frame buffer, shaped (3H/2, W) as PyAV expects, with views on its three planes."""

    def __init__(self, height: int, width: int) -> None:
        self.buffer = np.zeros((height * 3 // 2, width), np.uint8)
        quarter = height // 4
        self.y = self.buffer[:height]
        self.u = self.buffer[height:height + quarter].reshape(height // 2, width // 2)
        self.v = self.buffer[height + quarter:].reshape(height // 2, width // 2)

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> YuvFrame:
        frame = cls(*rgb.shape[:2])
        y, u, v = rgb_to_yuv(rgb)
        ones = np.ones(y.shape, np.float32)
        frame.y[:] = _to_u8(y)
        frame.u[:] = _to_u8(_subsample(u, ones))
        frame.v[:] = _to_u8(_subsample(v, ones))
        return frame


def _paste(frame: YuvFrame, sprite: Sprite, x: int, y: int, x_lo: int, x_hi: int) -> None:
    """Copy ``sprite`` with its face centre at (x, y) (both even), clipped to columns [x_lo, x_hi) (even)."""
    h, w = sprite.y.shape
    top, left = y - sprite.cy, x - sprite.cx
    r0, r1 = max(0, top), min(frame.y.shape[0], top + h)
    c0, c1 = max(x_lo, left), min(x_hi, left + w)
    if r0 >= r1 or c0 >= c1:
        return
    src = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
    np.copyto(frame.y[r0:r1, c0:c1], sprite.y[src], where=sprite.mask[src])
    dst_c = (slice(r0 // 2, r1 // 2), slice(c0 // 2, c1 // 2))
    src_c = (slice((r0 - top) // 2, (r1 - top) // 2), slice((c0 - left) // 2, (c1 - left) // 2))
    np.copyto(frame.u[dst_c], sprite.u[src_c], where=sprite.mask_c[src_c])
    np.copyto(frame.v[dst_c], sprite.v[src_c], where=sprite.mask_c[src_c])


def _jittered_face(rng: np.random.Generator, expression: str, intensity: float) -> FaceParams:
    neutral = EXPRESSIONS["neutral"][0]
    target = neutral.toward(EXPRESSIONS[expression][0], intensity) if expression != "neutral" else neutral
    values = [v + rng.normal(0, 0.08) for v in target.values()]
    values[5] = max(0.3, target.eye_open * math.exp(rng.normal(0, 0.06)))
    values[2] = max(0.6, values[2])
    return FaceParams(*values)
