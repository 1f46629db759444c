"""Character-level text: a UTF-8 file (gzipped or not) cut into sequences of token ids."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import Dataset, PathLike, Split
from onebit.errors import OnebitError

_TEXT_FILES = ("input.txt.gz", "input.txt")  # a text corpus folder holds one of these
_TEXT_CUTS = (0.8, 0.9)  # train / validation / test = 80 / 10 / 10 % of the text, by position


def read_text(path: PathLike) -> str:
    """Read a UTF-8 text file, gunzipping it when its name ends in ``.gz``.

    Raises:
        OnebitError: When the file is missing, unreadable or not UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise OnebitError(f"{p} is not a file; pass the path of an existing text file.")
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                return fh.read().decode("utf-8")
        return p.read_bytes().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise OnebitError(f"Could not read {p} as UTF-8 text ({exc}); pass a text file.") from exc


def char_dataset(text: str, seq_len: int = 100, *, name: str = "text", source: str = "") -> Dataset:
    """Cut a text into a character-level language-modelling dataset.

    The vocabulary is the sorted set of the text's characters (token id = rank, kept in
    ``Dataset.classes``). The text is split by position into train / validation / test = the first
    80 %, the next 10 % and the last 10 % (LAB's split), and each part into consecutive,
    non-overlapping sequences: with ``t`` the part's token ids, example ``k`` is
    ``x_k = t[kT : kT + T]`` and its targets ``y_k = t[kT + 1 : kT + T + 1]`` (the next
    character at every position; ``T = seq_len``). A part's last ``< T + 1`` characters are
    dropped. Every sequence is an independent example (a model starts it from a zero state).

    Args:
        text: The corpus.
        seq_len: ``T``, the sequence length.
        name: The dataset's name.
        source: Where the text came from, for records and logs.

    Returns:
        The dataset: ``x`` and ``y`` int64 ``(N, T)``, ``num_classes`` the vocabulary size,
        ``input_shape = (T,)`` (``mean``/``std`` are 0/1 and unused: token ids are not normalized).

    Raises:
        OnebitError: When ``seq_len < 1`` or a split would hold no sequence.
    """
    if seq_len < 1:
        raise OnebitError(f"seq_len is {seq_len}; pass a positive sequence length.")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab, ids_np = np.unique(codes, return_inverse=True)
    ids = torch.from_numpy(ids_np.astype(np.int64).reshape(-1))
    n = len(ids)
    cuts = [0, *(int(n * c) for c in _TEXT_CUTS), n]
    splits = []
    for lo, hi in itertools.pairwise(cuts):
        count = (hi - lo - 1) // seq_len
        if count < 1:
            raise OnebitError(
                f"{source or 'The text'} holds {n} characters, too few for 80/10/10 splits of "
                f"sequences of {seq_len}; use a longer text or a shorter seq_len."
            )
        part = ids[lo:hi]
        x = part[: count * seq_len].view(count, seq_len)  # views: x and y share the text
        y = part[1 : count * seq_len + 1].view(count, seq_len)
        splits.append(Split(x, y))
    train, val, test = splits
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(vocab),
        input_shape=(seq_len,),
        mean=(0.0,),
        std=(1.0,),
        classes=tuple(chr(c) for c in vocab),
        source=source,
    )
