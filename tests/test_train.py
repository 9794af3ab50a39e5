"""Trainer tests on a tiny model over random tensors shaped like the batch contract (CPU, a few seconds)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from emolib.io import read_json
from emolib.losses import build_loss
from emolib.records import record_path as make_record_path
from emolib.records import validate_record
from emolib.train import (
    EpochShuffleSampler,
    LrSchedule,
    TrainConfig,
    build_optimizer,
    fit,
    freeze_hooked_params,
    load_best_weights,
    parameter_groups,
    seed_everything,
)

CLASSES = ("ang", "exc", "fru", "hap", "neu", "sad")
FACE_FEATURES = 3 * 4 * 4


class TinyEmotions(Dataset):
    """Utterances whose face pixels, audio loudness and text length carry the multi-hot labels plus noise."""

    task = "multilabel"
    label_names = CLASSES

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        pattern = np.random.default_rng(1234).normal(size=(len(CLASSES), FACE_FEATURES))
        self.items = []
        for i in range(n):
            y = (rng.random(len(CLASSES)) < 0.35).astype(np.float32)
            frames = int(rng.integers(1, 4))
            faces = 128 + 30 * (y @ pattern)[None] + rng.normal(0, 30, size=(frames, FACE_FEATURES))
            audio = rng.normal(0, 0.1 + 0.3 * y[0], size=int(rng.integers(40, 100))).clip(-1, 1)
            faces = np.clip(faces, 0, 255).astype(np.uint8).reshape(frames, 3, 4, 4)
            self.items.append({"uid": f"u{seed}_{i}", "faces": faces, "audio": audio.astype(np.float32),
                               "text": "word " * int(1 + 4 * y[1]), "labels": y})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def labels(self) -> np.ndarray:
        return np.stack([it["labels"] for it in self.items])


def collate(items: list[dict]) -> dict:
    return {
        "uid": [it["uid"] for it in items],
        "faces": torch.from_numpy(np.concatenate([it["faces"] for it in items])),
        "face_lengths": torch.tensor([len(it["faces"]) for it in items]),
        "face_conf": torch.ones(sum(len(it["faces"]) for it in items)),
        "audio": nn.utils.rnn.pad_sequence([torch.from_numpy(it["audio"]) for it in items], batch_first=True),
        "audio_lengths": torch.tensor([len(it["audio"]) for it in items]),
        "text": [it["text"] for it in items],
        "labels": torch.from_numpy(np.stack([it["labels"] for it in items])),
    }


class TinyFusion(nn.Module):
    """Mean-pools faces, takes audio RMS and text length; dropout makes resume depend on the RNG state."""

    def __init__(self, freeze: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.visual = nn.Linear(FACE_FEATURES, 16)
        self.audio = nn.Linear(2, 16)
        self.text = nn.Sequential(nn.Linear(1, 16), nn.Tanh())
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(16, len(CLASSES))
        self._freeze = freeze

    def forward(self, batch: dict) -> dict:
        lengths = batch["face_lengths"]
        faces = batch["faces"].float().flatten(1) / 255 - 0.5
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        pooled = torch.zeros(len(lengths), FACE_FEATURES).index_add_(0, owner, faces) / lengths[:, None]
        audio, alen = batch["audio"], batch["audio_lengths"]
        mask = (torch.arange(audio.shape[1])[None] < alen[:, None]).float()
        rms = ((audio**2 * mask).sum(1) / alen).sqrt()
        mean_abs = (audio.abs() * mask).sum(1) / alen
        words = torch.tensor([[len(t.split()) / 3.0] for t in batch["text"]])
        h = torch.relu(self.visual(pooled) + self.audio(torch.stack([rms, mean_abs], 1) * 5) + self.text(words))
        return {"logits": self.out(self.drop(h))}

    def lr_factors(self, text_lr_factor: float) -> dict[str, float]:
        return {"text": 1.0 / text_lr_factor}

    def frozen_params(self) -> tuple[str, ...]:
        return self._freeze


class TinyConvFusion(TinyFusion):
    """TinyFusion whose faces pass a 3x3 convolution first: a 4-D weight for the channels-last setting."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, batch: dict) -> dict:
        return super().forward({**batch, "faces": self.conv(batch["faces"].float())})


def seeded_conv_model() -> TinyConvFusion:
    seed_everything(7)
    return TinyConvFusion()


class LearnableScaleBCE(nn.Module):
    """A loss with a parameter of its own, to check that the trainer optimises it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, outputs, labels):
        total, parts = self.inner(outputs, labels)
        total = torch.exp(-self.log_scale) * total + 0.5 * self.log_scale
        return total, {**parts, "log_scale": float(self.log_scale.detach())}


@pytest.fixture(scope="module")
def splits():
    return TinyEmotions(96, 1), TinyEmotions(48, 2), TinyEmotions(48, 3)


TIMING_KEYS = ("wall_time_s", "peak_memory_bytes", "created_at", "epoch_time_s", "timing", "environment")


def run(splits, run_dir, *, record=None, resume=False, on_epoch_end=None, model=None, loss=None, **overrides):
    train, valid, test = splits
    params = dict(epochs=4, batch_size=16, lr=3e-2, seed=7, device="cpu", progress=False,
                  eval_protocols=["dai-iemocap", "e2emal"])
    params.update(overrides)
    config = TrainConfig(**params)
    if model is None:
        seed_everything(config.seed)
        model = TinyFusion()
    loss = loss or build_loss("bce", train_labels=train.labels())
    rec = fit(model, loss, train, valid, test, config=config, class_names=CLASSES, dataset_name="synthetic-iemocap",
              run_dir=run_dir, record_path=record, collate_fn=collate, resume=resume, on_epoch_end=on_epoch_end,
              run_info={"model": "tiny", "profile": "test", "loss": "bce"})
    return rec, model


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_training_loss_decreases_and_record_is_valid(splits, tmp_path):
    path = make_record_path(tmp_path / "results", "test", "tiny", "synthetic-iemocap", "dai-iemocap", 7)
    rec, model = run(splits, tmp_path / "run", record=path, epochs=5)
    losses = rec["curves"]["train_loss"]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    written = read_json(path)
    validate_record(written)
    assert written["metrics"] == rec["metrics"] and written["curves"] == rec["curves"]
    assert set(rec["metrics"]) == {"dai-iemocap", "e2emal"} and rec["protocol"] == "dai-iemocap"
    assert rec["thresholds"]["e2emal"] == {c: 0.5 for c in CLASSES}
    # Reported numbers belong to the best valid epoch, on the primary protocol's valid average F1.
    best = rec["best_epoch"]
    f1_curve = rec["curves"]["valid"]["dai-iemocap"]["f1"]
    assert f1_curve[best - 1] == max(f1_curve) and f1_curve.index(max(f1_curve)) == best - 1
    test_f1 = rec["metrics"]["dai-iemocap"]["test"]["average"]["f1"]
    assert test_f1 == rec["curves"]["test"]["dai-iemocap"]["f1"][best - 1]
    # The test split is evaluated with the thresholds chosen on valid.
    assert rec["metrics"]["dai-iemocap"]["test"]["thresholds"] == rec["metrics"]["dai-iemocap"]["valid"]["thresholds"]
    assert rec["n_params"] == sum(p.numel() for p in model.parameters()) == rec["n_trainable_params"]
    assert rec["peak_memory_kind"] == "cpu_rss" and rec["peak_memory_bytes"] > 0
    # best.pt holds the selected epoch's weights, which the model also holds when fit returns.
    assert rec["environment"]["device"] == "cpu" and rec["environment"]["num_processes"] == 1
    fresh = TinyFusion()
    assert load_best_weights(fresh, tmp_path / "run") == best
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_same_seed_gives_identical_records(splits, tmp_path):
    first, _ = run(splits, tmp_path / "a", epochs=3)
    second, _ = run(splits, tmp_path / "b", epochs=3)
    assert comparable(first) == comparable(second)
    third, _ = run(splits, tmp_path / "c", epochs=3, seed=8)
    assert third["curves"]["train_loss"] != first["curves"]["train_loss"]


class Killed(RuntimeError):
    pass


def kill_after(epoch: int):
    def callback(e, history):
        assert len(history) == e
        if e == epoch:
            raise Killed

    return callback


def test_resume_after_kill_reproduces_uninterrupted_run(splits, tmp_path):
    full, full_model = run(splits, tmp_path / "full", epochs=4)
    with pytest.raises(Killed):
        run(splits, tmp_path / "killed", epochs=4, on_epoch_end=kill_after(2))
    # A fresh model object: everything must come from last.pt.
    resumed, resumed_model = run(splits, tmp_path / "killed", epochs=4, resume=True)
    assert comparable(resumed) == comparable(full)
    for key, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value)

    # The brief's variant: a finished 2-epoch run extended to 4 epochs.
    run(splits, tmp_path / "extended", epochs=2)
    extended, _ = run(splits, tmp_path / "extended", epochs=4, resume=True)
    for key in ("metrics", "thresholds", "curves", "best_epoch", "epochs_run"):
        assert extended[key] == full[key], key
    assert extended["wall_time_s"] >= resumed["epoch_time_s"][0]


def test_resume_of_finished_run_only_rerecords(splits, tmp_path):
    done, _ = run(splits, tmp_path / "run", epochs=2)
    again, _ = run(splits, tmp_path / "run", epochs=2, resume=True)
    assert comparable(again) == comparable(done)
    assert again["wall_time_s"] == done["wall_time_s"]


def test_resume_refuses_changed_settings(splits, tmp_path):
    run(splits, tmp_path / "run", epochs=1)
    with pytest.raises(ValueError, match=r"last\.pt: cannot resume.*lr: 0\.03 -> 0\.01"):
        run(splits, tmp_path / "run", epochs=2, lr=1e-2, resume=True)


def test_resume_with_loss_parameters_and_cosine_schedule(splits, tmp_path):
    def make_loss():
        return LearnableScaleBCE(build_loss("bce", train_labels=splits[0].labels()))

    opts = dict(epochs=3, scheduler="cosine", warmup_epochs=1, clip_grad=1.0, weight_decay=1e-4)
    full, _ = run(splits, tmp_path / "full", loss=make_loss(), **opts)
    with pytest.raises(Killed):
        run(splits, tmp_path / "part", loss=make_loss(), on_epoch_end=kill_after(1), **opts)
    resumed, _ = run(splits, tmp_path / "part", loss=make_loss(), resume=True, **opts)
    assert comparable(resumed) == comparable(full)
    # The loss's own parameter was optimised (it started at 0).
    assert full["curves"]["train_parts"]["log_scale"][-1] != 0.0
    # Warm-up over the first epoch (6 steps): lr at the first step is lr/6.
    assert full["curves"]["lr"][0] == pytest.approx(3e-2 / 6)


def test_early_stopping(splits, tmp_path):
    # A vanishing learning rate cannot improve the valid F1 after epoch 1, so patience 2 stops after epoch 3.
    rec, _ = run(splits, tmp_path / "run", epochs=10, lr=1e-12, early_stop=2)
    assert rec["stopped_early"] is True
    assert rec["epochs_run"] == 3 and rec["best_epoch"] == 1
    no_stop, _ = run(splits, tmp_path / "run2", epochs=3, lr=1e-12, early_stop=2)
    assert no_stop["stopped_early"] is False and no_stop["epochs_run"] == 3


def test_select_metric_sum(splits, tmp_path):
    rec, _ = run(splits, tmp_path / "run", epochs=3, select_metric="f1+acc")
    valid = rec["curves"]["valid"]["dai-iemocap"]
    sums = [f + a for f, a in zip(valid["f1"], valid["acc"])]
    assert rec["curves"]["select"] == pytest.approx(sums)
    assert rec["best_epoch"] == int(np.argmax(sums)) + 1


def test_parameter_groups_text_lr_and_overrides():
    model = TinyFusion()
    loss = LearnableScaleBCE(build_loss("bce", train_labels=np.eye(6)))
    groups = {g["name"]: g for g in parameter_groups(model, loss, TrainConfig(lr=5e-5, text_lr_factor=10))}
    assert groups["base"]["lr"] == 5e-5
    assert groups["lr_x0.1"]["lr"] == pytest.approx(5e-6)
    assert sorted(groups["lr_x0.1"]["param_names"]) == ["text.0.bias", "text.0.weight"]
    assert groups["loss"]["param_names"] == ["loss.log_scale"] and groups["loss"]["weight_decay"] == 0.0
    # Config factors override the model's, and the longest prefix wins.
    config = TrainConfig(lr=1e-3, lr_factors={"text": 0.5, "text.0.bias": 2.0, "out": 0.25})
    lrs = {name: g["lr"] for g in parameter_groups(model, loss, config) for name in g["param_names"]}
    assert lrs["text.0.weight"] == 5e-4 and lrs["text.0.bias"] == 2e-3
    assert lrs["out.weight"] == 2.5e-4 and lrs["visual.weight"] == 1e-3
    with pytest.raises(ValueError, match="prefix 'nope' matches no parameter"):
        parameter_groups(model, loss, TrainConfig(lr_factors={"nope": 2.0}))

    class NoText(TinyFusion):
        def lr_factors(self):  # names a text module this variant does not have: ignored
            return {"text": 0.1, "absent_text_encoder": 0.1}

    plain = NoText()
    lrs = {n: g["lr"] for g in parameter_groups(plain, nn.Identity(), TrainConfig(lr=1.0)) for n in g["param_names"]}
    assert lrs["text.0.weight"] == 0.1 and lrs["visual.weight"] == 1.0


def test_adam_eps_reaches_the_optimizer_and_old_checkpoints_resume(splits, tmp_path):
    default = TrainConfig()
    assert default.adam_eps == 1e-8  # PyTorch's default, which the PyTorch-based papers ran with
    optimizer = build_optimizer(parameter_groups(TinyFusion(), nn.Identity(), default), default)
    assert {g["eps"] for g in optimizer.param_groups} == {1e-8}
    for name in ("adam", "adamw"):
        config = TrainConfig(optimizer=name, adam_eps=1e-7)
        optimizer = build_optimizer(parameter_groups(TinyFusion(), nn.Identity(), config), config)
        assert {g["eps"] for g in optimizer.param_groups} == {1e-7}
    for bad in (0, -1e-8, float("nan"), float("inf"), True, "1e-7"):
        with pytest.raises(ValueError, match="adam_eps must be a finite number > 0"):
            TrainConfig(adam_eps=bad)
    # A checkpoint written before the field existed has no adam_eps: it resumes with the default ...
    run(splits, tmp_path / "run", epochs=1)
    path = tmp_path / "run" / "last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    del ckpt["config"]["adam_eps"]
    torch.save(ckpt, path)
    resumed, _ = run(splits, tmp_path / "run", epochs=2, resume=True)
    assert resumed["epochs_run"] == 2 and resumed["params"]["train"]["adam_eps"] == 1e-8
    # ... and refuses another epsilon than the one the run started with.
    with pytest.raises(ValueError, match=r"cannot resume.*adam_eps: 1e-08 -> 1e-07"):
        run(splits, tmp_path / "run", epochs=3, adam_eps=1e-7, resume=True)


def test_frozen_params_are_left_out_and_stay_fixed(splits, tmp_path):
    seed_everything(0)
    model = TinyFusion(freeze=("out", "audio.bias"))
    before = copy.deepcopy(model.state_dict())
    assert freeze_hooked_params(model) == ["audio.bias", "out.bias", "out.weight"]
    names = [n for g in parameter_groups(model, nn.Identity(), TrainConfig()) for n in g["param_names"]]
    assert "out.weight" not in names and "audio.bias" not in names and "audio.weight" in names
    rec, model = run(splits, tmp_path / "run", epochs=2, model=model)
    after = model.state_dict()
    for key in ("out.weight", "out.bias", "audio.bias"):
        assert torch.equal(after[key], before[key])
    assert not torch.equal(after["audio.weight"], before["audio.weight"])
    frozen = sum(before[k].numel() for k in ("out.weight", "out.bias", "audio.bias"))
    assert rec["n_trainable_params"] == rec["n_params"] - frozen
    with pytest.raises(ValueError, match="'missing' matches no parameter"):
        freeze_hooked_params(TinyFusion(freeze=("missing",)))


def test_lr_schedule_values():
    config = TrainConfig(epochs=20, scheduler="cosine", warmup_epochs=5, cosine_epochs=15, min_lr_factor=0.1)
    schedule = LrSchedule(config, steps_per_epoch=10)
    assert schedule(0) == pytest.approx(1 / 50) and schedule(49) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(1.0)
    # Half-way through the cosine (step 100 of 50..150): floor + (1 - floor) / 2.
    assert schedule(100) == pytest.approx(0.55)
    assert schedule(150) == pytest.approx(0.1) and schedule(199) == pytest.approx(0.1)
    dai = LrSchedule(TrainConfig(epochs=4, scheduler="cosine"), steps_per_epoch=5)
    assert [dai(s) for s in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.0])
    assert LrSchedule(TrainConfig(), steps_per_epoch=5)(3) == 1.0


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(4)
    list(b)  # consuming an earlier epoch must not matter
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(99)
    assert list(a) == first


def test_config_validation():
    with pytest.raises(ValueError, match="lr must be > 0.*scheduler 'step'"):
        TrainConfig(lr=0, scheduler="step")
    with pytest.raises(ValueError, match=r"unknown training parameters \['lr_rate'\]"):
        TrainConfig.from_dict({"lr_rate": 1e-3})
    assert TrainConfig.from_dict(TrainConfig(epochs=3).to_dict()) == TrainConfig(epochs=3)


def test_regression_task_with_l1(tmp_path):
    class Sims(TinyEmotions):
        task = "regression"

        def __init__(self, n, seed):
            super().__init__(n, seed)
            for it in self.items:
                it["labels"] = (np.tanh(it["labels"][:4] * 2 - 1) * 0.8).astype(np.float32)

    class Head(TinyFusion):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(16, 4)

    sims = Sims(64, 1), Sims(32, 2), Sims(32, 3)
    seed_everything(0)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu", progress=False, eval_protocols=["sims"])
    rec = fit(Head(), build_loss("l1", train_labels=sims[0].labels()), *sims, config=config,
              class_names=("M", "T", "A", "V"), dataset_name="synthetic-sims", run_dir=tmp_path, record_path=None,
              collate_fn=collate, run_info={"model": "tiny", "profile": "test"})
    assert rec["protocol"] == "sims" and rec["thresholds"] == {"sims": None}
    assert set(rec["curves"]["train_parts"]) == {"l1", "l1_M", "l1_T", "l1_A", "l1_V"}
    assert math.isfinite(rec["metrics"]["sims"]["test"]["average"]["mae"])


def test_fresh_start_removes_stale_checkpoints(splits, tmp_path):
    run(splits, tmp_path / "run", epochs=1)
    assert (tmp_path / "run" / "last.pt").exists()

    def crash(self, outputs, labels):
        raise Killed

    with pytest.raises(Killed):
        run(splits, tmp_path / "run", epochs=1, lr=1e-2, loss=type("Crash", (nn.Module,), {"forward": crash})())
    # A later resume must not continue the earlier run under the new run's name.
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


def test_test_split_only_at_improving_epochs_gives_the_same_record(splits, tmp_path):
    every, _ = run(splits, tmp_path / "every", epochs=8)
    best, _ = run(splits, tmp_path / "best", epochs=8, test_each_epoch=False)
    improved = [row for row, flag in enumerate(every["curves"]["select"])
                if flag > max(every["curves"]["select"][:row], default=-1)]
    assert 0 < len(improved) < 8, "the check needs epochs that improve on valid and epochs that do not"
    for key in ("metrics", "thresholds", "best_epoch", "epochs_run"):
        assert best[key] == every[key], key
    for key in ("epoch", "train_loss", "lr", "select", "train_parts", "valid"):
        assert best["curves"][key] == every["curves"][key], key
    for proto, metrics in every["curves"]["test"].items():
        for metric, values in metrics.items():
            expected = [v if i in improved else None for i, v in enumerate(values)]
            assert best["curves"]["test"][proto][metric] == expected, (proto, metric)
    assert best["timing"]["eval_batches"] < every["timing"]["eval_batches"]
    assert best["params"]["train"]["test_each_epoch"] is False and every["params"]["train"]["test_each_epoch"]
    validate_record(json.loads(json.dumps(best)))  # None in the test curves is a valid record
    import matplotlib

    matplotlib.use("Agg")
    from emolib.viz import training_curves

    training_curves([best])  # plots the test curve with its gaps


def test_fused_channels_last_training_equals_the_default_up_to_rounding(splits, tmp_path):
    fast, fast_model = run(splits, tmp_path / "fast", model=seeded_conv_model(), epochs=3)  # the defaults
    weight = fast_model.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert fast["params"]["train"]["fused_optimizer"] and fast["params"]["train"]["channels_last"]
    plain, plain_model = run(splits, tmp_path / "plain", model=seeded_conv_model(), epochs=3,
                             fused_optimizer=False, channels_last=False)
    assert plain_model.conv.weight.is_contiguous()
    np.testing.assert_allclose(fast["curves"]["train_loss"], plain["curves"]["train_loss"], rtol=1e-5)
    for key, value in plain_model.state_dict().items():
        torch.testing.assert_close(fast_model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_resume_under_the_other_memory_layout_matches_uninterrupted(splits, tmp_path):
    # last.pt written with contiguous weights and Adam moments, resumed channels-last: the fused Adam must not
    # pair a channels-last weight with contiguous moments (match_state_layout).
    full, full_model = run(splits, tmp_path / "full", model=seeded_conv_model(), epochs=3, channels_last=False)
    with pytest.raises(Killed):
        run(splits, tmp_path / "part", model=seeded_conv_model(), epochs=3, channels_last=False,
            on_epoch_end=kill_after(1))
    resumed, resumed_model = run(splits, tmp_path / "part", model=seeded_conv_model(), epochs=3, resume=True)
    assert resumed_model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(resumed["curves"]["train_loss"], full["curves"]["train_loss"], rtol=1e-5)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=1e-4, atol=1e-5)
