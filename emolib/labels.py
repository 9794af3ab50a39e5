"""Label sets and their orders, as the papers' code uses them (a leaf module: data, metrics and losses import it)."""

from __future__ import annotations

# Dai's getEmotionDict order; the model has one sigmoid output per class.
IEMOCAP_CLASSES = ("ang", "exc", "fru", "hap", "neu", "sad")
# Evaluated IEMOCAP labels outside the 6-class protocol (kept in meta, dropped by the split).
IEMOCAP_OTHER = ("xxx", "sur", "fea", "dis", "oth")

# Dai's order of the MOSEI 6-vector; the raw MTurk CSV columns are "Answer.<name>".
MOSEI_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
# E2EMAL / CMU SDK order of the same six emotions (th2l/E2EMAL src/CMU-MOSEI/split_video.py, label_parsing).
MOSEI_EMOTIONS_SDK = ("happiness", "sadness", "anger", "surprise", "disgust", "fear")

# CH-SIMS regression targets: multimodal label and the three unimodal annotations.
SIMS_TARGETS = ("M", "T", "A", "V")
SIMS_LABEL_COLUMNS = {"M": "label", "T": "label_T", "A": "label_A", "V": "label_V"}

SPLITS = ("train", "valid", "test")
