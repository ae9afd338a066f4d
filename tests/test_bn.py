"""BatchNorm: the fused pair (layers.batchnorm_forward/backward) against torch in both variance
conventions and against finite differences; makemore part 4's bn model, whose backward runs atom
by atom, against the same model in torch (every atom), against the fused pair, and over a
200-step trajectory; its calibrated statistics; and its checkpoint.

Legend: B batch, H width. Tolerances: float64 1e-10 relative to max|ref| (measured ~1e-15).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check, make_names, needs_torch

from npmlp import gradcheck, train
from npmlp.bn import BNMLP
from npmlp.fast import engine as fast
from npmlp.layers import batchnorm_backward, batchnorm_forward
from npmlp.mlp import MLP

RTOL = 1e-10


def torch_bn(unbiased):
    """The torch expression each variance convention matches: F.batch_norm (training) for the biased
    one, part 4's hand-written line (torch.var, unbiased) for Bessel's."""
    import torch
    import torch.nn.functional as F

    def f(x, gamma, beta):
        if not unbiased:
            return F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
        return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=True) + 1e-5) + beta
    return f


def bn_inputs(B, H, seed, offset=0.0, constant=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, H)) * 3 + offset
    if constant:
        x[:, ::2] = offset          # constant columns: variance 0, only eps keeps them finite
    return x, 1 + 0.3 * rng.standard_normal(H), 0.3 * rng.standard_normal(H)


GRID = [(2, 1, 0.0, False), (2, 7, 0.0, False), (32, 200, 0.0, False), (33, 1000, 0.0, False),
        (4096, 30, 0.0, False), (512, 100, 0.0, True), (64, 50, 1e3, False), (128, 20, -5e4, False)]


@needs_torch
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("B,H,offset,constant", GRID)
def test_batchnorm_pair_vs_torch(B, H, offset, constant, unbiased):
    x, gamma, beta = bn_inputs(B, H, B + H, offset, constant)
    rep = gradcheck.check_pair(lambda x, g, b: batchnorm_forward(x, g, b, unbiased=unbiased), batchnorm_backward,
                               x, gamma, beta, torch_forward=torch_bn(unbiased), coords=10)
    assert rep.ok, rep.text
    assert [r.name for r in rep.rows] == ["x", "g", "b"]
    out, _ = batchnorm_forward(x, gamma, beta, unbiased=unbiased)
    import torch
    ref = torch_bn(unbiased)(*(torch.tensor(a) for a in (x, gamma, beta))).numpy()
    check("out", out, ref, RTOL)
    assert all(r.torch_verdict in ("exact", "approx") for r in rep.rows)


def test_batchnorm_variances_differ_by_bessel():
    """unbiased=True divides by B - 1: xhat shrinks by sqrt((B - 1) / B) (eps aside)."""
    x, gamma, beta = bn_inputs(8, 5, 0)
    _, biased = batchnorm_forward(x, gamma, beta, eps=0)
    _, bessel = batchnorm_forward(x, gamma, beta, eps=0, unbiased=True)
    np.testing.assert_allclose(bessel.xhat, biased.xhat * np.sqrt(7 / 8), rtol=1e-12)
    np.testing.assert_allclose(biased.xhat.std(0), 1, rtol=1e-12)


def test_batchnorm_of_one_row_is_an_error_not_nan():
    x, gamma, beta = bn_inputs(1, 4, 0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="at least 2 rows"):
        batchnorm_forward(x, gamma, beta, unbiased=True)


# ----------------------------------------------------------------------------- the bn model

def random_bn(V=11, T=3, E=4, H=9, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p = {k: rng.standard_normal(s) * 0.5 for k, s in BNMLP.shapes(V, T, E, H).items()}
    return BNMLP({k: v.astype(dtype) for k, v in p.items()}), rng


@needs_torch
@pytest.mark.parametrize("V,T,E,H,B", [(27, 3, 10, 200, 32), (11, 3, 4, 9, 2), (53, 5, 3, 64, 300), (5, 1, 1, 1, 7)])
def test_bn_model_every_atom_vs_torch(V, T, E, H, B):
    from npmlp.torch_mirrors import torch_loss_and_grads
    model, rng = random_bn(V, T, E, H, seed=B)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, B)
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    tloss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
    check("loss", loss, tloss, RTOL)
    assert list(dacts) == list(model.act_names)
    big = max(np.abs(g).max() for g in tgrads.values())
    for k, g in {**dacts, **grads}.items():
        ref = {**tdacts, **tgrads}[k]
        # db1 is 0 up to round-off (BatchNorm subtracts the mean): judged against the other gradients
        check("d" + k, g, ref, RTOL, scale=max(np.abs(ref).max(), 1e-2 * big))


def test_atom_chain_equals_the_fused_pair():
    """The model's atom-by-atom backward and layers.batchnorm_backward (unbiased) agree."""
    model, rng = random_bn(H=50, seed=3)
    X, Y = rng.integers(0, 11, (40, 3)), rng.integers(0, 11, 40)
    _, c = model.forward(X, Y)
    grads, dacts = model.backward(c)
    out, cache = batchnorm_forward(c.hprebn, model.params["bngain"], model.params["bnbias"], unbiased=True)
    check("hpreact", out, c.hpreact, RTOL)
    dx, dgamma, dbeta = batchnorm_backward(dacts["hpreact"], cache)
    check("dhprebn", dx, dacts["hprebn"], RTOL)
    check("dbngain", dgamma, grads["bngain"], RTOL)
    check("dbnbias", dbeta, grads["bnbias"], RTOL)


def test_bn_model_vs_finite_differences():
    model, rng = random_bn(seed=5)
    X, Y = rng.integers(0, 11, (16, 3)), rng.integers(0, 11, 16)
    rep = gradcheck.report(model, X, Y, coords=15, use_torch=False)
    assert [r.name for r in rep.rows] == [*model.act_names, "W2", "b2", "bngain", "bnbias", "W1", "b1", "C"]
    bad = [r for r in rep.rows if not r.fd_ok]
    assert not bad, gradcheck.format_table(rep.rows, np.float64)


def test_bn_init_is_part_4s():
    m = BNMLP.init(27, seed=1, dtype=np.float64)
    assert m.num_params == 12_297 and m.sizes == MLP.spec.defaults
    rng = np.random.default_rng(1)
    draws = {k: rng.standard_normal(s) for k, s in (("C", (27, 10)), ("W1", (30, 200)), ("b1", (200,)),
             ("W2", (200, 27)), ("b2", (27,)), ("bngain", (200,)), ("bnbias", (200,)))}
    np.testing.assert_array_equal(m.params["C"], draws["C"])
    np.testing.assert_allclose(m.params["W1"], draws["W1"] * (5 / 3) / np.sqrt(30), rtol=1e-15)
    for k in ("b1", "W2", "b2", "bnbias"):
        np.testing.assert_allclose(m.params[k], draws[k] * 0.1, rtol=1e-15)
    np.testing.assert_allclose(m.params["bngain"], 1 + 0.1 * draws["bngain"], rtol=1e-15)


@needs_torch
def test_bn_trajectory_200_steps_vs_torch():
    from npmlp.torch_mirrors import torch_sgd
    vocab, X, Y = small_data()
    model = BNMLP.init(vocab.size, n_hidden=30, seed=7, dtype=np.float64)
    init = BNMLP(model.params)
    cfg = train.TrainConfig(steps=200, batch_size=32, lr=0.1, seed=7)
    lossi, _ = train.sgd(model, X, Y, cfg)
    tl, tp = torch_sgd(init, X, Y, [train.batch_rows(cfg, s, len(X)) for s in range(200)],
                       [cfg.lr_at(s) for s in range(200)])
    check("lossi", lossi, tl.astype(np.float32), 1e-6)       # lossi is float32
    for k in model.params:
        check(k, model.params[k], tp[k], RTOL, scale=max(np.abs(tp[k]).max(), 1e-3))


def small_data():
    from npmlp.data import Vocab, build_dataset
    words = make_names(400, seed=2)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, 3))


def test_calibrated_statistics_are_the_training_splits():
    """bnmean/bnvar: mean and Bessel-corrected variance of hprebn over every row, however many
    chunks calibrate() cuts them into; inference normalises with them."""
    vocab, X, _Y = small_data()
    model = BNMLP.init(vocab.size, n_hidden=16, seed=3, dtype=np.float64)
    model.calibrate(X, chunk=97)
    hprebn = (model.params["C"][X].reshape(len(X), -1) @ model.params["W1"] + model.params["b1"])
    np.testing.assert_allclose(model.buffers["bnmean"], hprebn.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.buffers["bnvar"], hprebn.var(0, ddof=1), rtol=1e-12)
    # inference on the whole split = the training forward on the whole split with Bessel (B = N)
    logits = model.logits(X)
    np.testing.assert_allclose(logits, model.forward(X), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the fast engine's bn

@pytest.mark.parametrize("B,H,dtype,rtol", [(4, 7, np.float64, 1e-12), (32, 200, np.float64, 1e-12),
                                            (300, 50, np.float64, 1e-12), (32, 200, np.float32, 2e-5),
                                            (1000, 30, np.float32, 2e-5)])
def test_fast_bn_gradients_equal_the_atom_chain(B, H, dtype, rtol):
    """The fast engine's fused BatchNorm, whole batch (never cut into chunks), against the
    reference's atom-by-atom backward; float32 against the reference in float64."""
    model, rng = random_bn(V=27, H=H, seed=B)
    model = BNMLP({k: v.astype(dtype) for k, v in model.params.items()})
    X, Y = rng.integers(0, 27, (B, 3)), rng.integers(0, 27, B)
    ref64 = BNMLP({k: v.astype(np.float64) for k, v in model.params.items()})
    _, c = ref64.forward(X, Y)
    grads, dacts = ref64.backward(c)
    got = fast.gradients(model, X, Y)
    big = max(np.abs(g).max() for g in grads.values())
    # db1 is 0 up to round-off: the sum of B terms of dhprebn, so its round-off scales with their sizes
    sizes = {"b1": np.abs(dacts["hprebn"]).sum(0).max()}
    for k in grads:
        check("d" + k, got[k], grads[k], rtol, scale=max(np.abs(grads[k]).max(), 1e-2 * big, sizes.get(k, 0)))


def test_fast_bn_trajectory_equals_the_reference():
    vocab, X, Y = small_data()
    ref, quick = (BNMLP.init(vocab.size, n_hidden=40, seed=2, dtype=np.float64) for _ in range(2))
    cfg = train.TrainConfig(steps=1000, batch_size=300, lr=0.1, seed=3)
    lossi_ref, _ = train.sgd(ref, X, Y, cfg)
    lossi_fast, _ = fast.sgd(quick, X, Y, cfg)
    check("lossi", lossi_fast, lossi_ref, 1e-6)                   # float32 history
    for k in ref.params:
        check(k, quick.params[k], ref.params[k], 1e-10, scale=max(np.abs(ref.params[k]).max(), 1e-3))
    with fast.Chunks(quick, 300) as batches:
        assert len(batches.chunks) == 1           # its statistics are the whole batch's
