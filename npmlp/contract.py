"""The model contract: what every model is to the training loop, the checker and the `npmlp`
command, and the one declaration a model makes of itself, its Spec (nanoGPT's GPTConfig, taken
all the way). Nothing outside a model's own file knows the model: the command reads specs.

Legend: B batch, N rows, T block_size (a row's context, or a sequence's positions), V vocab size.

A model is a subclass of Model with a `spec`, and these members (Model writes the shared ones):

    params, buffers            name -> array: what training changes; what it only keeps (running statistics)
    vocab_size, block_size     V, and T: the context a forward takes (the longest sequence for a sequence model)
    forward(X, Y=None, at=None, training=True)
                               -> logits, or with targets (loss, c): c holds every intermediate by name
    backward(c)                -> (grads by parameter, dacts by intermediate), each in the order computed
    logits(X), loss(X, Y)      inference (running statistics, no dropout)
    check_inputs(X, Y)         the one rule for what a forward is given (indices in 0..V-1, targets too, -1
                               masking a sequence's position, at least one row): every forward calls it first
    loss_and_grads(X, Y)       training mode: (loss, grads)
    param_names, act_names     the parameters, and the intermediates the backward returns gradients of
    tanh_names                 the tanh outputs `npmlp diagnose` reads (their saturation, their gradients)
    min_batch                  the smallest batch training takes (2 with a BatchNorm)
    init(vocab_size, ..., seed=, dtype=[, scheme=])  the model's own init, sizes from its options
    shapes(vocab_size, **sizes), buffer_shapes(...), activation_shapes(B, vocab_size, **sizes)
                               every array it holds and a training step makes, by name
    check_options(sizes)       ValueError, in the options' flags, for sizes no model is built with (a wavenet's)
    calibrate(X)               statistics measured over the training split after training (none by default)
    readings_through_time, attention_patterns, residual_norms
                               what `npmlp diagnose` draws of a sequence model (None where a model has none)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .layers import IGNORE

SEED = 2147483647   # the lecture's torch.Generator().manual_seed(2147483647): init and minibatches
MAKEMORE_BLOCK = 16  # makemore.py's block_size on names.txt (its longest name + 1), where no shape records it
# makemore.py's training: torch.optim.AdamW(lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01) on every
# parameter at a constant rate, batches of 32 names, train and test estimated every 500 steps (in
# train.TrainConfig's names)
MAKEMORE_TRAIN = {"optimizer": "adamw", "lr": 5e-4, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.01,
                  "decay_at": 1.0, "batch_size": 32, "eval_every": 500, "steps": 30_000}
# npmlp's recipe for makemore.py's small models (RNN, GRU, LSTM, bag of words): the same AdamW at a
# rate 4x higher falling along a cosine to 5e-5. makemore.py's constant 5e-4 leaves them under-trained
# at 30,000 steps: dev 2.065 / 2.016 / 2.164 (rnn, gru, bow) against 2.047 / 2.004 / 2.144 so
MAKEMORE_COSINE = {**MAKEMORE_TRAIN, "lr": 2e-3, "schedule": "cosine", "lr_decayed": 5e-5}
WINDOWS = "windows"       # rows of context X (N, T) -> the next character Y (N,): the lectures' models
SEQUENCES = "sequences"   # whole names X (B, T) -> Y (B, T), -1 where padding is masked: makemore.py's

Array = np.ndarray


@dataclass(frozen=True)
class Option:
    """One option of a model: a size (n_hidden) or a switch (batchnorm). The command line offers
    it as `flag` (default: --name-with-dashes); a switch's flag takes no value and sets `const`."""
    name: str
    default: int | float
    help: str
    type: Callable[[Any], Any] = int
    minimum: int | float = 1
    maximum: int | float | None = None       # float options: the largest value allowed, excluded
    flag: str = ""
    const: int | None = None
    metavar: str | None = None
    states: tuple[str, ...] = ()             # a switch's values in words, for messages: ("none", "BatchNorm")
    repeats: bool = False                    # counts repeated layers, each adding its own arrays
    reference_only: str = ""                 # a non-zero value trains on the reference engine only, because ...
    makemore: str = ""                       # makemore.py's flag for the same size (--n-embd2), if it has one
    makemore_value: int | float | None = None   # its value in makemore.py's model where npmlp's default differs

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Makemore:
    """How a model's params are a makemore.py `model.state_dict()` of its --type: the same keys;
    `transposed`: key suffixes of its Linear weights, (in, out) here and (out, in) in torch (a
    suffix: a Transformer has as many as blocks); a model adds the buffers makemore.py registers
    (Model.makemore_buffers: causal masks)."""
    type: str
    transposed: tuple[str, ...] = ()
    keys: Mapping[str, str] = field(default_factory=dict)    # npmlp name -> makemore.py key, where they differ
    ignored: tuple[str, ...] = ()                            # key suffixes of its buffers (causal masks), not read

    def key(self, name: str) -> str:
        return self.keys.get(name, name)

    def is_transposed(self, name: str) -> bool:
        return name.endswith(self.transposed) if self.transposed else False


@dataclass(frozen=True)
class Spec:
    """What a model is, declared once, for everything that is not the model: the command line, the
    run directory, checkpoints, the engines, gradcheck, diagnose and the torch mirrors.

    kind       its name: `npmlp train --model KIND`, and a checkpoint's `model`
    title      one line: where it comes from and what it is
    options    its sizes and switches, their defaults and help (the one home of each default)
    inits      the init schemes it offers beside its source's own, the first the default; () for none
    init_help  what each scheme is, for --help
    train      the training defaults where it differs from train.TrainConfig (its lecture's recipe)
    data       WINDOWS or SEQUENCES: the rows it learns from
    engine     the fast engine that trains it (a name of fast/engine.py's ENGINE_CLASS), None for the
               reference only
    mirror     the function of torch_mirrors.py computing the same forward in torch
    unshaped   sizes its parameters' shapes do not show, given to the constructor (a checkpoint's)
    embedding  the parameter whose rows embed the characters (embedding.png), None if it has none
    context    the context a WINDOWS model always reads when block_size is not one of its options (0: it is)
    makemore   how its params map to a makemore.py checkpoint (Makemore), None if makemore.py has no such model
    """
    kind: str
    title: str
    options: tuple[Option, ...] = ()
    inits: tuple[str, ...] = ()
    init_help: str = ""
    train: Mapping[str, Any] = field(default_factory=dict)
    data: str = WINDOWS
    engine: str | None = None
    mirror: str = ""
    unshaped: tuple[str, ...] = ()
    embedding: str | None = "C"
    context: int = 0
    makemore: Makemore | None = None

    @property
    def defaults(self) -> dict[str, int | float]:
        """The command line's defaults: npmlp's recipe (a Transformer trains with dropout 0.1)."""
        return {o.name: o.default for o in self.options}

    @property
    def model_defaults(self) -> dict[str, int | float]:
        """What the class builds when a size is not given: makemore.py's model where npmlp's recipe
        differs (a Transformer's dropout 0), as nanoGPT's config leaves dropout to its training script."""
        return {o.name: o.default if o.makemore_value is None else o.makemore_value for o in self.options}

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


class Model:
    """What every model shares: its dtype, size and sizes, and the conveniences around its own
    params, forward, backward and logits (inference)."""

    spec: ClassVar[Spec]
    params: dict[str, Array]
    buffers: dict[str, Array]
    vocab_size: int
    block_size: int
    param_names: tuple[str, ...]
    act_names: tuple[str, ...]
    tanh_names: tuple[str, ...] = ()
    min_batch: int = 1
    calibrate_rows: int = 0          # rows calibrate() runs through the model at once

    # ------------------------------------------------------------------------- what each model writes

    @staticmethod
    def shapes(vocab_size: int, **sizes) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @staticmethod
    def buffer_shapes(vocab_size: int, **sizes) -> dict[str, tuple[int, ...]]:
        return {}                                # no running statistics

    @staticmethod
    def activation_shapes(batch: int, vocab_size: int, **sizes) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @classmethod
    def init(cls, vocab_size: int, seed: int = SEED, dtype=np.float32, **sizes) -> Model:
        raise NotImplementedError

    def forward(self, X, Y=None, at=None, training: bool = True):
        raise NotImplementedError

    def backward(self, c) -> tuple[dict[str, Array], dict[str, Array]]:
        raise NotImplementedError

    @classmethod
    def check_options(cls, sizes: dict) -> None:
        """Sizes within their options' bounds that build no model raise ValueError, the message in
        the options' flags for the command line to show (none by default; init raises its own)."""

    def calibrate(self, X) -> None:
        """Statistics inference needs, measured over the training rows X after training (none by default)."""

    def without_dropout(self) -> Model:
        """The same model with training's random masks off (itself if it has none): gradcheck's
        finite differences and torch's mirror need the same function at every forward."""
        return self

    def makemore_buffers(self) -> dict[str, Array]:
        """The buffers a makemore.py state_dict of this model holds beside its params (none by default)."""
        return {}

    # ------------------------------------------------------------------------- what diagnose can read
    # each None where a model has no such reading

    def readings_through_time(self, X, Y, saturated: float = 0.97) -> dict[str, Array] | None:
        """A recurrent model's readings per position t of the sequences X, Y (B, T): 'saturation' (T,),
        the share of its tanh outputs above `saturated`; 'dh_norm' (T,), the size of the gradient
        reaching h_t through time; 'targets' (T,), the rows whose target at t counts."""
        return None

    def attention_patterns(self, X) -> dict[int, Array] | None:
        """A Transformer's attention weights of the sequences X, {block: (B, n_head, T, T)} (inference)."""
        return None

    def residual_norms(self, X) -> Array | None:
        """The mean length of a position's vector in the residual stream before the first block and after
        each one (inference)."""
        return None

    # ------------------------------------------------------------------------- shared

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def sizes(self) -> dict[str, int | float]:
        """What a checkpoint records to rebuild the model: its block size and every option's value."""
        return {"block_size": self.block_size, **{o.name: getattr(self, o.name) for o in self.spec.options}}

    @classmethod
    def from_params(cls, params, sizes: dict, buffers=None) -> Model:
        """The model holding `params` (and `buffers`), given the sizes a checkpoint recorded: the
        arrays' shapes show every size but the spec's `unshaped` ones, which come from `sizes`."""
        return cls(params, buffers, **{k: sizes[k] for k in cls.spec.unshaped})  # type: ignore[call-arg]

    def like(self, params) -> Model:
        """A model of the same kind and sizes holding other params (gradcheck's copies)."""
        return self.from_params(params, self.sizes)

    def check_inputs(self, X, Y=None, sequences: bool | None = None):
        """The one rule for what every model's forward (and inference) is given, checked first:

            X  integer indices, (B, T) rows of context of block_size T, or a sequence model's
               (B, t), 1 <= t <= block_size (sampling feeds prefixes); B >= 1 (an empty batch
               has no loss, so none is taken); every index a character, 0 <= x < V (NumPy would
               read a negative one from the end of the table, silently)
            Y  None, or integer targets: one per row (B,), each 0 <= y < V; or, for sequences,
               one per position, X's shape, each 0 <= y < V or -1 (layers.IGNORE: masked)

        sequences: the form of X and Y, default the spec's (the bigram takes both). A windows
        model taking sequences (the bigram: each position on its own) reads any number of
        positions. -> (X, Y) as arrays; ValueError saying what is wrong."""
        X = np.asarray(X)
        seq = self.spec.data == SEQUENCES if sequences is None else sequences
        T, V = self.block_size, self.vocab_size
        bounded = self.spec.data == SEQUENCES                # else a windows model's sequences: any length
        if X.ndim != 2 or X.dtype.kind not in "iu" or (seq and not (1 <= X.shape[1] and (X.shape[1] <= T or
                                                                                           not bounded))):
            form = (f"rows (B, block_size={T})" if not seq else
                    f"sequences (B, T), 1 <= T <= block_size={T}" if bounded else "sequences (B, T), T >= 1")
            raise ValueError(f"X has shape {X.shape} ({X.dtype}); the model takes integer {form}")
        if len(X) == 0:
            raise ValueError(f"X has shape {X.shape}: no rows; a batch needs at least one")
        if not seq and X.shape[1] != T:
            raise ValueError(f"X has {X.shape[1]} context columns, the model takes block_size={T}")
        _in_range(X, "X", 0, V, "an input is a character's index")
        if Y is None:
            return X, None
        Y = np.asarray(Y)
        if seq and Y.shape != X.shape:
            raise ValueError(f"Y has shape {Y.shape}, not X's {X.shape}: one target per position (-1 masks one)")
        if not seq and Y.shape != X.shape[:1]:
            raise ValueError(f"Y has shape {Y.shape}; the model takes one target per row of X, shape ({len(X)},)")
        if Y.dtype.kind not in "iu":
            raise ValueError(f"Y holds {Y.dtype} values; targets are integer character indices")
        _in_range(Y, "Y", IGNORE if seq else 0, V,
                  "a target is a character's index" + (", or -1 to mask its position" if seq else ""))
        return X, Y

    def logits(self, X):
        """Inference: X (N, T) -> logits (N, V)."""
        return self.forward(np.asarray(X), training=False)

    def loss(self, X, Y) -> float:
        """Inference: the mean loss of the rows X (N, T), Y (N,), or of the sequences X (B, T),
        Y (B, T) over their unmasked targets."""
        from .layers import cross_entropy_forward, masked_cross_entropy_forward
        X, Y = self.check_inputs(X, Y)
        ce = masked_cross_entropy_forward if Y.ndim > 1 else cross_entropy_forward   # sequences' (B, T) targets
        return ce(self.logits(X), Y)[0]

    def loss_and_grads(self, X, Y):
        """(loss: float, grads: dict of arrays shaped and typed like params), in training mode."""
        loss, cache = self.forward(np.asarray(X), np.asarray(Y))
        return loss, self.backward(cache)[0]


def _in_range(a, name: str, low: int, high: int, what: str) -> None:
    """ValueError naming the first value of `a` (integers) outside [low, high) and where it is.
    Checked on every training step of the reference engine: two bare reductions, few calls."""
    if not a.size:
        return
    if (a.dtype.kind == "i" or low > 0) and np.minimum.reduce(a, axis=None) < low or \
            np.maximum.reduce(a, axis=None) >= high:
        first = np.argwhere((a < low) | (a >= high))[0]
        raise ValueError(f"{name} holds {a[tuple(first)]} at {tuple(int(i) for i in first)}, outside "
                         f"{low}..{high - 1}: {what}")


class Intermediates(dict):
    """A forward's intermediates by name: set as attributes (`c.h = ...`) so the forward reads like
    the lecture, read by the backward (`c.h`), and by gradcheck and diagnose by name (`c["h"]`).
    A name given in `at` keeps that array instead of the one computed, so the rest of the
    forward runs from it: the one way every model lets gradcheck perturb an intermediate."""

    def __init__(self, at=None, **given):
        super().__init__(given)
        object.__setattr__(self, "_at", at or {})

    def __setattr__(self, name, value):
        self[name] = self._at.get(name, value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------- shared by the models

def with_defaults(cls: type[Model], vocab_size: int, **sizes) -> dict:
    """The sizes a model class is built with: each one given, else its Spec.model_defaults value;
    each a number within its option's bounds (a switch such as deep's batchnorm may be 0)."""
    built = cls.spec.model_defaults
    out = {o.name: built[o.name] if sizes.get(o.name) is None else sizes[o.name] for o in cls.spec.options}
    if int(vocab_size) != vocab_size or vocab_size < 1:
        raise ValueError(f"vocab_size must be a whole number >= 1, got {vocab_size}")
    for o in cls.spec.options:
        v = out[o.name]
        if o.type is int and (int(v) != v or v < o.minimum):
            raise ValueError(f"{o.name} must be a whole number >= {o.minimum}, got {v}")
        if o.type is float and not (o.minimum <= v and (o.maximum is None or v < o.maximum)):
            raise ValueError(f"{o.name} must be in [{o.minimum}, {o.maximum}), got {v}")
    return out


def float_params(params, names) -> dict[str, Array]:
    """The arrays `names` of `params`, copied, in one float dtype (float32 or float64), C-ordered
    (gradcheck's finite differences perturb a parameter through its flat view)."""
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params lack {missing}; need {list(names)}")
    dtype = np.result_type(*(np.asarray(params[k]) for k in names))
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"params must be float32 or float64, got {dtype}")
    return {k: np.array(params[k], dtype, order="C") for k in names}


def check_shapes(params, want) -> None:
    bad = {k: a.shape for k, a in params.items() if a.shape != tuple(want[k])}
    if bad:
        raise ValueError(f"param shapes {bad} do not fit {want}")


def own_params(params, want: dict) -> dict[str, Array]:
    """Copies of params, which must be exactly the arrays `want` names, of its shapes, in one
    float dtype."""
    if set(params) != set(want):
        raise ValueError(f"params {sorted(params)} do not fit {list(want)}")
    p = float_params(params, list(want))
    check_shapes(p, want)
    return p


def running_stats(shapes: dict, dtype, given=None) -> dict[str, Array]:
    """BatchNorm running statistics of these shapes: each mean 0 and variance 1 until training
    moves them, or the values `given` (a checkpoint's)."""
    stats = {k: (np.zeros if "mean" in k else np.ones)(s, dtype) for k, s in shapes.items()}
    for k, v in (given or {}).items():
        stats[k][...] = v
    return stats


def count_params(cls: type[Model], vocab_size: int, sizes: dict) -> int:
    """The parameter count of a model of these sizes, from its shapes. A size that counts repeated
    layers (Option.repeats) is extrapolated from one and two layers, each adding the same arrays:
    listing the shapes of 10^9 layers would itself exhaust the memory an estimate protects."""
    def count(**change) -> int:
        return sum(math.prod(v) for v in cls.shapes(vocab_size, **{**sizes, **change}).values())

    repeats = [o.name for o in cls.spec.options if o.repeats and sizes.get(o.name, 0) > 2]
    if not repeats:
        return count()
    (name,) = repeats                                  # one stacking size per model
    one, two = count(**{name: 1}), count(**{name: 2})
    return one + (sizes[name] - 1) * (two - one)


# ----------------------------------------------------------------------------- makemore.py's checkpoints

def model_classes() -> list[type[Model]]:
    """Every model class defined (each subclass of Model with its own spec), in definition order."""
    out, todo = [], list(Model.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if "spec" in vars(cls):
            out.append(cls)
        todo += cls.__subclasses__()
    return out


def makemore_class(kind: str) -> type[Model]:
    """The model class of makemore.py's --type `kind`; ValueError naming the ones there are."""
    import npmlp  # noqa: F401  (every model module, so each class is defined)
    have = {c.spec.makemore.type: c for c in model_classes() if c.spec.makemore is not None}
    if kind not in have:
        raise ValueError(f"makemore.py --type {kind!r} has no npmlp model; npmlp reads {', '.join(have)}")
    return have[kind]


def from_makemore(state_dict, kind: str, **unshaped) -> Model:
    """The npmlp model holding exactly the weights of a makemore.py `model.state_dict()` of --type
    `kind`: its keys, torch's layouts; values as arrays (tensors are read with np.asarray), their
    float dtype kept. The sizes are read from the shapes; what no shape records is given as a
    keyword with the spec's `unshaped` names (a Transformer's n_head, a recurrent model's
    block_size), each defaulting to its value in makemore.py's model (Option.makemore_value: a
    Transformer's dropout 0), else its option's default. Buffers (causal masks) are ignored."""
    cls = makemore_class(kind)
    mm = cls.spec.makemore
    assert mm is not None
    names = {key: name for name, key in mm.keys.items()}              # makemore.py key -> npmlp name
    params = {}
    for k, v in state_dict.items():
        if mm.ignored and k.endswith(mm.ignored):
            continue
        name = names.get(k, k)
        a = np.asarray(v)
        params[name] = a.T if mm.is_transposed(name) else a
    bad = set(unshaped) - set(cls.spec.unshaped)
    if bad:
        raise ValueError(f"a makemore.py {kind} records {', '.join(sorted(bad))} in its shapes; drop it")
    sizes = {"block_size": MAKEMORE_BLOCK, **cls.spec.model_defaults, **unshaped}
    return cls.from_params(params, sizes)


def to_makemore(model: Model, grads: dict | None = None) -> dict[str, Array]:
    """The model's parameters (or the given gradients) keyed and shaped like a makemore.py
    `model.state_dict()` of its --type, with the buffers makemore.py registers (causal masks), so
    that its strict load_state_dict accepts them. Arrays; torch_mirrors.save_makemore writes .pt."""
    mm = model.spec.makemore
    if mm is None:
        raise ValueError(f"makemore.py has no {model.kind} model")
    source = model.params if grads is None else grads
    out = {mm.key(k): np.ascontiguousarray(v.T if mm.is_transposed(k) else v) for k, v in source.items()}
    return out if grads is not None else {**out, **model.makemore_buffers()}
