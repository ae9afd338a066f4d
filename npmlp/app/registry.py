"""Every model npmlp trains, by the name `npmlp train --model` gives it: the one place the
application names the model modules. What each model is, its options, defaults, engine and
mirror, is its own spec (contract.Spec); the rest of app/ reads the specs of these classes.
"""
from __future__ import annotations

from .. import bigram, bn, deep, mlp, recurrent, transformer, wavenet
from ..contract import Model, Option, Spec
from .errors import UsageError

MODELS: dict[str, type[Model]] = {cls.spec.kind: cls for cls in (
    mlp.MLP, bigram.Bigram, bn.BNMLP, deep.Deep, wavenet.Wavenet, recurrent.RNN, recurrent.GRU, recurrent.LSTM,
    transformer.BoW, transformer.Transformer)}
DEFAULT = "mlp"      # `npmlp train` with no --model: lecture 2's run
FORMAT_1 = "mlp"     # the one model npmlp 0.1 knew: what a format-1 checkpoint holds


# makemore.py's --type names npmlp has no model for, and why (the others are the specs' Makemore.type)
MAKEMORE_ONLY = {"mlp": "makemore.py's MLP (69,147 parameters) is not lecture 2's: it embeds a blank token for "
                        "the positions before a name and reads 16 positions; npmlp does not have it"}


def makemore_kind(type_: str) -> str:
    """The npmlp model of makemore.py's --type `type_`; a UsageError naming the ones there are."""
    have = {c.spec.makemore.type: k for k, c in MODELS.items() if c.spec.makemore is not None}
    if type_ in have:
        return have[type_]
    why = MAKEMORE_ONLY.get(type_, f"makemore.py has no --type {type_!r}")
    raise UsageError(f"--type {type_}: {why}; npmlp reads --type {', '.join(have)}")


def model_class(kind: str) -> type[Model]:
    try:
        return MODELS[kind]
    except KeyError:
        raise UsageError(f"unknown model {kind!r}; use one of {', '.join(MODELS)}") from None


def spec(kind: str) -> Spec:
    return model_class(kind).spec


def options() -> dict[str, Option]:
    """Every model option by name, the first model's declaration of it (its help and flag)."""
    out: dict[str, Option] = {}
    for cls in MODELS.values():
        for o in cls.spec.options:
            out.setdefault(o.name, o)
    return out


def owners(name: str) -> list[str]:
    """The models that have the option `name` (one only some models take: n_layers, flatten)."""
    return [k for k, c in MODELS.items() if c.spec.option(name) is not None]


def owners_text(name: str) -> str:
    """'the deep model' or 'the deep and transformer models': who has the option `name`."""
    have = owners(name)
    return f"the {', '.join(have[:-1])}{' and ' * (len(have) > 1)}{have[-1]} model{'s' * (len(have) > 1)}"


def with_inits() -> list[str]:
    """The models that offer init schemes (--init)."""
    return [k for k, c in MODELS.items() if c.spec.inits]


def train_default(kind: str, option: str, default):
    """A training option's default for model `kind`: its spec's, else `default` (TrainConfig's)."""
    return MODELS[kind].spec.train.get(option, default)


def make_model(kind: str, vocab_size: int, sizes: dict, seed: int, dtype, init: str | None = None) -> Model:
    """A fresh model of `kind`: its init with the given sizes, seed and dtype, and the init scheme
    `init` where the model offers one (None: its source's own)."""
    cls = model_class(kind)
    try:
        return cls.init(vocab_size, **sizes, seed=seed, dtype=dtype, **({} if init is None else {"scheme": init}))
    except MemoryError:
        raise UsageError(f"not enough memory for a {kind} model with "
                         f"{', '.join(f'{k} {v}' for k, v in sizes.items())}; use smaller values") from None
