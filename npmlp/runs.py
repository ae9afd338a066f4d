"""A training run's directory, from start to finish: the data splits, the model, a claim on the
directory, the training steps (by either engine) with snapshots for divergence, the checkpoint,
and the metrics at the end. cli.py turns options into these calls and prints what they return.

    runs/RUN/model.npz      params (and buffers), loss history, config, step: see checkpoint.py
    runs/RUN/metrics.json   train/dev/test loss, samples, wall time: written when training ends
    runs/RUN/.npmlp.lock    held while a `npmlp train` writes here
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import shlex
import time
from pathlib import Path

import numpy as np

from . import fast, train
from .checkpoint import load_checkpoint, save_checkpoint
from .data import (Vocab, build_dataset, data_source, load_words, split_words, words_digest)
from .errors import NpmlpError, UsageError
from .fileio import atomic_write_json
from .models import buffers, model_class
from .train import Diverged, TrainConfig

try:
    import fcntl
except ImportError:      # not POSIX: the lock falls back to an exclusive create
    fcntl = None

ENGINES = ("fast", "reference")
ARITHMETIC = {"fast": fast.ARITHMETIC, "reference": 1}   # each engine's rounding version (see fast.py)
SNAPSHOT = 1000   # steps between copies of the model kept to replay a divergence from
LOCK = ".npmlp.lock"


# ----------------------------------------------------------------------------- data

class Splits:
    """words -> vocab -> the three (X, Y) splits, as the lecture builds them.

    vocab: a trained model's vocabulary (characters outside it are refused); digest: the
    words_digest a run recorded (other names are refused, so a resume sees the same rows).
    split_seed None keeps the file's order. What the data loader cleaned up is in `notes`."""

    def __init__(self, data, split_seed, block_size, vocab: Vocab | None = None, digest: str | None = None):
        self.notes: list[str] = []
        words = load_words(data, self.notes)
        self.source = data_source(data)            # None: the checked download of the lecture's file
        where = self.source or "the downloaded names.txt"
        self.vocab = vocab or Vocab.from_words(words)
        parts = split_words(words, split_seed)
        self.n_words = len(words)
        for name, part in zip(("train", "dev", "test"), parts):
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

    def summary(self) -> str:
        return (f"{self.n_words:,} names, vocab {self.vocab.size}, rows train/dev/test "
                f"{len(self.train[0]):,}/{len(self.dev[0]):,}/{len(self.test[0]):,}")


def run_data(data, info: dict):
    """The names file of a run: `data` if given, else the path the run recorded (None: the download)."""
    if data:
        return data
    path = info.get("data")
    if path is not None and not Path(path).exists():
        raise NpmlpError(f"the run's names file {path} no longer exists; pass its new place with --data FILE")
    return path


def run_splits(data, meta, model, vocab) -> Splits:
    """The rows a run was trained and evaluated on: its data file (or `data`) and split seed."""
    info = meta.get("run") or {}
    return Splits(run_data(data, info), info.get("split_seed", 42), model.block_size, vocab,
                  digest=info.get("data_sha256"))


def check_memory(cls, sizes: dict, cfg: TrainConfig, vocab_size: int) -> None:
    """Refuse sizes that cannot fit in this machine's memory: the kernel would kill the process
    mid-run (memory is overcommitted) instead of letting NumPy raise MemoryError."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    P = sum(math.prod(s) for s in cls.shapes(vocab_size, **sizes).values())
    T, H, L, V, B = sizes["block_size"], sizes["n_hidden"], sizes.get("n_layers", 1), vocab_size, cfg.batch_size
    rows, chunks = min(B, fast.CHUNK), -(-B // fast.CHUNK)
    need = (P * 8 * 6                                             # float64 draws, params, snapshots, engine
            + chunks * P * 8                                      # each chunk's update (fast.Chunks)
            + cfg.steps * 4                                       # lossi
            + train.BLOCK * B * 8 + fast.GATHER * (T + 1) * 8     # a block's indices, the gathered rows
            + max(rows, B) * (T * sizes["n_embd"] + 6 * H * L + 4 * V + T * V) * 8 * 2)  # a step's arrays
    if need > 0.8 * total:
        raise UsageError(f"--n-embd {sizes['n_embd']} --n-hidden {H} --steps {cfg.steps:,} need about "
                         f"{need / 2**30:.1f} GiB, more than this machine's {total / 2**30:.1f} GiB; use smaller values")


# ----------------------------------------------------------------------------- the directory

def make_out_dir(out: Path) -> Path:
    """Create the output folder now, so a bad --out fails before any work, in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder {out}: {e.strerror}; choose another --out") from None
    return out


@contextlib.contextmanager
def claim(out: Path, notes: list[str]):
    """Hold the run directory `out` while training writes it: a second `npmlp train` into it is
    refused (exit 2) until this one ends. The lock is a flock on out/.npmlp.lock, which the
    kernel releases when the process dies, so a killed run leaves no lock that blocks anyone;
    the file it leaves behind (with its pid) is reported in `notes`."""
    make_out_dir(out)
    path = out / LOCK
    if fcntl is None:
        fd = _create_exclusive(path, out)
    else:
        fd = _flock(path, out, notes)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)        # before the close: a new run then locks a new file
        os.close(fd)


def _flock(path: Path, out: Path, notes: list[str]) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write in {out}: {e.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"{out} is in use by another `npmlp train` (pid {pid}); wait for it to end"
                             + ("" if (out / "model.npz").exists() else ", or choose another --out")) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:                   # not a file its last holder unlinked while we opened it
            break
        os.close(fd)
    left = os.read(fd, 32).decode(errors="replace").strip()
    if left:
        notes.append(f"{out} was still marked as in use by pid {left}, a run that was killed before it "
                     f"could clean up; its last checkpoint, if it saved one, is kept")
    return fd


def _create_exclusive(path: Path, out: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"{out} is in use by another `npmlp train` (or one was killed: then delete "
                         f"{path})") from None
    except OSError as e:
        raise UsageError(f"cannot write in {out}: {e.strerror}; choose another --out") from None


def refuse_existing(out: Path) -> None:
    if (out / "model.npz").exists():
        raise UsageError(f"{out} already holds a run; choose another --out, or continue it with --resume {out}")


# ----------------------------------------------------------------------------- engines

def default_engine(kind: str) -> str:
    return "fast" if kind in fast.MODELS else "reference"


def check_engine(kind: str, engine: str | None, processes: int | None) -> str:
    """The engine a model trains with: `engine`, or its default; a clear error for a model without
    a fast engine, or --processes without the fast engine (only its chunks are shared)."""
    engine = engine or default_engine(kind)
    if engine == "fast" and kind not in fast.MODELS:
        raise UsageError(f"--engine fast: the {kind!r} model has no fast engine; use --engine reference")
    if processes is not None and engine != "fast":
        raise UsageError("--processes shares a batch between processes in the fast engine only; drop it "
                         "with --engine reference")
    return engine


@contextlib.contextmanager
def engine_steps(engine: str, model, batch_size: int, processes: int | None = None):
    """-> steps(X, Y, cfg, lossi, start, stop, on_step), train.sgd's contract run by `engine`.
    The fast engine's helper processes (parallel.py) live as long as the context: open it before
    any thread starts (a progress bar's), since forking beside a thread can deadlock the child."""
    if engine == "fast":
        from .parallel import make_pool
        with make_pool(model, batch_size, processes) as pool:
            yield functools.partial(fast.sgd, model, pool=pool)
    else:
        yield functools.partial(train.sgd, model)


# ----------------------------------------------------------------------------- a run

class Run:
    """What a run directory holds while it trains: the model and its vocabulary, the training
    config, `info` (what else the run records: data file and SHA-256, split seed, init, engine
    and its arithmetic, training seconds so far), the loss history and the next step."""

    def __init__(self, out: Path, model, vocab, cfg: TrainConfig, info: dict, lossi, start: int, data: Splits,
                 diagnose: bool = False):
        self.out, self.ckpt = out, out / "model.npz"
        self.model, self.vocab, self.cfg, self.info, self.data = model, vocab, cfg, info, data
        self.lossi, self.start, self.step = lossi, start, start
        self.notes: list[str] = []                # about the run itself (the data's are data.notes)
        n = len(data.train[0])
        if cfg.batch_size > n:
            raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training split ({n:,} rows); "
                             f"use at most {n:,}")
        low = getattr(model, "min_batch", 1)
        if cfg.batch_size < low:
            raise UsageError(f"--batch-size {cfg.batch_size}: the {model.kind} model's BatchNorm normalises with "
                             f"a batch's own statistics; use at least {low}")
        self.stopped = False                       # on_step asked to stop
        self.seconds = info.get("seconds", 0.0)    # training time of the earlier parts ...
        self.parts = info.get("parts", 1 if start else 0) + 1   # ... and this one
        self._t0 = self._t1 = None                 # when this part's training began and ended
        self.ratios = None                         # diagnose.UpdateRatios, sampled while training
        if diagnose or info.get("diagnose"):
            from .diagnose import RATIOS, UpdateRatios
            info["diagnose"] = True
            kept = UpdateRatios.load(out / RATIOS) if start else None
            self.ratios = kept.until(start) if kept is not None else UpdateRatios(model.params)

    @classmethod
    def new(cls, out: Path, kind: str, sizes: dict, cfg: TrainConfig, data=None, split_seed=42,
            dtype=np.float32, engine=None, init=None, diagnose=False):
        """A fresh run of model `kind` in `out` (which must not hold one). init: the MLP's init
        scheme ('lecture' or 'kaiming'); the other models have their lecture's own."""
        refuse_existing(out)
        model_cls = model_class(kind)
        splits = Splits(data, split_seed, sizes["block_size"])
        check_memory(model_cls, sizes, cfg, splits.vocab.size)
        try:
            model = model_cls.init(splits.vocab.size, **sizes, seed=cfg.seed, dtype=dtype,
                                   **({} if init is None else {"scheme": init}))
        except MemoryError:
            raise UsageError(f"not enough memory for a model with --n-embd {sizes['n_embd']} --n-hidden "
                             f"{sizes['n_hidden']}; use smaller values") from None
        engine = engine or default_engine(kind)
        info = {"data": str(splits.source.resolve()) if splits.source else None, "split_seed": split_seed,
                "init": init, "data_sha256": splits.digest, "engine": engine,
                "arithmetic": ARITHMETIC[engine], "seconds": 0.0, "parts": 0}
        return cls(out, model, splits.vocab, cfg, info, np.zeros(cfg.steps, np.float32), 0, splits, diagnose)

    @classmethod
    def resume(cls, out: Path, typed: dict, data=None, diagnose=False):
        """The run in `out`, ready to continue. typed: the options given on the command line
        (name -> value); one that differs from the run's own is refused."""
        model, vocab, meta, lossi = _load_resumable(out)
        cfg = TrainConfig(**meta["train"])
        info = dict(meta["run"])
        _check_typed(typed, out, model, cfg, info)
        splits = Splits(run_data(data, info), info["split_seed"], model.block_size, vocab,
                        digest=info.get("data_sha256"))
        if data:                                    # the same names from a new place: remember it
            info["data"] = str(Path(data).resolve())
        run = cls(out, model, vocab, cfg, info, np.concatenate(
            [lossi, np.zeros(cfg.steps - meta["step"], np.float32)]), meta["step"], splits, diagnose)
        if info.get("arithmetic", 1) != ARITHMETIC[info["engine"]]:   # runs before the key were 1
            run.notes.append(f"{out} was trained by an older npmlp whose steps round differently; it continues "
                             f"correctly, but not bit-identically to an uninterrupted run of that version")
            info["arithmetic"] = ARITHMETIC[info["engine"]]
        return run

    @property
    def train_seconds(self) -> float:
        """Seconds this part has trained so far."""
        return 0.0 if self._t0 is None else (self._t1 or time.perf_counter()) - self._t0

    @property
    def finished(self) -> bool:
        return self.step >= self.cfg.steps

    def summary(self) -> str:
        verb = f"resuming at step {self.start:,} of {self.cfg.steps:,}" if self.start else f"{self.cfg.steps:,} steps"
        return (f"{self.data.summary()}; {self.model.kind} model, {self.model.num_params:,} parameters "
                f"({self.model.dtype}), {self.info['engine']} engine; {verb}; writing {self.out}/")

    def save(self, step: int | None = None) -> None:
        """model.npz at `step` (default: the steps done), with the training seconds so far."""
        step = self.step if step is None else step
        info = dict(self.info, seconds=round(self.seconds + self.train_seconds, 3), parts=self.parts)
        meta = {"train": self.cfg.to_dict(), "run": info, "step": step, "complete": step >= self.cfg.steps}
        if hasattr(self.model, "calibrate"):   # statistics for inference, from the training split
            self.model.calibrate(self.data.train[0])
        try:
            save_checkpoint(self.ckpt, self.model, self.vocab, meta, self.lossi[:step])
            if self.ratios is not None:
                from .diagnose import RATIOS
                self.ratios.until(step).save(self.out / RATIOS)
        except OSError as e:  # the write is atomic: an older model.npz, if any, is still intact
            raise NpmlpError(f"cannot write {self.ckpt}: {e.strerror}; free space or fix permissions, "
                             f"then resume from the last saved checkpoint") from None

    def train(self, steps, on_step=None) -> int:
        """Run the steps with `steps` (engine_steps) from self.step until cfg.steps or until
        on_step(step, loss) returns True; -> the steps done. On divergence or a helper's failure
        it saves what can be kept and raises NpmlpError saying what happened and what to do."""
        from .parallel import HelperFailed
        X, Y = self.data.train
        snaps = [self._snapshot()]                 # the last two: a divergence replays from one
        self._t0 = time.perf_counter()

        def each(step, loss):
            self.step = step + 1
            self.stopped = on_step is not None and bool(on_step(step, loss))
            return self.stopped

        # the steps run in segments: between two, the model holds the current params (the fast
        # engine works on its own copy), a snapshot is taken, and with --diagnose the update:data
        # ratios are sampled
        every = SNAPSHOT
        if self.ratios is not None:
            from .diagnose import EVERY as every
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # a NaN/inf loss is caught as divergence
                while not self.finished and not self.stopped:
                    if self.ratios is not None and self.step % every == 0:
                        self.ratios.record(self.model, X, Y, self.cfg, self.step)
                    stop = min(self.cfg.steps, (self.step // every + 1) * every)
                    steps(X, Y, self.cfg, self.lossi, self.step, stop, each)
                    snaps = [snaps[-1], self._snapshot()]
        except HelperFailed as e:                  # the failed step was not applied: keep the rest
            self.save()
            raise NpmlpError(f"{e} after step {self.step:,}; saved {self.ckpt}; resume with: npmlp train "
                             f"--resume {shlex.quote(str(self.out))} (add --processes 1 if it happens again)") from None
        except Diverged as d:
            raise NpmlpError(self._diverged(d, steps, snaps)) from None
        finally:
            self._t1 = time.perf_counter()
        return self.step

    def _snapshot(self):
        return self.step, {k: a.copy() for k, a in {**self.model.params, **buffers(self.model)}.items()}

    def _diverged(self, d: Diverged, steps, snaps) -> str:
        """Save what a divergence leaves worth keeping; -> the message."""
        cfg, X, Y = self.cfg, *self.data.train
        rate = "--lr" if d.step - 1 < cfg.decay_step else "--lr-decayed"
        advice = f"train again with a lower {rate} (was {cfg.lr_at(max(d.step - 1, 0)):g}) and a new --out"
        if d.mean is not None:                     # finite but exploding: the params are those of step d.step
            self.save(d.step)
            return (f"training diverged: the mean loss of steps {d.first:,}-{d.step:,} is {d.mean:.4g}, more "
                    f"than {train.EXPLODE}x the first step's loss or ln(vocab) ({d.limit / train.EXPLODE:.4g}); "
                    f"saved the model after {d.step:,} steps in {self.ckpt} (for eval/plot); {advice}")
        good = [(k, s) for k, s in snaps if k <= d.step - 1]
        if not good:
            return (f"the loss is NaN/inf at step {d.step:,}, the first step of this run; check the data and "
                    f"the init, and lower {rate} (was {cfg.lr_at(d.step):g})")
        k, state = good[-1]
        for name, a in {**self.model.params, **buffers(self.model)}.items():
            a[...] = state[name]                   # the snapshot, then replay to the last finite loss
        if d.step - 1 > k:
            steps(X, Y, cfg, self.lossi, k, d.step - 1, None)
        self.save(d.step - 1)
        return (f"training diverged: the loss became NaN/inf at step {d.step:,} (last finite loss "
                f"{self.lossi[d.step - 1]:.4g} at step {d.step - 1:,}); saved the parameters that gave it in "
                f"{self.ckpt} (for eval/plot); {advice}")

    def finish(self) -> dict:
        """The end of a finished run: evaluate every split, sample 20 names, write metrics.json."""
        with np.errstate(over="ignore", invalid="ignore"):
            losses = {f"{k}_loss": train.evaluate(self.model, *xy) for k, xy in self.data.items()}
            names = train.sample(self.model, self.vocab, 20, seed=self.cfg.seed + 10)
        seconds = round(self.seconds + self.train_seconds, 3)     # every part's training time
        metrics = {**{k: v if np.isfinite(v) else None for k, v in losses.items()},  # JSON has no NaN
                   "steps": self.cfg.steps, "seconds": seconds, "parts": self.parts,
                   "steps_per_second": round(self.cfg.steps / seconds, 1) if seconds else None,
                   "num_params": self.model.num_params,
                   "config": {**self.cfg.to_dict(), **self.info, "model": self.model.kind, **self.model.sizes,
                              "dtype": str(self.model.dtype)},
                   "samples": names}
        for k in ("seconds", "parts"):
            metrics["config"].pop(k, None)
        atomic_write_json(self.out / "metrics.json", metrics)
        return metrics


def _load_resumable(out: Path):
    ckpt = out / "model.npz"
    if not ckpt.is_file():
        raise UsageError(f"--resume {out}: no model.npz there; give a run directory written by `npmlp train`")
    model, vocab, meta, lossi = load_checkpoint(ckpt)
    try:
        cfg = TrainConfig(**meta["train"])
        info, start = meta["run"], meta["step"]
        ok = (isinstance(start, int) and 0 <= start <= cfg.steps
              and isinstance(info.get("split_seed"), (int, type(None)))
              and isinstance(info.get("data"), (str, type(None))) and info.get("engine") in ENGINES
              and (model.kind != "mlp" or info.get("init") in ("lecture", "kaiming")))
    except (KeyError, TypeError, ValueError, AttributeError, NpmlpError):  # a field missing, of a wrong type...
        ok = False
    if not ok:
        raise NpmlpError(f"checkpoint {ckpt} has missing or malformed training state (config, step); "
                         f"it cannot be resumed")
    lossi = np.zeros(0, np.float32) if lossi is None else lossi
    if len(lossi) != start:
        raise NpmlpError(f"checkpoint {ckpt} holds {len(lossi):,} losses for {start:,} steps; the file is "
                         f"damaged and cannot be resumed")
    if start >= cfg.steps and (out / "metrics.json").exists():  # without it: stopped during evaluation
        where = shlex.quote(str(out))
        raise UsageError(f"{out} finished all {cfg.steps:,} steps already; nothing to resume (its losses: "
                         f"npmlp eval {where}; its figures: npmlp plot {where})")
    return model, vocab, meta, lossi


def _check_typed(typed: dict, out: Path, model, cfg: TrainConfig, info: dict) -> None:
    """--resume continues a run with its own options: refuse a typed option that says otherwise."""
    theirs = {**cfg.to_dict(), **model.sizes, "model": model.kind, "dtype": str(model.dtype),
              "init": info.get("init"), "split_seed": info["split_seed"], "engine": info["engine"]}
    shown = lambda v: "none" if v is None else v
    for key, mine in typed.items():
        if key in theirs and mine != theirs[key]:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {shown(mine)} differs from the run's {shown(theirs[key])}; --resume continues "
                             f"{out} with its own options: drop {flag}, or start a new run with another --out")
