"""The E2EMAL recipe (notebook 04): its schedule, its loss parameters per dataset, and the paper's analyses.

E2EMAL (Huynh et al., IEEE MultiMedia 2021; th2l/E2EMAL) is the model ``emolib.models.e2emal`` trained with the
adaptive (uncertainty-weighted) loss ``emolib.losses.adaptive``. This module holds the training configuration
(``e2emal_train_config``, ``E2EMAL_FRAMES``), the cache parameters (``E2EMAL_PREPARE``), the loss parameters
(``e2emal_loss_params``), the size breakdown behind the paper's "~1 MB extractor" claim, the learned s_i curves and
the modality attention, with their plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emolib.data.dataset import FrameOptions, collate  # noqa: F401 (notebook API)
from emolib.experiment import Experiment, experiment_summary, load_splits, run_experiment  # noqa: F401
from emolib.models.blocks import count_parameters
from emolib.models.e2emal import E2EMAL, MODALITIES
from emolib.models.e2emal_inputs import MIN_FACE_CONF


def float32_mb(n_params: int) -> float:
    """Size of ``n_params`` float32 numbers in MB (10^6 bytes)."""
    return n_params * 4 / 1e6


def size_breakdown(model: E2EMAL) -> list[dict[str, Any]]:
    """Parameters and float32 size per part: the two LFEs, the three TCN stacks, attention, heads and fusion, and
    the total. ``buffers`` counts BatchNorm statistics (not trained, but stored with the weights)."""
    groups = {
        "LFE visual": [model.visual_lfe], "LFE audio": [model.audio_lfe],
        "TCN visual": [model.visual_tcn], "TCN audio": [model.audio_tcn], "TCN text": [model.text_tcn],
        "temporal attention": [model.visual_att, model.audio_att, model.text_att],
        "unimodal heads": [model.visual_head, model.audio_head, model.text_head],
        "fusion (projections, modality attention, fused head)": [model.audio_proj, model.visual_proj,
                                                                 model.text_proj, model.modality_att,
                                                                 model.fused_head],
    }
    rows = []
    for part, modules in groups.items():
        n = sum(count_parameters(m) for m in modules)
        buffers = sum(b.numel() for m in modules for b in m.buffers() if b.is_floating_point())
        rows.append({"part": part, "params": n, "float32_MB": round(float32_mb(n), 4), "buffers": buffers})
    total = count_parameters(model)
    if total != sum(r["params"] for r in rows):
        raise RuntimeError("size_breakdown does not cover every parameter of the model")
    rows.append({"part": "total", "params": total, "float32_MB": round(float32_mb(total), 4),
                 "buffers": sum(r["buffers"] for r in rows)})
    return rows


@torch.no_grad()
def modality_attention(model: E2EMAL, batch: Mapping[str, Any], *, per_feature: bool = False) -> Tensor:
    """The fusion's sigmoid weights for a batch (eval mode): (B, 3) averaged over the fusion features, or
    (B, fusion_dim, 3) with ``per_feature=True``; modality order audio, visual, text."""
    was_training = model.training
    model.eval()
    try:
        weights = model.run(batch).modality_attention
    finally:
        model.train(was_training)
    return weights if per_feature else weights.mean(dim=1)


def s_curves(record: Mapping[str, Any]) -> dict[str, list[float]]:
    """{output: [s_i per epoch]} from a run record trained with the adaptive loss (empty when fused-only)."""
    parts = record.get("curves", {}).get("train_parts", {})
    return {k[2:]: list(v) for k, v in parts.items() if k.startswith("s_") and k != "s_penalty"}


def e2emal_loss_params(dataset: str, *, task: str = "multilabel", adaptive: bool = True,
                       lam: float | None = None, label_weights: bool = False,
                       positive_rates: str = "") -> dict[str, Any]:
    """Loss parameters for the ``"adaptive"`` loss on a registered dataset (``cache.dataset``, e.g. "mosei"):
    CMU-MOSEI uses the code's MoseiEmotionLoss as the per-output loss and lam 0.5 (its copy of the code); other
    label sets use pos-weighted BCE and lam 1.0 (the MERC2020 copy). ``adaptive=False`` trains the fused output
    only (the CMU-MOSEI config). CMU-MOSEI only: ``label_weights`` (the class weight the code meant, see
    :mod:`emolib.losses.adaptive`) and ``positive_rates`` ("": the code's CMU-MOSEI constants; "train": the
    training split's rates, for a release whose rates differ, such as the synthetic one)."""
    if task != "multilabel":
        raise ValueError(f"E2EMAL's losses are for multi-label classification; dataset {dataset!r} is {task}")
    mosei = dataset == "mosei"
    base = "mosei-emotion" if mosei else "bce"
    default_lam = 0.5 if mosei else 1.0
    params = {"base": base, "lam": float(default_lam if lam is None else lam), "fused_only": not adaptive}
    if mosei and label_weights:
        params["label_weights"] = True
    if mosei and positive_rates:
        params["positive_rates"] = positive_rates  # MoseiEmotionLoss checks the value
    return params


KERAS_ADAM_EPSILON = 1e-7
"""``tf.keras.optimizers.Adam``'s default epsilon (TF 2.3, E2EMAL's container), which E2EMAL's ``main.py`` keeps."""


def e2emal_train_config(*, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, min_lr: float = 1e-4,
                        warmup_epochs: float = 5, cosine_epochs: float = 15, select_protocol: str | None = "e2emal",
                        swa_start_epoch: float | None = None, swa_period_steps: int = 1,
                        adam_eps: float = KERAS_ADAM_EPSILON, **overrides: Any) -> dict[str, Any]:
    """TrainConfig fields of E2EMAL's schedule (th2l/E2EMAL ``src/CMU-MOSEI/train.sh``, ``main.py`` and
    ``utils.py: CusLRScheduler``): Adam, per-step linear warm-up over 5 epochs, cosine decay to ``min_lr`` at
    epoch 15, constant after; CMU-MOSEI: lr 1e-3 -> 1e-4, batch 32, 20 epochs, best epoch by valid weighted
    accuracy of the ``e2emal`` protocol. MERC2020 adds SWA from epoch 15 every 15 steps
    (``swa_start_epoch=15, swa_period_steps=15``) and lr 5e-3, batch 64. ``adam_eps``: ``tf.keras.optimizers.Adam``'s
    default epsilon 1e-7 (``main.py`` passes only the learning rate; PyTorch's default is 1e-8, see
    ``TrainConfig.adam_eps`` for how Keras applies it). ``overrides`` are further TrainConfig fields.
    ``select_protocol=None`` selects with the dataset's table protocol instead."""
    if not 0 < min_lr <= lr:
        raise ValueError(f"need 0 < min_lr <= lr, got {min_lr}, {lr}")
    config: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "optimizer": "adam", "lr": lr,
                              "scheduler": "cosine", "warmup_epochs": warmup_epochs,
                              "cosine_epochs": cosine_epochs, "min_lr_factor": min_lr / lr, "adam_eps": adam_eps}
    if select_protocol is not None:
        config["primary_protocol"] = select_protocol
    if swa_start_epoch is not None:
        config.update({"swa_start_epoch": swa_start_epoch, "swa_period_steps": swa_period_steps})
    config.update(overrides)
    return config


E2EMAL_FRAMES: dict[str, Any] = {"face_size": None, "max_frames": None}
"""FrameOptions for E2EMAL runs: every cached frame at its cached size (the model selects and re-crops)."""

VARIANTS = ("adaptive", "fused-only")


def e2emal_experiment(*, profile: str, dataset: str, variant: str = "adaptive", model_config: str = "tiny",
                      epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, min_lr: float = 1e-4,
                      warmup_epochs: float = 5, cosine_epochs: float = 15, lam: float = 0.5,
                      label_weights: bool = False, positive_rates: str = "",
                      max_steps_per_epoch: int = 0, test_each_epoch: bool = True, swa_start_epoch: float = 0,
                      swa_period_steps: int = 15, audio_mode: str = "chunk-mean", chunk_pad_quirk: bool = False,
                      glove_path: str = "",
                      text_model: str = "minilm", device: str = "auto", cache_dir: str | Path = "",
                      adapter: str = "", task: str = "multilabel", results_root: str | Path = "results",
                      progress: bool = True) -> Experiment:
    """Notebook 04's run of one ``variant`` ("adaptive": the paper's adaptive loss; "fused-only": the CMU-MOSEI
    config) from its parameters (0 / "" mean "off" / "default"), so that the notebook and the tests that check a
    profile's claims build the same experiment. ``adapter`` / ``task``: the cache's dataset adapter (default
    ``dataset``) and task, which choose the loss parameters (:func:`e2emal_loss_params`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    overrides = {"text_vectors": "glove" if glove_path else "token-embeddings", "glove_path": glove_path or None,
                 "text_model": text_model, "audio_mode": audio_mode, "chunk_pad_quirk": chunk_pad_quirk}
    train = e2emal_train_config(
        epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs,
        cosine_epochs=cosine_epochs, swa_start_epoch=swa_start_epoch or None, swa_period_steps=swa_period_steps,
        max_steps_per_epoch=max_steps_per_epoch or None, test_each_epoch=test_each_epoch, device=device,
        **({} if progress else {"progress": False}))
    return Experiment(
        profile=profile, model="e2emal", config=model_config, model_overrides=overrides,
        cache_dir=cache_dir or Path(results_root) / profile / "cache" / dataset, results_root=results_root,
        loss="adaptive", loss_params=e2emal_loss_params(adapter or dataset, task=task, adaptive=variant == "adaptive",
                                                        lam=lam, label_weights=label_weights,
                                                        positive_rates=positive_rates),
        train=train, frames=E2EMAL_FRAMES, variant=variant)


E2EMAL_PREPARE: dict[str, Any] = {"min_face_conf": MIN_FACE_CONF}
"""PrepareParams overrides for a cache E2EMAL trains on (``adapter.prepare_params("emolib", **E2EMAL_PREPARE)``):
per frame the largest face among the detections with MTCNN probability >= 0.65, as th2l/E2EMAL
``src/CMU-MOSEI/face_extractor.py`` keeps, instead of the largest face of any confidence (``min_face_conf=0``,
after which the model's 0.65 filter drops the frame when that face is below it, even if a smaller face passes).
With MTCNN's default output threshold 0.7 both store the same faces."""


# ------------------------------------------------------------------------------------------ notebook views


def size_table(model: E2EMAL):
    """:func:`size_breakdown` as a DataFrame (params, float32 MB, BN buffers per part)."""
    import pandas as pd

    return pd.DataFrame(size_breakdown(model)).set_index("part")


def plot_s_curves(records: Sequence[Mapping[str, Any]]):
    """The learned s_i per epoch (one line per output, one panel per seed) and the implied weights exp(-s_i)."""
    import matplotlib.pyplot as plt

    runs = [r for r in records if s_curves(r)]
    if not runs:
        raise ValueError("no record holds s_i curves (were they trained with the adaptive loss, fused_only=False?)")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for record in runs:
        epochs = record["curves"]["epoch"]
        for name, values in sorted(s_curves(record).items()):
            label = f"{name} (seed {record['seed']})" if len(runs) > 1 else name
            axes[0].plot(epochs, values, marker="o", label=label)
            axes[1].plot(epochs, [math.exp(-v) for v in values], marker="o", label=label)
    axes[0].set(xlabel="epoch", ylabel="s_i (epoch mean)", title="learned log-variances")
    axes[1].set(xlabel="epoch", ylabel="exp(-s_i)", title="effective loss weights")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_modality_attention(weights: Tensor, uids: Sequence[str] | None = None):
    """A heat map of per-clip modality attention weights (B, 3) from :func:`modality_attention`."""
    import matplotlib.pyplot as plt

    data = weights.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.2, 0.28 * len(data) + 1.2))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(MODALITIES)), MODALITIES)
    ax.set_yticks(range(len(data)), list(uids) if uids is not None else range(len(data)), fontsize=6)
    ax.set_title("modality attention (sigmoid, mean over features)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
