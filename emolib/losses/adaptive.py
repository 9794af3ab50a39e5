"""E2EMAL's losses (Huynh et al. 2021): the CMU-MOSEI emotion loss and the adaptive (uncertainty) loss.

* ``"mosei-emotion"`` — ``MoseiEmotionLoss`` of ``th2l/E2EMAL: src/CMU-MOSEI/utils.py``: per emotion c, Keras'
  probability-space BCE (sigmoid clipped to [1e-7, 1 - 1e-7], 1e-7 added inside the logs) between [y, 1-y] and
  [s, 1-s], times the constant ``w_c = 1/p_c + 1/(1-p_c)``; loss = sum_c w_c * mean_batch BCE_c / C. The
  hard-coded positive rates are in the SDK order [happy .53, sad .25, anger .21, surprise .09, disgust .16,
  fear .08]; they are mapped onto our class order by name (Dai's [anger, disgust, fear, happiness, sadness,
  surprise] by default). **QUIRK** (kept by default): the code meant a label-dependent class weight (its table
  ``[[1/p, 1/(1-p)], ...]``), but summing the weight over both columns makes it a per-class constant, so the
  loss is BCE up to a per-class scale and each sigmoid settles near its class's positive rate. Where that rate is
  below 0.5 (every CMU-MOSEI emotion but happiness, every emotion of the synthetic release), the code's weighted
  accuracy at its fixed threshold 0.5 stays exactly 0.5 until scores cross 0.5, and selecting epochs on it keeps
  epoch 1. ``label_weights=True`` applies the weight the table meant: 1/p to a positive label, 1/(1-p) to a
  negative one (balanced: 0.5 becomes the decision boundary).
* ``"adaptive"`` — ``MultiModalLoss`` (Kendall et al.'s uncertainty weighting, after yaringal): four outputs
  (audio, visual, text, fused) with learnable log-variances s_i (initialised 0, ``nn.Parameter`` of the loss, so
  the trainer optimises them): ``L = sum_i exp(-s_i) L_i + lam * mean_i s_i``; ``lam`` is 0.5 in the CMU-MOSEI
  copy of the code and 1.0 in the MERC2020 copy. The per-output loss L_i is ``base``: ``"mosei-emotion"`` (the
  code's, for CMU-MOSEI) or ``"bce"`` (BCE with the training split's ``pos_weight``, e.g. for IEMOCAP).
  ``fused_only=True`` is the CMU-MOSEI config (``multi_outputs = False``): only the fused output is trained, with
  weight 1 and no s_i; the unimodal losses are still reported (computed without gradient).

``parts`` reports ``loss_<output>`` for every output and ``s_<output>`` for every learned s_i, so run-record curves
(``curves.train_parts``) can plot the s_i per epoch. The Keras L2 term (1e-5) of E2EMAL's regularised Dense layers
is computed by the model (:class:`emolib.models.e2emal.E2EMAL`, parameter ``l2``) as ``outputs["l2_penalty"]``
while training; both losses add it unweighted when present, as Keras adds layer losses to the total (part
``l2``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.labels import MOSEI_EMOTIONS, MOSEI_EMOTIONS_SDK
from emolib.losses.bce import _head, as_label_matrix, positive_weights
from emolib.registry import register

# E2EMAL's hard-coded CMU-MOSEI positive rates, in the SDK order MOSEI_EMOTIONS_SDK.
SDK_POSITIVE_RATES: tuple[float, ...] = (0.53, 0.25, 0.21, 0.09, 0.16, 0.08)
KERAS_EPSILON = 1e-7
# Model output key -> name in parts; "logits" is the fused (multimodal) prediction that is evaluated.
OUTPUTS: dict[str, str] = {"audio": "audio", "visual": "visual", "text": "text", "logits": "fused"}
BASES = ("mosei-emotion", "bce")


def mosei_class_weights(class_names: Sequence[str] = MOSEI_EMOTIONS,
                        positive_rates: Sequence[float] | Mapping[str, float] | None = None) -> np.ndarray:
    """``1/p + 1/(1-p)`` per class, in ``class_names`` order (``positive_rates`` as in :func:`mosei_rates`)."""
    rates = mosei_rates(class_names, positive_rates)
    return 1.0 / rates + 1.0 / (1.0 - rates)


def mosei_rates(class_names: Sequence[str] = MOSEI_EMOTIONS,
                positive_rates: Sequence[float] | Mapping[str, float] | None = None) -> np.ndarray:
    """The positive rate p of each class, in ``class_names`` order.

    ``positive_rates`` defaults to E2EMAL's SDK-order constants (then ``class_names`` must be the six MOSEI
    emotions, in any order); a mapping gives rates by class name, a sequence gives them in ``class_names`` order.
    """
    names = list(class_names)
    if positive_rates is None:
        rates_by_name = dict(zip(MOSEI_EMOTIONS_SDK, SDK_POSITIVE_RATES))
        missing = [n for n in names if n not in rates_by_name]
        if missing or len(names) != len(MOSEI_EMOTIONS_SDK):
            raise ValueError(f"E2EMAL's positive rates are for the CMU-MOSEI emotions {list(MOSEI_EMOTIONS)}; "
                             f"class_names {names} do not match: pass positive_rates (or positive_rates='train')")
        rates = [rates_by_name[n] for n in names]
    elif isinstance(positive_rates, Mapping):
        unknown = sorted(set(positive_rates) - set(names))
        missing = [n for n in names if n not in positive_rates]
        if unknown or missing:
            raise ValueError(f"positive_rates names {sorted(positive_rates)} do not match class_names {names}")
        rates = [float(positive_rates[n]) for n in names]
    else:
        rates = [float(r) for r in positive_rates]
        if len(rates) != len(names):
            raise ValueError(f"{len(rates)} positive rates for {len(names)} classes")
    arr = np.asarray(rates, dtype=np.float64)
    if not np.all((arr > 0) & (arr < 1)):
        raise ValueError(f"positive rates must lie strictly between 0 and 1, got {rates}")
    return arr


def keras_probability_bce(logits: Tensor, labels: Tensor, eps: float = KERAS_EPSILON) -> Tensor:
    """Keras ``binary_crossentropy(from_logits=False)`` of sigmoid(logits), elementwise (B, C)."""
    prob = torch.sigmoid(logits).clamp(eps, 1.0 - eps)
    return -(labels * torch.log(prob + eps) + (1.0 - labels) * torch.log(1.0 - prob + eps))


def _class_names(class_names: Sequence[str] | None, width: int) -> list[str]:
    if class_names is None:
        if width != len(MOSEI_EMOTIONS):
            raise ValueError(f"labels have {width} columns; pass class_names for a label set other than MOSEI's")
        return list(MOSEI_EMOTIONS)
    names = list(class_names)
    if len(names) != width:
        raise ValueError(f"class_names has {len(names)} names but the labels have {width} columns")
    return names


def _train_rates(labels: np.ndarray) -> np.ndarray:
    rates = labels.mean(axis=0)
    if not np.all((rates > 0) & (rates < 1)):
        raise ValueError(f"positive_rates='train' needs every class both present and absent in the training "
                         f"split; rates are {rates.round(4).tolist()}")
    return rates


@register("loss", "mosei-emotion",
          summary="E2EMAL MoseiEmotionLoss: clipped-probability BCE x constant 1/p+1/(1-p) per emotion, mean over C",
          task="multilabel", paper="Huynh et al. 2021 (E2EMAL)")
class MoseiEmotionLoss(nn.Module):
    """E2EMAL's CMU-MOSEI loss on one head (default ``"logits"``), see the module docstring.

    ``positive_rates``: ``None`` (E2EMAL's constants, mapped by name), ``"train"`` (the training split's rates,
    for other label sets), or explicit rates (sequence in class order, or mapping by name).
    """

    def __init__(self, *, train_labels: object, head: str = "logits", class_names: Sequence[str] | None = None,
                 positive_rates: Sequence[float] | Mapping[str, float] | str | None = None,
                 label_weights: bool = False) -> None:
        super().__init__()
        labels = as_label_matrix(train_labels)
        names = _class_names(class_names, labels.shape[1])
        if isinstance(positive_rates, str):
            if positive_rates != "train":
                raise ValueError(f"positive_rates must be None, 'train', a sequence or a mapping, "
                                 f"got {positive_rates!r}")
            positive_rates = _train_rates(labels).tolist()
        self.head = head
        self.class_names = tuple(names)
        self.label_weights = bool(label_weights)
        rates = mosei_rates(names, positive_rates)
        self.register_buffer("class_weights", torch.tensor(1.0 / rates + 1.0 / (1.0 - rates), dtype=torch.float32))
        # label_weights: the weight of a positive (1/p) and of a negative (1/(1-p)) label, per class
        self.register_buffer("label_class_weights", torch.tensor(np.stack([1.0 / rates, 1.0 / (1.0 - rates)]),
                                                                 dtype=torch.float32), persistent=False)

    def per_output(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[1] != self.class_weights.numel():
            raise ValueError(f"output has {logits.shape[1]} classes, the loss was built for "
                             f"{self.class_weights.numel()}")
        labels = labels.float()
        bce = keras_probability_bce(logits.float(), labels)
        if self.label_weights:
            positive, negative = self.label_class_weights
            return (bce * (labels * positive + (1.0 - labels) * negative)).mean(dim=0).sum() / labels.shape[1]
        return (bce.mean(dim=0) * self.class_weights).sum() / self.class_weights.numel()

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        total = self.per_output(_head(outputs, self.head, labels), labels)
        parts = {"mosei_emotion": float(total.detach())}
        return _add_penalty(total, outputs, parts), parts


def _add_penalty(total: Tensor, outputs: Mapping[str, Tensor], parts: dict[str, float]) -> Tensor:
    """Add the model's regulariser ``outputs["l2_penalty"]`` (if any) to the total and report it."""
    penalty = outputs.get("l2_penalty")
    if penalty is None:
        return total
    parts["l2"] = float(penalty.detach())
    return total + penalty.float()


class _PosWeightBCE(nn.Module):
    """BCE-with-logits with the training split's per-class pos_weight (N - P) / P, as a per-output loss."""

    def __init__(self, labels: np.ndarray, class_names: Sequence[str] | None, pos_weight: bool) -> None:
        super().__init__()
        weights = positive_weights(labels, class_names) if pos_weight else np.ones(labels.shape[1])
        self.register_buffer("pos_weight", torch.tensor(weights, dtype=torch.float32))

    def per_output(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[1] != self.pos_weight.numel():
            raise ValueError(f"output has {logits.shape[1]} classes, the loss was built for {self.pos_weight.numel()}")
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=self.pos_weight)


@register("loss", "adaptive",
          summary="E2EMAL adaptive loss: sum_i exp(-s_i) L_i + lam*mean(s_i) over audio/visual/text/fused, s_i learned",
          task="multilabel", paper="Huynh et al. 2021 (E2EMAL)")
class AdaptiveLoss(nn.Module):
    """Uncertainty-weighted sum of the per-output losses of a multi-head model, see the module docstring.

    ``outputs`` maps model output keys to part names (default audio/visual/text plus ``"logits"`` as fused).
    ``lam`` weighs the mean of the s_i (0.5: CMU-MOSEI code, 1.0: MERC2020 code). ``base``-specific options:
    ``positive_rates`` and ``label_weights`` (mosei-emotion, as in :class:`MoseiEmotionLoss`) and ``pos_weight``
    (bce).
    """

    def __init__(self, *, train_labels: object, base: str = "mosei-emotion", lam: float = 0.5,
                 fused_only: bool = False, outputs: Mapping[str, str] | None = None,
                 class_names: Sequence[str] | None = None,
                 positive_rates: Sequence[float] | Mapping[str, float] | str | None = None,
                 label_weights: bool = False, pos_weight: bool = True, init_s: float = 0.0) -> None:
        super().__init__()
        labels = as_label_matrix(train_labels)
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        if not (isinstance(lam, (int, float)) and np.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        self.outputs = dict(outputs if outputs is not None else OUTPUTS)
        if "logits" not in self.outputs:
            raise ValueError(f"outputs must include the evaluated head 'logits', got {sorted(self.outputs)}")
        if base == "mosei-emotion":
            self.base: nn.Module = MoseiEmotionLoss(train_labels=labels, class_names=class_names,
                                                    positive_rates=positive_rates, label_weights=label_weights)
        else:
            self.base = _PosWeightBCE(labels, class_names, pos_weight)
        self.base_name, self.lam, self.fused_only = base, float(lam), bool(fused_only)
        # Only trained outputs get an s_i: a parameter without gradient would sit in the optimiser for nothing.
        self.log_vars = None if self.fused_only else nn.Parameter(torch.full((len(self.outputs),), float(init_s)))

    def weights(self) -> dict[str, float]:
        """exp(-s_i) per output: the effective weight of each loss (fused only: 1 for the fused output)."""
        if self.log_vars is None:
            return {name: float(key == "logits") for key, name in self.outputs.items()}
        return {name: float(torch.exp(-s)) for name, s in zip(self.outputs.values(), self.log_vars.detach())}

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        parts: dict[str, float] = {}
        if self.fused_only:
            total = self.base.per_output(_head(outputs, "logits", labels), labels)
            with torch.no_grad():
                for key, name in self.outputs.items():
                    value = total if key == "logits" else (
                        self.base.per_output(_head(outputs, key, labels), labels) if key in outputs else None)
                    if value is not None:
                        parts[f"loss_{name}"] = float(value)
            return _add_penalty(total, outputs, parts), parts
        losses = torch.stack([self.base.per_output(_head(outputs, key, labels), labels) for key in self.outputs])
        reg = self.lam * self.log_vars.mean()
        total = (torch.exp(-self.log_vars) * losses).sum() + reg
        for name, value, s in zip(self.outputs.values(), losses.detach().tolist(), self.log_vars.detach().tolist()):
            parts[f"loss_{name}"] = value
            parts[f"s_{name}"] = s
        parts["s_penalty"] = float(reg.detach())
        return _add_penalty(total, outputs, parts), parts
