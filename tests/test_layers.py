"""Every layer pair of npmlp/layers.py, forward and backward, against a torch autograd mirror of
that one layer (the mirrors live here, not in the library).

Legend: B batch, T block_size, E n_embd, I/O a linear layer's in/out width, H hidden, V vocab.
Tolerances (relative to the largest |reference| value of the array, see `check`):
  float64: 1e-10 (measured 1e-16..7e-15; only summation order differs);
  float32: 2e-5  (measured 0..7e-7; float32 round-off in differently ordered sums).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check

from npmlp.layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    tanh_backward,
    tanh_forward,
)

torch = pytest.importorskip("torch", reason="torch is not installed: these tests compare each layer with it")
F = torch.nn.functional
RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]


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
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B,I,O", [(1, 1, 1), (1, 30, 200), (32, 30, 200), (7, 3, 27), (256, 80, 300)])
def test_linear_vs_torch(dtype, bias, B, I, O):
    rng = np.random.default_rng(B + I + O)
    x, W, b = randn(rng, (B, I), dtype), randn(rng, (I, O), dtype), randn(rng, (O,), dtype)  # nonzero b
    dout = randn(rng, (B, O), dtype)
    x0, W0, b0 = x.copy(), W.copy(), b.copy()

    out, cache = linear_forward(x, W, b if bias else None)
    dx, dW, db = linear_backward(dout, cache)

    xt, Wt, bt = t(x, True), t(W, True), t(b, True)
    outt = xt @ Wt + bt if bias else xt @ Wt
    outt.backward(t(dout))
    pairs = [("out", out, outt), ("dx", dx, xt.grad), ("dW", dW, Wt.grad)] + [("db", db, bt.grad)] * bias
    for name, mine, ref in pairs:
        assert mine.dtype == dtype and mine.shape == tuple(ref.shape), name
        check(name, mine, ref.detach().numpy(), RTOL[dtype])
    assert bias or db is None, "a layer without b has no db"
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
    dlogits = cross_entropy_backward(1.0, cache)
    assert np.array_equal(logits, logits0), "cross_entropy_forward must not touch logits"
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


@pytest.mark.parametrize("dloss", [1.0, -0.1, 2.5])
def test_cross_entropy_backward_scales_with_dloss(dloss):
    """The pair's convention (doutput, cache): dlogits of dloss * loss is dloss times dlogits."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((16, 27))
    Y = rng.integers(0, 27, 16)
    _loss, cache = cross_entropy_forward(logits, Y)
    lt = t(logits, True)
    (dloss * F.cross_entropy(lt, torch.as_tensor(Y))).backward()
    check("dlogits * dloss", cross_entropy_backward(dloss, cache), lt.grad.numpy(), 1e-12)
