"""binarize_ on layer types and models onebit did not write: what the forward pass really uses,
the data-flow first/last policy, dead binary activations, and training what such models return."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import onebit
from onebit.data import char_dataset
from onebit.errors import OnebitError
from onebit.layers import BinaryMultiheadAttention, BinaryTransposedLinear, is_binary_layer
from onebit.methods import METHODS, BinaryConnect, XNORNet
from onebit.models import build
from onebit.quantizers import ThresholdSign, sign
from onebit.training import TrainConfig, train


def _signed_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: sign(v) if v.dim() >= 2 else v for k, v in model.state_dict().items()}


def test_multihead_attention_really_runs_binary_weights():
    """nn.MultiheadAttention reads in_proj_weight and out_proj.weight itself (and the encoder
    layer's fused fast path reads every weight): the binarized encoder must compute with sign(w),
    in training and in eval under no_grad, where torch would otherwise take its fast path."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    ref = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 16)
    report = onebit.binarize_(layer, BinaryConnect(), example_inputs=(x,))
    assert isinstance(layer.self_attn, BinaryMultiheadAttention)
    assert {"self_attn", "linear1", "linear2"} <= set(report.binary)
    assert is_binary_layer(layer.self_attn.out_proj)
    ref.load_state_dict(_signed_copy(layer))
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        getattr(ref, mode)()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)


def test_hugging_face_conv1d_is_a_transposed_linear_layer():
    model = build("hf", (8,), 20, arch="gpt2", config={"n_layer": 1, "n_embd": 16, "n_head": 2})
    x = torch.randint(0, 20, (2, 8))
    report = onebit.binarize_(model, BinaryConnect(), example_inputs=(x,))
    c_attn = model.transformer.h[0].attn.c_attn
    assert (
        isinstance(c_attn, BinaryTransposedLinear)
        and "transformer.h.0.attn.c_attn" in report.binary
    )
    assert c_attn.weight.shape == (16, 48)  # the Hugging Face layout and state-dict keys remain
    h = torch.randn(2, 8, 16)
    c_attn.eval()
    torch.testing.assert_close(c_attn(h), h @ sign(c_attn.weight) + c_attn.bias)
    # the head is tied to the token embedding: kept float, and said why
    head = next(r for r in report.layers if r.name == "lm_head")
    assert not head.binary and "tied" in head.reason


def test_first_and_last_layers_follow_the_data_not_the_registration_order():
    class Reordered(nn.Module):  # registers its head first and its input layer last
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.middle = nn.Linear(8, 8)
            self.stem = nn.Linear(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.middle(torch.tanh(self.stem(x)))))

    model = Reordered()
    report = onebit.binarize_(model, XNORNet(), example_inputs=(torch.randn(2, 4),))
    assert report.binary == ["middle"]
    why = {r.name: r.reason for r in report.layers}
    assert why["stem"].startswith("reads the network input")
    assert why["head"].startswith("writes the network output")
    # without an example input the policy falls back to registration order, and says so
    fallback = onebit.binarize_(Reordered(), XNORNet())
    assert fallback.binary == ["middle"] and "registration order" in fallback.flow


def test_bert_keeps_all_three_projections_of_its_first_block_float_under_xnor():
    model = build("hf", (8,), 4, arch="bert", task="sequence-classification",
                  config={"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                          "intermediate_size": 32, "vocab_size": 30})  # fmt: skip
    report = onebit.binarize_(model, XNORNet(), example_inputs=(torch.randint(0, 30, (2, 8)),))
    first = {r.name.rsplit(".", 1)[-1] for r in report.layers if "network input" in r.reason}
    assert first == {"query", "key", "value"}


def _relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def test_a_sign_after_relu_gets_a_threshold_by_default():
    model = _relu_mlp()
    x = torch.randn(8, 6)
    report = onebit.binarize_(model, METHODS["bnn"](), example_inputs=(x,))
    assert isinstance(model[2].act, ThresholdSign) and isinstance(model[4].act, ThresholdSign)
    assert any("sign(x - tau)" in c for c in report.changes)
    model.eval()
    with torch.no_grad():
        hidden = model[1](model[0](x))
        bits = hidden - model[2].act.shift(hidden) >= 0
    assert bits.any() and not bits.all()  # the threshold splits the signs
    out = model(torch.randn(8, 6))
    assert out.std(0).max() > 1e-6
    assert "tau" in "".join(model.state_dict())  # thresholds are saved (and pack) like weights


def test_hardtanh_option_replaces_the_producer_and_error_option_refuses():
    model = _relu_mlp()
    report = onebit.binarize_(model, METHODS["bnn"](), example_inputs=(torch.randn(8, 6),),
                              activations="hardtanh")  # fmt: skip
    assert isinstance(model[1], nn.Hardtanh) and isinstance(model[3], nn.Hardtanh)
    assert sum("replaced" in c for c in report.changes) == 2
    with pytest.raises(OnebitError, match=r"binary layer '2' \(made by 1 \(ReLU\)\)"):
        onebit.binarize_(_relu_mlp(), METHODS["bnn"](), example_inputs=(torch.randn(8, 6),),
                         activations="error")  # fmt: skip
    with pytest.raises(OnebitError, match="activations = 'maybe' is not accepted"):
        onebit.binarize_(_relu_mlp(), BinaryConnect(), activations="maybe")


def test_unsupported_layers_are_reported_not_skipped_silently():
    model = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8), nn.ConvTranspose2d(2, 2, 3))
    report = onebit.binarize_(model, BinaryConnect())
    kinds = {r.kind: r for r in report.layers}
    assert kinds["Linear"].binary
    assert not kinds["LSTM"].binary and "unsupported" in kinds["LSTM"].reason
    assert not kinds["ConvTranspose2d"].binary


def test_train_takes_model_outputs_integer_inputs_and_token_targets():
    """A Hugging Face causal LM returns a ModelOutput with (N, T, V) logits for integer input ids;
    onebit.train scores it per token, as the character LSTM."""
    data = char_dataset("abcdefgh" * 200, seq_len=16)
    model = build("hf", (16,), data.num_classes, arch="gpt2",
                  config={"n_layer": 1, "n_embd": 16, "n_head": 2})  # fmt: skip
    method = METHODS["lab"]()
    onebit.binarize_(model, method, example_inputs=(data.train.x[:2],))
    h = train(model, method, data, TrainConfig(epochs=2, batch_size=16, lr=3e-3, gemm="torch"))
    assert h.last["train_loss"] < h.epochs[0]["train_loss"]
    assert "test_bpc" in h.last and h.last["test_acc"] > 1 / data.num_classes
