"""Comparison tables in the papers' layout, built only from run records and ``results/published/``.

Classification datasets (IEMOCAP, CMU-MOSEI, own multi-label data): one row per model, one column per class
holding the protocol's two headline metrics ("Acc / F1", "WAcc / F1") and an "Avg" column. Regression (CH-SIMS):
one column per headline metric (Acc2, F1, MAE, Corr). Published rows come first, then "this package" rows, each
labelled with its data, protocol and seeds; our cells are "mean ± std" over seeds (std left out for a single
seed). Every number is read from a file; nothing is typed here.

What a table shows comes from the declarations it belongs to: the dataset's title, classes and protocols from
its adapter (``emolib.data.adapter.Adapter``, found through each record's ``dataset_adapter``), the metric pair
and the display scale (x100) from the protocol (``emolib.metrics.Protocol``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from emolib.data.adapter import get_adapter
from emolib.io import write_text
from emolib.metrics import get_protocol

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "results" / "published"


def load_published(dataset: str, folder: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """The published rows of a dataset (``<folder>/<dataset>.csv``); empty when none are kept."""
    path = folder / f"{dataset}.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["model", "protocol", "metric", "citation"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def format_cell(mean: float | None, std: float | None, n: int, scale: float) -> str:
    """"mean±std" in display units (std only for more than one seed); "n/a" for an undefined mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{scale * mean:.1f}"
    if n > 1 and std is not None and not math.isnan(std):
        text += f"±{scale * std:.1f}"
    return text


def metric_label(metric: str) -> str:
    # abbreviations in capitals (ACC, WACC, F1, WA, UA, MAE), words capitalised
    return {"corr": "Corr", "recall": "Recall", "precision": "Precision"}.get(metric, metric.upper())


def markdown_table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row.tolist()) + " |")
    return "\n".join(lines)


def _run_label(model: str, variant: str) -> str:
    return model if variant in ("", "default") else f"{model} ({variant})"


@dataclass
class Table:
    dataset: str  # the registered dataset (adapter) name
    protocol: str
    frame: pd.DataFrame
    caption: str
    classes: tuple[str, ...] = field(default_factory=tuple)  # per-class columns (classification tables)
    # The deviation card of the rows shown (emolib.deviations): one row per model and parameter
    card: pd.DataFrame = field(default_factory=pd.DataFrame)

    def markdown(self) -> str:
        text = f"**{self.caption}**\n\n" + markdown_table(self.frame) + "\n"
        if len(self.card):
            text += ("\n*Deviation card* (differences between paper, released code and emolib for the rows of this "
                     "package above; `default` is the side the default follows, `value` what these runs used)\n\n"
                     + markdown_table(self.card) + "\n")
        return text

    def latex(self) -> str:
        body = self.frame.to_latex(index=False, escape=True, column_format="l" * len(self.frame.columns))
        return f"% {self.caption}\n{body}"


def _ours(agg: pd.DataFrame, datasets: Sequence[str], protocol: str):
    rows = agg[(agg["protocol"] == protocol) & (agg["split"] == "test") & agg["dataset"].isin(list(datasets))]
    return rows.groupby(["model", "variant", "dataset"], sort=True)


def _seeds(part: pd.DataFrame) -> str:
    text = ",".join(map(str, sorted({s for v in part["seeds"] for s in v})))
    folds = sorted({f for v in part["folds"] for f in v}) if "folds" in part else []
    return f"{text} x {len(folds)} folds" if folds else text


def classification_table(dataset: str, agg: pd.DataFrame, protocol: str, *, classes: Sequence[str],
                         datasets: Sequence[str], published: pd.DataFrame | None = None, title: str = "",
                         name: str = "") -> Table:
    """Published rows (same protocol) above our rows; per-class "first / second" cells and the average (one
    column per metric where the protocol names ``average_headline``, e.g. WA, UA, F1).

    ``datasets``: the record dataset names (e.g. ``synthetic-iemocap``) that belong to ``dataset``; ``name``: the
    table's name when it is not the dataset's (own data: one table per CSV).
    """
    proto = get_protocol(protocol)
    first, second = proto.headline[:2]
    averages = proto.average_headline
    title = title or get_adapter(dataset).title
    rows: list[dict[str, Any]] = []
    pub = published if published is not None else load_published(dataset)
    pub = pub[pub["protocol"] == protocol]
    for model in dict.fromkeys(pub["model"]):
        part = pub[pub["model"] == model].set_index("metric")
        if first not in part.index or second not in part.index:
            continue
        row = {"source": "published", "model": model, "data": title, "protocol": protocol, "seeds": "-"}
        for c in (*classes, "avg"):
            row[c.capitalize() if c != "avg" else "Avg"] = f"{part.loc[first, c]} / {part.loc[second, c]}"
        row["citation"] = part.loc[first, "citation"]
        rows.append(row)
    for (model, variant, data), part in _ours(agg, datasets, protocol):
        cell = {(r["class"], r["metric"]): r for _, r in part.iterrows()}
        row = {"source": "this package", "model": _run_label(model, variant), "data": data, "protocol": protocol,
               "seeds": _seeds(part)}
        for c in (*classes, *(() if averages else ("avg",))):
            a, f = cell.get((c, first)), cell.get((c, second))
            key = c.capitalize() if c != "avg" else "Avg"
            row[key] = (f"{format_cell(a['mean'], a['std'], a['n_seeds'], proto.display_scale)} / "
                        f"{format_cell(f['mean'], f['std'], f['n_seeds'], proto.display_scale)}"
                        if a is not None and f is not None else "n/a")
        for m in averages or ():
            v = cell.get(("avg", m))
            row[metric_label(m)] = ("n/a" if v is None
                                    else format_cell(v["mean"], v["std"], v["n_seeds"], proto.display_scale))
        row["citation"] = "run records"
        rows.append(row)
    caption = (f"{title} test results, protocol {protocol} ({metric_label(first)} / {metric_label(second)} per "
               f"class" + (f"; {', '.join(metric_label(m) for m in averages)} over classes" if averages else "")
               + f", x{proto.display_scale:g})")
    return Table(name or dataset, protocol, pd.DataFrame(rows), caption, tuple(classes))


def regression_table(dataset: str, agg: pd.DataFrame, protocol: str, *, datasets: Sequence[str],
                     published: pd.DataFrame | None = None,
                     labels_used: Mapping[tuple[str, str, str], str] | None = None) -> Table:
    """One column per headline metric; ``labels_used``: the labels a run trained on ("M", or "M,A,T,V" for
    multitask runs), keyed by (model, variant, dataset)."""
    proto = get_protocol(protocol)
    title = get_adapter(dataset).title
    labels_used = labels_used or {}
    rows: list[dict[str, Any]] = []
    pub = published if published is not None else load_published(dataset)
    for _, p in pub[pub["protocol"] == protocol].iterrows():
        rows.append({"source": "published", "model": p["model"], "data": title, "labels": p.get("labels", ""),
                     "protocol": p["protocol"], "seeds": "-", **{metric_label(m): p[m] for m in proto.headline},
                     "citation": p["citation"]})
    for (model, variant, data), part in _ours(agg, datasets, protocol):
        part = part[part["class"] == "avg"]
        cell = {r["metric"]: r for _, r in part.iterrows()}
        row = {"source": "this package", "model": _run_label(model, variant), "data": data,
               "labels": labels_used.get((model, variant, data), "M"), "protocol": protocol, "seeds": _seeds(part)}
        for m in proto.headline:
            c = cell.get(m)
            row[metric_label(m)] = (format_cell(c["mean"], c["std"], c["n_seeds"], proto.display_scale)
                                    if c is not None else "n/a")
        row["citation"] = "run records"
        rows.append(row)
    lower = [metric_label(m) for m in proto.headline if m in proto.lower_is_better]
    note = f"; {', '.join(lower)} lower is better" if lower else ""
    return Table(dataset, protocol, pd.DataFrame(rows), f"{title} test results (x{proto.display_scale:g}{note})")


def deviation_card(dataset: str, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The deviation card of ``records`` (the runs shown in one table): the dataset's entries once, then each
    model's, with the value(s) the runs used (several values are listed, comma-separated)."""
    import json

    from emolib.deviations import card

    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    models = list(dict.fromkeys(r["model"] for r in records))
    for model in models:
        runs = [r for r in records if r["model"] == model]
        for d in card(model, dataset):
            owner = "(data)" if d.scope in ("prepare", "data") else model
            if (owner, d.parameter) in seen:
                continue
            seen.add((owner, d.parameter))
            pool = runs if owner == model else records
            values = sorted({json.dumps(r.get("deviations", {}).get(d.parameter)) for r in pool})
            rows.append({"model": owner, "parameter": d.parameter, "what differs": d.what, "default": d.default,
                         "value": ", ".join(values), "switch": d.values})
    rows.sort(key=lambda r: (r["model"] != "(data)", r["model"]))
    return pd.DataFrame(rows, columns=["model", "parameter", "what differs", "default", "value", "switch"])


def _table_protocols(declared: Sequence[str], primary_of_runs: set[str], published: pd.DataFrame) -> list[str]:
    """The primary protocol, then every other declared one that a run selected on or a published row uses."""
    used = primary_of_runs | set(published.get("protocol", pd.Series(dtype=str)))
    return [declared[0]] + [p for p in declared[1:] if p in used]


REHEARSAL = "REHEARSAL (synthetic release, two short epochs, stand-in weights; not results): "


def build_tables(records: Sequence[dict[str, Any]], *, published_dir: Path = PUBLISHED_DIR,
                 datasets: Sequence[str] = ("iemocap", "mosei", "sims"), rehearsal: bool = False) -> list[Table]:
    """Every table the records and published files support.

    One dataset per registered adapter named by a record's ``dataset_adapter``, plus ``datasets`` (the papers'
    tables, shown with their published rows even before any run). Records that name no registered dataset
    cannot be placed in a table and are left out. ``rehearsal``: every caption is headed REHEARSAL and no
    published row is shown (a rehearsal's numbers must never stand beside the papers').
    """
    from emolib.data.adapter import Adapter
    from emolib.records import aggregate

    agg = aggregate(records)
    members: dict[str, list[str]] = {name: [] for name in datasets}
    selected: dict[str, set[str]] = {name: set() for name in datasets}
    classes_of: dict[str, tuple[str, ...]] = {}
    tasks: dict[str, str] = {}
    for r in records:
        name = r.get("dataset_adapter")
        if not name:
            continue
        members.setdefault(name, [])
        if r["dataset"] not in members[name]:
            members[name].append(r["dataset"])
        selected.setdefault(name, set()).add(r["protocol"])
        classes_of.setdefault(name, tuple(r["class_names"]))
        tasks.setdefault(name, get_protocol(r["protocol"]).task)
        # own data: each CSV has its own classes and task, so each gets its own table, keyed by its name
        selected.setdefault(r["dataset"], set()).add(r["protocol"])
        classes_of.setdefault(r["dataset"], tuple(r["class_names"]))
        tasks.setdefault(r["dataset"], get_protocol(r["protocol"]).task)
    tables = []
    for name, record_datasets, table_name in _table_groups(members):
        adapter: Adapter = get_adapter(name)
        task = tasks.get(table_name or name, tasks.get(name, adapter.task))
        declared = [u.protocol for u in adapter.protocols_for(task)]
        published = load_published(name, published_dir)
        if rehearsal:
            published = published.iloc[0:0]
        classes = tuple(getattr(adapter, "label_names", ()) or classes_of.get(table_name or name, ()))
        for protocol in _table_protocols(declared, selected.get(table_name or name, set()), published):
            shown = [r for r in records if r.get("dataset_adapter") == name and protocol in r["metrics"]
                     and r["dataset"] in record_datasets]
            if get_protocol(protocol).task == "regression":
                labels_used = {(r["model"], r["variant"], r["dataset"]): r.get("extra", {}).get("sims_labels", "M")
                               for r in records if r.get("dataset_adapter") == name}
                table = regression_table(name, agg, protocol, datasets=record_datasets, published=published,
                                         labels_used=labels_used)
            else:
                table = classification_table(name, agg, protocol, classes=classes, datasets=record_datasets,
                                             published=published, name=table_name,
                                             title=f"{adapter.title} ({table_name})" if table_name else "")
            table.card = deviation_card(name, shown)
            if rehearsal:
                table.caption = REHEARSAL + table.caption
            tables.append(table)
    return tables


def _table_groups(members: Mapping[str, list[str]]) -> list[tuple[str, list[str], str]]:
    """(adapter, record datasets, table name): one table per dataset whose adapter fixes its classes; own data
    (no fixed classes) one per record dataset, named after it."""
    groups = []
    for name, record_datasets in members.items():
        if getattr(get_adapter(name), "label_names", ()) or not record_datasets:
            groups.append((name, record_datasets, ""))
        else:
            groups += [(name, [d], d) for d in record_datasets]
    return groups


def write_tables(tables: Sequence[Table], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for t in tables:
        stem = f"{t.dataset}_{t.protocol}"
        files = [(".md", t.markdown()), (".tex", t.latex()), (".csv", t.frame.to_csv(index=False))]
        if len(t.card):
            files.append(("_deviations.csv", t.card.to_csv(index=False)))
        for suffix, text in files:
            path = out_dir / f"{stem}{suffix}"
            write_text(path, text)
            written.append(path)
    return written
