"""Models written outside onebit, built from a config: any importable builder, and Hugging Face
transformers made from a config (random weights; nothing is downloaded).

These are what a user brings: onebit binarizes them like its own models (``onebit.binarize_``
follows their data flow). Registered in :data:`onebit.models.MODELS` as ``import`` and ``hf``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from onebit.errors import OnebitError

__all__ = ["HF_TASKS", "huggingface", "imported"]


def imported(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    target: str = "",
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The model ``target`` builds: ``"package.module:function"`` (e.g.
    ``"pytorchcv.models.resnet_cifar:resnet20_cifar10"``), called with ``kwargs`` and, when it
    takes them, ``num_classes`` and ``in_size`` (the image size) from the data.

    Raises:
        OnebitError: ``target`` cannot be imported or does not build an ``nn.Module``.
    """
    module, _, name = target.partition(":")
    if not module or not name:
        raise OnebitError(
            f"model.target = {target!r} is not accepted; give 'package.module:function', e.g. "
            "'pytorchcv.models.resnet_cifar:resnet20_cifar10'."
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise OnebitError(f"cannot import model.target {target!r} ({e}).") from None
    kw = dict(kwargs or {})
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or takes_any:
        kw.setdefault("num_classes", num_classes)
    if len(in_shape) == 3 and ("in_size" in params):
        kw.setdefault("in_size", tuple(in_shape[1:]))
    try:
        model = fn(**kw)
    except TypeError as e:
        raise OnebitError(f"model.target {target!r} does not take these options ({e}).") from None
    if not isinstance(model, nn.Module):
        raise OnebitError(f"model.target {target!r} returned {type(model).__name__}, not a model.")
    return model


HF_TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
"""Hugging Face tasks ``hf`` builds, with the auto class that makes each."""


def huggingface(
    in_shape: Sequence[int] = (128,),
    num_classes: int = 97,
    arch: str = "gpt2",
    task: str = "causal-lm",
    config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A Hugging Face transformer of architecture ``arch`` (``gpt2``, ``bert``, ``vit``, ...) for
    ``task``, made from its config (``config`` overrides its defaults; random weights).

    From the data: a language model's vocabulary is ``num_classes`` and its context at least the
    sequence length ``in_shape[0]``; a classifier gets ``num_labels = num_classes``; an image
    model its ``image_size`` and ``num_channels`` from ``in_shape = (C, H, W)``.

    Raises:
        OnebitError: transformers is not installed, or ``arch``/``task``/``config`` is unknown.
    """
    try:
        import transformers
    except ImportError:
        raise OnebitError(
            "model.name = 'hf' needs transformers: pip install transformers."
        ) from None
    if task not in HF_TASKS:
        raise OnebitError(
            f"model.task = {task!r} is not accepted; choose one of {', '.join(HF_TASKS)}."
        )
    options: dict[str, Any] = dict(config or {})
    try:
        cfg = transformers.AutoConfig.for_model(arch, **options)
    except (ValueError, KeyError) as e:
        raise OnebitError(f"model.arch = {arch!r} or its config is not accepted ({e}).") from None
    if task == "causal-lm":
        cfg.vocab_size = num_classes
        cfg.use_cache = False  # training and packing need no key/value cache
        for key in ("n_positions", "max_position_embeddings"):
            if hasattr(cfg, key) and getattr(cfg, key) < in_shape[0]:
                setattr(cfg, key, in_shape[0])
    else:
        cfg.num_labels = num_classes
    if task == "image-classification" and len(in_shape) == 3:
        cfg.num_channels, cfg.image_size = in_shape[0], in_shape[1]
    auto = getattr(transformers, HF_TASKS[task])
    return auto.from_config(cfg, attn_implementation="sdpa")
