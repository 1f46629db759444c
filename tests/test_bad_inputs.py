"""Bad input, as a hostile but fair user gives it, over every subcommand: configs, data of each
format, checkpoints, packed files, inputs to ``run``, output paths, numeric edge values.

Every case asserts the same four things: exit status 2; one line ``onebit: error: <sentence>``
that names the thing (each case's ``match``); no traceback; and no file of the working folder
created, overwritten, removed or left half-written (the folder is compared byte for byte before
and after, and no temporary file may remain). Cases run in-process through ``onebit.cli.main``,
each in a fresh copy of a small prepared folder (a trained run, its packed model, datasets).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onebit.cli import main
from onebit.fileio import TMP_MARK
from tests import packed_models
from tests.conftest import blobs, write_npz
from tests.test_cli import CONFIG


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The prepared folder every case starts from."""
    d = tmp_path_factory.mktemp("bad-inputs-base")
    write_npz(d / "tiny.npz", shape=(16,))
    (d / "tiny.toml").write_text(CONFIG.format(npz="tiny.npz", epochs=1, model_extra=""))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.integers(0, 256, (200, 1, 6, 6)).astype(np.uint8)
    np.savez(d / "img.npz", x=x[:160], y=y[:160], x_test=x[160:], y_test=y[160:])
    (d / "img.toml").write_text(
        CONFIG.format(npz="img.npz", epochs=1, model_extra="").replace(
            "val_size = 64", "val_size = 20"
        )
    )
    # the packed models are built from runtime ops (tests/packed_models.py): what is tested here
    # is the file and the runtime, whatever the packer emits
    packed_models.mlp((16,), 4).save(d / "model.onebit")
    packed_models.mlp((1, 6, 6), 3, pixels=True).save(d / "img.onebit")
    cwd = Path.cwd()
    os.chdir(d)
    try:
        assert main(["train", "tiny.toml", "--out", "runs", "--no-progress"]) == 0
        (run,) = (d / "runs" / "tiny").iterdir()
        run.rename(d / "run")
        shutil.rmtree(d / "runs")
        # a comparison folder holding a run of this config (for "another config")
        shutil.copytree(d / "run", d / "grid" / "tiny" / "bc-s0")
        (d / "README.md").write_text("# r\n\n<!-- results:start -->\nkeep\n<!-- results:end -->\n")
        (d / "empty").mkdir()
    finally:
        os.chdir(cwd)
    return d


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- helpers that make the bad files of a case (in the case's folder) --------------------------


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return make


def _npz(name: str, **arrays) -> Callable[[Path], None]:
    return lambda d: np.savez(d / name, **arrays)


_X = blobs(100, (16,), 4, 0).x.numpy()
_Y = blobs(100, (16,), 4, 0).y.numpy()


def _with_nan(v: float) -> np.ndarray:
    x = _X.copy()
    x[3, 5] = v
    return x


def _truncated_npz(d: Path) -> None:
    data = (d / "tiny.npz").read_bytes()
    (d / "trunc.npz").write_bytes(data[: len(data) // 3])


def _idx(d: Path, *, magic: bytes = b"\x00\x00\x08\x03", labels_max: int = 9, cut: int = 0) -> None:
    folder = d / "mn"
    folder.mkdir()
    n = 20
    images = struct.pack(">4I", 0x803, n, 28, 28)[4:]
    images = magic + images + bytes(n * 28 * 28)
    labels = struct.pack(">2I", 0x801, n) + bytes([labels_max] * n)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(images[: len(images) - cut])
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)


def _model_meta(d: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(d / "model.onebit"), framework="np") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _save_model(d: Path, name: str, meta: dict, tensors: dict, *, recompute: bool) -> None:
    from safetensors.numpy import save_file

    from onebit.runtime.format import FILE_CHECKSUM, file_digest

    meta = dict(meta)
    if recompute:
        meta["checksums"] = json.dumps(
            {
                k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8).tobytes()).hexdigest()
                for k, v in tensors.items()
            }
        )
        meta[FILE_CHECKSUM] = file_digest(meta, tensors)
    save_file(tensors, str(d / name), meta)


def _edited_model(
    edit: Callable[[dict, dict], None], recompute: bool = True
) -> Callable[[Path], None]:
    """model.onebit as ``bad.onebit`` after ``edit(meta, tensors)``; with ``recompute``, its
    checksums made to match the edit (so only the format's other checks stand in the way)."""

    def make(d: Path) -> None:
        meta, tensors = _model_meta(d)
        edit(meta, tensors)
        _save_model(d, "bad.onebit", meta, tensors, recompute=recompute)

    return make


def _graph_edit(fn: Callable[[list], None]) -> Callable[[dict, dict], None]:
    def edit(meta: dict, tensors: dict) -> None:
        g = json.loads(meta["graph"])
        fn(g)
        meta["graph"] = json.dumps(g)

    return edit


def _first(kind: str) -> Callable[[list], dict]:
    return lambda g: next(op for op in g if op["op"] == kind)


def _flip_byte(offset: int) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        data = bytearray((d / "model.onebit").read_bytes())
        data[offset] ^= 0x20
        (d / "bad.onebit").write_bytes(bytes(data))

    return make


def _legacy_emptied(meta: dict, tensors: dict) -> None:
    meta.pop("file_checksum")
    meta["checksums"] = "{}"


def _ckpt(d: Path, name: str, obj) -> None:
    import torch

    torch.save(obj, d / name)


def _edited_config(d: Path) -> None:
    cfg = json.loads((d / "run" / "config.json").read_text())
    cfg["train"]["lr"] = 0.5
    (d / "run" / "config.json").write_text(json.dumps(cfg))


def _inside(p: object, folder: Path) -> bool:
    return str(Path(str(p)).resolve()).startswith(str(folder.resolve()))


def _read_only(d: Path, mp: pytest.MonkeyPatch) -> None:
    (d / "ro").mkdir()
    real = os.access
    mp.setattr(
        os,
        "access",
        lambda p, m, *a, **k: not _inside(p, d / "ro") and real(p, m, *a, **k),
    )


@dataclass
class Case:
    id: str
    argv: list[str]
    match: str
    setup: Callable[..., None] | None = None


T = ["train", "tiny.toml", "--no-progress", "--out", "runs"]
RUN = ["run", "model.onebit"]
RUNI = ["run", "img.onebit"]

CASES = [
    # --- configs ---------------------------------------------------------------------------
    Case("config-missing", ["train", "nope.toml"], "config file nope.toml does not exist"),
    Case("config-folder", ["train", "empty"], "is a folder"),
    Case(
        "config-not-toml",
        ["train", "bad.toml"],
        "is not valid TOML",
        _write("bad.toml", "[train\nlr = "),
    ),
    Case(
        "config-binary",
        ["train", "bin.toml"],
        "is not valid TOML",
        _write("bin.toml", b"\xff\xfe\x00\x81"),
    ),
    Case(
        "config-unknown-top-key",
        ["train", "k.toml"],
        "unknown config key 'trian'",
        _write("k.toml", "[trian]\nlr = 1\n"),
    ),
    Case(
        "config-section-not-table",
        ["train", "s.toml"],
        "[train] must be a table",
        _write("s.toml", "train = 3\n"),
    ),
    Case("unknown-train-key", [*T, "--set", "train.lrr=1"], "unknown key train.lrr"),
    Case("epochs-not-int", [*T, "--set", "train.epochs=x"], "train.epochs must be int"),
    Case("epochs-float", [*T, "--set", "train.epochs=1.5"], "train.epochs must be int"),
    Case("epochs-bool", [*T, "--set", "train.epochs=true"], "train.epochs must be int"),
    Case("epochs-zero", [*T, "--set", "train.epochs=0"], "train.epochs = 0 is not accepted"),
    Case("epochs-negative", [*T, "--set", "train.epochs=-3"], "train.epochs = -3 is not accepted"),
    Case("lr-nan", [*T, "--set", "train.lr=nan"], "train.lr = nan is not accepted"),
    Case("lr-inf", [*T, "--set", "train.lr=inf"], "train.lr = inf is not accepted"),
    Case("lr-negative", [*T, "--set", "train.lr=-0.1"], "train.lr = -0.1 is not accepted"),
    Case("lr-zero", [*T, "--set", "train.lr=0"], "train.lr = 0.0 is not accepted"),
    Case("lr-string", [*T, "--set", 'train.lr="fast"'], "train.lr must be float"),
    Case("lr-final-negative", [*T, "--set", "train.lr_final=-1"], "train.lr_final = -1.0"),
    Case(
        "lr-final-zero-exp",
        [*T, "--set", 'train.schedule="exp"', "--set", "train.lr_final=0"],
        "for an exp schedule",
    ),
    Case("batch-size-zero", [*T, "--set", "train.batch_size=0"], "train.batch_size = 0"),
    Case(
        "eval-batch-size-zero",
        [*T, "--set", "train.eval_batch_size=0"],
        "train.eval_batch_size = 0",
    ),
    Case("momentum-too-big", [*T, "--set", "train.momentum=1.5"], "train.momentum = 1.5"),
    Case(
        "weight-decay-negative", [*T, "--set", "train.weight_decay=-1"], "train.weight_decay = -1.0"
    ),
    Case("grad-clip-zero", [*T, "--set", "train.grad_clip=0"], "train.grad_clip = 0.0"),
    Case("gamma-zero", [*T, "--set", "train.gamma=0"], "train.gamma = 0.0"),
    Case("milestones-negative", [*T, "--set", "train.milestones=[-1]"], "train.milestones = [-1]"),
    Case("seed-negative", [*T, "--set", "train.seed=-1"], "train.seed = -1"),
    Case("threads-negative", [*T, "--set", "train.threads=-2"], "train.threads = -2"),
    Case(
        "optimizer-unknown",
        [*T, "--set", 'train.optimizer="adagrad"'],
        "train.optimizer = 'adagrad' is not accepted",
    ),
    Case("schedule-unknown", [*T, "--set", 'train.schedule="linear"'], "train.schedule = 'linear'"),
    Case("loss-unknown", [*T, "--set", 'train.loss="mse"'], "train.loss = 'mse'"),
    Case("gemm-unknown", [*T, "--set", 'train.gemm="fast"'], "train.gemm = 'fast'"),
    Case("hidden-zero", [*T, "--set", "model.hidden=[0]"], "model.hidden = [0] is not accepted"),
    Case("hidden-negative", [*T, "--set", "model.hidden=[-5]"], "model.hidden = [-5]"),
    Case("hidden-not-list", [*T, "--set", "model.hidden=7"], "model.hidden must be a list"),
    Case("dropout-one", [*T, "--set", "model.dropout=1.0"], "model.dropout = 1.0 is not accepted"),
    Case("bn-eps-zero", [*T, "--set", "model.bn_eps=0"], "model.bn_eps = 0.0"),
    Case(
        "model-unknown", [*T, "--set", 'model.name="transformer9"'], "unknown model 'transformer9'"
    ),
    Case("model-unknown-option", [*T, "--set", "model.depth=3"], "unknown key model.depth"),
    Case(
        "model-bad-activation", [*T, "--set", 'model.act="swish9"'], "unknown activation 'swish9'"
    ),
    Case("method-unknown", [*T, "--set", 'method.name="magic"'], "unknown method 'magic'"),
    Case(
        "method-unknown-option",
        [*T, "--set", "method.temperature=2"],
        "unknown key method.temperature",
    ),
    Case(
        "method-option-type", [*T, "--set", "method.stochastic=3"], "method.stochastic must be bool"
    ),
    Case("data-unknown", [*T, "--set", 'data.name="imagenet"'], "unknown dataset 'imagenet'"),
    Case("val-size-negative", [*T, "--set", "data.val_size=-1"], "data.val_size = -1"),
    Case(
        "val-size-too-big",
        [*T, "--set", "data.val_size=10000"],
        "data.val_size = 10000 leaves none",
    ),
    Case("max-train-zero", [*T, "--set", "data.max_train=0"], "data.max_train = 0"),
    Case("seq-len-zero", [*T, "--set", "data.seq_len=0"], "data.seq_len = 0"),
    Case(
        "name-with-slash", [*T, "--set", 'name="../escape"'], "name = '../escape' is not accepted"
    ),
    Case("set-without-equals", [*T, "--set", "train.lr"], "--set expects section.key=value"),
    Case("set-into-a-value", [*T, "--set", "train.lr.x=1"], "lr is not a table"),
    Case("seeds-repeated", [*T, "--seeds", "0", "0"], "--seeds expects distinct non-negative"),
    Case("seeds-negative", [*T, "--seeds", "-1"], "--seeds expects distinct non-negative"),
    Case("seeds-not-int", [*T, "--seeds", "x"], "invalid int value: 'x'"),
    Case("methods-empty-name", [*T, "--methods", "bc,,fp"], "--methods expects method names"),
    Case("methods-repeated", [*T, "--methods", "bc,bc"], "names a method twice"),
    Case("methods-unknown", [*T, "--methods", "bc,nope"], "unknown method 'nope'"),
    Case("train-nothing", ["train"], "give a config file"),
    Case("unknown-command", ["fly"], "invalid choice: 'fly'"),
    Case("unknown-flag", [*T, "--fast"], "unrecognized arguments: --fast"),
    # --- data files ------------------------------------------------------------------------
    Case("npz-missing", [*T, "--set", 'data.path="gone.npz"'], "gone.npz is not a file"),
    Case(
        "npz-garbage",
        [*T, "--set", 'data.path="g.npz"'],
        "Could not read g.npz as .npz",
        _write("g.npz", b"PK\x03\x04garbage"),
    ),
    Case(
        "npz-text",
        [*T, "--set", 'data.path="t.npz"'],
        "Could not read t.npz as .npz",
        _write("t.npz", "x,y\n1,2\n"),
    ),
    Case(
        "npz-truncated",
        [*T, "--set", 'data.path="trunc.npz"'],
        "Could not read trunc.npz as .npz",
        _truncated_npz,
    ),
    Case(
        "npz-no-labels",
        [*T, "--set", 'data.path="n.npz"'],
        "lacks the array(s) y",
        _npz("n.npz", x=_X),
    ),
    Case(
        "npz-length-mismatch",
        [*T, "--set", 'data.path="n.npz"'],
        "x has 100 examples but y has 99",
        _npz("n.npz", x=_X, y=_Y[:99]),
    ),
    Case(
        "npz-fractional-labels",
        [*T, "--set", 'data.path="n.npz"'],
        "not whole numbers",
        _npz("n.npz", x=_X, y=_Y + 0.5),
    ),
    Case(
        "npz-negative-labels",
        [*T, "--set", 'data.path="n.npz"'],
        "negative labels",
        _npz("n.npz", x=_X, y=_Y - 1),
    ),
    Case(
        "npz-2d-labels",
        [*T, "--set", 'data.path="n.npz"'],
        "store labels as a 1-D array",
        _npz("n.npz", x=_X, y=_Y[:, None]),
    ),
    Case(
        "npz-string-labels",
        [*T, "--set", 'data.path="n.npz"'],
        "store integer labels",
        _npz("n.npz", x=_X, y=_Y.astype(str)),
    ),
    Case(
        "npz-nan-inputs",
        [*T, "--set", 'data.path="n.npz"'],
        "NaN or infinite values (the first in example 3)",
        _npz("n.npz", x=_with_nan(np.nan), y=_Y),
    ),
    Case(
        "npz-inf-inputs",
        [*T, "--set", 'data.path="n.npz"'],
        "NaN or infinite values",
        _npz("n.npz", x=_with_nan(np.inf), y=_Y),
    ),
    Case(
        "npz-huge-inputs",
        [*T, "--set", 'data.path="n.npz"'],
        "beyond float32's range",
        _npz("n.npz", x=_X.astype(np.float64) * 1e300, y=_Y),
    ),
    Case(
        "npz-1d-inputs",
        [*T, "--set", 'data.path="n.npz"'],
        "use (N, F), (N, H, W) or (N, C, H, W)",
        _npz("n.npz", x=_X[:, 0], y=_Y),
    ),
    Case(
        "npz-string-inputs",
        [*T, "--set", 'data.path="n.npz"'],
        "store numbers",
        _npz("n.npz", x=_X.astype(str), y=_Y),
    ),
    Case(
        "npz-half-test",
        [*T, "--set", 'data.path="n.npz"'],
        "only one of x_test and y_test",
        _npz("n.npz", x=_X, y=_Y, x_test=_X),
    ),
    Case(
        "npz-test-shape",
        [*T, "--set", 'data.path="n.npz"'],
        "give both the same shape",
        _npz("n.npz", x=_X, y=_Y, x_test=_X[:, :8], y_test=_Y),
    ),
    Case(
        "npz-empty",
        [*T, "--set", 'data.path="n.npz"'],
        "holds no examples",
        _npz("n.npz", x=_X[:0], y=_Y[:0]),
    ),
    Case(
        "npz-too-small",
        [*T, "--set", 'data.path="n.npz"', "--set", "data.val_size=0"],
        "too few to hold out 10%",
        _npz("n.npz", x=_X[:5], y=_Y[:5]),
    ),
    Case(
        "npz-object-array",
        [*T, "--set", 'data.path="n.npz"'],
        "Could not read n.npz as .npz",
        _npz("n.npz", x=np.array([1, "a"], dtype=object), y=_Y[:2]),
    ),
    Case(
        "npz-no-path", [*T, "--set", 'data.name="npz"', "--set", 'data.path="none"'], "needs a file"
    ),
    Case(
        "idx-bad-magic",
        [*T, "--set", 'data.name="mnist"', "--set", 'data.root="mn"'],
        "not an IDX file",
        lambda d: _idx(d, magic=b"\x01\x02\x03\x04"),
    ),
    Case(
        "idx-truncated",
        [*T, "--set", 'data.name="mnist"', "--set", 'data.root="mn"'],
        "header announces",
        lambda d: _idx(d, cut=100),
    ),
    Case(
        "idx-bad-labels",
        [*T, "--set", 'data.name="mnist"', "--set", 'data.root="mn"'],
        "classes outside 0..9",
        lambda d: _idx(d, labels_max=12),
    ),
    Case(
        "cifar-bad-size",
        [*T, "--set", 'data.name="cifar10"', "--set", 'data.root="c"'],
        "whole number of 3073-byte",
        lambda d: ((d / "c").mkdir(), (d / "c" / "data_batch_1.bin").write_bytes(b"x" * 10)),
    ),
    Case(
        "image-folder-no-test",
        [*T, "--set", 'data.name="cifar10"', "--set", 'data.root="imgs"'],
        "Dataset 'cifar10' was not found",
        lambda d: (d / "imgs" / "train" / "cat").mkdir(parents=True),
    ),
    Case(
        "text-not-utf8",
        [*T, "--set", 'data.name="text"', "--set", 'data.path="t.txt"'],
        "as UTF-8 text",
        _write("t.txt", b"\xff\xfe\xfa" * 100),
    ),
    Case(
        "text-too-short",
        [
            *T,
            "--set",
            'data.name="text"',
            "--set",
            'data.path="t.txt"',
            "--set",
            'model.name="lstm_lm"',
            "--set",
            "model.hidden=8",
        ],
        "seq_len",
        _write("t.txt", "abc"),
    ),
    Case(
        "gz-corrupt",
        [*T, "--set", 'data.name="mnist"', "--set", 'data.root="mn"'],
        "Could not read",
        lambda d: (
            _idx(d),
            (d / "mn" / "train-images-idx3-ubyte").unlink(),
            (d / "mn" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"x" * 100)[:20]),
        ),
    ),
    # --- checkpoints and run folders ---------------------------------------------------------
    Case(
        "eval-junk",
        ["eval", "junk.pt"],
        "is not a onebit checkpoint",
        _write("junk.pt", b"\x00not a checkpoint"),
    ),
    Case(
        "eval-foreign-torch-file",
        ["eval", "f.pt"],
        "no onebit format tag",
        lambda d: _ckpt(d, "f.pt", {"a": 1}),
    ),
    Case("eval-missing", ["eval", "gone.pt"], "does not exist"),
    Case("eval-folder-without-best", ["eval", "empty"], "holds no best.pt"),
    Case(
        "eval-no-config",
        ["eval", "c.pt"],
        "carries no usable config",
        lambda d: _ckpt(d, "c.pt", {"format": "onebit-checkpoint", "version": 1}),
    ),
    Case(
        "eval-newer-checkpoint",
        ["eval", "n.pt"],
        "newer onebit",
        lambda d: _ckpt(d, "n.pt", {"format": "onebit-checkpoint", "version": 99}),
    ),
    Case("resume-not-a-run", ["train", "--resume", "empty"], "is not a onebit run folder"),
    Case(
        "resume-bad-json",
        ["train", "--resume", "run"],
        "is not a readable onebit config",
        lambda d: (d / "run" / "config.json").write_text("{nope"),
    ),
    Case(
        "resume-edited-config",
        ["train", "--resume", "run", "--no-progress"],
        "is not the config",
        _edited_config,
    ),
    Case(
        "resume-damaged-checkpoint",
        ["train", "--resume", "run", "--no-progress"],
        "is not a onebit checkpoint",
        lambda d: (d / "run" / "last.pt").write_bytes(b"junk"),
    ),
    Case("resume-with-seeds", ["train", "--resume", "run", "--seeds", "3"], "drop --seeds"),
    Case("resume-with-methods", ["train", "--resume", "run", "--methods", "fp"], "drop --methods"),
    Case("resume-with-out", ["train", "--resume", "run", "--out", "x"], "drop --out"),
    Case("resume-with-set", ["train", "--resume", "run", "--set", "train.lr=1"], "drop --set"),
    Case("resume-with-config", ["train", "tiny.toml", "--resume", "run"], "drop CONFIG"),
    Case(
        "pack-junk", ["pack", "junk.pt"], "is not a onebit checkpoint", _write("junk.pt", b"nope")
    ),
    Case("pack-folder-without-best", ["pack", "empty"], "holds no best.pt"),
    # --- packed files ------------------------------------------------------------------------
    Case("model-missing", ["run", "gone.onebit", "tiny.npz"], "gone.onebit does not exist"),
    Case("model-folder", ["run", "empty", "tiny.npz"], "is a folder"),
    Case(
        "model-junk",
        ["run", "bad.onebit", "tiny.npz"],
        "is not a onebit model file",
        _write("bad.onebit", b"hello"),
    ),
    Case(
        "model-empty-file",
        ["run", "bad.onebit", "tiny.npz"],
        "is not a onebit model file",
        _write("bad.onebit", b""),
    ),
    Case(
        "model-truncated",
        ["run", "bad.onebit", "tiny.npz"],
        "is not a onebit model file",
        lambda d: (d / "bad.onebit").write_bytes((d / "model.onebit").read_bytes()[:300]),
    ),
    Case(
        "model-flipped-payload",
        ["run", "bad.onebit", "tiny.npz"],
        "fails its checksum",
        _flip_byte(-5),
    ),
    Case(
        "model-newer-version",
        ["run", "bad.onebit", "tiny.npz"],
        "newer than this onebit reads",
        _edited_model(lambda m, t: m.update(format_version="9")),
    ),
    Case(
        "model-bad-version",
        ["run", "bad.onebit", "tiny.npz"],
        "no valid onebit format version",
        _edited_model(lambda m, t: m.update(format_version="one")),
    ),
    Case(
        "model-no-tag",
        ["run", "bad.onebit", "tiny.npz"],
        "no onebit format tag",
        _edited_model(lambda m, t: m.pop("format")),
    ),
    Case(
        "model-unknown-mode",
        ["run", "bad.onebit", "tiny.npz"],
        "mode = 'xnorish' is not one of",
        _edited_model(_graph_edit(lambda g: _first("linear")(g)["attrs"].update(mode="xnorish"))),
    ),
    Case(
        "model-dtype-changed",
        ["run", "bad.onebit", "tiny.npz"],
        "not float32",
        _edited_model(
            lambda m, t: t.update(
                {k: v.astype(np.float64) for k, v in t.items() if k.endswith(".alpha")}
            )
        ),
    ),
    Case(
        "model-shape-changed",
        ["run", "bad.onebit", "tiny.npz"],
        "has shape",
        _edited_model(
            lambda m, t: t.update({k: v[:-1] for k, v in t.items() if k.endswith(".beta")})
        ),
    ),
    Case(
        "model-emptied-checksums",
        ["run", "bad.onebit", "tiny.npz"],
        "has no checksum for tensor",
        _edited_model(_legacy_emptied, recompute=False),
    ),
    Case(
        "model-edited-graph",
        ["run", "bad.onebit", "tiny.npz"],
        "fails its checksum",
        _edited_model(
            _graph_edit(lambda g: _first("linear")(g)["attrs"].update(out_features=3)),
            recompute=False,
        ),
    ),
    Case(
        "model-unknown-metadata",
        ["run", "bad.onebit", "tiny.npz"],
        "unknown metadata field 'note'",
        _edited_model(lambda m, t: m.update(note="x")),
    ),
    Case(
        "model-unknown-op",
        ["run", "bad.onebit", "tiny.npz"],
        "uses op 'softmax9'",
        _edited_model(_graph_edit(lambda g: _first("linear")(g).update(op="softmax9"))),
    ),
    Case(
        "model-unknown-attr",
        ["run", "bad.onebit", "tiny.npz"],
        "unknown attribute 'dilation'",
        _edited_model(_graph_edit(lambda g: _first("linear")(g)["attrs"].update(dilation=2))),
    ),
    Case(
        "model-dangling-input",
        ["run", "bad.onebit", "tiny.npz"],
        "is not an earlier value",
        _edited_model(_graph_edit(lambda g: _first("linear")(g).update(inputs=["nowhere"]))),
    ),
    Case(
        "model-wrong-features",
        ["run", "bad.onebit", "tiny.npz"],
        "in_features is 17",
        _edited_model(_graph_edit(lambda g: _first("linear")(g)["attrs"].update(in_features=17))),
    ),
    Case(
        "model-graph-not-json",
        ["run", "bad.onebit", "tiny.npz"],
        "damaged onebit metadata (invalid JSON)",
        _edited_model(lambda m, t: m.update(graph="[{")),
    ),
    Case(
        "model-nan-weights",
        ["run", "bad.onebit", "tiny.npz"],
        "holds NaN or infinite values",
        _edited_model(
            lambda m, t: t.update(
                {k: np.full_like(v, np.nan) for k, v in t.items() if k.endswith(".alpha")}
            )
        ),
    ),
    Case(
        "model-bad-input-spec",
        ["run", "bad.onebit", "tiny.npz"],
        "its input std = [0.0, 0.0",
        _edited_model(
            lambda m, t: m.update(input=json.dumps({**json.loads(m["input"]), "std": [0.0] * 16}))
        ),
    ),
    # --- inputs to run -----------------------------------------------------------------------
    Case("inputs-missing", [*RUN, "gone.npz"], "input file gone.npz does not exist"),
    Case("inputs-npz-without-x", [*RUN, "n.npz"], "has no array 'x'", _npz("n.npz", a=_X)),
    Case(
        "inputs-npz-garbage",
        [*RUN, "n.npz"],
        "is not a readable .npz file",
        _write("n.npz", b"PK\x03\x04junk"),
    ),
    Case(
        "inputs-wrong-shape", [*RUN, "n.npz"], "the model expects (16,)", _npz("n.npz", x=_X[:, :7])
    ),
    Case(
        "inputs-nan",
        [*RUN, "n.npz"],
        "NaN or infinite values (the first in input 3)",
        _npz("n.npz", x=_with_nan(np.nan)),
    ),
    Case(
        "inputs-all-nan",
        [*RUN, "n.npz"],
        "NaN or infinite values",
        _npz("n.npz", x=np.full_like(_X, np.nan)),
    ),
    Case("inputs-strings", [*RUN, "n.npz"], "give numbers", _npz("n.npz", x=_X.astype(str))),
    Case("inputs-empty", [*RUN, "n.npz"], "holds no examples", _npz("n.npz", x=_X[:0])),
    Case(
        "inputs-label-count",
        [*RUN, "n.npz"],
        "labels of shape (99,)",
        _npz("n.npz", x=_X, y=_Y[:99]),
    ),
    Case(
        "inputs-labels-beyond-classes",
        [*RUN, "n.npz"],
        "labels go up to 9",
        _npz("n.npz", x=_X, y=np.full(100, 9)),
    ),
    Case(
        "inputs-negative-labels", [*RUN, "n.npz"], "negative labels", _npz("n.npz", x=_X, y=_Y - 1)
    ),
    Case(
        "inputs-pixels-out-of-range",
        [*RUNI, "p.npz"],
        "integers from 300 to 300",
        _npz("p.npz", x=np.full((2, 1, 6, 6), 300)),
    ),
    Case(
        "inputs-float-pixels-0-255",
        [*RUNI, "p.npz"],
        "this model reads pixels",
        _npz("p.npz", x=np.full((2, 1, 6, 6), 200.0)),
    ),
    Case(
        "inputs-negative-pixels",
        [*RUNI, "p.npz"],
        "integers from -1",
        _npz("p.npz", x=np.full((2, 1, 6, 6), -1)),
    ),
    Case(
        "inputs-mixed-shapes",
        [*RUN, "a.npz", "b.npz"],
        "examples of different shapes",
        lambda d: (np.savez(d / "a.npz", x=_X), np.savez(d / "b.npz", x=_X[:, :8])),
    ),
    Case("inputs-bad-image", [*RUNI, "x.png"], "is not an image", _write("x.png", b"\x89PNG junk")),
    Case(
        "inputs-batch-size-zero",
        [*RUN, "tiny.npz", "--batch-size", "0"],
        "--batch-size must be at least 1",
    ),
    Case(
        "inputs-idx-bad",
        [*RUNI, "t-images-idx3-ubyte"],
        "not an IDX file",
        _write("t-images-idx3-ubyte", b"\x01\x02\x03\x04"),
    ),
    # --- output paths ------------------------------------------------------------------------
    Case("json-missing-folder", [*T, "--json", "nowhere/r.json"], "folder nowhere does not exist"),
    Case("json-is-folder", [*T, "--json", "empty"], "empty is a folder"),
    Case("json-is-device", [*T, "--json", "/dev/null"], "not a regular file"),
    Case("record-not-empty", [*T, "--record", "run"], "already holds files"),
    Case(
        "record-under-a-file", [*T, "--record", "tiny.npz/rec"], "tiny.npz is a file, not a folder"
    ),
    Case("out-is-a-file", ["train", "tiny.toml", "--out", "tiny.npz"], "--out tiny.npz is a file"),
    Case("out-read-only", ["train", "tiny.toml", "--out", "ro/runs"], "is read-only", _read_only),
    Case(
        "pack-to-device",
        ["pack", "run", "-o", "/dev/full" if Path("/dev/full").exists() else "/dev/null"],
        "not a regular file",
    ),
    Case("pack-to-folder", ["pack", "run", "-o", "empty"], "empty is a folder"),
    Case("pack-over-other-file", ["pack", "run", "-o", "tiny.toml"], "is not a .onebit model file"),
    Case(
        "pack-over-checkpoint", ["pack", "run", "-o", "run/best.pt"], "is not a .onebit model file"
    ),
    Case(
        "pack-missing-folder",
        ["pack", "run", "-o", "nowhere/m.onebit"],
        "folder nowhere does not exist",
    ),
    Case(
        "pack-onnx-folder",
        ["pack", "run", "-o", "m2.onebit", "--onnx", "empty"],
        "empty is a folder",
    ),
    Case("bench-out-folder", ["bench", "model.onebit", "--out", "empty"], "empty is a folder"),
    Case(
        "bench-threads-zero",
        ["bench", "model.onebit", "--threads", "0"],
        "--threads must be at least 1",
    ),
    Case(
        "bench-repeats-zero",
        ["bench", "model.onebit", "--repeats", "0"],
        "--repeats must be at least 1",
    ),
    Case("bench-missing-model", ["bench", "gone.onebit"], "gone.onebit does not exist"),
    Case("report-out-file", ["report", "run", "--out", "tiny.npz"], "--out tiny.npz is a file"),
    Case("report-missing", ["report", "gone"], "gone is not a folder"),
    Case("report-no-runs", ["report", "empty"], "neither a onebit run folder"),
    Case("report-check-alone", ["report", "run", "--check"], "--check goes with --readme"),
    Case(
        "report-records-alone",
        ["report", "run", "--records", "empty"],
        "--records goes with --readme",
    ),
    Case("readme-missing", ["report", "--readme", "NO.md"], "NO.md does not exist"),
    Case(
        "readme-empty-records",
        ["report", "--readme", "README.md", "--records", "empty"],
        "holds no records",
    ),
    Case(
        "readme-missing-records",
        ["report", "--readme", "README.md", "--records", "gone"],
        "records folder gone does not exist",
    ),
    Case(
        "readme-no-markers",
        ["report", "--readme", "tiny.toml", "--records", "empty"],
        "holds no records",
    ),
    Case("readme-with-runs", ["report", "run", "--readme", "README.md"], "drop RUNS"),
    # --- compare, sensitivity, data ----------------------------------------------------------
    Case(
        "compare-workers-zero",
        ["compare", "tiny.toml", "--methods", "bc", "--workers", "0"],
        "--workers must be at least 1",
    ),
    Case(
        "compare-unknown-method",
        ["compare", "tiny.toml", "--methods", "bc,zz"],
        "unknown method 'zz'",
    ),
    Case(
        "compare-seeds-repeated",
        ["compare", "tiny.toml", "--methods", "bc", "--seeds", "1", "1"],
        "distinct non-negative",
    ),
    Case(
        "compare-record-not-empty",
        ["compare", "tiny.toml", "--methods", "bc", "--record", "run"],
        "not a record to continue",
    ),
    Case(
        "compare-another-config",
        [
            "compare",
            "tiny.toml",
            "--methods",
            "bc",
            "--out",
            "grid",
            "--set",
            "train.lr=0.5",
            "--workers",
            "1",
        ],
        "holds a run of another config",
    ),
    Case(
        "compare-bad-config",
        ["compare", "tiny.toml", "--methods", "bc", "--set", "train.epochs=0"],
        "train.epochs = 0",
    ),
    Case(
        "sensitivity-workers-zero",
        ["sensitivity", "tiny.toml", "--workers", "0"],
        "--workers must be at least 1",
    ),
    Case(
        "sensitivity-seeds-negative",
        ["sensitivity", "tiny.toml", "--seeds", "-2"],
        "distinct non-negative",
    ),
    Case("data-unknown", ["data", "where", "imagenet"], "Unknown dataset 'imagenet'"),
    Case("data-download-own-file", ["data", "download", "npz"], "cannot be downloaded"),
    Case("data-bad-action", ["data", "fetch", "mnist"], "invalid choice: 'fetch'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, base, tmp_path, capsys, monkeypatch):
    d = tmp_path / "w"
    shutil.copytree(base, d)
    monkeypatch.chdir(d)
    if case.setup is not None:
        if case.setup.__code__.co_argcount == 2:
            case.setup(d, monkeypatch)
        else:
            case.setup(d)
    before = _snapshot(d)
    devices = {p: os.stat(p).st_mode for p in ("/dev/full", "/dev/null") if Path(p).exists()}
    capsys.readouterr()
    code = main(case.argv)
    captured = capsys.readouterr()
    err = captured.err
    lines = [line for line in err.splitlines() if line.startswith("onebit: error: ")]
    assert code == 2, f"exit {code}; stderr: {err[-1500:]}"
    assert "Traceback" not in err and "Traceback" not in captured.out
    assert len(lines) == 1 and err.rstrip("\n").splitlines()[-1] == lines[0], err
    sentence = lines[0].removeprefix("onebit: error: ")
    assert sentence.endswith(".") and "\n" not in sentence
    assert case.match in sentence, sentence
    assert _snapshot(d) == before, "a file was created, changed or removed"
    assert not [p for p in d.rglob("*") if TMP_MARK in p.name]
    for p, mode in devices.items():
        assert stat.S_ISCHR(os.stat(p).st_mode) and os.stat(p).st_mode == mode


def test_the_suite_covers_every_subcommand_and_is_large():
    from onebit.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= {c.argv[0] for c in CASES}
    assert len(CASES) >= 80
