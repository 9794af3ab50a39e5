"""Synthetic miniature copies of the IEMOCAP, CMU-MOSEI and CH-SIMS raw releases, in the real formats.

``synthesize(dataset, root, seed=..., size=...)`` writes a release that the real-data preprocessing reads
unchanged (layouts: reference-spec §0.1.1, §0.1.3, §0.3; file formats: ``emolib.data.formats``):

* ``iemocap``: ``Session{n}/dialog/avi/DivX/<dialog>.avi`` (MPEG-4 part 2, fourcc DIVX, 29.97 fps, 640x240 =
  two 320x240 halves), ``dialog/wav/<dialog>.wav`` (16 kHz stereo int16), ``dialog/EmoEvaluation/<dialog>.txt``,
  ``dialog/transcriptions/<dialog>.txt``. Dialogs ``Ses01F_impro01``, ``Ses01M_impro01``, ``Ses01F_script01_1``
  ...; utterances ``<dialog>_F000`` / ``_M000`` numbered per speaker. The actor whose gender letter equals the
  session letter sits on the left half and speaks into channel 0 (Dai's ``use_left`` rule), the other on the
  right half / channel 1; the other channel carries crosstalk at -18 dB.
* ``mosei``: ``Videos/Full/Combined/<vid>.mp4`` (H.264 30 fps 320x240 + AAC), ``Audio/WAV_16000/<vid>.wav``
  (16 kHz mono int16), ``Transcript/Combined/<vid>.txt``, ``Labels/Batch_*_batch_results.csv`` (three MTurk
  rows per clip).
* ``sims``: ``label.csv`` and ``Raw/<video_id>/<clip_id>.mp4`` (H.264 25 fps 320x240 + AAC 16 kHz mono).
* ``synthetic_manifest.json`` at the root: seed, size, the design below, every clip's ground truth and latent
  cues, and the sha256 of every file (the provenance of the release).

Generative model (one clip = one utterance)
-------------------------------------------
1. Label. IEMOCAP: a 3-letter code allocated from ``SYNTH_DESIGN['iemocap']['label_weights']`` (largest
   remainder, then shuffled, so small releases stay balanced); ``xxx``/``sur``/``oth`` utterances exist and are
   dropped by the 6-class protocol. MOSEI: a set S of 0, 1 or 2 emotions (counts allocated from
   ``n_emotion_weights``, emotions drawn from ``emotion_weights``); three annotators each mark every emotion of
   S with probability 0.7 and intensity 1-3 (at least one marks it), never an emotion outside S, so Dai's
   aggregation (sum > 0) returns exactly S while raw rows disagree. CH-SIMS: M on the 0.2 grid of [-1, 1]
   from ``m_weights`` plus a negative flavour (sadness or anger); ``mode`` allocated 60/20/20.
2. Cue per modality (visual, audio, text), independently: with probability ``informative`` the modality shows
   the label (IEMOCAP: its expression; MOSEI: the emotions of S one after the other, first half / second
   half of the clip, or neutral for S empty; SIMS: sentiment M), with ``missing`` it shows neutral (SIMS:
   sentiment 0), with ``contradict`` it shows another label (IEMOCAP: a uniformly drawn other 6-class
   expression; MOSEI: an emotion outside S; SIMS: sentiment -M, or +-U(0.4, 0.8) for M = 0). IEMOCAP ``xxx``
   shows a random 6-class expression per modality (no majority), ``oth`` shows fear or disgust. CH-SIMS
   ``label_T/A/V`` are the displayed sentiment of that modality plus N(0, 0.08) annotator noise on the 0.2
   grid, so they differ from M where the cue is missing or contradicting (and, through the noise, a little
   elsewhere).
3. Rendering of a shown expression with intensity U(0.7, 1.1) (SIMS: |sentiment| x U(0.85, 1.15)) plus per
   clip jitter:
   * visual: a drawn head (skin ellipse, hair, ears, neck/shoulders, eyes with iris and pupil, brows, nose,
     lips) whose mouth curvature/openness/width, brow tilt/height and eye openness follow ``EXPRESSIONS``;
     per clip N(0, 0.08) parameter jitter, face size x U(0.92, 1.08), head tilt N(0, 4 deg); per frame a
     slow drift (6-14 px) and head motion (2-5 px); the mouth opens with the syllable envelope of the audio.
     facenet-pytorch MTCNN detects these faces (checked by the tests).
   * audio: a voiced source (harmonics of f0 with spectral tilt, shaped by vowel formants per syllable, plus
     breath noise) whose pitch level/range/slope, energy, syllable rate, brightness, breathiness and vibrato
     follow the expression (speaker f0: F 185-235 Hz, M 100-135 Hz); per clip jitter of pitch (N(0, 1) st),
     rate (x e^N(0, 0.08)), energy (N(0, 1.5) dB), range; background noise of 0.002-0.008 RMS.
   * text: a template sentence with an emotion word (several synonyms per emotion, intensity adverbs) plus
     neutral filler; a neutral cue gives filler only. CH-SIMS text is pinyin by default (``sims_script``;
     ``"hanzi"`` writes Chinese characters, which English-vocabulary tokenizers map to [UNK]).
4. Everything is drawn from ``numpy.random.default_rng`` seeded by (seed, dataset, stream), so a seed gives
   byte-identical text, CSV and wav files; the video encoders run single-threaded and were checked to be
   deterministic too (tests compare label/text/wav bytes only).

Because the three cues are independent given the label, fusing modalities beats the best single one; the
design numbers are exposed (``SYNTH_DESIGN``, ``informative_probability``) and ``cue_accuracy`` turns them
into the accuracy of the best decision rule that sees which expression each cue shows, an upper bound for a
model given those modalities, so integration tests can derive margins instead of tuning them.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
import wave
import zlib
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from emolib import io as eio
from emolib.data import formats
from emolib.data.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS

log = logging.getLogger(__name__)

DATASETS = ("iemocap", "mosei", "sims")
MODALITIES = ("visual", "audio", "text")
SIZES = ("tiny", "smoke")
SAMPLE_RATE = 16000
MANIFEST_NAME = "synthetic_manifest.json"
GENERATOR = "emolib.data.synthetic"
GENERATOR_VERSION = 2
SIMS_SCRIPTS = ("pinyin", "hanzi")


# ==========================================================================================================
# Design numbers


@dataclass(frozen=True)
class CueDesign:
    """Probabilities that one modality's cue shows the label, shows neutral, or shows another label."""

    informative: float
    missing: float
    contradict: float

    def __post_init__(self) -> None:
        if min(self.informative, self.missing, self.contradict) < 0 or not math.isclose(
            self.informative + self.missing + self.contradict, 1.0
        ):
            raise ValueError(f"cue probabilities must be >= 0 and sum to 1: {self}")


SYNTH_DESIGN: dict[str, dict[str, Any]] = {
    "iemocap": {
        "cues": {
            "visual": CueDesign(0.65, 0.20, 0.15),
            "audio": CueDesign(0.60, 0.25, 0.15),
            "text": CueDesign(0.60, 0.25, 0.15),
        },
        "label_weights": {"ang": 0.15, "exc": 0.14, "fru": 0.17, "hap": 0.13, "neu": 0.17, "sad": 0.14,
                          "xxx": 0.06, "sur": 0.02, "oth": 0.02},
        "fps": Fraction(30000, 1001),
        "frame_size": (640, 240),
        "slots": 2,
        "clip_seconds": (1.5, 3.5),
        "gap_seconds": (0.15, 0.6),
        "container": ("avi", "mpeg4"),
        "metric": "accuracy over the six classes",
    },
    "mosei": {
        "cues": {
            "visual": CueDesign(0.65, 0.20, 0.15),
            "audio": CueDesign(0.60, 0.25, 0.15),
            "text": CueDesign(0.60, 0.25, 0.15),
        },
        "n_emotion_weights": (0.25, 0.5, 0.25),
        "emotion_weights": {"anger": 0.17, "disgust": 0.13, "fear": 0.10, "happiness": 0.30, "sadness": 0.20,
                            "surprise": 0.10},
        "annotators": 3,
        "annotator_marks": 0.7,
        "fps": Fraction(30),
        "frame_size": (320, 240),
        "slots": 1,
        "clip_seconds": (1.5, 3.5),
        "gap_seconds": (0.1, 0.5),
        "container": ("mp4", "libx264"),
        "metric": "mean over emotions of weighted accuracy (TPR + TNR) / 2",
    },
    "sims": {
        "cues": {
            "visual": CueDesign(0.65, 0.20, 0.15),
            "audio": CueDesign(0.60, 0.25, 0.15),
            "text": CueDesign(0.60, 0.25, 0.15),
        },
        # M on the 0.2 grid; 0 counts as negative for Acc2.
        "m_weights": {-1.0: 0.08, -0.8: 0.10, -0.6: 0.10, -0.4: 0.08, -0.2: 0.04, 0.0: 0.10, 0.2: 0.04,
                      0.4: 0.08, 0.6: 0.12, 0.8: 0.12, 1.0: 0.14},
        "mode_weights": {"train": 0.6, "valid": 0.2, "test": 0.2},
        "unimodal_label_noise": 0.08,
        "fps": Fraction(25),
        "frame_size": (320, 240),
        "slots": 1,
        "clip_seconds": (1.5, 3.0),
        "container": ("mp4", "libx264"),
        "metric": "Acc2 of M (M > 0 vs M <= 0)",
    },
}

SIZE_LAYOUT: dict[str, dict[str, dict[str, Any]]] = {
    "iemocap": {
        "tiny": {"sessions": 1, "dialogs": ("F_impro01", "M_impro01"), "utterances": 5},
        "smoke": {"sessions": 4, "dialogs": ("F_impro01", "M_impro01", "F_script01_1", "M_script01_1"),
                  "utterances": 28},
    },
    "mosei": {"tiny": {"videos": 2, "clips": 3}, "smoke": {"videos": 28, "clips": 15}},
    "sims": {"tiny": {"videos": 2, "clips": 3}, "smoke": {"videos": 24, "clips": 18}},
}

INTENSITY_RANGE = (0.7, 1.1)


def informative_probability(dataset: str, modality: str) -> float:
    """Probability that ``modality``'s cue shows the clip's label (the rest is neutral or contradicting)."""
    return _design(dataset)["cues"][_check_modality(modality)].informative


def cue_design(dataset: str, modality: str) -> CueDesign:
    return _design(dataset)["cues"][_check_modality(modality)]


def _design(dataset: str) -> dict[str, Any]:
    if dataset not in SYNTH_DESIGN:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return SYNTH_DESIGN[dataset]


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return modality


# ==========================================================================================================
# Expressions: how each displayed emotion looks, sounds and reads


@dataclass(frozen=True)
class FaceParams:
    mouth_curve: float  # + smile (corners up), - frown
    mouth_open: float  # 0 closed .. 1 wide open
    mouth_width: float  # relative to neutral
    brow_tilt: float  # + inner ends down (anger), - inner ends up (sadness, fear)
    brow_raise: float  # + raised
    eye_open: float  # relative sclera height

    def values(self) -> tuple[float, ...]:
        return (self.mouth_curve, self.mouth_open, self.mouth_width, self.brow_tilt, self.brow_raise, self.eye_open)

    def toward(self, target: FaceParams, amount: float) -> FaceParams:
        return FaceParams(*(a + amount * (b - a) for a, b in zip(self.values(), target.values())))


@dataclass(frozen=True)
class VoiceParams:
    pitch_st: float  # level above the speaker's base f0, semitones
    range_st: float  # spread of syllable accents, semitones
    slope_st: float  # rise (+) or fall (-) over the utterance, semitones
    energy_db: float  # level relative to neutral
    rate: float  # syllables per second
    tilt: float  # harmonic amplitude roll-off exponent (low = bright, harsh)
    breath: float  # breath-noise share
    vibrato_st: float  # 5.5 Hz pitch tremor depth

    def toward(self, target: VoiceParams, amount: float) -> VoiceParams:
        mixed = {
            name: getattr(self, name) + amount * (getattr(target, name) - getattr(self, name))
            for name in self.__dataclass_fields__
        }
        mixed["rate"] = self.rate * (target.rate / self.rate) ** amount  # rates mix geometrically
        return VoiceParams(**mixed)


EXPRESSIONS: dict[str, tuple[FaceParams, VoiceParams]] = {
    "neutral": (FaceParams(0.0, 0.08, 1.0, 0.0, 0.0, 1.0), VoiceParams(0, 1.5, -1.0, 0, 4.0, 1.3, 0.05, 0)),
    "happiness": (FaceParams(0.9, 0.12, 1.2, 0.0, 0.15, 0.85), VoiceParams(3, 4.0, 1.0, 3, 4.6, 1.1, 0.05, 0)),
    "excitement": (FaceParams(0.9, 0.8, 1.15, -0.1, 0.6, 1.3), VoiceParams(6, 6.0, 3.0, 6, 6.0, 0.9, 0.03, 0)),
    "anger": (FaceParams(-0.6, 0.6, 1.05, 0.9, -0.5, 0.7), VoiceParams(3, 3.0, -3.0, 9, 5.4, 0.7, 0.02, 0)),
    "frustration": (FaceParams(-0.4, 0.0, 0.8, 0.5, -0.2, 0.8), VoiceParams(0.5, 2.5, -2.5, 4, 3.4, 1.0, 0.15, 0)),
    "sadness": (FaceParams(-0.8, 0.05, 0.9, -0.8, 0.2, 0.45), VoiceParams(-3, 1.0, -2.0, -7, 2.6, 1.8, 0.2, 0)),
    "surprise": (FaceParams(0.0, 1.0, 0.7, -0.2, 0.9, 1.4), VoiceParams(7, 8.0, 5.0, 4, 4.0, 1.0, 0.05, 0)),
    "fear": (FaceParams(-0.3, 0.6, 1.2, -0.7, 0.7, 1.35), VoiceParams(5, 3.0, 1.0, -2, 6.5, 1.4, 0.15, 0.8)),
    "disgust": (FaceParams(-0.5, 0.2, 0.9, 0.4, -0.3, 0.6), VoiceParams(-2, 3.0, -3.0, -1, 3.0, 1.2, 0.1, 0)),
}

IEMOCAP_EXPRESSION = {"ang": "anger", "exc": "excitement", "fru": "frustration", "hap": "happiness",
                      "neu": "neutral", "sad": "sadness", "sur": "surprise"}
IEMOCAP_POOL = tuple(IEMOCAP_EXPRESSION[c] for c in IEMOCAP_CLASSES)
MOSEI_POOL = MOSEI_EMOTIONS  # the MOSEI emotion names are expression names

WORDS_EN: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "furious", "mad", "outraged", "livid"),
    "happiness": ("happy", "glad", "cheerful", "pleased", "delighted"),
    "excitement": ("excited", "thrilled", "pumped", "ecstatic", "eager"),
    "frustration": ("frustrated", "annoyed", "irritated", "fed up", "exasperated"),
    "sadness": ("sad", "miserable", "heartbroken", "gloomy", "depressed"),
    "surprise": ("surprised", "shocked", "amazed", "astonished", "stunned"),
    "fear": ("scared", "afraid", "terrified", "nervous", "frightened"),
    "disgust": ("disgusted", "sickened", "repulsed", "grossed out", "revolted"),
}
FILLERS_EN = (
    "we talked about the schedule", "the car is parked outside", "I went to the office this morning",
    "she called me yesterday", "the meeting moved to Tuesday", "we need to fill in the forms",
    "it is on the second floor", "they sent the package last week", "I will check the train times",
    "the keys are on the table", "he lives across the street", "the store closes at six",
)
ADVERBS_EN = ("", "so ", "really ", "very ", "quite ")
TEMPLATES_EN = (
    "{Filler}, and honestly I feel {adv}{word}.",
    "I am {adv}{word}, {filler}.",
    "{Filler}. It makes me {adv}{word}.",
    "Honestly, I feel {adv}{word} because {filler}.",
)

# CH-SIMS lexicon as (pinyin, hanzi) pairs.
WORDS_ZH: dict[str, tuple[tuple[str, str], ...]] = {
    "happiness": (("kaixin", "开心"), ("gaoxing", "高兴"), ("manyi", "满意"), ("xihuan", "喜欢")),
    "sadness": (("nanguo", "难过"), ("shangxin", "伤心"), ("shiwang", "失望"), ("tongku", "痛苦")),
    "anger": (("shengqi", "生气"), ("fennu", "愤怒"), ("taoyan", "讨厌"), ("fanzao", "烦躁")),
}
FILLERS_ZH = (
    ("women jintian qu le xuexiao", "我们今天去了学校"),
    ("zhe ge shiqing shi zheyang de", "这个事情是这样的"),
    ("ta shuo mingtian zai lai", "他说明天再来"), ("wo zai jia li chi fan", "我在家里吃饭"),
    ("women kai le yi ge hui", "我们开了一个会"), ("na tian xia yu le", "那天下雨了"),
    ("wo gang cong gongsi huilai", "我刚从公司回来"),
    ("ta ba dongxi fang zai zhuo shang", "他把东西放在桌上"),
)
ADVERBS_ZH = (("feichang", "非常"), ("hen", "很"), ("youdian", "有点"))


# ==========================================================================================================
# Release plan: every random decision about labels, timing and text, made before anything is rendered


@dataclass(frozen=True)
class Display:
    """What one modality of one clip shows: outcome of the cue draw and the expression segments in time order."""

    outcome: str  # informative | missing | contradict | ambiguous
    shown: tuple[tuple[str, float], ...]  # (expression, intensity); intensity 0 means neutral
    sentiment: float | None = None  # CH-SIMS only: displayed sentiment in [-1, 1]


@dataclass(frozen=True)
class Actor:
    key: str
    gender: str
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    long_hair: bool
    f0: float
    face_w: float
    gain: float


@dataclass
class ClipPlan:
    uid: str
    video: str
    start: float
    end: float
    slot: int  # which actor/side speaks (IEMOCAP: 0 = left half, channel 0)
    label: Any  # IEMOCAP code | MOSEI 6-tuple (MOSEI_EMOTIONS order) | SIMS {"M","T","A","V"}
    displays: dict[str, Display]
    text: str
    split: str | None = None  # CH-SIMS mode
    annotation: Any = None  # IEMOCAP evaluator block | MOSEI MTurk rows


@dataclass
class VideoPlan:
    name: str
    index: int
    duration: float
    actors: tuple[Actor, ...]
    clips: list[ClipPlan] = field(default_factory=list)
    extra_turns: list[formats.IemocapTurn] = field(default_factory=list)


@dataclass
class ReleasePlan:
    dataset: str
    seed: int
    size: str
    videos: list[VideoPlan]
    sims_script: str = "pinyin"

    @property
    def clips(self) -> list[ClipPlan]:
        return [c for v in self.videos for c in v.clips]


def _rng(seed: int, dataset: str, *keys: int) -> np.random.Generator:
    # zlib.crc32 rather than hash(): str hashes are salted per process.
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode()), *keys])


def _allocate(weights: dict[Any, float] | Sequence[float], n: int, rng: np.random.Generator) -> list[Any]:
    """``n`` keys in proportion to ``weights`` (largest remainder, ties by order), in random order."""
    keys = list(weights) if isinstance(weights, dict) else list(range(len(weights)))
    w = np.array([weights[k] for k in keys] if isinstance(weights, dict) else list(weights), float)
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(int)
    for i in sorted(range(len(keys)), key=lambda i: (-(exact[i] - counts[i]), i))[: n - counts.sum()]:
        counts[i] += 1
    out = [k for k, c in zip(keys, counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(len(out))]


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _draw_display(
    rng: np.random.Generator, cue: CueDesign, target: tuple[str, ...], pool: Sequence[str]
) -> Display:
    """One modality's cue for a clip whose label shows as ``target`` (empty = neutral)."""
    target = target or ("neutral",)
    u = rng.random()
    if u < cue.informative:
        outcome, shown = "informative", target
    elif u < cue.informative + cue.missing:
        outcome, shown = "missing", ("neutral",)
    else:
        outcome, shown = "contradict", (_choice(rng, [e for e in pool if e not in target]),)
    return Display(outcome, tuple((e, _intensity(rng, e)) for e in shown))


def _intensity(rng: np.random.Generator, expression: str) -> float:
    return 0.0 if expression == "neutral" else float(rng.uniform(*INTENSITY_RANGE))


def _iemocap_displays(rng: np.random.Generator, label: str) -> dict[str, Display]:
    cues = SYNTH_DESIGN["iemocap"]["cues"]
    if label == "xxx":
        out = {}
        for m in MODALITIES:
            e = _choice(rng, IEMOCAP_POOL)
            out[m] = Display("ambiguous", ((e, _intensity(rng, e)),))
        return out
    target = (_choice(rng, ("fear", "disgust")),) if label == "oth" else (IEMOCAP_EXPRESSION[label],)
    target = () if target == ("neutral",) else target
    return {m: _draw_display(rng, cues[m], target, IEMOCAP_POOL) for m in MODALITIES}


def _mosei_displays(rng: np.random.Generator, emotions: tuple[str, ...]) -> dict[str, Display]:
    cues = SYNTH_DESIGN["mosei"]["cues"]
    return {m: _draw_display(rng, cues[m], emotions, MOSEI_POOL) for m in MODALITIES}


def _sample_mosei_emotions(rng: np.random.Generator, k: int) -> tuple[str, ...]:
    weights = SYNTH_DESIGN["mosei"]["emotion_weights"]
    p = np.array([weights[e] for e in MOSEI_EMOTIONS])
    picked = rng.choice(len(MOSEI_EMOTIONS), size=k, replace=False, p=p / p.sum())
    return tuple(MOSEI_EMOTIONS[i] for i in picked)


def _sims_displays(rng: np.random.Generator, m: float, flavour: str) -> dict[str, Display]:
    cues = SYNTH_DESIGN["sims"]["cues"]
    out = {}
    for mod in MODALITIES:
        cue, u = cues[mod], rng.random()
        if u < cue.informative:
            outcome, s = "informative", m
        elif u < cue.informative + cue.missing:
            outcome, s = "missing", 0.0
        else:
            outcome = "contradict"
            s = -m if m != 0 else float(rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8))
        out[mod] = Display(outcome, (_sentiment_expression(rng, s, flavour),), round(float(s), 6))
    return out


def _sentiment_expression(rng: np.random.Generator, s: float, flavour: str) -> tuple[str, float]:
    if s == 0:
        return ("neutral", 0.0)
    intensity = float(min(1.1, abs(s) * rng.uniform(0.85, 1.15)))
    return ("happiness" if s > 0 else flavour, intensity)


def _grid(value: float) -> float:
    """Nearest point of the CH-SIMS 0.2 grid within [-1, 1] (rounded so it prints as e.g. -0.8)."""
    return round(float(np.clip(round(value * 5) / 5, -1.0, 1.0)), 1) + 0.0


def plan_release(dataset: str, *, seed: int = 0, size: str = "smoke", sims_script: str = "pinyin") -> ReleasePlan:
    """Every label, time, text and cue of the release that ``synthesize`` would write (the ground truth)."""
    _design(dataset)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    if sims_script not in SIMS_SCRIPTS:
        raise ValueError(f"unknown sims_script {sims_script!r}; expected one of {', '.join(SIMS_SCRIPTS)}")
    rng = _rng(seed, dataset, 0)
    layout = SIZE_LAYOUT[dataset][size]
    if dataset == "iemocap":
        videos = _plan_iemocap(rng, layout)
    elif dataset == "mosei":
        videos = _plan_mosei(rng, layout)
    else:
        videos = _plan_sims(rng, layout, sims_script)
    return ReleasePlan(dataset, int(seed), size, videos, sims_script)


def _make_actor(rng: np.random.Generator, key: str, gender: str) -> Actor:
    skins = ((241, 194, 160), (224, 172, 135), (198, 134, 99), (161, 102, 68), (120, 76, 52), (236, 188, 180))
    hairs = ((40, 28, 22), (70, 45, 28), (110, 70, 40), (20, 20, 20), (150, 110, 60), (90, 90, 90))
    irises = ((60, 40, 25), (40, 80, 120), (50, 90, 50), (30, 30, 30))
    skin = _choice(rng, skins)
    # Hair clearly darker than the skin keeps the face outline visible to the detector.
    hair = _choice(rng, [h for h in hairs if _luma(h) < _luma(skin) - 40])
    lips = (170, 60, 75) if gender == "F" else (int(skin[0] * 0.72), int(skin[1] * 0.5), int(skin[2] * 0.5))
    shirt = tuple(int(v) for v in rng.integers(40, 200, size=3))
    return Actor(
        key=key, gender=gender, skin=skin, hair=hair, shirt=shirt, iris=_choice(rng, irises),
        lips=lips, long_hair=bool(gender == "F" and rng.random() < 0.7),
        f0=float(rng.uniform(185, 235) if gender == "F" else rng.uniform(100, 135)),
        face_w=float(rng.uniform(96, 114)), gain=float(rng.uniform(0.8, 1.25)),
    )


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _durations(rng: np.random.Generator, design: dict[str, Any], n: int) -> np.ndarray:
    return rng.uniform(*design["clip_seconds"], size=n)


def _plan_iemocap(rng: np.random.Generator, layout: dict[str, Any]) -> list[VideoPlan]:
    design = SYNTH_DESIGN["iemocap"]
    n_dialogs = layout["sessions"] * len(layout["dialogs"])
    labels = iter(_allocate(design["label_weights"], n_dialogs * layout["utterances"], rng))
    videos: list[VideoPlan] = []
    for s in range(1, layout["sessions"] + 1):
        actors = {g: _make_actor(rng, f"Ses{s:02d}_{g}", g) for g in "FM"}
        for suffix in layout["dialogs"]:
            name = f"Ses{s:02d}{suffix[0]}_{suffix[2:]}"
            # Dai's rule: the actor whose letter matches the session letter is on the left (slot 0).
            left, right = (actors["F"], actors["M"]) if suffix[0] == "F" else (actors["M"], actors["F"])
            video = VideoPlan(name, len(videos), 0.0, (left, right))
            _fill_iemocap_dialog(rng, video, [next(labels) for _ in range(layout["utterances"])], design)
            videos.append(video)
    return videos


def _fill_iemocap_dialog(rng: np.random.Generator, video: VideoPlan, labels: list[str], design: dict) -> None:
    counters = {"F": 0, "M": 0}
    t = float(rng.uniform(0.5, 1.2))
    slot = int(rng.integers(2))
    for i, (label, dur) in enumerate(zip(labels, _durations(rng, design, len(labels)))):
        if i and rng.random() < 0.75:
            slot = 1 - slot
        gender = video.actors[slot].gender
        uid = f"{video.name}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        start, end = round(t, 4), round(t + float(dur), 4)
        displays = _iemocap_displays(rng, label)
        clip = ClipPlan(uid, video.name, start, end, slot, label, displays, _english_text(rng, displays["text"]))
        clip.annotation = _iemocap_block(rng, clip)
        video.clips.append(clip)
        t = end + float(rng.uniform(*design["gap_seconds"]))
    video.duration = round(t + float(rng.uniform(0.3, 0.8)), 4)
    # A backchannel overlapping a random utterance: a transcription line that is not an utterance.
    host = video.clips[int(rng.integers(len(video.clips)))]
    other = video.actors[1 - host.slot].gender
    mid = round((host.start + host.end) / 2, 4)
    video.extra_turns.append(formats.IemocapTurn(f"{video.name}_{other}XX0", mid, round(mid + 0.4, 4), "Mm-hmm."))


_VAD_MEANS = {"ang": (1.8, 4.0, 3.8), "exc": (4.0, 3.8, 3.4), "fru": (2.0, 3.4, 3.0), "hap": (4.0, 2.9, 3.0),
              "neu": (3.0, 2.4, 2.9), "sad": (1.9, 2.1, 2.2), "sur": (3.4, 3.9, 3.0), "oth": (2.8, 3.0, 3.0)}


def _iemocap_block(rng: np.random.Generator, clip: ClipPlan) -> formats.IemocapBlock:
    names = formats.IEMOCAP_CATEGORY_NAMES
    label = clip.label
    if label == "xxx":
        votes = [names[c] for c in rng.choice(["ang", "exc", "fru", "hap", "neu", "sad"], 3, replace=False)]
    else:
        votes = [names[label]] * 3
        if rng.random() < 0.5:  # one dissenting evaluator; the majority still holds
            votes[int(rng.integers(3))] = names[_choice(rng, [c for c in ("fru", "neu", "ang", "sad") if c != label])]
    categorical = tuple((f"C-E{i + 1}", (v,), "") for i, v in enumerate(votes))
    mean = _VAD_MEANS.get(label, (3.0, 3.0, 3.0))
    dims = tuple(
        (f"A-E{i + 1}", tuple(int(np.clip(round(m + rng.normal(0, 0.7)), 1, 5)) for m in mean)) for i in range(2)
    )
    vad = tuple(round(sum(d[1][k] for d in dims) / len(dims), 4) for k in range(3))
    evaluation = formats.IemocapEvaluation(clip.uid, clip.start, clip.end, label, vad)
    return formats.IemocapBlock(evaluation, categorical, dims)


def _video_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
    # Underscores are left out so that "<vid>_<clip>" and the "___" transcript separator stay unambiguous.
    return "".join(_choice(rng, alphabet) for _ in range(11))


def _plan_mosei(rng: np.random.Generator, layout: dict[str, Any]) -> list[VideoPlan]:
    design = SYNTH_DESIGN["mosei"]
    n = layout["videos"] * layout["clips"]
    counts = iter(_allocate(design["n_emotion_weights"], n, rng))
    workers = [f"A{''.join(_choice(rng, 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789') for _ in range(13))}" for _ in range(8)]
    videos: list[VideoPlan] = []
    used: set[str] = set()
    for v in range(layout["videos"]):
        vid = _video_id(rng)
        while vid in used:
            vid = _video_id(rng)
        used.add(vid)
        actor = _make_actor(rng, vid, _choice(rng, "FM"))
        video = VideoPlan(vid, v, 0.0, (actor,))
        t = float(rng.uniform(0.3, 1.0))
        for c, dur in enumerate(_durations(rng, design, layout["clips"])):
            emotions = _sample_mosei_emotions(rng, next(counts))
            label = tuple(int(e in emotions) for e in MOSEI_EMOTIONS)
            displays = _mosei_displays(rng, emotions)
            start, end = round(t, 3), round(t + float(dur), 3)
            clip = ClipPlan(f"{vid}_{c}", vid, start, end, 0, label, displays, _english_text(rng, displays["text"]))
            clip.annotation = _mosei_rows(rng, vid, c, emotions, workers)
            video.clips.append(clip)
            t = end + float(rng.uniform(*design["gap_seconds"]))
        video.duration = round(t + float(rng.uniform(0.3, 0.8)), 3)
        videos.append(video)
    return videos


def _mosei_rows(
    rng: np.random.Generator, vid: str, clip: int, emotions: tuple[str, ...], workers: list[str]
) -> list[dict[str, Any]]:
    design = SYNTH_DESIGN["mosei"]
    k = design["annotators"]
    who = rng.choice(len(workers), size=k, replace=False)
    marks = np.zeros((k, len(MOSEI_EMOTIONS)), int)
    for e in emotions:
        j = MOSEI_EMOTIONS.index(e)
        marked = rng.random(k) < design["annotator_marks"]
        if not marked.any():
            marked[int(rng.integers(k))] = True
        marks[:, j] = np.where(marked, rng.choice([1, 2, 3], size=k, p=[0.5, 0.35, 0.15]), 0)
    hit = "".join(_choice(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(30))
    rows = []
    for a in range(k):
        positive = marks[a, MOSEI_EMOTIONS.index("happiness")]
        negative = marks[a, [MOSEI_EMOTIONS.index(e) for e in ("anger", "disgust", "fear", "sadness")]].max()
        sentiment = int(np.clip(positive - negative + rng.integers(-1, 2), -3, 3))
        assignment = "".join(_choice(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(30))
        rows.append({"HITId": hit, "AssignmentId": assignment, "WorkerId": workers[int(who[a])], "video": vid,
                     "clip": clip, "answers": [int(x) for x in marks[a]], "sentiment": sentiment})
    return rows


def _plan_sims(rng: np.random.Generator, layout: dict[str, Any], script: str) -> list[VideoPlan]:
    design = SYNTH_DESIGN["sims"]
    n = layout["videos"] * layout["clips"]
    modes = iter(_allocate(design["mode_weights"], n, rng))
    grid = list(design["m_weights"])
    p = np.array([design["m_weights"][g] for g in grid])
    videos: list[VideoPlan] = []
    for v in range(layout["videos"]):
        video_id = f"video_{v + 1:04d}"
        actor = _make_actor(rng, video_id, _choice(rng, "FM"))
        for c, dur in enumerate(_durations(rng, design, layout["clips"])):
            clip_id = f"{c + 1:04d}"
            m = float(grid[int(rng.choice(len(grid), p=p / p.sum()))])
            flavour = _choice(rng, ("sadness", "anger"))
            displays = _sims_displays(rng, m, flavour)
            noise = design["unimodal_label_noise"]
            label = {"M": _grid(m)}
            for key, mod in (("T", "text"), ("A", "audio"), ("V", "visual")):
                label[key] = _grid(displays[mod].sentiment + rng.normal(0, noise))
            lead, tail = float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.1, 0.25))
            start, end = round(lead, 4), round(lead + float(dur), 4)
            text = _sims_text(rng, displays["text"], flavour, script)
            clip = ClipPlan(f"{video_id}$_${clip_id}", f"{video_id}/{clip_id}", start, end, 0, label, displays,
                            text, split=next(modes))
            videos.append(VideoPlan(f"{video_id}/{clip_id}", len(videos), round(end + tail, 4), (actor,), [clip]))
    return videos


def _english_text(rng: np.random.Generator, display: Display) -> str:
    filler = _choice(rng, FILLERS_EN)
    emotional = [e for e, _ in display.shown if e != "neutral"]
    if not emotional:
        if rng.random() < 0.5:
            return f"{filler[0].upper()}{filler[1:]}."
        second = _choice(rng, [f for f in FILLERS_EN if f != filler])
        return f"{filler[0].upper()}{filler[1:]}, and {second}."
    if len(emotional) == 2:
        w1, w2 = (_choice(rng, WORDS_EN[e]) for e in emotional)
        return f"{filler[0].upper()}{filler[1:]}. First I was {w1}, and now I am {_choice(rng, ADVERBS_EN)}{w2}."
    template = _choice(rng, TEMPLATES_EN)
    return template.format(Filler=filler[0].upper() + filler[1:], filler=filler, adv=_choice(rng, ADVERBS_EN),
                           word=_choice(rng, WORDS_EN[emotional[0]]))


def _sims_text(rng: np.random.Generator, display: Display, flavour: str, script: str) -> str:
    k = 0 if script == "pinyin" else 1
    filler = _choice(rng, FILLERS_ZH)[k]
    s = display.sentiment or 0.0
    if s == 0:
        second = _choice(rng, [f for f in FILLERS_ZH if f[k] != filler])[k]
        return f"{filler}，{' ' if k == 0 else ''}{second}。"
    word = _choice(rng, WORDS_ZH["happiness" if s > 0 else flavour])[k]
    adverb = ADVERBS_ZH[0 if abs(s) >= 0.7 else (1 if abs(s) >= 0.4 else 2)][k]
    me = "wo " if k == 0 else "我"
    sep = " " if k == 0 else ""
    form = int(rng.integers(3))
    if form == 0:
        return f"{filler}，{sep}{me}{adverb}{sep}{word}。"
    if form == 1:
        return f"{adverb}{sep}{word}，{sep}{filler}。"
    # An ASCII comma inside the text: label.csv must quote the field.
    intro = "hao ba" if k == 0 else "好吧"
    return f"{intro}, {filler}，{sep}{me}{adverb}{sep}{word}。"


# ==========================================================================================================
# Decision-rule bounds derived from the design


def chance_accuracy(dataset: str) -> float:
    """Score of the best constant prediction under the dataset's metric (see ``SYNTH_DESIGN[...]['metric']``)."""
    design = _design(dataset)
    if dataset == "iemocap":
        w = {c: design["label_weights"][c] for c in IEMOCAP_CLASSES}
        return max(w.values()) / sum(w.values())
    if dataset == "mosei":
        return 0.5  # a constant predictor has TPR + TNR = 1
    w = design["m_weights"]
    positive = sum(v for k, v in w.items() if k > 0) / sum(w.values())
    return max(positive, 1 - positive)


def cue_accuracy(dataset: str, modalities: Iterable[str], *, n: int = 20000, seed: int = 0) -> float:
    """Accuracy (dataset metric) of the best rule that sees which expression each listed modality shows.

    Estimated by Monte Carlo with the generator's own samplers: the rule (most likely label per cell of
    displayed cues) is fitted on one half of ``n`` draws and scored on the other. It assumes perfect perception
    of the displayed expression, so it bounds what a model of those modalities can reach; with no modality it
    equals the chance level up to sampling error."""
    _design(dataset)
    mods = tuple(_check_modality(m) for m in modalities)
    rng = _rng(seed, dataset, 99)
    if dataset == "mosei":
        return _mosei_cue_accuracy(rng, mods, n)
    draw = _draw_iemocap_cells if dataset == "iemocap" else _draw_sims_cells
    return _cell_rule_accuracy(*draw(rng, mods, n))


def _draw_iemocap_cells(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> tuple[list, list]:
    weights = SYNTH_DESIGN["iemocap"]["label_weights"]
    p = np.array([weights[c] for c in IEMOCAP_CLASSES])
    labels = rng.choice(len(IEMOCAP_CLASSES), size=n, p=p / p.sum())
    keys, ys = [], []
    for y in labels:
        displays = _iemocap_displays(rng, IEMOCAP_CLASSES[y])
        keys.append(tuple(displays[m].shown[0][0] for m in mods))
        ys.append(int(y))
    return keys, ys


def _draw_sims_cells(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> tuple[list, list]:
    w = SYNTH_DESIGN["sims"]["m_weights"]
    grid = list(w)
    p = np.array([w[g] for g in grid])
    keys, ys = [], []
    for i in rng.choice(len(grid), size=n, p=p / p.sum()):
        m = float(grid[i])
        displays = _sims_displays(rng, m, "sadness")
        keys.append(tuple(int(np.sign(displays[mod].sentiment)) for mod in mods))
        ys.append(int(m > 0))
    return keys, ys


def _cell_rule_accuracy(keys: list, ys: list) -> float:
    half = len(keys) // 2
    counts: dict[Any, dict[int, int]] = {}
    for k, y in zip(keys[:half], ys[:half]):
        counts.setdefault(k, {}).setdefault(y, 0)
        counts[k][y] += 1
    overall: dict[int, int] = {}
    for y in ys[:half]:
        overall[y] = overall.get(y, 0) + 1
    default = max(sorted(overall), key=lambda y: overall[y])
    rule = {k: max(sorted(c), key=lambda y: c[y]) for k, c in counts.items()}
    hits = [rule.get(k, default) == y for k, y in zip(keys[half:], ys[half:])]
    return float(np.mean(hits))


def _mosei_cue_accuracy(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> float:
    design = SYNTH_DESIGN["mosei"]
    sizes = rng.choice(3, size=n, p=np.array(design["n_emotion_weights"]) / sum(design["n_emotion_weights"]))
    shown, truth = [], []
    for k in sizes:
        emotions = _sample_mosei_emotions(rng, int(k))
        displays = _mosei_displays(rng, emotions)
        shown.append([{e for e, _ in displays[m].shown} for m in mods])
        truth.append(set(emotions))
    half = n // 2
    scores = []
    for e in MOSEI_EMOTIONS:
        keys = [tuple(e in s for s in row) for row in shown]
        ys = [int(e in t) for t in truth]
        fit = {}
        for k, y in zip(keys[:half], ys[:half]):
            fit.setdefault(k, [0, 0])[y] += 1
        pos = max(1, sum(ys[:half]))
        neg = max(1, half - sum(ys[:half]))
        # Weighted accuracy is maximised by thresholding the likelihood ratio at 1.
        rule = {k: int(c[1] / pos > c[0] / neg) for k, c in fit.items()}
        preds = [rule.get(k, 0) for k in keys[half:]]
        test_y = ys[half:]
        p_ = sum(test_y)
        if p_ == 0 or p_ == len(test_y):
            continue
        tpr = sum(p and y for p, y in zip(preds, test_y)) / p_
        tnr = sum((not p) and (not y) for p, y in zip(preds, test_y)) / (len(test_y) - p_)
        scores.append((tpr + tnr) / 2)
    return float(np.mean(scores))


# ==========================================================================================================
# Face rendering

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


def _subsample(plane: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """2x2 chroma subsampling averaging only the pixels with weight (no dark fringe at cut-out edges)."""
    h, w = plane.shape
    num = (plane * weight).reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    den = weight.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    return num / np.maximum(den, 1e-6)


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
    mask_c = weight.reshape(H // 2, 2, W // 2, 2).sum(axis=(1, 3)) >= 2
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


# ==========================================================================================================
# Voice synthesis

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


# ==========================================================================================================
# Rendering of one video (frames + audio)


@dataclass
class _Track:
    """Per frame: which sprite each slot shows and where its face centre is."""

    sprites: list[Sprite]
    index: np.ndarray  # (n_frames,) int
    x: np.ndarray
    y: np.ndarray


def _render_audio(rng: np.random.Generator, video: VideoPlan) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Channels (slots, samples) float32 and the syllable envelope of every clip."""
    n = int(round(video.duration * SAMPLE_RATE))
    slots = len(video.actors)
    voice = np.zeros((slots, n), np.float32)
    envelopes = {}
    for clip in video.clips:
        actor = video.actors[clip.slot]
        voices = [_jittered_voice(rng, e, i) for e, i in clip.displays["audio"].shown]
        signal, env = synthesize_speech(rng, voices, clip.end - clip.start, actor.f0, actor.gain)
        a = int(round(clip.start * SAMPLE_RATE))
        b = min(n, a + len(signal))
        voice[clip.slot, a:b] += signal[: b - a]
        envelopes[clip.uid] = env
    if slots == 2:  # each lapel microphone also hears the other actor
        voice = voice + 0.125 * voice[::-1]
    noise_level = rng.uniform(0.002, 0.008, size=(slots, 1)).astype(np.float32)
    noise = rng.standard_normal((slots, n)).astype(np.float32) * noise_level
    return np.clip(voice + noise, -1.0, 1.0), envelopes


def _slot_tracks(rng: np.random.Generator, video: VideoPlan, design: dict, envelopes: dict[str, np.ndarray],
                 n_frames: int) -> list[_Track]:
    fps = float(design["fps"])
    slot_w, height = design["frame_size"][0] // design["slots"], design["frame_size"][1]
    times = np.arange(n_frames) / fps
    tracks = []
    for slot, actor in enumerate(video.actors):
        idle_size = actor.face_w * rng.uniform(0.95, 1.05)
        sprites = [render_head(actor, _jittered_face(rng, "neutral", 0.0), idle_size, float(rng.normal(0, 3)))]
        index = np.zeros(n_frames, int)
        for clip in video.clips:
            f0 = int(math.ceil(clip.start * fps))
            f1 = min(n_frames, int(math.floor(clip.end * fps)) + 1)
            if f1 <= f0:
                continue
            pose = (actor.face_w * rng.uniform(0.92, 1.08), float(np.clip(rng.normal(0, 4), -9, 9)),
                    (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))))
            first = len(sprites)
            if clip.slot == slot:
                sprites += _speaker_sprites(rng, actor, clip.displays["visual"], *pose)
                index[f0:f1] = first + _speaker_sprite_index(clip, envelopes[clip.uid], times[f0:f1] - clip.start)
            else:  # the listener shows a mild expression that carries no label information
                mood = _choice(rng, ("neutral", "happiness", "sadness", "frustration", "surprise"))
                sprites.append(render_head(actor, _jittered_face(rng, mood, float(rng.uniform(0, 0.35))), *pose))
                index[f0:f1] = first
        centre_x = slot * slot_w + slot_w / 2 + rng.uniform(-14, 14)
        centre_y = height / 2 - 6 + rng.uniform(-8, 8)
        x = centre_x + _wander(rng, times, (6, 14), (6, 15)) + _wander(rng, times, (2, 5), (1.0, 2.5))
        y = centre_y + _wander(rng, times, (3, 8), (6, 15)) + _wander(rng, times, (1, 3), (1.0, 2.5))
        # Even positions keep the 4:2:0 chroma of the sprites aligned with their luma.
        tracks.append(_Track(sprites, index, 2 * np.round(x / 2).astype(int), 2 * np.round(y / 2).astype(int)))
    return tracks


_TALK_PHASES = 3  # mouth closed / half open / open, chosen per frame from the syllable envelope


def _speaker_sprites(rng: np.random.Generator, actor: Actor, display: Display, size: float, tilt: float,
                     gaze: tuple[float, float]) -> list[Sprite]:
    """``_TALK_PHASES`` sprites per shown expression segment, in segment order."""
    sprites = []
    for expression, intensity in display.shown:
        face = _jittered_face(rng, expression, intensity)
        for phase in range(_TALK_PHASES):
            talking = replace(face, mouth_open=min(1.2, face.mouth_open + 0.22 * phase))
            sprites.append(render_head(actor, talking, size, tilt, gaze))
    return sprites


def _speaker_sprite_index(clip: ClipPlan, env: np.ndarray, frame_t: np.ndarray) -> np.ndarray:
    """Per frame (times relative to the clip start): which of the clip's speaker sprites to show."""
    samples = np.clip((frame_t * SAMPLE_RATE).astype(int), 0, len(env) - 1)
    phase = np.digitize(env[samples], [0.25, 0.65])
    n_segments = len(clip.displays["visual"].shown)
    segment = np.minimum((frame_t / (clip.end - clip.start) * n_segments).astype(int), n_segments - 1)
    return _TALK_PHASES * segment + phase


def _wander(rng: np.random.Generator, times: np.ndarray, amplitude: tuple[float, float],
            period: tuple[float, float]) -> np.ndarray:
    return rng.uniform(*amplitude) * np.sin(2 * np.pi * times / rng.uniform(*period) + rng.uniform(0, 2 * np.pi))


def _background(rng: np.random.Generator, design: dict) -> YuvFrame:
    width, height = design["frame_size"]
    slot_w = width // design["slots"]
    frame = np.empty((height, width, 3), np.uint8)
    ramp = np.linspace(-1, 1, height)[:, None]
    for s in range(design["slots"]):
        # Cool studio-like backdrops: skin-coloured backgrounds would hide the face outline from MTCNN.
        hue = rng.uniform(0.3, 0.75)
        base = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.5), rng.uniform(0.45, 0.8)))
        grad = rng.uniform(-20, 20, size=3)
        block = np.clip(base[None, :] + ramp * grad[None, :], 0, 255).astype(np.uint8)
        frame[:, s * slot_w:(s + 1) * slot_w] = block[:, None, :]
    return YuvFrame.from_rgb(frame)


def _frames(background: YuvFrame, tracks: list[_Track], slot_w: int, n_frames: int) -> Iterator[np.ndarray]:
    """yuv420p buffers of the video; the same buffer is reused, so consume each before the next."""
    frame = YuvFrame(*background.y.shape)
    for i in range(n_frames):
        np.copyto(frame.buffer, background.buffer)
        for slot, track in enumerate(tracks):
            _paste(frame, track.sprites[track.index[i]], int(track.x[i]), int(track.y[i]),
                   slot * slot_w, (slot + 1) * slot_w)
        yield frame.buffer


def _encode_video(path: Path, frames: Iterable[np.ndarray], design: dict, audio: np.ndarray | None) -> None:
    import av

    container_format, codec = design["container"]
    width, height = design["frame_size"]
    with eio.atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=design["fps"])
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1  # single-threaded encoders give reproducible bytes
            if codec == "mpeg4":
                stream.codec_context.codec_tag = "DIVX"
                stream.bit_rate = 400_000
            else:
                stream.options = {"preset": "superfast", "crf": "23"}
            astream = None
            if audio is not None:
                astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
                astream.bit_rate = 48_000
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            if astream is not None:
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :]), format="fltp", layout="mono")
                aframe.sample_rate = SAMPLE_RATE
                for packet in astream.encode(aframe):
                    container.mux(packet)
                for packet in astream.encode(None):
                    container.mux(packet)


def write_wav(path: Path, channels: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit PCM wav of float samples in [-1, 1]; ``channels`` is (n_channels, n_samples)."""
    pcm = np.round(np.clip(channels, -1, 1) * 32767).astype("<i2").T
    with eio.atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(channels.shape[0])
            out.setsampwidth(2)
            out.setframerate(sr)
            out.writeframes(np.ascontiguousarray(pcm).tobytes())


def _render_video(plan: ReleasePlan, video: VideoPlan, video_path: Path, wav_path: Path | None,
                  embed_audio: bool) -> None:
    design = SYNTH_DESIGN[plan.dataset]
    rng = _rng(plan.seed, plan.dataset, 1, video.index)
    audio, envelopes = _render_audio(rng, video)
    if wav_path is not None:
        write_wav(wav_path, audio)
    fps = float(design["fps"])
    n_frames = int(math.ceil(video.duration * fps))
    tracks = _slot_tracks(rng, video, design, envelopes, n_frames)
    slot_w = design["frame_size"][0] // design["slots"]
    frames = _frames(_background(rng, design), tracks, slot_w, n_frames)
    _encode_video(video_path, frames, design, audio.mean(axis=0) if embed_audio else None)


# ==========================================================================================================
# Writing a release


def synthesize(dataset: str, root: str | os.PathLike, *, seed: int = 0, size: str = "smoke",
               sims_script: str = "pinyin", progress: bool = True) -> Path:
    """Write a synthetic raw release of ``dataset`` ("iemocap", "mosei" or "sims") under ``root``.

    Every file is (re)written atomically on every call; files that an earlier synthetic release in the same
    root listed but this one does not are removed. A non-empty ``root`` that holds no synthetic manifest is
    refused, so a real release is never mixed with synthetic files. Returns ``root`` as a Path."""
    from tqdm import tqdm

    plan = plan_release(dataset, seed=seed, size=size, sims_script=sims_script)
    root = Path(root)
    old_files = _claim_root(root)
    texts = _text_files(plan)
    media = _media_jobs(plan)
    written = set(texts) | {rel for job in media for rel in (job.video_rel, job.wav_rel) if rel is not None}
    # An incomplete manifest first: an interrupted run still marks the folder as ours (and lists old files).
    eio.write_json(root / MANIFEST_NAME,
                   {"generator": GENERATOR, "complete": False, "files": sorted(set(old_files) | written)})
    for rel, text in texts.items():
        eio.write_text(root / rel, text)
    for job in tqdm(media, desc=f"synth {dataset}", unit="video", disable=not progress):
        _render_video(plan, job.video, root / job.video_rel, root / job.wav_rel if job.wav_rel else None,
                      job.embed_audio)
    _remove_stale(root, set(old_files) - written)
    eio.write_json(root / MANIFEST_NAME, _manifest(plan, root, sorted(written)))
    log.info("synthetic %s release (%s, seed %d): %d clips in %d files under %s",
             dataset, size, seed, len(plan.clips), len(written), root)
    return root


def _claim_root(root: Path) -> list[str]:
    """Files of an earlier synthetic release in ``root`` (empty for a new root); refuses foreign data."""
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        try:
            old = eio.read_json(manifest)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{manifest}: unreadable synthetic manifest ({err}); delete it or choose another root") from None
        if not isinstance(old, dict) or old.get("generator") != GENERATOR:
            raise ValueError(f"{manifest}: not written by {GENERATOR}; refusing to overwrite {root}")
        return [str(f) for f in old.get("files", [])]
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: folder is not empty and holds no {MANIFEST_NAME}; refusing to write a "
                         "synthetic release over other data (choose an empty or new folder)")
    root.mkdir(parents=True, exist_ok=True)
    return []


def _remove_stale(root: Path, stale: set[str]) -> None:
    for rel in sorted(stale):
        path = root / rel
        if path.is_file():
            path.unlink()
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _text_files(plan: ReleasePlan) -> dict[str, str]:
    if plan.dataset == "iemocap":
        out = {}
        for video in plan.videos:
            base = f"Session{int(video.name[3:5])}/dialog"
            out[f"{base}/EmoEvaluation/{video.name}.txt"] = formats.format_iemocap_evaluation(
                c.annotation for c in video.clips)
            turns = [formats.IemocapTurn(c.uid, c.start, c.end, c.text) for c in video.clips] + video.extra_turns
            turns.sort(key=lambda t: (t.start, t.utt_id))
            out[f"{base}/transcriptions/{video.name}.txt"] = formats.format_iemocap_transcription(turns)
        return out
    if plan.dataset == "mosei":
        out = {}
        batches: list[list[dict[str, Any]]] = [[], []]
        for video in plan.videos:
            segments = [formats.MoseiSegment(video.name, i, c.start, c.end, c.text) for i, c in enumerate(video.clips)]
            out[f"Transcript/Combined/{video.name}.txt"] = formats.format_mosei_transcript(segments)
            for clip in video.clips:
                batches[video.index % 2].extend(clip.annotation)
        for b, rows in enumerate(batches):
            if rows:
                out[f"Labels/Batch_{3171000 + 17 * b}_batch_results.csv"] = _mosei_csv(rows)
        return out
    rows = []
    for clip in plan.clips:
        video_id, clip_id = clip.video.split("/")
        lab = clip.label
        rows.append(formats.SimsRow(video_id, clip_id, clip.text, lab["M"], lab["T"], lab["A"], lab["V"],
                                    formats.sims_annotation(lab["M"]), clip.split))
    return {"label.csv": formats.format_sims_labels(rows)}


def _mosei_csv(rows: list[dict[str, Any]]) -> str:
    annotations = [formats.MoseiAnnotation(r["video"], r["clip"], r["WorkerId"], tuple(r["answers"])) for r in rows]
    extra = [{"HITId": r["HITId"], "AssignmentId": r["AssignmentId"], "Answer.sentiment": str(r["sentiment"])}
             for r in rows]
    return formats.format_mosei_label_csv(annotations, extra)


@dataclass(frozen=True)
class _MediaJob:
    video: VideoPlan
    video_rel: str
    wav_rel: str | None
    embed_audio: bool  # an AAC track inside the mp4


def _media_jobs(plan: ReleasePlan) -> list[_MediaJob]:
    jobs = []
    for video in plan.videos:
        if plan.dataset == "iemocap":
            base = f"Session{int(video.name[3:5])}/dialog"
            jobs.append(_MediaJob(video, f"{base}/avi/DivX/{video.name}.avi", f"{base}/wav/{video.name}.wav", False))
        elif plan.dataset == "mosei":
            jobs.append(_MediaJob(video, f"Videos/Full/Combined/{video.name}.mp4",
                                  f"Audio/WAV_16000/{video.name}.wav", True))
        else:
            jobs.append(_MediaJob(video, f"Raw/{video.name}.mp4", None, True))
    return jobs


def _manifest(plan: ReleasePlan, root: Path, files: list[str]) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": True,
        "dataset": plan.dataset,
        "seed": plan.seed,
        "size": plan.size,
        "sims_script": plan.sims_script if plan.dataset == "sims" else None,
        "design": _design_json(plan.dataset),
        "files": files,
        "sha256": {rel: eio.sha256_file(root / rel) for rel in files},
        "clips": [_clip_json(c) for c in plan.clips],
    }


def _design_json(dataset: str) -> dict[str, Any]:
    out = {}
    for key, value in SYNTH_DESIGN[dataset].items():
        if key == "cues":
            value = {m: asdict(c) for m, c in value.items()}
        elif isinstance(value, Fraction):
            value = f"{value.numerator}/{value.denominator}"
        elif isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        out[key] = value
    return out


def _clip_json(clip: ClipPlan) -> dict[str, Any]:
    return {
        "uid": clip.uid, "video": clip.video, "start": clip.start, "end": clip.end, "slot": clip.slot,
        "label": list(clip.label) if isinstance(clip.label, tuple) else clip.label,
        "split": clip.split, "text": clip.text,
        "displays": {m: {"outcome": d.outcome, "shown": [list(s) for s in d.shown], "sentiment": d.sentiment}
                     for m, d in clip.displays.items()},
    }


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete synthetic release (raises if missing or the release is incomplete)."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no synthetic manifest; {root} is not a synthetic release")
    manifest = eio.read_json(path)
    if not manifest.get("complete"):
        raise ValueError(f"{path}: the synthetic release is incomplete (generation was interrupted); rerun synthesize")
    return manifest
