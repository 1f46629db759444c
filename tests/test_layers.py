"""Binarized layers against float layers fed the binarized weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from onebit.layers import BinaryConv2d, BinaryLinear, binary_from_float, float_from_binary
from onebit.quantizers import ActSign, SignHtanh, SignIdentity, scale, sign


@pytest.mark.parametrize("rule", ["none", "layer", "channel"])
@pytest.mark.parametrize("act", [None, ActSign()])
def test_binary_linear_matches_float_layer_with_binary_weights(rule, act):
    torch.manual_seed(0)
    lin = nn.Linear(13, 5)
    b = binary_from_float(lin, SignHtanh(), rule, act)
    assert b.weight is lin.weight  # parameters are shared, not copied
    x = torch.randn(7, 13, requires_grad=True)
    y = b(x)
    wb = sign(lin.weight) * scale(lin.weight, rule)
    xin = sign(x) if act is not None else x
    ref = F.linear(xin, wb, lin.bias)
    assert torch.allclose(y, ref, atol=1e-6)
    y.sum().backward()
    # backward to the latent weight: dL/dw = (dL/dwb * alpha) * 1{|w| <= 1}
    g_wb = torch.ones(7, 5).T @ xin.detach()
    expect = g_wb * scale(lin.weight, rule) * (lin.weight.abs() <= 1)
    assert torch.allclose(lin.weight.grad, expect, atol=1e-5)


@pytest.mark.parametrize("rule", ["none", "channel"])
def test_binary_conv_matches_float_conv_with_binary_weights(rule):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
    b = binary_from_float(conv, SignIdentity(), rule, ActSign())
    x = torch.randn(2, 3, 9, 9)
    ref = F.conv2d(sign(x), sign(conv.weight) * scale(conv.weight, rule), None, 2, 1)
    assert torch.allclose(b(x), ref, atol=1e-5)
    assert isinstance(b, BinaryConv2d)


def test_eval_uses_hard_sign_and_unbinary_layer_is_float():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)

    class Smooth:  # a training-time quantizer that is not sign: eval must still use sign
        def __call__(self, w, buf=None):
            return torch.tanh(w)

        def hard(self, w):
            return sign(w)

    b = binary_from_float(lin, Smooth(), "none", None)
    x = torch.randn(2, 4)
    assert torch.allclose(b.train()(x), F.linear(x, torch.tanh(lin.weight), lin.bias))
    assert torch.allclose(b.eval()(x), F.linear(x, sign(lin.weight), lin.bias))
    b.binary = False
    assert torch.allclose(b(x), lin(x))


def test_a_layer_called_twice_before_backward_never_corrupts_its_gradients():
    """The forward-weight buffer is lent to one graph at a time: a second call before the first
    graph's backward (a block shared within one forward) gets a fresh tensor, so both graphs keep
    their own weights; the buffer is reused once the graph has been backpropagated."""
    lin = binary_from_float(nn.Linear(4, 3), SignIdentity(), "none", None)
    x = torch.randn(2, 4, requires_grad=True)
    y1 = lin(x)
    y2 = lin(x)
    (y1.sum() + 2 * y2.sum()).backward()
    ref = 3 * sign(lin.weight.detach()).sum(0).expand(2, -1)
    torch.testing.assert_close(x.grad, ref)
    torch.testing.assert_close(lin.weight.grad, 3 * x.detach().sum(0).expand(3, -1))
    buf = lin._buffer()
    assert not buf.busy  # returned by the backward
    lin(x).sum().backward()
    assert lin._buffer().tensor is buf.tensor  # reused, not re-allocated


def test_a_write_into_a_saved_buffer_still_trips_autograds_check():
    """The safety net below the lending rule: writing a tensor a live graph saved raises."""
    lin = binary_from_float(nn.Linear(4, 3), SignIdentity(), "none", None)
    x = torch.randn(2, 4, requires_grad=True)
    y1 = lin(x)
    lin._buffer().busy = False  # pretend the lending rule failed
    with pytest.raises(RuntimeError, match="inplace"):
        lin(x)
        y1.sum().backward()


def test_float_from_binary_round_trip():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    b = binary_from_float(conv, SignIdentity(), "none", None)
    back = float_from_binary(b)
    assert type(back) is nn.Conv2d and back.weight is conv.weight and back.bias is conv.bias
    assert isinstance(
        binary_from_float(nn.Linear(2, 2), SignIdentity(), "none", None), BinaryLinear
    )
