"""Tables, figures and the computed findings of notebook 07, from the rows of ``robustness.evaluate_runs`` and the
efficiency measurements. Every number comes from those rows; nothing is typed here.

Files (under ``results/<profile>/``):

* ``tables/robustness_<dataset>_<protocol>.{md,csv,tex}``: one row per run, the clean score and each corruption at
  severities 1 / 2 / 3;
* ``tables/missing_modalities_<dataset>_<protocol>.{md,csv,tex}``: one row per run, the clean score and each
  modality and pair removed;
* ``tables/efficiency_runs.{md,csv,tex}``: every trained checkpoint: parameters, FLOPs, latency, memory and raw
  video to emotions (its clean score is in the robustness tables and the accuracy-latency figure);
* ``tables/efficiency_models.{md,csv,tex}``: every registered model in the configurations measured;
* ``figures/robustness_<dataset>.png``, ``figures/missing_modalities_<dataset>.png``,
  ``figures/accuracy_latency.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emolib.evaluate.corruptions import CORRUPTIONS, SEVERITIES, missing_conditions
from emolib.evaluate.robustness import headline_key, missing_name
from emolib.io import write_text
from emolib.metrics import get_protocol
from emolib.tables import markdown_table, metric_label

NOT_READ = "—"  # a condition that only touches an input the model does not read


def dataset_protocol(frame: pd.DataFrame, dataset: str) -> str:
    """The protocol the tables of one dataset show: the primary protocol most of its runs were selected on."""
    part = frame[frame["dataset"] == dataset]
    return str(part.drop_duplicates("run")["primary"].mode().iloc[0])


def _value(frame: pd.DataFrame, protocol: str) -> pd.Series:
    key = headline_key(protocol)
    proto = get_protocol(protocol)
    return frame[key].map(lambda v: proto.scaled(key, v) if v is not None and not _nan(v) else float("nan"))


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def scored(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each dataset's table protocol with ``value`` (its headline metric, display units) and ``drop``
    (clean minus condition, positive = worse; for a lower-is-better metric the sign is turned)."""
    parts = []
    for dataset in frame["dataset"].unique():
        protocol = dataset_protocol(frame, dataset)
        part = frame[(frame["dataset"] == dataset) & (frame["protocol"] == protocol)].copy()
        part["value"] = _value(part, protocol)
        clean = part[part["condition"] == "clean"].set_index("run")["value"]
        sign = -1.0 if headline_key(protocol) in get_protocol(protocol).lower_is_better else 1.0
        part["drop"] = sign * (part["run"].map(clean) - part["value"])
        part["metric"] = metric_label(headline_key(protocol))
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else frame.assign(value=[], drop=[], metric=[])


def _fmt(v: float) -> str:
    return "n/a" if _nan(v) else f"{v:.1f}"


class ReportTable:
    """A small table with md/csv/tex writers (the comparison tables' format)."""

    def __init__(self, stem: str, frame: pd.DataFrame, caption: str, note: str = "") -> None:
        self.stem, self.frame, self.caption, self.note = stem, frame, caption, note

    def markdown(self) -> str:
        return f"**{self.caption}**\n\n" + markdown_table(self.frame) + "\n" + (f"\n{self.note}\n" if self.note else "")

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        body = self.frame.to_latex(index=False, escape=True, column_format="l" * len(self.frame.columns))
        files = [(".md", self.markdown()), (".csv", self.frame.to_csv(index=False)),
                 (".tex", f"% {self.caption}\n" + (f"% {self.note}\n" if self.note else "") + body)]
        paths = []
        for suffix, text in files:
            path = out / f"{self.stem}{suffix}"
            write_text(path, text)
            paths.append(path)
        return paths


def table_stem(frame: pd.DataFrame, dataset: str) -> str:
    """The registered dataset name of a record dataset (``synthetic-iemocap`` -> ``iemocap``) for file names."""
    adapter = frame.loc[frame["dataset"] == dataset, "adapter"].dropna() if "adapter" in frame else pd.Series([])
    return str(adapter.iloc[0]) if len(adapter) else dataset


def _run_rows(part: pd.DataFrame, dataset: str, cells: Callable[[pd.DataFrame], dict[str, str]]) -> list[dict]:
    """One row per run of ``part``: model, data, seed, the clean score, then ``cells`` of the run's conditions."""
    rows = []
    for run, r in part.groupby("run", sort=False):
        rows.append({"model": run, "data": dataset, "seed": int(r["seed"].iloc[0]),
                     "clean": _fmt(r.loc[r["condition"] == "clean", "value"].iloc[0]), **cells(r)})
    return rows


def _corruption_cells(r: pd.DataFrame) -> dict[str, str]:
    """Each corruption's "s1 / s2 / s3" (or NOT_READ when the model does not read that input)."""
    cells = {}
    for name in CORRUPTIONS:
        c = r[r["condition"] == name].sort_values("severity")
        if len(c):
            cells[name] = NOT_READ if c["reused_clean"].all() else " / ".join(_fmt(v) for v in c["value"])
    return cells


def _missing_cells(r: pd.DataFrame) -> dict[str, str]:
    cells = {}
    for name in MISSING:
        c = r[r["condition"] == name]
        if len(c):
            cells[name] = NOT_READ if bool(c["reused_clean"].iloc[0]) else _fmt(c["value"].iloc[0])
    return cells


def robustness_tables(frame: pd.DataFrame) -> list[ReportTable]:
    """Per dataset: runs x (clean, each corruption's "s1 / s2 / s3") in the headline metric."""
    s = scored(frame)
    tables = []
    for dataset in s["dataset"].unique():
        part = s[s["dataset"] == dataset]
        protocol = part["protocol"].iloc[0]
        rows = _run_rows(part, dataset, _corruption_cells)
        sevs = _severities(part)
        levels = "; ".join(f"{n}: {', '.join(c.label(k) for k in sevs)}" for n, c in CORRUPTIONS.items()
                           if n in part["condition"].values)
        metric = metric_label(headline_key(protocol))
        caption = (f"{dataset}: test {metric} (x100, protocol {protocol}, the run's valid thresholds) under corrupted "
                   f"raw inputs, severit{'y' if len(sevs) == 1 else 'ies'} {' / '.join(map(str, sevs))}; "
                   f"{NOT_READ}: the model does not read that input")
        stem = f"robustness_{table_stem(frame, dataset)}_{protocol}"
        tables.append(ReportTable(stem, pd.DataFrame(rows), caption, f"Severities: {levels}."))
    return tables


def _severities(part: pd.DataFrame) -> list[int]:
    """The corruption severities evaluated in ``part`` (all of ``SEVERITIES`` when it holds no corruption)."""
    found = sorted({int(v) for v in part.loc[part["kind"] == "corruption", "severity"]})
    return found or list(SEVERITIES)


MISSING = [missing_name(r) for r in missing_conditions()]


def missing_tables(frame: pd.DataFrame) -> list[ReportTable]:
    """Per dataset: runs x (clean, each modality or pair removed) in the headline metric."""
    s = scored(frame)
    tables = []
    for dataset in s["dataset"].unique():
        part = s[s["dataset"] == dataset]
        protocol = part["protocol"].iloc[0]
        rows = _run_rows(part, dataset, _missing_cells)
        metric = metric_label(headline_key(protocol))
        caption = (f"{dataset}: test {metric} (x100, protocol {protocol}) with modalities removed"
                   f" (-audio: no audio, -audio-text: neither audio nor text, ...); {NOT_READ}: the model "
                   "does not read the removed inputs, so its score is the clean one")
        tables.append(ReportTable(f"missing_modalities_{table_stem(frame, dataset)}_{protocol}", pd.DataFrame(rows),
                                  caption))
    return tables


# ---------------------------------------------------------------------------------------------- figures


def robustness_figure(frame: pd.DataFrame, dataset: str):
    """One panel per corruption: the headline metric against severity, one line per run that reads the input."""
    import matplotlib.pyplot as plt

    s = scored(frame)
    part = s[s["dataset"] == dataset]
    names = [n for n in CORRUPTIONS if n in part["condition"].values]
    sevs = _severities(part)
    cols = min(4, max(1, len(names)))
    rows = int(math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    # one colour per run in every panel (each axis would otherwise restart the colour cycle)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {run: palette[i % len(palette)] for i, run in enumerate(dict.fromkeys(part["run"]))}
    for ax, name in zip(axes.flat, names):
        for run, r in part.groupby("run", sort=False):
            c = r[r["condition"] == name].sort_values("severity")
            if not len(c) or c["reused_clean"].all():
                continue
            clean = r.loc[r["condition"] == "clean", "value"].iloc[0]
            ax.plot([0, *c["severity"]], [clean, *c["value"]], marker="o", ms=3, label=run, color=colour[run])
        corr = CORRUPTIONS[name]
        ax.set_title(name, fontsize=9)
        ax.set_xticks([0, *sevs], ["clean", *(corr.label(k) for k in sevs)], fontsize=6, rotation=20)
    axes.flat[0].set_ylabel(f"{part['metric'].iloc[0]} (x100)")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle(f"{dataset}: robustness to corrupted raw inputs (protocol {part['protocol'].iloc[0]})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))  # the legend sits in the right margin, off the panels
    return fig


def missing_heatmap(frame: pd.DataFrame, dataset: str):
    """Model x removed modality: the drop of the headline metric from clean (points x100; "n.r." not read)."""
    import matplotlib.pyplot as plt

    s = scored(frame)
    part = s[(s["dataset"] == dataset) & (s["kind"] == "missing")]
    runs = list(dict.fromkeys(part["run"]))
    cols = [c for c in MISSING if c in part["condition"].values]
    grid = np.full((len(runs), len(cols)), np.nan)
    unread = np.zeros_like(grid, dtype=bool)
    for i, run in enumerate(runs):
        for j, cond in enumerate(cols):
            row = part[(part["run"] == run) & (part["condition"] == cond)]
            if len(row):
                grid[i, j] = row["drop"].iloc[0]
                unread[i, j] = bool(row["reused_clean"].iloc[0])
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.45 * len(runs) + 1.6))
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(runs)):
        for j in range(len(cols)):
            ax.text(j, i, "n.r." if unread[i, j] else _fmt(grid[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=30, fontsize=8)
    ax.set_yticks(range(len(runs)), runs, fontsize=8)
    fig.colorbar(image, ax=ax, label=f"drop of {part['metric'].iloc[0] if len(part) else ''} from clean")
    ax.set_title(f"{dataset}: modalities removed (positive: worse than clean)", fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_latency_figure(points: pd.DataFrame):
    """Clean score against CPU latency per utterance; marker area proportional to the parameter count; one panel
    per dataset. ``points``: run, dataset, metric, value, ms_per_utterance, params."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    datasets = list(dict.fromkeys(points["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    biggest = float(points["params"].max()) if len(points) else 1.0
    for ax, dataset in zip(axes.flat, datasets):
        part = points[points["dataset"] == dataset]
        ax.scatter(part["ms_per_utterance"], part["value"], s=30 + 600 * part["params"] / biggest, alpha=0.6)
        for _, p in part.iterrows():
            ax.annotate(p["run"], (p["ms_per_utterance"], p["value"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ms = part["ms_per_utterance"]
        log = bool(len(ms)) and float(ms.max()) > 10 * float(ms.min())  # a log axis only over a decade or more
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"CPU latency per utterance, batch 1 (ms{', log' if log else ''})")
        ax.set_ylabel(f"clean {part['metric'].iloc[0]} (x100)")
        ax.set_title(dataset, fontsize=9)
    fig.suptitle("accuracy vs latency (marker area ~ parameters)", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- findings


def findings(frame: pd.DataFrame, modalities: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Sentences on what the robustness numbers show, each computed from them: which input each fusion model leans
    on (the single removal that costs most), and which run holds up best and worst under each corruption."""
    s = scored(frame)
    out = []
    for (dataset, run), r in s.groupby(["dataset", "run"], sort=False):
        single = r[(r["kind"] == "missing") & (r["condition"].isin([missing_name((m,)) for m in
                                                                    ("audio", "visual", "text")]))]
        read = single[~single["reused_clean"].astype(bool)]
        if len(read) < 2:
            continue
        read = read.sort_values("drop", ascending=False)
        top = read.iloc[0]
        if not top["drop"] > 0:
            out.append(f"**{run}** on {dataset}: no single removed modality lowers its score (largest change "
                       f"{top['drop']:+.1f} {top['metric']} points).")
            continue
        rest = ", ".join(f"{c.removeprefix('-')}: {d:+.1f}" for c, d in zip(read["condition"].iloc[1:],
                                                                           read["drop"].iloc[1:]))
        out.append(f"**{run}** on {dataset} leans on **{top['condition'].removeprefix('-')}**: removing it costs "
                   f"{top['drop']:.1f} {top['metric']} points (other removals: {rest}).")
    worst = s[(s["kind"] == "corruption") & (s["severity"] == max(_severities(s))) & ~s["reused_clean"].astype(bool)]
    for (dataset, name), r in worst.groupby(["dataset", "condition"], sort=False):
        if len(r) < 2:
            continue
        r = r.sort_values("drop")
        best, bad = r.iloc[0], r.iloc[-1]
        if best["drop"] == bad["drop"]:
            out.append(f"{dataset}, {name} at its strongest ({best['level']}): every run that reads the input "
                       f"changes by {best['drop']:+.1f} points.")
            continue
        out.append(f"{dataset}, {name} at its strongest ({best['level']}): {best['run']} holds up best "
                   f"({best['drop']:+.1f} points), {bad['run']} loses most ({bad['drop']:+.1f}).")
    return out


def clean_summary(frame: pd.DataFrame) -> str:
    """Whether the clean condition reproduced every run record's test score."""
    clean = frame[frame["condition"] == "clean"].drop_duplicates(["run", "dataset", "seed"])
    bad = clean[clean["matches_record"] != True]  # noqa: E712 - None (not checked) counts as not matching
    if not len(bad):
        return (f"The clean condition, recomputed through the same code path as every corruption, reproduces the "
                f"test score of all {len(clean)} run records exactly.")
    return "Clean scores that differ from their run records: " + "; ".join(
        f"{r['run']} on {r['dataset']}: {r['mismatch']}" for _, r in bad.iterrows())


def accuracy_latency_points(frame: pd.DataFrame, efficiency: pd.DataFrame) -> pd.DataFrame:
    """One point per trained run: its clean headline score and its latency and parameters (``run_efficiency``)."""
    s = scored(frame)
    clean = s[s["condition"] == "clean"][["run", "dataset", "seed", "metric", "value"]]
    eff = efficiency[["run", "dataset", "seed", "ms_per_utterance", "params"]]
    return clean.merge(eff, on=["run", "dataset", "seed"], how="inner")


def efficiency_findings(points: pd.DataFrame) -> list[str]:
    """Per dataset: the fastest and the most accurate run, and the runs no other run beats on both (the Pareto
    front of score against latency)."""
    out = []
    for dataset, part in points.groupby("dataset", sort=False):
        fastest = part.loc[part["ms_per_utterance"].idxmin()]
        best = part.loc[part["value"].idxmax()]
        front = [r["run"] for _, r in part.iterrows()
                 if not ((part["ms_per_utterance"] <= r["ms_per_utterance"]) & (part["value"] >= r["value"])
                         & ((part["ms_per_utterance"] < r["ms_per_utterance"]) | (part["value"] > r["value"]))).any()]
        out.append(f"{dataset}: fastest {fastest['run']} ({fastest['ms_per_utterance']:.1f} ms per utterance, "
                   f"{fastest['params'] / 1e6:.2f} M parameters), highest clean {best['metric']} {best['run']} "
                   f"({best['value']:.1f}, {best['ms_per_utterance']:.1f} ms); not beaten on both: {', '.join(front)}.")
    return out
