"""The layers, each a pair of pure NumPy functions written side by side.

    *_forward(inputs..., out=None)   -> (output, cache)       cache = what backward needs
    *_backward(doutput, cache, ...)  -> gradients, in the order of the forward's inputs

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, I/O a linear layer's in/out width.
Every `out=` argument is optional: None allocates a new array (pure); the training loop passes
preallocated buffers so a step allocates nothing large. Same code either way.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np


@lru_cache(maxsize=16)
def arange(n: int) -> np.ndarray:
    """0, 1, ..., n-1 as a read-only array, made once per n: fancy indexing needs it every step."""
    a = np.arange(n)
    a.flags.writeable = False
    return a


# ----------------------------------------------------------------------------- embedding: C[X]

class EmbeddingCache(NamedTuple):
    X: np.ndarray        # (B, T) integer indices into C's rows
    V: int               # rows of C


def embedding_forward(C, X, out=None):
    """C (V, E), X (B, T) -> emb (B, T, E), the lecture's `emb = C[X]`."""
    emb = C.take(X, axis=0, out=out)  # (B, T, E) = C[X]
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
    onehot[arange(idx.size), idx] = 1
    return np.matmul(onehot.T, demb.reshape(-1, E), out=out)     # (V, E)


# ----------------------------------------------------------------------------- linear: x @ W + b

class LinearCache(NamedTuple):
    x1: np.ndarray       # (B, I+1) the input with its ones column
    W: np.ndarray        # (I, O) the weights without the bias row


def with_ones(x):
    """x (B, I) -> x1 (B, I+1) = [x, 1], the input linear_forward takes (a new array; the model
    instead has the layer before write into x1[:, :I] of a buffer whose last column is 1)."""
    return np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1)


def linear_forward(x1, Wb, out=None):
    """x1 (B, I+1) = [x, 1], Wb (I+1, O) = [W; b] -> out (B, O) = x @ W + b.

    The bias trick: b is stored as the last row of the weights and the input has a last column of
    ones, so one matmul computes x @ W + b (no second pass over a (B, O) array to add b)."""
    out = np.matmul(x1, Wb, out=out)     # (B, O)
    return out, LinearCache(x1, Wb[:-1])


def linear_backward(dout, cache, dx=None, dWb=None):
    """dout (B, O) -> dx (B, I), dWb (I+1, O) = [dW; db].

    One matmul gives both weight gradients: x1.T @ dout stacks dW = x.T @ dout (rows :I) on
    db = ones.T @ dout = dout.sum(0) (row I, the ones column's: b was broadcast over the batch).
    The ones column is a constant, so dx skips it: dx = dout @ W.T."""
    x1, W = cache
    dx = np.matmul(dout, W.T, out=dx)    # (B, I)
    # For a batch of one NumPy's matmul does not recognise x1.T (I+1, 1) as a BLAS operand and runs
    # a slow loop (measured 33 us at I=30, O=1000); np.dot takes the BLAS path (7 us).
    dWb = (np.matmul if len(x1) > 1 else np.dot)(x1.T, dout, out=dWb)  # (I+1, O) [dW; db]
    return dx, dWb


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
    dx = np.square(h, out=out)           # (B, H) h^2
    np.subtract(1, dx, out=dx)           # (B, H) 1 - h^2
    dx *= dh                             # (B, H)
    return dx


# ----------------------------------------------------------------------------- cross-entropy

# exp() of a shifted logit below log(smallest normal float) gives a denormal number, and x86 CPUs
# take ~100x longer on every multiply that touches one: with the lecture's init at H=1000, 3% of
# the softmax entries were denormal and made the step 4x slower (JAX/XLA sets flush-to-zero; NumPy
# cannot). So shifted logits are floored 40 above that limit, where even dloss/B * softmax stays
# normal. Only probabilities below exp(-47) = 4e-21 (float32) change, by less than 4e-21: far under
# float32's resolution (and 1e-290 in float64).
EXP_FLOOR = {np.dtype(t): float(np.log(np.finfo(t).tiny)) + 40 for t in (np.float32, np.float64)}


class CrossEntropyCache(NamedTuple):
    counts: np.ndarray      # (B, V) exp(logits - rowmax), the lecture's `counts`
    counts_sum: np.ndarray  # (B, 1)
    Y: np.ndarray           # (B,) target indices
    rows: np.ndarray        # (B,) 0..B-1: counts[rows, Y] is each row's target entry


def cross_entropy_forward(logits, Y, out=None):
    """logits (B, V), Y (B,) -> mean negative log-likelihood (a Python float).

    log-softmax is computed as (logits - max) - log(sum(exp(logits - max))): subtracting each row's
    max keeps exp() from overflowing and changes nothing mathematically.
    The model passes `out` (counts) laid out as (V, B) in memory, i.e. a transposed (V, B) array:
    then every reduction over V adds whole contiguous rows of B numbers (max 27x, sum 7x faster at
    B=4096 than reducing 27 numbers per row of a (B, V) array); the transposing copy costs less.
    """
    B = logits.shape[0]
    rows = arange(B)                                                        # (B,)
    counts = np.empty_like(logits) if out is None else out                  # (B, V)
    np.copyto(counts, logits)                                               # (B, V) a (transposing) copy
    logit_maxes = np.maximum.reduce(counts, axis=1, keepdims=True)          # (B, 1) logits.max(1)
    counts -= logit_maxes                                                   # (B, V) logits - max
    picked = counts[rows, Y]                                                # (B,) the targets' entries
    np.maximum(counts, EXP_FLOOR.get(counts.dtype, -np.inf), out=counts)    # (B, V) see EXP_FLOOR
    np.exp(counts, out=counts)                                              # (B, V) counts
    counts_sum = np.add.reduce(counts, axis=1, keepdims=True)               # (B, 1) counts.sum(1)
    nll = np.log(counts_sum[:, 0])                                          # (B,) -logprobs[rows, Y] is
    nll -= picked                                                           #   log(counts_sum) - (logit - max)
    loss = float(np.add.reduce(nll)) / B                                    # -logprobs[rows, Y].mean()
    return loss, CrossEntropyCache(counts, counts_sum, Y, rows)


def cross_entropy_backward(cache, out=None, dloss=1.0):
    """-> dlogits (B, V) = dloss * (softmax(logits) - onehot(Y)) / B.

    Fused: d/dlogits of -log(softmax[Y]) is softmax - onehot(Y) (the log cancels the exp), and the
    mean over the batch divides by B. Cheaper and more accurate than chaining the pieces.
    dloss is the gradient arriving at the loss, 1 for plain backprop. Every gradient below is linear
    in it, so training passes dloss = -lr and gets the SGD update itself out of the backward.
    """
    counts, counts_sum, Y, rows = cache
    B = counts.shape[0]
    dlogits = np.multiply(counts, (dloss / B) / counts_sum, out=out)  # (B, V) dloss * softmax / B
    dlogits[rows, Y] -= dloss / B                                   # (B, V) minus dloss * onehot / B
    return dlogits
