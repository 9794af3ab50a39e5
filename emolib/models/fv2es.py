"""FV2ES (Wei, Huang, Zhang, 2022): FE2E with RepVGG visual blocks and a NesT audio encoder (arXiv 2209.10170).

Changes with respect to FE2E (``emolib.models.fe2e``), everything else (text branch, CLS transformers, heads,
weighted late fusion, parameter groups) is shared:

* visual: ``RepVGGCNN`` (multi-branch RepVGG blocks, one 3x3 conv each) in FE2E's layout, 3x48x48 -> 512x3x3;
  ``fuse()`` re-parameterises every block into a single 3x3 conv with bias for inference;
* audio: every 128x32 mel piece reshaped to 4x32x32 and encoded by NesT-B (``NestAudioBranch``), 512x8x8 ->
  Linear(32768 -> 1024 -> d).

Paper vs released code (the default follows the paper, named switches reproduce the code):

* ``fuse_at_first_validation`` (default False). Paper: train the multi-branch form, fuse once for inference
  (call ``model.fuse()``, as ``emolib.predict`` does). Code: ``switch_to_deploy()`` runs before every
  evaluation, so the blocks are fused at the first validation and the fused kernels, created after the
  optimiser, are never updated again. With the switch on, the model fuses itself the first time it is put in
  eval mode (the trainer's first validation) and creates the fused convs with ``requires_grad=False``. The
  trainer builds its optimiser once, before that, so it holds the branch parameters, which no longer take part
  in the forward pass and therefore get no gradient and no update; the fused convs are in no optimiser group.
  From then on training runs the fused convs (no BN), exactly as the released code does after epoch 1. A
  checkpoint written after fusion loads into a freshly built model (the blocks take the fused structure).
* ``train_visual_head`` (default True). False reproduces ``v_out`` commented out of the optimiser: it stays at
  its initial weights (``frozen_params()``, applied by the trainer).

Parameter count with the paper config (d = 64, ALBERT-base-v2): about 121 M, of which NesT 66.7 M and the audio
flatten MLP 33.6 M (timm's unused 0.5 M classifier head of the released code is not built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from emolib.deviations import Deviation
from emolib.models.blocks import VisualBranch
from emolib.models.config import NEST_PAPER, TINY_VGG_WIDTHS
from emolib.models.fe2e import _TINY, FE2EConfig, LateFusionModel
from emolib.models.repvgg import RepVGGCNN, fuse_repvgg, repvgg_blocks
from emolib.registry import register

if TYPE_CHECKING:
    from emolib.models.nest_audio import NestAudioBranch


@dataclass(frozen=True)
class FV2ESConfig(FE2EConfig):
    """FV2ES's configuration: FE2E's plus the NesT audio encoder and the two released-code switches."""

    nest_dims: tuple[int, ...] = NEST_PAPER["embed_dims"]
    nest_heads: tuple[int, ...] = NEST_PAPER["num_heads"]
    nest_depths: tuple[int, ...] = NEST_PAPER["depths"]
    nest_drop_path: float = NEST_PAPER["drop_path_rate"]
    fuse_at_first_validation: bool = False
    train_visual_head: bool = True


class RepVGGVisualBranch(VisualBranch):
    """FV2ES visual encoder: faces -> 48x48 normalise -> RepVGGCNN -> FlattenMLP -> ClsTransformerEncoder.
    ``features`` is the part that re-parameterisation changes."""

    cnn_class = RepVGGCNN


@register("model", "fv2es")
class FV2ES(LateFusionModel):
    """FV2ES: RepVGG visual blocks (fused for inference), NesT attention over mel pieces, FE2E fusion."""

    registry_name = "fv2es"
    config_class = FV2ESConfig
    config: FV2ESConfig
    configs: ClassVar[dict[str, FV2ESConfig]] = {
        "paper": FV2ESConfig(),
        "tiny": FV2ESConfig(**{**_TINY, "widths": TINY_VGG_WIDTHS}, nest_dims=(16, 32, 64), nest_heads=(2, 2, 4),
                            nest_depths=(1, 1, 2), nest_drop_path=0.1),
    }

    deviations: ClassVar[tuple[Deviation, ...]] = LateFusionModel.deviations + (
        Deviation("model.fuse_at_first_validation", "the released code fuses the RepVGG blocks before every "
                  "evaluation, so they are fused (and frozen) after epoch 1; the paper trains the multi-branch form "
                  "and fuses once for inference", "paper", "False (paper) | True (code)",
                  "V2EM/src/trainers/r_emotiontrainer.py"),
        Deviation("model.train_visual_head", "the released code leaves v_out out of the optimiser", "paper",
                  "True (paper) | False (code)", "V2EM/main.py"),
        Deviation("train.early_stop", "FV2ES's README asks for patience 6 but the code comments out the break: all "
                  "30 epochs run, the best valid epoch is kept", "code", "None/0 (code) | 6 (README)",
                  "V2EM/src/trainers/r_emotiontrainer.py"),
    )

    def __init__(self, num_outputs: int, config: FV2ESConfig | str | dict | None = None, **kwargs) -> None:
        super().__init__(num_outputs, config, **kwargs)
        for block in repvgg_blocks(self):
            block.freeze_when_fused = self.config.fuse_at_first_validation

    @classmethod
    def registry_meta(cls) -> dict:
        return {**super().registry_meta(), "modalities": "text,visual,audio",
                "paper": "Wei, Huang, Zhang, IEEE T-Broadcasting 2022 (arXiv 2209.10170)",
                "quirks": {"fuse_at_first_validation": "released code fuses RepVGG before every evaluation (frozen "
                                                       "after epoch 1)",
                           "train_visual_head": "False: v_out left out of the optimiser, as in the released code"}}

    def make_visual(self) -> RepVGGVisualBranch:
        return RepVGGVisualBranch(self.config, face_resize=self.config.face_resize)

    def make_audio(self) -> NestAudioBranch:
        # Imported here: nest_audio needs timm (~1.7 s to import), which a kernel that trains no FV2ES never uses.
        from emolib.models.nest_audio import NestAudioBranch

        c = self.config
        return NestAudioBranch(c, nest_dims=c.nest_dims, nest_heads=c.nest_heads, nest_depths=c.nest_depths,
                               nest_drop_path=c.nest_drop_path)

    @property
    def fuse_at_first_validation(self) -> bool:
        return self.config.fuse_at_first_validation

    # -- re-parameterisation ---------------------------------------------------------------------------

    @property
    def is_fused(self) -> bool:
        """True when every RepVGG block runs as a single conv (False without a visual branch)."""
        blocks = list(repvgg_blocks(self))
        return bool(blocks) and all(b.is_fused for b in blocks)

    def fuse(self) -> FV2ES:
        """Re-parameterise the visual RepVGG blocks into single 3x3 convs (eval-mode equivalent); idempotent."""
        fuse_repvgg(self)
        return self

    def train(self, mode: bool = True) -> FV2ES:
        # The released code's switch_to_deploy() before evaluation: the first eval() fuses for good.
        if not mode and self.config.fuse_at_first_validation and not self.is_fused and "v" in self.modalities:
            self.fuse()
        return super().train(mode)

    def frozen_params(self) -> list[str]:
        """Parameter prefixes the trainer leaves out of the optimiser (the ``train_visual_head=False`` quirk)."""
        return ["v_out"] if not self.config.train_visual_head and "v" in self.modalities else []
