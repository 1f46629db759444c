"""Layer schedules, iterative training (Lan 2021) and sensitivity pre-training, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onebit import binarize_
from onebit.cli import main
from onebit.errors import OnebitError
from onebit.experiments.compare import compare, plan
from onebit.experiments.config import Config, load_config
from onebit.experiments.sensitivity import run_stage, stage_config, stage_dir
from onebit.methods import METHODS, IterativeBinarization
from onebit.models import build
from onebit.schedules import (
    Ranking,
    apply,
    auto_epochs_per_layer,
    binary_count,
    binary_mask,
    is_partial,
    read_ranking,
    resolve_order,
    schedulable_layers,
    write_ranking,
)
from onebit.training import History, TrainConfig, train
from tests.conftest import tiny_dataset, write_npz

NAMES = ["a", "b", "c", "d"]


# --- pure schedule functions -------------------------------------------------------------------


@pytest.mark.parametrize("epl", [1, 2, 3])
def test_mask_follows_the_paper_rule(epl):
    """Layer order[e // E] becomes binary before epoch e and stays binary."""
    order = ["c", "a", "d", "b"]
    epochs = len(order) * epl
    seen: set[str] = set()
    for e in range(epochs):
        on = {n for n, b in binary_mask(NAMES, order, e, epl).items() if b}
        assert on == set(order[: e // epl + 1])
        assert seen <= on  # once binary, always binary
        seen = on
    assert binary_mask(NAMES, order, 0, epl) == {"a": False, "b": False, "c": True, "d": False}
    # the last E epochs train the fully binary net, and only they do
    full = [e for e in range(epochs) if all(binary_mask(NAMES, order, e, epl).values())]
    assert full == list(range(epochs - epl, epochs))


def test_fractional_zero_and_subset_schedules():
    # 0.5 epochs per layer: layer k switches before epoch ceil(k / 2), two per boundary
    assert [binary_count(4, e, 0.5) for e in range(3)] == [1, 3, 4]
    # 0.9 (10 epochs, 11 layers): exact at the boundaries despite float rounding
    assert [binary_count(11, e, 0.9) for e in range(10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert binary_count(4, 0, 0) == 4  # all binary from the start
    mask = binary_mask(NAMES, ["b"], 5, 1)  # unlisted layers never become binary
    assert mask == {"a": False, "b": True, "c": False, "d": False}


@pytest.mark.parametrize(("n", "epochs"), [(3, 9), (3, 10), (4, 4), (11, 10), (5, 2), (1, 3)])
def test_auto_epochs_per_layer_ends_fully_binary(n, epochs):
    epl = auto_epochs_per_layer(n, epochs)
    assert binary_count(n, epochs - 1, epl) == n
    assert binary_count(n, 0, epl) >= 1
    if epochs >= n:
        assert epl == epochs // n  # the paper's integer rule


def test_orders():
    assert resolve_order("forward", NAMES) == NAMES
    assert resolve_order("reverse", NAMES) == NAMES[::-1]
    r0 = resolve_order("random", NAMES, seed=0)
    assert sorted(r0) == NAMES and r0 == resolve_order("random", NAMES, seed=0)
    assert any(resolve_order("random", NAMES, seed=s) != r0 for s in range(1, 5))
    assert resolve_order(["d", "a"], NAMES) == ["d", "a"]
    for bad in (["a", "x"], ["a", "a"]):
        with pytest.raises(OnebitError):
            resolve_order(bad, NAMES)
    with pytest.raises(OnebitError, match="accepted: forward"):
        resolve_order("sideways", NAMES)
    with pytest.raises(OnebitError, match="onebit sensitivity"):
        resolve_order("sensitivity-ascending", NAMES)


def test_ranking_file_round_trips_and_drives_the_order(tmp_path):
    r = Ranking(
        (("a", 0.9), ("b", 0.5), ("c", 0.95), ("d", 0.5)), 2, {"per_layer": {"a": {"x": 1}}}
    )
    path = write_ranking(tmp_path / "sensitivity.json", r)
    back = read_ranking(path)
    assert back.layers == r.layers and back.epochs_per_layer == 2
    doc = json.loads(path.read_text())
    assert doc["layers"][0] == {"name": "a", "val_acc": 0.9, "x": 1}
    # ascending sensitivity = highest probe accuracy first; ties keep the network order
    assert resolve_order("sensitivity-ascending", NAMES, ranking=path) == ["c", "a", "b", "d"]
    assert resolve_order("sensitivity-descending", NAMES, ranking=path) == ["b", "d", "a", "c"]
    with pytest.raises(OnebitError, match="another model"):
        resolve_order("sensitivity-ascending", ["a", "b"], ranking=path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(OnebitError, match="not a sensitivity ranking"):
        read_ranking(tmp_path / "bad.json")


# --- the iterative method ----------------------------------------------------------------------


def _mlp(method, hidden=(32, 32)):
    torch.manual_seed(0)
    model = build("mlp", (16,), 4, hidden=list(hidden), bn_logits=True)
    binarize_(model, method)
    return model


def test_iterative_sets_the_flags_and_needs_enough_epochs():
    method = IterativeBinarization(order="reverse")
    model = _mlp(method)
    names = schedulable_layers(model)
    assert len(names) == 3  # every Linear, first and last included
    flags = []
    for e in range(6):
        method.on_epoch_start(model, e, 6)
        flags.append([m.binary for _, m in model.named_modules() if hasattr(m, "binary")])
    assert flags == [[False, False, True]] * 2 + [[False, True, True]] * 2 + [[True] * 3] * 2
    assert not is_partial(model.modules())
    with pytest.raises(OnebitError, match="never be fully binary"):
        IterativeBinarization(epochs_per_layer=3).on_epoch_start(model, 0, 6)
    with pytest.raises(OnebitError, match=r"method\.order"):
        IterativeBinarization(order="upwards")
    assert METHODS["iterative-all"]().pretrain is None
    assert METHODS["iterative-sens-asc"]().pretrain == "sensitivity"
    assert METHODS["iterative-sens-asc"](ranking="r.json").pretrain is None


def test_apply_rejects_unknown_layers():
    model = _mlp(IterativeBinarization())
    assert apply(model, {"1": True}) == ["1"]
    with pytest.raises(OnebitError):
        apply(model, {"nope": True})


def test_best_epoch_is_never_a_partial_one():
    h = History(
        [
            {"epoch": 0, "val_acc": 0.99, "test_acc": 0.99, "partial": True, "seconds": 1},
            {"epoch": 1, "val_acc": 0.80, "test_acc": 0.81, "seconds": 1},
            {"epoch": 2, "val_acc": 0.85, "test_acc": 0.84, "seconds": 1},
        ]
    )
    assert h.best["epoch"] == 2
    assert History([{"epoch": 0, "val_acc": 0.5, "partial": True}]).best["epoch"] == 0


def test_iterative_trains_to_a_fully_binary_net():
    data = tiny_dataset(shape=(16,), classes=4, n_train=128)
    method = IterativeBinarization()
    model = _mlp(method)
    h = train(model, method, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2))
    assert [bool(r.get("partial")) for r in h.epochs] == [True, True, False]
    assert h.best["epoch"] == 2 and not is_partial(model.modules())
    w = next(m for m in model.modules() if hasattr(m, "binary")).forward_weight(hard=True)
    assert set(w.unique().tolist()) <= {-1.0, 1.0}


# --- sensitivity pre-training, CLI and compare -------------------------------------------------

CONFIG = """
name = "tiny"
[data]
name = "npz"
path = "{npz}"
val_size = 64

[model]
name = "mlp"
hidden = [32, 32]
bn_logits = true

[method]
name = "iterative"

[train]
epochs = 3
batch_size = 32
lr = 0.01
threads = 1
"""


def _config(tmp_path: Path) -> Path:
    npz = write_npz(tmp_path / "tiny.npz", shape=(16,))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.format(npz=npz))
    return cfg


def test_sensitivity_stage_writes_a_ranking_and_is_reused(tmp_path):
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path / "runs"}"'])
    sc = stage_config(cfg)
    d = stage_dir(sc)
    path = run_stage(sc, d)
    r = read_ranking(path)
    assert r.names == ["1", "4", "7"] and r.epochs_per_layer == 1  # 3 epochs / 3 layers
    assert all(0 <= a <= 1 for _, a in r.layers)
    for name in r.names:  # each probe trained only its own layer binary
        probe = json.loads((d / f"probe-{name}" / "config.json").read_text())
        assert probe["method"]["order"] == [name] and probe["train"]["epochs"] == 1
    assert (d / "sensitivity.png").is_file()
    stamp = path.stat().st_mtime_ns
    assert run_stage(sc, d) == path and path.stat().st_mtime_ns == stamp  # done: not redone
    other = stage_config(load_config(_config(tmp_path), ["train.lr=0.1", f'out="{cfg.out}"']))
    with pytest.raises(OnebitError, match="another config"):
        run_stage(other, d)


def test_cli_sensitivity_then_guided_training(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    argv = ["sensitivity", str(cfg), "--out", str(out), "--workers", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "ascending (least sensitive first)" in text
    ranking = out / "tiny" / "sensitivity-s0" / "sensitivity.json"
    order = read_ranking(ranking).order(ascending=False)
    # the ranking drives the order: the most sensitive layer is binary from the first epoch
    c = Config.from_dict(
        {
            **load_config(cfg).to_dict(),
            "method": {"name": "iterative-sens-desc", "ranking": str(ranking)},
        }
    )
    from onebit.experiments.runs import build_model, load_data

    data = load_data(c)
    model, method = build_model(c, data.input_shape, data.num_classes)
    method.on_epoch_start(model, 0, c.train.epochs)
    assert [n for n, m in model.named_modules() if getattr(m, "binary", False)] == [order[0]]


def test_compare_runs_the_sensitivity_stage_once_for_both_guided_orders(tmp_path):
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path / "runs"}"'])
    jobs = plan(cfg, ["iterative-sens-asc", "iterative-sens-desc"], [0])
    assert [j.key for j in jobs] == ["sensitivity-s0", "iterative-sens-asc-s0",
                                     "iterative-sens-desc-s0"]  # fmt: skip
    assert jobs[0].stage.name == "sensitivity" and jobs[1].needs == ("sensitivity-s0",)
    ranking = str(jobs[0].run_dir / "sensitivity.json")
    assert jobs[1].cfg.method.options["ranking"] == ranking == jobs[2].cfg.method.options["ranking"]
    res = compare(cfg, ["iterative-sens-asc", "iterative-sens-desc"], [0], workers=1)
    assert not res.failed and [r["method"] for r in res.rows] == [
        "iterative-sens-asc",
        "iterative-sens-desc",
    ]
    run = res.folder / "iterative-sens-asc-s0"
    assert (run / "sensitivity.json").read_text() == Path(ranking).read_text()  # provenance
    assert (res.folder / "plots" / "sensitivity.png").is_file()
    again = compare(cfg, ["iterative-sens-asc", "iterative-sens-desc"], [0], workers=1)
    assert again.ran == [] and "sensitivity-s0" in again.skipped
