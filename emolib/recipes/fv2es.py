"""The FV2ES recipe (notebook 03): its training configuration, run names, and the analyses the paper shows.

FV2ES (Wei, Huang, Zhang, IEEE T-Broadcasting 2022) is trained next to its FE2E baseline on the same cache. This
module holds what sits around the model (``emolib.models.fv2es``):

* ``fv2es_variant``: the run name of a paper-intent or code-faithful run;
* ``fusion_weights_table``: the learned late-fusion weight of each modality (FE2E and FV2ES);
* ``reparameterisation_report`` / ``fusion_effect``: what fusing the RepVGG blocks changes (parameters,
  latency, outputs);
* ``plot_spectrogram_attention``: NesT attention drawn over the mel spectrogram.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from emolib.data.dataset import FrameOptions, collate  # noqa: F401 (notebook API)
from emolib.experiment import Experiment, experiment_summary, load_splits, run_experiment  # noqa: F401 (notebook API)
from emolib.models.blocks import count_parameters
from emolib.models.fe2e import LateFusionModel
from emolib.models.fv2es import FV2ES
from emolib.models.nest_audio import (  # noqa: F401 (notebook API)
    PIECE_FRAMES,
    SpectrogramAttention,
    spectrogram_attention,
)
from emolib.models.repvgg import RepVGGCNN


def fusion_weights_table(models: dict[str, LateFusionModel]):
    """Learned late-fusion weight of each modality, one row per model (a pandas DataFrame)."""
    import pandas as pd

    rows = [{"run": name, **model.fusion_weights()} for name, model in models.items()]
    return pd.DataFrame(rows).set_index("run")


@torch.no_grad()
def reparameterisation_report(cnn: RepVGGCNN, faces: Tensor, *, repeats: int = 5) -> dict[str, Any]:
    """Parameter count, latency and output difference of ``cnn`` before and after ``fuse()``.

    ``cnn`` must be unfused; it is deep-copied, so the caller's module is left as it is. ``faces`` is a float
    (N, 3, 48, 48) batch (already normalised). Latency is the median of ``repeats`` timed eval-mode passes
    after one warm-up pass, in milliseconds per batch.
    """
    import copy

    if cnn.is_fused:
        raise ValueError("reparameterisation_report needs the multi-branch (unfused) CNN")
    multi = copy.deepcopy(cnn).eval()
    fused = copy.deepcopy(cnn).eval().fuse()
    faces = faces.to(next(cnn.parameters()).device)
    out_multi, t_multi = _timed(multi, faces, repeats)
    out_fused, t_fused = _timed(fused, faces, repeats)
    return {
        "params_multi_branch": count_parameters(multi),
        "params_fused": count_parameters(fused),
        "latency_ms_multi_branch": t_multi,
        "latency_ms_fused": t_fused,
        "speedup": t_multi / t_fused if t_fused > 0 else float("nan"),
        "max_abs_diff": float((out_multi - out_fused).abs().max()),
        "max_abs_output": float(out_multi.abs().max()),
        "batch": int(faces.shape[0]),
        "repeats": repeats,
    }


def _timed(module: nn.Module, x: Tensor, repeats: int) -> tuple[Tensor, float]:
    return _timed_call(lambda: module(x), x.device, repeats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fv2es_variant(fuse_at_first_validation: bool = False, train_visual_head: bool = True) -> str:
    """Run-name suffix that keeps paper-intent and code-faithful runs apart: "" (paper), "code" (both quirks),
    "code-fuse" or "code-vhead" (one of them)."""
    quirks = [name for name, on in (("fuse", fuse_at_first_validation), ("vhead", not train_visual_head)) if on]
    if not quirks:
        return ""
    return "code" if len(quirks) == 2 else f"code-{quirks[0]}"


@torch.no_grad()
def fusion_effect(model: FV2ES, batch: dict, *, repeats: int = 5) -> dict[str, Any]:
    """What re-parameterisation changes on a real batch: whole-model parameter counts, visual-branch latency
    (ms per batch) and the largest difference of every output head, multi-branch vs fused (eval mode).

    Works on copies; ``model`` must still be unfused (a code-faithful run is fused after its first epoch).
    """
    import copy

    if model.is_fused:
        raise ValueError("fusion_effect needs a model whose RepVGG blocks are not fused yet")
    if "v" not in model.modalities:
        raise ValueError("fusion_effect needs a model with the visual branch")
    multi = copy.deepcopy(model).eval()
    multi.config = multi.config.replace(fuse_at_first_validation=False)
    fused = copy.deepcopy(multi).fuse()
    device = multi.device
    faces = batch["faces"].to(device)
    lengths = batch["face_lengths"]
    out_multi, out_fused = multi(batch), fused(batch)
    _, t_multi = _timed_call(lambda: multi.visual(faces, lengths), device, repeats)
    _, t_fused = _timed_call(lambda: fused.visual(faces, lengths), device, repeats)
    return {
        "params_multi_branch": count_parameters(multi),
        "params_fused": count_parameters(fused),
        "visual_params_multi_branch": count_parameters(multi.visual.backbone),
        "visual_params_fused": count_parameters(fused.visual.backbone),
        "visual_latency_ms_multi_branch": t_multi,
        "visual_latency_ms_fused": t_fused,
        "max_abs_diff": {k: float((out_multi[k] - out_fused[k]).abs().max()) for k in out_multi},
        "faces": int(faces.shape[0]),
    }


def _timed_call(fn, device: torch.device, repeats: int) -> tuple[Any, float]:
    out = fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return out, float(sorted(times)[len(times) // 2])


def plot_spectrogram_attention(result: SpectrogramAttention, index: int = 0, title: str = ""):
    """Log-power mel spectrogram of utterance ``index`` above its NesT attention map (a matplotlib figure)."""
    import matplotlib.pyplot as plt

    spec = torch.log10(result.spectrogram[index] + 1e-10).numpy()
    att = result.attention[index].numpy()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, data, label in ((axes[0], spec, "log10 power"), (axes[1], att, "received attention")):
        im = ax.imshow(data, origin="lower", aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_ylabel("mel bin")
    pieces = spec.shape[1] // PIECE_FRAMES
    for ax in axes:
        for p in range(1, pieces):
            ax.axvline(p * PIECE_FRAMES - 0.5, color="white", linewidth=0.8)
    axes[1].set_xlabel("frame (12.5 ms hop; white lines separate 32-frame pieces)")
    axes[0].set_title(title or f"NesT level {result.level + 1} attention over the spectrogram")
    fig.tight_layout()
    return fig
