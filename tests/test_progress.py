"""Progress lines for logs (emolib.progress): throttled to the interval, with done/total, rate and ETA."""

from __future__ import annotations

import io
import time

import pytest

from emolib.progress import LineProgress, _NoProgress, format_seconds, progress_bar, progress_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_throttled_and_carry_count_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(420, "prepare mosei", unit="utt", interval=5.0, stream=out, clock=clock, heartbeat=False)
    for _ in range(20):  # 20 utterances in 4 s: under the interval, nothing is written
        clock.now += 0.2
        bar.update(1)
    assert out.getvalue() == ""
    clock.now += 1.0  # 5 s since the start
    bar.update(5)
    lines = out.getvalue().splitlines()
    assert lines == ["prepare mosei: 25/420 utt (6%), 5.00 utt/s, elapsed 5s, ETA 1m19s"]
    clock.now += 4.9
    bar.update(1)
    assert len(out.getvalue().splitlines()) == 1  # 4.9 s after the last line: still quiet
    clock.now += 0.1
    bar.update(1)
    assert out.getvalue().splitlines()[-1].startswith("prepare mosei: 27/420 utt (6%), 2.70 utt/s, elapsed 10s")
    clock.now += 1
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].endswith(" - done") and "27/420" in lines[-1]


def test_every_line_within_ten_seconds_even_without_updates() -> None:
    """The heartbeat writes while a long step runs, and stops once its owner returned without close()."""
    out = io.StringIO()

    def long_step() -> LineProgress:
        bar = LineProgress(10, "work", interval=0.05, stream=out)
        time.sleep(0.4)  # no update for 8 intervals
        return bar

    bar = long_step()
    beats = len(out.getvalue().splitlines())
    assert beats >= 3 and all(line.startswith("work: 0/10 it (0%)") for line in out.getvalue().splitlines())
    time.sleep(0.3)  # the owner (long_step) has returned: the heartbeat is over
    assert len(out.getvalue().splitlines()) <= beats + 1
    assert bar._thread is not None
    bar._thread.join(timeout=1)
    assert not bar._thread.is_alive()


def test_heartbeat_stops_after_close() -> None:
    out = io.StringIO()
    bar = LineProgress(3, "x", interval=0.05, stream=out)
    bar.update(3)
    bar.close()
    n = len(out.getvalue().splitlines())
    time.sleep(0.2)
    assert len(out.getvalue().splitlines()) == n and not bar._thread.is_alive()


def test_unknown_total_and_formatting() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(None, "scan", interval=1, stream=out, clock=clock, heartbeat=False)
    clock.now += 2
    bar.update(4)
    assert out.getvalue() == "scan: 4 it, 2.00 it/s, elapsed 2s\n"
    assert [format_seconds(s) for s in (0, 59.6, 97, 3600 + 5 * 60, float("nan"), -1)] == \
        ["0s", "1m00s", "1m37s", "1h05m", "?", "?"]
    with pytest.raises(ValueError, match="interval"):
        LineProgress(1, "x", interval=0, heartbeat=False)


def test_mode_from_environment(monkeypatch) -> None:
    assert progress_mode({"EMOLIB_PROGRESS": "lines"}) == "lines"
    assert progress_mode({"EMOLIB_PROGRESS": "OFF"}) == "off"
    with pytest.raises(ValueError, match="EMOLIB_PROGRESS"):
        progress_mode({"EMOLIB_PROGRESS": "loud"})

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    assert progress_mode({}, io.StringIO()) == "lines"  # redirected: lines, not carriage-return redraws
    assert progress_mode({}, Tty()) == "bar"
    monkeypatch.setenv("EMOLIB_PROGRESS", "lines")
    bar = progress_bar(5, "p", unit="utt", heartbeat=False)
    assert isinstance(bar, LineProgress) and bar.unit == "utt"
    bar.close()
    assert isinstance(progress_bar(5, "p", enabled=False), _NoProgress)
