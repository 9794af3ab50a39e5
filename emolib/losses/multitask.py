"""EmoMBT's multitask losses: each output head is a task (``khanhnd185/EmoMBT: src/loss.py``).

Tasks, in the code's order: audio, text, visual and fusion (N = 4; the three unimodal heads only for a model
without a fused head, ``tasks=("audio", "text", "visual")``; the heads of the two modalities and the fused head
for a two-modality model; ``tasks=("fusion",)`` for a model that returns only its fused output, emombt's
``fusion_only``: ``mean`` and ``dwa`` then give the fused loss itself, as the code's single BCE on its fused-only
outputs; ``rruw``/``druw`` scale it and add their regularisers). L_i is the base loss of head i:

* classification (IEMOCAP, MOSEI): BCE-with-logits with the train split's ``pos_weight = (N - P) / P``, every
  head against the same label vector;
* regression (CH-SIMS, labels M, T, A, V): L1. With ``sims_labels="M,A,T,V"`` (EmoMBT's setting, the default
  for four label columns) each head regresses its own annotation: fusion -> M, text -> T, audio -> A,
  visual -> V. With ``sims_labels="M"`` every head regresses M.

Combinations (registered names):

* ``mean``: L = (1/N) sum_i L_i.
* ``dwa`` (Dynamic Weight Average): L = sum_i w_i L_i, w_i = N softmax_i((L_i(t-1) / L_i(t-2)) / T), T = 10;
  w_i = 1 for the first two steps. t counts optimisation steps (training batches).
* ``rruw`` (Restrained Revised Uncertainty Weighting):
  L = sum_i L_i / (N sigma_i^2) + sum_i log(1 + sigma_i^2) + |phi - sum_i |sigma_i||, phi = 1, sigma_i(0) = 1/N.
* ``druw`` (Dynamic Restrained Uncertainty Weighting): L = sum_i (w_i^DWA + 1/(N sigma_i^2)) L_i + the same two
  regularisers.

Paper vs code: in the code sigma is an ``nn.Parameter`` created inside the criterion and never handed to the
optimiser, so it stays 1/N. Here sigma is a parameter of the loss module, which the trainer optimises (the
paper's intent); ``freeze_sigma=True`` keeps it a constant buffer (the code). The code also lets validation and
test batches update DWA's loss history; here only training steps do: the history advances only while the
module is in training mode (``emolib.train`` calls ``loss.train()`` for the training epoch and never calls the
loss on evaluation batches).

``forward`` returns ``(total, parts)`` where ``parts`` holds ``loss_<task>`` and ``weight_<task>`` (the
effective weight of L_i in the total) for every task, plus ``dwa_<task>`` and ``sigma_<task>`` where they apply;
the trainer averages them per epoch into the run record's ``curves["train_parts"]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.labels import SIMS_TARGETS
from emolib.losses.bce import as_label_matrix, positive_weights
from emolib.registry import register

TASKS: tuple[str, ...] = ("audio", "text", "visual", "fusion")
BASES = ("auto", "bce", "l1")
# Which CH-SIMS annotation each head regresses under sims_labels="M,A,T,V".
OWN_TARGET = {"fusion": "M", "text": "T", "audio": "A", "visual": "V"}
PHI = 1.0


def parse_sims_labels(value: str) -> str:
    letters = sorted(x.strip().upper() for x in value.split(",") if x.strip())
    if letters == ["M"]:
        return "M"
    if letters == sorted(SIMS_TARGETS):
        return "M,A,T,V"
    raise ValueError(f"sims_labels must be 'M' or 'M,A,T,V' (any order), got {value!r}")


class MultiTaskLoss(nn.Module):
    """Per-head base losses combined with task weights; subclasses define the weights."""

    name = "mean"

    def __init__(self, *, train_labels: object, tasks: Sequence[str] = TASKS, base: str = "auto",
                 pos_weight: bool = True, sims_labels: str | None = None,
                 target_names: Sequence[str] | None = None) -> None:
        super().__init__()
        labels = as_label_matrix(train_labels)
        tasks = tuple(tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASKS):
            raise ValueError(f"tasks must be distinct names from {TASKS}, got {list(tasks)}")
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        binary = bool(np.all((labels == 0) | (labels == 1)))
        if base == "auto":
            base = "bce" if binary else "l1"
        if base == "bce" and not binary:
            raise ValueError("train_labels: base='bce' needs 0/1 multi-hot labels; use base='l1' for regression")
        self.tasks = tasks
        self.base = base
        self.num_columns = labels.shape[1]
        self.target_names = self._target_names(target_names, labels.shape[1])
        self.head_columns = self._head_columns(sims_labels)
        self.sims_labels = None if base == "bce" else ("M,A,T,V" if len(set(self.head_columns.values())) > 1 else "M")
        weights = positive_weights(labels) if (base == "bce" and pos_weight) else np.ones(labels.shape[1])
        self.register_buffer("pos_weight", torch.tensor(weights, dtype=torch.float32))

    # -- set-up ------------------------------------------------------------------------------------------

    def _target_names(self, names: Sequence[str] | None, width: int) -> tuple[str, ...]:
        if names is None:
            sims = self.base == "l1" and width == len(SIMS_TARGETS)
            names = SIMS_TARGETS if sims else [f"y{i}" for i in range(width)]
        if len(names) != width:
            raise ValueError(f"target_names has {len(names)} names but the labels have {width} columns")
        return tuple(names)

    def _head_columns(self, sims_labels: str | None) -> dict[str, int | None]:
        """Label column each head regresses (None: all columns, the classification case)."""
        if self.base == "bce":
            # Every classification head predicts the one label vector, which is what "M" says (run_experiment
            # passes its Experiment.sims_labels, "M" by default, to every multitask loss).
            if sims_labels is not None and parse_sims_labels(sims_labels) != "M":
                raise ValueError("sims_labels='M,A,T,V' applies to CH-SIMS regression labels only; classification "
                                 "heads all predict the one label vector (sims_labels='M' or None)")
            return {task: None for task in self.tasks}
        per_head = set(SIMS_TARGETS) <= set(self.target_names)
        mode = parse_sims_labels(sims_labels) if sims_labels is not None else ("M,A,T,V" if per_head else "M")
        if mode == "M,A,T,V" and not per_head:
            raise ValueError(f"sims_labels='M,A,T,V' needs label columns {SIMS_TARGETS}, got {self.target_names}")
        if mode == "M":
            return {task: 0 for task in self.tasks}
        return {task: self.target_names.index(OWN_TARGET[task]) for task in self.tasks}

    # -- per-task losses ---------------------------------------------------------------------------------

    def task_losses(self, outputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """(N,) base loss of every task, in ``self.tasks`` order."""
        labels = labels.float()
        if labels.dim() != 2 or labels.shape[1] != self.num_columns:
            raise ValueError(f"labels have shape {tuple(labels.shape)}; the loss was built for "
                             f"{self.num_columns} columns")
        return torch.stack([self._one(task, outputs, labels) for task in self.tasks])

    def _one(self, task: str, outputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        if task not in outputs:
            heads = [t for t in TASKS if t in outputs]
            if task == "fusion":
                hint = " (a model without a fused head needs tasks=('audio', 'text', 'visual'))"
            elif heads == ["fusion"]:
                hint = " (a model that returns only its fused output, emombt fusion_only=True, needs tasks=('fusion',))"
            else:
                hint = f" (pass the heads the model returns: tasks={tuple(heads)})"
            raise KeyError(f"{self.name} loss expects model output {task!r}{hint}; the model returned "
                           f"{sorted(outputs)}")
        pred = outputs[task].float()
        if pred.dim() != 2 or pred.shape[0] != labels.shape[0]:
            raise ValueError(f"output {task!r} has shape {tuple(pred.shape)}; labels have {tuple(labels.shape)}")
        column = self.head_columns[task]
        if self.base == "bce":
            if pred.shape[1] != labels.shape[1]:
                raise ValueError(f"output {task!r} has {pred.shape[1]} classes; the labels have {labels.shape[1]}")
            return F.binary_cross_entropy_with_logits(pred, labels, pos_weight=self.pos_weight)
        if pred.shape[1] == 1:
            return (pred[:, 0] - labels[:, column]).abs().mean()
        if self.sims_labels == "M" and pred.shape[1] == labels.shape[1]:
            return (pred - labels).abs().mean()
        raise ValueError(
            f"output {task!r} has {pred.shape[1]} columns; under sims_labels={self.sims_labels!r} every head "
            "regresses one target, so build the model with one output per head (emombt: head_outputs=1)"
        )

    # -- weights -----------------------------------------------------------------------------------------

    def combine(self, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss and extra parts from the (N,) task losses; the mean here."""
        weights = torch.full_like(losses, 1.0 / len(self.tasks))
        return (weights * losses).sum(), self._weight_parts("weight", weights)

    def task_weights(self) -> dict[str, float]:
        """The effective weight of each task's loss that the next training step will use."""
        return {task: 1.0 / len(self.tasks) for task in self.tasks}

    def _weight_parts(self, prefix: str, weights: Tensor) -> dict[str, float]:
        return {f"{prefix}_{task}": float(w) for task, w in zip(self.tasks, weights.detach().tolist())}

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        losses = self.task_losses(outputs, labels)
        total, parts = self.combine(losses)
        parts.update(self._weight_parts("loss", losses))
        return total, {self.name: float(total.detach()), **parts}

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, base={self.base!r}, sims_labels={self.sims_labels!r}"


@register("loss", "mean", summary="EmoMBT multitask: mean of the per-head losses (BCE with pos_weight, or L1)",
          task="multilabel,regression", paper="khanhnd185 2023")
class MeanTaskLoss(MultiTaskLoss):
    """L = (1/N) sum_i L_i."""

    name = "mean"


class _DwaMixin(MultiTaskLoss):
    """Dynamic Weight Average state: the task losses of the previous two training steps, kept as buffers so that
    a resumed run continues exactly (they are part of the loss's checkpointed ``state_dict``)."""

    def _init_dwa(self, temperature: float) -> None:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)
        n = len(self.tasks)
        self.register_buffer("loss_t1", torch.zeros(n))
        self.register_buffer("loss_t2", torch.zeros(n))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def dwa_weights(self) -> Tensor:
        n = len(self.tasks)
        if int(self.steps) < 2:
            return torch.ones(n, device=self.loss_t1.device)
        # A task whose loss reached exactly 0 would divide by zero; its ratio is then taken as 1 (no change).
        ratios = torch.where(self.loss_t2 > 0, self.loss_t1 / self.loss_t2.clamp_min(1e-12),
                             torch.ones_like(self.loss_t1))
        return n * torch.softmax(ratios / self.temperature, dim=0)

    def _advance(self, losses: Tensor) -> None:
        # Only optimisation steps move the history; evaluation passes (module in eval mode) leave it alone.
        if self.training:
            self.loss_t2.copy_(self.loss_t1)
            self.loss_t1.copy_(losses.detach())
            self.steps += 1


@register("loss", "dwa", summary="EmoMBT multitask: Dynamic Weight Average over the heads (T=10, step-level)",
          task="multilabel,regression", paper="Liu et al. 2019 (DWA); khanhnd185 2023")
class DwaTaskLoss(_DwaMixin):
    """L = sum_i w_i L_i with w_i = N softmax_i((L_i(t-1)/L_i(t-2))/T); w = 1 for the first two steps."""

    name = "dwa"

    def __init__(self, *, train_labels: object, temperature: float = 10.0, **kwargs: object) -> None:
        super().__init__(train_labels=train_labels, **kwargs)
        self._init_dwa(temperature)

    def combine(self, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        weights = self.dwa_weights().to(losses.dtype)
        total = (weights * losses).sum()
        self._advance(losses)
        return total, self._weight_parts("weight", weights)

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.dwa_weights().tolist()))


class _SigmaMixin(MultiTaskLoss):
    """The restrained uncertainty terms: sigma (init 1/N), weights 1/(N sigma^2), log(1+sigma^2), |phi - sum|sigma||."""

    def _init_sigma(self, freeze_sigma: bool) -> None:
        n = len(self.tasks)
        init = torch.full((n,), 1.0 / n)
        self.freeze_sigma = bool(freeze_sigma)
        if self.freeze_sigma:
            self.register_buffer("sigma", init)
        else:
            self.sigma = nn.Parameter(init)

    def uncertainty_weights(self) -> Tensor:
        return 1.0 / (len(self.tasks) * self.sigma ** 2)

    def regularisers(self) -> tuple[Tensor, Tensor]:
        return torch.log1p(self.sigma ** 2).sum(), (PHI - self.sigma.abs().sum()).abs()

    def _sigma_parts(self, regulariser: Tensor, constraint: Tensor) -> dict[str, float]:
        parts = self._weight_parts("sigma", self.sigma)
        parts.update({"regulariser": float(regulariser.detach()), "constraint": float(constraint.detach())})
        return parts


@register("loss", "rruw", summary="EmoMBT multitask: Restrained Revised Uncertainty Weighting (learnable sigma)",
          task="multilabel,regression", paper="Song et al. 2022; khanhnd185 2023")
class RruwTaskLoss(_SigmaMixin):
    """L = sum_i L_i/(N sigma_i^2) + sum_i log(1+sigma_i^2) + |1 - sum_i |sigma_i||."""

    name = "rruw"

    def __init__(self, *, train_labels: object, freeze_sigma: bool = False, **kwargs: object) -> None:
        super().__init__(train_labels=train_labels, **kwargs)
        self._init_sigma(freeze_sigma)

    def combine(self, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        weights = self.uncertainty_weights()
        regulariser, constraint = self.regularisers()
        total = (weights * losses).sum() + regulariser + constraint
        parts = self._weight_parts("weight", weights)
        parts.update(self._sigma_parts(regulariser, constraint))
        return total, parts

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.uncertainty_weights().detach().tolist()))


@register("loss", "druw", summary="EmoMBT multitask: Dynamic Restrained Uncertainty Weighting (DWA + learnable sigma)",
          task="multilabel,regression", paper="Song et al. 2022; khanhnd185 2023")
class DruwTaskLoss(_DwaMixin, _SigmaMixin):
    """L = sum_i (w_i^DWA + 1/(N sigma_i^2)) L_i + sum_i log(1+sigma_i^2) + |1 - sum_i |sigma_i||."""

    name = "druw"

    def __init__(self, *, train_labels: object, temperature: float = 10.0, freeze_sigma: bool = False,
                 **kwargs: object) -> None:
        super().__init__(train_labels=train_labels, **kwargs)
        self._init_dwa(temperature)
        self._init_sigma(freeze_sigma)

    def combine(self, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        dwa = self.dwa_weights().to(losses.dtype)
        weights = dwa + self.uncertainty_weights()
        regulariser, constraint = self.regularisers()
        total = (weights * losses).sum() + regulariser + constraint
        self._advance(losses)
        parts = self._weight_parts("weight", weights)
        parts.update(self._weight_parts("dwa", dwa))
        parts.update(self._sigma_parts(regulariser, constraint))
        return total, parts

    def task_weights(self) -> dict[str, float]:
        weights = self.dwa_weights() + self.uncertainty_weights().detach()
        return dict(zip(self.tasks, weights.tolist()))
