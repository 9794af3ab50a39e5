"""A PyTorch temporal convolutional network with the semantics of keras-tcn, as bundled by E2EMAL.

E2EMAL (Huynh et al. 2021; ``th2l/E2EMAL: src/CMU-MOSEI/tools/tcn.py``) stacks two keras-tcn ``TCN`` layers
of 256 filters (kernel 2, dilations 1/2/4/8, one stack, causal padding, LayerNorm, summed skip connections,
dropout 0, he_normal init, ``return_sequences=True``). keras-tcn's semantics, reproduced here:

* residual block (one per dilation and stack): two times [dilated Conv1D (bias) -> norm -> ReLU ->
  SpatialDropout1D]; the shortcut is a 1x1 Conv1D when the channel count changes, else the identity; the block
  returns ``activation(shortcut + branch)`` as the input of the next block **and** the raw ``branch`` as its
  skip output;
* the layer's output is the **sum of the skip outputs** of all blocks when ``use_skip_connections`` is on (the
  last block's residual output is then not part of it), else the last block's residual output;
* ``return_sequences=False`` keeps the last time step (causal) or the middle one (``padding="same"``);
* LayerNorm normalises the channels of each time step (Keras ``LayerNormalization``, epsilon 1e-3), so a causal
  network stays causal; BatchNorm (the other keras-tcn option) mixes time steps through batch statistics while
  training.

Tensors are channels-last ``(B, T, C)`` like Keras; convolutions run on ``(B, C, T)`` internally. Keras' masking
is not reproduced: keras-tcn's ``call`` takes no mask, so E2EMAL's ``Masking(0)`` in front of its text TCN has no
effect on the computation either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDINGS = ("causal", "same")
# Keras' truncated normal draws from N(0, 1) cut at +-2 and rescales by this constant to keep the variance.
_TRUNC_STD = 0.87962566103423978


def he_normal_(weight: Tensor, fan_in: int) -> Tensor:
    """Keras ``he_normal``: truncated normal (+-2 std) with variance 2 / fan_in."""
    std = math.sqrt(2.0 / fan_in) / _TRUNC_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class KerasConv1d(nn.Conv1d):
    """Conv1D with Keras ``causal`` or ``same`` padding (computed for any dilation), he_normal init, zero bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 padding: str = "causal") -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0, bias=True)
        total = dilation * (kernel_size - 1)
        # Keras "same" puts the odd extra sample on the right; "causal" puts everything on the left.
        self.pad = (total, 0) if padding == "causal" else (total // 2, total - total // 2)
        he_normal_(self.weight, in_channels * kernel_size)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class _ChannelNorm(nn.Module):
    """LayerNorm over the channels of each time step, or BatchNorm1d, on a (B, C, T) tensor."""

    def __init__(self, channels: int, kind: str, eps: float) -> None:
        super().__init__()
        self.kind = kind
        if kind == "layer":
            self.norm: nn.Module = nn.LayerNorm(channels, eps=eps)
        elif kind == "batch":
            self.norm = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)
        else:
            self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "layer":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


class TCNResidualBlock(nn.Module):
    """keras-tcn ``ResidualBlock``: returns ``(activation(shortcut + branch), branch)``."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int, dilation: int, padding: str = "causal",
                 dropout: float = 0.0, norm: str = "layer", norm_eps: float = 1e-3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(2):
            layers += [KerasConv1d(channels, filters, kernel_size, dilation, padding),
                       _ChannelNorm(filters, norm, norm_eps), nn.ReLU(), nn.Dropout1d(dropout)]
            channels = filters
        self.branch = nn.Sequential(*layers)
        self.shortcut: nn.Module = (KerasConv1d(in_channels, filters, 1, 1, padding) if in_channels != filters
                                    else nn.Identity())
        self.dilation = dilation

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        branch = self.branch(x)
        return torch.relu(self.shortcut(x) + branch), branch


class TCN(nn.Module):
    """One keras-tcn ``TCN`` layer: ``nb_stacks`` x ``dilations`` residual blocks, on (B, T, C) tensors.

    ``nb_filters`` is one width for every block or one per dilation (keras-tcn's list form). ``norm`` is
    ``"layer"`` (E2EMAL), ``"batch"`` or ``"none"``.
    """

    def __init__(self, in_features: int, nb_filters: int | Sequence[int] = 64, kernel_size: int = 2,
                 nb_stacks: int = 1, dilations: Sequence[int] = (1, 2, 4, 8, 16, 32), padding: str = "causal",
                 use_skip_connections: bool = True, dropout_rate: float = 0.0, return_sequences: bool = True,
                 norm: str = "layer", norm_eps: float = 1e-3) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        widths = [int(nb_filters)] * len(dilations) if isinstance(nb_filters, int) else [int(w) for w in nb_filters]
        if len(widths) != len(dilations):
            raise ValueError(f"nb_filters has {len(widths)} entries for {len(dilations)} dilations")
        if not dilations or min(dilations) < 1 or kernel_size < 1 or nb_stacks < 1 or min(widths) < 1:
            raise ValueError(f"TCN needs dilations, kernel_size, nb_stacks and filters >= 1; got dilations="
                             f"{dilations}, kernel_size={kernel_size}, nb_stacks={nb_stacks}, filters={widths}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if norm not in ("layer", "batch", "none"):
            raise ValueError(f"norm must be 'layer', 'batch' or 'none', got {norm!r}")
        if use_skip_connections and len(set(widths)) > 1:
            raise ValueError(f"summed skip connections need one width for every block, got {widths}")
        blocks = []
        channels = in_features
        for _ in range(nb_stacks):
            for width, dilation in zip(widths, dilations):
                blocks.append(TCNResidualBlock(channels, width, kernel_size, dilation, padding, dropout_rate, norm,
                                               norm_eps))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.in_features, self.out_features = in_features, channels
        self.kernel_size, self.dilations, self.nb_stacks = kernel_size, dilations, nb_stacks
        self.padding, self.use_skip_connections, self.return_sequences = padding, use_skip_connections, return_sequences

    @property
    def receptive_field(self) -> int:
        """Input steps that reach one causal output step: each block has two convs of reach (k-1)*d."""
        return 1 + 2 * (self.kernel_size - 1) * sum(self.dilations) * self.nb_stacks

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"TCN expects (B, T, {self.in_features}) inputs, got {tuple(x.shape)}")
        h = x.transpose(1, 2)
        skips = None
        for block in self.blocks:
            h, skip = block(h)
            skips = skip if skips is None else skips + skip
        out = (skips if self.use_skip_connections else h).transpose(1, 2)
        if self.return_sequences:
            return out
        return out[:, -1] if self.padding == "causal" else out[:, out.shape[1] // 2]


class StackedTCN(nn.Sequential):
    """E2EMAL's ``get_tcn_layers``: one ``TCN`` per entry of ``filters``, each returning sequences."""

    def __init__(self, in_features: int, filters: Sequence[int] = (256, 256), kernel_size: int = 2,
                 dilations: Sequence[int] = (1, 2, 4, 8), nb_stacks: int = 1, padding: str = "causal",
                 dropout_rate: float = 0.0, norm: str = "layer") -> None:
        if not filters:
            raise ValueError("StackedTCN needs at least one layer width")
        layers = []
        channels = in_features
        for width in filters:
            layers.append(TCN(channels, int(width), kernel_size, nb_stacks, dilations, padding,
                              use_skip_connections=True, dropout_rate=dropout_rate, return_sequences=True,
                              norm=norm))
            channels = int(width)
        super().__init__(*layers)
        self.out_features = channels

    @property
    def receptive_field(self) -> int:
        return 1 + sum(layer.receptive_field - 1 for layer in self)
