"""RepVGG blocks and FV2ES's visual CNN, with exact structural re-parameterisation (FV2ES, arXiv 2209.10170;
``MultimodalAffectiveComputing/FV2ES: V2EM/src/model/vgg_block.py``).

Training form of a block (``RepVGGBlock``): three parallel branches whose outputs are summed, then ReLU:

* ``dense``: Conv3x3 (no bias, pad 1) -> BN;
* ``conv1x1``: Conv1x1 (no bias, pad 0) -> BN;
* ``identity``: BN alone, only when in == out channels and stride 1.

``fuse()`` turns the block into its inference form, one Conv3x3 with bias followed by ReLU. In eval mode the
three branches are affine in the input, so they add up to a single convolution:

* each BN is folded into its conv: ``W' = W * gamma / sigma``, ``b' = beta - mu * gamma / sigma`` with
  ``sigma = sqrt(running_var + eps)``;
* the 1x1 kernel is zero-padded to 3x3 (its tap at the centre);
* the identity is the 3x3 kernel with a 1 at the centre of channel i -> i, folded with its BN likewise.

The kernels and biases are summed in float64 and cast back, so the fused block reproduces the eval-mode
multi-branch block to float32 rounding. The branches are deleted after fusion; a state dict of a fused block
(keys ``fused.weight`` / ``fused.bias``) can be loaded into an unfused block, which then fuses its structure
first, so checkpoints written after fusion load into a freshly built model.

``RepVGGCNN`` is FV2ES's visual CNN: FE2E's 5x5 stem and pooling layout with RepVGG blocks in place of FE2E's
two-conv VGG blocks, 3x48x48 -> 512x3x3 with the paper widths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from emolib.models.blocks import PAPER_VGG_WIDTHS, VggCNN


def _fold_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(kernel', bias') of ``bn(conv(x, kernel))`` with BN in eval mode, computed in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm without running statistics (track_running_stats=False)")
    mean = bn.running_mean.double()
    std = (bn.running_var.double() + bn.eps).sqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return kernel.double() * scale.reshape(-1, 1, 1, 1), beta - mean * scale


class RepVGGBlock(nn.Module):
    """One RepVGG block (3x3 + 1x1 + identity branches, summed, ReLU); ``fuse()`` makes it one 3x3 conv.

    ``freeze_when_fused``: the fused convolution is created with ``requires_grad=False``. FV2ES's released code
    fuses during training and never optimises the fused kernels; the flag reproduces that (see ``FV2ES``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or stride < 1:
            raise ValueError(f"RepVGGBlock needs positive sizes, got in={in_channels} out={out_channels} "
                             f"stride={stride}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.dense = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.conv1x1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.identity = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.fused: nn.Conv2d | None = None
        self.act = nn.ReLU(inplace=True)
        self.freeze_when_fused = False

    @property
    def is_fused(self) -> bool:
        return self.fused is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        out = self.dense(x) + self.conv1x1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The 3x3 kernel (out, in, 3, 3) and bias (out,) of the eval-mode block, in float64."""
        if self.fused is not None:
            return self.fused.weight.detach().double(), self.fused.bias.detach().double()
        k3, b3 = _fold_bn(self.dense[0].weight.detach(), self.dense[1])
        k1, b1 = _fold_bn(self.conv1x1[0].weight.detach(), self.conv1x1[1])
        kernel = k3 + nn.functional.pad(k1, (1, 1, 1, 1))
        bias = b3 + b1
        if self.identity is not None:
            eye = torch.zeros(self.in_channels, self.in_channels, 3, 3, dtype=torch.float64, device=k3.device)
            eye[torch.arange(self.in_channels), torch.arange(self.in_channels), 1, 1] = 1.0
            ki, bi = _fold_bn(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    def _make_fused_conv(self) -> nn.Conv2d:
        ref = self.dense[0].weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1, bias=True,
                         device=ref.device, dtype=ref.dtype)
        conv.requires_grad_(not self.freeze_when_fused)
        return conv

    def _drop_branches(self) -> None:
        del self.dense, self.conv1x1, self.identity
        self.dense = self.conv1x1 = self.identity = None  # plain attributes: the block no longer has branches

    @torch.no_grad()
    def fuse(self) -> RepVGGBlock:
        """Replace the branches by the equivalent single conv (uses the BN running statistics); idempotent."""
        if self.fused is not None:
            return self
        kernel, bias = self.equivalent_kernel_bias()
        conv = self._make_fused_conv()
        conv.weight.copy_(kernel.to(conv.weight.dtype))
        conv.bias.copy_(bias.to(conv.bias.dtype))
        self._drop_branches()
        self.fused = conv
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A checkpoint written after fusion holds only fused.* for this block: take the fused structure first,
        # the load that follows then fills its weights.
        if self.fused is None and f"{prefix}fused.weight" in state_dict:
            conv = self._make_fused_conv()
            self._drop_branches()
            self.fused = conv
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, fused={self.is_fused}"


def repvgg_blocks(module: nn.Module) -> Iterator[RepVGGBlock]:
    return (m for m in module.modules() if isinstance(m, RepVGGBlock))


def fuse_repvgg(module: nn.Module) -> int:
    """Fuse every RepVGG block inside ``module``; returns how many were fused by this call."""
    count = 0
    for block in list(repvgg_blocks(module)):
        if not block.is_fused:
            block.fuse()
            count += 1
    return count


class RepVGGCNN(VggCNN):
    """FV2ES visual CNN: Conv5x5 -> BN -> ReLU -> MaxPool2 -> RepVGG x3 -> MaxPool2 -> RepVGG -> MaxPool2 ->
    RepVGG -> MaxPool2 (3x48x48 -> 512x3x3 with the paper widths (64, 64, 64, 128, 256, 512))."""

    block = RepVGGBlock

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = PAPER_VGG_WIDTHS) -> None:
        super().__init__(in_channels, widths)

    @property
    def is_fused(self) -> bool:
        return all(b.is_fused for b in repvgg_blocks(self))

    def fuse(self) -> RepVGGCNN:
        fuse_repvgg(self)
        return self
