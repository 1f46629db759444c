"""PNG plots of a comparison: accuracy curves, latent-weight histograms, flip rates, sensitivity.

Each function takes plain data (lists and arrays, not run folders: :mod:`onebit.experiments.report` reads those)
and a path, writes one PNG atomically (a temporary name, then rename) and returns the path, or
None when there is nothing to draw. matplotlib is imported inside the functions, and only its
object-oriented API is used (a ``Figure`` rendered by the Agg canvas, no ``pyplot``), so importing
onebit stays light and no global backend is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onebit.fileio import atomic_write

__all__ = [
    "method_colors",
    "plot_curves",
    "plot_flips",
    "plot_sensitivity",
    "plot_weight_histograms",
]

Curves = Mapping[str, Sequence[Sequence[float]]]
"""Per method, one sequence per seed of a value per epoch."""


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, lambda tmp: fig.savefig(tmp, format="png"), fsync=False)


def _band(ax: Any, name: str, runs: Sequence[Sequence[float]], color: Any) -> None:
    """Mean over the runs as a line, min–max as a band (runs cut to the shortest)."""
    n = min(len(r) for r in runs)
    if n == 0:
        return
    a = np.array([list(r)[:n] for r in runs], dtype=float)  # (seeds, epochs)
    epochs = np.arange(1, n + 1)
    label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
    ax.plot(epochs, a.mean(0), color=color, label=label, marker="o" if n < 20 else None, ms=3)
    if len(runs) > 1:
        ax.fill_between(epochs, a.min(0), a.max(0), color=color, alpha=0.2, linewidth=0)


def method_colors(names: Sequence[str]) -> dict[str, Any]:
    """One ``tab10`` color per name, in order: pass the same mapping to every plot of a report so
    a method keeps its color across plots."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _colors(names: Sequence[str], given: Mapping[str, Any] | None) -> dict[str, Any]:
    if given is not None and all(n in given for n in names):
        return dict(given)
    return method_colors(names)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plot_curves(
    curves: Curves,
    path: str | Path,
    ylabel: str = "",
    title: str = "",
    log_y: bool = False,
    colors: Mapping[str, Any] | None = None,
) -> Path | None:
    """One line per method (mean over seeds) with a min–max band, against the epoch (1-based).

    Args:
        curves: per method, per seed, the value per epoch.
        path: the PNG to write.
        ylabel: the y-axis label.
        title: the title.
        log_y: logarithmic y axis (values <= 0 are not drawn).
        colors: a color per method (default: :func:`method_colors` of the methods given).

    Returns:
        ``path``, or None when no method has a value.
    """
    curves = {k: [r for r in v if len(r)] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    palette = _colors(list(curves), colors)
    for name, runs in curves.items():
        _band(ax, name, runs, palette[name])
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_flips(
    flip_rate: Curves,
    near_zero: Curves,
    path: str | Path,
    colors: Mapping[str, Any] | None = None,
) -> Path | None:
    """Two panels against the epoch: the fraction of binary weights whose sign flipped during the
    epoch, and the fraction of latent weights with ``|w| < 1e-3`` (mean over seeds, min–max band).

    Returns:
        ``path``, or None when neither is logged (runs from before the diagnostics, or methods
        without binary layers).
    """
    flip_rate = {k: [r for r in v if len(r)] for k, v in flip_rate.items()}
    flip_rate = {k: v for k, v in flip_rate.items() if v}
    near_zero = {k: [r for r in v if len(r)] for k, v in near_zero.items()}
    near_zero = {k: v for k, v in near_zero.items() if v}
    if not flip_rate and not near_zero:
        return None
    fig = _figure(11, 4.2)
    palette = _colors(list(dict.fromkeys([*flip_rate, *near_zero])), colors)
    panels = [
        (flip_rate, "fraction of binary weights flipped", "sign flips per epoch"),
        (near_zero, "fraction of latent |w| < 1e-3", "latent weights near zero"),
    ]
    for i, (curves, ylabel, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, runs in curves.items():
            _band(ax, name, runs, palette[name])
        values = [x for runs in curves.values() for r in runs for x in r]
        if values and min(values) > 0:
            ax.set_yscale("log")
        _epoch_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize="small")
    return _save(fig, path)


def plot_weight_histograms(
    weights: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    bins: int = 100,
    colors: Mapping[str, Any] | None = None,
) -> Path | None:
    """One panel per binary layer, one density histogram per method of its latent weights.

    Args:
        weights: per method, per layer name, the latent weights (any shape; flattened).
        path: the PNG to write.
        bins: histogram bins per panel (shared by the methods of a panel).
        colors: a color per method.

    Returns:
        ``path``, or None when no method has a binary layer.
    """
    layers = list(dict.fromkeys(n for per in weights.values() for n in per))
    if not layers:
        return None
    cols = min(3, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig = _figure(4.2 * cols, 3.2 * rows)
    palette = _colors(list(weights), colors)
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(rows, cols, i + 1)
        present = {m: np.ravel(per[layer]) for m, per in weights.items() if layer in per}
        pooled = np.concatenate(list(present.values()))
        lo, hi = np.percentile(pooled, [0.1, 99.9]) if pooled.size else (-1.0, 1.0)
        if lo == hi:
            lo, hi = lo - 1.0, hi + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        for method, w in present.items():
            ax.hist(
                np.clip(w, lo, hi),
                bins=edges,
                density=True,
                histtype="step",
                color=palette[method],
                label=method,
            )
        ax.set_title(layer, fontsize="medium")
        ax.set_xlabel("latent weight w")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("latent-weight distribution per binary layer at the end of training")
    return _save(fig, path)


def plot_sensitivity(
    sensitivity: Mapping[str, Sequence[tuple[str, Sequence[float]]]],
    path: str | Path,
    colors: Mapping[str, Any] | None = None,
) -> Path | None:
    """Grouped bars: per layer, the validation accuracy of each method's sensitivity probe.

    Args:
        sensitivity: per method, ``(layer name, [val_acc per seed])`` in layer order; the bar is
            the mean over seeds, the error bar the min–max.
        path: the PNG to write.
        colors: a color per method.

    Returns:
        ``path``, or None when no method has a sensitivity file.
    """
    sensitivity = {m: list(v) for m, v in sensitivity.items() if v}
    if not sensitivity:
        return None
    layers = list(dict.fromkeys(name for v in sensitivity.values() for name, _ in v))
    x = np.arange(len(layers))
    width = 0.8 / len(sensitivity)
    fig = _figure(max(6.0, 0.6 * len(layers) * len(sensitivity) + 2), 4.5)
    ax = fig.add_subplot()
    palette = _colors(list(sensitivity), colors)
    lows, highs = [], []
    for i, (method, pairs) in enumerate(sensitivity.items()):
        by_layer = dict(pairs)
        idx = [j for j, n in enumerate(layers) if n in by_layer]
        accs = [np.asarray(by_layer[layers[j]], dtype=float) for j in idx]
        lows += [a.min() for a in accs]
        highs += [a.max() for a in accs]
        mean = np.array([a.mean() for a in accs])
        err = np.array([[m - a.min() for a, m in zip(accs, mean, strict=True)],
                        [a.max() - m for a, m in zip(accs, mean, strict=True)]])  # fmt: skip
        ax.bar(
            x[idx] + (i - (len(sensitivity) - 1) / 2) * width,
            mean,
            width,
            yerr=err if any(len(a) > 1 for a in accs) else None,
            color=palette[method],
            label=method,
        )
    # accuracies of probes differ by little: zoom on their range (the axis says where it starts)
    lo, hi = min(lows), max(highs)
    pad = max(0.25 * (hi - lo), 0.002)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1 else hi + pad)
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("validation accuracy")
    ax.set_title("per-layer sensitivity")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return _save(fig, path)
