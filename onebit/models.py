"""Reference networks for the experiments, and a registry ``MODELS: name -> builder``.

Every builder takes ``in_shape`` (C, H, W) and ``num_classes`` plus its own keyword options, and
returns a plain torch model (float layers); ``onebit.binarize_`` turns chosen layers binary.
The character LSTM ``lstm_lm`` (defined in ``onebit.recurrent``) takes ``in_shape = (T,)`` and
the vocabulary size as ``num_classes``.
``act`` selects the hidden nonlinearity: ``relu`` for float or weight-only nets; ``hardtanh`` for
nets whose activations a method binarizes (``sign(relu(x))`` would be constantly +1).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.convert import LayerPolicy
from onebit.errors import OnebitError
from onebit.external import huggingface, imported
from onebit.recurrent import lstm_lm

__all__ = [
    "MODELS",
    "build",
    "lstm_lm",
    "mlp",
    "mobilenet_small",
    "model_options",
    "resnet18",
    "resnet20",
    "small_cnn",
    "vgg_small",
    "vit",
]

ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "hardtanh": nn.Hardtanh,
    "identity": nn.Identity,
}


def _act(name: str) -> nn.Module:
    try:
        return ACTS[name]()
    except KeyError:
        raise OnebitError(f"unknown activation {name!r}; accepted: {', '.join(ACTS)}.") from None


def mlp(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (2048, 2048, 2048),
    bn: bool = True,
    bn_logits: bool = False,
    act: str = "relu",
    dropout: float = 0.0,
    bn_eps: float = 1e-4,
    bn_momentum: float = 0.1,
    init: str = "torch",
) -> nn.Sequential:
    """Multilayer perceptron ``in -> hidden... -> num_classes`` on flattened inputs.

    Each hidden block is Linear -> BatchNorm1d (when ``bn``) -> ``act`` -> Dropout. With
    ``bn_logits`` a BatchNorm1d follows the output layer, as in BinaryConnect's and LAB's code.
    Linear layers followed by BatchNorm carry no bias (BatchNorm's shift replaces it).
    ``bn_momentum`` is torch's (running = (1 - m) running + m batch; Keras' 0.99 is 0.01 here);
    ``init`` is ``torch`` (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, torch's default) or ``glorot``
    (``U(-sqrt(6 / (fan_in + fan_out)), +...)``, Keras' and BinaryConnect's).
    """
    widths = [math.prod(in_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers.append(nn.Linear(a, b, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(b, eps=bn_eps, momentum=bn_momentum))
        layers.append(_act(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], num_classes, bias=not bn_logits))
    if bn_logits:
        layers.append(nn.BatchNorm1d(num_classes, eps=bn_eps, momentum=bn_momentum))
    model = nn.Sequential(*layers)
    init_weights_(model, init)
    return model


INITS = ("torch", "glorot", "he")


def init_weights_(model: nn.Module, init: str) -> None:
    """Re-initialize the weights of every Linear and Conv2d: ``torch`` keeps torch's default,
    ``glorot`` draws them from Glorot/Xavier uniform, ``he`` from He et al. 2015's normal
    ``N(0, 2 / fan)`` (fan-out for convolutions, as torchvision's ResNets; fan-in for linear
    layers); both zero the biases."""
    if init not in INITS:
        raise OnebitError(f"unknown init {init!r}; accepted: {', '.join(INITS)}.")
    if init == "torch":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            if init == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:
                mode = "fan_out" if isinstance(m, nn.Conv2d) else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_bn(cin: int, cout: int, act: str, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        _act(act),
    ]


def small_cnn(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    hidden: int = 256,
    act: str = "relu",
    bn_logits: bool = False,
) -> nn.Sequential:
    """Small CNN: [conv3x3-BN-act, conv3x3-BN-act, maxpool2] per width, then FC-BN-act-FC."""
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for width in channels:
        layers += _conv_bn(c, width, act) + _conv_bn(width, width, act) + [nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers += [
        nn.Flatten(),
        nn.Linear(c * h * w, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        _act(act),
        nn.Linear(hidden, num_classes, bias=not bn_logits),
    ]
    if bn_logits:
        layers.append(nn.BatchNorm1d(num_classes))
    return nn.Sequential(*layers)


def vgg_small(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    width: int = 128,
    act: str = "relu",
    bn_logits: bool = False,
) -> nn.Sequential:
    """VGG-small (as in LQ-Nets/BinaryConnect's CIFAR net): 2x(w) - M - 2x(2w) - M - 2x(4w) - M - FC."""
    c, h, _ = in_shape
    layers: list[nn.Module] = []
    for out in (width, width, 2 * width, 2 * width, 4 * width, 4 * width):
        layers += _conv_bn(c, out, act)
        if out == c:  # second conv of each pair is followed by pooling
            layers.append(nn.MaxPool2d(2))
            h //= 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * h, num_classes, bias=not bn_logits)]
    if bn_logits:
        layers.append(nn.BatchNorm1d(num_classes))
    return nn.Sequential(*layers)


class _ShortcutA(nn.Module):
    """Parameter-free ResNet shortcut (option A): subsample and zero-pad channels."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-act-conv-BN + shortcut, then act."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = _act(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = _act(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _ShortcutA(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): a 3x3 stem, stages of basic blocks, pool, linear."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        act: str,
        shortcut: str,
        bn_logits: bool,
        init: str = "torch",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = _act(act)
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(cin, w, stride, act, shortcut))
                cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=not bn_logits)
        self.bn_out = nn.BatchNorm1d(num_classes) if bn_logits else nn.Identity()
        init_weights_(self, init)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for block in self.layers:
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.act1(self.bn1(self.conv1(x))))
        return self.bn_out(self.fc(torch.flatten(self.pool(x), 1)))


def resnet20(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    width: int = 16,
    act: str = "relu",
    shortcut: str = "A",
    bn_logits: bool = False,
    init: str = "torch",
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-20 for 32x32 inputs: 3 stages of 3 blocks, widths 16-32-64 (0.27 M parameters).

    ``init``: ``torch`` (torch's default), ``glorot`` or ``he`` (:func:`init_weights_`);
    ``zero_init_residual``: every block's last BatchNorm scale starts at 0, so each block
    starts as the identity (Goyal et al. 2017).
    """
    widths = (width, 2 * width, 4 * width)
    return ResNet(
        in_shape, num_classes, widths, (3, 3, 3), act, shortcut, bn_logits, init,
        zero_init_residual,
    )  # fmt: skip


def resnet18(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    width: int = 64,
    act: str = "relu",
    bn_logits: bool = False,
) -> ResNet:
    """ResNet-18 for 32x32 inputs: 4 stages of 2 blocks, widths 64-128-256-512, 1x1 shortcuts."""
    widths = (width, 2 * width, 4 * width, 8 * width)
    return ResNet(in_shape, num_classes, widths, (2, 2, 2, 2), act, "B", bn_logits)


class _Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` and ``proj`` are binarizable Linear layers."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + fc2(act(fc1(LN(x))))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else _act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """DeiT-style vision transformer: patch embedding, class token, learned positions, blocks, head.

    The patch embedding and the head stay float under every method (its
    :meth:`onebit_layer_policy`, as the ProxConnect++ paper's ViT runs do [recon]); the attention
    and MLP Linear layers of every block are binarizable.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        patch: int,
        act: str,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h % patch or w % patch or dim % heads:
            raise OnebitError(
                f"vit needs the patch ({patch}) to divide the image ({h}x{w}) and heads ({heads}) "
                f"to divide dim ({dim})."
            )
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (h // patch) * (w // patch) + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(_ViTBlock(dim, heads, mlp_ratio, act) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def onebit_layer_policy(self) -> LayerPolicy:
        """Patch embedding and head float, whatever the method."""
        return LayerPolicy(keep_float=frozenset({"patch_embed", "head"}))

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    patch: int = 4,
    act: str = "gelu",
) -> ViT:
    """A tiny DeiT-style ViT for 32x32 inputs (defaults: 4 blocks of width 128, 4x4 patches)."""
    return ViT(in_shape, num_classes, dim, depth, heads, mlp_ratio, patch, act)


class DepthwiseSeparable(nn.Module):
    """MobileNet block: depthwise 3x3 conv-BN(-shortcut)-act, pointwise 1x1 conv-BN(-shortcut)-act.

    With ``residual``, an identity shortcut is added before each activation where the shapes match
    (the depthwise conv at stride 1, the pointwise conv when ``cin == cout``), as binary compact
    nets do (Bi-Real Net, ReActNet): a binary activation otherwise loses the block's input.
    """

    def __init__(self, cin: int, cout: int, stride: int, act: str, residual: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = _act(act)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = _act(act)
        self.res_dw = residual and stride == 1
        self.res_pw = residual and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.dw(x))
        if self.res_dw:
            y = y + x
        y = self.act1(y)
        z = self.bn2(self.pw(y))
        if self.res_pw:
            z = z + y
        return self.act2(z)


class MobileNet(nn.Module):
    """A compact MobileNet-style net for 32x32 inputs: 3x3 stem, depthwise-separable blocks,
    global average pooling, linear classifier (optionally BatchNorm after the logits)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        stem: int,
        channels: Sequence[int],
        strides: Sequence[int],
        act: str,
        residual: bool,
        bn_logits: bool,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise OnebitError(
                f"mobilenet_small needs one stride per block: {len(channels)} channels, "
                f"{len(strides)} strides."
            )
        self.conv1 = nn.Conv2d(in_shape[0], stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = _act(act)
        blocks, cin = [], stem
        for cout, stride in zip(channels, strides, strict=True):
            blocks.append(DepthwiseSeparable(cin, cout, stride, act, residual))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=not bn_logits)
        self.bn_out = nn.BatchNorm1d(num_classes) if bn_logits else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv1(x))))
        return self.bn_out(self.fc(torch.flatten(self.pool(x), 1)))


def mobilenet_small(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    stem: int = 32,
    channels: Sequence[int] = (32, 64, 64, 128, 128),
    strides: Sequence[int] = (2, 1, 2, 1, 1),
    act: str = "relu",
    residual: bool = True,
    bn_logits: bool = False,
) -> MobileNet:
    """MobileNet-style net for 32x32 inputs, small enough for CPU training (38 k parameters,
    3.8 M MACs by default): a 3x3 stem conv of ``stem`` channels, then one depthwise-separable
    block per entry of ``channels`` (with its stride), global average pooling and a linear layer."""
    return MobileNet(in_shape, num_classes, stem, channels, strides, act, residual, bn_logits)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "vgg_small": vgg_small,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "vit": vit,
    "mobilenet_small": mobilenet_small,
    "lstm_lm": lstm_lm,
    "import": imported,
    "hf": huggingface,
}


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of model ``name`` (besides ``in_shape`` and ``num_classes``)."""
    params = inspect.signature(_builder(name)).parameters
    return {k: p for k, p in params.items() if k not in ("in_shape", "num_classes")}


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise OnebitError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}.") from None


def build(
    name: str, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, **options: object
) -> nn.Module:
    """Build model ``name`` from the registry with its keyword ``options``."""
    builder = _builder(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OnebitError(
            f"model {name!r} has no option {unknown[0]!r}; accepted: {', '.join(accepted)}."
        )
    return builder(in_shape=tuple(in_shape), num_classes=num_classes, **options)
