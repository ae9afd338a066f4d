"""`npmlp` console script: options in, calls to runs.py and the reading tools, lines out.
A user's mistake ends in one line on stderr and exit 2 (usage) or 1 (runtime); never a traceback."""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, runs
from .checkpoint import load_checkpoint
from .errors import NpmlpError, UsageError
from .fast import CHUNK
from .model import SEED
from .models import MODELS, model_class, train_default
from .train import TrainConfig, evaluate, sample

DTYPES = {"float32": np.float32, "float64": np.float64}


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


def add_data_args(p):
    p.add_argument("--data", metavar="FILE", help="names file, one per line (default: $NPMLP_DATA, "
                   "then the cached download of the lecture's names.txt)")
    p.add_argument("--split-seed", type=split_seed, default=42, metavar="SEED",
                   help="shuffle seed of the 80/10/10 split (default 42, the lecture's); 'none' keeps "
                        "the file's order")


def add_model_args(p, dtype: str = "float32"):
    """The model, its sizes (left None: the model's own defaults), dtype, init and seed."""
    p.add_argument("--model", choices=MODELS, default="mlp", help="mlp: lecture 2's (default); bn: with "
                   "BatchNorm, part 4's; deep: part 3's stack of layers")
    p.add_argument("--block-size", type=positive_int, help="context length T (default 3)")
    p.add_argument("--n-embd", type=positive_int, help="embedding size E (default 10)")
    p.add_argument("--n-hidden", type=positive_int, help="hidden units H (default 200; deep: 100)")
    p.add_argument("--n-layers", type=positive_int, help="deep only: hidden layers (default 5)")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_const", const=0,
                   help="deep only: part 3's plain stack, Linear (with b) -> Tanh, no BatchNorm1d")
    p.add_argument("--dtype", choices=DTYPES, default=dtype, help=f"float32 or float64 (default {dtype})")
    p.add_argument("--init", choices=("lecture", "kaiming"), help="mlp only. lecture: plain standard "
                   "normal (default); kaiming: scaled for tanh (part 3)")
    p.add_argument("--seed", type=non_negative_int, default=SEED,
                   help=f"seed of init and minibatches (default {SEED}, the lecture's)")


def add_engine_args(p):
    p.add_argument("--engine", choices=runs.ENGINES, help="fast: the tuned NumPy step (default where "
                   "the model has one); reference: the readable lecture loop (layers.py, model.py, train.py)")
    p.add_argument("--processes", type=positive_int, metavar="N", help="fast engine: processes sharing "
                   f"a batch of more than {CHUNK} rows (default: one per {CHUNK}-row chunk, up to the usable cores; "
                   "the results are the same bits for any N)")


def model_options(args, argv) -> tuple[str, dict, str | None]:
    """(kind, sizes with the model's defaults filled in, MLP init) from the options; refuses one
    that the chosen model does not have."""
    cls = model_class(args.model)
    typed = typed_options(argv)
    if "init" in typed and args.model != "mlp":
        raise UsageError(f"--init sets the init of the mlp model; the {args.model!r} model has its lecture's "
                         f"own: drop --init")
    for key, flag in (("n_layers", "--n-layers"), ("batchnorm", "--no-batchnorm")):
        if getattr(args, key, None) is not None and key not in cls.DEFAULTS:
            raise UsageError(f"{flag} applies to the deep model only; drop it, or add --model deep")
    sizes = {k: getattr(args, k, None) for k in cls.DEFAULTS}
    return args.model, {k: d if sizes[k] is None else sizes[k] for k, d in cls.DEFAULTS.items()}, \
        (args.init or "lecture") if args.model == "mlp" else None


def typed_options(argv) -> set[str]:
    """Destinations of the options spelled out on the command line (`--lr 0.1`, `--lr=0.1`), so
    --resume can refuse a typed value even when it equals the default."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return {"batchnorm" if n == "no_batchnorm" else n for n in names}


def log(args, *msg):
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


def notes(args, lines):
    for line in lines:
        log(args, f"npmlp: note: {line}")


# ----------------------------------------------------------------------------- train

class StopFlag:
    """SIGINT/SIGTERM set the flag; the loop finishes its step, then saves and exits."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def new_run(args, out) -> runs.Run:
    kind, sizes, init = model_options(args, args.argv)
    engine = runs.check_engine(kind, args.engine, args.processes)
    decay_at = train_default(kind, "decay_at", 0.5) if args.decay_at is None else args.decay_at
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      lr_decayed=args.lr_decayed or args.lr / 10, decay_at=decay_at)
    return runs.Run.new(out, kind, sizes, cfg, args.data, args.split_seed, DTYPES[args.dtype], engine, init,
                        args.diagnose)


def cmd_train(args):
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise UsageError(f"--out {args.out} differs from the run's {out}; --resume continues {out} in place: "
                             f"drop --out")
        claimed: list[str] = []
        with runs.claim(out, claimed):
            typed = {k: getattr(args, k) for k in typed_options(args.argv) & RESUME_CHECKS}
            return train_and_finish(args, runs.Run.resume(out, typed, args.data, args.diagnose), claimed)
    out = Path(args.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    run = new_run(args, out)                      # every check that needs no files: before any is made
    claimed = []
    with runs.claim(out, claimed):
        runs.refuse_existing(out)                 # again: a run may have started meanwhile
        return train_and_finish(args, run, claimed)


RESUME_CHECKS = {"model", "block_size", "n_embd", "n_hidden", "n_layers", "batchnorm", "dtype", "init", "seed",
                 "split_seed", "engine", "steps", "batch_size", "lr", "lr_decayed", "decay_at"}   # a resume keeps the run's own


def train_and_finish(args, run: runs.Run, claimed) -> int:
    """Train `run` (its directory claimed) to the end or a signal, then evaluate and draw."""
    where = shlex.quote(str(run.out))
    runs.check_engine(run.model.kind, run.info["engine"], args.processes)
    notes(args, run.data.notes)                   # what the data loader cleaned: --quiet hides these
    for line in claimed + run.notes:              # ... not what concerns the run itself
        print(f"npmlp: note: {line}", file=sys.stderr)
    log(args, f"npmlp: {run.summary()}")
    from .progress import Progress
    # the helper processes fork before the progress bar (or anything else) starts a thread
    with runs.engine_steps(run.info["engine"], run.model, run.cfg.batch_size, args.processes) as steps, \
            StopFlag() as flag, Progress(run.cfg.steps, run.start, quiet=args.quiet) as bar:
        def on_step(step, loss):
            if (step + 1) % bar.every == 0:           # the per-step path stays a few comparisons
                bar.step(step, loss, run.cfg.lr_at(step))
            return flag.signum is not None
        run.train(steps, on_step)
        bar.finish(run.step)
    run.save()
    if not run.finished:
        print(f"npmlp: {signal.Signals(flag.signum).name}: stopped after step {run.step:,} of {run.cfg.steps:,}; "
              f"saved {run.ckpt}\nnpmlp: resume with: npmlp train --resume {where}", file=sys.stderr)
        return 128 + flag.signum
    try:
        metrics = run.finish()
        written = [run.out / "metrics.json", run.ckpt] + write_run_figures(args, run)
    except KeyboardInterrupt:
        print(f"npmlp: interrupted: training finished and saved in {run.ckpt}; " + (
              f"figures not written: run `npmlp plot {where}`" if (run.out / "metrics.json").exists() else
              f"evaluation not finished: run `npmlp train --resume {where}` to evaluate and draw the figures"),
              file=sys.stderr)
        return 130
    n = run.cfg.steps - run.start
    print(f"train loss {metrics['train_loss']:.4f}   dev loss {metrics['dev_loss']:.4f}   test loss "
          f"{metrics['test_loss']:.4f}   ({n:,} step{'s' * (n != 1)} in {run.train_seconds:.1f}s)")
    print("samples:", *metrics["samples"], sep="\n  ")
    print("wrote:", *written, sep="\n  ")
    return 0


def write_run_figures(args, run):
    """loss.png and embedding.png of a finished run (none with --no-plots). -> paths written."""
    if args.no_plots:
        return []
    from . import plots  # matplotlib only when a figure is drawn
    missing: list[str] = []
    written = plots.write_run_figures(run.out, run.model, run.vocab, run.lossi, run.cfg, notes=missing)
    if run.ratios is not None:                  # --diagnose: part 3's figures too
        from . import diagnose, gradcheck
        readings = diagnose.read(run.model, *gradcheck.minibatch(*run.data.train, run.cfg.batch_size, 0))
        written += diagnose.write_figures(run.out, readings, run.ratios, run.model.params, missing)
    notes(args, missing)
    return written


# ----------------------------------------------------------------------------- reading tools

def load_run(path):
    """RUN_DIR (or its model.npz) -> (model, vocab, meta, lossi, checkpoint path)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"run directory {p} does not exist; give a directory written by `npmlp train`")
    ckpt = p / "model.npz" if p.is_dir() else p
    if not ckpt.is_file():
        raise UsageError(f"{p} holds no model.npz; give a run directory written by `npmlp train`")
    return (*load_checkpoint(ckpt), ckpt)


def run_splits(args, meta, model, vocab) -> runs.Splits:
    data = runs.run_splits(args.data, meta, model, vocab)
    notes(args, data.notes)
    return data


def run_config(meta, ckpt):
    try:
        return TrainConfig(**meta["train"])
    except (KeyError, TypeError, NpmlpError):
        raise NpmlpError(f"checkpoint {ckpt} has no valid training config; it was not written by "
                         f"`npmlp train`") from None


def cmd_gradcheck(args):
    from . import gradcheck
    dtype = DTYPES[args.dtype]
    if args.run:
        typed = [f"--{k.replace('_', '-')}" for k in typed_options(args.argv)
                 if k in ("model", "block_size", "n_embd", "n_hidden", "n_layers", "batchnorm", "init")]
        if typed:
            raise UsageError(f"{typed[0]} sets a fresh model; drop it when checking --run {args.run}")
        model, vocab, meta, _, ckpt = load_run(args.run)
        data = run_splits(args, meta, model, vocab)
        model = type(model)({k: v.astype(dtype) for k, v in model.params.items()})
        what = f"the model in {ckpt}"
    else:
        kind, sizes, init = model_options(args, args.argv)
        data = runs.Splits(args.data, args.split_seed, sizes["block_size"])
        notes(args, data.notes)
        model = model_class(kind).init(data.vocab.size, **sizes, seed=args.seed, dtype=dtype,
                                       **({} if init is None else {"scheme": init}))
        what = f"a fresh {kind} model" + (f" (--init {init}, seed {args.seed})" if init else f" (seed {args.seed})")
    X, Y = gradcheck.minibatch(*data.train, args.batch_size, args.seed)
    rep = gradcheck.report(model, X, Y, coords=args.coords, seed=args.seed)
    sizes = ", ".join(f"{k} {v}" for k, v in model.sizes.items())
    print(f"gradcheck of {what}: {sizes}, {args.dtype}; one minibatch of {len(X)} training rows")
    print(f"loss {rep.loss:.6f}" + (f" (torch {rep.torch_loss:.6f})" if rep.torch_loss is not None else "") + "\n")
    print(gradcheck.format_table(rep.rows, dtype))
    bad = [r for r in rep.rows if not r.ok]
    if bad:
        why = ", ".join(f"d{r.name} ({' and '.join(r.failed)})" for r in bad)
        raise NpmlpError(f"{len(bad)} of {len(rep.rows)} gradients fail their tolerance: {why}; look first at "
                         f"d{bad[0].name}, the first to fail in backward order")
    print(f"\nall {len(rep.rows)} gradients pass")


def cmd_lr_find(args):
    from . import lrfind, plots
    from .progress import Progress
    if args.steps < 10:
        raise UsageError(f"--steps {args.steps} is too few for a sweep from 10^-3 to 10^0; use at least 10")
    out = runs.make_out_dir(Path(args.out or time.strftime("runs/lr-find-%Y%m%d-%H%M%S")))
    kind, sizes, init = model_options(args, args.argv)
    engine = runs.check_engine(kind, args.engine, args.processes)
    data = runs.Splits(args.data, args.split_seed, sizes["block_size"])
    notes(args, data.notes)
    if args.batch_size > len(data.train[0]):
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training split "
                         f"({len(data.train[0]):,} rows); use at most {len(data.train[0]):,}")
    model = model_class(kind).init(data.vocab.size, **sizes, seed=args.seed, dtype=DTYPES[args.dtype],
                                   **({} if init is None else {"scheme": init}))
    lre = np.linspace(-3, 0, args.steps)                      # the lecture's lre; lrs = 10**lre
    # the helper processes fork before the progress bar starts a thread
    with runs.engine_steps(engine, model, args.batch_size, args.processes) as steps, np.errstate(over="ignore", invalid="ignore"), \
            Progress(args.steps, quiet=args.quiet, every=max(1, args.steps // 100), desc="lr-find") as bar:
        losses = lrfind.sweep(steps, *data.train, lre, args.batch_size, args.seed,
                              on_step=lambda i, loss, lr: bar.step(i, loss, lr))
    ran = int(np.isfinite(losses).sum())
    if ran < 2:
        raise NpmlpError("the loss was NaN/inf from the first steps of the sweep; check the data and --init")
    suggested, best, smoothed = lrfind.suggest(lre[:ran], losses[:ran])
    path = plots.save(plots.lr_find_figure(lre[:ran], losses[:ran], smoothed, best, suggested), out / "lr_find.png")
    if ran < args.steps:
        print(f"the loss diverged at lr {10 ** lre[ran]:.3g}; the sweep stopped after {ran} steps")
    print(f"lowest smoothed loss {np.nanmin(smoothed):.3f} at lr 10^{best:.2f} = {10 ** best:.3g}")
    print(f"suggested learning rate: {10 ** suggested:.3g} (10^{suggested:.2f}, "
          f"{lrfind.MARGIN:g} below the minimum's exponent): npmlp train --lr {10 ** suggested:.2g}")
    print("wrote:", path, sep="\n  ")


def cmd_sample(args):
    model, vocab, meta, _, _ = load_run(args.run_dir)
    seed = args.seed if args.seed is not None else int((meta.get("train") or {}).get("seed", SEED)) + 10
    for name in sample(model, vocab, args.n, seed=seed, temperature=args.temperature):
        print(name)


def cmd_eval(args):
    model, vocab, meta, _, _ = load_run(args.run_dir)
    data = run_splits(args, meta, model, vocab)
    with np.errstate(over="ignore", invalid="ignore"):
        losses = {k: evaluate(model, *xy) for k, xy in data.items()}
    print("   ".join(f"{k} loss {v:.4f}" for k, v in losses.items()))


def cmd_plot(args):
    from . import gradcheck, plots
    model, vocab, meta, lossi, ckpt = load_run(args.run_dir)
    cfg = run_config(meta, ckpt)
    data = run_splits(args, meta, model, vocab)
    batch = gradcheck.minibatch(*data.train, cfg.batch_size, args.seed)
    out = runs.make_out_dir(Path(args.out)) if args.out else ckpt.parent
    missing: list[str] = []
    written = plots.write_run_figures(out, model, vocab, lossi, cfg, pca=args.pca, batch=batch, notes=missing)
    notes(args, missing)
    print("wrote:", *written, sep="\n  ")


def cmd_diagnose(args):
    from . import diagnose, gradcheck
    model, vocab, meta, _, ckpt = load_run(args.run_dir)
    cfg = run_config(meta, ckpt)
    data = run_splits(args, meta, model, vocab)
    readings = diagnose.read(model, *gradcheck.minibatch(*data.train, max(cfg.batch_size, 2), args.seed))
    ratios = diagnose.UpdateRatios.load(ckpt.parent / diagnose.RATIOS)
    print(f"{model.kind} model in {ckpt}, step {meta['step']:,} of {cfg.steps:,}; one minibatch of "
          f"{max(cfg.batch_size, 2)} training rows (seed {args.seed})\n")
    print(diagnose.tables(readings))
    print("\n" + (diagnose.ratio_summary(ratios, model.params) if ratios is not None and ratios.steps else
                  "update:data: not recorded; train with `npmlp train --diagnose` to sample it every "
                  f"{diagnose.EVERY} steps"))
    out = runs.make_out_dir(Path(args.out)) if args.out else ckpt.parent
    missing: list[str] = []
    written = diagnose.write_figures(out, readings, ratios, model.params, missing)
    notes(args, missing)
    print("wrote:", *written, sep="\n  ")


# ----------------------------------------------------------------------------- main

def build_parser():
    parser = Parser(prog="npmlp", description="A character-level MLP language model "
                                     "(makemore part 2) in NumPy, with every gradient written by hand.")
    parser.add_argument("--version", action="version", version=f"npmlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a run directory")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--steps", type=positive_int, default=200_000, help="SGD steps (default 200000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default 32)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--lr-decayed", type=positive_float, help="rate after the decay (default lr/10)")
    p.add_argument("--decay-at", type=fraction, help="fraction of steps where the rate drops (default 0.5; "
                   "deep: 0.75, part 3's 150,000 of 200,000)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run, bit-identically")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes about the data")
    p.add_argument("--no-plots", action="store_true", help="don't write loss.png and embedding.png")
    p.add_argument("--diagnose", action="store_true", help="sample the update:data ratios every 100 steps "
                   "and draw part 3's diagnostic figures at the end (see `npmlp diagnose`)")
    add_engine_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gradcheck", help="check each hand-written gradient against torch, finite "
                       "differences and the fast engine")
    add_data_args(p)
    add_model_args(p, dtype="float64")  # finite differences are always float64
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default 32)")
    p.add_argument("--coords", type=positive_int, default=20, help="coordinates per tensor for finite "
                   "differences (default 20)")
    p.add_argument("--run", metavar="RUN_DIR", help="check a trained model instead of a fresh one")
    p.add_argument("--quiet", action="store_true", help="no notes about the data")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("lr-find", help="the lecture's learning-rate sweep (10^-3 to 10^0), with a plot")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--steps", type=positive_int, default=1000, help="steps, one rate each (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default 32)")
    p.add_argument("--out", metavar="DIR", help="where lr_find.png goes (default runs/lr-find-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_args(p)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("sample", help="sample names from a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `npmlp train`")
    p.add_argument("-n", type=positive_int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=non_negative_int, help="sampling seed (default: the run's seed + 10, "
                   "the names `npmlp train` printed)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="divide the logits by this "
                   "(default 1; lower = safer names)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="train/dev/test loss of a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `npmlp train`")
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    p.add_argument("--quiet", action="store_true", help="no notes about the data")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="redraw a run's figures: loss, embedding and gradients")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `npmlp train`")
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    p.add_argument("--pca", action="store_true", help="embedding: the first two principal components "
                   "instead of C[:, 0] and C[:, 1]")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the gradient figure's minibatch")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: the run directory)")
    p.add_argument("--quiet", action="store_true", help="no notes about the data")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("diagnose", help="part 3's health readings: tanh saturation, gradients, grad:data and "
                       "update:data ratios, as tables and figures")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `npmlp train`")
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the minibatch read (default 0)")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: the run directory)")
    p.add_argument("--quiet", action="store_true", help="no notes about the data")
    p.set_defaults(func=cmd_diagnose)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(map(str, argv))
    args = build_parser().parse_args(argv)
    args.argv = argv
    from threadpoolctl import threadpool_limits
    try:
        # every product npmlp makes is small: a second BLAS thread gains little on an idle machine
        # and, on a busy one, waits for a core, making every product many times slower
        with threadpool_limits(1, user_api="blas"):
            return args.func(args) or 0
    except NpmlpError as e:
        print(f"npmlp: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("npmlp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
