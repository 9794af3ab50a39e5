"""Metric protocols: hand-computed values, scikit-learn cross-checks, threshold choice and edge cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logit
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from emolib import metrics, registry
from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS, SIMS_TARGETS

CLASSIFICATION = ("dai-iemocap", "dai-mosei", "e2emal")
ALL_PROTOCOLS = CLASSIFICATION + ("sims",)

# One class, 8 samples. Labels P = 3, N = 5; logit > 0 means "predicted positive" at threshold 0.5.
#   labels      1  1  1  0  0  0  0  0
#   prediction  1  1  0  1  0  0  0  0   -> TP = 2, FN = 1, FP = 1, TN = 4
HAND_LABELS = np.array([[1], [1], [1], [0], [0], [0], [0], [0]], dtype=float)
HAND_LOGITS = np.array([[2.0], [1.0], [-1.0], [3.0], [-2.0], [-3.0], [-0.5], [-4.0]])


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # The package must never warn (no 0/0, no sklearn-style UndefinedMetricWarning) on any input.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _random_split(seed: int, n: int = 240, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < rng.uniform(0.08, 0.5, size=c)).astype(np.float32)
    logits = rng.normal(size=(n, c)) + 1.2 * labels - 0.8
    return logits, labels


def _is_plain_json(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


# ---------------------------------------------------------------------------------------------- hand values


def test_hand_example_dai_iemocap() -> None:
    res = metrics.get_protocol("dai-iemocap").evaluate(HAND_LOGITS, HAND_LABELS, ["ang"], thresholds=[0.5])
    row = res["per_class"]["ang"]
    assert row["acc"] == pytest.approx(6 / 8)  # (TP + TN)/(P + N) = (2 + 4)/8
    assert row["precision"] == pytest.approx(2 / 3)  # TP/(TP + FP) = 2/3
    assert row["recall"] == pytest.approx(2 / 3)  # TP/(TP + FN) = 2/3
    assert row["f1"] == pytest.approx(2 / 3)  # 2TP/(2TP + FP + FN) = 4/6
    assert row["positives"] == 3
    # AUC: 15 (pos, neg) pairs. Positive logits 2 and 1 beat all negatives but 3 -> 4 + 4;
    # positive -1 beats -2, -3, -4 -> 3; total 11/15.
    assert row["auc"] == pytest.approx(11 / 15)
    assert res["thresholds"] == {"ang": 0.5}
    assert res["n"] == 8 and res["average"]["acc"] == pytest.approx(0.75)


def test_hand_example_weighted_metrics() -> None:
    dai = metrics.get_protocol("dai-mosei").evaluate(HAND_LOGITS, HAND_LABELS, ["anger"], thresholds=[0.5])
    # wA = (TP*N/P + TN)/(2N) = (2*5/3 + 4)/10 = (22/3)/10 = 11/15 = (TPR 2/3 + TNR 4/5)/2
    assert dai["per_class"]["anger"]["wacc"] == pytest.approx(11 / 15)
    assert dai["per_class"]["anger"]["f1"] == pytest.approx(2 / 3)
    e2e = metrics.get_protocol("e2emal").evaluate(HAND_LOGITS, HAND_LABELS, ["anger"])
    assert e2e["per_class"]["anger"]["wacc"] == pytest.approx(11 / 15)
    # F1(pos) = 4/6; F1(neg) = 2TN/(2TN + FN + FP) = 8/10; support-weighted: (3*2/3 + 5*0.8)/8 = 6/8
    assert e2e["per_class"]["anger"]["f1"] == pytest.approx(0.75)
    assert e2e["thresholds"] == {"anger": 0.5}


def test_auc_counts_ties_as_half() -> None:
    # positives score 1 and 0, negatives 0 and -1: pairs (1,0)=1, (1,-1)=1, (0,0)=1/2, (0,-1)=1 -> 3.5/4
    auc = metrics.roc_auc(np.array([[1.0], [0.0], [0.0], [-1.0]]), np.array([[1], [1], [0], [0]], bool))
    assert auc.tolist() == [0.875]


def test_hand_example_sims() -> None:
    preds = np.array([1.5, -0.2, 0.0, 0.4])  # clipped: 1.0, -0.2, 0.0, 0.4 -> classes 1, 0, 0 (zero), 1
    labels = np.array([0.8, -0.6, 0.2, -1.0])  # classes 1, 0, 1, 0
    res = metrics.get_protocol("sims").evaluate(preds, labels)
    m = res["per_class"]["M"]
    assert m["acc2"] == pytest.approx(0.5)  # 2 of 4 agree (samples 1 and 2)
    # pos: TP 1, FP 1, FN 1 -> F1 1/2; neg: TN 1, FN 1, FP 1 -> F1 1/2; weighted 1/2
    assert m["f1"] == pytest.approx(0.5)
    assert m["mae"] == pytest.approx((0.2 + 0.4 + 0.2 + 1.4) / 4)  # |1-0.8| |-0.2+0.6| |0-0.2| |0.4+1|
    # dx = [0.7, -0.5, -0.3, 0.1], dy = [0.95, -0.45, 0.35, -0.85]: r = 0.7 / sqrt(0.84 * 1.95)
    assert m["corr"] == pytest.approx(0.7 / math.sqrt(0.84 * 1.95))
    assert res["average"] == m and res["thresholds"] is None and res["n"] == 4


def test_sims_zero_prediction_counts_as_negative() -> None:
    res = metrics.get_protocol("sims").evaluate([0.0, 0.0, 0.5], [-0.2, 0.0, 0.6])
    assert res["average"]["acc2"] == 1.0


# ------------------------------------------------------------------------------------------- thresholds


# Three classes, 6 samples (F1 per threshold written out, P = positives, "pred" = predicted positives):
#   class 0: p .92 .62 .38 .12 .02 .01, y 1 0 1 0 0 0 (P 2)
#       t .05-.10: pred 4, TP 2 -> 4/6; t .15-.35: pred 3, TP 2 -> 4/5 (max); t .40-.60: 2/4; .65-.90: 2/3
#       -> ties from .15 to .35, first maximum 0.15
#   class 1: p .93 .57 .47 .33 .27 .03, y 1 0 0 1 0 0 (P 2)
#       t .05-.25: pred 5, TP 2 -> 4/7; t .30: pred 4, TP 2 -> 4/6; .35-.45: 2/5; .50-.55: 2/4;
#       .60-.90: pred 1, TP 1 -> 2/3 -> the maximum 2/3 is reached with different counts; first is 0.30
#   class 2: no positives -> F1 = 0 everywhere -> first grid value 0.05
THR_PROBS = np.array(
    [
        [0.92, 0.93, 0.42],
        [0.62, 0.57, 0.13],
        [0.38, 0.47, 0.77],
        [0.12, 0.33, 0.08],
        [0.02, 0.27, 0.51],
        [0.01, 0.03, 0.36],
    ]
)
THR_LABELS = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=float)


def test_threshold_choice_hand_example_first_maximum() -> None:
    proto = metrics.get_protocol("dai-iemocap")
    chosen = proto.choose_thresholds(logit(THR_PROBS), THR_LABELS)
    assert chosen.tolist() == [0.15, 0.30, 0.05]
    res = proto.evaluate(logit(THR_PROBS), THR_LABELS, ["a", "b", "c"])
    assert res["thresholds"] == {"a": 0.15, "b": 0.30, "c": 0.05}
    assert [res["per_class"][k]["f1"] for k in "abc"] == pytest.approx([0.8, 2 / 3, 0.0])
    assert any("chosen on this split" in n for n in res["notes"])
    assert any(n.startswith("c: F1 = 0 at every threshold") for n in res["notes"])


def test_threshold_grid_is_dai_grid() -> None:
    assert metrics.THRESHOLD_GRID.shape == (19,)
    assert np.allclose(metrics.THRESHOLD_GRID, np.arange(0.05, 1, 0.05), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_choice_matches_dai_loop_with_sklearn(seed: int) -> None:
    logits, labels = _random_split(seed, n=150)
    probs = 1 / (1 + np.exp(-logits))
    chosen = metrics.get_protocol("dai-mosei").choose_thresholds(logits, labels)
    for c in range(labels.shape[1]):
        f1s = [f1_score(labels[:, c], probs[:, c] > t, zero_division=0) for t in metrics.THRESHOLD_GRID]
        # sklearn computes 2PR/(P+R), which can differ in the last bit between equal rationals; compare values.
        best = int(np.argmax(np.isclose(f1s, max(f1s), rtol=0, atol=1e-12)))
        assert chosen[c] == metrics.THRESHOLD_GRID[best]


def test_passed_thresholds_dict_equals_array_and_are_used_unchanged() -> None:
    logits, labels = _random_split(3)
    proto = metrics.get_protocol("dai-iemocap")
    thr = proto.choose_thresholds(logits, labels)
    test_logits, test_labels = _random_split(4)
    a = proto.evaluate(test_logits, test_labels, IEMOCAP_CLASSES, thresholds=thr)
    b = proto.evaluate(test_logits, test_labels, IEMOCAP_CLASSES, thresholds=dict(zip(IEMOCAP_CLASSES, thr)))
    assert a == b
    assert list(a["thresholds"].values()) == thr.tolist()
    assert not any("chosen on this split" in n for n in a["notes"])
    # evaluating valid without thresholds chooses exactly what choose_thresholds returns
    assert list(proto.evaluate(logits, labels, IEMOCAP_CLASSES)["thresholds"].values()) == thr.tolist()


# ------------------------------------------------------------------------------------ sklearn cross-checks


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_classification_protocols_agree_with_sklearn(seed: int) -> None:
    logits, labels = _random_split(seed)
    if seed % 2:
        logits = np.round(logits, 1)  # many tied scores: AUC must count ties as 1/2 like sklearn
    probs = 1 / (1 + np.exp(-logits))
    thr = metrics.get_protocol("dai-iemocap").choose_thresholds(logits, labels)
    dai_i = metrics.get_protocol("dai-iemocap").evaluate(logits, labels, IEMOCAP_CLASSES, thresholds=thr)
    dai_m = metrics.get_protocol("dai-mosei").evaluate(logits, labels, MOSEI_EMOTIONS, thresholds=thr)
    e2e = metrics.get_protocol("e2emal").evaluate(logits, labels, MOSEI_EMOTIONS)
    for c, (ic, mc) in enumerate(zip(IEMOCAP_CLASSES, MOSEI_EMOTIONS)):
        y = labels[:, c].astype(int)
        pred = (probs[:, c] > thr[c]).astype(int)
        row = dai_i["per_class"][ic]
        assert row["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(y, pred, zero_division=0), abs=1e-12)
        assert row["precision"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=1e-12)
        assert row["recall"] == pytest.approx(recall_score(y, pred, zero_division=0), abs=1e-12)
        assert row["auc"] == pytest.approx(roc_auc_score(y, probs[:, c]), abs=1e-12)
        assert dai_m["per_class"][mc]["wacc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
        pred05 = (probs[:, c] > 0.5).astype(int)
        assert e2e["per_class"][mc]["wacc"] == pytest.approx(balanced_accuracy_score(y, pred05), abs=1e-12)
        f1w = f1_score(y, pred05, labels=[0, 1], average="weighted", zero_division=0)
        assert e2e["per_class"][mc]["f1"] == pytest.approx(f1w, abs=1e-12)
    assert dai_i["average"]["acc"] == pytest.approx(np.mean([dai_i["per_class"][k]["acc"] for k in IEMOCAP_CLASSES]))
    assert dai_m["average"]["f1"] == pytest.approx(dai_i["average"]["f1"])
    assert dai_i["average"]["auc"] == pytest.approx(np.mean(roc_auc_score(labels, probs, average=None)))
    assert dai_i["average"]["auc_classes"] == 6


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_sims_agrees_with_sklearn_and_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.round(np.arange(-1.0, 1.01, 0.2), 1), size=(200, 4))
    preds = labels[:, :1] * 0.7 + rng.normal(scale=0.5, size=(200, 1))  # some leave [-1, 1]
    res = metrics.get_protocol("sims").evaluate(preds, labels, SIMS_TARGETS)
    p = np.clip(preds[:, 0], -1, 1)
    t = np.clip(labels[:, 0], -1, 1)
    m = res["average"]
    assert m["acc2"] == pytest.approx(accuracy_score(t > 0, p > 0), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(t > 0, p > 0, average="weighted"), abs=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(p - t)), abs=1e-12)
    assert m["corr"] == pytest.approx(pearsonr(p, t)[0], abs=1e-12)
    assert m["corr"] == pytest.approx(np.corrcoef(p, t)[0, 1], abs=1e-12)


def test_sims_all_targets_and_one_column_predictions() -> None:
    rng = np.random.default_rng(5)
    labels = rng.uniform(-1, 1, size=(60, 4))
    preds = labels + rng.normal(scale=0.3, size=labels.shape)
    proto = metrics.get_protocol("sims")
    full = proto.evaluate(preds, labels, targets=SIMS_TARGETS)
    assert list(full["per_class"]) == list(SIMS_TARGETS)
    assert full["average"] == full["per_class"]["M"]
    solo = proto.evaluate(preds[:, 3], labels[:, 3])
    assert solo["average"] == full["per_class"]["V"]
    # a (N, 1) prediction is the M prediction; scoring it against T is refused
    assert proto.evaluate(preds[:, :1], labels)["average"] == full["per_class"]["M"]
    with pytest.raises(ValueError, match="cannot be scored"):
        proto.evaluate(preds[:, :1], labels, targets=["T"])
    with pytest.raises(ValueError, match="takes no thresholds"):
        proto.evaluate(preds, labels, thresholds=[0.5])
    with pytest.raises(ValueError, match="prediction columns"):
        proto.evaluate(preds[:, :2], labels)
    assert proto.choose_thresholds(preds, labels) is None


# ------------------------------------------------------------------------------------------- edge cases


def test_class_without_positives_and_class_without_negatives() -> None:
    logits, labels = _random_split(30, n=50, c=4)
    labels[:, 1] = 0  # no positives
    labels[:, 2] = 1  # no negatives
    names = ["a", "b", "c", "d"]
    for name in CLASSIFICATION:
        res = metrics.get_protocol(name).evaluate(logits, labels, names, thresholds=[0.5] * 4)
        b, c = res["per_class"]["b"], res["per_class"]["c"]
        assert math.isnan(b["auc"]) and math.isnan(c["auc"])
        assert res["average"]["auc_classes"] == 2
        assert res["average"]["auc"] == pytest.approx(np.mean([res["per_class"][k]["auc"] for k in "ad"]))
        assert any("auc averaged over 2 of 4" in n for n in res["notes"])
        assert any(n.startswith("b: no positive labels") for n in res["notes"])
        assert any(n.startswith("c: no negative labels") for n in res["notes"])
        assert all(not math.isnan(v) for k, v in res["average"].items() if k != "auc")
        pred_b = (logits[:, 1] > 0).astype(int)
        pred_c = (logits[:, 2] > 0).astype(int)
        if "wacc" in b:
            assert b["wacc"] == pytest.approx(np.mean(pred_b == 0))  # TN/N
            assert c["wacc"] == pytest.approx(np.mean(pred_c == 1))  # TP/P (E2EMAL's fallback)
        if name != "e2emal":
            assert b["f1"] == 0.0 and b["recall"] == 0.0
            assert c["f1"] == pytest.approx(f1_score(np.ones(50), pred_c))
        else:
            # only the negative class has support: F1(neg) = 2TN/(2TN + FP)
            tn, fp = np.sum(pred_b == 0), np.sum(pred_b == 1)
            assert b["f1"] == pytest.approx(2 * tn / (2 * tn + fp))
            assert b["f1"] == pytest.approx(f1_score(np.zeros(50), pred_b, labels=[0, 1], average="weighted",
                                                     zero_division=0))


def test_all_zero_predictions_define_f1_as_zero() -> None:
    logits = np.full((10, 2), -9.0)
    labels = np.array([[1, 0]] * 3 + [[0, 1]] * 7, dtype=float)
    res = metrics.get_protocol("dai-iemocap").evaluate(logits, labels, ["x", "y"], thresholds=[0.5, 0.5])
    assert res["per_class"]["x"] == {"acc": 0.7, "f1": 0.0, "precision": 0.0, "recall": 0.0, "auc": 0.5,
                                     "positives": 3}
    assert res["average"]["f1"] == 0.0
    assert any("x: no predicted positives" in n for n in res["notes"])
    e2e = metrics.get_protocol("e2emal").evaluate(logits, labels, ["x", "y"])
    # x: F1(neg) = 2*7/(14 + 3) = 14/17, weight 7/10; F1(pos) = 0
    assert e2e["per_class"]["x"]["f1"] == pytest.approx(0.7 * 14 / 17)
    assert e2e["per_class"]["x"]["wacc"] == 0.5  # (0 + 1)/2


def test_constant_predictions() -> None:
    labels = np.array([[1], [0], [1], [0], [0]], dtype=float)
    logits = np.zeros((5, 1))  # p = 0.5 exactly: not > 0.5, so negative under the fixed threshold
    e2e = metrics.get_protocol("e2emal").evaluate(logits, labels, ["x"])
    assert e2e["per_class"]["x"]["auc"] == 0.5
    assert e2e["per_class"]["x"]["wacc"] == 0.5
    sims = metrics.get_protocol("sims")
    res = sims.evaluate(np.full(5, 0.3), np.array([0.2, -0.4, 0.6, 0.0, 1.0]))
    assert math.isnan(res["average"]["corr"])
    assert any("predictions constant" in n for n in res["notes"])
    # saturated predictions are constant after clipping
    res = sims.evaluate(np.array([3.0, 2.0, 5.0]), np.array([0.2, -0.4, 0.6]))
    assert math.isnan(res["average"]["corr"]) and res["average"]["acc2"] == pytest.approx(2 / 3)
    res = sims.evaluate(np.array([0.1, -0.5, 0.3]), np.zeros(3))
    assert any("labels constant" in n for n in res["notes"])
    assert sims.selection_score(res, "corr") == -math.inf


def test_bad_inputs_are_rejected_with_clear_errors() -> None:
    proto = metrics.get_protocol("dai-iemocap")
    good = np.zeros((4, 2))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        proto.evaluate(good, np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="does not match"):
        proto.evaluate(good, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        proto.evaluate(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="N = 0"):
        proto.evaluate(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="2 names for 3"):
        proto.evaluate(np.zeros((4, 3)), np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="no value for classes"):
        proto.evaluate(good, np.zeros((4, 2)), ["a", "b"], thresholds={"a": 0.5})
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        proto.evaluate(good, np.zeros((4, 2)), thresholds=[0.5, 2.0])
    with pytest.raises(ValueError, match="fixed threshold"):
        metrics.get_protocol("e2emal").evaluate(good, np.zeros((4, 2)), thresholds=[0.3, 0.5])


def test_torch_inputs_match_numpy() -> None:
    logits, labels = _random_split(40, n=64)
    proto = metrics.get_protocol("dai-mosei")
    thr = proto.choose_thresholds(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
    a = proto.evaluate(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), MOSEI_EMOTIONS, thr)
    b = proto.evaluate(logits, labels, MOSEI_EMOTIONS, thr)
    assert a == b
    bf16 = proto.evaluate(torch.tensor(logits).to(torch.bfloat16), torch.tensor(labels).bool(), MOSEI_EMOTIONS, thr)
    assert set(bf16["per_class"]) == set(MOSEI_EMOTIONS)


@pytest.mark.parametrize("name", ALL_PROTOCOLS)
def test_results_are_plain_json(name: str) -> None:
    proto = metrics.get_protocol(name)
    logits, labels = _random_split(50, n=40, c=4 if name == "sims" else 6)
    if name == "sims":
        labels = np.tanh(logits + 0.1)
    res = proto.evaluate(logits, labels)
    assert _is_plain_json(res)
    assert json.loads(json.dumps(res)) == res
    assert res["protocol"] == name and res["task"] == proto.task
    assert set(proto.headline) <= set(res["average"])
    assert set(proto.metrics) <= set(next(iter(res["per_class"].values())))


# --------------------------------------------------------------------------------- registry and helpers


def test_protocols_are_registered_with_consistent_metadata() -> None:
    assert set(ALL_PROTOCOLS) <= set(registry.names("protocol"))
    for name in ALL_PROTOCOLS:
        entry = registry.REGISTRY.entry("protocol", name)
        proto = metrics.get_protocol(name)
        assert isinstance(proto, metrics.Protocol) and proto.name == name
        assert entry.meta["task"] == proto.task in metrics.TASKS
        assert entry.meta["headline"] == ",".join(proto.headline)
        assert set(proto.headline) <= set(proto.metrics)
        assert proto.select_key.split("+")[0] in proto.metrics
        assert proto.needs_thresholds == (name in ("dai-iemocap", "dai-mosei"))
        assert proto.display_scale == 100.0
    with pytest.raises(KeyError, match="unknown protocol"):
        metrics.get_protocol("no-such-protocol")


def test_every_dataset_declares_registered_protocols_of_its_task() -> None:
    from emolib.data.adapter import dataset_protocols, get_adapter

    assert [u.protocol for u in dataset_protocols("iemocap")] == ["dai-iemocap", "e2emal"]
    assert [u.protocol for u in dataset_protocols("mosei")] == ["dai-mosei", "dai-iemocap", "e2emal"]
    assert [u.protocol for u in dataset_protocols("sims")] == ["sims"]
    assert "code variant" in dict(dataset_protocols("mosei"))["dai-iemocap"]
    assert [u.protocol for u in dataset_protocols("own", "regression")] == ["sims"]
    for name in registry.names("dataset"):
        adapter = get_adapter(name)
        for task in ("multilabel", "regression") if name == "own" else (adapter.task,):
            uses = adapter.protocols_for(task)
            assert uses[0].role.startswith("primary")
            assert all(metrics.get_protocol(u.protocol).task == task for u in uses)
    with pytest.raises(KeyError, match="unknown dataset 'synthetic-mosei'"):
        dataset_protocols("synthetic-mosei")  # names are looked up, never guessed from substrings
    with pytest.raises(ValueError, match="is a multilabel dataset"):
        get_adapter("iemocap").protocols_for("regression")


def test_selection_score_and_display() -> None:
    proto = metrics.get_protocol("dai-iemocap")
    res = {"average": {"acc": 0.8, "f1": 0.55, "auc": 0.9}}
    assert proto.selection_score(res) == 0.55
    assert proto.selection_score(res, "f1+acc") == pytest.approx(1.35)
    assert proto.display(res) == {"acc": pytest.approx(80.0), "f1": pytest.approx(55.0)}
    sims = metrics.get_protocol("sims")
    assert sims.selection_score({"average": {"mae": 0.4}}, "mae") == -0.4
    with pytest.raises(KeyError, match="no average 'wacc'"):
        proto.selection_score(res, "wacc")
