"""The layers, each a pair of pure NumPy functions written side by side.

    *_forward(inputs..., out=None)   -> (output, cache)       cache = what backward needs
    *_backward(doutput, cache, ...)  -> gradients, in the order of the forward's inputs

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, I/O a linear layer's in/out width.
Every `out=` argument is optional: None allocates a new array (pure); the training loop passes
preallocated buffers so a step allocates nothing large. Same code either way.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


# ----------------------------------------------------------------------------- embedding: C[X]

class EmbeddingCache(NamedTuple):
    X: np.ndarray        # (B, T) integer indices into C's rows
    V: int               # rows of C


def embedding_forward(C, X, out=None):
    """C (V, E), X (B, T) -> emb (B, T, E), the lecture's `emb = C[X]`."""
    emb = np.take(C, X, axis=0, out=out)  # (B, T, E)
    return emb, EmbeddingCache(X, C.shape[0])


def embedding_backward(demb, cache, out=None, onehot=None):
    """demb (B, T, E) -> dC (V, E).

    Each row of C was copied to every place its character appears, so dC[i] is the SUM of demb
    over those places. `dC[X] += demb` would be wrong: with repeated indices NumPy keeps only one
    of the writes. `np.add.at` is correct but slow; a one-hot matmul sums the repeats with BLAS:
    dC = onehot(X).T @ demb, onehot (B*T, V).
    """
    X, V = cache
    E = demb.shape[-1]
    idx = X.reshape(-1)                                          # (B*T,)
    if onehot is None:
        onehot = np.zeros((idx.size, V), demb.dtype)             # (B*T, V)
    else:
        onehot.fill(0)
    onehot[np.arange(idx.size), idx] = 1
    return np.matmul(onehot.T, demb.reshape(-1, E), out=out)     # (V, E)


# ----------------------------------------------------------------------------- linear: x @ W + b

class LinearCache(NamedTuple):
    x: np.ndarray        # (B, I)
    W: np.ndarray        # (I, O)


def linear_forward(x, W, b, out=None):
    """x (B, I), W (I, O), b (O,) -> out (B, O)."""
    out = np.matmul(x, W, out=out)   # (B, O)
    out += b                         # in place: no second (B, O) array
    return out, LinearCache(x, W)


def linear_backward(dout, cache, dx=None, dW=None, db=None):
    """dout (B, O) -> dx (B, I), dW (I, O), db (O,)."""
    x, W = cache
    dx = np.matmul(dout, W.T, out=dx)    # (B, I)
    dW = np.matmul(x.T, dout, out=dW)    # (I, O)
    db = np.sum(dout, axis=0, out=db)    # (O,)   b was broadcast over the batch, so its grad sums it
    return dx, dW, db


# ----------------------------------------------------------------------------- tanh

class TanhCache(NamedTuple):
    h: np.ndarray        # (B, H) the forward's output: tanh' = 1 - tanh^2 needs nothing else


def tanh_forward(x, out=None):
    """x (B, H) -> h (B, H)."""
    h = np.tanh(x, out=out)  # (B, H)
    return h, TanhCache(h)


def tanh_backward(dh, cache, out=None):
    """dh (B, H) -> dx (B, H) = (1 - h^2) * dh."""
    h = cache.h
    dx = np.multiply(h, h, out=out)      # (B, H) h^2
    np.subtract(1, dx, out=dx)           # (B, H) 1 - h^2
    dx *= dh                             # (B, H)
    return dx


# ----------------------------------------------------------------------------- cross-entropy

class CrossEntropyCache(NamedTuple):
    counts: np.ndarray   # (B, V) exp(logits - rowmax), the lecture's `counts`
    counts_sum: np.ndarray  # (B, 1)
    Y: np.ndarray        # (B,) target indices


def cross_entropy_forward(logits, Y, out=None):
    """logits (B, V), Y (B,) -> mean negative log-likelihood (a 0-d array).

    log-softmax is computed as (logits - max) - log(sum(exp(logits - max))): subtracting each row's
    max keeps exp() from overflowing and changes nothing mathematically.
    """
    B = logits.shape[0]
    rows = np.arange(B)
    counts = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out)  # (B, V) shifted logits
    picked = counts[rows, Y]                                 # (B,) shifted logit of the target
    np.exp(counts, out=counts)                               # (B, V) counts
    counts_sum = counts.sum(axis=1, keepdims=True)           # (B, 1)
    loss = (np.log(counts_sum).sum() - picked.sum()) / B     # () mean of log(sum) - target logit
    return loss, CrossEntropyCache(counts, counts_sum, Y)


def cross_entropy_backward(cache, out=None):
    """-> dlogits (B, V) = (softmax(logits) - onehot(Y)) / B.

    Fused: d/dlogits of -log(softmax[Y]) is softmax - onehot(Y) (the log cancels the exp), and the
    mean over the batch divides by B. Cheaper and more accurate than chaining the pieces.
    """
    counts, counts_sum, Y = cache
    B = counts.shape[0]
    dlogits = np.multiply(counts, 1.0 / (counts_sum * B), out=out)  # (B, V) softmax / B
    dlogits[np.arange(B), Y] -= 1.0 / B                              # (B, V) minus onehot / B
    return dlogits
