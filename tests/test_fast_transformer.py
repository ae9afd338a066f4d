"""The fast engines of makemore.py's bag of words and Transformer (npmlp/fast/transformer.py) held
to the reference tier they fuse (transformer.BoW, transformer.Transformer, train.sgd): one step on
sizes and names hypothesis draws, with and without dropout (the same masks), SGD and AdamW;
float32 against the float64 reference; 1,000-step trajectories; the gradients gradcheck reads;
`npmlp train` on the fast engine by default, and --resume bit-identical.

Legend: B batch, T block_size, C n_embd, H n_hidden, L n_layers, nh n_head, hs head size, V vocab.
Relative error = max|fast - reference| / max|reference| (helpers.check), per parameter; a gradient
that cancels to round-off (the keys' bias: softmax ignores a shift shared by every key) is judged
against a share of the step's largest. Tolerances: float64 one step 1e-12; float64 1,000 steps
1e-10; float32 2e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import StopAfter, adamw_slack, check, names_file
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp import train
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.fast import engine as fast
from npmlp.fast import tanh as fast_tanh
from npmlp.fast import transformer as fast_transformer
from npmlp.fast.transformer import BoWEngine, TransformerEngine
from npmlp.train import TrainConfig
from npmlp.transformer import DROPOUT_STATE, BoW, Transformer

RTOL64, RTOL64_RUN, RTOL32 = 1e-12, 1e-10, 2e-5
MAKEMORE = {k: v for k, v in Transformer.spec.train.items()     # makemore.py's AdamW, eps, betas, decay
            if k in TrainConfig.__dataclass_fields__ and k not in ("steps", "batch_size")}


def names(rng, N, T, V):
    """N names of random lengths 0..T-1 as makemore.py's rows: x = [0, c1..cn, 0...], y = [c1..cn, 0, -1...]."""
    X, Y = np.zeros((N, T), np.uint8), np.full((N, T), -1, np.int8)
    for i in range(N):
        n = int(rng.integers(0, T))
        w = rng.integers(1, V, n)
        X[i, 1:1 + n], Y[i, :n], Y[i, n] = w, w, 0
    return X, Y


def model_of(kind, V, T, seed, dtype=np.float64, **sizes):
    """A model with torch's init and every LayerNorm moved off its w = 1, b = 0 (zeros hide a wrong
    backward); a Transformer's dropout seed from `seed`."""
    cls = {"bow": BoW, "transformer": Transformer}[kind]
    model = cls.init(V, T, **sizes, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for k, p in model.params.items():
        if ".ln_" in k:
            p += 0.3 * rng.standard_normal(p.shape)
    return copy(model, dtype)


def copy(model, dtype=None):
    twin = model.like({k: v.astype(dtype or v.dtype) for k, v in model.params.items()})
    for k, v in model.buffers.items():
        twin.buffers[k][...] = v
    return twin


def engine_step(model, X, Y):
    """The engine's forward and backward of the batch X, Y (dloss = 1): (loss, {name: gradient}),
    and the model's buffers as the engine leaves them."""
    with fast.Chunks(model, len(X)) as batches, np.errstate(over="ignore"):
        eng = batches.engine
        eng.load(model)
        loss, bufs = eng.forward_loss(X.astype(np.intp), Y.astype(np.intp))
        eng.backward(bufs, X, Y, 1.0, batches.grad_views[0])
        eng.store(model)
        return loss, {k: getattr(batches.grad_views[0], k).copy() for k in model.params}


def check_grads(mine, ref, rtol, floor):
    """Each gradient against max(its own largest, floor x the step's largest)."""
    top = max(float(np.abs(g).max()) for g in ref.values())
    for k, g in ref.items():
        check(f"gradient {k}", mine[k], g, rtol, scale=max(float(np.abs(g).max()), floor * top))


# ----------------------------------------------------------------------------- one step, sizes drawn

TRANSFORMERS = st.builds(
    lambda L, nh, hs, T, V, p: dict(n_layers=L, n_head=nh, n_embd=nh * hs, T=T, V=V, dropout=p),
    st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 5), st.integers(1, 9), st.integers(2, 12),
    st.sampled_from([0.0, 0.0, 0.1, 0.5])).filter(lambda s: s["n_embd"] >= 4)   # LayerNorm over < 4 channels:
                                                                                #   xhat is +-1, gradients round-off
BOWS = st.builds(lambda C, H, T, V: dict(n_embd=C, n_hidden=H, T=T, V=V),
                 st.integers(1, 12), st.integers(1, 12), st.integers(1, 9), st.integers(2, 12))


def drawn(case):
    sizes = dict(case)
    return sizes.pop("T"), sizes.pop("V"), sizes


@settings(max_examples=25, deadline=None)
@given(case=st.one_of(st.tuples(st.just("bow"), BOWS), st.tuples(st.just("transformer"), TRANSFORMERS)),
       B=st.integers(1, 7), seed=st.integers(0, 2**20))
def test_one_step_gradients_equal_the_reference(case, B, seed):
    """The loss, every gradient and the dropout state after one forward and backward of the engine,
    against the model's own forward and backward of the same batch (the same dropout masks)."""
    kind, case = case
    T, V, sizes = drawn(case)
    model = model_of(kind, V, T, seed, **sizes)
    X, Y = names(np.random.default_rng(seed), B, T, V)
    ref = copy(model)
    loss, grads = ref.loss_and_grads(X.astype(np.intp), Y.astype(np.intp))
    part, mine = engine_step(model, X, Y)
    check("loss", part, loss, RTOL64)
    check_grads(mine, grads, RTOL64, 0.01)
    for k, v in ref.buffers.items():
        np.testing.assert_array_equal(model.buffers[k], v)


@settings(max_examples=12, deadline=None)
@given(case=st.one_of(st.tuples(st.just("bow"), BOWS), st.tuples(st.just("transformer"), TRANSFORMERS)),
       B=st.integers(1, 7), seed=st.integers(0, 2**20), optimizer=st.sampled_from(["sgd", "adamw"]))
def test_one_step_of_training_equals_the_reference(case, B, seed, optimizer):
    """One step of fast.sgd and of train.sgd from the same start (the same minibatch drawn from
    40 names): the loss and every parameter after it, with the lectures' SGD and with AdamW."""
    kind, case = case
    T, V, sizes = drawn(case)
    model = model_of(kind, V, T, seed, **sizes)
    X, Y = names(np.random.default_rng(seed), 40, T, V)
    cfg = TrainConfig(**{**MAKEMORE, "optimizer": optimizer, "lr": 0.1 if optimizer == "sgd" else 5e-4},
                      steps=1, batch_size=B, seed=seed)
    ref, mine = copy(model), copy(model)
    ref_opt = train.optimizer(cfg, ref.params)
    ref_loss, _ = train.sgd(ref, X, Y, cfg, opt=ref_opt)
    with np.errstate(over="ignore"):
        loss, _ = fast.sgd(mine, X, Y, cfg)
    check("loss", loss, ref_loss, RTOL64)
    # AdamW divides a gradient by its own size: one that is zero but for round-off (a position that
    # attends to itself alone gives q and k none) moves its parameter by lr * that round-off / eps
    slack = adamw_slack(ref_opt, RTOL64) if optimizer == "adamw" else dict.fromkeys(ref.params, 0.0)
    for k in ref.params:
        check(k, mine.params[k], ref.params[k], RTOL64, slack=slack[k])
        if optimizer == "sgd":      # the update itself, -lr * gradient
            check(f"update {k}", mine.params[k] - model.params[k], ref.params[k] - model.params[k], RTOL64,
                  scale=max(max(float(np.abs(ref.params[j] - model.params[j]).max()) for j in ref.params) * 0.01,
                            float(np.abs(ref.params[k] - model.params[k]).max())))
    for k in ref.buffers:
        np.testing.assert_array_equal(mine.buffers[k], ref.buffers[k])


@pytest.mark.parametrize("kind,sizes", [("bow", {"n_embd": 5, "n_hidden": 7}),
                                        ("transformer", {"n_embd": 8, "n_head": 2, "dropout": 0.2})])
def test_targets_masked_anywhere(kind, sizes):
    """-1 at any position, not only after a name (a masked target before a row's last one is still
    computed: later positions read it), and rows with no target at all."""
    model = model_of(kind, 9, 10, 11, **sizes)
    rng = np.random.default_rng(11)
    X = rng.integers(0, 9, (12, 10))
    Y = np.where(rng.random((12, 10)) < 0.5, -1, rng.integers(0, 9, (12, 10)))
    Y[3] = -1
    Y[5, :-1] = -1                                  # only the last position counts
    ref = copy(model)
    loss, grads = ref.loss_and_grads(X, Y)
    part, mine = engine_step(model, X, Y)
    check("loss", part, loss, RTOL64)
    check_grads(mine, grads, RTOL64, 0.01)


@pytest.fixture(params=sorted(fast_tanh.TANH_FORMS))
def tanh_form(request, monkeypatch):
    """Each tanh the engines can choose from the CPU (fast/tanh.py), forced: the bag of words'
    MLP is held to the reference with every form on any CPU."""
    for dt in (np.float32, np.float64):
        monkeypatch.setitem(fast_tanh.TANH, np.dtype(dt), request.param)
    return request.param


def test_the_bag_of_words_with_each_tanh(tanh_form):
    model = model_of("bow", 27, 16, 4)
    X, Y = names(np.random.default_rng(4), 32, 16, 27)
    ref = copy(model)
    loss, grads = ref.loss_and_grads(X.astype(np.intp), Y.astype(np.intp))
    assert BoWEngine(model).tanh_form == tanh_form
    part, mine = engine_step(model, X, Y)
    check("loss", part, loss, RTOL64)
    check_grads(mine, grads, RTOL64, 0.01)


NEVER = (np.inf, -np.inf)     # a range no row sum lies in: the attention's softmax always shifts by the max


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("sum_range", [None, NEVER], ids=["exp unshifted", "shifted"])
def test_makemore_sizes_with_either_softmax(dropout, sum_range, monkeypatch):
    """makemore.py's Transformer (4 blocks of 4 heads, C 64, T 16) on a batch of 32, its attention's
    softmax as the engine picks it (exp of the scores as they are, their row sums in range) and
    forced to the shifted one (by each row's max) it falls back to."""
    if sum_range is not None:
        monkeypatch.setitem(fast_transformer.SUM_RANGE, np.dtype(np.float64), sum_range)
    model = model_of("transformer", 27, 16, 5, dropout=dropout)
    X, Y = names(np.random.default_rng(5), 32, 16, 27)
    ref = copy(model)
    loss, grads = ref.loss_and_grads(X.astype(np.intp), Y.astype(np.intp))
    part, mine = engine_step(model, X, Y)
    check("loss", part, loss, RTOL64)
    check_grads(mine, grads, RTOL64, 0.01)
    np.testing.assert_array_equal(model.buffers[DROPOUT_STATE], ref.buffers[DROPOUT_STATE])


def test_scores_that_overflow_exp_take_the_shifted_softmax(monkeypatch):
    """float32 attention scores beyond exp's range (c_attn's weights scaled up, so that exp of the
    scores as they are gives inf): the engine falls back to the shifted softmax, and gives what
    the forced shifted softmax gives, finite."""
    model = model_of("transformer", 27, 16, 7, dtype=np.float32, n_layers=2)
    for i in range(2):
        model.params[f"transformer.h.{i}.attn.c_attn.weight"] *= 12
    X, Y = names(np.random.default_rng(7), 32, 16, 27)
    loss, grads = engine_step(copy(model), X, Y)
    with monkeypatch.context() as m:
        m.setitem(fast_transformer.SUM_RANGE, np.dtype(np.float32), (-np.inf, np.inf))     # never shift
        with np.errstate(all="ignore"):
            assert not np.isfinite(engine_step(copy(model), X, Y)[0])
    monkeypatch.setitem(fast_transformer.SUM_RANGE, np.dtype(np.float32), NEVER)
    loss_shifted, shifted = engine_step(copy(model), X, Y)
    assert np.isfinite(loss) and loss == loss_shifted
    for k, g in shifted.items():
        np.testing.assert_array_equal(grads[k], g, err_msg=k)


# ----------------------------------------------------------------------------- float32

@pytest.mark.parametrize("kind,sizes", [("bow", {}), ("transformer", {}),
                                        ("transformer", {"n_embd": 12, "n_head": 3, "n_layers": 2, "dropout": 0.3})])
def test_float32_gradients_follow_the_float64_reference(kind, sizes):
    """The float32 engine's loss and gradients against the float64 reference from the same float32
    params (and dropout masks): each gradient to 2e-5 of its own scale, or of a tenth of the step's
    largest where it cancels (float32 round-off is relative to the terms summed, not to the sum)."""
    model = model_of(kind, 27, 16, 6, dtype=np.float32, **sizes)
    X, Y = names(np.random.default_rng(6), 32, 16, 27)
    ref = copy(model, np.float64)
    loss, grads = ref.loss_and_grads(X.astype(np.intp), Y.astype(np.intp))
    part, mine = engine_step(model, X, Y)
    assert all(g.dtype == np.float32 for g in mine.values())
    check("loss", part, loss, RTOL32)
    check_grads(mine, grads, RTOL32, 0.1)
    np.testing.assert_array_equal(model.buffers.get(DROPOUT_STATE, 0), ref.buffers.get(DROPOUT_STATE, 0))


# ----------------------------------------------------------------------------- trajectories

@pytest.mark.parametrize("kind,sizes,optimizer", [
    ("bow", {"n_embd": 8, "n_hidden": 16}, "adamw"),
    ("transformer", {"n_embd": 8, "n_layers": 2, "n_head": 2}, "adamw"),
    ("transformer", {"n_embd": 8, "n_layers": 1, "n_head": 2, "dropout": 0.1}, "sgd")])
def test_a_thousand_steps_follow_the_reference(kind, sizes, optimizer):
    """1,000 steps of train.sgd and of fast.sgd from the same start, float64: every parameter, the
    dropout state and the loss history to 1e-10 (makemore.py's AdamW, or SGD at 0.5 with dropout).
    AdamW moves a parameter whose gradient is round-off by up to lr * round-off / eps a step (the
    keys' bias, which the softmax ignores): at a larger lr than makemore.py's, that alone passes 1e-10."""
    model = model_of(kind, 12, 7, 8, **sizes)
    X, Y = names(np.random.default_rng(8), 300, 7, 12)
    lr = 0.5 if optimizer == "sgd" else MAKEMORE["lr"]
    cfg = TrainConfig(**{**MAKEMORE, "optimizer": optimizer, "lr": lr}, steps=1000, batch_size=8, seed=3)
    ref, mine = copy(model), copy(model)
    ref_losses, _ = train.sgd(ref, X, Y, cfg)
    with np.errstate(over="ignore"):
        losses, _ = fast.sgd(mine, X, Y, cfg)
    check("loss history", losses, ref_losses, RTOL64_RUN)
    for k in ref.params:
        check(k, mine.params[k], ref.params[k], RTOL64_RUN)
    for k in ref.buffers:
        np.testing.assert_array_equal(mine.buffers[k], ref.buffers[k])


def test_gradients_for_gradcheck_equal_the_reference():
    """engine.gradients, gradcheck's fast column, for both models."""
    for kind, sizes in [("bow", {"n_embd": 6, "n_hidden": 9}), ("transformer", {"n_embd": 8, "n_head": 2})]:
        model = model_of(kind, 27, 9, 2, **sizes)
        X, Y = names(np.random.default_rng(2), 20, 9, 27)
        grads = copy(model).loss_and_grads(X.astype(np.intp), Y.astype(np.intp))[1]
        mine = fast.gradients(model, X, Y)
        check_grads(mine, grads, RTOL64, 0.01)


@pytest.mark.parametrize("kind,sizes", [("bow", {"n_embd": 6, "n_hidden": 9}),
                                        ("transformer", {"n_embd": 8, "n_head": 2, "dropout": 0.3})])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_evaluation_equals_the_reference(kind, sizes, dtype, rtol):
    """fast.evaluate (transformer.inference_loss: the engine's forward, names sorted by length, in
    chunks) against train.evaluate, after a few steps, over more names than one chunk; inference
    never drops, and leaves the dropout state alone."""
    import npmlp.fast
    from npmlp.fast.transformer import inference_loss
    model = model_of(kind, 27, 11, 3, dtype=dtype, **sizes)
    X, Y = names(np.random.default_rng(3), 700, 11, 27)
    with np.errstate(over="ignore"):
        fast.sgd(model, X, Y, TrainConfig(**MAKEMORE, steps=20, batch_size=16, seed=2))
    state = {k: b.copy() for k, b in model.buffers.items()}
    ref = train.evaluate(model, X, Y)
    check("loss", npmlp.fast.evaluate(model, X, Y), ref, rtol)
    check("loss, chunks of 50", inference_loss(model, X, Y, 50), ref, rtol)
    check("loss (reference engine)", npmlp.fast.evaluate(model, X, Y, "reference"), ref, 0)
    for k, b in state.items():
        np.testing.assert_array_equal(model.buffers[k], b)


def test_both_models_name_their_engine():
    assert fast.ENGINE_CLASS[BoW.spec.engine] is BoWEngine
    assert fast.ENGINE_CLASS[Transformer.spec.engine] is TransformerEngine


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=6)


@pytest.mark.parametrize("kind,opts", [("transformer", ["--n-layers", "1", "--n-embd", "16"]),
                                       ("transformer", ["--n-layers", "1", "--n-embd", "16", "--dropout", "0.1"]),
                                       ("bow", ["--n-embd", "8", "--n-hidden", "8"])])
def test_train_runs_the_fast_engine_and_resumes_bit_identically(data, tmp_path, monkeypatch, kind, opts):
    """`npmlp train` trains these models on the fast engine unless told; a run interrupted after 13
    steps and resumed ends with the same bits as one never interrupted (params, AdamW's moments,
    the loss history and the dropout state)."""
    argv = ["train", "--data", str(data), "--model", kind, "--steps", "30", "--quiet", "--no-plots", *opts]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main([*argv, "--out", str(full)]) == 0
    model, _, meta, lossi = load_checkpoint(full / "model.npz")
    assert meta["run"]["engine"] == "fast" and len(lossi) == 30 and np.isfinite(lossi).all()
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(13))
        assert cli.main([*argv, "--out", str(part)]) == 130
    assert cli.main(["train", "--resume", str(part), "--quiet", "--no-plots"]) == 0
    with np.load(full / "model.npz") as a, np.load(part / "model.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k
        if "dropout" in " ".join(opts):
            assert a[DROPOUT_STATE][1] == 30
