"""Config files: validation with clear errors, overrides, round trips."""

from __future__ import annotations

import pytest

from onebit.errors import OnebitError
from onebit.experiments.config import Config, apply_overrides, build_method, load_config
from onebit.methods import LAB, METHODS, BinaryConnect, IterativeBinarization


def test_defaults_round_trip():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_file_and_overrides(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[model]\nname = "mlp"\nhidden = [64]\n[method]\nname = "bc"\n[train]\nlr = 1\n')
    cfg = load_config(p, ["train.epochs=3", "method.stochastic=true", "model.hidden=[8, 8]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.options == {"hidden": [8, 8]}
    assert build_method(cfg.method) == BinaryConnect(stochastic=True)
    assert cfg.name == "x"
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_bare_strings_in_overrides():
    d = apply_overrides({}, ["method.name=bwn", 'data.name="mnist"', "train.milestones=[1,2]"])
    assert d == {
        "method": {"name": "bwn"},
        "data": {"name": "mnist"},
        "train": {"milestones": [1, 2]},
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", r"unknown key train\.lrr; accepted: .*batch_size.*lr"),
        ("train.epochs=ten", r"train\.epochs must be int, got 'ten'"),
        ("train.epochs=true", r"train\.epochs must be int"),
        ("train.optimizer=rmsprop", r"choose one of adam, sgd"),
        ("model.depth=3", r"unknown key model\.depth for model 'mlp'; accepted: name, hidden"),
        ("model.hidden=3", r"model\.hidden must be a list"),
        ("method.name=nope", r"unknown method 'nope'; accepted: fp, bc"),
        ("method.stochastic=1", r"method\.stochastic must be bool"),
        ("method.scale=channel", r"unknown key method\.scale for method 'bc'; accepted: name, "),
        ("bogus=1", r"unknown config key 'bogus'"),
        ("nodot", r"--set expects section\.key=value"),
    ],
)
def test_bad_values_are_one_clear_sentence(override, message):
    with pytest.raises(OnebitError, match=message) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(OnebitError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = ")
    with pytest.raises(OnebitError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_round_trips_through_its_config(name):
    method = METHODS[name]()
    d = method.to_dict()
    cfg = Config.from_dict({"method": d})
    assert build_method(cfg.method) == method


def test_none_spells_an_unset_option():
    """TOML has no null: "none" unsets an option that may be unset (bc without its clip is the
    iterative baseline's rule), and nowhere else."""
    cfg = load_config(None, ['method.clip="none"', 'train.lr_final="none"'])
    assert build_method(cfg.method) == BinaryConnect(clip=None)
    assert cfg.train.lr_final is None
    with pytest.raises(OnebitError, match=r"train\.epochs must be int, got 'none'"):
        load_config(None, ['train.epochs="none"'])


def test_presets_are_registry_rows_of_one_class():
    rows = {n: METHODS[n] for n in ("iterative", "iterative-reverse", "iterative-all")}
    assert {r.cls for r in rows.values()} == {IterativeBinarization}
    assert METHODS["iterative-reverse"]().order == "reverse"
    assert METHODS["iterative-all"](order="reverse").epochs_per_layer == 0
    assert METHODS["lab2"]() == LAB(binary_acts=True)
