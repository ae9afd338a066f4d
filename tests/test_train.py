"""The reference training loop (npmlp/train.py): train.sgd against the lecture's torch loop
(npmlp/torch_mirrors.py torch_sgd) on the same minibatch indices; the lr schedule and the minibatch
rows; determinism; interrupt and resume (train.sgd and fast.sgd); the divergence rule
(train.check_loss), unit by unit and through both engines; chunked evaluate; sample.

Legend: N rows, B batch, T block_size, V vocab size.
Tolerances, relative to the largest |reference| value:
  float64: 1e-10 for the loss trajectory and the final params (measured up to 1e-14);
  float32: 1e-4 (measured 4.5e-6 after 50 steps: float32 round-off in each step's gradients,
  carried forward by the updates).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import check, needs_torch, small_dataset

from npmlp import train
from npmlp.fast import engine as fast
from npmlp.mlp import MLP, PARAM_NAMES
from npmlp.train import BLOCK, EXPLODE, F32MAX, Diverged, TrainConfig, check_loss

ENGINES = {"reference": train.sgd, "fast": fast.sgd}


@pytest.fixture(scope="module")
def data():
    return small_dataset(400, seed=1)


def same_params(a, b) -> bool:
    return all(np.array_equal(a.params[k], b.params[k]) for k in PARAM_NAMES)


# ----------------------------------------------------------------------------- against torch

def run_both(data, dtype, steps, H, B, scheme="lecture"):
    """train.sgd and torch_sgd from the same init and the same minibatches.
    -> (npmlp losses at full precision, lossi, npmlp model, torch losses, torch params)."""
    from npmlp.torch_mirrors import torch_sgd
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.1, lr_decayed=0.01, decay_at=0.5, seed=1234)
    model = MLP.init(vocab.size, 3, 10, H, seed=cfg.seed, dtype=dtype, scheme=scheme)
    init = MLP(model.params)                                    # a copy: torch_sgd reads its params
    losses = []
    lossi, nxt = train.sgd(model, X, Y, cfg, on_step=lambda s, loss: losses.append(loss))
    assert nxt == steps
    # the exact indices sgd draws: one (BLOCK, B) block of rows per 1000 steps
    ix = np.concatenate([train.batch_block(cfg.seed, b, len(X), B) for b in range(-(-steps // BLOCK))])[:steps]
    tlosses, tparams = torch_sgd(init, X, Y, ix, [cfg.lr_at(s) for s in range(steps)])
    return np.array(losses), lossi, model, tlosses, tparams


@needs_torch
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_sgd_matches_torch_50_steps(data, dtype, rtol):
    losses, lossi, model, tlosses, tparams = run_both(data, dtype, steps=50, H=200, B=32)
    check("loss trajectory", losses, tlosses, rtol)
    # lossi is the lecture's float32 log of the same numbers
    assert lossi.dtype == np.float32 and np.array_equal(lossi, losses.astype(np.float32))
    for k in PARAM_NAMES:
        assert model.params[k].dtype == dtype
        check(k + " after 50 steps", model.params[k], tparams[k], rtol)
    assert losses[-10:].mean() < losses[:10].mean()             # and training did something


@needs_torch
def test_sgd_matches_torch_across_a_batch_block_float64(data):
    """1,100 steps on a tiny model: crosses the step-1000 boundary where a new index block starts,
    and the lr drop at step 550."""
    losses, _, model, tlosses, tparams = run_both(data, np.float64, steps=1100, H=16, B=8, scheme="kaiming")
    check("loss trajectory (1100 steps)", losses, tlosses, 1e-10)
    for k in PARAM_NAMES:
        check(k + " after 1100 steps", model.params[k], tparams[k], 1e-10)


# ----------------------------------------------------------------------------- schedule and rows

def test_lr_schedule_drops_at_decay_step():
    cfg = TrainConfig(steps=200_000)
    assert cfg.decay_step == 100_000
    assert cfg.lr_at(0) == cfg.lr_at(99_999) == 0.1 and cfg.lr_at(100_000) == cfg.lr_at(199_999) == 0.01
    cfg = TrainConfig(steps=50)
    assert cfg.decay_step == 25 and [cfg.lr_at(s) for s in (0, 24, 25, 49)] == [0.1, 0.1, 0.01, 0.01]
    cfg = TrainConfig(steps=10, lr=0.5, lr_decayed=0.2, decay_at=0.35)
    assert cfg.decay_step == 3 and [cfg.lr_at(s) for s in range(5)] == [0.5, 0.5, 0.5, 0.2, 0.2]
    assert TrainConfig(steps=7, decay_at=0).lr_at(0) == 0.01    # the drop before the first step
    assert TrainConfig(steps=7, decay_at=1).lr_at(6) == 0.1     # ... or never


def test_batch_block_is_a_pure_function_of_seed_and_block():
    a = train.batch_block(7, 3, 1000, 32)
    assert a.shape == (BLOCK, 32) and a.min() >= 0 and a.max() < 1000
    assert not a.flags.writeable                                # shared by every caller: read-only
    fresh = np.random.default_rng([7, 3]).integers(0, 1000, size=(BLOCK, 32), dtype=np.int64)
    assert np.array_equal(a, fresh)                             # no state beyond (seed, block)
    assert not np.array_equal(a, train.batch_block(7, 4, 1000, 32))
    assert not np.array_equal(a, train.batch_block(8, 3, 1000, 32))


def test_batch_rows_are_the_blocks_rows():
    cfg = TrainConfig(steps=5000, batch_size=16, seed=3)
    for step in (0, 1, 999, 1000, 1001, 2999, 4321):
        rows = train.batch_rows(cfg, step, 500)
        assert rows.shape == (16,)
        assert np.array_equal(rows, train.batch_block(3, step // BLOCK, 500, 16)[step % BLOCK])


# ----------------------------------------------------------------------------- determinism, resume

def _fresh(data, dtype=np.float64, steps=1100):
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=16, seed=99)
    return MLP.init(vocab.size, 3, 5, 20, seed=cfg.seed, dtype=dtype), X, Y, cfg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_is_deterministic(data, dtype):
    m1, X, Y, cfg = _fresh(data, dtype)
    m2, *_ = _fresh(data, dtype)
    l1, _ = train.sgd(m1, X, Y, cfg)
    l2, _ = train.sgd(m2, X, Y, cfg)
    assert same_params(m1, m2) and np.array_equal(l1, l2)
    assert np.all(np.isfinite(l1)) and np.all(l1 > 0)


@pytest.fixture(scope="module")
def uninterrupted(data):
    """engine -> (model, lossi) of one uninterrupted 1,100-step run of _fresh's setup."""
    runs = {}
    for name, engine in ENGINES.items():
        model, X, Y, cfg = _fresh(data)
        lossi, _ = engine(model, X, Y, cfg)
        runs[name] = model, lossi
    return runs


def test_both_engines_run_the_same_steps(uninterrupted):
    """The resume tests below compare each engine with itself; here the two runs with each other."""
    (ref, ref_lossi), (mine, lossi) = uninterrupted["reference"], uninterrupted["fast"]
    for k in PARAM_NAMES:
        check(k, mine.params[k], ref.params[k], 1e-10)
    check("lossi", lossi, ref_lossi, 1e-7)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("stops", [[3], [999], [1000], [1040], [0, 500, 999, 1001]])
def test_interrupted_then_resumed_equals_uninterrupted(data, uninterrupted, engine, stops):
    """on_step returning True after step s, then the same engine from start=s+1: bit-identical to
    one uninterrupted run of that engine."""
    sgd_ = ENGINES[engine]
    model, X, Y, cfg = _fresh(data)
    lossi, start = None, 0
    for s in stops:
        lossi, start = sgd_(model, X, Y, cfg, lossi=lossi, start=start, on_step=lambda step, loss: step == s)  # noqa: B023
        assert start == s + 1 and not lossi[start:].any()
    lossi, end = sgd_(model, X, Y, cfg, lossi=lossi, start=start)
    assert end == cfg.steps
    ref, lossi_ref = uninterrupted[engine]
    assert same_params(model, ref), "the resumed run's params differ from the uninterrupted run's"
    assert np.array_equal(lossi, lossi_ref)


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_then_resume_equals_uninterrupted(data, engine):
    sgd_ = ENGINES[engine]
    ref, X, Y, cfg = _fresh(data, steps=60)
    sgd_(ref, X, Y, cfg)
    model, *_ = _fresh(data, steps=60)
    lossi, nxt = sgd_(model, X, Y, cfg, stop=25)
    assert nxt == 25 and not np.any(lossi[25:])
    sgd_(model, X, Y, cfg, lossi=lossi, start=nxt)
    assert same_params(model, ref)


# ----------------------------------------------------------------------------- the divergence rule

V = 27
LN_V = math.log(V)


def losses_then(first, rest, n):
    """A lossi of n steps: `first` at step 0, `rest` after."""
    lossi = np.full(n, rest, np.float32)
    lossi[0] = first
    return lossi


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf"), 3.5e38, 2 * F32MAX])
@pytest.mark.parametrize("step", [0, 17, 999, 4999])
def test_check_loss_refuses_nan_inf_and_losses_float32_cannot_hold(loss, step):
    cfg = TrainConfig(steps=5000)
    with pytest.raises(Diverged) as e:
        check_loss(losses_then(3.0, 3.0, 5000), step, loss, cfg, V)
    d = e.value
    assert d.step == step and d.mean is None and d.first is None and d.limit is None
    assert d.loss == loss or (math.isnan(d.loss) and math.isnan(loss))
    assert f"step {step}" in str(d) and "NaN/inf" in str(d)


def test_check_loss_accepts_the_largest_float32():
    check_loss(losses_then(3.0, 3.0, 5000), 17, F32MAX, TrainConfig(steps=5000), V)   # mid-window


def test_check_loss_window_mean_above_explode_times_max_of_first_loss_and_ln_v():
    cfg = TrainConfig(steps=5000)
    limit = EXPLODE * LN_V                                      # the first loss (3.0) is below ln 27
    # window 1 (steps 1000..1999) at 33: above 10 x ln 27 = 32.96; the window before was healthy
    lossi = losses_then(3.0, 3.0, 5000)
    lossi[1000:1999] = 33.0
    with pytest.raises(Diverged) as e:
        check_loss(lossi, 1999, 33.0, cfg, V)
    d = e.value
    assert (d.step, d.first, d.loss) == (1999, 1000, 33.0)
    assert d.mean == pytest.approx(33.0, rel=1e-12) and d.limit == pytest.approx(limit, rel=1e-15)
    assert "step 1999" in str(d) and "above" in str(d)
    # the mean includes this step's loss (not yet in lossi): 32 x 999 steps + one of 1032 -> 33
    lossi[1000:1999] = 32.0
    with pytest.raises(Diverged):
        check_loss(lossi, 1999, 32.0 + train.WINDOW, cfg, V)
    check_loss(lossi, 1999, 32.0, cfg, V)                       # mean 32 < 32.96
    # a larger first loss raises the limit: 10 x 4 = 40
    lossi[0], lossi[1000:1999] = 4.0, 33.0
    check_loss(lossi, 1999, 33.0, cfg, V)
    # window 0 starts at step 0 and counts its first loss
    lossi = losses_then(3.0, 40.0, 5000)
    with pytest.raises(Diverged) as e:
        check_loss(lossi, 999, 40.0, cfg, V)
    assert e.value.first == 0 and e.value.mean == pytest.approx((3 + 999 * 40) / 1000, rel=1e-12)


def test_check_loss_only_at_window_ends_and_the_last_step():
    """Losses at 100 from step 1 on (10 x ln 27 = 33): nothing is said inside a window; the window's
    end raises, and so does the run's last step when the run ends inside a window."""
    cfg = TrainConfig(steps=1500)
    lossi = losses_then(3.0, 100.0, cfg.steps)
    for step in (1, 2, 500, 998, 1000, 1001, 1498):
        check_loss(lossi, step, 100.0, cfg, V)
    for step, first in ((999, 0), (1499, 1000)):
        with pytest.raises(Diverged) as e:
            check_loss(lossi, step, 100.0, cfg, V)
        assert (e.value.step, e.value.first) == (step, first)
    short = TrainConfig(steps=600)
    check_loss(lossi, 598, 100.0, short, V)
    with pytest.raises(Diverged) as e:
        check_loss(lossi, 599, 100.0, short, V)
    assert e.value.first == 0 and e.value.mean == pytest.approx((3 + 599 * 100) / 600, rel=1e-6)
    # a one-step run: its only loss is its own yardstick, so a finite first loss never diverges
    check_loss(np.zeros(1, np.float32), 0, 1e30, TrainConfig(steps=1), V)


def test_check_loss_never_raises_for_healthy_runs():
    """Noisy losses falling from ln V to 2 with spikes of 9 x the limit on single steps: checked at
    every step, as the engines do, for runs ending on and off a window's end."""
    rng = np.random.default_rng(0)
    for steps in (3000, 2345, 1):
        cfg = TrainConfig(steps=steps)
        curve = np.linspace(LN_V + 0.5, 2.0, steps) * rng.uniform(0.7, 1.5, steps)
        curve[rng.integers(0, steps, 5)] = 9 * EXPLODE * LN_V
        lossi = np.zeros(steps, np.float32)
        for step, loss in enumerate(curve):
            check_loss(lossi, step, float(loss), cfg, V)
            lossi[step] = loss


@pytest.mark.parametrize("steps,step", [(50, 49), (1100, 999)])
def test_both_engines_raise_at_the_same_step_of_an_exploding_run(data, steps, step):
    """lr 1e4 on a small model: the losses stay finite (thousands) but explode. A 50-step run is
    stopped at its last step, a 1,100-step run at the end of its first window; both engines
    raise Diverged there with the same window and limit (and, over 50 steps, the same mean: past
    hundreds of chaotic steps the two only agree that it is far above the limit)."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e4, lr_decayed=1e4, seed=3)
    p0 = MLP.init(vocab.size, 3, 10, 8, seed=3, dtype=np.float64).params
    got = {}
    with np.errstate(all="ignore"):
        for name, engine in ENGINES.items():
            lossi = np.zeros(cfg.steps, np.float32)
            with pytest.raises(Diverged) as e:
                engine(MLP(p0), X, Y, cfg, lossi=lossi)
            got[name] = e.value, lossi
    (d, lossi), (rd, ref_lossi) = got["fast"], got["reference"]
    assert d.step == rd.step == step
    assert d.first == rd.first == 0 and d.limit == rd.limit == EXPLODE * max(float(lossi[0]), math.log(vocab.size))
    assert d.mean > 10 * d.limit and rd.mean > 10 * rd.limit and np.isfinite(lossi[:step]).all()
    if steps == 50:
        check("window mean", d.mean, rd.mean, 1e-10)
        check("losses", lossi, ref_lossi, 1e-7)


# ----------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_evaluate_in_chunks_equals_one_forward(data, dtype, rtol):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 50, seed=3, dtype=dtype, scheme="kaiming")
    N = len(X)
    whole = model.loss(X, Y)  # one forward over every row
    for chunk in (1, 7, 512, N - 1, N, N + 100, 16384):
        got = train.evaluate(model, X, Y, chunk=chunk)
        assert isinstance(got, float)
        assert abs(got - whole) <= rtol * abs(whole), f"chunk={chunk}: {got!r} vs one forward {whole!r}"
    assert np.isnan(train.evaluate(model, X[:0], Y[:0]))


# ----------------------------------------------------------------------------- sample

@pytest.fixture(scope="module")
def trained(data):
    vocab, X, Y = data
    cfg = TrainConfig(steps=1000, batch_size=32, seed=5)
    model = MLP.init(vocab.size, 3, 10, 64, seed=cfg.seed, scheme="kaiming")
    train.sgd(model, X, Y, cfg)
    return model, vocab


def test_sample_reproducible_and_well_formed(trained):
    model, vocab = trained
    before = {k: v.copy() for k, v in model.params.items()}
    a = train.sample(model, vocab, n=30, seed=123)
    assert a == train.sample(model, vocab, n=30, seed=123)
    assert a != train.sample(model, vocab, n=30, seed=124)
    assert all(np.array_equal(model.params[k], before[k]) for k in PARAM_NAMES), "sampling changed the model"
    assert len(a) == 30
    assert train.sample(model, vocab, n=5, seed=123) == a[:5]   # name i reads its own stream
    chars = set(vocab.itos)
    for name in a:
        assert name.endswith(".") and "." not in name[:-1], name
        assert set(name) <= chars, name
    assert len(train.sample(model, vocab, n=1, seed=0)) == 1


def test_sample_max_len_and_temperature(trained):
    model, vocab = trained
    cut = train.sample(model, vocab, n=50, seed=1, max_len=2)
    assert all(len(w) <= 2 and (w.endswith(".") or len(w) == 2) for w in cut), cut
    # near-zero temperature is (almost) greedy: every draw the same for the same context
    cold = train.sample(model, vocab, n=10, seed=2, temperature=1e-3)
    assert len(set(cold)) == 1, cold
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            train.sample(model, vocab, n=2, temperature=bad)


def one_by_one(model, vocab, n, seed, **kw):
    """The n names drawn one at a time (chunk=1): no name shares a batch with another, so the names
    cannot depend on how a chunk lays out its rows; the reference every chunking must give bit for bit."""
    return list(train.sample_stream(model, vocab, n, seed=seed, chunk=1, **kw))


@pytest.mark.parametrize("chunk", [7, 64, 150, 1024])
def test_sample_stream_gives_the_same_names_however_it_chunks(trained, chunk):
    model, vocab = trained
    want = one_by_one(model, vocab, 150, seed=11, temperature=0.8)
    assert len(want) == 150 and len(set(want)) > 10, want     # a stream of one repeated name proves nothing
    got = train.sample_stream(model, vocab, 150, seed=11, temperature=0.8, chunk=chunk)
    assert not isinstance(got, list)
    assert list(got) == want
    assert train.sample(model, vocab, 150, seed=11, temperature=0.8) == want


def test_sample_stream_yields_before_it_has_drawn_everything(trained):
    """n None is a stream without end: its first names come out (sample drew all n before returning
    any, so -n 10**23 printed nothing, then failed)."""
    model, vocab = trained
    first = list(itertools.islice(train.sample_stream(model, vocab, None, seed=4, chunk=16), 40))
    assert first == one_by_one(model, vocab, 40, seed=4)


def test_sample_refuses_probabilities_that_are_not_finite(trained):
    """A model whose logits overflow (a damaged checkpoint) would draw '.' every time: a ValueError instead."""
    model, vocab = trained
    broken = MLP({**model.params, "W2": np.full_like(model.params["W2"], 3e38)})
    with pytest.raises(ValueError, match="NaN/inf"):
        train.sample(broken, vocab, 3)
