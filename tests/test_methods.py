"""One conformance test over every registered method (DESIGN.md, principle 5)."""

from __future__ import annotations

import pytest
import torch

from onebit import binarize_
from onebit.config import Config, TrainConfig, build_method
from onebit.layers import is_binary_layer
from onebit.methods import METHODS
from onebit.models import build
from onebit.training import LOSSES, make_optimizer
from tests.conftest import tiny_dataset


@pytest.mark.parametrize("name", list(METHODS))
def test_method_conformance(name):
    method = METHODS[name]()
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    torch.manual_seed(0)
    model = build(
        "mlp", data.input_shape, data.num_classes, hidden=[64, 64], act=method.hidden_activation()
    )
    binarize_(model, method)
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
    for _ in range(30):
        loss = loss_fn(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model)
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

    # the config round-trips
    cfg = Config.from_dict({"method": method.to_dict()})
    assert build_method(cfg.method) == method
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", list(METHODS))
def test_method_is_documented(name):
    cls = METHODS[name]
    assert cls.title and cls.paper and cls.__doc__ and len(cls.__doc__.split()) > 8
