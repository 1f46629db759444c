"""The training loop: schedules, losses, metrics and checkpoints, exact resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from onebit import binarize_
from onebit.errors import OnebitError
from onebit.methods import BinaryConnect
from onebit.models import build
from onebit.training import TrainConfig, load_checkpoint, lr_at, squared_hinge, train
from tests.conftest import tiny_dataset


def test_lr_schedules():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_final=1e-4, schedule="exp")
    assert lr_at(0, cfg) == pytest.approx(1e-3) and lr_at(9, cfg) == pytest.approx(1e-4)
    assert lr_at(5, cfg) == pytest.approx(1e-3 * 0.1 ** (5 / 9))
    cos = TrainConfig(epochs=4, lr=0.1, schedule="cosine")
    assert [round(lr_at(e, cos), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]
    ms = TrainConfig(lr=0.01, schedule="multistep", milestones=[2, 4], gamma=0.1)
    assert [lr_at(e, ms) for e in range(5)] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4])
    assert lr_at(7, TrainConfig(lr=0.5)) == 0.5
    step = TrainConfig(epochs=10, lr=1e-3, lr_final=1e-4, schedule="exp_step")
    assert lr_at(0, step) == pytest.approx(1e-3) and lr_at(9, step, 1.0) == pytest.approx(1e-4)
    assert lr_at(4, step, 0.5) == pytest.approx(1e-3 * 0.1**0.45)


def test_per_step_schedule_sets_the_rate_at_every_step(tmp_path):
    """With ``exp_step`` the optimizer's rate falls within an epoch, step by step."""
    data = tiny_dataset(shape=(16,), n_train=128)
    model, method = _model()
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, lr_final=1e-3, schedule="exp_step")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", spy)
        train(model, method, data, cfg, run_dir=tmp_path)
    assert len(seen) == 8  # 2 epochs of 4 steps; group 0 carries BinaryConnect's lr_scale
    assert [r / seen[0] for r in seen] == pytest.approx([0.1 ** (i / 8) for i in range(8)])


def test_squared_hinge_formula():
    logits = torch.tensor([[0.5, -2.0, 1.5]])
    y = torch.tensor([2])
    # t = [-1, -1, +1]: max(0, 1 + 0.5)^2, max(0, 1 - 2)^2 = 0, max(0, 1 - 1.5)^2 = 0
    assert squared_hinge(logits, y).item() == pytest.approx(1.5**2 / 3)


def _model(seed=0, dropout=0.2):
    torch.manual_seed(seed)
    model = build("mlp", (16,), 4, hidden=[32, 32], dropout=dropout)
    method = BinaryConnect(stochastic=True)  # stochastic + dropout: resume must restore the RNG
    binarize_(model, method)
    return model, method


@dataclass(frozen=True)
class KilledAt(BinaryConnect):
    """BinaryConnect that dies at the start of epoch ``at``, like a run killed mid-way."""

    at: int = 2

    def on_epoch_start(self, model, epoch, epochs):
        if epoch == self.at:
            raise KeyboardInterrupt


def test_train_writes_metrics_and_checkpoints(tmp_path):
    data = tiny_dataset(shape=(16,), n_train=256)
    model, method = _model()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2)
    h = train(model, method, data, cfg, run_dir=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert h.summary()["test_acc_last"] > 0.6  # chance is 0.25
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == h.best["epoch"]
    last = load_checkpoint(tmp_path)
    assert last["epoch"] == 2 and len(last["history"]) == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    data = tiny_dataset(shape=(16,), n_train=256)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, schedule="cosine")

    model_a, method = _model()
    hist_a = train(model_a, method, data, cfg, run_dir=tmp_path / "a")

    model_b, _ = _model()
    with pytest.raises(KeyboardInterrupt):
        train(model_b, KilledAt(stochastic=True, at=2), data, cfg, run_dir=tmp_path / "b")
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    torch.manual_seed(999)  # the resumed process starts from other RNG state and a fresh model
    model_c, _ = _model(seed=5)
    hist_c = train(model_c, method, data, cfg, run_dir=tmp_path / "b", resume=True)

    for (k, va), vc in zip(
        model_a.state_dict().items(), model_c.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vc), k
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h.epochs]  # noqa: E731
    assert strip(hist_a) == strip(hist_c)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4


def test_bad_checkpoints(tmp_path):
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"hello")
    with pytest.raises(OnebitError, match="is not a onebit checkpoint"):
        load_checkpoint(not_ckpt)
    torch.save({"a": torch.zeros(1)}, tmp_path / "y.pt")
    with pytest.raises(OnebitError, match="no onebit format tag"):
        load_checkpoint(tmp_path / "y.pt")
    with pytest.raises(OnebitError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_no_validation_split_selects_on_test():
    data = tiny_dataset(shape=(16,), n_train=128)
    data.val = data.val.__class__(data.val.x[:0], data.val.y[:0])
    model, method = _model()
    h = train(model, method, data, TrainConfig(epochs=1, batch_size=32))
    assert not math.isnan(h.best["val_acc"]) and h.best["val_acc"] == h.best["test_acc"]


def test_diagnostics_flip_rate_and_near_zero():
    from onebit.training import diagnostics, weight_signs

    model, _ = _model(dropout=0.0)
    layer = model[1]
    with torch.no_grad():
        layer.weight.fill_(0.5)
    before = weight_signs(model)
    with torch.no_grad():
        layer.weight[:2].fill_(-0.5)  # 2 rows of 16 flip
        layer.weight[2].fill_(1e-4)  # 1 row near zero
    d = diagnostics(model, before)
    assert d["flip_rate_layers"]["1"] == 2 / 32
    assert d["near_zero_layers"]["1"] == 1 / 32
    assert 0 < d["flip_rate"] < 2 / 32  # the other binary layers did not flip


def test_tensorboard_event_files(tmp_path):
    data = tiny_dataset(shape=(16,), n_train=64)
    model, method = _model()
    cfg = TrainConfig(epochs=2, batch_size=32, tensorboard=True)
    train(model, method, data, cfg, run_dir=tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test_acc")] == [0, 1]
    assert "flip_rate" in acc.Tags()["scalars"]


def test_an_unknown_schedule_is_an_error_not_a_constant_rate():
    with pytest.raises(OnebitError, match=r"unknown train\.schedule 'linear'; accepted: constant"):
        lr_at(0, TrainConfig(schedule="linear"))


def test_train_restores_torch_threads_and_determinism():
    data = tiny_dataset(shape=(16,), n_train=64)
    model, _method = _model()
    torch.set_num_threads(1)
    before = torch.are_deterministic_algorithms_enabled()
    seen = []

    @dataclass(frozen=True)
    class Watch(BinaryConnect):
        def on_epoch_start(self, model, epoch, epochs):
            seen.append((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))

    train(model, Watch(), data, TrainConfig(epochs=1, batch_size=32, threads=2, gemm="torch"))
    assert seen == [(2, True)]  # the run's settings hold during the run
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled() == before
