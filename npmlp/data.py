"""Data, as the lecture builds it: words -> Vocab -> (X, Y) rows -> train/dev/test split.

Legend: N rows, T block_size (context length), V vocab size.
build_dataset is the lecture's loop; npmlp/fast/dataset.py builds the same rows vectorised.
Finding, downloading and reading names.txt is npmlp/loading.py's business.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

import numpy as np

DOT = "."  # start/end token, index 0, as in the lecture
SPLIT_SEED = 42  # the lecture's random.seed(42) before it shuffles the names for the 80/10/10 split


# ----------------------------------------------------------------------------- vocab

@dataclass(frozen=True)
class Vocab:
    """Characters <-> integers exactly as the lecture: '.' is 0, then the sorted characters from 1."""
    itos: tuple[str, ...]

    @classmethod
    def from_words(cls, words) -> Vocab:
        chars = sorted(set("".join(words)))
        if DOT in chars:
            raise DataError("a name contains '.', which npmlp reserves as the start/end token; remove it")
        return cls((DOT, *chars))

    @cached_property
    def stoi(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.itos)}

    @property
    def size(self) -> int:
        return len(self.itos)

    def encode(self, word: str) -> list[int]:
        stoi = self.stoi
        unknown = sorted({c for c in word if c not in stoi})
        if unknown:
            raise DataError(f"characters {''.join(unknown)!r} in {word!r} are not in the model's vocabulary")
        return [stoi[c] for c in word]

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def index_dtype(self):
        """The smallest integer type that holds every index: uint8 for the lecture's 27 characters."""
        return np.uint8 if self.size <= 256 else np.int32


# ----------------------------------------------------------------------------- rows

def build_dataset(words, vocab: Vocab, block_size: int = 3):
    """All (context, next char) rows, as the lecture's loop builds them: each name starts from a
    context of block_size '.'s; every character (and the closing '.') is a target, after which
    it slides into the context. Returns X (N, T) and Y (N,), N = sum(len(w) + 1)."""
    if int(block_size) < 1:
        raise DataError(f"block_size must be >= 1, got {block_size}")
    stoi = vocab.stoi
    unknown = sorted(set("".join(words)) - set(stoi))
    if unknown:
        raise DataError(f"characters {''.join(unknown)!r} are not in the model's vocabulary")
    X, Y = [], []
    for w in words:
        context = [0] * block_size                  # '.' '.' '.'
        for ch in w + DOT:
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]            # crop and append
    dtype = vocab.index_dtype()
    return np.array(X, dtype).reshape(len(X), block_size), np.array(Y, dtype)


def build_sequences(words, vocab: Vocab, block_size: int | None = None):
    """Each name as one row, as makemore.py's CharDataset makes it: with T = block_size (default:
    the longest name + 1), x = [0, c1..cn, 0, 0, ...] and y = [c1..cn, 0, -1, -1, ...], both of
    length T; -1 masks a position out of the loss (layers.IGNORE). Every target of lecture 2's
    rows is one of y's, so a loss over the unmasked targets is per character, the same number.
    Returns X (N, T), Y (N, T), N = the number of names."""
    longest = max((len(w) for w in words), default=0)
    T = longest + 1 if block_size is None else int(block_size)
    if longest + 1 > T:
        raise DataError(f"a name of {longest} characters does not fit in sequences of {T} positions "
                        f"(block_size {T} holds names of up to {T - 1})")
    stoi = vocab.stoi
    unknown = sorted(set("".join(words)) - set(stoi))
    if unknown:
        raise DataError(f"characters {''.join(unknown)!r} are not in the model's vocabulary")
    dtype = np.int8 if vocab.size <= 127 else np.int32      # signed: -1 is a target
    X = np.zeros((len(words), T), dtype)                   # (N, T) '.' then the name, '.'-padded
    Y = np.full((len(words), T), -1, dtype)                 # (N, T) the name, '.', then masked
    for i, w in enumerate(words):
        ix = [stoi[c] for c in w]
        X[i, 1:1 + len(ix)] = ix
        Y[i, :len(ix)] = ix
        Y[i, len(ix)] = 0                                  # the closing '.'
    return X, Y


def split_words(words, seed: int | None = SPLIT_SEED):
    """80/10/10 split. seed=int reproduces `random.seed(seed); random.shuffle(words)` without
    touching the global RNG; seed=None keeps file order. Returns (train, dev, test) lists."""
    words = list(words)
    if seed is not None:
        random.Random(seed).shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:n1], words[n1:n2], words[n2:]


# ----------------------------------------------------------------------------- errors

class NpmlpError(Exception):
    """A problem the user can fix: the command prints the message on one line, no traceback, and
    exits with exit_code (2 = a bad option or usage, 1 = a runtime failure). Every error npmlp
    raises for its user is one (app/errors.py's UsageError is the exit-2 kind)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class DataError(NpmlpError):
    """A names file (or its download) that npmlp cannot use; the message says what to do."""
