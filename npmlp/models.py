"""Every model npmlp trains, by the name `npmlp train --model` gives it.

A model class has: kind (its name here), DEFAULTS (its sizes: the one home of its defaults, and
TRAIN_DEFAULTS for a training option that differs from the lecture-2 default), shapes(vocab_size,
**sizes) (its parameters, by name) and, if it keeps running statistics, buffer_shapes(...),
init(vocab_size, **sizes, seed=, dtype=); and instances with params (and buffers), sizes,
param_names, act_names, forward/backward (training), loss/logits (inference).
"""
from __future__ import annotations

from .bn import BNMLP
from .deep import Deep
from .errors import UsageError
from .model import MLP

MODELS = {"mlp": MLP, "bn": BNMLP, "deep": Deep}


def model_class(kind: str):
    try:
        return MODELS[kind]
    except KeyError:
        raise UsageError(f"unknown model {kind!r}; use one of {', '.join(MODELS)}") from None


def buffers(model) -> dict:
    """A model's running statistics (arrays saved and restored with it, but not trained)."""
    return getattr(model, "buffers", {})


def buffer_shapes(cls, vocab_size: int, sizes: dict) -> dict:
    return cls.buffer_shapes(vocab_size, **sizes) if hasattr(cls, "buffer_shapes") else {}


def train_default(kind: str, option: str, lecture2):
    """A training option's default for model `kind`: its TRAIN_DEFAULTS, else lecture 2's."""
    return getattr(MODELS[kind], "TRAIN_DEFAULTS", {}).get(option, lecture2)


def intermediate(cache, name: str):
    """An intermediate of a forward's cache by name (a NamedTuple's field, or a dict's key)."""
    return cache[name] if isinstance(cache, dict) else getattr(cache, name)
