"""`npmlp` console script: options in (options.py), calls to the run directory (rundir.py) and
the reading tools, lines out. A user's mistake ends in one line on stderr and exit 2 (usage) or
1 (runtime); never a traceback."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__, fast, train
from ..contract import MAKEMORE_TRAIN, SEQUENCES
from ..data import SPLIT_SEED, split_words
from ..fast.parallel import HelperFailed
from ..gradcheck import minibatch
from ..torch_mirrors import torch_hint
from ..train import TrainConfig, sample_stream
from . import registry, rundir
from .checkpoint import load_checkpoint
from .errors import NpmlpError, UsageError
from .files import claim, make_out_dir, output_folder
from .options import (
    DTYPES,
    MODEL_OPTIONS,
    TRAIN,
    TRAIN_OPTIONS,
    Parser,
    add_batch_arg,
    add_data_args,
    add_engine_args,
    add_model_args,
    add_train_args,
    check_batch,
    check_engine,
    flag,
    model_options,
    non_negative_int,
    option_text,
    positive_float,
    positive_int,
    train_config,
)
from .registry import make_model
from .signals import Interrupted, Saving, StopFlag, interrupts, signum_of

# ----------------------------------------------------------------------------- output

def log(args, *msg):
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


def notes(args, lines):
    for line in lines:
        log(args, f"npmlp: note: {line}")


# ----------------------------------------------------------------------------- train

def cmd_train(args):
    return resume_run(args) if args.resume else new_run(args)


def new_run(args):
    out = Path(args.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    kind, sizes, init = model_options(args)   # every check that needs no files: before any is made
    engine = check_engine(kind, args.engine, args.processes, sizes)
    cfg = train_config(args, kind)
    rundir.refuse_existing(out)
    with output_folder(out):                      # then the folder, before any work (removed if nothing is saved)
        run = rundir.Run.new(out, kind, sizes, cfg, engine, args.data, args.split_seed, DTYPES[args.dtype], init,
                             args.diagnose, args.typed)
        claimed: list[str] = []
        with claim(out, claimed):
            rundir.refuse_existing(out)           # again: a run may have started meanwhile
            return train_and_finish(args, run, claimed)


def resume_run(args):
    out = Path(args.resume)
    if not out.exists():
        raise UsageError(f"--resume {out}: no such run directory; give one written by `npmlp train`")
    if out.is_file():                             # a run's checkpoint, as eval and sample take it
        if out.name != "model.npz":
            raise UsageError(f"--resume continues a run from its last checkpoint, model.npz, not {out.name}: "
                             f"give its run directory, --resume {shlex.quote(str(out.parent))}")
        out = out.parent
    if args.out and Path(args.out) != out:
        raise UsageError(f"--out {args.out} differs from the run's {out}; --resume continues {out} in place: "
                         f"drop --out")
    typed = {k: getattr(args, k) for k in args.typed & RESUME_CHECKS}
    fix = (f"--resume continues a run in place: make {out} writable, or copy the run (cp -r {shlex.quote(str(out))} "
           f"NEW) and resume the copy")
    try:
        if out.is_dir():
            make_out_dir(out, fix)                # only a probe: the folder exists
    except UsageError:                            # a finished or damaged run says so, not its folder
        rundir.load_resumable(out, typed, args.diagnose)
        raise
    claimed: list[str] = []
    with claim(out, claimed, fix):
        run = rundir.Run.resume(out, typed, args.data, args.diagnose)
        check_engine(run.model.kind, run.record.engine, args.processes, run.model.sizes)   # the run's own
        return train_and_finish(args, run, claimed)


RESUME_CHECKS = {*MODEL_OPTIONS, *TRAIN_OPTIONS, "dtype", "seed", "split_seed", "engine"}   # a run's own, kept


def train_and_finish(args, run: rundir.Run, claimed) -> int:
    """Train `run` (its directory claimed) to the end or a signal, then evaluate and draw."""
    where = shlex.quote(str(run.out))
    notes(args, run.data.notes)                   # what the data loader cleaned: --quiet hides these
    for line in claimed + run.notes:              # ... not what concerns the run itself
        print(f"npmlp: note: {line}", file=sys.stderr)
    log(args, f"npmlp: {run.summary()}")
    from .progress import Progress
    # the helper processes fork before the progress bar (or anything else) starts a thread
    with fast.steps(run.record.engine, run.model, run.cfg.rows(len(run.data.train[0])), args.processes,
                    run.opt) as steps, \
            StopFlag() as flag, Progress(run.cfg.steps, run.start, quiet=args.quiet) as bar:
        def on_step(step, loss):
            if (step + 1) % bar.every == 0:           # the per-step path stays a few comparisons
                bar.step(step, loss, run.cfg.lr_at(step))
            return flag.signum is not None

        def on_eval(step, train_loss, dev_loss, best):
            bar.write(f"step {step:,}: train loss {train_loss:.4f}, dev loss {dev_loss:.4f} (estimates)"
                      + (f"; the best so far, saved in {run.best_ckpt}" if best else ""))
        run.on_eval = on_eval
        run.train(steps, on_step)
        bar.finish(run.step)
        bar.close()
        earlier = run.ckpt.is_file()
        try:
            with Saving(run.ckpt) as saving:      # a save that has begun finishes (signals.py)
                run.save()
        except KeyboardInterrupt as e:            # a second signal while it ran
            raise Interrupted(signum_of(e), "the save was aborted; " + (
                f"{run.ckpt} holds the checkpoint of an earlier save: resume with: npmlp train --resume {where}"
                if earlier else "nothing of this run is saved")) from None
    if not run.finished:
        print(f"npmlp: {signal.Signals(flag.signum).name}: stopped after step {run.step:,} of {run.cfg.steps:,}; "
              f"saved {run.ckpt}\nnpmlp: resume with: npmlp train --resume {where}", file=sys.stderr)
        return 128 + flag.signum
    try:
        if saving.signum is not None:              # a signal held while the last save ran: as one now
            raise Interrupted(saving.signum)
        metrics = run.finish()
        written = [run.out / "metrics.json", run.ckpt] + write_run_figures(args, run)
    except KeyboardInterrupt as e:
        print(f"npmlp: interrupted: training finished and saved in {run.ckpt}; " + (
              f"figures not written: run `npmlp plot {where}`" if (run.out / "metrics.json").exists() else
              f"evaluation not finished: run `npmlp train --resume {where}` to evaluate and draw the figures"),
              file=sys.stderr)
        return 128 + signum_of(e)
    except NpmlpError as e:                       # metrics.json or a figure could not be written
        raise NpmlpError(f"{e}; training finished and saved in {run.ckpt}: " + (
            f"`npmlp plot {where} --out DIR` draws the figures" if (run.out / "metrics.json").exists() else
            f"`npmlp train --resume {where}` evaluates and draws the figures once {run.out} can be written")) from None
    n = run.cfg.steps - run.start
    used = f"; the model of step {metrics['step']:,}, the best dev estimate ({run.best_ckpt})" \
        if metrics["step"] != run.cfg.steps else ""
    print(f"train loss {metrics['train_loss']:.4f}   dev loss {metrics['dev_loss']:.4f}   test loss "
          f"{metrics['test_loss']:.4f}   ({n:,} step{'s' * (n != 1)} in {run.train_seconds:.1f}s{used})")
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
        from . import diagnose
        readings = diagnose.read(run.model, *minibatch(*run.data.train, run.cfg.batch_size, 0))
        written += plots.write_diagnose_figures(run.out, readings, run.ratios, run.model.params, missing,
                                                run.vocab.itos)
    notes(args, missing)
    return written


# ----------------------------------------------------------------------------- reading tools

RUNS = Path("runs")     # where `npmlp train` writes a run by default


def newest_run(args) -> Path:
    """The run a reading command takes when none is named: the newest checkpoint under runs/."""
    found = [c.parent for c in RUNS.glob("*/model.npz") if c.is_file()]
    if not found:
        raise UsageError(f"no run under {RUNS}/ here; train one first (npmlp train), or name a run directory")
    run = max(found, key=lambda d: (d / "model.npz").stat().st_mtime)
    log(args, f"npmlp: note: reading the newest run, {run}")
    return run


def load_run(args, path=None):
    """RUN_DIR (or one of its checkpoints) -> (model, vocab, meta, lossi, checkpoint path). A run
    that estimated its dev loss (--eval-every) is read at its best estimate (best.npz) unless
    args.last asks for the last checkpoint (model.npz)."""
    given = path if path is not None else args.run_dir
    p = Path(given) if given is not None else newest_run(args)
    if not p.exists():
        raise UsageError(f"run directory {p} does not exist; give a directory written by `npmlp train`")
    ckpt = p / "model.npz" if p.is_dir() else p
    if p.is_dir() and (p / rundir.BEST).is_file() and not getattr(args, "last", False):
        ckpt = p / rundir.BEST
    if not ckpt.is_file():
        raise UsageError(f"{p} holds no model.npz; give a run directory written by `npmlp train`")
    loaded = load_checkpoint(ckpt)
    if ckpt.name == rundir.BEST:
        log(args, f"npmlp: note: reading {ckpt}, the model of step {loaded[2]['step']:,} (the best dev estimate); "
                  f"--last reads the last checkpoint, model.npz")
    return (*loaded, ckpt)


def read_splits(args, meta, model, vocab, ckpt, batch_size: int | None = 1):
    """The run's rows (rundir.run_splits), refused before they are built if they and a batch of
    batch_size rows cannot fit in memory; what the data loader cleaned, noted."""
    data = rundir.run_splits(args.data, meta, model, vocab, batch_size, subject=f"the run in {ckpt}")
    notes(args, data.notes)
    return data


def cmd_gradcheck(args):
    from .. import gradcheck
    dtype = DTYPES[args.dtype]
    if args.run:
        typed = [flag(k) for k in (*MODEL_OPTIONS, "split_seed") if k in args.typed]
        if typed:   # the run's own model and split are checked
            raise UsageError(f"{typed[0]} sets a fresh model; drop it when checking --run {args.run}")
        model, vocab, meta, _, ckpt = load_run(args, args.run)
        data = read_splits(args, meta, model, vocab, ckpt, args.batch_size)
        model = model.like({k: v.astype(dtype) for k, v in model.params.items()})
        what = f"the model in {ckpt}"
    else:
        kind, sizes, init = model_options(args)
        data = rundir.fresh_splits(kind, sizes, args.data, args.split_seed, args.batch_size, typed=args.typed)
        notes(args, data.notes)
        model = make_model(kind, data.vocab.size, rundir.fresh_sizes(sizes, data), args.seed, dtype, init)
        what = f"a fresh {kind} model" + (f" (--init {init}, seed {args.seed})" if init else f" (seed {args.seed})")
    check_batch(args.batch_size, model, len(data.train[0]))
    checked = model.without_dropout()           # the same function at every forward, as torch's
    if checked is not model:
        log(args, "npmlp: note: dropout is checked at 0: training draws new masks at every forward, which "
                  "finite differences cannot follow (the dropout pair itself is held to torch by the tests)")
        model = checked
    X, Y = minibatch(*data.train, args.batch_size or len(data.train[0]), args.seed)
    grads = fast.gradients(model, X, Y) if fast.default_engine(model.spec, model.sizes) == "fast" else None
    rep = gradcheck.report(model, X, Y, coords=args.coords, seed=args.seed, fast=grads)
    sizes = ", ".join(f"{k} {v}" for k, v in model.sizes.items())
    print(f"gradcheck of {what}: {sizes}, {args.dtype}; one minibatch of {len(X)} training rows")
    print(f"loss {rep.loss:.6f}" + (f" (torch {rep.torch_loss:.6f})" if rep.torch_loss is not None else "") + "\n")
    print(gradcheck.format_table(rep.rows, dtype))
    bad = [r for r in rep.rows if not r.ok]
    if bad:
        # the first few by name; the table above lists every one
        why = ", ".join(f"d{r.name} ({' and '.join(r.failed)})" for r in bad[:3]) + \
            (f" and {len(bad) - 3} more in the table" if len(bad) > 3 else "")
        raise NpmlpError(f"{len(bad)} of {len(rep.rows)} gradients fail their tolerance: {why}; look first at "
                         f"d{bad[0].name}, the first to fail in backward order")
    print(f"\nall {len(rep.rows)} gradients pass")


def cmd_lr_find(args):
    from . import lrfind, plots
    from .progress import Progress
    kind, sizes, init = model_options(args)
    low, high = lrfind.sweep_range(registry.train_default(kind, "lr", TRAIN.lr))
    if args.steps < 10:
        raise UsageError(f"--steps {args.steps} is too few for a sweep from 10^{low:g} to 10^{high:g}; use at "
                         f"least 10")
    engine = check_engine(kind, args.engine, args.processes, sizes)
    with output_folder(Path(args.out or time.strftime("runs/lr-find-%Y%m%d-%H%M%S"))) as out:
        data = rundir.fresh_splits(kind, sizes, args.data, args.split_seed, args.batch_size, args.steps, args.typed)
        notes(args, data.notes)
        model = make_model(kind, data.vocab.size, rundir.fresh_sizes(sizes, data), args.seed, DTYPES[args.dtype],
                           init)
        check_batch(args.batch_size, model, len(data.train[0]))
        lre = np.linspace(low, high, args.steps)                  # the lecture's lre; lrs = 10**lre
        base = TrainConfig(**{**registry.spec(kind).train, "steps": args.steps, "batch_size": args.batch_size,
                              "optimizer": args.optimizer, "seed": args.seed, "reg": 0.0, "eval_every": 0})
        opt = train.optimizer(base, model.params)                 # AdamW's moments carry through the sweep
        # the helper processes fork before the progress bar starts a thread
        with fast.steps(engine, model, args.batch_size or len(data.train[0]), args.processes, opt) as steps, \
                np.errstate(over="ignore", invalid="ignore"), \
                Progress(args.steps, quiet=args.quiet, every=max(1, args.steps // 100), desc="lr-find") as bar:
            losses = lrfind.sweep(steps, *data.train, lre, base, on_step=lambda i, loss, lr: bar.step(i, loss, lr),
                                  model=model)
        ran = int(np.isfinite(losses).sum())
        if ran < 2:
            raise NpmlpError("the loss was NaN/inf from the first steps of the sweep; check the data and --init")
        suggested, best, smoothed = lrfind.suggest(lre[:ran], losses[:ran])
        path = plots.save(plots.lr_find_figure(lre[:ran], losses[:ran], smoothed, best, suggested),
                          out / "lr_find.png")
    if ran < args.steps:
        print(f"training diverged at lr {10 ** lre[ran]:.3g}; the sweep stopped after {ran} steps")
    print(f"lowest smoothed loss {np.nanmin(smoothed):.3f} at lr 10^{best:.2f} = {10 ** best:.3g}")
    swept = [option_text(k, shlex.quote(str(getattr(args, k))) if k == "data" else getattr(args, k))
             for k in SWEPT if k in args.typed]
    print(f"suggested learning rate: {10 ** suggested:.3g} (10^{suggested:.2f}, "
          f"{lrfind.MARGIN:g} below the minimum's exponent): "
          + " ".join(["npmlp train", *filter(None, swept), f"--lr {10 ** suggested:.2g}"]))
    print("wrote:", path, sep="\n  ")


SWEPT = (*MODEL_OPTIONS, "dtype", "seed", "batch_size", "optimizer", "engine", "data", "split_seed")   # for train


def cmd_sample(args):
    """Each name printed as it is drawn (train.sample_stream): -n 10000000 runs in constant memory;
    Ctrl-C, or a reader that goes away (`| head`), stops it."""
    model, vocab, meta, _, ckpt = load_run(args)
    seed = args.seed if args.seed is not None else int(meta["train"]["seed"]) + 10
    count, stop = 0, []
    seen = split_names(args, meta)                 # name -> its split, for the report (None: no data)
    where: dict[str, int] = {}

    def on_ctrl_c(signum, frame):
        # Ctrl-C stops the loop between two names, so the count is exact (an exception could land
        # between a name's write and its count); a second Ctrl-C stops at once, even a blocked write
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN     # a background job's: leave it so
    previous = None if ignored else signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        for name in sample_stream(model, vocab, args.n, seed=seed, temperature=args.temperature, top_k=args.top_k):
            sys.stdout.write(name + "\n")           # one write: Ctrl-C never cuts a name in two
            count += 1
            if seen is not None:
                split = seen.get(name[:-1] if name.endswith(".") else name, "new")
                where[split] = where.get(split, 0) + 1
            if stop or getattr(sys.stdout, "reader_gone", False):
                break
    except ValueError as e:
        raise NpmlpError(f"cannot sample from {ckpt}: {e}; the checkpoint is damaged, or diverged: retrain "
                         f"with a lower --lr") from None
    except KeyboardInterrupt as e:                  # a second Ctrl-C, or SIGTERM / SIGHUP (signals.py)
        stop.append(signum_of(e))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if seen is not None and count and not stop:
        splits = ", ".join(f"{where.get(k, 0):,} in the {k} split" for k in ("train", "dev", "test"))
        log(args, f"npmlp: of {count:,} name{'s' * (count != 1)}: {splits}, {where.get('new', 0):,} new")
    if stop:
        print(f"npmlp: interrupted after {count:,} of {args.n:,} names", file=sys.stderr)
        return 128 + stop[0]


def split_names(args, meta) -> dict | None:
    """name -> 'train', 'dev' or 'test': the run's split of its names (makemore.py's sample report),
    or None when its names file cannot be read (the report is then left out, with a note)."""
    from ..loading import load_words, words_digest
    record = rundir.RunRecord.from_json(meta["run"])
    try:
        words = load_words(rundir.run_data(args.data, record))
    except NpmlpError as e:
        log(args, f"npmlp: note: no report of which names are in the training data: {e}")
        return None
    if record.data_sha256 is not None and words_digest(words) != record.data_sha256:
        log(args, "npmlp: note: no report of which names are in the training data: the names file differs from "
                  "the run's; give the original with --data FILE")
        return None
    seen: dict[str, str] = {}
    for split, part in zip(("test", "dev", "train"), reversed(split_words(words, record.split_seed)), strict=True):
        seen.update(dict.fromkeys(part, split))      # a name in two splits counts as the earlier one
    return seen


def cmd_eval(args):
    model, vocab, meta, _, ckpt = load_run(args)
    data = read_splits(args, meta, model, vocab, ckpt)
    with np.errstate(over="ignore", invalid="ignore"):
        losses = {k: fast.evaluate(model, *xy, meta["run"]["engine"]) for k, xy in data.items()}   # as the run did
    bad = [k for k, v in losses.items() if not np.isfinite(v)]
    if bad:
        raise NpmlpError(f"the model in {ckpt} gives a NaN/inf loss on the {' and '.join(bad)} split: its "
                         f"parameters overflow; the checkpoint is damaged, or diverged: retrain with a lower --lr")
    print("   ".join(f"{k} loss {v:.4f}" for k, v in losses.items()))
    if meta["run"].get("imported") and meta["step"] == 0:
        print(f"npmlp: note: {ckpt} holds makemore.py's weights ({meta['run']['imported']}); makemore.py trained on "
              f"all but 1,000 names, so the dev and test names of this split are not held out for it", file=sys.stderr)


TORCH_HINT = torch_hint()


def cmd_import_makemore(args):
    """makemore.py's model.pt -> a run directory at step 0 (makemore.py's AdamW settings) that
    every command reads and --resume trains on, with fresh moments as makemore.py's own --resume."""
    from ..contract import from_makemore
    from ..torch_mirrors import load_makemore, torch_available
    kind = registry.makemore_kind(args.type)
    cls = registry.model_class(kind)
    src, out = Path(args.model_pt), Path(args.out)
    if not src.is_file():
        raise UsageError(f"{src} is not a file; give the model.pt makemore.py wrote in its --work-dir")
    if not torch_available():
        raise NpmlpError(f"reading makemore.py's {src} needs torch: {TORCH_HINT}")
    if args.n_head is not None and "n_head" not in cls.spec.unshaped:
        raise UsageError(f"--n-head: a makemore.py {args.type} has no attention heads; drop it")
    rundir.refuse_existing(out)
    with output_folder(out):
        try:
            state = load_makemore(src)
        except Exception as e:               # not a zip, not torch's, not tensors: whatever torch.load says
            raise NpmlpError(f"cannot read {src} as makemore.py's model.pt ({str(e).splitlines()[0][:200]})") from None
        sizes = {k: getattr(args, k) for k in ("n_head",) if k in cls.spec.unshaped and getattr(args, k) is not None}
        data = rundir.splits(args.data, SPLIT_SEED, None if cls.spec.data == SEQUENCES else cls.spec.context,
                             cls.spec.data)       # a sequence model's positions: its names' longest + 1
        notes(args, data.notes)
        if "block_size" in cls.spec.unshaped:
            sizes["block_size"] = data.block_size
        try:
            model = from_makemore(state, args.type, **sizes)
        except (ValueError, KeyError) as e:
            if args.n_head is not None and "n_head" in str(e):      # the heads the user gave split nothing
                raise UsageError(f"--n-head {args.n_head}: {e}") from None
            raise NpmlpError(f"{src} is not a makemore.py --type {args.type} state_dict: {e}") from None
        bad = [k for k, a in model.params.items() if not np.isfinite(a).all()]
        if bad:
            raise NpmlpError(f"{src}: {bad[0]} holds NaN or inf; it is damaged, or its training diverged")
        if model.vocab_size != data.vocab.size:
            raise NpmlpError(f"{src} has a vocabulary of {model.vocab_size}, the names in {data.source or 'names.txt'} "
                             f"one of {data.vocab.size}; give the --data makemore.py trained on")
        if model.block_size != data.block_size:
            raise NpmlpError(f"{src} reads {model.block_size} positions, the names in {data.source or 'names.txt'} "
                             f"need {data.block_size} (their longest + 1); give the --data makemore.py trained on")
        engine = fast.default_engine(cls.spec, model.sizes)
        cfg = TrainConfig(**MAKEMORE_TRAIN)          # makemore.py's own, whatever npmlp trains this model with
        record = rundir.RunRecord(engine, str(data.source.resolve()) if data.source else None, SPLIT_SEED, data.digest,
                                  cls.spec.inits[-1] if cls.spec.inits else None, fast.ARITHMETIC[engine], parts=0,
                                  imported=str(src.resolve()))
        run = rundir.Run(out, model, data.vocab, cfg, record, np.zeros(cfg.steps, np.float32), 0, data)
        run.save(0)
    where = shlex.quote(str(out))
    print(f"imported {src}: makemore.py's {args.type}, {model.num_params:,} parameters ({model.dtype}), "
          f"{', '.join(f'{k} {v}' for k, v in model.sizes.items())}")
    print(f"wrote {run.ckpt} (step 0; train on with: npmlp train --resume {where} --steps N)")
    print(f"note: makemore.py trained on all but 1,000 names, so this split's dev and test names are not held out "
          f"for it; npmlp eval {where}")


def cmd_export_makemore(args):
    """A run's model -> a model.pt makemore.py's --sample-only loads; prints that command line."""
    from ..contract import to_makemore
    from ..loading import atomic_open
    from ..torch_mirrors import save_makemore, torch_available
    model, vocab, meta, _, ckpt = load_run(args)
    mm = model.spec.makemore
    if mm is None:
        have = [k for k, c in registry.MODELS.items() if c.spec.makemore is not None]
        raise UsageError(f"makemore.py has no {model.kind} model; export-makemore writes {', '.join(have)}")
    if not torch_available():
        raise NpmlpError(f"writing makemore.py's model.pt needs torch: {TORCH_HINT}")
    out = Path(args.out)
    path = out if out.suffix == ".pt" else out / "model.pt"
    try:
        with atomic_open(path, "wb") as f:
            save_makemore(to_makemore(model), f)
    except OSError as e:
        raise NpmlpError(f"cannot write {path}: {e.strerror or e}; choose another --out") from None
    data = meta["run"].get("data")
    flags = [f"{o.makemore} {model.sizes[o.name]}" for o in model.spec.options if o.makemore]
    work = shlex.quote(str(path.parent))
    cmd = " ".join(["python makemore.py", f"-i {shlex.quote(data) if data else 'names.txt'}", f"-o {work}",
                    f"--type {mm.type}", *flags, "--sample-only"])
    print(f"wrote {path}: the model of {ckpt} (step {meta['step']:,}) as makemore.py's --type {mm.type}")
    print("makemore.py samples from it with:" + ("" if path.name == "model.pt" else
                                                  f" (after renaming it {path.parent / 'model.pt'})"))
    print(f"  {cmd}")


def figures_folder(args, ckpt):
    """Where plot and diagnose write: --out, else the run directory (checked, like every output
    folder, before any work: output_folder)."""
    if args.out:
        return output_folder(Path(args.out))
    return output_folder(ckpt.parent, "give --out DIR to write the figures elsewhere")


def cmd_plot(args):
    from . import plots
    model, vocab, meta, lossi, ckpt = load_run(args)
    cfg = TrainConfig(**meta["train"])           # load_checkpoint checked it
    table = model.spec.embedding
    if args.pca and table is None:
        raise UsageError(f"--pca: the {model.kind} model in {ckpt} embeds no characters, so there is no "
                         f"embedding figure; drop --pca")
    if args.pca and table is not None and model.params[table].shape[1] < 2:
        raise UsageError(f"--pca: the model in {ckpt} embeds each character in {model.params[table].shape[1]} "
                         f"dimension, which has no principal components to choose; drop --pca")
    with figures_folder(args, ckpt) as out:
        data = read_splits(args, meta, model, vocab, ckpt, cfg.batch_size)
        batch = minibatch(*data.train, cfg.rows(len(data.train[0])), args.seed)
        missing: list[str] = []
        written = plots.write_run_figures(out, model, vocab, lossi, cfg, pca=args.pca, batch=batch, notes=missing)
    notes(args, missing)
    print("wrote:", *written, sep="\n  ")


def cmd_diagnose(args):
    from . import diagnose, plots
    model, vocab, meta, _, ckpt = load_run(args)
    cfg = TrainConfig(**meta["train"])           # load_checkpoint checked it
    side = ckpt.parent / diagnose.RATIOS
    ratios = diagnose.UpdateRatios.load(side, model.params, meta["step"])   # checked like the checkpoint
    recorded = meta["run"].get("diagnose", False)
    with figures_folder(args, ckpt) as out:
        batch = max(cfg.batch_size or TRAIN.batch_size, 2)      # a full-batch run is read on a minibatch
        data = read_splits(args, meta, model, vocab, ckpt, batch)
        readings = diagnose.read(model, *minibatch(*data.train, batch, args.seed))
        missing: list[str] = []
        written = plots.write_diagnose_figures(out, readings, ratios, model.params, missing, vocab.itos)
    # the figures first: the tables go to stdout, which a reader may close (`| head`)
    print(f"{model.kind} model in {ckpt}, step {meta['step']:,} of {cfg.steps:,}; one minibatch of "
          f"{batch} training rows (seed {args.seed})\n")
    print(diagnose.tables(readings))
    if ratios is not None and ratios.steps:
        print("\n" + diagnose.ratio_summary(ratios, model.params))
    elif recorded and ratios is None:
        print(f"\nupdate:data: sampled by --diagnose into {side}, which is missing")
        print(f"npmlp: note: {side} is missing: the update:data ratios this run recorded (--diagnose) are lost",
              file=sys.stderr)                  # about the run itself: shown under --quiet too
    else:
        print(f"\nupdate:data: not recorded; train with `npmlp train --diagnose` to sample it every "
              f"{diagnose.EVERY} steps")
    notes(args, missing)
    print("wrote:", *written, sep="\n  ")


# ----------------------------------------------------------------------------- main

def add_last_arg(p):
    p.add_argument("--last", action="store_true", help="a run with --eval-every is read at its best dev "
                   "estimate (best.npz); --last reads its last checkpoint (model.npz) instead")


def add_run_arg(p):
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory written by `npmlp train`, or "
                   "one of its checkpoints (default: the newest run under runs/); every model's runs are read")
    add_last_arg(p)


def add_quiet_arg(p, progress: bool = True):
    p.add_argument("--quiet", action="store_true", help=("no progress bar and " if progress else "") +
                   "no notes; the results (and errors) are printed all the same")


def command(sub, name: str, summary: str, example: str, page: str, more: str = ""):
    """A subcommand with its one-line summary, the example and the manual's page its --help ends with."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + "." + more,
                          epilog=f"example:\n  {example}\n\nmanual: docs/{page} (in the repository and its sdist)",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser():
    parser = Parser(prog="npmlp", description="The makemore course's character-level language models in NumPy, "
                                              "with every gradient written by hand.",
                    epilog="manual: docs/commands.md (in the repository and its sdist); `npmlp COMMAND --help`")
    parser.add_argument("--version", action="version", version=f"npmlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command(sub, "train", "train a model and write a run directory", "npmlp train --model wavenet --out runs/w",
                "commands.md", " Prints the train/dev/test loss and 20 names at the end; Ctrl-C (or SIGTERM, "
                "SIGHUP) saves a checkpoint that --resume continues.")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run, bit-identically")
    add_quiet_arg(p)
    p.add_argument("--no-plots", action="store_true", help="don't write loss.png and embedding.png")
    p.add_argument("--diagnose", action="store_true", help="sample the update:data ratios every 100 steps "
                   "and draw part 3's diagnostic figures at the end (see `npmlp diagnose`)")
    add_engine_args(p)
    p.set_defaults(func=cmd_train)

    p = command(sub, "gradcheck", "check each hand-written gradient against torch, finite differences and the "
                "fast engine", "npmlp gradcheck --model transformer --dtype float32", "commands.md",
                " Exits 1 if any gradient fails. torch is optional: without it the torch column says so and "
                "the finite differences decide.")
    add_data_args(p)
    add_model_args(p, dtype="float64")  # finite differences are always float64
    add_batch_arg(p, per_model=False)
    p.add_argument("--coords", type=positive_int, default=20, help="coordinates per tensor for finite "
                   "differences (default 20)")
    p.add_argument("--run", metavar="RUN_DIR", help="check a trained model instead of a fresh one")
    add_last_arg(p)
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_gradcheck)

    p = command(sub, "lr-find", "the lecture's learning-rate sweep, with a plot and a suggested rate",
                "npmlp lr-find --model deep", "commands.md", " It sweeps from 1/100 to 10 times the model's "
                "default rate (the lecture's 10^-3 to 10^0 around 0.1), one training step per rate.")
    add_data_args(p)
    add_model_args(p)
    p.typed("--steps", type=positive_int, default=1000, help="steps, one rate each (default 1000)")
    add_batch_arg(p)
    p.typed("--optimizer", choices=train.OPTIMIZERS, default=lambda args: registry.train_default(
        args.model, "optimizer", TRAIN.optimizer), help="sgd or adamw (default: the model's own)")
    p.add_argument("--out", metavar="DIR", help="where lr_find.png goes (default runs/lr-find-<timestamp>)")
    add_quiet_arg(p)
    add_engine_args(p)
    p.set_defaults(func=cmd_lr_find)

    p = command(sub, "sample", "sample names from a trained model, as they are drawn", "npmlp sample runs/w -n 5 "
                "--top-k 3", "commands.md", " Then one line says how many are in the run's train, dev and "
                "test splits, and how many are new.")
    add_run_arg(p)
    p.add_argument("-n", type=positive_int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=non_negative_int, help="sampling seed (default: the run's seed + 10, "
                   "the names `npmlp train` printed)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="divide the logits by this "
                   "(default 1; lower = safer names)")
    p.add_argument("--top-k", type=positive_int, metavar="K", help="draw from the K most likely characters only "
                   "(makemore.py's --top-k; ties with the K-th are kept; default: all)")
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved (for the report of "
                   "which names are in its splits)")
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_sample)

    p = command(sub, "eval", "the train/dev/test loss of a trained model, per character", "npmlp eval runs/w",
                "commands.md")
    add_run_arg(p)
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_eval)

    p = command(sub, "plot", "redraw a run's figures: loss, embedding and gradients", "npmlp plot runs/w --pca",
                "commands.md")
    add_run_arg(p)
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    p.add_argument("--pca", action="store_true", help="embedding: the first two principal components "
                   "instead of its first two columns")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the gradient figure's minibatch")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: the run directory)")
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_plot)

    p = command(sub, "diagnose", "a network's health: tanh saturation, gradients, grad:data and update:data "
                "ratios, through time and attention, as tables and figures", "npmlp diagnose runs/w",
                "parts-3-4.md", " A recurrent model adds its readings per position (vanishing gradients), "
                "a Transformer each head's attention pattern and the residual stream's size.")
    add_run_arg(p)
    p.add_argument("--data", metavar="FILE", help="the run's names file, if it has moved")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the minibatch read (default 0)")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: the run directory)")
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_diagnose)

    p = command(sub, "import-makemore", "a run directory from makemore.py's model.pt (needs torch)",
                "npmlp import-makemore out/model.pt --type transformer --out runs/mm", "makemore.md",
                " The run is at step 0 with makemore.py's AdamW settings: `npmlp train --resume RUN --steps N` "
                "trains on, every other command reads it.")
    p.add_argument("model_pt", metavar="MODEL_PT", help="the model.pt makemore.py wrote in its --work-dir")
    p.add_argument("--type", required=True, metavar="KIND", help="makemore.py's --type of that model")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    p.add_argument("--data", metavar="FILE", help="the names makemore.py trained on (default: $NPMLP_DATA, "
                   "then the cached download of names.txt)")
    p.add_argument("--n-head", type=positive_int, metavar="N", help="a transformer's attention heads, which no "
                   "shape records (default 4, makemore.py's)")
    add_quiet_arg(p, progress=False)
    p.set_defaults(func=cmd_import_makemore)

    p = command(sub, "export-makemore", "a run's model as makemore.py's model.pt (needs torch)",
                "npmlp export-makemore runs/mm --out out/model.pt", "makemore.md",
                " It prints the makemore.py command line that samples from it.")
    add_run_arg(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the model.pt to write (or a folder to write "
                   "model.pt in: makemore.py reads WORK_DIR/model.pt)")
    p.set_defaults(func=cmd_export_makemore)
    return parser


class Stdout:
    """sys.stdout (or sys.stderr) while a command runs. A reader that goes away (`npmlp diagnose RUN
    | head -1`), or a stream closed from the start (`>&-`, `2>&-`), is no error of the command: the
    rest of its output is dropped (its file descriptor pointed at /dev/null, so nothing fails at
    exit either), the command still writes its files and exits as it would have. Any other failure
    to write stdout (`> /dev/full`) is kept in `failed`, for main to report once the files are
    written; stderr's (`2>/dev/full`, a terminal closed under the run) have nowhere to be reported
    and are only dropped. `reader_gone` tells a command whose only product is stdout (sample) to stop."""

    def __init__(self, stream):
        self.stream, self.reader_gone, self.failed = stream, stream is None, None

    def write(self, text):
        if not self.reader_gone:
            try:
                self.stream.write(text)
            except (OSError, ValueError) as e:          # ValueError: a stream closed meanwhile
                self._gone(e)
        return len(text)

    def flush(self):
        if not self.reader_gone:
            try:
                self.stream.flush()
            except (OSError, ValueError) as e:
                self._gone(e)

    def _gone(self, e: Exception):
        self.reader_gone = True
        if not isinstance(e, BrokenPipeError):
            self.failed = e
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):   # not a real file (pytest's capture): nothing to redirect
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def keep_open(fd: int) -> None:
    """A standard stream closed from the start (`2>&-`) gets /dev/null as its descriptor, so that no
    file npmlp opens (a checkpoint) takes that number and receives what is meant for the stream."""
    try:
        os.fstat(fd)
    except OSError:
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(map(str, argv))
    for fd in (1, 2):
        keep_open(fd)
    stdout, stderr = sys.stdout, sys.stderr = Stdout(sys.stdout), Stdout(sys.stderr)
    try:
        args = build_parser().parse(argv)
        from threadpoolctl import threadpool_limits
        # every product npmlp makes is small: a second BLAS thread gains little on an idle machine
        # and, on a busy one, waits for a core, making every product many times slower. NaN/inf are
        # checked where they matter (divergence, a damaged checkpoint): NumPy's warnings of them
        # would only be noise. SIGTERM and SIGHUP end a command as Ctrl-C does (signals.py).
        with threadpool_limits(1, user_api="blas"), np.errstate(all="ignore"), interrupts():
            code = args.func(args) or 0
        stdout.flush()
        if stdout.failed is not None and code == 0:
            raise NpmlpError(f"cannot write to stdout: {stdout.failed.strerror or stdout.failed}; the printed lines "
                             f"are lost (the files, if any, are written)")
        return code
    except NpmlpError as e:
        print(f"npmlp: error: {e}", file=sys.stderr)
        return e.exit_code
    except HelperFailed as e:
        print(f"npmlp: error: {e}; run again with --processes 1", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"npmlp: {getattr(e, 'message', None) or 'interrupted'}", file=sys.stderr)
        return 128 + signum_of(e)
    finally:
        stdout.flush()
        stderr.flush()
        sys.stdout = stdout.stream if stdout.stream is not None else sys.__stdout__
        sys.stderr = stderr.stream if stderr.stream is not None else sys.__stderr__


if __name__ == "__main__":
    sys.exit(main())
