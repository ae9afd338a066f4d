"""Minibatch SGD with the lecture's step schedule, chunked evaluation, and sampling.

Legend: N rows, B batch, T block_size, V vocab size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UsageError
from .model import MLP, Workspace
from .parallel import ChunkPool, default_processes, run_chunks

ARITHMETIC = 2  # changes when a step's rounding changes (2: the bias trick, 128-row chunks); runs record
                # it, so --resume can say when a run will not continue bit-identically
BLOCK = 1000   # minibatch indices are drawn BLOCK steps at a time (one RNG call instead of 1000)
GATHER = 32768  # the rows of several steps' minibatches are gathered at once, up to GATHER rows
CHUNK = 128    # a batch larger than CHUNK rows runs forward/backward in chunks of <= CHUNK rows whose
               # gradients are summed: each chunk's (rows, H) arrays then stay in the L2 cache, and
               # chunks can run in helper processes (parallel.py). 128 vs 256 rows: within noise on
               # one core, and on two cores a batch of 256 is shared (H=1000: 1.05 vs 1.36 ms)


@dataclass
class TrainConfig:
    steps: int = 200_000
    batch_size: int = 32
    lr: float = 0.1             # learning rate before decay_at
    lr_decayed: float = 0.01    # ... and from decay_at on (the lecture: 0.1 then 0.01)
    decay_at: float = 0.5       # fraction of `steps` where the rate drops
    seed: int = 2147483647      # the lecture's torch.Generator seed; drives init and batches

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise UsageError(f"{name} must be a positive integer, got {v}")
        for name in ("lr", "lr_decayed"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise UsageError(f"{name} must be a positive number, got {v}")
        if not 0 <= self.decay_at <= 1:
            raise UsageError(f"decay_at must be a fraction in [0, 1], got {self.decay_at}")

    def lr_at(self, step: int) -> float:
        return self.lr if step < int(self.decay_at * self.steps) else self.lr_decayed

    def to_dict(self):
        return asdict(self)


def batch_block(seed: int, block: int, n_rows: int, batch_size: int) -> np.ndarray:
    """Row indices for steps block*BLOCK ... +BLOCK-1, shape (BLOCK, B).

    Each block has its own generator seeded by (seed, block), so the indices of any step can be
    recomputed from the seed and the step alone: resuming needs no hidden RNG state."""
    rng = np.random.default_rng([seed, block])
    return rng.integers(0, n_rows, size=(BLOCK, batch_size), dtype=np.int64)


class Diverged(Exception):
    def __init__(self, step, last_loss):
        super().__init__(f"loss became non-finite at step {step}")
        self.step, self.last_loss = step, last_loss


def batch_chunks(batch_size: int):
    """[(first row, end, share of the batch)]: a batch cut into the fewest chunks of <= CHUNK rows,
    of equal size (+-1 row)."""
    n = -(-batch_size // CHUNK)
    edges = [batch_size * k // n for k in range(n + 1)]
    return [(a, b, (b - a) / batch_size) for a, b in zip(edges, edges[1:])]


def gather_group(batch_size: int) -> int:
    """How many steps' minibatch rows are copied out of X, Y in one go."""
    return max(1, min(BLOCK, GATHER // batch_size))


def make_pool(model: MLP, batch_size: int, processes: int | None = None) -> ChunkPool:
    """The processes (default: one per chunk up to the usable cores) and shared arrays that
    sgd runs batches of batch_size rows with. Forking costs ~20 ms: make one per run, not per step."""
    chunks = batch_chunks(batch_size)
    procs = default_processes(len(chunks)) if processes is None else processes
    return ChunkPool(model, chunks, batch_size, gather_group(batch_size), procs)


def sgd(model: MLP, X, Y, cfg: TrainConfig, lossi=None, start: int = 0, stop: int | None = None,
        on_step=None, processes: int | None = None, pool: ChunkPool | None = None):
    """Train `model` in place from step `start` up to (not including) `stop` (default cfg.steps).

    lossi: float32 array (cfg.steps,) receiving each step's minibatch loss (the lecture's `lossi`).
    on_step(step, loss): called after every step; return True to stop early (after that step).
    Returns (lossi, the next step to run). Raises Diverged (params left as before that step's
    update is impossible to know; see the caller) when a loss is NaN or inf.

    Each step is the lecture's: forward, backward, p.data += -lr * p.grad, on B rows drawn by
    batch_block. A batch of more than CHUNK rows is run as chunks whose gradients are summed (the
    same numbers up to float rounding); the minibatch rows of up to GATHER // B steps are copied
    out of X, Y in one go. processes: how many processes share a step's chunks (default: one per
    chunk up to the usable cores; see parallel.py); any number gives the same bits. pool: a
    ChunkPool to reuse across calls (same model shape and batch size), instead of a new one.
    """
    B = cfg.batch_size
    if pool is None:
        with make_pool(model, B, processes) as own:
            return sgd(model, X, Y, cfg, lossi, start, stop, on_step, pool=own)
    chunks, G = pool.chunks, len(pool.Xg)                     # what make_pool cut for B
    if pool.Xg.shape[1] != B or pool.grads.shape[1] != model.flat.size:
        raise ValueError("this ChunkPool was made for another batch size or model")
    if pool.closed:
        raise ValueError("this ChunkPool is closed")
    N, n = len(X), len(chunks)
    stop = cfg.steps if stop is None else stop
    lossi = np.zeros(cfg.steps, np.float32) if lossi is None else lossi
    ws = Workspace()
    grads, parts = pool.grad_rows, pool.parts                  # chunk k's update and loss
    update = grads[0] if n == 1 else np.empty_like(model.flat)  # the chunks' summed update
    helpers = bool(pool.conns)
    for step in range(start, stop):
        i = step % BLOCK
        if step == start or i == 0:
            block = batch_block(cfg.seed, step // BLOCK, N, B)       # (BLOCK, B) row indices
        if step == start or i % G == 0:
            ix = block[i - i % G: i - i % G + G]                      # (G, B) the next G steps' rows
            np.copyto(pool.Xg[:len(ix)], X.take(ix, axis=0))          # (G, B, T) minibatches (take:
            np.copyto(pool.Yg[:len(ix)], Y.take(ix))                  #   5x faster than X[ix]), (G, B)
        g = i % G
        lr = cfg.lr_at(step)
        if helpers:
            pool.start(g, lr, model.flat)                             # helpers run their chunks ...
        run_chunks(model, pool.mine, chunks, pool.Xg[g], pool.Yg[g], lr, ws, grads, parts)
        if helpers:
            pool.wait()                                               # ... while we run ours
        loss = 0.0
        for k in range(n):
            loss += float(parts[k]) * chunks[k][2]                    # the batch mean, chunk by chunk
        if not math.isfinite(loss):
            raise Diverged(step, float(lossi[step - 1]) if step else float("nan"))
        if n > 1:                                                     # row by row, in chunk order,
            np.add.reduce(pool.grads, axis=0, out=update)             #   whoever ran the chunk
        model.flat += update                                          # p.data += -lr * p.grad, all five
        lossi[step] = loss
        if on_step is not None and on_step(step, loss):
            return lossi, step + 1
    return lossi, stop


def evaluate(model: MLP, X, Y, chunk: int = 1024) -> float:
    """Mean loss over all rows, in chunks so memory stays bounded on a full split (and each chunk's
    arrays stay in cache: 1024 rows measured 20% faster than 16384)."""
    if len(X) == 0:
        return float("nan")
    ws = Workspace()
    total = 0.0
    for i in range(0, len(X), chunk):
        xs, ys = X[i:i + chunk], Y[i:i + chunk]
        total += model.forward(xs, ys, ws)[0] * len(xs)
    return total / len(X)


def sample(model: MLP, vocab, n: int = 20, seed: int = 2147483647 + 10, temperature: float = 1.0,
           max_len: int = 100):
    """n names, as the lecture: context all '.', draw from softmax(logits / temperature) until '.'.

    All n names are drawn side by side (a batch of n contexts), one character per step.
    Each returned name ends with '.'; a name cut at max_len characters does not."""
    if temperature <= 0 or not np.isfinite(temperature):
        raise UsageError(f"temperature must be a positive number, got {temperature}")
    # name i reads its own uniform stream (seed, i): the first k of n names do not depend on n
    u = np.stack([np.random.default_rng([seed, i]).random(max_len) for i in range(n)])  # (n, max_len)
    ctx = np.zeros((n, model.block_size), np.int64)             # (n, T)
    out = [[] for _ in range(n)]
    alive = np.ones(n, bool)
    for t in range(max_len):
        logits = model.logits(ctx).astype(np.float64)          # (n, V)
        logits -= logits.max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):                         # shift first, then scale: exact for any
            logits /= temperature                                # temperature (a tiny one is greedy)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)                        # (n, V) softmax
        ix = (p.cumsum(axis=1) > u[:, t:t + 1]).argmax(axis=1)   # (n,) one draw per row
        for i in np.flatnonzero(alive):
            out[i].append(int(ix[i]))
        alive &= ix != 0
        if not alive.any():
            break
        ctx = np.concatenate([ctx[:, 1:], ix[:, None]], axis=1)
    return [vocab.decode(o) for o in out]
