"""The training loop (the lecture's minibatch SGD with one learning-rate drop, or makemore.py's
AdamW), the optimisers, evaluation and sampling.

Legend: N rows, B batch, T block_size, V vocab size, P a parameter's shape.
This loop is the reference: any model with params, forward and backward trains with it.
npmlp/fast/ runs the same steps faster; `npmlp train` picks one with --engine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from .contract import SEED, SEQUENCES

BLOCK = 1000         # minibatch indices are drawn BLOCK steps at a time (see batch_block)
WINDOW = 1000        # the divergence rule compares WINDOW-step means of the loss ...
EXPLODE = 10         # ... against EXPLODE x max(first step's loss, ln V)
F32MAX = float(np.finfo(np.float32).max)   # lossi is float32: a larger loss cannot be recorded


@dataclass
class TrainConfig:
    """The training defaults are lecture 2's; a model's spec says where its own lecture differs."""
    steps: int = 200_000
    batch_size: int | None = 32  # rows per step, drawn with replacement; None: every row, every step (full batch)
    lr: float = 0.1             # learning rate before the drop
    lr_decayed: float = 0.01    # ... and after it (the lecture: 0.1, then 0.01)
    decay_at: float = 0.5       # where the rate drops, as a fraction of `steps`
    seed: int = SEED            # drives the minibatches (and, in `npmlp train`, the init)
    reg: float = 0.0            # reg * mean(p**2) of every parameter added to the loss (part 1's 0.01)
    optimizer: str = "sgd"      # "sgd": p -= lr * grad; "adamw": makemore.py's torch.optim.AdamW
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (makemore.py's 0.01)
    beta1: float = 0.9          # AdamW's betas (makemore.py's (0.9, 0.99)) and eps
    beta2: float = 0.99
    eps: float = 1e-8
    schedule: str = "step"      # "step": lr, then lr_decayed from decay_at on; "cosine": lr to lr_decayed
    decay_matrices_only: bool = False  # AdamW's weight decay on the 2-D parameters only (nanoGPT's), not biases, gains
    eval_every: int = 0         # estimate the train and dev loss every N steps (makemore.py's 500); 0: never

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not (v is None and name == "batch_size") and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v}")
        for name in ("lr", "lr_decayed"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if not 0 <= self.decay_at <= 1:
            raise ValueError(f"decay_at must be a fraction in [0, 1], got {self.decay_at}")
        for name in ("reg", "weight_decay", "eps"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        v = self.eval_every
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"eval_every must be a whole number >= 0, got {self.eval_every}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def rows(self, n_rows: int) -> int:
        """B, the rows a step trains on: batch_size, or all n_rows for a full batch."""
        return n_rows if self.batch_size is None else self.batch_size

    @property
    def decay_step(self) -> int:
        """The first step trained at lr_decayed."""
        return int(self.decay_at * self.steps)

    def lr_at(self, step: int) -> float:
        if self.schedule == "cosine":   # half a cosine from lr at step 0 down to lr_decayed at the last step
            return self.lr_decayed + (self.lr - self.lr_decayed) * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        return self.lr if step < self.decay_step else self.lr_decayed

    def to_dict(self):
        return asdict(self)


SCHEDULES = ("step", "cosine")


class SGD:
    """The lectures' update, p -= lr * grad, in place on `params` (name -> array). No state."""

    name = "sgd"
    t = 0                                                        # no state: the steps are not counted

    def __init__(self, params: dict):
        self.params = params

    def step(self, grads: dict, lr: float) -> None:
        for name, p in self.params.items():
            p -= lr * grads[name]                                # p.data += -lr * p.grad

    def state(self) -> dict:
        return {}

    def load_state(self, arrays: dict, t: int) -> None:
        pass


class AdamW:
    """makemore.py's optimiser, torch.optim.AdamW by hand, on `params` (name -> array), in place.

    Step t of a parameter p with gradient g, in torch's order:
        p *= 1 - lr * weight_decay                        decoupled weight decay, before the moments
        m  = beta1 * m + (1 - beta1) * g                  the gradient's running mean
        v  = beta2 * v + (1 - beta2) * g**2               ... and its running mean square
        p -= (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    The two 1 - beta**t undo the moments' start at zero. `decay`: the parameters weight decay
    applies to (default every one, as makemore.py). The state (m, v of each parameter, t) is what a
    checkpoint keeps so a resumed run is bit-identical."""

    name = "adamw"

    def __init__(self, params: dict, lr: float = 5e-4, betas=(0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.01, decay=None):
        self.params, self.lr, (self.beta1, self.beta2), self.eps = params, lr, betas, eps
        self.weight_decay = weight_decay
        self.decay = set(params) if decay is None else set(decay)
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}   # (P,) each
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        b1, b2 = self.beta1, self.beta2
        self.t += 1
        step_size = lr / (1 - b1 ** self.t)
        root = math.sqrt(1 - b2 ** self.t)
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            if name in self.decay:
                p *= 1 - lr * self.weight_decay
            m *= b1
            m += (1 - b1) * g                                    # m = b1 m + (1 - b1) g
            v *= b2
            v += (1 - b2) * (g * g)                              # v = b2 v + (1 - b2) g^2
            p -= step_size * (m / (np.sqrt(v) / root + self.eps))

    def state(self) -> dict:
        """The moments by name ('m.W', 'v.W'), for a checkpoint; the step count is `t`."""
        return {**{f"m.{k}": a for k, a in self.m.items()}, **{f"v.{k}": a for k, a in self.v.items()}}

    def load_state(self, arrays: dict, t: int) -> None:
        for k in self.params:
            self.m[k][...] = arrays[f"m.{k}"]
            self.v[k][...] = arrays[f"v.{k}"]
        self.t = t


OPTIMIZERS = {"sgd": SGD, "adamw": AdamW}


def optimizer(cfg: TrainConfig, params: dict):
    """The optimiser cfg names, on params: AdamW with cfg's betas, eps and weight decay (on every
    parameter, or on the matrices only), or the lectures' SGD."""
    if cfg.optimizer == "adamw":
        decay = [k for k, p in params.items() if p.ndim >= 2] if cfg.decay_matrices_only else None
        return AdamW(params, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay, decay)
    return SGD(params)


@lru_cache(maxsize=4)
def batch_block(seed: int, block: int, n_rows: int, batch_size: int) -> np.ndarray:
    """Row indices of steps block*BLOCK ... block*BLOCK + BLOCK-1, shape (BLOCK, B), read-only.

    Each block has its own generator seeded by (seed, block): the rows of any step follow from
    the seed and the step alone, so resuming needs no saved RNG state."""
    rng = np.random.default_rng([seed, block])
    ix = rng.integers(0, n_rows, size=(BLOCK, batch_size), dtype=np.int64)
    ix.flags.writeable = False
    return ix


def step_block(cfg: TrainConfig, block: int, n_rows: int) -> np.ndarray:
    """(BLOCK, B) the rows of steps block*BLOCK ...: batch_block's draws, or for a full batch every
    row, in order, in every step."""
    if cfg.batch_size is None:
        return np.broadcast_to(np.arange(n_rows), (BLOCK, n_rows))
    return batch_block(cfg.seed, block, n_rows, cfg.batch_size)


def batch_rows(cfg: TrainConfig, step: int, n_rows: int) -> np.ndarray:
    """(B,) the rows of X, Y that step `step` trains on."""
    return step_block(cfg, step // BLOCK, n_rows)[step % BLOCK]


def penalty(params, reg: float) -> float:
    """reg * mean(p**2), summed over the parameters: part 1's 0.01 * (W**2).mean()."""
    return reg * sum(float(np.mean(np.square(p, dtype=np.float64))) for p in params.values())


class Diverged(Exception):
    """A step's loss broke the divergence rule; that step's update was not applied.
    mean is None for a NaN/inf loss, else the WINDOW mean that exploded (steps first..step)."""

    def __init__(self, step: int, loss: float, mean: float | None = None, first: int | None = None,
                 limit: float | None = None):
        what = "NaN/inf" if mean is None else f"{mean:.4g}, above {limit:.4g}"
        super().__init__(f"the loss diverged at step {step} ({what})")
        self.step, self.loss, self.mean, self.first, self.limit = step, loss, mean, first, limit


def check_loss(lossi, step: int, loss: float, cfg: TrainConfig, vocab_size: int) -> None:
    """The divergence rule, in its one home: every engine calls it with each step's loss before
    that step's update. Raises Diverged when the loss is NaN/inf (or too large for float32), or
    when the mean loss of a WINDOW-step window (checked at its end, and at the run's last step)
    is more than EXPLODE times the first step's loss or ln V (a uniform guess), whichever is
    larger: a finite loss that explodes, as with `--lr 1e6`, is no success."""
    if not abs(loss) <= F32MAX:
        raise Diverged(step, loss)
    if (step + 1) % WINDOW and step + 1 < cfg.steps:
        return
    first = step - step % WINDOW
    mean = (float(np.sum(lossi[first:step], dtype=np.float64)) + loss) / (step - first + 1)
    limit = EXPLODE * max(float(lossi[0]) if step else loss, math.log(vocab_size))
    if mean > limit:
        raise Diverged(step, loss, mean, first, limit)


def nonfinite(model, opt=None) -> str | None:
    """The divergence rule's second half: the first of the model's parameters, its buffers (running
    statistics) and the optimiser's state that holds NaN/inf, as a message names it ('parameter
    W1', 'running statistic running_var1', "AdamW's v.W1"), or None. A loss can stay finite while
    they overflow (a BatchNorm's running variance on batches of two rows: training normalises with
    the batch's statistics, not the running ones), and no checkpoint can keep them. Checked
    between segments of steps (npmlp/app/rundir.py), which finds the step by replaying."""
    groups = (("parameter", model.params), ("running statistic", model.buffers),
              (f"{type(opt).__name__}'s", opt.state() if opt is not None else {}))
    for what, arrays in groups:
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return f"{what} {name}"
    return None


def sgd(model, X, Y, cfg: TrainConfig, lossi=None, start: int = 0, stop: int | None = None, on_step=None,
        opt=None):
    """Train `model` in place, steps `start` up to (not including) `stop` (default cfg.steps),
    with cfg's optimiser (the lecture's SGD, or AdamW).

    lossi: float32 (cfg.steps,) that receives each step's minibatch loss (the lecture's lossi).
    on_step(step, loss): called after each step; return True to stop after it.
    opt: the optimiser (optimizer(cfg, model.params)), kept across calls for its state (AdamW's
    moments); None makes one for this call.
    Returns (lossi, the next step to run). Raises Diverged (see check_loss)."""
    stop = cfg.steps if stop is None else stop
    lossi = np.zeros(cfg.steps, np.float32) if lossi is None else lossi
    opt = optimizer(cfg, model.params) if opt is None else opt
    for step in range(start, stop):
        ix = batch_rows(cfg, step, len(X))                       # (B,) this step's rows
        loss, cache = model.forward(X[ix], Y[ix])                # forward
        if cfg.reg:
            loss += penalty(model.params, cfg.reg)               # + reg * mean(p**2)
        check_loss(lossi, step, loss, cfg, model.vocab_size)
        grads, _ = model.backward(cache)                         # backward
        if cfg.reg:
            for name, p in model.params.items():
                grads[name] += cfg.reg * 2 * p / p.size          # d(reg * mean(p**2)) / dp
        opt.step(grads, cfg.lr_at(step))                         # update: p.data += -lr * p.grad, or AdamW's
        lossi[step] = loss
        if on_step is not None and on_step(step, loss):
            return lossi, step + 1
    return lossi, stop


EVAL_CHUNK = 1024    # rows evaluate() runs through the model at once
ESTIMATE = 8000      # the targets --eval-every's estimate reads from each split (about 1,000 names)


def estimate_rows(Y, seed: int = 0) -> np.ndarray:
    """The fixed rows of a split (Y its targets) that --eval-every's estimates read: the first rows
    of a seeded shuffle holding ESTIMATE targets (all, in a smaller split), in order."""
    Y = np.asarray(Y)
    per_row = (Y != -1).sum(1) if Y.ndim > 1 else np.ones(len(Y), np.int64)
    order = np.random.default_rng(seed).permutation(len(Y))
    n = int(np.searchsorted(np.cumsum(per_row[order]), ESTIMATE)) + 1
    return np.sort(order[:n])


def evaluate(model, X, Y, chunk: int = EVAL_CHUNK) -> float:
    """Mean loss per character over all rows (in inference mode), `chunk` rows at a time so memory
    stays small: the mean over every target, a sequence's masked ones (-1) left out, so rows of
    context and whole names give the same number for the same model."""
    Y = np.asarray(Y)
    count = int(np.count_nonzero(Y != -1)) if Y.ndim > 1 else len(Y)
    if count == 0:
        return float("nan")
    total = 0.0
    for i in range(0, len(X), chunk):
        Yc = Y[i:i + chunk]
        n = int(np.count_nonzero(Yc != -1)) if Yc.ndim > 1 else len(Yc)
        if n:
            total += model.loss(X[i:i + chunk], Yc) * n
    return total / count


def sample(model, vocab, n: int = 20, seed: int = SEED + 10, temperature: float = 1.0, max_len: int | None = None,
           top_k: int | None = None):
    """n names, as the lecture: context all '.', draw from softmax(logits / temperature) until '.'.
    Each returned name ends with '.'; a name cut at max_len characters does not. The list of
    sample_stream's names."""
    return list(sample_stream(model, vocab, n, seed, temperature, max_len, top_k=top_k))


def max_length(model) -> int:
    """The longest name sampling draws: 100 characters from rows of context, or what a sequence
    model's positions hold, T - 1 characters after the start token (makemore.py's)."""
    return model.block_size - 1 if model.spec.data == SEQUENCES else 100


def sample_stream(model, vocab, n: int | None = 20, seed: int = SEED + 10, temperature: float = 1.0,
                  max_len: int | None = None, chunk: int = 1024, top_k: int | None = None):
    """sample's names one by one, in order, as they are drawn (n None: without end), holding only
    `chunk` names at a time: `npmlp sample -n 10000000` prints as it goes, in constant memory.

    The names of a chunk are drawn side by side (a batch of contexts), one character per step;
    name i reads its own uniform stream (seed, i), so the first k of n names do not depend on n,
    nor on the chunk. top_k keeps the k largest logits of each draw (makemore.py's --top-k; a tie
    with the k-th keeps every tied one), None all. max_len: default max_length(model). Raises
    ValueError if the model's probabilities are not finite."""
    if temperature <= 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    max_len = max_length(model) if max_len is None else max_len
    first = 0
    while n is None or first < n:
        k = chunk if n is None else min(chunk, n - first)
        yield from _sample_chunk(model, vocab, range(first, first + k), seed, temperature, max_len, top_k)
        first += k


def _sample_chunk(model, vocab, names: range, seed, temperature, max_len, top_k=None) -> list[str]:
    """The names with indices `names`, drawn side by side. Rows of context slide a window of T
    characters, '.'-padded; a sequence model reads the name so far from its start token, the
    last position's logits predicting the next (at most T tokens fed back)."""
    n = len(names)
    u = np.stack([np.random.default_rng([seed, i]).random(max_len) for i in names])  # (n, max_len)
    sequences = model.spec.data == SEQUENCES
    ctx = np.zeros((n, 1 if sequences else model.block_size), np.int64)   # (n, t) or (n, T)
    out: list[list[int]] = [[] for _ in range(n)]
    alive = np.ones(n, bool)
    for t in range(max_len):
        with np.errstate(over="ignore", invalid="ignore"):      # overflowing parameters: refused below
            logits = model.logits(ctx).astype(np.float64)       # (n, V), or (n, t, V)
            if sequences:
                logits = logits[:, -1]                          # (n, V) the next character's
            if top_k is not None and top_k < logits.shape[1]:
                kth = np.partition(logits, -top_k, axis=1)[:, -top_k][:, None]   # (n, 1) the k-th largest
                logits[logits < kth] = -np.inf                  # ties with it are kept
            logits -= logits.max(axis=1, keepdims=True)
            logits /= temperature                                # shift first, then scale: exact for any
            p = np.exp(logits)                                   # temperature (a tiny one is greedy)
            p /= p.sum(axis=1, keepdims=True)                    # (n, V) softmax
        if not np.isfinite(p[alive]).all():                     # else every draw would silently be '.'
            raise ValueError("the model's probabilities are NaN/inf: its parameters overflow")
        ix = (p.cumsum(axis=1) > u[:, t:t + 1]).argmax(axis=1)   # (n,) one draw per row
        for i in np.flatnonzero(alive):
            out[i].append(int(ix[i]))
        alive &= ix != 0
        if not alive.any():
            break
        if sequences:
            ctx = np.concatenate([ctx, ix[:, None]], axis=1)[:, -model.block_size:]   # (n, t + 1), at most T
        else:
            ctx = np.concatenate([ctx[:, 1:], ix[:, None]], axis=1)
    return [vocab.decode(o) for o in out]
