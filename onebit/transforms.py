"""Weight parametrizations of binarized layers: BiTAT's decorrelating transform, OUR
RECONSTRUCTION (Park et al. 2022, arXiv 2207.01394; docs/methods.md#bitat [recon]).

:class:`BitatTransform` is a :class:`onebit.layers.WeightParametrization`. Per binarized layer, with the weight flattened to ``W`` of shape
``(out, d)`` (a conv's ``d = in/groups * kh * kw``, in torch's order) and ``x`` the layer's input
patches of dimension ``d`` (what one output unit multiplies with its ``d`` weights):

- ``C = E[x x^T]`` (uncentered), estimated on training batches from the input the weight actually
  sees (binarized when the layer binarizes its input), patches of every group pooled;
- ``C = U diag(lambda) U^T`` with ``lambda`` descending and ``U`` orthonormal (the eigenbasis);
- the latent weight is reparametrized as ``W = (V * s) U^T``: ``V`` (out, d) is the latent in the
  decorrelated basis and ``s`` (d,) a learned importance per basis direction, both trained; ``s``
  starts at ``sqrt(lambda / mean(lambda))`` (the square roots of the eigenvalues, normalized to
  unit mean square so the overall step size matches plain training);
- every ``refresh_every`` steps ``U`` is re-estimated from the last ``stats_batches`` batches and
  ``V`` re-expressed in the new basis, ``V' = (W U') / s``, so ``W`` is unchanged by a refresh
  (``U'`` is orthonormal: ``(V' * s) U'^T = W U' U'^T = W``); ``s`` keeps its learned values, one
  per eigenvalue rank.

Gradients reach ``V`` and ``s`` by autograd through ``W``: ``dL/dV = (G U) * s`` and
``dL/ds = sum_o (G U * V)_o`` with ``G = dL/dW`` (the quantizer's straight-through gradient). The
layer's plain ``weight`` is kept equal to ``W`` after every optimizer step (``step_``), so
evaluation, checkpoints' ``weight`` entries, packing and export see an ordinary binary layer; the
transform's own tensors are training state only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.layers import WeightParametrization, is_binary_layer
from onebit.shapes import conv_output_size

__all__ = [
    "BitatTransform",
    "attach_",
    "eigenbasis",
    "importance_init",
    "input_patches",
    "reexpress",
    "transforms",
]

S_MIN = 1e-3  # |s| floor at a refresh (V = W U / s must stay finite)
EIG_FLOOR = 1e-4  # eigenvalues below this fraction of their mean count as this fraction


def eigenbasis(c: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and orthonormal eigenvectors (columns) of the symmetric ``c``.

    Computed in float64 (orthonormal to ~1e-15 before the cast back to ``c``'s dtype).
    """
    c64 = c.detach().double()
    evals, evecs = torch.linalg.eigh((c64 + c64.T) / 2)
    idx = torch.argsort(evals, descending=True)
    return evals[idx].to(c.dtype), evecs[:, idx].to(c.dtype)


def importance_init(evals: Tensor) -> Tensor:
    """``s = sqrt(lambda / mean(lambda))``, eigenvalues floored at ``1e-4 * mean``."""
    lam = evals.double().clamp_min(0)
    mean = lam.mean().clamp_min(1e-30)
    lam = lam.clamp_min(EIG_FLOOR * mean)
    return (lam / mean).sqrt().to(evals.dtype)


def reexpress(w2: Tensor, u: Tensor, s: Tensor) -> Tensor:
    """``V = (W U) / s``: the latent that gives ``W = (V * s) U^T`` in basis ``U`` (float64 math)."""
    v = (w2.double() @ u.double()) / s.double()
    return v.to(w2.dtype)


def input_patches(layer: nn.Module, x: Tensor, max_rows: int) -> Tensor:
    """The input vectors ``(n, d)`` one output unit of ``layer`` sees, at most ``max_rows`` of them.

    Linear: the rows of ``x``. Conv2d: the ``in/groups * kh * kw`` patches of every position and
    group (``F.unfold``, a few examples of the batch), evenly subsampled (no RNG is consumed).
    """
    x = x.detach()
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        d = layer.in_channels // g * layer.kernel_size[0] * layer.kernel_size[1]
        h, w = x.shape[-2:]
        kh, kw = layer.kernel_size
        (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation  # type: ignore[misc]
        positions = conv_output_size(h, kh, sh, ph, dh) * conv_output_size(w, kw, sw, pw, dw)
        b = min(x.shape[0], max(1, math.ceil(4 * max_rows / (g * positions))))
        cols = F.unfold(
            x[:b].contiguous(), layer.kernel_size, layer.dilation, layer.padding, layer.stride
        )  # (b, in * kh * kw, L)
        rows = cols.view(b, g, d, -1).permute(0, 1, 3, 2).reshape(-1, d)
    else:
        rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n > max_rows:
        rows = rows[torch.linspace(0, n - 1, max_rows, device=rows.device).round().long()]
    return rows


class BitatTransform(WeightParametrization):
    """The reparametrization ``W = (V * s) U^T`` of one layer's weight, with its statistics.

    Parameters: ``v`` (out, d) and ``s`` (d,). Buffers: ``basis`` ``U`` (d, d), the running sums
    ``corr`` (sum of ``x x^T``) and ``count``, ``steps`` (optimizer steps seen) and ``refreshes``.
    Refresh times are a pure function of ``steps``: the first after ``stats_batches`` steps, then
    every ``refresh_every`` steps, each from the ``stats_batches`` batches just before it.
    """

    def __init__(
        self,
        weight: Tensor,
        refresh_every: int = 200,
        stats_batches: int = 10,
        max_rows: int = 2048,
    ) -> None:
        super().__init__()
        out = weight.shape[0]
        d = weight[0].numel()
        self.shape = tuple(weight.shape)
        self.refresh_every = max(1, refresh_every)
        self.stats_batches = max(1, stats_batches)
        self.max_rows = max_rows
        kw: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        self.v = nn.Parameter(weight.detach().reshape(out, d).clone())
        self.s = nn.Parameter(torch.ones(d, **kw))
        self.register_buffer("basis", torch.eye(d, **kw))
        self.register_buffer("corr", torch.zeros(d, d, device=weight.device, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64, device=weight.device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=weight.device))
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.long, device=weight.device))

    def forward(self) -> Tensor:
        """``W = (V * s) U^T`` in the weight's shape."""
        return ((self.v * self.s) @ self.basis.T).view(self.shape)

    def is_refresh_step(self, t: int) -> bool:
        """Whether the basis is refreshed after optimizer step ``t`` (1-based)."""
        b, r = self.stats_batches, self.refresh_every
        return t == b or (t > b and (t - b) % r == 0)

    def collecting(self, t: int) -> bool:
        """Whether step ``t`` (1-based) contributes to the statistics of the next refresh."""
        b, r = self.stats_batches, self.refresh_every
        nxt = b if t <= b else b + r * math.ceil((t - b) / r)
        return nxt - t < b

    @torch.no_grad()
    def observe(self, layer: nn.Module, x: Tensor) -> None:
        """Add the input batch ``x`` of ``layer`` to the correlation sums, when collecting."""
        if not self.collecting(int(self.steps) + 1):
            return
        rows = input_patches(layer, x, self.max_rows).double()
        self.corr.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    @torch.no_grad()
    def reset_(self, weight: Tensor) -> None:
        """Set ``V`` so that ``W`` equals ``weight`` in the current basis (after loading weights)."""
        self.v.copy_(reexpress(weight.reshape(self.v.shape), self.basis, self.s))

    @torch.no_grad()
    def refresh_(self, weight: Tensor, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Re-estimate ``U`` from the collected statistics, keep ``W`` (= ``weight``) unchanged.

        The first refresh also initializes ``s`` from the eigenvalues. The optimizer's moments of
        ``V`` (coordinates of the old basis) are dropped when ``optimizer`` is given. Returns False
        when no statistics were collected.
        """
        if float(self.count) == 0:
            return False
        evals, u = eigenbasis(self.corr / self.count)
        if int(self.refreshes) == 0:
            s = importance_init(evals)
        else:
            s = self.s.detach()
            s = torch.where(s < 0, -1.0, 1.0).to(s.dtype) * s.abs().clamp_min(S_MIN)
        w2 = weight.detach().reshape(self.v.shape)
        self.basis.copy_(u.to(self.basis.dtype))
        self.s.copy_(s)
        self.v.copy_(reexpress(w2, self.basis, self.s))
        self.corr.zero_()
        self.count.zero_()
        self.refreshes += 1
        if optimizer is not None:
            optimizer.state.pop(self.v, None)
        return True

    @torch.no_grad()
    def step_(self, weight: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After an optimizer step: count it, refresh when due, and write ``W`` into ``weight``."""
        self.steps += 1
        if self.is_refresh_step(int(self.steps)):
            self.refresh_(self().detach(), optimizer)
        weight.copy_(self())

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, refresh_every={self.refresh_every}, "
            f"stats_batches={self.stats_batches}"
        )


def attach_(
    layer: nn.Module, refresh_every: int = 200, stats_batches: int = 10, max_rows: int = 2048
) -> BitatTransform:
    """Give a binarized layer a :class:`BitatTransform` as its parametrization (identity at
    first: ``U = I``, ``s = 1``, ``V = W``); its plain ``weight`` then stops being trained directly."""
    t = BitatTransform(layer.weight, refresh_every, stats_batches, max_rows)
    layer.parametrize_(t)
    return t


def transforms(model: nn.Module) -> Iterator[tuple[nn.Module, BitatTransform]]:
    """``(layer, transform)`` for every layer of ``model`` that carries a BiTAT transform."""
    for m in model.modules():
        t = m.parametrization if is_binary_layer(m) else None
        if isinstance(t, BitatTransform):
            yield m, t
