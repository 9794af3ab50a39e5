"""Single-output losses: positive-weighted BCE (the default of Dai et al. 2021), cross-entropy for single-label
(multiclass) data and L1 for CH-SIMS (as in ``khanhnd185/EmoMBT: src/loss.py``).

Both follow the loss API of :mod:`emolib.losses`: an ``nn.Module`` whose ``forward(outputs, labels)`` returns
``(total, parts)``; ``outputs`` is the model's dict of heads and ``labels`` the batch's (B, C) float tensor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.labels import SIMS_TARGETS
from emolib.registry import register

log = logging.getLogger(__name__)


def as_label_matrix(train_labels: object, *, what: str = "train_labels") -> np.ndarray:
    """Training labels as a float64 (N, C) array; a clear error for anything else."""
    if isinstance(train_labels, Tensor):
        arr = train_labels.detach().cpu().double().numpy()
    else:
        arr = np.asarray(train_labels, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty (N, C) label matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: labels contain NaN or infinite values")
    return arr


def positive_weights(train_labels: object, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Dai's per-class ``pos_weight_c = (N - P_c) / P_c`` from the training split's multi-hot labels.

    A class without positives would divide by zero; it gets weight 1 (plain BCE for that column, which is all
    a model can learn from an all-negative column anyway) and a warning naming it. A class whose every
    sample is positive gets the formula's 0, as in Dai's code, and also a warning: it carries no signal.
    """
    labels = as_label_matrix(train_labels)
    if not np.all((labels == 0) | (labels == 1)):
        bad = sorted(set(np.unique(labels)) - {0.0, 1.0})[:5]
        raise ValueError(f"train_labels: the bce loss needs 0/1 multi-hot labels, found values {bad}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(labels.shape[1])]
    if len(names) != labels.shape[1]:
        raise ValueError(f"class_names has {len(names)} names but the labels have {labels.shape[1]} columns")
    n = labels.shape[0]
    positives = labels.sum(axis=0)
    weights = np.ones(labels.shape[1], dtype=np.float64)
    has_pos = positives > 0
    weights[has_pos] = (n - positives[has_pos]) / positives[has_pos]
    if not has_pos.all():
        missing = [names[i] for i in np.flatnonzero(~has_pos)]
        log.warning("bce pos_weight: no positive training sample for %s; using weight 1", ", ".join(missing))
    if (positives == n).any():
        full = [names[i] for i in np.flatnonzero(positives == n)]
        log.warning("bce pos_weight: every training sample is positive for %s; weight 0", ", ".join(full))
    return weights


def _head(outputs: Mapping[str, Tensor], key: str, labels: Tensor) -> Tensor:
    if key not in outputs:
        raise KeyError(f"loss expects model output {key!r}; the model returned {sorted(outputs)}")
    pred = outputs[key]
    if pred.ndim != 2 or pred.shape[0] != labels.shape[0]:
        raise ValueError(f"output {key!r} has shape {tuple(pred.shape)}; labels have {tuple(labels.shape)}")
    # Under mixed precision the heads arrive in fp16/bf16; the loss itself is computed in float32.
    return pred.float()


@register("loss", "bce", summary="BCE-with-logits, pos_weight (N-P)/P per class from the train split (Dai)",
          task="multilabel", paper="Dai et al. 2021")
class PosWeightedBCE(nn.Module):
    """``mean_{n,c}[-w_c y log s(z) - (1-y) log(1-s(z))]`` on one head (default ``"logits"``).

    ``pos_weight=False`` gives plain BCE (every w_c = 1).
    """

    def __init__(self, *, train_labels: object, head: str = "logits", pos_weight: bool = True,
                 class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        labels = as_label_matrix(train_labels)
        weights = positive_weights(labels, class_names) if pos_weight else np.ones(labels.shape[1])
        self.head = head
        self.num_classes = labels.shape[1]
        # A buffer so that it follows .to(device) and is part of the checkpointed state.
        self.register_buffer("pos_weight", torch.tensor(weights, dtype=torch.float32))

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = _head(outputs, self.head, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"output {self.head!r} has {logits.shape[1]} classes, pos_weight has {self.num_classes}")
        total = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.pos_weight)
        return total, {"bce": float(total.detach())}


@register("loss", "l1", summary="mean absolute error per regression target (CH-SIMS M/T/A/V), optional weights",
          task="regression", paper="khanhnd185 2023")
class WeightedL1(nn.Module):
    """Weighted mean over target columns of the per-column MAE.

    The head has either one column per label column, or a single column that is compared with the first label
    column (M, the multimodal target). ``weights`` is a sequence over the label columns or a mapping from
    column name (``target_names``, default M/T/A/V for four columns) to weight; missing names weigh 0.
    """

    def __init__(self, *, train_labels: object, head: str = "logits",
                 weights: Sequence[float] | Mapping[str, float] | None = None,
                 target_names: Sequence[str] | None = None) -> None:
        super().__init__()
        width = as_label_matrix(train_labels).shape[1]
        if target_names is None:
            target_names = SIMS_TARGETS if width == len(SIMS_TARGETS) else [f"y{i}" for i in range(width)]
        if len(target_names) != width:
            raise ValueError(f"target_names has {len(target_names)} names but the labels have {width} columns")
        self.head = head
        self.target_names = tuple(target_names)
        self.register_buffer("weights", torch.tensor(self._weights(weights, width), dtype=torch.float32))

    def _weights(self, weights: Sequence[float] | Mapping[str, float] | None, width: int) -> list[float]:
        if weights is None:
            return [1.0] * width
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.target_names))
            if unknown:
                raise ValueError(f"l1 weights name unknown targets {unknown}; targets are {list(self.target_names)}")
            values = [float(weights.get(name, 0.0)) for name in self.target_names]
        else:
            values = [float(w) for w in weights]
            if len(values) != width:
                raise ValueError(f"l1 weights has {len(values)} entries but the labels have {width} columns")
        if any(w < 0 or not math.isfinite(w) for w in values) or sum(values) <= 0:
            raise ValueError(f"l1 weights must be finite, >= 0 and not all 0, got {values}")
        return values

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        pred = _head(outputs, self.head, labels)
        labels = labels.float()
        if labels.shape[1] != len(self.target_names):
            raise ValueError(f"labels have {labels.shape[1]} columns, the loss was built for {len(self.target_names)}")
        if pred.shape[1] == 1:
            mae = (pred[:, 0] - labels[:, 0]).abs().mean()
            return mae, {"l1": float(mae.detach()), f"l1_{self.target_names[0]}": float(mae.detach())}
        if pred.shape[1] != labels.shape[1]:
            raise ValueError(f"output {self.head!r} has {pred.shape[1]} columns; expected 1 or {labels.shape[1]}")
        per_column = (pred - labels).abs().mean(dim=0)
        total = (per_column * self.weights).sum() / self.weights.sum()
        parts = {"l1": float(total.detach())}
        parts.update({f"l1_{name}": float(v) for name, v in zip(self.target_names, per_column.detach().tolist())})
        return total, parts


@register("loss", "ce", summary="softmax cross-entropy for single-label data, optional class weights N/(C*N_c)",
          task="multiclass")
class CrossEntropy(nn.Module):
    """``F.cross_entropy`` of one head against the class of one-hot labels (B, C).

    ``class_weights``: False (plain CE), True ("balanced": ``N / (C * N_c)`` from the train split, scikit-learn's
    ``compute_class_weight("balanced")``, so that rare classes count as much as frequent ones, which UA rewards),
    or explicit per-class weights.
    """

    def __init__(self, *, train_labels: object, head: str = "logits",
                 class_weights: bool | Sequence[float] = False, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        labels = as_label_matrix(train_labels)
        per_row = (labels > 0.5).sum(axis=1)
        if not np.all((labels == 0) | (labels == 1)) or np.any(per_row != 1):
            raise ValueError("train_labels: the ce loss needs one-hot labels (exactly one class per clip)")
        n, n_classes = labels.shape
        if class_weights is True:
            counts = labels.sum(axis=0)
            weights = np.where(counts > 0, n / (n_classes * np.maximum(counts, 1)), 0.0)
            missing = [str(class_names[i]) if class_names else str(i) for i in np.flatnonzero(counts == 0)]
            if missing:
                log.warning("ce class weights: no training clip of %s; weight 0", ", ".join(missing))
        elif class_weights is False:
            weights = np.ones(n_classes)
        else:
            weights = np.asarray(class_weights, dtype=np.float64)
            if weights.shape != (n_classes,) or np.any(weights < 0) or not np.all(np.isfinite(weights)):
                raise ValueError(f"ce class_weights: expected {n_classes} finite values >= 0, got {class_weights}")
        self.head = head
        self.num_classes = n_classes
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = _head(outputs, self.head, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"output {self.head!r} has {logits.shape[1]} classes, the loss {self.num_classes}")
        total = F.cross_entropy(logits, labels.argmax(dim=1), weight=self.class_weights)
        return total, {"ce": float(total.detach())}
