"""Mixed precision: the binarized weights stay exact under autocast, every method's eval output
under bf16 (and fp16 on CUDA) is close to fp32, training under bf16 lowers the loss, fp16's
gradient scaler skips an overflowed step whole, and a run's precision is checked before it trains.

Tolerances (bf16 keeps 8 significant bits, a relative rounding of 2^-9 ~ 0.002 per operation):

- one binary layer, fed the input it sees in fp32: output within 1% of its largest magnitude;
- the whole eval model, for methods with float activations: logits within 2% of the largest
  |logit| (measured at most 1.2% on this net, predictions agreeing on >= 99.4%);
- the whole eval model, for methods that binarize activations: a pre-activation within bf16's
  rounding of 0 may take the other sign, so a few activations flip and the logits can move by
  much more than the rounding; they are held to the same predictions on >= 90% of the examples
  (measured >= 95.5%) and, layer by layer, to the 1% above.

These run on a CPU without native bf16 too: autocast emulates it there (slowly); only a training
config asking for bf16 is refused on such a CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from onebit import binarize_
from onebit.devices import Precision, resolve_precision
from onebit.errors import OnebitError
from onebit.layers import is_binary_layer
from onebit.methods import METHODS
from onebit.models import build
from onebit.training import LOSSES, TrainConfig, TrainStep, make_optimizer, train
from tests.conftest import binarized_mlp, devices, tiny_dataset

DEVICES = devices()


def _dtypes(device: str) -> list[torch.dtype]:
    return [torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16]


def _cases() -> list:
    """(method, device, autocast dtype) for every method, device and dtype the device has."""
    out = []
    for dev in DEVICES:
        name = dev if isinstance(dev, str) else dev.values[0]
        marks = () if isinstance(dev, str) else dev.marks
        for dtype in _dtypes(name):
            for method in METHODS:
                out.append(pytest.param(method, name, dtype, marks=marks))
    return out


def _precision(device: str, dtype: torch.dtype) -> Precision:
    """A precision built directly (the run-time CPU flag check is for training configs)."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return Precision(name, device, dtype, "test")


def _trained_cnn(name: str, device: str, steps: int = 20):
    """A small binarized conv net after a few fp32 steps (batch-norm statistics, LAB's scale and
    BiTAT's basis no longer at their initial values)."""
    method = METHODS[name]()
    data = tiny_dataset(shape=(3, 8, 8), classes=4, n_train=256)
    torch.manual_seed(0)
    model = build(
        "small_cnn", (3, 8, 8), 4, channels=(8, 16), hidden=32, act=method.hidden_activation()
    )
    binarize_(model, method)
    model.to(device)
    cfg = TrainConfig(lr=1e-2)
    opt = method.make_optimizer(model, cfg) or make_optimizer(
        model, cfg, method.param_groups(model)
    )
    step = TrainStep(model, method, opt, cfg)
    x, y = data.train.x.to(device), data.train.y.to(device)
    model.train()
    for i in range(steps):
        step(x[i % 4 * 64 :][:64], y[i % 4 * 64 :][:64], 1e-2)
    model.eval()
    probe = tiny_dataset(shape=(3, 8, 8), classes=4, n_train=512, seed=5).train.x.to(device)
    return method, model, probe


def _binarizes_activations(model: torch.nn.Module) -> bool:
    return any(is_binary_layer(m) and m.act is not None and m.binary for m in model.modules())


@pytest.mark.parametrize(("name", "device", "dtype"), _cases())
def test_binary_weights_are_exact_under_autocast(name, device, dtype):
    """The deployed weight ``alpha * sign(w)`` (and the training one) is computed in fp32 and is
    bit for bit the same inside autocast as outside it."""
    _, model, _ = _trained_cnn(name, device, steps=4)
    layers = [m for m in model.modules() if is_binary_layer(m)]
    assert bool(layers) == METHODS[name]().binary_weights
    for m in layers:
        for training in (False, True):
            m.train(training)
            with torch.random.fork_rng(devices=[] if device == "cpu" else [0]):
                torch.manual_seed(1)
                ref = m.forward_weight().detach()
                torch.manual_seed(1)
                with torch.autocast(device, dtype=dtype):
                    got = m.forward_weight().detach()
            assert got.dtype == torch.float32
            assert torch.equal(got, ref)
        m.eval()
        wb = m.forward_weight()
        assert torch.equal(wb.abs(), m.alpha().expand_as(wb))


@pytest.mark.parametrize(("name", "device", "dtype"), _cases())
def test_each_binary_layer_under_autocast_is_close_to_fp32(name, device, dtype):
    """Fed the input it sees in fp32, every binary layer's eval output under autocast is within
    1% of its largest magnitude (activation binarizers see that same input, so none flips)."""
    _, model, x = _trained_cnn(name, device)
    inputs: dict[torch.nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0]))
        for m in model.modules()
        if is_binary_layer(m)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for m, inp in inputs.items():
            ref = m(inp)
            with torch.autocast(device, dtype=dtype):
                got = m(inp).float()
            assert (got - ref).abs().max() <= 1e-2 * ref.abs().max(), m


@pytest.mark.parametrize(("name", "device", "dtype"), _cases())
def test_eval_output_under_autocast_is_close_to_fp32(name, device, dtype):
    """The whole eval model: logits within 2% (float activations), or the same predictions on
    >= 90% of the examples where a method binarizes activations (see the module docstring)."""
    _, model, x = _trained_cnn(name, device)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(device, dtype=dtype):
            got = model(x).float()
    agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    if _binarizes_activations(model):
        assert agree >= 0.9
    else:
        assert (got - ref).abs().max() <= 2e-2 * ref.abs().max()
        assert agree >= 0.98


@pytest.mark.parametrize(("name", "device", "dtype"), _cases())
def test_training_under_autocast_lowers_the_loss(name, device, dtype):
    """A few steps of the training loop's own step under autocast lower the loss (the
    conformance test's task and bar)."""
    method = METHODS[name]()
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    model = binarized_mlp(method, data)
    model.to(device)
    cfg = TrainConfig(lr=1e-2)
    opt = method.make_optimizer(model, cfg) or make_optimizer(
        model, cfg, method.param_groups(model)
    )
    precision = _precision(device, dtype)
    step = TrainStep(model, method, opt, cfg, precision=precision)
    x, y = data.train.x.to(device), data.train.y.to(device)
    model.train()
    first = step(x, y, 1e-2)[0].item()
    for _ in range(29):
        _, logits = step(x, y, 1e-2)
        assert logits.dtype == torch.float32  # losses are taken on fp32 logits
    with torch.no_grad(), precision.autocast():
        after = LOSSES["ce"](model(x).float(), y).item()
    assert after < 0.8 * first
    for p in model.parameters():
        assert p.dtype == torch.float32  # autocast never changes the stored weights


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_scaler_skips_an_overflowed_step_whole(device, monkeypatch):
    """With fp16, a step whose scaled gradients overflow changes nothing: not the weights, not
    LAB's accumulator and scale (work its optimizer does after Adam's update), and the method's
    after-step hook does not run; the scale backs off and the next step trains."""
    method = METHODS["lab"]()
    data = tiny_dataset(shape=(16,), classes=4, n_train=64)
    torch.manual_seed(0)
    model = build("mlp", data.input_shape, data.num_classes, hidden=[32])
    binarize_(model, method)
    model.to(device)
    cfg = TrainConfig(lr=1e-2)
    opt = method.make_optimizer(model, cfg)
    step = TrainStep(model, method, opt, cfg, precision=_precision(device, torch.float16))
    step.scaler = torch.amp.GradScaler(device, init_scale=2.0**127)  # loss * scale overflows
    x, y = data.train.x.to(device), data.train.y.to(device)

    def trained_state():  # weights and LAB's scales (batch-norm statistics move in any forward)
        return {
            k: v.clone()
            for k, v in model.state_dict().items()
            if "running" not in k and "batches" not in k
        }

    hooks = []
    monkeypatch.setattr(type(method), "after_step", lambda self, *a, **k: hooks.append(1))
    before = trained_state()
    assert any("alpha" in k for k in before)
    step(x, y, 1e-2)
    assert hooks == []
    for k, v in trained_state().items():
        assert torch.equal(v, before[k]), k
    assert not any("lab_v" in s for s in opt.state.values())
    assert step.scaler.get_scale() < 2.0**127
    step.scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
    step(x, y, 1e-2)
    assert hooks == [1]
    assert any(not torch.equal(v, before[k]) for k, v in trained_state().items())
    assert all(torch.isfinite(s["lab_v"]).all() for s in opt.state.values() if "lab_v" in s)


def test_fp16_is_refused_off_cuda():
    with pytest.raises(OnebitError, match=r"'fp16' needs CUDA.*use 'bf16' or 'fp32'"):
        resolve_precision("fp16", torch.device("cpu"))


def test_bf16_on_a_cpu_without_it_is_one_sentence(monkeypatch):
    monkeypatch.setattr("onebit.devices.cpu_bf16", lambda: None)
    with pytest.raises(OnebitError, match=r"needs AMX or AVX512_BF16 .* use 'fp32'\.$"):
        resolve_precision("bf16", torch.device("cpu"))


@pytest.mark.parametrize("flags", [{"amx_bf16", "avx512_bf16"}, {"avx512_bf16"}, {"avx512f"}])
def test_cpu_bf16_reads_the_flags(monkeypatch, flags):
    from onebit import devices as d

    monkeypatch.setattr(d, "_cpu_flags", lambda: set(flags))
    want = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    assert d.cpu_bf16() == want
    if want:
        p = d.resolve_precision("bf16", torch.device("cpu"))
        assert (p.dtype, p.via) == (torch.bfloat16, want)
        assert p.describe() == f"bf16 (autocast, {want})"


def test_unknown_precision_is_one_sentence():
    with pytest.raises(OnebitError, match=r"train\.precision = 'fp8' is not accepted; give one of"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(OnebitError, match=r"train\.precision = 'half'"):
        train(None, METHODS["fp"](), tiny_dataset(), TrainConfig(precision="half"))


def test_a_bf16_run_trains_says_so_and_records_it(monkeypatch, caplog, tmp_path):
    """``train.precision = 'bf16'`` through :func:`train`: the log line names what was chosen,
    each epoch's record says bf16, and the loss falls (the CPU flag check is stubbed so this runs
    on any CPU)."""
    monkeypatch.setattr("onebit.devices.cpu_bf16", lambda: "amx_bf16")
    method = METHODS["bc"]()
    data = tiny_dataset(shape=(1, 8, 8), classes=4, n_train=128)
    torch.manual_seed(0)
    model = build("small_cnn", data.input_shape, 4, channels=(8,), hidden=16)
    binarize_(model, method)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, precision="bf16", device="cpu")
    with caplog.at_level(logging.INFO, logger="onebit.training"):
        history = train(model, method, data, cfg, run_dir=tmp_path)
    placement = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on")]
    assert len(placement) == 1 and "bf16 (autocast, amx_bf16)" in placement[0]
    assert "channels_last" in placement[0]  # a conv net: the default memory format
    assert [r["precision"] for r in history.epochs] == ["bf16"] * 3
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


@pytest.mark.parametrize("name", ["bc", "bwn", "bnn", "lab", "bnn++", "gwt"])
def test_compile_traces_binarized_conv_nets_whole_and_matches_eager(name):
    """``train.compile``: dynamo traces a binarized channels_last ResNet-20 in one graph (the
    weight buffers and their release in the backward are skipped when compiling; they broke
    the graph at every layer and made the compiled step 2.8x slower), and the compiled forward
    and backward give eager's loss and gradients."""
    torch.manual_seed(0)
    model = build("resnet20", (3, 32, 32), 10)
    binarize_(model, METHODS[name](), example_inputs=(torch.randn(2, 3, 32, 32),))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.arange(8) % 10
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    grads = []
    for net in (model, torch.compile(model, backend="eager", dynamic=False)):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
