"""Metric protocols of the reproduced papers (each protocol's ``paper`` and ``source`` name where it comes from).

A *protocol* fixes everything between a model's raw outputs and the numbers in a results table: how
outputs become decisions (sigmoid + a threshold tuned on valid, or a fixed one; clipping for regression),
which metrics are computed per class, and how they are averaged. Every result row names its protocol.

Registered protocols (``emolib list``):

=============  ====================  =========================================================================
name           task                  definition
=============  ====================  =========================================================================
dai-iemocap    multilabel            per-class threshold t* on valid over {0.05,...,0.95} (predict 1 iff p > t,
                                     first maximum of the positive-class F1), reused unchanged on test; plain
                                     accuracy (TP+TN)/(P+N), binary F1, precision, recall; unweighted mean
dai-mosei      multilabel            same thresholds; weighted accuracy (TP*N/P + TN)/(2N) and binary F1
e2emal         multilabel            fixed threshold 0.5; weighted accuracy; support-weighted 2-class F1
multiclass     multiclass            argmax over classes; WA (overall accuracy), UA (mean per-class recall),
                                     macro-F1; per class recall, precision, F1, support; confusion matrix
sims           regression            clip to [-1, 1]; Acc2 (<=0 vs >0); weighted F1; MAE; Pearson r
=============  ====================  =========================================================================

The classification protocols also log ROC-AUC per class and its mean over the classes where it is defined.

Usage (the trainer is protocol-agnostic)::

    proto = get_protocol("dai-iemocap")
    thr = proto.choose_thresholds(valid_logits, valid_labels)        # None for regression
    valid = proto.evaluate(valid_logits, valid_labels, names, thresholds=thr)
    test = proto.evaluate(test_logits, test_labels, names, thresholds=thr)
    score = proto.selection_score(valid)                              # model selection, higher is better
    proto.display(test)                                               # headline averages x100

Values are stored as fractions (MAE in label units); ``display_scale`` (100) converts to the papers'
tables. Everything is computed from confusion counts with vectorised numpy; scikit-learn is used only by
the tests as an independent cross-check.

Conventions where a metric is undefined (documented per result in ``notes``):

* precision with no predicted positives, recall with no positive labels, and binary F1 with neither: 0
  (scikit-learn's ``zero_division=0`` result, which Dai's code reports);
* weighted accuracy with no negatives: TP/P (E2EMAL's own fallback); with no positives: TN/N (E2EMAL's code
  returns NaN there, Dai's raises ZeroDivisionError). Both make wA equal to scikit-learn's
  ``balanced_accuracy_score``, the mean recall over the classes present;
* ROC-AUC of a class whose labels take a single value in the split: NaN, skipped by the average, which
  reports how many classes it covers (``auc_classes``);
* Pearson r when predictions or labels are constant (after clipping): NaN, never an exception.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata

from emolib import registry
from emolib.labels import SIMS_TARGETS, TASKS  # noqa: F401 (TASKS: re-exported)
from emolib.registry import register

# The Dai search grid: k/100 for k = 5, 10, ..., 95 (19 values). Dai builds it with np.arange(0.05, 1, 0.05),
# whose values differ from these by at most one ulp; only a probability within an ulp of a grid value
# could be classified differently.
THRESHOLD_GRID: np.ndarray = np.arange(5, 100, 5) / 100.0
FIXED_THRESHOLD = 0.5
DISPLAY_SCALE = 100.0
SIMS_CLIP = 1.0


# ----------------------------------------------------------------------------------------------------------
# input handling


def as_array(x: Any, what: str) -> np.ndarray:
    """A float64 numpy copy of ``x`` (numpy array, torch tensor on any device, or nested list)."""
    if hasattr(x, "detach"):
        # .double() first: numpy has no bfloat16, and bool/int tensors convert cleanly too.
        x = x.detach().to("cpu").double().numpy()
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: cannot convert {type(x).__name__} to a float array ({err})") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite values")
    return arr


def _binary_labels(labels: Any, what: str = "labels") -> np.ndarray:
    arr = as_array(labels, what)
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"{what}: multi-hot labels must be 0 or 1; found {int(bad.sum())} other values "
            f"(e.g. {arr[bad].flat[0]!r})"
        )
    return arr.astype(bool)


def _classification_inputs(outputs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    logits = as_array(outputs, "outputs (logits)")
    truth = _binary_labels(labels)
    if logits.ndim != 2:
        raise ValueError(f"outputs (logits): expected shape (N, C), got {logits.shape}")
    if truth.shape != logits.shape:
        raise ValueError(f"labels: shape {truth.shape} does not match outputs {logits.shape}")
    if logits.shape[0] == 0:
        raise ValueError("outputs (logits): no samples to evaluate (N = 0)")
    return logits, truth


def _class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(n_classes)]
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names: {len(names)} names for {n_classes} output columns: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: duplicate names in {names}")
    return names


# ----------------------------------------------------------------------------------------------------------
# confusion counts and the metrics built from them


@dataclass(frozen=True)
class Counts:
    """Per-class confusion counts, each an int64 array of shape (C,)."""

    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray

    @property
    def pos(self) -> np.ndarray:
        return self.tp + self.fn

    @property
    def neg(self) -> np.ndarray:
        return self.tn + self.fp

    @property
    def total(self) -> np.ndarray:
        return self.pos + self.neg


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Counts per column of two boolean (N, C) arrays (decisions and labels)."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"predictions {pred.shape} and labels {truth.shape} differ in shape")
    tp = np.sum(pred & truth, axis=0, dtype=np.int64)
    fp = np.sum(pred & ~truth, axis=0, dtype=np.int64)
    fn = np.sum(~pred & truth, axis=0, dtype=np.int64)
    tn = np.sum(~pred & ~truth, axis=0, dtype=np.int64)
    return Counts(tp=tp, fp=fp, tn=tn, fn=fn)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, and 0 where den == 0 (the zero_division=0 convention), without numpy warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, 0.0)


def accuracy(c: Counts) -> np.ndarray:
    return _ratio(c.tp + c.tn, c.total)


def precision(c: Counts) -> np.ndarray:
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Counts) -> np.ndarray:
    return _ratio(c.tp, c.pos)


def binary_f1(c: Counts) -> np.ndarray:
    # 2TP/(2TP+FP+FN) equals 2PR/(P+R) but is a single correctly rounded division of integers, so equal F1
    # values at different thresholds compare equal and "first maximum" is exact.
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def weighted_accuracy(c: Counts) -> np.ndarray:
    """wA = (TP*N/P + TN)/(2N) = (TPR + TNR)/2; TPR alone when N = 0, TNR alone when P = 0."""
    tpr = _ratio(c.tp, c.pos)
    tnr = _ratio(c.tn, c.neg)
    both = (tpr + tnr) / 2.0
    return np.where(c.neg == 0, tpr, np.where(c.pos == 0, tnr, both))


def weighted_f1(c: Counts) -> np.ndarray:
    """Support-weighted mean of the F1 of the positive and of the negative class (2-class 'weighted' F1)."""
    f1_pos = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    f1_neg = _ratio(2 * c.tn, 2 * c.tn + c.fn + c.fp)
    return _ratio(f1_pos * c.pos + f1_neg * c.neg, c.total)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-column ROC-AUC from average ranks (Mann-Whitney U / (P*N)); NaN where P = 0 or N = 0.

    Ranks are taken on the scores given (logits in the protocols): ranking logits is exact, whereas sigmoid
    probabilities saturate to equal floats for large |logit| and would create artificial ties.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    ranks = rankdata(scores, method="average", axis=0)
    pos = truth.sum(axis=0).astype(np.float64)
    neg = truth.shape[0] - pos
    rank_sum = np.sum(ranks * truth, axis=0)
    defined = (pos > 0) & (neg > 0)
    denom = np.where(defined, pos * neg, 1.0)
    return np.where(defined, (rank_sum - pos * (pos + 1) / 2.0) / denom, np.nan)


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays; NaN when either is constant (r is undefined there)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    syy = float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    return float(np.clip((dx @ dy) / math.sqrt(sxx * syy), -1.0, 1.0))


def f1_per_threshold(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Binary F1 of every class at every threshold of ``grid``: shape (len(grid), C)."""
    pred = probs[None, :, :] > grid[:, None, None]
    tp = np.sum(pred & truth[None, :, :], axis=1, dtype=np.int64)
    predicted = np.sum(pred, axis=1, dtype=np.int64)
    positives = np.sum(truth, axis=0, dtype=np.int64)[None, :]
    # 2TP + FP + FN = (TP + FP) + (TP + FN) = predicted positives + actual positives.
    return _ratio(2 * tp, predicted + positives)


def dai_thresholds(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per class, the first grid value with the highest binary F1 (Dai's argmax over the grid)."""
    return grid[np.argmax(f1_per_threshold(probs, truth, grid), axis=0)]


# ----------------------------------------------------------------------------------------------------------
# protocols


class Protocol(ABC):
    """A metric protocol. Subclasses set the class attributes and implement ``evaluate``.

    Attributes:
        name: registry name, also written into every result (``result["protocol"]``).
        task: "multilabel" (outputs are logits, labels multi-hot (N, C)) or "regression".
        needs_thresholds: True when thresholds must be chosen on valid and passed to ``evaluate`` on test.
        metrics: the keys of ``result["per_class"][cls]`` and ``result["average"]`` that hold metrics.
        headline: the metric keys the papers' tables show, in table order.
        select_key: default model-selection key; "a+b" means the sum of two averages.
        lower_is_better: metric keys where smaller is better (negated by ``selection_score``).
        display_scale: multiply stored values by this to get the papers' units (x100); tables, notebook
            summaries and plots all scale through ``display``/``scaled``.
        counts: average keys that are counts, never scaled (``auc_classes``).
        summary: one line for ``emolib list`` (the registry reads it, with ``paper``, ``task``, ``headline``).
        paper: the citation of the paper whose table uses the protocol.
        source: where its definition is taken from in the paper's released code.
    """

    name: str = ""
    summary: str = ""
    source: str = ""
    counts: frozenset[str] = frozenset({"auc_classes"})
    task: str = ""
    needs_thresholds: bool = False
    metrics: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    # The metrics of the tables' average columns; None: the headline pair in one cell, like the per-class cells.
    average_headline: tuple[str, ...] | None = None
    select_key: str = ""
    lower_is_better: frozenset[str] = frozenset()
    display_scale: float = DISPLAY_SCALE
    paper: str = ""

    def choose_thresholds(self, outputs: Any, labels: Any) -> np.ndarray | None:
        """Decision thresholds for ``evaluate`` (from valid outputs), or None where the protocol has none."""
        return None

    @abstractmethod
    def evaluate(
        self,
        outputs: Any,
        labels: Any,
        class_names: Sequence[str] | None = None,
        thresholds: Any = None,
    ) -> dict[str, Any]:
        """Metrics of one split as plain JSON-ready python (see the subclasses for the input shapes)."""

    def selection_score(self, result: Mapping[str, Any], key: str | None = None) -> float:
        """Model-selection score from ``result["average"]``, oriented so that higher is better.

        ``key`` defaults to ``select_key``; "f1+acc" sums two averages (khanhnd185's criterion). An undefined
        (NaN) score maps to -inf so that it never wins a comparison.
        """
        key = key or self.select_key
        total = 0.0
        for part in key.split("+"):
            part = part.strip()
            if part not in result["average"]:
                raise KeyError(f"protocol {self.name!r}: no average {part!r}; available: {sorted(result['average'])}")
            value = float(result["average"][part])
            total += -value if part in self.lower_is_better else value
        return -math.inf if math.isnan(total) else total

    def scaled(self, key: str, value: Any) -> Any:
        """One stored value in the papers' units: x ``display_scale``, except counts and non-numbers."""
        if key in self.counts or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return float(value) * self.display_scale

    def display(self, result: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, float]:
        """The headline averages (``average_headline`` where set, or ``keys``) in the papers' units (x
        ``display_scale``)."""
        keys = tuple(keys) if keys is not None else (self.average_headline or self.headline)
        return {k: self.scaled(k, result["average"][k]) for k in keys}

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        """The registry's entry details, read from the class (no second copy in the decorator)."""
        return {"summary": f"{cls.summary} (x{cls.display_scale:g})", "paper": cls.paper, "source": cls.source,
                "task": cls.task, "headline": ",".join(cls.headline)}

    def __repr__(self) -> str:
        return f"<protocol {self.name}: {self.task}, headline {', '.join(self.headline)}>"


class ClassificationProtocol(Protocol):
    """Shared machinery of the multi-label protocols: sigmoid, thresholds, confusion counts, AUC."""

    task = "multilabel"

    @abstractmethod
    def class_metrics(self, c: Counts) -> dict[str, np.ndarray]:
        """Per-class metric arrays (C,) from the confusion counts; AUC is added by ``evaluate``."""

    def _resolve_thresholds(
        self, thresholds: Any, probs: np.ndarray, truth: np.ndarray, names: list[str], notes: list[str]
    ) -> np.ndarray:
        if thresholds is None:
            f1 = f1_per_threshold(probs, truth)
            notes.append("thresholds chosen on this split (none were passed); pass valid thresholds for test")
            flat = [cls for cls, best in zip(names, f1.max(axis=0)) if best == 0.0]
            if flat:
                notes.append(f"{', '.join(flat)}: F1 = 0 at every threshold, first grid value kept")
            return THRESHOLD_GRID[np.argmax(f1, axis=0)]
        return _threshold_vector(thresholds, names)

    def choose_thresholds(self, outputs: Any, labels: Any) -> np.ndarray:
        """Per-class Dai thresholds from valid logits and labels: array (C,) of grid values."""
        logits, truth = _classification_inputs(outputs, labels)
        return dai_thresholds(expit(logits), truth)

    def evaluate(
        self,
        outputs: Any,
        labels: Any,
        class_names: Sequence[str] | None = None,
        thresholds: Any = None,
    ) -> dict[str, Any]:
        """Evaluate logits (N, C) against multi-hot labels (N, C).

        ``thresholds``: array (C,) or {class: t}; None chooses them on this very split (Dai does this on
        train and valid) and says so in ``notes``.
        """
        logits, truth = _classification_inputs(outputs, labels)
        names = _class_names(class_names, logits.shape[1])
        notes: list[str] = []
        probs = expit(logits)
        thr = self._resolve_thresholds(thresholds, probs, truth, names, notes)
        counts = confusion_counts(probs > thr[None, :], truth)
        values = self.class_metrics(counts)
        values["auc"] = roc_auc(logits, truth)
        notes.extend(_degenerate_class_notes(counts, names, self.metrics))

        per_class: dict[str, dict[str, Any]] = {}
        for i, cls in enumerate(names):
            row: dict[str, Any] = {m: float(values[m][i]) for m in self.metrics}
            row["positives"] = int(counts.pos[i])
            per_class[cls] = row
        average: dict[str, Any] = {m: float(np.mean(values[m])) for m in self.metrics if m != "auc"}
        defined = ~np.isnan(values["auc"])
        average["auc"] = float(np.mean(values["auc"][defined])) if defined.any() else math.nan
        average["auc_classes"] = int(defined.sum())
        if not defined.all():
            notes.append(f"auc averaged over {int(defined.sum())} of {len(names)} classes (undefined elsewhere)")
        return {
            "protocol": self.name,
            "task": self.task,
            "per_class": per_class,
            "average": average,
            "thresholds": {cls: float(round(t, 6)) for cls, t in zip(names, thr.tolist())},
            "n": int(logits.shape[0]),
            "notes": notes,
        }


def _threshold_vector(thresholds: Any, names: list[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        missing = [c for c in names if c not in thresholds]
        if missing:
            raise ValueError(f"thresholds: no value for classes {missing}; got {sorted(thresholds)}")
        thresholds = [thresholds[c] for c in names]
    thr = as_array(thresholds, "thresholds").reshape(-1)
    if thr.shape[0] != len(names):
        raise ValueError(f"thresholds: {thr.shape[0]} values for {len(names)} classes")
    if np.any((thr < 0.0) | (thr > 1.0)):
        raise ValueError(f"thresholds: probabilities must lie in [0, 1], got {thr.tolist()}")
    return thr


def _degenerate_class_notes(c: Counts, names: list[str], metrics: tuple[str, ...]) -> list[str]:
    notes = []
    for i, cls in enumerate(names):
        if c.pos[i] == 0:
            extra = "; wacc = TN/N" if "wacc" in metrics else ""
            notes.append(f"{cls}: no positive labels in this split (recall and binary F1 = 0, auc undefined{extra})")
        elif c.neg[i] == 0:
            extra = "; wacc = TP/P" if "wacc" in metrics else ""
            notes.append(f"{cls}: no negative labels in this split (auc undefined{extra})")
        if c.tp[i] + c.fp[i] == 0 and "precision" in metrics:
            notes.append(f"{cls}: no predicted positives (precision = 0 by convention)")
    return notes


class DaiProtocol(ClassificationProtocol):
    """Dai's evaluation: per-class thresholds tuned on valid, an accuracy-like metric (``accuracy_key``, computed
    by ``accuracy_fn``), binary positive-class F1, precision and recall. The epoch with the best valid average
    F1 is kept (``src/trainers/emotiontrainer.py``)."""

    needs_thresholds = True
    paper = "Dai et al. 2021 (NAACL)"
    select_key = "f1"
    accuracy_key: str = ""
    accuracy_fn = staticmethod(accuracy)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.metrics = (cls.accuracy_key, "f1", "precision", "recall", "auc")
        cls.headline = (cls.accuracy_key, "f1")

    def class_metrics(self, c: Counts) -> dict[str, np.ndarray]:
        return {self.accuracy_key: self.accuracy_fn(c), "f1": binary_f1(c), "precision": precision(c),
                "recall": recall(c)}


@register("protocol", "dai-iemocap")
class DaiIemocap(DaiProtocol):
    """Dai's eval_iemocap as of the 2022 fix: plain accuracy, binary positive-class F1, precision, recall."""

    name = "dai-iemocap"
    summary = "Dai et al. IEMOCAP: valid-tuned per-class threshold, plain accuracy + binary F1"
    source = "wenliangdai/Multimodal-End2end-Sparse src/evaluate.py eval_iemocap (HEAD 0727085)"
    accuracy_key = "acc"
    accuracy_fn = staticmethod(accuracy)


@register("protocol", "dai-mosei")
class DaiMosei(DaiProtocol):
    """The protocol of Dai's MOSEI table: Dai thresholds, wA = (TP*N/P + TN)/(2N), binary F1."""

    name = "dai-mosei"
    summary = "Dai et al. CMU-MOSEI: valid-tuned per-class threshold, weighted accuracy + binary F1"
    source = ("wenliangdai/Multimodal-End2end-Sparse src/evaluate.py: weighted_acc of release efe8dc3 + "
              "eval_iemocap thresholds")
    accuracy_key = "wacc"
    accuracy_fn = staticmethod(weighted_accuracy)


@register("protocol", "e2emal")
class E2emal(ClassificationProtocol):
    """E2EMAL's Keras metrics: p > 0.5, WeightedAccuracy and tfa F1Score(num_classes=2, average='weighted').

    tfa thresholds each of the two columns [p, 1-p] separately, so a probability of exactly 0.5 (logit 0)
    counts as neither class there; here every sample gets one decision (p > 0.5), which differs only for
    logits that are exactly zero.
    """

    name = "e2emal"
    summary = "E2EMAL CMU-MOSEI: threshold 0.5, weighted accuracy + support-weighted 2-class F1"
    paper = "Huynh et al. 2021 (IEEE MultiMedia)"
    source = "th2l/E2EMAL src/CMU-MOSEI/utils.py"
    needs_thresholds = False
    metrics = ("wacc", "f1", "auc")
    headline = ("wacc", "f1")
    # E2EMAL keeps the checkpoint with the best val_wAcc (th2l/E2EMAL src/CMU-MOSEI/main.py, ModelCheckpoint).
    select_key = "wacc"

    def class_metrics(self, c: Counts) -> dict[str, np.ndarray]:
        return {"wacc": weighted_accuracy(c), "f1": weighted_f1(c)}

    def choose_thresholds(self, outputs: Any, labels: Any) -> np.ndarray:
        """Always 0.5 per class (validated inputs, so a shape error surfaces here as it would in Dai's)."""
        logits, _ = _classification_inputs(outputs, labels)
        return np.full(logits.shape[1], FIXED_THRESHOLD)

    def _resolve_thresholds(
        self, thresholds: Any, probs: np.ndarray, truth: np.ndarray, names: list[str], notes: list[str]
    ) -> np.ndarray:
        fixed = np.full(len(names), FIXED_THRESHOLD)
        if thresholds is not None and not np.array_equal(_threshold_vector(thresholds, names), fixed):
            raise ValueError(f"protocol 'e2emal' uses the fixed threshold {FIXED_THRESHOLD}; got {thresholds!r}")
        return fixed


@register("protocol", "sims")
class Sims(Protocol):
    """MMSA's CH-SIMS regression metrics restricted to the four that khanhnd185 reports."""

    name = "sims"
    summary = "CH-SIMS regression (MMSA/khanhnd185): clip to [-1,1], Acc2, weighted F1, MAE, Pearson r"
    paper = "Yu et al. 2020 (ACL), MMSA; khanhnd185 2023"
    source = "thuiar/MMSA metricsTop __eval_sims_regression; khanhnd185/EmoMBT eval_sims_regression"
    task = "regression"
    needs_thresholds = False
    metrics = ("acc2", "f1", "mae", "corr")
    headline = ("acc2", "f1", "mae", "corr")
    # khanhnd185's SimsTrainer selects on valid F1 (khanhnd185/EmoMBT src/trainers/emotiontrainer.py).
    select_key = "f1"
    lower_is_better = frozenset({"mae"})

    def evaluate(
        self,
        outputs: Any,
        labels: Any,
        class_names: Sequence[str] | None = None,
        thresholds: Any = None,
        targets: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Evaluate predictions (N,), (N, 1) or (N, K) against labels (N,) or (N, K), M first.

        A single prediction column is the multimodal (first-target) prediction. ``targets`` names the label
        columns to evaluate (default: the first only, as the papers' tables do); column j of a K-column
        prediction predicts label column j. ``result["average"]`` holds the first evaluated target's
        metrics: the tables' row, not a mean over targets.
        """
        if thresholds is not None:
            raise ValueError("protocol 'sims' is a regression protocol and takes no thresholds")
        preds, truth = _regression_inputs(outputs, labels)
        names = list(class_names) if class_names is not None else list(SIMS_TARGETS[: truth.shape[1]])
        names = _class_names(names, truth.shape[1])
        targets = list(targets) if targets is not None else names[:1]
        unknown = [t for t in targets if t not in names]
        if unknown or not targets:
            raise ValueError(f"targets: {unknown or targets} not among the label columns {names}")
        if preds.shape[1] == 1 and targets != names[:1]:
            raise ValueError(
                f"outputs: one prediction column (the {names[0]} target) cannot be scored against {targets}"
            )
        notes: list[str] = []
        per_class = {}
        for target in targets:
            j = names.index(target)
            metrics, target_notes = sims_metrics(preds[:, 0 if preds.shape[1] == 1 else j], truth[:, j])
            per_class[target] = metrics
            notes.extend(f"{target}: {n}" for n in target_notes)
        notes.append(f"average = metrics of target {targets[0]} (the tables' row); MAE in label units")
        return {
            "protocol": self.name,
            "task": self.task,
            "per_class": per_class,
            "average": dict(per_class[targets[0]]),
            "thresholds": None,
            "n": int(truth.shape[0]),
            "notes": notes,
        }


def _regression_inputs(outputs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    preds = as_array(outputs, "outputs (predictions)")
    truth = as_array(labels, "labels")
    preds = preds[:, None] if preds.ndim == 1 else preds
    truth = truth[:, None] if truth.ndim == 1 else truth
    if preds.ndim != 2 or truth.ndim != 2:
        raise ValueError(f"outputs {preds.shape} / labels {truth.shape}: expected (N,) or (N, K)")
    if preds.shape[0] != truth.shape[0]:
        raise ValueError(f"outputs: {preds.shape[0]} predictions for {truth.shape[0]} labels")
    if preds.shape[0] == 0:
        raise ValueError("outputs (predictions): no samples to evaluate (N = 0)")
    if preds.shape[1] not in (1, truth.shape[1]):
        raise ValueError(f"outputs: {preds.shape[1]} prediction columns for {truth.shape[1]} label columns")
    return preds, truth


def sims_metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """Acc2, weighted F1, MAE and Pearson r of one target after clipping both sides to [-1, 1]."""
    pred = np.clip(np.asarray(pred, dtype=np.float64), -SIMS_CLIP, SIMS_CLIP)
    truth = np.clip(np.asarray(truth, dtype=np.float64), -SIMS_CLIP, SIMS_CLIP)
    # MMSA bins (-1.01, 0] -> 0 and (0, 1.01] -> 1: an exact zero counts as negative.
    counts = confusion_counts((pred > 0)[:, None], (truth > 0)[:, None])
    notes = []
    corr = pearson_r(pred, truth)
    if math.isnan(corr):
        which = "predictions" if np.ptp(pred) == 0 else "labels"
        notes.append(f"corr undefined (NaN): {which} constant after clipping to [-1, 1]")
    metrics = {
        "acc2": float(accuracy(counts)[0]),
        "f1": float(weighted_f1(counts)[0]),
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": corr,
    }
    return metrics, notes


@register("protocol", "multiclass")
class MultiClass(Protocol):
    """Single-label classification, the usual setting of speech emotion recognition: one class per clip.

    Decision: argmax over the C outputs (softmax is monotone, so logits or probabilities give the same class).
    Metrics: WA, weighted accuracy = overall accuracy (the share of clips classified correctly); UA,
    unweighted accuracy = the mean per-class recall over the classes present in the split (scikit-learn's
    ``balanced_accuracy_score``); macro-F1 = the mean per-class F1 over all C classes (``f1_score(average=
    "macro", labels=range(C), zero_division=0)``); per class recall, precision, F1 and support; the confusion
    matrix (rows: true class, columns: predicted class) in ``result["confusion"]``.
    """

    name = "multiclass"
    summary = "single-label classification: argmax, WA (accuracy), UA (mean class recall), macro-F1, confusion"
    paper = "speech emotion recognition convention (WA/UA), e.g. IEMOCAP 4-class studies"
    source = "scikit-learn accuracy_score, balanced_accuracy_score, f1_score(average='macro')"
    task = "multiclass"
    needs_thresholds = False
    metrics = ("recall", "precision", "f1")
    headline = ("recall", "f1")  # per class: the class's accuracy (its recall) and F1
    average_headline = ("wa", "ua", "f1")
    select_key = "ua"

    def evaluate(
        self,
        outputs: Any,
        labels: Any,
        class_names: Sequence[str] | None = None,
        thresholds: Any = None,
    ) -> dict[str, Any]:
        """Evaluate scores (N, C) against one-hot labels (N, C) or class indices (N,)."""
        if thresholds is not None:
            raise ValueError("protocol 'multiclass' decides by argmax and takes no thresholds")
        scores = as_array(outputs, "outputs (scores)")
        if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
            raise ValueError(f"outputs: expected (N, C) scores with N > 0 and C >= 2, got {scores.shape}")
        truth = _class_indices(labels, scores.shape)
        names = _class_names(class_names, scores.shape[1])
        n_classes = scores.shape[1]
        pred = np.argmax(scores, axis=1)
        matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(matrix, (truth, pred), 1)
        tp = np.diag(matrix).astype(np.float64)
        support = matrix.sum(axis=1).astype(np.float64)
        predicted = matrix.sum(axis=0).astype(np.float64)
        recall_c = _ratio(tp, support)
        precision_c = _ratio(tp, predicted)
        f1_c = _ratio(2 * tp, support + predicted)
        present = support > 0
        notes = [f"{c}: no clip of this class in the split (recall 0, left out of UA)"
                 for c, ok in zip(names, present) if not ok]
        notes += [f"{c}: never predicted (precision = 0 by convention)" for c, k in zip(names, predicted) if k == 0]
        per_class = {c: {"recall": float(recall_c[i]), "precision": float(precision_c[i]), "f1": float(f1_c[i]),
                         "support": int(support[i])} for i, c in enumerate(names)}
        average = {"wa": float(tp.sum() / truth.shape[0]), "ua": float(recall_c[present].mean()),
                   "f1": float(f1_c.mean()), "precision": float(precision_c.mean())}
        return {
            "protocol": self.name,
            "task": self.task,
            "per_class": per_class,
            "average": average,
            "confusion": {"classes": names, "matrix": matrix.tolist()},
            "thresholds": None,
            "n": int(truth.shape[0]),
            "notes": notes,
        }


def _class_indices(labels: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Class indices (N,) from one-hot (N, C) labels or indices; a clear error for multi-hot or empty rows."""
    arr = as_array(labels, "labels")
    n, n_classes = shape
    if arr.ndim == 2:
        if arr.shape != (n, n_classes):
            raise ValueError(f"labels {arr.shape}: expected ({n}, {n_classes}) one-hot rows")
        per_row = (arr > 0.5).sum(axis=1)
        bad = np.flatnonzero(per_row != 1)
        if bad.size:
            raise ValueError(f"labels: row {int(bad[0])} has {int(per_row[bad[0]])} classes; the multiclass "
                             f"protocol needs exactly one per clip (use a multilabel protocol otherwise)")
        return np.argmax(arr, axis=1)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"labels {arr.shape}: expected ({n},) class indices or ({n}, {n_classes}) one-hot")
    idx = arr.astype(np.int64)
    if np.any(idx != arr) or np.any((idx < 0) | (idx >= n_classes)):
        raise ValueError(f"labels: class indices must be integers in [0, {n_classes})")
    return idx


# ----------------------------------------------------------------------------------------------------------
# lookup


def get_protocol(name: str) -> Protocol:
    """A ready-to-use instance of the registered protocol ``name`` (KeyError lists the choices)."""
    return registry.get("protocol", name)()
