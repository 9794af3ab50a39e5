"""FE2E (Dai et al., NAACL 2021): fully end-to-end multimodal emotion model with weighted late fusion.

Per modality (chosen with ``modalities``, a subset of "tav", default all three):

* text: pretrained encoder (ALBERT-base-v2 in the paper) -> [CLS] -> ``t_out`` Linear(H -> C);
* visual: face crops -> 48x48, Dai's RGB normalisation -> VGG CNN -> Linear(4608 -> 1024 -> d) -> CLS
  transformer -> ``v_out`` Linear(d -> C);
* audio: raw 128-bin power mel spectrogram in 32-frame pieces, computed inside the model -> VGG CNN ->
  Linear(8192 -> 1024 -> d) -> CLS transformer -> ``a_out`` Linear(d -> C).

The logits of the present modalities are stacked in Dai's order (text, visual, audio) and fused by
``Linear(M -> 1, bias=False)``: three learned scalars shared by all classes. With one modality its logits are
returned directly. ``forward`` returns ``{"logits": fused, "text": ..., "visual": ..., "audio": ...}`` (the
per-modality heads of the modalities in use).

Optimisation (Dai et al. 2021, Sec. 4; ``src/train.py`` of wenliangdai/Multimodal-End2end-Sparse): the
text encoder and ``t_out`` train at ``lr / text_lr_factor`` (``lr_factors``), all
other modules at ``lr``. MTCNN is not part of the module: faces are cropped once by the data preparation (or by
``emolib.predict`` on raw video) with the same detector settings.

``LateFusionModel`` is the shared skeleton; FV2ES (``emolib.models.fv2es``) plugs in its own visual and audio
branches. The unimodal baselines (``visual-only``, ``audio-only``, ``text-only``) are FE2E restricted to one
modality: with one modality FE2E returns that branch's logits directly, which is what the papers' "Audio",
"Visual" and "Text" rows report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from emolib.deviations import Deviation
from emolib.models.blocks import (
    AudioBranch,
    EmotionModel,
    VisualBranch,
    WeightedLateFusion,
    _rename_prefixes,
    require,
)
from emolib.models.config import TINY_VGG_WIDTHS, SequenceConfig, TextConfig
from emolib.models.text import TextEncoder
from emolib.registry import register

MODALITY_ORDER = ("t", "v", "a")  # Dai stacks text, visual, audio logits in this order
HEAD_NAMES = {"t": "text", "v": "visual", "a": "audio"}


def parse_modalities(modalities: str) -> tuple[str, ...]:
    """'tav', 'va', 'a', ... -> the letters in Dai's order; anything else is an error."""
    letters = str(modalities).lower()
    unknown = sorted(set(letters) - set(MODALITY_ORDER))
    if not letters or unknown or len(set(letters)) != len(letters):
        raise ValueError(f"modalities must be a non-empty subset of 'tav' without repeats, got {modalities!r}")
    return tuple(m for m in MODALITY_ORDER if m in letters)


@dataclass(frozen=True)
class FE2EConfig(SequenceConfig, TextConfig):
    """FE2E's configuration; the defaults are the paper's (Dai's README command: d 64, 4 layers, 4 heads,
    ALBERT-base-v2). ``modalities`` is a subset of "tav"; ``face_resize`` how cached crops reach 48 px."""

    modalities: str = "tav"
    face_resize: str = "area"

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_modalities(self.modalities)


_TINY = dict(d=32, nlayers=1, nheads=2, dim_feedforward=64, widths=TINY_VGG_WIDTHS, flatten_hidden=64,
             text_model="minilm")


class LateFusionModel(EmotionModel):
    """Text / visual / audio branches with linear heads and FE2E's weighted late fusion of their logits.

    Subclasses override ``make_visual`` and ``make_audio`` (modules mapping (inputs, lengths) -> (B, d)); each
    is only called when its modality is in use. The text branch, heads, fusion and parameter groups live here.
    ``text_encoder`` may be passed ready-made (e.g. ``TextEncoder.tiny_random()`` in unit tests).
    """

    config_class = FE2EConfig
    config: FE2EConfig
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("model.face_resize", "faces reach 48 px from the cached crops by an area resize; Dai's MTCNN "
                  "outputs 48 px directly (identical when the cache stores 48 px faces)", "emolib",
                  "area (facenet's own resampling) | bilinear",
                  "wenliangdai/Multimodal-End2end-Sparse src/models/e2e.py"),
        Deviation("train.primary_protocol", "CMU-MOSEI: the paper's table uses weighted accuracy (dai-mosei); Dai's "
                  "HEAD code computes plain accuracy for every dataset (dai-iemocap)", "paper",
                  "dai-mosei (paper) | dai-iemocap (code)", "src/evaluate.py"),
    )

    def __init__(self, num_outputs: int, config: FE2EConfig | str | dict | None = None, *,
                 text_encoder: TextEncoder | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        self.modalities = parse_modalities(cfg.modalities)
        self.num_outputs = num_outputs
        if "t" in self.modalities:
            self.text_encoder = text_encoder or TextEncoder(cfg.text_model, max_length=cfg.text_max_length)
            self.t_out = nn.Linear(self.text_encoder.hidden_size, num_outputs)
        if "v" in self.modalities:
            self.visual = self.make_visual()
            self.v_out = nn.Linear(cfg.d, num_outputs)
        if "a" in self.modalities:
            self.audio = self.make_audio()
            self.a_out = nn.Linear(cfg.d, num_outputs)
        self.fusion = WeightedLateFusion(len(self.modalities)) if len(self.modalities) > 1 else None
        if self.fusion is None:
            # The unimodal baselines once had their own classes with a head called "head"; their checkpoints
            # load into the one-modality FE2E unchanged.
            self._register_load_state_dict_pre_hook(self._legacy_head_key)

    def _legacy_head_key(self, state_dict, prefix, *_args) -> None:
        _rename_prefixes(state_dict, prefix, {"head.": f"{self.modalities[0]}_out."})

    @property
    def data_recipe(self) -> str | None:  # type: ignore[override]
        """Dai et al.'s frames and faces matter to the models that look at faces."""
        return "dai" if "v" in self.modalities else None

    def make_visual(self) -> nn.Module:
        return VisualBranch(self.config, face_resize=self.config.face_resize)

    def make_audio(self) -> nn.Module:
        return AudioBranch(self.config)

    def lr_factors(self, text_lr_factor: float | None = None) -> dict[str, float]:
        """FE2E's groups: the text encoder and its head ``t_out`` at 1 / text_lr_factor, the rest at 1."""
        if "t" not in self.modalities:
            return {}
        slow = self.text_lr(text_lr_factor)
        return {"text_encoder": slow, "t_out": slow}

    def modality_encoders(self) -> dict[str, str]:
        names = {"t": ("text", "text_encoder"), "v": ("visual", "visual"), "a": ("audio", "audio")}
        return dict(names[m] for m in self.modalities)

    def modality_logits(self, batch: dict) -> dict[str, Tensor]:
        """{"text"|"visual"|"audio": (B, C)} for the modalities in use, in Dai's order."""
        heads: dict[str, Tensor] = {}
        device = self.device
        name = self.registry_name
        if "t" in self.modalities:
            heads["text"] = self.t_out(self.text_encoder(require(batch, "text", name)))
        if "v" in self.modalities:
            faces = require(batch, "faces", name).to(device)
            heads["visual"] = self.v_out(self.visual(faces, require(batch, "face_lengths", name)))
        if "a" in self.modalities:
            audio = require(batch, "audio", name).to(device)
            heads["audio"] = self.a_out(self.audio(audio, require(batch, "audio_lengths", name)))
        return heads

    def forward(self, batch: dict) -> dict[str, Tensor]:
        heads = self.modality_logits(batch)
        logits = next(iter(heads.values())) if self.fusion is None else self.fusion(list(heads.values()))
        return {"logits": logits, **heads}

    def fusion_weights(self) -> dict[str, float]:
        """The learned late-fusion scalar of each modality ({"text": w_t, ...}); 1.0 for a single modality."""
        names = [HEAD_NAMES[m] for m in self.modalities]
        if self.fusion is None:
            return {names[0]: 1.0}
        return dict(zip(names, self.fusion.weights.weight.detach().reshape(-1).cpu().tolist()))


@register("model", "fe2e")
class FE2E(LateFusionModel):
    """FE2E: VGG CNNs on faces and mel pieces, CLS transformers, text CLS, weighted late fusion of logits."""

    registry_name = "fe2e"
    configs: ClassVar[dict[str, FE2EConfig]] = {"paper": FE2EConfig(), "tiny": FE2EConfig(**_TINY)}

    @classmethod
    def registry_meta(cls) -> dict:
        return {**super().registry_meta(), "modalities": "text,visual,audio", "paper": "Dai et al., NAACL 2021"}


class _OneModality(FE2E):
    """FE2E restricted to one modality: that branch and its head, no fusion (the papers' unimodal rows)."""

    modality: ClassVar[str]

    @classmethod
    def _unused_keys(cls) -> set[str]:
        text = set(TextConfig.field_names())
        return (set(FE2EConfig.field_names()) - text - {"modalities"}) if cls.modality == "t" else text

    @classmethod
    def resolve_config(cls, config=None, **overrides) -> FE2EConfig:
        # The configuration is FE2E's; keys of the branches this model does not build are refused, not ignored.
        given = set(overrides) | (set(config) if isinstance(config, Mapping) else set())
        unused = sorted(given & cls._unused_keys())
        if unused:
            allowed = sorted(set(FE2EConfig.field_names()) - cls._unused_keys())
            raise TypeError(f"model {cls.registry_name!r} does not take {unused}; it takes {allowed}")
        resolved = super().resolve_config(config, **overrides)
        if resolved.modalities != cls.modality:
            raise ValueError(f"model {cls.registry_name!r} is FE2E with modalities={cls.modality!r}; "
                             f"got modalities={resolved.modalities!r} (use model 'fe2e' for other subsets)")
        return resolved

    @classmethod
    def registry_meta(cls) -> dict:
        return {"configs": tuple(cls.configs), "modalities": HEAD_NAMES[cls.modality],
                "paper": "Dai et al., NAACL 2021 (FE2E single branch)"}


def _one_modality_configs(modality: str) -> dict[str, FE2EConfig]:
    return {name: cfg.replace(modalities=modality) for name, cfg in FE2E.configs.items()}


@register("model", "visual-only")
class VisualOnly(_OneModality):
    """FE2E visual branch alone: 48x48 faces -> VGG CNN -> CLS transformer -> linear head."""

    registry_name, modality = "visual-only", "v"
    configs = _one_modality_configs("v")


@register("model", "audio-only")
class AudioOnly(_OneModality):
    """FE2E audio branch alone: 32-frame mel pieces -> VGG CNN -> CLS transformer -> linear head."""

    registry_name, modality = "audio-only", "a"
    configs = _one_modality_configs("a")


@register("model", "text-only")
class TextOnly(_OneModality):
    """FE2E text branch alone: pretrained transformer [CLS] -> linear head, both at lr/text_lr_factor."""

    registry_name, modality = "text-only", "t"
    configs = _one_modality_configs("t")
