"""Every model npmlp trains, by the name `npmlp train --model` gives it.

A model class has: kind (its name here), DEFAULTS (its sizes: the one home of its defaults),
TRAIN_DEFAULTS (a training option that differs from the lecture-2 default), INITS (the init
schemes it offers beside its lecture's own), min_batch, shapes(vocab_size, **sizes) and
buffer_shapes(...) (its parameters and running statistics, by name), init(vocab_size, **sizes,
seed=, dtype=); and instances with params, buffers, sizes, param_names, act_names,
forward(X, Y, at=)/backward (training), loss/logits (inference).
"""
from __future__ import annotations

from ..bn import BNMLP
from ..deep import Deep
from ..mlp import MLP
from ..wavenet import Wavenet
from .errors import UsageError

MODELS = {"mlp": MLP, "bn": BNMLP, "deep": Deep, "wavenet": Wavenet}


def model_class(kind: str):
    try:
        return MODELS[kind]
    except KeyError:
        raise UsageError(f"unknown model {kind!r}; use one of {', '.join(MODELS)}") from None


def owners(size: str) -> list[str]:
    """The models that have the size `size` (an option only some models take: n_layers, flatten)."""
    return [k for k, c in MODELS.items() if size in c.DEFAULTS]


def train_default(kind: str, option: str, lecture2):
    """A training option's default for model `kind`: its TRAIN_DEFAULTS, else lecture 2's."""
    return getattr(MODELS[kind], "TRAIN_DEFAULTS", {}).get(option, lecture2)


def make_model(kind: str, vocab_size: int, sizes: dict, seed: int, dtype, init: str | None = None):
    """A fresh model of `kind`: its init with the given sizes, seed and dtype, and the init scheme
    `init` where the model offers one (None: its lecture's own)."""
    cls = model_class(kind)
    try:
        return cls.init(vocab_size, **sizes, seed=seed, dtype=dtype, **({} if init is None else {"scheme": init}))
    except MemoryError:
        raise UsageError(f"not enough memory for a {kind} model with "
                         f"{', '.join(f'{k} {v}' for k, v in sizes.items())}; use smaller values") from None
