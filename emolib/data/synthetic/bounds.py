"""Decision-rule bounds derived from the design: chance level and the accuracy of the best cue-reading rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from emolib.data.synthetic.design import SYNTH_DESIGN, _check_modality, _design
from emolib.data.synthetic.plan import (
    _iemocap_displays,
    _mosei_displays,
    _rng,
    _sample_mosei_emotions,
    _sims_displays,
)
from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS


def chance_accuracy(dataset: str) -> float:
    """Score of the best constant prediction under the dataset's metric (see ``SYNTH_DESIGN[...]['metric']``)."""
    design = _design(dataset)
    if dataset == "iemocap":
        w = {c: design["label_weights"][c] for c in IEMOCAP_CLASSES}
        return max(w.values()) / sum(w.values())
    if dataset == "mosei":
        return 0.5  # a constant predictor has TPR + TNR = 1
    w = design["m_weights"]
    positive = sum(v for k, v in w.items() if k > 0) / sum(w.values())
    return max(positive, 1 - positive)


def cue_accuracy(dataset: str, modalities: Iterable[str], *, n: int = 20000, seed: int = 0) -> float:
    """Accuracy (dataset metric) of the best rule that sees which expression each listed modality shows.

    Estimated by Monte Carlo with the generator's own samplers: the rule (most likely label per cell of
    displayed cues) is fitted on one half of ``n`` draws and scored on the other. It assumes perfect perception
    of the displayed expression, so it bounds what a model of those modalities can reach; with no modality it
    equals the chance level up to sampling error."""
    _design(dataset)
    mods = tuple(_check_modality(m) for m in modalities)
    rng = _rng(seed, dataset, 99)
    if dataset == "mosei":
        return _mosei_cue_accuracy(rng, mods, n)
    draw = _draw_iemocap_cells if dataset == "iemocap" else _draw_sims_cells
    return _cell_rule_accuracy(*draw(rng, mods, n))


def _draw_iemocap_cells(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> tuple[list, list]:
    weights = SYNTH_DESIGN["iemocap"]["label_weights"]
    p = np.array([weights[c] for c in IEMOCAP_CLASSES])
    labels = rng.choice(len(IEMOCAP_CLASSES), size=n, p=p / p.sum())
    keys, ys = [], []
    for y in labels:
        displays = _iemocap_displays(rng, IEMOCAP_CLASSES[y])
        keys.append(tuple(displays[m].shown[0][0] for m in mods))
        ys.append(int(y))
    return keys, ys


def _draw_sims_cells(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> tuple[list, list]:
    w = SYNTH_DESIGN["sims"]["m_weights"]
    grid = list(w)
    p = np.array([w[g] for g in grid])
    keys, ys = [], []
    for i in rng.choice(len(grid), size=n, p=p / p.sum()):
        m = float(grid[i])
        displays = _sims_displays(rng, m, "sadness")
        keys.append(tuple(int(np.sign(displays[mod].sentiment)) for mod in mods))
        ys.append(int(m > 0))
    return keys, ys


def _cell_rule_accuracy(keys: list, ys: list) -> float:
    half = len(keys) // 2
    counts: dict[Any, dict[int, int]] = {}
    for k, y in zip(keys[:half], ys[:half]):
        counts.setdefault(k, {}).setdefault(y, 0)
        counts[k][y] += 1
    overall: dict[int, int] = {}
    for y in ys[:half]:
        overall[y] = overall.get(y, 0) + 1
    default = max(sorted(overall), key=lambda y: overall[y])
    rule = {k: max(sorted(c), key=lambda y: c[y]) for k, c in counts.items()}
    hits = [rule.get(k, default) == y for k, y in zip(keys[half:], ys[half:])]
    return float(np.mean(hits))


def _mosei_cue_accuracy(rng: np.random.Generator, mods: tuple[str, ...], n: int) -> float:
    design = SYNTH_DESIGN["mosei"]
    sizes = rng.choice(3, size=n, p=np.array(design["n_emotion_weights"]) / sum(design["n_emotion_weights"]))
    shown, truth = [], []
    for k in sizes:
        emotions = _sample_mosei_emotions(rng, int(k))
        displays = _mosei_displays(rng, emotions)
        shown.append([{e for e, _ in displays[m].shown} for m in mods])
        truth.append(set(emotions))
    half = n // 2
    scores = []
    for e in MOSEI_EMOTIONS:
        keys = [tuple(e in s for s in row) for row in shown]
        ys = [int(e in t) for t in truth]
        fit = {}
        for k, y in zip(keys[:half], ys[:half]):
            fit.setdefault(k, [0, 0])[y] += 1
        pos = max(1, sum(ys[:half]))
        neg = max(1, half - sum(ys[:half]))
        # Weighted accuracy is maximised by thresholding the likelihood ratio at 1.
        rule = {k: int(c[1] / pos > c[0] / neg) for k, c in fit.items()}
        preds = [rule.get(k, 0) for k in keys[half:]]
        test_y = ys[half:]
        p_ = sum(test_y)
        if p_ == 0 or p_ == len(test_y):
            continue
        tpr = sum(p and y for p, y in zip(preds, test_y)) / p_
        tnr = sum((not p) and (not y) for p, y in zip(preds, test_y)) / (len(test_y) - p_)
        scores.append((tpr + tnr) / 2)
    return float(np.mean(scores))
