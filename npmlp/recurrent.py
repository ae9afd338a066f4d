"""makemore.py's recurrent chapter: the RNN and GRU cells (its RNNCell, GRUCell), an LSTM cell
(torch.nn.LSTMCell's maths), and backpropagation through time, as pairs of plain NumPy functions
in layers.py's convention:

    X_forward(inputs...)        -> (output, cache)
    X_backward(doutput, cache)  -> the gradients of the forward's inputs, in the same order

and below them the three models built from them (makemore.py's RNN with either cell, and the LSTM
its README lists but never wrote):

    X (B, T) -> emb = wte[X] (B, T, E) -> hidden: one cell step per position (B, T, H)
             -> logits = hidden @ lm_head + b (B, T, V) -> cross-entropy over the unmasked targets

Legend: B batch, T positions, E n_embd, H n_embd2 (the hidden state; the models' n_hidden), V vocab size.
NumPy layout (in, out): a linear is `x @ W + b`, W (in, out), where torch keeps (out, in).
xh is [x, hprev] side by side (B, E+H), so a cell's W (E+H, H) holds the rows that read x above
the rows that read hprev, as makemore.py's nn.Linear(n_embd + n_embd2, n_embd2) does.

The names are makemore.py's (xh_to_h for the RNN; xh_to_r, xh_to_z, xh_to_hbar for the GRU,
passed here as their W and b) and, for the LSTM, torch.nn.LSTMCell's (weight_ih, weight_hh,
bias_ih, bias_hh as W_ih (E, 4H), W_hh (H, 4H), b_ih (4H,), b_hh (4H,); gates i, f, g, o).
The first hidden state is a learned parameter, `start` (1, H) (the LSTM's start_h and start_c),
broadcast over the batch. Like layers.py this is the reference tier: true gradients, one line per
step of the maths.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .contract import (
    MAKEMORE_BLOCK,
    MAKEMORE_COSINE,
    SEED,
    SEQUENCES,
    Intermediates,
    Makemore,
    Model,
    Option,
    Spec,
    own_params,
    with_defaults,
)
from .layers import (
    IGNORE,
    EmbeddingCache,
    LinearCache,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    masked_cross_entropy_backward,
    masked_cross_entropy_forward,
)


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise, written with exp(-|x|) <= 1 so that exp never overflows."""
    e = np.exp(-np.abs(x))                            # (..., H)
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))  # (..., H)


# ----------------------------------------------------------------------------- the RNN cell (RNNCell)

class RNNCellCache(NamedTuple):
    xh: np.ndarray         # (B, E+H) [x, hprev]
    W: np.ndarray          # (E+H, H) xh_to_h's weight
    h: np.ndarray          # (B, H) the output: tanh' = 1 - h^2


def rnn_cell_forward(x, hprev, W, b):
    """x (B, E), hprev (B, H), W (E+H, H), b (H,) -> h (B, H) = tanh([x, hprev] @ W + b)."""
    xh = np.concatenate([x, hprev], axis=1)           # (B, E+H)
    hpreact = xh @ W + b                              # (B, H)
    h = np.tanh(hpreact)                              # (B, H)
    return h, RNNCellCache(xh, W, h)


def rnn_cell_backward(dh, cache):
    """dh (B, H) -> dx (B, E), dhprev (B, H), dW (E+H, H), db (H,)."""
    xh, W, h = cache
    E = xh.shape[1] - h.shape[1]
    dhpreact = (1 - h ** 2) * dh                      # (B, H)
    dW = xh.T @ dhpreact                              # (E+H, H)
    db = dhpreact.sum(0)                              # (H,)
    dxh = dhpreact @ W.T                              # (B, E+H)
    dx, dhprev = dxh[:, :E], dxh[:, E:]               # (B, E), (B, H) the two halves of [x, hprev]
    return dx, dhprev, dW, db


# ----------------------------------------------------------------------------- the GRU cell (GRUCell)

class GRUCellCache(NamedTuple):
    xh: np.ndarray         # (B, E+H) [x, hprev]
    xhr: np.ndarray        # (B, E+H) [x, hprev_reset]
    hprev: np.ndarray      # (B, H)
    r: np.ndarray          # (B, H) the reset gate
    z: np.ndarray          # (B, H) the switch gate
    hbar: np.ndarray       # (B, H) the candidate hidden state
    Wr: np.ndarray         # (E+H, H) xh_to_r's weight
    Wz: np.ndarray         # (E+H, H) xh_to_z's weight
    Wh: np.ndarray         # (E+H, H) xh_to_hbar's weight


def gru_cell_forward(x, hprev, Wr, br, Wz, bz, Wh, bh):
    """x (B, E), hprev (B, H), each W (E+H, H), each b (H,) -> h (B, H), as makemore.py's GRUCell:
    the reset gate r wipes channels of hprev before the candidate hbar reads it, and the switch
    gate z blends hprev with hbar."""
    xh = np.concatenate([x, hprev], axis=1)           # (B, E+H)
    rpreact = xh @ Wr + br                            # (B, H)
    r = sigmoid(rpreact)                              # (B, H)
    hprev_reset = r * hprev                           # (B, H)
    xhr = np.concatenate([x, hprev_reset], axis=1)    # (B, E+H)
    hbarpreact = xhr @ Wh + bh                        # (B, H)
    hbar = np.tanh(hbarpreact)                        # (B, H)
    zpreact = xh @ Wz + bz                            # (B, H)
    z = sigmoid(zpreact)                              # (B, H)
    h = (1 - z) * hprev + z * hbar                    # (B, H)
    return h, GRUCellCache(xh, xhr, hprev, r, z, hbar, Wr, Wz, Wh)


def gru_cell_backward(dh, cache):
    """dh (B, H) -> dx (B, E), dhprev (B, H), dWr, dbr, dWz, dbz, dWh, dbh (each W (E+H, H), b (H,)).

    sigmoid' = s (1 - s) and tanh' = 1 - tanh^2, both from the forward's outputs. x and hprev each
    reach h by several paths, and their gradients sum one term per path (numbered below)."""
    xh, xhr, hprev, r, z, hbar, Wr, Wz, Wh = cache
    E = xh.shape[1] - hprev.shape[1]
    dzpreact = dh * (hbar - hprev) * z * (1 - z)      # (B, H) dh/dz = hbar - hprev, times sigmoid'
    dhbarpreact = dh * z * (1 - hbar ** 2)            # (B, H) dh/dhbar = z, times tanh'
    dxhr = dhbarpreact @ Wh.T                         # (B, E+H) the gradient of [x, hprev_reset]
    dhprev_reset = dxhr[:, E:]                        # (B, H)
    drpreact = dhprev_reset * hprev * r * (1 - r)     # (B, H) dhprev_reset/dr = hprev, times sigmoid'
    dxh = drpreact @ Wr.T + dzpreact @ Wz.T           # (B, E+H) through the two gates that read xh
    dWh = xhr.T @ dhbarpreact                         # (E+H, H)
    dbh = dhbarpreact.sum(0)                          # (H,)
    dWr = xh.T @ drpreact                             # (E+H, H)
    dbr = drpreact.sum(0)                             # (H,)
    dWz = xh.T @ dzpreact                             # (E+H, H)
    dbz = dzpreact.sum(0)                             # (H,)
    # dx: (1) through hbar's input xhr, (2) through the gates' input xh
    dx = dxhr[:, :E] + dxh[:, :E]                     # (B, E)
    # dhprev: (1) the blend (1 - z) * hprev, (2) hprev_reset = r * hprev in hbar, (3) the gates' input xh
    dhprev = dh * (1 - z) + dhprev_reset * r + dxh[:, E:]  # (B, H)
    return dx, dhprev, dWr, dbr, dWz, dbz, dWh, dbh


# ----------------------------------------------------------------------------- the LSTM cell (torch.nn.LSTMCell)

class LSTMCellCache(NamedTuple):
    x: np.ndarray          # (B, E)
    hprev: np.ndarray      # (B, H)
    cprev: np.ndarray      # (B, H)
    i: np.ndarray          # (B, H) the input gate
    f: np.ndarray          # (B, H) the forget gate
    g: np.ndarray          # (B, H) the candidate cell
    o: np.ndarray          # (B, H) the output gate
    tanhc: np.ndarray      # (B, H) tanh(c)
    W_ih: np.ndarray       # (E, 4H)
    W_hh: np.ndarray       # (H, 4H)


def lstm_cell_forward(x, hprev, cprev, W_ih, W_hh, b_ih, b_hh):
    """x (B, E), hprev (B, H), cprev (B, H), W_ih (E, 4H), W_hh (H, 4H), b_ih (4H,), b_hh (4H,)
    -> ((h (B, H), c (B, H)), cache), as torch.nn.LSTMCell: the four gates' pre-activations side
    by side in the order i, f, g, o; c = f * cprev + i * g, h = o * tanh(c)."""
    gates = x @ W_ih + b_ih + hprev @ W_hh + b_hh     # (B, 4H)
    ipreact, fpreact, gpreact, opreact = np.split(gates, 4, axis=1)  # (B, H) each
    i = sigmoid(ipreact)                              # (B, H) how much of g to write
    f = sigmoid(fpreact)                              # (B, H) how much of cprev to keep
    g = np.tanh(gpreact)                              # (B, H)
    o = sigmoid(opreact)                              # (B, H) how much of the cell to show
    c = f * cprev + i * g                             # (B, H)
    tanhc = np.tanh(c)                                # (B, H)
    h = o * tanhc                                     # (B, H)
    return (h, c), LSTMCellCache(x, hprev, cprev, i, f, g, o, tanhc, W_ih, W_hh)


def lstm_cell_backward(dh, dc, cache):
    """dh (B, H), dc (B, H) (the gradient reaching c from later steps) -> dx (B, E), dhprev (B, H),
    dcprev (B, H), dW_ih (E, 4H), dW_hh (H, 4H), db_ih (4H,), db_hh (4H,)."""
    x, hprev, cprev, i, f, g, o, tanhc, W_ih, W_hh = cache
    # c reaches the loss (1) through the next step's cell (dc) and (2) through h = o * tanh(c)
    dc_total = dc + dh * o * (1 - tanhc ** 2)         # (B, H)
    dipreact = dc_total * g * i * (1 - i)             # (B, H) dc/di = g, times sigmoid'
    dfpreact = dc_total * cprev * f * (1 - f)         # (B, H) dc/df = cprev, times sigmoid'
    dgpreact = dc_total * i * (1 - g ** 2)            # (B, H) dc/dg = i, times tanh'
    dopreact = dh * tanhc * o * (1 - o)               # (B, H) dh/do = tanh(c), times sigmoid'
    dgates = np.concatenate([dipreact, dfpreact, dgpreact, dopreact], axis=1)  # (B, 4H)
    dx = dgates @ W_ih.T                              # (B, E)
    dhprev = dgates @ W_hh.T                          # (B, H)
    dcprev = dc_total * f                             # (B, H)
    dW_ih = x.T @ dgates                              # (E, 4H)
    dW_hh = hprev.T @ dgates                          # (H, 4H)
    db_ih = dgates.sum(0)                             # (4H,)
    db_hh = dgates.sum(0)                             # (4H,) the two biases are added alike: equal gradients
    return dx, dhprev, dcprev, dW_ih, dW_hh, db_ih, db_hh


# ----------------------------------------------------------------------------- through time: RNN and GRU

CELLS = {"rnn": (rnn_cell_forward, rnn_cell_backward),    # makemore.py's --type rnn
         "gru": (gru_cell_forward, gru_cell_backward)}    # and --type gru


class RecurrentCache(NamedTuple):
    cell: str              # "rnn" or "gru"
    steps: list            # [cell cache], one per position t = 0..T-1
    params: tuple          # the cell's parameters, in its forward's order
    shape: tuple           # (B, T, E) emb's shape


def recurrent_forward(emb, start, cell, *params):
    """emb (B, T, E), start (1, H), cell "rnn" or "gru", params the cell's (after x and hprev:
    W, b for the RNN; Wr, br, Wz, bz, Wh, bh for the GRU) -> hidden (B, T, H), the hidden state
    after each position, as makemore.py's RNN.forward: one cell, run position by position, each
    step reading the state the previous one wrote."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))} (the LSTM runs through lstm_forward), "
                         f"got {cell!r}")
    cell_forward, _ = CELLS[cell]
    B, T, E = emb.shape
    hprev = np.broadcast_to(start, (B, start.shape[1]))  # (B, H) the same learned start for every row
    hiddens, steps = [], []
    for t in range(T):
        h, step = cell_forward(emb[:, t], hprev, *params)  # (B, H)
        hiddens.append(h)
        steps.append(step)
        hprev = h
    hidden = np.stack(hiddens, axis=1)                # (B, T, H)
    return hidden, RecurrentCache(cell, steps, params, emb.shape)


def recurrent_backward(dhidden, cache, return_dh=False):
    """dhidden (B, T, H), the gradient arriving from each position's output -> demb (B, T, E),
    dstart (1, H), then the cell's parameter gradients in its forward's order. return_dh: also
    the gradient that reached each position's hidden state, dh (B, T, H), as a second value.

    Backpropagation through time: h_t feeds both position t's output and step t+1, so the
    gradient reaching it is dhidden[:, t] plus the dhprev step t+1's backward handed back. The loop
    runs from the last position to the first, and each parameter, used at every step, sums the
    gradients of all of them."""
    _, cell_backward = CELLS[cache.cell]
    B, T, E = cache.shape
    demb = np.zeros((B, T, E), dhidden.dtype)         # (B, T, E)
    dparams = [np.zeros_like(p) for p in cache.params]
    dhs = np.zeros_like(dhidden)                      # (B, T, H)
    dhprev = np.zeros_like(dhidden[:, 0])             # (B, H) nothing comes back from beyond the last step
    for t in reversed(range(T)):
        dh = dhidden[:, t] + dhprev                   # (B, H) (1) from position t's output (2) from step t+1
        dhs[:, t] = dh
        dx, dhprev, *dstep = cell_backward(dh, cache.steps[t])
        demb[:, t] = dx                               # (B, E)
        for dp, d in zip(dparams, dstep, strict=True):
            dp += d                                   # the parameters' gradients sum over the steps
    dstart = dhprev.sum(0, keepdims=True)             # (1, H) start was broadcast over the batch
    grads = (demb, dstart, *dparams)
    return (grads, dhs) if return_dh else grads


# ----------------------------------------------------------------------------- through time: LSTM

class LSTMCache(NamedTuple):
    steps: list            # [LSTMCellCache], one per position t = 0..T-1
    params: tuple          # (W_ih, W_hh, b_ih, b_hh)
    shape: tuple           # (B, T, E) emb's shape


def lstm_forward(emb, start_h, start_c, W_ih, W_hh, b_ih, b_hh):
    """emb (B, T, E), start_h (1, H), start_c (1, H), W_ih (E, 4H), W_hh (H, 4H), b_ih (4H,),
    b_hh (4H,) -> hidden (B, T, H), the h after each position (the cell state c stays inside)."""
    B, T, E = emb.shape
    H = start_h.shape[1]
    hprev = np.broadcast_to(start_h, (B, H))          # (B, H)
    cprev = np.broadcast_to(start_c, (B, H))          # (B, H)
    hiddens, steps = [], []
    for t in range(T):
        (h, c), step = lstm_cell_forward(emb[:, t], hprev, cprev, W_ih, W_hh, b_ih, b_hh)  # (B, H) each
        hiddens.append(h)
        steps.append(step)
        hprev, cprev = h, c
    hidden = np.stack(hiddens, axis=1)                # (B, T, H)
    return hidden, LSTMCache(steps, (W_ih, W_hh, b_ih, b_hh), emb.shape)


def lstm_backward(dhidden, cache, return_dh=False):
    """dhidden (B, T, H) -> demb (B, T, E), dstart_h (1, H), dstart_c (1, H), dW_ih (E, 4H),
    dW_hh (H, 4H), db_ih (4H,), db_hh (4H,); return_dh: also dh (B, T, H), as recurrent_backward.

    As recurrent_backward, with two states carried back: dh, added to each position's dhidden,
    and dc, which reaches c_t only from step t+1."""
    B, T, E = cache.shape
    demb = np.zeros((B, T, E), dhidden.dtype)         # (B, T, E)
    dW_ih, dW_hh, db_ih, db_hh = (np.zeros_like(p) for p in cache.params)
    dhs = np.zeros_like(dhidden)                      # (B, T, H)
    dhprev = np.zeros_like(dhidden[:, 0])             # (B, H)
    dcprev = np.zeros_like(dhidden[:, 0])             # (B, H)
    for t in reversed(range(T)):
        dh = dhidden[:, t] + dhprev                   # (B, H) (1) from position t's output (2) from step t+1
        dhs[:, t] = dh
        dx, dhprev, dcprev, dW_ih_t, dW_hh_t, db_ih_t, db_hh_t = lstm_cell_backward(dh, dcprev, cache.steps[t])
        demb[:, t] = dx                               # (B, E)
        dW_ih += dW_ih_t                              # (E, 4H) each parameter sums over the steps
        dW_hh += dW_hh_t                              # (H, 4H)
        db_ih += db_ih_t                              # (4H,)
        db_hh += db_hh_t                              # (4H,)
    dstart_h = dhprev.sum(0, keepdims=True)           # (1, H) both starts were broadcast over the batch
    dstart_c = dcprev.sum(0, keepdims=True)           # (1, H)
    grads = (demb, dstart_h, dstart_c, dW_ih, dW_hh, db_ih, db_hh)
    return (grads, dhs) if return_dh else grads


# ============================================================================= the models

# Each model's params are makemore.py's state_dict keys, in its order (the GRU's gates as makemore.py
# defines them: z, r, hbar); the LSTM's as makemore.py's would be with `self.cell = nn.LSTMCell(...)`.
OPTIONS = (Option("n_embd", 64, "embedding size E", makemore="--n-embd"),
           Option("n_hidden", 64, "hidden state size H (makemore.py's n_embd2)", makemore="--n-embd2"))
# contract.MAKEMORE_COSINE: makemore.py's AdamW, its rate higher and falling along a cosine. makemore.py's
# loop has no end (--max-steps -1); npmlp stops at its 30,000 steps, the longer of the runs measured.
TRAIN = MAKEMORE_COSINE
SATURATED = 0.97     # readings_through_time's default, diagnose's threshold (the app passes its own):
                     # |tanh| above it passes less than 6% of a gradient


def recurrent_spec(kind, title, weights):
    """The spec the three models share but for their kind, title and cell weights (torch's (out, in))."""
    return Spec(kind=kind, title=title, options=OPTIONS, train=TRAIN, data=SEQUENCES, mirror=f"{kind}_forward",
                unshaped=("block_size",), embedding="wte.weight", engine=kind,
                makemore=Makemore(type=kind, transposed=(*weights, "lm_head.weight")))


RNN_SPEC = recurrent_spec("rnn", "makemore.py's RNN: one tanh cell, tanh([x, hprev] @ W + b), read position by "
                          "position", ("cell.xh_to_h.weight",))
GRU_SPEC = recurrent_spec("gru", "makemore.py's GRU: the RNN with a reset gate and a switch gate",
                          ("cell.xh_to_z.weight", "cell.xh_to_r.weight", "cell.xh_to_hbar.weight"))
LSTM_SPEC = recurrent_spec("lstm", "the LSTM makemore.py's README lists: torch.nn.LSTMCell (gates i, f, g, o; a "
                           "cell state beside h) in makemore.py's RNN", ("cell.weight_ih", "cell.weight_hh"))


class Recurrent(Model):
    """What the three recurrent models share: their sizes, init, input checks and the readings
    through time. A subclass writes its shapes, forward and backward (the maths), and which of a
    forward's values are tanh outputs (tanh_outputs).

    params: makemore.py's state_dict keys, NumPy's (in, out) layout, one float dtype (copied).
    block_size: the longest sequence T the model reads (makemore.py's; no shape shows it)."""

    act_names = ("logits", "hidden", "emb")      # the intermediates, in backward order
    starts: tuple[str, ...] = ("start",)         # the learned first states

    def __init__(self, params, buffers=None, block_size=MAKEMORE_BLOCK):
        """The sizes follow from the params' shapes (wte.weight (V, E), start (1, H)); block_size
        does not show in them, so it is given (from_params reads it from a checkpoint's sizes)."""
        V, E = dims(params, "wte.weight")
        _, H = dims(params, self.starts[0])
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a whole number >= 1, got {block_size}")
        self.params = own_params(params, self.shapes(V, E, H))
        self.buffers = {}
        self.param_names = tuple(self.params)
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, int(block_size), E, H

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED, dtype=np.float32):
        """torch's defaults, drawn in makemore.py's module order from one generator (float64, then
        cast): the starts zeros (its torch.zeros); wte standard normal (nn.Embedding); an nn.Linear's
        weight and bias uniform in +-1/sqrt(fan_in), its input width; nn.LSTMCell's four tensors
        uniform in +-1/sqrt(H). block_size None: makemore.py's on names.txt."""
        E, H = with_defaults(cls, vocab_size, n_embd=n_embd, n_hidden=n_hidden).values()
        rng = np.random.default_rng(seed)
        shapes = cls.shapes(vocab_size, E, H)
        p = {}
        for k, s in shapes.items():
            if k in cls.starts:
                p[k] = np.zeros(s)
            elif k == "wte.weight":
                p[k] = rng.standard_normal(s)
            else:
                bound = cls.init_bound(k, shapes)
                p[k] = rng.uniform(-bound, bound, s)
        return cls({k: v.astype(dtype) for k, v in p.items()},
                   block_size=MAKEMORE_BLOCK if block_size is None else block_size)

    @staticmethod
    def init_bound(name, shapes) -> float:
        """nn.Linear's: 1/sqrt(fan_in), fan_in the rows of its (in, out) weight (its bias's too)."""
        return shapes[name.replace(".bias", ".weight")][0] ** -0.5

    @staticmethod
    def step_floats(E, H) -> int:
        """The floats one row's cell step keeps in its cache (the RNN's xh and h)."""
        return E + 2 * H

    @classmethod
    def activation_shapes(cls, batch, vocab_size, block_size, n_embd, n_hidden, **_):
        """The named intermediates, the cells' caches ("steps"), and the softmax of the targets that count."""
        B, T, E, H, V = batch, block_size, n_embd, n_hidden, vocab_size
        return {"emb": (B, T, E), "steps": (B, T, cls.step_floats(E, H)), "hidden": (B, T, H), "logits": (B, T, V),
                "probs": (B * T, V)}

    def tanh_outputs(self, c):
        """(B, T, k): the tanh outputs of each position's cell step, for readings_through_time."""
        raise NotImplementedError

    def readings_through_time(self, X, Y, saturated=SATURATED):
        """How the model reads one batch of sequences X (B, T), Y (B, T), position by position, from
        the reference forward and backward (training mode), for `npmlp diagnose` to draw:

            saturation  (T,) the share of position t's tanh outputs with |value| > saturated, over the
                        rows whose target at t counts (NaN where none does): the RNN's h_t, the GRU's
                        candidate hbar_t, the LSTM's candidate g_t and tanh(c_t) (tanh_outputs)
            dh_norm     (T,) ||dloss/dh_t||, the Frobenius norm over the batch of the gradient reaching
                        h_t from position t's output and from every later step (backprop through time:
                        where it shrinks towards the first positions, the early characters stop learning)
            targets     (T,) how many rows' target at t counts (is not -1)"""
        X, Y = self.check_inputs(X, Y)
        _, c = self.forward(X, Y)
        _, _, dh = self.backward(c, return_dh=True)                                   # (B, T, H)
        counts = Y != IGNORE                                                          # (B, T)
        n = counts.sum(0)                                                             # (T,)
        share = (np.abs(self.tanh_outputs(c)) > saturated).mean(2)                    # (B, T) per row
        with np.errstate(invalid="ignore"):
            saturation = (share * counts).sum(0) / n                                  # (T,)
        dh_norm = np.sqrt(np.square(dh, dtype=np.float64).sum(axis=(0, 2)))          # (T,)
        return {"saturation": saturation, "dh_norm": dh_norm, "targets": n}

    def logits_and_loss(self, c, Y):
        """The tail every model shares: (logits, or (loss, c) with the masked cross-entropy's cache)."""
        if Y is None:
            return c.logits
        loss, c.ce = masked_cross_entropy_forward(c.logits, Y)                        # () over the unmasked targets
        return loss, c


def dims(params, name):
    """The two sizes of a 2-D param (0, 0 if it is missing or not 2-D: own_params then says what is wrong)."""
    shape = np.shape(params.get(name, ()))
    return shape if len(shape) == 2 else (0, 0)


class RNN(Recurrent):
    """makemore.py's RNN(config, cell_type='rnn'): start (1, H), wte.weight (V, E),
    cell.xh_to_h.weight (E+H, H), cell.xh_to_h.bias (H,), lm_head.weight (H, V), lm_head.bias (V,).
    Its hidden states are tanh outputs: `npmlp diagnose` reads their saturation, and the gradient
    reaching them from the outputs (dacts["hidden"]); the gradient through time is
    readings_through_time's."""

    spec = RNN_SPEC
    tanh_names = ("hidden",)

    @staticmethod
    def shapes(vocab_size, n_embd, n_hidden, **_):
        V, E, H = vocab_size, n_embd, n_hidden
        return {"start": (1, H), "wte.weight": (V, E), "cell.xh_to_h.weight": (E + H, H), "cell.xh_to_h.bias": (H,),
                "lm_head.weight": (H, V), "lm_head.bias": (V,)}

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, T, V) if Y is None, else (loss over the targets that are not -1, c):
        c holds the intermediates by name (c.emb, c.hidden, c.logits) and each step's cell cache
        (c.steps). at: {name: array} puts that array in place of the intermediate (gradcheck)."""
        X, Y = self.check_inputs(X, Y)                    # (B, t) indices in 0..V-1 (contract.py)
        P = self.params
        c = Intermediates(at, X=X, Y=Y)
        c.emb, _ = embedding_forward(P["wte.weight"], X)                                  # (B, T, E)
        # h_t = tanh([emb_t, h_t-1] @ W + b), h_-1 = start
        c.hidden, bptt = recurrent_forward(c.emb, P["start"], "rnn", P["cell.xh_to_h.weight"],
                                           P["cell.xh_to_h.bias"])                        # (B, T, H)
        c.steps = bptt.steps
        c.logits, _ = linear_forward(c.hidden, P["lm_head.weight"], P["lm_head.bias"])    # (B, T, V)
        return self.logits_and_loss(c, Y)

    def backward(self, c, return_dh=False):
        """-> (grads, dacts), each in the order computed; return_dh: also dh (B, T, H), the gradient
        reaching each hidden state through time."""
        P = self.params
        W, b, W_lm = P["cell.xh_to_h.weight"], P["cell.xh_to_h.bias"], P["lm_head.weight"]
        # dlogits = (probs - onehot(Y)) / (targets that count), 0 at a masked position
        dlogits = masked_cross_entropy_backward(1.0, c.ce)                                      # (B, T, V)
        # dhidden = dlogits @ W_lm.T, dW_lm = hidden.T @ dlogits, db_lm = dlogits summed over B and T
        dhidden, dW_lm, db_lm = linear_backward(dlogits, LinearCache(c.hidden, W_lm))           # (B, T, H), (H, V)
        # backprop through time: rnn_cell_backward at each step, the last position first; dstart is
        # what reaches h_-1 (summed over the batch), and dW, db sum every step's
        cache = RecurrentCache("rnn", c.steps, (W, b), c.emb.shape)
        (demb, dstart, dW, db), dh = recurrent_backward(dhidden, cache, return_dh=True)         # (B, T, E), (1, H)
        # dwte[i] = demb summed over every place where X is i
        dwte = embedding_backward(demb, EmbeddingCache(c.X, len(P["wte.weight"])))               # (V, E)
        grads = {"lm_head.weight": dW_lm, "lm_head.bias": db_lm, "cell.xh_to_h.weight": dW, "cell.xh_to_h.bias": db,
                 "start": dstart, "wte.weight": dwte}
        dacts = {"logits": dlogits, "hidden": dhidden, "emb": demb}
        return (grads, dacts, dh) if return_dh else (grads, dacts)

    def tanh_outputs(self, c):
        return c.hidden                                                                   # (B, T, H)


class GRU(Recurrent):
    """makemore.py's RNN(config, cell_type='gru'): start (1, H), wte.weight (V, E); the gates
    cell.xh_to_z, cell.xh_to_r and the candidate cell.xh_to_hbar, each a weight (E+H, H) and a
    bias (H,); lm_head.weight (H, V), lm_head.bias (V,).
    tanh_names is empty: its hidden state blends hprev and the tanh candidate hbar, and is no tanh
    output; hbar is one, but lives inside each step's cell (readings_through_time reads its
    saturation), with no gradient of its own in the backward's dacts."""

    spec = GRU_SPEC

    @staticmethod
    def shapes(vocab_size, n_embd, n_hidden, **_):
        V, E, H = vocab_size, n_embd, n_hidden
        s = {"start": (1, H), "wte.weight": (V, E)}
        for gate in ("z", "r", "hbar"):
            s[f"cell.xh_to_{gate}.weight"], s[f"cell.xh_to_{gate}.bias"] = (E + H, H), (H,)
        return {**s, "lm_head.weight": (H, V), "lm_head.bias": (V,)}

    @staticmethod
    def step_floats(E, H) -> int:
        return 2 * (E + H) + 4 * H                    # xh, xhr, hprev, r, z, hbar

    def cell(self):
        """The cell's parameters in gru_cell_forward's order: Wr, br, Wz, bz, Wh, bh."""
        P = self.params
        return tuple(P[f"cell.xh_to_{gate}.{k}"] for gate in ("r", "z", "hbar") for k in ("weight", "bias"))

    def forward(self, X, Y=None, at=None, training=True):
        """As RNN.forward, with makemore.py's GRUCell at each step."""
        X, Y = self.check_inputs(X, Y)                    # (B, t) indices in 0..V-1 (contract.py)
        P = self.params
        c = Intermediates(at, X=X, Y=Y)
        c.emb, _ = embedding_forward(P["wte.weight"], X)                                  # (B, T, E)
        # r, z gates; hbar = tanh([emb_t, r * h_t-1] @ Wh + bh); h_t = (1 - z) * h_t-1 + z * hbar
        c.hidden, bptt = recurrent_forward(c.emb, P["start"], "gru", *self.cell())        # (B, T, H)
        c.steps = bptt.steps
        c.logits, _ = linear_forward(c.hidden, P["lm_head.weight"], P["lm_head.bias"])    # (B, T, V)
        return self.logits_and_loss(c, Y)

    def backward(self, c, return_dh=False):
        """As RNN.backward; each gate's weight and bias sum the gradients of every step."""
        P = self.params
        Wr, br, Wz, bz, Wh, bh = self.cell()
        W_lm = P["lm_head.weight"]
        # dlogits = (probs - onehot(Y)) / (targets that count), 0 at a masked position
        dlogits = masked_cross_entropy_backward(1.0, c.ce)                                      # (B, T, V)
        # dhidden = dlogits @ W_lm.T, dW_lm = hidden.T @ dlogits, db_lm = dlogits summed over B and T
        dhidden, dW_lm, db_lm = linear_backward(dlogits, LinearCache(c.hidden, W_lm))           # (B, T, H), (H, V)
        # backprop through time: gru_cell_backward at each step, the last position first
        cache = RecurrentCache("gru", c.steps, (Wr, br, Wz, bz, Wh, bh), c.emb.shape)
        (demb, dstart, dWr, dbr, dWz, dbz, dWh, dbh), dh = recurrent_backward(dhidden, cache, return_dh=True)
        # dwte[i] = demb summed over every place where X is i
        dwte = embedding_backward(demb, EmbeddingCache(c.X, len(P["wte.weight"])))               # (V, E)
        grads = {"lm_head.weight": dW_lm, "lm_head.bias": db_lm,
                 "cell.xh_to_z.weight": dWz, "cell.xh_to_z.bias": dbz, "cell.xh_to_r.weight": dWr,
                 "cell.xh_to_r.bias": dbr, "cell.xh_to_hbar.weight": dWh, "cell.xh_to_hbar.bias": dbh,
                 "start": dstart, "wte.weight": dwte}
        dacts = {"logits": dlogits, "hidden": dhidden, "emb": demb}
        return (grads, dacts, dh) if return_dh else (grads, dacts)

    def tanh_outputs(self, c):
        return np.stack([step.hbar for step in c.steps], axis=1)                          # (B, T, H)


class LSTM(Recurrent):
    """The LSTM of makemore.py's README, in its RNN: start_h, start_c (1, H), wte.weight (V, E), the
    torch.nn.LSTMCell `cell`: cell.weight_ih (E, 4H), cell.weight_hh (H, 4H), cell.bias_ih,
    cell.bias_hh (4H,) (gates i, f, g, o side by side); lm_head.weight (H, V), lm_head.bias (V,).
    tanh_names is empty: h = o * tanh(c) is no tanh output; the cell's tanh outputs g and tanh(c)
    live inside each step (readings_through_time reads their saturation)."""

    spec = LSTM_SPEC
    starts = ("start_h", "start_c")

    @staticmethod
    def shapes(vocab_size, n_embd, n_hidden, **_):
        V, E, H = vocab_size, n_embd, n_hidden
        return {"start_h": (1, H), "start_c": (1, H), "wte.weight": (V, E), "cell.weight_ih": (E, 4 * H),
                "cell.weight_hh": (H, 4 * H), "cell.bias_ih": (4 * H,), "cell.bias_hh": (4 * H,),
                "lm_head.weight": (H, V), "lm_head.bias": (V,)}

    @staticmethod
    def step_floats(E, H) -> int:
        return E + 7 * H                              # x, hprev, cprev, i, f, g, o, tanh(c)

    @staticmethod
    def init_bound(name, shapes) -> float:
        """nn.LSTMCell's 1/sqrt(H) for its four tensors; nn.Linear's for lm_head."""
        if name.startswith("cell."):
            return shapes["cell.weight_hh"][0] ** -0.5
        return Recurrent.init_bound(name, shapes)

    def forward(self, X, Y=None, at=None, training=True):
        """As RNN.forward, with torch.nn.LSTMCell's step (h, c carried from position to position)."""
        X, Y = self.check_inputs(X, Y)                    # (B, t) indices in 0..V-1 (contract.py)
        P = self.params
        c = Intermediates(at, X=X, Y=Y)
        c.emb, _ = embedding_forward(P["wte.weight"], X)                                  # (B, T, E)
        # gates i, f, g, o of [emb_t, h_t-1]; c_t = f * c_t-1 + i * g; h_t = o * tanh(c_t)
        c.hidden, bptt = lstm_forward(c.emb, P["start_h"], P["start_c"], P["cell.weight_ih"], P["cell.weight_hh"],
                                      P["cell.bias_ih"], P["cell.bias_hh"])               # (B, T, H)
        c.steps = bptt.steps
        c.logits, _ = linear_forward(c.hidden, P["lm_head.weight"], P["lm_head.bias"])    # (B, T, V)
        return self.logits_and_loss(c, Y)

    def backward(self, c, return_dh=False):
        """As RNN.backward, with two states carried back through time (dh and dc)."""
        P = self.params
        W_ih, W_hh, b_ih, b_hh = (P[f"cell.{k}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        W_lm = P["lm_head.weight"]
        # dlogits = (probs - onehot(Y)) / (targets that count), 0 at a masked position
        dlogits = masked_cross_entropy_backward(1.0, c.ce)                                      # (B, T, V)
        # dhidden = dlogits @ W_lm.T, dW_lm = hidden.T @ dlogits, db_lm = dlogits summed over B and T
        dhidden, dW_lm, db_lm = linear_backward(dlogits, LinearCache(c.hidden, W_lm))           # (B, T, H), (H, V)
        # backprop through time: lstm_cell_backward at each step, the last position first
        cache = LSTMCache(c.steps, (W_ih, W_hh, b_ih, b_hh), c.emb.shape)
        (demb, dstart_h, dstart_c, dW_ih, dW_hh, db_ih, db_hh), dh = lstm_backward(dhidden, cache, return_dh=True)
        # dwte[i] = demb summed over every place where X is i
        dwte = embedding_backward(demb, EmbeddingCache(c.X, len(P["wte.weight"])))               # (V, E)
        grads = {"lm_head.weight": dW_lm, "lm_head.bias": db_lm, "cell.weight_ih": dW_ih, "cell.weight_hh": dW_hh,
                 "cell.bias_ih": db_ih, "cell.bias_hh": db_hh, "start_h": dstart_h, "start_c": dstart_c,
                 "wte.weight": dwte}
        dacts = {"logits": dlogits, "hidden": dhidden, "emb": demb}
        return (grads, dacts, dh) if return_dh else (grads, dacts)

    def tanh_outputs(self, c):
        g = np.stack([step.g for step in c.steps], axis=1)                                # (B, T, H)
        tanhc = np.stack([step.tanhc for step in c.steps], axis=1)                        # (B, T, H)
        return np.concatenate([g, tanhc], axis=2)                                         # (B, T, 2H)
