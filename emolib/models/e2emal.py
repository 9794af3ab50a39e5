"""E2EMAL (Huynh, Yang, Lee, Kim, IEEE MultiMedia 2021): lightweight feature extractor, TCNs,
sigmoid attention over time and over modalities, trained with the adaptive (uncertainty) loss.

Written from ``th2l/E2EMAL: src/CMU-MOSEI/models.py, tools/model_utils.py, tools/tcn.py, models_config.cfg``:

* **LFE = AFCNet** (:class:`AFCNet`, EfficientNet-derived, ReLU, no SE, no drop-connect): [video: x / 255] ->
  Keras "correct" zero padding + Conv3x3 stride 2 (32, no bias) -> BN -> ReLU -> inverted-residual stages
  2 x (k3, expand 1, 32->16, s1), 3 x (k3, expand 12, 16->24, first s2), 4 x (k5, expand 12, 24->32, first s2)
  -> Conv3x3 (32) -> BN -> ReLU -> GlobalMax (video, 32-d) or nothing (audio: 400x40 -> 32x50x5 -> 50 steps x
  160). Keras' never-adapted ``Normalization`` layer is the identity and is left out. BN: epsilon 1e-3, Keras
  momentum 0.99. Convolutions use Keras' VarianceScaling(2, fan_out, truncated normal) init.
* **Branches**: video = LFE per face (16 faces per clip, shared weights) -> 16 x 32; audio = LFE on the dB mel
  spectrogram -> 50 x 160; text = 30 x 300 chunk-averaged word vectors. Each -> two stacked keras-tcn TCNs (256
  filters, kernel 2, dilations 1/2/4/8, causal, LayerNorm, summed skips; :mod:`emolib.models.tcn`) -> sigmoid
  attention over time (:class:`SigmoidAttention`) -> GaussianDropout(0.5) -> 256-d feature -> linear head.
* **Fusion**: per modality Dense(32, ReLU) of the 256-d feature -> stacked B x 32 x 3 -> the same sigmoid
  attention over the modality axis -> mean over the 3 modalities -> Dropout(0.5) -> linear fused head.
* Outputs: ``{"logits": fused, "audio", "visual", "text"}``, all logits (B, C). While training with ``l2 > 0`` the
  dict also holds ``"l2_penalty"``, the Keras L2 term ``l2 * sum ||W||^2`` (1e-5) of the regularised Dense
  kernels (attention and fusion projections); the E2EMAL losses (:mod:`emolib.losses.adaptive`) add it.
* Inputs come from the shared batch contract through :mod:`emolib.models.e2emal_inputs` (confident faces, centred
  16 frames, aspect restored; spectrogram inside the model; word vectors), with E2EMAL's train-time
  augmentation (SpecAugment, Keras contrast/translation/rotation) active only in ``model.training``.

Text vectors: ``text_vectors="glove"`` reads ``glove_path``; ``"token-embeddings"`` is the offline default
(the configured ``text_model``'s input embeddings, projected to ``text_dim``); ``"auto"`` picks GloVe when a path
is given. ``model.text_vectors_description`` names what was used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.deviations import Deviation
from emolib.models.blocks import EmotionModel, require
from emolib.models.config import ModelConfig
from emolib.models.e2emal_inputs import (
    AUDIO_MODES,
    E2EMALSpectrogram,
    WordVectors,
    build_word_vectors,
    keras_face_augment,
    select_face_clips,
    spec_augment,
    text_sequences,
)
from emolib.models.input_memo import InputMemo
from emolib.models.tcn import StackedTCN
from emolib.registry import register

MODALITIES = ("audio", "visual", "text")
TEXT_VECTORS = ("auto", "glove", "token-embeddings")
_TRUNC_STD = 0.87962566103423978


class StageSpec(NamedTuple):
    kernel: int
    repeats: int
    filters_in: int
    filters_out: int
    expand: int
    stride: int


AFCNET_STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 2, 32, 16, 1, 1),
    StageSpec(3, 3, 16, 24, 12, 2),
    StageSpec(5, 4, 24, 32, 12, 2),
)


def _keras_conv_init(conv: nn.Conv2d) -> None:
    """VarianceScaling(scale=2, mode=fan_out, truncated normal), Keras' fan_out of a (depthwise) conv kernel."""
    kh, kw = conv.kernel_size
    fan_out = kh * kw * conv.out_channels // conv.groups
    std = math.sqrt(2.0 / fan_out) / _TRUNC_STD
    with torch.no_grad():
        nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std)


def _glorot(linear: nn.Linear) -> nn.Linear:
    """Keras Dense defaults: glorot_uniform kernel, zero bias."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


KERAS_BN_MOMENTUM = 0.01
"""Keras' BatchNormalization momentum 0.99 in PyTorch's convention (the weight of the new batch's statistics)."""


def _bn(channels: int, momentum: float = KERAS_BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=momentum)  # Keras epsilon 1e-3


def keras_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Keras padding before a conv: ``imagenet_utils.correct_pad`` (one less on top/left for even sizes) for
    stride 2, symmetric "same" padding for stride 1 (odd kernels)."""
    half = kernel // 2
    if stride == 1:
        return F.pad(x, (half, half, half, half))
    adj_h, adj_w = 1 - x.shape[-2] % 2, 1 - x.shape[-1] % 2
    return F.pad(x, (half - adj_w, half, half - adj_h, half))


class KerasConv2d(nn.Conv2d):
    """Conv2d without bias, Keras padding and init (``groups=channels`` gives a depthwise conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=False)
        _keras_conv_init(self)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size[0]
        if k > 1 and self.stride[0] == 1 and self.groups == self.in_channels > 1:
            # A stride-1 depthwise conv pads symmetrically: the conv's own zero padding gives the same outputs and
            # gradients as padding a copy first (tests/test_e2emal.py) at a fraction of the cost on CPU, where the
            # padded copy and its backward took most of the depthwise layer's time.
            return F.conv2d(x, self.weight, None, 1, k // 2, 1, self.groups)
        if k > 1:
            x = keras_pad(x, k, self.stride[0])
        return super().forward(x)


class InvertedResidual(nn.Module):
    """EfficientNet block without SE: [1x1 expand + BN + ReLU] -> depthwise kxk + BN + ReLU -> 1x1 project + BN,
    identity skip when stride 1 and in == out."""

    def __init__(self, filters_in: int, filters_out: int, kernel: int, stride: int, expand: int,
                 bn_momentum: float = KERAS_BN_MOMENTUM) -> None:
        super().__init__()
        hidden = filters_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [KerasConv2d(filters_in, hidden, 1), _bn(hidden, bn_momentum), nn.ReLU()]
        layers += [KerasConv2d(hidden, hidden, kernel, stride, groups=hidden), _bn(hidden, bn_momentum), nn.ReLU(),
                   KerasConv2d(hidden, filters_out, 1), _bn(filters_out, bn_momentum)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and filters_in == filters_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + x if self.skip else out


class AFCNet(nn.Module):
    """E2EMAL's lightweight feature extractor (see the module docstring).

    (N, in_channels, H, W) -> (N, top) with ``pooling="max"``, else the map (N, top, H/8, W/8) (ceil at each of
    the three stride-2 stages). ``rescale`` divides the input by 255 first (video).
    """

    def __init__(self, in_channels: int = 3, pooling: str | None = "max", rescale: bool = True,
                 stem: int = 32, stages: Sequence[StageSpec] = AFCNET_STAGES, top: int = 32,
                 bn_momentum: float = KERAS_BN_MOMENTUM) -> None:
        super().__init__()
        if pooling not in ("max", None):
            raise ValueError(f"pooling must be 'max' or None, got {pooling!r}")
        self.stem = nn.Sequential(KerasConv2d(in_channels, stem, 3, stride=2), _bn(stem, bn_momentum), nn.ReLU())
        blocks = []
        for spec in stages:
            for j in range(spec.repeats):
                blocks.append(InvertedResidual(spec.filters_in if j == 0 else spec.filters_out, spec.filters_out,
                                               spec.kernel, spec.stride if j == 0 else 1, spec.expand,
                                               bn_momentum))
        self.blocks = nn.Sequential(*blocks)
        last = stages[-1].filters_out if stages else stem
        self.top = nn.Sequential(KerasConv2d(last, top, 3), _bn(top, bn_momentum), nn.ReLU())
        self.pooling, self.rescale, self.out_channels = pooling, rescale, top
        self.n_stride2 = 1 + sum(1 for s in stages if s.stride == 2)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        for _ in range(self.n_stride2):
            height, width = -(-height // 2), -(-width // 2)
        return height, width

    def forward(self, x: Tensor) -> Tensor:
        if self.rescale:
            x = x / 255.0
        x = self.top(self.blocks(self.stem(x)))
        return x.amax(dim=(2, 3)) if self.pooling == "max" else x


class SigmoidAttention(nn.Module):
    """E2EMAL's ``get_attention_adjusted``: x (B, C, T) -> w = sigmoid(Dense_T(tanh(Dense_T(x)))) acting along
    the last axis -> mean over T of x * w -> (B, C). Returns the pooled features and the weights w."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.att0 = _glorot(nn.Linear(steps, steps))
        self.att1 = _glorot(nn.Linear(steps, steps))
        self.steps = steps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != self.steps:
            raise ValueError(f"attention built for {self.steps} steps got a last axis of {x.shape[-1]}")
        weights = torch.sigmoid(self.att1(torch.tanh(self.att0(x))))
        return (x * weights).mean(dim=-1), weights


class GaussianDropout(nn.Module):
    """Keras ``GaussianDropout(rate)``: while training, multiply by N(1, rate / (1 - rate)) noise."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"GaussianDropout rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0:
            return x
        std = math.sqrt(self.rate / (1.0 - self.rate))
        return x * (1.0 + std * torch.randn_like(x))


class E2EMALState(NamedTuple):
    """Everything one forward pass computes: the output dict and the attention weights per module."""

    outputs: dict[str, Tensor]
    temporal_attention: dict[str, Tensor]  # modality -> (B, C, T)
    modality_attention: Tensor  # (B, fusion_dim, 3), modality order audio, visual, text


@dataclass(frozen=True)
class E2EMALConfig(ModelConfig):
    """E2EMAL's configuration; defaults are the paper's (``models_config.cfg`` of th2l/E2EMAL, CMU-MOSEI)."""

    lfe_expand: int = 12  # expansion of AFCNet's stages 2 and 3 (the paper's 12; stage 1 keeps 1)
    tcn_filters: tuple[int, ...] = (256, 256)
    tcn_kernel_size: int = 2
    tcn_dilations: tuple[int, ...] = (1, 2, 4, 8)
    tcn_dropout: float = 0.0
    fusion_dim: int = 32
    feature_dropout: float = 0.5
    fusion_dropout: float = 0.5
    # BatchNorm running statistics' update weight in the LFEs (Keras 0.99 = 0.01 here). With 0.01 the statistics
    # evaluation uses still weigh their initial values by 0.99^steps: fine over CMU-MOSEI's ~10k steps, not over
    # the smoke's ~200 (see the tiny configuration).
    bn_momentum: float = KERAS_BN_MOMENTUM
    video_frames: int = 16
    face_size: int = 48
    min_face_conf: float = 0.65
    face_margin: float = 2
    face_crop_size: int | None = None
    restore_aspect: bool = True
    audio_mode: str = "chunk-mean"
    audio_frames: int = 400
    n_mels: int = 40
    sample_rate: int = 16000
    chunk_pad_quirk: bool = False
    text_words: int = 30
    text_dim: int = 300
    text_vectors: str = "auto"
    glove_path: str | None = None
    text_model: str = "minilm"
    text_projection_seed: int = 0
    l2: float = 1e-5
    augment: bool = True
    spec_mask_p: float = 0.4
    freq_mask: int = 5
    time_mask: int = 10
    contrast: float = 0.5
    translation: float = 0.2
    rotation: float = 0.2
    # Memory for the per-utterance inputs kept while training (face clips, spectrogram, word vectors before
    # augmentation; emolib.models.input_memo): the same numbers, a tiny step 100 -> 87 ms on one core. 0 turns it off.
    input_memo_mb: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.audio_mode not in AUDIO_MODES:
            raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {self.audio_mode!r}")
        if self.text_vectors not in TEXT_VECTORS:
            raise ValueError(f"text_vectors must be one of {TEXT_VECTORS}, got {self.text_vectors!r}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.lfe_expand < 1:
            raise ValueError(f"lfe_expand must be >= 1, got {self.lfe_expand}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if self.input_memo_mb < 0:
            raise ValueError(f"input_memo_mb must be >= 0, got {self.input_memo_mb}")


E2EMAL_CONFIGS: dict[str, E2EMALConfig] = {
    "paper": E2EMALConfig(),
    # CPU smoke runs: narrow TCNs, AFCNet stages 2-3 expanded 2x instead of 12x, 6 faces per clip instead of 16
    # and 3 s of audio instead of 4 (the synthetic clips hold 3-7 sampled frames and last ~3 s); the LFE layout,
    # the other inputs and the attention are the paper's. Measured on the synthetic CMU-MOSEI release (smoke size,
    # ~200-300 training steps), each against the paper's value:
    # * BatchNorm momentum 0.1 (PyTorch's default) instead of Keras' 0.01: with 0.01 the running statistics still
    #   weigh their initial values by 0.99^200 after the smoke's steps, and the visual head, evaluated with them,
    #   stayed at chance (train AUC 0.52; 0.84 for the same weights after re-estimating the statistics).
    # * dropout 0.1 instead of 0.5: on 64-d features GaussianDropout(0.5) (noise of std 1 on every feature)
    #   drowned the signal (valid weighted accuracy near 0.5 for 8 epochs with 0.5, 0.6 by epoch 4 with 0.1).
    # * no augmentation: the paper's (rotations up to 72 degrees, 20 % shifts, contrast, SpecAugment) gave no
    #   measurable gain over so few steps and costs ~10 % of a step.
    "tiny": E2EMALConfig(tcn_filters=(64, 64), lfe_expand=2, video_frames=6, audio_frames=300, feature_dropout=0.1,
                         fusion_dropout=0.1, bn_momentum=0.1, augment=False),
}


@register("model", "e2emal")
class E2EMAL(EmotionModel):
    """E2EMAL: ~0.2M-param LFE per modality, keras-tcn TCNs, sigmoid temporal + modality attention."""

    registry_name = "e2emal"
    config_class = E2EMALConfig
    configs = E2EMAL_CONFIGS
    config: E2EMALConfig
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("model.text_vectors", "the paper's GloVe 300-d word vectors are not shipped; offline, the text "
                  "encoder's token embeddings projected to 300-d stand in", "emolib",
                  "auto/token-embeddings (emolib) | glove with glove_path (paper)", "th2l/E2EMAL src/CMU-MOSEI"),
        Deviation("model.chunk_pad_quirk", "the released code's padding formula adds a whole zero chunk when a "
                  "length is already a multiple of the chunk (audio 400 frames, text 30 words)", "paper",
                  "False (intended average) | True (code)", "src/CMU-MOSEI/data_generator.py"),
        Deviation("model.audio_mode", "CMU-MOSEI code averages 400-frame chunks; the MERC2020 code (the paper's "
                  "challenge) centre-crops", "code", "chunk-mean (MOSEI code) | center-crop (MERC2020 code)",
                  "src/CMU-MOSEI vs src/MERC2020"),
        Deviation("loss.fused_only", "the adaptive (uncertainty) loss is disabled in the CMU-MOSEI config "
                  "(multi_outputs False): only the fused output is trained", "paper",
                  "False (paper: adaptive loss) | True (CMU-MOSEI code)", "src/CMU-MOSEI/main.py"),
        Deviation("loss.lam", "weight of mean(s_i): 0.5 in the CMU-MOSEI copy, 1.0 in the MERC2020 copy", "code",
                  "0.5 (CMU-MOSEI code) | 1.0 (MERC2020 code)", "src/CMU-MOSEI/utils.py, src/MERC2020/utils.py"),
        Deviation("loss.label_weights", "the code's class-weight table gives a positive label 1/p and a negative "
                  "1/(1-p), but summing it over both columns applies 1/p + 1/(1-p) to every label: plain BCE whose "
                  "sigmoids settle at the positive rates, below the fixed 0.5 threshold of its weighted accuracy",
                  "code", "False (code) | True (the weight the table meant)", "src/CMU-MOSEI/utils.py"),
        Deviation("loss.positive_rates", "the code hard-codes CMU-MOSEI's positive rates in its loss", "code",
                  "None (code's constants) | train (the training split's rates)", "src/CMU-MOSEI/utils.py"),
        Deviation("train.adam_eps", "Keras's Adam epsilon is 1e-7 (added before the bias correction, so larger "
                  "early on); PyTorch's 1e-8", "code", "1e-7 (E2EMAL recipe, Keras) | 1e-8 (PyTorch default)",
                  "src/CMU-MOSEI/main.py"),
        Deviation("prepare.min_face_conf", "E2EMAL keeps the largest face with p >= 0.65; an emolib cache keeps the "
                  "largest face of any confidence and E2EMAL drops it below 0.65 (identical while MTCNN's last stage "
                  "discards p <= 0.7)", "emolib", "0 (emolib) | 0.65 (E2EMAL_PREPARE)",
                  "src/MERC2020/face_extractor.py"),
    )

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {**super().registry_meta(), "modalities": "audio,visual,text",
                "paper": "Huynh et al., IEEE MultiMedia 2021 (E2EMAL)"}

    def __init__(self, num_outputs: int, config: E2EMALConfig | str | dict | None = None, *,
                 word_vectors: WordVectors | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        c = self.config
        if c.text_vectors == "glove" and not c.glove_path and word_vectors is None:
            raise ValueError("text_vectors='glove' needs glove_path (a GloVe text file 'word v1 ... v300')")
        if word_vectors is None:
            use_glove = c.text_vectors == "glove" or (c.text_vectors == "auto" and bool(c.glove_path))
            word_vectors = build_word_vectors(c.glove_path if use_glove else None, c.text_model, c.text_dim,
                                              c.text_projection_seed)
        self.word_vectors = word_vectors
        self.text_vectors_description = word_vectors.description
        filters = [int(f) for f in c.tcn_filters]
        tcn = {"filters": filters, "kernel_size": c.tcn_kernel_size, "dilations": c.tcn_dilations,
               "dropout_rate": c.tcn_dropout}

        stages = tuple(st._replace(expand=c.lfe_expand) if st.expand != 1 else st for st in AFCNET_STAGES)
        self.visual_lfe = AFCNet(3, pooling="max", rescale=True, stages=stages, bn_momentum=c.bn_momentum)
        self.audio_lfe = AFCNet(1, pooling=None, rescale=False, stages=stages, bn_momentum=c.bn_momentum)
        self.spectrogram = E2EMALSpectrogram(sample_rate=c.sample_rate, n_mels=c.n_mels, frames=c.audio_frames,
                                             mode=c.audio_mode, chunk_pad_quirk=c.chunk_pad_quirk)
        audio_steps, audio_bins = self.audio_lfe.output_hw(c.audio_frames, c.n_mels)
        self.visual_tcn = StackedTCN(self.visual_lfe.out_channels, **tcn)
        self.audio_tcn = StackedTCN(audio_bins * self.audio_lfe.out_channels, **tcn)
        self.text_tcn = StackedTCN(word_vectors.dim, **tcn)
        width = filters[-1]
        self.visual_att, self.audio_att = SigmoidAttention(c.video_frames), SigmoidAttention(audio_steps)
        self.text_att = SigmoidAttention(c.text_words)
        self.feature_dropout = GaussianDropout(c.feature_dropout)
        self.visual_head, self.audio_head, self.text_head = (_glorot(nn.Linear(width, num_outputs))
                                                             for _ in range(3))
        self.audio_proj, self.visual_proj, self.text_proj = (_glorot(nn.Linear(width, c.fusion_dim))
                                                             for _ in range(3))
        self.modality_att = SigmoidAttention(len(MODALITIES))
        self._memo: InputMemo | None = None
        self.fusion_dropout = nn.Dropout(c.fusion_dropout)
        self.fused_head = _glorot(nn.Linear(c.fusion_dim, num_outputs))

    # -- inputs ----------------------------------------------------------------------------------------

    def face_clips(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, video_frames, 3, face_size, face_size) float faces, 0..255, augmented while training."""
        return self._augment_faces(self._select_faces(batch))

    def audio_input(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, audio_frames, n_mels) dB mel spectrogram, SpecAugment-ed while training."""
        return self._augment_spec(self._spectrogram(batch))

    def text_input(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, text_words, dim) chunk-averaged word vectors."""
        return text_sequences(require(batch, "text", "e2emal"), self.word_vectors, words=self.config.text_words,
                              quirk=self.config.chunk_pad_quirk, device=self.device)

    def _select_faces(self, batch: Mapping[str, Any]) -> Tensor:
        c = self.config
        faces = require(batch, "faces", "e2emal").to(self.device)
        clips, _ = select_face_clips(
            faces, require(batch, "face_lengths", "e2emal"), require(batch, "face_conf", "e2emal"),
            require(batch, "face_boxes", "e2emal"), frames=c.video_frames, min_conf=c.min_face_conf,
            margin=c.face_margin, size=c.face_size, restore_aspect=c.restore_aspect, crop_size=c.face_crop_size)
        return clips

    def _augment_faces(self, clips: Tensor) -> Tensor:
        c = self.config
        if self.training and c.augment:
            flat = keras_face_augment(clips.flatten(0, 1), contrast=c.contrast, translation=c.translation,
                                      rotation=c.rotation)
            clips = flat.view_as(clips)
        return clips

    def _spectrogram(self, batch: Mapping[str, Any]) -> Tensor:
        audio = require(batch, "audio", "e2emal").to(self.device)
        return self.spectrogram(audio, require(batch, "audio_lengths", "e2emal").to(self.device))

    def _augment_spec(self, spec: Tensor) -> Tensor:
        c = self.config
        if self.training and c.augment:
            spec = spec_augment(spec, p=c.spec_mask_p, freq_param=c.freq_mask, time_param=c.time_mask)
        return spec

    def inputs(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(face clips, spectrogram, word vectors) as :meth:`face_clips`, :meth:`audio_input` and
        :meth:`text_input` give them; inside :meth:`input_memo` the deterministic part comes from the memo."""
        def compute() -> tuple[Tensor, Tensor, Tensor]:
            return self._select_faces(batch), self._spectrogram(batch), self.text_input(batch)

        memo = self._memo
        clips, spec, text = memo.get(batch["uid"], compute) if memo is not None and "uid" in batch else compute()
        return self._augment_faces(clips), self._augment_spec(spec), text

    @contextmanager
    def input_memo(self) -> Iterator[InputMemo | None]:
        """Keep each utterance's inputs (before augmentation) for the duration: ``emolib.train.fit`` trains
        inside it. Not for evaluation under corrupted inputs, which reuse the clean utterance ids."""
        if self.config.input_memo_mb <= 0:
            yield None
            return
        self._memo = InputMemo(self.config.input_memo_mb << 20)
        try:
            yield self._memo
        finally:
            self._memo = None

    def modality_encoders(self) -> dict[str, str]:
        return {"visual": "visual_lfe", "audio": "audio_lfe"}

    # -- forward ---------------------------------------------------------------------------------------

    def run(self, batch: Mapping[str, Any]) -> E2EMALState:
        """The forward pass, with the attention weights (see :class:`E2EMALState`)."""
        clips, spec, text = self.inputs(batch)
        b, t = clips.shape[:2]
        visual = self.visual_lfe(clips.flatten(0, 1)).view(b, t, -1)
        feat_map = self.audio_lfe(spec.unsqueeze(1))  # (B, 32, steps, bins)
        audio = feat_map.permute(0, 2, 3, 1).flatten(2)  # Keras' reshape of (steps, bins, 32) to steps x 160
        feats, temporal = {}, {}
        for name, seq, tcn, att in (("audio", audio, self.audio_tcn, self.audio_att),
                                    ("visual", visual, self.visual_tcn, self.visual_att),
                                    ("text", text, self.text_tcn, self.text_att)):
            pooled, weights = att(tcn(seq).transpose(1, 2))
            feats[name], temporal[name] = self.feature_dropout(pooled), weights.detach()
        stacked = torch.stack([F.relu(self.audio_proj(feats["audio"])), F.relu(self.visual_proj(feats["visual"])),
                               F.relu(self.text_proj(feats["text"]))], dim=2)  # (B, fusion_dim, 3)
        fused, modality = self.modality_att(stacked)
        outputs = {"logits": self.fused_head(self.fusion_dropout(fused)), "audio": self.audio_head(feats["audio"]),
                   "visual": self.visual_head(feats["visual"]), "text": self.text_head(feats["text"])}
        if self.training and self.config.l2 > 0:
            outputs["l2_penalty"] = self.config.l2 * sum(w.pow(2).sum() for w in self.l2_weights())
        return E2EMALState(outputs, temporal, modality.detach())

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self.run(batch).outputs

    def l2_weights(self) -> list[Tensor]:
        """The Dense kernels E2EMAL regularises with Keras L2: the attention layers and the fusion projections."""
        atts = (self.audio_att, self.visual_att, self.text_att, self.modality_att)
        return [m.weight for a in atts for m in (a.att0, a.att1)] + [
            p.weight for p in (self.audio_proj, self.visual_proj, self.text_proj)]
