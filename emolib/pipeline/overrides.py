"""Parameter overrides (``emolib run PROFILE --set key=value``) and the rehearsal of a paper profile.

``--set key=value`` sets ``key`` in every run whose notebook declares it; ``--set step.key=value`` in the runs of
one step only. Values are parsed as YAML (``--set epochs=1``, ``--set seeds=[0,1]``, ``--set text_model=minilm``).
A key that no notebook of the profile declares is an error and nothing runs. Overridden values are ordinary
run parameters, so they take part in the skip-on-unchanged fingerprint.

A rehearsal (``--rehearse``) runs the exact paper profile in minutes: the dataset's synthetic release (size
``tiny``) instead of ``source_root``, the paper-size models, batch sizes, learning rates and model selection of
the profile, one seed, two epochs of at most ``REHEARSAL_STEPS`` training steps each, and random-initialised stand-ins
of the same architecture for pretrained weights that are not on this machine. It writes to
``results/<profile>-rehearsal/``; its tables are headed REHEARSAL and show no published rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from emolib.pipeline.profile import ProfileError

REHEARSAL_SUFFIX = "-rehearsal"
REHEARSAL_STEPS = 3
REHEARSAL_EPOCHS = 2  # the second epoch's step times, after the first steps' one-off costs, feed the estimate
REHEARSAL_RELEASE = "tiny"
# Pretrained weights the paper profiles name; a rehearsal swaps in a random-initialised model of the same
# architecture (emolib.models.text / emombt "stand-in:" names) when they are not available offline.
STAND_IN = "stand-in:"
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_overrides(items: Sequence[str]) -> list[tuple[str | None, str, Any]]:
    """``["epochs=1", "fv2es.lr=1e-5"]`` -> ``[(None, "epochs", 1), ("fv2es", "lr", 1e-05)]``."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ProfileError(f"--set {item!r}: expected key=value or step.key=value")
        step, _, name = key.rpartition(".")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ProfileError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-5" (no dot) as a string
        out.append((step or None, name, value))
    return out


class Adjuster:
    """The ``adjust`` callable of ``load_profile``: applies overrides (and the rehearsal rewrites) to each run,
    remembering which overrides found a notebook that declares them."""

    def __init__(self, overrides: Sequence[str] = (), *, rehearse: bool = False) -> None:
        from emolib.pipeline.runner import declared_parameters

        self.overrides = parse_overrides(overrides)
        self.rehearse = rehearse
        self.used: set[int] = set()
        self.steps: set[str] = set()
        self._declared = declared_parameters

    def __call__(self, step: str, notebook: Path, params: dict[str, Any]) -> dict[str, Any]:
        self.steps.add(step)
        declared = self._declared(notebook) if notebook.is_file() else {}
        params = dict(params)
        if self.rehearse:
            params = rehearsal_parameters(params, declared)
        for i, (target, key, value) in enumerate(self.overrides):
            if (target is None or target == step) and key in declared:
                params[key] = value
                self.used.add(i)
        return params

    def check(self) -> None:
        """One error line for the first override that no run took (an unknown step or an undeclared key)."""
        for i, (target, key, _) in enumerate(self.overrides):
            if i in self.used:
                continue
            if target is not None and target not in self.steps:
                raise ProfileError(f"--set {target}.{key}: the profile has no step {target!r} "
                                   f"(steps: {', '.join(sorted(self.steps))})")
            where = f"step {target!r}" if target else "any step"
            raise ProfileError(f"--set {key}: no notebook of {where} declares the parameter {key!r}")


def _available_offline(text_model: str) -> bool:
    from emolib.models.text import MINILM_ALIASES

    if text_model.lower() in MINILM_ALIASES or text_model.startswith(STAND_IN) or Path(text_model).is_dir():
        return True
    try:  # a hub id is available when the local Hugging Face cache holds it
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(text_model, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure to find it means "not available"
        return False


def rehearsal_parameters(params: dict[str, Any], declared: dict[str, str]) -> dict[str, Any]:
    """A run's parameters for the rehearsal (module docstring); only names the notebook declares change."""
    out = dict(params)

    def put(key: str, value: Any) -> None:
        if key in declared:
            out[key] = value

    if "source_root" in declared:
        put("source_root", "")  # notebook 01 synthesizes the release
        put("synth_size", REHEARSAL_RELEASE)
    for key in ("split_dir", "folds"):  # Dai's lists name real utterances; the synthetic release has its own
        if out.get(key):
            out[key] = ""
    for key in ("epochs", "fe2e_epochs"):
        if key in declared:
            out[key] = REHEARSAL_EPOCHS
    put("max_steps_per_epoch", REHEARSAL_STEPS)
    put("seeds", [0])
    if "swa_start_epoch" in declared and out.get("swa_start_epoch"):
        out["swa_start_epoch"] = 0  # no SWA within one short epoch
    text = out.get("text_model")
    if isinstance(text, str) and text and not _available_offline(text):
        out["text_model"] = STAND_IN + text
    if "visual_weights" in declared and out.get("visual_weights") and not Path(str(out["visual_weights"])).is_file():
        out["visual_weights"] = ""
        out["visual_backbone"] = STAND_IN + str(out.get("visual_backbone") or "enet_b2_8")
    if "audio_weights" in declared and out.get("audio_weights") not in (None, "", "random") \
            and not Path(str(out["audio_weights"])).is_file():
        out["audio_weights"] = "random"
    put("rehearsal", True)
    return out
