"""Character-level text: vocabulary, 80/10/10 split by position, shifted targets, and a tiny
language-model run end to end (never the real corpus, never the network)."""

from __future__ import annotations

import gzip
import json
import math
import random

import pytest
import torch

from onebit.cli import main
from onebit.data import batches, char_dataset, find_root, load_dataset, subsample
from onebit.errors import OnebitError
from onebit.experiments.config import Config
from onebit.experiments.runs import build_model, run
from onebit.layers import BinaryLinear


def corpus(n: int = 4000, seed: int = 0) -> str:
    """A learnable toy text: words from a small lexicon, C-like punctuation."""
    rng = random.Random(seed)
    words = ["int", "static", "return", "if", "(x)", "{", "}", ";", "\n", "\t"]
    out: list[str] = []
    while sum(map(len, out)) < n:
        out.append(rng.choice(words) + " ")
    return "".join(out)[:n]


def write_corpus(root, text: str | None = None) -> str:
    folder = root / "linux-kernel"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "input.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write(text if text is not None else corpus())
    return str(root)


def test_vocabulary_split_by_position_and_shifted_targets():
    text = "".join(chr(97 + (i * 7) % 13) for i in range(1000)) + "é"  # a non-ASCII char too
    data = char_dataset(text, seq_len=10)
    vocab = sorted(set(text))
    assert data.classes == tuple(vocab) and data.num_classes == len(vocab) == 14
    ids = [vocab.index(c) for c in text]
    n = len(text)  # 1001: cuts at 800 and 900
    assert (len(data.train), len(data.val), len(data.test)) == (79, 9, 10)
    for split, lo in ((data.train, 0), (data.val, 800), (data.test, 900)):
        assert split.x.dtype == split.y.dtype == torch.int64
        assert split.x.shape == split.y.shape == (len(split), 10)
        for k in (0, len(split) - 1):  # consecutive, non-overlapping sequences from the cut on
            start = lo + 10 * k
            assert split.x[k].tolist() == ids[start : start + 10]
            assert split.y[k].tolist() == ids[start + 1 : start + 11]  # the next character
    assert data.test.y[-1, -1].item() == ids[n - 1]  # the last character is a target
    assert data.input_shape == (10,)


def test_too_short_text_raises_one_sentence():
    with pytest.raises(OnebitError, match="too few"):
        char_dataset("abc" * 10, seq_len=100)


def test_load_from_data_root_and_from_a_plain_text_file(tmp_path):
    root = write_corpus(tmp_path)
    data = load_dataset("linux-kernel", root, seq_len=20)
    assert data.name == "linux-kernel" and "input.txt.gz" in data.source
    assert find_root("linux-kernel", root) == tmp_path / "linux-kernel"
    (tmp_path / "plain.txt").write_text(corpus())
    same = load_dataset("text", path=tmp_path / "plain.txt", seq_len=20)
    assert torch.equal(same.train.x, data.train.x) and torch.equal(same.test.y, data.test.y)


def test_missing_corpus_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("onebit.data.find.SYSTEM_DATA_DIRS", ())
    with pytest.raises(OnebitError, match=r"linux-kernel/input\.txt\.gz") as e:
        load_dataset("linux-kernel", tmp_path / "nowhere")
    assert "\n" not in str(e.value)


def test_batches_leave_token_ids_alone():
    data = char_dataset(corpus(), seq_len=16)
    x, y = next(batches(data.train, 5, mean=(0.5,), std=(2.0,), shuffle=True))
    assert x.dtype == torch.int64 and x.shape == (5, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_subsample_spans_the_split_and_keeps_test():
    data = char_dataset(corpus(), seq_len=10)
    train, test = data.train, data.test
    n = len(train)
    sub = subsample(data, max_train=7, max_val=3)
    assert (len(sub.train), len(sub.val)) == (7, 3) and sub.test is test
    picked = [k * n // 7 for k in range(7)]  # evenly spaced, from the start to near the end
    assert picked[-1] >= n - n // 7 - 1
    assert torch.equal(sub.train.x, train.x[picked]) and torch.equal(sub.train.y, train.y[picked])
    assert subsample(char_dataset(corpus(), seq_len=10), max_train=10**6).train.x.shape[0] == n
    with pytest.raises(OnebitError, match="max_train"):
        subsample(char_dataset(corpus(), seq_len=10), max_train=0)


def _cfg(root, method: str) -> Config:
    return Config.from_dict(
        {
            "data": {"name": "linux-kernel", "root": root, "seq_len": 12, "max_val": 8},
            "model": {"name": "lstm_lm", "hidden": 16},
            "method": {"name": method},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "grad_clip": 5.0, "threads": 1},
        }
    )


@pytest.mark.parametrize("method", ["fp", "bc"])
def test_tiny_language_model_run_end_to_end(tmp_path, method):
    cfg = _cfg(write_corpus(tmp_path), method)
    result = run(cfg, seed=0, run_dir=tmp_path / "run")
    epochs = result.history.epochs
    assert len(epochs) == 2
    for r in epochs:
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0  # per character
        assert r["test_bpc"] == pytest.approx(r["test_loss"] / math.log(2))
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
    vocab = len(set(corpus()))
    assert epochs[-1]["test_bpc"] < math.log2(vocab)  # better than a uniform guess
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = min(epochs, key=lambda r: r["val_bpc"])  # language models select on validation bpc
    assert summary["best_epoch"] == best["epoch"]
    assert summary["test_bpc_best_val"] == pytest.approx(best["test_bpc"])
    assert summary["test_bpc_last"] == pytest.approx(epochs[-1]["test_bpc"])
    model, _ = build_model(cfg, (12,), vocab)
    binary = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    if method == "bc":
        assert len(binary) == 8 and not isinstance(model.out, BinaryLinear)
        assert result.size["binary_params"] == 4 * 16 * vocab + 4 * 16 * 16
    else:
        assert not binary and result.size["binary_params"] == 0


def test_onebit_train_twin_reports_bits_per_character(tmp_path, capsys):
    root = write_corpus(tmp_path)
    cfg = tmp_path / "lm.toml"
    cfg.write_text(
        f'[data]\nname = "linux-kernel"\nroot = "{root}"\nseq_len = 12\nmax_train = 64\n'
        '[model]\nname = "lstm_lm"\nhidden = 16\n'
        '[method]\nname = "bc"\n'
        "[train]\nepochs = 1\nbatch_size = 16\nlr = 0.01\ngrad_clip = 5.0\nthreads = 1\n"
    )
    out = tmp_path / "runs"
    assert main(["train", str(cfg), "--twin", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "bits/char" in text
    runs = sorted((out / "lm").iterdir())
    assert {r.name.split("-")[0] for r in runs} == {"bc", "fp"}
    for r in runs:
        assert "test_bpc_best_val" in json.loads((r / "summary.json").read_text())
    assert main(["eval", str(runs[0])]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["test_bpc"] == pytest.approx(row["test_loss"] / math.log(2))
