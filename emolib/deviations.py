"""The deviation card: every known difference between a paper, its released code and emolib, as data.

Each difference is declared once, next to what it describes: on the model class (``deviations``: its
architecture, loss and training switches) or on the dataset adapter (its preprocessing and splits). An entry
names the parameter that switches it, as ``<scope>.<name>``:

=========  ==================================================================================================
scope      where the value lives
=========  ==================================================================================================
model      a field of the model's configuration dataclass (``model.config``)
train      a field of ``emolib.train.TrainConfig``
loss       a parameter of the run's loss (its constructor keyword)
prepare    a field of ``emolib.data.prepare.PrepareParams`` (recorded in the cache's provenance)
data       an option of the dataset adapter's ``sources`` (``split_dir``, ``folds``; in the provenance too)
=========  ==================================================================================================

Every run record lists the value of every entry of its model and dataset (``record["deviations"]``), and
notebook 06 writes the card of the rows shown under each table (``emolib.tables.deviation_card``). A test checks
that each entry names a parameter that exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCOPES = ("model", "train", "loss", "prepare", "data")
SIDES = ("paper", "code", "emolib")


@dataclass(frozen=True)
class Deviation:
    """One difference. ``default``: which side the default value follows (paper, released code, or emolib's own
    choice where neither applies or neither is possible here); ``values`` says which value gives which side."""

    parameter: str
    what: str
    default: str
    values: str = ""
    source: str = ""  # where the difference is visible: the paper, the reference repository and file

    def __post_init__(self) -> None:
        scope, _, name = self.parameter.partition(".")
        if scope not in SCOPES or not name:
            raise ValueError(f"deviation parameter {self.parameter!r} must be <scope>.<name>, scope in {SCOPES}")
        if self.default not in SIDES:
            raise ValueError(f"deviation {self.parameter!r}: default must be one of {SIDES}, got {self.default!r}")

    @property
    def scope(self) -> str:
        return self.parameter.partition(".")[0]

    @property
    def name(self) -> str:
        return self.parameter.partition(".")[2]


def declared(obj: Any) -> tuple[Deviation, ...]:
    """The deviations a model class or dataset adapter (class or instance) declares."""
    return tuple(getattr(obj, "deviations", ()))


def card(model: str, dataset: str | None) -> list[Deviation]:
    """The deviations of a registered model trained on a registered dataset (model's first, then the data's)."""
    from emolib import registry

    entries = list(declared(registry.get("model", model)))
    if dataset:
        entries += declared(registry.get("dataset", dataset))
    return entries


def run_values(entries: list[Deviation], *, model_config: dict[str, Any], train: dict[str, Any],
               loss: dict[str, Any], prepare: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The value each entry's parameter had in one run; a parameter the run did not set takes its default, which
    the callers include in these dicts (loss: the constructor's defaults; prepare: PrepareParams defaults)."""
    scopes = {"model": model_config, "train": train, "loss": loss, "prepare": prepare, "data": data}
    return {d.parameter: scopes[d.scope].get(d.name) for d in entries}
