"""The fast engine of the layer-object networks, deep and wavenet (npmlp/fast/stack.py), held to
the reference tier it fuses: the model's forward and backward through the layer objects, and
train.sgd's loop.
Where it is checked bit for bit against another fast run (a resumed one), it is also checked
against the reference.

Legend: B batch, T block_size, E n_embd, H n_hidden, L hidden layers, V vocab size.
Relative error = max|fast - reference| / max|reference| (helpers.check). Tolerances: float64 one
step 1e-12 (gradients, updates, running statistics); float64 1,000 steps 1e-10; float32 2e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check

from npmlp import train
from npmlp.app.registry import MODELS
from npmlp.fast import engine as fast
from npmlp.fast import tanh as fast_tanh
from npmlp.train import TrainConfig

RTOL64, RTOL64_RUN, RTOL32 = 1e-12, 1e-10, 2e-5

# (kind, sizes, B, repeat): depths 1-6, widths 1-100, contexts 1-8, batches 2-300, with and without
# BatchNorm; `repeat` puts one character everywhere (every row of C and target the same; with
# BatchNorm that makes every variance 0, and the gradients below it round-off amplified by 1/sqrt(eps))
GRID = [
    ("deep", {}, 32, False),
    ("deep", {"batchnorm": 0}, 32, False),
    ("deep", {"n_layers": 1, "n_hidden": 1, "block_size": 1, "n_embd": 1}, 2, False),
    ("deep", {"n_layers": 2, "n_hidden": 7, "block_size": 8, "n_embd": 3}, 300, False),
    ("deep", {"n_layers": 3, "n_hidden": 16, "batchnorm": 0}, 1, False),
    ("deep", {"n_layers": 6, "n_hidden": 33, "block_size": 5}, 129, False),
    ("deep", {"n_layers": 6, "n_hidden": 33, "block_size": 5, "batchnorm": 0}, 129, True),
    ("deep", {"n_layers": 2, "n_hidden": 100, "batchnorm": 0, "block_size": 2}, 257, True),
    ("wavenet", {}, 32, False),                                           # part 5: (B, 8, 24) -> ... -> (B, 27)
    ("wavenet", {"block_size": 8, "flatten": 8, "n_hidden": 20}, 2, False),   # flat: one level
    ("wavenet", {"block_size": 27, "flatten": 3, "n_embd": 2, "n_hidden": 9}, 5, False),
    ("wavenet", {"block_size": 4, "n_embd": 1, "n_hidden": 1}, 64, False),
    ("wavenet", {"block_size": 16, "n_embd": 6, "n_hidden": 17}, 129, False),
]


def data(V, T, seed, repeat=False, N=400):
    if repeat:
        return np.full((N, T), V - 1, np.uint8), np.full(N, V - 1, np.uint8)
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (N, T)).astype(np.uint8), rng.integers(0, V, N).astype(np.uint8)


def fresh(kind, sizes, dtype=np.float64, seed=1, V=27):
    return MODELS[kind].init(V, **sizes, seed=seed, dtype=dtype)


def copy(model):
    twin = model.like({k: v.copy() for k, v in model.params.items()})
    for k, v in model.buffers.items():
        twin.buffers[k][...] = v
    return twin


@pytest.fixture(params=sorted(fast_tanh.TANH_FORMS))
def tanh_form(request, monkeypatch):
    """Each tanh the engines can choose from the CPU (fast/tanh.py), forced for both dtypes: every
    form is held to the reference on any CPU."""
    for dt in (np.float32, np.float64):
        monkeypatch.setitem(fast_tanh.TANH, np.dtype(dt), request.param)
    return request.param


@pytest.mark.parametrize("kind,sizes,B,repeat", GRID)
def test_one_step_equals_the_reference(kind, sizes, B, repeat, tanh_form):
    """The loss, every parameter's update (-lr x its gradient) and the running statistics after one
    step of the fused engine, with each tanh form, against the reference forward and backward of
    the same batch."""
    model = fresh(kind, sizes)
    X, Y = data(model.vocab_size, model.block_size, B, repeat)
    Xb, Yb = X[:B].astype(np.intp), Y[:B].astype(np.intp)
    ref = copy(model)
    loss, grads = ref.loss_and_grads(Xb, Yb)                      # moves ref's running statistics
    with fast.Chunks(model, B) as batches, np.errstate(over="ignore"):    # exp(2x) overflows on purpose
        eng = batches.engine
        assert eng.tanh_form == tanh_form
        eng.load(model)
        part, bufs = eng.forward_loss(Xb, Yb)
        eng.backward(bufs, Xb, Yb, -0.1, batches.grad_views[0])
        eng.store(model)
    check("loss", part, loss, RTOL64)
    update = batches.grad_views[0]
    # a gradient that is zero up to round-off (gamma where every row of a BatchNorm is alike, or
    # two rows that leave xhat at +-1) is judged against 1% of the step's largest, as gradcheck does
    floor = 0.01 * max(float(np.abs(0.1 * g).max()) for g in grads.values())
    for k, g in grads.items():
        check(f"update {k}", getattr(update, k), -0.1 * g, RTOL64, scale=max(float(np.abs(0.1 * g).max()), floor))
    # a running mean that is zero up to round-off (two rows of opposite sign) likewise
    floor = 0.01 * max((float(np.abs(b).max()) for b in ref.buffers.values()), default=0.0)
    for k, b in ref.buffers.items():
        check(f"running statistic {k}", model.buffers[k], b, RTOL64, scale=max(float(np.abs(b).max()), floor))


@pytest.mark.parametrize("kind,sizes", [("deep", {}), ("deep", {"batchnorm": 0, "n_hidden": 64}),
                                        ("wavenet", {}), ("wavenet", {"n_embd": 10, "n_hidden": 68})])
def test_a_thousand_steps_follow_the_reference(kind, sizes):
    """1,000 steps of train.sgd and of fast.sgd from the same start, float64: every parameter,
    every running statistic and the loss history to 1e-10, across a learning-rate drop."""
    model = fresh(kind, sizes, seed=5)
    X, Y = data(model.vocab_size, model.block_size, 7, N=5000)
    cfg = TrainConfig(steps=1000, batch_size=32, seed=11, decay_at=0.6)
    ref, mine = copy(model), copy(model)
    ref_losses, _ = train.sgd(ref, X, Y, cfg)
    losses, _ = fast.sgd(mine, X, Y, cfg)
    check("loss history", losses, ref_losses, RTOL64_RUN)
    for k in ref.params:
        check(k, mine.params[k], ref.params[k], RTOL64_RUN)
    for k in ref.buffers:
        check(k, mine.buffers[k], ref.buffers[k], RTOL64_RUN)


def test_float32_steps_follow_the_float64_reference():
    model = fresh("deep", {"n_layers": 3, "n_hidden": 50}, dtype=np.float32, seed=2)
    X, Y = data(model.vocab_size, model.block_size, 3, N=2000)
    cfg = TrainConfig(steps=50, batch_size=64, seed=4)
    ref = model.like({k: v.astype(np.float64) for k, v in model.params.items()})
    train.sgd(ref, X, Y, cfg)
    fast.sgd(model, X, Y, cfg)
    for k in ref.params:
        check(k, model.params[k], ref.params[k], RTOL32)
    for k in ref.buffers:
        check(k, model.buffers[k], ref.buffers[k], RTOL32)


@pytest.mark.parametrize("kind,sizes", [("deep", {"n_layers": 3, "n_hidden": 40}), ("wavenet", {"n_hidden": 30})])
def test_stopping_and_resuming_is_bit_identical(kind, sizes):
    """300 steps in one call against 137 + 163 in two (the model stored and reloaded between, as a
    checkpoint and --resume do): the same bits, params and running statistics alike, and both
    within round-off of the reference."""
    model = fresh(kind, sizes, seed=3)
    X, Y = data(model.vocab_size, model.block_size, 9, N=3000)
    cfg = TrainConfig(steps=300, batch_size=32, seed=8)
    whole, parts, ref = copy(model), copy(model), copy(model)
    lossi_whole, _ = fast.sgd(whole, X, Y, cfg)
    lossi = np.zeros(cfg.steps, np.float32)
    fast.sgd(parts, X, Y, cfg, lossi, 0, 137)
    again = copy(parts)                                   # a new model and engine, as --resume makes
    fast.sgd(again, X, Y, cfg, lossi, 137, 300)
    np.testing.assert_array_equal(lossi, lossi_whole)
    for k in whole.params:
        np.testing.assert_array_equal(again.params[k], whole.params[k])
    for k in whole.buffers:
        np.testing.assert_array_equal(again.buffers[k], whole.buffers[k])
    train.sgd(ref, X, Y, cfg)
    for k in ref.params:
        check(k, whole.params[k], ref.params[k], RTOL64_RUN)


def test_gradients_for_gradcheck_equal_the_reference():
    model = fresh("deep", {"n_layers": 2, "n_hidden": 12})
    X, Y = data(model.vocab_size, model.block_size, 1)
    grads = model.loss_and_grads(X[:40], Y[:40])[1]
    mine = fast.gradients(model, X[:40], Y[:40])
    for k, g in grads.items():
        check(k, mine[k], g, RTOL64)


def test_the_wavenets_batchnorm_bug_is_left_to_the_reference():
    from npmlp.fast.stack import StackEngine
    model = fresh("wavenet", {"batchnorm_over_batch_only": 1, "n_hidden": 8})
    with pytest.raises(ValueError, match="part 5's bug"):
        StackEngine(model)


def test_a_layer_the_engine_does_not_fuse_is_refused_in_one_sentence():
    from npmlp.fast.stack import StackEngine
    model = fresh("deep", {"n_layers": 2, "n_hidden": 5})
    model.net.layers.insert(1, type("Dropout", (), {"name": "dropout1"})())
    with pytest.raises(ValueError, match="does not fuse a Dropout here"):
        StackEngine(model)


@pytest.mark.parametrize("kind,sizes", [("deep", {"n_layers": 3, "n_hidden": 20}), ("deep", {"batchnorm": 0}),
                                        ("wavenet", {"n_hidden": 16}), ("wavenet", {"flatten": 8, "n_hidden": 12})])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_inference_with_each_batchnorm_folded_equals_the_reference(kind, sizes, dtype, rtol):
    """fast.evaluate (stack.inference_loss) against train.evaluate: after a few steps, so the
    running statistics are not their initial 0 and 1, over more rows than one of its chunks."""
    import npmlp.fast
    model = fresh(kind, sizes, dtype=dtype, seed=6)
    X, Y = data(model.vocab_size, model.block_size, 4, N=9000)
    fast.sgd(model, X, Y, TrainConfig(steps=30, batch_size=64, seed=2))
    ref = train.evaluate(model, X, Y)
    check("loss", npmlp.fast.evaluate(model, X, Y), ref, rtol)
    check("loss (reference engine)", npmlp.fast.evaluate(model, X, Y, "reference"), ref, 0)


@pytest.mark.parametrize("kind,sizes,V", [("wavenet", {"n_hidden": 16}, 27),
                                          ("deep", {"n_layers": 2, "n_hidden": 8}, 27),
                                          ("deep", {"block_size": 9, "n_embd": 2, "n_layers": 1, "n_hidden": 8}, 256)])
@pytest.mark.parametrize("batches", [None, 50])
def test_inference_once_per_distinct_window_equals_the_reference(kind, sizes, V, batches):
    """stack.inference_loss runs each block once per distinct window: rows drawn from a batches of 50
    (every level repeats) or uniformly (the upper levels hardly do), in chunks of 1,000 rows and
    whole. 256 characters in a window of 9 number 2^72 windows: without the key renumbered on the
    way, int64 would drop the first character, and the rows that differ only there would meet."""
    from npmlp.fast.stack import inference_loss
    model = fresh(kind, sizes, seed=3, V=V)
    X, Y = data(model.vocab_size, model.block_size, 5, N=3000)
    if batches is not None:
        X = X[np.random.default_rng(0).integers(0, batches, len(X))]
    X[::2, 1:] = X[1::2, 1:]                      # pairs of rows that differ in the first character only
    fast.sgd(model, X, Y, TrainConfig(steps=20, batch_size=64, seed=2))
    ref = train.evaluate(model, X, Y)
    for chunk in (1000, len(X)):
        check(f"loss, chunks of {chunk}", inference_loss(model, X, Y, chunk), ref, 1e-12)
