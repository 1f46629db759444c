"""ONNX export: a float graph with ±scale weights that onnxruntime runs like model.eval()."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort  # a dev extra: CI installs it
import pytest
import torch

import onebit
from onebit.export import export_onnx
from onebit.methods import BNN, BinaryConnect, XNORNet
from tests.test_pack import _random_bn_


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("method", [BinaryConnect(), BNN(), XNORNet()], ids=["bc", "bnn", "xnor"])
@pytest.mark.parametrize(
    ("name", "shape", "kw"),
    [("mlp", (1, 8, 8), {"hidden": [64, 64]}), ("resnet20", (3, 16, 16), {"width": 8})],
    ids=["mlp", "resnet20"],
)
def test_onnx_matches_torch_eval(tmp_path, name, shape, kw, method):
    torch.manual_seed(0)
    model = onebit.models.build(name, shape, 10, act=method.hidden_activation(), **kw)
    onebit.binarize_(model, method)
    # trained-like BatchNorm statistics: with the untrained ones, pre-activations of ±1 layers are
    # exact integers and many land on 0, where fused float arithmetic may break sign(0) = +1 ties
    _random_bn_(model)
    model.eval()
    path = export_onnx(model, shape, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)
    y = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert (y.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
