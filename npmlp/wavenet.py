"""makemore part 5's WaveNet: the context is fused n characters at a time, level by level, instead
of crushed into one hidden layer in a single step. Built from layer objects that call the pairs of
layers.py, in the style of torch.nn:

    X -> Embedding -> [FlattenConsecutive(n) -> Linear (no b) -> BatchNorm1d -> Tanh] x L -> Linear -> cross-entropy

With the lecture's sizes (T 8, E 24, H 128, n 2, so L = 3 levels), 76,579 parameters:

    X (B, 8) -> emb (B, 8, 24) -> flatten1 (B, 4, 48)  -> tanh1 (B, 4, 128)
             -> flatten2 (B, 2, 256) -> tanh2 (B, 2, 128)
             -> flatten3 (B, 256)    -> tanh3 (B, 128)  -> logits (B, 27)

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, n the flatten group, L levels
(T = n**L), T_i = T / n**i the positions left after level i (the last level squeezes T_L = 1 away).
Linear and BatchNorm1d treat every position of a (B, T_i, C) input alike, with the same weights:
what a convolution of stride n does, written as a matrix product over the leading axes.
flatten = T is the flat network: one level, part 3's network with a longer context.

The BatchNorm1d layers normalise with the unbiased variance, as part 5's own layer does
(deep.BatchNorm1d says which model uses which). batchnorm_over_batch_only=1 keeps the lecture's
bug, statistics over dim 0 only, so what fixing it gained can be measured.
A layer's forward(x, training) returns (out, cache); its backward(dout, cache) returns (dx, its
parameters' gradients). The model runs the Embedding, then a Sequential (deep.py) of the rest in
order; the backward runs them in reverse, the Embedding last.
"""
from __future__ import annotations

import numpy as np

from .contract import SEED, Intermediates, Model, Option, Spec, own_params, running_stats, with_defaults
from .deep import BatchNorm1d, Linear, Sequential, Tanh, layer_init, n_linear
from .layers import (
    BN_MIN_ROWS,
    CrossEntropyCache,
    EmbeddingCache,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    flatten_consecutive_backward,
    flatten_consecutive_forward,
)


class Embedding:
    """X (B, T) integers -> emb (B, T, E): row X[b, t] of the table C (named in the model's params)."""

    def __init__(self, name, params, C):
        self.name, self.params, self.C = name, params, C

    def forward(self, X, training=True):
        emb, _ = embedding_forward(self.params[self.C], X)                  # (B, T, E)
        return emb, X                                                       # cache: the indices

    def backward(self, demb, X):
        # dC[i] = demb summed over every place where X is i (np.add.at: a repeated index adds up)
        dC = embedding_backward(demb, EmbeddingCache(X, len(self.params[self.C])))   # (V, E)
        return None, {self.C: dC}                                           # X holds indices: no gradient


class FlattenConsecutive:
    """x (B, T, C) -> (B, T/n, C*n): each n consecutive positions side by side as one wider
    position; (B, C*n) when one position is left."""

    def __init__(self, name, n):
        self.name, self.n = name, n

    def forward(self, x, training=True):
        return flatten_consecutive_forward(x, self.n)                       # (B, T/n, C*n); cache: x's shape

    def backward(self, dout, cache):
        # dx = dout.reshape(B, T, C): a reshape moves no number, so the gradient goes back unmoved
        return flatten_consecutive_backward(dout, cache), {}                # (B, T, C)


def levels(block_size: int, flatten: int) -> int:
    """L, the levels of FlattenConsecutive(flatten) that fuse block_size positions down to one
    (flatten**L == block_size); ValueError when block_size is not such a power."""
    if flatten == block_size:
        return 1
    L, t = 0, block_size
    while flatten >= 2 and t > 1 and t % flatten == 0:
        t, L = t // flatten, L + 1
    if t != 1 or L == 0:
        raise ValueError(f"block_size {block_size} is not a power of the flatten group {flatten}: groups of "
                         f"{flatten} must fuse the {block_size} positions down to one")
    return L


SPEC = Spec(
    kind="wavenet", title="makemore part 5's WaveNet: the context fused n characters at a time, level by level",
    options=(Option("block_size", 8, "context length T"),
             Option("n_embd", 24, "embedding size E"),
             Option("n_hidden", 128, "hidden units H"),
             Option("flatten", 2, "fuse N consecutive positions per level; the block size must be a power of N; "
                    "N = the block size is the flat network", metavar="N"),
             Option("batchnorm_over_batch_only", 0, "part 5's bug, kept to measure it: BatchNorm's statistics "
                    "over the batch axis alone, per position (not over batch and positions); recorded in the "
                    "run, its running statistics per position", const=1, minimum=0,
                    reference_only="part 5's BatchNorm bug (statistics over the batch dimension only)")),
    train={"decay_at": 0.75},            # part 5: lr 0.1, then 0.01 from 150,000 of 200,000 steps
    engine="stack", mirror="wavenet_forward", unshaped=("batchnorm_over_batch_only",))


class Wavenet(Model):
    """params: C (V, E); per level i = 1 .. L: Wi (n*E or n*H, H), gammai, betai (H,); the output
    layer W{L+1} (H, V), b{L+1} (V,). buffers: running_meani, running_vari of each BatchNorm1d,
    (H,), or (T_i, H) per position with the lecture's bug where T_i > 1."""

    spec = SPEC
    min_batch = BN_MIN_ROWS                  # the last level's BatchNorm sees B rows: it needs two
    levels = staticmethod(levels)

    @classmethod
    def check_options(cls, sizes):
        """The block must fuse down to one position: a power of the flatten group."""
        T, n = sizes["block_size"], sizes["flatten"]
        try:
            levels(T, n)
        except ValueError:
            why = (f"is not a power of --flatten {n} ({n}, {n ** 2}, {n ** 3}...): each level fuses {n} positions "
                   f"into one, down to a single one; change one of them" if n > 1 else
                   "has more than one position and --flatten 1 fuses none; use a group of at least 2")
            raise ValueError(f"--block-size {T} {why}, or --flatten {T} (the flat network)") from None

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden, flatten, **_):
        """Each level's flattened input and its linear, BatchNorm and tanh outputs (the widest level is the first)."""
        B, T, E, H, n = batch, block_size, n_embd, n_hidden, flatten
        s = {"emb": (B, T, E), "logits": (B, vocab_size), "probs": (B, vocab_size)}
        for i in range(1, levels(T, n) + 1):
            T_i = T // n ** i
            s[f"flatten{i}"] = (B, T_i, (E if i == 1 else H) * n)
            s[f"level{i}"] = (4, B, T_i, H)                  # linear, xhat, batchnorm, tanh
        return s

    @staticmethod
    def shapes(vocab_size, block_size, n_embd, n_hidden, flatten, batchnorm_over_batch_only=0):
        """The parameters' shapes, in the lecture's order (each Linear's weight, then its BatchNorm's);
        the bug changes none of them."""
        L = levels(block_size, flatten)
        s, fan_in = {"C": (vocab_size, n_embd)}, n_embd * flatten
        for i in range(1, L + 1):
            s[f"W{i}"] = (fan_in, n_hidden)
            s[f"gamma{i}"] = s[f"beta{i}"] = (n_hidden,)
            fan_in = n_hidden * flatten
        s[f"W{L + 1}"], s[f"b{L + 1}"] = (n_hidden, vocab_size), (vocab_size,)
        return s

    @staticmethod
    def buffer_shapes(vocab_size, block_size, n_embd, n_hidden, flatten, batchnorm_over_batch_only=0):
        """The running statistics: (H,) per BatchNorm1d; with the bug, (T_i, H), one row per position
        of a level whose input still has T_i > 1 positions (the statistics it took are that shape)."""
        s = {}
        for i in range(1, levels(block_size, flatten) + 1):
            T_i = block_size // flatten ** i
            s[f"running_mean{i}"] = s[f"running_var{i}"] = \
                (T_i, n_hidden) if batchnorm_over_batch_only and T_i > 1 else (n_hidden,)
        return s

    def __init__(self, params, buffers=None, batchnorm_over_batch_only=0):
        """The sizes follow from the params' shapes; batchnorm_over_batch_only (the lecture's bug) does
        not show in them, so it is given (from_params reads it from a checkpoint's sizes)."""
        L = n_linear(params) - 1
        V, E = np.shape(params["C"])
        I, H = np.shape(params["W1"])
        if L < 1 or not E or I % E:
            raise ValueError(f"a wavenet has at least W1 and W2, and W1's {I} rows are flatten * n_embd={E}")
        n = I // E
        T, over = n ** L, int(bool(batchnorm_over_batch_only))
        self.params = p = own_params(params, self.shapes(V, T, E, H, n))
        self.buffers = running_stats(self.buffer_shapes(V, T, E, H, n, over), p["C"].dtype, buffers)
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, T, E, H
        self.flatten, self.n_levels, self.batchnorm_over_batch_only = n, L, over
        self.embedding, layers = Embedding("emb", p, "C"), []
        for i in range(1, L + 1):
            layers += [FlattenConsecutive(f"flatten{i}", n),
                       Linear(f"linear{i}", p, f"W{i}"),
                       BatchNorm1d(f"batchnorm{i}", p, self.buffers, f"gamma{i}", f"beta{i}", f"running_mean{i}",
                                   f"running_var{i}", unbiased=True, over_batch_only=over),
                       Tanh(f"tanh{i}")]
        layers.append(Linear("logits", p, f"W{L + 1}", f"b{L + 1}"))
        self.net = Sequential(layers)
        self.param_names = tuple(p)
        self.act_names = tuple(reversed([layer.name for layer in layers])) + ("emb",)   # logits, tanh3, ..., emb
        self.tanh_names = tuple(layer.name for layer in layers if isinstance(layer, Tanh))

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, flatten=None,
             batchnorm_over_batch_only=None, seed=SEED, dtype=np.float32):
        """Part 5's init, drawn in layer order from one generator: C standard normal (Embedding);
        each W randn / sqrt(fan_in) (no gain: BatchNorm follows), the last one x 0.1 (a less
        confident softmax at the start); b 0, gamma 1, beta 0."""
        d = with_defaults(cls, vocab_size, block_size=block_size, n_embd=n_embd, n_hidden=n_hidden,
                          flatten=flatten, batchnorm_over_batch_only=batchnorm_over_batch_only)
        p = layer_init(cls.shapes(vocab_size, **d), np.random.default_rng(seed))
        p[f"W{levels(d['block_size'], d['flatten']) + 1}"] *= 0.1
        return cls({k: v.astype(dtype) for k, v in p.items()},
                   batchnorm_over_batch_only=d["batchnorm_over_batch_only"])

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, c: every layer's output by its name).
        Training mode normalises with the batch's statistics and updates the running ones.
        at: as MLP.forward's."""
        X, Y = self.check_inputs(X, Y)                                  # indices in 0..V-1 (contract.py)
        c = Intermediates(at, X=X, Y=Y, caches={})
        c.emb, c.caches["emb"] = self.embedding.forward(X)              # (B, T, E)
        logits = self.net.forward(c.emb, c, training)                   # (B, V) flatten1 ... logits
        if Y is None:
            return logits
        loss, ce = cross_entropy_forward(logits, Y)                     # ()
        c.probs = ce.probs                                              # (B, V)
        return loss, c

    def backward(self, c):
        """-> (grads, dacts), each in the order computed: the layers' backwards, last to first."""
        dlogits = cross_entropy_backward(1.0, CrossEntropyCache(c.probs, c.Y))   # (B, V)
        demb, grads, dacts = self.net.backward(dlogits, c)                       # (B, T, E) logits ... flatten1
        _, g = self.embedding.backward(demb, c.caches["emb"])                    # dC: demb summed per character
        return {**grads, **g}, {**dacts, "emb": demb}
