"""Pack, run and export models onebit did not write: pytorchcv CNNs and Hugging Face transformers
(from small configs, no weights), each under BinaryConnect and XNOR-Net, after training steps.

For each: ``onebit.pack`` -> ``save`` -> ``onebit.load`` in a subprocess in which torch cannot
be imported; ``onebit.pack_`` (packed layers inside torch); ``onebit.export_onnx`` run by
onnxruntime. Each output is compared with the torch eval model on a test batch.

The tolerance, stated once (:func:`_assert_close`): logits within ``max(1e-4, 3 * noise)`` of
the largest logit, and argmax agreement at least torch's own, where ``noise`` and torch's own
agreement are measured on the model itself: torch's outputs with random noise of 1e-6 of the
input's standard deviation added (for token models to the embedding output: ids cannot be
nudged) and with its sums in another order (1 vs 2 threads). A well-conditioned net has noise ~1e-6, so the bound is 1e-4 and argmax
agreement 100%; a binary-activation net can flip the sign of a value that lies within float
rounding of its threshold (a near-zero GELU output, a ReLU output at a threshold of ~0), and
then its bound is its own measured sensitivity.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import onebit
from onebit.layers import is_binary_layer
from onebit.methods import METHODS
from onebit.probe import first_tensor
from onebit.training import model_logits
from tests.test_own_models import ARCHS, _batch

PACK_ARCHS = ["resnet20", "preresnet20", "seresnet20", "densenet40_k12", "mobilenetv2_wd4",
              "shufflenetv2_wd2", "gpt2", "bert", "vit"]  # fmt: skip

_NO_TORCH_RUN = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
import onebit
m = onebit.load(sys.argv[1])
np.save(sys.argv[3], m(np.load(sys.argv[2])))
assert sys.modules["torch"] is None
"""


def _trained(arch: str, method: str) -> tuple[nn.Module, torch.Tensor]:
    """The model binarized, after 3 training steps, with BatchNorm statistics of real batches
    (as training leaves them), in eval mode; and an example input."""
    torch.manual_seed(0)
    model = ARCHS[arch]()
    x, y = _batch(arch)
    onebit.binarize_(model, METHODS[method](), example_inputs=(x[:2],))
    m = METHODS[method]()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model_logits(model(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(model, 3e-3, optimizer=opt)
    bns = [b for b in model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over the batches below
    with torch.no_grad():
        for seed in (1, 2):
            model(_batch(arch, n=16, seed=seed)[0])
    return model.eval(), x


def _nudged_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Torch's outputs when the input (or, for token ids, the embedding output) gets random
    noise of 1e-6 of its standard deviation (three draws), and when torch sums in another order
    (1 and 2 threads): how much the model itself moves under float rounding."""
    outs = []
    threads = torch.get_num_threads()
    for t in (1, 2):
        torch.set_num_threads(t)
        try:
            with torch.no_grad():
                outs.append(first_tensor(model(x)).numpy())
        finally:
            torch.set_num_threads(threads)
    for k in (1, 2, 3):
        g = torch.Generator().manual_seed(k)

        def nudge(v: torch.Tensor, g: torch.Generator = g) -> torch.Tensor:
            return v + 1e-6 * v.std() * torch.randn(v.shape, generator=g)

        hooks = []
        if x.is_floating_point():
            xi = nudge(x)
        else:
            xi = x
            emb = next(mod for mod in model.modules() if isinstance(mod, nn.Embedding))
            hooks.append(emb.register_forward_hook(lambda mod, a, out: nudge(out)))
        with torch.no_grad():
            outs.append(first_tensor(model(xi)).numpy())
        for h in hooks:
            h.remove()
    return outs


def _assert_close(what: str, out: np.ndarray, ref: np.ndarray, nudged: list[np.ndarray]) -> None:
    """The module doc's tolerance."""
    scale = float(np.abs(ref).max())
    noise = max(float(np.abs(n - ref).max()) for n in nudged) / scale
    own = min(float(np.mean(n.argmax(-1) == ref.argmax(-1))) for n in nudged)
    err = float(np.abs(out - ref).max()) / scale
    agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    assert out.shape == ref.shape, what
    assert err <= max(1e-4, 3 * noise), f"{what}: rel. error {err:.2e}, own noise {noise:.2e}"
    assert agree >= own, f"{what}: argmax agreement {agree:.3f} < torch's own {own:.3f}"


@pytest.mark.parametrize("method", ["bc", "xnor"])
@pytest.mark.parametrize("arch", PACK_ARCHS)
def test_outside_models_pack_load_without_torch_pack_in_place_and_export(arch, method, tmp_path):
    model, x = _trained(arch, method)
    xt, _ = _batch(arch, n=8, seed=5)  # the test batch
    with torch.no_grad():
        ref = first_tensor(model(xt)).numpy()
    nudged = _nudged_outputs(model, xt)
    assert np.abs(ref).max() > 0 and ref.std(0).max() > 1e-6  # outputs depend on the input

    # the file: packed, saved, loaded and run where torch cannot be imported
    packed = onebit.pack(model, (x,))
    path = packed.save(tmp_path / "model.onebit")
    np.save(tmp_path / "x.npy", xt.numpy())
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_RUN, str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    _assert_close("file", np.load(tmp_path / "y.npy"), ref, nudged)
    # 1 bit per binary weight (rows padded to 64 bits), and those weights stored only as bits
    rows = [(m.weight.shape[m.OUT_AXIS], m.weight.numel() // m.weight.shape[m.OUT_AXIS])
            for m in model.modules() if is_binary_layer(m) and m.binary]  # fmt: skip
    bits = sum(v.nbytes for v in packed.tensors.values() if v.dtype == np.uint64)
    assert bits == sum(n * -(-k // 64) * 8 for n, k in rows)
    floats = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    binary_fp32 = sum(4 * n * k for n, k in rows)
    assert sum(v.nbytes for v in packed.tensors.values()) < floats - 0.9 * binary_fp32 + bits

    # packed in place, inside torch; its safetensors state round-trips
    inplace = onebit.pack_(copy.deepcopy(model))
    assert not any(p.dim() >= 2 for n, p in inplace.named_parameters() if "bits" in n)
    with torch.no_grad():
        out = first_tensor(inplace(xt)).numpy()
    _assert_close("pack_", out, ref, nudged)
    onebit.save_packed(inplace, str(tmp_path / "packed.safetensors"))
    again = onebit.load_packed_(
        onebit.pack_(copy.deepcopy(model)), str(tmp_path / "packed.safetensors")
    )
    with torch.no_grad():
        np.testing.assert_array_equal(first_tensor(again(xt)).numpy(), out)

    # ONNX, integer inputs for token models, checked by onnxruntime
    onnx_path = onebit.export_onnx(model, tmp_path / "model.onnx", (x,))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert ("int64" in inp.type) == (not xt.is_floating_point())
    _assert_close("onnx", sess.run(None, {inp.name: xt.numpy()})[0], ref, nudged)


class _WithMask(nn.Module):
    """``model(input_ids=..., attention_mask=...)``, positionally (GPT-2's second positional
    input is its key/value cache, so a user packs it through such a wrapper)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model(input_ids=ids, attention_mask=attention_mask))


@pytest.mark.parametrize("method", ["bc", "xnor"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_transformers_pack_with_their_attention_mask_and_padded_examples(arch, method, tmp_path):
    """A Hugging Face BERT / GPT-2 packed with ``attention_mask`` as a second input: the runtime
    reads the mask as HF builds it (an index over the batch and the positions) and gives padded
    examples (right and left padding) what torch gives them, from the file, and with the batch
    run in slices of one example."""
    trained, x = _trained(arch, method)
    model = _WithMask(trained).eval()
    xt, _ = _batch(arch, n=8, seed=5)
    mask = torch.ones_like(xt)
    for row, length in ((1, 10), (3, 4), (6, 1)):
        mask[row, length:] = 0  # right padding
    mask[5, :3] = 0  # left padding
    with torch.no_grad():
        ref = model(xt, mask).numpy()
        unmasked = model(xt, torch.ones_like(mask)).numpy()
    assert np.abs(ref - unmasked).max() > 1e-3 * np.abs(ref).max()  # the mask matters
    packed = onebit.pack(model, (x, torch.ones_like(x)))
    assert packed.input["extra"][0]["name"] == "attention_mask"
    loaded = onebit.load(packed.save(tmp_path / "model.onebit"))
    scale = np.abs(ref).max()
    for m in (packed, loaded):
        out = m(xt.numpy(), attention_mask=mask.numpy())
        assert np.abs(out - ref).max() <= 1e-4 * scale
    loaded.slice_bytes = 1  # one example per slice: the mask is sliced with the ids
    out = loaded(xt.numpy(), attention_mask=mask.numpy())
    assert np.abs(out - ref).max() <= 1e-4 * scale
