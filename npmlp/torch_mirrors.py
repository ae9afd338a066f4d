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


def torch_hint() -> str:
    """How to install a CPU build of torch on the running Python: PyPI's plain `torch` is a CUDA
    build of several GB on Linux; torch's own index has CPU wheels for every Python it supports
    (this project's tests pin 2.13.0, the CPU build its own package source carries for 3.11)."""
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    if sys.version_info[:2] == (3, 11):
        return f"pip install torch==2.13.0 where your index carries its CPU build, else {cpu}"
    return f"{cpu} (a CPU build; a plain `pip install torch` pulls a CUDA one of several GB)"


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
    for ix, lr in zip(batches, lrs, strict=True):
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


# ----------------------------------------------------------------------------- makemore.py's .pt files

def load_makemore(path) -> dict:
    """A makemore.py `model.pt` (torch.save of its model.state_dict()) -> {key: NumPy array}.
    Read with weights_only=True: a .pt holding anything but tensors is refused, never run."""
    import torch
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("it holds no state_dict of tensors (makemore.py saves model.state_dict())")
    return {k: v.detach().numpy().copy() for k, v in sd.items()}


def save_makemore(arrays: dict, f) -> None:
    """torch.save the arrays as a state_dict of tensors (keys and shapes as makemore.py's) to the
    open binary file f."""
    import collections

    import torch
    torch.save(collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items()), f)


# ============================================================= makemore.py's bag of words and Transformer
#
# (math and LN_EPS are imported inside the functions, as torch is, so that this section leaves the
# file's head alone.)
# The mirrors take npmlp's params (each Linear weight (in, out)) and have no dropout: they are
# makemore.py's models, which a Transformer with dropout 0 is. transformer_module builds the
# makemore.py modules themselves (nn.Embedding, nn.Linear, nn.LayerNorm, the registered causal
# masks), whose state_dict has makemore.py's keys and shapes, for from_makemore / to_makemore.

def bow_forward(P, X, Y, buffers=None, **sizes):
    """makemore.py's BoW in torch: emb = wte[X] + wpe[pos]; x = emb + (a softmax of zeros masked to
    the past) @ emb; x = x + c_proj(tanh(c_fc(x))); logits = lm_head(x); the cross-entropy over the
    targets that are not -1. Returns (loss, acts dict named as transformer.BoW's)."""
    import torch
    import torch.nn.functional as F

    T = X.shape[1]
    emb = P["wte.weight"][X] + P["wpe.weight"][torch.arange(T)]                 # (B, T, C)
    att = torch.zeros(T, T, dtype=emb.dtype).masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    att = F.softmax(att, dim=-1)                                                # (T, T) uniform over the past
    cbow = att @ emb                                                            # (B, T, C)
    resid = emb + cbow                                                          # (B, T, C)
    fc = resid @ P["context_block.mlp.c_fc.weight"] + P["context_block.mlp.c_fc.bias"]   # (B, T, H)
    h = torch.tanh(fc)                                                          # (B, T, H)
    mlp = h @ P["context_block.mlp.c_proj.weight"] + P["context_block.mlp.c_proj.bias"]  # (B, T, C)
    block = resid + mlp                                                         # (B, T, C)
    logits = block @ P["lm_head.weight"] + P["lm_head.bias"]                    # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), ignore_index=-1)
    return loss, {"logits": logits, "context_block": block, "context_block.mlp": mlp, "context_block.mlp.tanh": h,
                  "context_block.mlp.c_fc": fc, "context_block.resid_cbow": resid, "context_block.cbow": cbow,
                  "emb": emb}


def _new_gelu(x):
    """makemore.py's NewGELU."""
    import math

    import torch
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def transformer_forward(P, X, Y, buffers=None, n_head=4, **sizes):
    """makemore.py's Transformer in torch (no dropout): per block x = x + attn(ln_1(x)),
    x = x + mlp(ln_2(x)), causal softmax(q k^T / sqrt(hs)) per head; ln_f; lm_head without bias;
    the cross-entropy over the targets that are not -1. Returns (loss, acts dict named as
    transformer.Transformer's, with each block's attention weights h.i.att)."""
    import math

    import torch
    import torch.nn.functional as F

    from .layers import LN_EPS

    B, T = X.shape
    C = P["transformer.wte.weight"].shape[1]
    nh, hs = n_head, C // n_head
    future = torch.tril(torch.ones(T, T)) == 0                                  # (T, T) True above the diagonal
    x = emb = P["transformer.wte.weight"][X] + P["transformer.wpe.weight"][torch.arange(T)]  # (B, T, C)
    acts = {"emb": emb, "x0": x}
    i = 0
    while f"transformer.h.{i}.ln_1.weight" in P:
        k, n = f"transformer.h.{i}.", f"h.{i}"
        ln_1 = F.layer_norm(x, (C,), P[k + "ln_1.weight"], P[k + "ln_1.bias"], eps=LN_EPS)      # (B, T, C)
        q, kk, v = (ln_1 @ P[k + "attn.c_attn.weight"] + P[k + "attn.c_attn.bias"]).split(C, dim=2)
        q, kk, v = (a.view(B, T, nh, hs).transpose(1, 2) for a in (q, kk, v))  # (B, nh, T, hs) each
        att = (q @ kk.transpose(-2, -1)) * (1.0 / math.sqrt(hs))               # (B, nh, T, T)
        att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)         # (B, nh, T, T)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)                # (B, T, C) heads side by side
        attn = y @ P[k + "attn.c_proj.weight"] + P[k + "attn.c_proj.bias"]      # (B, T, C)
        x = resid = x + attn                                                    # (B, T, C)
        ln_2 = F.layer_norm(x, (C,), P[k + "ln_2.weight"], P[k + "ln_2.bias"], eps=LN_EPS)      # (B, T, C)
        fc = ln_2 @ P[k + "mlp.c_fc.weight"] + P[k + "mlp.c_fc.bias"]           # (B, T, 4C)
        act = _new_gelu(fc)                                                     # (B, T, 4C)
        mlp = act @ P[k + "mlp.c_proj.weight"] + P[k + "mlp.c_proj.bias"]       # (B, T, C)
        x = x + mlp                                                             # (B, T, C)
        acts.update({f"{n}.ln_1": ln_1, f"{n}.att": att, f"{n}.attn.c_proj": attn, f"{n}.attn": attn,
                     f"{n}.resid_attn": resid, f"{n}.ln_2": ln_2, f"{n}.mlp.c_fc": fc, f"{n}.mlp.act": act,
                     f"{n}.mlp.c_proj": mlp, f"{n}.mlp": mlp, n: x})
        i += 1
    ln_f = F.layer_norm(x, (C,), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps=LN_EPS)  # (B, T, C)
    logits = ln_f @ P["lm_head.weight"]                                         # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), ignore_index=-1)
    return loss, {**acts, "ln_f": ln_f, "logits": logits}


@functools.lru_cache(maxsize=1)
def _makemore_classes():
    """makemore.py's BoW and Transformer modules, written from its maths with the same module
    names (so the same state_dict keys, shapes and order), defined once torch is imported."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    class CausalSelfAttention(nn.Module):
        def __init__(self, block_size, n_embd, n_head):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)
            self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size,
                                                                                             block_size))
            self.n_head, self.n_embd = n_head, n_embd

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            q, k, v = (a.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for a in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
            return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))

    class NewGELU(nn.Module):
        def forward(self, x):
            return _new_gelu(x)

    class Block(nn.Module):
        def __init__(self, block_size, n_embd, n_head):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = CausalSelfAttention(block_size, n_embd, n_head)
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd), c_proj=nn.Linear(4 * n_embd, n_embd),
                                          act=NewGELU()))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            m = self.mlp
            return x + m.c_proj(m.act(m.c_fc(self.ln_2(x))))

    def loss_of(logits, targets):
        if targets is None:
            return None
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    class Transformer(nn.Module):
        def __init__(self, vocab_size, block_size, n_embd, n_layers, n_head):
            super().__init__()
            self.block_size = block_size
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block(block_size, n_embd, n_head) for _ in range(n_layers)]),
                ln_f=nn.LayerNorm(n_embd)))
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

        def forward(self, idx, targets=None):
            t = idx.size(1)
            x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t).unsqueeze(0))
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))
            return logits, loss_of(logits, targets)

    class CausalBoW(nn.Module):
        def __init__(self, block_size):
            super().__init__()
            self.block_size = block_size
            self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, block_size,
                                                                                             block_size))

        def forward(self, x):
            B, T, C = x.size()
            att = torch.zeros((B, T, T), dtype=x.dtype)        # makemore.py's zeros are float32; here x's dtype
            att = F.softmax(att.masked_fill(self.bias[:, :T, :T] == 0, float("-inf")), dim=-1)
            return att @ x

    class BoWBlock(nn.Module):
        def __init__(self, block_size, n_embd, n_hidden):
            super().__init__()
            self.cbow = CausalBoW(block_size)
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, n_hidden), c_proj=nn.Linear(n_hidden, n_embd)))

        def forward(self, x):
            x = x + self.cbow(x)
            m = self.mlp
            return x + m.c_proj(torch.tanh(m.c_fc(x)))

    class BoW(nn.Module):
        def __init__(self, vocab_size, block_size, n_embd, n_hidden):
            super().__init__()
            self.block_size, self.vocab_size = block_size, vocab_size
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.context_block = BoWBlock(block_size, n_embd, n_hidden)
            self.lm_head = nn.Linear(n_embd, vocab_size)

        def forward(self, idx, targets=None):
            t = idx.size(1)
            x = self.wte(idx) + self.wpe(torch.arange(t).unsqueeze(0))
            logits = self.lm_head(self.context_block(x))
            return logits, loss_of(logits, targets)

    return {"bow": BoW, "transformer": Transformer}


def transformer_module(kind, vocab_size, block_size, n_embd=64, n_hidden=64, n_layers=4, n_head=4, **_):
    """A makemore.py module of --type `kind` ('bow' or 'transformer') with torch's default init
    (torch's RNG): its forward(idx, targets) -> (logits, loss) and its state_dict are makemore.py's.
    n_hidden is the BoW's n_embd2; n_layers and n_head the Transformer's n_layer and n_head."""
    classes = _makemore_classes()
    if kind == "bow":
        return classes["bow"](vocab_size, block_size, n_embd, n_hidden)
    if kind == "transformer":
        return classes["transformer"](vocab_size, block_size, n_embd, n_layers, n_head)
    raise ValueError(f"transformer_module builds 'bow' or 'transformer', not {kind!r}")
