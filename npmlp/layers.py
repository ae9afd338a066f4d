"""The layers of the lectures, each a pair of plain NumPy functions written side by side.

    X_forward(inputs...)        -> (output, cache)    cache: what the backward needs
    X_backward(doutput, cache)  -> the gradients of the forward's inputs, in the same order

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, I/O a linear layer's in/out width.
This is the reference tier: true gradients, nothing preallocated, one line per step of the maths.
npmlp/fast.py computes the same numbers faster and is tested against these functions.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
    x: np.ndarray          # (B, I)
    W: np.ndarray          # (I, O)
    bias: bool             # False: the layer has no b (part 3's Linear before a BatchNorm)


def linear_forward(x, W, b=None):
    """x (B, I), W (I, O), b (O,) or None -> out (B, O) = x @ W + b."""
    out = x @ W                                       # (B, O)
    if b is not None:
        out = out + b                                 # (B, O) b broadcast over the batch
    return out, LinearCache(x, W, b is not None)


def linear_backward(dout, cache):
    """dout (B, O) -> dx (B, I), dW (I, O), db (O,) (None when the layer has no b)."""
    x, W, bias = cache
    dx = dout @ W.T                                   # (B, I)
    dW = x.T @ dout                                   # (I, O)
    db = dout.sum(0) if bias else None                # (O,) b was broadcast over B rows: add them up
    return dx, dW, db


# ----------------------------------------------------------------------------- tanh

class TanhCache(NamedTuple):
    h: np.ndarray          # (B, H) the output: tanh'(x) = 1 - tanh(x)^2 needs nothing else


def tanh_forward(x):
    """x (B, H) -> h (B, H)."""
    h = np.tanh(x)                                    # (B, H)
    return h, TanhCache(h)


def tanh_backward(dh, cache):
    """dh (B, H) -> dx (B, H)."""
    return (1 - cache.h ** 2) * dh                    # (B, H)


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


# ----------------------------------------------------------------------------- batch normalisation

class BatchNormCache(NamedTuple):
    xhat: np.ndarray       # (B, H) the input normalised to zero mean and unit variance per column
    var_inv: np.ndarray    # (H,) 1 / sqrt(var + eps)
    gamma: np.ndarray      # (H,)
    unbiased: bool


def batchnorm_forward(x, gamma, beta, eps=1e-5, unbiased=False):
    """x (B, H), gamma (H,), beta (H,) -> out (B, H): each column normalised with the batch's own
    mean and variance, then scaled by gamma and shifted by beta (training mode). unbiased=False
    divides the variance by B, as torch.nn.functional.batch_norm does in training; True by B - 1
    (Bessel's correction), as makemore part 4 does."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("batch norm in training mode needs at least 2 rows: one row has no variance")
    mean = x.mean(0)                                  # (H,)
    xmu = x - mean                                    # (B, H)
    var = (xmu ** 2).sum(0) / (n - 1 if unbiased else n)  # (H,)
    var_inv = 1 / np.sqrt(var + eps)                  # (H,)
    xhat = xmu * var_inv                              # (B, H)
    out = gamma * xhat + beta                         # (B, H)
    return out, BatchNormCache(xhat, var_inv, gamma, unbiased)


def batchnorm_backward(dout, cache):
    """dout (B, H) -> dx (B, H), dgamma (H,), dbeta (H,), fused (makemore part 4's exercise 3).

    With s = var_inv and m = B - 1 (unbiased) or B, xhat_i = (x_i - mean) * s. x_i reaches the loss
    three ways: through its own xhat_i, through the mean (every xhat_j moves by -s/B) and through
    the variance (dvar/dx_i = 2 (x_i - mean) / m, ds/dvar = -s^3 / 2). Summing the three with
    g = gamma * dout: dx_i = s * (g_i - sum_j g_j / B - xhat_i * sum_j g_j xhat_j / m), which is
    the line below with gamma and 1/B taken out."""
    xhat, var_inv, gamma, unbiased = cache
    n = dout.shape[0]
    dbeta = dout.sum(0)                               # (H,) beta was broadcast over the batch
    dgamma = (xhat * dout).sum(0)                     # (H,)
    bessel = n / (n - 1) if unbiased else 1.0         # B / m
    dx = gamma * var_inv / n * (n * dout - dbeta - bessel * xhat * dgamma)  # (B, H)
    return dx, dgamma, dbeta
