"""Voice synthesis: a voiced speech-like signal whose prosody follows an expression, per-clip voice jitter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from emolib.data.synthetic.design import SAMPLE_RATE
from emolib.data.synthetic.expressions import EXPRESSIONS, VoiceParams

_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


def synthesize_speech(rng: np.random.Generator, voices: Sequence[VoiceParams], duration: float, f0: float,
                      gain: float = 1.0, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Voiced speech-like signal of ``duration`` s; ``voices`` split the duration into equal segments.

    Returns (signal float32 in [-1, 1], syllable envelope float32 in [0, 1]), both of length round(duration*sr).
    """
    n = int(round(duration * sr))
    y = np.zeros(n, np.float32)
    env = np.zeros(n, np.float32)
    bounds = np.linspace(0, n, len(voices) + 1).astype(int)
    for voice, a, b in zip(voices, bounds[:-1], bounds[1:]):
        seg, seg_env = _speech_segment(rng, voice, b - a, f0, gain, sr)
        y[a:b], env[a:b] = seg, seg_env
    return y, env


def _speech_segment(rng: np.random.Generator, v: VoiceParams, n: int, f0: float, gain: float,
                    sr: int) -> tuple[np.ndarray, np.ndarray]:
    margin = int(0.06 * sr)
    usable = max(1, n - 2 * margin)
    n_syl = max(2, int(round(usable / sr * v.rate)))
    period = usable / n_syl
    t = np.arange(n, dtype=np.float32)
    centres, accents = [], []
    for j in range(n_syl):
        centres.append(margin + (j + 0.5) * period)
        accents.append(rng.normal(0, v.range_st / 2))
    contour = np.interp(t, centres, accents).astype(np.float32)
    contour += v.slope_st * (t / n - 0.5)
    if v.vibrato_st:
        contour += v.vibrato_st * np.sin(2 * np.pi * 5.5 * t / sr)
    f0_track = (f0 * 2.0 ** ((v.pitch_st + contour) / 12.0)).astype(np.float32)
    phase = (2 * np.pi / sr) * np.cumsum(f0_track, dtype=np.float64)
    y = np.zeros(n, np.float32)
    env = np.zeros(n, np.float32)
    for j in range(n_syl):
        length = int(period * rng.uniform(0.55, 0.8))
        start = int(margin + j * period + rng.uniform(0, 0.15) * period)
        end = min(n - margin // 2, start + length)
        if end - start < 16:
            continue
        u = np.linspace(0, 1, end - start, dtype=np.float32)
        shape = np.abs(np.sin(np.pi * u)) ** 0.7  # abs: float32 sin(pi) is slightly negative -> NaN
        env[start:end] = shape
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        y[start:end] = shape * _harmonics(phase[start:end], float(f0_track[start:end].mean()), v.tilt, formants)
        y[start:end] += v.breath * shape * rng.standard_normal(end - start).astype(np.float32)
    voiced = env > 0.05
    rms = float(np.sqrt(np.mean(y[voiced] ** 2))) if voiced.any() else 1.0
    target = 0.05 * 10 ** (v.energy_db / 20) * gain
    return np.clip(y * (target / max(rms, 1e-9)), -0.98, 0.98).astype(np.float32), env


def _harmonics(phase: np.ndarray, f0: float, tilt: float, formants: tuple[int, ...]) -> np.ndarray:
    k_max = int(min(20, 3800 // max(f0, 60)))
    c = np.cos(phase).astype(np.float32)
    s_prev, s_cur = np.zeros_like(c), np.sin(phase).astype(np.float32)
    out = np.zeros_like(c)
    two_c = 2 * c
    for k in range(1, k_max + 1):
        fk = k * f0
        weight = k ** (-tilt) * (0.15 + sum(math.exp(-(((fk - fm) / 160.0) ** 2)) for fm in formants))
        out += weight * s_cur
        # sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x): one multiply-add per harmonic instead of a sin().
        s_prev, s_cur = s_cur, two_c * s_cur - s_prev
    return out


def _jittered_voice(rng: np.random.Generator, expression: str, intensity: float) -> VoiceParams:
    neutral = EXPRESSIONS["neutral"][1]
    v = neutral.toward(EXPRESSIONS[expression][1], intensity) if expression != "neutral" else neutral
    return replace(
        v,
        pitch_st=v.pitch_st + rng.normal(0, 1.0),
        range_st=v.range_st * math.exp(rng.normal(0, 0.15)),
        energy_db=v.energy_db + rng.normal(0, 1.5),
        rate=v.rate * math.exp(rng.normal(0, 0.08)),
    )
