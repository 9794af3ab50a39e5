"""E2EMAL's MoseiEmotionLoss and adaptive (uncertainty-weighted) loss: exact values, label-order mapping,
learnable s_i, fused-only switch, the model's L2 term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from emolib.labels import IEMOCAP_CLASSES, MOSEI_EMOTIONS
from emolib.losses import adaptive as adaptive_module  # noqa: F401  (registers the losses)
from emolib.losses import build_loss
from emolib.losses.adaptive import AdaptiveLoss, MoseiEmotionLoss, keras_probability_bce, mosei_class_weights
from emolib.train import TrainConfig, parameter_groups

TRAIN = np.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0],
                  [0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=np.float32)


def _outputs(seed: int = 0, batch: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, 6, generator=g, requires_grad=True) for k in ("audio", "visual", "text", "logits")}


def _labels(batch: int = 5, seed: int = 1) -> torch.Tensor:
    return (torch.rand(batch, 6, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_class_weights_are_mapped_from_the_sdk_order_by_name() -> None:
    w = mosei_class_weights(MOSEI_EMOTIONS)
    # Dai order: anger .21, disgust .16, fear .08, happiness .53, sadness .25, surprise .09
    expected = [1 / p + 1 / (1 - p) for p in (0.21, 0.16, 0.08, 0.53, 0.25, 0.09)]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    sdk = mosei_class_weights(("happiness", "sadness", "anger", "surprise", "disgust", "fear"))
    np.testing.assert_allclose(sdk, [1 / p + 1 / (1 - p) for p in (0.53, 0.25, 0.21, 0.09, 0.16, 0.08)])
    with pytest.raises(ValueError, match="CMU-MOSEI emotions"):
        mosei_class_weights(IEMOCAP_CLASSES)
    np.testing.assert_allclose(mosei_class_weights(["a", "b"], {"a": 0.5, "b": 0.2}), [4.0, 6.25])


def test_mosei_emotion_loss_matches_the_keras_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, -3.0, 1.5], [-0.5, 0.3, -2.0, 4.0, 1.0, -1.0],
                           [6.0, -7.0, 0.0, 0.1, 0.2, 0.3]])
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 1], [0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    loss = build_loss("mosei-emotion", train_labels=TRAIN)  # the registered entry
    assert isinstance(loss, MoseiEmotionLoss)
    total, parts = loss({"logits": logits}, labels)
    p = np.clip(1 / (1 + np.exp(-logits.double().numpy())), 1e-7, 1 - 1e-7)
    y = labels.double().numpy()
    bce = -(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
    expected = (bce.mean(axis=0) * mosei_class_weights(MOSEI_EMOTIONS)).sum() / 6
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert parts["mosei_emotion"] == pytest.approx(expected, rel=1e-5)
    # the clipped-probability BCE saturates where log-sigmoid does not
    saturated = float(keras_probability_bce(torch.tensor([[40.0]]), torch.tensor([[0.0]])))
    assert 15.0 < saturated < -math.log(1e-7)


def test_probability_bce_agrees_with_sklearn_log_loss_away_from_the_clip() -> None:
    g = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(40, 6, generator=g), (torch.rand(40, 6, generator=g) < 0.5).float()
    ours = keras_probability_bce(logits, labels).mean(dim=0).double().numpy()
    prob = torch.sigmoid(logits).double().numpy()
    ref = [log_loss(labels[:, c].numpy(), prob[:, c], labels=[0, 1]) for c in range(6)]
    np.testing.assert_allclose(ours, ref, rtol=2e-5)


def test_adaptive_total_is_the_uncertainty_weighted_sum() -> None:
    loss = AdaptiveLoss(train_labels=TRAIN, lam=0.5)
    s = torch.tensor([0.1, -0.2, 0.3, 0.0])
    with torch.no_grad():
        loss.log_vars.copy_(s)
    out, labels = _outputs(), _labels()
    total, parts = loss(out, labels)
    base = MoseiEmotionLoss(train_labels=TRAIN)
    per = [float(base({"logits": out[k].detach()}, labels)[0]) for k in ("audio", "visual", "text", "logits")]
    expected = sum(math.exp(-si) * li for si, li in zip(s.tolist(), per)) + 0.5 * float(s.mean())
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    assert [parts[f"loss_{n}"] for n in ("audio", "visual", "text", "fused")] == pytest.approx(per, rel=1e-6)
    assert [parts[f"s_{n}"] for n in ("audio", "visual", "text", "fused")] == pytest.approx(s.tolist())
    assert parts["s_penalty"] == pytest.approx(0.5 * float(s.mean()))
    assert loss.weights()["visual"] == pytest.approx(math.exp(0.2))


def test_s_receive_gradients_and_move_with_the_optimiser() -> None:
    loss = AdaptiveLoss(train_labels=TRAIN, lam=1.0)
    out, labels = _outputs(), _labels()
    total, parts = loss(out, labels)
    total.backward()
    per = torch.tensor([parts[f"loss_{n}"] for n in ("audio", "visual", "text", "fused")])
    # d/ds_i [exp(-s_i) L_i + lam * mean(s)] = -exp(-s_i) L_i + lam / 4, at s = 0
    torch.testing.assert_close(loss.log_vars.grad, -per + 0.25, rtol=1e-5, atol=1e-6)
    assert all(out[k].grad is not None for k in out)
    opt = torch.optim.Adam(loss.parameters(), lr=0.1)
    before = loss.log_vars.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss(out, labels)[0].backward()
        opt.step()
    moved = loss.log_vars.detach() - before
    assert torch.all(moved > 0), "per-output losses above lam / 4 raise s_i, i.e. lower their weight exp(-s_i)"
    assert torch.all(moved.abs() > 0.1)


def test_trainer_puts_the_s_into_its_own_optimiser_group() -> None:
    model = torch.nn.Linear(3, 6)
    loss = build_loss("adaptive", train_labels=TRAIN, lam=1.0)
    groups = parameter_groups(model, loss, TrainConfig(lr=1e-3))
    assert groups[-1]["name"] == "loss" and groups[-1]["param_names"] == ["loss.log_vars"]
    assert groups[-1]["weight_decay"] == 0.0


def test_fused_only_trains_the_fused_output_and_reports_the_others() -> None:
    loss = build_loss("adaptive", train_labels=TRAIN, fused_only=True)
    assert list(loss.parameters()) == []
    out, labels = _outputs(), _labels()
    total, parts = loss(out, labels)
    base = MoseiEmotionLoss(train_labels=TRAIN)
    assert float(total.detach()) == pytest.approx(float(base({"logits": out["logits"].detach()}, labels)[0]), rel=1e-6)
    assert set(parts) == {"loss_audio", "loss_visual", "loss_text", "loss_fused"}
    total.backward()
    assert out["logits"].grad is not None and out["audio"].grad is None and out["text"].grad is None
    # a single-head model works too: the missing heads are simply not reported
    total_single, parts_single = loss({"logits": out["logits"].detach()}, labels)
    assert set(parts_single) == {"loss_fused"}


def test_bce_base_uses_the_train_split_pos_weight() -> None:
    loss = AdaptiveLoss(train_labels=TRAIN, base="bce", lam=1.0, class_names=IEMOCAP_CLASSES)
    out, labels = _outputs(), _labels()
    _, parts = loss(out, labels)
    n, pos = TRAIN.shape[0], TRAIN.sum(axis=0)
    weight = torch.tensor((n - pos) / pos, dtype=torch.float32)
    expected = F.binary_cross_entropy_with_logits(out["text"], labels, pos_weight=weight)
    assert parts["loss_text"] == pytest.approx(float(expected.detach()), rel=1e-6)


def test_positive_rates_for_other_label_sets() -> None:
    with pytest.raises(ValueError, match="positive_rates"):
        MoseiEmotionLoss(train_labels=TRAIN, class_names=IEMOCAP_CLASSES)
    loss = MoseiEmotionLoss(train_labels=TRAIN, class_names=IEMOCAP_CLASSES, positive_rates="train")
    rates = TRAIN.mean(axis=0)
    np.testing.assert_allclose(loss.class_weights.numpy(), 1 / rates + 1 / (1 - rates), rtol=1e-6)
    with pytest.raises(ValueError, match="present and absent"):
        MoseiEmotionLoss(train_labels=np.ones((3, 6)), positive_rates="train")


def test_model_l2_penalty_is_added_unweighted() -> None:
    out, labels = _outputs(), _labels()
    penalty = torch.tensor(0.125, requires_grad=True)
    for loss in (AdaptiveLoss(train_labels=TRAIN), AdaptiveLoss(train_labels=TRAIN, fused_only=True),
                 MoseiEmotionLoss(train_labels=TRAIN)):
        plain, _ = loss(out, labels)
        with_l2, parts = loss({**out, "l2_penalty": penalty}, labels)
        assert float((with_l2 - plain).detach()) == pytest.approx(0.125, abs=1e-6)
        assert parts["l2"] == pytest.approx(0.125)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="base"):
        AdaptiveLoss(train_labels=TRAIN, base="focal")
    with pytest.raises(ValueError, match="lam"):
        AdaptiveLoss(train_labels=TRAIN, lam=-1)
    with pytest.raises(ValueError, match="logits"):
        AdaptiveLoss(train_labels=TRAIN, outputs={"audio": "audio"})
    loss = AdaptiveLoss(train_labels=TRAIN)
    with pytest.raises(KeyError, match="visual"):
        loss({"logits": torch.zeros(2, 6), "audio": torch.zeros(2, 6), "text": torch.zeros(2, 6)}, torch.zeros(2, 6))


def test_label_weights_apply_the_weight_the_code_meant() -> None:
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 1], [0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]])
    logits = torch.linspace(-2, 2, 24).reshape(4, 6)
    loss = MoseiEmotionLoss(train_labels=TRAIN, label_weights=True)
    total, _ = loss({"logits": logits}, labels)
    rates = {"happiness": .53, "sadness": .25, "anger": .21, "surprise": .09, "disgust": .16, "fear": .08}
    p_c = np.array([rates[n] for n in MOSEI_EMOTIONS])
    p = np.clip(1 / (1 + np.exp(-logits.double().numpy())), 1e-7, 1 - 1e-7)
    y = labels.double().numpy()
    bce = -(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
    weights = y / p_c + (1 - y) / (1 - p_c)  # the code's table [[1/p, 1/(1-p)], ...] per label
    assert float(total) == pytest.approx((bce * weights).mean(axis=0).sum() / 6, rel=1e-5)
    # What the switch is for: the best constant score of a class sits at its positive rate with the code's weight
    # (below 0.5 for every emotion but happiness), at 0.5 with the weight the code meant.
    y = torch.tensor([[1.0]] * 9 + [[0.0]] * 91)  # the surprise rate, 0.09
    for label_weights, best in ((False, 0.09), (True, 0.5)):
        one = MoseiEmotionLoss(train_labels=y.numpy(), class_names=["surprise"], positive_rates=[0.09],
                               label_weights=label_weights)
        grid = torch.linspace(0.02, 0.98, 97)
        values = [float(one({"logits": torch.logit(g).repeat(100, 1)}, y)[0]) for g in grid]
        assert float(grid[int(np.argmin(values))]) == pytest.approx(best, abs=0.011)
    # the adaptive loss hands the switch to its base loss
    adaptive = AdaptiveLoss(train_labels=TRAIN, label_weights=True)
    assert adaptive.base.label_weights is True
