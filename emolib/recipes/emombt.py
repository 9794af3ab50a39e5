"""The EmoMBT recipe (notebook 05): model overrides per task, the multitask losses' parameters and the heads they
train, the selection protocol, per-head evaluation and the task-weight curves (khanhnd185/EmoMBT; Nguyen et al.,
Applied Sciences 2025).

The model is ``emolib.models.emombt``; the task-weighting losses (mean, DWA, RRUW, DRUW) are
``emolib.losses.multitask``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from emolib.data.dataset import FrameOptions, collate  # noqa: F401 (notebook API)
from emolib.experiment import (  # noqa: F401
    Experiment,
    dataset_protocols,
    experiment_summary,
    load_splits,
    primary_protocol,
    run_experiment,
)
from emolib.losses.multitask import OWN_TARGET, TASKS, parse_sims_labels
from emolib.metrics import get_protocol
from emolib.models import model_config


def emombt_overrides(task: str, **choices: Any) -> dict[str, Any]:
    """``model_overrides`` for a dataset ``task``: regression (CH-SIMS) heads predict one score each
    (``head_outputs=1``, as the code's heads regress one label); choices that are unset (``""``, integer ``0``
    or ``None``, the notebooks' way to say "the configuration's default") are dropped, booleans are kept."""
    if task not in ("multilabel", "regression"):
        raise ValueError(f"task must be 'multilabel' or 'regression', got {task!r}")
    out = {k: v for k, v in choices.items() if not _unset(v)}
    if task == "regression":
        out["head_outputs"] = 1
    return out


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == "") or (type(value) is int and value == 0)


# ------------------------------------------------------------------------------------------ model selection


def selection_protocol(cache: Any, select_metric: str | None = None, primary: str | None = None) -> str:
    """The protocol whose valid averages select the best epoch (``TrainConfig.primary_protocol``).

    ``cache``: a dataset cache (its adapter declares the protocols, the table's first) or the protocol names.
    ``primary`` (non-empty) is used as given, after checking that the dataset declares it and that its metrics
    hold every key of ``select_metric``. Otherwise: the table protocol when ``select_metric`` is unset or its
    keys are among the table protocol's metrics, else the first declared protocol whose metrics (``Protocol
    .metrics``) hold them all. khanhnd185's criterion ``"f1+acc"`` (valid average F1 + plain accuracy) thus
    selects on ``dai-iemocap`` for CMU-MOSEI, whose table protocol ``dai-mosei`` has weighted accuracy instead
    (the adapter declares ``dai-iemocap`` as the code variant). No match raises, naming each protocol's metrics.
    """
    if isinstance(cache, str):
        raise TypeError("cache: pass a dataset cache or a list of protocol names, not a string")
    declared = list(cache) if isinstance(cache, Sequence) else dataset_protocols(cache)
    if not declared:
        raise ValueError("the dataset declares no protocol")
    keys = [k.strip() for k in (select_metric or "").split("+") if k.strip()]
    metrics = {name: tuple(get_protocol(name).metrics) for name in declared}
    available = "; ".join(f"{name}: {', '.join(m)}" for name, m in metrics.items())
    if primary:
        if primary not in declared:
            raise ValueError(f"primary protocol {primary!r} is not one of this dataset's protocols {declared}")
        missing = [k for k in keys if k not in metrics[primary]]
        if missing:
            raise ValueError(f"select_metric {select_metric!r}: protocol {primary!r} has no {missing}; the metrics of "
                             f"this dataset's protocols are {available}")
        return primary
    for name in declared:
        if all(k in metrics[name] for k in keys):
            return name
    raise ValueError(f"select_metric {select_metric!r}: no protocol of this dataset has all of {keys}; the metrics of "
                     f"its protocols are {available}")


# ------------------------------------------------------------------------------------------ head evaluation


@torch.no_grad()
def head_predictions(model: nn.Module, dataset: Any, *, batch_size: int = 8,
                     heads: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every output head of ``model`` over ``dataset`` (in order): ({head: (N, C_h)}, labels (N, C))."""
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    labels = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        pred = model(batch)
        names = heads or [k for k in pred if k != "logits"] or ["logits"]
        for name in names:
            if name not in pred:
                raise KeyError(f"model has no output {name!r}; it returns {sorted(pred)}")
            outs.setdefault(name, []).append(pred[name].float().cpu().numpy())
        labels.append(batch["labels"].float().numpy())
    if not labels:
        raise ValueError("head_predictions: the dataset is empty")
    return {k: np.concatenate(v) for k, v in outs.items()}, np.concatenate(labels)


def evaluate_heads(model: nn.Module, valid: Any, test: Any, *, protocol: str | None = None,
                   class_names: Sequence[str] | None = None, batch_size: int = 8):
    """Test metrics (x100) of every head of a trained multi-head model, with the dataset's protocol.

    Thresholds (classification protocols) are chosen on ``valid`` for each head separately, as the trainer
    does for ``"logits"``. For CH-SIMS each head is scored against the multimodal label M (the tables' target)
    and, for a unimodal head, also against its own annotation (T, A or V). Returns a DataFrame with one row per
    (head, target): ``head``, ``target``, the protocol's average metrics, ``protocol``.
    """
    import pandas as pd

    names = list(class_names or getattr(test, "label_names", []) or [])
    proto_name = protocol or primary_protocol(test.cache)
    proto = get_protocol(proto_name)
    v_out, v_lab = head_predictions(model, valid, batch_size=batch_size)
    t_out, t_lab = head_predictions(model, test, batch_size=batch_size)
    rows = []
    for head in t_out:
        if proto.task == "regression":
            targets = ["M"] + ([OWN_TARGET[head]] if head in ("text", "audio", "visual") else [])
            for target in targets:
                j = names.index(target)
                pred = t_out[head][:, :1] if t_out[head].shape[1] == 1 else t_out[head][:, j:j + 1]
                result = proto.evaluate(pred, t_lab[:, j:j + 1], [target])
                rows.append({"head": head, "target": target, **_scaled(proto, result["average"]),
                             "protocol": proto_name})
        else:
            thresholds = proto.choose_thresholds(v_out[head], v_lab) if proto.needs_thresholds else None
            result = proto.evaluate(t_out[head], t_lab, names, thresholds=thresholds)
            rows.append({"head": head, "target": "all", **_scaled(proto, result["average"]), "protocol": proto_name})
    return pd.DataFrame(rows)


def _scaled(proto: Any, average: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric metric averages in the protocol's display units (counts such as ``auc_classes`` unscaled)."""
    out: dict[str, Any] = {}
    for key, value in average.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = proto.scaled(key, value) if key in proto.counts else round(proto.scaled(key, value), 2)
    return out


def loss_tasks(config: Any = "tiny", **overrides: Any) -> list[str]:
    """The heads of an emombt configuration (a name, dict or ``EmoMBTConfig``, plus overrides) that carry a loss,
    in the multitask losses' order: ``["fusion"]`` under ``fusion_only`` (the code's avg/gate/``--fusion
    fusion``), else the head of every modality in use and the fused head (none for ``dict``)."""
    heads = model_config("emombt", config, **overrides).output_heads
    return [t for t in TASKS if t in heads]


def multitask_loss_params(loss: str, *, task: str, fused_head: bool = True, tasks: Sequence[str] | None = None,
                          temperature: float = 10.0, freeze_sigma: bool = False,
                          sims_labels: str | None = None) -> dict[str, object]:
    """Constructor parameters of multitask loss ``loss`` for a dataset ``task`` ("multilabel" or "regression").

    Only the parameters that loss takes are returned: ``temperature`` for dwa/druw, ``freeze_sigma`` for
    rruw/druw, ``sims_labels`` for regression, and ``tasks`` when the trained heads are not all four: the
    ``tasks`` given (``loss_tasks`` of the model's configuration), else all but "fusion" when the model has no
    fused head.
    """
    if loss not in ("mean", "dwa", "rruw", "druw"):
        raise ValueError(f"{loss!r} is not a multitask loss (mean, dwa, rruw, druw)")
    if task not in ("multilabel", "regression"):
        raise ValueError(f"task must be 'multilabel' or 'regression', got {task!r}")
    params: dict[str, object] = {}
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or not tasks:
            raise ValueError(f"tasks must be names from {TASKS}, got {list(tasks)}")
        if not fused_head and "fusion" in tasks:
            raise ValueError("tasks names 'fusion' but fused_head=False")
        chosen = [t for t in TASKS if t in tasks]
        if chosen != list(TASKS):
            params["tasks"] = chosen
    elif not fused_head:
        params["tasks"] = [t for t in TASKS if t != "fusion"]
    if loss in ("dwa", "druw"):
        params["temperature"] = float(temperature)
    if loss in ("rruw", "druw"):
        params["freeze_sigma"] = bool(freeze_sigma)
    if task == "regression" and sims_labels:
        params["sims_labels"] = parse_sims_labels(sims_labels)
    return params


def task_weight_curves(records: Sequence[Mapping], part: str = "weight"):
    """Per-epoch task weights of run records as a long DataFrame with columns run, seed, epoch, task, <part>.

    Reads ``curves["train_parts"]["<part>_<task>"]`` (training-epoch averages the trainer records); ``part`` is
    ``"weight"`` (effective weight of each task loss), ``"dwa"``, ``"sigma"`` or ``"loss"``.
    """
    import pandas as pd

    prefix = f"{part}_"
    rows = []
    for rec in records:
        run = rec["model"] + ("" if rec.get("variant") in (None, "", "default") else f"-{rec['variant']}")
        for key, values in rec["curves"]["train_parts"].items():
            if not key.startswith(prefix) or key[len(prefix):] not in TASKS:
                continue
            for epoch, value in zip(rec["curves"]["epoch"], values):
                rows.append({"run": run, "seed": rec["seed"], "epoch": epoch, "task": key[len(prefix):],
                             part: value})
    return pd.DataFrame(rows, columns=["run", "seed", "epoch", "task", part])
