"""StageTimer: nested stages, module hooks, report and table."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from emolib.timing import StageTimer


def test_nested_stages_accumulate_and_know_their_parent() -> None:
    timer = StageTimer()
    for _ in range(2):
        with timer.stage("outer"):
            with timer.stage("inner"):
                time.sleep(0.01)
    with timer.stage("second"):
        pass
    assert timer.calls == {"inner": 2, "outer": 2, "second": 1}
    assert timer.parent == {"outer": None, "inner": "outer", "second": None}
    assert timer.seconds["inner"] >= 0.02
    assert timer.seconds["outer"] >= timer.seconds["inner"]
    assert timer.total() == pytest.approx(timer.seconds["outer"] + timer.seconds["second"])
    rows = {r["stage"]: r for r in timer.report()}
    assert rows["outer"]["share"] == pytest.approx(timer.seconds["outer"] / timer.total())


def test_a_stage_left_by_an_exception_is_still_counted_and_closed() -> None:
    timer = StageTimer()
    with pytest.raises(RuntimeError):
        with timer.stage("fails"):
            raise RuntimeError("boom")
    with timer.stage("after"):
        pass
    assert timer.calls["fails"] == 1 and timer.parent["after"] is None


def test_hooks_time_module_calls_nested_in_the_open_stage_and_are_removed() -> None:
    inner = nn.Linear(4, 4)
    outer = nn.Sequential(inner, nn.ReLU())
    timer = StageTimer()
    with timer.hooks({"outer": outer, "outer.0": inner, "absent": None}):
        with timer.stage("model"):
            outer(torch.zeros(2, 4))
            outer(torch.zeros(2, 4))
    outer(torch.zeros(2, 4))  # after the block: not counted
    assert timer.calls == {"model": 1, "outer": 2, "outer.0": 2}
    assert timer.parent == {"model": None, "outer": "model", "outer.0": "outer"}
    assert not outer._forward_hooks and not outer._forward_pre_hooks and not inner._forward_hooks


def test_format_indents_children_under_their_parent() -> None:
    timer = StageTimer()
    with timer.stage("model"):
        with timer.stage("audio"):
            with timer.stage("audio.backbone"):
                pass
    with timer.stage("decode"):
        pass
    lines = timer.format().splitlines()
    assert lines[0].split() == ["stage", "seconds", "share", "calls"]
    names = [line[:len(line) - len(line.lstrip())] + line.split()[0] for line in lines[1:-1]]
    assert names == ["model", "  audio", "    audio.backbone", "decode"]
    assert lines[-1].startswith("total")
