"""The methods of issue 3 against their formulas: ProxConnect++ family, ProxQuant, LAB, GWT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from onebit import binarize_
from onebit.layers import is_binary_layer, relaxed
from onebit.methods import GWT, LAB, METHODS, BNNPlus, BNNPlusPlus, ProxConnect, ProxQuant
from onebit.methods.gwt import off_binary_fraction
from onebit.methods.lab import lab_accumulate, lab_scale
from onebit.methods.proxconnect import steepness
from onebit.methods.proxquant import prox_binary
from onebit.models import build
from onebit.quantizers import (
    GroupClip,
    ProxRamp,
    SignSwish,
    SignSwishSTE,
    group_clip,
    sign,
    signswish,
    signswish_grad,
)
from onebit.training import TrainConfig


def _ss_closed(x: float, b: float) -> float:
    s = 1 / (1 + math.exp(-b * x))
    return 2 * s * (1 + b * x * (1 - s)) - 1


@pytest.mark.parametrize("b", [1.0, 3.0, 10.0])
def test_signswish_value_and_derivative(b):
    xs = torch.tensor([-2.0, -0.7, -0.1, 0.0, 0.05, 0.3, 1.0, 2.5], dtype=torch.float64)
    assert torch.allclose(
        signswish(xs, b), torch.tensor([_ss_closed(x, b) for x in xs.tolist()], dtype=torch.float64)
    )
    x = xs.clone().requires_grad_(True)
    signswish(x, b).sum().backward()
    # the closed-form derivative equals autograd's derivative of the forward
    assert torch.allclose(signswish_grad(xs, b), x.grad, atol=1e-12)
    assert signswish_grad(torch.zeros((), dtype=torch.float64), b).item() == pytest.approx(b)


def test_signswish_overshoots_near_2_4_over_b():
    b = 5.0
    x = torch.linspace(0, 3, 30001, dtype=torch.float64)
    y = signswish(x, b)
    peak = y.max().item()
    assert 1.19 < peak < 1.21
    assert x[y.argmax()].item() == pytest.approx(2.4 / b, rel=0.01)
    assert signswish(torch.tensor(50.0, dtype=torch.float64), b).item() == pytest.approx(1.0)


def test_ramp_forward_and_identity_backward():
    w = torch.tensor([-0.5, -0.01, 0.0, 0.02, 0.3], requires_grad=True)
    s = w.detach().abs().mean()
    wb = ProxRamp(mu=4.0)(w)
    assert torch.allclose(wb, (4.0 * w.detach() / s).clamp(-1, 1))
    g = torch.arange(1.0, 6.0)
    wb.backward(g)
    assert torch.equal(w.grad, g)
    assert torch.equal(ProxRamp(4.0).hard(w), sign(w.detach()))


def test_bnn_plus_forward_sign_backward_signswish():
    w = torch.tensor([-0.4, -0.05, 0.0, 0.1, 0.9], dtype=torch.float64, requires_grad=True)
    s = w.detach().abs().mean()
    wb = SignSwishSTE(mu=3.0)(w)
    assert torch.equal(wb, torch.tensor([-1.0, -1, 1, 1, 1], dtype=torch.float64))
    g = torch.tensor([1.0, -2, 3, 0.5, 1], dtype=torch.float64)
    wb.backward(g)
    assert torch.allclose(w.grad, g * signswish_grad(w.detach() / s, 3.0) / s)


def test_bnn_plus_plus_is_the_exact_gradient_of_its_forward():
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    s = w.detach().abs().mean()
    SignSwish(mu=2.5)(w).sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    signswish(w2 / s, 2.5).sum().backward()  # s detached, as in the quantizer
    assert torch.allclose(w.grad, w2.grad)
    assert torch.allclose(SignSwish(2.5)(w.detach()), signswish(w.detach() / s, 2.5))


def test_steepness_schedules():
    assert steepness(0, 10, 1, 10, "linear") == 1
    assert steepness(9, 10, 1, 10, "linear") == 10
    assert steepness(3, 7, 1, 10, "linear") == pytest.approx(5.5)
    assert steepness(0, 5, 2, 32, "exp") == pytest.approx(2)
    assert steepness(2, 5, 2, 32, "exp") == pytest.approx(8)
    assert steepness(0, 5, 2, 32, "constant") == 32
    # fractional epochs (per-step schedules) move between the per-epoch values and stop at end
    assert steepness(3.5, 7, 1, 10, "linear") == pytest.approx(1 + 9 * 3.5 / 6)
    assert steepness(6.5, 7, 1, 10, "linear") == 10
    assert steepness(0.5, 1, 1, 10, "linear") == pytest.approx(5.5)  # a one-epoch run sharpens
    assert steepness(1.0, 1, 2, 32, "exp") == pytest.approx(32)


@pytest.mark.parametrize("cls", [ProxConnect, BNNPlus, BNNPlusPlus])
def test_family_steepness_reaches_every_layer_and_deploys_sign(cls):
    model = build("mlp", (1, 4, 4), 3, hidden=[8])
    binarize_(model, cls(mu_start=1, mu_end=7))
    cls(mu_start=1, mu_end=7).on_epoch_start(model, 4, 5)
    layers = [m for m in model.modules() if is_binary_layer(m)]
    assert layers and all(m.quantizer.mu == 7 for m in layers)
    model.eval()
    for m in layers:
        assert torch.equal(m.forward_weight(), sign(m.weight.detach()))
        with relaxed(model):
            assert torch.allclose(m.forward_weight(), m.quantizer(m.weight.detach()))


def test_prox_binary_formula():
    w = torch.tensor([-1.5, -0.9, -0.2, 0.0, 0.1, 0.7, 1.05, 3.0])
    out = prox_binary(w, 0.3)
    expected = torch.tensor([-1.2, -1.0, -0.5, 0.3, 0.4, 1.0, 1.0, 2.7])
    assert torch.allclose(out, expected)
    assert torch.allclose(prox_binary(w, 0.0), w)
    assert torch.equal(prox_binary(w, 100.0), sign(w))


def test_proxquant_grows_lambda_then_freezes_binary():
    torch.manual_seed(0)
    model = build("mlp", (1, 4, 4), 3, hidden=[8])
    method = ProxQuant(reg_rate=0.5, freeze=0.6, bn_batches=0)
    binarize_(model, method)
    layers = [m for m in model.modules() if is_binary_layer(m)]
    # 5 epochs of 4 steps: lambda = reg_rate * (step / 4), the authors' reg_rate * epoch at each
    # epoch's first step; without steps, their per-epoch value
    assert method.lambda_at(8, 20, epochs=5) == pytest.approx(0.5 * 2)
    assert method.lambda_at(10, 20, epochs=5) == pytest.approx(0.5 * 2.5)
    assert method.lambda_at(0, 0, epoch=3, epochs=5) == pytest.approx(0.5 * 3)
    before = layers[0].weight.detach().clone()
    method.after_step(model, lr=0.1, epoch=2, epochs=5, step=10, steps=20)
    assert torch.allclose(layers[0].weight, prox_binary(before, 0.1 * 1.25).clamp(-1, 1))
    assert layers[0].weight.requires_grad
    method.after_step(model, lr=0.1, epoch=2, epochs=5, step=11, steps=20)  # 12 = 0.6 * 20 done
    for m in layers:
        assert set(m.weight.unique().tolist()) <= {-1.0, 1.0}
        assert not m.weight.requires_grad
    # a resumed run (or a loop that passes no steps) freezes at the epoch start past the point
    fresh = build("mlp", (1, 4, 4), 3, hidden=[8])
    binarize_(fresh, method)
    method.on_epoch_start(fresh, 2, 5)
    assert all(m.weight.requires_grad for m in fresh.modules() if is_binary_layer(m))
    method.on_epoch_start(fresh, 3, 5)
    assert not any(m.weight.requires_grad for m in fresh.modules() if is_binary_layer(m))


def test_lab_scale_closed_form():
    w = torch.tensor([[0.5, -0.25], [1.0, -0.75]])
    # v = 0: every d equal, alpha = mean |w| (BWN)
    assert lab_scale(w, torch.zeros_like(w)).item() == pytest.approx(0.625)
    v = torch.tensor([[4.0, 1.0], [0.0, 9.0]])
    d = torch.tensor([[2.0, 1.0], [0.0, 3.0]]) + 1e-8
    expected = (d * w.abs()).sum() / d.sum()  # (1 + .25 + 0 + 2.25) / 6
    assert lab_scale(w, v).item() == pytest.approx(expected.item())
    assert lab_scale(w, v).item() == pytest.approx(3.5 / 6, rel=1e-6)
    g = torch.full_like(w, 2.0)
    assert torch.allclose(lab_accumulate(v, g), 0.999 * v + 0.001 * 4)


def _lab_model(seed=0):
    torch.manual_seed(seed)
    model = build("mlp", (1, 4, 4), 3, hidden=[8], bn_logits=True)
    binarize_(model, LAB())
    return model


def test_lab_optimizer_step_matches_adam_then_clip_then_scale():
    model = _lab_model()
    ref = copy.deepcopy(model)
    opt = LAB().make_optimizer(model, TrainConfig(lr=0.05))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    layers = [m for m in model.modules() if is_binary_layer(m)]
    # before any step alpha is BWN's mean |w|
    for m in layers:
        assert m.alpha().item() == pytest.approx(m.weight.detach().abs().mean().item())
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    for net, o in ((model, opt), (ref, ref_opt)):
        loss = nn.functional.cross_entropy(net(x), y)
        o.zero_grad()
        loss.backward()
        o.step()
    ref_layers = [m for m in ref.modules() if is_binary_layer(m)]
    for m, r in zip(layers, ref_layers, strict=True):
        w = r.weight.detach().clamp(-1, 1)
        assert torch.allclose(m.weight, w, atol=1e-6)
        v = lab_accumulate(torch.zeros_like(w), r.weight.grad)
        assert torch.allclose(m.alpha(), lab_scale(w, v), atol=1e-6)
        assert torch.equal(opt.state[m.weight]["lab_v"], v)


def test_lab_state_survives_a_checkpoint_round_trip(tmp_path):
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))

    def steps(model, opt, n):
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    a = _lab_model()
    opt_a = LAB().make_optimizer(a, TrainConfig(lr=0.01))
    steps(a, opt_a, 3)
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "c.pt")
    steps(a, opt_a, 3)
    b = _lab_model(seed=1)
    opt_b = LAB().make_optimizer(b, TrainConfig(lr=0.01))
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    b.load_state_dict(state["model"])
    opt_b.load_state_dict(state["opt"])
    assert any("lab_v" in st for st in opt_b.state.values())
    steps(b, opt_b, 3)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), n


def test_lab2_binarizes_activations_too():
    model = build("mlp", (1, 4, 4), 3, hidden=[8])
    binarize_(model, METHODS["lab2"]())
    acts = [m.act is not None for m in model.modules() if is_binary_layer(m)]
    assert acts == [False, True]


def test_group_clip_has_exact_gradients_and_lands_on_pm1():
    torch.manual_seed(0)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: group_clip(t, 0.8), (w,))
    wb = group_clip(w.detach(), 3.0)
    rms = w.detach().square().mean(1, keepdim=True).sqrt()
    assert torch.allclose(wb, (3.0 * w.detach() / rms).clamp(-1, 1))
    assert GroupClip(3.0).hard(w.detach()).abs().eq(1).all()


def test_gwt_reports_off_binary_fraction_and_grows_k():
    torch.manual_seed(0)
    model = build("mlp", (1, 4, 4), 3, hidden=[16])
    method = GWT(k_start=1.0, k_end=50.0)
    binarize_(model, method)
    method.on_epoch_start(model, 0, 3)
    off_small_k = method.metrics(model)["off_binary"]
    method.on_epoch_start(model, 2, 3)
    off_large_k = method.metrics(model)["off_binary"]
    assert 0 < off_large_k < off_small_k
    assert off_binary_fraction(model, 50.0) == off_large_k
