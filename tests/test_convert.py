"""binarize_ on every model of the registry, the first/last policy, the filter, and the summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onebit import binarize_, summary, unbinarize_
from onebit.convert import binarizable_layers, layer_policy
from onebit.layers import is_binary_layer
from onebit.methods import BNN, BWN, BinaryConnect, FullPrecision
from onebit.models import MODELS, build

SHAPES = {"mlp": (1, 28, 28), "small_cnn": (1, 28, 28)}
SMALL = {
    "mlp": {"hidden": [32, 32]},
    "small_cnn": {"channels": [4, 8], "hidden": 16},
    "vgg_small": {"width": 8},
    "resnet20": {"width": 4},
    "resnet18": {"width": 4},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "patch": 8},
}


# the character LSTM takes token ids and keeps its own float layers: tests/test_recurrent.py;
# models built from outside code (import, hf): tests/test_own_models.py
@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("lstm_lm", "import", "hf")])
@pytest.mark.parametrize("method", [BinaryConnect(), BWN(), BNN()], ids=["bc", "bwn", "bnn"])
def test_binarize_every_registered_model(name, method):
    torch.manual_seed(0)
    shape = SHAPES.get(name, (3, 32, 32))
    model = build(name, shape, 10, **SMALL.get(name, {}))
    n_layers = len(binarizable_layers(model))
    fixed = [n in layer_policy(model).keep_float for n, _ in binarizable_layers(model)]
    x = torch.randn(2, *shape)
    binarize_(model, method)
    layers = binarizable_layers(model)
    flags = [is_binary_layer(m) for _, m in layers]
    assert len(layers) == n_layers
    policy = [
        not ((i == 0 and method.keep_first) or (i == n_layers - 1 and method.keep_last))
        for i in range(n_layers)
    ]
    # every layer follows the first/last policy, except those the model's policy keeps float
    assert flags == [p and not f for p, f in zip(policy, fixed, strict=True)]
    # activation binarizer on every binary layer but the one that sees the network input
    acts = [getattr(m, "act", None) is not None for _, m in layers]
    if method.binary_activations:
        assert acts == [b and i > 0 for i, b in enumerate(flags)]
    else:
        assert not any(acts)
    out = model.train()(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(m.weight.grad is not None for _, m in layers)
    model.eval()(x)


def test_fp_and_filter_and_overrides():
    model = build("mlp", (1, 4, 4), 3, hidden=[8, 8])
    binarize_(model, FullPrecision())
    assert not any(is_binary_layer(m) for m in model.modules())
    binarize_(model, BinaryConnect(), filter_fn=lambda name, m: m.out_features != 8)
    flags = [is_binary_layer(m) for _, m in binarizable_layers(model)]
    assert flags == [False, False, True]
    binarize_(model, BinaryConnect(), keep_first=True, keep_last=True)
    assert [is_binary_layer(m) for _, m in binarizable_layers(model)] == [False, True, False]
    unbinarize_(model)
    assert not any(is_binary_layer(m) for m in model.modules())


def test_summary_counts_bits_params_and_macs():
    model = build("mlp", (1, 4, 4), 3, hidden=[8])  # 16 -> 8 (BN) -> 3
    binarize_(model, BWN(keep_first=False, keep_last=True))
    rows = {r.name: r for r in summary(model, torch.zeros(1, 1, 4, 4))}
    first, bn, last = rows["1"], rows["2"], rows["4"]
    assert (first.binary_params, first.float_params) == (16 * 8, 0)
    assert first.bits == 16 * 8 + 32 * 8  # 1 bit per weight + one float scale per channel
    assert first.binary_macs == 16 * 8 and first.float_macs == 0
    assert bn.float_params == 16 and bn.binary_params == 0
    assert last.float_params == 8 * 3 + 3 and last.float_macs == 8 * 3
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False))
    binarize_(conv, BinaryConnect())
    (row,) = summary(conv, torch.zeros(1, 2, 5, 5))
    assert row.binary_macs == 2 * 9 * 4 * 25 and row.bits == 4 * 2 * 9


def test_mlp_keras_style_options():
    """bn_momentum reaches every BatchNorm; glorot init stays inside its bound, torch's does not."""
    torch.manual_seed(0)
    model = build(
        "mlp", (1, 28, 28), 10, hidden=[512], bn_logits=True, bn_momentum=0.01, init="glorot"
    )
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2 and all(m.momentum == 0.01 for m in bns)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    bound = (6 / (784 + 512)) ** 0.5
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.95 * bound  # uses the whole Glorot range
    default = build("mlp", (1, 28, 28), 10, hidden=[512])
    assert (
        next(m for m in default.modules() if isinstance(m, nn.Linear)).weight.abs().max()
        < (1 / 784**0.5) * 1.0001
    )


def test_unknown_init_is_one_sentence():
    from onebit.errors import OnebitError

    with pytest.raises(OnebitError, match="unknown init 'lecun'"):
        build("mlp", (1, 4, 4), 3, hidden=[8], init="lecun")
