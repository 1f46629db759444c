"""Running a packed graph over slices of the batch (onebit.runtime.slicing): the same outputs as
the whole batch, and never for a graph whose ops mix examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onebit
from onebit import kernels
from onebit.methods import BinaryConnect, Method, XNORNet
from onebit.packer import pack
from onebit.runtime import Op, PackedModel
from onebit.runtime.slicing import batch_local, examples_per_slice


class _Fn(nn.Module):
    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _count_runs(packed: PackedModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the graph runs of later calls (the trace at batch 2 included)."""
    sizes: list[int] = []
    run = packed._run

    def counted(xa, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(xa))
        return run(xa, *args, **kwargs)

    monkeypatch.setattr(packed, "_run", counted)
    return sizes


MIXING = {
    "x - mean over the batch": lambda x: x - x.mean(0, keepdim=True),
    "softmax over the batch": lambda x: torch.softmax(x, 0),
    "cat along the batch": lambda x: torch.cat([x, 2 * x], 0),
    "sum over the batch": lambda x: x.sum(0, keepdim=True) + x,
    "differences of neighbours": lambda x: x[1:] - x[:-1],
}


@pytest.mark.parametrize("name", list(MIXING))
def test_a_graph_that_mixes_examples_runs_whole(name, monkeypatch):
    """With a budget of one byte every batch would be sliced to single examples; these graphs
    give torch's outputs because they are not sliced at all."""
    fn = MIXING[name]
    x = torch.randn(7, 5)
    packed = pack(_Fn(fn).eval(), (x[:2],))
    packed.slice_bytes = 1
    sizes = _count_runs(packed, monkeypatch)
    np.testing.assert_allclose(packed(x.numpy()), fn(x).numpy(), rtol=1e-5, atol=1e-6)
    assert sizes == [2, 7]  # the trace, then the whole batch
    assert packed(x.numpy()).shape == fn(x).shape and sizes[-1] == 7


METHODS: dict[str, Method] = {"bc": BinaryConnect(), "xnor": XNORNet()}


def _mlp(act: str = "relu") -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = onebit.models.build("mlp", (1, 8, 8), 10, hidden=[64, 64], act=act)
    return model, torch.randn(11, 1, 8, 8)


def _cnn(act: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return onebit.models.build("resnet20", (3, 16, 16), 10, act=act), torch.randn(9, 3, 16, 16)


def _vit(act: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = onebit.models.build("vit", (3, 16, 16), 4, dim=32, depth=2, heads=2, act=act)
    return model, torch.randn(10, 3, 16, 16)


@pytest.mark.parametrize("build", [_mlp, _cnn, _vit], ids=["mlp", "resnet20", "vit"])
@pytest.mark.parametrize("method", ["bc", "xnor"])
def test_slices_give_the_whole_batch_outputs(build, method, monkeypatch):
    m = METHODS[method]
    model, x = build(m.hidden_activation())
    onebit.binarize_(model, m, example_inputs=(x[:2],))
    model.eval()
    packed = pack(model, (x[:2],))
    packed.slice_bytes = 0
    whole = packed(x.numpy())
    sliced = pack(model, (x[:2],))
    sliced.slice_bytes = 1  # one example per slice
    sizes = _count_runs(sliced, monkeypatch)
    out = sliced(x.numpy())
    assert sizes == [2] + [1] * len(x)
    # (the whole batch against torch: tests/test_pack.py)
    np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


class _MaskedAttention(nn.Module):
    """Self-attention whose keys are masked by a second input (one 0/1 per token), as a
    transformer's padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        mask = (keep[:, None, None, :] > 0.5) | torch.eye(6, dtype=torch.bool)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], 6, 8).mean(1))


def test_a_second_input_is_sliced_with_the_first(monkeypatch):
    torch.manual_seed(0)
    model = _MaskedAttention().eval()
    x = torch.randn(5, 6, 8)
    keep = (torch.rand(5, 6) > 0.4).float()
    packed = pack(model, (x[:2], keep[:2]))
    packed.slice_bytes = 1
    sizes = _count_runs(packed, monkeypatch)
    out = packed(x.numpy(), keep=keep.numpy())
    assert sizes == [2] + [1] * 5
    with torch.no_grad():
        ref = model(x, keep).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_the_budget_sets_the_slice_and_a_batch_of_one_is_never_traced(monkeypatch):
    model, x = _mlp()
    model.eval()
    packed = pack(model, (x[:2],))
    sizes = _count_runs(packed, monkeypatch)
    packed(x[:1].numpy())
    assert sizes == [1]
    # the largest value per example: the input or a hidden layer, 64 floats
    packed.slice_bytes = 4 * 64 * 3
    threads = kernels.get_num_threads()
    kernels.set_num_threads(1)
    try:
        packed(x.numpy())
    finally:
        kernels.set_num_threads(threads)
    assert sizes[1:] == [2, 3, 3, 3, 2]


def _op(kind: str, name: str, inputs: list[str], **attrs) -> Op:  # type: ignore[no-untyped-def]
    return Op(kind, name, inputs, attrs, {})


@pytest.mark.parametrize(
    ("op", "shapes", "local"),
    [
        (_op("reshape", "r", ["input"], shape=[-1, 2]), {"r": (6, 2)}, True),
        (_op("reshape", "r", ["input"], shape=[3, -1]), {"r": (3, 4)}, False),
        (_op("transpose", "t", ["input"], perm=[0, 2, 1]), {"t": (2, 2, 3)}, True),
        (_op("softmax", "s", ["input"], axis=-1), {"s": (2, 3, 2)}, True),
        (_op("softmax", "s", ["input"], axis=-3), {"s": (2, 3, 2)}, False),
        (_op("reduce", "s", ["input"], fn="sum", axes=[1], keepdim=False), {"s": (2, 2)}, True),
        (
            _op("reduce", "s", ["input"], fn="amax", axes=[-3], keepdim=True),
            {"s": (1, 3, 2)},
            False,
        ),
        (
            _op("slice", "s", ["input"], slices=[[0, None, 1], [1, None, 1], [0, None, 1]]),
            {"s": (2, 2, 2)},
            True,
        ),
        (
            _op("slice", "s", ["input"], slices=[[0, None, 2], [0, None, 1], [0, None, 1]]),
            {"s": (1, 3, 2)},
            False,
        ),
        (_op("pad", "p", ["input"], pads=[[0, 0], [1, 1], [0, 0]]), {"p": (2, 5, 2)}, True),
        (_op("pad", "p", ["input"], pads=[[1, 0], [0, 0], [0, 0]]), {"p": (3, 3, 2)}, False),
        (_op("matmul", "m", ["input", "input"]), {"m": (2, 3, 3)}, True),
        (_op("unknown", "u", ["input"]), {"u": (2, 3, 2)}, False),
    ],
)
def test_the_rules_of_each_op(op, shapes, local):
    """One op after an input of shape (2, 3, 2), traced at batch 2."""
    out = Op("output", "output", [op.name], {}, {})
    traced = {"input": (2, 3, 2), **shapes}
    assert batch_local([op, out], traced, {}, ["input"], 2) is local


def test_a_constant_with_a_batch_sized_axis_0_is_not_broadcast_over_slices():
    """``x + c`` with ``c`` of shape (2, 3) at batch 2 adds row i of c to example i: slicing
    would break it; a constant of shape (1, 3) or (3,) broadcasts the same over any slice."""
    add = Op("binary", "a", ["input"], {"fn": "add"}, {"other": "c"})
    out = Op("output", "output", ["a"], {}, {})
    traced = {"input": (2, 3), "a": (2, 3)}
    assert not batch_local([add, out], traced, {"c": (2, 3)}, ["input"], 2)
    assert batch_local([add, out], traced, {"c": (1, 3)}, ["input"], 2)
    assert batch_local([add, out], traced, {"c": (3,)}, ["input"], 2)


def test_examples_per_slice():
    assert examples_per_slice(1000, 4000, 1) == 4
    assert examples_per_slice(1000, 4000, 2) == 8  # each thread's share in its own cache
    assert examples_per_slice(10**9, 4000, 1) == 1
