"""Shared model building blocks, written to match FE2E (Dai et al. 2021; ``wenliangdai/Multimodal-End2end-Sparse``).

The blocks are reused by the unimodal baselines, FE2E and FV2ES, so each one follows the released FE2E code:

* ``VggBlock`` / ``VggCNN``: the plain VGG stack that turns a 3x48x48 face into 512x3x3 and a 1x128x32 mel
  piece into 512x8x2. The channel widths are a parameter so that a tiny configuration can shrink them.
* ``FlattenMLP``: Linear -> ReLU -> Linear from the flattened CNN map to the transformer width.
* ``ClsTransformerEncoder``: FE2E's "WrappedTransformerEncoder": per-utterance sequences from a flat
  per-item tensor, a learned CLS vector in front, post-LN ReLU layers, key-padding mask, no positional encoding.
* ``FaceNormalize``: uint8 face crops -> 48x48 float faces normalised with Dai's RGB mean/std.
* ``MelPieces``: raw power mel spectrogram per utterance, cut into 32-frame pieces.
* ``WeightedLateFusion``: one learned scalar per modality, shared by all classes.
* ``VisualBranch`` / ``AudioBranch``: the FE2E visual and audio encoders up to the CLS vector.

Every variable-length batch travels as a flat tensor plus a lengths vector (B,), in the order of the batch
contract: all items of utterance 0, then utterance 1, and so on.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.models.config import PAPER_VGG_WIDTHS, ModelConfig, SequenceConfig, TransformerConfig, check_text_lr_factor

DAI_FACE_MEAN: tuple[float, float, float] = (159.0, 111.0, 102.0)
DAI_FACE_STD: tuple[float, float, float] = (37.0, 33.0, 32.0)
FACE_SIZE = 48


def as_lengths(lengths: Tensor | Sequence[int], device: torch.device) -> Tensor:
    """Lengths as a 1-D long tensor on ``device``; negative lengths are an error."""
    out = torch.as_tensor(lengths, dtype=torch.long, device=device).reshape(-1)
    if out.numel() and int(out.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {out.tolist()}")
    return out


def pad_by_lengths(flat: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Split a flat (sum_i L_i, ...) tensor into zero-padded (B, L_max, ...) plus a validity mask (B, L_max).

    Boolean-mask assignment fills the valid slots in row-major order, which is exactly the concatenation order of
    the batch contract, so no Python loop over utterances is needed and gradients flow through the assignment.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    total = int(lengths.sum()) if lengths.numel() else 0
    if total != flat.shape[0]:
        raise ValueError(
            f"lengths sum to {total} but the flat tensor has {flat.shape[0]} items "
            f"(lengths={lengths.tolist()})"
        )
    max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    valid = positions.unsqueeze(0) < lengths.unsqueeze(1)
    padded = flat.new_zeros((lengths.numel(), max_len, *flat.shape[1:]))
    padded[valid] = flat
    return padded, valid


def waveform_batch(audio: Tensor, audio_lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Checked float waveforms (B, T_max) and their lengths (B,) on the same device (the batch contract)."""
    if audio.dim() != 2:
        raise ValueError(f"expected audio of shape (B, T_max), got {tuple(audio.shape)}")
    lengths = as_lengths(audio_lengths, audio.device)
    if lengths.numel() != audio.shape[0]:
        raise ValueError(f"{lengths.numel()} audio lengths for a batch of {audio.shape[0]} waveforms")
    if lengths.numel() and int(lengths.max()) > audio.shape[1]:
        raise ValueError(f"audio length {int(lengths.max())} exceeds the padded width {audio.shape[1]}")
    return audio.float(), lengths


class VggBlock(nn.Sequential):
    """Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> ReLU, no residual (FE2E ``vgg_block.py``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class VggCNN(nn.Sequential):
    """FE2E's visual/audio CNN: a 5x5 stem, five VGG blocks and four 2x2 max-pools (spatial size / 16).

    ``widths`` = (stem, block1, block2, block3, block4, block5); the paper uses (64, 64, 64, 128, 256, 512).
    ``block`` builds each block from (in, out) channels: FV2ES keeps this layout with RepVGG blocks.
    """

    block: type[nn.Module] = VggBlock

    def __init__(self, in_channels: int, widths: Sequence[int] = PAPER_VGG_WIDTHS) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) != 6 or min(widths) < 1:
            raise ValueError(f"{type(self).__name__} needs 6 positive widths (stem + 5 blocks), got {widths}")
        w0, w1, w2, w3, w4, w5 = widths
        block = self.block
        super().__init__(
            nn.Conv2d(in_channels, w0, kernel_size=5, padding=2, bias=True),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            block(w0, w1),
            block(w1, w2),
            block(w2, w3),
            nn.MaxPool2d(2),
            block(w3, w4),
            nn.MaxPool2d(2),
            block(w4, w5),
            nn.MaxPool2d(2),
        )
        self.in_channels = in_channels
        self.widths = widths

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H, W) of the output for an input of ``height`` x ``width`` (each max-pool floors)."""
        for _ in range(4):
            height, width = height // 2, width // 2
        return self.widths[-1], height, width

    def flat_features(self, height: int, width: int) -> int:
        c, h, w = self.output_shape(height, width)
        return c * h * w


class FlattenMLP(nn.Sequential):
    """Linear(in -> hidden) -> ReLU -> Linear(hidden -> out): FE2E's ``v_flatten`` / ``a_flatten``."""

    def __init__(self, in_features: int, hidden: int = 1024, out: int = 64) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SequenceEncoding(NamedTuple):
    """Output of ``ClsTransformerEncoder(..., return_sequence=True)``.

    ``sequence`` is (B, 1 + L_max, d) with the CLS output at index 0; ``padding_mask`` is (B, 1 + L_max) with
    True at padded positions (never at the CLS position).
    """

    cls: Tensor
    sequence: Tensor
    padding_mask: Tensor


class ClsTransformerEncoder(nn.Module):
    """Per-utterance transformer over flat item vectors, read out at a learned CLS position.

    Faithful to FE2E: ``nn.TransformerEncoderLayer`` with PyTorch defaults (post-LN, ReLU), a learned
    ``nn.Embedding(1, d)`` CLS vector prepended to every sequence, a key-padding mask, and deliberately no
    positional encoding (it is commented out upstream). ``batch_first`` layout is used, which is numerically the
    same computation as the sequence-first original. The nested-tensor fast path is disabled so that training
    and evaluation run the same kernels and padded positions of the returned sequence are always computed.
    """

    def __init__(
        self, d: int, nlayers: int, nheads: int, dim_feedforward: int = 2048, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if d % nheads:
            raise ValueError(f"transformer width d={d} is not divisible by nheads={nheads}")
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=nlayers, enable_nested_tensor=False)
        self.cls_emb = nn.Embedding(1, d)
        self.d = d

    def forward(
        self, flat: Tensor, lengths: Tensor | Sequence[int], return_sequence: bool = False
    ) -> Tensor | SequenceEncoding:
        """``flat`` (sum_i S_i, d), ``lengths`` (B,) -> CLS output (B, d), or a ``SequenceEncoding``."""
        if flat.dim() != 2 or flat.shape[1] != self.d:
            raise ValueError(f"expected flat inputs of shape (N, {self.d}), got {tuple(flat.shape)}")
        lengths = as_lengths(lengths, flat.device)
        padded, valid = pad_by_lengths(flat, lengths)
        cls = self.cls_emb.weight.unsqueeze(0).expand(padded.shape[0], 1, self.d)
        tokens = torch.cat([cls, padded], dim=1)
        cls_valid = valid.new_ones((valid.shape[0], 1))  # (B, 1) also when no utterance has an item
        padding_mask = ~torch.cat([cls_valid, valid], dim=1)
        out = self.encoder(tokens, src_key_padding_mask=padding_mask)
        if return_sequence:
            return SequenceEncoding(out[:, 0], out, padding_mask)
        return out[:, 0]


class FaceNormalize(nn.Module):
    """uint8 RGB face crops (N, 3, H, W) -> float (N, 3, 48, 48) normalised with Dai's mean/std.

    FE2E's MTCNN produces 48x48 crops directly; our cache stores larger crops of the same detection, so they are
    resized here. ``resize_mode="area"`` (the default) averages source pixels over each target pixel, i.e. an
    anti-aliased box-filter downsample; it is what facenet-pytorch's ``crop_resize`` does for the numpy frames FE2E
    feeds it (cv2.INTER_AREA). ``"bilinear"`` uses ``F.interpolate(..., antialias=True)``, PIL-style.
    Crops that are already 48x48 are passed through unresized.
    """

    def __init__(
        self,
        mean: Sequence[float] = DAI_FACE_MEAN,
        std: Sequence[float] = DAI_FACE_STD,
        size: int = FACE_SIZE,
        resize_mode: str = "area",
    ) -> None:
        super().__init__()
        if resize_mode not in ("area", "bilinear"):
            raise ValueError(f"resize_mode must be 'area' or 'bilinear', got {resize_mode!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std need 3 channels and std > 0, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.size = size
        self.resize_mode = resize_mode

    keeps_lengths = True  # one normalised face per input face (see SequenceBranch)

    def resize(self, faces: Tensor) -> Tensor:
        """float (N, 3, H, W) on the 0..255 scale -> (N, 3, size, size)."""
        if faces.shape[-2:] == (self.size, self.size):
            return faces
        if faces.shape[0] == 0:
            return faces.new_zeros((0, 3, self.size, self.size))
        if self.resize_mode == "area":
            return F.interpolate(faces, size=(self.size, self.size), mode="area")
        return F.interpolate(
            faces, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )

    def forward(self, faces: Tensor) -> Tensor:
        if faces.dim() != 4 or faces.shape[1] != 3:
            raise ValueError(f"expected faces of shape (N, 3, H, W), got {tuple(faces.shape)}")
        if faces.dtype != torch.uint8:
            raise TypeError(f"expected uint8 faces on the 0..255 scale, got {faces.dtype}")
        resized = self.resize(faces.float())
        return (resized - self.mean) / self.std


class MelPieces(nn.Module):
    """Waveforms (B, T_max) + lengths (B,) -> mel pieces (sum_i P_i, 1, n_mels, piece_frames) + P (B,).

    Matches FE2E: ``torchaudio.transforms.MelSpectrogram`` power spectrogram (no log) of each *unpadded*
    utterance, with the default centred STFT (reflect padding of n_fft//2 at both ends), cut along time into
    ``piece_frames``-frame pieces with the last piece zero-padded.

    It runs as one batched STFT: each utterance is reflect-padded at its own true end (a gather), then an
    uncentred spectrogram is taken of the batch. Frame t of utterance i then reads exactly the samples the
    per-utterance centred STFT reads, so the result equals the per-utterance computation; frames past an
    utterance's own frame count (1 + L_i // hop) are zeroed. Utterances shorter than n_fft//2 + 1 samples, which
    torch's reflect padding rejects, are padded by reflection and then edge replication; an empty utterance
    gives one all-zero piece.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 128,
        win_length: int = 400,
        n_fft: int = 400,
        hop_length: int = 200,
        piece_frames: int = 32,
    ) -> None:
        super().__init__()
        import torchaudio  # deferred: importing torchaudio costs a second and only audio models need it

        with warnings.catch_warnings():
            # FE2E's 128 mel bands over a 400-point FFT leave some filters empty; that is the paper's setting.
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=n_fft,
                win_length=win_length,
                hop_length=hop_length,
                n_mels=n_mels,
                center=False,
                power=2.0,
            )
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.piece_frames = piece_frames

    def frame_counts(self, audio_lengths: Tensor) -> Tensor:
        """Frames of the centred STFT of each unpadded utterance."""
        return 1 + torch.div(audio_lengths, self.hop_length, rounding_mode="floor")

    def piece_counts(self, audio_lengths: Tensor) -> Tensor:
        frames = self.frame_counts(audio_lengths)
        return torch.div(frames + self.piece_frames - 1, self.piece_frames, rounding_mode="floor")

    def _reflect_pad(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) -> (B, T + n_fft): each row reflect-padded by n_fft//2 around its own [0, L_i)."""
        half = self.n_fft // 2
        width = audio.shape[1] + 2 * half
        src = torch.arange(width, device=audio.device).unsqueeze(0) - half  # index into the unpadded row
        last = (lengths - 1).clamp(min=0).unsqueeze(1)
        src = src.abs()  # reflection at the start: -k -> k
        src = torch.where(src > last, 2 * last - src, src)  # reflection at the true end: L-1+k -> L-1-k
        src = src.clamp(min=0).minimum(last)  # too short to reflect: replicate the edge sample
        padded = audio.gather(1, src.expand(audio.shape[0], -1))
        # Positions further than n_fft//2 past the true end are never read by a valid frame; zero them anyway
        # so that no padding sample leaks, and an empty utterance stays silent.
        beyond = torch.arange(width, device=audio.device).unsqueeze(0) >= (lengths.unsqueeze(1) + 2 * half)
        return padded.masked_fill(beyond | (lengths.unsqueeze(1) == 0), 0.0)

    def forward(self, audio: Tensor, audio_lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        audio, lengths = waveform_batch(audio, audio_lengths)
        spec = self.mel(self._reflect_pad(audio, lengths))  # (B, n_mels, 1 + T_max // hop)
        frames = self.frame_counts(lengths)
        pieces = self.piece_counts(lengths)
        max_pieces = int(pieces.max()) if pieces.numel() else 0
        total_frames = max_pieces * self.piece_frames
        if spec.shape[-1] < total_frames:
            spec = F.pad(spec, (0, total_frames - spec.shape[-1]))
        spec = spec[..., :total_frames]
        frame_valid = torch.arange(total_frames, device=audio.device).unsqueeze(0) < frames.unsqueeze(1)
        spec = spec * frame_valid.unsqueeze(1)
        # (B, n_mels, P_max * k) -> (B, P_max, n_mels, k), then keep the real pieces in batch order.
        spec = spec.view(spec.shape[0], self.n_mels, max_pieces, self.piece_frames).permute(0, 2, 1, 3)
        piece_valid = torch.arange(max_pieces, device=audio.device).unsqueeze(0) < pieces.unsqueeze(1)
        return spec[piece_valid].unsqueeze(1), pieces


class WeightedLateFusion(nn.Module):
    """FE2E fusion: stacked logits (B, C, M) -> Linear(M -> 1, no bias) -> (B, C).

    Three (M) learned scalars shared by all classes, default PyTorch init, free to become negative.
    """

    def __init__(self, n_modalities: int) -> None:
        super().__init__()
        self.n_modalities = n_modalities
        self.weights = nn.Linear(n_modalities, 1, bias=False)

    def forward(self, logits: Tensor | Sequence[Tensor]) -> Tensor:
        stacked = logits if isinstance(logits, Tensor) else torch.stack(list(logits), dim=-1)
        if stacked.dim() != 3 or stacked.shape[-1] != self.n_modalities:
            raise ValueError(
                f"expected stacked logits (B, C, {self.n_modalities}), got {tuple(stacked.shape)}"
            )
        return self.weights(stacked).squeeze(-1)


def _rename_prefixes(state_dict: dict, prefix: str, renames: Mapping[str, str]) -> None:
    """Rename ``prefix + old`` keys of a state dict to ``prefix + new`` in place (checkpoint key maps)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in renames.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break


class SequenceBranch(nn.Module):
    """One sequence per utterance: ``prep`` -> ``backbone`` per item -> ``FlattenMLP`` -> ``ClsTransformerEncoder``.

    The pipeline every end-to-end branch of the package shares: FE2E's visual and audio branches (VGG CNN),
    FV2ES's (RepVGG CNN, NesT over mel pieces) and EmoMBT's (EfficientNet, VGGish). ``prep`` turns the batch
    input into items: a module with ``keeps_lengths = True`` maps items one to one (face crops), any other
    returns ``(items, lengths)`` (waveforms -> mel pieces). ``features`` is the number of backbone outputs per
    item after flattening.

    Checkpoints written before the branch was shared named the backbone ``cnn`` (VGG/RepVGG) or ``nest``; they
    load unchanged (a state-dict pre-hook renames the keys).
    """

    LEGACY_KEYS = {"cnn.": "backbone.", "nest.": "backbone."}

    def __init__(self, prep: nn.Module, backbone: nn.Module, features: int, flatten_hidden: int,
                 transformer: TransformerConfig) -> None:
        super().__init__()
        self.prep = prep
        self.backbone = backbone
        self.flatten = FlattenMLP(features, flatten_hidden, transformer.d)
        self.transformer = ClsTransformerEncoder(transformer.d, transformer.nlayers, transformer.nheads,
                                                 transformer.dim_feedforward, transformer.dropout)
        self.d = transformer.d
        self._register_load_state_dict_pre_hook(self._legacy_keys)

    @classmethod
    def _legacy_keys(cls, state_dict, prefix, *_args) -> None:
        _rename_prefixes(state_dict, prefix, cls.LEGACY_KEYS)

    def items(self, x: Tensor, lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor | Sequence[int]]:
        """The backbone's inputs (sum_i L_i, ...) and items per utterance (B,)."""
        if getattr(self.prep, "keeps_lengths", False):
            return self.prep(x), lengths
        return self.prep(x, lengths)

    def forward(
        self, x: Tensor, lengths: Tensor | Sequence[int], return_sequence: bool = False
    ) -> Tensor | SequenceEncoding:
        items, item_lengths = self.items(x, lengths)
        feats = self.backbone(items).flatten(1)
        return self.transformer(self.flatten(feats), item_lengths, return_sequence=return_sequence)


class VisualBranch(SequenceBranch):
    """FE2E visual encoder: faces -> 48x48 normalise -> VggCNN(3) -> FlattenMLP -> ClsTransformerEncoder."""

    cnn_class: type[VggCNN] = VggCNN

    def __init__(self, config: SequenceConfig, face_resize: str = "area") -> None:
        prep = FaceNormalize(resize_mode=face_resize)
        cnn = self.cnn_class(3, config.widths)
        super().__init__(prep, cnn, cnn.flat_features(FACE_SIZE, FACE_SIZE), config.flatten_hidden, config)

    def features(self, faces: Tensor) -> Tensor:
        """Per-frame CNN maps of uint8 faces (N, C, 3, 3 for 48-px faces)."""
        return self.backbone(self.prep(faces))


class AudioBranch(SequenceBranch):
    """FE2E audio encoder: MelPieces -> VggCNN(1) -> FlattenMLP -> ClsTransformerEncoder."""

    def __init__(self, config: SequenceConfig, sample_rate: int = 16000) -> None:
        prep = MelPieces(sample_rate=sample_rate)
        cnn = VggCNN(1, config.widths)
        super().__init__(prep, cnn, cnn.flat_features(prep.n_mels, prep.piece_frames), config.flatten_hidden, config)


class EmotionModel(nn.Module):
    """Base class of the registered models: ``model(batch) -> {"logits": (B, C), ...}``.

    A model is built from its configuration dataclass (``config_class``; ``configs`` holds the named ones, e.g.
    ``"paper"`` and ``"tiny"``): ``Model(num_outputs, config=None, **overrides)`` starts from ``config`` (default:
    the paper's values) and applies the overrides. ``model.config`` is what ``emolib.train`` stores in the
    checkpoint and the run record.

    ``lr_factors(text_lr_factor=None)`` maps submodule names (parameter-name prefixes) to learning-rate
    multipliers for the trainer's parameter groups (``emolib.train``); parameters not covered train at the base
    learning rate. Models with a text encoder use ``text_lr_factor`` (the trainer's, else their own config).
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    configs: ClassVar[dict[str, ModelConfig]] = {}
    registry_name: ClassVar[str] = ""
    # The preprocessing the paper's model was trained on: "dai" (Dai et al.'s frames and faces, for FE2E, FV2ES
    # and the baselines) or None; run_experiment warns when a cache was built another way.
    data_recipe: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = self.resolve_config(config, **overrides)

    @classmethod
    def resolve_config(cls, config: ModelConfig | str | Mapping[str, Any] | None = None,
                       **overrides: Any) -> ModelConfig:
        """The configuration instance for a named, dict or dataclass ``config`` (None: the paper defaults)."""
        name = cls.registry_name or cls.__name__
        if config is None:
            base = cls.default_config()
        elif isinstance(config, str):
            if config not in cls.configs:
                raise KeyError(f"model {name!r} has no config {config!r}; it has {sorted(cls.configs) or 'none'}")
            base = cls.configs[config]
        elif isinstance(config, Mapping):
            base = cls.default_config().replace(name, **config)
        elif isinstance(config, cls.config_class):
            base = config
        else:
            raise TypeError(f"model {name!r}: config must be a config name, a dict or a {cls.config_class.__name__}, "
                            f"got {type(config).__name__}")
        return base.replace(name, **overrides) if overrides else base

    @classmethod
    def default_config(cls) -> ModelConfig:
        """The paper's configuration (what ``config=None`` and a partial dict start from)."""
        return cls.configs.get("paper") or cls.config_class()

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {"configs": tuple(cls.configs)}

    @property
    def input_modalities(self) -> tuple[str, ...]:
        """The modalities the model reads ("text", "visual", "audio"): its ``modalities`` letters where the model
        has a subset (FE2E family, EmoMBT), else all three. ``run_experiment`` checks a cache against it."""
        names = {"t": "text", "v": "visual", "a": "audio"}
        return tuple(names[letter] for letter in getattr(self, "modalities", ("t", "v", "a")))

    def text_lr(self, text_lr_factor: float | None = None) -> float:
        """The multiplier of the text encoder's learning rate: 1 / (the trainer's factor, else the config's)."""
        factor = self.config.text_lr_factor if text_lr_factor is None else text_lr_factor
        return 1.0 / check_text_lr_factor(factor)

    def lr_factors(self, text_lr_factor: float | None = None) -> dict[str, float]:
        return {}

    def modality_encoders(self) -> dict[str, str]:
        """{modality: submodule name} of the encoders that read one modality's input and nothing else; in eval mode
        each is a function of its arguments, so evaluation may reuse an output for the same arguments
        (``emolib.evaluate.encoder_memo``). Empty: none declared."""
        return {}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def require(batch: dict, key: str, model_name: str) -> object:
    """``batch[key]`` or a KeyError that names the model and the batch-contract key it needs."""
    try:
        return batch[key]
    except KeyError:
        raise KeyError(
            f"model {model_name!r} needs batch[{key!r}] (batch contract); the batch has {sorted(batch)}"
        ) from None
