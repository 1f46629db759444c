"""A binarizable LSTM and the character-level language model of LAB's recurrent experiments.

One LSTM layer with input size ``D`` and ``H`` units maps a sequence ``x_1..x_T`` to ``h_1..h_T``
(PyTorch's gate order ``i, f, g, o``; ``σ`` the logistic sigmoid, ``⊙`` the elementwise product)::

    i_t = σ(W_ii x_t + b_i + W_hi h_{t-1})        f_t = σ(W_if x_t + b_f + W_hf h_{t-1})
    g_t = tanh(W_ig x_t + b_g + W_hg h_{t-1})     o_t = σ(W_io x_t + b_o + W_ho h_{t-1})
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t               h_t = o_t ⊙ tanh(c_t)

from the zero state ``h_0 = c_0 = 0``. Each of the eight matrices (``W_i*``: ``H x D``
input-to-gate, ``W_h*``: ``H x H`` hidden-to-gate) is its own ``nn.Linear`` (``ih_i``, ``ih_f``,
``ih_g``, ``ih_o``, ``hh_i``, ..., ``hh_o``), so :func:`onebit.binarize_` turns each into a
``BinaryLinear`` with its own scale: ``W -> alpha_W q(W)`` (and, for LAB, its own second-moment
accumulator), as LAB binarizes recurrent nets (docs/methods.md#recurrent). The biases (on the ``ih_*``
layers; the ``hh_*`` layers have none) stay float.

Speed: the eight forward weights are computed once per call (per sequence batch), not per time
step; the input projections ``W_i x_t + b`` of all ``T`` steps are one matrix product (a gather of
columns for one-hot input); each step is then one ``(N, H) x (H, 4H)`` product with the
concatenated hidden-to-gate weights, followed by the elementwise gate updates.

Activation binarizers (LAB2, BNN) are not supported inside the LSTM: its forward pass only reads
the gate layers' weights, so a method that binarizes activations raises instead of silently
leaving them real.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.convert import LayerPolicy
from onebit.errors import OnebitError
from onebit.layers import is_binary_layer

__all__ = ["GATES", "CharLSTM", "LSTMLayer", "lstm_lm"]

GATES: tuple[str, ...] = ("i", "f", "g", "o")
"""Gate order of the concatenated weights, PyTorch's (``nn.LSTM``'s ``weight_ih_l0`` rows)."""


def _forward_weight(m: nn.Linear) -> Tensor:
    """The weight a layer's forward pass uses: ``alpha * q(w)`` when binarized, else ``w``."""
    if not is_binary_layer(m):
        return m.weight
    if m.act is not None and m.binary:
        raise OnebitError(
            "the LSTM does not binarize activations; use a weight-only method (fp, bc, bwn, lab, ...)."
        )
    return m.forward_weight()


class LSTMLayer(nn.Module):
    """One LSTM layer whose eight gate matrices are separate (separately binarizable) layers.

    Args:
        input_size: ``D``, the input width (the vocabulary size for one-hot token input).
        hidden_size: ``H``, the number of units.
        one_hot: the input is token ids ``(T, N)`` standing for one-hot vectors of width ``D``:
            ``W_i x_t`` is then column ``x_t`` of ``W_i``, taken by a gather instead of a product.

    Initialization as ``nn.LSTM``: every weight and bias uniform in ``[-1/sqrt(H), 1/sqrt(H)]``.
    """

    def __init__(self, input_size: int, hidden_size: int, one_hot: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.one_hot = input_size, hidden_size, one_hot
        for gate in GATES:  # registration order: ih_i, ih_f, ih_g, ih_o, hh_i, ..., hh_o
            setattr(self, f"ih_{gate}", nn.Linear(input_size, hidden_size, bias=True))
        for gate in GATES:
            setattr(self, f"hh_{gate}", nn.Linear(hidden_size, hidden_size, bias=False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(H), 1/sqrt(H))`` for all weights and biases, as ``nn.LSTM``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def gate_layers(self, kind: str) -> list[nn.Linear]:
        """The four ``ih`` (input-to-gate) or ``hh`` (hidden-to-gate) layers, in gate order."""
        return [getattr(self, f"{kind}_{gate}") for gate in GATES]

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The forward weights, each gate's computed once: ``(W_ih (4H, D), W_hh (4H, H), b (4H,))``.

        Rows are stacked in gate order ``i, f, g, o``, the layout of ``nn.LSTM``'s
        ``weight_ih_l0`` / ``weight_hh_l0`` (autograd splits the gradient back to each gate).
        """
        ih, hh = self.gate_layers("ih"), self.gate_layers("hh")
        w_ih = torch.cat([_forward_weight(m) for m in ih])
        w_hh = torch.cat([_forward_weight(m) for m in hh])
        bias = torch.cat([m.bias for m in ih])
        return w_ih, w_hh, bias

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Run the layer over a batch of sequences, time-major (as ``nn.LSTM`` by default).

        Args:
            x: ``(T, N, D)`` inputs, or ``(T, N)`` token ids when ``one_hot``.
            state: initial ``(h_0, c_0)``, each ``(N, H)``; default zeros.

        Returns:
            The hidden states ``h_1..h_T``, ``(T, N, H)``.
        """
        w_ih, w_hh, bias = self.weights()
        if self.one_hot:
            # one_hot(x) @ W_ih^T + b is column x of W_ih: a gather, exact and ~D times cheaper
            xp = F.embedding(x, w_ih.t().contiguous()) + bias  # (T, N, 4H)
        else:
            xp = F.linear(x, w_ih, bias)  # (T, N, 4H)
        if state is None:
            h = xp.new_zeros(xp.shape[1], self.hidden_size)
            c = xp.new_zeros(xp.shape[1], self.hidden_size)
        else:
            h, c = state
        w_hh_t = w_hh.t()  # (H, 4H)
        outs = []
        # unbind (backward: one stack) rather than xp[t] (backward: T zero-filled (T, N, 4H))
        for xp_t in xp.unbind(0):
            i, f, g, o = torch.addmm(xp_t, h, w_hh_t).chunk(4, 1)  # each (N, H)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)

    def extra_repr(self) -> str:
        one_hot = ", one_hot=True" if self.one_hot else ""
        return f"{self.input_size}, {self.hidden_size}{one_hot}"


class CharLSTM(nn.Module):
    """Character-level language model: one-hot characters -> LSTM layers -> float linear readout.

    For token ids ``x`` of shape ``(N, T)`` it returns logits ``(N, V, T)`` (class dimension 1,
    PyTorch's layout for cross-entropy over sequences), the logits at ``t`` predicting
    ``x_{t+1}``. Every sequence starts from the zero state (no state is carried between batches).

    Only the LSTM's gate matrices are binarized: the model's layer policy keeps the output layer
    float and opts out of the first/last-layer policy, so :func:`onebit.binarize_` binarizes every
    gate matrix and keeps the readout float whatever the method, as in LAB.
    """

    def __init__(self, vocab: int, hidden: int = 512, layers: int = 1) -> None:
        super().__init__()
        if vocab < 1 or hidden < 1 or layers < 1:
            raise OnebitError(
                f"lstm_lm needs a vocabulary, hidden size and layer count of at least 1; got "
                f"vocab={vocab}, hidden={hidden}, layers={layers}."
            )
        self.vocab = vocab
        self.lstm = nn.ModuleList(
            LSTMLayer(vocab if k == 0 else hidden, hidden, one_hot=k == 0) for k in range(layers)
        )
        self.out = nn.Linear(hidden, vocab)

    def onebit_layer_policy(self) -> LayerPolicy:
        """Every gate matrix binary, the readout float, no first/last rule."""
        return LayerPolicy(keep_float=frozenset({"out"}), first_last=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, V, T)`` for token ids ``x`` ``(N, T)`` (floats holding ids are accepted)."""
        h = x.long().t()  # (T, N): the layers run time-major
        for layer in self.lstm:
            h = layer(h)  # (T, N, H)
        return self.out(h.transpose(0, 1)).transpose(1, 2)  # (N, T, V) -> (N, V, T)


def lstm_lm(
    in_shape: Sequence[int] = (100,),
    num_classes: int = 97,
    hidden: int = 512,
    layers: int = 1,
) -> CharLSTM:
    """LAB's character LSTM: one-hot input, ``layers`` LSTM layers of ``hidden`` units, float readout.

    ``in_shape`` is ``(T,)`` (the sequence length; any length runs), ``num_classes`` the vocabulary
    size. Default: 1 layer of 512 units, LAB's char-level recipe.
    """
    if len(in_shape) != 1:
        raise OnebitError(
            f"lstm_lm takes token sequences of shape (T,), got examples of shape {tuple(in_shape)}; "
            "use a text dataset such as linux-kernel."
        )
    return CharLSTM(num_classes, hidden, layers)
