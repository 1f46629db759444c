"""One conformance test over every registered method (DESIGN.md, principle 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onebit.experiments.config import Config, build_method
from onebit.layers import is_binary_layer
from onebit.methods import METHODS, method_preset
from onebit.packer import pack
from onebit.training import LOSSES, TrainConfig, make_optimizer
from tests.conftest import binarized_mlp, tiny_dataset


@pytest.mark.parametrize("name", list(METHODS))
def test_method_conformance(name):
    method = METHODS[name]()
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    model = binarized_mlp(method, data)
    binary = [m for m in model.modules() if is_binary_layer(m)]
    assert bool(binary) == method.binary_weights

    # a few steps on a tiny task lower the loss
    cfg = TrainConfig(lr=1e-2)
    opt = method.make_optimizer(model, cfg) or make_optimizer(
        model, cfg, method.param_groups(model)
    )
    x, y = data.train.x, data.train.y
    loss_fn = LOSSES["ce"]
    model.train()
    first = None
    steps = 30  # one epoch of 30 steps: per-step schedules (freeze, steepness) run their course
    for i in range(steps):
        loss = loss_fn(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, 1e-2, optimizer=opt, step=i, steps=steps)
    with torch.no_grad():
        model.train()
        after = loss_fn(model(x), y).item()
    assert after < 0.8 * first

    # the deployed forward weights take only ±alpha values (per output channel or per layer)
    model.eval()
    for m in binary:
        wb = m.forward_weight()
        alpha = m.alpha().expand_as(wb)
        assert torch.equal(wb.abs(), alpha)
        if method.clip is not None:
            assert m.weight.abs().max() <= method.clip

    # the packed model (1 bit per binary weight) computes what the eval model computes
    with torch.no_grad():
        ref = model(data.test.x).numpy()
    out = pack(model, data.input_shape)(data.test.x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98  # float rounding may tie a few
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    # the config round-trips
    cfg = Config.from_dict({"method": method.to_dict()})
    assert build_method(cfg.method) == method
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", list(METHODS))
def test_method_is_documented(name):
    row = method_preset(name)
    assert row.title and row.paper and row.cls.__doc__ and len(row.cls.__doc__.split()) > 8
    assert row.reconstruction == ("reconstruction)" in row.title)  # what users see says so
