"""Release plan: every random decision about labels, timing and text, made before anything is rendered."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emolib.data import formats
from emolib.data.synthetic.design import (
    INTENSITY_RANGE,
    MODALITIES,
    SIMS_SCRIPTS,
    SIZE_LAYOUT,
    SIZES,
    SYNTH_DESIGN,
    CueDesign,
    _design,
)
from emolib.data.synthetic.expressions import (
    ADVERBS_EN,
    ADVERBS_ZH,
    FILLERS_EN,
    FILLERS_ZH,
    IEMOCAP_EXPRESSION,
    IEMOCAP_POOL,
    MOSEI_POOL,
    TEMPLATES_EN,
    WORDS_EN,
    WORDS_ZH,
)
from emolib.labels import MOSEI_EMOTIONS


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
