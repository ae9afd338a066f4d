"""Every layer pair of npmlp/layers.py, forward and backward, against a torch autograd mirror of
that one layer (the mirrors live here, not in the library), plus the `out=` buffer variants.

Legend: B batch, T block_size, E n_embd, I/O a linear layer's in/out width, H hidden, V vocab.
Tolerances (relative to the largest |reference| value of the array, see `check`):
  float64: 1e-10 (measured 1e-16..7e-15; only summation order differs);
  float32: 2e-5  (measured 0..7e-7; float32 round-off in differently ordered sums).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import check
import torch
import torch.nn.functional as F

from npmlp.layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                          embedding_forward, linear_backward, linear_forward, tanh_backward,
                          tanh_forward, with_ones)
from npmlp.model import Workspace

RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,E,V,idx_dtype", [(1, 1, 1, 2, np.uint8), (1, 3, 10, 27, np.uint8),
                                               (64, 3, 10, 27, np.uint8), (33, 8, 16, 300, np.int32),
                                               (17, 5, 4, 53, np.int64)])
def test_embedding_vs_torch(dtype, B, T, E, V, idx_dtype):
    rng = np.random.default_rng(B * 1000 + T * 100 + E)
    C = randn(rng, (V, E), dtype)                                  # (V, E)
    X = rng.integers(0, V, size=(B, T)).astype(idx_dtype)          # (B, T)
    demb = randn(rng, (B, T, E), dtype)                            # (B, T, E)
    C0, X0, demb0 = C.copy(), X.copy(), demb.copy()

    emb, cache = embedding_forward(C, X)
    dC = embedding_backward(demb, cache)

    Ct = t(C, grad=True)
    embt = Ct[torch.as_tensor(X.astype(np.int64))]
    embt.backward(t(demb))
    assert emb.dtype == dtype and dC.dtype == dtype
    assert np.array_equal(emb, embt.detach().numpy()), "embedding forward is a copy: must be exact"
    check("dC", dC, Ct.grad.numpy(), RTOL[dtype])
    # pure: inputs untouched
    assert np.array_equal(C, C0) and np.array_equal(X, X0) and np.array_equal(demb, demb0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T", [(1, 1), (512, 8), (4096, 3)])
def test_embedding_backward_every_index_the_same(dtype, B, T):
    """`dC[X] += demb` would keep one of the B*T writes; the right answer sums all of them."""
    rng = np.random.default_rng(7)
    V, E = 27, 10
    X = np.full((B, T), 5, np.uint8)
    demb = rng.uniform(0.5, 1.5, size=(B, T, E)).astype(dtype)    # positive: no cancellation
    _, cache = embedding_forward(randn(rng, (V, E), dtype), X)
    dC = embedding_backward(demb, cache)
    Ct = t(np.zeros((V, E), dtype), grad=True)
    Ct[torch.as_tensor(X.astype(np.int64))].backward(t(demb))
    check("dC (one index)", dC, Ct.grad.numpy(), RTOL[dtype])
    check("dC[5] = sum", dC[5], demb.astype(np.float64).reshape(-1, E).sum(0), RTOL[dtype])
    assert not np.any(np.delete(dC, 5, axis=0)), "rows of C never used must get zero gradient"


# ----------------------------------------------------------------------------- linear

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,I,O", [(1, 1, 1), (1, 30, 200), (32, 30, 200), (7, 3, 27), (256, 80, 300)])
def test_linear_vs_torch(dtype, B, I, O):
    rng = np.random.default_rng(B + I + O)
    x, W, b = randn(rng, (B, I), dtype), randn(rng, (I, O), dtype), randn(rng, (O,), dtype)  # nonzero b
    dout = randn(rng, (B, O), dtype)
    x0, W0, b0 = x.copy(), W.copy(), b.copy()

    x1, Wb = with_ones(x), np.vstack([W, b])                       # (B, I+1) [x, 1], (I+1, O) [W; b]
    assert np.array_equal(x1[:, :I], x) and np.all(x1[:, I] == 1)
    out, cache = linear_forward(x1, Wb)
    dx, dWb = linear_backward(dout, cache)
    dW, db = dWb[:-1], dWb[-1]                                      # the bias trick: db is dWb's last row

    xt, Wt, bt = t(x, True), t(W, True), t(b, True)
    outt = xt @ Wt + bt
    outt.backward(t(dout))
    for name, mine, ref in [("out", out, outt), ("dx", dx, xt.grad), ("dW", dW, Wt.grad), ("db", db, bt.grad)]:
        assert mine.dtype == dtype, name
        check(name, mine, ref.detach().numpy(), RTOL[dtype])
    assert np.array_equal(x, x0) and np.array_equal(W, W0) and np.array_equal(b, b0)


# ----------------------------------------------------------------------------- tanh

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", [(1, 1), (1, 200), (64, 200), (5, 3)])
def test_tanh_vs_torch(dtype, B, H):
    rng = np.random.default_rng(B * H)
    x = randn(rng, (B, H), dtype, scale=3.0)  # scale 3: some saturated units, as with the lecture's init
    dh = randn(rng, (B, H), dtype)
    x0 = x.copy()
    h, cache = tanh_forward(x)
    dx = tanh_backward(dh, cache)
    xt = t(x, True)
    ht = torch.tanh(xt)
    ht.backward(t(dh))
    assert h.dtype == dtype and dx.dtype == dtype
    check("h", h, ht.detach().numpy(), RTOL[dtype])
    check("dx", dx, xt.grad.numpy(), RTOL[dtype])
    assert np.array_equal(x, x0)


# ----------------------------------------------------------------------------- cross-entropy

def _ce_pair(logits, Y):
    """npmlp and torch (loss, dlogits) for the same logits (B, V), Y (B,)."""
    logits0 = logits.copy()
    loss, cache = cross_entropy_forward(logits, Y)
    dlogits = cross_entropy_backward(cache)
    assert np.array_equal(logits, logits0), "cross_entropy_forward(out=None) must not touch logits"
    lt = t(logits, True)
    losst = F.cross_entropy(lt, torch.as_tensor(Y.astype(np.int64)))
    losst.backward()
    return loss, dlogits, losst.item(), lt.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V,scale", [(1, 2, 1.0), (1, 27, 1.0), (32, 27, 1.0), (32, 27, 30.0),
                                       (100, 300, 5.0), (7, 3, 0.0)])
def test_cross_entropy_vs_torch(dtype, B, V, scale):
    rng = np.random.default_rng(B * V)
    logits = randn(rng, (B, V), dtype, scale)   # scale 0: all logits equal, loss = log V
    Y = rng.integers(0, V, size=B).astype(np.uint8 if V <= 256 else np.int32)
    loss, dlogits, losst, dlt = _ce_pair(logits, Y)
    assert dlogits.dtype == dtype and isinstance(loss, float)
    check("loss", loss, losst, RTOL[dtype])
    check("dlogits", dlogits, dlt, RTOL[dtype])
    if scale == 0.0:
        assert abs(float(loss) - np.log(V)) <= RTOL[dtype] * np.log(V)
    # each row of dlogits sums to 0 (softmax sums to 1, the onehot to 1)
    assert np.abs(dlogits.astype(np.float64).sum(1)).max() <= 10 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "signs", "target_low"])
def test_cross_entropy_huge_logits(dtype, kind):
    """Logits of +-1e4: exp(1e4) overflows unless each row's max is subtracted first."""
    rng = np.random.default_rng(3)
    B, V = 64, 27
    Y = rng.integers(0, V, size=B).astype(np.uint8)
    if kind == "uniform":
        logits = rng.uniform(-1e4, 1e4, (B, V))
    elif kind == "signs":   # many ties at the max
        logits = rng.choice([-1e4, 1e4], size=(B, V))
    else:                   # the target far below the rest: loss ~ 2e4, dlogits ~ onehot
        logits = np.full((B, V), 1e4)
        logits[np.arange(B), Y] = -1e4
    logits = logits.astype(dtype)
    loss, dlogits, losst, dlt = _ce_pair(logits, Y)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    check("loss (huge logits)", loss, losst, RTOL[dtype])
    check("dlogits (huge logits)", dlogits, dlt, RTOL[dtype])


# ----------------------------------------------------------------------------- out= buffers

def _all_layers(rng, dtype, B, T, E, H, V, ws=None):
    """Run every pair once; with `ws`, every output goes into a workspace buffer prefilled with NaN
    (so a result that read stale buffer content would show). Returns {name: array (a copy)}."""
    given = {}

    def buf(name, shape):
        if ws is None:
            return None
        b = given[name] = ws.get(name, shape, dtype)
        b.fill(np.nan)
        return b

    C, W, b = randn(rng, (V, E), dtype), randn(rng, (T * E, H), dtype), randn(rng, (H,), dtype)
    X = rng.integers(0, V, size=(B, T)).astype(np.uint8)
    Y = rng.integers(0, V, size=B).astype(np.uint8)
    W2 = randn(rng, (H, V), dtype)
    r = {}
    emb, emb_c = embedding_forward(C, X, out=buf("emb", (B, T, E)))
    hpre, lin_c = linear_forward(with_ones(emb.reshape(B, T * E)), np.vstack([W, b]), out=buf("hpre", (B, H)))
    h, tanh_c = tanh_forward(hpre, out=buf("h", (B, H)))
    logits = np.asarray(h @ W2)                                        # (B, V)
    loss, ce_c = cross_entropy_forward(logits, Y, out=buf("counts", (B, V)))
    dlogits = cross_entropy_backward(ce_c, out=buf("dlogits", (B, V)))
    dh = dlogits @ W2.T
    dhpre = tanh_backward(dh, tanh_c, out=buf("dhpre", (B, H)))
    dx, dWb = linear_backward(dhpre, lin_c, buf("dx", (B, T * E)), buf("dWb", (T * E + 1, H)))
    dW, db = dWb[:-1], dWb[-1]
    dC = embedding_backward(dx.reshape(B, T, E), emb_c, out=buf("dC", (V, E)), onehot=buf("onehot", (B * T, V)))
    if ws is not None:  # the results ARE the buffers: nothing large was allocated
        for name, arr in [("emb", emb), ("hpre", hpre), ("h", h), ("counts", ce_c.counts), ("dlogits", dlogits),
                          ("dhpre", dhpre), ("dx", dx), ("dWb", dWb), ("dC", dC)]:
            assert np.shares_memory(arr, given[name]), f"{name} was not written into its buffer"
    for k, v in dict(emb=emb, hpre=hpre, h=h, loss=loss, dlogits=dlogits, dhpre=dhpre, dx=dx, dW=dW, db=db,
                     dC=dC).items():
        r[k] = np.array(v, copy=True)
    return r


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers_equal_allocating(dtype):
    """The same buffers reused for batch 512, then 7 (smaller: stale data beyond the view),
    then 64 (larger than 7): each time bit-identical to the allocating call."""
    ws = Workspace()
    T, E, H, V = 3, 10, 50, 27
    for B in (512, 7, 64, 1):
        fresh = _all_layers(np.random.default_rng(B), dtype, B, T, E, H, V)
        buffered = _all_layers(np.random.default_rng(B), dtype, B, T, E, H, V, ws=ws)
        for k in fresh:
            assert np.array_equal(fresh[k], buffered[k]), f"B={B} {k}: out= differs from allocating"


def test_embedding_backward_preallocated_onehot_with_garbage():
    """A reused onehot buffer full of junk from a previous call must not leak into dC."""
    rng = np.random.default_rng(11)
    B, T, E, V = 40, 3, 5, 27
    C = randn(rng, (V, E), np.float64)
    X = rng.integers(0, V, size=(B, T)).astype(np.uint8)
    demb = randn(rng, (B, T, E), np.float64)
    _, cache = embedding_forward(C, X)
    want = embedding_backward(demb, cache)
    onehot = rng.standard_normal((B * T, V))
    out = np.full((V, E), np.nan)
    got = embedding_backward(demb, cache, out=out, onehot=onehot)
    assert got is out or np.shares_memory(got, out)
    assert np.array_equal(got, want)
    # and the onehot it left behind really is one-hot of X
    assert np.array_equal(onehot.argmax(1), X.reshape(-1)) and np.array_equal(onehot.sum(1), np.ones(B * T))


def test_workspace_views_are_contiguous_and_regrow():
    ws = Workspace()
    a = ws.get("x", (512, 30), np.float32)
    b = ws.get("x", (7, 30), np.float32)
    assert np.shares_memory(a, b) and b.flags.c_contiguous and b.shape == (7, 30)
    c = ws.get("x", (600, 30), np.float32)      # larger: a new buffer
    assert c.shape == (600, 30) and c.flags.c_contiguous
    d = ws.get("x", (7, 30), np.float64)        # other dtype: a new buffer of that dtype
    assert d.dtype == np.float64 and not np.shares_memory(c, d)
