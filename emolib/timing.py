"""Wall time per named stage of a pipeline: ``with timer.stage("decode"): ...`` and forward hooks on modules.

Used by ``emolib predict --profile`` and ``python -m emolib.bench inference`` to show where the time of raw video
-> emotions goes. On CUDA the device is synchronised at every stage boundary, so a stage's time is its own
kernels' time and not the previous stage's queue (this costs some overlap; a profile is for finding where the
time goes, not for the fastest run). A stage may be entered many times; its seconds and calls accumulate.

Stages nest: a module hook inside ``with timer.stage("model")`` is also counted in ``model``. ``report`` lists
every stage with its seconds and its share of ``total`` (by default the sum of the outermost stages).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn


class StageTimer:
    """Accumulated wall seconds per stage name, in the order the stages were first entered."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.parent: dict[str, str | None] = {}
        self._open: list[str] = []

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _enter(self, name: str) -> float:
        self._sync()
        self.parent.setdefault(name, self._open[-1] if self._open else None)
        self._open.append(name)
        return time.perf_counter()

    def _leave(self, name: str, t0: float) -> None:
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.calls[name] = self.calls.get(name, 0) + 1
        # a stage left by an exception inside a nested one: drop everything above it as well
        while self._open and self._open.pop() != name:
            pass

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = self._enter(name)
        try:
            yield
        finally:
            self._leave(name, t0)

    @contextmanager
    def hooks(self, modules: Mapping[str, nn.Module | None]) -> Iterator[StageTimer]:
        """Time every forward call of each named module (``None`` entries are skipped) while inside the block."""
        handles = []
        starts: dict[str, list[float]] = {}
        for name, module in modules.items():
            if module is None:
                continue

            def pre(_m: nn.Module, _args: Any, name: str = name) -> None:
                starts.setdefault(name, []).append(self._enter(name))

            def post(_m: nn.Module, _args: Any, _out: Any, name: str = name) -> None:
                self._leave(name, starts[name].pop())

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def total(self) -> float:
        """Seconds of the outermost stages (those entered with no other stage open)."""
        return sum(s for name, s in self.seconds.items() if self.parent.get(name) is None)

    def report(self, total: float | None = None) -> list[dict[str, Any]]:
        """One row per stage: name, parent, seconds, calls and share of ``total`` (default ``self.total()``)."""
        total = self.total() if total is None else total
        return [{"stage": name, "parent": self.parent.get(name), "seconds": s, "calls": self.calls[name],
                 "share": s / total if total > 0 else float("nan")} for name, s in self.seconds.items()]

    def format(self, total: float | None = None, title: str = "stage") -> str:
        """A text table, nested stages indented under their parent."""
        rows = sorted(self.report(total), key=lambda r: list(self.parent).index(r["stage"]))  # order entered
        children: dict[str | None, list[dict[str, Any]]] = {}
        for r in rows:
            children.setdefault(r["parent"], []).append(r)
        ordered: list[tuple[int, dict[str, Any]]] = []

        def walk(parent: str | None, depth: int) -> None:
            for r in children.get(parent, []):
                ordered.append((depth, r))
                walk(r["stage"], depth + 1)

        walk(None, 0)
        names = ["  " * depth + r["stage"] for depth, r in ordered]
        ordered_rows = [r for _, r in ordered]
        width = max([len(title), *map(len, names)])
        lines = [f"{title:<{width}}  {'seconds':>9}  {'share':>6}  {'calls':>6}"]
        lines += [f"{n:<{width}}  {r['seconds']:>9.3f}  {100 * r['share']:>5.1f}%  {r['calls']:>6d}"
                  for n, r in zip(names, ordered_rows)]
        tot = self.total() if total is None else total
        lines.append(f"{'total':<{width}}  {tot:>9.3f}")
        return "\n".join(lines)


def stage_of(timer: StageTimer | None) -> Callable[[str], AbstractContextManager]:
    """``timer.stage``, or a stage that times nothing when there is no timer (so callers need no branch)."""
    return timer.stage if timer is not None else _untimed


def _untimed(_name: str) -> AbstractContextManager:
    return nullcontext()
