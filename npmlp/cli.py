"""`npmlp` console script. A user's mistake ends in one line on stderr and exit 2 (usage) or 1
(runtime); never a traceback."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Vocab, build_dataset, data_source, load_words, split_words, words_digest
from .errors import NpmlpError, UsageError
from .fileio import atomic_write_json
from .model import MLP
from .parallel import HelperFailed
from .train import ARITHMETIC, CHUNK, Diverged, TrainConfig, evaluate, sample, sgd

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


def add_data_args(p):
    p.add_argument("--data", metavar="FILE", help="names file, one per line (default: $NPMLP_DATA, "
                   "then the cached download of the lecture's names.txt)")
    p.add_argument("--split-seed", type=int, default=42,
                   help="shuffle seed of the 80/10/10 split (default 42, the lecture's)")


def add_model_args(p, size_defaults: bool = True, dtype: str = "float32"):
    """Sizes, dtype, init and seed of a fresh model. size_defaults=False leaves untyped sizes None."""
    d = (lambda v: v) if size_defaults else (lambda v: None)
    p.add_argument("--block-size", type=positive_int, default=d(3), help="context length T (default 3)")
    p.add_argument("--n-embd", type=positive_int, default=d(10), help="embedding size E (default 10)")
    p.add_argument("--n-hidden", type=positive_int, default=d(200), help="hidden units H (default 200)")
    p.add_argument("--dtype", choices=DTYPES, default=dtype, help=f"float32 or float64 (default {dtype})")
    p.add_argument("--init", choices=("lecture", "kaiming"), default="lecture",
                   help="lecture: plain standard normal (default); kaiming: scaled for tanh")
    p.add_argument("--seed", type=non_negative_int, default=2147483647,
                   help="seed of init and minibatches (default 2147483647, the lecture's)")


def log(args, *msg):
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


# ----------------------------------------------------------------------------- data

class Splits:
    """words -> vocab -> the three (X, Y) splits, as the lecture builds them.

    vocab: a trained model's vocabulary (characters outside it are refused); digest: the
    words_digest a run recorded (different names are refused, so a resume sees the same rows)."""

    def __init__(self, data, split_seed, block_size, vocab: Vocab | None = None, args=None,
                 digest: str | None = None):
        notes: list[str] = []
        words = load_words(data, notes)
        for note in notes:
            log(args, f"npmlp: note: {note}")
        self.source = data_source(data)            # None: the checked download of the lecture's file
        where = self.source or "the downloaded names.txt"
        self.vocab = vocab or Vocab.from_words(words)
        parts = split_words(words, split_seed)
        self.n_words = len(words)
        names = ("train", "dev", "test")
        for name, part in zip(names, parts):
            if not part:
                raise NpmlpError(f"{where} holds only {len(words)} name{'s' * (len(words) != 1)}: the {name} "
                                 f"split of the 80/10/10 split is empty; give at least 10 names")
        try:
            self.train, self.dev, self.test = (build_dataset(p, self.vocab, block_size) for p in parts)
        except NpmlpError as e:                     # characters the model never saw
            raise NpmlpError(f"{e} (names from {where}); use data with the training run's characters") from None
        self.digest = words_digest(words)
        if digest is not None and digest != self.digest:  # checked last: the messages above say more
            raise NpmlpError(f"the names in {where} differ from the ones this run was trained on; "
                             f"give the original file with --data FILE")

    def items(self):
        return {"train": self.train, "dev": self.dev, "test": self.test}.items()


def check_memory(cfg, vocab_size, args):
    """Refuse sizes that cannot fit in this machine's memory: the kernel would kill the process
    mid-run (memory is overcommitted) instead of letting NumPy raise MemoryError."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    T, E, H, V = args.block_size, args.n_embd, args.n_hidden, vocab_size
    n_params = V * E + T * E * H + H + H * V + V
    B = cfg.batch_size
    rows, chunks = min(B, CHUNK), -(-B // CHUNK)
    need = (n_params * 8 * 4                                   # float64 draws, params, grads, snapshots
            + chunks * n_params * 8                            # each chunk's update (parallel.ChunkPool)
            + cfg.steps * 4                                    # lossi
            + 1000 * B * 8 + 32768 * (T + 1) * 8               # batch_block's indices, the gathered rows
            + rows * (T * E + 4 * H + 4 * V + T * V) * 8 * 2)  # one chunk's workspace, in two processes
    if need > 0.8 * total:
        raise UsageError(f"--n-embd {E} --n-hidden {H} --steps {cfg.steps:,} need about {need / 2**30:.1f} GiB, "
                         f"more than this machine's {total / 2**30:.1f} GiB; use smaller values")


def make_out_dir(out: Path) -> Path:
    """Create the output folder now, so a bad --out fails before any work, in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder {out}: {e.strerror}; choose another --out") from None
    return out


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


def add_processes_arg(p):
    p.add_argument("--processes", type=positive_int, metavar="N",
                   help="processes sharing a batch of more than 128 rows (default: one per 128-row chunk, "
                        "up to the usable cores; the results are the same bits for any N)")


def typed_options(argv) -> set[str]:
    """Destinations of the options spelled out on the command line (`--lr 0.1`, `--lr=0.1`), so
    --resume can refuse a typed value even when it equals the default."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def resume_state(out: Path, ckpt: Path):
    """A run directory -> (model, vocab, cfg, run, start step, lossi (start,)), all validated."""
    if not ckpt.is_file():
        raise UsageError(f"--resume {out}: no model.npz there; give a run directory written by `npmlp train`")
    model, vocab, meta, lossi = load_checkpoint(ckpt)
    try:
        cfg = TrainConfig(**meta["train"])
        run = dict(meta["run"])
        start = meta["step"]
        ok = (isinstance(start, int) and 0 <= start <= cfg.steps and isinstance(run.get("split_seed"), int)
              and isinstance(run.get("data"), (str, type(None))) and run.get("init") in ("lecture", "kaiming"))
    except (KeyError, TypeError, ValueError, NpmlpError):  # a field missing, unknown or out of range
        ok = False
    if not ok:
        raise NpmlpError(f"checkpoint {ckpt} has missing or malformed training state (config, step); "
                         f"it cannot be resumed")
    lossi = np.zeros(0, np.float32) if lossi is None else lossi
    if len(lossi) != start:
        raise NpmlpError(f"checkpoint {ckpt} holds {len(lossi):,} losses for {start:,} steps; the file is "
                         f"damaged and cannot be resumed")
    if start >= cfg.steps and (out / "metrics.json").exists():  # without it: stopped during evaluation
        raise UsageError(f"{out} finished all {cfg.steps:,} steps already; nothing to resume")
    return model, vocab, cfg, run, start, lossi


def check_resume_options(args, out, model, cfg, run):
    """--resume continues a run with its own options: refuse a typed option that says otherwise."""
    theirs = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_decayed": cfg.lr_decayed,
              "decay_at": cfg.decay_at, "seed": cfg.seed, "block_size": model.block_size,
              "n_embd": model.n_embd, "n_hidden": model.n_hidden, "dtype": str(model.dtype),
              "init": run["init"], "split_seed": run["split_seed"], "out": str(out)}
    typed = typed_options(args.argv)
    for key, value in theirs.items():
        mine = getattr(args, key)
        if key in typed and mine != value and not (key == "out" and Path(mine) == out):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {mine} differs from the run's {value}; --resume continues {out} with "
                             f"its own options: drop {flag}, or start a new run with another --out")


def cmd_train(args):
    out = Path(args.resume or args.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    ckpt = out / "model.npz"
    if args.resume:
        model, vocab, cfg, run, start, lossi = resume_state(out, ckpt)
        check_resume_options(args, out, model, cfg, run)
        data = Splits(run_data(args, run), run["split_seed"], model.block_size, vocab, args,
                      digest=run.get("data_sha256"))
        if args.data:                                 # the same names from a new place: remember it
            run["data"] = str(Path(args.data).resolve())
        lossi = np.concatenate([lossi, np.zeros(cfg.steps - start, np.float32)])
        log(args, f"npmlp: resuming {out} at step {start:,} of {cfg.steps:,}")
        if run.get("arithmetic", 1) != ARITHMETIC:     # runs before the key existed are version 1
            print(f"npmlp: note: {out} was trained by an older npmlp whose steps round differently; it "
                  f"continues correctly, but not bit-identically to an uninterrupted run of that version",
                  file=sys.stderr)
            run["arithmetic"] = ARITHMETIC
    else:
        if ckpt.exists():
            raise UsageError(f"{out} already holds a run; choose another --out, or continue it with --resume {out}")
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          lr_decayed=args.lr_decayed if args.lr_decayed else args.lr / 10,
                          decay_at=args.decay_at, seed=args.seed)
        data = Splits(args.data, args.split_seed, args.block_size, None, args)
        run = {"data": str(data.source.resolve()) if data.source else None, "split_seed": args.split_seed,
               "init": args.init, "data_sha256": data.digest, "arithmetic": ARITHMETIC}
        vocab = data.vocab
        check_memory(cfg, vocab.size, args)
        try:
            model = MLP.init(vocab.size, args.block_size, args.n_embd, args.n_hidden, seed=args.seed,
                             dtype=DTYPES[args.dtype], scheme=args.init)
            start, lossi = 0, np.zeros(cfg.steps, np.float32)
        except MemoryError:
            raise UsageError(f"not enough memory for {args.steps:,} steps of a model with --n-embd "
                             f"{args.n_embd} --n-hidden {args.n_hidden}; use smaller values") from None
    Xtr, Ytr = data.train
    if cfg.batch_size > len(Xtr):
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training split "
                         f"({len(Xtr):,} rows); use at most {len(Xtr):,}")
    make_out_dir(out)  # fail now, not after hours of training
    log(args, f"npmlp: {data.n_words:,} names, vocab {vocab.size}, rows train/dev/test "
              f"{len(Xtr):,}/{len(data.dev[0]):,}/{len(data.test[0]):,}; "
              f"{model.num_params:,} parameters ({model.dtype}); writing {out}/")

    def save(step, complete):
        meta = {"train": cfg.to_dict(), "run": run, "step": step, "complete": complete}
        try:
            save_checkpoint(ckpt, model, vocab, meta, lossi[:step])
        except OSError as e:  # the write is atomic: an older model.npz, if any, is still intact
            raise NpmlpError(f"cannot write {ckpt}: {e.strerror}; free space or fix permissions, "
                             f"then resume from the last saved checkpoint") from None

    from .progress import Progress
    f32max = float(np.finfo(np.float32).max)
    t0 = time.perf_counter()
    # Overflow warnings are noise here: a non-finite loss is caught and reported as divergence.
    with np.errstate(over="ignore", invalid="ignore"), StopFlag() as flag, \
            Progress(cfg.steps, start, quiet=args.quiet) as bar:
        snapshots = [(start, model.flat.copy())]       # for divergence: replay to the last good step
        finished = [start]                             # steps done (for a helper process's failure)

        def on_step(step, loss):
            finished[0] = step + 1
            if abs(loss) > f32max:                     # finite in float64 but inf in the float32 lossi
                raise Diverged(step, float(lossi[step - 1]) if step else float("nan"))
            if (step + 1) % 250 == 0:                  # the per-step path stays a few comparisons
                bar.step(step, loss, cfg.lr_at(step))
                if (step + 1) % 1000 == 0:
                    snapshots[:] = [snapshots[-1], (step + 1, model.flat.copy())]
            return flag.signum is not None

        try:
            lossi, step = sgd(model, Xtr, Ytr, cfg, lossi, start, on_step=on_step, processes=args.processes)
            bar.finish(step)
            if not np.isfinite(model.flat).all():      # the last update overflowed: never save it
                raise Diverged(step, float(lossi[step - 1]))
        except HelperFailed as e:                      # the failed step was not applied: save the rest
            bar.close()
            save(finished[0], False)
            raise NpmlpError(f"{e} after step {finished[0]:,}; saved {ckpt}; resume with: npmlp train "
                             f"--resume {shlex.quote(str(out))} (add --processes 1 if it happens again)") from None
        except Diverged as d:
            bar.close()
            good = [(k, f) for k, f in snapshots if k < d.step]
            rate = "--lr" if d.step - 1 < int(cfg.decay_at * cfg.steps) else "--lr-decayed"
            if not good:
                raise NpmlpError(f"the loss is NaN/inf at step {d.step:,}, the first step of this run; check "
                                 f"the data and --init, and lower {rate} (was {cfg.lr_at(d.step):g})") from None
            k, flat = good[-1]
            model.flat[...] = flat                     # the snapshot, then replay deterministically
            if d.step - 1 > k:
                sgd(model, Xtr, Ytr, cfg, lossi, k, stop=d.step - 1, processes=args.processes)
            save(d.step - 1, False)
            raise NpmlpError(f"training diverged: the loss became NaN/inf at step {d.step:,} (last finite "
                             f"loss {d.last_loss:.4g} at step {d.step - 1:,}); saved the parameters that gave it "
                             f"in {ckpt} (for eval/plot); train again with a lower {rate} (was "
                             f"{cfg.lr_at(d.step - 1):g}) and a new --out") from None
    seconds = time.perf_counter() - t0
    if step < cfg.steps:
        save(step, False)
        name = signal.Signals(flag.signum).name
        print(f"npmlp: {name}: stopped after step {step:,} of {cfg.steps:,}; saved {ckpt}\n"
              f"npmlp: resume with: npmlp train --resume {shlex.quote(str(out))}", file=sys.stderr)
        return 128 + flag.signum
    save(cfg.steps, True)

    with np.errstate(over="ignore", invalid="ignore"):
        losses = {f"{k}_loss": evaluate(model, *xy) for k, xy in data.items()}
        names = sample(model, vocab, 20, seed=cfg.seed + 10)
    finite = {k: v if np.isfinite(v) else None for k, v in losses.items()}  # JSON has no NaN/inf
    metrics = {**finite, "steps": cfg.steps, "seconds": round(seconds, 3),
               "steps_per_second": round((cfg.steps - start) / seconds, 1) if seconds else None,
               "num_params": model.num_params, "config": {**cfg.to_dict(), **run,
               "block_size": model.block_size, "n_embd": model.n_embd, "n_hidden": model.n_hidden,
               "dtype": str(model.dtype)}, "samples": names}
    atomic_write_json(out / "metrics.json", metrics)
    written = [out / "metrics.json", ckpt] + write_run_figures(out, model, vocab, lossi, cfg, args)
    print(f"train loss {losses['train_loss']:.4f}   dev loss {losses['dev_loss']:.4f}   "
          f"test loss {losses['test_loss']:.4f}   ({cfg.steps - start:,} steps in {seconds:.1f}s)")
    print("samples:", *names, sep="\n  ")
    print("wrote:", *written, sep="\n  ")
    return 0


def write_run_figures(out, model, vocab, lossi, cfg, args):
    """loss.png and embedding.png of a finished run (none with --no-plots). -> paths written."""
    if getattr(args, "no_plots", False):
        return []
    from . import plots  # matplotlib only when a figure is drawn
    return plots.write_run_figures(out, model, vocab, lossi, cfg, pca=getattr(args, "pca", False))


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


def run_data(args, run):
    """The names file of a run: --data if given, else the path the run recorded (None: the download)."""
    if args.data:
        return args.data
    path = run.get("data")
    if path is not None and not Path(path).exists():
        raise NpmlpError(f"the run's names file {path} no longer exists; pass its new place with --data FILE")
    return path


def run_splits(args, meta, model, vocab):
    """The rows a run was trained and evaluated on: its data file (or --data) and split seed."""
    run = meta.get("run") or {}
    return Splits(run_data(args, run), run.get("split_seed", 42), model.block_size, vocab, args,
                  digest=run.get("data_sha256"))


def run_config(meta, ckpt):
    try:
        return TrainConfig(**meta["train"])
    except (KeyError, TypeError, NpmlpError):
        raise NpmlpError(f"checkpoint {ckpt} has no valid training config; it was not written by "
                         f"`npmlp train`") from None


def cmd_gradcheck(args):
    from . import gradcheck
    dtype = DTYPES[args.dtype]
    sizes = {"--block-size": args.block_size, "--n-embd": args.n_embd, "--n-hidden": args.n_hidden}
    if args.run:
        typed = [k for k, v in sizes.items() if v is not None]
        if typed:
            raise UsageError(f"{typed[0]} sets the size of a fresh model; drop it when checking --run {args.run}")
        model, vocab, meta, _, ckpt = load_run(args.run)
        data = run_splits(args, meta, model, vocab)
        model = MLP({k: v.astype(dtype) for k, v in model.params.items()})
        what = f"the model in {ckpt}"
    else:
        T, E, H = (v or d for v, d in zip(sizes.values(), (3, 10, 200)))
        data = Splits(args.data, args.split_seed, T, None, args)
        model = MLP.init(data.vocab.size, T, E, H, seed=args.seed, dtype=dtype, scheme=args.init)
        what = f"a fresh model (--init {args.init}, seed {args.seed})"
    X, Y = gradcheck.minibatch(*data.train, args.batch_size, args.seed)
    loss, torch_loss, rows = gradcheck.report(model, X, Y, coords=args.coords, seed=args.seed)
    print(f"gradcheck of {what}: block_size {model.block_size}, n_embd {model.n_embd}, n_hidden "
          f"{model.n_hidden}, {args.dtype}; one minibatch of {len(X)} training rows")
    print(f"loss {loss:.6f}" + (f" (torch {torch_loss:.6f})" if torch_loss is not None else "") + "\n")
    print(gradcheck.format_table(rows, dtype))
    bad = [r for r in rows if not r.ok]
    if bad:
        why = ", ".join(f"d{r.name} ({' and '.join(w for w, f in (('torch', r.torch_verdict == 'FAIL'), ('fd', not r.fd_ok)) if f)})"
                        for r in bad)
        raise NpmlpError(f"{len(bad)} of {len(rows)} gradients fail their tolerance: {why}; look first at "
                         f"d{bad[0].name}, the first to fail in backward order")
    print(f"\nall {len(rows)} gradients pass")


def cmd_lr_find(args):
    from . import lrfind, plots
    from .progress import Progress
    if args.steps < 10:
        raise UsageError(f"--steps {args.steps} is too few for a sweep from 10^-3 to 10^0; use at least 10")
    out = make_out_dir(Path(args.out or time.strftime("runs/lr-find-%Y%m%d-%H%M%S")))
    data = Splits(args.data, args.split_seed, args.block_size, None, args)
    model = MLP.init(data.vocab.size, args.block_size, args.n_embd, args.n_hidden, seed=args.seed,
                     dtype=DTYPES[args.dtype], scheme=args.init)
    lre = np.linspace(-3, 0, args.steps)                      # the lecture's lre; lrs = 10**lre
    with np.errstate(over="ignore", invalid="ignore"), \
            Progress(args.steps, quiet=args.quiet, every=max(1, args.steps // 100), desc="lr-find") as bar:
        losses = lrfind.sweep(model, *data.train, lre, args.batch_size, args.seed,
                              on_step=lambda i, loss, lr: bar.step(i, loss, lr), processes=args.processes)
    ran = int(np.isfinite(losses).sum())
    if ran < 2:
        raise NpmlpError("the loss was NaN/inf from the first steps of the sweep; check the data and --init")
    suggested, best, smoothed = lrfind.suggest(lre[:ran], losses[:ran])
    path = plots.save(plots.lr_find_figure(lre[:ran], losses[:ran], smoothed, best, suggested), out / "lr_find.png")
    if ran < args.steps:
        print(f"the loss became NaN/inf at lr {10 ** lre[ran]:.3g}; the sweep stopped after {ran} steps")
    print(f"lowest smoothed loss {np.nanmin(smoothed):.3f} at lr 10^{best:.2f} = {10 ** best:.3g}")
    print(f"suggested learning rate: {10 ** suggested:.3g} (10^{suggested:.2f}, "
          f"{lrfind.MARGIN:g} below the minimum's exponent): npmlp train --lr {10 ** suggested:.2g}")
    print("wrote:", path, sep="\n  ")


def cmd_sample(args):
    model, vocab, meta, _, _ = load_run(args.run_dir)
    seed = args.seed if args.seed is not None else int((meta.get("train") or {}).get("seed", 2147483647)) + 10
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
    out = make_out_dir(Path(args.out)) if args.out else ckpt.parent
    written = plots.write_run_figures(out, model, vocab, lossi, cfg, pca=args.pca, batch=batch)
    print("wrote:", *written, sep="\n  ")


# ----------------------------------------------------------------------------- main

def build_parser():
    parser = Parser(prog="npmlp", description="A character-level MLP language model "
                                     "(makemore part 2) in NumPy, with every gradient written by hand.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train the lecture's model and write a run directory")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--steps", type=positive_int, default=200_000, help="SGD steps (default 200000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default 32)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--lr-decayed", type=positive_float, help="rate after the decay (default lr/10)")
    p.add_argument("--decay-at", type=fraction, default=0.5, help="fraction of steps where the rate "
                   "drops (default 0.5)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run, bit-identically")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes about the data")
    p.add_argument("--no-plots", action="store_true", help="don't write loss.png and embedding.png")
    add_processes_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gradcheck", help="check each hand-written gradient against torch and finite "
                       "differences")
    add_data_args(p)
    add_model_args(p, size_defaults=False, dtype="float64")  # finite differences are always float64
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
    add_processes_arg(p)
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
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(map(str, argv))
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
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
