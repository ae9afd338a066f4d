"""Inference over distinct windows (fast tier): a row of context's logits depend on its window of
characters alone, and the names repeat their windows (the lecture's 182,625 training rows of three
characters hold 5,438 distinct ones), so each distinct window is run once and every row reads its
loss from it. Held to train.evaluate by the tests.

Legend: N rows, T block_size, V vocab size, U distinct windows (or groups of them).
"""
from __future__ import annotations

import numpy as np

from ..train import EVAL_CHUNK


def tally(key, size: int, ranks: bool = True):
    """The distinct values of key (n,), 0 <= key < size: (them, ascending (U,); how often each
    occurs (U,); each element's rank among them (n,), or None when not `ranks`)."""
    # a table of every value when it is small beside key: no sort. Without ranks the sort wins sooner
    # (7 Dec, one core: a table of 0.7x the keys took half a sort's time, of 9-19x the keys 1.4x it)
    if size <= (16 if ranks else 1) * len(key):
        table = np.bincount(key, minlength=size)
        values = np.flatnonzero(table > 0)                              # (of a bool: several times faster)
        counts = table[values]
        if not ranks:
            return values, counts, None
        table[values] = np.arange(len(values))                          # the table again, of ranks (a new
        return values, counts, table[key]                               #   one costs its page faults)
    if not ranks:                                                       # sorted: equal keys side by side
        # (np.unique without the inverse hashes its keys, several times slower on these)
        s = np.sort(key)
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        return s[starts], np.diff(starts, append=len(s)), None
    values, rank, counts = np.unique(key, return_inverse=True, return_counts=True)
    return values, counts, rank.reshape(-1)


def distinct(key, size: int) -> tuple[int, np.ndarray]:
    """(how many distinct values key (n,) holds, each one's rank among them); 0 <= key < size."""
    values, _, rank = tally(key, size)
    return len(values), rank


def distinct_rows(rows, base: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The distinct rows of `rows` (n, k), each value 0 <= v < base: (how many, U; each row's rank
    among them (n,); a row of each (U,)). Each row is one number in base `base`, renumbered by rank
    before it would overflow int64."""
    key, size = rows[:, 0].astype(np.int64), base
    for j in range(1, rows.shape[1]):
        if size * base >= 2 ** 62:
            size, key = distinct(key, size)
        key, size = key * base + rows[:, j], size * base
    count, at = distinct(key, size)
    first = np.empty(count, np.intp)
    first[at] = np.arange(len(at))
    return count, at, first


def window_loss(model, X, Y) -> float:
    """train.evaluate(model, X, Y) for rows of context X (N, T), Y (N,) of a model whose inference
    is row by row (every windows model: BatchNorm reads its running statistics there)."""
    if len(Y) == 0:
        return float("nan")                                             # as train.evaluate: no rows, no loss
    X, Y = model.check_inputs(X, Y)
    N, V = len(X), model.vocab_size
    U, at, first = distinct_rows(X, V)                                  # at (N,): which window; first (U,)
    # the loss is sum over windows of count * log-sum-exp, minus sum over the distinct (window,
    # target) pairs of pair count * logit[target]: counting pairs (P,) needs no sort of the N rows
    count = np.bincount(at, minlength=U)                                # (U,) rows of each window
    pair, pc, _ = tally(at * V + Y, U * V, False)                       # (P,) the pairs, w * V + y, by window
    ends = np.searchsorted(pair, np.arange(0, U + EVAL_CHUNK, EVAL_CHUNK) * V)
    total = 0.0
    for k, i in enumerate(range(0, U, EVAL_CHUNK)):                     # EVAL_CHUNK windows at once
        logits = model.logits(X[first[i:i + EVAL_CHUNK]]).astype(np.float64)   # (u, V)
        m = logits.max(1)
        lse = np.log(np.exp(logits - m[:, None]).sum(1)) + m           # (u,) log-sum-exp of each window
        p = pair[ends[k]:ends[k + 1]] - i * V                           # these windows' pairs, w * V + y
        total += float(np.dot(count[i:i + len(lse)], lse) - np.dot(pc[ends[k]:ends[k + 1]], logits.reshape(-1)[p]))
    return total / N
