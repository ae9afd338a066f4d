"""The fast engines of makemore.py's recurrent models (npmlp/fast/recurrent.py: rnn, gru, lstm),
held to the reference tier: the models' forward and backward (recurrent.py) and train.sgd's loop.

One step on shapes hypothesis draws (batch, positions, sizes, vocabulary; names of 0..T-1
characters, so masks of every length, and masks with holes), with SGD and AdamW, each tanh form
forced; float32 against the float64 reference; 1,000-step trajectories; gradcheck's fast column;
the fast evaluation; and `npmlp train` on the fast engine, resumed bit-identically.

Legend: B batch, T positions, E n_embd, H n_hidden, V vocab size.
Relative error = max|fast - reference| / max|reference| (helpers.check). Tolerances: float64 one
step 1e-12, 1,000 steps 1e-10; float32 2e-5, a float32 gradient relative to at least a tenth of
the step's largest gradient (test_recurrent_pairs.check_all's rule: a gradient that cancelled
carries the round-off of its terms, not of its small result).
"""
from __future__ import annotations

import dataclasses
import string

import numpy as np
import pytest
from helpers import StopAfter, adamw_slack, check, floored, make_names, names_file
from hypothesis import example, given, settings
from hypothesis import strategies as st

import npmlp.fast
from npmlp import train
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.data import DOT, Vocab, build_sequences
from npmlp.fast import engine as fast
from npmlp.fast import tanh as fast_tanh
from npmlp.fast.recurrent import GRUEngine, LSTMEngine, RNNEngine, inference_loss
from npmlp.recurrent import GRU, LSTM, RNN
from npmlp.train import TrainConfig

CLASSES = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
ENGINES = {"rnn": RNNEngine, "gru": GRUEngine, "lstm": LSTMEngine}
KINDS = list(CLASSES)
RTOL64, RTOL64_RUN, RTOL32, FLOOR32 = 1e-12, 1e-10, 2e-5, 0.1
DRAWN = settings(max_examples=12, deadline=None)


def vocab_of(V: int) -> Vocab:
    return Vocab((DOT, *string.ascii_lowercase[:V - 1]))


def sequences(rng, V: int, T: int, N: int, holes: bool):
    """N names of 0..T-1 characters of a V-character vocabulary as build_sequences pads them to T
    positions (each row's mask a suffix of its own length); holes: some targets before a row's end
    masked too (a mask the data never makes, which the engine must still get right)."""
    letters = list(string.ascii_lowercase[:V - 1])
    words = ["".join(rng.choice(letters, rng.integers(0, T))) for _ in range(N)]
    X, Y = build_sequences(words, vocab_of(V), block_size=T)
    if holes:
        Y[(rng.random(Y.shape) < 0.2) & (np.arange(T) > 0)] = -1      # position 0 always counts
    return X, Y


def model_of(kind, V, T, E, H, seed, dtype=np.float64):
    """torch's init, the starts made non-zero: zeros could hide a wrong dstart."""
    model = CLASSES[kind].init(V, block_size=T, n_embd=E, n_hidden=H, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for k in CLASSES[kind].starts:
        model.params[k][...] = rng.normal(0, 0.5, model.params[k].shape)
    return model


def copy(model, dtype=None):
    return model.like({k: v.astype(dtype or v.dtype) for k, v in model.params.items()})


def run(sgd, model, X, Y, cfg):
    """sgd (train.sgd or fast.sgd) on model -> (losses at full precision, the optimiser)."""
    opt = train.optimizer(cfg, model.params)
    losses: list[float] = []
    sgd(model, X, Y, cfg, on_step=lambda step, loss: losses.append(loss), opt=opt)
    return np.array(losses), opt


@pytest.fixture(params=sorted(fast_tanh.TANH_FORMS))
def tanh_form(request, monkeypatch):
    """Each tanh the engines can choose from the CPU (fast/tanh.py), forced for both dtypes."""
    for dt in (np.float32, np.float64):
        monkeypatch.setitem(fast_tanh.TANH, np.dtype(dt), request.param)
    return request.param


# ----------------------------------------------------------------------------- one step, drawn shapes

@pytest.mark.parametrize("kind", KINDS)
@DRAWN
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 9), T=st.integers(1, 9), E=st.integers(1, 6),
       H=st.integers(1, 8), V=st.integers(2, 12), holes=st.booleans(), form=st.sampled_from(fast_tanh.TANH_FORMS))
@example(seed=64862, B=2, T=7, E=3, H=8, V=10, holes=False, form="exp")  # lstm: a gradient of -1.8e-9
def test_one_step_equals_the_reference(kind, seed, B, T, E, H, V, holes, form):
    """One fast.sgd step and one train.sgd step from the same params on the same minibatch, in
    float64: the loss, SGD's update of every parameter (-lr x its gradient), and after an AdamW
    step (makemore.py's recipe) every parameter and both moments, to 1e-12. A gradient that is
    zero up to round-off (cancelling terms) is judged against 1% of the step's largest, as gradcheck does,
    and AdamW's parameters get what that round-off moves them by (helpers.adamw_slack)."""
    rng = np.random.default_rng(seed)
    X, Y = sequences(rng, V, T, 40, holes)
    model = model_of(kind, V, T, E, H, seed)
    with pytest.MonkeyPatch.context() as mp, np.errstate(over="ignore"):
        for dt in (np.float32, np.float64):
            mp.setitem(fast_tanh.TANH, np.dtype(dt), form)
        sgd_cfg = TrainConfig(steps=1, batch_size=B, lr=0.5, lr_decayed=0.5, seed=seed)
        ref, mine = copy(model), copy(model)
        ref_loss, _ = run(train.sgd, ref, X, Y, sgd_cfg)
        loss, _ = run(fast.sgd, mine, X, Y, sgd_cfg)
        check("loss", loss, ref_loss, RTOL64)
        updates = {k: ref.params[k] - model.params[k] for k in model.params}
        floor = 0.01 * max(float(np.abs(u).max()) for u in updates.values())
        for k, u in updates.items():
            check(f"{kind} SGD update {k}", mine.params[k] - model.params[k], u, RTOL64, floored(updates, k, floor))

        adam_cfg = TrainConfig(**{**CLASSES[kind].spec.train, "steps": 1, "batch_size": B, "lr": 1e-2,
                                  "seed": seed})
        ref, mine = copy(model), copy(model)
        _, ref_opt = run(train.sgd, ref, X, Y, adam_cfg)
        _, opt = run(fast.sgd, mine, X, Y, adam_cfg)
        # a gradient of a few eps (a cancelled sum) moves its parameter by up to lr * its round-off / eps
        slack = adamw_slack(ref_opt, RTOL64)
        for k in model.params:
            check(f"{kind} AdamW {k}", mine.params[k], ref.params[k], RTOL64, slack=slack[k])
        for moment in ("m", "v"):
            mine_m, ref_m = getattr(opt, moment), getattr(ref_opt, moment)
            floor = 0.01 * max(float(np.abs(a).max()) for a in ref_m.values())
            for k in model.params:
                check(f"{kind} AdamW {moment} {k}", mine_m[k], ref_m[k], RTOL64, floored(ref_m, k, floor))


@pytest.mark.parametrize("kind", KINDS)
def test_the_adamw_slack_has_teeth(kind):
    """The slack is for gradients of a few eps: an AdamW step whose eps is 1% off, or whose weight
    decay is missing, still fails the check of the step above."""
    rng = np.random.default_rng(5)
    X, Y = sequences(rng, 10, 7, 40, False)
    model = model_of(kind, 10, 7, 3, 8, 5)
    cfg = TrainConfig(**{**CLASSES[kind].spec.train, "steps": 1, "batch_size": 4, "lr": 1e-2, "seed": 5})
    ref = copy(model)
    _, ref_opt = run(train.sgd, ref, X, Y, cfg)
    slack = adamw_slack(ref_opt, RTOL64)
    for wrong in ({"eps": cfg.eps * 1.01}, {"weight_decay": 0.0}):
        mine = copy(model)
        with np.errstate(over="ignore"):
            run(fast.sgd, mine, X, Y, dataclasses.replace(cfg, **wrong))
        with pytest.raises(pytest.fail.Exception):
            for k in model.params:
                check(f"{kind} AdamW {k}", mine.params[k], ref.params[k], RTOL64, slack=slack[k])


@pytest.mark.parametrize("kind", KINDS)
@DRAWN
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 40), T=st.integers(1, 16), holes=st.booleans(),
       form=st.sampled_from(fast_tanh.TANH_FORMS))
def test_float32_step_follows_the_float64_reference(kind, seed, B, T, holes, form):
    """The float32 engine against the float64 reference from the same float32 params: the loss and
    every gradient (gradcheck's fast column, fast.gradients) to 2e-5, a gradient relative to at
    least FLOOR32 x the largest; the params after one SGD step to 2e-5."""
    rng = np.random.default_rng(seed)
    X, Y = sequences(rng, 27, T, B, holes)
    model = model_of(kind, 27, T, 10, 16, seed, np.float32)
    ref = copy(model, np.float64)
    loss, grads = ref.loss_and_grads(X, Y)
    with pytest.MonkeyPatch.context() as mp, np.errstate(over="ignore"):
        for dt in (np.float32, np.float64):
            mp.setitem(fast_tanh.TANH, np.dtype(dt), form)
        mine = fast.gradients(model, X, Y)
        cfg = TrainConfig(steps=1, batch_size=None, lr=0.5, lr_decayed=0.5)
        stepped = copy(model)
        losses, _ = run(fast.sgd, stepped, X, Y, cfg)
    check("float32 loss", losses[0], loss, RTOL32)
    big = max(float(np.abs(g).max()) for g in grads.values())
    for k, g in grads.items():
        assert mine[k].dtype == np.float32
        check(f"{kind} float32 d{k}", mine[k], g, RTOL32, scale=max(float(np.abs(g).max()), FLOOR32 * big))
    train.sgd(ref, X, Y, cfg)
    for k in ref.params:
        check(f"{kind} float32 {k} after a step", stepped.params[k], ref.params[k], RTOL32)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_for_gradcheck_equal_the_reference(kind, tanh_form):
    """engine.gradients (gradcheck's fast column) against the model's backward, float64, on
    makemore.py's sizes and a batch of real-length names (the last positions masked for every row)."""
    rng = np.random.default_rng(7)
    X, Y = sequences(rng, 27, 16, 33, holes=False)
    model = model_of(kind, 27, 16, 64, 64, 3)
    _, grads = model.loss_and_grads(X, Y)
    mine = fast.gradients(model, X, Y)
    for k, g in grads.items():
        assert mine[k].shape == g.shape and mine[k].dtype == np.float64
        check(f"{kind} d{k}", mine[k], g, RTOL64)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_contribute_nothing(kind):
    """As test_recurrent_models' test of the reference: changing the inputs at and after each row's
    first masked target changes neither the fast engine's loss nor any gradient, bit for bit."""
    rng = np.random.default_rng(4)
    X, Y = sequences(rng, 27, 12, 6, holes=False)
    model = model_of(kind, 27, 12, 6, 8, 1)
    X2 = X.copy()
    for row in np.flatnonzero((Y == -1).any(1)):                 # rows shorter than T - 1 characters
        t = int((Y[row] == -1).argmax())                         # the first masked position
        X2[row, t:] = rng.integers(0, 27, X.shape[1] - t)
    assert not np.array_equal(X, X2)
    a, b = fast.gradients(model, X, Y), fast.gradients(model, X2, Y)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_a_batch_with_no_target_is_refused_as_the_reference_refuses_it():
    model = model_of("rnn", 5, 4, 2, 3, 0)
    X, Y = np.zeros((2, 4), np.intp), np.full((2, 4), -1, np.intp)
    with pytest.raises(ValueError, match="-1"):
        model.loss(X, Y)
    with pytest.raises(ValueError, match="every one of the 8 targets is -1"):
        RNNEngine(model).forward_loss(X, Y)


# ----------------------------------------------------------------------------- whole runs

@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_steps_follow_the_reference(kind):
    """1,000 steps of train.sgd and of fast.sgd from the same start, float64, makemore.py's AdamW
    at a larger rate (the weights travel) with a rate drop at 60%: every loss and parameter to 1e-10.
    Names of up to 5 characters: the reference's loop costs per position."""
    words = [w for w in make_names(900, seed=5) if len(w) <= 5]
    X, Y = build_sequences(words, Vocab.from_words(words))
    model = model_of(kind, len(set("".join(words))) + 1, X.shape[1], 6, 10, 2)
    cfg = TrainConfig(**{**CLASSES[kind].spec.train, "steps": 1000, "batch_size": 16, "lr": 3e-3,
                         "lr_decayed": 1e-3, "decay_at": 0.6, "seed": 9})
    ref, mine = copy(model), copy(model)
    ref_losses, _ = run(train.sgd, ref, X, Y, cfg)
    losses, _ = run(fast.sgd, mine, X, Y, cfg)
    check(f"{kind} loss history", losses, ref_losses, RTOL64_RUN)
    for k in ref.params:
        check(f"{kind} {k} after 1,000 steps", mine.params[k], ref.params[k], RTOL64_RUN)
    assert ref_losses[-100:].mean() < ref_losses[:100].mean() - 0.3          # it trained


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_the_fast_evaluation_equals_train_evaluate(kind, dtype, rtol, tanh_form):
    """fast.evaluate (recurrent.inference_loss: rows in the order of their length, chunk by chunk)
    against train.evaluate, over several chunks and a last short one."""
    words = make_names(700, seed=2)
    X, Y = build_sequences(words, Vocab.from_words(words))
    model = model_of(kind, len(set("".join(words))) + 1, X.shape[1], 8, 12, 4, dtype)
    ref = train.evaluate(model, X, Y)
    check(f"{kind} loss", npmlp.fast.evaluate(model, X, Y), ref, rtol)
    check(f"{kind} loss, chunks of 64", inference_loss(ENGINES[kind](model), model, X, Y, chunk=64), ref, rtol)
    assert npmlp.fast.evaluate(model, X, Y, "reference") == ref
    assert np.isnan(inference_loss(ENGINES[kind](model), model, X[:2], np.full_like(Y[:2], -1)))


@pytest.mark.parametrize("kind", KINDS)
def test_train_runs_on_the_fast_engine_and_resumes_bit_identically(kind, tmp_path, monkeypatch):
    """`npmlp train --model KIND --steps 50 --quiet --no-plots` trains on the fast engine by
    default; the same run interrupted at step 20 (the real interrupt path, cli.StopFlag) and
    --resumed ends with the same bits: params, AdamW's moments, the loss history."""
    names = names_file(tmp_path, 300, seed=6)
    argv = ["train", "--data", str(names), "--model", kind, "--steps", "50", "--quiet", "--no-plots"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main([*argv, "--out", str(full)]) == 0
    _, _, meta, lossi = load_checkpoint(full / "model.npz")
    assert meta["run"]["engine"] == "fast" and meta["model"] == kind and len(lossi) == 50
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(20))
        assert cli.main([*argv, "--out", str(part)]) == 130
    assert load_checkpoint(part / "model.npz")[2]["step"] < 50
    assert cli.main(["train", "--resume", str(part), "--quiet", "--no-plots"]) == 0
    with np.load(full / "model.npz") as a, np.load(part / "model.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k
