"""BiTAT (our reconstruction): the transform, the method, the MobileNet-style net and packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from onebit import binarize_
from onebit.checkpoint import load_init_
from onebit.convert import summary
from onebit.errors import OnebitError
from onebit.experiments.compare import plan
from onebit.experiments.config import Config
from onebit.layers import is_binary_layer
from onebit.methods import METHODS, BiTAT
from onebit.models import build
from onebit.packer import pack
from onebit.runtime import load
from onebit.training import TrainConfig, make_optimizer, save_checkpoint, train
from onebit.transforms import (
    BitatTransform,
    eigenbasis,
    importance_init,
    input_patches,
    transforms,
)
from tests.conftest import tiny_dataset

SMALL = {"stem": 8, "channels": [16, 16, 24], "strides": [1, 2, 1]}


def _mobilenet(method, seed=0, **kw):
    torch.manual_seed(seed)
    model = build(
        "mobilenet_small", (3, 16, 16), 4, act=method.hidden_activation(), **{**SMALL, **kw}
    )
    binarize_(model, method)
    return model


def _orthonormality_error(u: torch.Tensor) -> float:
    return float((u.T @ u - torch.eye(u.shape[0])).abs().max())


def test_pure_functions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 7, generator=g)
    c = a.T @ a / 50
    evals, u = eigenbasis(c)
    assert (evals[:-1] >= evals[1:]).all() and _orthonormality_error(u) < 1e-5
    torch.testing.assert_close(u @ torch.diag(evals) @ u.T, c, atol=1e-5, rtol=1e-5)
    s = importance_init(evals)
    assert torch.allclose(s.square().mean(), torch.tensor(1.0)) and (s > 0).all()
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=3)
    rows = input_patches(conv, torch.randn(4, 6, 5, 5), max_rows=10_000)
    assert rows.shape == (4 * 3 * 25, 2 * 9)  # every position of every group and example
    assert input_patches(conv, torch.randn(4, 6, 5, 5), max_rows=64).shape == (64, 18)


def test_transform_is_the_identity_until_the_first_refresh_and_keeps_w_across_refreshes():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    t = BitatTransform(layer.weight, refresh_every=3, stats_batches=2)
    torch.testing.assert_close(t(), layer.weight)
    mix = torch.randn(12, 12)  # correlated inputs
    refreshes = 0
    for step in range(1, 12):
        t.observe(layer, torch.randn(64, 12) @ mix)
        w_before = t().detach().clone()
        did = t.is_refresh_step(step)
        t.steps += 1
        if did:
            assert t.refresh_(w_before)
            refreshes += 1
            torch.testing.assert_close(t(), w_before, atol=1e-5, rtol=1e-5)  # W unchanged
            assert _orthonormality_error(t.basis) < 1e-5
        with torch.no_grad():  # an optimizer step between refreshes
            t.v.add_(0.01 * torch.randn_like(t.v))
            t.s.mul_(1.01)
    assert refreshes == int(t.refreshes) == 4  # after steps 2, 5, 8, 11
    assert _orthonormality_error(t.basis) < 1e-5
    assert not torch.allclose(t.basis, torch.eye(12))


def _train_steps(model, method, data, steps, opt=None):
    opt = opt or make_optimizer(model, TrainConfig(lr=1e-2), method.param_groups(model))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i in range(steps):
        x, y = data.train.x[i % 4 * 32 :][:32], data.train.y[i % 4 * 32 :][:32]
        loss = method.training_loss(model(x), y, loss_fn(model(x), y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, optimizer=opt)
    return opt


def test_bitat_on_mobilenet_refreshes_keeps_weight_materialized_and_binary():
    method = BiTAT(refresh_every=4, stats_batches=2)
    model = _mobilenet(method)
    data = tiny_dataset(shape=(3, 16, 16), classes=4, n_train=128)
    layers = dict(transforms(model))
    assert len(layers) == 2 * len(SMALL["channels"])  # depthwise + pointwise; stem and fc float
    opt = _train_steps(model, method, data, 10)
    for layer, t in layers.items():
        assert int(t.refreshes) == 3  # after steps 2, 6, 10
        assert _orthonormality_error(t.basis) < 1e-5
        torch.testing.assert_close(layer.weight, t().detach())  # materialized after each step
        assert t.v not in opt.state and t.s in opt.state  # V's old-basis moments dropped
        assert not layer.weight.requires_grad
    _train_steps(model, method, data, 1, opt)
    assert all(t.v in opt.state for t in layers.values())
    model.eval()
    for m in model.modules():
        if is_binary_layer(m):
            wb = m.forward_weight()
            assert torch.equal(wb.abs(), m.alpha().expand_as(wb))  # only ±alpha per channel


def test_deployed_model_is_an_ordinary_binary_net_that_packs(tmp_path):
    method = BiTAT(refresh_every=3, stats_batches=2)
    model = _mobilenet(method)
    data = tiny_dataset(shape=(3, 16, 16), classes=4, n_train=128)
    _train_steps(model, method, data, 5)
    model.eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    packed = pack(model, (3, 16, 16))
    out = packed(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # depthwise convolutions are grouped convs of the file; it says its version and round-trips
    assert any(op.op == "conv" and op.attrs.get("groups", 1) > 1 for op in packed.ops)
    path = packed.save(tmp_path / "m.onebit")
    with safe_open(str(path), "np") as f:
        assert f.metadata()["format_version"] == "4"  # a captured graph without attention
    np.testing.assert_array_equal(load(path)(x.numpy()), out)
    # the size report counts the deployed layers only, as for the plain XNOR net
    plain = _mobilenet(METHODS["xnor-ft"]())
    rows = summary(model, x[:1])
    assert [r.name for r in rows] == [r.name for r in summary(plain, x[:1])]
    assert sum(r.bits for r in rows) == sum(r.bits for r in summary(plain, x[:1]))


@pytest.mark.parametrize("name", ["fp", "bwn", "bnn", "xnor", "iterative"])
def test_grouped_convs_pack_for_other_methods(name):
    method = METHODS[name]()
    model = _mobilenet(method, residual=False).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    out = pack(model, (3, 16, 16))(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_progressive_schedule_init_and_distillation(tmp_path):
    fp = build("mobilenet_small", (3, 16, 16), 4, act="hardtanh", **SMALL)
    ckpt = tmp_path / "best.pt"
    cfg = Config.from_dict(
        {"model": {"name": "mobilenet_small", "act": "hardtanh", **SMALL}, "method": {"name": "fp"}}
    )
    save_checkpoint(ckpt, model=fp.state_dict(), config=cfg.to_dict(), input_shape=[3, 16, 16],
                    num_classes=4)  # fmt: skip
    method = BiTAT(init=str(ckpt), distill=1.0)
    model = _mobilenet(method, seed=1)
    load_init_(model, method.init_checkpoint)  # what train() does before the first epoch
    method.on_epoch_start(model, 0, 6)
    own = model.state_dict()
    for name, p in fp.state_dict().items():
        torch.testing.assert_close(own[name], p)  # the fp start
    for layer, t in transforms(model):
        torch.testing.assert_close(t(), layer.weight)  # V re-derived from the loaded weight
    flags = [m.binary for m in model.modules() if is_binary_layer(m)]
    assert flags == [True] + [False] * 5  # bottom-up: the first binarized layer only
    method.on_epoch_start(model, 5, 6)
    assert all(m.binary for m in model.modules() if is_binary_layer(m))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    base = torch.tensor(1.0)
    assert method.distill_from == str(ckpt)
    teacher = fp.eval()
    assert method.training_loss(model(x), y, base, teacher(x)) > base  # distillation term added
    bad = BiTAT(init=str(ckpt))
    other = build("mobilenet_small", (3, 16, 16), 4, act="hardtanh", stem=4, channels=[8],
                  strides=[1])  # fmt: skip
    binarize_(other, bad)
    with pytest.raises(OnebitError, match=r"different model|does not fit"):
        load_init_(other, bad.init_checkpoint)


def test_compare_starts_bitat_from_the_fp_run():
    cfg = Config.from_dict({"model": {"name": "mobilenet_small"}, "out": "runs", "name": "b"})
    jobs = plan(cfg, ["bitat", "bitat-progressive", "xnor-ft"], [0])
    assert [j.key for j in jobs] == ["fp-s0", "bitat-s0", "bitat-progressive-s0", "xnor-ft-s0"]
    assert all(j.cfg.method.options["init"] == "runs/b/fp-s0/best.pt" for j in jobs[1:])
    assert METHODS["bitat"].reconstruction and "(reconstruction)" in METHODS["bitat"].title


def test_bitat_trains_end_to_end():
    data = tiny_dataset(shape=(3, 16, 16), classes=4, n_train=128)
    method = BiTAT(refresh_every=3, stats_batches=2)
    model = _mobilenet(method)
    h = train(model, method, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2))
    assert not h.last.get("partial") and h.best["epoch"] == 2
    assert h.last["train_loss"] < h.epochs[0]["train_loss"]
