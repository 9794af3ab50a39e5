"""Design numbers of the synthetic releases: datasets, modalities, cue probabilities, label weights, sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

DATASETS = ("iemocap", "mosei", "sims")
MODALITIES = ("visual", "audio", "text")
SIZES = ("tiny", "smoke")
SAMPLE_RATE = 16000
SIMS_SCRIPTS = ("pinyin", "hanzi")


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
    # tiny: three videos, so that the video-disjoint folds have a train, a valid and a test video
    "mosei": {"tiny": {"videos": 3, "clips": 2}, "smoke": {"videos": 28, "clips": 15}},
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
