"""emolib.tables: layout, mean ± std over seeds, published rows above ours, protocol label on every row, and the
dataset facts read from the adapters (no guessing from names)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emolib import tables as T
from emolib.labels import IEMOCAP_CLASSES, SIMS_TARGETS
from emolib.metrics import get_protocol


def _metrics(protocols, labels, logits, class_names):
    out = {}
    for name in protocols:
        proto = get_protocol(name)
        thr = proto.choose_thresholds(logits, labels) if proto.needs_thresholds else None
        result = proto.evaluate(logits, labels, class_names, thresholds=thr)
        out[name] = {"valid": result, "test": result}
    return out


def classification_record(seed: int, *, model="fe2e", variant="default", dataset="synthetic-iemocap",
                          adapter="iemocap", protocols=("dai-iemocap", "e2emal"), classes=IEMOCAP_CLASSES) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.eye(len(classes))[rng.integers(0, len(classes), 40)]
    logits = 3 * labels + rng.normal(0, 1.5, labels.shape)
    return {"model": model, "variant": variant, "dataset": dataset, "dataset_adapter": adapter, "seed": seed,
            "protocol": protocols[0], "class_names": list(classes), "extra": {},
            "metrics": _metrics(protocols, labels, logits, list(classes))}


def regression_record(seed: int, *, model="emombt", variant="druw", labels_used="M,A,T,V") -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.uniform(-1, 1, (30, 4))
    preds = labels + rng.normal(0, 0.3, labels.shape)
    return {"model": model, "variant": variant, "dataset": "synthetic-sims", "dataset_adapter": "sims",
            "seed": seed, "protocol": "sims", "class_names": list(SIMS_TARGETS),
            "extra": {"sims_labels": labels_used}, "metrics": _metrics(["sims"], labels, preds, list(SIMS_TARGETS))}


def by_key(tables):
    return {(t.dataset, t.protocol): t for t in tables}


def test_classification_layout_published_rows_first_and_protocol_on_every_row() -> None:
    records = [classification_record(s) for s in (0, 1, 2)]
    tables = by_key(T.build_tables(records))
    table = tables[("iemocap", "dai-iemocap")]
    frame = table.frame
    assert list(frame.columns) == ["source", "model", "data", "protocol", "seeds",
                                   *[c.capitalize() for c in IEMOCAP_CLASSES], "Avg", "citation"]
    assert (frame["protocol"] == "dai-iemocap").all()
    sources = frame["source"].tolist()
    assert sources[0] == "published" and sources[-1] == "this package"
    assert sources == sorted(sources)  # every published row above every row of ours
    ours = frame[frame["source"] == "this package"]
    assert len(ours) == 1 and ours.iloc[0]["seeds"] == "0,1,2" and ours.iloc[0]["data"] == "synthetic-iemocap"
    assert table.classes == IEMOCAP_CLASSES and table.caption.startswith("IEMOCAP test results, protocol dai-iemocap")
    assert "(ACC / F1 per class, x100)" in table.caption


def test_cells_are_mean_and_sample_std_over_seeds_in_display_units() -> None:
    records = [classification_record(s) for s in (0, 1, 2)]
    f1 = [r["metrics"]["dai-iemocap"]["test"]["average"]["f1"] for r in records]
    acc = [r["metrics"]["dai-iemocap"]["test"]["average"]["acc"] for r in records]
    table = by_key(T.build_tables(records))[("iemocap", "dai-iemocap")]
    cell = table.frame[table.frame["source"] == "this package"].iloc[0]["Avg"]
    expected = (f"{100 * np.mean(acc):.1f}±{100 * np.std(acc, ddof=1):.1f} / "
                f"{100 * np.mean(f1):.1f}±{100 * np.std(f1, ddof=1):.1f}")
    assert cell == expected
    one = by_key(T.build_tables(records[:1]))[("iemocap", "dai-iemocap")]
    assert "±" not in one.frame[one.frame["source"] == "this package"].iloc[0]["Avg"]  # no std for one seed


def test_format_cell() -> None:
    assert T.format_cell(0.5, 0.01, 3, 100) == "50.0±1.0"
    assert T.format_cell(0.5, float("nan"), 3, 100) == "50.0"
    assert T.format_cell(0.5, 0.01, 1, 100) == "50.0"
    assert T.format_cell(float("nan"), 0.0, 2, 100) == "n/a"
    assert T.format_cell(0.5, 0.1, 2, 1.0) == "0.5±0.1"


def test_tables_follow_the_dataset_declaration_not_its_name() -> None:
    # A run on a cache whose display name says nothing about the dataset is placed by its dataset_adapter.
    rec = classification_record(0, dataset="my-recordings", adapter="mosei", protocols=("dai-mosei", "e2emal"),
                                classes=("anger", "disgust", "fear", "happiness", "sadness", "surprise"))
    tables = by_key(T.build_tables([rec]))
    frame = tables[("mosei", "dai-mosei")].frame
    assert frame[frame["source"] == "this package"]["data"].tolist() == ["my-recordings"]
    assert "Happiness" in frame.columns and "(WACC / F1 per class, x100)" in tables[("mosei", "dai-mosei")].caption
    # records without a registered dataset are not placed anywhere
    orphan = dict(rec, dataset_adapter=None, dataset="other")
    assert all("other" not in t.frame.get("data", pd.Series(dtype=str)).tolist() for t in T.build_tables([orphan]))


def test_own_data_tables_use_the_records_classes() -> None:
    rec = classification_record(0, dataset="own", adapter="own", classes=("calm", "tense"))
    table = by_key(T.build_tables([rec], datasets=()))[("own", "dai-iemocap")]
    assert table.classes == ("calm", "tense") and list(table.frame["source"]) == ["this package"]
    assert table.caption.startswith("own data (own) test results")


def test_second_protocol_table_only_where_used() -> None:
    records = [classification_record(0)]
    keys = set(by_key(T.build_tables(records)))
    assert ("iemocap", "e2emal") not in keys  # no run selected on it and no published row uses it
    e2e = classification_record(1, model="e2emal", protocols=("e2emal", "dai-iemocap"))
    assert ("iemocap", "e2emal") in set(by_key(T.build_tables(records + [e2e])))


def test_regression_table() -> None:
    records = [regression_record(s) for s in (0, 1)]
    table = by_key(T.build_tables(records))[("sims", "sims")]
    frame = table.frame
    assert list(frame.columns) == ["source", "model", "data", "labels", "protocol", "seeds", "ACC2", "F1", "MAE",
                                   "Corr", "citation"]
    ours = frame[frame["source"] == "this package"].iloc[0]
    assert ours["labels"] == "M,A,T,V" and ours["model"] == "emombt (druw)" and (frame["protocol"] == "sims").all()
    mae = [r["metrics"]["sims"]["test"]["average"]["mae"] for r in records]
    assert ours["MAE"] == f"{100 * np.mean(mae):.1f}±{100 * np.std(mae, ddof=1):.1f}"
    assert table.caption == "CH-SIMS test results (x100; MAE lower is better)"


def test_write_tables(tmp_path) -> None:
    written = T.write_tables(T.build_tables([classification_record(0)]), tmp_path)
    names = {p.name for p in written}
    assert {"iemocap_dai-iemocap.md", "iemocap_dai-iemocap.csv", "iemocap_dai-iemocap.tex"} <= names
    assert pd.read_csv(tmp_path / "iemocap_dai-iemocap.csv")["protocol"].eq("dai-iemocap").all()


@pytest.mark.parametrize("dataset", ["iemocap", "mosei", "sims"])
def test_published_rows_alone(dataset: str) -> None:
    tables = [t for t in T.build_tables([]) if t.dataset == dataset]
    assert tables and all((t.frame["source"] == "published").all() and len(t.frame) for t in tables)
