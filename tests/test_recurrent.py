"""The binarizable LSTM: one binary layer per gate matrix, equal to a float LSTM fed those matrices."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from onebit import binarize_
from onebit.errors import OnebitError
from onebit.layers import BinaryLinear
from onebit.methods import METHODS
from onebit.models import build
from onebit.recurrent import GATES, CharLSTM, LSTMLayer

V, H, T, N = 7, 5, 6, 3


def _model(method: str, layers: int = 1, seed: int = 0) -> CharLSTM:
    torch.manual_seed(seed)
    model = build("lstm_lm", (T,), V, hidden=H, layers=layers)
    binarize_(model, METHODS[method]())
    with torch.no_grad():  # biases away from 0, so that a wrong bias shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _reference(model: CharLSTM) -> nn.LSTM:
    """``nn.LSTM`` holding our forward weights: ``alpha * sign(w)`` of each gate, stacked i, f, g, o."""
    layers = len(model.lstm)
    ref = nn.LSTM(V, H, num_layers=layers).double()
    with torch.no_grad():
        for k, layer in enumerate(model.lstm):
            w_ih, w_hh, bias = (t.double() for t in layer.weights())
            getattr(ref, f"weight_ih_l{k}").copy_(w_ih)
            getattr(ref, f"weight_hh_l{k}").copy_(w_hh)
            getattr(ref, f"bias_ih_l{k}").copy_(bias)
            getattr(ref, f"bias_hh_l{k}").zero_()
    return ref


@pytest.mark.parametrize("method", ["bc", "bwn", "lab"])
def test_every_gate_matrix_is_its_own_binary_layer_and_the_output_stays_float(method):
    model = _model(method, layers=2)
    for layer in model.lstm:
        for kind in ("ih", "hh"):
            gates = layer.gate_layers(kind)
            assert [type(m) for m in gates] == [BinaryLinear] * 4
            assert len({id(m.weight) for m in gates}) == 4  # no shared weights
    assert type(model.out) is nn.Linear  # float, whatever the method's first/last policy
    assert sum(isinstance(m, BinaryLinear) for m in model.modules()) == 16


@pytest.mark.parametrize("method", ["bc", "bwn", "lab"])
def test_each_gate_has_its_own_scale(method):
    model = _model(method)
    layer = model.lstm[0]
    with torch.no_grad():  # give each gate matrix a different magnitude
        for j, m in enumerate(layer.gate_layers("ih") + layer.gate_layers("hh")):
            m.weight.mul_(j + 1)
            if method == "lab":  # LAB's alpha is what its optimizer stored; start as BWN's
                m.alpha_stored.copy_(m.weight.abs().mean())
    w_ih, w_hh, _ = layer.weights()
    for w_all, kind in ((w_ih, "ih"), (w_hh, "hh")):
        for block, m in zip(w_all.chunk(4), layer.gate_layers(kind), strict=True):
            expected = m.weight.sign()
            if method != "bc":
                alpha = m.weight.abs().mean(1, keepdim=True) if method == "bwn" else m.alpha_stored
                expected = expected * alpha
            torch.testing.assert_close(block, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(("method", "layers"), [("fp", 1), ("bc", 1), ("bwn", 1), ("bwn", 2)])
def test_binarized_lstm_equals_float_lstm_fed_the_binarized_matrices(method, layers):
    model = _model(method, layers).eval()
    ref = _reference(model)
    x = torch.randint(0, V, (N, T))
    with torch.no_grad():
        logits = model(x)  # (N, V, T)
        h_ref, _ = ref(F.one_hot(x.t(), V).double())  # (T, N, H), from the zero state
        out_w, out_b = model.out.weight.double(), model.out.bias.double()
        logits_ref = F.linear(h_ref, out_w, out_b).permute(1, 2, 0)
        h = x.t()
        for layer in model.lstm:
            h = layer(h)
    assert logits.shape == (N, V, T)
    torch.testing.assert_close(h.double(), h_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.double(), logits_ref, rtol=0, atol=1e-5)


def test_training_forward_equals_eval_forward_for_deterministic_methods():
    model = _model("bwn")
    x = torch.randint(0, V, (N, T))
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    torch.testing.assert_close(out_train, out_eval)


def test_bc_gradients_reach_each_gate_like_the_float_lstm():
    """BinaryConnect passes ``g`` to ``w`` unchanged: each gate's latent gradient is the float
    LSTM's gradient of that gate's rows."""
    model = _model("bc")
    ref = _reference(model)
    x = torch.randint(0, V, (N, T))
    y = torch.randint(0, V, (N, T))
    F.cross_entropy(model(x), y).backward()
    h_ref, _ = ref(F.one_hot(x.t(), V).double())
    out = nn.Linear(H, V).double()
    with torch.no_grad():
        out.weight.copy_(model.out.weight)
        out.bias.copy_(model.out.bias)
    F.cross_entropy(out(h_ref).permute(1, 2, 0), y).backward()
    layer = model.lstm[0]
    for kind, w_ref in (("ih", ref.weight_ih_l0), ("hh", ref.weight_hh_l0)):
        for m, g_ref in zip(layer.gate_layers(kind), w_ref.grad.chunk(4), strict=True):
            torch.testing.assert_close(m.weight.grad.double(), g_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        torch.cat([m.bias.grad for m in layer.gate_layers("ih")]).double(),
        ref.bias_ih_l0.grad,
        rtol=1e-4,
        atol=1e-6,
    )
    torch.testing.assert_close(model.out.weight.grad.double(), out.weight.grad)


def test_gate_order_and_names():
    layer = LSTMLayer(V, H, one_hot=True)
    names = [n for n, _ in layer.named_children()]
    assert names == [f"ih_{g}" for g in GATES] + [f"hh_{g}" for g in GATES]
    assert layer.hh_i.bias is None and layer.ih_i.bias is not None


def test_float_token_ids_are_accepted_and_the_summary_runs():
    from onebit.experiments.runs import size_report

    model = _model("bc")
    out = model(torch.zeros(2, T))  # the size report feeds float zeros
    assert out.shape == (2, V, T)
    size = size_report(model, (T,))
    assert size["binary_params"] == 4 * H * V + 4 * H * H
    assert size["float_params"] == 4 * H + H * V + V


def test_activation_binarizing_methods_raise_one_sentence():
    model = _model("lab2")
    with pytest.raises(OnebitError, match="does not binarize activations"):
        model(torch.randint(0, V, (N, T)))


def test_bad_shapes_raise():
    with pytest.raises(OnebitError, match=r"shape \(T,\)"):
        build("lstm_lm", (1, 28, 28), 10)
    with pytest.raises(OnebitError, match="at least 1"):
        build("lstm_lm", (T,), V, hidden=0)
