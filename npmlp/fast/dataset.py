"""build_dataset's vectorised twin (fast tier): the same rows as data.build_dataset, the lecture's
loop, without a Python step per character; tests hold the two equal.

Legend: W words, N rows, T block_size, V vocab size.
"""
from __future__ import annotations

import numpy as np

from ..data import DataError, Vocab


def build_dataset(words, vocab: Vocab, block_size: int = 3):
    """X (N, T), Y (N,) equal to data.build_dataset's. Each word is laid out as T zeros, its
    characters and a closing '.', all words end to end in one array, and the rows are sliding
    windows over it."""
    T = int(block_size)
    if T < 1:
        raise DataError(f"block_size must be >= 1, got {block_size}")
    dtype = vocab.index_dtype()
    lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))  # (W,)
    if len(words) == 0:
        return np.zeros((0, T), dtype), np.zeros((0,), dtype)
    # every character of every word, encoded in one pass through a lookup table
    codes = np.frombuffer("".join(words).encode("utf-32-le"), dtype=np.uint32)  # (sum lens,)
    keys = np.array([ord(c) for c in vocab.itos], dtype=np.uint32)               # (V,)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], codes).clip(0, len(keys) - 1)
    if codes.size and not np.array_equal(keys[order][pos], codes):
        bad = sorted({chr(c) for c in codes[keys[order][pos] != codes]})
        raise DataError(f"characters {''.join(bad)!r} are not in the model's vocabulary")
    ids = order[pos].astype(dtype)                                                # (sum lens,)

    span = lens + T + 1                            # (W,) each word's slot: T pads, chars, '.'
    start = np.concatenate([[0], np.cumsum(span)[:-1]])                          # (W,)
    flat = np.zeros(int(span.sum()), dtype)                                      # pads and '.' are 0
    char_start = np.repeat(start + T - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    flat[char_start + np.arange(ids.size)] = ids
    # a row for every char and the closing '.': window starting at slot start + p, p = 0..len
    row_start = np.repeat(start, lens + 1) + (np.arange(int((lens + 1).sum()))
                                               - np.repeat(np.cumsum(lens + 1) - (lens + 1), lens + 1))
    windows = np.lib.stride_tricks.sliding_window_view(flat, T + 1)              # (L-T, T+1)
    rows = windows[row_start]                                                    # (N, T+1)
    return np.ascontiguousarray(rows[:, :T]), np.ascontiguousarray(rows[:, T])
