"""The code paths the speed work added, each held against torch or against the plain path:

- cross-entropy with `counts` laid out as (V, B) (what the model passes) and as (B, V);
- the exp floor that keeps denormal numbers out of the softmax (EXP_FLOOR);
- the backward seeded with dloss (training seeds it with -lr, so the gradient IS the update);
- Workspace views cached per shape, across batch sizes and regrown buffers;
- sgd's chunked steps (a batch above CHUNK rows runs as chunks whose gradients are summed),
  its minibatch gather in groups of steps, and resuming in the middle of a group.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
Tolerances as in test_model.py: float64 1e-10 relative to max|ref|, float32 1e-4 for trajectories.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_dataset

import npmlp.train as train
from npmlp.layers import EXP_FLOOR, cross_entropy_backward, cross_entropy_forward
from npmlp.model import ACT_NAMES, MLP, PARAM_NAMES, Workspace
from npmlp.reference import torch_loss_and_grads, torch_sgd
from npmlp.train import TrainConfig, batch_block, sgd


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rel(mine, ref):
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    return float(np.abs(mine - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-300))


def denormals(a):
    a = np.asarray(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


@pytest.fixture(scope="module")
def data():
    return small_dataset(600, seed=3)


def torch_ce(logits, Y):
    lt = torch.tensor(np.asarray(logits, np.float64) if logits.dtype == np.float64 else logits, requires_grad=True)
    loss = F.cross_entropy(lt, torch.as_tensor(Y.astype(np.int64)))
    loss.backward()
    return loss.item(), lt.grad.numpy()


# ----------------------------------------------------------------------------- cross-entropy layouts

@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("B,V", [(1, 27), (32, 27), (300, 27), (17, 300)])
def test_cross_entropy_transposed_counts_vs_torch(dtype, rtol, B, V):
    """counts and dlogits written into transposed (V, B) buffers, as model.py does: same loss and
    dlogits as torch, and as the (B, V) layout."""
    rng = np.random.default_rng(B + V)
    logits = (rng.standard_normal((B, V)) * 4).astype(dtype)
    Y = rng.integers(0, V, B).astype(np.intp)
    loss_t, dl_t = torch_ce(logits, Y)
    counts_T = np.full((V, B), np.nan, dtype)
    dlogits_T = np.full((V, B), np.nan, dtype)
    loss, cache = cross_entropy_forward(logits, Y, out=counts_T.T)
    dlogits = cross_entropy_backward(cache, out=dlogits_T.T)
    assert np.shares_memory(cache.counts, counts_T) and np.shares_memory(dlogits, dlogits_T)
    assert dlogits.shape == (B, V) and dlogits.dtype == dtype
    assert rel(loss, loss_t) <= rtol and rel(dlogits, dl_t) <= rtol
    loss_c, cache_c = cross_entropy_forward(logits, Y)           # the (B, V) layout
    assert abs(float(loss_c) - float(loss)) <= rtol * abs(float(loss))
    assert rel(cross_entropy_backward(cache_c), dlogits) <= rtol


# ----------------------------------------------------------------------------- denormals

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_floor_keeps_denormals_out_and_changes_nothing_visible(dtype):
    """Rows spanning 120 (float32) / 800 (float64) in logit: without the floor, exp() of the low
    ones is denormal (slow on x86). With it: no denormals, and loss and dlogits still match torch."""
    rng = np.random.default_rng(0)
    B, V = 64, 27
    span = 120.0 if dtype == np.float32 else 800.0
    logits = rng.uniform(-span, 0, (B, V)).astype(dtype)
    logits[:, 0] = 0.0
    Y = rng.integers(0, V, B).astype(np.intp)
    raw = np.exp(logits.astype(dtype) - logits.max(1, keepdims=True))
    assert denormals(raw) > 0, "the test data must produce denormals without the floor"
    loss, cache = cross_entropy_forward(logits, Y)
    dlogits = cross_entropy_backward(cache, dloss=-0.01)        # a small dloss, as training uses
    assert denormals(cache.counts) == 0 and denormals(dlogits) == 0
    loss_t, dl_t = torch_ce(logits, Y)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    assert rel(loss, loss_t) <= tol, (float(loss), loss_t)      # targets far below the max: exact loss
    assert rel(dlogits, -0.01 * dl_t) <= tol
    assert EXP_FLOOR[np.dtype(dtype)] > np.log(np.finfo(dtype).tiny)


# ----------------------------------------------------------------------------- dloss seed

def test_backward_is_linear_in_dloss():
    rng = np.random.default_rng(5)
    model = MLP.init(27, 3, 10, 40, seed=1, dtype=np.float64)
    X, Y = rng.integers(0, 27, (50, 3)).astype(np.uint8), rng.integers(0, 27, 50).astype(np.uint8)
    _, cache = model.forward(X, Y)
    g1, d1 = model.backward(cache)
    g1 = {k: v.copy() for k, v in g1.items()}
    d1 = {k: v.copy() for k, v in d1.items()}
    g2, d2 = model.backward(cache, dloss=-0.1)
    for k in PARAM_NAMES:
        assert rel(g2[k], -0.1 * g1[k]) <= 1e-13, k
    for k in ACT_NAMES:
        assert rel(d2[k], -0.1 * d1[k]) <= 1e-13, k
    _, ref_grads, _ = torch_loss_and_grads(model.params, X, Y)
    for k in PARAM_NAMES:
        assert rel(g1[k], ref_grads[k]) <= 1e-10, k


# ----------------------------------------------------------------------------- Workspace views

def test_workspace_views_cached_per_shape_and_dropped_on_regrow():
    ws = Workspace()
    a = ws.get("x", (64, 10), np.float32)
    assert ws.get("x", (64, 10), np.float32) is a                 # the same view, not a new one
    b = ws.get("x", (8, 10), np.float32)
    assert np.shares_memory(a, b)
    big = ws.get("x", (100, 10), np.float32)                      # regrow: a new buffer
    small = ws.get("x", (8, 10), np.float32)
    assert small is not b and np.shares_memory(small, big) and not np.shares_memory(small, a)
    assert np.shares_memory(small, ws._bufs["x"])
    t = ws.get("y", (27, 8), np.float64).T                        # transposed views, as the model asks
    assert t.shape == (8, 27) and t.flags.f_contiguous


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_workspace_across_batch_sizes_matches_torch(dtype):
    """Batches of 300, 5, 300, 77 through one Workspace (views cached for each size, the buffers
    regrown once): every loss and gradient still matches torch."""
    rng = np.random.default_rng(9)
    model = MLP.init(27, 3, 10, 30, seed=2, dtype=dtype)
    ws = Workspace()
    gflat = model.new_grads()[0]
    tol = 1e-10 if dtype == np.float64 else 2e-5
    for B in (300, 5, 300, 77):
        X, Y = rng.integers(0, 27, (B, 3)).astype(np.intp), rng.integers(0, 27, B).astype(np.intp)
        gflat.fill(np.nan)
        loss, cache = model.forward(X, Y, ws)
        g, dacts = model.backward(cache, gflat, ws)
        tloss, tgrads, tdacts = torch_loss_and_grads(model.params, X, Y)
        assert rel(loss, tloss) <= tol
        for k in PARAM_NAMES:
            assert rel(g[k], tgrads[k]) <= tol, (B, k)
        assert rel(dacts["logits"], tdacts["logits"]) <= tol


# ----------------------------------------------------------------------------- chunked sgd

def run_sgd(data, B, H, dtype, steps, chunk=None, monkeypatch=None, **kw):
    vocab, X, Y = data
    if chunk is not None:
        monkeypatch.setattr(train, "CHUNK", chunk)
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.1, lr_decayed=0.05, decay_at=0.5, seed=77)
    model = MLP.init(vocab.size, 3, 10, H, seed=cfg.seed, dtype=dtype, scheme="kaiming")
    init = {k: v.copy() for k, v in model.params.items()}
    losses = []
    lossi, _ = sgd(model, X, Y, cfg, on_step=lambda s, loss: losses.append(loss), **kw)
    return model, init, np.array(losses), lossi, cfg


@pytest.mark.parametrize("dtype,B,steps,tol", [(np.float64, 600, 30, 1e-10), (np.float32, 1024, 8, 1e-4)])
def test_chunked_steps_match_torch(data, monkeypatch, dtype, B, steps, tol):
    """Batches over CHUNK rows (set to 256 here; 600: three chunks of 200; 1024: four of 256) against the
    lecture's torch loop: the same losses and parameters."""
    vocab, X, Y = data
    model, init, losses, _, cfg = run_sgd(data, B, 24 if dtype == np.float64 else 32, dtype, steps,
                                          chunk=256, monkeypatch=monkeypatch)
    ix = batch_block(cfg.seed, 0, len(X), B)[:steps]
    tlosses, tparams = torch_sgd(init, X, Y, ix, [cfg.lr_at(s) for s in range(steps)])
    assert rel(losses, tlosses) <= tol
    for k in PARAM_NAMES:
        assert rel(model.params[k], tparams[k]) <= tol, k


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("B,chunk", [(513, 256), (100, 7), (64, 64)])
def test_chunked_equals_one_pass(data, monkeypatch, dtype, tol, B, chunk):
    """The same steps with chunks (uneven: 513 = 3 x 171; 100 = 15 chunks of 6-7 rows; exactly one
    chunk) and without: the same trajectory and parameters up to round-off."""
    m1, _, l1, _, _ = run_sgd(data, B, 16, dtype, 12, chunk=10 ** 6, monkeypatch=monkeypatch)
    m2, _, l2, _, _ = run_sgd(data, B, 16, dtype, 12, chunk=chunk, monkeypatch=monkeypatch)
    assert rel(l2, l1) <= tol
    assert rel(m2.flat, m1.flat) <= tol


def test_chunked_divergence_is_caught_before_the_update(data, monkeypatch):
    """lr 1e30: the first update blows the params up, the next step's loss is not finite. sgd raises
    Diverged for that step and leaves the params as the previous step made them."""
    vocab, X, Y = data
    monkeypatch.setattr(train, "CHUNK", 50)
    cfg = TrainConfig(steps=5, batch_size=200, lr=1e30, seed=3)
    model = MLP.init(vocab.size, 3, 10, 8, seed=3)
    with np.errstate(all="ignore"):
        with pytest.raises(train.Diverged) as e:
            sgd(model, X, Y, cfg)
        ref = MLP.init(vocab.size, 3, 10, 8, seed=3)
        sgd(ref, X, Y, cfg, stop=e.value.step)                   # the steps before the bad one
    assert e.value.step >= 1
    assert np.array_equal(model.flat, ref.flat, equal_nan=True)


# ----------------------------------------------------------------------------- gather groups

def test_gather_groups_and_resume_mid_group_are_bit_identical(data, monkeypatch):
    """GATHER // B = 7 steps gathered at once (7 does not divide BLOCK): interrupting at steps that
    fall inside a group and resuming gives the uninterrupted run's params bit for bit, also
    across the step-BLOCK boundary where a new index block starts."""
    monkeypatch.setattr(train, "GATHER", 7 * 16)
    monkeypatch.setattr(train, "BLOCK", 20)
    vocab, X, Y = data
    cfg = TrainConfig(steps=45, batch_size=16, seed=11)
    ref = MLP.init(vocab.size, 3, 10, 12, seed=11)
    lossi_ref, _ = sgd(ref, X, Y, cfg)
    model = MLP.init(vocab.size, 3, 10, 12, seed=11)
    lossi, start = None, 0
    for s in (3, 9, 19, 26):
        lossi, start = sgd(model, X, Y, cfg, lossi=lossi, start=start, on_step=lambda step, loss: step == s)  # noqa: B023
    sgd(model, X, Y, cfg, lossi=lossi, start=start)
    assert np.array_equal(model.flat, ref.flat)
    assert np.array_equal(lossi, lossi_ref)


def test_gather_uses_the_drawn_rows(data):
    """Each step trains on exactly batch_block's rows: the first step's loss is the model's loss
    on those rows (the gathered copies are intp, the data uint8)."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=1, batch_size=40, seed=5)
    model = MLP.init(vocab.size, 3, 10, 12, seed=5, dtype=np.float64)
    ix = batch_block(cfg.seed, 0, len(X), 40)[0]
    want = model.loss(X[ix], Y[ix])
    got = []
    sgd(model, X, Y, cfg, on_step=lambda s, loss: got.append(loss))
    assert got == [want]
