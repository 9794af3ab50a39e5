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

# The tasks a dataset can declare, with the loss a run uses when it names none and how scores become
# probabilities (``predict``): one place for what "multilabel", "multiclass" and "regression" mean.
#   multilabel: labels multi-hot (C,), any number of classes per clip; sigmoid per class; BCE (Dai et al.)
#   multiclass: one class per clip, stored one-hot (C,); softmax over classes; cross-entropy (speech emotion
#               recognition's usual setting, scored by WA/UA)
#   regression: one or more numbers per clip (CH-SIMS M/T/A/V); clipped to [-1, 1]; L1 (khanhnd185/EmoMBT)
TASK_LOSS = {"multilabel": "bce", "multiclass": "ce", "regression": "l1"}
TASKS = tuple(TASK_LOSS)


def check_task(task: str) -> str:
    if task not in TASK_LOSS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task
