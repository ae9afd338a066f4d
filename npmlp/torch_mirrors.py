"""torch autograd mirrors of npmlp's models: the same forwards written in torch, for the tests,
the benchmarks and `npmlp gradcheck` (its torch column) only. A model's spec names its mirror
(Spec.mirror); each takes (P, X, Y, buffers=None, **the model's sizes) and returns (loss, the
intermediates by the model's names).

torch is imported inside the functions: `import npmlp` never needs it.
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from .deep import n_linear
from .layers import BN_EPS


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def bigram_forward(P, X, Y, buffers=None, **sizes):
    """Part 1's bigram in torch, as the lecture writes it: a one-hot row times W. Returns (loss, acts dict)."""
    import torch.nn.functional as F

    xenc = F.one_hot(X[:, 0], num_classes=P["W"].shape[0]).to(P["W"].dtype)   # (B, V)
    logits = xenc @ P["W"]                                                     # (B, V)
    return F.cross_entropy(logits, Y), {"logits": logits}


def mlp_forward(P, X, Y, buffers=None, **sizes):
    """The lecture's forward in torch. P: dict of leaf tensors. Returns (loss, acts dict)."""
    import torch
    import torch.nn.functional as F

    B = X.shape[0]
    emb = P["C"][X]                              # (B, T, E)
    embcat = emb.view(B, -1)                     # (B, T*E)
    hpreact = embcat @ P["W1"] + P["b1"]         # (B, H)
    h = torch.tanh(hpreact)                      # (B, H)
    logits = h @ P["W2"] + P["b2"]               # (B, V)
    loss = F.cross_entropy(logits, Y)
    return loss, {"logits": logits, "h": h, "hpreact": hpreact, "embcat": embcat, "emb": emb}


def bn_forward(P, X, Y, buffers=None, **sizes):
    """makemore part 4's forward, one atom per line as the lecture writes it (every atom gets a
    gradient of its own). Returns (loss, acts dict)."""
    import torch
    import torch.nn.functional as F

    n = X.shape[0]
    emb = P["C"][X]                                            # (B, T, E)
    embcat = emb.view(n, -1)                                   # (B, T*E)
    hprebn = embcat @ P["W1"] + P["b1"]                        # (B, H)
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)              # (1, H)
    bndiff = hprebn - bnmeani                                  # (B, H)
    bndiff2 = bndiff ** 2                                      # (B, H)
    bnvar = 1 / (n - 1) * bndiff2.sum(0, keepdim=True)         # (1, H) Bessel's correction
    bnvar_inv = (bnvar + BN_EPS) ** -0.5                       # (1, H)
    bnraw = bndiff * bnvar_inv                                 # (B, H)
    hpreact = P["bngain"] * bnraw + P["bnbias"]                # (B, H)
    h = torch.tanh(hpreact)                                    # (B, H)
    logits = h @ P["W2"] + P["b2"]                             # (B, V)
    loss = F.cross_entropy(logits, Y)
    return loss, {"logits": logits, "h": h, "hpreact": hpreact, "bnraw": bnraw, "bnvar_inv": bnvar_inv,
                  "bnvar": bnvar, "bndiff2": bndiff2, "bndiff": bndiff, "bnmeani": bnmeani, "hprebn": hprebn,
                  "embcat": embcat, "emb": emb}


def deep_forward(P, X, Y, buffers=None, **sizes):
    """makemore part 3's stack in torch: Linear, F.batch_norm in training mode (biased variance to
    normalise; with `buffers`, running_meanI / running_varI updated in place, momentum 0.1 and the
    unbiased variance, as torch.nn.BatchNorm1d), tanh. Returns (loss, acts dict named as deep.py's)."""
    import torch
    import torch.nn.functional as F

    n = n_linear(P)
    bn = "gamma1" in P
    emb = P["C"][X]                                            # (B, T, E)
    x = embcat = emb.view(X.shape[0], -1)                      # (B, T*E)
    acts = {"emb": emb, "embcat": embcat}
    for i in range(1, n + 1):
        x = x @ P[f"W{i}"] + (0 if bn else P[f"b{i}"])
        acts["logits" if i == n and not bn else f"linear{i}"] = x
        if bn:
            mean, var = (None, None) if buffers is None else (buffers[f"running_mean{i}"], buffers[f"running_var{i}"])
            x = F.batch_norm(x, mean, var, P[f"gamma{i}"], P[f"beta{i}"], training=True, momentum=0.1, eps=BN_EPS)
            acts["logits" if i == n else f"batchnorm{i}"] = x
        if i < n:
            x = acts[f"tanh{i}"] = torch.tanh(x)
    return F.cross_entropy(x, Y), acts


def wavenet_forward(P, X, Y, buffers=None, batchnorm_over_batch_only=0, **sizes):
    """makemore part 5's WaveNet in torch, with the lecture's own layers written out: FlattenConsecutive
    (view, squeeze), Linear without bias, its BatchNorm1d (statistics over dims (0, 1) of a 3-D input,
    or dim 0 alone with `batchnorm_over_batch_only`, the lecture's bug; x.var, unbiased; with `buffers`, the
    running statistics updated in place, momentum 0.1, with that same variance), tanh, and the last
    Linear. Returns (loss, acts dict named as wavenet.py's)."""
    import torch
    import torch.nn.functional as F

    L = n_linear(P) - 1
    n = P["W1"].shape[0] // P["C"].shape[1]                    # the flatten group
    x = emb = P["C"][X]                                        # (B, T, E)
    acts = {"emb": emb}
    for i in range(1, L + 1):
        B, T, C = x.shape
        x = x.view(B, T // n, C * n)                           # (B, T/n, C*n)
        if x.shape[1] == 1:
            x = x.squeeze(1)                                   # (B, C*n)
        acts[f"flatten{i}"] = x
        x = acts[f"linear{i}"] = x @ P[f"W{i}"]                # (..., H)
        dim = (0, 1) if x.ndim == 3 and not batchnorm_over_batch_only else 0
        xmean = x.mean(dim, keepdim=True)
        xvar = x.var(dim, keepdim=True)                        # unbiased, torch's default
        x = acts[f"batchnorm{i}"] = P[f"gamma{i}"] * (x - xmean) / torch.sqrt(xvar + BN_EPS) + P[f"beta{i}"]
        if buffers is not None:
            with torch.no_grad():
                for name, stat in (("running_mean", xmean), ("running_var", xvar)):
                    b = buffers[f"{name}{i}"]
                    b.copy_((1 - 0.1) * b + 0.1 * stat.reshape(b.shape))
        x = acts[f"tanh{i}"] = torch.tanh(x)
    logits = acts["logits"] = x @ P[f"W{L + 1}"] + P[f"b{L + 1}"]   # (B, V)
    return F.cross_entropy(logits, Y), acts



# ----------------------------------------------------------------------------- makemore.py's recurrent models

def _through_time(P, X, Y, step, state):
    """makemore.py's RNN.forward around one cell: wte, the cell run position by position from the
    learned start state(s) expanded over the batch, lm_head on every hidden state, and its
    F.cross_entropy(..., ignore_index=-1). step(x_t, state) -> (h_t, the next state)."""
    import torch
    import torch.nn.functional as F

    B, T = X.shape
    emb = P["wte.weight"][X]                                   # (B, T, E)
    state = tuple(s.expand(B, -1) for s in state)              # (B, H) each
    hiddens = []
    for t in range(T):
        h, state = step(emb[:, t], state)                      # (B, H)
        hiddens.append(h)
    hidden = torch.stack(hiddens, 1)                           # (B, T, H)
    logits = hidden @ P["lm_head.weight"] + P["lm_head.bias"]  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), Y.reshape(-1), ignore_index=-1)
    return loss, {"logits": logits, "hidden": hidden, "emb": emb}


def rnn_forward(P, X, Y, buffers=None, **sizes):
    """makemore.py's RNN with its RNNCell, h = tanh(xh_to_h([x, hprev])), weights in npmlp's (in, out)
    layout. Returns (loss, acts dict named as recurrent.RNN's)."""
    import torch

    def step(x, state):
        (hprev,) = state
        h = torch.tanh(torch.cat([x, hprev], 1) @ P["cell.xh_to_h.weight"] + P["cell.xh_to_h.bias"])
        return h, (h,)

    return _through_time(P, X, Y, step, (P["start"],))


def gru_forward(P, X, Y, buffers=None, **sizes):
    """makemore.py's RNN with its GRUCell, line by line. Returns (loss, acts dict named as recurrent.GRU's)."""
    import torch

    def linear(xh, gate):
        return xh @ P[f"cell.xh_to_{gate}.weight"] + P[f"cell.xh_to_{gate}.bias"]

    def step(x, state):
        (hprev,) = state
        xh = torch.cat([x, hprev], 1)                          # (B, E+H)
        r = torch.sigmoid(linear(xh, "r"))                     # (B, H)
        xhr = torch.cat([x, r * hprev], 1)                     # (B, E+H)
        hbar = torch.tanh(linear(xhr, "hbar"))                 # (B, H)
        z = torch.sigmoid(linear(xh, "z"))                     # (B, H)
        h = (1 - z) * hprev + z * hbar                         # (B, H)
        return h, (h,)

    return _through_time(P, X, Y, step, (P["start"],))


def lstm_forward(P, X, Y, buffers=None, **sizes):
    """The LSTM: makemore.py's RNN with torch.nn.LSTMCell's maths written in torch ops (the four gates
    i, f, g, o side by side, both biases added), weights in npmlp's (in, out) layout; makemore_module
    runs the real nn.LSTMCell. Returns (loss, acts dict named as recurrent.LSTM's)."""
    import torch

    def step(x, state):
        hprev, cprev = state
        gates = x @ P["cell.weight_ih"] + P["cell.bias_ih"] + hprev @ P["cell.weight_hh"] + P["cell.bias_hh"]
        i, f, g, o = gates.chunk(4, 1)                         # (B, H) each
        c = torch.sigmoid(f) * cprev + torch.sigmoid(i) * torch.tanh(g)   # (B, H)
        h = torch.sigmoid(o) * torch.tanh(c)                   # (B, H)
        return h, (h, c)

    return _through_time(P, X, Y, step, (P["start_h"], P["start_c"]))


def makemore_module(kind, state_dict=None, vocab_size=None, n_embd=64, n_hidden=64, block_size=16):
    """makemore.py's recurrent model as a torch nn.Module, written here from its maths (makemore.py
    itself is no part of npmlp): RNN(config, cell_type='rnn' or 'gru') with its RNNCell or GRUCell,
    and for kind 'lstm' the same RNN with start_h, start_c and `self.cell = nn.LSTMCell(n_embd,
    n_embd2)`. Its state_dict() has makemore.py's keys and torch's shapes; forward(idx, targets=None)
    -> (logits, loss) as makemore.py's. n_hidden is makemore.py's n_embd2.

    state_dict: the weights to load (arrays or tensors, its keys and shapes; strict), which also
    give the sizes and the dtype; without one, torch's own init for vocab_size characters."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if kind not in ("rnn", "gru", "lstm"):
        raise ValueError(f"kind must be 'rnn', 'gru' or 'lstm', got {kind!r}")
    dtype = torch.float32
    if state_dict is not None:
        state_dict = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
        vocab_size, n_embd = state_dict["wte.weight"].shape
        n_hidden = state_dict["lm_head.weight"].shape[1]
        dtype = state_dict["wte.weight"].dtype
    E, H = n_embd, n_hidden

    class RNNCell(nn.Module):
        def __init__(self):
            super().__init__()
            self.xh_to_h = nn.Linear(E + H, H)

        def forward(self, x, hprev):
            return torch.tanh(self.xh_to_h(torch.cat([x, hprev], 1)))

    class GRUCell(nn.Module):
        def __init__(self):
            super().__init__()
            self.xh_to_z = nn.Linear(E + H, H)                 # makemore.py's order: z, r, hbar
            self.xh_to_r = nn.Linear(E + H, H)
            self.xh_to_hbar = nn.Linear(E + H, H)

        def forward(self, x, hprev):
            xh = torch.cat([x, hprev], 1)
            r = torch.sigmoid(self.xh_to_r(xh))
            hbar = torch.tanh(self.xh_to_hbar(torch.cat([x, r * hprev], 1)))
            z = torch.sigmoid(self.xh_to_z(xh))
            return (1 - z) * hprev + z * hbar

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.block_size, self.vocab_size = block_size, vocab_size
            if kind == "lstm":
                self.start_h = nn.Parameter(torch.zeros(1, H))
                self.start_c = nn.Parameter(torch.zeros(1, H))
            else:
                self.start = nn.Parameter(torch.zeros(1, H))
            self.wte = nn.Embedding(vocab_size, E)
            self.cell = nn.LSTMCell(E, H) if kind == "lstm" else RNNCell() if kind == "rnn" else GRUCell()
            self.lm_head = nn.Linear(H, vocab_size)

        def forward(self, idx, targets=None):
            b, t = idx.shape
            emb = self.wte(idx)                                # (b, t, E)
            if kind == "lstm":
                h, c = self.start_h.expand(b, -1), self.start_c.expand(b, -1)
            else:
                h = self.start.expand(b, -1)
            hiddens = []
            for i in range(t):
                if kind == "lstm":
                    h, c = self.cell(emb[:, i], (h, c))
                else:
                    h = self.cell(emb[:, i], h)
                hiddens.append(h)
            logits = self.lm_head(torch.stack(hiddens, 1))     # (b, t, V)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss

    module = Recurrent().to(dtype)
    if state_dict is not None:
        module.load_state_dict(state_dict, strict=True)
    return module

def _mirror(model):
    """The model's mirror (its spec's), told the model's sizes: what its params cannot show, such
    as the wavenet's BatchNorm bug."""
    return functools.partial(getattr(sys.modules[__name__], model.spec.mirror), **model.sizes)


def _tensors(params, X, Y):
    import torch
    P = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    return P, torch.as_tensor(np.asarray(X, np.int64)), torch.as_tensor(np.asarray(Y, np.int64))


def torch_loss_and_grads(model, X, Y):
    """The same model in torch, from the same params (dtype kept), on X (B, T), Y (B,).
    -> (loss, grads, act_grads), all NumPy."""
    P, Xt, Yt = _tensors(model.params, X, Y)
    loss, acts = _mirror(model)(P, Xt, Yt)
    for a in acts.values():
        a.retain_grad()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in P.items()}
    dacts = {k: a.grad.numpy() for k, a in acts.items()}
    return loss.item(), grads, dacts


def torch_sgd(model, X, Y, batches, lrs, return_buffers=False):
    """The lecture's training loop in torch from the model's params (and running statistics): for
    each row-index batch, forward, backward, p.data += -lr * p.grad.
    Returns (losses, final params as NumPy[, final buffers as NumPy])."""
    import torch

    P, Xt, Yt = _tensors(model.params, X, Y)
    buffers = {k: torch.tensor(np.array(v)) for k, v in model.buffers.items()}
    losses = []
    for ix, lr in zip(batches, lrs):
        ix = torch.as_tensor(np.array(ix, np.int64))
        loss, _ = _mirror(model)(P, Xt[ix], Yt[ix], buffers)
        for p in P.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in P.values():
                p += -lr * p.grad
        losses.append(loss.item())
    params = {k: v.detach().numpy() for k, v in P.items()}
    if return_buffers:
        return np.array(losses), params, {k: v.numpy() for k, v in buffers.items()}
    return np.array(losses), params
