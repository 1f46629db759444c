"""Run configuration: dataclasses read from TOML files, with ``--set section.key=value`` overrides.

A config file has four tables, each optional::

    [data]    name, root, path, val_size, augment, seq_len, max_train, max_val
    [model]   name, plus the model builder's keyword options (e.g. hidden = [2048, 2048, 2048])
    [method]  name, plus the method's options (e.g. stochastic = true for bc)
    [train]   epochs, batch_size, optimizer, lr, ... (see TrainConfig)

An unknown key or a value of the wrong type is one ``OnebitError`` naming the accepted keys. An
option that may be unset is spelled ``"none"`` in a file (TOML has no null): ``clip = "none"``.
The recipe itself, :class:`onebit.training.TrainConfig`, lives with the training loop.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebit.data import DATASETS
from onebit.errors import OnebitError
from onebit.gemm import BACKENDS
from onebit.methods import Method, method_preset
from onebit.methods import build_method as _build_method
from onebit.models import MODELS, model_options
from onebit.training import LOSSES, SCHEDULES, TrainConfig, check_recipe

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "build_method",
    "load_config",
    "saved_config",
]


@dataclass
class DataConfig:
    """Which dataset, and where it lives.

    Attributes:
        name: mnist, fashion-mnist, cifar10, npz, linux-kernel or text (character-level).
        root: data folder (default: ONEBIT_DATA, then the usual places).
        path: the .npz file for ``name = "npz"``, the text file for ``name = "text"``.
        val_size: validation examples held out of the training set (image and npz data; text
            splits 80/10/10 by position). None: 10,000 (the classic split of MNIST, Fashion-MNIST
            and CIFAR-10; a config read back says 10000), and for npz a tenth of the training
            examples. MNIST-style files are split by position; npz files by a fixed,
            class-stratified shuffle (a class-sorted file still gets every class in each split).
        augment: random crop + flip in training (None: the dataset's default, on for CIFAR).
        seq_len: characters per sequence, for text.
        max_train: train on at most this many training examples, evenly spaced over the
            training split (None: all); a budget knob, stated with the results it produces.
        max_val: validate on at most this many validation examples, evenly spaced (None: all).
            The test split is never cut.
        normalize: standardize image inputs with the dataset's per-channel mean and std
            (False: feed ``x / 255`` in [0, 1], as Keras/Larq examples do).
    """

    name: str = "fashion-mnist"
    root: str | None = None
    path: str | None = None
    val_size: int | None = None
    augment: bool | None = None
    seq_len: int = 100
    max_train: int | None = None
    max_val: int | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.val_size is None and self.name != "npz":
            self.val_size = 10000  # the classic split, spelled out as configs always said it


@dataclass
class ModelConfig:
    """Model name and the builder's keyword options (checked against its signature)."""

    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Method name and its options (checked against the method's fields)."""

    name: str = "bc"
    options: dict[str, Any] = field(default_factory=dict)


CHOICES = {
    ("train", "optimizer"): ("adam", "sgd"),
    ("train", "gemm"): BACKENDS,
    ("train", "schedule"): SCHEDULES,
    ("train", "loss"): tuple(LOSSES),
}

NONE = "none"
"""How a config file spells an unset option (TOML has no null)."""


@dataclass
class Config:
    """A whole run: data, model, method, training recipe, and where runs are written."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs"
    name: str = "run"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the shape of the TOML file."""
        return {
            "data": dataclasses.asdict(self.data),
            "model": {"name": self.model.name, **self.model.options},
            "method": {"name": self.method.name, **self.method.options},
            "train": dataclasses.asdict(self.train),
            "out": self.out,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Validate and build from the TOML-shaped dict (unknown keys and wrong types raise)."""
        top = {"data", "model", "method", "train", "out", "name"}
        for k in d:
            if k not in top:
                raise OnebitError(f"unknown config key {k!r}; accepted: {', '.join(sorted(top))}.")
        cfg = cls(
            data=_dataclass_from(DataConfig, d.get("data", {}), "data"),
            train=_dataclass_from(TrainConfig, d.get("train", {}), "train"),
            out=_check("out", d.get("out", "runs"), str),
            name=_check("name", d.get("name", "run"), str),
        )
        model = dict(d.get("model", {}))
        cfg.model = ModelConfig(_check("model.name", model.pop("name", "mlp"), str), model)
        _check_model_options(cfg.model)
        table = dict(d.get("method", {}))
        cfg.method = MethodConfig(_check("method.name", table.pop("name", "bc"), str), table)
        build_method(cfg.method)  # validates
        for (section, key), allowed in CHOICES.items():
            value = getattr(getattr(cfg, section), key)
            if value not in allowed:
                raise OnebitError(
                    f"{section}.{key} = {value!r} is not accepted; choose one of {', '.join(allowed)}."
                )
        check_recipe(cfg.train)
        _check_data(cfg.data)
        _check_place(cfg)
        return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` if it fits annotation ``tp`` (ints are accepted for floats), else raise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if (value is None or value == NONE) and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(key, value, a)
            except OnebitError:
                pass
        raise OnebitError(f"{key} must be {_pretty(tp)}, got {value!r}.")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise OnebitError(f"{key} must be a list, got {value!r}.")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_check(key, v, inner) for v in value]
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise OnebitError(f"{key} must be int, got {value!r}.")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise OnebitError(f"{key} must be {_type_name(tp)}, got {value!r}.")
    return value


def _pretty(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join("none" if a is type(None) else _pretty(a) for a in args)
    return _type_name(tp)


def _dataclass_from(cls: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise OnebitError(f"[{section}] must be a table of keys, got {values!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {}
    for k, v in values.items():
        if k not in fields:
            raise OnebitError(f"unknown key {section}.{k}; accepted: {', '.join(sorted(fields))}.")
        out[k] = _check(f"{section}.{k}", v, hints[k])
    return cls(**out)


# Ranges of the models' float options (every int option is a size: a whole number >= 1).
MODEL_FLOAT_RANGES: dict[str, tuple[str, Any]] = {
    "dropout": ("a fraction in [0, 1)", lambda v: 0 <= v < 1),
    "bn_eps": ("a number > 0", lambda v: v > 0),
    "bn_momentum": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "mlp_ratio": ("a number > 0", lambda v: v > 0),
}


def _check_model_options(model: ModelConfig) -> None:
    if model.name not in MODELS:
        raise OnebitError(f"unknown model {model.name!r}; accepted: {', '.join(MODELS)}.")
    accepted = model_options(model.name)
    hints = typing.get_type_hints(MODELS[model.name])
    for k, v in model.options.items():
        if k not in accepted:
            raise OnebitError(
                f"unknown key model.{k} for model {model.name!r}; accepted: "
                f"name, {', '.join(accepted)}."
            )
        model.options[k] = _check(f"model.{k}", v, hints.get(k, Any))
        _check_model_value(f"model.{k}", model.options[k])


def _check_model_value(key: str, v: Any) -> None:
    """Sizes are whole numbers >= 1 (``hidden = [0]`` builds a net that cannot train); floats
    are finite and, where the option has a range, inside it."""
    items = v if isinstance(v, list | tuple) else [v]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if isinstance(item, int) and item < 1:
            raise OnebitError(f"{key} = {v!r} is not accepted; give sizes >= 1 (whole numbers).")
        if isinstance(item, float):
            name = key.rsplit(".", 1)[-1]
            accepted, ok = MODEL_FLOAT_RANGES.get(name, ("a finite number", lambda x: True))
            if not math.isfinite(item) or not ok(item):
                raise OnebitError(f"{key} = {v!r} is not accepted; give {accepted}.")


def _check_data(d: DataConfig) -> None:
    """The ``[data]`` values that no dataset accepts, before anything is read or written."""
    if d.name not in DATASETS:
        raise OnebitError(f"unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}.")
    if d.val_size is not None and d.val_size < 0:
        raise OnebitError(
            f"data.val_size = {d.val_size} is not accepted; give 0 or a number of examples."
        )
    for key in ("max_train", "max_val"):
        v = getattr(d, key)
        if v is not None and v < 1:
            raise OnebitError(
                f"data.{key} = {v} is not accepted; give a number of examples >= 1, or none."
            )
    if d.seq_len < 1:
        raise OnebitError(f"data.seq_len = {d.seq_len} is not accepted; give a length >= 1.")
    for key in ("root", "path"):
        v = getattr(d, key)
        if v is not None and not v.strip():
            raise OnebitError(f"data.{key} is empty; give a path, or leave the key out.")


def _check_place(cfg: Config) -> None:
    """``name`` becomes a folder name under ``out``: no path separators, no leading dot."""
    if not cfg.name.strip() or cfg.name.startswith(".") or any(c in cfg.name for c in "/\\\0"):
        raise OnebitError(
            f"name = {cfg.name!r} is not accepted; give a folder name without '/' that does "
            "not start with '.' (it names the runs' folder under out)."
        )
    if not cfg.out.strip():
        raise OnebitError("out is empty; give the folder runs are written to (default: runs).")


def build_method(mc: MethodConfig) -> Method:
    """The method instance a ``[method]`` table describes (options checked against its fields,
    ``"none"`` accepted where an option may be unset)."""
    row = method_preset(mc.name)
    hints = typing.get_type_hints(row.cls)
    accepted = row.options()
    checked = {}
    for k, v in mc.options.items():
        if k not in accepted:
            raise OnebitError(
                f"unknown key method.{k} for method {mc.name!r}; accepted: name, "
                f"{', '.join(sorted(accepted))}."
            )
        checked[k] = _check(f"method.{k}", v, hints[k])
    return _build_method(mc.name, **checked)


def _parse_value(text: str) -> Any:
    """A TOML value (``0.1``, ``true``, ``[1, 2]``, ``"x"``), or the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a TOML-shaped dict (returns a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise OnebitError(f"--set expects section.key=value, got {item!r}.")
        *sections, leaf = key.strip().split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise OnebitError(f"--set {key}: {s} is not a table.")
        node[leaf] = _parse_value(text.strip())
    return out


def saved_config(path: str | Path) -> dict[str, Any]:
    """A run folder's ``config.json`` as ``Config.to_dict`` writes it today: keys added to onebit
    since the folder was written read as their defaults, so an older run still compares equal to
    the config that made it. Raises OnebitError (or ValueError for bad JSON) if it is not a config."""
    return json.loads(json.dumps(Config.from_dict(json.loads(Path(path).read_text())).to_dict()))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (None: all defaults), apply overrides, validate."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise OnebitError(f"config file {p} is a folder; give a .toml file.")
        if not p.is_file():
            raise OnebitError(f"config file {p} does not exist.")
        try:
            d = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise OnebitError(f"config file {p} is not valid TOML ({e}).") from None
        d.setdefault("name", p.stem)
    return Config.from_dict(apply_overrides(d, overrides or []))
