"""BatchNorm statistics of the hard-binarized model, for methods whose training forward is relaxed.

A BatchNorm layer's running mean and variance are gathered from the training forward pass. When
that pass uses relaxed weights (ProxQuant's latent ``w``), the statistics describe the relaxed
model, and the deployed model ``alpha * sign(w)`` is evaluated with statistics that do not fit it
(measured on an MNIST MLP: hard pre-activation variance 40x the running one after epoch 1, a
validation loss of 1e5). :func:`recalibrate_bn_` re-estimates them with the hard weights on a few
batches; :class:`InputCache` keeps the last training inputs a model saw, to replay for it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import nn

__all__ = ["InputCache", "input_cache", "recalibrate_bn_"]

_ATTR = "_onebit_input_cache"


class InputCache:
    """A forward pre-hook keeping the inputs ``(args, kwargs)`` of the last ``size`` calls of a
    module in training mode (references, not copies: the training loop makes a new batch each step).
    """

    def __init__(self, size: int) -> None:
        self.inputs: deque[tuple[tuple[Any, ...], dict[str, Any]]] = deque(maxlen=size)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            self.inputs.append((args, dict(kwargs)))


def input_cache(model: nn.Module, size: int) -> InputCache:
    """The :class:`InputCache` of ``model``, registered as its forward pre-hook on first use.

    It lives on the model (the method is a frozen value shared by runs), so it deep-copies and
    pickles with the model; it never enters the ``state_dict``.
    """
    cache = model.__dict__.get(_ATTR)
    if cache is None:
        cache = model.__dict__[_ATTR] = InputCache(size)
        model.register_forward_pre_hook(cache, with_kwargs=True)
    return cache


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, inputs: Any) -> int:
    """Re-estimate every BatchNorm's running mean and variance for the hard-binarized model.

    The model runs in eval mode (binary layers use ``alpha * sign(w)``, dropout is off) with its
    BatchNorm layers in training mode, their statistics reset and averaged over the batches with
    equal weight (``momentum = None``); afterwards every module's mode and momentum are restored.
    Affine parameters are untouched.

    Args:
        model: the model, changed in place (running statistics only).
        inputs: ``(args, kwargs)`` pairs to call the model with (an :class:`InputCache`'s
            ``inputs``).

    Returns:
        The number of BatchNorm layers recalibrated (0 when there is none or no input).
    """
    norms, inputs = _norms(model), list(inputs)
    if not norms or not inputs:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for args, kwargs in inputs:
            model(*args, **kwargs)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return len(norms)
