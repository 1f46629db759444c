"""Reliability: no result lost, mixed up or overwritten (issue 19, defects 1-9, one test or more
each; the bad-input suite is tests/test_bad_inputs.py, the file fuzz tests/test_format_fuzz.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import onebit.fileio
from onebit.cli import main
from onebit.errors import OnebitError
from onebit.fileio import TMP_MARK
from tests import packed_models
from tests.conftest import blobs, write_npz
from tests.test_cli import CONFIG

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, epochs: int = 1, npz: str | None = None, extra: str = "") -> Path:
    npz = npz or write_npz(tmp / "tiny.npz", shape=(16,))
    cfg = tmp / "tiny.toml"
    cfg.write_text(CONFIG.format(npz=npz, epochs=epochs, model_extra="") + extra)
    return cfg


def _runs(out: Path, name: str = "tiny") -> list[Path]:
    return sorted(p for p in (out / name).iterdir() if p.is_dir() and not p.name.startswith("."))


def _error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("onebit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (until killed)."""
    code = (
        "import sys, time\n"
        "from onebit.fileio import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


# --- 1. run folders: unique, atomic, never shared ----------------------------------------------


def test_two_trainings_in_the_same_second_get_two_folders(tmp_path, monkeypatch, capsys):
    """With the clock frozen, two trainings of one config still get a folder each, each with its
    own config, metrics and weights (they used to share one one-second folder)."""
    import datetime as real

    frozen = real.datetime(2026, 11, 22, 10, 15, 0, tzinfo=real.UTC)

    class Clock(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen

    import onebit.experiments.runs as runs

    monkeypatch.setattr(runs._dt, "datetime", Clock)
    cfg = _config(tmp_path, epochs=2)
    out = tmp_path / "runs"
    for seed_lr in ("0.01", "0.02"):
        argv = [
            "train",
            str(cfg),
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"train.lr={seed_lr}",
        ]
        assert main(argv) == 0
    runs = _runs(out)
    assert len(runs) == 2
    lrs = []
    for d in runs:
        assert d.name.startswith("bc-s0-20261122-101500-")
        lr = json.loads((d / "config.json").read_text())["train"]["lr"]
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 2
        assert torch.load(d / "last.pt", weights_only=True)["config"]["train"]["lr"] == lr
        lrs.append(lr)
    assert sorted(lrs) == [0.01, 0.02]


def test_a_run_folder_appears_whole_or_not_at_all(tmp_path):
    from onebit.fileio import atomic_folder

    d = atomic_folder(tmp_path / "r", {"config.json": "{}", "env.json": "{}"})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "env.json"]
    with pytest.raises(FileExistsError):  # a taken name is never reused (nor merged into)
        atomic_folder(tmp_path / "r", {"config.json": "{}"})
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary folder left


def test_concurrent_trainings_in_two_processes(tmp_path):
    """Two `onebit train` processes started together: two folders, both complete."""
    cfg = _config(tmp_path, epochs=2)
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "onebit.cli",
        "train",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    runs = _runs(out)
    assert len(runs) == 2
    for d in runs:
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 2
        assert (d / "summary.json").is_file()
    assert not [p for p in (out / "tiny").iterdir() if TMP_MARK in p.name]


def test_a_second_compare_into_the_same_folder_is_refused(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    holder = _hold_lock(out / "tiny")
    try:
        argv = ["compare", str(cfg), "--methods", "bc", "--workers", "1", "--out", str(out)]
        err = _error(capsys, main(argv))
        assert "in use by another onebit process" in err and f"pid {holder.pid}" in err
        assert not (out / "tiny" / "bc-s0").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*argv, "--no-plots"]) == 0  # the lock went with the process that held it


def test_resuming_a_run_another_process_trains_is_refused(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    (run,) = _runs(out)
    capsys.readouterr()
    holder = _hold_lock(run)
    try:
        err = _error(capsys, main(["train", "--resume", str(run), "--no-progress"]))
        assert "in use by another onebit process" in err
    finally:
        holder.kill()
        holder.wait()


# --- 2. pack -o never replaces what is not its own --------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished run (1 epoch) of the tiny config."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = _config(tmp)
    assert main(["train", str(cfg), "--out", str(tmp / "runs"), "--no-progress"]) == 0
    (run,) = _runs(tmp / "runs")
    return run


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_pack_to_a_device_or_a_folder_is_refused(trained, tmp_path, capsys):
    capsys.readouterr()
    err = _error(capsys, main(["pack", str(trained), "-o", "/dev/full"]))
    assert "not a regular file" in err
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # the device node is still there
    folder = tmp_path / "out"
    folder.mkdir()
    err = _error(capsys, main(["pack", str(trained), "-o", str(folder)]))
    assert "is a folder" in err and list(folder.iterdir()) == []  # no temporary file left
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    err = _error(capsys, main(["pack", str(trained), "-o", str(other)]))
    assert "not a .onebit model file" in err and other.read_text() == "mine"
    best = (trained / "best.pt").read_bytes()
    _error(capsys, main(["pack", str(trained), "-o", str(trained / "best.pt")]))
    assert (trained / "best.pt").read_bytes() == best
    # what it may replace: its own model files
    from onebit.runtime.format import is_onebit_file

    assert is_onebit_file(packed_models.mlp().save(tmp_path / "m.onebit"))
    assert not is_onebit_file(other) and not is_onebit_file(trained / "best.pt")


# --- 3. report --readme never empties the table -------------------------------------------------


def test_readme_is_left_alone_without_records(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    readme.write_text(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    for records in (empty, tmp_path / "missing"):
        err = _error(capsys, main(["report", "--readme", str(readme), "--records", str(records)]))
        assert "left as it is" in err
        assert readme.read_text() == text


# --- 4. NaN/Inf in data, divergence, and recipes that cannot train ----------------------------


def test_nan_in_training_data_is_refused_before_a_folder_is_made(tmp_path, capsys):
    tr = blobs(256, (16,), 4, 0)
    x = tr.x.numpy().copy()
    x[7, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=tr.y.numpy())
    cfg = _config(tmp_path, npz=str(tmp_path / "nan.npz"))
    out = tmp_path / "runs"
    err = _error(capsys, main(["train", str(cfg), "--out", str(out), "--no-progress"]))
    assert "NaN or infinite" in err and "example 7" in err
    assert not out.exists()


def test_a_diverging_run_stops_with_a_sentence_and_no_nan_in_metrics(tmp_path, capsys):
    """A rate of 1e30 overflows the weights: the run stops at the first non-finite epoch loss,
    instead of finishing with exit 0 and bare NaN in metrics.jsonl."""
    cfg = _config(tmp_path)
    argv = ["train", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress", "--set"]
    argv += ["method.name=fp", "--set", "train.lr=1e30", "--set", 'train.optimizer="sgd"']
    argv += ["--set", "train.epochs=3"]
    err = _error(capsys, main(argv))
    assert "training diverged in epoch 1" in err and "train.lr" in err
    (run,) = _runs(tmp_path / "runs")
    assert "NaN" not in (run / "metrics.jsonl").read_text()
    assert not (run / "summary.json").exists()


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("train.lr=nan", "train.lr = nan"),
        ("train.lr=-0.01", "train.lr = -0.01"),
        ("train.epochs=0", "train.epochs = 0"),
        ("train.epochs=-2", "train.epochs = -2"),
        ("model.hidden=[0]", "model.hidden = [0]"),
    ],
)
def test_recipes_that_cannot_train_fail_before_a_folder_is_made(tmp_path, capsys, setting, match):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    err = _error(capsys, main(["train", str(cfg), "--out", str(out), "--set", setting]))
    assert match in err and "give" in err
    assert not out.exists()


def test_train_api_checks_the_recipe():
    import onebit
    from onebit.training import TrainConfig
    from tests.conftest import tiny_dataset

    model = onebit.models.build("mlp", (16,), 4, hidden=[8])
    with pytest.raises(OnebitError, match=r"train\.lr = nan"):
        onebit.train(
            model, onebit.methods.BinaryConnect(), tiny_dataset((16,)), TrainConfig(lr=float("nan"))
        )


# --- 5. onebit run: one rule for integer inputs, no NaN, says which rows it scored ------------


def _pixel_run(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A model of uint8 images (``pixels`` in its input spec), and test images with labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 1, 6, 6)).astype(np.uint8)
    y = rng.integers(0, 3, 60)
    return packed_models.mlp((1, 6, 6), 3, pixels=True).save(tmp / "img.onebit"), x, y


def test_run_reads_integer_pixels_alike_and_refuses_nan(tmp_path, capsys):
    model, x, y = _pixel_run(tmp_path)
    capsys.readouterr()
    results = []
    for dtype in (np.uint8, np.int64, np.int32, np.uint16):
        np.savez(tmp_path / "in.npz", x=x.astype(dtype), y=y)
        assert main(["run", str(model), str(tmp_path / "in.npz")]) == 0
        captured = capsys.readouterr()
        results.append((captured.out, captured.err))
    assert all(r == results[0] for r in results), "the same images must give the same answers"
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32) / 255, y=y)  # floats x / 255: the same
    assert main(["run", str(model), str(tmp_path / "float.npz")]) == 0
    assert capsys.readouterr().out == results[0][0]
    np.savez(tmp_path / "raw.npz", x=x.astype(np.float32), y=y)  # floats 0..255: refused
    assert "reads pixels" in _error(capsys, main(["run", str(model), str(tmp_path / "raw.npz")]))
    np.savez(tmp_path / "nan.npz", x=np.full((4, 1, 6, 6), np.nan, np.float32))
    err = _error(capsys, main(["run", str(model), str(tmp_path / "nan.npz")]))
    assert "NaN or infinite" in err
    np.savez(tmp_path / "big.npz", x=np.full((2, 1, 6, 6), 300, np.int64))
    assert "0..255" in _error(capsys, main(["run", str(model), str(tmp_path / "big.npz")]))


def test_run_on_the_training_file_scores_its_test_rows_and_says_so(tmp_path, capsys):
    tr = blobs(300, (16,), 4, 0)
    np.savez(tmp_path / "all.npz", x=tr.x.numpy(), y=tr.y.numpy())  # no x_test: 30 held out
    source = {"config": {"data": {"name": "npz", "path": str(tmp_path / "all.npz")}}}
    model = packed_models.mlp((16,), 4, source=source).save(tmp_path / "m.onebit")
    assert main(["run", str(model), str(tmp_path / "all.npz")]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 30
    assert "on 30 inputs (the 30 held-out test rows of all.npz" in captured.err
    from onebit.data import load_dataset

    test = load_dataset("npz", path=tmp_path / "all.npz", val_size=0).test
    rows = [int(line.split("\t")[1]) for line in captured.out.splitlines()]
    from onebit.runtime import load

    np.testing.assert_array_equal(rows, load(model).predict_raw(test.x.numpy()).argmax(1))
    # another file with only x and y: every row, and the message says so
    np.savez(tmp_path / "other.npz", x=tr.x.numpy()[:50], y=tr.y.numpy()[:50])
    assert main(["run", str(model), str(tmp_path / "other.npz")]) == 0
    assert "all 50 rows of x/y in other.npz" in capsys.readouterr().err


# --- 6. the file format: whole-file checksum, table-driven checks ------------------------------


def _meta_and_tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _resave(path: Path, meta: dict, tensors: dict, *, checksum: bool = True) -> Path:
    """Write ``meta``/``tensors`` as a file whose checksums are consistent with them (what an
    editing tool that knows the format would leave), or without the whole-file checksum."""
    import hashlib

    from safetensors.numpy import save_file

    from onebit.runtime.format import FILE_CHECKSUM, file_digest

    meta = dict(meta)
    meta["checksums"] = json.dumps(
        {
            k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8).tobytes()).hexdigest()
            for k, v in tensors.items()
        }
    )
    meta.pop(FILE_CHECKSUM, None)
    if checksum:
        meta[FILE_CHECKSUM] = file_digest(meta, tensors)
    save_file(tensors, str(path), meta)
    return path


def _packed(tmp: Path) -> Path:
    return packed_models.mlp((1, 6, 6), 4).save(tmp / "m.onebit")


def test_edited_files_are_refused(tmp_path):
    from onebit.runtime import load

    good = _packed(tmp_path)
    meta, tensors = _meta_and_tensors(good)
    assert "file_checksum" in meta
    graph = json.loads(meta["graph"])
    binary = next(op for op in graph if op["attrs"].get("mode") == "binary_weights")

    # a tensor's dtype changed (checksums made to match)
    t = dict(tensors)
    t[binary["tensors"]["alpha"]] = t[binary["tensors"]["alpha"]].astype(np.float64)
    with pytest.raises(OnebitError, match="is float64, not float32"):
        load(_resave(tmp_path / "dtype.onebit", meta, t))
    # an unknown layer mode (it used to fall into the XNOR path)
    g = json.loads(meta["graph"])
    next(op for op in g if op["name"] == binary["name"])["attrs"]["mode"] = "xnorish"
    with pytest.raises(OnebitError, match="mode = 'xnorish' is not one of"):
        load(_resave(tmp_path / "mode.onebit", {**meta, "graph": json.dumps(g)}, tensors))
    # emptied checksums in a file without the whole-file checksum
    emptied = _resave(tmp_path / "e.onebit", meta, tensors, checksum=False)
    m2, t2 = _meta_and_tensors(emptied)
    from safetensors.numpy import save_file

    save_file(t2, str(emptied), {**m2, "checksums": "{}"})
    with pytest.raises(OnebitError, match="has no checksum for tensor"):
        load(emptied)
    # the graph is covered by the checksum: one edited attribute of a saved file fails it
    g = json.loads(meta["graph"])
    g[0]["attrs"]["module"] = "edited"
    save_file(tensors, str(tmp_path / "g.onebit"), {**meta, "graph": json.dumps(g)})
    with pytest.raises(OnebitError, match="fails its checksum"):
        load(tmp_path / "g.onebit")
    # unknown fields: metadata, graph entry, attribute, tensor role
    with pytest.raises(OnebitError, match="unknown metadata field"):
        load(_resave(tmp_path / "u1.onebit", {**meta, "extra": "1"}, tensors))
    for edit, match in (
        (lambda op: op.update(extra=1), "unknown field 'extra'"),
        (lambda op: op["attrs"].update(dilation=[2, 2]), "unknown attribute 'dilation'"),
        (lambda op: op["tensors"].update(gamma=op["tensors"]["alpha"]), "unknown tensor role"),
    ):
        g = json.loads(meta["graph"])
        edit(next(op for op in g if op["name"] == binary["name"]))
        with pytest.raises(OnebitError, match=match):
            load(_resave(tmp_path / "u.onebit", {**meta, "graph": json.dumps(g)}, tensors))
    # a wrong shape of a tensor, checked against the op's attributes
    t = dict(tensors)
    t[binary["tensors"]["beta"]] = t[binary["tensors"]["beta"]][:-1]
    with pytest.raises(OnebitError, match="has shape"):
        load(_resave(tmp_path / "s.onebit", meta, t))


def test_files_of_every_older_version_still_load_to_the_same_outputs(tmp_path):
    """Version 1-3 files (without the whole-file checksum) load, and compute what the model
    packed today computes."""
    from onebit.runtime import load

    good = _packed(tmp_path)
    meta, tensors = _meta_and_tensors(good)
    x = np.random.default_rng(0).standard_normal((7, 1, 6, 6)).astype(np.float32)
    want = load(good)(x)
    for version in ("1", "2", "3"):
        old = _resave(
            tmp_path / f"v{version}.onebit",
            {**meta, "format_version": version},
            tensors,
            checksum=False,
        )
        np.testing.assert_array_equal(load(old)(x), want)


# --- 7. npz splits: class-sorted files, small files --------------------------------------------


def test_a_class_sorted_npz_gets_every_class_in_its_splits(tmp_path):
    from onebit.data import load_dataset

    tr = blobs(400, (16,), 4, 0)
    order = np.argsort(tr.y.numpy(), kind="stable")
    np.savez(tmp_path / "sorted.npz", x=tr.x.numpy()[order], y=tr.y.numpy()[order])
    ds = load_dataset("npz", path=tmp_path / "sorted.npz", val_size=None)
    assert len(ds.test) == 40 and len(ds.val) == 36  # the default: a tenth of the training rows
    for split in (ds.train, ds.val, ds.test):
        assert set(split.y.tolist()) == {0, 1, 2, 3}
    # and a class-sorted file trains to a real accuracy, not 0%
    cfg = _config(tmp_path, epochs=2, npz=str(tmp_path / "sorted.npz"))
    text = cfg.read_text().replace("val_size = 64\n", "")
    cfg.write_text(text)
    assert main(["train", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = _runs(tmp_path / "runs")
    assert json.loads((run / "summary.json").read_text())["test_acc_last"] > 0.5


def test_held_out_rows_are_the_loaders_test_split(tmp_path):
    from onebit.data import load_dataset
    from onebit.data.npz import held_out_rows

    for name, y in (
        ("random", np.random.default_rng(1).integers(0, 3, 200)),
        ("sorted", np.repeat(np.arange(4), 50)),
    ):
        x = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        ds = load_dataset("npz", path=tmp_path / f"{name}.npz", val_size=0)
        rows = held_out_rows(y)
        assert sorted(ds.test.x[:, 0].tolist()) == sorted(x[rows, 0].tolist()), name


# --- 8. DDP: metrics over every rank, one rank prints, a timeout with a sentence ---------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_reduces_metrics_and_one_process_prints(tmp_path):
    cfg = _config(tmp_path, epochs=2)
    sets = [
        "--set",
        "train.batch_size=64",
        "--set",
        'train.optimizer="sgd"',
        "--set",
        "model.bn=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["train", str(cfg), "--no-progress", *sets, "--out"]
    assert main([*cmd, str(tmp_path / "single")]) == 0
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "onebit.cli", *cmd, str(tmp_path / "multi")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (single,) = _runs(tmp_path / "single")
    (multi,) = _runs(tmp_path / "multi")
    a = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(a, b, strict=True):  # over all 192 training examples, not rank 0's half
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1.5 / 192)
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-3)
    logs = r.stdout + r.stderr
    assert logs.count("epoch 1/2") == 1 and logs.count("epoch 2/2") == 1
    assert r.stdout.count("| bc ") == 1  # one table


def test_a_stopped_process_ends_the_others_with_a_sentence(tmp_path):
    """SIGSTOP one of two DDP processes mid-training: the other stops after ONEBIT_DIST_TIMEOUT
    seconds with one sentence (gloo's default would hang it for 30 minutes)."""
    cfg = _config(tmp_path)
    port = _free_port()
    out = tmp_path / "runs"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ONEBIT_DIST_TIMEOUT="3")
        env.update(OMP_NUM_THREADS="1")
        argv = [
            "train",
            str(cfg),
            "--no-progress",
            "--out",
            str(out),
            "--set",
            "train.epochs=100000",
        ]
        argv += ["--set", "train.batch_size=64", "--set", "model.bn=false"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "onebit.cli", *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for _ in range(1200):  # until the main process has written an epoch
            metrics = list(out.glob("tiny/*/metrics.jsonl"))
            if metrics and metrics[0].read_text().strip():
                break
            assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("the DDP run did not start")
        procs[1].send_signal(signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.send_signal(signal.SIGCONT) if p.poll() is None else None
            p.wait()
    assert procs[0].returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("onebit: error: process 0 of 2 waited more than 3 s"), err[-2000:]
    assert "ONEBIT_DIST_TIMEOUT" in last and "Traceback" not in err


def test_a_bad_dist_timeout_is_one_sentence(monkeypatch):
    from onebit.training import dist_timeout

    monkeypatch.setenv("ONEBIT_DIST_TIMEOUT", "soon")
    with pytest.raises(OnebitError, match="ONEBIT_DIST_TIMEOUT = 'soon' is not accepted"):
        dist_timeout()
    monkeypatch.setenv("ONEBIT_DIST_TIMEOUT", "2.5")
    assert dist_timeout() == 2.5


# --- 9. output paths, temporary files, half-made folders, --resume ----------------------------


def _nonempty(t: Path) -> Path:
    (t / "rec").mkdir()
    (t / "rec" / "x").write_text("x")
    return t / "rec"


def _under_file(t: Path) -> Path:
    (t / "f").write_text("x")
    return t / "f" / "rec"


def _a_file(t: Path) -> Path:
    (t / "f").write_text("x")
    return t / "f"


@pytest.mark.parametrize(
    ("option", "make", "match"),
    [
        ("--json", lambda t: t / "missing" / "r.json", "does not exist"),
        ("--json", lambda t: t, "is a folder"),
        ("--record", _nonempty, "already holds files"),
        ("--record", _under_file, "is a file"),
        ("--out", _a_file, "is a file"),
    ],
)
def test_output_paths_are_checked_before_training(tmp_path, capsys, option, make, match):
    cfg = _config(tmp_path)
    target = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = [] if option == "--out" else ["--out", str(tmp_path / "runs")]
    err = _error(capsys, main(["train", str(cfg), "--no-progress", option, str(target), *out]))
    assert match in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing trained, nothing made


def test_read_only_out_is_checked_before_training(tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, m, *a, **k: False if str(p).startswith(str(ro)) else real(p, m, *a, **k),
    )
    err = _error(capsys, main(["train", str(cfg), "--no-progress", "--out", str(ro / "runs")]))
    assert "read-only" in err and not (ro / "runs").exists()


def test_a_disk_full_after_training_says_where_the_results_are(tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path)
    target = tmp_path / "rows.json"
    real_open = open

    def full(path, *a, **k):
        if Path(path).name.startswith(".rows") and TMP_MARK in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *a, **k)

    monkeypatch.setattr(onebit.fileio, "open", full, raising=False)
    code = main(
        ["train", str(cfg), "--no-progress", "--out", str(tmp_path / "runs"), "--json", str(target)]
    )
    captured = capsys.readouterr()
    (run,) = _runs(tmp_path / "runs")
    assert code == 2 and "| bc " in captured.out  # the table was printed
    assert captured.err.count("\n") == 1 and "No space left on device" in captured.err
    assert f"the results are kept in {run}" in captured.err
    assert (run / "summary.json").is_file() and not target.exists()
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_resume_cleans_what_a_kill_left_and_keeps_env_json(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=2)
    out = tmp_path / "runs"
    assert (
        main(["train", str(cfg), "--out", str(out), "--no-progress", "--set", "train.epochs=1"])
        == 0
    )
    (run,) = _runs(out)
    # what a SIGKILL mid-write leaves: temporary files of a process that is gone
    dead = 2**22 + 12345  # above pid_max's default: no such process
    (run / f".last{TMP_MARK}{dead}-0badf00d.pt").write_bytes(b"half a checkpoint")
    (run / f".metrics{TMP_MARK}0badf00d.jsonl").write_text("old-style name")
    (out / "tiny" / f".bc-s0-x{TMP_MARK}{dead}-0badf00d").mkdir()
    (out / "tiny" / f".bc-s0-x{TMP_MARK}{dead}-0badf00d" / "config.json").write_text("{}")
    # the config was meant to go on for 2 epochs: resume it with the longer recipe
    saved = json.loads((run / "config.json").read_text())
    env_before = (run / "env.json").stat().st_ino
    # a failed resume (a damaged checkpoint) leaves env.json as it was
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(b"junk")
    capsys.readouterr()
    err = _error(capsys, main(["train", "--resume", str(run), "--no-progress"]))
    assert "is not a onebit checkpoint" in err
    assert (run / "env.json").stat().st_ino == env_before
    (run / "last.pt").write_bytes(good)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not [p for p in run.iterdir() if TMP_MARK in p.name]
    assert json.loads((run / "config.json").read_text()) == saved
    # a new training in the same runs folder clears the dead process's half-made folder
    assert (
        main(["train", str(cfg), "--out", str(out), "--no-progress", "--set", "train.epochs=1"])
        == 0
    )
    assert not [p for p in (out / "tiny").iterdir() if TMP_MARK in p.name]


@pytest.mark.parametrize(
    "flag",
    [
        ["--seeds", "3"],
        ["--methods", "fp"],
        ["--out", "elsewhere"],
        ["--twin"],
        ["--set", "train.lr=1"],
    ],
)
def test_resume_refuses_what_it_would_ignore(trained, capsys, flag):
    capsys.readouterr()
    err = _error(capsys, main(["train", "--resume", str(trained), "--no-progress", *flag]))
    assert "--resume continues a run with its own config" in err and flag[0] in err


def test_resume_takes_data_root(trained, tmp_path, capsys):
    assert (
        main(["train", "--resume", str(trained), "--no-progress", "--data-root", str(tmp_path)])
        == 0
    )


def test_report_counts_finished_runs_only(trained, tmp_path, capsys):
    import shutil

    folder = tmp_path / "grid"
    shutil.copytree(trained, folder / "bc-s0")
    half = folder / "bc-s1"  # a run that failed after its folder was made
    shutil.copytree(trained, half)
    summary = json.loads((half / "summary.json").read_text())
    (half / "summary.json").write_text(
        json.dumps({k: summary[k] for k in ("best_epoch", "test_acc_last")})
    )
    making = folder / f".bc-s2{TMP_MARK}1-00000000"  # a folder still being made
    shutil.copytree(trained, making)
    capsys.readouterr()
    assert main(["report", str(folder), "--no-plots"]) == 0
    doc = json.loads((folder / "results.json").read_text())
    assert [r["seeds"] for r in doc["table"]] == [1]
    assert [r["run"] for r in doc["runs"]] == ["bc-s0"]


def test_compare_writes_no_record_of_a_partial_grid(tmp_path, capsys):
    cfg = _config(tmp_path)
    text = cfg.read_text().replace(str(tmp_path / "tiny.npz"), str(tmp_path / "missing.npz"))
    cfg.write_text(text)
    argv = ["compare", str(cfg), "--methods", "bc", "--workers", "1", "--no-plots"]
    argv += ["--out", str(tmp_path / "runs"), "--record", str(tmp_path / "rec")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "missing.npz" in err and "is written once every run finished" in err
    assert not (tmp_path / "rec").exists()


def test_lock_is_reentrant_and_released(tmp_path):
    from onebit.fileio import folder_lock

    with folder_lock(tmp_path / "f"), folder_lock(tmp_path / "f"):
        pass
    with folder_lock(tmp_path / "f"):
        pass


def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path):
    """SIGKILL a training wherever it is (mid-epoch, mid-checkpoint-write) and resume it: the
    weights and metrics equal those of a run never interrupted."""
    cfg = _config(tmp_path, epochs=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "onebit.cli", "train", str(cfg), "--no-progress", "--out"]
    subprocess.run([*cmd, str(tmp_path / "whole")], env=env, check=True, capture_output=True)
    p = subprocess.Popen([*cmd, str(tmp_path / "killed")], env=env, stderr=subprocess.DEVNULL)
    for _ in range(3000):
        metrics = list((tmp_path / "killed").glob("tiny/*/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    (run,) = _runs(tmp_path / "killed")
    r = subprocess.run(
        [*cmd[:4], "--resume", str(run), "--no-progress"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whole,) = _runs(tmp_path / "whole")
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert not [f for f in run.iterdir() if TMP_MARK in f.name]
