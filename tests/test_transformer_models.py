"""makemore.py's bag of words and Transformer (npmlp/transformer.py) held to torch: makemore.py's
own modules (torch_mirrors.transformer_module: its keys, shapes and maths) loaded with
from_makemore give the same loss and every gradient in float64, on sizes and batches hypothesis
draws; the gradcheck report (torch and finite differences) in float64 and float32; dropout
(training only, the backward with the forward's masks, the masks reproducible from the model's
buffer, so a resumed run is bit-identical); 100 steps of AdamW against torch.optim.AdamW; the
parameter counts of makemore.py's defaults; the readings (attention patterns, residual norms).

Legend: B batch, T block_size, t positions fed (t <= T), C n_embd, H n_hidden, L n_layers,
nh n_head, V vocab size. Tolerances: float64 1e-10 relative to max|torch| (helpers.check).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp import gradcheck
from npmlp.contract import count_params, from_makemore, to_makemore
from npmlp.train import TrainConfig, batch_rows, optimizer, sgd
from npmlp.transformer import DROPOUT_STATE, BoW, Transformer

torch = pytest.importorskip("torch", reason="torch is not installed: these tests compare each model with it")
from npmlp.torch_mirrors import transformer_module  # noqa: E402

V = 27
RTOL = 1e-10
CLASSES = {"bow": BoW, "transformer": Transformer}
SMALL = {"bow": dict(n_embd=6, n_hidden=10), "transformer": dict(n_embd=8, n_layers=2, n_head=2)}


def sequences(rng, B, T, t=None):
    """B names as makemore.py's CharDataset rows, x = [0, c1..cn, 0...], y = [c1..cn, 0, -1...],
    of T positions, cut to the first t (position 0 always has a target)."""
    X, Y = np.zeros((B, T), np.int64), np.full((B, T), -1, np.int64)
    for b in range(B):
        n = int(rng.integers(0, T))
        w = rng.integers(1, V, n)
        X[b, 1:1 + n], Y[b, :n], Y[b, n] = w, w, 0
    t = T if t is None else t
    return np.ascontiguousarray(X[:, :t]), np.ascontiguousarray(Y[:, :t])


def module(kind, T, seed=0, **sizes):
    """makemore.py's module of --type kind, torch's init under torch.manual_seed(seed), in float64."""
    torch.manual_seed(seed)
    return transformer_module(kind, V, T, **sizes).double()


def unshaped(kind, sizes):
    return {"n_head": sizes["n_head"]} if "n_head" in sizes else {}


def compare_with_module(kind, T, sizes, X, Y, seed=0):
    """from_makemore(the module's state_dict) + loss_and_grads + to_makemore == the module's loss and
    .grad of every parameter; to_makemore(model) loads back with strict load_state_dict."""
    m = module(kind, T, seed, **sizes)
    model = from_makemore(m.state_dict(), kind, **unshaped(kind, sizes))
    assert model.dtype == np.float64 and model.block_size == T
    loss, grads = model.loss_and_grads(X, Y)
    logits, tloss = m(torch.as_tensor(X), torch.as_tensor(Y))
    tloss.backward()
    check("loss", loss, tloss.item(), RTOL)
    check("logits", model.logits(X), logits.detach().numpy(), RTOL)
    mine = to_makemore(model, grads)
    named = dict(m.named_parameters())
    assert set(mine) == set(named)
    for k, p in named.items():
        check(k, mine[k], p.grad.numpy(), RTOL)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in to_makemore(model).items()}, strict=True)
    return model


# ----------------------------------------------------------------------------- makemore.py's modules

CASES = st.one_of(
    st.builds(lambda C, H, T: ("bow", dict(n_embd=C, n_hidden=H), T),
              st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 5, 16, 33])),
    # n_embd >= 4: over one or two channels x - mean is +-d, so a LayerNorm's xhat is +-1 whatever x, and
    # every gradient through it is round-off
    st.builds(lambda L, nh, hs, T: ("transformer", dict(n_layers=L, n_head=nh, n_embd=nh * hs), T),
              st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 4),
              st.sampled_from([1, 3, 16, 33])).filter(lambda case: case[1]["n_embd"] >= 4))


@settings(max_examples=30, deadline=None)
@given(case=CASES, seed=st.integers(0, 2**31 - 1), B=st.integers(1, 9), cut=st.floats(0, 1))
def test_from_makemore_gives_the_modules_loss_and_every_gradient(case, seed, B, cut):
    kind, sizes, T = case
    t = max(1, round(cut * T))                              # X as long as block_size, or shorter
    X, Y = sequences(np.random.default_rng(seed), B, T, t)
    compare_with_module(kind, T, sizes, X, Y, seed)


@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_makemore_defaults_on_a_batch_of_names(kind):
    """makemore.py's own sizes (n_embd 64, n_embd2 64, 4 layers of 4 heads) and block_size 16, B 32."""
    X, Y = sequences(np.random.default_rng(7), 32, 16)
    model = compare_with_module(kind, 16, {}, X, Y, seed=3407)
    assert model.sizes == {"block_size": 16, **CLASSES[kind].spec.model_defaults}


def test_parameter_counts_are_makemore_defaults():
    bow, tr = BoW.init(V, 16), Transformer.init(V, 16)
    assert bow.num_params == 12_827 and tr.num_params == 204_544
    assert sum(p.numel() for p in transformer_module("bow", V, 16).parameters()) == 12_827
    assert sum(p.numel() for p in transformer_module("transformer", V, 16).parameters()) == 204_544
    for model in (bow, tr):
        assert count_params(type(model), V, model.sizes) == model.num_params
    deep = {**tr.sizes, "n_layers": 7}                      # extrapolated from one and two blocks
    assert count_params(Transformer, V, deep) == Transformer.init(V, 16, n_layers=7).num_params


@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_to_makemore_keys_shapes_and_buffers(kind):
    model = CLASSES[kind].init(V, 9, **SMALL[kind])
    state = to_makemore(model)
    m = module(kind, 9, **SMALL[kind])
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {k: v.shape for k, v in state.items()}
    for k, buf in model.makemore_buffers().items():
        np.testing.assert_array_equal(buf, m.state_dict()[k].numpy())
    back = from_makemore(m.state_dict(), kind, **unshaped(kind, SMALL[kind]))
    assert back.sizes == model.sizes and list(back.params) == list(model.params)


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_gradcheck_report_every_row(kind, dtype):
    """Every intermediate and parameter against torch and float64 central differences, on a batch
    shorter than block_size, biases non-zero (torch's init)."""
    model = CLASSES[kind].init(V, 7, seed=5, dtype=dtype, **SMALL[kind])
    X, Y = sequences(np.random.default_rng(1), 5, 7, 6)
    r = gradcheck.report(model, X, Y)
    table = gradcheck.format_table(r.rows, dtype, fast=False)
    names = [row.name for row in r.rows]                       # the intermediates, then the parameters
    assert names[:len(model.act_names)] == list(model.act_names), table
    assert sorted(names[len(model.act_names):]) == sorted(model.param_names), table
    assert all(row.ok and row.torch_verdict in ("exact", "approx") for row in r.rows), table
    assert r.loss == pytest.approx(r.torch_loss, rel=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_float32_stays_float32(kind):
    model = CLASSES[kind].init(V, 8, **SMALL[kind])
    X, Y = sequences(np.random.default_rng(2), 4, 8)
    loss, c = model.forward(X, Y)
    grads, dacts = model.backward(c)
    assert c.logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values()), {k: g.dtype for k, g in grads.items()}
    assert all(d.dtype == np.float32 for d in dacts.values()), {k: d.dtype for k, d in dacts.items()}
    assert list(dacts) == list(model.act_names) and set(grads) == set(model.param_names)


# ----------------------------------------------------------------------------- dropout

def dropout_model(p=0.3, seed=11):
    return Transformer.init(V, 8, dtype=np.float64, seed=seed, dropout=p, **SMALL["transformer"])


def without_dropout(model):
    return Transformer.from_params(model.params, {**model.sizes, "dropout": 0.0})


def test_dropout_only_in_training():
    model = dropout_model()
    plain = without_dropout(model)
    X, Y = sequences(np.random.default_rng(3), 6, 8)
    assert model.dropout_step == 0
    np.testing.assert_array_equal(model.logits(X), plain.logits(X))          # inference never drops
    assert model.loss(X, Y) == plain.loss(X, Y)
    assert model.dropout_step == 0                                            # ... nor draws
    first, second = model.forward(X, Y)[0], model.forward(X, Y)[0]
    assert model.dropout_step == 2
    assert len({first, second, plain.forward(X, Y)[0]}) == 3                  # new masks every training forward
    plain.forward(X, Y)
    assert plain.dropout_step == 0                                            # dropout 0 draws nothing
    c = model.forward(X, Y)[1]
    mask = c.caches["h.0.attn.c_proj"].att_dropout_mask                       # (B, nh, T, T)
    assert mask.shape == (6, 2, 8, 8) and 0.2 < (mask == 0).mean() < 0.4
    assert set(np.unique(c.caches["x0"].mask)) == {0.0, 1 / 0.7}


def test_dropout_backward_uses_the_forward_masks():
    """The gradients of one training forward against central differences of the same-mask forward:
    every difference runs from the same dropout step, so draws the same masks."""
    model = dropout_model()
    X, Y = sequences(np.random.default_rng(4), 5, 8, 7)
    state = model.buffers[DROPOUT_STATE].copy()
    _, c = model.forward(X, Y)
    grads, dacts = model.backward(c)

    def loss(at=None):
        model.buffers[DROPOUT_STATE][...] = state                 # the same step: the same masks
        return model.forward(X, Y, at=at)[0]

    def fd_of(name, idx, step):
        if name in model.params:
            return gradcheck.central_difference(loss, model.params[name], idx, step)
        a = np.array(c[name])
        return gradcheck.central_difference(lambda: loss({name: a}), a, idx, step)

    rows = gradcheck.check_rows({**dacts, **grads}, None, {}, fd_of, np.float64, coords=12)
    assert all(r.ok for r in rows), gradcheck.format_table(rows, np.float64, fast=False)
    plain_grads = without_dropout(model).loss_and_grads(X, Y)[1]
    k = "transformer.h.0.attn.c_attn.weight"
    assert np.abs(grads[k] - plain_grads[k]).max() > 1e-3 * np.abs(plain_grads[k]).max()   # the masks matter


def test_dropout_masks_follow_seed_and_step_so_resume_is_bit_identical():
    """Six AdamW steps at once, and three, a checkpoint-style copy (params, buffers, sizes, the
    optimiser's moments), three more: the same losses and params, bit for bit."""
    words = sequences(np.random.default_rng(5), 64, 8)
    cfg = TrainConfig(**{**Transformer.spec.train, "steps": 6, "batch_size": 8})
    whole = dropout_model()
    losses = []
    sgd(whole, *words, cfg, on_step=lambda s, loss: losses.append(loss))
    part = dropout_model()
    opt = optimizer(cfg, part.params)
    sgd(part, *words, cfg, stop=3, opt=opt)
    assert part.dropout_step == 3
    resumed = Transformer.from_params({k: v.copy() for k, v in part.params.items()}, dict(part.sizes),
                                      {k: v.copy() for k, v in part.buffers.items()})
    opt2 = optimizer(cfg, resumed.params)
    opt2.load_state(opt.state(), opt.t)
    again = []
    sgd(resumed, *words, cfg, start=3, opt=opt2, on_step=lambda s, loss: again.append(loss))
    assert again == losses[3:]
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    X, Y = words[0][:6], words[1][:6]
    at = {s: Transformer.from_params(whole.params, whole.sizes, {DROPOUT_STATE: np.array([s, 5.0])}).forward(X, Y)[0]
          for s in (11, 11, 12)}
    twice = Transformer.from_params(whole.params, whole.sizes, {DROPOUT_STATE: np.array([11, 5.0])}).forward(X, Y)[0]
    assert twice == at[11] and at[12] != at[11]                     # the seed and the step decide the masks


def test_from_makemore_has_no_dropout_unless_asked():
    m = module("transformer", 8, **SMALL["transformer"])
    assert from_makemore(m.state_dict(), "transformer", n_head=2).dropout == 0.0
    assert from_makemore(m.state_dict(), "transformer", n_head=2, dropout=0.1).dropout == 0.1


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_100_adamw_steps_equal_torch_optim_adamw(kind):
    """train.sgd with the spec's recipe against torch.optim.AdamW stepping makemore.py's module on
    the same rows: every loss and the final parameters, float64. The recipes are npmlp's: a cosine
    rate (set on torch's groups each step), for the Transformer weight decay on the matrices only
    (torch's two parameter groups), at dropout 0."""
    sizes = {"bow": dict(n_embd=16, n_hidden=16), "transformer": dict(n_embd=16, n_layers=2, n_head=2)}[kind]
    X, Y = sequences(np.random.default_rng(6), 300, 10)
    m = module(kind, 10, 1, **sizes)
    model = from_makemore(m.state_dict(), kind, **unshaped(kind, sizes))
    cfg = TrainConfig(**{**model.spec.train, "steps": 100})
    assert (cfg.schedule, cfg.decay_matrices_only) == ("cosine", kind == "transformer")
    losses = []
    sgd(model, X, Y, cfg, on_step=lambda s, loss: losses.append(loss))

    named = dict(m.named_parameters())
    decayed = [k for k, p in named.items() if p.ndim >= 2 or not cfg.decay_matrices_only]
    groups = [{"params": [named[k] for k in decayed], "weight_decay": cfg.weight_decay},
              {"params": [p for k, p in named.items() if k not in decayed], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    tlosses = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        ix = batch_rows(cfg, step, len(X))
        _, loss = m(torch.as_tensor(X[ix]), torch.as_tensor(Y[ix]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tlosses.append(loss.item())
    check("losses", np.array(losses), np.array(tlosses), RTOL)
    assert np.mean(tlosses[-10:]) < np.mean(tlosses[:10]) - 0.1   # it learned
    state = to_makemore(model)
    for k, p in m.named_parameters():
        check(k, state[k], p.detach().numpy(), RTOL)


# ----------------------------------------------------------------------------- the contract and the readings

def test_heads_must_divide_n_embd():
    with pytest.raises(ValueError, match="--n-embd 10 is not divisible by --n-head 4.*2 or 5"):
        Transformer.check_options({"n_embd": 10, "n_head": 4, "n_layers": 1})
    with pytest.raises(ValueError, match="--n-head"):
        Transformer.init(V, 8, n_embd=10, n_head=4)
    Transformer.check_options({"n_embd": 12, "n_head": 4})
    params = Transformer.init(V, 8, n_embd=8, n_layers=1, n_head=2).params
    with pytest.raises(ValueError, match="n_head=3 does not divide"):
        Transformer(params, n_head=3)
    with pytest.raises(ValueError, match="dropout"):
        Transformer(params, n_head=2, dropout=1.0)


@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_sequences_it_refuses(kind):
    model = CLASSES[kind].init(V, 5, **SMALL[kind])
    for X in (np.zeros((2, 6), np.int64), np.zeros((2, 0), np.int64), np.zeros(5, np.int64),
              np.zeros((2, 3)), np.full((2, 3), -1), np.full((2, 3), V)):
        with pytest.raises(ValueError, match="X "):
            model.logits(X)


@pytest.mark.parametrize("kind", ["bow", "transformer"])
def test_init_is_torchs_default_and_seeded(kind):
    cls = CLASSES[kind]
    a, b, other = cls.init(V, 8, seed=1), cls.init(V, 8, seed=1), cls.init(V, 8, seed=2)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["lm_head.weight"], other.params["lm_head.weight"])
    for k, p in a.params.items():
        module_name = k.split(".")[-2]
        if module_name in ("wte", "wpe"):
            assert 0.9 < p.std() < 1.1, k                                      # N(0, 1)
        elif module_name.startswith("ln_"):
            assert (p == (1 if k.endswith("weight") else 0)).all(), k
        else:
            fan_in = a.params[k[:-4] + "weight"].shape[0] if k.endswith("bias") else p.shape[0]
            assert np.abs(p).max() <= 1 / np.sqrt(fan_in) and np.abs(p).max() > 0.8 / np.sqrt(fan_in), k


def test_attention_patterns_and_residual_norms():
    model = Transformer.init(V, 9, dtype=np.float64, seed=4, **SMALL["transformer"])
    X, Y = sequences(np.random.default_rng(8), 3, 9, 7)
    pats = model.attention_patterns(X)
    assert list(pats) == [0, 1]
    from npmlp.torch_mirrors import transformer_forward
    P = {k: torch.tensor(v) for k, v in model.params.items()}
    _, acts = transformer_forward(P, torch.as_tensor(X), torch.as_tensor(Y), **model.sizes)
    for i, att in pats.items():
        assert att.shape == (3, 2, 7, 7)
        np.testing.assert_allclose(att.sum(-1), 1, rtol=1e-12)
        assert (np.triu(att, 1) == 0).all()                                # nothing from the future
        check(f"att {i}", att, acts[f"h.{i}.att"].detach().numpy(), RTOL)
    norms = model.residual_norms(X)
    want = [np.linalg.norm(acts[n].detach().numpy(), axis=-1).mean() for n in ("x0", "h.0", "h.1")]
    check("residual norms", norms, np.array(want), RTOL)
    bow = BoW.init(V, 9, **SMALL["bow"])
    assert bow.residual_norms(X).shape == (2,)


def test_checkpoint_state_round_trips():
    """What a checkpoint keeps (params, buffers, sizes) rebuilds the same model: from_params."""
    model = dropout_model()
    X, Y = sequences(np.random.default_rng(9), 4, 8)
    model.forward(X, Y)
    assert model.buffer_shapes(V, **model.sizes) == {k: v.shape for k, v in model.buffers.items()}
    assert all(v.dtype == model.dtype for v in model.buffers.values())
    back = Transformer.from_params(model.params, model.sizes, model.buffers)
    assert back.sizes == model.sizes and back.dropout_step == model.dropout_step == 1
    assert back.forward(X, Y)[0] == model.forward(X, Y)[0]
