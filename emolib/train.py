"""The trainer shared by every model: Adam with per-module learning rates, per-epoch evaluation with every
metric protocol, best-epoch selection, early stopping, exact resume, and the run record.

It runs on HF accelerate, so one code path serves a CPU, one GPU, or several GPUs (``accelerate launch``).
The papers' loop (``src/trainers/emotiontrainer.py`` of ``wenliangdai/Multimodal-End2end-Sparse`` and of
``khanhnd185/EmoMBT``, ``V2EM/src/trainers/r_emotiontrainer.py`` of ``MultimodalAffectiveComputing/FV2ES``) is,
per epoch:

    train -> valid (thresholds chosen on valid) -> test (with the valid thresholds) -> select on valid

and the reported test numbers are those of the epoch with the best valid selection metric.

Model hooks (all optional):

* ``lr_factors(text_lr_factor=...) -> {prefix: factor}`` (or ``lr_factors()``): parameters whose name starts
  with ``prefix`` (a submodule name) train at ``lr * factor``; the longest matching prefix wins. The trainer
  passes ``config.text_lr_factor`` when the method accepts that keyword, so a model can put its text encoder
  at ``1 / text_lr_factor`` as the papers do. ``TrainConfig.lr_factors`` overrides per prefix.
* ``frozen_params() -> iterable of parameter names or prefixes``: left out of the optimiser and set to
  ``requires_grad=False`` (how quirk switches such as FV2ES's never-updated ``v_out`` are expressed).

Reproducibility: the training order of epoch ``e`` is a function of ``(seed, e)`` only, and the checkpoint
``run_dir/last.pt`` written after every epoch holds model, optimiser, scheduler, loss, grad-scaler and all
RNG states, so a run killed after epoch k and resumed reproduces the uninterrupted run exactly on CPU.

Several processes (``accelerate launch``, ``torchrun``; ``emolib.launch``) train data-parallel with these semantics:

* the global batch is ``batch_size``, whatever the number of processes: each batch of the (seed, epoch) order is
  split evenly across the processes (accelerate's ``split_batches``), so ``batch_size`` and ``eval_batch_size``
  must be multiples of the number of processes; steps per epoch, the lr schedule and SWA are those of one process.
  A short last training batch is filled up to ``batch_size`` with samples from the start of the epoch
  (accelerate's ``even_batches``), the one place where the samples seen differ from one process's;
* every valid and test sample is evaluated exactly once: ``gather_for_metrics`` drops the padding the sharded
  loader adds, and ``predict`` checks the gathered count against the split; thresholds are chosen on the whole
  gathered valid split;
* loss parameters (adaptive s_i, DRUW sigma) get their gradients averaged like the model's, and loss buffers
  that change while training (DWA's loss history) are averaged after every step, i.e. they follow the global
  batch; every epoch checks that each process holds the same loss parameters and buffers;
* only the main process writes checkpoints and records; ``last.pt`` holds every process's RNG state, so a run
  killed after epoch k and resumed with the same number of processes reproduces the uninterrupted one.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import emolib
from emolib.io import atomic_path
from emolib.models.config import check_text_lr_factor
from emolib.records import SCHEMA_VERSION, environment_info, git_commit, to_builtin, write_record

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Fields that may change between a run and its resumption without changing what is trained (the last two change
# speed and float rounding only).
_RESUMABLE_CHANGES = ("epochs", "num_workers", "progress", "test_each_epoch", "fused_optimizer", "channels_last")
_AMP = ("no", "fp16", "bf16", "auto")


@dataclass
class TrainConfig:
    """Everything that controls training; stored verbatim in the run record (``params.train``)."""

    epochs: int = 40
    batch_size: int = 8
    eval_batch_size: int | None = None  # None: batch_size
    optimizer: str = "adam"  # adam (the papers' choice; weight decay as L2) | adamw
    lr: float = 5e-5
    weight_decay: float = 0.0
    # Adam/AdamW epsilon: PyTorch's default 1e-8 (the PyTorch papers: Dai, FV2ES, khanhnd); E2EMAL's Keras Adam uses
    # 1e-7. Keras adds it to sqrt(v) before the bias correction ("epsilon hat"), PyTorch after, so Keras's 1e-7
    # acts like a PyTorch eps of 1e-7 / sqrt(1 - beta2^t): ~3e-6 at the first step, ~1e-7 after a few thousand.
    adam_eps: float = 1e-8
    # PyTorch's fused Adam/AdamW kernel (CPU and CUDA): one pass over each parameter instead of the default
    # implementation's separate elementwise passes (mul, lerp, sqrt, div, ...), the same update up to float
    # rounding. One thread of a 2-core CPU, the optimiser step of a MiniLM text model (22.6M parameters): default
    # 243 ms, fused 36 ms. False: PyTorch's default (for-loop on CPU, foreach on CUDA).
    fused_optimizer: bool = True
    # The model's 4-D weights (convolutions) in channels-last memory order, so that oneDNN / cuDNN convolve NHWC
    # maps: the same model up to float rounding. One thread of a 2-core CPU, tiny configurations, one training
    # step: EmoMBT 1.46 -> 0.98 s, E2EMAL 0.53 -> 0.34 s, audio-only 0.29 -> 0.17 s, FE2E 0.66 -> 0.54 s; on GPUs
    # it is the layout tensor cores want under AMP. Evaluation of the run's checkpoint uses the same layout
    # (``emolib.predict.load_checkpoint``), so its outputs reproduce the record's.
    channels_last: bool = True
    text_lr_factor: float = 10.0  # handed to the model's lr_factors(); the papers divide the text lr by it
    lr_factors: dict[str, float] = field(default_factory=dict)  # {param-name prefix: factor}, beats the model's
    scheduler: str = "none"  # none | cosine (stepped per batch, as Dai's -sc and E2EMAL)
    warmup_epochs: float = 0.0  # linear warm-up before the cosine (E2EMAL: 5)
    cosine_epochs: float | None = None  # where the cosine reaches its floor (E2EMAL: 15); None: epochs
    min_lr_factor: float = 0.0  # the cosine's floor as a fraction of lr (E2EMAL: 1e-4 / 1e-3)
    clip_grad: float | None = None  # max global grad norm; None: off
    early_stop: int | None = None  # patience in epochs; None: run all epochs (FV2ES)
    # Key of the primary protocol's valid average to select on; "f1+acc" sums two (khanhnd); None: the
    # protocol's own select_key (Dai: f1, E2EMAL: wacc, CH-SIMS: f1). Lower-is-better keys (mae) are negated.
    select_metric: str | None = None
    # The papers' loops evaluate the test split after every epoch; only the best-valid epoch's test numbers are
    # reported. False evaluates test only at epochs that improve on valid: the same record (test at the
    # best-valid epoch), less time, but the per-epoch test curve holds None for the other epochs.
    test_each_epoch: bool = True
    seed: int = 0
    amp: str = "no"  # no | fp16 | bf16 | auto (bf16 where supported, else fp16); always "no" on CPU
    device: str = "auto"  # auto (GPU when available) | cpu
    num_workers: int = 0
    drop_last: bool = False
    eval_protocols: list[str] = field(default_factory=list)  # run_experiment: the dataset adapter's protocols
    primary_protocol: str | None = None  # selection protocol; None: the first of eval_protocols
    max_steps_per_epoch: int | None = None  # cap on training batches per epoch (smoke runs)
    # Stochastic weight averaging (E2EMAL MERC2020: from epoch 15, every 15 steps): None turns it off. The model
    # is averaged after the optimiser step of 0-based global index round(swa_start_epoch * steps per epoch) and
    # every swa_period_steps-th step after; the average is evaluated after the last epoch and recorded under
    # "swa" (best-epoch selection and the record's "metrics" are unchanged). swa_bn: "last" keeps the live
    # model's final BatchNorm statistics (as tfa's SWA), "recompute" runs swa_utils.update_bn over the train split.
    swa_start_epoch: float | None = None
    swa_period_steps: int = 1
    swa_bn: str = "last"
    deterministic: bool = True  # torch.use_deterministic_algorithms(True, warn_only=True), cudnn deterministic
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def problems(self) -> list[str]:
        p = []
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name} must be an int >= 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            p.append("eval_batch_size must be >= 1 or None")
        if self.optimizer not in ("adam", "adamw"):
            p.append(f"optimizer {self.optimizer!r} not in adam|adamw")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            p.append("lr must be > 0")
        if self.weight_decay < 0:
            p.append("weight_decay must be >= 0")
        if isinstance(self.adam_eps, bool) or not isinstance(self.adam_eps, (int, float)) \
                or not (self.adam_eps > 0 and math.isfinite(self.adam_eps)):
            p.append("adam_eps must be a finite number > 0")
        try:
            check_text_lr_factor(self.text_lr_factor)
        except (TypeError, ValueError) as err:
            p.append(str(err))
        if any(not (f > 0 and math.isfinite(f)) for f in self.lr_factors.values()):
            p.append("lr_factors values must be finite and > 0")
        if self.scheduler not in ("none", "cosine"):
            p.append(f"scheduler {self.scheduler!r} not in none|cosine")
        if self.warmup_epochs < 0 or not 0 <= self.min_lr_factor <= 1:
            p.append("warmup_epochs must be >= 0 and min_lr_factor in [0, 1]")
        if self.cosine_epochs is not None and self.cosine_epochs <= self.warmup_epochs:
            p.append("cosine_epochs must be larger than warmup_epochs")
        if self.clip_grad is not None and self.clip_grad <= 0:
            p.append("clip_grad must be > 0 or None")
        if self.early_stop is not None and self.early_stop < 1:
            p.append("early_stop must be >= 1 or None")
        if self.select_metric is not None and (not self.select_metric or
                                               any(not k.strip() for k in self.select_metric.split("+"))):
            p.append(f"select_metric {self.select_metric!r} must be a metric key or keys joined by '+'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            p.append("seed must be an int >= 0")
        if self.amp not in _AMP:
            p.append(f"amp {self.amp!r} not in {'|'.join(_AMP)}")
        if self.device not in ("auto", "cpu"):
            p.append(f"device {self.device!r} not in auto|cpu")
        if self.num_workers < 0:
            p.append("num_workers must be >= 0")
        if self.primary_protocol is not None and self.eval_protocols \
                and self.primary_protocol not in self.eval_protocols:
            p.append(f"primary_protocol {self.primary_protocol!r} is not in eval_protocols {self.eval_protocols}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            p.append("max_steps_per_epoch must be >= 1 or None")
        if self.swa_start_epoch is not None and not (self.swa_start_epoch >= 0 and math.isfinite(self.swa_start_epoch)):
            p.append("swa_start_epoch must be >= 0 or None")
        if isinstance(self.swa_period_steps, bool) or not isinstance(self.swa_period_steps, int) \
                or self.swa_period_steps < 1:
            p.append("swa_period_steps must be an int >= 1")
        if self.swa_bn not in ("last", "recompute"):
            p.append(f"swa_bn {self.swa_bn!r} not in last|recompute")
        return p

    def to_dict(self) -> dict[str, Any]:
        return to_builtin(asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a parameters mapping (a profile YAML section); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


# ----------------------------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call it before building a model for reproducible inits."""
    from accelerate.utils import set_seed

    set_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed that depends on (seed, epoch) only, well mixed so nearby pairs do not collide."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint32)[0])


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``.

    A resumed run sets the epoch it continues from and gets the same order as an uninterrupted run, without
    depending on how much of the global RNG was consumed before.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def _rng_state(cuda: bool) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
    }


def _set_rng_state(state: Mapping[str, Any], cuda: bool) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if cuda and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


class _Determinism:
    """Turn on deterministic kernels for the duration of a fit and restore the caller's settings after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.saved = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if self.enabled:
            # cuBLAS needs a fixed workspace for reproducible GEMMs; harmless on CPU.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: object) -> None:
        algos, warn_only, cudnn_det, cudnn_bench = self.saved
        torch.use_deterministic_algorithms(algos, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.backends.cudnn.benchmark = cudnn_bench


# --------------------------------------------------------------------------------------- parameter groups


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def model_lr_factors(model: nn.Module, config: TrainConfig) -> dict[str, float]:
    """The model's ``lr_factors`` (given ``text_lr_factor`` when it takes it) updated by the config's.

    A model prefix without parameters is dropped (a unimodal variant may lack the text encoder its family
    names); a config prefix without parameters is an error, as it is most likely a typo.
    """
    names = [n for n, _ in model.named_parameters()]
    factors: dict[str, float] = {}
    hook = getattr(model, "lr_factors", None)
    if callable(hook):
        takes_text = "text_lr_factor" in inspect.signature(hook).parameters
        own = dict(hook(text_lr_factor=config.text_lr_factor) if takes_text else hook())
        factors.update({p: f for p, f in own.items() if any(_matches(n, p) for n in names)})
    for prefix in config.lr_factors:
        if not any(_matches(n, prefix) for n in names):
            raise ValueError(f"lr_factors prefix {prefix!r} matches no parameter of {type(model).__name__}")
    factors.update(config.lr_factors)
    for prefix, factor in factors.items():
        if isinstance(factor, bool) or not (isinstance(factor, (int, float)) and factor > 0 and math.isfinite(factor)):
            raise ValueError(f"lr factor for {prefix!r} must be a finite number > 0, got {factor!r}")
    return factors


def freeze_hooked_params(model: nn.Module) -> list[str]:
    """Apply the model's ``frozen_params`` hook: set ``requires_grad=False``; return the frozen names."""
    hook = getattr(model, "frozen_params", None)
    if not callable(hook):
        return []
    prefixes = list(hook())
    named = dict(model.named_parameters())
    frozen = []
    for prefix in prefixes:
        hits = [n for n in named if _matches(n, prefix)]
        if not hits:
            raise ValueError(f"frozen_params entry {prefix!r} matches no parameter of {type(model).__name__}")
        frozen.extend(hits)
    for name in frozen:
        named[name].requires_grad_(False)
    return sorted(set(frozen))


def parameter_groups(model: nn.Module, loss: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser groups: one per distinct lr factor of the model's trainable parameters, plus the loss's.

    Parameters with ``requires_grad=False`` (frozen by a hook or by the model) are left out. Each group
    carries ``name``, ``lr_factor`` and ``param_names`` for inspection. Loss parameters (learnable task
    weights) train at ``lr`` without weight decay, which would pull them towards 0 for no reason.
    """
    factors = model_lr_factors(model, config)
    ordered = sorted(factors, key=len, reverse=True)
    by_factor: dict[float, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in ordered if _matches(name, p)), None)
        factor = float(factors[prefix]) if prefix is not None else 1.0
        group = by_factor.setdefault(factor, {"name": "base" if factor == 1.0 else f"lr_x{factor:g}",
                                              "lr_factor": factor, "lr": config.lr * factor,
                                              "weight_decay": config.weight_decay, "params": [],
                                              "param_names": []})
        group["params"].append(param)
        group["param_names"].append(name)
    groups = [by_factor[f] for f in sorted(by_factor, reverse=True)]
    loss_params = [(n, p) for n, p in loss.named_parameters() if p.requires_grad]
    if loss_params:
        groups.append({"name": "loss", "lr_factor": 1.0, "lr": config.lr, "weight_decay": 0.0,
                       "params": [p for _, p in loss_params], "param_names": [f"loss.{n}" for n, _ in loss_params]})
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    return groups


def build_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    fused = config.fused_optimizer and all(p.is_floating_point() for g in groups for p in g["params"])
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps,
               **({"fused": True} if fused else {}))


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's optimiser state (Adam's moments) the parameter's memory layout.

    ``load_state_dict`` keeps the strides the state was saved with, and PyTorch's fused Adam walks parameter and
    state as flat buffers: a channels-last weight with contiguous moments (a checkpoint written before
    ``channels_last``, or under the other setting) would be updated with the wrong moments (measured: an
    error of 0.16 after one step of lr 0.1, against 6e-8 with matching layouts)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class LrSchedule:
    """Per-step multiplier of every group's lr: linear warm-up, cosine to ``min_lr_factor``, then flat.

    With no warm-up and ``cosine_epochs = epochs`` this is Dai's ``CosineAnnealingLR(T_max = all steps)``;
    with warm-up 5, cosine end 15 and floor 0.1 it is E2EMAL's ``CusLRScheduler``.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.enabled = config.scheduler == "cosine"
        self.warmup = config.warmup_epochs * steps_per_epoch
        end = config.cosine_epochs if config.cosine_epochs is not None else config.epochs
        self.end = max(end * steps_per_epoch, self.warmup + 1)
        self.floor = config.min_lr_factor

    def __call__(self, step: int) -> float:
        if not self.enabled:
            return 1.0
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step >= self.end:
            return self.floor
        progress = (step - self.warmup) / (self.end - self.warmup)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- protocols


def resolve_protocols(config: TrainConfig, dataset_name: str) -> tuple[list[Any], str]:
    """The protocol objects to evaluate, and the name of the primary (selection) protocol.

    The trainer does not know datasets: the protocols come from ``config.eval_protocols``, which
    ``run_experiment`` fills from the dataset's adapter (``emolib.data.adapter.Adapter.protocols``).
    """
    from emolib.metrics import get_protocol

    names = list(config.eval_protocols)
    if not names:
        raise ValueError(f"{dataset_name}: TrainConfig.eval_protocols is empty; name the protocols to evaluate "
                         "(run_experiment takes them from the dataset's adapter)")
    protocols = [get_protocol(n) for n in names]
    primary = config.primary_protocol or names[0]
    if primary not in names:
        raise ValueError(f"primary_protocol {primary!r} is not among the evaluated protocols {names}")
    return protocols, primary


def _improved(score: float, best: float | None) -> bool:
    # Strictly better, as Dai: a tie keeps the earlier epoch. An undefined (NaN -> -inf) score never wins.
    if not math.isfinite(score):
        return False
    return best is None or score > best


def evaluate_valid(protocols: Sequence[Any], valid: tuple[np.ndarray, np.ndarray],
                   class_names: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Valid metrics of every protocol, and the thresholds each chose on valid (None where it needs none)."""
    v_out, v_lab = valid
    metrics, thresholds = {}, {}
    for proto in protocols:
        thresholds[proto.name] = proto.choose_thresholds(v_out, v_lab) if proto.needs_thresholds else None
        metrics[proto.name] = to_builtin(proto.evaluate(v_out, v_lab, list(class_names),
                                                        thresholds=thresholds[proto.name]))
    return metrics, thresholds


def evaluate_test(protocols: Sequence[Any], test: tuple[np.ndarray, np.ndarray], class_names: Sequence[str],
                  thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """Test metrics of every protocol with the thresholds chosen on valid (``evaluate_valid``)."""
    t_out, t_lab = test
    return {proto.name: to_builtin(proto.evaluate(t_out, t_lab, list(class_names), thresholds=thresholds[proto.name]))
            for proto in protocols}


def evaluate_epoch(protocols: Sequence[Any], valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Valid and test evaluation of every protocol; thresholds are chosen on valid and reused on test."""
    v, thresholds = evaluate_valid(protocols, valid, class_names)
    t = evaluate_test(protocols, test, class_names, thresholds)
    return {name: {"valid": v[name], "test": t[name]} for name in v}


# ------------------------------------------------------------------------------------------------ loops


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    use_cuda = config.device == "auto" and torch.cuda.is_available()
    if not use_cuda:
        mixed = "no"
    elif config.amp == "auto":
        mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        mixed = config.amp
    # Multi-head models trained on one head (loss "bce" on --infer) leave parameters without gradients,
    # which DDP rejects unless told to look for them; single-process runs ignore the handler.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    # split_batches: the global batch stays batch_size with any number of processes (each takes an even share
    # of every batch), so a profile means the same optimisation on one GPU or eight. No effect with one process.
    options = {"mixed_precision": mixed, "cpu": not use_cuda, "kwargs_handlers": handlers,
               "dataloader_config": DataLoaderConfiguration(split_batches=True)}
    try:
        return Accelerator(**options)
    except ValueError as err:
        # accelerate keeps one global state per process; a notebook that trains twice with different amp or
        # device settings would otherwise have to restart its kernel. Only safe without a process group.
        if "already been initialized" not in str(err) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**options)


def _check_split(config: TrainConfig, num_processes: int) -> None:
    """With split batches every batch is shared evenly, so the batch sizes must be multiples of the processes."""
    if num_processes == 1:
        return
    for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if size is not None and size % num_processes:
            raise ValueError(f"{name} {size} is not a multiple of the {num_processes} processes: the global batch "
                             f"is {name}, split evenly across the processes; use a number of processes that "
                             f"divides it (e.g. --set <step>.num_processes=...)")


def _loaders(train: Dataset, valid: Dataset, test: Dataset, config: TrainConfig,
             collate_fn: Callable | None) -> tuple[DataLoader, DataLoader, DataLoader, EpochShuffleSampler]:
    sampler = EpochShuffleSampler(len(train), config.seed)
    common = {"collate_fn": collate_fn, "num_workers": config.num_workers}
    train_loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler, drop_last=config.drop_last,
                              **common)
    eval_bs = config.eval_batch_size or config.batch_size
    valid_loader = DataLoader(valid, batch_size=eval_bs, shuffle=False, **common)
    test_loader = DataLoader(test, batch_size=eval_bs, shuffle=False, **common)
    if len(train_loader) == 0:
        raise ValueError(f"training split has {len(train)} samples: no batch of {config.batch_size} "
                         f"(drop_last={config.drop_last})")
    return train_loader, valid_loader, test_loader, sampler


def _set_epoch(loader: Any, sampler: EpochShuffleSampler, epoch: int) -> None:
    # accelerate's DataLoaderShard overrides the sampler's epoch with its own iteration counter when
    # iterated; telling it the epoch keeps the order a function of (seed, epoch) after a resume too.
    sampler.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def _sync_loss_grads(loss: nn.Module, accelerator: Any) -> None:
    # Loss parameters live outside the DDP-wrapped model, so their gradients are not all-reduced for us.
    if accelerator.num_processes == 1:
        return
    for p in loss.parameters():
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def _spread(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """The element-wise minimum and maximum of ``tensor`` over all processes."""
    import torch.distributed as dist

    low, high = tensor.detach().clone(), tensor.detach().clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return low, high


def _sync_loss_buffers(loss: nn.Module, accelerator: Any) -> None:
    """Average the loss's floating-point buffers that differ between processes (DWA's loss history, computed
    from each process's share of the batch), so every process continues from the global batch's state.

    Buffers that agree everywhere (pos_weight) are left untouched: averaging N equal numbers can round.
    """
    if accelerator.num_processes == 1:
        return
    for buf in loss.buffers():
        if not buf.is_floating_point():
            continue
        low, high = _spread(buf)
        if not torch.equal(low, high):
            buf.copy_(accelerator.reduce(buf.detach().clone(), reduction="mean"))


def _check_loss_replicas(loss: nn.Module, accelerator: Any, epoch: int) -> None:
    """Every process must hold the same loss parameters and buffers; a divergence is a bug worth stopping for."""
    if accelerator.num_processes == 1:
        return
    tensors = [("parameter", n, t) for n, t in loss.named_parameters()]
    tensors += [("buffer", n, t) for n, t in loss.named_buffers()]
    for kind, name, tensor in tensors:
        low, high = _spread(tensor.float() if tensor.is_floating_point() else tensor.double())
        if not torch.equal(low, high):
            raise RuntimeError(f"epoch {epoch}: loss {kind} {name!r} differs between the {accelerator.num_processes} "
                               f"processes (max spread {float((high - low).abs().max()):.3g})")


def train_one_epoch(model: nn.Module, loss: nn.Module, loader: Any, optimizer: Any, scheduler: Any,
                    accelerator: Any, config: TrainConfig, epoch: int,
                    after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One pass over the training loader; returns the sample-weighted mean loss and loss parts.

    ``after_step(step)`` is called after every optimiser step that was not skipped (0-based step of the epoch).
    """
    model.train()
    loss.train()
    steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    total_loss, seen = 0.0, 0
    bar = tqdm(total=steps, desc=f"epoch {epoch} train", leave=False,
               disable=not (config.progress and accelerator.is_main_process))
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        outputs = model(batch)
        total, parts = loss(outputs, batch["labels"])
        value = float(total.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"epoch {epoch}, step {step + 1}: training loss is {value} ({parts})")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(total)
        _sync_loss_grads(loss, accelerator)
        if config.clip_grad is not None:
            accelerator.clip_grad_norm_(trainable, config.clip_grad)
        optimizer.step()
        _sync_loss_buffers(loss, accelerator)
        if scheduler is not None and not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        if after_step is not None and not accelerator.optimizer_step_was_skipped:
            after_step(step)
        n = int(batch["labels"].shape[0])
        total_loss += value * n
        seen += n
        for key, v in parts.items():
            sums[key] = sums.get(key, 0.0) + float(v) * n
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
    bar.close()
    stats = torch.tensor([total_loss, seen] + [sums[k] for k in sorted(sums)], dtype=torch.float64,
                         device=accelerator.device)
    stats = accelerator.reduce(stats, reduction="sum").cpu().tolist()
    count = stats[1]
    return {"loss": stats[0] / count, "parts": {k: v / count for k, v in zip(sorted(sums), stats[2:])},
            "steps": steps}


@torch.no_grad()
def predict(model: nn.Module, loader: Any, accelerator: Any, desc: str,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits ("logits" head, float32) and labels of a whole split, gathered over processes.

    The CPU random state is left as it was: iterating a DataLoader draws a seed from it, so otherwise whether a
    split was evaluated (``TrainConfig.test_each_epoch``) would change the dropout masks of later epochs."""
    model.eval()
    outs, labs = [], []
    with torch.random.fork_rng(devices=[]):
        for batch in tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_main_process)):
            logits = model(batch)["logits"].float()
            if logits.ndim != 2:
                raise ValueError(f"model output 'logits' has shape {tuple(logits.shape)}; expected (B, C)")
            logits, labels = accelerator.gather_for_metrics((logits.contiguous(),
                                                             batch["labels"].float().contiguous()))
            outs.append(logits.cpu())
            labs.append(labels.cpu())
    if not outs:
        raise ValueError(f"{desc}: the split is empty")
    logits, labels = torch.cat(outs).numpy(), torch.cat(labs).numpy()
    # Each sample exactly once: gather_for_metrics must have dropped the samples the sharded loader repeats to
    # give every process the same number of batches.
    expected = len(getattr(loader, "dataset", logits))
    if logits.shape[0] != expected:
        raise RuntimeError(f"{desc}: evaluated {logits.shape[0]} samples of a split of {expected} "
                           f"({accelerator.num_processes} processes)")
    return logits, labels


# ------------------------------------------------------------------------------------------ checkpoints


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_best_weights(model: nn.Module, run_dir: str | os.PathLike) -> int:
    """Load ``run_dir/best.pt`` into ``model``; return the epoch it came from."""
    path = Path(run_dir) / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no best weights; has this run finished an epoch?")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    return int(saved["epoch"])


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own file; it holds python/numpy RNG states, which the weights-only unpickler rejects.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err}); "
                         f"delete it or pass resume=False") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an emolib training checkpoint of format {CHECKPOINT_FORMAT}")
    return ckpt


def _check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, class_names: Sequence[str],
                     dataset_name: str, path: Path) -> None:
    # Fields added after a checkpoint was written take their defaults, so older checkpoints stay resumable.
    old, new = {**TrainConfig().to_dict(), **ckpt["config"]}, config.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k]]
    if list(ckpt["class_names"]) != list(class_names):
        diffs.append(f"class_names: {ckpt['class_names']} -> {list(class_names)}")
    if ckpt["dataset"] != dataset_name:
        diffs.append(f"dataset: {ckpt['dataset']!r} -> {dataset_name!r}")
    if diffs:
        raise ValueError(f"{path}: cannot resume, the run was started with other settings ("
                         + "; ".join(diffs) + "); pass resume=False to start over")
    if old["epochs"] != new["epochs"] and config.scheduler != "none" and config.cosine_epochs is None:
        log.warning("%s: epochs changed %s -> %s with a cosine schedule tied to epochs; the resumed run "
                    "follows a different schedule than an uninterrupted one", path, old["epochs"], new["epochs"])


# -------------------------------------------------------------------------------------------------- fit


def _peak_memory(cuda: bool) -> tuple[int, str]:
    if cuda:
        return int(torch.cuda.max_memory_allocated()), "cuda"
    # ru_maxrss is KiB on Linux and bytes on macOS; it is the process's lifetime peak (cannot be reset).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_rss"


def curves_from_history(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-epoch lists for plotting: epoch, train_loss, train_parts, lr, select, valid/test averages."""
    curves: dict[str, Any] = {"epoch": [], "train_loss": [], "lr": [], "select": [], "train_parts": {},
                              "valid": {}, "test": {}}
    for row in history:
        for key in ("epoch", "train_loss", "lr", "select"):
            curves[key].append(row[key])
        for part, value in row["train_parts"].items():
            curves["train_parts"].setdefault(part, []).append(value)
        for proto, average in row["valid"].items():
            for metric, value in average.items():
                curves["valid"].setdefault(proto, {}).setdefault(metric, []).append(value)
    # An epoch whose test split was not evaluated (test_each_epoch False, no improvement on valid) holds None.
    tested = [row["test"] for row in history if row["test"]]
    for proto, metric in dict.fromkeys((p, m) for t in tested for p, average in t.items() for m in average):
        curves["test"].setdefault(proto, {})[metric] = [
            row["test"][proto][metric] if row["test"] else None for row in history]
    return curves


_RUN_INFO_KEYS = ("model", "profile", "variant", "dataset_adapter", "model_params", "data_params", "loss",
                  "loss_params", "deviations")


def _timing(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seconds per training step and per evaluation batch (this process), summed over the epochs run."""
    rows = [r for r in history if "train_steps" in r]  # epochs of a checkpoint written before timing was kept
    steps, batches = sum(r["train_steps"] for r in rows), sum(r["eval_batches"] for r in rows)
    train_s, eval_s = sum(r["train_s"] for r in rows), sum(r["eval_s"] for r in rows)
    # After the first epoch: the first steps pay one-off costs (allocator, kernel selection, lazy imports).
    warm = rows[1:] or rows
    warm_steps, warm_batches = sum(r["train_steps"] for r in warm), sum(r["eval_batches"] for r in warm)
    return {"train_steps": steps, "train_s": train_s, "train_step_s": train_s / steps if steps else None,
            "eval_batches": batches, "eval_s": eval_s, "eval_batch_s": eval_s / batches if batches else None,
            "warm_train_step_s": sum(r["train_s"] for r in warm) / warm_steps if warm_steps else None,
            "warm_eval_batch_s": sum(r["eval_s"] for r in warm) / warm_batches if warm_batches else None}


def build_record(*, run_info: Mapping[str, Any], config: TrainConfig, dataset_name: str, primary: str,
                 class_names: Sequence[str], state: Mapping[str, Any], n_params: int, n_trainable: int,
                 runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The run record (schema in :mod:`emolib.records`) from the final training state.

    ``runtime`` (device, mixed_precision, num_processes of the accelerator) completes the environment.
    """
    peak, kind = _peak_memory(runtime["device"].startswith("cuda"))
    best = state["best"]
    extra = {k: v for k, v in run_info.items() if k not in _RUN_INFO_KEYS}
    return to_builtin({
        "schema_version": SCHEMA_VERSION,
        "model": run_info["model"],
        "variant": run_info.get("variant", run_info["model"]),
        "dataset": dataset_name,
        "dataset_adapter": run_info.get("dataset_adapter"),
        "profile": run_info["profile"],
        "protocol": primary,
        "seed": config.seed,
        "class_names": list(class_names),
        "params": {"model": dict(run_info.get("model_params", {})), "train": config.to_dict(),
                   "data": dict(run_info.get("data_params", {})),
                   "loss": {"name": run_info.get("loss"), **dict(run_info.get("loss_params", {}))}},
        "deviations": dict(run_info.get("deviations", {})),
        "metrics": best["metrics"],
        "thresholds": {p: m["valid"].get("thresholds") for p, m in best["metrics"].items()},
        "best_epoch": best["epoch"],
        "best_select": best["score"],
        "epochs_run": len(state["history"]),
        "stopped_early": state["stopped_early"],
        "curves": curves_from_history(state["history"]),
        "epoch_time_s": [row["time_s"] for row in state["history"]],
        "timing": _timing(state["history"]),
        "environment": {**environment_info(), **runtime},
        "wall_time_s": state["wall_time_s"],
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "n_params": n_params,
        "n_trainable_params": n_trainable,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "emolib_version": emolib.__version__,
        "git_commit": git_commit(),
        "extra": extra,
    })


def fit(model: nn.Module, loss: nn.Module, train: Dataset, valid: Dataset, test: Dataset, *,
        config: TrainConfig, class_names: Sequence[str], dataset_name: str, run_dir: str | os.PathLike,
        record_path: str | os.PathLike | None, collate_fn: Callable | None, run_info: Mapping[str, Any],
        resume: bool = False,
        on_epoch_end: Callable[[int, list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` with ``loss``; evaluate every epoch; return (and write) the run record.

    ``run_info`` names the run: ``model`` and ``profile`` (required), ``variant``, ``model_params``,
    ``data_params``, ``loss``, ``loss_params``; other keys land in the record's ``extra``. ``run_dir``
    receives ``last.pt`` (after every epoch) and ``best.pt`` (``{"epoch", "model"}``, whenever the
    selection metric improves). With ``resume=True`` an existing ``last.pt`` is continued (a finished run is
    only re-recorded; ``epochs`` may be raised to train further). ``on_epoch_end(epoch, history)`` is called
    after each epoch on the main process. When ``fit`` returns, ``model`` holds the best epoch's weights.
    """
    if "model" not in run_info or "profile" not in run_info:
        raise ValueError(f"run_info lacks 'model' or 'profile' (got {sorted(run_info)})")
    # A model's ``input_memo`` hook keeps per-utterance inputs while it trains (emolib.models.input_memo); entered
    # after _Run is built, so that an SWA copy of the model does not share it.
    memo = getattr(model, "input_memo", None)
    with _Determinism(config.deterministic), ExitStack() as stack:
        run = _Run(model, loss, (train, valid, test), config=config, class_names=list(class_names),
                   dataset_name=dataset_name, run_dir=Path(run_dir), collate_fn=collate_fn)
        if callable(memo):
            stack.enter_context(memo())
        run.start(resume)
        run.train(on_epoch_end)
        record = run.finish(run_info)
        if record_path is not None and run.accelerator.is_main_process:
            write_record(record_path, record)
        run.accelerator.wait_for_everyone()
        return record


def _check_tasks(splits: Sequence[Dataset], protocols: Sequence[Any], dataset_name: str) -> None:
    tasks = {name: getattr(ds, "task", None) for name, ds in zip(("train", "valid", "test"), splits)}
    known = {t for t in tasks.values() if t is not None}
    if len(known) > 1:
        raise ValueError(f"{dataset_name}: the splits disagree on the task: {tasks}")
    for proto in protocols:
        if known and proto.task not in known:
            raise ValueError(f"protocol {proto.name!r} is for {proto.task} tasks; dataset {dataset_name!r} is "
                             f"{known.pop()}")


class _Run:
    """The state of one fit: built once, then started (fresh or from ``last.pt``), trained, finished."""

    def __init__(self, model: nn.Module, loss: nn.Module, splits: tuple[Dataset, Dataset, Dataset], *,
                 config: TrainConfig, class_names: list[str], dataset_name: str, run_dir: Path,
                 collate_fn: Callable | None) -> None:
        self.started = time.perf_counter()
        self.config, self.class_names, self.dataset_name = config, class_names, dataset_name
        self.protocols, self.primary = resolve_protocols(config, dataset_name)
        self.primary_proto = next(p for p in self.protocols if p.name == self.primary)
        _check_tasks(splits, self.protocols, dataset_name)
        self.last_path, self.best_path = run_dir / "last.pt", run_dir / "best.pt"

        self.accelerator = accelerator = _make_accelerator(config)
        _check_split(config, accelerator.num_processes)
        self.cuda = accelerator.device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(accelerator.device)
        self.loss = loss.to(accelerator.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        frozen = freeze_hooked_params(model)
        groups = parameter_groups(model, loss, config)
        model_ids = {id(p) for p in model.parameters()}
        self.n_params = sum(p.numel() for p in model.parameters())
        self.n_trainable = sum(p.numel() for g in groups for p in g["params"] if id(p) in model_ids)
        train_loader, valid_loader, test_loader, self.sampler = _loaders(*splits, config, collate_fn)
        self.model, self.optimizer, self.train_loader, self.valid_loader, self.test_loader = accelerator.prepare(
            model, build_optimizer(groups, config), train_loader, valid_loader, test_loader)
        self.raw_model = accelerator.unwrap_model(self.model)
        steps = len(self.train_loader)
        self.steps_per_epoch = steps if config.max_steps_per_epoch is None else min(steps, config.max_steps_per_epoch)
        self.schedule = LrSchedule(config, self.steps_per_epoch)
        self.swa = _Swa(self.raw_model, config, self.steps_per_epoch) if config.swa_start_epoch is not None else None
        # Stepped by hand, not through accelerate, which would step it once per process per batch.
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self.schedule)
                          if config.scheduler != "none" else None)
        self.state: dict[str, Any] = {"history": [], "best": {"epoch": None, "score": None, "metrics": None},
                                      "patience": config.early_stop, "stopped_early": False, "wall_time_s": 0.0}
        self.best_state: dict[str, Tensor] | None = None
        self.start_epoch = 1
        log.info("training %s on %s: %d params (%d trainable, %d frozen by hook), groups %s, device %s, amp %s",
                 type(self.raw_model).__name__, dataset_name, self.n_params, self.n_trainable, len(frozen),
                 {g["name"]: g["lr"] for g in groups}, accelerator.device, accelerator.mixed_precision)

    # -- start -------------------------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        if resume and self.last_path.exists():
            self._restore(_load_checkpoint(self.last_path))
            return
        if resume:
            log.info("no checkpoint at %s: starting from scratch", self.last_path)
        if self.accelerator.is_main_process:
            # A stale last.pt from an earlier run must not be picked up by a later resume of this one.
            for path in (self.last_path, self.best_path):
                path.unlink(missing_ok=True)
        seed_everything(self.config.seed)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        _check_resumable(ckpt, self.config, self.class_names, self.dataset_name, self.last_path)
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        match_state_layout(self.optimizer.optimizer)  # the torch optimiser inside accelerate's wrapper
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.swa is not None and ckpt.get("swa") is not None:
            self.swa.averaged.load_state_dict(ckpt["swa"])
        self.loss.load_state_dict(ckpt["loss"])
        if self.accelerator.scaler is not None and ckpt.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        self.state = {k: ckpt[k] for k in self.state}
        self.best_state = ckpt["best_state"] if ckpt["best_state"] is not None else _cpu_state(self.raw_model)
        self._restore_rng(ckpt)
        self.start_epoch = ckpt["epoch"] + 1
        log.info("resuming %s after epoch %d (best epoch %s)", self.last_path, ckpt["epoch"],
                 self.state["best"]["epoch"])

    def _restore_rng(self, ckpt: Mapping[str, Any]) -> None:
        n, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_process = ckpt.get("rng_processes")
        saved = len(per_process) if per_process else 1
        if saved == n:
            _set_rng_state(per_process[rank] if per_process else ckpt["rng"], self.cuda)
            return
        # Another number of processes shares the batches differently anyway; the run continues correctly but
        # does not reproduce an uninterrupted one.
        if self.accelerator.is_main_process:
            log.warning("%s was written by %d process(es) and is resumed by %d: the resumed run is valid but does "
                        "not reproduce an uninterrupted run exactly", self.last_path, saved, n)
        _set_rng_state(ckpt["rng"], self.cuda)

    # -- epochs ------------------------------------------------------------------------------------------

    def train(self, on_epoch_end: Callable[[int, list[dict[str, Any]]], None] | None) -> None:
        # Training time accumulates over resumed sessions; a call that only re-records adds nothing.
        wall_before = self.state["wall_time_s"]
        for epoch in range(self.start_epoch, self.config.epochs + 1):
            if self.state["stopped_early"]:
                break
            self._epoch(epoch)
            _check_loss_replicas(self.loss, self.accelerator, epoch)
            self.state["wall_time_s"] = wall_before + (time.perf_counter() - self.started)
            rng = self._rng_states()  # a collective: every process takes part
            if self.accelerator.is_main_process:
                self._save_checkpoints(epoch, rng)
            self.accelerator.wait_for_everyone()
            if on_epoch_end is not None and self.accelerator.is_main_process:
                on_epoch_end(epoch, self.state["history"])

    def _epoch(self, epoch: int) -> None:
        config, acc, t0 = self.config, self.accelerator, time.perf_counter()
        _set_epoch(self.train_loader, self.sampler, epoch)
        lr = config.lr * self.schedule(self.scheduler.last_epoch if self.scheduler is not None else 0)
        after_step = None
        if self.swa is not None:
            swa, first = self.swa, (epoch - 1) * self.steps_per_epoch
            after_step = lambda step: swa.after_step(first + step)  # noqa: E731
        stats = train_one_epoch(self.model, self.loss, self.train_loader, self.optimizer, self.scheduler, acc,
                                config, epoch, after_step)
        t_train = time.perf_counter() - t0
        valid = predict(self.model, self.valid_loader, acc, f"epoch {epoch} valid", config.progress)
        v, thresholds = evaluate_valid(self.protocols, valid, self.class_names)
        score = self.primary_proto.selection_score(v[self.primary], config.select_metric)
        tested = config.test_each_epoch or self._improves(score)
        t = evaluate_test(self.protocols, predict(self.model, self.test_loader, acc, f"epoch {epoch} test",
                                                  config.progress), self.class_names, thresholds) if tested else {}
        results = {name: {"valid": v[name], "test": t.get(name)} for name in v}
        t_eval = time.perf_counter() - t0 - t_train
        improved = self._select(epoch, score, results)
        self.state["history"].append({
            "epoch": epoch, "train_loss": stats["loss"], "train_parts": stats["parts"], "lr": lr, "select": score,
            "improved": improved, "time_s": time.perf_counter() - t0,
            # for cost estimates (emolib.rehearsal): seconds per training step and per evaluation batch
            "train_s": t_train, "train_steps": stats["steps"], "eval_s": t_eval,
            "eval_batches": len(self.valid_loader) + (len(self.test_loader) if tested else 0),
            "valid": {p: r["valid"]["average"] for p, r in results.items()},
            "test": {p: r["test"]["average"] for p, r in results.items()} if tested else None,
        })
        log.info("epoch %d/%d: train loss %.4f, valid %s %s = %.4f%s", epoch, config.epochs, stats["loss"],
                 self.primary, config.select_metric or self.primary_proto.select_key, score,
                 " (best)" if improved else "")

    def _improves(self, score: float) -> bool:
        return _improved(score, self.state["best"]["score"])

    def _select(self, epoch: int, score: float, results: dict[str, Any]) -> bool:
        """Dai's rule: keep a strictly better epoch and reset patience, else count down to a stop."""
        state = self.state
        if self._improves(score):
            state["best"] = {"epoch": epoch, "score": score, "metrics": results}
            self.best_state = _cpu_state(self.raw_model)
            state["patience"] = self.config.early_stop
            return True
        if self.config.early_stop is not None:
            state["patience"] -= 1
            state["stopped_early"] = state["patience"] <= 0 and epoch < self.config.epochs
        return False

    def _rng_states(self) -> list[dict[str, Any]]:
        """The RNG state of every process, in rank order (each draws its own dropout masks for its share)."""
        own = _rng_state(self.cuda)
        if self.accelerator.num_processes == 1:
            return [own]
        from accelerate.utils import gather_object

        return list(gather_object([own]))

    def _save_checkpoints(self, epoch: int, rng: list[dict[str, Any]]) -> None:
        state, acc = self.state, self.accelerator
        if state["best"]["epoch"] == epoch:
            _save(self._best_payload(epoch), self.best_path)
        _save({
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "config": self.config.to_dict(),
            "dataset": self.dataset_name, "class_names": self.class_names, "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "loss": self.loss.state_dict(), "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "swa": self.swa.averaged.state_dict() if self.swa is not None else None,
            "rng": rng[0], "rng_processes": rng if len(rng) > 1 else None, **state,
            # Only when it differs from "model": no second full copy on improving epochs.
            "best_state": None if state["best"]["epoch"] == epoch else self.best_state,
        }, self.last_path)

    # -- finish ------------------------------------------------------------------------------------------

    def finish(self, run_info: Mapping[str, Any]) -> dict[str, Any]:
        """Load the best weights into the model and build the run record."""
        if self.state["best"]["epoch"] is None:
            raise RuntimeError(f"no epoch produced a finite selection metric on {self.primary!r}; nothing to "
                               f"report (the history is in {self.last_path})")
        swa = self._finish_swa() if self.swa is not None else None
        self.raw_model.load_state_dict(self.best_state)
        if self.accelerator.is_main_process and not self.best_path.exists():
            _save(self._best_payload(self.state["best"]["epoch"]), self.best_path)
        record = build_record(run_info=run_info, config=self.config, dataset_name=self.dataset_name,
                              primary=self.primary, class_names=self.class_names, state=self.state,
                              n_params=self.n_params, n_trainable=self.n_trainable,
                              runtime={"device": str(self.accelerator.device),
                                       "mixed_precision": self.accelerator.mixed_precision,
                                       "num_processes": self.accelerator.num_processes})
        if swa is not None:
            record["swa"] = to_builtin(swa)
        return record

    def _finish_swa(self) -> dict[str, Any]:
        """Evaluate the averaged weights (before the best epoch's weights are loaded) and save run_dir/swa.pt."""
        swa, config = self.swa, self.config
        summary: dict[str, Any] = {"start_epoch": config.swa_start_epoch, "start_step": swa.start_step,
                                   "period_steps": config.swa_period_steps, "bn": config.swa_bn,
                                   "n_averaged": swa.n_averaged, "metrics": None}
        if swa.n_averaged == 0:
            log.warning("SWA from step %d never averaged a model in %d epochs of %d steps; nothing to evaluate",
                        swa.start_step, len(self.state["history"]), self.steps_per_epoch)
            return summary
        module = swa.finalize(self.raw_model, self.train_loader)
        valid = predict(module, self.valid_loader, self.accelerator, "swa valid", config.progress)
        test = predict(module, self.test_loader, self.accelerator, "swa test", config.progress)
        summary["metrics"] = evaluate_epoch(self.protocols, valid, test, self.class_names)
        summary["select"] = self.primary_proto.selection_score(summary["metrics"][self.primary]["valid"],
                                                               config.select_metric)
        if self.accelerator.is_main_process:
            _save({"n_averaged": swa.n_averaged, "model": _cpu_state(module)}, self.last_path.parent / "swa.pt")
        return summary

    def _best_payload(self, epoch: int) -> dict[str, Any]:
        """``best.pt``: the best epoch's weights and the model's configuration (which rebuilds the model)."""
        payload: dict[str, Any] = {"epoch": epoch, "model": self.best_state}
        config = getattr(self.raw_model, "config", None)
        if callable(getattr(config, "to_dict", None)):
            payload["model_config"] = config.to_dict()
        return payload


class _Swa:
    """The running average of the model's parameters (``torch.optim.swa_utils.AveragedModel``) and its schedule."""

    def __init__(self, model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.averaged = AveragedModel(model)
        self.model = model
        self.start_step = int(round(config.swa_start_epoch * steps_per_epoch))
        self.period = config.swa_period_steps
        self.bn = config.swa_bn

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def after_step(self, global_step: int) -> None:
        if global_step >= self.start_step and (global_step - self.start_step) % self.period == 0:
            self.averaged.update_parameters(self.model)

    def finalize(self, live: nn.Module, train_loader: Any) -> nn.Module:
        """The averaged module with BatchNorm statistics set as ``swa_bn`` says."""
        module = self.averaged.module
        if self.bn == "recompute":
            from torch.optim.swa_utils import update_bn

            update_bn(train_loader, module)
        else:
            with torch.no_grad():
                for mine, theirs in zip(module.buffers(), live.buffers()):
                    mine.copy_(theirs)
        return module
