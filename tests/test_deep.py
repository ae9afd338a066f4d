"""makemore part 3's deep network (npmlp/deep.py): every layer output's gradient and every
parameter's against the same stack in torch, BatchNorm1d's running statistics against
torch.nn.BatchNorm1d, a 200-step trajectory against torch, inference with the running statistics,
the init and the parameter counts, and finite differences through the layer objects.

Legend: B batch, H n_hidden. Tolerances: float64 1e-10 relative to max|ref| (measured ~1e-15).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check, make_names, needs_torch

from npmlp import gradcheck, train
from npmlp.deep import BatchNorm1d, Deep

RTOL = 1e-10


def small_data():
    from npmlp.data import Vocab, build_dataset
    words = make_names(400, seed=5)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, 3))


def random_deep(V=11, H=12, layers=3, batchnorm=1, seed=0):
    rng = np.random.default_rng(seed)
    p = {k: rng.standard_normal(s) * 0.5 for k, s in Deep.shapes(V, 3, 4, H, layers, batchnorm).items()}
    return Deep(p), rng


@needs_torch
@pytest.mark.parametrize("batchnorm", [1, 0])
@pytest.mark.parametrize("V,H,layers,B", [(27, 100, 5, 32), (11, 12, 1, 2), (53, 40, 3, 257)])
def test_deep_every_layer_vs_torch(V, H, layers, B, batchnorm):
    from npmlp.torch_mirrors import torch_loss_and_grads
    model, rng = random_deep(V, H, layers, batchnorm, seed=B)
    X, Y = rng.integers(0, V, (B, 3)), rng.integers(0, V, B)
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    tloss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
    check("loss", loss, tloss, RTOL)
    assert list(dacts) == list(model.act_names) and set(tdacts) == set(dacts)
    assert set(grads) == set(model.params) == set(tgrads)
    for k, g in {**dacts, **grads}.items():
        check("d" + k, g, {**tdacts, **tgrads}[k], RTOL)


@needs_torch
@pytest.mark.parametrize("B,H", [(2, 1), (32, 100), (1000, 27)])
def test_batchnorm1d_running_statistics_vs_torch_module(B, H):
    """Five training batches, then inference: our BatchNorm1d against torch.nn.BatchNorm1d."""
    import torch
    rng = np.random.default_rng(B)
    params = {"gamma1": 1 + rng.standard_normal(H) * 0.2, "beta1": rng.standard_normal(H) * 0.2}
    buffers = {"running_mean1": np.zeros(H), "running_var1": np.ones(H)}
    mine = BatchNorm1d("bn", params, buffers, "gamma1", "beta1", "running_mean1", "running_var1")
    ref = torch.nn.BatchNorm1d(H, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(params["gamma1"]))
        ref.bias.copy_(torch.tensor(params["beta1"]))
    for _ in range(5):
        x = rng.standard_normal((B, H)) * 4 + 2
        out, _ = mine.forward(x, training=True)
        check("train out", out, ref(torch.tensor(x)).detach().numpy(), RTOL)
    check("running_mean", buffers["running_mean1"], ref.running_mean.numpy(), RTOL)
    check("running_var", buffers["running_var1"], ref.running_var.numpy(), RTOL)
    ref.eval()
    x = rng.standard_normal((7, H))
    out, _ = mine.forward(x, training=False)
    check("eval out", out, ref(torch.tensor(x)).detach().numpy(), RTOL)


@needs_torch
@pytest.mark.parametrize("batchnorm", [1, 0])
def test_deep_trajectory_200_steps_vs_torch(batchnorm):
    from npmlp.torch_mirrors import torch_sgd
    vocab, X, Y = small_data()
    model = Deep.init(vocab.size, n_hidden=24, n_layers=3, batchnorm=batchnorm, seed=4, dtype=np.float64)
    init = Deep(model.params)
    cfg = train.TrainConfig(steps=200, batch_size=32, lr=0.1, decay_at=0.75, seed=4)
    lossi, _ = train.sgd(model, X, Y, cfg)
    tl, tp, tb = torch_sgd(init, X, Y, [train.batch_rows(cfg, s, len(X)) for s in range(200)],
                           [cfg.lr_at(s) for s in range(200)], return_buffers=True)
    check("lossi", lossi, tl.astype(np.float32), 1e-6)
    for k in model.params:
        check(k, model.params[k], tp[k], RTOL, scale=max(np.abs(tp[k]).max(), 1e-3))
    assert set(tb) == set(model.buffers)
    for k in tb:
        check(k, model.buffers[k], tb[k], RTOL)
    # inference: the running statistics, as torch's eval mode
    import torch
    import torch.nn.functional as F
    x = torch.tensor(tp["C"])[torch.as_tensor(X[:50].astype(np.int64))].view(50, -1)
    for i in range(1, 5):
        x = x @ torch.tensor(tp[f"W{i}"]) + (0 if batchnorm else torch.tensor(tp[f"b{i}"]))
        if batchnorm:
            x = F.batch_norm(x, torch.tensor(tb[f"running_mean{i}"]), torch.tensor(tb[f"running_var{i}"]),
                             torch.tensor(tp[f"gamma{i}"]), torch.tensor(tp[f"beta{i}"]), training=False)
        if i < 4:
            x = torch.tanh(x)
    check("inference logits", model.logits(X[:50]), x.numpy(), RTOL)


def test_deep_init_and_parameter_counts():
    m = Deep.init(27, seed=1, dtype=np.float64)
    assert m.num_params == 47_024 and m.n_layers == 5 and m.batchnorm == 1
    assert Deep.init(27, batchnorm=0).num_params == 46_497
    assert m.tanh_names == ("tanh1", "tanh2", "tanh3", "tanh4", "tanh5")
    rng = np.random.default_rng(1)
    assert np.array_equal(m.params["C"], rng.standard_normal((27, 10)))
    widths = [30, 100, 100, 100, 100, 100, 27]
    for i in range(1, 7):                                   # randn / sqrt(fan_in), drawn in layer order
        np.testing.assert_allclose(m.params[f"W{i}"], rng.standard_normal(widths[i - 1:i + 1]) / np.sqrt(widths[i - 1]),
                                   rtol=1e-15)
        assert np.all(m.params[f"gamma{i}"] == (0.1 if i == 6 else 1)) and not m.params[f"beta{i}"].any()
    plain = Deep.init(27, batchnorm=0, seed=1, dtype=np.float64)
    np.testing.assert_allclose(plain.params["W1"], m.params["W1"] * 5 / 3, rtol=1e-15)
    np.testing.assert_allclose(plain.params["W6"], m.params["W6"] * 0.1, rtol=1e-15)
    assert not plain.params["b3"].any() and not plain.buffers


def test_deep_vs_finite_differences_through_every_layer():
    model, rng = random_deep(H=6, layers=2, seed=9)
    X, Y = rng.integers(0, 11, (8, 3)), rng.integers(0, 11, 8)
    rep = gradcheck.report(model, X, Y, coords=10, use_torch=False)
    assert [r.name for r in rep.rows][:3] == ["logits", "linear3", "tanh2"]
    assert all(r.fd_ok for r in rep.rows), gradcheck.format_table(rep.rows, np.float64)


def test_training_forward_of_one_row_is_a_clear_error():
    model, rng = random_deep(seed=1)
    with pytest.raises(Exception, match="at least 2 rows"):
        model.forward(rng.integers(0, 11, (1, 3)), np.zeros(1, int))
    assert model.logits(rng.integers(0, 11, (1, 3))).shape == (1, 11)   # inference takes one row
