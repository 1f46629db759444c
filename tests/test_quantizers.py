"""Each quantizer's forward and backward against its formula."""

from __future__ import annotations

import pytest
import torch

from onebit.errors import OnebitError
from onebit.quantizers import (
    ActSign,
    SignHtanh,
    SignIdentity,
    StochasticSign,
    WeightBuffer,
    scale,
    sign,
)

X = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.3, 1.0, 1.5])


def test_sign_maps_both_zeros_to_plus_one():
    assert sign(X).tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    assert sign(X).dtype == X.dtype


def _grad(fn, x, g=None):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    g = torch.arange(1.0, len(x) + 1) if g is None else g
    (y * g).sum().backward()
    return y.detach(), x.grad


def test_sign_identity_ste():
    y, gx = _grad(SignIdentity(), X)
    assert torch.equal(y, sign(X))
    assert torch.equal(gx, torch.arange(1.0, len(X) + 1))  # dL/dw = g


def test_sign_identity_with_buffer_matches_and_reuses_memory():
    buf = WeightBuffer()
    y, gx = _grad(lambda w: SignIdentity()(w, buf), X)
    assert torch.equal(y, sign(X))
    assert torch.equal(gx, torch.arange(1.0, len(X) + 1))
    assert buf.tensor.data_ptr() == SignIdentity()(X, buf).data_ptr()


def test_sign_htanh_ste_masks_outside_unit_interval():
    y, gx = _grad(SignHtanh(), X)
    g = torch.arange(1.0, len(X) + 1)
    assert torch.equal(y, sign(X))
    assert torch.equal(gx, g * (X.abs() <= 1).float())  # dL/dw = g * 1{|w| <= 1}


def test_act_sign_same_rule():
    y, gx = _grad(ActSign(), X)
    assert torch.equal(y, sign(X))
    assert torch.equal(gx, torch.arange(1.0, len(X) + 1) * (X.abs() <= 1).float())


def test_stochastic_sign_probability_and_identity_backward():
    torch.manual_seed(0)
    w = torch.full((200_000,), 0.5)  # P(+1) = (0.5 + 1) / 2 = 0.75
    q = StochasticSign()
    y = q(w)
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    assert abs((y > 0).float().mean().item() - 0.75) < 0.01
    assert torch.equal(q(torch.tensor([2.0, -2.0])), torch.tensor([1.0, -1.0]))  # p clipped
    assert torch.equal(q.hard(X), sign(X))
    _, gx = _grad(q, X)
    assert torch.equal(gx, torch.arange(1.0, len(X) + 1))


def test_scale_rules():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert scale(w, "none").item() == 1.0
    assert scale(w, "layer").item() == pytest.approx(5.0 / 4)
    assert scale(w, "channel").flatten().tolist() == [2.0, 0.5]
    assert scale(w, "channel").shape == (2, 1)
    conv = torch.randn(4, 3, 3, 3)
    assert torch.allclose(scale(conv, "channel").flatten(), conv.abs().mean((1, 2, 3)))
    assert not scale(w.requires_grad_(True), "layer").requires_grad  # alpha is detached
    with pytest.raises(OnebitError, match="accepted: none, layer, channel"):
        scale(w, "bogus")
