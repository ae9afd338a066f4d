"""makemore.py's recurrent chapter: the RNN and GRU cells (its RNNCell, GRUCell), an LSTM cell
(torch.nn.LSTMCell's maths), and backpropagation through time, as pairs of plain NumPy functions
in layers.py's convention:

    X_forward(inputs...)        -> (output, cache)
    X_backward(doutput, cache)  -> the gradients of the forward's inputs, in the same order

Legend: B batch, T positions, E n_embd, H n_embd2 (the hidden state), V vocab size.
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
