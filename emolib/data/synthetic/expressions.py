"""Expressions: how each displayed emotion looks (face), sounds (voice) and reads (English and CH-SIMS words)."""

from __future__ import annotations

from dataclasses import dataclass

from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS


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
