"""The fast engine of part 1's neural bigram (bigram.Bigram): its training step from the batch's
pair counts. Same maths as the reference (bigram.py with train.sgd), held to it by the tests.

Legend: B batch, V vocab size.
The trick: the bigram's loss reads a pair (x, y) only as "row x of W, entry y", so a batch is
all in its (V, V) count matrix N, N[x, y] = how many of its pairs are (x, y):
    loss  = -sum_xy N[x, y] log softmax(W[x])[y] / B
    dW[x] = (N[x].sum() * softmax(W[x]) - N[x]) / B
One bincount over the batch, then (V, V) work: the lecture's full batch of 182,625 pairs costs
what a few hundred do, instead of a (B, V) softmax and its backward.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .flat import FlatParams


class CountsEngine(FlatParams):
    """The flat parameter vector of a bigram (W alone) and its step from pair counts (engine.Engine's
    contract: load, store, views, picks, forward_loss, backward)."""

    chunked = False      # the counts of the whole batch at once

    def __init__(self, model, tanh: str | None = None):
        self.V, self.T = model.vocab_size, 1
        super().__init__(model)

    @staticmethod
    def picks(y, n: int, out) -> None:
        """Unused by this engine (its targets are counted, not picked); filled as the others do."""
        np.multiply(y, n, out)

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The mean loss of the pairs xb (B, 1), yb (B,), and what the backward needs."""
        V, W = self.V, self.w.W
        N = np.bincount(xb[:, 0] * V + yb, minlength=V * V).reshape(V, V).astype(W.dtype)   # (V, V) pair counts
        shifted = W - W.max(1, keepdims=True)                               # (V, V) logits - max, per row
        sums = np.exp(shifted).sum(1, keepdims=True)                        # (V, 1)
        logp = shifted - np.log(sums)                                       # (V, V) log softmax(W[x])
        loss = -float(np.sum(N * logp, dtype=np.float64)) / len(yb)
        return loss, SimpleNamespace(N=N, probs=np.exp(logp), n=len(yb))

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """dloss * the gradient of the mean loss into g.W: (row count * softmax - counts) / B."""
        rows = b.N.sum(1, keepdims=True)                                    # (V, 1) pairs starting with x
        np.multiply(rows, b.probs, g.W)
        g.W -= b.N
        g.W *= dloss / b.n                                                  # (V, V)
