"""What the command line's options mean, and every check they get, in one place: the option
types, the options each command shares (a model's own come from the specs), and the checks that
need the data or the model (a model's sizes, the batch against the split and the BatchNorm, the
engine, the memory). The models and the training loop raise plain ValueErrors; here they become
usage errors.

Options are parsed without defaults, so `args.typed` holds exactly those on the command line (a
--resume refuses a typed value even when it equals the default); the defaults, a model's own
where it has one, are filled in after (Parser.parse)."""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import fast, train
from ..contract import SEED, Model, Option, count_params
from ..data import SPLIT_SEED
from ..train import TrainConfig
from .errors import UsageError
from .registry import DEFAULT, MODELS, model_class, options, owners, owners_text, train_default, with_inits

DTYPES = {"float32": np.float32, "float64": np.float64}
TRAIN = TrainConfig()            # the lecture's training defaults, for the help text and the parser
TRAIN_OPTIONS = ("steps", "batch_size", "lr", "lr_decayed", "decay_at", "reg", "optimizer", "weight_decay",
                 "schedule", "decay_matrices_only", "eval_every")
MODEL_OPTIONS = ("model", *options(), "init")


# ----------------------------------------------------------------------------- option types

class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `npmlp: error: ...`, exit 2, no usage dump.
    Subparsers inherit the class, so every subcommand reports the same way. An option added by
    `typed` has no argparse default: its default (a value, or a function of the other options,
    such as a model's own) is filled in by parse, after `args.typed` records what was typed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fill: dict[str, Any] = {}
        self.set_defaults(_fill=self.fill)

    def error(self, message):
        self.exit(2, f"npmlp: error: {message} (see `{self.prog} --help`)\n")

    def add_argument(self, *args, **kwargs):
        """As argparse's; an option whose metavar says it is a path (FILE, DIR, RUN_DIR, MODEL_PT)
        refuses the empty string, which pathlib reads as the current folder (`--data ""` would
        say that `.` is a directory, `--resume ""` start a new run)."""
        if kwargs.get("metavar") in PATHS and "type" not in kwargs:
            kwargs["type"] = path
        return super().add_argument(*args, **kwargs)

    def typed(self, *flags, default=None, **kwargs):
        action = self.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
        self.fill[action.dest] = default
        return action

    def parse(self, argv) -> argparse.Namespace:
        args = self.parse_args(argv)
        fill = getattr(args, "_fill", {})
        args.typed = {k for k in fill if hasattr(args, k)}
        for k, default in fill.items():       # in the order added: --model before what depends on it
            if not hasattr(args, k):
                setattr(args, k, default(args) if callable(default) else default)
        return args


PATHS = ("FILE", "DIR", "RUN_DIR", "MODEL_PT")


def path(s: str) -> str:
    """An argparse type: a path, which the empty string is not."""
    if not s:
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return s


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


def number_in(low: float, high: float | None, strict_low: bool = False):
    """An argparse type: a finite number >= low (> low if strict_low), below high if given."""
    what = (f"a number {'>' if strict_low else '>='} {low:g}" if high is None else
            f"a number in [{low:g}, {high:g})")
    what = "a positive number" if strict_low and low == 0 and high is None else what

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
        if not (np.isfinite(v) and (v > low if strict_low else v >= low) and (high is None or v < high)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    return parse


positive_float = number_in(0, None, strict_low=True)


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


def batch_size(s: str) -> int | None:
    """A positive integer, or 'full': every training row in every step (part 1's gradient descent)."""
    return None if s.lower() == "full" else positive_int(s)


def option_type(o: Option) -> Callable[[str], Any]:
    if o.type is float:
        return number_in(o.minimum, o.maximum)
    return int_at_least(int(o.minimum), "a positive integer" if o.minimum == 1 else f"a whole number >= {o.minimum}")


# ----------------------------------------------------------------------------- shared options

def add_data_args(p: Parser):
    p.typed("--data", metavar="FILE", help="names file, one per line (default: $NPMLP_DATA, "
            "then the cached download of the lecture's names.txt)")
    p.typed("--split-seed", type=split_seed, default=SPLIT_SEED, metavar="SEED",
            help=f"shuffle seed of the 80/10/10 split (default {SPLIT_SEED}, the lecture's); 'none' keeps "
                 "the file's order")


def defaults_text(name: str, values: dict[str, Any]) -> str:
    """'3' or '200; deep: 100': the default of the DEFAULT model (or of the first model that has
    one), then each other model's where it differs. values: kind -> default."""
    values = dict(values)
    first = values.pop(DEFAULT) if DEFAULT in values else values.pop(next(iter(values)))
    def shown(v) -> str:
        return "full" if v is None and name == "batch_size" else f"{v:g}" if isinstance(v, float) else str(v)

    return "; ".join([shown(first)] + [f"{kind}: {shown(v)}" for kind, v in values.items() if v != first])


def model_defaults_text(name: str) -> str:
    return defaults_text(name, {k: c.spec.defaults[name] for k, c in MODELS.items() if name in c.spec.defaults})


def train_defaults_text(name: str) -> str:
    return defaults_text(name, {k: train_default(k, name, getattr(TRAIN, name)) for k in MODELS})


def only(name: str) -> str:
    """'deep only: ' (or 'all but bigram: ') for an option only some models have, else ''."""
    have = owners(name)
    missing = [k for k in MODELS if k not in have]
    if not missing:
        return ""
    return f"all but {' and '.join(missing)}: " if len(missing) < len(have) else f"{' and '.join(have)} only: "


def add_model_args(p: Parser, dtype: str = "float32"):
    """The model, its options (from the specs; left None: the model's own defaults), dtype, init
    and seed."""
    p.typed("--model", choices=MODELS, default=DEFAULT, help="; ".join(
        f"{k}: {c.spec.title}{' (default)' if k == DEFAULT else ''}" for k, c in MODELS.items()))
    for o in options().values():
        if o.const is not None:               # a switch
            p.typed(o.cli, dest=o.name, action="store_const", const=o.const, help=only(o.name) + o.help)
        else:
            p.typed(o.cli, dest=o.name, type=option_type(o), metavar=o.metavar,
                    help=f"{only(o.name)}{o.help} (default {model_defaults_text(o.name)})")
    p.typed("--dtype", choices=DTYPES, default=dtype, help=f"float32 or float64 (default {dtype})")
    inits = list(dict.fromkeys(i for c in MODELS.values() for i in c.spec.inits))
    p.typed("--init", choices=inits, help=f"{' and '.join(with_inits())} only: " + "; ".join(
        f"{k}: {c.spec.init_help}" for k, c in MODELS.items() if c.spec.inits))
    p.typed("--seed", type=non_negative_int, default=SEED,
            help=f"seed of init and minibatches (default {SEED}, the lecture's)")


def train_default_of(name: str):
    """The fill of a training option: the chosen model's default (its spec's, else TrainConfig's)."""
    return lambda args: train_default(args.model, name, getattr(TRAIN, name))


def add_batch_arg(p: Parser, per_model: bool = True):
    """--batch-size: the model's own default when per_model, else TrainConfig's (gradcheck's minibatch)."""
    default = train_default_of("batch_size") if per_model else TRAIN.batch_size
    text = train_defaults_text("batch_size") if per_model else TRAIN.batch_size
    p.typed("--batch-size", type=batch_size, default=default, metavar="B",
            help=f"minibatch size, or 'full' for every training row in every step (default {text})")


def add_train_args(p: Parser):
    """The training options, each defaulting to the chosen model's own (train.TrainConfig's, or its spec's)."""
    p.typed("--steps", type=positive_int, default=train_default_of("steps"),
            help=f"SGD steps (default {train_defaults_text('steps')})")
    add_batch_arg(p)
    p.typed("--lr", type=positive_float, default=train_default_of("lr"),
            help=f"learning rate (default {train_defaults_text('lr')})")
    p.typed("--lr-decayed", type=positive_float, default=lambda args: train_default(args.model, "lr_decayed", None)
            or args.lr / 10, help="rate after the decay (default lr/10)")
    p.typed("--decay-at", type=fraction, default=train_default_of("decay_at"),
            help=f"fraction of steps where the rate drops (default {train_defaults_text('decay_at')})")
    p.typed("--reg", type=number_in(0, None), default=train_default_of("reg"),
            help=f"add reg * mean(p**2) of every parameter to the training loss (default {train_defaults_text('reg')})")
    p.typed("--optimizer", choices=train.OPTIMIZERS, default=train_default_of("optimizer"),
            help=f"sgd: p -= lr * grad (the lectures'); adamw: makemore.py's AdamW, betas (0.9, 0.99), eps 1e-8 "
                 f"(default {train_defaults_text('optimizer')})")
    p.typed("--weight-decay", type=number_in(0, None), default=train_default_of("weight_decay"),
            help=f"AdamW's decoupled weight decay (default {train_defaults_text('weight_decay')})")
    p.typed("--decay-matrices-only", action=argparse.BooleanOptionalAction,
            default=train_default_of("decay_matrices_only"),
            help="AdamW's weight decay on the weight matrices and embeddings only, not biases or gains (nanoGPT's; "
                 f"default {train_defaults_text('decay_matrices_only')})")
    p.typed("--schedule", choices=train.SCHEDULES, default=train_default_of("schedule"),
            help="step: --lr, then --lr-decayed from --decay-at on (the lectures'); cosine: half a cosine from "
                 f"--lr down to --lr-decayed over the steps (default {train_defaults_text('schedule')})")
    p.typed("--eval-every", type=non_negative_int, default=train_default_of("eval_every"), metavar="N",
            help="every N steps, estimate the train and dev loss on fixed rows (about 1,000 names each), print "
                 "it, and keep the checkpoint of the best dev estimate in best.npz, which the other commands "
                 f"then read; 0: never (default {train_defaults_text('eval_every')})")


def add_engine_args(p: Parser):
    p.typed("--engine", choices=fast.ENGINES, help="fast: the tuned NumPy step (default where "
            "the model has one); reference: the readable lecture loop (layers.py, the model's file, train.py)")
    p.typed("--processes", type=positive_int, metavar="N", help="fast engine: processes sharing "
            f"a batch of more than {fast.CHUNK} rows (default: one per {fast.CHUNK}-row chunk, up to the "
            "usable cores; the results are the same bits for any N)")


def flag(name: str) -> str:
    """The option that sets `name`: 'batch_size' -> '--batch-size', 'batchnorm' -> '--no-batchnorm'."""
    o = options().get(name)
    return o.cli if o is not None else "--" + name.replace("_", "-")


def option_text(name: str, value) -> str:
    """`name` = value as typed on a command line: '--lr 0.5', '--split-seed none', '--no-batchnorm'
    for batchnorm 0 (a switch at its default is typed as nothing: '')."""
    o = options().get(name)
    if o is not None and o.const is not None:
        return flag(name) if value == o.const else ""
    if name == "batch_size" and value is None:
        return f"{flag(name)} full"
    return f"{flag(name)} {'none' if value is None else value}"


# ----------------------------------------------------------------------------- checks

def model_options(args) -> tuple[str, dict, str | None]:
    """(kind, sizes with the model's defaults filled in, init scheme) from the options (args.typed:
    those on the command line); refuses one that the chosen model does not have."""
    cls = model_class(args.model)
    spec = cls.spec
    if "init" in args.typed and not spec.inits:
        have = with_inits()
        raise UsageError(f"--init sets the init of the {' and '.join(have)} model{'s' * (len(have) > 1)}; the "
                         f"{args.model!r} model has its lecture's own: drop --init")
    if "init" in args.typed and args.init not in spec.inits:
        raise UsageError(f"--init {args.init}: the {args.model} model's init schemes are {', '.join(spec.inits)}")
    for key in options():
        if getattr(args, key, None) is not None and spec.option(key) is None:
            raise UsageError(f"{flag(key)} applies to {owners_text(key)} only; drop it, or add "
                             f"--model {owners(key)[0]}")
    sizes = {o.name: o.default if getattr(args, o.name, None) is None else getattr(args, o.name)
             for o in spec.options}
    if "block_size" not in sizes and spec.context:
        sizes["block_size"] = spec.context          # a fixed context (the bigram's one character)
    try:
        cls.check_options(sizes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    init = (args.init or spec.inits[0]) if spec.inits else None
    return args.model, sizes, init


def train_config(args, kind: str) -> TrainConfig:
    """The training config the options give (each filled with model `kind`'s own default)."""
    try:
        return TrainConfig(**{**model_class(kind).spec.train, **{k: getattr(args, k) for k in TRAIN_OPTIONS},
                              "seed": args.seed})
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_engine(kind: str, engine: str | None, processes: int | None, sizes: dict | None = None) -> str:
    """The engine a model of these sizes trains with: `engine`, or its default; a clear error for a
    model the fast engine cannot train, or --processes without the fast engine (only its chunks
    are shared)."""
    spec = model_class(kind).spec
    engine = engine or fast.default_engine(spec, sizes)
    if engine == "fast" and spec.engine is None:
        raise UsageError(f"--engine fast: the {kind!r} model has no fast engine; use --engine reference")
    why = fast.reference_only(spec, sizes)
    if engine == "fast" and why:
        raise UsageError(f"--engine fast: {why} trains on the reference engine only; drop --engine fast")
    if processes is not None and engine != "fast":
        raise UsageError("--processes shares a batch between processes in the fast engine only; drop it "
                         "with --engine reference")
    return engine


def check_batch(batch_size: int | None, model: Model, n_rows: int) -> None:
    """A training batch the split and the model allow: at most the split's rows, and at least the
    model's min_batch (a BatchNorm needs two rows of statistics); a full batch is every row."""
    B = n_rows if batch_size is None else batch_size
    if B > n_rows:
        raise UsageError(f"--batch-size {batch_size} is larger than the training split ({n_rows:,} rows); "
                         f"use at most {n_rows:,}")
    if B < model.min_batch:
        raise UsageError(f"--batch-size {B}: the {model.kind} model's BatchNorm normalises with "
                         f"a batch's own statistics; use at least {model.min_batch}")


def machine_memory() -> int | None:
    """Bytes of memory on this machine (None if the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_need(kind: str, sizes: dict, vocab, n_rows: int = 0, batch_size: int | None = 1, steps: int = 0) -> dict:
    """Bytes a command needs at its peak, by what needs them:
    'model': the parameters as float64 draws, their copies for divergence, the fast engine's copy
             and its chunks' updates;
    'rows':  the names' n_rows rows of T + 1 indices, twice while build_dataset copies them;
    'step':  a training step's arrays for a batch of batch_size rows (the model's activation
             shapes, forward and backward), the one-hot of its characters and its row indices;
    'eval':  the arrays of the rows evaluated (or calibrated) at once (or the fast evaluation's
             budget, if larger);
    'steps': the loss of each step (and, for lr-find, its rate and smoothed loss)."""
    cls = model_class(kind)
    V, T = vocab.size, sizes["block_size"]
    P = count_params(cls, V, sizes)
    B = n_rows if batch_size is None else batch_size

    def acts(rows: int) -> int:
        return sum(math.prod(s) for s in cls.activation_shapes(rows, V, **sizes).values())

    return {"model": P * 8 * 6 + -(-B // fast.CHUNK) * P * 8,
            "rows": n_rows * (T + 1) * np.dtype(vocab.index_dtype()).itemsize * 2,
            "step": acts(B) * 8 * 2 + B * T * V * 8 + train.BLOCK * B * 8 + fast.GATHER * (T + 1) * 8,
            "eval": max(acts(eval_rows(cls)) * 8 * 2, fast.eval_bytes(cls.spec)),
            "steps": steps * 4 * 9}


def num_params(kind: str, sizes: dict, vocab_size: int) -> int:
    """The model's parameter count (contract.count_params: a stack's extrapolated from two layers)."""
    return count_params(model_class(kind), vocab_size, sizes)


def eval_rows(cls: type[Model]) -> int:
    """Rows evaluated at once: train.evaluate's chunk, or the model's calibration chunk if larger."""
    return max(train.EVAL_CHUNK, cls.calibrate_rows)


# what each part of memory_need holds, and the options that size it (the typed ones are named)
NEEDS = {"model": ("the model's {P:,} parameters and their copies", ("model",)),
         "rows": ("the names' {N:,} rows of {T1:,} indices", ("block_size",)),
         "step": ("a training step's arrays for a batch of {B:,} rows", ("batch_size", "model")),
         "eval": ("the arrays of {R:,} rows evaluated at once", ("model",)),
         "steps": ("the losses of {S:,} steps", ("steps",))}


def check_memory(kind: str, sizes: dict, vocab, n_rows: int = 0, batch_size: int | None = 1, steps: int = 0,
                 typed: set | None = None, subject: str | None = None) -> None:
    """Refuse a command whose arrays cannot fit in this machine's memory, before they are made:
    memory is overcommitted, so instead of NumPy's MemoryError the kernel would kill the process
    mid-run (or NumPy would fail after minutes of work). Every command that builds the rows or a
    model calls it, with the names' row count, before build_dataset runs (rundir.splits).
    The message names the options (typed: those on the command line) that size the largest part
    ('model' in NEEDS: every option of the model), or, for a run read from a checkpoint, `subject`
    and its sizes."""
    total = machine_memory()
    need = memory_need(kind, sizes, vocab, n_rows, batch_size, steps)
    if total is None or sum(need.values()) <= 0.8 * total:
        return
    part = max(need, key=lambda k: need[k])
    what, sizing = NEEDS[part]
    cls = model_class(kind)
    B = n_rows if batch_size is None else batch_size
    what = what.format(P=num_params(kind, sizes, vocab.size), N=n_rows, T1=sizes["block_size"] + 1, B=B,
                       S=steps, R=eval_rows(cls))
    values = {**sizes, "batch_size": batch_size, "steps": steps}
    named_options = [o.name for o in cls.spec.options]
    wanted = [k for s in sizing for k in (named_options if s == "model" else [s])]
    wanted = [k for k in dict.fromkeys(wanted) if k in values and (k in named_options or k in TRAIN_OPTIONS)]

    def gib(b):
        return f"{b / 2**30:.1f} GiB"

    if subject is not None:                  # a trained run: its sizes are not options here
        shown = f"{subject} ({', '.join(f'{k} {values[k]:,}' for k in wanted if k in sizes)})"
        fix = "use a machine with more memory"
        verb = "needs"
    else:
        # the typed options that make it larger than their defaults, else the typed ones, else all
        defaults = {**cls.spec.defaults, "batch_size": train_default(kind, "batch_size", TRAIN.batch_size),
                    "steps": train_default(kind, "steps", TRAIN.steps)}
        mine = [k for k in wanted if k in (typed or ())]
        named = [k for k in mine if (values[k] or 0) > (defaults.get(k) or 0)] or mine or wanted
        shown = " ".join(filter(None, (option_text(k, values[k]) for k in named)))
        if kind != DEFAULT and part != "steps":
            shown = f"--model {kind} {shown}"
        fix = f"use a smaller {' or '.join(flag(k) for k in named)}"
        verb = "need" if len(named) > 1 else "needs"
    raise UsageError(f"not enough memory: {shown} {verb} about {gib(sum(need.values()))}, {gib(need[part])} of it "
                     f"for {what}; this machine has {gib(total)} and npmlp uses at most 80% of it; {fix}")
