"""Per-utterance model inputs computed once per fit.

A model whose input transforms are deterministic functions of one utterance (E2EMAL's face-clip selection,
mel spectrogram and word-vector chunks) recomputes them every epoch from the same cached clip. ``InputMemo``
keeps them by utterance id, so that later epochs stack the stored rows instead. Randomness (augmentation) is
applied by the model after the memo, so the numbers are the same as without it
(``tests/test_e2emal.py`` trains with and without it and compares the records).

The memo lives only while the trainer fits (``emolib.train.fit`` enters the model's ``input_memo`` context):
robustness evaluation feeds corrupted inputs under the same utterance ids and must never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def tensor_bytes(obj: object) -> int | None:
    """Bytes held by a tensor or a (named) tuple of tensors (None counts 0); None for anything else."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, tuple):
        sizes = [tensor_bytes(x) for x in obj]
        return None if any(s is None for s in sizes) else sum(sizes)
    return 0 if obj is None else None


class InputMemo:
    """uid -> a tuple of per-utterance tensors (one row of each batched input), up to ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.bytes = max_bytes, 0
        self.rows: dict[str, tuple[Tensor, ...]] = {}
        self.hits = self.misses = 0

    def get(self, uids: Sequence[str], compute: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """The batch's inputs: stacked from the memo when every uid is in it, else ``compute()`` (whose rows
        are then stored while the budget lasts). ``compute`` returns tensors batched along dim 0 in ``uids``
        order."""
        rows = [self.rows.get(u) for u in uids]
        if rows and all(r is not None for r in rows):
            self.hits += 1
            return tuple(torch.stack(parts) for parts in zip(*rows))  # type: ignore[arg-type]
        self.misses += 1
        out = compute()
        if len(set(uids)) != len(uids):
            return out  # a uid twice in one batch: not an utterance id we can key on
        for i, uid in enumerate(uids):
            if uid in self.rows:
                continue
            row = tuple(t[i].detach().clone() for t in out)  # a view would keep the whole batch alive
            size = tensor_bytes(row)
            if self.bytes + size > self.max_bytes:
                break
            self.rows[uid], self.bytes = row, self.bytes + size
        return out
