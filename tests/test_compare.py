"""onebit compare: a two-method, two-seed grid on a tiny .npz task, with workers, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from onebit.cli import main
from onebit.errors import OnebitError
from onebit.experiments.compare import compare, method_config, plan
from onebit.experiments.config import Config, load_config
from onebit.methods import METHODS, BinaryConnect
from tests.test_cli import _config

GRID = ["fp-s0", "fp-s1", "bc-s0", "bc-s1"]


_MADE: dict[str, Path] = {}


def run_comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``onebit compare`` of fp and bc, seeds 0 and 1, two worker processes, with a record.

    Made once per test session (test_report uses it too); tests copy it before changing it.
    """
    if "tmp" not in _MADE:
        tmp = tmp_path_factory.mktemp("compare")
        cfg = _config(tmp, epochs=2)
        argv = ["compare", str(cfg), "--methods", "fp,bc", "--seeds", "0", "1", "--workers", "2"]
        argv += ["--out", str(tmp / "runs"), "--record", str(tmp / "rec")]
        assert main(argv) == 0
        _MADE["tmp"] = tmp
    return _MADE["tmp"]


@pytest.fixture
def comparison(tmp_path_factory) -> Path:
    return run_comparison(tmp_path_factory)


def _decodes(path: Path) -> None:
    assert path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_grid_tables_plots_and_record(comparison):
    folder = comparison / "runs" / "tiny"
    for key in GRID:
        run = folder / key
        for f in ("config.json", "env.json", "metrics.jsonl", "summary.json", "last.pt"):
            assert (run / f).is_file(), (key, f)
        assert json.loads((run / "env.json").read_text())["threads"] == 1  # train.threads = 1
    doc = json.loads((folder / "results.json").read_text())
    assert [r["method"] for r in doc["table"]] == ["fp", "bc"]
    assert all(r["seeds"] == 2 and r["seed_list"] == [0, 1] for r in doc["table"])
    assert [r["run"] for r in doc["runs"]] == GRID
    fp, bc = doc["table"]
    assert fp["gap_best_val"] is None
    assert bc["gap_best_val"] == pytest.approx(bc["test_best_val_mean"] - fp["test_best_val_mean"])
    assert bc["binary_params"] == 16 * 32 + 32 * 4 and bc["size_bytes"] < fp["size_bytes"]
    assert 50 < bc["test_last_mean"] <= 100
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("method,seeds,test_best_val_mean")
    assert csv_lines[1].startswith("fp,2,") and csv_lines[2].startswith("bc,2,")
    md = (folder / "results.md").read_text()
    assert "| fp " in md and "| bc " in md and "gap to fp (pts)" in md and " ± " in md
    for name in ("accuracy", "weights", "flips"):
        _decodes(folder / "plots" / f"{name}.png")
        assert f"(plots/{name}.png)" in md
    assert not (folder / "plots" / "sensitivity.png").exists()  # no run has a sensitivity.json

    rec = comparison / "rec"
    assert "onebit compare" in (rec / "command.sh").read_text()
    assert "--methods fp,bc" in (rec / "command.sh").read_text()
    assert (rec / "config.toml").read_text() == (comparison / "tiny.toml").read_text()
    env = json.loads((rec / "env.json").read_text())
    assert {"commit", "torch", "machine", "threads"} <= env.keys()
    assert json.loads((rec / "results.json").read_text()) == doc
    for key in GRID:
        assert (rec / "runs" / key / "metrics.jsonl").is_file()
        assert not (rec / "runs" / key / "last.pt").exists()  # records stay light
    for name in ("accuracy", "weights", "flips"):
        _decodes(rec / "plots" / f"{name}.png")
    assert "| bc " in (rec / "README.md").read_text()


def test_kill_and_resume_redoes_only_unfinished_runs(comparison, tmp_path, capsys):
    """Copy the finished grid, make bc-s1 look killed after its first epoch, compare again."""
    out = tmp_path / "runs"
    shutil.copytree(comparison / "runs", out)
    folder = out / "tiny"
    killed = folder / "bc-s1"
    (killed / "summary.json").unlink()
    state = torch.load(killed / "last.pt", weights_only=True)
    state["epoch"], state["history"] = 0, state["history"][:1]
    torch.save(state, killed / "last.pt")
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text(lines[0] + "\n")
    shutil.rmtree(folder / "fp-s1")  # and one run never started
    before = {k: (folder / k / "summary.json").stat().st_mtime_ns for k in ("fp-s0", "bc-s0")}
    cfg = comparison / "tiny.toml"
    argv = ["compare", str(cfg), "--methods", "fp,bc", "--seeds", "0", "1", "--workers", "2"]
    assert main([*argv, "--out", str(out)]) == 0  # another --out spelling of the same grid
    assert "| bc " in capsys.readouterr().out
    for k, t in before.items():
        assert (folder / k / "summary.json").stat().st_mtime_ns == t, f"{k} was redone"
    for k in GRID:
        assert "size_bytes" in json.loads((folder / k / "summary.json").read_text())
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 2
    doc = json.loads((folder / "results.json").read_text())
    assert [r["run"] for r in doc["runs"]] == GRID

    # every run finished: a third call trains nothing
    cfg_obj = load_config(cfg, [f'out="{out}"'])
    res = compare(cfg_obj, ["fp", "bc"], [0, 1], workers=1, plots=False)
    assert res.ran == [] and res.skipped == GRID and not res.failed


def test_a_record_continues_the_grid_on_another_machine(comparison, tmp_path, capsys):
    """A new machine has the committed record but not the run folders: the finished runs are
    restored from the record, only the new seed trains, and the record is rewritten whole."""
    rec = tmp_path / "rec"
    shutil.copytree(comparison / "rec", rec)
    old = {k: json.loads((rec / "runs" / k / "summary.json").read_text()) for k in GRID}
    cfg = comparison / "tiny.toml"
    out = tmp_path / "fresh"  # nothing of the old --out
    argv = ["compare", str(cfg), "--methods", "fp,bc", "--seeds", "0", "1", "2", "--workers", "1"]
    assert main([*argv, "--out", str(out), "--record", str(rec)]) == 0
    capsys.readouterr()
    doc = json.loads((rec / "results.json").read_text())
    assert [r["run"] for r in doc["runs"]] == ["fp-s0", "fp-s1", "fp-s2", "bc-s0", "bc-s1", "bc-s2"]
    assert all(r["seeds"] == 3 for r in doc["table"])
    for k in GRID:  # restored, not retrained: the same summary, and no checkpoint in the folder
        assert json.loads((rec / "runs" / k / "summary.json").read_text()) == old[k]
        assert json.loads((out / "tiny" / k / "summary.json").read_text()) == old[k]
        assert not (out / "tiny" / k / "last.pt").exists()
    assert (out / "tiny" / "bc-s2" / "last.pt").is_file()  # the one that trained here
    assert "--seeds 0 1 2" in (rec / "command.sh").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    # a call naming fewer methods and seeds keeps the record's runs (restored, nothing trains),
    # and the command remakes the whole grid
    out1 = tmp_path / "o1"
    fewer = ["compare", str(cfg), "--methods", "bc", "--seeds", "0", "--workers", "1"]
    assert main([*fewer, "--out", str(out1), "--record", str(rec)]) == 0
    capsys.readouterr()
    assert json.loads((rec / "results.json").read_text()) == doc
    assert not any((out1 / "tiny").glob("*/last.pt"))
    assert "--methods bc,fp --seeds 0 1 2 --workers 1" in (rec / "command.sh").read_text()

    # a record without its run files, another config, and a folder that is no record are each
    # one sentence, before anything trains
    bare = tmp_path / "bare"
    shutil.copytree(rec, bare)
    shutil.rmtree(bare / "runs" / "fp-s1")
    code = main([*argv, "--out", str(tmp_path / "o2"), "--record", str(bare)])
    assert code == 2 and "without their files under runs/ (fp-s1)" in capsys.readouterr().err
    code = main([*argv, "--out", str(tmp_path / "o3"), "--record", str(rec), "--set",
                 "train.lr=0.5"])  # fmt: skip
    assert code == 2 and "holds a run fp-s0 of another config" in capsys.readouterr().err
    assert not (tmp_path / "o3" / "tiny" / "fp-s0").exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    code = main([*argv, "--out", str(tmp_path / "o4"), "--record", str(junk)])
    assert code == 2 and "not a record to continue" in capsys.readouterr().err
    assert json.loads((rec / "results.json").read_text()) == doc  # the record is untouched


def test_a_restored_run_that_a_new_run_starts_from_is_trained_again(tmp_path, monkeypatch):
    """Records hold no checkpoints: fp-s0 is restored for the fp row, but retrained when a
    method still to train starts from its best.pt."""
    from onebit.experiments.records import restore_runs, write_record

    monkeypatch.setitem(METHODS, "fromfp", FromFP)
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path / "runs"}"'])
    res = compare(cfg, ["fp"], [0], workers=1, plots=False)
    rec = tmp_path / "rec"
    write_record(rec, res.rows, res.run_dirs, ["compare", "tiny.toml", "--methods", "fp"])
    shutil.rmtree(tmp_path / "runs")
    assert restore_runs(rec, plan(cfg, ["fp"], [0])) == ["fp-s0"]
    shutil.rmtree(tmp_path / "runs")
    assert restore_runs(rec, plan(cfg, ["fp", "fromfp"], [0])) == []
    res = compare(cfg, ["fp", "fromfp"], [0], workers=1, plots=False, restore=rec)
    assert res.ran == ["fp-s0", "fromfp-s0"] and not res.failed


def test_a_folder_of_another_config_is_an_error(comparison, tmp_path, capsys):
    out = tmp_path / "runs"
    shutil.copytree(comparison / "runs", out)
    argv = ["compare", str(comparison / "tiny.toml"), "--methods", "bc", "--seeds", "0"]
    code = main([*argv, "--out", str(out), "--set", "train.lr=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "holds a run of another config" in err and err.count("\n") == 1


def test_bad_methods_and_seeds(tmp_path):
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path}"'])
    with pytest.raises(OnebitError, match="unknown method 'nope'"):
        plan(cfg, ["fp", "nope"], [0])
    with pytest.raises(OnebitError, match="names a method twice"):
        plan(cfg, ["bc", "bc"], [0])
    with pytest.raises(OnebitError, match="distinct non-negative"):
        plan(cfg, ["bc"], [0, 0])
    with pytest.raises(OnebitError, match="at least 1"):
        compare(cfg, ["bc"], [0], workers=0)


def test_method_options_reset_unless_the_config_names_the_method(tmp_path):
    cfg = load_config(_config(tmp_path), ["method.stochastic=true"])
    jobs = {j.key: j for j in plan(cfg, ["bc", "bwn"], [3])}
    assert jobs["bc-s3"].cfg.method.options == {"stochastic": True}
    assert jobs["bwn-s3"].cfg.method.options == {}
    assert jobs["bwn-s3"].cfg.train.seed == 3 and jobs["bwn-s3"].run_dir.name == "bwn-s3"
    assert jobs["bwn-s3"].cfg.model.options == cfg.model.options


@dataclass(frozen=True)
class FromFP(BinaryConnect):
    """A method that starts from a full-precision run: the pre-training hook."""

    name = "fromfp"
    pretrain = "fp"
    init: str | None = None


def test_pretraining_stage_joins_the_grid(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "fromfp", FromFP)
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path / "runs"}"'])
    jobs = plan(cfg, ["fromfp", "bc"], [0, 1])
    assert [j.key for j in jobs] == ["fp-s0", "fromfp-s0", "fp-s1", "fromfp-s1", "bc-s0", "bc-s1"]
    by = {j.key: j for j in jobs}
    assert by["fromfp-s1"].needs == ("fp-s1",)
    assert by["fromfp-s1"].cfg.method.options["init"] == str(by["fp-s1"].run_dir / "best.pt")
    # fp is shared with the fp row when both are compared
    assert [j.key for j in plan(cfg, ["fp", "fromfp"], [0])] == ["fp-s0", "fromfp-s0"]

    res = compare(cfg, ["fromfp"], [0], workers=1, plots=False)
    assert res.ran == ["fp-s0", "fromfp-s0"] and not res.failed
    saved = json.loads((by["fromfp-s0"].run_dir / "config.json").read_text())
    assert saved["method"]["init"].endswith("fp-s0/best.pt")
    assert (by["fp-s0"].run_dir / "best.pt").is_file()

    monkeypatch.setattr(FromFP, "pretrain", "fromfp")
    with pytest.raises(OnebitError, match="cycle"):
        plan(cfg, ["fromfp"], [0])


def test_a_failed_dependency_fails_its_dependents(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "fromfp", FromFP)
    cfg = load_config(_config(tmp_path), [f'out="{tmp_path / "runs"}"'])
    cfg.data.path = str(tmp_path / "missing.npz")
    res = compare(cfg, ["fromfp"], [0], workers=1, plots=False)
    assert set(res.failed) == {"fp-s0", "fromfp-s0"}
    assert "missing.npz" in res.failed["fp-s0"]
    assert res.failed["fromfp-s0"] == "its pre-training run fp-s0 failed"
    assert res.rows == [] and res.results["table"] == []


def test_grid_shares_the_layer_policy_but_not_other_options():
    cfg = Config.from_dict(
        {"method": {"name": "bc", "keep_first": True, "keep_last": True, "stochastic": True}}
    )
    other = method_config(cfg, "bnn++")
    assert other.method.name == "bnn++"
    assert other.method.options == {"keep_first": True, "keep_last": True}
    assert method_config(cfg, "bc").method.options["stochastic"] is True


_PARENT = """
import multiprocessing as mp, os, sys, time
from onebit.experiments.grid import _init_worker

def child(parent):
    _init_worker(1, 30, parent)
    time.sleep(600)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),))
    p.start()
    print(p.pid, flush=True)
    time.sleep(600)
"""


def test_workers_exit_when_the_compare_process_is_killed(tmp_path):
    """A killed ``compare`` must not leave workers training into its run folders."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # the worker is alive while its parent is
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    stat = Path(f"/proc/{child}/stat")
    for _ in range(300):  # the worker polls every 2 s; give it ample time on a loaded machine
        # gone, or a zombie nobody reaps (the orphan's new parent may not wait for it)
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX":
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")


def test_a_folder_written_before_a_config_key_existed_still_counts_as_finished(
    comparison, tmp_path
):
    """A run folder whose config.json lacks a key onebit added later (as if ``train.tensorboard``
    were new) reads that key as its default: the grid does not call it another config."""
    out = tmp_path / "runs"
    shutil.copytree(comparison / "runs", out)
    for k in GRID:
        path = out / "tiny" / k / "config.json"
        saved = json.loads(path.read_text())
        del saved["train"]["tensorboard"]
        path.write_text(json.dumps(saved))
    cfg_obj = load_config(comparison / "tiny.toml", [f'out="{out}"'])
    res = compare(cfg_obj, ["fp", "bc"], [0, 1], workers=1, plots=False)
    assert res.ran == [] and res.skipped == GRID and not res.failed
