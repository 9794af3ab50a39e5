"""Per-modality encoder outputs reused across evaluation conditions.

The robustness evaluation (``emolib.evaluate.robustness``) runs every test batch of a checkpoint once per
condition; a condition changes one or two modalities, so most encoder calls see exactly the inputs they saw under
the clean condition. An encoder (``EmotionModel.modality_encoders``) is a function of its arguments alone in eval
mode, so its clean output can stand in for the call: ``EncoderMemo`` keeps the outputs it records (the clean
pass) under a digest of the call's arguments (tensor bytes, shapes and dtypes, strings, numbers) and answers any
later call with the same digest from them. Outputs are the very tensors the first call returned; the models read
encoder outputs without modifying them (tests/test_evaluate.py checks every registered model's rows with and
without the memo)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from emolib.models.input_memo import tensor_bytes


class _Unkeyable(Exception):
    """An argument the digest cannot describe: that call is computed, not memoised."""


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}{t.device.type}".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, str):
        h.update(b"S%d:" % len(obj.encode()) + obj.encode())
    elif obj is None or isinstance(obj, (bool, int, float)):
        h.update(f"V{type(obj).__name__}{obj!r};".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d[" % len(obj))
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(obj, Mapping):
        h.update(b"M%d{" % len(obj))
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
        h.update(b"}")
    else:
        raise _Unkeyable(type(obj).__name__)


def call_digest(args: tuple, kwargs: Mapping[str, Any]) -> bytes:
    """A digest of a call's arguments; ``_Unkeyable`` for an argument it cannot describe."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, list(args))
    _feed(h, dict(kwargs))
    return h.digest()


class EncoderMemo:
    """Within ``with EncoderMemo(model):`` the model's modality encoders answer calls whose arguments match a
    recorded call from what that call returned. ``recording`` (set by the caller) says whether new outputs are
    kept; ``max_bytes`` caps what is kept (later outputs are computed every time). ``hits`` and ``misses`` count
    the calls answered and computed."""

    def __init__(self, model: nn.Module, max_bytes: int = 2 << 30) -> None:
        names = model.modality_encoders() if hasattr(model, "modality_encoders") else {}
        self.modules = {modality: model.get_submodule(name) for modality, name in names.items()}
        self.max_bytes = max_bytes
        self.recording = True
        self.hits = self.misses = self.bytes = 0
        self._store: dict[tuple[str, bytes], Any] = {}

    def _wrap(self, modality: str, module: nn.Module):
        forward = module.forward

        def memo_forward(*args: Any, **kwargs: Any) -> Any:
            try:
                key = (modality, call_digest(args, kwargs))
            except _Unkeyable:
                self.misses += 1
                return forward(*args, **kwargs)
            if key in self._store:
                self.hits += 1
                return self._store[key]
            self.misses += 1
            out = forward(*args, **kwargs)
            size = tensor_bytes(out)
            if self.recording and size is not None and self.bytes + size <= self.max_bytes:
                self._store[key] = out
                self.bytes += size
            return out

        return memo_forward

    def __enter__(self) -> EncoderMemo:
        for modality, module in self.modules.items():
            module.forward = self._wrap(modality, module)  # an instance attribute: nn.Module.__call__ uses it
        return self

    def __exit__(self, *exc: Any) -> None:
        for module in self.modules.values():
            module.__dict__.pop("forward", None)
        self._store.clear()
        self.bytes = 0
