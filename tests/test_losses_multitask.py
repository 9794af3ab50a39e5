"""EmoMBT's multitask losses: per-head base losses, mean / DWA / RRUW / DRUW weights against hand-computed values,
train-only loss histories, and sigma under the trainer's optimiser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from emolib.losses import build_loss
from emolib.losses import multitask as mt
from emolib.recipes import emombt as R
from emolib.train import TrainConfig, parameter_groups

BINARY = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
SIMS = np.array([[0.8, 0.6, -0.2, 1.0], [-0.4, -1.0, 0.2, 0.0], [0.0, 0.4, 0.6, -0.6]], dtype=np.float32)


def _outputs(batch: int, width: int, seed: int = 0, tasks=mt.TASKS) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {t: torch.randn(batch, width, generator=gen) for t in tasks}


def _bce(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-logits))
    return float(np.mean(-(w * y * np.log(p) + (1 - y) * np.log(1 - p))))


def test_registered_and_built_by_name() -> None:
    for name, cls in (("mean", mt.MeanTaskLoss), ("dwa", mt.DwaTaskLoss), ("rruw", mt.RruwTaskLoss),
                      ("druw", mt.DruwTaskLoss)):
        assert isinstance(build_loss(name, train_labels=BINARY), cls)


def test_mean_bce_per_head_with_pos_weight() -> None:
    loss = mt.MeanTaskLoss(train_labels=BINARY)
    # pos_weight (N - P) / P per class: P = (2, 2, 1) of N = 5.
    np.testing.assert_allclose(loss.pos_weight.numpy(), [1.5, 1.5, 4.0])
    labels = torch.tensor(BINARY[:4])
    outs = _outputs(4, 3)
    total, parts = loss(outs, labels)
    expected = {t: _bce(outs[t].numpy(), BINARY[:4], np.array([1.5, 1.5, 4.0])) for t in mt.TASKS}
    for t in mt.TASKS:
        assert parts[f"loss_{t}"] == pytest.approx(expected[t], rel=1e-5)
        assert parts[f"weight_{t}"] == pytest.approx(0.25)
    assert float(total.detach()) == pytest.approx(np.mean(list(expected.values())), rel=1e-5)
    assert parts["mean"] == pytest.approx(float(total.detach()))
    assert loss.task_weights() == {t: 0.25 for t in mt.TASKS}


def test_sims_heads_regress_their_own_annotation() -> None:
    loss = mt.MeanTaskLoss(train_labels=SIMS)
    assert loss.base == "l1" and loss.sims_labels == "M,A,T,V"
    labels = torch.tensor(SIMS)
    outs = {t: torch.full((3, 1), v) for t, v in (("fusion", 0.1), ("text", -0.2), ("audio", 0.3), ("visual", 0.5))}
    _, parts = loss(outs, labels)
    # Columns are M, T, A, V: fusion -> M, text -> T, audio -> A, visual -> V.
    for task, col, value in (("fusion", 0, 0.1), ("text", 1, -0.2), ("audio", 2, 0.3), ("visual", 3, 0.5)):
        assert parts[f"loss_{task}"] == pytest.approx(np.mean(np.abs(value - SIMS[:, col])), rel=1e-6)
    shared = mt.MeanTaskLoss(train_labels=SIMS, sims_labels="M")
    _, parts = shared(outs, labels)
    assert parts["loss_visual"] == pytest.approx(np.mean(np.abs(0.5 - SIMS[:, 0])), rel=1e-6)


def test_sims_heads_must_have_one_column_and_fusion_must_exist() -> None:
    loss = mt.MeanTaskLoss(train_labels=SIMS)
    with pytest.raises(ValueError, match="head_outputs=1"):
        loss(_outputs(3, 4), torch.tensor(SIMS))
    with pytest.raises(KeyError, match="tasks=\\('audio', 'text', 'visual'\\)"):
        loss(_outputs(3, 1, tasks=("audio", "text", "visual")), torch.tensor(SIMS))
    three = mt.MeanTaskLoss(train_labels=SIMS, tasks=("audio", "text", "visual"))
    assert three(_outputs(3, 1, tasks=("audio", "text", "visual")), torch.tensor(SIMS))[1]["weight_audio"] == \
        pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="sims_labels"):
        mt.MeanTaskLoss(train_labels=SIMS, sims_labels="M,T")
    with pytest.raises(ValueError, match="0/1"):
        mt.MeanTaskLoss(train_labels=SIMS, base="bce")


def test_classification_takes_sims_labels_m_and_a_fused_only_model_takes_one_task() -> None:
    labels = torch.tensor(BINARY[:4])
    outs = _outputs(4, 3)
    # run_experiment hands every multitask loss Experiment.sims_labels ("M" unless set): fine for classification.
    plain, with_m = mt.MeanTaskLoss(train_labels=BINARY), mt.MeanTaskLoss(train_labels=BINARY, sims_labels="M")
    assert float(plain(outs, labels)[0]) == float(with_m(outs, labels)[0])
    with pytest.raises(ValueError, match="regression labels only"):
        mt.MeanTaskLoss(train_labels=BINARY, sims_labels="M,A,T,V")
    # emombt fusion_only returns {"fusion", "logits"}: tasks=("fusion",); mean and DWA are then the fused loss.
    fused = {"fusion": outs["fusion"], "logits": outs["fusion"]}
    expected = _bce(outs["fusion"].numpy(), BINARY[:4], np.array([1.5, 1.5, 4.0]))
    for cls in (mt.MeanTaskLoss, mt.DwaTaskLoss):
        loss = cls(train_labels=BINARY, tasks=("fusion",))
        for _ in range(3):  # DWA past its first two steps: N softmax over one task is 1
            total, parts = loss(fused, labels)
            assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
        assert {k for k in parts if k.startswith(("loss_", "weight_"))} == {"loss_fusion", "weight_fusion"}
    with pytest.raises(KeyError, match=r"fusion_only=True, needs tasks=\('fusion',\)"):
        mt.MeanTaskLoss(train_labels=BINARY)(fused, labels)
    with pytest.raises(KeyError, match=r"tasks=\('text', 'fusion'\)"):
        mt.MeanTaskLoss(train_labels=BINARY)({"text": outs["text"], "fusion": outs["fusion"]}, labels)

def test_dwa_weights_follow_the_formula_on_a_hand_made_history() -> None:
    loss = mt.DwaTaskLoss(train_labels=BINARY, temperature=10.0)
    history = [torch.tensor(v) for v in ([1.0, 2.0, 0.5, 1.5], [0.8, 1.0, 0.6, 1.5], [0.4, 0.9, 0.7, 1.2],
                                         [0.2, 0.9, 0.7, 1.0])]
    # Steps 1 and 2 have fewer than two previous steps: every weight is 1.
    for step in (0, 1):
        total, parts = loss.combine(history[step])
        assert [parts[f"weight_{t}"] for t in mt.TASKS] == [1.0] * 4
        assert float(total.detach()) == pytest.approx(float(history[step].sum()))
    for step in (2, 3):
        ratios = [a / b for a, b in zip(history[step - 1].tolist(), history[step - 2].tolist())]
        exps = [math.exp(r / 10.0) for r in ratios]
        expected = [4 * e / sum(exps) for e in exps]
        assert list(loss.task_weights().values()) == pytest.approx(expected, rel=1e-6)
        total, parts = loss.combine(history[step])
        assert [parts[f"weight_{t}"] for t in mt.TASKS] == pytest.approx(expected, rel=1e-6)
        weighted = sum(w * x for w, x in zip(expected, history[step].tolist()))
        assert float(total.detach()) == pytest.approx(weighted, rel=1e-6)
    assert int(loss.steps) == 4


def test_dwa_history_moves_only_in_training_mode() -> None:
    loss = mt.DwaTaskLoss(train_labels=BINARY)
    labels = torch.tensor(BINARY[:4])
    for seed in range(3):
        loss(_outputs(4, 3, seed), labels)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()
    loss(_outputs(4, 3, seed=9), labels)
    for key, value in loss.state_dict().items():
        assert torch.equal(value, state[key]), key
    loss.train()
    loss(_outputs(4, 3, seed=9), labels)
    assert int(loss.steps) == 4 and not torch.equal(loss.loss_t1, state["loss_t1"])


def test_rruw_value_by_hand() -> None:
    loss = mt.RruwTaskLoss(train_labels=BINARY)
    losses = torch.tensor([0.3, 0.7, 1.1, 0.2])
    total, parts = loss.combine(losses)
    # sigma = 1/4: weight 1/(4 * 1/16) = 4; regulariser 4 log(1 + 1/16); constraint |1 - 1| = 0.
    assert float(total.detach()) == pytest.approx(4 * 2.3 + 4 * math.log(1 + 1 / 16), rel=1e-6)
    assert parts["weight_text"] == pytest.approx(4.0) and parts["sigma_text"] == pytest.approx(0.25)
    assert parts["constraint"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        loss.sigma.copy_(torch.tensor([0.5, 0.25, 0.25, 0.5]))
    total, _ = loss.combine(losses)
    weights = [1 / (4 * 0.25), 4.0, 4.0, 1 / (4 * 0.25)]
    reg = 2 * math.log(1.25) + 2 * math.log(1 + 1 / 16)
    weighted = sum(w * x for w, x in zip(weights, losses.tolist()))
    assert float(total.detach()) == pytest.approx(weighted + reg + 0.5, rel=1e-6)


def test_druw_adds_dwa_and_uncertainty_weights() -> None:
    loss = mt.DruwTaskLoss(train_labels=BINARY)
    a, b, c = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.5, 1.0, 2.0, 1.0]), torch.tensor([1.0] * 4)
    loss.combine(a)
    loss.combine(b)
    total, parts = loss.combine(c)
    exps = [math.exp(r / 10) for r in (0.5, 1.0, 2.0, 1.0)]
    dwa = [4 * e / sum(exps) for e in exps]
    assert [parts[f"dwa_{t}"] for t in mt.TASKS] == pytest.approx(dwa, rel=1e-6)
    assert [parts[f"weight_{t}"] for t in mt.TASKS] == pytest.approx([w + 4 for w in dwa], rel=1e-6)
    assert float(total.detach()) == pytest.approx(sum(dwa) + 16 + 4 * math.log(1 + 1 / 16), rel=1e-6)


def _step(loss: nn.Module, labels: torch.Tensor) -> None:
    model = nn.ModuleDict({t: nn.Linear(2, 3) for t in mt.TASKS})
    groups = parameter_groups(model, loss, TrainConfig(lr=0.05))
    opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "param_names"} for g in groups])
    x = torch.randn(labels.shape[0], 2, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        total, _ = loss({t: m(x) for t, m in model.items()}, labels)
        opt.zero_grad()
        total.backward()
        opt.step()
    return groups


def test_sigma_is_optimised_by_the_trainer_groups_unless_frozen() -> None:
    labels = torch.tensor(BINARY[:4])
    learnable = mt.DruwTaskLoss(train_labels=BINARY)
    groups = _step(learnable, labels)
    assert [g["param_names"] for g in groups if g["name"] == "loss"] == [["loss.sigma"]]
    assert not torch.allclose(learnable.sigma.detach(), torch.full((4,), 0.25))
    assert list(learnable.task_weights()) == list(mt.TASKS)

    frozen = mt.DruwTaskLoss(train_labels=BINARY, freeze_sigma=True)
    groups = _step(frozen, labels)
    assert not [g for g in groups if g["name"] == "loss"] and list(frozen.parameters()) == []
    assert torch.equal(frozen.sigma, torch.full((4,), 0.25))
    assert "sigma" in frozen.state_dict()


def test_state_dict_round_trip_continues_the_history() -> None:
    a = mt.DruwTaskLoss(train_labels=BINARY)
    for v in ([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0]):
        a.combine(torch.tensor(v))
    b = mt.DruwTaskLoss(train_labels=BINARY)
    b.load_state_dict(a.state_dict())
    assert b.task_weights() == a.task_weights()
    assert float(b.combine(torch.ones(4))[0].detach()) == pytest.approx(float(a.combine(torch.ones(4))[0].detach()))


def test_task_weight_curves_reads_train_parts() -> None:
    record = {"model": "emombt", "variant": "dwa", "seed": 0,
              "curves": {"epoch": [1, 2], "train_parts": {"weight_audio": [1.0, 0.9], "loss_audio": [0.5, 0.4],
                                                          "weight_fusion": [1.0, 1.1]}}}
    frame = R.task_weight_curves([record])
    assert list(frame.columns) == ["run", "seed", "epoch", "task", "weight"]
    assert frame.query("task == 'fusion'")["weight"].tolist() == [1.0, 1.1]
    assert set(frame["run"]) == {"emombt-dwa"} and len(frame) == 4
    losses = R.task_weight_curves([record], part="loss")
    assert list(losses.columns)[-1] == "loss" and losses["loss"].tolist() == [0.5, 0.4]
    assert R.task_weight_curves([record], part="sigma").empty
