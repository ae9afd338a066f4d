"""The fast engine (npmlp/fast/engine.py) held to the reference tier it rearranges: mlp.MLP's forward and
backward and train.sgd's loop. Nothing here compares the fast engine only with itself: where a
test checks it bit for bit against another fast run (resuming, gather groups), it also checks it
against the reference.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, N rows of the data.
Relative error = max|fast - reference| / max|reference|, per parameter (helpers.check).
Tolerances (measured worst over this module's shapes in brackets):
  float64, one step: 1e-12 for the loss, each gradient, each parameter's update (params after the
    step minus before; it carries the round-off of p + update, ~eps * max|p| / max|update|) and the
    params after it [gradients and updates 1.2e-13, at B=4096 with one character everywhere where
    the reference's np.add.at adds 12,288 equal rows one by one; params 6e-14; loss 5e-16];
  float64, 1,000+ steps: 1e-10 on every parameter and the loss history [5.5e-12 at the lecture's
    sizes (H=200: its saturated init amplifies round-off step by step); 2e-15 at H=16];
  float32: 2e-5 [gradients 2.8e-6, params 1.3e-6, loss 2.6e-7]. The yardstick is the reference run
    in float64 from the same float32 params: the float32 reference sums the rows of one character
    one by one (np.add.at, dout.sum(0)) and is itself up to 7e-5 off in its gradients (4e-5 in the
    params after a step at lr 0.5) at B=4096 with one character everywhere, where the fast engine's
    BLAS sums stay within 3e-6.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import check, needs_torch, rel, small_dataset

from npmlp import train
from npmlp.data import Vocab, build_dataset
from npmlp.fast import engine as fast
from npmlp.fast import tanh as fast_tanh
from npmlp.loading import load_words
from npmlp.mlp import MLP, PARAM_NAMES
from npmlp.train import BLOCK, Diverged, TrainConfig, batch_block

RTOL64 = 1e-12
RTOL64_RUN = 1e-10
RTOL32 = 2e-5


@pytest.fixture(scope="module")
def data():
    return small_dataset(400, seed=1)


@pytest.fixture(params=sorted(fast_tanh.TANH_FORMS))
def tanh(request, monkeypatch):
    """Each tanh the fast step can choose from the CPU (fast_tanh.TANH), forced for both dtypes: every
    path is held to the reference on any CPU, not only the one this CPU picks."""
    for dt in (np.float32, np.float64):
        monkeypatch.setitem(fast_tanh.TANH, np.dtype(dt), request.param)
    return request.param


@pytest.fixture(params=["rows", "windows"])
def cut(request, monkeypatch):
    """Both ways the fast step can cut a batch, forced (engine.DISTINCT_FROM): chunks of its rows,
    or its distinct windows of characters, so each is held to the reference at every batch size."""
    monkeypatch.setattr(fast, "DISTINCT_FROM", 1 if request.param == "windows" else 10 ** 9)
    return request.param


def as64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def run(engine, params, X, Y, cfg, **kw):
    """`engine` (train.sgd or fast.sgd) on a fresh MLP(params) -> (model, losses at full precision, lossi)."""
    model = MLP(params)
    losses = []
    lossi, _ = engine(model, X, Y, cfg, on_step=lambda step, loss: losses.append(loss), **kw)
    return model, np.array(losses), lossi


def check_params(what, mine, ref, rtol):
    """Every parameter of model `mine` against model `ref`; -> the worst relative error."""
    return max(check(f"{what}: {k}", mine.params[k], ref.params[k], rtol) for k in PARAM_NAMES)


def denormals(a) -> int:
    a = np.asarray(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


# ----------------------------------------------------------------------------- one step, a grid of shapes

def grid_data(V, T, repeat, seed, N=300):
    """N rows (uint8, as build_dataset makes them); repeat: one character everywhere, so every row
    of a batch hits the same row of C and the same target."""
    if repeat:
        return np.full((N, T), V - 1, np.uint8), np.full(N, V - 1, np.uint8)
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (N, T)).astype(np.uint8), rng.integers(0, V, N).astype(np.uint8)


# (B, T, H, V, E, one character everywhere): a sample of batch 1, 2, 32, 129 (two chunks), 4096
# (32 chunks); block_size 1-8; n_hidden 1-1000; vocab 2-60. The lecture's init: every bias non-zero.
GRID = [
    (1, 1, 1, 2, 1, False),
    (1, 8, 1000, 60, 10, True),
    (2, 3, 1000, 27, 10, False),
    (2, 1, 7, 2, 2, True),
    (32, 3, 200, 27, 10, False),
    (32, 8, 1, 60, 4, True),
    (129, 5, 17, 2, 3, False),
    (129, 8, 1000, 27, 2, True),
    (129, 2, 300, 60, 16, False),
    (4096, 2, 64, 27, 4, False),
    (4096, 3, 64, 5, 10, True),
]
GRID_IDS = [f"B{b}-T{t}-H{h}-V{v}-E{e}" + ("-repeat" if r else "") for b, t, h, v, e, r in GRID]


@pytest.mark.parametrize("B,T,H,V,E,repeat", GRID, ids=GRID_IDS)
def test_one_step_equals_the_reference_float64(B, T, H, V, E, repeat, tanh, cut):
    """One fast.sgd step and one train.sgd step from the same params on the same minibatch: the
    same loss, update and params to 1e-12; fast.gradients equal to MLP.backward's to 1e-12."""
    seed = B + 10 * T + H + V
    X, Y = grid_data(V, T, repeat, seed)
    cfg = TrainConfig(steps=1, batch_size=B, lr=0.5, lr_decayed=0.5, seed=seed)
    p0 = MLP.init(V, T, E, H, seed=seed, dtype=np.float64).params
    ref, ref_loss, _ = run(train.sgd, p0, X, Y, cfg)
    mine, loss, lossi = run(fast.sgd, p0, X, Y, cfg)
    check("loss", loss, ref_loss, RTOL64)
    assert lossi[0] == np.float32(loss[0])
    for k in PARAM_NAMES:
        check(f"{k}'s update", mine.params[k] - p0[k], ref.params[k] - p0[k], RTOL64)
    check_params("params after the step", mine, ref, RTOL64)
    ix = train.batch_rows(cfg, 0, len(X))                       # (B,) the step's rows
    _, grads = MLP(p0).loss_and_grads(X[ix], Y[ix])
    fast_grads = fast.gradients(MLP(p0), X[ix], Y[ix])
    for k in PARAM_NAMES:
        assert fast_grads[k].shape == grads[k].shape and fast_grads[k].dtype == np.float64
        check("d" + k, fast_grads[k], grads[k], RTOL64)


@pytest.mark.parametrize("B,T,H,V,E,repeat", GRID, ids=GRID_IDS)
def test_one_step_equals_the_reference_float32(B, T, H, V, E, repeat, tanh, cut):
    """The float32 fast step against the float32 reference step (params after it) and against the
    reference in float64 from the same float32 params (loss, gradients, params): within 2e-5."""
    seed = B + 10 * T + H + V
    X, Y = grid_data(V, T, repeat, seed)
    cfg = TrainConfig(steps=1, batch_size=B, lr=0.5, lr_decayed=0.5, seed=seed)
    p32 = MLP.init(V, T, E, H, seed=seed, dtype=np.float32).params
    mine, loss, _ = run(fast.sgd, p32, X, Y, cfg)
    ref32, _, _ = run(train.sgd, p32, X, Y, cfg)
    ref64, ref_loss, _ = run(train.sgd, as64(p32), X, Y, cfg)
    assert all(mine.params[k].dtype == np.float32 for k in PARAM_NAMES)
    check("loss", loss, ref_loss, RTOL32)
    check_params("params after the step vs float64 reference", mine, ref64, RTOL32)
    for k in PARAM_NAMES:   # plus the float32 reference's own error (see the module docstring)
        own = rel(ref32.params[k], ref64.params[k])
        check(f"params after the step vs float32 reference: {k}", mine.params[k], ref32.params[k], RTOL32 + own)
    ix = train.batch_rows(cfg, 0, len(X))
    _, grads = MLP(as64(p32)).loss_and_grads(X[ix], Y[ix])
    fast_grads = fast.gradients(MLP(p32), X[ix], Y[ix])
    for k in PARAM_NAMES:
        assert fast_grads[k].dtype == np.float32
        check("d" + k, fast_grads[k], grads[k], RTOL32)


# ----------------------------------------------------------------------------- whole runs

@pytest.mark.parametrize("B,H,steps", [(32, 200, 1000), (300, 16, 1100)])
def test_trajectory_equals_the_reference_float64(data, B, H, steps, tanh, cut):
    """fast.sgd and train.sgd from the lecture's init on the same minibatches, with the lr drop
    halfway: every loss and every parameter within 1e-10. B=32: the lecture's model, one chunk,
    a whole block of steps gathered at once. B=300: three chunks; gather groups of 109 steps (not
    a divisor of BLOCK), so one is cut short at step 1000 where a new block of indices starts."""
    vocab, X, Y = data
    assert B == 32 or (fast.gather_group(B) == 109 and BLOCK % 109 and steps > BLOCK)
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.1, lr_decayed=0.01, seed=1234)
    p0 = MLP.init(vocab.size, 3, 10, H, seed=cfg.seed, dtype=np.float64).params
    ref, ref_losses, ref_lossi = run(train.sgd, p0, X, Y, cfg)
    mine, losses, lossi = run(fast.sgd, p0, X, Y, cfg)
    assert len(losses) == steps
    check(f"loss history ({steps} steps)", losses, ref_losses, RTOL64_RUN)
    check_params(f"after {steps} steps", mine, ref, RTOL64_RUN)
    assert np.array_equal(lossi, losses.astype(np.float32))
    check("lossi", lossi, ref_lossi, 1e-7)                      # float32 copies of the same numbers
    assert ref_losses[-100:].mean() < ref_losses[:100].mean()   # it trained


@pytest.mark.parametrize("B", [128, 129, 256, 257, 385])
def test_chunked_batches_equal_the_reference(data, B, tanh, cut):
    """Batches at the chunk edges (one chunk of 128; 64+65; 2x128; 128+129; 128+128+129), 6 steps:
    float64 within 1e-12 of train.sgd; float32 within 2e-5 of the float64 reference."""
    vocab, X, Y = data
    chunks = fast.batch_chunks(B)
    assert len(chunks) == -(-B // fast.CHUNK) and all(e - a <= fast.CHUNK for a, e, _ in chunks)
    assert chunks[0][0] == 0 and chunks[-1][1] == B and sum(s for *_, s in chunks) == pytest.approx(1)
    cfg = TrainConfig(steps=6, batch_size=B, lr=0.3, lr_decayed=0.1, seed=B)
    p32 = MLP.init(vocab.size, 3, 10, 40, seed=B, dtype=np.float32).params
    ref, ref_losses, _ = run(train.sgd, as64(p32), X, Y, cfg)
    mine, losses, _ = run(fast.sgd, as64(p32), X, Y, cfg)
    check("losses float64", losses, ref_losses, RTOL64)
    check_params("float64", mine, ref, RTOL64)
    mine32, losses32, _ = run(fast.sgd, p32, X, Y, cfg)
    check("losses float32", losses32, ref_losses, RTOL32)
    check_params("float32", mine32, ref, RTOL32)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, RTOL64), (np.float32, RTOL32)])
def test_one_engine_across_chunk_sizes(data, dtype, rtol):
    """One Engine fed chunks of 100, 5, 100, 77, 1 and 128 rows in turn (its buffers are made per
    chunk size and reused): each chunk's loss and update (seeded with -lr) equal the reference's
    loss and -lr x gradient on those rows, as the float64 reference computes them."""
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 30, seed=2, dtype=dtype)
    ref = MLP(as64(model.params))
    eng = fast.Engine(model)
    eng.load(model)
    lr, rng = 0.3, np.random.default_rng(9)
    for n in (100, 5, 100, 77, 1, 128):
        ix = rng.integers(0, len(X), n)
        xb, yb = X[ix].astype(np.intp), Y[ix].astype(np.intp)
        update = eng.views(np.full_like(eng.flat, np.nan))
        loss, bufs = eng.forward_loss(xb, yb)
        eng.backward(bufs, xb, yb, -lr, update)
        ref_loss, grads = ref.loss_and_grads(xb, yb)
        check(f"loss of {n} rows", loss, ref_loss, rtol)
        for k in PARAM_NAMES:
            check(f"{k}'s update from {n} rows", getattr(update, k), -lr * grads[k], rtol)


@needs_torch
@pytest.mark.parametrize("B", [32, 300])
def test_fast_sgd_matches_torch_50_steps(data, B):
    """The fast engine against the lecture's torch loop directly (not only through the reference)."""
    from npmlp.torch_mirrors import torch_sgd
    vocab, X, Y = data
    cfg = TrainConfig(steps=50, batch_size=B, lr=0.1, lr_decayed=0.01, seed=7)
    p0 = MLP.init(vocab.size, 3, 10, 100, seed=cfg.seed, dtype=np.float64).params
    t_losses, t_params = torch_sgd(MLP(p0), X, Y, batch_block(cfg.seed, 0, len(X), B)[:50].copy(),
                                   [cfg.lr_at(s) for s in range(50)])
    mine, losses, _ = run(fast.sgd, p0, X, Y, cfg)
    check("loss history vs torch", losses, t_losses, RTOL64_RUN)
    for k in PARAM_NAMES:
        check(k + " vs torch", mine.params[k], t_params[k], RTOL64_RUN)


# ----------------------------------------------------------------------------- gather groups, resuming

def test_gather_groups_and_resume_mid_group(data, monkeypatch):
    """GATHER set so 7 steps' rows are gathered at once (7 does not divide BLOCK): a run stopped
    (on_step -> True) at steps inside groups and across the step-1000 block edge, then resumed,
    gives the uninterrupted run's params and losses bit for bit; and that run equals train.sgd."""
    monkeypatch.setattr(fast, "GATHER", 7 * 16)
    assert fast.gather_group(16) == 7
    vocab, X, Y = data
    cfg = TrainConfig(steps=1010, batch_size=16, lr=0.1, lr_decayed=0.05, seed=11)
    p0 = MLP.init(vocab.size, 3, 10, 12, seed=11, dtype=np.float64, scheme="kaiming").params
    whole, losses, lossi_whole = run(fast.sgd, p0, X, Y, cfg)
    ref, ref_losses, _ = run(train.sgd, p0, X, Y, cfg)
    check("uninterrupted fast run vs train.sgd: losses", losses, ref_losses, RTOL64_RUN)
    check_params("uninterrupted fast run vs train.sgd", whole, ref, RTOL64_RUN)

    model, lossi, start = MLP(p0), None, 0
    with fast.Chunks(model, cfg.batch_size) as batches:               # one batches across the calls
        for s in (3, 9, 19, 26, 998, 1001):
            lossi, start = fast.sgd(model, X, Y, cfg, lossi=lossi, start=start, batches=batches,
                                    on_step=lambda step, loss: step == s)  # noqa: B023
            assert start == s + 1
        lossi, end = fast.sgd(model, X, Y, cfg, lossi=lossi, start=start, batches=batches)
    assert end == cfg.steps
    for k in PARAM_NAMES:
        assert np.array_equal(model.params[k], whole.params[k]), k
    assert np.array_equal(lossi, lossi_whole)


def test_each_step_trains_on_the_drawn_rows(data):
    """The first step's loss is the reference model's loss on batch_block's rows (the data are
    uint8; the engine gathers them into intp copies)."""
    vocab, X, Y = data
    assert X.dtype == np.uint8
    cfg = TrainConfig(steps=1, batch_size=40, seed=5)
    p0 = MLP.init(vocab.size, 3, 10, 12, seed=5, dtype=np.float64).params
    ix = batch_block(cfg.seed, 0, len(X), 40)[0]
    _, losses, _ = run(fast.sgd, p0, X, Y, cfg)
    check("first loss", losses, [MLP(p0).loss(X[ix], Y[ix])], RTOL64)


# ----------------------------------------------------------------------------- results and pools

def test_results_are_left_in_model_params(data):
    """fast.sgd trains its own flat copy and copies back into the model's own arrays: after a
    normal end, after on_step asked to stop, and after on_step raised (Ctrl-C in a notebook)."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=30, batch_size=64, seed=2)
    p0 = MLP.init(vocab.size, 3, 10, 20, seed=2, dtype=np.float64).params
    for stop_at, exc in ((None, None), (12, None), (12, KeyboardInterrupt)):
        model = MLP(p0)
        arrays = dict(model.params)

        def on_step(step, loss, stop_at=stop_at, exc=exc):
            if step == stop_at and exc is not None:
                raise exc
            return step == stop_at

        if exc is None:
            fast.sgd(model, X, Y, cfg, on_step=on_step)
        else:
            with pytest.raises(exc):
                fast.sgd(model, X, Y, cfg, on_step=on_step)
        done = cfg.steps if stop_at is None else stop_at + 1
        ref = MLP(p0)
        train.sgd(ref, X, Y, cfg, stop=done)
        assert all(model.params[k] is arrays[k] for k in PARAM_NAMES), "the model's arrays were replaced"
        check_params(f"{done} steps (stop at {stop_at}, {exc})", model, ref, RTOL64)


def test_a_pool_for_another_batch_size_or_shape_is_refused(data):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    cfg = TrainConfig(steps=2, batch_size=32)
    others = [MLP.init(vocab.size, 3, 10, 17, seed=1), MLP.init(vocab.size, 4, 10, 16, seed=1),
              MLP.init(vocab.size, 3, 9, 16, seed=1), MLP.init(vocab.size + 1, 3, 10, 16, seed=1)]
    before = {k: v.copy() for k, v in model.params.items()}
    with fast.Chunks(model, 64) as batches, pytest.raises(ValueError, match="another batch size"):
        fast.sgd(model, X, Y, cfg, batches=batches)
    for other in others:
        with fast.Chunks(other, 32) as batches, pytest.raises(ValueError, match="another batch size, dtype or model"):
            fast.sgd(model, X, Y, cfg, batches=batches)
    batches = fast.Chunks(model, 32)
    batches.close()
    with pytest.raises(ValueError, match="closed"):
        fast.sgd(model, X, Y, cfg, batches=batches)
    assert all(np.array_equal(model.params[k], before[k]) for k in PARAM_NAMES)


def test_a_pool_for_another_dtype_does_not_change_the_arithmetic(data):
    """A Chunks made for a float32 model, handed a float64 model of the same shape, is refused
    before any step (training it in float32 and storing it back would be 2e-7 off the float64
    reference, silently); the model is left as it was."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=20, batch_size=32, seed=3)
    p64 = MLP.init(vocab.size, 3, 10, 16, seed=3, dtype=np.float64).params
    model = MLP(p64)
    with fast.Chunks(MLP.init(vocab.size, 3, 10, 16, seed=3, dtype=np.float32), 32) as batches:
        with pytest.raises(ValueError, match="another batch size, dtype or model"):
            fast.sgd(model, X, Y, cfg, batches=batches)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(model.params[k], p64[k])


# ----------------------------------------------------------------------------- the tanh chosen from the CPU

def test_the_exp_form_of_tanh_is_tanh():
    """tanh_exp against np.tanh over the range a hidden layer sees and beyond (exp(2x) overflows
    to inf for large x and must give 1, without a warning inside sgd's errstate): within a few
    units in the last place of 1, exact at 0 and at the saturated ends, NaN stays NaN."""
    for dt, ulps in ((np.float32, 4), (np.float64, 4)):
        x = np.concatenate([np.linspace(-30, 30, 20001), [0.0, 1e-30, -1e-30, 1e4, -1e4, np.inf, -np.inf]]).astype(dt)
        out = np.empty_like(x)
        with np.errstate(over="ignore"):
            fast_tanh.tanh_exp(dt)(x, out)
        ref = np.tanh(x.astype(np.float64))
        check(f"tanh_exp {np.dtype(dt)}", out, ref, ulps * np.finfo(dt).eps, scale=1.0)
        assert out[-7] == 0 and out[-4] == 1 and out[-3] == -1 and out[-2] == 1 and out[-1] == -1
        nan = np.array([np.nan], dt)
        fast_tanh.tanh_exp(dt)(nan, nan)
        assert np.isnan(nan[0])


@pytest.mark.parametrize("machine,loop,form", [
    ("x86_64", "X86_V4", "np.tanh"), ("x86_64", "AVX512_SKX", "np.tanh"), ("x86_64", "AVX512F", "np.tanh"),
    ("x86_64", "X86_V3", "exp"), ("x86_64", "FMA3__AVX2", "exp"), ("x86_64", "baseline(X86_V2)", "exp"),
    ("AMD64", "baseline(SSE SSE2 SSE3)", "exp"), ("aarch64", "ASIMD", "np.tanh"),
    ("aarch64", "baseline(NEON)", "np.tanh")])
def test_tanh_form_follows_numpys_loop(monkeypatch, machine, loop, form):
    """fast_tanh.tanh_form reads which loop NumPy's tanh runs for a dtype (numpy.lib.introspect): the exp
    form on x86 unless that loop is an AVX-512 one; NumPy's tanh elsewhere."""
    introspect = pytest.importorskip("numpy.lib.introspect")
    monkeypatch.setattr(introspect, "opt_func_info", lambda func_name=None, signature=None: {
        "tanh": {"ff": {"current": loop, "available": loop}, "dd": {"current": loop, "available": loop}}})
    monkeypatch.setattr(fast_tanh.platform, "machine", lambda: machine)
    assert fast_tanh.tanh_form(np.float32) == fast_tanh.tanh_form(np.float64) == form


def test_the_run_records_the_tanh_chosen():
    """ARITHMETIC (recorded in every run, compared by --resume) names the tanh of each dtype."""
    assert set(fast_tanh.TANH.values()) <= set(fast_tanh.TANH_FORMS)
    for dt in (np.float32, np.float64):
        assert f"{np.dtype(dt)} {fast_tanh.TANH[np.dtype(dt)]}" in fast.ARITHMETIC
    assert fast.Engine(MLP.init(5, 2, 2, 3)).tanh_form == fast_tanh.TANH[np.dtype(np.float32)]
    forced = fast.Engine(MLP.init(5, 2, 2, 3), tanh="exp")
    assert forced.tanh_form == "exp" and forced.tanh.__qualname__ == "tanh_exp.<locals>.tanh"


def test_an_exp_form_run_gives_no_overflow_warning(data, monkeypatch):
    """Hidden pre-activations above 44 (float32) overflow exp(2x) in the exp form: fast.sgd and
    fast.gradients turn that warning off, and the step still equals the reference's."""
    monkeypatch.setitem(fast_tanh.TANH, np.dtype(np.float32), "exp")
    vocab, X, Y = data
    p = MLP.init(vocab.size, 3, 10, 16, seed=5, dtype=np.float32).params
    p["W1"] *= 100                                             # |hpreact| up to hundreds
    cfg = TrainConfig(steps=3, batch_size=32, lr=0.01, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine, _, _ = run(fast.sgd, p, X, Y, cfg)
        fast.gradients(MLP(p), X[:32], Y[:32])
    ref, _, _ = run(train.sgd, as64(p), X, Y, cfg)
    check_params("after 3 steps", mine, ref, RTOL32)


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("B", [32, 300])
@pytest.mark.parametrize("lr_decayed,step,window", [(1e60, 11, False), (1e200, 11, False), (1e30, 4, True)])
def test_divergence_is_caught_before_the_update(data, B, lr_decayed, step, window, cut):
    """lr 0.1, then from step 10 a huge rate: step 10's update makes step 11's loss ~1e59 or ~1e199
    (above float32's max; at 1e200 the hidden layer's pre-activations overflow to inf on the way).
    With lr 1e30 throughout, the losses stay finite and the mean at the run's last step (4) explodes.
    Both engines raise Diverged at the same step with the same numbers; fast.sgd's params are those
    before that step's update (bit for bit those of a run stopped there) and equal the reference's."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=20 if not window else 5, batch_size=B, lr=0.1 if not window else lr_decayed,
                      lr_decayed=lr_decayed, decay_at=0.5, seed=3)
    p0 = MLP.init(vocab.size, 3, 10, 8, seed=3, dtype=np.float64).params
    got = {}
    with np.errstate(all="ignore"):
        for name, engine in (("fast", fast.sgd), ("reference", train.sgd)):
            model, lossi = MLP(p0), np.zeros(cfg.steps, np.float32)
            with pytest.raises(Diverged) as e:
                engine(model, X, Y, cfg, lossi=lossi)
            got[name] = model, lossi, e.value
        stopped, _, _ = run(fast.sgd, p0, X, Y, cfg, stop=step)
    (model, lossi, d), (ref, ref_lossi, rd) = got["fast"], got["reference"]
    assert d.step == rd.step == step
    assert (d.mean is not None) == (rd.mean is not None) == window
    if window:
        limit = train.EXPLODE * max(float(lossi[0]), np.log(vocab.size))
        assert (d.first, d.limit) == (rd.first, rd.limit) == (0, limit)
        check("window mean", d.mean, rd.mean, RTOL64)
    if np.isfinite(rd.loss):
        check("the diverged loss", d.loss, rd.loss, RTOL64)
    else:
        assert not np.isfinite(d.loss), (d.loss, rd.loss)
    assert not lossi[step:].any(), "the diverged step's loss was recorded"
    check("losses before", lossi, ref_lossi, 1e-7)
    for k in PARAM_NAMES:
        assert np.array_equal(model.params[k], stopped.params[k]), f"{k}: the diverged step's update was applied"
    check_params("params at the divergence", model, ref, RTOL64)


# ----------------------------------------------------------------------------- denormals (EXP_FLOOR)

def test_exp_floor_is_a_normal_number():
    for dt in (np.float32, np.float64):
        floor = fast.EXP_FLOOR[np.dtype(dt)]
        assert np.log(np.finfo(dt).tiny) < floor < 0
        assert np.exp(np.array(floor, dt)) >= np.finfo(dt).tiny


@pytest.fixture(scope="module")
def names_rows(names_path):
    """512 rows of the lecture's names.txt (vocab 27, block_size 3)."""
    words = load_words(names_path)
    vocab = Vocab.from_words(words)
    X, Y = build_dataset(words[:200], vocab, 3)
    return vocab, X[:512].astype(np.intp), Y[:512].astype(np.intp)


@pytest.mark.parametrize("dtype,w2_scale", [(np.float32, 1.0), (np.float64, 20.0)])
def test_no_denormals_in_the_softmax_and_the_same_numbers(names_rows, dtype, w2_scale):
    """The lecture's init at H=1000 (float32; float64 needs W2 x 20 for logits spanning > 708):
    exp() of the shifted logits makes denormal numbers in the reference's softmax (slow on x86).
    The fast engine's counts and dlogits hold none, and its loss, gradients and update still
    equal the reference's (float32 within 2e-5, float64 within 1e-12)."""
    vocab, X, Y = names_rows
    model = MLP.init(vocab.size, 3, 10, 1000, dtype=dtype)
    model.params["W2"] *= dtype(w2_scale)
    _, cache = model.forward(X, Y)
    assert denormals(cache.probs) > 0, "the test must produce denormals in the reference's softmax"
    ref64 = MLP(as64(model.params))
    ref_loss, ref_grads = ref64.loss_and_grads(X, Y)
    rtol = RTOL32 if dtype == np.float32 else RTOL64
    lr = 0.1
    eng = fast.Engine(model)
    eng.load(model)
    for a, e, _share in fast.batch_chunks(len(X)):             # the engine's chunks, as in a step
        part, bufs = eng.forward_loss(X[a:e], Y[a:e])
        update = eng.views(np.zeros_like(eng.flat))
        eng.backward(bufs, X[a:e], Y[a:e], -lr, update)
        assert denormals(bufs.counts) == 0 and denormals(bufs.dlogits) == 0
        chunk_loss, chunk_grads = ref64.loss_and_grads(X[a:e], Y[a:e])
        check("chunk loss", part, chunk_loss, rtol)
        for k in PARAM_NAMES:
            check(f"chunk update {k}", getattr(update, k), -lr * chunk_grads[k], rtol)
    check("loss of the batch", model.loss(X, Y), ref_loss, rtol)
    grads = fast.gradients(model, X, Y, lr=lr)
    for k in PARAM_NAMES:
        check("d" + k, grads[k], ref_grads[k], rtol)


# ----------------------------------------------------------------------------- fast.gradients' edges

def test_gradients_of_a_non_finite_loss_are_not_finite(data):
    """Where the loss is inf/NaN (an inf in W2) the reference's gradients are NaN; fast.gradients
    must not answer with numbers, although run_chunks skips the backward of a chunk whose loss is
    not finite (zeros, or only the finite chunks' sum, would look like an answer)."""
    vocab, X, Y = data
    p = MLP.init(vocab.size, 3, 10, 16, seed=4, dtype=np.float64).params
    p["W2"][0, 0] = np.inf
    model = MLP(p)
    for B in (32, 300):
        with np.errstate(all="ignore"):
            loss, grads = model.loss_and_grads(X[:B], Y[:B])
            fast_grads = fast.gradients(model, X[:B], Y[:B])
        assert not np.isfinite(loss) and not np.isfinite(grads["W2"]).all()
        finite = [k for k in PARAM_NAMES if np.isfinite(fast_grads[k]).all()]
        assert not finite, f"B={B}: fast.gradients gave finite {finite} for a loss of {loss}"


BLAS_AFTER_A_FAILED_CHUNKS = """
import json
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from npmlp.fast import engine as fast
from npmlp.mlp import MLP
threads = lambda: sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
threadpool_limits(2, user_api="blas")
before, raised = threads(), None
try:
    fast.gradients(MLP.init(5, 3, 2, 4), np.zeros((0, 3), np.intp), np.zeros(0, np.intp))
except Exception as e:
    raised = type(e).__name__
print(json.dumps({"before": before, "raised": raised, "after": threads()}))
"""


def test_a_chunks_that_fails_to_build_gives_the_blas_threads_back():
    """Chunks limits BLAS to one thread while it is open; one whose construction raises (here for
    an empty batch) must not leave that limit on for the rest of the process. Run in a subprocess,
    which a leaked limit cannot outlive. (The limit is taken last, after every array is made.)"""
    r = subprocess.run([sys.executable, "-c", BLAS_AFTER_A_FAILED_CHUNKS], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["before"] == [2], f"the test needs BLAS at 2 threads: {got}"
    assert got["after"] == got["before"], f"after a failed Chunks ({got['raised']}) BLAS runs {got['after']} thread(s)"


@pytest.mark.parametrize("kind, sizes", [("mlp", {}), ("bn", {}), ("bigram", {}), ("mlp", {"block_size": 14}),
                                         ("wavenet", {"batchnorm_over_batch_only": 1})])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_evaluation_over_distinct_windows_is_train_evaluate(kind, sizes, dtype, rtol):
    """npmlp.fast.evaluate of a windows model the stack engine does not run (windows.window_loss:
    each distinct window once) equals train.evaluate: after steps that move BatchNorm's running
    statistics away from 0 and 1, on rows whose windows repeat; block_size 14 renumbers its keys
    (27^14 > 2^62); the WaveNet with part 5's bug trains and evaluates off the stack engine."""
    import npmlp.fast
    from npmlp.app.registry import MODELS
    from npmlp.fast import windows
    words = load_words_from(600)
    cls = MODELS[kind]
    T = sizes.get("block_size", cls.spec.defaults.get("block_size", 1))
    vocab = Vocab.from_words(words)
    X, Y = build_dataset(words, vocab, T)
    model = cls.init(vocab.size, **sizes, dtype=dtype)
    train.sgd(model, X, Y, TrainConfig(steps=30, batch_size=64, lr=0.05))
    ref = train.evaluate(model, X, Y)
    assert len(np.unique(X, axis=0)) < 0.6 * len(X) or T == 14       # windows repeat (but the long ones)
    check(f"{kind} loss", np.array(npmlp.fast.evaluate(model, X, Y)), np.array(ref), rtol)
    check(f"{kind} loss of 7 rows", np.array(windows.window_loss(model, X[:7], Y[:7])),
          np.array(train.evaluate(model, X[:7], Y[:7])), rtol)
    assert np.isnan(windows.window_loss(model, X[:0], Y[:0]))
    with pytest.raises(ValueError, match="vocab|0 <= |charac|index"):
        windows.window_loss(model, X[:3] + vocab.size, Y[:3])


def load_words_from(n):
    from helpers import make_names
    return make_names(n, seed=8)


# ----------------------------------------------------------------------------- distinct windows

def test_large_batches_train_on_their_distinct_windows(data):
    """From engine.DISTINCT_FROM rows the MLP's batch runs as its distinct windows; below it, and
    for the bn model (its statistics weigh every row), as chunks of rows."""
    vocab, _, _ = data
    model = MLP.init(vocab.size, 3, 10, 8, seed=1)
    for B in (fast.DISTINCT_FROM - 1, fast.DISTINCT_FROM):
        with fast.Chunks(model, B) as batches:
            assert batches.distinct == (B >= fast.DISTINCT_FROM)
    from npmlp.bn import BNMLP
    with fast.Chunks(BNMLP.init(vocab.size, n_hidden=8), 4096) as batches:
        assert not batches.distinct
    assert f"distinct windows from {fast.DISTINCT_FROM} rows" in fast.ARITHMETIC


@pytest.mark.parametrize("B", [1, 40, 300, 2000])
def test_distinct_windows_hold_every_row_once(data, B):
    """gather_windows' layout, read back: per step, the windows are distinct and cut into chunks of
    at most CHUNK (+1), each window's count and each (window, target) pair's count give back the
    batch's rows exactly (as multisets), and pick/hot address the chunk's own buffers."""
    vocab, X, Y = data
    V, T = vocab.size, X.shape[1]
    model = MLP.init(V, T, 10, 8, seed=1)
    cfg = TrainConfig(steps=50, batch_size=B, seed=B)
    ix = train.step_block(cfg, 0, len(X))[:7]                          # (7, B)
    with fast.Chunks(model, B, distinct=True) as batches:
        batches.gather(X, Y, ix)
        for g in range(len(ix)):
            n_chunks, edges, pedges = batches.nchunk[g], batches.edges[g], batches.pedges[g]
            U = edges[n_chunks]
            windows = batches.Xg[g, :U]
            assert len(np.unique(windows, axis=0)) == U
            rows, pairs = {}, {}
            for k in range(n_chunks):
                a, e, pa, pe = edges[k], edges[k + 1], pedges[k], pedges[k + 1]
                n = e - a
                assert 1 <= n <= fast.CHUNK + 1
                assert np.array_equal(batches.hot[g, a * T:e * T],
                                      (np.arange(n * T) * V).reshape(n, T).ravel() + windows[a:e].ravel())
                for w, c in zip(map(tuple, windows[a:e]), batches.count[g, a:e], strict=True):
                    rows[w] = c
                for pos, c in zip(batches.pick[g, pa:pe], batches.pc[g, pa:pe], strict=True):
                    y, u = divmod(int(pos), n)                         # pos = y * n + window in the chunk
                    pairs[(*windows[a + u], y)] = c
            want_rows, want_pairs = {}, {}
            for x, y in zip(map(tuple, X[ix[g]]), Y[ix[g]], strict=True):
                want_rows[x] = want_rows.get(x, 0) + 1
                want_pairs[(*x, y)] = want_pairs.get((*x, y), 0) + 1
            assert rows == want_rows and pairs == want_pairs


@pytest.mark.parametrize("n, size", [(1000, 50), (1000, 900), (1000, 5000), (1000, 10 ** 6), (1, 1)])
@pytest.mark.parametrize("ranks", [True, False])
def test_tally_gives_np_unique_by_every_path(n, size, ranks):
    """windows.tally, by each of its paths (a table of every value, with or without ranks; a sort;
    np.unique), as np.unique says: the distinct values ascending, their counts, each key's rank."""
    from npmlp.fast.windows import tally
    key = np.random.default_rng(n + size).integers(0, size, n)
    values, counts, rank = tally(key, size, ranks)
    want, inverse, want_counts = np.unique(key, return_inverse=True, return_counts=True)
    assert np.array_equal(values, want) and np.array_equal(counts, want_counts)
    assert np.array_equal(rank, inverse) if ranks else rank is None
