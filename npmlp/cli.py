"""`npmlp` console script. A user's mistake ends in one line on stderr and exit 2 (usage) or 1
(runtime); never a traceback."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Vocab, build_dataset, load_words, split_words
from .errors import NpmlpError, UsageError
from .fileio import atomic_write_json
from .model import MLP
from .train import Diverged, TrainConfig, evaluate, sample, sgd

DTYPES = {"float32": np.float32, "float64": np.float64}


# ----------------------------------------------------------------------------- option types

def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


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


def add_model_args(p, defaults: bool = True):
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--block-size", type=positive_int, default=d(3), help="context length T (default 3)")
    p.add_argument("--n-embd", type=positive_int, default=d(10), help="embedding size E (default 10)")
    p.add_argument("--n-hidden", type=positive_int, default=d(200), help="hidden units H (default 200)")
    p.add_argument("--dtype", choices=DTYPES, default=d("float32"), help="float32 (default) or float64")


def log(args, *msg):
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


# ----------------------------------------------------------------------------- data

class Splits:
    """words -> vocab -> the three (X, Y) splits, as the lecture builds them."""

    def __init__(self, data, split_seed, block_size, vocab: Vocab | None = None, args=None):
        notes: list[str] = []
        words = load_words(data, notes)
        for note in notes:
            log(args, f"npmlp: note: {note}")
        self.vocab = vocab or Vocab.from_words(words)
        parts = split_words(words, split_seed)
        self.n_words = len(words)
        names = ("train", "dev", "test")
        for name, part in zip(names, parts):
            if not part:
                raise NpmlpError(f"only {len(words)} names: the {name} split of an 80/10/10 split is empty; "
                                 f"give at least 10 names")
        self.train, self.dev, self.test = (build_dataset(p, self.vocab, block_size) for p in parts)

    def items(self):
        return {"train": self.train, "dev": self.dev, "test": self.test}.items()


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


def cmd_train(args):
    out = Path(args.resume or args.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    ckpt = out / "model.npz"
    if args.resume:
        if not ckpt.is_file():
            raise UsageError(f"--resume {out}: no model.npz there; give a run directory written by `npmlp train`")
        model, vocab, meta, lossi = load_checkpoint(ckpt)
        cfg = TrainConfig(**meta["train"])
        run = meta["run"]
        start = int(meta["step"])
        if start >= cfg.steps:
            raise UsageError(f"{out} finished all {cfg.steps} steps already; nothing to resume")
        lossi = np.concatenate([lossi, np.zeros(cfg.steps - len(lossi), np.float32)]) if lossi is not None \
            else np.zeros(cfg.steps, np.float32)
        data = Splits(run["data"], run["split_seed"], model.block_size, vocab, args)
        log(args, f"npmlp: resuming {out} at step {start:,} of {cfg.steps:,}")
    else:
        if ckpt.exists():
            raise UsageError(f"{out} already holds a run; choose another --out, or continue it with --resume {out}")
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          lr_decayed=args.lr_decayed if args.lr_decayed else args.lr / 10,
                          decay_at=args.decay_at, seed=args.seed)
        run = {"data": str(Path(args.data).resolve()) if args.data else None, "split_seed": args.split_seed,
               "init": args.init}
        data = Splits(args.data, args.split_seed, args.block_size, None, args)
        vocab = data.vocab
        model = MLP.init(vocab.size, args.block_size, args.n_embd, args.n_hidden, seed=args.seed,
                         dtype=DTYPES[args.dtype], scheme=args.init)
        start, lossi = 0, np.zeros(cfg.steps, np.float32)
    Xtr, Ytr = data.train
    if cfg.batch_size > len(Xtr):
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training split "
                         f"({len(Xtr):,} rows); use at most {len(Xtr):,}")
    log(args, f"npmlp: {data.n_words:,} names, vocab {vocab.size}, rows train/dev/test "
              f"{len(Xtr):,}/{len(data.dev[0]):,}/{len(data.test[0]):,}; "
              f"{model.num_params:,} parameters ({model.dtype}); writing {out}/")

    def save(step, complete):
        meta = {"train": cfg.to_dict(), "run": run, "step": step, "complete": complete}
        save_checkpoint(ckpt, model, vocab, meta, lossi[:step])

    from .progress import Progress
    t0 = time.perf_counter()
    with StopFlag() as flag, Progress(cfg.steps, start, quiet=args.quiet) as bar:
        snapshots = [(start, model.flat.copy())]       # for divergence: replay to the last good step

        def on_step(step, loss):
            bar.step(step, loss, cfg.lr_at(step))
            if (step + 1) % 1000 == 0:
                snapshots[:] = [snapshots[-1], (step + 1, model.flat.copy())]
            return flag.signum is not None

        try:
            lossi, step = sgd(model, Xtr, Ytr, cfg, lossi, start, on_step=on_step)
        except Diverged as d:
            bar.close()
            good = [(k, f) for k, f in snapshots if k < d.step]
            if not good:
                raise NpmlpError(f"the loss is NaN/inf at the first step ({d.step:,}); check the data and "
                                 f"--init, and lower --lr (was {cfg.lr:g})") from None
            k, flat = good[-1]
            model.flat[...] = flat                     # the snapshot, then replay deterministically
            sgd(model, Xtr, Ytr, cfg, lossi, k, stop=d.step - 1) if d.step - 1 > k else None
            if d.step >= 1:
                save(d.step - 1, False)
            raise NpmlpError(f"training diverged: the loss became NaN/inf at step {d.step:,} "
                             f"(last finite loss {d.last_loss:.4f} at step {d.step - 1:,}); the parameters "
                             f"before that step are saved in {ckpt}; lower --lr (was {cfg.lr:g})") from None
    seconds = time.perf_counter() - t0
    if step < cfg.steps:
        save(step, False)
        name = signal.Signals(flag.signum).name
        print(f"npmlp: {name}: stopped after step {step:,} of {cfg.steps:,}; saved {ckpt}\n"
              f"npmlp: resume with: npmlp train --resume {out}", file=sys.stderr)
        return 128 + flag.signum
    save(cfg.steps, True)

    losses = {f"{k}_loss": evaluate(model, *xy) for k, xy in data.items()}
    names = sample(model, vocab, 20, seed=cfg.seed + 10)
    metrics = {**losses, "steps": cfg.steps, "seconds": round(seconds, 3),
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
    """Figures of a finished run; [] until the plotting module exists."""
    return []


# ----------------------------------------------------------------------------- main

def build_parser():
    parser = argparse.ArgumentParser(prog="npmlp", description="A character-level MLP language model "
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
    p.add_argument("--init", choices=("lecture", "kaiming"), default="lecture",
                   help="lecture: plain standard normal (default); kaiming: scaled for tanh")
    p.add_argument("--seed", type=int, default=2147483647, help="seed of init and minibatches")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run, bit-identically")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
