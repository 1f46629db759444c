"""The fast CIFAR-10 recipe's pieces: the one-cycle schedule, label smoothing, their checks, and
configs/cifar_resnet20_fast.toml itself (it loads, says what it is, and its recipe trains)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from onebit.data import Dataset, Split
from onebit.errors import OnebitError
from onebit.experiments.config import load_config
from onebit.methods import METHODS
from onebit.models import build
from onebit.training import TrainConfig, check_recipe, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
FAST = ROOT / "configs" / "cifar_resnet20_fast.toml"


def test_one_cycle_rises_then_falls_linearly_per_step():
    cfg = TrainConfig(epochs=10, lr=0.2, schedule="onecycle", warmup=0.2, lr_final=0.0)
    assert lr_at(0, cfg) == pytest.approx(0.02)  # starts at lr / 10
    assert lr_at(1, cfg) == pytest.approx(0.02 + 0.18 * 0.5)  # halfway up at t = 0.1
    assert lr_at(2, cfg) == pytest.approx(0.2)  # the peak at t = warmup
    assert lr_at(6, cfg) == pytest.approx(0.1)  # halfway down at t = 0.6
    assert lr_at(9, cfg, 1.0) == pytest.approx(0.0, abs=1e-12)  # lr_final at the end
    assert lr_at(4, cfg, 0.5) == pytest.approx(0.2 * (1 - 2.5 / 8))  # within an epoch
    no_warmup = TrainConfig(epochs=4, lr=0.1, schedule="onecycle", lr_final=0.01)
    assert [lr_at(e, no_warmup) for e in range(4)] == pytest.approx(
        [0.1, 0.1 - 0.09 / 4, 0.1 - 0.09 / 2, 0.1 - 0.09 * 3 / 4]
    )


def test_one_cycle_sets_the_rate_at_every_step(monkeypatch):
    seen: list[float] = []
    real = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    data = _cifar_like(n=128)
    torch.manual_seed(0)
    model = build("small_cnn", (3, 32, 32), 10, channels=(4,), hidden=8)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.1, schedule="onecycle",
                      warmup=0.25, device="cpu")  # fmt: skip
    train(model, METHODS["fp"](), data, cfg)
    want = [lr_at(e, cfg, i / 4) for e in range(2) for i in range(4)]
    assert seen == pytest.approx(want)
    assert max(seen) == pytest.approx(0.1) and seen[0] == pytest.approx(0.01)


def test_label_smoothing_is_the_training_loss_only(monkeypatch):
    """The step's loss is the smoothed cross-entropy; evaluation reports the plain one."""
    from onebit import training

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([0])
    smooth = training._train_loss(TrainConfig(label_smoothing=0.1))(logits, y)
    # (1 - 0.1) * CE + 0.1 * mean over classes of -log p
    logp = F.log_softmax(logits, 1)
    assert smooth.item() == pytest.approx((0.9 * -logp[0, 0] - 0.1 * logp.mean()).item())
    assert training._train_loss(TrainConfig())(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item()
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup": 1.0}, r"train\.warmup = 1\.0 is not accepted; give a finite fraction"),
        ({"warmup": -0.1}, r"train\.warmup = -0\.1"),
        ({"label_smoothing": 1.0}, r"train\.label_smoothing = 1\.0 is not accepted"),
        ({"label_smoothing": math.nan}, r"train\.label_smoothing = nan"),
        ({"label_smoothing": 0.1, "loss": "hinge"}, r"give 0 with train\.loss = 'hinge'"),
    ],
)
def test_bad_recipe_values_are_one_sentence(changes, message):
    with pytest.raises(OnebitError, match=message):
        check_recipe(TrainConfig(**changes))


def test_the_fast_config_is_the_recipe_it_says():
    cfg = load_config(FAST)
    t = cfg.train
    assert (cfg.data.name, cfg.model.name, cfg.method.name) == ("cifar10", "resnet20", "fp")
    assert (t.optimizer, t.nesterov, t.schedule, t.precision) == ("sgd", True, "onecycle", "bf16")
    assert 0 < t.warmup < 0.5 and t.label_smoothing > 0 and t.weight_decay > 0
    assert t.channels_last and not t.compile
    assert cfg.data.augment is None  # the dataset's default: crop + flip for CIFAR
    # binary methods take the same recipe (the config's method table fits them)
    assert load_config(FAST, ["method.name=bc"]).method.name == "bc"


def _cifar_like(n: int = 256) -> Dataset:
    g = torch.Generator().manual_seed(0)
    proto = torch.randint(0, 256, (10, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    noise = torch.randint(-30, 31, (n, 3, 32, 32), generator=g)
    x = (proto[y].int() + noise).clamp(0, 255).to(torch.uint8)
    split = Split(x, y)
    return Dataset("cifar10", split, Split(x[:64], y[:64]), Split(x[:64], y[:64]), 10,
                   (3, 32, 32), (0.5,) * 3, (0.25,) * 3, augment=True)  # fmt: skip


def test_the_fast_recipe_runs_resnet20_through_train():
    """The config's [train] table as it is (SGD, one cycle, label smoothing, channels_last) at 2
    short epochs and fp32 (any CPU) on CIFAR-shaped uint8 images with crop + flip: every epoch
    trains with finite losses at the schedule's rates. (Whether the recipe reaches 90% is a
    question for a full run, not for a test.)"""
    cfg = load_config(FAST, ["train.epochs=2", "train.precision=fp32", "train.batch_size=64"])
    data = _cifar_like(n=128)
    torch.manual_seed(0)
    model = build("resnet20", (3, 32, 32), 10)
    history = train(model, METHODS["fp"](), data, cfg.train)
    assert [r["precision"] for r in history.epochs] == ["fp32", "fp32"]
    assert all(
        math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in history.epochs
    )
    assert history.last["lr"] == pytest.approx(lr_at(1, cfg.train, 1 / 2))  # the last step's rate


def test_he_init_and_zero_init_residual_make_blocks_start_as_the_identity():
    torch.manual_seed(0)
    net = build("resnet20", (3, 32, 32), 10, init="he", zero_init_residual=True)
    conv = net.layers[4].conv1  # 32 -> 32 channels, 3x3: fan-out 32 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)
    assert all(not b.bn2.weight.detach().any() for b in net.layers)
    net.eval()
    block = net.layers[1]  # stride 1, same width: relu(0 * ... + x) = x for x >= 0
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(block(x), x)
    plain = build("resnet20", (3, 32, 32), 10)
    assert float(plain.layers[1].bn2.weight.detach().sum()) == 16  # off by default
    with pytest.raises(OnebitError, match="unknown init 'lecun'"):
        build("resnet20", (3, 32, 32), 10, init="lecun")


def test_decay_norm_false_leaves_one_dimensional_parameters_undecayed():
    from onebit.training import make_optimizer

    net = build("resnet20", (3, 32, 32), 10)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.01, decay_norm=False)
    opt = make_optimizer(net, cfg)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == sum(1 for _ in net.parameters())
    for p in net.parameters():
        assert decay[id(p)] == (0.01 if p.dim() > 1 else 0.0)
    # one SGD step with a zero gradient: decayed weights shrink, BN scales stay
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    before = net.bn1.weight.clone(), net.conv1.weight.clone()
    opt.step()
    assert torch.equal(net.bn1.weight, before[0])
    assert torch.allclose(net.conv1.weight, before[1] * (1 - 0.1 * 0.01))
    kept = make_optimizer(net, TrainConfig(optimizer="sgd", weight_decay=0.01))
    assert [g["weight_decay"] for g in kept.param_groups] == [0.01]  # the default decays all
