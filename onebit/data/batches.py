"""Batching and augmentation: normalized (and per-rank sharded) batches of a split, and
CIFAR-style random crop and flip."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from onebit.data.datasets import Split
from onebit.errors import OnebitError


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Return the number of (global) batches :func:`batches` yields for ``n`` examples."""
    if batch_size <= 0:
        raise OnebitError(f"batch_size is {batch_size}; pass a positive batch size.")
    return n // batch_size if drop_last else -(-n // batch_size)


def _crop_flip_params(
    n: int, pad: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # drawn where the generator lives (the CPU for a CPU generator): the same numbers whatever
    # device the images are on
    device = generator.device if generator is not None else None
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    return offsets[0], offsets[1], flips


def _epoch_crop_flip_params(
    sizes: Sequence[int], pad: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The crop offsets and flips of every batch of an epoch (batch sizes ``sizes``), drawn in
    the order per-batch draws would take them and moved to ``device`` in one copy, so that a
    batch on a GPU needs nothing from the host."""
    drawn = [_crop_flip_params(size, pad, generator) for size in sizes]
    dy, dx, flip = (torch.cat([d[i] for d in drawn]).to(device) for i in range(3))
    return dy, dx, flip


def _apply_crop_flip(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)  # no-ops in batches()
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # (N, W)
    # one flat index per output pixel into the padded image, shared by all channels
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w)
    out = padded.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w))
    return out.view(n, c, h, w)


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop and horizontally flip every image of a batch (CIFAR-style augmentation).

    Each image is zero-padded by ``pad`` on every side, cropped back to its size at a random
    offset, and mirrored left-right with probability 0.5. Vectorized over the batch.

    Args:
        x: Images ``(N, C, H, W)`` of any dtype.
        pad: Padding in pixels.
        generator: Random generator, for reproducible results.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    if x.dim() != 4:
        raise OnebitError(
            f"random_crop_flip needs images of shape (N, C, H, W), got {tuple(x.shape)}; "
            "turn augmentation off for flat data."
        )
    if pad < 0:
        raise OnebitError(f"pad is {pad}; pass 0 or a positive number of pixels.")
    dy, dx, flip = _crop_flip_params(x.shape[0], pad, generator)
    return _apply_crop_flip(x, pad, dy, dx, flip)


def batches(
    split: Split,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over a split in normalized float32 batches.

    Inputs become ``((x / 255 if uint8 else x) - mean) / std`` per channel; integer inputs other
    than uint8 are token ids and come out unchanged (int64; ``mean``/``std`` unused). For data-parallel
    training every global batch of ``batch_size`` examples is cut into ``world_size`` contiguous
    shards and this rank gets shard ``rank``; all ranks must pass generators seeded alike so they
    agree on the order (and the augmentation, which is drawn for the whole global batch). A last
    partial global batch is cut as evenly as possible, so its shards may differ in size by one.

    Args:
        split: The data.
        batch_size: Global batch size (over all ranks).
        mean: Per-channel mean (one value, or one per channel / feature).
        std: Per-channel standard deviation.
        shuffle: Visit examples in a random permutation drawn from ``generator``.
        generator: Random generator for the order and augmentation.
        augment: Apply :func:`random_crop_flip` (pad 4) to image batches.
        rank: This process's rank.
        world_size: Number of data-parallel processes.
        drop_last: Drop the last global batch when it is smaller than ``batch_size``.
        channels_last: Return 4-D inputs in channels-last memory format.

    Batches are sliced from the split's tensors on their device (a split moved to a GPU gives
    GPU batches with no copy from the host per step); ``generator`` may live on the CPU.

    Yields:
        ``(x, y)`` with ``x`` float32 (int64 for token ids) and ``y`` int64.

    Raises:
        OnebitError: On a bad batch size, rank or world size, or mean/std of the wrong length.
    """
    n_batches = num_batches(len(split), batch_size, drop_last)
    if world_size < 1 or not 0 <= rank < world_size:
        raise OnebitError(
            f"rank={rank} and world_size={world_size} are inconsistent; "
            "pass world_size >= 1 and 0 <= rank < world_size."
        )
    if batch_size % world_size:
        raise OnebitError(
            f"batch_size={batch_size} is not divisible by world_size={world_size}; "
            "pass a batch size that is a multiple of the number of processes."
        )
    if shuffle and world_size > 1 and generator is None:
        raise OnebitError(
            "Shuffling across several processes needs a generator; pass one seeded the same "
            "on every rank."
        )
    x_all, y_all = split.x, split.y
    tokens = not x_all.dtype.is_floating_point and x_all.dtype != torch.uint8  # text: token ids
    channels = x_all.shape[1] if x_all.dim() > 1 and not tokens else 1
    shape = [1, -1] + [1] * max(0, x_all.dim() - 2)
    mean_t = torch.as_tensor(tuple(mean), dtype=torch.float32)
    std_t = torch.as_tensor(tuple(std), dtype=torch.float32)
    for what, t in (("mean", mean_t), ("std", std_t)):
        if t.numel() not in (1, channels):
            raise OnebitError(
                f"{what} has {t.numel()} values but the data has {channels} channels; "
                f"pass one {what} per channel."
            )
    if x_all.dtype == torch.uint8:  # fold the /255 into the constants
        mean_t, std_t = mean_t * 255.0, std_t * 255.0
    mean_t, std_t = mean_t.view(shape), std_t.view(shape)
    if augment and x_all.dim() != 4:
        raise OnebitError(
            f"augment needs image data (N, C, H, W) but the data is {tuple(x_all.shape)}; "
            "turn augmentation off."
        )

    n, device = len(split), x_all.device
    mean_t, std_t = mean_t.to(device), std_t.to(device)
    # the order and the augmentation are drawn on the generator's device (so a run draws the same
    # numbers on any device) and moved to the data's device once per epoch, not once per batch
    gen_device = generator.device if generator is not None else None
    order = torch.randperm(n, generator=generator, device=gen_device) if shuffle else None
    order = order.to(device) if order is not None else torch.arange(n, device=device)
    sizes = [min(batch_size, n - b * batch_size) for b in range(n_batches)]
    params = _epoch_crop_flip_params(sizes, 4, generator, device) if augment else None
    for b in range(n_batches):
        start = b * batch_size
        idx = order[start : start + batch_size]
        size = sizes[b]
        bounds = [size * r // world_size for r in range(world_size + 1)]
        lo, hi = bounds[rank], bounds[rank + 1]
        shard = idx[lo:hi]
        x = x_all[shard]
        if params is not None:
            dy, dx, flip = (p[start + lo : start + hi] for p in params)
            x = _apply_crop_flip(x, 4, dy, dx, flip)
        if not tokens:
            x = x.to(torch.float32).sub_(mean_t).div_(std_t)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y_all[shard]
