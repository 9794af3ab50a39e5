"""Views of a processed cache for the data notebook: face crops, a spectrogram, label counts, the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emolib.data.cache import SAMPLE_RATE, Cache


def label_counts(cache: Cache) -> pd.DataFrame:
    """Per split: utterances and, for classification, positives per class; for regression, target means."""
    rows = []
    for split in ("train", "valid", "test"):
        metas = [cache.meta(u) for u in cache.uids(split)]
        if not metas:
            continue
        labels = np.asarray([m["labels"] for m in metas], dtype=np.float32)
        row: dict[str, Any] = {"split": split, "utterances": len(metas)}
        if cache.task == "regression":
            row.update({f"mean {n}": float(labels[:, i].mean()) for i, n in enumerate(cache.label_names)})
            row["M > 0"] = int((labels[:, 0] > 0).sum())
        else:
            row.update({n: int(labels[:, i].sum()) for i, n in enumerate(cache.label_names)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")


def preprocessing_report(cache: Cache) -> pd.DataFrame:
    """The provenance's headline numbers as a two-column table."""
    p = cache.provenance
    fd = p.get("face_detection", {})
    rows = [
        ("utterances", p.get("n_utterances")),
        ("sampled frames", fd.get("frames")),
        ("frames with a face", f"{fd.get('frames_with_face')} ({100 * fd.get('face_rate', 0):.1f}%)"),
        ("fallback crops", fd.get("fallback_frames")),
        ("utterances without any face", fd.get("utterances_without_face")),
        ("skipped utterances", len(p.get("skipped", []))),
        ("parser problems", len(p.get("problems", []))),
        ("img_interval (ms)", p.get("parameters", {}).get("img_interval")),
        ("face size", p.get("parameters", {}).get("face_size")),
    ]
    rows += [(f"fallback: {k}", v) for k, v in p.get("fallbacks", {}).items()]
    rows += [(f"version: {k}", v) for k, v in p.get("versions", {}).items()]
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def face_grid(cache: Cache, n: int = 12, split: str | None = None, columns: int = 6):
    """One sampled face crop per utterance, titled with its label; fallback crops framed in red."""
    import matplotlib.pyplot as plt

    uids = cache.uids(split)[:n]
    rows = max(1, int(np.ceil(len(uids) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, uid in zip(axes.flat, uids):
        rec = cache.load(uid)
        k = len(rec.faces) // 2
        ax.imshow(rec.faces[k])
        ax.set_title(_label_text(cache, rec.labels), fontsize=8)
        if not rec.face_found[k]:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{cache.dataset}: face crops (middle sampled frame of each utterance)")
    fig.tight_layout()
    return fig


def spectrogram_figure(cache: Cache, uid: str | None = None):
    """Waveform and log-mel spectrogram of one utterance, as FE2E's and FV2ES's audio front-end computes it
    (``emolib.models.blocks.MelPieces``: its settings, stated there once; the models compute it inside)."""
    import matplotlib.pyplot as plt
    import torch

    from emolib.models.blocks import MelPieces

    uid = uid or cache.uids()[0]
    rec = cache.load(uid)
    audio = torch.from_numpy(rec.audio_float())
    front_end = MelPieces(sample_rate=SAMPLE_RATE)
    n_mels = front_end.n_mels
    # The front-end's STFT is uncentred: a clip shorter than one window is zero-padded to a window.
    audio = torch.nn.functional.pad(audio, (0, max(0, front_end.n_fft - len(audio))))
    with torch.inference_mode():
        mel = front_end.mel(audio)
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 4.5), gridspec_kw={"height_ratios": [1, 2]})
    t = np.arange(len(audio)) / SAMPLE_RATE
    a.plot(t, audio.numpy(), lw=0.5)
    a.set_xlim(0, t[-1] if len(t) else 1)
    a.set_ylabel("amplitude")
    a.set_title(f"{uid}: {_label_text(cache, rec.labels)}  —  {rec.meta['text'][:70]}")
    b.imshow(10 * np.log10(mel.numpy() + 1e-10), origin="lower", aspect="auto",
             extent=(0, t[-1] if len(t) else 1, 0, n_mels))
    b.set_xlabel("time (s)")
    b.set_ylabel("mel bin")
    fig.tight_layout()
    return fig


def _label_text(cache: Cache, labels: np.ndarray) -> str:
    names = cache.label_names
    if cache.task == "regression":
        return " ".join(f"{n}={v:+.1f}" for n, v in zip(names, labels))
    on = [n for n, v in zip(names, labels) if v > 0.5]
    return ",".join(on) or "none"


def training_curves(records: list[dict], protocol: str | None = None, metric: str | None = None):
    """Train loss and the valid/test headline metric per epoch, one line per run record (seed)."""
    import matplotlib.pyplot as plt

    from emolib.metrics import get_protocol

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for r in records:
        c = r["curves"]
        label = f"{r['model']} {r['dataset']} seed {r['seed']}"
        a.plot(c["epoch"], c["train_loss"], marker=".", label=label)
        proto = get_protocol(protocol or r["protocol"])
        key = metric or proto.headline[-1]
        for split, style in (("valid", "--"), ("test", "-")):
            values = c[split].get(proto.name, {}).get(key)
            if values:  # None: an epoch whose test split was not evaluated (TrainConfig.test_each_epoch)
                b.plot(c["epoch"], [proto.scaled(key, v) if v is not None else float("nan") for v in values], style,
                       marker=".", label=f"{label} {split}")
        b.axvline(r["best_epoch"], color="grey", lw=0.6)
        b.set_ylabel(f"{proto.name} {key} (x{proto.display_scale:g})")
    a.set_xlabel("epoch")
    a.set_ylabel("train loss")
    b.set_xlabel("epoch")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_emotion_bars(table_frame: pd.DataFrame, classes: list[str], title: str, which: int = 1):
    """Bars per emotion for every row of a classification table (``which`` 0: the accuracy-like number,
    1: F1); published rows hatched. Values are parsed back from the table's own cells, which are already in
    the protocol's display units."""
    import matplotlib.pyplot as plt

    # multiclass tables average in separate WA/UA/F1 columns instead of one "Avg" pair
    cols = [c.capitalize() for c in classes] + (["Avg"] if "Avg" in table_frame.columns else [])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols)), 3.6))
    n = len(table_frame)
    width = 0.8 / max(n, 1)
    for i, (_, row) in enumerate(table_frame.iterrows()):
        values = [_cell_value(row[c], which) for c in cols]
        xs = np.arange(len(cols)) + i * width - 0.4 + width / 2
        ax.bar(xs, values, width, label=f"{row['model']} [{row['data']}]",
               hatch="//" if row["source"] == "published" else None, alpha=0.85)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylabel(("accuracy-like" if which == 0 else "F1") + " (table units)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def _cell_value(cell: str, which: int) -> float:
    try:
        return float(str(cell).split("/")[which].split("±")[0])
    except (IndexError, ValueError):
        return float("nan")


def confusion_figure(records: Sequence[dict[str, Any]], protocol: str = "multiclass"):
    """Test confusion matrices of single-label runs (rows: true class, columns: predicted), summed over the seeds
    and folds of each run and shown as row shares; one panel per (run, dataset)."""
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if protocol in r["metrics"] and "confusion" in r["metrics"][protocol]["test"]:
            run = r["model"] + ("" if r["variant"] in ("", "default") else f" ({r['variant']})")
            groups.setdefault((run, r["dataset"]), []).append(r)
    if not groups:
        raise ValueError(f"no run record has a {protocol} confusion matrix")
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
    for ax, ((run, dataset), recs) in zip(axes[0], sorted(groups.items())):
        conf = recs[0]["metrics"][protocol]["test"]["confusion"]
        matrix = np.sum([np.asarray(r["metrics"][protocol]["test"]["confusion"]["matrix"]) for r in recs], axis=0)
        share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        names = conf["classes"]
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")
        ax.set_title(f"{run} · {dataset} (n={int(matrix.sum())})", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    fig.tight_layout()
    return fig
