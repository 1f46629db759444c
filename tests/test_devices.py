"""Devices: ``train.device`` resolves (or says in one sentence why not), batches and their
augmentation come from tensors on the device and match the CPU's, and every method, its
optimizer state, the schedules and the LSTM train there, resuming exactly.

Tests taking ``device`` run on the CPU and, where torch sees a GPU, on CUDA (marked ``gpu``;
``benchmarks/gpu_check.sh`` runs ``-m gpu``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from onebit import binarize_
from onebit.data import Dataset, Split, batches, char_dataset, random_crop_flip
from onebit.devices import dist_backend, resolve_device, to_device
from onebit.errors import OnebitError
from onebit.experiments.config import Config
from onebit.methods import METHODS, BinaryConnect
from onebit.models import build
from onebit.schedules import Ranking, schedulable_layers, write_ranking
from onebit.training import TrainConfig, TrainStep, evaluate, train
from tests.conftest import devices, tiny_dataset
from tests.test_training import KilledAt

DEVICES = devices()


def _fake_gpus(monkeypatch, count: int) -> None:
    """Pretend torch sees ``count`` GPUs (0: none), for the resolution rules alone."""
    monkeypatch.setattr("onebit.devices._cuda_available", lambda: count > 0)
    monkeypatch.setattr("onebit.devices._mps_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_prefers_cuda_then_the_cpu(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    # under torchrun each process takes the GPU of its LOCAL_RANK
    assert resolve_device("auto", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1, world_size=2) == torch.device("cpu")
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")


def test_device_errors_are_one_sentence(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(OnebitError) as e:
        resolve_device("cuda")
    assert str(e.value) == (
        "train.device = 'cuda' but torch.cuda.is_available() is False; use 'cpu' or 'auto'."
    )
    with pytest.raises(OnebitError, match=r"'mps' but torch\.backends\.mps\.is_available\(\)"):
        resolve_device("mps")
    for bad in ("gpu", "cuda:x", "CUDA", "", 0):
        with pytest.raises(OnebitError, match=r"train\.device = .* is not accepted; give one of"):
            resolve_device(bad)
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(OnebitError, match=r"asks for GPU 2 but this machine has 2 \(0 to 1\)"):
        resolve_device("cuda:2")
    with pytest.raises(OnebitError, match=r"LOCAL_RANK 3 asks for GPU 3"):
        resolve_device("cuda", local_rank=3, world_size=4)
    with pytest.raises(OnebitError, match=r"under torchrun: each process takes the GPU"):
        resolve_device("cuda:0", local_rank=0, world_size=2)


def test_a_config_checks_the_device_spelling_but_not_the_machine(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert Config.from_dict({"train": {"device": "cuda:3"}}).train.device == "cuda:3"
    with pytest.raises(OnebitError, match=r"train\.device = 'gpu' is not accepted"):
        Config.from_dict({"train": {"device": "gpu"}})


def test_a_run_on_a_missing_gpu_stops_before_writing(monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, 0)
    model = build("mlp", (16,), 4, hidden=[8])
    with pytest.raises(OnebitError, match=r"torch\.cuda\.is_available\(\) is False"):
        train(model, METHODS["fp"](), tiny_dataset(shape=(16,)), TrainConfig(device="cuda"),
              run_dir=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_processes_on_gpus_use_nccl_others_gloo():
    assert dist_backend(torch.device("cuda", 1)) == "nccl"
    assert dist_backend(torch.device("cpu")) == "gloo"


def _images(n: int = 70, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return Split(x, torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("device", DEVICES)
def test_batches_come_from_the_device_and_match_the_cpu(device):
    """Shuffled, augmented batches of a split on the device are on the device and equal, bit for
    bit on the CPU (to float rounding on a GPU), those of the same split on the CPU: the order and
    augmentation are drawn by the CPU generator, for every rank of a 2-process run."""
    split = _images()
    on_dev = Split(split.x.to(device), split.y.to(device))
    kw = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), shuffle=True, augment=True)
    for rank in (0, 1):
        cpu = list(batches(split, 32, generator=torch.Generator().manual_seed(3), rank=rank,
                           world_size=2, **kw))  # fmt: skip
        dev = list(batches(on_dev, 32, generator=torch.Generator().manual_seed(3), rank=rank,
                           world_size=2, channels_last=True, **kw))  # fmt: skip
        assert len(cpu) == len(dev) == 3
        for (xc, yc), (xd, yd) in zip(cpu, dev, strict=True):
            assert xd.device.type == yd.device.type == device
            assert xd.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(yd.cpu(), yc)
            # the same pixels (a wrong crop or flip moves values by ~0.1 or more)
            torch.testing.assert_close(xd.cpu(), xc, rtol=0, atol=1e-6)


def test_batch_augmentation_draws_what_random_crop_flip_draws_per_batch():
    """The epoch's crops and flips, drawn up front, are the numbers a per-batch
    :func:`random_crop_flip` draws from the same generator after the order (so runs repeat
    what earlier versions of onebit drew)."""
    split = _images()
    got = list(batches(split, 32, mean=(0.0,), std=(1.0,), shuffle=True, augment=True,
                       generator=torch.Generator().manual_seed(7)))  # fmt: skip
    g = torch.Generator().manual_seed(7)
    order = torch.randperm(len(split), generator=g)
    for b, (x, y) in enumerate(got):
        idx = order[b * 32 : (b + 1) * 32]
        want = random_crop_flip(split.x[idx], 4, generator=g).float() / 255
        assert torch.equal(x, want) and torch.equal(y, split.y[idx])


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_moves_a_copy(device):
    data = tiny_dataset()
    moved = to_device(data, torch.device(device))
    assert {moved.train.x.device.type, moved.val.y.device.type, moved.test.x.device.type} == {
        device
    }
    assert data.train.x.device.type == "cpu"  # the caller's dataset is unchanged
    assert to_device(moved, torch.device(device)) is moved


def _method(name: str, tmp_path) -> object:
    """The registry's method ``name``; sensitivity orders get a ranking file of the test net."""
    method = METHODS[name]()
    if method.pretrain == "sensitivity":
        model = _cnn(method)
        ranks = tuple((n, 0.5 + 0.1 * i) for i, n in enumerate(schedulable_layers(model)))
        path = write_ranking(tmp_path / "ranking.json", Ranking(ranks, 1))
        method = dataclasses.replace(method, ranking=str(path))
    return method


def _cnn(method):
    torch.manual_seed(0)
    model = build(
        "small_cnn", (1, 8, 8), 4, channels=(8,), hidden=16, act=method.hidden_activation()
    )
    binarize_(model, method)
    return model


class _Spy:
    """Records the device of everything a training step touches: the batch, the parameters and
    buffers, every tensor of the optimizer's state, what the step returns."""

    def __init__(self, monkeypatch) -> None:
        self.seen: set[torch.device] = set()
        self.steps = 0
        real = TrainStep.__call__

        def spy(train_step, x, y, lr, **kw):
            out = real(train_step, x, y, lr, **kw)
            self.steps += 1
            self.seen |= {x.device, y.device, *(t.device for t in out)}
            self.seen |= {
                t.device for t in [*train_step.model.parameters(), *train_step.model.buffers()]
            }
            for state in train_step.opt.state.values():
                self.seen |= {t.device for t in state.values() if torch.is_tensor(t)}
            return out

        monkeypatch.setattr(TrainStep, "__call__", spy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_on_the_device(name, device, monkeypatch, tmp_path):
    """Through :func:`train` with ``train.device``: everything a step touches is on the device
    (LAB's accumulator, BiTAT's transform, layer schedules included), the epochs record it, and
    the model comes back to the CPU it started on."""
    method = _method(name, tmp_path)
    model = _cnn(method)
    data = tiny_dataset(shape=(1, 8, 8), classes=4, n_train=64)
    spy = _Spy(monkeypatch)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, schedule="onecycle", warmup=0.3,
                      device=device)  # fmt: skip
    history = train(model, method, data, cfg)
    want = resolve_device(device)
    assert spy.steps == 4 and spy.seen == {want}
    assert [r["device"] for r in history.epochs] == [str(want)] * 2
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history.epochs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["fp", "bc", "lab"])
def test_the_lstm_trains_on_the_device(name, device, monkeypatch):
    text = "the quick brown fox jumps over the lazy dog; " * 40
    data = char_dataset(text, seq_len=16)
    torch.manual_seed(0)
    model = build("lstm_lm", data.input_shape, data.num_classes, hidden=16)
    method = METHODS[name]()
    binarize_(model, method)
    spy = _Spy(monkeypatch)
    history = train(model, method, data, TrainConfig(epochs=2, batch_size=32, device=device))
    assert spy.seen == {resolve_device(device)}
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert "test_bpc" in history.last


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_copies_batches_of_a_split_held_elsewhere(device):
    """``evaluate`` runs on the model's device, also for a split left on the CPU."""
    data = tiny_dataset(shape=(16,))
    torch.manual_seed(0)
    model = build("mlp", (16,), 4, hidden=[8])
    want = evaluate(model, data.test, data)
    model.to(device)
    got = evaluate(model, data.test, data)
    assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-5)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build("mlp", (16,), 4, hidden=[32, 32], dropout=0.2)
    binarize_(model, BinaryConnect(stochastic=True))
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_the_device_equals_an_uninterrupted_run(device, tmp_path):
    """Stochastic binarization and dropout draw from the device's generator: a resumed run
    restores it and ends where an uninterrupted one ends."""
    data: Dataset = tiny_dataset(shape=(16,), n_train=128)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, schedule="onecycle", device=device)
    method = BinaryConnect(stochastic=True)
    model_a = _mlp()
    hist_a = train(model_a, method, data, cfg, run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(_mlp(), KilledAt(stochastic=True), data, cfg, run_dir=tmp_path / "b")
    torch.manual_seed(999)
    if device == "cuda":
        torch.cuda.manual_seed(999)
    model_c = _mlp(seed=5)
    hist_c = train(model_c, method, data, cfg, run_dir=tmp_path / "b", resume=True)
    for (k, va), vc in zip(
        model_a.state_dict().items(), model_c.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vc), k
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h.epochs]  # noqa: E731
    assert strip(hist_a) == strip(hist_c)
