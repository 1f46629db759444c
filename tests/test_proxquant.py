"""ProxQuant as its authors' code runs it, and the per-step steepness of the ProxConnect family."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
from torch import nn

from onebit import binarize_
from onebit.layers import is_binary_layer
from onebit.methods import BNNPlusPlus, ProxConnect, ProxQuant
from onebit.methods.bnstats import input_cache, recalibrate_bn_
from onebit.methods.proxconnect import steepness
from onebit.models import build
from onebit.training import TrainConfig, train
from tests.conftest import tiny_dataset


def _model(method, seed=0, hidden=(32,)):
    torch.manual_seed(seed)
    model = build("mlp", (16,), 4, hidden=list(hidden), bn_logits=True)
    binarize_(model, method)
    return model


def test_lambda_grows_within_an_epoch():
    method = ProxQuant(reg_rate=0.2)
    lams = [method.lambda_at(s, 40, epochs=4) for s in range(40)]
    assert all(b > a for a, b in itertools.pairwise(lams))  # every step, not per epoch
    for e in range(4):  # the authors' reg_rate * epoch at each epoch's first step
        assert lams[10 * e] == pytest.approx(0.2 * e)


def test_prox_strength_of_a_step_is_lr_times_lambda_t():
    method = ProxQuant(reg_rate=1.0, freeze=1.0, bn_batches=0)
    model = _model(method)
    layer = next(m for m in model.modules() if is_binary_layer(m))
    w0 = layer.weight.detach().clone()
    # no gradient step (lr of the optimizer irrelevant): only the prox of step 6 of 8 (t = 0.75)
    method.after_step(model, 0.1, epochs=1, step=6, steps=8)
    moved = (layer.weight.detach() - w0).abs()
    room = (w0.sign() - w0).abs()  # never past the nearest binary point
    assert torch.allclose(moved, torch.minimum(room, torch.full_like(room, 0.1 * 0.75)))


@pytest.mark.parametrize("freeze", [0.25, 0.5, 2 / 3, 1.0])
def test_freeze_happens_at_the_configured_fraction(freeze):
    method = ProxQuant(freeze=freeze, bn_batches=0)
    model = _model(method)
    data = tiny_dataset(shape=(16,), classes=4, n_train=64)
    x, y = data.train.x, data.train.y
    layers = [m for m in model.modules() if is_binary_layer(m)]
    steps, frozen_at = 12, None
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, 1e-2, epoch=i // 4, epochs=3, optimizer=opt, step=i, steps=steps)
        if frozen_at is None and not layers[0].weight.requires_grad:
            frozen_at = i + 1
    assert frozen_at == round(freeze * steps)
    for m in layers:
        assert not m.weight.requires_grad and m.weight.grad is None
        assert set(m.weight.unique().tolist()) <= {-1.0, 1.0}


def _bn_input_stats(model, x):
    """Mean and (biased) variance of the hard model's input to its first BatchNorm on ``x``."""
    seen = {}
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    h = bn.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["x"].mean(0), seen["x"].var(0, unbiased=False), bn


def test_bn_statistics_are_reestimated_for_the_hard_model_at_each_epoch_end():
    method = ProxQuant(reg_rate=0.0, freeze=1.0, bn_batches=3)
    model = _model(method)
    data = tiny_dataset(shape=(16,), classes=4, n_train=96)
    xs = data.train.x.split(32)
    ys = data.train.y.split(32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(6):  # two epochs of 3 steps
        x, y = xs[i % 3], ys[i % 3]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, 1e-2, epoch=i // 3, epochs=2, optimizer=opt, step=i, steps=6)
        if i == 4:  # mid-epoch: the running statistics are the relaxed model's (latent w)
            mean, var, bn = _bn_input_stats(model, torch.cat(xs))
            assert not torch.allclose(bn.running_var, var, rtol=0.5)
            model.train()
    assert model.training  # modes restored
    # after the epoch's last step: the first BN holds the hard model's statistics of the batches
    # (equal-weight average over the batches of the epoch's last steps, unbiased per batch)
    stats = [_bn_input_stats(model, x) for x in xs]
    mean = torch.stack([m for m, _, _ in stats]).mean(0)
    var = torch.stack([v * len(x) / (len(x) - 1) for (_, v, _), x in zip(stats, xs, strict=True)])
    bn = stats[0][2]
    assert torch.allclose(bn.running_mean, mean, atol=1e-4)
    assert torch.allclose(bn.running_var, var.mean(0), rtol=1e-3)
    assert bn.momentum == 0.1  # restored
    # the cache travels with the model and never enters the state_dict
    assert all("cache" not in k for k in model.state_dict())
    pickle.loads(pickle.dumps(model))
    assert len(copy.deepcopy(model).__dict__["_onebit_input_cache"].inputs) == 3


def test_recalibrate_bn_normalizes_the_hard_model_and_restores_modes():
    torch.manual_seed(0)
    model = build("mlp", (16,), 4, hidden=[32], bn_logits=True, dropout=0.5)
    binarize_(model, ProxQuant())
    x = torch.randn(256, 16)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(x)  # running stats of the relaxed model (w ~ 1/sqrt(16))
    _, var_hard, bn = _bn_input_stats(model, x)
    assert (var_hard / bn.running_var).median() > 5  # sign(w) is much larger than w
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    model.train()
    drop.eval()  # a mixed state, restored as it was
    assert recalibrate_bn_(model, [((x,), {})]) == 2
    assert model.training and not drop.training
    mean, var, bn = _bn_input_stats(model, x)
    assert torch.allclose(bn.running_mean, mean, atol=1e-4)
    assert torch.allclose(bn.running_var, var * 256 / 255, rtol=1e-3)
    assert recalibrate_bn_(model, []) == 0


def test_input_cache_keeps_the_last_training_inputs_only():
    model = nn.Sequential(nn.Linear(3, 2))
    cache = input_cache(model, 2)
    assert input_cache(model, 2) is cache  # registered once
    xs = [torch.randn(1, 3) for _ in range(3)]
    for x in xs:
        model(x)
    model.eval()
    model(torch.randn(1, 3))  # eval calls are not kept
    assert [a[0] for a, _ in cache.inputs] == xs[1:]


def test_proxquant_in_train_freezes_and_reports_the_hard_model():
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    method = ProxQuant(freeze=0.5, bn_batches=2)
    model = _model(method, hidden=(32, 32))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, optimizer="adam", gemm="torch")
    hist = train(model, method, data, cfg)
    layers = [m for m in model.modules() if is_binary_layer(m)]
    assert all(not m.weight.requires_grad for m in layers)
    assert all(set(m.weight.unique().tolist()) <= {-1.0, 1.0} for m in layers)
    assert hist.epochs[0]["val_loss"] < 10  # the pre-freeze hard model is evaluated sensibly
    assert hist.last["flip_rate"] == 0.0


@pytest.mark.parametrize("cls", [ProxConnect, BNNPlusPlus])
def test_family_steepness_changes_within_an_epoch(cls):
    method = cls(mu_start=1.0, mu_end=9.0)
    model = _model(method)
    data = tiny_dataset(shape=(16,), classes=4, n_train=64)
    layer = next(m for m in model.modules() if is_binary_layer(m))
    method.on_epoch_start(model, 0, 3)
    assert layer.quantizer.mu == 1.0
    mus = []
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(12):  # 3 epochs of 4 steps
        loss = nn.functional.cross_entropy(model(data.train.x), data.train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, 1e-2, epoch=i // 4, epochs=3, optimizer=opt, step=i, steps=12)
        mus.append(layer.quantizer.mu)
    # within the first epoch mu rises every step, and it meets the per-epoch value at each start
    assert mus[0] == pytest.approx(1 + 8 * 0.25 / 2) and mus[0] < mus[1] < mus[2] < mus[3]
    assert mus[3] == pytest.approx(steepness(1, 3, 1.0, 9.0))  # the start of epoch 1
    assert mus[7] == pytest.approx(9.0) and mus[11] == 9.0  # the last epoch at mu_end, as before
    # a loop that passes no steps keeps the per-epoch value
    method.on_epoch_start(model, 1, 3)
    method.after_step(model, 1e-2, epoch=1, epochs=3, optimizer=opt)
    assert layer.quantizer.mu == pytest.approx(5.0)


def test_one_epoch_pc_run_in_train_sharpens_to_mu_end():
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    method = ProxConnect(mu_start=1.0, mu_end=9.0)
    model = _model(method)
    train(model, method, data, TrainConfig(epochs=1, batch_size=32, lr=1e-2, gemm="torch"))
    layers = [m for m in model.modules() if is_binary_layer(m)]
    assert all(m.quantizer.mu == pytest.approx(9.0) for m in layers)  # per epoch: 1.0 all run
