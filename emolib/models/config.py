"""Typed model configurations that travel with the model, its checkpoint and its run record.

Every registered model has a frozen dataclass that holds its whole configuration (``model.config``); its
defaults are the paper's values. ``build_model`` starts from a named configuration (``Model.configs``, e.g.
``"paper"`` and ``"tiny"``) or a dict, the trainer stores ``config.to_dict()`` in ``best.pt`` and in the run
record, and ``emolib.predict.load_checkpoint`` rebuilds the model from it (``from_dict``).

The shared parts are declared once and combined by inheritance:

* ``TransformerConfig``: the CLS transformer of every sequence branch (d, layers, heads, feed-forward, dropout);
* ``SequenceConfig``: a sequence branch, i.e. the transformer plus its flatten MLP and the VGG widths;
* ``TextConfig``: the pretrained text encoder and its learning-rate factor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypeVar

PAPER_VGG_WIDTHS: tuple[int, ...] = (64, 64, 64, 128, 256, 512)
TINY_VGG_WIDTHS: tuple[int, ...] = (8, 8, 8, 16, 16, 32)
# FV2ES's NesT-B audio encoder (emolib.models.nest_audio). Here rather than there so that FV2ES's configuration
# can be read without importing timm, which only building the encoder needs.
NEST_PAPER = {"embed_dims": (128, 256, 512), "num_heads": (4, 8, 16), "depths": (2, 2, 20),
              "drop_path_rate": 0.5}

C = TypeVar("C", bound="ModelConfig")


def _plain(value: Any) -> Any:
    """JSON-ready form of a configuration value (tuples -> lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Base of the model configurations: validation of keys, dict round trip, ``replace``."""

    def __post_init__(self) -> None:
        # Lists (from YAML, JSON or a notebook) are stored as tuples and paths as strings, so equal
        # configurations compare equal and every configuration is JSON-ready.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(value, PurePath):
                object.__setattr__(self, f.name, str(value))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_keys(cls, keys: Any, model: str = "") -> None:
        unknown = sorted(set(keys) - set(cls.field_names()))
        if unknown:
            who = f"model {model!r}" if model else cls.__name__
            raise TypeError(f"{who} does not take {unknown}; it takes {sorted(cls.field_names())}")

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], model: str = "") -> C:
        """A configuration from a (partial) dict; missing keys take the paper defaults."""
        cls.check_keys(values, model)
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, model: str = "", **changes: Any) -> C:
        """A copy with ``changes`` applied; an unknown key is a TypeError that lists the known ones."""
        self.check_keys(changes, model)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """FE2E's CLS transformer over the items of an utterance (post-LN, ReLU, no positional encoding)."""

    d: int = 64
    nlayers: int = 4
    nheads: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1

    def transformer(self) -> TransformerConfig:
        """Just the transformer part of a larger configuration."""
        return TransformerConfig(self.d, self.nlayers, self.nheads, self.dim_feedforward, self.dropout)


@dataclass(frozen=True)
class SequenceConfig(TransformerConfig):
    """A sequence branch: backbone features -> FlattenMLP(flatten_hidden -> d) -> CLS transformer; ``widths``
    are the VGG CNN's channel widths (stem + 5 blocks) where the backbone is one."""

    widths: tuple[int, ...] = PAPER_VGG_WIDTHS
    flatten_hidden: int = 1024


@dataclass(frozen=True)
class TextConfig(ModelConfig):
    """A pretrained text encoder (hub id, local path, or an offline name such as ``minilm``); its parameters
    (and the model's text head where the paper says so) train at ``lr / text_lr_factor``."""

    text_model: str = "albert-base-v2"
    text_max_length: int = 100
    text_lr_factor: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_text_lr_factor(self.text_lr_factor)


def check_text_lr_factor(factor: float) -> float:
    """The one check of a text learning-rate factor (config value or the trainer's override)."""
    factor = float(factor)
    if not factor > 0:
        raise ValueError(f"text_lr_factor must be > 0, got {factor}")
    return factor
