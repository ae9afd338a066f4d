"""makemore.py's recurrent models (npmlp/recurrent.py's RNN, GRU and LSTM) under the model contract.

Against makemore.py: its model is torch_mirrors.makemore_module (makemore.py's RNN with its RNNCell or
GRUCell, written from its maths, and for the LSTM the same RNN around a real torch.nn.LSTMCell), whose
state_dict goes in through contract.from_makemore and whose every .grad must equal ours brought back
through to_makemore, on names hypothesis draws, in float64; then the strict load_state_dict of our
export, the parameter counts, 200 steps of makemore.py's AdamW against torch.optim.AdamW, gradcheck's
report against each model's torch mirror in both dtypes, the masked positions, sampling's shorter
prefixes, the init, and the readings through time against torch's gradient of each hidden state.

Legend: B batch, T positions, E n_embd, H n_hidden (makemore.py's n_embd2), V vocab size.
Tolerance: float64 against torch 1e-10, relative to each array's largest |reference| value (check).
"""
from __future__ import annotations

import math
import string

import numpy as np
import pytest
from helpers import HAVE_TORCH, check, make_names, needs_torch, rel
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp import gradcheck
from npmlp.contract import MAKEMORE_BLOCK, SEQUENCES, count_params, from_makemore, to_makemore
from npmlp.data import DOT, Vocab, build_sequences
from npmlp.recurrent import GRU, LSTM, RNN, Recurrent
from npmlp.train import TrainConfig, batch_rows, sgd

CLASSES = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
KINDS = list(CLASSES)
VOCAB = Vocab((DOT, *string.ascii_lowercase))          # makemore.py's 27 on names.txt
V = VOCAB.size
RTOL = 1e-10
DRAWN = settings(max_examples=8, deadline=None)
SMALL = {"n_embd": 6, "n_hidden": 8}                   # gradcheck's model: every coordinate is cheap


def random_names(rng, n, longest):
    """n names of 1..longest random lowercase letters."""
    return ["".join(rng.choice(list(string.ascii_lowercase), rng.integers(1, longest + 1))) for _ in range(n)]


def batch(seed, B, T=MAKEMORE_BLOCK):
    """X (B, T), Y (B, T) of B random names, as makemore.py's CharDataset pads them to T positions."""
    return build_sequences(random_names(np.random.default_rng(seed), B, T - 1), VOCAB, block_size=T)


def makemore(kind, seed, dtype=None, **sizes):
    """makemore.py's model (torch's own init from torch seed `seed`), its starts made non-zero:
    zeros could hide a wrong dstart."""
    import torch

    from npmlp.torch_mirrors import makemore_module

    torch.manual_seed(seed)
    module = makemore_module(kind, vocab_size=V, **sizes)
    if dtype is not None:
        module = module.to(dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("start"):
                p.normal_(0, 0.5)
    return module


def torch_grads(module, X, Y):
    """(loss, {state_dict key: .grad as an array}) of one forward and backward of makemore.py's module."""
    import torch
    module.zero_grad(set_to_none=True)
    _, loss = module(torch.as_tensor(X.astype(np.int64)), torch.as_tensor(Y.astype(np.int64)))
    loss.backward()
    return loss.item(), {k: p.grad.numpy() for k, p in module.named_parameters()}


def small_model(kind, dtype, seed=0):
    """A small model of ours at torch's init, its starts non-zero."""
    model = CLASSES[kind].init(V, **SMALL, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for k in CLASSES[kind].starts:
        model.params[k][...] = rng.normal(0, 0.5, model.params[k].shape)
    return model


# ----------------------------------------------------------------------------- against makemore.py's model

@needs_torch
@pytest.mark.parametrize("kind", KINDS)
@DRAWN
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 6), T=st.integers(2, MAKEMORE_BLOCK),
       sizes=st.sampled_from([{}, {"n_embd": 5, "n_hidden": 7}, {"n_embd": 16, "n_hidden": 3}]))
def test_loss_and_every_grad_equal_makemore_modules(kind, seed, B, T, sizes):
    """from_makemore(module.state_dict()) + loss_and_grads + to_makemore(model, grads) give the
    module's loss and every .grad; the torch mirror (gradcheck's) gives the same numbers too."""
    import torch

    from npmlp.torch_mirrors import torch_loss_and_grads

    module = makemore(kind, seed, torch.float64, **sizes)
    X, Y = batch(seed, B, T)
    model = from_makemore(module.state_dict(), kind, block_size=T)
    assert type(model) is CLASSES[kind] and model.dtype == np.float64
    assert model.sizes == {"block_size": T, "n_embd": sizes.get("n_embd", 64), "n_hidden": sizes.get("n_hidden", 64)}

    loss, grads = model.loss_and_grads(X, Y)
    torch_loss, tgrads = torch_grads(module, X, Y)
    assert rel(loss, torch_loss) <= RTOL, (loss, torch_loss)
    mine = to_makemore(model, grads)
    assert sorted(mine) == sorted(tgrads)
    for k, g in tgrads.items():
        check(f"{kind} {k}", mine[k], g, RTOL)

    mirror_loss, mirror_grads, _ = torch_loss_and_grads(model, X, Y)
    assert rel(mirror_loss, torch_loss) <= RTOL
    for k, g in to_makemore(model, mirror_grads).items():
        check(f"{kind} mirror {k}", g, tgrads[k], RTOL)


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
def test_the_export_loads_strictly_into_makemores_module(kind):
    """to_makemore(model): makemore.py's keys in its order, torch's shapes and our values; its strict
    load_state_dict takes them, from_makemore of what it then holds gives our params back, and the
    module built from them computes our logits."""
    import torch

    from npmlp.torch_mirrors import makemore_module
    model = CLASSES[kind].init(V, seed=3, dtype=np.float64)
    module = makemore(kind, 0, torch.float64)
    want = module.state_dict()
    exported = to_makemore(model)
    assert [(k, v.shape) for k, v in exported.items()] == [(k, tuple(v.shape)) for k, v in want.items()]
    module.load_state_dict({k: torch.as_tensor(v) for k, v in exported.items()}, strict=True)
    back = from_makemore(module.state_dict(), kind)
    for k, p in model.params.items():
        assert np.array_equal(back.params[k], p), k
    X, _ = batch(1, 3)
    logits, _ = makemore_module(kind, exported)(torch.as_tensor(X.astype(np.int64)))
    check(f"{kind} logits", model.logits(X), logits.detach().numpy(), RTOL)


@pytest.mark.parametrize("kind, count", [("rnn", 11_803), ("gru", 28_315), ("lstm", 36_891)])
def test_parameter_counts(kind, count):
    """makemore.py's defaults (n_embd 64, n_embd2 64) with V = 27: its RNN 11,803, its GRU 28,315;
    the LSTM 36,891 (start_h, start_c 2 x 64, wte 1,728, LSTMCell 2 x 256 x 64 + 2 x 256, lm_head 1,755)."""
    cls = CLASSES[kind]
    model = cls.init(V)
    assert model.num_params == count
    assert count_params(cls, V, model.sizes) == count
    if HAVE_TORCH:
        assert sum(p.numel() for p in makemore(kind, 0).parameters()) == count


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
def test_200_adamw_steps_follow_torch_optim_adamw(kind):
    """train.sgd with makemore.py's AdamW (its spec's recipe: a cosine rate, here from 3e-3 so that
    the weights travel) against torch.optim.AdamW stepping makemore.py's module on the same batches,
    its rate set each step: every step's loss and the final weights, float64."""
    import torch
    words = make_names(200, seed=5)
    X, Y = build_sequences(words, VOCAB)
    cfg = TrainConfig(**{**CLASSES[kind].spec.train, "steps": 200, "batch_size": 8, "lr": 3e-3})
    module = makemore(kind, 1, torch.float64, n_embd=16, n_hidden=24)
    model = from_makemore(module.state_dict(), kind, block_size=X.shape[1])

    losses = []
    sgd(model, X, Y, cfg, on_step=lambda step, loss: losses.append(loss))

    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    Xt, Yt = torch.as_tensor(X.astype(np.int64)), torch.as_tensor(Y.astype(np.int64))
    torch_losses = []
    assert cfg.schedule == "cosine"
    for step in range(cfg.steps):
        opt.param_groups[0]["lr"] = cfg.lr_at(step)
        ix = torch.as_tensor(np.array(batch_rows(cfg, step, len(X))))
        _, loss = module(Xt[ix], Yt[ix])
        module.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
    check(f"{kind} losses", np.array(losses), np.array(torch_losses), RTOL)
    assert torch_losses[-1] < torch_losses[0] - 0.3, "the weights did not travel: a weak test"
    for k, p in module.state_dict().items():
        check(f"{kind} {k} after {cfg.steps} steps", to_makemore(model)[k], p.numpy(), RTOL)


# ----------------------------------------------------------------------------- gradcheck: mirrors, differences

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_report_every_row_ok(kind, dtype):
    """gradcheck.report: every intermediate's and parameter's gradient against the model's torch
    mirror (exact or approx) and against central differences (float64)."""
    model = small_model(kind, dtype)
    X, Y = batch(11, 4, 9)
    report = gradcheck.report(model, X, Y)
    names = [r.name for r in report.rows]
    assert names[:3] == list(model.act_names) and sorted(names[3:]) == sorted(model.params)
    bad = [r for r in report.rows if not r.fd_ok or r.torch_verdict not in (("exact", "approx") if HAVE_TORCH else
                                                                            ("-",))]
    assert not bad, "\n".join(f"{r.name}: torch {r.torch_verdict} maxdiff {r.torch_maxdiff}, fd {r.fd_relerr:.2e}"
                              for r in bad)
    if HAVE_TORCH:
        assert abs(report.loss - report.torch_loss) <= (1e-12 if dtype == np.float64 else 1e-6) * report.loss


# ----------------------------------------------------------------------------- the masked positions, prefixes

@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_contribute_nothing(kind):
    """Changing the inputs at and after each row's first masked target (-1) changes neither the
    loss nor any gradient, bit for bit: the loss never reads those positions' outputs, and the
    recurrence only carries them forwards."""
    model = small_model(kind, np.float64)
    X, Y = batch(4, 6)
    first = (Y == -1).argmax(1)                                      # (B,) the first masked position
    assert (first > 0).all()
    X2 = X.copy()
    rng = np.random.default_rng(0)
    for b, t in enumerate(first):
        X2[b, t:] = rng.integers(0, V, X.shape[1] - t)
    assert not np.array_equal(X, X2)
    loss, grads = model.loss_and_grads(X, Y)
    loss2, grads2 = model.loss_and_grads(X2, Y)
    assert loss2 == loss
    for k, g in grads.items():
        assert np.array_equal(grads2[k], g), k


@pytest.mark.parametrize("kind", KINDS)
def test_shorter_prefixes_and_the_contracts_inference(kind):
    """Sampling feeds prefixes X[:, :t]: their logits are the first t positions' of the whole
    sequence (each position reads only the ones before it); logits and loss are inference's;
    more positions than block_size, or targets of another shape, are refused."""
    model = small_model(kind, np.float64)
    X, Y = batch(8, 5)
    logits = model.logits(X)                                          # (B, T, V)
    assert logits.shape == (5, MAKEMORE_BLOCK, V)
    for t in (1, 4, MAKEMORE_BLOCK - 1):
        check(f"{kind} prefix {t}", model.logits(X[:, :t]), logits[:, :t], 1e-13)
    assert rel(model.loss(X, Y), model.forward(X, Y)[0]) <= 1e-15
    with pytest.raises(ValueError, match="block_size"):
        model.logits(np.zeros((2, MAKEMORE_BLOCK + 1), np.int64))
    with pytest.raises(ValueError, match="one target per position"):
        model.forward(X, Y[:, :3])


# ----------------------------------------------------------------------------- init, spec, construction

@pytest.mark.parametrize("kind", KINDS)
def test_init_is_torchs_defaults(kind):
    """starts zeros, wte standard normal, every nn.Linear tensor within +-1/sqrt(fan_in), the
    LSTMCell's four within +-1/sqrt(H); the same seed the same draws, in either dtype."""
    cls = CLASSES[kind]
    model = cls.init(V, block_size=12, n_hidden=50)
    assert model.dtype == np.float32 and model.block_size == 12 and (model.n_embd, model.n_hidden) == (64, 50)
    p = model.params
    assert list(p) == list(cls.shapes(V, 64, 50))
    for k in cls.starts:
        assert not p[k].any()
    assert 0.9 < p["wte.weight"].std() < 1.1
    for k, a in p.items():
        if k.startswith("cell.") or k.startswith("lm_head."):
            fan_in = 50 if kind == "lstm" and k.startswith("cell.") else \
                cls.shapes(V, 64, 50)[k.replace(".bias", ".weight")][0]
            bound = fan_in ** -0.5
            assert 0.5 * bound < np.abs(a).max() <= bound, k
    again = cls.init(V, block_size=12, n_hidden=50, dtype=np.float64)
    for k in p:
        assert np.array_equal(again.params[k].astype(np.float32), p[k]), k
    assert not np.array_equal(cls.init(V, seed=1).params["wte.weight"], cls.init(V).params["wte.weight"])


@pytest.mark.parametrize("kind", KINDS)
def test_spec_and_construction(kind):
    """The declaration: makemore.py's options and recipe, sequences, its type and transposed
    weights, a mirror that exists; a model rebuilt from its params and sizes; bad params refused."""
    from npmlp import torch_mirrors
    cls = CLASSES[kind]
    spec = cls.spec
    assert spec.kind == kind and spec.data == SEQUENCES and spec.engine == kind
    assert spec.defaults == {"n_embd": 64, "n_hidden": 64} and spec.unshaped == ("block_size",)
    assert dict(spec.train) == {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.99,
                                "eps": 1e-8, "decay_at": 1.0, "batch_size": 32, "steps": 30_000, "eval_every": 500,
                                "schedule": "cosine", "lr_decayed": 5e-5}
    assert spec.embedding == "wte.weight" and callable(getattr(torch_mirrors, spec.mirror))
    assert spec.makemore.type == kind
    assert set(spec.makemore.transposed) == {k for k, s in cls.shapes(V, 5, 7).items()
                                             if len(s) == 2 and not k.startswith(("start", "wte"))}
    model = cls.init(V, block_size=9, n_embd=5, n_hidden=7)
    assert model.makemore_buffers() == {} and model.tanh_names == (("hidden",) if kind == "rnn" else ())
    twin = model.like({k: v * 2 for k, v in model.params.items()})
    assert type(twin) is cls and twin.sizes == model.sizes == {"block_size": 9, "n_embd": 5, "n_hidden": 7}
    assert issubclass(cls, Recurrent)
    with pytest.raises(ValueError):
        cls({k: v for k, v in model.params.items() if k != "lm_head.bias"})
    with pytest.raises(ValueError):
        cls({**model.params, "lm_head.bias": np.zeros(V + 1, np.float32)})
    with pytest.raises(ValueError, match="block_size"):
        cls(model.params, block_size=0)
    with pytest.raises(ValueError, match="n_hidden"):
        cls.init(V, n_hidden=0)


# ----------------------------------------------------------------------------- the readings through time

@needs_torch
@pytest.mark.parametrize("kind", KINDS)
def test_readings_through_time(kind):
    """dh_norm: the norm of torch's gradient of each h_t that makemore.py's module makes (every
    path through time); saturation a share, NaN where no target counts; for the RNN that of its
    hidden states' |h| > 0.97 over the rows that count; a model whose weights are 30x larger saturates."""
    import torch
    module = makemore(kind, 2, torch.float64)
    X, Y = batch(6, 7)
    model = from_makemore(module.state_dict(), kind)
    hs = []

    def keep(cell, inputs, out):
        h = out[0] if isinstance(out, tuple) else out
        h.retain_grad()
        hs.append(h)

    module.cell.register_forward_hook(keep)
    torch_grads(module, X, Y)
    r = model.readings_through_time(X, Y)
    assert {k: v.shape for k, v in r.items()} == {k: (MAKEMORE_BLOCK,) for k in ("saturation", "dh_norm", "targets")}
    check(f"{kind} dh_norm", r["dh_norm"], np.array([h.grad.norm().item() for h in hs]), RTOL)
    assert np.array_equal(r["targets"], (Y != -1).sum(0))
    counted = r["targets"] > 0
    assert np.isnan(r["saturation"][~counted]).all() and ((0 <= r["saturation"][counted]) &
                                                          (r["saturation"][counted] <= 1)).all()
    if kind == "rnn":
        h = torch.stack(hs, 1).detach().numpy()                                 # (B, T, H)
        share = (np.abs(h) > 0.97).mean(2)                                      # (B, T)
        want = [share[Y[:, t] != -1, t].mean() for t in np.flatnonzero(counted)]
        check("rnn saturation", r["saturation"][counted], np.array(want), 1e-15)
    loud = model.like({k: v * 30 for k, v in model.params.items()})
    assert np.nanmean(loud.readings_through_time(X, Y)["saturation"]) > 0.5
    assert math.isfinite(float(np.nanmean(r["saturation"])))
