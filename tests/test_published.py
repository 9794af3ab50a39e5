"""results/published: the papers' numbers parse, cite their source, name a registered protocol and add up."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest

from emolib import registry
from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS
from emolib.metrics import get_protocol

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
META = ["citation", "source", "note"]
CLASS_FILES = {"iemocap.csv": IEMOCAP_CLASSES, "mosei.csv": MOSEI_EMOTIONS}
SIMS_COLUMNS = ["model", "labels", "protocol", "acc2", "f1", "mae", "corr", *META]
# Rows of Dai et al.'s tables and of the khanhnd185/EmoMBT README's own tables (that README reproduces Dai's),
# same models on both datasets.
MODELS = {
    "FE2E", "MESM", "LF-LSTM", "LF-Transformer", "EmoEmbs", "MulT",
    "Audio (unimodal)", "Visual (unimodal)", "Text (unimodal)", "BIMHA", "CMHA", "Le et al. (2023)", "EmoMBT",
}
SIMS_MODELS = {
    "EF-LSTM", "MFN", "MulT", "LF-DNN", "MLF-DNN", "LMF", "MLMF", "TFN", "MTFN", "Self-MM", "Human-MM", "EmoMBT",
}


def _rows(name: str) -> list[dict[str, str]]:
    with open(PUBLISHED / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, strict=True))


def _header(name: str) -> list[str]:
    with open(PUBLISHED / name, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def _assert_cited(name: str, rows: list[dict[str, str]], task: str) -> None:
    registered = set(registry.names("protocol"))
    for i, row in enumerate(rows, start=2):
        where = f"{name}: line {i} ({row['model']})"
        assert row["citation"].strip(), f"{where}: no citation"
        assert row["source"].strip(), f"{where}: no source"
        assert row["protocol"] in registered, f"{where}: protocol {row['protocol']!r} is not registered"
        assert get_protocol(row["protocol"]).task == task, f"{where}: protocol task is not {task}"


@pytest.mark.parametrize("name", sorted(CLASS_FILES))
def test_classification_tables(name: str) -> None:
    classes = list(CLASS_FILES[name])
    assert _header(name) == ["model", "protocol", "metric", *classes, "avg", *META]
    rows = _rows(name)
    _assert_cited(name, rows, "multilabel")
    assert pd.read_csv(PUBLISHED / name).shape == (len(rows), len(classes) + 7)
    # one row per (model, metric), and every model has its accuracy and its F1 row
    keys = [(r["model"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert {r["model"] for r in rows} == MODELS
    for model in MODELS:
        assert sorted(m for mod, m in keys if mod == model) in (["acc", "f1"], ["f1", "wacc"])
    for i, row in enumerate(rows, start=2):
        where = f"{name}: line {i} ({row['model']} {row['metric']})"
        assert row["metric"] in get_protocol(row["protocol"]).metrics, f"{where}: metric not in its protocol"
        for col in [*classes, "avg"]:
            # as printed: one decimal, percentages
            assert re.fullmatch(r"\d{1,3}\.\d", row[col]), f"{where}: {col}={row[col]!r} is not as printed"
            assert 0.0 <= float(row[col]) <= 100.0, f"{where}: {col} out of range"
        mean = sum(float(row[c]) for c in classes) / len(classes)
        diff = abs(float(row["avg"]) - mean)
        if diff > 0.05 + 1e-9:
            # Rounding six values and their average to 0.1 moves them by up to 0.1; beyond that is a typo.
            assert "avg" in row["note"], f"{where}: avg {row['avg']} vs mean {mean:.3f}, unexplained in note"
            # Beyond rounding only where the source itself is inconsistent: kept as printed, flagged in the note.
            assert diff <= 0.1 + 1e-9 or "inconsistent" in row["note"], (
                f"{where}: avg {row['avg']} vs mean {mean:.3f} is more than rounding")


def test_known_values_as_printed() -> None:
    iemocap = {(r["model"], r["metric"]): r for r in _rows("iemocap.csv")}
    assert (iemocap[("FE2E", "acc")]["avg"], iemocap[("FE2E", "f1")]["avg"]) == ("85.7", "57.1")
    assert "84.53/58.75" in iemocap[("FE2E", "acc")]["note"]
    assert iemocap[("EmoMBT", "f1")]["hap"] == "55.5" and iemocap[("EmoMBT", "acc")]["avg"] == "86.6"
    assert all(r["protocol"] == "dai-iemocap" for r in iemocap.values())
    mosei = {(r["model"], r["metric"]): r for r in _rows("mosei.csv")}
    assert mosei[("EmoMBT", "wacc")]["avg"] == "74.3" and mosei[("MESM", "f1")]["fear"] == "28.9"
    assert all(r["protocol"] == "dai-mosei" for r in mosei.values())
    for model in ("Audio (unimodal)", "Visual (unimodal)", "Text (unimodal)", "EmoMBT"):
        assert "plain accuracy" in mosei[(model, "wacc")]["note"]


def test_sims_table() -> None:
    assert _header("sims.csv") == SIMS_COLUMNS
    rows = _rows("sims.csv")
    _assert_cited("sims.csv", rows, "regression")
    assert pd.read_csv(PUBLISHED / "sims.csv").shape == (len(rows), len(SIMS_COLUMNS))
    assert [r["model"] for r in rows if r["model"] in SIMS_MODELS] == [r["model"] for r in rows]
    assert {r["model"] for r in rows} == SIMS_MODELS and len(rows) == len(SIMS_MODELS)
    limits = {"acc2": (0, 100), "f1": (0, 100), "mae": (0, 200), "corr": (-100, 100)}
    for i, row in enumerate(rows, start=2):
        where = f"sims.csv: line {i} ({row['model']})"
        assert row["labels"] in ("M", "M,A,T,V"), f"{where}: labels {row['labels']!r}"
        for col, (lo, hi) in limits.items():
            assert re.fullmatch(r"-?\d{1,3}\.\d\d", row[col]), f"{where}: {col}={row[col]!r} is not as printed"
            assert lo <= float(row[col]) <= hi, f"{where}: {col} out of range"
    ours = next(r for r in rows if r["model"] == "EmoMBT")
    assert [ours[c] for c in ("acc2", "f1", "mae", "corr")] == ["83.37", "83.15", "37.61", "68.04"]
    assert next(r for r in rows if r["model"] == "EF-LSTM")["corr"] == "-4.39"


def test_readme_documents_files_columns_and_citations() -> None:
    text = (PUBLISHED / "README.md").read_text(encoding="utf-8")
    for name in [*CLASS_FILES, "sims.csv"]:
        assert f"`{name}`" in text
    for col in ["model", "protocol", "metric", "avg", *META, "labels", "acc2", "mae", "corr"]:
        assert f"`{col}`" in text
    citations = {r["citation"] for name in [*CLASS_FILES, "sims.csv"] for r in _rows(name)}
    for citation in citations:
        # every short citation resolves to a full reference in the README
        for part in citation.split("; "):
            short = part.split(", citing")[0]
            assert f"**{short}**" in text, f"README.md has no full reference for {short!r}"
