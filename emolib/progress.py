"""Progress reporting that reaches a log: plain lines ``desc: done/total unit (pct), rate, ETA`` on stderr.

Why not only tqdm: inside a Jupyter kernel ``tqdm.auto`` draws an ipywidgets bar, whose updates travel as widget
(comm) messages. papermill streams only a kernel's ``stream`` outputs (stdout/stderr text) to the runner's console
and ``results/<profile>/logs/<run>.log``, so a notebook run by ``emolib run`` showed nothing from a long loop until
it ended. :class:`LineProgress` writes ordinary text lines, at most one per ``interval`` seconds (plus the last),
and a heartbeat thread writes one even while a single long step (a chunk of videos) keeps ``update`` from being
called. The heartbeat stops by itself when the function that asked for the progress is no longer running (it
returned or raised without ``close``), so a failed loop leaves no thread printing into later notebook cells.

:func:`progress_bar` chooses: ``EMOLIB_PROGRESS=lines|bar|off`` (the runner sets ``lines`` for its kernels), else
a tqdm bar when someone watches (stderr is a terminal, or a Jupyter kernel: JupyterLab shows the widget) and lines
otherwise (redirected output, CI logs), where tqdm's carriage-return redraws would only add noise.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

ENV = "EMOLIB_PROGRESS"
MODES = ("auto", "lines", "bar", "off")
# A line at most every 5 s from update(); the heartbeat checks every 5 s, so two lines are never more than 10 s
# apart (the issue asks for progress at least every 10 s).
DEFAULT_INTERVAL = 5.0


def format_seconds(seconds: float) -> str:
    """``37s``, ``1m37s``, ``2h05m`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LineProgress:
    """Throttled progress lines; the same ``update``/``close`` interface as a tqdm bar (and a context manager).

    ``clock`` (default ``time.monotonic``) and ``stream`` (default: ``sys.stderr`` at the time of writing, so a
    kernel's replaced stderr is used) are injectable for tests; ``heartbeat=False`` disables the thread.
    ``owner``: the frame whose execution the heartbeat accompanies (default: the caller's).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", interval: float = DEFAULT_INTERVAL,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 heartbeat: bool = True, owner: FrameType | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.total, self.desc, self.unit, self.interval = total, desc, unit, float(interval)
        self.stream, self.clock = stream, clock
        self.n = 0
        self.start = self.last_emit = clock()
        self.closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner = owner if owner is not None else sys._getframe(1)
        self._owner_thread = threading.get_ident()
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress:{desc}", daemon=True)
            self._thread.start()

    def line(self, now: float | None = None) -> str:
        """The current progress line (without newline)."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 0.0)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f} {self.unit}/s, "
                    f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
        return f"{self.desc}: {self.n} {self.unit}, {rate:.2f} {self.unit}/s, elapsed {format_seconds(elapsed)}"

    def _emit(self, now: float, suffix: str = "") -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(self.line(now) + suffix + "\n")
        stream.flush()
        self.last_emit = now

    def _maybe_emit(self) -> None:
        with self._lock:
            if self.closed:
                return
            now = self.clock()
            if now - self.last_emit >= self.interval:
                self._emit(now)

    def _owner_running(self) -> bool:
        frame = sys._current_frames().get(self._owner_thread)
        while frame is not None:
            if frame is self._owner:
                return True
            frame = frame.f_back
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._owner_running():
                break
            self._maybe_emit()
        self._owner = None  # do not keep the owner's locals alive

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
        self._maybe_emit()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._emit(self.clock(), " - done")
            self._owner = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_mode(environ: dict[str, str] | None = None, stream: TextIO | None = None) -> str:
    """``lines``, ``bar`` or ``off`` from ``EMOLIB_PROGRESS`` (``auto`` or unset: see the module docstring)."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={env.get(ENV)!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    interactive = bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules
    return "bar" if interactive else "lines"


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool = True, **kwargs: Any):
    """A progress reporter with ``update(n)`` and ``close()``: a tqdm bar or :class:`LineProgress` (see
    :func:`progress_mode`), or nothing when ``enabled`` is false or the mode is ``off``."""
    mode = progress_mode() if enabled else "off"
    if mode == "off":
        return _NoProgress()
    if mode == "lines":
        return LineProgress(total, desc, unit=unit, owner=kwargs.pop("owner", None) or sys._getframe(1), **kwargs)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
