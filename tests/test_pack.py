"""Packed models against the binarized torch model, the file format, and the runtime without torch."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F

import onebit
from onebit.errors import OnebitError
from onebit.methods import BNN, BWN, BinaryConnect, XNORNet
from onebit.packer import pack
from onebit.runtime import FORMAT_VERSION, Op, load
from tests.conftest import tiny_dataset

MODELS = [
    ("mlp", (1, 12, 12), {"hidden": [96, 80]}),
    ("small_cnn", (1, 12, 12), {"channels": [8, 70], "hidden": 33}),
    ("resnet20", (3, 16, 16), {"width": 8}),
]
METHODS = {"bc": BinaryConnect(), "bwn": BWN(), "bnn": BNN(), "xnor": XNORNet()}


def _random_bn_(model: nn.Module) -> None:
    """Give BatchNorms non-trivial statistics (negative scales included) as a trained net has."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(n, generator=g))


def _model(name, shape, kw, method):
    torch.manual_seed(0)
    model = onebit.models.build(name, shape, 10, act=method.hidden_activation(), **kw)
    onebit.binarize_(model, method)
    _random_bn_(model)
    return model.eval()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(("name", "shape", "kw"), MODELS, ids=[m[0] for m in MODELS])
def test_packed_matches_torch_eval(name, shape, kw, method):
    model = _model(name, shape, kw, METHODS[method])
    x = torch.randn(9, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    out = pack(model, shape)(x.numpy())
    assert out.shape == ref.shape and out.dtype == np.float32
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("method", ["bc", "bnn"])
def test_trained_mlp_agrees_on_a_test_set(method):
    data = tiny_dataset(shape=(1, 8, 8), classes=4, n_train=256)
    torch.manual_seed(0)
    m = METHODS[method]
    model = onebit.models.build("mlp", (1, 8, 8), 4, hidden=[64, 64], act=m.hidden_activation())
    onebit.binarize_(model, m)
    from onebit.training import TrainConfig

    onebit.train(model, m, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2))
    model.eval()
    x = data.test.x
    with torch.no_grad():
        ref = model(x).numpy()
    out = pack(model, (1, 8, 8))(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_file_round_trip_and_size(tmp_path):
    model = _model("mlp", (1, 12, 12), {"hidden": [256, 256]}, BinaryConnect())
    packed = pack(model, (1, 12, 12), mean=[0.5], std=[0.25], source={"method": "bc"})
    path = packed.save(tmp_path / "m.onebit")
    with safe_open(str(path), "np") as f:  # a captured graph (inputs as torch takes them)
        assert f.metadata()["format_version"] == "4"  # no attention: still version 4
    loaded = load(path)
    x = np.random.default_rng(0).standard_normal((5, 1, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), packed(x))
    assert loaded.input == {
        "shape": [1, 12, 12],
        "dtype": "float32",
        "layout": "graph",
        "mean": [0.5],
        "std": [0.25],
    }
    assert loaded.source == {"method": "bc"}
    # raw uint8 inputs are normalized as in training
    raw = np.random.default_rng(1).integers(0, 256, (3, 12, 12), dtype=np.uint8)
    expect = packed(((raw.astype(np.float32) / 255 - 0.5) / 0.25)[:, None])
    np.testing.assert_allclose(loaded.predict_raw(raw), expect, rtol=1e-6)
    # storage of the hidden 256x256 layer: bits + per-channel scale/shift against its float
    # weights and BatchNorm in the state dict (the README's size table reports whole models)
    hidden = next(op for op in packed.ops if op.op == "linear" and op.attrs["in_features"] == 256)
    packed_bytes = sum(packed.tensors[k].nbytes for k in hidden.tensors.values())
    sd = model.state_dict()
    float_bytes = sum(
        sd[k].numel() * 4
        for k in ("4.weight", "5.weight", "5.bias", "5.running_mean", "5.running_var")
    )
    assert packed_bytes * 25 <= float_bytes
    assert path.stat().st_size - packed.nbytes() < 16_384  # the header is small


def _expect_error(path, match):
    with pytest.raises(OnebitError, match=match) as e:
        load(path)
    assert "\n" not in str(e.value)


def test_bad_files_get_one_sentence(tmp_path):
    model = _model("mlp", (1, 12, 12), {"hidden": [64]}, BinaryConnect())
    good = pack(model, (1, 12, 12)).save(tmp_path / "good.onebit")
    data = good.read_bytes()
    _expect_error(tmp_path / "missing.onebit", "does not exist")
    (tmp_path / "junk.onebit").write_bytes(b"hello, not a model at all")
    _expect_error(tmp_path / "junk.onebit", "is not a onebit model file")
    (tmp_path / "trunc.onebit").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "trunc.onebit", "is not a onebit model file")
    damaged = bytearray(data)
    damaged[-3] ^= 0xFF  # a payload byte
    (tmp_path / "damaged.onebit").write_bytes(bytes(damaged))
    _expect_error(tmp_path / "damaged.onebit", "fails its checksum")

    from safetensors.numpy import save_file

    save_file({"a": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    _expect_error(tmp_path / "other.safetensors", "no onebit format tag")
    from safetensors import safe_open

    with safe_open(str(good), framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["format_version"] = str(FORMAT_VERSION + 1)
    save_file(tensors, str(tmp_path / "newer.onebit"), meta)
    _expect_error(tmp_path / "newer.onebit", "newer than this onebit reads")


def test_runtime_loads_and_runs_without_torch(tmp_path):
    model = _model("small_cnn", (1, 12, 12), {"channels": [8, 16], "hidden": 32}, BNN())
    path = pack(model, (1, 12, 12)).save(tmp_path / "m.onebit")
    x = np.random.default_rng(0).standard_normal((2, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, json, numpy as np, onebit.runtime as rt\n"
        f"m = rt.load({str(path)!r})\n"
        f"y = m(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'y': y.tolist()}))\n"
    )
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert out["torch"] is False
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(out["y"]), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_thresholds_equal_scale_bias_then_sign():
    from onebit.packer import _thresholds

    rng = np.random.default_rng(0)
    alpha = rng.standard_normal(64).astype(np.float32)
    alpha[:4] = 0.0
    beta = (20 * rng.standard_normal(64)).astype(np.float32)
    beta[5] = -3 * alpha[5]  # an exact tie: alpha * 3 + beta == 0 -> sign +1
    thresh, flip = _thresholds(alpha, beta)
    acc = np.arange(-60, 61, dtype=np.int64)[:, None]
    expect = (alpha.astype(np.float64) * acc + beta) >= 0
    got = (acc >= thresh) ^ flip
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_xnor_layers_hand_bits_to_the_next(name):
    shape, kw = {
        "mlp": ((1, 12, 12), {"hidden": [96, 80, 70]}),
        "resnet20": ((3, 16, 16), {"width": 8}),
    }[name]
    model = _model(name, shape, kw, BNN())
    packed = pack(model, shape)
    fused = [op for op in packed.ops if op.attrs.get("output") == "bits"]
    assert fused and all(op.attrs["mode"] == "binary" for op in fused)
    assert not any(
        op.op == "hardtanh" and op.inputs[0] in {f.name for f in fused} for op in packed.ops
    )
    x = torch.randn(6, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    out = packed(x.numpy())
    unfused = pack(model, shape, fuse=False)(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, unfused, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_binary_weight_conv_float_gemm_path_matches(monkeypatch):
    """Binary-weight convs with few output channels run as a float GEMM on cached ±1 weights,
    the others through the binary x float kernel; forcing either path gives the same result."""
    import onebit.runtime.ops as rt  # the ops read the threshold from their own module

    model = _model("resnet20", (3, 16, 16), {"width": 8}, BinaryConnect())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    packed = pack(model, (3, 16, 16))
    monkeypatch.setattr(
        rt, "DIRECT_MAX_COLS", 0
    )  # not the direct conv (tests/test_runtime_paths.py)
    monkeypatch.setattr(rt, "FLOAT_GEMM_MAX_COLS", 0)  # every conv through the kernel
    kernel = packed(x.numpy())
    assert not any(key[1] == "pm1" for key in packed.cache)
    monkeypatch.setattr(rt, "FLOAT_GEMM_MAX_COLS", 10**6)  # every conv as a float GEMM
    gemm = packed(x.numpy())
    assert any(key[1] == "pm1" for key in packed.cache)
    for out in (kernel, gemm):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_packed_inference_keeps_numpy_blas_on_one_thread(monkeypatch):
    """The runtime's float GEMMs must not start a second thread pool beside the kernels'."""
    import threadpoolctl

    from onebit import runtime

    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:
        pytest.fail("numpy has no BLAS library that threadpoolctl can see")
    with blas.limit(limits=2):
        seen = []
        model = onebit.models.build("mlp", (1, 4, 4), 3, hidden=[8])
        onebit.binarize_(model, BinaryConnect())
        packed = pack(model.eval(), (1, 4, 4))
        packed.slice_bytes = 0  # one run of the graph
        real = runtime.PackedModel._run

        def spy(self, x, *args):
            seen.append([lib.get_num_threads() for lib in blas.lib_controllers])
            return real(self, x, *args)

        monkeypatch.setattr(runtime.PackedModel, "_run", spy)
        packed(np.zeros((2, 1, 4, 4), np.float32))
        assert seen == [[1] * len(blas.lib_controllers)]
        assert [lib.get_num_threads() for lib in blas.lib_controllers] == [2] * len(
            blas.lib_controllers
        )


@pytest.mark.parametrize("method", ["fp", "bwn", "bnn"])
def test_grouped_conv_with_several_channels_per_group(method):
    """groups=2 with 4 input channels per group, stride 2 and padding 1: the runtime's patches
    must keep each group's channels together (depthwise nets only test one channel per group)."""
    torch.manual_seed(0)
    m = {"fp": None, "bwn": BWN(), "bnn": BNN()}[method]
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Hardtanh(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=2, bias=False),
        nn.BatchNorm2d(6),
        nn.Hardtanh(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 4),
    )
    if m is not None:
        onebit.binarize_(model, m)
    _random_bn_(model)
    model.eval()
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        ref = model(x).numpy()
    out = pack(model, (3, 9, 9))(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


ROOT = Path(__file__).resolve().parents[1] / "onebit"
# what the runtime may import from onebit: itself, the kernels and the numpy-only base modules
RUNTIME_DEPS = (
    "onebit.runtime",
    "onebit.kernels",
    "onebit.errors",
    "onebit.fileio",
    "onebit.shapes",
    "onebit.idx",
)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at module level or inside functions), made absolute."""
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if base.startswith("onebit"))
    return out


def test_runtime_and_kernels_never_import_torch():
    """Statically (ast): no module of the runtime or the kernels imports torch, nor any onebit
    module outside the runtime, the kernels and the numpy-only base modules (which could)."""
    files = [*(ROOT / "runtime").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    files += [ROOT / f"{m.rpartition('.')[2]}.py" for m in RUNTIME_DEPS[2:]]
    assert any(f.parent.name == "runtime" for f in files)
    for f in files:
        for mod in _imports(f):
            top = mod.partition(".")[0]
            assert top != "torch", f"{f.relative_to(ROOT.parent)} imports {mod}"
            if top == "onebit":  # the package itself is a lazy facade that imports nothing
                ok = mod == "onebit" or any(
                    mod == d or mod.startswith(f"{d}.") for d in RUNTIME_DEPS
                )
                assert ok, f"{f.relative_to(ROOT.parent)} imports {mod}"


def test_pack_does_not_import_the_model_zoo():
    """The packer packs generic torch ops; no architecture of onebit.models is special to it."""
    mods = _imports(ROOT / "packer.py")
    assert not any(m == "onebit.models" or m.startswith("onebit.models.") for m in mods)


class _SlicePad(nn.Module):
    """Strided and negative slicing, ``...``, and constant padding of NCHW and (N, F) values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(7 * 5 * 4, 20)
        self.out = nn.Linear(23, 5)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, 6, 9, 9)
        y = y[:, 1:5, ::2, 1::3]  # (N, 4, 5, 3)
        y = F.pad(y, (1, 2, 0, 1, 2, 1), value=0.5)  # (N, 7, 6, 6)
        y = F.pad(y[..., :-2], (0, 0))  # (N, 7, 6, 4)
        y = self.act(y[:, :, -5:])  # (N, 7, 5, 4)
        z = self.fc(torch.flatten(y, 1))[:, 2:19:3]  # (N, 6)
        return self.out(F.pad(z, (13, 4)))


@pytest.mark.parametrize("method", ["fp", "bc", "bnn"])
def test_slice_and_pad_match_torch(tmp_path, method):
    """getitem with slices and F.pad pack as the generic slice/pad ops (NCHW axes mapped to
    NHWC) and compute what torch computes; a file with them is the current version."""
    torch.manual_seed(0)
    model = _SlicePad()
    if method != "fp":
        onebit.binarize_(model, METHODS[method])
    model.eval()
    packed = pack(model, (3, 9, 9))
    kinds = [op.op for op in packed.ops]
    assert {"slice", "pad"} <= set(kinds)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        ref = model(x).numpy()
    out = packed(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    path = packed.save(tmp_path / "m.onebit")
    with safe_open(str(path), "np") as f:
        assert f.metadata()["format_version"] == "4"
    np.testing.assert_array_equal(load(path)(x.numpy()), out)


def test_slice_and_pad_ops_against_torch():
    """The runtime's slice and pad ops on NHWC arrays equal torch's slicing and F.pad on NCHW."""
    from onebit.runtime import PackedModel
    from onebit.runtime.ops import OPS

    m = PackedModel([], {}, {})  # the ops read only its cache
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)  # NHWC
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW
    sl = Op(
        "slice", "s", ["input"], {"slices": [[0, None, 1], [1, -1, 2], [-5, None, 3], [1, 3, 1]]}
    )
    got = OPS["slice"](m, sl, x)
    np.testing.assert_array_equal(got, xt[:, 1:3, 1:-1:2, -5::3].permute(0, 2, 3, 1).numpy())
    pd = Op("pad", "p", ["input"], {"pads": [[0, 1], [2, 0], [1, 3], [4, 2]], "value": -1.5})
    got = OPS["pad"](m, pd, x)
    ref = F.pad(xt, (1, 3, 2, 0, 4, 2, 0, 1), value=-1.5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, ref)


class _Fn(nn.Module):
    """``fn(self, x)`` as a module with a global average pool at hand."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


@pytest.mark.parametrize(
    "fn",
    [
        lambda m, x: x[:, 0],
        lambda m, x: x[:, None],
        lambda m, x: x[:, :, 1:, ::2] * 2,
        lambda m, x: m.pool(x)[:, :2],
        lambda m, x: F.pad(x, (1, 2, 0, 1), value=-1.0),
        lambda m, x: torch.cat(torch.chunk(x, 3, dim=1)[::-1], dim=1),
    ],
    ids=["select", "unsqueeze", "strided", "pooled-slice", "pad", "chunk-cat"],
)
def test_indexing_and_padding_match_torch(fn):
    """Indexing, slicing and constant padding of any value pack and compute torch's result
    (these were refused by the fx packer)."""
    torch.manual_seed(0)
    model = _Fn(fn).eval()
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(pack(model, (3, 6, 6))(x.numpy()), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda m, x: x[:, ::-1], "step must be greater than zero"),
        (lambda m, x: F.pad(x, (1, 1, 1, 1), mode="reflect"), "aten.index.Tensor.*test_pack.py"),
        (lambda m, x: F.pad(x, (-1, 1)), "negative padding"),
        (lambda m, x: torch.sort(x, -1)[0], "aten.sort"),
    ],
)
def test_unsupported_slicing_and_padding_get_one_sentence(fn, match):
    """What torch.export or the runtime cannot do is one sentence naming the op and the line of
    the user's code that made it."""
    with pytest.raises(OnebitError, match=match) as e:
        pack(_Fn(fn).eval(), (3, 6, 6))
    assert "\n" not in str(e.value)


def _legacy_file(path, ops, tensors, in_shape, version):
    """A file as onebit wrote it before graph capture: NCHW inputs, ops on NHWC values."""
    from safetensors.numpy import save_file

    sha = {
        k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8).tobytes()).hexdigest()
        for k, v in tensors.items()
    }
    meta = {
        "format": "onebit",
        "format_version": str(version),
        "graph": json.dumps(ops),
        "input": json.dumps({"shape": list(in_shape), "mean": [0.0], "std": [1.0]}),
        "checksums": json.dumps(sha),
        "source": "{}",
    }
    save_file(tensors, str(path), meta)


def test_legacy_shortcut_a_files_still_load(tmp_path):
    """A version-1 file with the old ResNet ``shortcut_a`` op (``x[:, :, ::s, ::s]`` then zero
    channels) and the old NCHW input convention loads as slice + pad and computes what torch
    computes; saved again it is a version-3 file."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)  # rows in (Cout, kh, kw, Cin)
    tensors = {"c.weight": w, "c.bias": rng.standard_normal(5).astype(np.float32)}
    conv = {"in_channels": 4, "out_channels": 5, "kernel_size": [3, 3], "stride": [2, 2],
            "padding": [1, 1], "mode": "float", "module": "conv"}  # fmt: skip
    ops = [
        {"op": "conv", "name": "c", "inputs": ["input"], "attrs": conv,
         "tensors": {"weight": "c.weight", "bias": "c.bias"}},
        {"op": "shortcut_a", "name": "sc", "inputs": ["input"],
         "attrs": {"stride": 2, "pad": 1, "module": "x.shortcut"}, "tensors": {}},
        {"op": "add", "name": "sum", "inputs": ["c", "sc"], "attrs": {}, "tensors": {}},
        {"op": "flatten", "name": "flat", "inputs": ["sum"], "attrs": {}, "tensors": {}},
        {"op": "output", "name": "output", "inputs": ["flat"], "attrs": {}, "tensors": {}},
    ]  # fmt: skip
    _legacy_file(tmp_path / "old.onebit", ops, tensors, (4, 6, 6), 1)
    old = load(tmp_path / "old.onebit")
    assert not any(op.op == "shortcut_a" for op in old.ops)
    x = torch.randn(3, 4, 6, 6)
    wt = torch.from_numpy(w).reshape(5, 3, 3, 4).permute(0, 3, 1, 2)
    y = F.conv2d(x, wt, torch.from_numpy(tensors["c.bias"]), stride=2, padding=1)
    ref = (y + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 1))).flatten(1).numpy()
    out = old(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    again = old.save(tmp_path / "new.onebit")
    with safe_open(str(again), "np") as f:
        assert f.metadata()["format_version"] == "3"
    np.testing.assert_array_equal(load(again)(x.numpy()), out)


def test_format_version_is_the_oldest_that_describes_the_graph():
    """Ops of the first formats keep their version; the general ops of captured graphs are 4."""
    from onebit.runtime.format import format_version

    conv = Op("conv", "c", ["input"], {"groups": 1})
    assert format_version([Op("linear", "l", ["input"], {}), Op("output", "o", ["l"], {})]) == 1
    assert format_version([Op("conv", "c", ["input"], {"groups": 4})]) == 2
    assert format_version([conv, Op("slice", "s", ["c"], {})]) == 3
    assert format_version([conv, Op("reshape", "r", ["c"], {})]) == 4
    assert format_version([Op("linear", "l", ["input"], {}, {"act_shift": "t"})]) == 4


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("method", ["bc", "bnn", "xnor"])
@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_float_twin_matches_the_packed_model(name, method, fuse):
    """The benchmark's torch float32 twin, rebuilt from the packed graph alone (no model zoo),
    computes the packed model's outputs."""
    from onebit.experiments.bench import float_twin

    shape, kw = {
        "mlp": ((1, 12, 12), {"hidden": [96, 80]}),
        "resnet20": ((3, 16, 16), {"width": 8}),
    }[name]
    model = _model(name, shape, kw, METHODS[method])
    packed = pack(model, shape, fuse=fuse)
    packed.source = {}  # nothing about the architecture but the graph
    twin = float_twin(packed)
    x = torch.randn(7, *shape)
    with torch.no_grad():
        ref = twin(x).numpy()
        torch_ref = model(x).numpy()
    out = packed(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(torch_ref, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


class _TwoInputs(nn.Module):
    """An image and a feature vector (a second input, passed by name to the packed model)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Linear(5, 5)
        self.fc = nn.Linear(8 + 5, 4)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.conv(x).relu().mean((2, 3)), self.g(extra).tanh()], 1))


@pytest.mark.parametrize("method", ["fp", "bc"])
def test_further_inputs_are_passed_by_name(tmp_path, method):
    torch.manual_seed(0)
    model = _TwoInputs()
    x, e = torch.randn(4, 3, 8, 8), torch.randn(4, 5)
    if method != "fp":
        onebit.binarize_(model, METHODS[method], example_inputs=(x[:2], e[:2]))
    model.eval()
    packed = pack(model, (x[:2], e[:2]))
    assert packed.input["extra"] == [{"name": "extra", "shape": [5], "dtype": "float32"}]
    loaded = load(packed.save(tmp_path / "m.onebit"))
    with torch.no_grad():
        ref = model(x, e).numpy()
    np.testing.assert_allclose(loaded(x.numpy(), extra=e.numpy()), ref, rtol=1e-5, atol=1e-5)
    for kwargs, match in (({}, "also needs the input 'extra'"),
                          ({"extra": e.numpy(), "mask": e.numpy()}, "no input 'mask'"),
                          ({"extra": e.numpy()[:2]}, "input 'extra' has shape")):  # fmt: skip
        with pytest.raises(OnebitError, match=match):
            loaded(x.numpy(), **kwargs)


class _Masks(nn.Module):
    """Booleans as a captured graph makes them: comparisons, and/or/not, where, bool casts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x > -0.5) & (x < 0.5)
        outer = ~inside | (x == 0)
        y = torch.where(inside, x, 0.1 * x) + outer.float() - inside.long()
        return y + (x.abs() >= 1).to(torch.float32) * (x != 0).int()


def test_booleans_pack_as_zero_one_values():
    x = torch.randn(6, 10)
    x[0, :3] = 0.0
    model = _Masks().eval()
    np.testing.assert_allclose(pack(model, (x[:2],))(x.numpy()), model(x).numpy(), rtol=1e-6)


def test_a_range_over_the_batch_is_refused_not_frozen():
    """Constants are made once with batch 1; a value that differs per example is refused."""

    class _BatchRange(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.arange(x.shape[0]).float()[:, None]

    with pytest.raises(OnebitError, match="differs from example to example"):
        pack(_BatchRange(), (torch.randn(2, 3),))


class _Indexed(nn.Module):
    """``x[arange(B)[:, None], idx]``: the batch range and a constant index, as HF masks read."""

    def __init__(self, idx: torch.Tensor) -> None:
        super().__init__()
        self.idx = idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0])[:, None, None]
        return x[rows, self.idx[None, None, :]] * 2.0


def test_an_index_that_takes_every_position_in_order_packs_and_others_are_refused():
    x = torch.randn(5, 6)
    model = _Indexed(torch.arange(6))
    np.testing.assert_array_equal(pack(model, (x[:2],))(x.numpy()), model(x).numpy())
    assert model(x).shape == (5, 1, 6)
    for idx in (torch.tensor([2, 0, 1, 3, 4, 5]), torch.arange(3)):
        with pytest.raises(OnebitError, match="every position of its axis in order") as e:
            pack(_Indexed(idx), (x[:2],))
        assert "\n" not in str(e.value)


class _QKVAttention(nn.Module):
    """Attention as timm and onebit's ViT write it: one qkv projection, then
    ``view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)`` moves the batch axis off the front, and
    ``unbind(0)`` and scaled_dot_product_attention bring it back."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.out(y.mean(1))


@pytest.mark.parametrize("method", ["fp", "bc"])
def test_a_permute_that_moves_the_batch_axis_packs_when_indexing_brings_it_back(method):
    torch.manual_seed(0)
    model = _QKVAttention()
    x = torch.randn(4, 7, 16)
    if method != "fp":
        onebit.binarize_(model, METHODS[method], example_inputs=(x[:2],))
    model.eval()
    packed = pack(model, (x[:2],))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(packed(x.numpy()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_a_batch_axis_moved_for_good_is_one_sentence():
    class _Moves(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(1, 0, 2) * 2.0

    with pytest.raises(OnebitError, match="moves the batch axis") as e:
        pack(_Moves(), (torch.randn(2, 3, 4),))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["bc", "xnor"])
def test_onebit_vit_packs_saves_and_loads(tmp_path, method):
    """onebit's own ViT (qkv permute, scaled_dot_product_attention, a class token) through the
    file, against torch; its attention is one op of the file (format version 5)."""
    torch.manual_seed(0)
    m = METHODS[method]
    model = onebit.models.build("vit", (3, 16, 16), 4, dim=32, depth=2, heads=2,
                                act=m.hidden_activation())  # fmt: skip
    x = torch.randn(5, 3, 16, 16)
    onebit.binarize_(model, m, example_inputs=(x[:2],))
    model.eval()
    packed = pack(model, (x[:2],))
    floats = sum(p.numel() * 4 for p in model.parameters())
    assert sum(v.nbytes for v in packed.tensors.values()) < floats / 2
    assert sum(op.op == "attention" for op in packed.ops) == 2  # one per block
    path = packed.save(tmp_path / "vit.onebit")
    with safe_open(str(path), "np") as f:
        assert f.metadata()["format_version"] == "5"
    loaded = load(path)
    with torch.no_grad():
        ref = model(x).numpy()
    out = loaded(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


class _Attends(nn.Module):
    """Attention with each kind of mask torch takes: causal, a constant boolean or float mask,
    and a mask computed from the input (keys whose first feature is negative are ignored)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(8, 24)
        g = torch.Generator().manual_seed(1)
        self.register_buffer("keep", torch.rand(6, 6, generator=g) > 0.3)
        self.register_buffer("bias", torch.randn(6, 6, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.proj(x).reshape(x.shape[0], 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        sdpa = F.scaled_dot_product_attention
        if self.kind == "causal":
            return sdpa(q, k, v, is_causal=True)
        if self.kind == "bool":
            return sdpa(q, k, v, attn_mask=self.keep)
        if self.kind == "float":
            return sdpa(q, k, v, attn_mask=self.bias, scale=0.2)
        keep = (x[:, None, None, :, 0] >= 0) | torch.eye(6, dtype=torch.bool)  # from the input
        return sdpa(q, k, v, attn_mask=keep)


@pytest.mark.parametrize("kind", ["causal", "bool", "float", "input"])
def test_attention_masks_pack_as_one_op(kind, tmp_path):
    torch.manual_seed(0)
    model = _Attends(kind).eval()
    x = torch.randn(5, 6, 8)
    packed = pack(model, (x[:2],))
    assert [op.op for op in packed.ops].count("attention") == 1
    with torch.no_grad():
        ref = model(x).numpy()
    out = load(packed.save(tmp_path / "a.onebit"))(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
