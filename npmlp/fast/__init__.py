"""The fast tier: what `npmlp train` runs and the benchmark times. Same maths as the reference
tier (npmlp/*.py), arranged for speed, and held to it by the tests.

    flat.py      the one parameter vector every engine keeps, and its views by name
    engine.py    the MLP and bn models' training step: fused layers, chunks; the loop every engine runs
    counts.py    the bigram's step from its batch's pair counts
    stack.py     the layer-object networks' (deep, wavenet) step, fused block by block
    recurrent.py makemore.py's recurrent models' (rnn, gru, lstm) step, backprop through time
    transformer.py  makemore.py's bag of words and Transformer: the step and the evaluation
    tanh.py      the tanh the engines use on this CPU
    parallel.py  helper processes that run some of a large batch's chunks on other cores
    dataset.py   build_dataset vectorised
    windows.py   inference over the distinct windows of rows of context

`steps(engine, ...)` is the one place that picks the loop a run trains with.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from .. import train
from ..contract import Spec
from . import engine as _engine
from .engine import ARITHMETIC as FAST_ARITHMETIC
from .engine import CHUNK, ENGINE_CLASS, GATHER, gradients
from .recurrent import RecurrentEngine
from .recurrent import inference_loss as recurrent_loss
from .stack import EVAL_BYTES, StackEngine, inference_loss
from .transformer import SequenceEngine
from .transformer import inference_loss as sequence_loss
from .windows import window_loss

ENGINES = ("fast", "reference")
# each engine's rounding version (see engine.py)
ARITHMETIC: dict[str, str | int] = {"fast": FAST_ARITHMETIC, "reference": 1}

__all__ = ["ARITHMETIC", "CHUNK", "ENGINES", "GATHER", "default_engine", "eval_bytes", "evaluate", "gradients",
           "reference_only", "steps"]


def reference_only(spec: Spec, sizes: dict | None) -> str | None:
    """Why the fast engine cannot train a model of these sizes, or None: an option the spec marks
    reference_only is set (the wavenet's BatchNorm bug: the fast engine normalises over every row)."""
    return next((o.reference_only for o in spec.options if o.reference_only and (sizes or {}).get(o.name)), None)


def default_engine(spec: Spec, sizes: dict | None = None) -> str:
    """The engine a model trains with unless told: fast where its spec names one, for these sizes."""
    return "fast" if spec.engine in ENGINE_CLASS and not reference_only(spec, sizes) else "reference"


@contextlib.contextmanager
def steps(engine: str, model, batch_size: int, processes: int | None = None, opt=None):
    """-> steps(X, Y, cfg, lossi, start, stop, on_step), train.sgd's contract run by `engine`, with
    the optimiser `opt` (train.optimizer's: AdamW keeps its moments across the calls; None: each
    call makes cfg's). The fast engine's helper processes (parallel.py) live as long as the
    context: open it before any thread starts (a progress bar's), since forking beside a thread
    can deadlock the child."""
    if engine == "fast":
        from .parallel import make_batches
        with make_batches(model, batch_size, processes) as batches:
            yield functools.partial(_engine.sgd, model, batches=batches, opt=opt)
    else:
        yield functools.partial(train.sgd, model, opt=opt)


def _stacked(spec: Spec, sizes: dict | None = None) -> bool:
    """Whether the fast tier runs a model of this spec (and these sizes) on stack.StackEngine."""
    return ENGINE_CLASS.get(spec.engine or "") is StackEngine and not reference_only(spec, sizes)


def eval_bytes(spec: Spec) -> int:
    """What evaluate() may hold at once for a model of this spec beyond train.evaluate's chunk (the
    fast engine's evaluation sizes its chunks to stack.EVAL_BYTES)."""
    return EVAL_BYTES if _stacked(spec) else 0


def evaluate(model, X, Y, engine: str = "fast") -> float:
    """train.evaluate's mean loss in inference mode, by `engine`: for a layer-object network the
    fast one folds each BatchNorm into the Linear before it and runs each block once per distinct
    window of characters (stack.inference_loss); a recurrent model runs its engine's forward on
    chunks of names of similar length (recurrent.inference_loss); the bag of words and the
    Transformer their engine's (transformer.inference_loss); the other models of rows of context
    (the MLPs, the bigram) run each distinct window once (windows.window_loss); the reference
    engine runs train.evaluate itself."""
    if engine == "fast" and _stacked(model.spec, model.sizes):
        return inference_loss(model, X, Y)
    cls = ENGINE_CLASS.get(model.spec.engine or "")
    if engine == "fast" and cls is not None and issubclass(cls, RecurrentEngine):
        return recurrent_loss(cls(model), model, X, Y)
    if engine == "fast" and cls is not None and issubclass(cls, SequenceEngine):
        return sequence_loss(model, X, Y)
    if engine == "fast" and np.ndim(Y) == 1 and np.ndim(X) == 2:        # rows of context, not sequences
        return window_loss(model, X, Y)
    return train.evaluate(model, X, Y)
