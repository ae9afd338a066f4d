"""What the command line's options mean, and every check they get, in one place: the option
types, the options each command shares, and the checks that need the data or the model (a
model's own sizes, the batch against the split and the BatchNorm, the engine, the memory).
The models and the training loop raise plain ValueErrors; here they become usage errors."""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

from .. import fast, train
from ..data import SPLIT_SEED
from ..mlp import MLP, SEED
from ..train import TrainConfig
from .errors import UsageError
from .registry import MODELS, model_class, owners

DTYPES = {"float32": np.float32, "float64": np.float64}
TRAIN = TrainConfig()            # the lecture's training defaults, for the help text and the parser
MODEL_OPTIONS = ("model", "block_size", "n_embd", "n_hidden", "n_layers", "batchnorm", "flatten",
                 "batchnorm_over_batch_only", "init")
TRAIN_OPTIONS = ("steps", "batch_size", "lr", "lr_decayed", "decay_at")


# ----------------------------------------------------------------------------- option types

class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `npmlp: error: ...`, exit 2, no usage dump.
    Subparsers inherit the class, so every subcommand reports the same way."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # every typed option is spelled out: see typed_options
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"npmlp: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(low: int, what: str):
    """An argparse type: an integer >= low, else "must be WHAT, got VALUE"."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "a whole number >= 0")


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {s!r}")
    return v


def split_seed(s: str) -> int | None:
    """An integer seed, or 'none': the file's own order (the seed notebook's split)."""
    if s.lower() == "none":
        return None
    return non_negative_int(s)


# ----------------------------------------------------------------------------- shared options

def add_data_args(p):
    p.add_argument("--data", metavar="FILE", help="names file, one per line (default: $NPMLP_DATA, "
                   "then the cached download of the lecture's names.txt)")
    p.add_argument("--split-seed", type=split_seed, default=SPLIT_SEED, metavar="SEED",
                   help=f"shuffle seed of the 80/10/10 split (default {SPLIT_SEED}, the lecture's); 'none' keeps "
                        "the file's order")


def defaults_text(size: str) -> str:
    """'3' or '200; deep: 100': a size's default, lecture 2's (or the first model's that has the
    size), then each other model's where it differs."""
    values = {kind: cls.DEFAULTS[size] for kind, cls in MODELS.items() if size in cls.DEFAULTS}
    first = values.pop("mlp", None)
    if first is None:
        first = values.pop(next(iter(values)))
    return "; ".join([str(first)] + [f"{kind}: {v}" for kind, v in values.items() if v != first])


def add_model_args(p, dtype: str = "float32"):
    """The model, its sizes (left None: the model's own defaults), dtype, init and seed."""
    p.add_argument("--model", choices=MODELS, default="mlp", help="mlp: lecture 2's (default); bn: with "
                   "BatchNorm, part 4's; deep: part 3's stack of layers; wavenet: part 5's hierarchy")
    p.add_argument("--block-size", type=positive_int, help=f"context length T (default {defaults_text('block_size')})")
    p.add_argument("--n-embd", type=positive_int, help=f"embedding size E (default {defaults_text('n_embd')})")
    p.add_argument("--n-hidden", type=positive_int, help=f"hidden units H (default {defaults_text('n_hidden')})")
    p.add_argument("--n-layers", type=positive_int, help=f"deep only: hidden layers (default {defaults_text('n_layers')})")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_const", const=0,
                   help="deep only: part 3's plain stack, Linear (with b) -> Tanh, no BatchNorm1d")
    p.add_argument("--flatten", type=positive_int, metavar="N", help="wavenet only: fuse N consecutive "
                   f"positions per level (default {defaults_text('flatten')}); the block size must be a power "
                   "of N; N = the block size is the flat network")
    p.add_argument("--batchnorm-over-batch-only", action="store_const", const=1, help="wavenet only: part 5's "
                   "bug, kept to measure it: BatchNorm's statistics over the batch axis alone, per position "
                   "(not over batch and positions); recorded in the run, its running statistics per position")
    p.add_argument("--dtype", choices=DTYPES, default=dtype, help=f"float32 or float64 (default {dtype})")
    p.add_argument("--init", choices=MLP.INITS, help=f"mlp only. {MLP.INITS[0]}: plain standard "
                   "normal (default); kaiming: scaled for tanh (part 3)")
    p.add_argument("--seed", type=non_negative_int, default=SEED,
                   help=f"seed of init and minibatches (default {SEED}, the lecture's)")


def add_batch_arg(p):
    p.add_argument("--batch-size", type=positive_int, default=TRAIN.batch_size,
                   help=f"minibatch size (default {TRAIN.batch_size})")


def add_engine_args(p):
    p.add_argument("--engine", choices=fast.ENGINES, help="fast: the tuned NumPy step (default where "
                   "the model has one); reference: the readable lecture loop (layers.py, mlp.py, train.py)")
    p.add_argument("--processes", type=positive_int, metavar="N", help="fast engine: processes sharing "
                   f"a batch of more than {fast.CHUNK} rows (default: one per {fast.CHUNK}-row chunk, up to the "
                   "usable cores; the results are the same bits for any N)")


def typed_options(argv) -> set[str]:
    """Destinations of the options spelled out on the command line (`--lr 0.1`, `--lr=0.1`), so
    --resume can refuse a typed value even when it equals the default."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return {"batchnorm" if n == "no_batchnorm" else n for n in names}


def flag(name: str) -> str:
    """The option that sets `name`: 'batch_size' -> '--batch-size', 'batchnorm' -> '--no-batchnorm'."""
    return "--no-batchnorm" if name == "batchnorm" else "--" + name.replace("_", "-")


def option_text(name: str, value) -> str:
    """`name` = value as typed on a command line: '--lr 0.5', '--split-seed none', '--no-batchnorm'
    for batchnorm 0 (batchnorm 1 is the default, typed as nothing: '')."""
    if name == "batchnorm":
        return "" if value else flag(name)
    return f"{flag(name)} {'none' if value is None else value}"


# ----------------------------------------------------------------------------- checks

def model_options(args) -> tuple[str, dict, str | None]:
    """(kind, sizes with the model's defaults filled in, init scheme) from the options (args.typed:
    those on the command line); refuses one that the chosen model does not have."""
    cls = model_class(args.model)
    if "init" in args.typed and not cls.INITS:
        raise UsageError(f"--init sets the init of the mlp model; the {args.model!r} model has its lecture's "
                         f"own: drop --init")
    for key in ("n_layers", "batchnorm", "flatten", "batchnorm_over_batch_only"):
        if getattr(args, key, None) is not None and key not in cls.DEFAULTS:
            have = owners(key)
            raise UsageError(f"{flag(key)} applies to the {' and '.join(have)} model only; drop it, or add "
                             f"--model {have[0]}")
    sizes = {k: d if getattr(args, k, None) is None else getattr(args, k) for k, d in cls.DEFAULTS.items()}
    if "flatten" in sizes:                      # the wavenet fuses the block down to one position
        try:
            cls.levels(sizes["block_size"], sizes["flatten"])
        except ValueError:
            T, n = sizes["block_size"], sizes["flatten"]
            why = (f"is not a power of --flatten {n} ({n}, {n ** 2}, {n ** 3}...): each level fuses {n} positions "
                   f"into one, down to a single one; change one of them" if n > 1 else
                   "has more than one position and --flatten 1 fuses none; use a group of at least 2")
            raise UsageError(f"--block-size {T} {why}, or --flatten {T} (the flat network)") from None
    init = (args.init or cls.INITS[0]) if cls.INITS else None
    return args.model, sizes, init


def train_config(args, kind: str) -> TrainConfig:
    """The training config the options give model `kind` (its own default where an option is left out)."""
    from .registry import train_default
    decay_at = train_default(kind, "decay_at", TRAIN.decay_at) if args.decay_at is None else args.decay_at
    try:
        return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           lr_decayed=args.lr_decayed or args.lr / 10, decay_at=decay_at)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_engine(kind: str, engine: str | None, processes: int | None, sizes: dict | None = None) -> str:
    """The engine a model of these sizes trains with: `engine`, or its default; a clear error for a
    model the fast engine cannot train, or --processes without the fast engine (only its chunks
    are shared)."""
    engine = engine or fast.default_engine(kind, sizes)
    if engine == "fast" and kind not in fast.MODELS:
        raise UsageError(f"--engine fast: the {kind!r} model has no fast engine; use --engine reference")
    why = fast.reference_only(sizes)
    if engine == "fast" and why:
        raise UsageError(f"--engine fast: {why} trains on the reference engine only; drop --engine fast")
    if processes is not None and engine != "fast":
        raise UsageError("--processes shares a batch between processes in the fast engine only; drop it "
                         "with --engine reference")
    return engine


def check_batch(batch_size: int, model, n_rows: int) -> None:
    """A training batch the split and the model allow: at most the split's rows, and at least the
    model's min_batch (a BatchNorm needs two rows of statistics)."""
    if batch_size > n_rows:
        raise UsageError(f"--batch-size {batch_size} is larger than the training split ({n_rows:,} rows); "
                         f"use at most {n_rows:,}")
    if batch_size < model.min_batch:
        raise UsageError(f"--batch-size {batch_size}: the {model.kind} model's BatchNorm normalises with "
                         f"a batch's own statistics; use at least {model.min_batch}")


def machine_memory() -> int | None:
    """Bytes of memory on this machine (None if the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_need(kind: str, sizes: dict, vocab, n_rows: int = 0, batch_size: int = 1, steps: int = 0) -> dict:
    """Bytes a command needs at its peak, by what needs them:
    'model': the parameters as float64 draws, their copies for divergence, the fast engine's copy
             and its chunks' updates;
    'rows':  the names' n_rows rows of T + 1 indices, twice while build_dataset copies them;
    'step':  a training step's arrays for a batch of batch_size rows, forward and backward;
    'eval':  the arrays of the rows evaluated (or calibrated) at once, every layer's output kept
             (or the fast evaluation's budget, if larger);
    'steps': the loss of each step (and, for lr-find, its rate and smoothed loss)."""
    cls = model_class(kind)
    P = num_params(kind, sizes, vocab.size)
    T, E, H, L, V = sizes["block_size"], sizes["n_embd"], sizes["n_hidden"], sizes.get("n_layers", 1), vocab.size
    B = batch_size
    return {"model": P * 8 * 6 + -(-B // fast.CHUNK) * P * 8,
            "rows": n_rows * (T + 1) * np.dtype(vocab.index_dtype()).itemsize * 2,
            "step": B * (T * E + 6 * H * L + 4 * V + T * V) * 8 * 2 + train.BLOCK * B * 8 + fast.GATHER * (T + 1) * 8,
            "eval": max(eval_rows(cls) * (T * E + 3 * H * L + 3 * V) * 8 * 2, fast.eval_bytes(kind)),
            "steps": steps * 4 * 9}


def num_params(kind: str, sizes: dict, vocab_size: int) -> int:
    """The model's parameter count, from its shapes; a stack's (n_layers) from those of one and two
    layers, the count growing by the same amount with each layer: listing the shapes of 10^9 layers
    would itself exhaust the memory this estimate protects."""
    def count(**change) -> int:
        return sum(math.prod(v) for v in model_class(kind).shapes(vocab_size, **{**sizes, **change}).values())

    L = sizes.get("n_layers")
    if L is None or L <= 2:
        return count()
    one, two = count(n_layers=1), count(n_layers=2)
    return one + (L - 1) * (two - one)


def eval_rows(cls) -> int:
    """Rows evaluated at once: train.evaluate's chunk, or the model's calibration chunk if larger."""
    return max(train.EVAL_CHUNK, getattr(cls, "CALIBRATE_CHUNK", 0))


# what each part of memory_need holds, and the options that size it (the typed ones are named)
NEEDS = {"model": ("the model's {P:,} parameters and their copies", ("block_size", "n_embd", "n_hidden", "n_layers")),
         "rows": ("the names' {N:,} rows of {T1:,} indices", ("block_size",)),
         "step": ("a training step's arrays for a batch of {B:,} rows",
                  ("batch_size", "block_size", "n_embd", "n_hidden", "n_layers")),
         "eval": ("the arrays of {R:,} rows evaluated at once", ("block_size", "n_embd", "n_hidden", "n_layers")),
         "steps": ("the losses of {S:,} steps", ("steps",))}


def check_memory(kind: str, sizes: dict, vocab, n_rows: int = 0, batch_size: int = 1, steps: int = 0,
                 typed: set | None = None, subject: str | None = None) -> None:
    """Refuse a command whose arrays cannot fit in this machine's memory, before they are made:
    memory is overcommitted, so instead of NumPy's MemoryError the kernel would kill the process
    mid-run (or NumPy would fail after minutes of work). Every command that builds the rows or a
    model calls it, with the names' row count, before build_dataset runs (rundir.splits).
    The message names the options (typed: those on the command line) that size the largest part,
    or, for a run read from a checkpoint, `subject` and its sizes."""
    total = machine_memory()
    need = memory_need(kind, sizes, vocab, n_rows, batch_size, steps)
    if total is None or sum(need.values()) <= 0.8 * total:
        return
    part = max(need, key=need.get)
    what, options = NEEDS[part]
    P = num_params(kind, sizes, vocab.size)
    what = what.format(P=P, N=n_rows, T1=sizes["block_size"] + 1, B=batch_size, S=steps,
                       R=eval_rows(model_class(kind)))
    values = {**sizes, "batch_size": batch_size, "steps": steps}
    options = [k for k in options if k in values]
    def gib(b):
        return f"{b / 2**30:.1f} GiB"

    if subject is not None:                  # a trained run: its sizes are not options here
        shown = f"{subject} ({', '.join(f'{k} {values[k]:,}' for k in options if k in sizes)})"
        fix = "use a machine with more memory"
        verb = "needs"
    else:
        # the typed options that make it larger than their defaults, else the typed ones, else all
        defaults = {**model_class(kind).DEFAULTS, "batch_size": TRAIN.batch_size, "steps": TRAIN.steps}
        mine = [k for k in options if k in (typed or ())]
        named = [k for k in mine if values[k] > defaults.get(k, 0)] or mine or options
        shown = " ".join(option_text(k, values[k]) for k in named)
        if kind != "mlp" and part != "steps":
            shown = f"--model {kind} {shown}"
        fix = f"use a smaller {' or '.join(flag(k) for k in named)}"
        verb = "need" if len(named) > 1 else "needs"
    raise UsageError(f"not enough memory: {shown} {verb} about {gib(sum(need.values()))}, {gib(need[part])} of it "
                     f"for {what}; this machine has {gib(total)} and npmlp uses at most 80% of it; {fix}")
