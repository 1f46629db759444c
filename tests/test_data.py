"""Tests for onebit.data, on tiny synthetic datasets written to tmp_path."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onebit import data
from onebit.errors import OnebitError

# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as an IDX file, gzipped when ``path`` ends with .gz."""
    code = _IDX_CODES[arr.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_dataset(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Write a tiny MNIST-like IDX dataset (8x8 images) and return its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for i, (stem, arr) in enumerate(arrays.items()):
        # mix gzipped and plain files: both must be read
        write_idx(folder / (f"{stem}.gz" if i % 2 == 0 else stem), arr)
    return arrays


def make_image_folder(
    root: Path, classes=("dog", "cat", "bird"), n_train=4, n_test=2, size=(6, 5), fmt="png"
) -> dict[str, list[tuple[np.ndarray, str]]]:
    """Write a class-folder image dataset; return {split: [(hwc pixels, class), ...]}."""
    rng = np.random.default_rng(1)
    out: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i:04d}.{fmt}")
                out[split].append((pixels, cls))
    return out


def write_cifar_binary(folder: Path, per_batch: int = 3, n_test: int = 4, seed: int = 2):
    """Write tiny CIFAR-10 binary batches; return (train records, test records)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(1, 6):
        rec = rng.integers(0, 256, (per_batch, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, per_batch)
        (folder / f"data_batch_{i}.bin").write_bytes(rec.tobytes())
        train.append(rec)
    test = rng.integers(0, 256, (n_test, 3073), dtype=np.uint8)
    test[:, 0] = rng.integers(0, 10, n_test)
    (folder / "test_batch.bin").write_bytes(test.tobytes())
    return np.concatenate(train), test


def assert_one_sentence(exc: pytest.ExceptionInfo[OnebitError]) -> str:
    msg = str(exc.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the real machine's data folders out: no env, fake home, cwd in tmp, no system dirs."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(data.find, "SYSTEM_DATA_DIRS", ())
    return tmp_path


# --------------------------------------------------------------------------------------------------
# read_idx
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype) -> None:
    arr = (np.arange(2 * 3 * 4) * 7 - 20).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    got[0, 0, 0] = 1  # writable


def test_read_idx_accepts_the_other_variant(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", arr)
    write_idx(tmp_path / "plain", arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels"), arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "plain.gz"), arr)
    with pytest.raises(OnebitError):
        data.read_idx(tmp_path / "missing")


def test_read_idx_bad_magic_and_truncated(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(OnebitError, match="magic") as exc:
        data.read_idx(bad)
    assert_one_sentence(exc)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")
    with pytest.raises(OnebitError) as exc:
        data.read_idx(short)
    assert_one_sentence(exc)


# --------------------------------------------------------------------------------------------------
# MNIST-like datasets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_idx_dataset(tmp_path: Path, name: str) -> None:
    arrays = make_idx_dataset(tmp_path / "root" / name)
    ds = data.load_dataset(name, root=tmp_path / "root", val_size=10)
    assert ds.name == name and ds.num_classes == 10 and not ds.augment
    assert ds.input_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 20)
    assert ds.train.x.dtype == torch.uint8 and ds.train.y.dtype == torch.int64
    assert ds.train.x.shape == (40, 1, 8, 8)
    images = arrays["train-images-idx3-ubyte"]
    labels = arrays["train-labels-idx1-ubyte"]
    np.testing.assert_array_equal(ds.val.x[:, 0].numpy(), images[-10:])
    np.testing.assert_array_equal(ds.val.y.numpy(), labels[-10:])
    np.testing.assert_array_equal(ds.train.x[:, 0].numpy(), images[:40])
    np.testing.assert_array_equal(ds.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.mean == data._STATS[name][0] and ds.std == data._STATS[name][1]
    assert len(ds.classes) == 10


def test_val_size_zero_and_too_large(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "mnist")
    ds = data.load_dataset("mnist", root=tmp_path, val_size=0)
    assert (len(ds.train), len(ds.val)) == (50, 0)
    assert ds.val.x.shape == (0, 1, 8, 8)
    with pytest.raises(OnebitError, match="val_size") as exc:
        data.load_dataset("mnist", root=tmp_path, val_size=50)
    assert_one_sentence(exc)


def test_unknown_dataset() -> None:
    with pytest.raises(OnebitError, match="Unknown dataset") as exc:
        data.load_dataset("imagenet")
    assert_one_sentence(exc)


# --------------------------------------------------------------------------------------------------
# Class-folder images
# --------------------------------------------------------------------------------------------------


def test_image_folder_png_exact_and_cached(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "imgs"
    expected = make_image_folder(src)
    cache = tmp_path / "cache"
    train, test, classes = data.load_image_folder(src, cache_dir=cache)
    assert classes == ["bird", "cat", "dog"]
    assert train.x.shape == (12, 3, 5, 6) and train.x.dtype == torch.uint8
    assert test.x.shape == (6, 3, 5, 6) and test.y.dtype == torch.int64
    for split, got in (("train", train), ("test", test)):
        # classes interleaved: file 0 of each class (classes sorted), then file 1, ...
        n_per_class = len(got) // 3
        ordered = sorted(enumerate(expected[split]), key=lambda t: (t[0] % n_per_class, t[1][1]))
        for i, (_, (pixels, cls)) in enumerate(ordered):
            np.testing.assert_array_equal(got.x[i].permute(1, 2, 0).numpy(), pixels)
            assert classes[int(got.y[i])] == cls
    cached = list(cache.glob("imagefolder-*.npz"))
    assert len(cached) == 1
    assert not list(cache.glob("*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    touched = src / "test" / "cat" / "0001.png"
    with monkeypatch.context() as m:
        m.setattr(Image, "open", refuse)
        train2, test2, classes2 = data.load_image_folder(src, cache_dir=cache)
        assert classes2 == classes
        assert torch.equal(train2.x, train.x) and torch.equal(test2.y, test.y)
        # touching a file changes the fingerprint: the images are decoded again
        st = touched.stat()
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        with pytest.raises(AssertionError, match="cache should have been used"):
            data.load_image_folder(src, cache_dir=cache)
    data.load_image_folder(src, cache_dir=cache)
    assert len(list(cache.glob("imagefolder-*.npz"))) == 2


def test_image_folder_jpeg_and_default_cache(tmp_path: Path) -> None:
    src = tmp_path / "jpegs"
    make_image_folder(src, classes=("b", "a"), n_train=3, n_test=1, fmt="jpg")
    train, test, classes = data.load_image_folder(src, progress=True)
    assert classes == ["a", "b"] and len(train) == 6 and len(test) == 2
    assert train.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert train.x.shape == (6, 3, 5, 6)
    # default cache folder is under $XDG_CACHE_HOME (here: the fake home)
    assert list((tmp_path / "home" / ".cache" / "onebit" / "cache").glob("imagefolder-*.npz"))


def test_image_folder_errors(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    make_image_folder(src, classes=("a",), n_train=2, n_test=1)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(src / "train" / "a" / "9999.png")
    with pytest.raises(OnebitError, match="one size") as exc:
        data.load_image_folder(src, cache_dir=tmp_path / "c")
    assert_one_sentence(exc)
    (tmp_path / "only-train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(OnebitError, match="test/") as exc:
        data.load_image_folder(tmp_path / "only-train", cache_dir=tmp_path / "c")
    assert_one_sentence(exc)


def test_cifar10_from_image_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "cifar10-jpeg", classes=("cat", "airplane"), size=(4, 4))
    ds = data.load_dataset("cifar10", root=tmp_path, val_size=2, cache_dir=tmp_path / "c")
    assert ds.augment and ds.num_classes == 2 and ds.classes == ("airplane", "cat")
    assert ds.input_shape == (3, 4, 4)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 4)
    assert "class-folder" in ds.source
    assert sorted(ds.val.y.tolist()) == [0, 1]  # validation covers every class


# --------------------------------------------------------------------------------------------------
# CIFAR-10 binary
# --------------------------------------------------------------------------------------------------


def test_cifar10_binary(tmp_path: Path) -> None:
    train_rec, test_rec = write_cifar_binary(tmp_path / "bin")
    train, test, classes = data.load_cifar10_binary(tmp_path / "bin")
    assert classes == list(data.CLASS_NAMES["cifar10"])
    assert train.x.shape == (15, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(train.y.numpy(), train_rec[:, 0])
    np.testing.assert_array_equal(train.x[4, 1].numpy().ravel(), train_rec[4, 1025:2049])
    np.testing.assert_array_equal(test.x[3, 2].numpy().ravel(), test_rec[3, 2049:])


def test_cifar10_binary_preferred_and_bad_size(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path / "cifar-10-batches-bin")
    make_image_folder(tmp_path / "cifar10-jpeg", classes=("a",))
    ds = data.load_dataset("cifar10", root=tmp_path, val_size=5)
    assert "binary" in ds.source and (len(ds.train), len(ds.val), len(ds.test)) == (10, 5, 4)
    assert ds.num_classes == 10 and ds.mean == (0.4914, 0.4822, 0.4465)
    with open(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin", "ab") as fh:
        fh.write(b"xyz")
    with pytest.raises(OnebitError, match="records") as exc:
        data.load_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    assert_one_sentence(exc)


# --------------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------------


def test_npz_images_without_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (100, 5, 5), dtype=np.uint8)
    y = rng.integers(0, 4, 100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = data.load_dataset("npz", path=str(tmp_path / "d.npz"), val_size=20)
    assert ds.input_shape == (1, 5, 5) and ds.train.x.dtype == torch.uint8
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70, 20, 10)
    np.testing.assert_array_equal(ds.test.x[:, 0].numpy(), x[90:])
    np.testing.assert_array_equal(ds.val.y.numpy(), y[70:90])
    assert ds.num_classes == int(y.max()) + 1
    assert ds.mean[0] == pytest.approx(x[:70].mean() / 255, rel=1e-6)
    assert ds.std[0] == pytest.approx((x[:70] / 255).std(), rel=1e-6)


def test_npz_flat_float_with_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, (40, 6))
    x[:, 5] = 1.0  # constant feature: its std becomes 1, not 0
    np.savez(
        tmp_path / "f.npz",
        x=x,
        y=rng.integers(0, 3, 40).astype(np.float64),
        x_test=rng.normal(size=(7, 6)),
        y_test=np.array([0, 1, 2, 3, 0, 1, 2]),
    )
    ds = data.load_dataset("npz", root=tmp_path / "f.npz", val_size=0)
    assert ds.input_shape == (6,) and ds.train.x.dtype == torch.float32
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 0, 7)
    assert ds.num_classes == 4 and len(ds.mean) == 6 and ds.std[5] == 1.0
    xb, _ = next(data.batches(ds.train, 40, mean=ds.mean, std=ds.std))
    torch.testing.assert_close(xb[:, :5].mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(xb[:, :5].std(0, correction=0), torch.ones(5), atol=1e-5, rtol=0)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((10, 3)))
    with pytest.raises(OnebitError, match="lacks") as exc:
        data.load_dataset("npz", path=str(tmp_path / "nolabels.npz"), val_size=1)
    assert "y" in assert_one_sentence(exc)
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((10, 3)), y=np.zeros(9, np.int64))
    with pytest.raises(OnebitError, match="10 examples but y has 9") as exc:
        data.load_dataset("npz", path=str(tmp_path / "mismatch.npz"), val_size=1)
    assert_one_sentence(exc)
    np.savez(tmp_path / "half.npz", x=np.zeros((10, 3)), y=np.zeros(10), x_test=np.zeros((2, 3)))
    with pytest.raises(OnebitError, match="x_test and y_test") as exc:
        data.load_dataset("npz", path=str(tmp_path / "half.npz"), val_size=1)
    assert_one_sentence(exc)
    with pytest.raises(OnebitError, match="needs a file"):
        data.load_dataset("npz")
    with pytest.raises(OnebitError, match="not a file"):
        data.load_dataset("npz", path=str(tmp_path / "absent.npz"))


# --------------------------------------------------------------------------------------------------
# find_root
# --------------------------------------------------------------------------------------------------


def test_find_root_env_and_explicit(tmp_path: Path, monkeypatch) -> None:
    make_idx_dataset(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("ONEBIT_DATA", str(tmp_path / "env"))
    assert data.find_root("fashion-mnist") == tmp_path / "env" / "fashion-mnist"
    make_idx_dataset(tmp_path / "explicit")  # a root that directly holds the files counts
    assert data.find_root("fashion-mnist", tmp_path / "explicit") == tmp_path / "explicit"
    # ./data and the user cache are searched too
    make_idx_dataset(tmp_path / "cwd" / "data" / "mnist")
    assert data.find_root("mnist") == Path.cwd() / "data" / "mnist"


def test_find_root_cache_and_system_dirs(tmp_path: Path, monkeypatch) -> None:
    write_cifar_binary(tmp_path / "xdg" / "onebit" / "data" / "cifar-10-batches-bin")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    found = data.find_root("cifar10")
    assert found == tmp_path / "xdg" / "onebit" / "data" / "cifar-10-batches-bin"
    make_idx_dataset(tmp_path / "usr-share-datasets" / "fashion-mnist")  # like Debian's package
    monkeypatch.setattr(data.find, "SYSTEM_DATA_DIRS", (tmp_path / "usr-share-datasets",))
    found = data.find_root("fashion-mnist")
    assert found == tmp_path / "usr-share-datasets" / "fashion-mnist"


def test_find_root_nothing_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ONEBIT_DATA", str(tmp_path / "envroot"))
    with pytest.raises(OnebitError) as exc:
        data.find_root("fashion-mnist", tmp_path / "given")
    msg = assert_one_sentence(exc)
    for place in (
        tmp_path / "given",
        tmp_path / "envroot" / "fashion-mnist",
        Path.cwd() / "data",
        tmp_path / "home" / ".cache" / "onebit" / "data",
    ):
        assert str(place) in msg
    assert "ONEBIT_DATA" in msg and "--data-root" in msg
    assert "onebit data download fashion-mnist" in msg and "apt-get install" in msg
    with pytest.raises(OnebitError) as exc:
        data.find_root("cifar10")
    assert "cifar-10-batches-bin" in str(exc.value) and "cifar10-jpeg" in str(exc.value)


# --------------------------------------------------------------------------------------------------
# batches and augmentation
# --------------------------------------------------------------------------------------------------


def _image_split(n: int = 23, c: int = 3, hw: int = 4) -> data.Split:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    return data.Split(x, torch.arange(n))


def test_batches_cover_every_example_once() -> None:
    split = _image_split()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    g = torch.Generator().manual_seed(0)
    got = list(data.batches(split, 5, mean=mean, std=std, shuffle=True, generator=g))
    assert len(got) == data.num_batches(23, 5, False) == 5
    assert [len(y) for _, y in got] == [5, 5, 5, 5, 3]
    ys = torch.cat([y for _, y in got])
    assert sorted(ys.tolist()) == list(range(23)) and ys.tolist() != list(range(23))
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in got)
    dropped = list(data.batches(split, 5, mean=mean, std=std, drop_last=True))
    assert len(dropped) == data.num_batches(23, 5, True) == 4


def test_batches_normalization() -> None:
    split = _image_split()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x, y = next(data.batches(split, 23, mean=mean, std=std))
    ref = (split.x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, ref)
    assert torch.equal(y, split.y)
    floats = data.Split(torch.randn(6, 2), torch.zeros(6, dtype=torch.int64))
    xf, _ = next(data.batches(floats, 6, mean=(1.0,), std=(2.0,)))
    torch.testing.assert_close(xf, (floats.x - 1) / 2)
    xc, _ = next(data.batches(split, 4, mean=mean, std=std, channels_last=True))
    assert xc.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(OnebitError, match="channel"):
        next(data.batches(split, 4, mean=(0.1, 0.2), std=std))


@pytest.mark.parametrize("augment", [False, True])
def test_batches_shards_match_single_process(augment: bool) -> None:
    split = _image_split(n=21)
    kw = dict(mean=(0.5,), std=(0.25,), shuffle=True, augment=augment)
    single = list(data.batches(split, 6, generator=torch.Generator().manual_seed(7), **kw))
    shards = [
        list(
            data.batches(
                split, 6, generator=torch.Generator().manual_seed(7), rank=r, world_size=2, **kw
            )
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for step, (xs, ys) in enumerate(single):
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), ys)
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), xs)
    assert [len(b[1]) for b in shards[0]] == [3, 3, 3, 1]  # last global batch of 3 cut 1 + 2


def test_batches_same_seed_same_order_and_bad_args() -> None:
    split = _image_split()

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        it = data.batches(split, 4, mean=(0.0,), std=(1.0,), shuffle=True, generator=g)
        return torch.cat([y for _, y in it]).tolist()

    assert order(3) == order(3) and order(3) != order(4)
    with pytest.raises(OnebitError, match="divisible") as exc:
        next(data.batches(split, 5, mean=(0.0,), std=(1.0,), world_size=2))
    assert_one_sentence(exc)
    with pytest.raises(OnebitError, match="rank"):
        next(data.batches(split, 4, mean=(0.0,), std=(1.0,), rank=2, world_size=2))
    with pytest.raises(OnebitError, match="batch"):
        next(data.batches(split, 0, mean=(0.0,), std=(1.0,)))


def test_random_crop_flip() -> None:
    split = _image_split(n=64, c=2, hw=6)
    x = split.x
    out = data.random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # every output is a window of the zero-padded (possibly flipped) input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        windows = [
            src[:, r : r + 6, c : c + 6]
            for src in (padded[i], padded[i].flip(-1))
            for r in range(5)
            for c in range(5)
        ]
        assert any(torch.equal(out[i], w) for w in windows)

    flat = data.random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(1))
    same = (flat == x).flatten(1).all(1)
    flipped = (flat == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert same.any() and flipped.any()  # both happen among 64 examples
    again = data.random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(flat, again)


def test_split_length_mismatch() -> None:
    with pytest.raises(OnebitError, match="labels"):
        data.Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))


def test_normalize_false_feeds_x_over_255(tmp_path: Path) -> None:
    """data.normalize = false: the run's inputs are x / 255 in [0, 1], and the run stores 0/1."""
    from onebit.experiments.config import Config
    from onebit.experiments.runs import load_data

    make_idx_dataset(tmp_path / "mnist")
    cfg = Config.from_dict(
        {"data": {"name": "mnist", "root": str(tmp_path), "val_size": 10, "normalize": False}}
    )
    ds = load_data(cfg)
    assert ds.mean == (0.0,) and ds.std == (1.0,)
    x, _ = next(data.batches(ds.train, 40, shuffle=False, mean=ds.mean, std=ds.std))
    np.testing.assert_allclose(x.numpy(), ds.train.x.numpy() / 255.0, rtol=1e-6)
    assert data.load_dataset("mnist", root=tmp_path, val_size=10).mean != (0.0,)
