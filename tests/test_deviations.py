"""The deviation card: every entry names a parameter that exists, every run record carries its switches, and
tables show the card of their rows."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from emolib import registry
from emolib.data.prepare import PrepareParams
from emolib.deviations import Deviation, card, declared
from emolib.train import TrainConfig


def _exists(entry: Deviation, owner) -> bool:
    scope, name = entry.scope, entry.name
    if scope == "model":
        return name in owner.config_class.field_names()
    if scope == "train":
        return name in {f.name for f in fields(TrainConfig)}
    if scope == "prepare":
        return name in {f.name for f in fields(PrepareParams)}
    if scope == "loss":
        return any(name in inspect.signature(e.obj).parameters for e in registry.entries("loss"))
    if scope == "data":
        return name in inspect.signature(owner.sources).parameters
    return False


def all_entries():
    for kind in ("model", "dataset"):
        for e in registry.entries(kind):
            for d in declared(e.obj):
                yield pytest.param(kind, e.name, d, id=f"{e.name}:{d.parameter}")


@pytest.mark.parametrize(("kind", "name", "entry"), list(all_entries()))
def test_every_entry_names_a_parameter_that_exists(kind, name, entry) -> None:
    owner = registry.get(kind, name)
    assert _exists(entry, owner), f"{kind} {name}: {entry.parameter} names no existing parameter"
    assert entry.what and entry.values


def test_the_issues_switches_are_on_the_card() -> None:
    params = {d.parameter for kind in ("model", "dataset") for e in registry.entries(kind) for d in declared(e.obj)}
    for expected in ("model.fuse_at_first_validation", "model.train_visual_head", "model.chunk_pad_quirk",
                     "model.text_vectors", "model.swap_text_visual_keys", "loss.freeze_sigma", "data.split_dir",
                     "data.folds", "prepare.frame_center_crop", "prepare.margin_size", "prepare.face_fallback",
                     "prepare.img_interval", "prepare.max_video_seconds"):
        assert expected in params, expected


def test_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="<scope>.<name>"):
        Deviation("nowhere", "x", "paper", "a | b")
    with pytest.raises(ValueError, match="default must be one of"):
        Deviation("model.x", "x", "mine", "a | b")


def test_run_record_carries_every_switch(tiny_caches, tmp_path) -> None:
    from emolib.experiment import Experiment, run_experiment

    exp = Experiment(profile="p", model="fv2es", cache_dir=tiny_caches["iemocap"], config="tiny",
                     model_overrides={"modalities": "va"},
                     train={"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1, "progress": False},
                     frames={"face_size": 48}, results_root=tmp_path)
    with pytest.warns(UserWarning, match="follows Dai et al.'s preprocessing"):
        (record,) = run_experiment(exp, [0], resume=False)
    expected = {d.parameter for d in card("fv2es", "iemocap")}
    assert set(record["deviations"]) == expected
    assert record["deviations"]["model.fuse_at_first_validation"] is False
    assert record["deviations"]["prepare.frame_center_crop"] is None  # the tiny cache keeps whole frames
    assert record["deviations"]["prepare.face_fallback"] == "center"

    from emolib.tables import build_tables

    table = next(t for t in build_tables([record]) if t.dataset == "iemocap" and t.protocol == "dai-iemocap")
    assert set(table.card["parameter"]) == expected
    assert "*Deviation card*" in table.markdown() and "model.fuse_at_first_validation" in table.markdown()
    row = table.card.set_index("parameter").loc["prepare.frame_center_crop"]
    assert row["model"] == "(data)" and row["value"] == "null" and row["default"] == "emolib"
