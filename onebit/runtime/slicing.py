"""Running a packed graph over slices of the batch, so that each op's output stays in cache.

At batch 64 a transformer's intermediate values are megabytes each (BERT-small's GELU input is
64 x 64 x 1024 floats, 16 MiB): every elementwise op, layer norm and softmax then streams its
input and output through memory, and the kernels' products re-read theirs. Run on a few examples
at a time, the same ops find their inputs in L2. On the 2-core AMX Xeon, BERT 4x256, a ViT and a
ResNet-20 at batch 64 ran 1.3-1.8x faster as slices of 4-8 examples (one thread; a scratch
measurement, the speed record has the numbers).

Slicing is only right when no op mixes examples. :func:`batch_local` decides it from the graph
and one traced run at batch 2: the batch axis must stay axis 0 of every value that depends on
the inputs, as a whole number of rows per example (a reshape may merge it with the next axes,
``(N, S, H) -> (N S, H)``, since each example's rows stay together), and no op may reduce,
concatenate, slice, pad, softmax or contract along it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from onebit.runtime.ops import Op

__all__ = ["SLICE_BYTES", "batch_local", "batched_values", "examples_per_slice", "plan"]

SLICE_BYTES = 1 << 19
"""Bytes of a slice's largest value per kernel thread (a quarter of a core's 2 MiB L2 on the Xeons
and EPYCs this project measures on, leaving room for the op's other operands)."""

# Row-local ops whatever their attributes: each output row depends on the same rows of the inputs.
_ROW_LOCAL = frozenset(
    {
        "linear", "conv", "affine", "relu", "hardtanh", "maxpool", "avgpool", "flatten", "add",
        "binary", "unary", "where", "layer_norm", "pool2d", "embedding", "cast", "constant",
    }
)  # fmt: skip
# Ops whose operands broadcast against each other (a constant operand must not carry a batch axis)
_BROADCAST = frozenset({"add", "binary", "where"})


def batched_values(ops: Iterable[Op], inputs: Iterable[str]) -> set[str]:
    """Names of the values that depend on the graph's inputs (a constant op with an input is
    broadcast to that input's batch, so it counts as batched)."""
    batched = set(inputs)
    for op in ops:
        if any(i in batched for i in op.inputs):
            batched.add(op.name)
    return batched


def _axis0(axis: int, ndim: int) -> bool:
    return axis % ndim == 0


def _op_is_local(
    op: Op,
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, tuple[int, ...]],
    batched: set[str],
) -> bool:
    """Whether one op keeps the examples of a traced batch apart (module doc)."""
    a, kind = op.attrs, op.op
    ins = [shapes[i] for i in op.inputs]
    bat = [i in batched for i in op.inputs]
    if kind in _BROADCAST:  # a constant operand with an axis 0 would meet the batch axis
        nd = max(len(s) for s in ins) if ins else 0
        consts = [tensors[n] for n in op.tensors.values() if n in tensors] + [
            s for s, b in zip(ins, bat, strict=True) if not b
        ]
        return all(len(s) < nd or s[0] == 1 for s in consts)
    if kind in _ROW_LOCAL:
        return True
    if kind == "transpose":
        return a["perm"][0] == 0
    if kind == "reshape":
        return a["shape"][0] == -1
    if kind == "expand":
        return a["shape"][0] == -1 or not any(bat)
    if kind == "softmax":
        return not _axis0(a["axis"], len(ins[0]))
    if kind == "reduce":
        return not any(_axis0(x, len(ins[0])) for x in a["axes"])
    if kind == "cat":
        return not _axis0(a["axis"], len(ins[0]))
    if kind == "slice":
        start, stop, step = a["slices"][0]
        return start in (0, None) and stop is None and step in (1, None)
    if kind == "pad":
        return list(a["pads"][0]) == [0, 0]
    if kind == "matmul":
        if len(ins) == 2:  # both computed: a batched product over the leading axes only
            return all(len(s) >= 3 for s, b in zip(ins, bat, strict=True) if b)
        # one input and a constant: the input's rows are independent unless it is the right
        # operand, whose axis -2 is contracted (axis 0 of a 2-D input)
        return len(ins[0]) >= (3 if a.get("other_first") else 2)
    if kind == "attention":
        return all(len(s) >= 3 for s, b in zip(ins, bat, strict=True) if b)
    return kind == "output"


def batch_local(
    ops: list[Op],
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, tuple[int, ...]],
    inputs: Iterable[str],
    batch: int,
    batched: set[str] | None = None,
) -> bool:
    """Whether running ``ops`` on slices of the batch and concatenating the outputs gives the
    whole batch's outputs.

    Args:
        ops: the graph.
        shapes: every value's shape in one traced run, by op name (and the inputs').
        tensors: the shapes of the file's tensors, by name.
        inputs: the names of the graph's inputs (axis 0: the batch).
        batch: the traced batch size (2 or more, so that a batch axis can be told from a 1).
        batched: :func:`batched_values` of ``ops`` and ``inputs``, when the caller has it.
    """
    if batched is None:
        batched = batched_values(ops, inputs)
    for op in ops:
        if op.name in batched and op.op != "output":
            shape = shapes.get(op.name)
            # the batch axis stays axis 0, a whole number of rows per example
            if not shape or shape[0] % batch or shape[0] < batch:
                return False
        if not _op_is_local(op, shapes, tensors, batched):
            return False
    out = next((op for op in ops if op.op == "output"), None)  # rows of whole examples
    return out is not None and out.inputs[0] in batched and shapes[out.inputs[0]][0] % batch == 0


def plan(
    ops: list[Op],
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, tuple[int, ...]],
    inputs: Iterable[str],
    batch: int,
) -> tuple[bool, int]:
    """From one traced run (arguments of :func:`batch_local`): whether the graph may be sliced,
    and the float32 bytes per example of its largest computed value."""
    inputs = list(inputs)
    batched = batched_values(ops, inputs)
    largest = max((math.prod(s) * 4 for k, s in shapes.items() if k in batched), default=0)
    return batch_local(ops, shapes, tensors, inputs, batch, batched), largest // batch


def examples_per_slice(bytes_per_example: int, budget: int, threads: int) -> int:
    """Examples per slice: as many as keep the largest value of a slice within ``budget`` bytes per
    thread (each thread's share of an op then stays in its core's cache), at least 1."""
    return max(1, (budget * max(1, threads)) // max(1, bytes_per_example))
