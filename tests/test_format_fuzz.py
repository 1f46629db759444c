"""Fuzzing the ``.onebit`` file: flipped bytes and edited metadata never give a wrong answer.

- Flipped bits anywhere in the file (the 8-byte header length, the JSON header with the graph,
  the tensors): loading gives one OnebitError sentence, or the model computes exactly the
  original outputs.
- Edited metadata (graph attributes, op kinds, inputs, tensor roles, the input spec, the
  version, ...) written back with the file's own checksum: refused (the checksum covers the
  header and the graph), or identical outputs for an edit that changed nothing.
- The same edits with every checksum recomputed (a file edited by a tool that knows the format,
  or an old file without the whole-file checksum): one OnebitError sentence or a model that
  runs to outputs of the right shape, never a traceback (the format's table-driven checks,
  ``onebit.runtime.schema``, stand between an edit and the interpreter).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from onebit.errors import OnebitError
from onebit.runtime import load
from tests import packed_models


def _captured():
    """A file of the current format: a binarized torch model captured by onebit.pack (conv, folded
    BatchNorm, pooling, flatten, GELU, layer norm, softmax, matmuls, a residual add)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    import onebit
    from onebit.methods import build_method

    class _Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc, self.ln, self.out = nn.Linear(72, 16), nn.LayerNorm(16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
            y = self.ln(F.gelu(self.fc(torch.flatten(y, 1))))
            a = torch.softmax(y[:, None, :] * y[:, :, None], -1) @ y[:, :, None]
            return self.out(a.squeeze(-1) + y)

    torch.manual_seed(0)
    model = _Small()
    example = (torch.randn(2, 1, 6, 6),)
    onebit.binarize_(model, build_method("bc"), example_inputs=example)
    return onebit.pack(model.eval(), example)


BUILDERS = {
    "cnn": packed_models.cnn,
    "mlp": lambda: packed_models.mlp((1, 6, 6), 4),
    "captured": _captured,
}
FLIPS = 300  # per model
EDITS = 500  # per model and mode


@pytest.fixture(scope="module", params=list(BUILDERS))
def model_file(request, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    packed = BUILDERS[request.param]()
    path = packed.save(tmp_path_factory.mktemp("fuzz") / f"{request.param}.onebit")
    shape = packed.input["shape"]
    x = np.random.default_rng(1).standard_normal((6, *shape)).astype(np.float32)
    return path, x, load(path)(x)


def _outcome(path: Path, x: np.ndarray) -> tuple[str, Any]:
    """``("error", sentence)`` or ``("ran", outputs)``; anything else raises (a traceback)."""
    try:
        model = load(path)
        return "ran", model(x)
    except OnebitError as e:
        assert "\n" not in str(e) and str(e).endswith((".", ")")), str(e)
        return "error", str(e)


def test_flipped_bits_give_an_error_or_the_original_outputs(model_file, tmp_path):
    path, x, ref = model_file
    data = path.read_bytes()
    (header_len,) = np.frombuffer(data[:8], "<u8")
    rng = random.Random(0)
    # half the flips in the first 8 bytes and the JSON header, half in the tensors
    positions = [rng.randrange(0, 8 + int(header_len)) for _ in range(FLIPS // 2)]
    positions += [rng.randrange(8 + int(header_len), len(data)) for _ in range(FLIPS - FLIPS // 2)]
    seen = {"error": 0, "ran": 0}
    for i, pos in enumerate(positions):
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        f = tmp_path / f"flip{i}.onebit"
        f.write_bytes(bytes(bad))
        kind, out = _outcome(f, x)
        seen[kind] += 1
        if kind == "ran":
            np.testing.assert_array_equal(
                out, ref, err_msg=f"flip at byte {pos} gave other outputs"
            )
        f.unlink()
    assert seen["error"] >= FLIPS * 0.9  # nearly every flip is caught; none gives another answer


# --- metadata edits ---------------------------------------------------------------------------

_VALUES = [
    0,
    -1,
    1,
    3,
    2**40,
    1.5,
    float("nan"),
    "x",
    None,
    [],
    [1],
    [0, 0],
    [3, 3],
    True,
    {"a": 1},
]


def _edits(meta: dict[str, str], rng: random.Random, n: int) -> list[tuple[str, dict[str, str]]]:
    """``n`` edited copies of ``meta`` (description, metadata), drawn from every kind of edit."""
    graph = json.loads(meta["graph"])
    spec = json.loads(meta["input"])
    names = [op["name"] for op in graph]
    kinds = [*sorted({op["op"] for op in graph}), "shortcut_a", "softmax"]

    def with_graph(g: list) -> dict[str, str]:
        return {**meta, "graph": json.dumps(g)}

    makers = []

    def attr_value() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        op = rng.choice(g)
        keys = [*op["attrs"], "extra", "groups", "mode", "input", "output"]
        k, v = rng.choice(keys), rng.choice(_VALUES)
        op["attrs"][k] = v
        return f"{op['name']}.attrs.{k} = {v!r}", with_graph(g)

    def attr_delete() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        op = rng.choice([o for o in g if o["attrs"]])
        k = rng.choice(list(op["attrs"]))
        del op["attrs"][k]
        return f"del {op['name']}.attrs.{k}", with_graph(g)

    def op_kind() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        op = rng.choice(g)
        op["op"] = rng.choice(kinds)
        return f"{op['name']}.op = {op['op']}", with_graph(g)

    def op_inputs() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        op = rng.choice(g)
        op["inputs"] = rng.choice(
            [[], ["input"], [rng.choice(names)], [rng.choice(names)] * 2, ["zz"], [3]]
        )
        return f"{op['name']}.inputs = {op['inputs']}", with_graph(g)

    def op_tensors() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        op = rng.choice([o for o in g if o["tensors"]])
        roles = list(op["tensors"])
        r = rng.choice(roles)
        choice = rng.randrange(4)
        if choice == 0:
            del op["tensors"][r]
        elif choice == 1:
            op["tensors"][r + "x"] = op["tensors"].pop(r)
        elif choice == 2:
            other = rng.choice([o for o in g if o["tensors"]])
            op["tensors"][r] = rng.choice(list(other["tensors"].values()))
        else:
            op["tensors"][r] = "missing"
        return f"{op['name']}.tensors edit {choice} of {r}", with_graph(g)

    def structure() -> tuple[str, dict[str, str]]:
        g = copy.deepcopy(graph)
        i = rng.randrange(len(g))
        choice = rng.randrange(5)
        if choice == 0:
            del g[i]
        elif choice == 1:
            g.insert(i, copy.deepcopy(g[i]))
        elif choice == 2:
            j = rng.randrange(len(g))
            g[i], g[j] = g[j], g[i]
        elif choice == 3:
            g[i]["name"] = rng.choice([*names, "input", "output", ""])
        else:
            g[i]["extra"] = 1
        return f"graph structure edit {choice} at {i}", with_graph(g)

    def input_spec() -> tuple[str, dict[str, str]]:
        s = copy.deepcopy(spec)
        k = rng.choice(["shape", "mean", "std", "pixels", "dtype"])
        s[k] = rng.choice([*_VALUES, [1, 6, 6], [3, 8, 8], [36], [0.5] * 3, [-1.0] * 3, [0.0]])
        return f"input.{k} = {s[k]!r}", {**meta, "input": json.dumps(s)}

    def other_field() -> tuple[str, dict[str, str]]:
        k = rng.choice(["format_version", "format", "source", "checksums", "graph", "input", "new"])
        v = rng.choice(["1", "2", "3", "4", "", "{}", "[]", "null", "onebit", "[{", '{"a": 1}'])
        return f"{k} = {v!r}", {**meta, k: v}

    makers = [attr_value] * 5 + [
        attr_delete,
        op_kind,
        op_inputs,
        op_tensors,
        structure,
        input_spec,
        other_field,
    ]
    return [rng.choice(makers)() for _ in range(n)]


def _rewrite(path: Path, meta: dict[str, str], tensors: dict, *, recompute: bool) -> None:
    from onebit.runtime.format import FILE_CHECKSUM, file_digest

    meta = dict(meta)
    if recompute:
        meta["checksums"] = json.dumps(
            {
                k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8).tobytes()).hexdigest()
                for k, v in tensors.items()
            }
        )
        meta[FILE_CHECKSUM] = file_digest(meta, tensors)
    save_file(tensors, str(path), meta)


@pytest.mark.parametrize("recompute", [False, True], ids=["own-checksum", "checksums-recomputed"])
def test_edited_metadata_gives_an_error_or_a_model_that_runs(model_file, tmp_path, recompute):
    path, x, ref = model_file
    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    rng = random.Random(1 if recompute else 2)
    seen = {"error": 0, "ran": 0}
    for i, (what, edited) in enumerate(_edits(meta, rng, EDITS)):
        f = tmp_path / f"edit{i}.onebit"
        _rewrite(f, edited, tensors, recompute=recompute)
        try:
            kind, out = _outcome(f, x)
        except Exception as e:  # a traceback: the format let the edit through to a crash
            pytest.fail(f"edit {what!r}: {type(e).__name__}: {e}")
        seen[kind] += 1
        if kind == "ran":
            if not recompute:  # the file's own checksum: only an edit that changed nothing runs
                np.testing.assert_array_equal(
                    out, ref, err_msg=f"edit {what!r} ran to other outputs"
                )
            else:  # a valid graph of another model (e.g. another op as output): one row each
                # (of any rank: a captured graph's values may be (N, ...) before the logits)
                assert out.ndim >= 1 and len(out) == len(x) and out.dtype == np.float32, what
        f.unlink()
    assert seen["error"] > 0.5 * EDITS, seen
