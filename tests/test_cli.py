"""The command line: a run end to end on a generated .npz, resume, eval, and the error sentences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from onebit.cli import main
from tests.conftest import write_npz

CONFIG = """
[data]
name = "npz"
path = "{npz}"
val_size = 64

[model]
name = "mlp"
hidden = [32]
{model_extra}

[method]
name = "bc"

[train]
epochs = {epochs}
batch_size = 32
lr = 0.01
threads = 1
"""


def _config(tmp_path: Path, epochs: int = 2, model_extra: str = "") -> Path:
    npz = write_npz(tmp_path / "tiny.npz", shape=(16,))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.format(npz=npz, epochs=epochs, model_extra=model_extra))
    return cfg


def _only_run(out: Path) -> Path:
    (run,) = [p for p in (out / "tiny").iterdir() if p.name.startswith("bc-")]
    return run


def test_train_twin_eval_and_record(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    code = main(
        [
            "train",
            str(cfg),
            "--twin",
            "--out",
            str(out),
            "--no-progress",
            "--record",
            str(tmp_path / "rec"),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "| bc " in table and "| fp " in table and "binary params" in table
    run = _only_run(out)
    for f in ("config.json", "env.json", "metrics.jsonl", "summary.json", "best.pt", "last.pt"):
        assert (run / f).exists(), f
    summary = json.loads((run / "summary.json").read_text())
    assert summary["binary_params"] == 16 * 32 + 32 * 4 and summary["test_acc_last"] > 0.5
    assert main(["eval", str(run)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_acc"] == summary["test_acc_best_val"]
    rec = tmp_path / "rec"
    assert "onebit train" in (rec / "command.sh").read_text()
    assert len(json.loads((rec / "results.json").read_text())) == 2
    assert "| bc " in (rec / "README.md").read_text()


def test_resume_continues_a_run(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=2)
    out = tmp_path / "runs"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    run = _only_run(out)
    # pretend the run was meant to go on: resume finds it finished and re-reports it
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("onebit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_error_sentences(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert "does not exist" in _error(capsys, ["train", str(tmp_path / "nope.toml")])
    assert "unknown key train.lrr" in _error(capsys, ["train", str(cfg), "--set", "train.lrr=1"])
    assert "must be int" in _error(capsys, ["train", str(cfg), "--set", "train.epochs=x"])
    assert "give a config file" in _error(capsys, ["train"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    assert "is not a onebit checkpoint" in _error(capsys, ["eval", str(junk)])
    assert "not a onebit run folder" in _error(capsys, ["train", "--resume", str(tmp_path)])
    assert "holds no best.pt" in _error(capsys, ["eval", str(tmp_path)])


def test_checkpoint_of_another_model(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    run = _only_run(out)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["model"]["hidden"] = [64]  # the weights no longer fit the configured model
    torch.save(ckpt, tmp_path / "other.pt")
    err = _error(capsys, ["eval", str(tmp_path / "other.pt")])
    assert "holds weights of a different model" in err
    assert "weight" in err and "size mismatch" in err


def test_help_lists_methods_and_models():
    out = subprocess.run(
        [sys.executable, "-m", "onebit.cli", "train", "--help"], capture_output=True, text=True
    ).stdout
    assert "BinaryConnect" in out and "resnet20" in out and "--resume" in out


def test_torchrun_two_processes_agree_with_one(tmp_path):
    """DDP with gloo on 2 processes equals one process.

    No BatchNorm (per-shard statistics would differ by design) and SGD (Adam divides by the root of
    its second moment, which magnifies last-bit differences of the all-reduce on tiny gradients).
    """
    cfg = _config(tmp_path, epochs=2, model_extra="bn = false")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    sets = [
        "--set",
        "train.batch_size=64",
        "--set",
        'train.optimizer="sgd"',
        "--set",
        "train.lr=0.1",
    ]
    cmd = ["train", str(cfg), "--no-progress", *sets, "--out"]
    subprocess.run(
        [sys.executable, "-m", "onebit.cli", *cmd, str(single)],
        check=True,
        env=env,
        capture_output=True,
    )
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "onebit.cli", *cmd, str(multi)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(_only_run(single) / "last.pt", weights_only=True)
    b = torch.load(_only_run(multi) / "last.pt", weights_only=True)
    assert json.loads((_only_run(multi) / "env.json").read_text())["world_size"] == 2
    for k, va in a["model"].items():
        assert torch.allclose(va, b["model"][k], atol=1e-5), (k, (va - b["model"][k]).abs().max())
    assert a["history"][-1]["test_acc"] == b["history"][-1]["test_acc"]


def test_pack_run_bench(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    run = _only_run(out)
    capsys.readouterr()
    model_file = tmp_path / "m.onebit"
    assert main(["pack", str(run), "-o", str(model_file)]) == 0
    assert "smaller" in capsys.readouterr().out and model_file.is_file()
    assert main(["eval", str(run)]) == 0
    acc = json.loads(capsys.readouterr().out)["test_acc"]
    # the tiny .npz carries x_test/y_test: the packed model's accuracy there equals eval's
    assert main(["run", str(model_file), str(tmp_path / "tiny.npz")]) == 0
    captured = capsys.readouterr()
    assert f"accuracy {acc:.4f} on 64 inputs" in captured.err
    assert len(captured.out.splitlines()) == 64
    bench_json = tmp_path / "bench.json"
    argv = [
        "bench",
        str(model_file),
        "--threads",
        "1",
        "--batches",
        "1",
        "--repeats",
        "3",
        "--out",
        str(bench_json),
    ]
    assert main(argv) == 0
    res = json.loads(bench_json.read_text())
    assert [(r["threads"], r["batch"]) for r in res["results"]] == [(1, 1)]
    assert {r["kind"] for r in res["layers_batch1"]} >= {"linear/binary_weights"}
    out = capsys.readouterr().out  # ratios against each baseline measured in the run
    assert "vs torch_fp32" in out and "packed ms" in out


def test_run_errors(tmp_path, capsys):
    (tmp_path / "x.onebit").write_bytes(b"nope")
    assert "is not a onebit model file" in _error(
        capsys, ["run", str(tmp_path / "x.onebit"), "y.npz"]
    )
    assert "is not a onebit checkpoint" in _error(capsys, ["pack", str(tmp_path / "x.onebit")])


def test_run_scores_a_language_model_per_position(tmp_path, capsys):
    """A packed token model's (N, T, vocabulary) logits: one prediction per position, scored
    against labels of shape (N, T)."""
    import numpy as np
    from torch import nn

    import onebit
    from onebit.methods import BinaryConnect

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12))
    ids = torch.randint(0, 12, (6, 5))
    onebit.binarize_(model, BinaryConnect(), example_inputs=(ids[:2],))
    model.eval()
    onebit.pack(model, (ids[:2],)).save(tmp_path / "lm.onebit")
    with torch.no_grad():
        target = model(ids).argmax(-1).numpy()
    target[0, 0] = (target[0, 0] + 1) % 12  # one position of 30 wrong
    np.savez(tmp_path / "tok.npz", x=ids.numpy(), y=target)
    assert main(["run", str(tmp_path / "lm.onebit"), str(tmp_path / "tok.npz")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split("\t")[1] == " ".join(map(str, target[1]))
    assert f"accuracy {29 / 30:.4f} on 6 inputs" in err
    np.savez(tmp_path / "bad.npz", x=ids.numpy(), y=target[:, :3])
    msg = _error(capsys, ["run", str(tmp_path / "lm.onebit"), str(tmp_path / "bad.npz")])
    assert "labels hold 18 values" in msg


def test_train_prints_the_binarize_report(tmp_path, caplog):
    """`onebit train` logs (prints) what binarize_ did to every layer, and why."""
    import logging

    cfg = _config(tmp_path, epochs=1)
    with caplog.at_level(logging.INFO, logger="onebit"):
        assert main(["train", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    err = caplog.text
    assert "BinaryConnect: 2 of 2 layers binary" in err
    assert "layer" in err and "why" in err and "binarized" in err
