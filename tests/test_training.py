"""SGD against the lecture's torch training loop (npmlp/reference.py torch_sgd) on the same
minibatch indices; determinism and interrupt/resume; chunked evaluate; sample.

Legend: N rows, B batch, T block_size, V vocab size.
Tolerances, relative to the largest |reference| value:
  float64: 1e-10 for the loss trajectory and the final params (measured up to 1e-14);
  float32: 1e-4 (measured 4.5e-6 after 50 steps: float32 round-off in each step's
  gradients, carried forward by the updates).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import small_dataset, check

from npmlp.errors import UsageError
from npmlp.model import MLP, PARAM_NAMES
from npmlp.reference import torch_sgd
from npmlp.train import BLOCK, TrainConfig, batch_block, evaluate, sample, sgd


pytestmark = pytest.mark.usefixtures("torch_one_thread")



@pytest.fixture(scope="module")
def data():
    return small_dataset(400, seed=1)


def run_both(data, dtype, steps, H, B, scheme="lecture"):
    """npmlp sgd and torch_sgd from the same init and the same minibatches.
    -> (npmlp losses at full precision, lossi, npmlp model, torch losses, torch params)."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.1, lr_decayed=0.01, decay_at=0.5, seed=1234)
    model = MLP.init(vocab.size, 3, 10, H, seed=cfg.seed, dtype=dtype, scheme=scheme)
    init = {k: v.copy() for k, v in model.params.items()}
    losses = []
    lossi, nxt = sgd(model, X, Y, cfg, on_step=lambda s, loss: losses.append(loss))
    assert nxt == steps
    # the exact indices sgd draws: one (BLOCK, B) block of rows per 1000 steps
    ix = np.concatenate([batch_block(cfg.seed, b, len(X), B) for b in range(-(-steps // BLOCK))])[:steps]
    lrs = [cfg.lr_at(s) for s in range(steps)]
    tlosses, tparams = torch_sgd(init, X, Y, ix, lrs)
    return np.array(losses), lossi, model, tlosses, tparams


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_sgd_matches_torch_50_steps(data, dtype, rtol):
    losses, lossi, model, tlosses, tparams = run_both(data, dtype, steps=50, H=200, B=32)
    check("loss trajectory", losses, tlosses, rtol)
    # lossi is the lecture's float32 log of the same numbers
    assert lossi.dtype == np.float32 and np.array_equal(lossi, losses.astype(np.float32))
    for k in PARAM_NAMES:
        assert model.params[k].dtype == dtype
        check(k + " after 50 steps", model.params[k], tparams[k], rtol)
    # and training did something: the loss went down
    assert losses[-10:].mean() < losses[:10].mean()


def test_sgd_matches_torch_across_a_batch_block_float64(data):
    """1,100 steps on a tiny model: crosses the step-1000 boundary where a new index block starts,
    and the lr decay at step 550."""
    losses, _, model, tlosses, tparams = run_both(data, np.float64, steps=1100, H=16, B=8, scheme="kaiming")
    check("loss trajectory (1100 steps)", losses, tlosses, 1e-10)
    for k in PARAM_NAMES:
        check(k + " after 1100 steps", model.params[k], tparams[k], 1e-10)


def test_lr_schedule_decays_in_the_middle():
    cfg = TrainConfig(steps=200_000)
    assert cfg.lr_at(0) == cfg.lr_at(99_999) == 0.1 and cfg.lr_at(100_000) == cfg.lr_at(199_999) == 0.01
    cfg = TrainConfig(steps=50)
    assert [cfg.lr_at(s) for s in (0, 24, 25, 49)] == [0.1, 0.1, 0.01, 0.01]


def test_batch_block_is_a_pure_function_of_seed_and_block():
    a = batch_block(7, 3, 1000, 32)
    assert a.shape == (BLOCK, 32) and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, batch_block(7, 3, 1000, 32))
    assert not np.array_equal(a, batch_block(7, 4, 1000, 32))
    assert not np.array_equal(a, batch_block(8, 3, 1000, 32))


# ----------------------------------------------------------------------------- determinism

def _fresh(data, dtype=np.float32, steps=1100):
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=16, seed=99)
    return MLP.init(vocab.size, 3, 5, 20, seed=cfg.seed, dtype=dtype), X, Y, cfg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_is_deterministic(data, dtype):
    m1, X, Y, cfg = _fresh(data, dtype)
    m2, *_ = _fresh(data, dtype)
    l1, _ = sgd(m1, X, Y, cfg)
    l2, _ = sgd(m2, X, Y, cfg)
    assert np.array_equal(m1.flat, m2.flat) and np.array_equal(l1, l2)
    assert np.all(np.isfinite(l1)) and np.all(l1 > 0)


@pytest.mark.parametrize("stops", [[3], [999], [1000], [1040], [0, 500, 999, 1001]])
def test_interrupted_then_resumed_equals_uninterrupted(data, stops):
    """on_step returning True after step s, then sgd(start=s+1): bit-identical to one run."""
    ref, X, Y, cfg = _fresh(data)
    lossi_ref, _ = sgd(ref, X, Y, cfg)

    model, *_ = _fresh(data)
    lossi, start = None, 0
    for s in stops:
        lossi, start = sgd(model, X, Y, cfg, lossi=lossi, start=start, on_step=lambda step, loss: step == s)  # noqa: B023
        assert start == s + 1
    lossi, end = sgd(model, X, Y, cfg, lossi=lossi, start=start)
    assert end == cfg.steps
    assert np.array_equal(model.flat, ref.flat), "resumed run's params differ from the uninterrupted run"
    assert np.array_equal(lossi, lossi_ref)


def test_stop_then_resume_equals_uninterrupted(data):
    ref, X, Y, cfg = _fresh(data, steps=60)
    sgd(ref, X, Y, cfg)
    model, *_ = _fresh(data, steps=60)
    lossi, nxt = sgd(model, X, Y, cfg, stop=25)
    assert nxt == 25 and not np.any(lossi[25:])
    sgd(model, X, Y, cfg, lossi=lossi, start=nxt)
    assert np.array_equal(model.flat, ref.flat)


# ----------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_evaluate_in_chunks_equals_one_forward(data, dtype, rtol):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 50, seed=3, dtype=dtype, scheme="kaiming")
    N = len(X)
    whole = model.loss(X, Y)  # one forward over every row
    for chunk in (1, 7, 512, N - 1, N, N + 100, 16384):
        got = evaluate(model, X, Y, chunk=chunk)
        assert isinstance(got, float)
        assert abs(got - whole) <= rtol * abs(whole), f"chunk={chunk}: {got!r} vs one forward {whole!r}"
    assert np.isnan(evaluate(model, X[:0], Y[:0]))


# ----------------------------------------------------------------------------- sample

@pytest.fixture(scope="module")
def trained(data):
    vocab, X, Y = data
    cfg = TrainConfig(steps=1500, batch_size=32, seed=5)
    model = MLP.init(vocab.size, 3, 10, 64, seed=cfg.seed, scheme="kaiming")
    sgd(model, X, Y, cfg)
    return model, vocab


def test_sample_reproducible_and_well_formed(trained):
    model, vocab = trained
    before = model.flat.copy()
    a = sample(model, vocab, n=30, seed=123)
    assert a == sample(model, vocab, n=30, seed=123)
    assert a != sample(model, vocab, n=30, seed=124)
    assert np.array_equal(model.flat, before), "sampling must not change the model"
    assert len(a) == 30
    chars = set(vocab.itos)
    for name in a:
        assert name.endswith(".") and "." not in name[:-1], name
        assert set(name) <= chars, name
    assert len(sample(model, vocab, n=1, seed=0)) == 1


def test_sample_max_len_and_temperature(trained):
    model, vocab = trained
    cut = sample(model, vocab, n=50, seed=1, max_len=2)
    assert all(len(w) <= 2 and (w.endswith(".") or len(w) == 2) for w in cut), cut
    # near-zero temperature is (almost) greedy: every draw the same for the same context
    cold = sample(model, vocab, n=10, seed=2, temperature=1e-3)
    assert len(set(cold)) == 1, cold
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            sample(model, vocab, n=2, temperature=bad)
