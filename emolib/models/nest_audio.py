"""FV2ES's audio encoder: a NesT (Nested Hierarchical Transformer) over each mel piece (FV2ES, Sec. III-B).

Each 1x128x32 power-mel piece (FE2E's ``MelPieces``) is reshaped row-major to 4x32x32: channel k holds mel bins
32k..32k+31, each over the piece's 32 frames. So the token at grid position (r, c) sees mel bins r, 32+r, 64+r
and 96+r at frame c. ``NestEncoder`` then runs NesT-B as FV2ES configures it:

* patch embedding Conv3x3(4 -> 128, stride 1, pad 1), no norm (FV2ES's change to the usual patch conv);
* 3 levels with widths (128, 256, 512), heads (4, 8, 16), depths (2, 2, 20), MLP ratio 4, GELU, qkv bias,
  LayerNorm eps 1e-6, a learned position embedding per level (1, blocks, 64, dim), trunc-normal std 0.02;
* levels 2 and 3 start with ConvPool (Conv3x3 -> LayerNorm over channels -> MaxPool3x3 stride 2 pad 1);
  every level splits its map into 8x8 blocks and attends only within a block: 32x32 -> 16x16 -> 8x8;
* stochastic depth with rates linearly spaced from 0 to 0.5 over all 24 layers;
* a final LayerNorm over channels; no pooling and no classifier (FV2ES builds timm's 512 -> 1000 head but never
  calls it, so it is left out here: it would hold 0.5 M parameters that get no gradient).

The levels, ConvPool, block (un)folding and the local-attention transformer layers are timm's
(``timm.models.nest.NestLevel`` and its parts); this module only assembles them the way FV2ES does.

``NestAudioBranch`` is the whole FV2ES audio branch: MelPieces -> NesT -> flatten (512*8*8 = 32768) ->
Linear(32768 -> 1024) -> ReLU -> Linear(1024 -> d) -> CLS transformer over the pieces of each utterance.

``nest_attention`` recomputes the per-block attention weights of every layer from a forward pass, and
``spectrogram_attention`` maps them back onto the mel spectrogram of each utterance (plotted by
``emolib.recipes.fv2es``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.models.nest import Attention as TimmNestAttention
from timm.models.nest import NestLevel
from torch import Tensor, nn
from torch.nn import functional as F

from emolib.models.blocks import MelPieces, SequenceBranch
from emolib.models.config import NEST_PAPER, SequenceConfig

PIECE_MELS, PIECE_FRAMES = 128, 32


def pieces_to_nest_input(pieces: Tensor, channels: int = 4) -> Tensor:
    """(N, 1, 128, 32) mel pieces -> (N, channels, S, S) by a row-major reshape (FV2ES: 4 x 32 x 32)."""
    if pieces.dim() != 4 or pieces.shape[1] != 1:
        raise ValueError(f"expected mel pieces of shape (N, 1, n_mels, frames), got {tuple(pieces.shape)}")
    n, _, mels, frames = pieces.shape
    side = math.isqrt(mels * frames // channels)
    if channels * side * side != mels * frames:
        raise ValueError(f"a {mels}x{frames} piece does not reshape into {channels} square maps")
    return pieces.reshape(n, channels, side, side)


def drop_path_schedule(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic-depth rates linearly spaced 0 .. ``rate`` over all layers, split per level."""
    total = sum(depths)
    rates = torch.linspace(0.0, float(rate), total).tolist() if total > 1 else [0.0] * total
    out, start = [], 0
    for depth in depths:
        out.append(rates[start:start + depth])
        start += depth
    return out


class BlockAttention(TimmNestAttention):
    """timm's NesT block-local attention with the image blocks folded into the batch dimension.

    timm calls ``scaled_dot_product_attention`` on 5-D (B, heads, T, N, d) tensors, for which PyTorch has no fused
    kernel: on the CPU and on CUDA it falls back to the unfused math path (explicit N x N weights plus -inf checks).
    Folding the T blocks into the batch gives the 4-D (B*T, heads, N, d) input the fused kernels take; the
    attention is the same (each block attends only within itself either way) and the output keeps timm's
    head-minor channel order, so the weights, the state-dict keys and the results are timm's up to float rounding
    (``tests/test_fv2es.py`` compares the two). The paper NesT over 40 mel pieces at one CPU thread took 6.5 s per
    forward pass with timm's attention and 5.8 s with this one.
    """

    @classmethod
    def adopt(cls, attn: TimmNestAttention) -> BlockAttention:
        # Re-class the module built by timm instead of building a new one: building would draw fresh initial
        # weights from the global RNG and so change every later module's initialisation for a given seed.
        if type(attn) is not TimmNestAttention:
            raise TypeError(f"expected timm's NesT Attention, got {type(attn).__name__}")
        attn.__class__ = cls
        return attn  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        if not self.fused_attn:  # timm's switch for the unfused path (TIMM_FUSED_ATTN=0)
            return super().forward(x)
        b, t, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b * t, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        # (B*T, heads, N, d) -> (B, T, N, d, heads): timm's channel order, the head index fastest
        out = out.permute(0, 2, 3, 1).reshape(b, t, n, c)
        return self.proj_drop(self.proj(out))


class NestEncoder(nn.Module):
    """NesT feature extractor: (N, in_chans, S, S) -> (N, embed_dims[-1], S / 2^(L-1), S / 2^(L-1))."""

    def __init__(
        self,
        in_chans: int = 4,
        img_size: int = 32,
        embed_dims: Sequence[int] = (128, 256, 512),
        num_heads: Sequence[int] = (4, 8, 16),
        depths: Sequence[int] = (2, 2, 20),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.5,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        embed_dims, num_heads, depths = tuple(embed_dims), tuple(num_heads), tuple(depths)
        levels = len(embed_dims)
        if not (levels >= 1 and len(num_heads) == levels and len(depths) == levels):
            raise ValueError(f"embed_dims {embed_dims}, num_heads {num_heads} and depths {depths} must have the "
                             "same length >= 1")
        if any(d % h for d, h in zip(embed_dims, num_heads)):
            raise ValueError(f"every width must be divisible by its head count: {embed_dims} / {num_heads}")
        if min(depths) < 1:
            raise ValueError(f"every level needs at least one layer, got depths {depths}")
        num_blocks = [4 ** (levels - 1 - i) for i in range(levels)]
        grid = math.isqrt(num_blocks[0])
        if img_size % grid:
            raise ValueError(f"img_size {img_size} does not split into {grid}x{grid} blocks ({levels} levels)")
        self.block_size = img_size // grid
        self.img_size, self.in_chans = img_size, in_chans
        self.embed_dims, self.num_heads, self.depths = embed_dims, num_heads, depths
        norm = partial(LayerNorm, eps=1e-6)
        self.patch_embed = nn.Conv2d(in_chans, embed_dims[0], kernel_size=3, stride=1, padding=1)
        rates = drop_path_schedule(depths, drop_path_rate)
        self.levels = nn.Sequential(*[
            NestLevel(num_blocks[i], self.block_size, self.block_size ** 2, num_heads[i], depths[i], embed_dims[i],
                      embed_dims[i - 1] if i else None, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i], norm_layer=norm,
                      act_layer=nn.GELU)
            for i in range(levels)
        ])
        self.norm = norm(embed_dims[-1])
        for level in self.levels:
            for layer in level.transformer_encoder:
                BlockAttention.adopt(layer.attn)
        self._init_weights()

    def _init_weights(self) -> None:
        # NesT's initialisation (as timm's): trunc-normal(0.02) weights, zero biases, trunc-normal pos-embeds.
        for level in self.levels:
            trunc_normal_(level.pos_embed, std=0.02, a=-2, b=2)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def output_shape(self) -> tuple[int, int, int]:
        side = self.img_size // 2 ** (len(self.embed_dims) - 1)
        return self.embed_dims[-1], side, side

    @property
    def flat_features(self) -> int:
        c, h, w = self.output_shape()
        return c * h * w

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"NesT expects (N, {self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        x = self.levels(self.patch_embed(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NestPieces(MelPieces):
    """FE2E's mel pieces reshaped for NesT: (sum_i P_i, 4, 32, 32) and pieces per utterance (B,)."""

    def __init__(self, sample_rate: int = 16000) -> None:
        super().__init__(sample_rate=sample_rate)
        if (self.n_mels, self.piece_frames) != (PIECE_MELS, PIECE_FRAMES):
            raise ValueError("the NesT audio branch is built for 128 x 32 mel pieces")

    def mel_pieces(self, audio: Tensor, audio_lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """The (sum_i P_i, 1, 128, 32) pieces before the reshape (for plots)."""
        return super().forward(audio, audio_lengths)

    def forward(self, audio: Tensor, audio_lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        pieces, piece_lengths = self.mel_pieces(audio, audio_lengths)
        return pieces_to_nest_input(pieces), piece_lengths


class NestAudioBranch(SequenceBranch):
    """FV2ES audio encoder: MelPieces -> 4x32x32 -> NesT -> Linear(32768 -> 1024 -> d) -> CLS transformer."""

    def __init__(
        self,
        config: SequenceConfig,
        nest_dims: Sequence[int] = NEST_PAPER["embed_dims"],
        nest_heads: Sequence[int] = NEST_PAPER["num_heads"],
        nest_depths: Sequence[int] = NEST_PAPER["depths"],
        nest_drop_path: float = NEST_PAPER["drop_path_rate"],
        sample_rate: int = 16000,
    ) -> None:
        prep = NestPieces(sample_rate=sample_rate)
        nest = NestEncoder(4, 32, nest_dims, nest_heads, nest_depths, drop_path_rate=nest_drop_path)
        super().__init__(prep, nest, nest.flat_features, config.flatten_hidden, config)


# ------------------------------------------------------------------------------------------- attention maps


class LayerAttention(NamedTuple):
    """Attention weights of one NesT layer: (N, heads, blocks, 64, 64), rows = queries, within each block."""

    level: int
    layer: int
    weights: Tensor


def _attention_weights(attn: nn.Module, x: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_h)) of timm's block-local Attention for its input x (B, T, N, C)."""
    b, t, n, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, t, n, 3, heads, c // heads).permute(3, 0, 4, 1, 2, 5)
    q, k = qkv[0], qkv[1]
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def nest_attention(nest: NestEncoder, x: Tensor) -> list[LayerAttention]:
    """Attention weights of every layer of ``nest`` for input ``x`` (N, C, S, S), from one eval-mode pass.

    timm's layers use the fused attention kernel, which does not return weights; a forward hook on each
    attention module recomputes them from the same (normalised) input, so the maps are exactly those used.
    """
    records: list[LayerAttention] = []
    handles = []
    for li, level in enumerate(nest.levels):
        for ti, layer in enumerate(level.transformer_encoder):
            def hook(module: nn.Module, args: tuple, _out: Tensor, li: int = li, ti: int = ti) -> None:
                records.append(LayerAttention(li, ti, _attention_weights(module, args[0])))
            handles.append(layer.attn.register_forward_hook(hook))
    was_training = nest.training
    nest.eval()
    try:
        nest(x)
    finally:
        nest.train(was_training)
        for h in handles:
            h.remove()
    return records


def _received_attention_grid(att: LayerAttention, grid_side: int, block_size: int) -> Tensor:
    """Mean attention each token receives (over heads and queries) as a (N, side, side) map."""
    received = att.weights.mean(dim=(1, 3))  # (N, blocks, 64): average over heads and query positions
    n, blocks, _ = received.shape
    per_side = grid_side // block_size
    grid = received.reshape(n, per_side, per_side, block_size, block_size)
    return grid.permute(0, 1, 3, 2, 4).reshape(n, grid_side, grid_side)


class SpectrogramAttention(NamedTuple):
    """Per utterance: the power mel spectrogram (128, 32*P) and the attention map on the same grid."""

    spectrogram: list[Tensor]
    attention: list[Tensor]
    level: int


@torch.no_grad()
def spectrogram_attention(branch: NestAudioBranch, audio: Tensor, audio_lengths: Tensor | Sequence[int],
                          level: int = 0) -> SpectrogramAttention:
    """NesT attention of ``level`` mapped back onto each utterance's mel spectrogram.

    For every piece, the attention a token receives (averaged over heads, queries and the layers of the level)
    is placed on the 4 mel bins and the frame that token covers (coarser levels are repeated over the area of
    the token); pieces are concatenated along time per utterance. Within a block the received attention sums
    to one, so the map shows where in each 8x8 block the encoder looks.
    """
    device = next(branch.parameters()).device
    audio = audio.to(device)
    nest = branch.backbone
    pieces, lengths = branch.prep.mel_pieces(audio, audio_lengths)
    x = pieces_to_nest_input(pieces)
    maps = [a for a in nest_attention(nest, x) if a.level == level]
    if not maps:
        raise ValueError(f"the NesT has {len(nest.levels)} levels; level {level} does not exist")
    side = nest.img_size // 2 ** level
    grid = torch.stack([_received_attention_grid(a, side, nest.block_size) for a in maps]).mean(0)
    scale = nest.img_size // side
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # (N, 32, 32)
    channels = x.shape[1]
    # Token (r, c) covers mel bins {32k + r} at frame c: repeat the 32-row map for each of the 4 mel bands.
    per_piece = grid.unsqueeze(1).expand(-1, channels, -1, -1).reshape(grid.shape[0], PIECE_MELS, PIECE_FRAMES)
    specs, atts = [], []
    for spec_p, att_p in zip(pieces.squeeze(1).split(lengths.tolist()), per_piece.split(lengths.tolist())):
        specs.append(torch.cat(list(spec_p), dim=-1).cpu())
        atts.append(torch.cat(list(att_p), dim=-1).cpu())
    return SpectrogramAttention(specs, atts, level)
