"""Models of the package and ``build_model``, the one way to construct a registered model.

Importing this package registers every model (``emolib.registry``). Each model class carries its configuration
dataclass (``config_class``, defaults = the paper's values) and its named configurations (``configs``, as timm's
default cfgs travel with its models), so

    build_model("visual-only", "tiny", num_outputs=6, d=16)

starts from the model's ``tiny`` configuration and applies the keyword overrides. A dict is a partial
configuration over the paper defaults; a configuration dataclass is taken as it is. ``model.config`` is the
resolved configuration, which checkpoints and run records store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from emolib.models import e2emal, emombt, fe2e, fv2es  # noqa: F401  (each registers its models)
from emolib.models.blocks import EmotionModel
from emolib.models.config import ModelConfig
from emolib.models.text import MissingWeightsError, TextEncoder
from emolib.registry import REGISTRY

__all__ = ["EmotionModel", "MissingWeightsError", "ModelConfig", "TextEncoder", "build_model", "model_class",
           "model_config"]


def model_class(name: str) -> type[EmotionModel]:
    return REGISTRY.get("model", name)


def model_config(name: str, config: str | Mapping[str, Any] | ModelConfig | None = "tiny",
                 **overrides: Any) -> ModelConfig:
    """The resolved configuration dataclass of model ``name`` (what ``build_model`` builds from)."""
    return model_class(name).resolve_config(config, **overrides)


def build_model(name: str, config: str | Mapping[str, Any] | ModelConfig | None = "tiny", *, num_outputs: int,
                **kwargs: Any) -> nn.Module:
    """Construct registered model ``name`` with ``num_outputs`` outputs from a named, dict or dataclass
    configuration; ``kwargs`` are configuration overrides (or a ready-made module such as ``text_encoder``)."""
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    return model_class(name)(num_outputs, config, **kwargs)
