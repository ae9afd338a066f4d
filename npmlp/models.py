"""Every model npmlp trains, by the name `npmlp train --model` gives it.

A model class has: kind (its name here), DEFAULTS (its sizes, the one home of its defaults),
param_names, shapes(vocab_size, **sizes) (every array it saves, by name), init(vocab_size,
**sizes, seed=, dtype=, ...), and instances with params (and buffers: running statistics, for
the models that keep some), sizes, forward/backward (training), loss/logits (inference).
"""
from __future__ import annotations

from .errors import UsageError
from .model import MLP

MODELS = {"mlp": MLP}


def model_class(kind: str):
    try:
        return MODELS[kind]
    except KeyError:
        raise UsageError(f"unknown model {kind!r}; use one of {', '.join(MODELS)}") from None


def buffers(model) -> dict:
    """A model's running statistics (arrays saved and restored with it, but not trained)."""
    return getattr(model, "buffers", {})
