"""A user's own model is the real test: architectures onebit did not write (pytorchcv's CIFAR and
ImageNet nets, Hugging Face GPT-2, BERT and ViT from small configs, no weights), each under
BinaryConnect and XNOR-Net: the layer report, three training steps, input-dependent outputs,
copies that are whole and independent."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from pytorchcv.models import (
    densenet_cifar,
    diaresnet_cifar,
    mobilenetv2,
    preresnet_cifar,
    resnet_cifar,
    seresnet_cifar,
    shufflenetv2,
    wrn_cifar,
)
from torch import nn

import onebit
from onebit.convert import binarizable_layers
from onebit.layers import is_binary_layer
from onebit.methods import METHODS
from onebit.models import build
from onebit.probe import first_tensor
from onebit.quantizers import ThresholdSign
from onebit.training import model_logits

SMALL_BERT = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
              "intermediate_size": 64, "vocab_size": 50, "max_position_embeddings": 32}  # fmt: skip


SMALL_GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 2}
SMALL_VIT = {**SMALL_BERT, "patch_size": 8, "image_size": 32}


def _global_pool(model: nn.Module) -> nn.Module:
    """pytorchcv's ImageNet nets end in a 7x7 average pool; for 32x32 inputs a global one."""
    model.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return model


ARCHS = {
    "resnet20": lambda: resnet_cifar.resnet20_cifar10(),
    "preresnet20": lambda: preresnet_cifar.preresnet20_cifar10(),
    "seresnet20": lambda: seresnet_cifar.seresnet20_cifar10(),
    "densenet40_k12": lambda: densenet_cifar.densenet40_k12_cifar10(),
    "wrn16_1": lambda: wrn_cifar.get_wrn_cifar(num_classes=10, blocks=16, width_factor=1),
    "diaresnet20": lambda: diaresnet_cifar.diaresnet20_cifar10(),
    "mobilenetv2_wd4": lambda: _global_pool(mobilenetv2.mobilenetv2_wd4(num_classes=10)),
    "shufflenetv2_wd2": lambda: _global_pool(shufflenetv2.shufflenetv2_wd2(num_classes=10)),
    "gpt2": lambda: build("hf", (16,), 50, arch="gpt2", config=SMALL_GPT2),
    "bert": lambda: build(
        "hf", (16,), 10, arch="bert", task="sequence-classification", config=SMALL_BERT
    ),
    "vit": lambda: build(
        "hf", (3, 32, 32), 10, arch="vit", task="image-classification", config=SMALL_VIT
    ),
}
TOKENS = {"gpt2": 50, "bert": 50}


def _picklable(model: nn.Module) -> bool:
    try:
        pickle.dumps(model)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _batch(arch: str, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if arch == "gpt2":
        x = torch.randint(0, TOKENS[arch], (n, 16), generator=g)
        return x, torch.roll(x, -1, 1)  # next-token targets, (N, T)
    if arch == "bert":
        return torch.randint(0, TOKENS[arch], (n, 16), generator=g), torch.arange(n) % 10
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def _model(arch: str, method: str):
    torch.manual_seed(0)
    model = ARCHS[arch]()
    x, _ = _batch(arch)
    report = onebit.binarize_(model, METHODS[method](), example_inputs=(x[:2],))
    return model, report


@pytest.mark.parametrize("method", ["bc", "xnor"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_outside_architectures_binarize_train_and_copy(arch, method):
    model, report = _model(arch, method)
    x, y = _batch(arch)

    # the report names every binarizable layer, binary or kept float, and says why
    names = {n for n, _ in binarizable_layers(model)}
    assert names <= {r.name for r in report.layers}
    binary = {n for n, m in model.named_modules() if is_binary_layer(m) and m.binary}
    assert binary == set(report.binary) and binary
    for r in report.layers:
        assert r.reason and (r.binary == (r.reason.startswith("binarized")))
    if method == "xnor":  # first and last layers float, found by the data flow
        reasons = {r.reason.split(":")[0] for r in report.layers if not r.binary}
        assert "reads the network input" in reasons and "writes the network output" in reasons
        assert all(r.activations != "-" for r in report.layers if r.binary)
    else:  # BinaryConnect: every layer binary but weights tied to an embedding
        assert all(r.binary or "tied" in r.reason or "embedding" in r.reason
                   or "unsupported" in r.reason for r in report.layers)  # fmt: skip
    if method == "xnor" and arch in ("resnet20", "mobilenetv2_wd4", "densenet40_k12"):
        # after a ReLU/ReLU6 a plain sign is constantly +1: these inputs get thresholds
        assert any(isinstance(getattr(m, "act", None), ThresholdSign) for m in model.modules())

    # no dead binary activation: every binary layer's input takes both signs
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.setdefault(n, a[0]))
             for n, m in model.named_modules() if is_binary_layer(m) and m.act is not None]  # fmt: skip
    model.eval()
    with torch.no_grad():
        out = model_logits(model(x), y)
    for h in hooks:
        h.remove()
    # (or the report names the layer: a 1-channel squeeze of an SE block can stay constant)
    warned = {n for n in inputs if any(f"{n!r}" in note for note in report.notes)}
    assert len(warned) <= len(inputs) // 4
    for n, a in inputs.items():
        m = model.get_submodule(n)
        shifted = a - m.act.shift(a) if isinstance(m.act, ThresholdSign) else a
        assert n in warned or ((shifted >= 0).any() and (shifted < 0).any()), n
    # eval outputs depend on the input
    assert out.std(0).max() > 1e-6

    # three steps lower the loss
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    m = METHODS[method]()
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(model_logits(model(x), y), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(model, 3e-3, optimizer=opt)
    assert losses[3] < losses[0]

    # a binarized model deep-copies, pickles and state_dict-round-trips after training steps
    model.eval()
    with torch.no_grad():
        ref = first_tensor(model(x))
    twin = copy.deepcopy(model)
    fresh, _ = _model(arch, method)
    fresh.load_state_dict(model.state_dict())
    others = [twin, fresh.eval()]
    if _picklable(ARCHS[arch]()):  # pytorchcv's DIA-ResNet holds a lambda: not even its float net
        buf = io.BytesIO()
        pickle.dump(model, buf)
        others.append(pickle.loads(buf.getvalue()))
    with torch.no_grad():
        for other in others:
            torch.testing.assert_close(first_tensor(other(x)), ref)
    # copies are independent of the original
    with torch.no_grad():
        next(p for p in twin.parameters() if p.dim() >= 2).add_(1.0)
        torch.testing.assert_close(first_tensor(model(x)), ref)
