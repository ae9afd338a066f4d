"""The layers of the lectures, each a pair of plain NumPy functions written side by side.

    X_forward(inputs...)        -> (output, cache)    cache: the operands the backward needs
    X_backward(doutput, cache)  -> the gradients of the forward's inputs, in the same order

Legend: B batch, T block_size (or positions, in part 5), E n_embd, H n_hidden, V vocab size,
I/O a linear layer's in/out width, C channels (the last axis), "..." any leading axes,
N rows (B*T positions flattened into one axis); nh heads and hs head size in makemore.py's
Transformer (the last section).
This is the reference tier: true gradients, nothing preallocated, one line per step of the maths.
The models build each cache from their named intermediates at the backward's call, so every
gradient's line shows the tensors that make it. npmlp/fast/ computes the same numbers faster and
is tested against these functions.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

BN_EPS = 1e-5        # added to a BatchNorm's variance before the square root (torch's default, the lectures')
BN_MIN_ROWS = 2      # a BatchNorm in training mode needs two rows per channel: one row has no variance
LN_EPS = 1e-5        # added to a LayerNorm's variance before the square root (torch's default, makemore.py's)

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


# ============================================================= makemore.py's Transformer and bag of words
#
# Legend for this section: B batch, T positions, C channels (n_embd), nh heads (n_head),
# hs head size (C / nh), "..." any leading axes. makemore.py's Block is
#     x = x + attn(ln_1(x));  x = x + c_proj(gelu(c_fc(ln_2(x))))
# and its BoWBlock x = x + cbow(x); x = x + c_proj(tanh(c_fc(x))): the pairs below, with
# embedding_*, linear_*, tanh_* and cross_entropy_* (on the logits as (B*T, V)) above, are
# every piece of both models.

# ----------------------------------------------------------------------------- layer normalisation

class LayerNormCache(NamedTuple):
    xhat: np.ndarray       # (..., C) each row normalised to zero mean and unit variance over its C channels
    rstd: np.ndarray       # (..., 1) 1 / sqrt(var + eps), one per row
    w: np.ndarray          # (C,) the scale


def layernorm_forward(x, w, b, eps=LN_EPS):
    """x (..., C), w (C,), b (C,) -> out (..., C) = w * (x - mean) / sqrt(var + eps) + b, the mean
    and the biased variance (divided by C) taken over the last axis of each row on its own:
    torch.nn.LayerNorm(C). Unlike a BatchNorm, no statistic crosses rows, so any batch works."""
    mean = x.mean(-1, keepdims=True)                  # (..., 1)
    xmu = x - mean                                    # (..., C)
    var = (xmu ** 2).mean(-1, keepdims=True)          # (..., 1) biased: / C, as torch's LayerNorm
    rstd = 1 / np.sqrt(var + eps)                     # (..., 1)
    xhat = xmu * rstd                                 # (..., C)
    out = xhat * w + b                                # (..., C)
    return out, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dw (C,), db (C,).

    With dxhat = w * dout and means over a row's C channels, x_i reaches the loss three ways:
    through its own xhat_i, through the mean (every xhat_j moves by -rstd / C) and through the
    variance (every xhat_j moves by -xhat_j xhat_i rstd / C). Summed:
    dx_i = rstd * (dxhat_i - mean_j dxhat_j - xhat_i * mean_j (dxhat_j xhat_j))."""
    xhat, rstd, w = cache
    rows = tuple(range(dout.ndim - 1))                # every axis but the channels
    db = dout.sum(rows)                               # (C,) b was added to every row
    dw = (dout * xhat).sum(rows)                      # (C,)
    dxhat = dout * w                                  # (..., C)
    term1 = dxhat                                     # (..., C) 1: x_i through its own xhat_i
    term2 = dxhat.mean(-1, keepdims=True)             # (..., 1) 2: through the mean
    term3 = xhat * (dxhat * xhat).mean(-1, keepdims=True)  # (..., C) 3: through the variance
    dx = rstd * (term1 - term2 - term3)               # (..., C)
    return dx, dw, db


# ----------------------------------------------------------------------------- GELU, the tanh form

GELU_K = math.sqrt(2 / math.pi)   # Python floats: a NumPy float64 scalar would upcast a float32 array
GELU_A = 0.044715


class GeluCache(NamedTuple):
    x: np.ndarray          # (..., C) the input
    th: np.ndarray         # (..., C) tanh(GELU_K * (x + GELU_A x^3)), reused by the derivative


def gelu_forward(x):
    """x (..., C) -> out (..., C) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): makemore.py's
    NewGELU (GPT-2's), the same function as torch's F.gelu(x, approximate='tanh')."""
    th = np.tanh(GELU_K * (x + GELU_A * (x * x * x)))  # (..., C) x*x*x: NumPy's x**3 is a slow pow
    out = 0.5 * x * (1 + th)                          # (..., C)
    return out, GeluCache(x, th)


def gelu_backward(dout, cache):
    """dout (..., C) -> dx (..., C). Product rule on 0.5 x (1 + th), with th = tanh(u):
    d/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) du/dx, du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, th = cache
    dudx = GELU_K * (1 + 3 * GELU_A * (x * x))         # (..., C)
    local = 0.5 * (1 + th) + 0.5 * x * (1 - th ** 2) * dudx  # (..., C) d out / d x
    return dout * local                               # (..., C)


# ----------------------------------------------------------------------------- softmax on the last axis

class SoftmaxCache(NamedTuple):
    y: np.ndarray          # (..., N) the output: the softmax's derivative needs nothing else


def softmax_forward(x):
    """x (..., N) -> y (..., N) = exp(x) / sum(exp(x)) along the last axis. An entry of -inf
    (masked) gets exactly 0; every row needs one finite entry."""
    e = np.exp(x - x.max(-1, keepdims=True))          # (..., N) the same softmax; exp cannot overflow
    y = e / e.sum(-1, keepdims=True)                  # (..., N)
    return y, SoftmaxCache(y)


def softmax_backward(dy, cache):
    """dy (..., N) -> dx (..., N). The Jacobian is dy_i/dx_j = y_i (1[i=j] - y_j), so
    dx_j = y_j (dy_j - sum_i dy_i y_i): zero wherever y is zero, as at masked entries."""
    y = cache.y
    return y * (dy - (dy * y).sum(-1, keepdims=True))  # (..., N)


# ----------------------------------------------------------------------------- causal attention, the core

def causal_mask(T):
    """(T, T) bool, True where position t (row) may look at position t2 (column): t2 <= t."""
    return np.tril(np.ones((T, T), bool))             # (T, T)


class AttentionCache(NamedTuple):
    q: np.ndarray          # (..., T, hs) queries
    k: np.ndarray          # (..., T, hs) keys
    v: np.ndarray          # (..., T, hs) values
    att: np.ndarray        # (..., T, T) the softmax weights, before any dropout; 0 above the diagonal
    att_dropout_mask: np.ndarray | None   # (..., T, T) scaled by 1 / (1 - p), or None: no dropout


def attention_forward(q, k, v, att_dropout_mask=None):
    """q, k, v (..., T, hs) -> y (..., T, hs): causal scaled dot-product attention for one head
    (..., T, hs) or many (B, nh, T, hs).

        preatt[t, t2] = q_t . k_t2 / sqrt(hs), -inf where t2 > t (the future is masked)
        att = softmax(preatt) along t2;  y_t = sum_t2 att[t, t2] v_t2

    att_dropout_mask (..., T, T), in q's dtype: an inverted-dropout mask (0 or 1 / (1 - p))
    applied to att after the softmax, as nanoGPT's attn_dropout; a constant: it gets no gradient."""
    T, hs = q.shape[-2:]
    scale = 1 / math.sqrt(hs)                         # a Python float: keeps float32 float32
    preatt = (q @ k.swapaxes(-1, -2)) * scale         # (..., T, T)
    preatt = np.where(causal_mask(T), preatt, -np.inf)  # (..., T, T) exp(-inf) = 0: no weight on the future
    att, _ = softmax_forward(preatt)                  # (..., T, T)
    att_used = att if att_dropout_mask is None else att * att_dropout_mask  # (..., T, T)
    y = att_used @ v                                  # (..., T, hs)
    return y, AttentionCache(q, k, v, att, att_dropout_mask)


def attention_backward(dy, cache):
    """dy (..., T, hs) -> dq, dk, dv (..., T, hs), the forward read upwards (llm.c's passes 4..1)."""
    q, k, v, att, mask = cache
    scale = 1 / math.sqrt(q.shape[-1])
    att_used = att if mask is None else att * mask    # (..., T, T) one multiply, not a third (T, T) array in the cache
    # 1. y = att_used @ v
    dv = att_used.swapaxes(-1, -2) @ dy               # (..., T, hs)
    datt_used = dy @ v.swapaxes(-1, -2)               # (..., T, T)
    # 2. the dropout passes the gradient where it kept the weight, scaled the same way
    datt = datt_used if mask is None else datt_used * mask  # (..., T, T)
    # 3. the softmax (softmax_backward): att is exactly 0 at masked entries, so their gradient is too
    dpreatt = att * (datt - (datt * att).sum(-1, keepdims=True))  # (..., T, T)
    # 4. preatt = q @ k^T * scale
    dq = (dpreatt @ k) * scale                        # (..., T, hs)
    dk = (dpreatt.swapaxes(-1, -2) @ q) * scale       # (..., T, hs)
    return dq, dk, dv


def split_heads(a, n_head):
    """a (B, T, C) -> (B, nh, T, hs): channel block h (of width hs) becomes head h."""
    B, T, C = a.shape
    return a.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # (B, nh, T, hs)


def merge_heads(a):
    """a (B, nh, T, hs) -> (B, T, C): the heads side by side again, split_heads' inverse (so each
    is the other's backward)."""
    B, nh, T, hs = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)  # (B, T, C)


# ----------------------------------------------------------------------------- makemore.py's CausalSelfAttention

class CausalSelfAttentionCache(NamedTuple):
    x: np.ndarray          # (B, T, C) the layer's input (c_attn's)
    W_attn: np.ndarray     # (C, 3C)
    q: np.ndarray          # (B, nh, T, hs)
    k: np.ndarray          # (B, nh, T, hs)
    v: np.ndarray          # (B, nh, T, hs)
    att: np.ndarray        # (B, nh, T, T) the softmax weights
    att_dropout_mask: np.ndarray | None   # (B, nh, T, T) or None
    y: np.ndarray          # (B, T, C) the heads merged: c_proj's input
    W_proj: np.ndarray     # (C, C)


def causal_self_attention_forward(x, W_attn, b_attn, W_proj, b_proj, n_head, att_dropout_mask=None):
    """x (B, T, C), W_attn (C, 3C), b_attn (3C,), W_proj (C, C), b_proj (C,), n_head dividing C
    -> out (B, T, C): makemore.py's CausalSelfAttention.

        q, k, v = split(x @ W_attn + b_attn, 3 along the channels)      c_attn
        each (B, nh, T, hs); y = attention(q, k, v), heads side by side
        out = y @ W_proj + b_proj                                       c_proj

    att_dropout_mask (B, nh, T, T) or None: see attention_forward."""
    B, T, C = x.shape
    if n_head < 1 or C % n_head:
        raise ValueError(f"n_head {n_head} does not divide the {C} channels into heads")
    qkv, _ = linear_forward(x, W_attn, b_attn)        # (B, T, 3C) c_attn
    q, k, v = np.split(qkv, 3, axis=-1)               # (B, T, C) each, in that order
    q = split_heads(q, n_head)                        # (B, nh, T, hs)
    k = split_heads(k, n_head)                        # (B, nh, T, hs)
    v = split_heads(v, n_head)                        # (B, nh, T, hs)
    yh, core = attention_forward(q, k, v, att_dropout_mask)  # (B, nh, T, hs)
    y = merge_heads(yh)                               # (B, T, C)
    out, _ = linear_forward(y, W_proj, b_proj)        # (B, T, C) c_proj
    return out, CausalSelfAttentionCache(x, W_attn, q, k, v, core.att, att_dropout_mask, y, W_proj)


def causal_self_attention_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dW_attn (C, 3C), db_attn (3C,), dW_proj (C, C), db_proj (C,)."""
    x, W_attn, q, k, v, att, mask, y, W_proj = cache
    n_head = q.shape[1]
    # 1. c_proj: dy = dout @ W_proj.T, dW_proj = y.T @ dout, db_proj = sum of dout over (B, T)
    dy, dW_proj, db_proj = linear_backward(dout, LinearCache(y, W_proj))  # (B, T, C), (C, C), (C,)
    # 2. the heads were merged side by side: cut dy the same way
    dyh = split_heads(dy, n_head)                     # (B, nh, T, hs)
    # 3. the attention of every head at once
    dq, dk, dv = attention_backward(dyh, AttentionCache(q, k, v, att, mask))  # (B, nh, T, hs) each
    # 4. q, k, v were cut from c_attn's output in that order: put their gradients back side by side
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
    # 5. c_attn: dx = dqkv @ W_attn.T, dW_attn = x.T @ dqkv, db_attn = sum of dqkv over (B, T)
    dx, dW_attn, db_attn = linear_backward(dqkv, LinearCache(x, W_attn))  # (B, T, C), (C, 3C), (3C,)
    return dx, dW_attn, db_attn, dW_proj, db_proj


# ----------------------------------------------------------------------------- makemore.py's CausalBoW

class CausalAverageCache(NamedTuple):
    att: np.ndarray        # (T, T) the averaging weights: row t holds 1 / (t + 1) on columns 0..t


def causal_average_forward(x):
    """x (B, T, C) -> y (B, T, C), y_t = (x_0 + ... + x_t) / (t + 1): makemore.py's CausalBoW,
    attention with every score equal (its softmax of zeros masked to the past is this att)."""
    T = x.shape[1]
    att = causal_mask(T).astype(x.dtype)              # (T, T)
    att = att / att.sum(1, keepdims=True)             # (T, T) each row a uniform average of the past
    y = att @ x                                       # (B, T, C)
    return y, CausalAverageCache(att)


def causal_average_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C): x_s was averaged into every y_t with t >= s, with weight
    1 / (t + 1), so dx_s = sum over t >= s of dout_t / (t + 1), which is att.T @ dout."""
    return cache.att.T @ dout                         # (B, T, C)


# ----------------------------------------------------------------------------- inverted dropout

class DropoutCache(NamedTuple):
    mask: np.ndarray | None   # x's shape: 0 where dropped, 1 / (1 - p) where kept; None: p = 0


def dropout_forward(x, p, rng):
    """x (...), p in [0, 1), rng a np.random.Generator -> out (...) = x * mask: each entry is
    zeroed with probability p and the rest are scaled by 1 / (1 - p), so the expected output is
    x and nothing needs rescaling at inference. p = 0 returns x itself and draws nothing."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if p == 0:
        return x, DropoutCache(None)
    keep = rng.random(x.shape) >= p                   # (...) True with probability 1 - p
    mask = keep.astype(x.dtype) * (1 / (1 - float(p)))  # (...) in x's dtype
    return x * mask, DropoutCache(mask)               # (...)


def dropout_backward(dout, cache):
    """dout (...) -> dx (...) = dout * mask, the forward's own mask: a dropped entry passed
    nothing forward, so it gets nothing back."""
    return dout if cache.mask is None else dout * cache.mask  # (...)


# ----------------------------------------------------------------------------- residual: x + f(x)

def residual_forward(x, fx):
    """x (...), fx (...) -> out (...) = x + fx, where a block's path f meets its skip. Nothing to cache."""
    return x + fx, None                               # (...)


def residual_backward(dout, cache=None):
    """dout (...) -> dx, dfx, both dout. A sum hands its gradient unchanged to each addend, so in
    x + f(x) the gradient reaching x is dout (the skip) plus what f's backward makes of dout (the
    path): the caller adds the two. Both returns are dout itself: add, never write into them."""
    return dout, dout
