"""The layers of the lectures, each a pair of plain NumPy functions written side by side.

    X_forward(inputs...)        -> (output, cache)    cache: the operands the backward needs
    X_backward(doutput, cache)  -> the gradients of the forward's inputs, in the same order

Legend: B batch, T block_size (or positions, in part 5), E n_embd, H n_hidden, V vocab size,
I/O a linear layer's in/out width, C channels (the last axis), "..." any leading axes,
N rows (B*T positions flattened into one axis).
This is the reference tier: true gradients, nothing preallocated, one line per step of the maths.
The models build each cache from their named intermediates at the backward's call, so every
gradient's line shows the tensors that make it. npmlp/fast/ computes the same numbers faster and
is tested against these functions.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

BN_EPS = 1e-5        # added to a BatchNorm's variance before the square root (torch's default, the lectures')
BN_MIN_ROWS = 2      # a BatchNorm in training mode needs two rows per channel: one row has no variance

# ----------------------------------------------------------------------------- embedding: C[X]

class EmbeddingCache(NamedTuple):
    X: np.ndarray          # (B, T) integer indices into the rows of C
    V: int                 # rows of C


def embedding_forward(C, X):
    """C (V, E), X (B, T) -> emb (B, T, E): row X[b, t] of C for every place."""
    emb = C[X]                                        # (B, T, E)
    return emb, EmbeddingCache(X, C.shape[0])


def embedding_backward(demb, cache):
    """demb (B, T, E) -> dC (V, E).

    Row i of C was copied to every place where character i occurs, so dC[i] is the sum of demb
    over those places. `dC[X] += demb` would be wrong: with a repeated index NumPy keeps only one
    of the writes. np.add.at adds every one of them."""
    X, V = cache
    dC = np.zeros((V, demb.shape[-1]), demb.dtype)   # (V, E)
    np.add.at(dC, X, demb)                            # dC[X[b, t]] += demb[b, t] for every b, t
    return dC


# ----------------------------------------------------------------------------- linear: x @ W + b

class LinearCache(NamedTuple):
    x: np.ndarray          # (..., I) the layer's input
    W: np.ndarray          # (I, O)
    bias: bool = True      # False: the layer has no b (a Linear before a BatchNorm)


def linear_forward(x, W, b=None):
    """x (..., I), W (I, O), b (O,) or None -> out (..., O) = x @ W + b, on every leading axis."""
    out = x @ W                                       # (..., O)
    if b is not None:
        out = out + b                                 # (..., O) b broadcast over the leading axes
    return out, LinearCache(x, W, b is not None)


def linear_backward(dout, cache):
    """dout (..., O) -> dx (..., I), dW (I, O), db (O,) (None when the layer has no b).
    W and b were used once per row of every leading axis, so their gradients sum over all of them."""
    x, W, bias = cache
    I, O = W.shape
    dx = dout @ W.T                                   # (..., I)
    dW = x.reshape(-1, I).T @ dout.reshape(-1, O)     # (I, O)
    db = dout.reshape(-1, O).sum(0) if bias else None  # (O,)
    return dx, dW, db


# ----------------------------------------------------------------------------- tanh

class TanhCache(NamedTuple):
    h: np.ndarray          # (..., H) the output: tanh'(x) = 1 - tanh(x)^2 needs nothing else


def tanh_forward(x):
    """x (..., H) -> h (..., H)."""
    h = np.tanh(x)                                    # (..., H)
    return h, TanhCache(h)


def tanh_backward(dh, cache):
    """dh (..., H) -> dx (..., H)."""
    return (1 - cache.h ** 2) * dh                    # (..., H)


# ----------------------------------------------------------------------------- cross-entropy

class CrossEntropyCache(NamedTuple):
    probs: np.ndarray      # (B, V) softmax(logits)
    Y: np.ndarray          # (B,) target indices


def cross_entropy_forward(logits, Y):
    """logits (B, V), Y (B,) -> loss, the mean negative log-likelihood (a Python float)."""
    B = logits.shape[0]
    logit_maxes = logits.max(1, keepdims=True)        # (B, 1)
    norm_logits = logits - logit_maxes                # (B, V) the same softmax; exp cannot overflow
    counts = np.exp(norm_logits)                      # (B, V)
    counts_sum = counts.sum(1, keepdims=True)         # (B, 1)
    probs = counts / counts_sum                       # (B, V)
    logprobs = norm_logits - np.log(counts_sum)       # (B, V) log(probs), finite even where probs is 0
    loss = -logprobs[np.arange(B), Y].mean()          # ()
    return float(loss), CrossEntropyCache(probs, Y)


def cross_entropy_backward(dloss, cache):
    """dloss (a number, 1 for plain backprop) -> dlogits (B, V).

    Fused: the derivative of -log(softmax(logits)[y]) with respect to the logits is
    softmax(logits) - onehot(y) (the log undoes the exp), and the batch mean divides by B."""
    probs, Y = cache
    B = probs.shape[0]
    dlogits = probs.copy()                            # (B, V)
    dlogits[np.arange(B), Y] -= 1                     # (B, V) softmax - onehot(Y)
    return dlogits * (dloss / B)                      # (B, V)


# ----------------------------------------------------------------------------- masked cross-entropy (padded sequences)

IGNORE = -1          # the target that masks a position out (makemore.py pads its names with it)


class MaskedCrossEntropyCache(NamedTuple):
    inner: CrossEntropyCache   # the plain cross-entropy's cache, of the n rows that count
    rows: np.ndarray           # (n,) their flat positions among the N = B*T
    shape: tuple               # (B, T, V) or (N, V) the logits' shape


def masked_cross_entropy_forward(logits, Y):
    """logits (B, T, V) or (N, V), Y (B, T) or (N,) integer targets, IGNORE (-1) where a position is
    padding -> loss, the mean of -log softmax(logits)[y] over the targets that are not -1 (a Python
    float): torch's F.cross_entropy(..., ignore_index=-1), makemore.py's loss.

    It is the plain cross-entropy of the rows that count: a masked row adds nothing to the sum and
    nothing to the count the mean divides by. Raises ValueError for a target outside [-1, V) and
    for a batch whose every target is masked (a mean over no targets has no value)."""
    logits, Y = np.asarray(logits), np.asarray(Y)
    if logits.ndim < 2 or logits.shape[:-1] != Y.shape:
        raise ValueError(f"masked cross-entropy takes logits (B, T, V) or (N, V) and targets of the shape "
                         f"without V; got logits {logits.shape} and targets {Y.shape}")
    if Y.dtype.kind not in "iu":
        raise ValueError(f"the targets must be integers (-1 for a masked position), got dtype {Y.dtype}")
    V = logits.shape[-1]
    flat_Y = Y.reshape(-1)                            # (N,)
    bad = np.flatnonzero((flat_Y < IGNORE) | (flat_Y >= V))
    if bad.size:
        where = np.unravel_index(bad[0], Y.shape)
        raise ValueError(f"target {flat_Y[bad[0]]} at {tuple(map(int, where))} is outside [-1, {V}): a target is "
                         f"a vocabulary index 0..{V - 1}, or -1 to mask its position ({bad.size} such target"
                         f"{'s' * (bad.size != 1)})")
    rows = np.flatnonzero(flat_Y != IGNORE)           # (n,) the positions that count
    if rows.size == 0:
        raise ValueError(f"every one of the {flat_Y.size} targets is -1 (masked): the mean over no targets is "
                         f"undefined")
    flat_logits = logits.reshape(-1, V)               # (N, V)
    loss, inner = cross_entropy_forward(flat_logits[rows], flat_Y[rows])  # over (n, V), (n,)
    return loss, MaskedCrossEntropyCache(inner, rows, logits.shape)


def masked_cross_entropy_backward(dloss, cache):
    """dloss (a number) -> dlogits, the logits' shape: (softmax - onehot) * dloss / n at the n rows
    that count (the plain backward, whose mean is over those n), exactly 0 at a masked position,
    which the loss never read."""
    inner, rows, shape = cache
    dflat = np.zeros((int(np.prod(shape[:-1])), shape[-1]), inner.probs.dtype)  # (N, V)
    dflat[rows] = cross_entropy_backward(dloss, inner)  # (n, V)
    return dflat.reshape(shape)                       # (B, T, V) or (N, V)


# ----------------------------------------------------------------------------- batch normalisation

class BatchNormCache(NamedTuple):
    xhat: np.ndarray       # (..., C) the input normalised to zero mean and unit variance per channel
    var_inv: np.ndarray    # (C,) 1 / sqrt(var + eps)
    gamma: np.ndarray      # (C,)
    unbiased: bool


def batchnorm_rows(x) -> int:
    """How many rows of statistics x (..., C) gives each channel: all but its last axis. Raises
    ValueError where a BatchNorm cannot train: a 1-D input, or fewer than BN_MIN_ROWS rows."""
    if np.ndim(x) < 2:
        raise ValueError(f"batch norm takes (B, C) or (B, T, C) input, got shape {np.shape(x)}")
    n = int(np.prod(np.shape(x)[:-1]))
    if n < BN_MIN_ROWS:
        raise ValueError(f"batch norm in training mode needs at least {BN_MIN_ROWS} rows per channel: "
                         f"one row has no variance (input shape {np.shape(x)})")
    return n


def batchnorm_forward(x, gamma, beta, eps=BN_EPS, unbiased=False):
    """x (B, C) or (B, T, C), gamma (C,), beta (C,) -> out, x's shape: each channel normalised with
    the batch's own mean and variance over every axis but the last, then scaled by gamma and
    shifted by beta (training mode). unbiased=False divides the variance by the n rows, as
    torch.nn.functional.batch_norm does in training; True by n - 1 (Bessel's correction), as
    makemore parts 3-5 do."""
    n = batchnorm_rows(x)
    axes = tuple(range(x.ndim - 1))                   # every axis but the channels
    mean = x.mean(axes)                               # (C,)
    xmu = x - mean                                    # (..., C)
    var = (xmu ** 2).sum(axes) / (n - 1 if unbiased else n)  # (C,)
    var_inv = 1 / np.sqrt(var + eps)                  # (C,)
    xhat = xmu * var_inv                              # (..., C)
    out = gamma * xhat + beta                         # (..., C)
    return out, BatchNormCache(xhat, var_inv, gamma, unbiased)


def batchnorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dgamma (C,), dbeta (C,), fused (makemore part 4's exercise 3).

    With s = var_inv, n rows per channel and m = n - 1 (unbiased) or n, xhat_i = (x_i - mean) * s.
    x_i reaches the loss three ways: through its own xhat_i, through the mean (every xhat_j moves
    by -s/n) and through the variance (dvar/dx_i = 2 (x_i - mean) / m, ds/dvar = -s^3 / 2).
    Summing the three with g = gamma * dout: dx_i = s * (g_i - sum_j g_j / n - xhat_i * sum_j g_j xhat_j / m),
    which is the line below with gamma and 1/n taken out."""
    xhat, var_inv, gamma, unbiased = cache
    axes = tuple(range(dout.ndim - 1))
    n = dout.size // dout.shape[-1]
    dbeta = dout.sum(axes)                            # (C,) beta was broadcast over every row
    dgamma = (xhat * dout).sum(axes)                  # (C,)
    bessel = n / (n - 1) if unbiased else 1.0         # n / m
    dx = gamma * var_inv / n * (n * dout - dbeta - bessel * xhat * dgamma)  # (..., C)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- part 5: flatten consecutive

class FlattenCache(NamedTuple):
    shape: tuple           # (B, T, C) the input's shape


def flatten_consecutive_forward(x, n):
    """x (B, T, C) -> (B, T/n, C*n): each n consecutive positions side by side, as one wider
    position; squeezed to (B, C*n) when one position is left (the WaveNet's last fusion)."""
    if np.ndim(x) != 3:
        raise ValueError(f"flatten consecutive takes (B, T, C) input, got shape {np.shape(x)}")
    B, T, C = x.shape
    if n < 1 or T % n:
        raise ValueError(f"flatten by {n}: the {T} positions do not split into groups of {n}")
    out = x.reshape(B, T // n, C * n)                 # (B, T/n, C*n) a view: rows are contiguous
    if T // n == 1:
        out = out[:, 0]                               # (B, C*n)
    return out, FlattenCache(x.shape)


def flatten_consecutive_backward(dout, cache):
    """dout (B, T/n, C*n) or (B, C*n) -> dx (B, T, C): the same numbers, put back in their places
    (a reshape moves nothing, so its gradient is the inverse reshape)."""
    return dout.reshape(cache.shape)                  # (B, T, C)
