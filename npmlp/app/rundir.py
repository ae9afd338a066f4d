"""A run directory's life, from start to finish: a new run (or a resumed one) with its data and
model, the training steps (by either engine) with snapshots for divergence, the checkpoint, and
the metrics at the end. cli.py turns options into these calls and prints what they return.

    runs/RUN/model.npz      params (and buffers), loss history, config, step: see checkpoint.py
    runs/RUN/metrics.json   train/dev/test loss, samples, wall time: written when training ends
    runs/RUN/.npmlp.lock    held while a `npmlp train` writes here
"""
from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import fast, train
from ..contract import SEQUENCES, WINDOWS
from ..data import SPLIT_SEED
from ..fast.dataset import build_dataset
from ..loading import Splits
from ..train import Diverged, TrainConfig
from .checkpoint import RunRecord, load_checkpoint, save_checkpoint
from .errors import NpmlpError, UsageError
from .files import atomic_write_json, cannot_write
from .options import MODEL_OPTIONS, check_batch, check_memory, flag, option_text
from .registry import make_model, model_class, options, owners_text

SNAPSHOT = 1000   # steps between copies of the model kept to replay a divergence from
BEST = "best.npz"  # with --eval-every: the checkpoint of the best dev estimate, beside the last (model.npz)


# ----------------------------------------------------------------------------- data

def run_data(data, record: RunRecord):
    """The names file of a run: `data` if given, else the path the run recorded (None: the download)."""
    if data:
        return data
    path = record.data
    if path is not None and not Path(path).exists():
        raise NpmlpError(f"the run's names file {path} no longer exists; pass its new place with --data FILE")
    return path


def run_splits(data, meta, model, vocab, batch_size: int | None = 1, steps: int = 0,
               subject: str = "this run") -> Splits:
    """The rows a run was trained and evaluated on: its data file (or `data`) and split seed;
    refused before they are built if they, the model and a batch of batch_size rows (and `steps`
    losses) cannot fit in memory (options.check_memory; `subject` names the run there)."""
    record = RunRecord.from_json(meta["run"])
    return splits(run_data(data, record), record.split_seed, model.block_size, model.spec.data, vocab,
                  digest=record.data_sha256,
                  check=lambda n_rows, v, T: check_memory(model.kind, model.sizes, v, n_rows, batch_size, steps,
                                                          subject=subject))


def fresh_splits(kind: str, sizes: dict, data, split_seed, batch_size: int | None, steps: int = 0,
                 typed=None) -> Splits:
    """The rows a fresh model of `kind` and `sizes` trains on, refused before they are built if
    they, the model and a batch of batch_size rows (and `steps` losses) cannot fit in memory
    (options.check_memory; `typed`: the options on the command line, for its message). A sequence
    model's block size is the data's (the longest name + 1): fresh_sizes adds it."""
    spec = model_class(kind).spec
    block = None if spec.data == SEQUENCES else sizes["block_size"]
    return splits(data, split_seed, block, spec.data, check=lambda n_rows, vocab, T: check_memory(
        kind, {**sizes, "block_size": T}, vocab, n_rows, batch_size, steps, typed=typed))


def fresh_sizes(sizes: dict, rows: Splits) -> dict:
    """A fresh model's sizes with its block size: the option's, or the data's for a sequence model."""
    return {**sizes, "block_size": rows.block_size}


def splits(data, split_seed, block_size, form=WINDOWS, vocab=None, digest=None, check=None) -> Splits:
    """loading.Splits with the rows built vectorised (fast.dataset), as every command reads them;
    check(n_rows, vocab, T) runs before any row is built (the memory check)."""
    return Splits(data, split_seed, block_size, vocab, digest, build=build_dataset, check=check, form=form)


def refuse_existing(out: Path) -> None:
    """A new run never writes over another's files: its checkpoint, or the metrics and update:data
    ratios a run left without one (a later `npmlp diagnose` would read them as the new run's)."""
    if (out / "model.npz").is_file():
        raise UsageError(f"{out} already holds a run; choose another --out, or continue it with --resume {out}")
    from .diagnose import RATIOS
    left = [name for name in ("model.npz", "metrics.json", RATIOS) if (out / name).exists()]
    if left:
        raise UsageError(f"{out} holds {' and '.join(left)} of another run (but no checkpoint to resume); "
                         f"choose another --out")


# ----------------------------------------------------------------------------- a run

class Run:
    """What a run directory holds while it trains: the model and its vocabulary, the training
    config, its `record` (what else the run records: checkpoint.RunRecord), the loss history and
    the next step."""

    def __init__(self, out: Path, model, vocab, cfg: TrainConfig, record: RunRecord, lossi, start: int,
                 data: Splits, ratios=None):
        self.out, self.ckpt = out, out / "model.npz"
        self.model, self.vocab, self.cfg, self.record, self.data = model, vocab, cfg, record, data
        self.lossi, self.start, self.step = lossi, start, start
        self.notes: list[str] = []                # about the run itself (the data's are data.notes)
        check_batch(cfg.batch_size, model, len(data.train[0]))
        self.stopped = False                       # on_step asked to stop
        self.seconds = record.seconds              # training time of the earlier parts ...
        self.parts = (record.parts if record.parts is not None else 1 if start else 0) + 1   # ... and this one
        self._t0: float | None = None              # when this part's training began ...
        self._t1: float | None = None              # ... and ended
        self.ratios = ratios                       # diagnose.UpdateRatios, sampled while training (--diagnose)
        if ratios is not None:
            record.diagnose = True
        self.opt = train.optimizer(cfg, model.params)   # AdamW's moments are part of the run
        self.evals: list[list] = []                # [step, train estimate, dev estimate] every cfg.eval_every
        self.best: dict | None = None              # {"step", "dev"}: the checkpoint in best.npz
        self.best_ckpt = out / BEST
        self.on_eval: Callable | None = None       # on_eval(step, train, dev, best): a line for the user

    @classmethod
    def new(cls, out: Path, kind: str, sizes: dict, cfg: TrainConfig, engine: str, data=None, split_seed=SPLIT_SEED,
            dtype=np.float32, init=None, diagnose=False, typed=None):
        """A fresh run of model `kind` in `out` (the caller has refused one there: refuse_existing),
        trained by `engine` (checked: options.check_engine). init: the MLP's init scheme ('lecture'
        or 'kaiming'); the other models have their lecture's own. typed: the options on the
        command line, for the memory check's message."""
        rows = fresh_splits(kind, sizes, data, split_seed, cfg.batch_size, cfg.steps, typed)
        model = make_model(kind, rows.vocab.size, fresh_sizes(sizes, rows), cfg.seed, dtype, init)
        record = RunRecord(engine, str(rows.source.resolve()) if rows.source else None, split_seed, rows.digest,
                           init, fast.ARITHMETIC[engine], parts=0)
        ratios = None
        if diagnose:
            from .diagnose import UpdateRatios
            ratios = UpdateRatios(model.params)
        return cls(out, model, rows.vocab, cfg, record, np.zeros(cfg.steps, np.float32), 0, rows, ratios)

    @classmethod
    def resume(cls, out: Path, typed: dict, data=None, diagnose=False):
        """The run in `out`, ready to continue. typed: the options given on the command line
        (name -> value); one that differs from the run's own is refused."""
        model, vocab, meta, lossi, ratios, notes = load_resumable(out, typed, diagnose)
        cfg = TrainConfig(**meta["train"])
        if meta["step"] == 0 and "steps" in typed:     # nothing trained yet: the run's length is still open
            cfg = dataclasses.replace(cfg, steps=typed["steps"])
        record = RunRecord.from_json(meta["run"])
        rows = run_splits(data, meta, model, vocab, cfg.batch_size, cfg.steps, subject=f"the run in {out}")
        if data:                                    # the same names from a new place: remember it
            record.data = str(Path(data).resolve())
        run = cls(out, model, vocab, cfg, record, np.concatenate(
            [lossi, np.zeros(cfg.steps - meta["step"], np.float32)]), meta["step"], rows, ratios)
        if isinstance(run.opt, train.AdamW):
            run.opt.load_state(meta["opt_state"], meta["opt_t"])
        run.evals, run.best = meta.get("evals", []), meta.get("best")
        run.notes += notes
        if record.arithmetic != fast.ARITHMETIC[record.engine]:
            run.notes.append(f"{out} was trained by an older npmlp whose steps round differently; it continues "
                             f"correctly, but not bit-identically to an uninterrupted run of that version")
            record.arithmetic = fast.ARITHMETIC[record.engine]
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
                f"({self.model.dtype}), {self.record.engine} engine; {verb}; writing {self.out}/")

    def meta(self, step: int) -> dict:
        """What a checkpoint at `step` records beside the arrays (checkpoint.save_checkpoint)."""
        record = dataclasses.replace(self.record, seconds=round(self.seconds + self.train_seconds, 3),
                                     parts=self.parts)
        meta = {"train": self.cfg.to_dict(), "run": record.to_json(), "step": step, "complete": step >= self.cfg.steps}
        if self.cfg.eval_every:
            meta.update(evals=[e for e in self.evals if e[0] <= step], best=self.best)
        if isinstance(self.opt, train.AdamW):
            meta["opt_t"] = self.opt.t
        return meta

    def save(self, step: int | None = None, path: Path | None = None) -> None:
        """model.npz (or `path`) at `step` (default: the steps done), with the training seconds so far
        and the optimiser's state."""
        step = self.step if step is None else step
        path = self.ckpt if path is None else path
        meta = self.meta(step)
        with np.errstate(over="ignore", invalid="ignore"):
            self.model.calibrate(self.data.train[0])   # statistics for inference, from the training split (bn's)
        bad = train.nonfinite(self.model, self.opt)
        earlier = self.ckpt.is_file()                  # the write is atomic: an older model.npz stays intact
        if bad is not None:                            # a calibration that overflows: nothing to keep
            raise NpmlpError(f"training diverged: the {bad} is NaN/inf, so {path} cannot be written"
                             + (f" ({self.ckpt} from an earlier save is intact)" if earlier else "")
                             + "; train again with a lower --lr and a new --out")
        try:
            if self.ratios is not None and path == self.ckpt:   # first: the side file holds the checkpoint's samples
                from .diagnose import RATIOS
                self.ratios.until(step).save(self.out / RATIOS)
            save_checkpoint(path, self.model, self.vocab, meta, self.lossi[:step], self.opt.state())
        except OSError as e:
            why = f"cannot write {path}: {e.strerror or e}"
            if earlier:
                raise NpmlpError(f"{why}; the checkpoint of an earlier save is intact: free space or fix permissions, "
                                 f"then resume with: npmlp train --resume {shlex.quote(str(self.out))}") from None
            raise NpmlpError(f"{why}; nothing of this run is saved: free space or fix permissions, then train "
                             f"again") from None

    def estimate(self) -> None:
        """--eval-every: the loss on the fixed rows of the train and dev splits (train.estimate_rows)
        at the steps done; a better dev estimate saves best.npz. on_eval is told."""
        train_rows, dev_rows = (train.estimate_rows(xy[1], self.cfg.seed) for xy in (self.data.train, self.data.dev))
        with np.errstate(over="ignore", invalid="ignore"):       # by the run's engine, as at the end
            t = fast.evaluate(self.model, self.data.train[0][train_rows], self.data.train[1][train_rows],
                              self.record.engine)
            d = fast.evaluate(self.model, self.data.dev[0][dev_rows], self.data.dev[1][dev_rows], self.record.engine)
        self.evals.append([self.step, t, d])
        better = np.isfinite(d) and (self.best is None or d < self.best["dev"])
        if better:
            self.best = {"step": self.step, "dev": d}
            self.save(path=self.best_ckpt)
        if self.on_eval is not None:
            self.on_eval(self.step, t, d, better)

    def train(self, steps, on_step=None) -> int:
        """Run the steps with `steps` (fast.steps) from self.step until cfg.steps or until
        on_step(step, loss) returns True; -> the steps done. On divergence or a helper's failure
        it saves what can be kept and raises NpmlpError saying what happened and what to do."""
        from ..fast.parallel import HelperFailed
        X, Y = self.data.train
        snaps = [self._snapshot()]                 # the last two: a divergence replays from one
        self._t0 = time.perf_counter()

        def each(step, loss):
            self.step = step + 1
            self.stopped = on_step is not None and bool(on_step(step, loss))
            return self.stopped

        # the steps run in segments: between two, the model holds the current params (the fast
        # engine works on its own copy), a snapshot is taken, with --diagnose the update:data
        # ratios are sampled, and with --eval-every the losses estimated
        periods = [SNAPSHOT] + [self.cfg.eval_every] * bool(self.cfg.eval_every)
        if self.ratios is not None:
            from .diagnose import EVERY
            periods.append(EVERY)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # a NaN/inf is caught as divergence, not warned of
                try:
                    while not self.finished and not self.stopped:
                        if self.ratios is not None and self.step % EVERY == 0:
                            self.ratios.record(self.model, X, Y, self.cfg, self.step)
                        stop = min([self.cfg.steps] + [(self.step // p + 1) * p for p in periods])
                        steps(X, Y, self.cfg, self.lossi, self.step, stop, each)
                        if train.nonfinite(self.model, self.opt) is not None:   # while the loss stayed finite
                            raise NpmlpError(self._diverged(None, steps, snaps))
                        snaps = [snaps[-1], self._snapshot()]
                        if self.cfg.eval_every and self.step == stop and (
                                stop % self.cfg.eval_every == 0 or stop == self.cfg.steps):
                            self.estimate()
                except Diverged as d:
                    raise NpmlpError(self._diverged(d, steps, snaps)) from None
        except HelperFailed as e:                  # the failed step was not applied: keep the rest
            self.save()
            raise NpmlpError(f"{e} after step {self.step:,}; saved {self.ckpt}; resume with: npmlp train "
                             f"--resume {shlex.quote(str(self.out))} (add --processes 1 if it happens again)") from None
        finally:
            self._t1 = time.perf_counter()
        return self.step

    def _snapshot(self):
        """(step, copies of the params, buffers and the optimiser's state)."""
        state = {**self.model.params, **self.model.buffers, **{f"opt.{k}": a for k, a in self.opt.state().items()}}
        return self.step, {k: a.copy() for k, a in state.items()}, self.opt.t

    def _restore(self, snap) -> int:
        """The model and the optimiser back to a snapshot; -> its step."""
        k, state, t = snap
        for name, a in {**self.model.params, **self.model.buffers}.items():
            a[...] = state[name]
        self.opt.load_state({name[4:]: a for name, a in state.items() if name.startswith("opt.")}, t)
        return k

    def _replay(self, steps, snap, until: int) -> tuple[int, str | None]:
        """From the snapshot `snap`, the steps up to `until` again (bit-identical: the minibatches
        follow from the seed and the step); if the params, buffers or optimiser state turn NaN/inf
        on the way (train.nonfinite), only up to the last step that leaves them finite, found step
        by step. -> (the steps the model now holds, what overflowed, or None)."""
        X, Y = self.data.train
        k = self._restore(snap)
        steps(X, Y, self.cfg, self.lossi, k, until, None)
        overflowed = train.nonfinite(self.model, self.opt)
        if overflowed is None:
            return until, None
        self._restore(snap)
        for step in range(k, until):                # the step whose forward or update overflows
            steps(X, Y, self.cfg, self.lossi, step, step + 1, None)
            bad = train.nonfinite(self.model, self.opt)
            if bad is not None:
                self._restore(snap)
                steps(X, Y, self.cfg, self.lossi, k, step, None)
                return step, bad
        self._restore(snap)                         # not found again (never seen): the snapshot is finite
        return k, overflowed

    def _diverged(self, d: Diverged | None, steps, snaps) -> str:
        """Save what a divergence leaves worth keeping; -> the message. d: what a step's loss raised,
        or None when the loss stayed finite while the params, running statistics or optimiser state
        became NaN/inf during the steps done (train.nonfinite)."""
        cfg = self.cfg

        def advice(step: int, statistics: bool = False) -> str:
            rate = "--lr" if step < cfg.decay_step else "--lr-decayed"
            few = (f" or a larger --batch-size (was {cfg.batch_size}: BatchNorm's statistics of so few rows are "
                   f"noisy)" if statistics and self.model.min_batch > 1 and cfg.batch_size is not None
                   and cfg.batch_size < 32 else "")                 # below the lectures' batch
            return f"train again with a lower {rate} (was {cfg.lr_at(step):g}){few} and a new --out"

        exploded = d is not None and d.mean is not None and d.limit is not None
        if exploded and train.nonfinite(self.model, self.opt) is None:
            assert d is not None and d.limit is not None
            self.save(d.step)                       # finite but exploding: the params are those of step d.step
            return (f"training diverged: the mean loss of steps {d.first:,}-{d.step:,} is {d.mean:.4g}, more "
                    f"than {train.EXPLODE}x the first step's loss or ln(vocab) ({d.limit / train.EXPLODE:.4g}); "
                    f"saved the model after {d.step:,} steps in {self.ckpt} (for eval/plot); "
                    f"{advice(max(d.step - 1, 0))}")
        # back to the last snapshot before the trouble, then replay to the last finite loss (or the
        # steps done), stopping early where the params or statistics overflow
        until = self.step if d is None else d.step if d.mean is not None else d.step - 1
        good = [snap for snap in snaps if snap[0] <= until]
        if not good:                                # the first step's loss: the checkpoint, if any, is kept
            assert d is not None
            return (f"the loss is NaN/inf at step {d.step:,}, the first step of this run; check the data and "
                    f"the init, and lower {'--lr' if d.step - 1 < cfg.decay_step else '--lr-decayed'} "
                    f"(was {cfg.lr_at(d.step):g})")
        step, bad = self._replay(steps, good[-1], until)
        self.save(step)
        if bad is not None:
            return (f"training diverged: the {bad} became NaN/inf at step {step:,}, though the loss stayed finite "
                    f"({self.lossi[step]:.4g}); saved the model after {step:,} steps in {self.ckpt} (for eval/plot); "
                    f"{advice(step, bad.startswith('running statistic'))}")
        assert d is not None
        return (f"training diverged: the loss became NaN/inf at step {d.step:,} (last finite loss "
                f"{self.lossi[d.step - 1]:.4g} at step {d.step - 1:,}); saved the parameters that gave it in "
                f"{self.ckpt} (for eval/plot); {advice(d.step - 1)}")

    def finish(self) -> dict:
        """The end of a finished run: evaluate every split, sample 20 names, write metrics.json. With
        --eval-every, of the model with the best dev estimate (best.npz; the last's losses beside)."""
        def losses_of(model):
            with np.errstate(over="ignore", invalid="ignore"):
                return {f"{k}_loss": fast.evaluate(model, *xy, self.record.engine) for k, xy in self.data.items()}

        model, step, last = self.model, self.cfg.steps, None
        if self.best is not None and self.best["step"] != self.cfg.steps and self.best_ckpt.is_file():
            model, step = load_checkpoint(self.best_ckpt)[0], self.best["step"]
            last = {k: v if np.isfinite(v) else None for k, v in losses_of(self.model).items()}
        losses = losses_of(model)
        with np.errstate(over="ignore", invalid="ignore"):
            names = train.sample(model, self.vocab, 20, seed=self.cfg.seed + 10)
        seconds = round(self.seconds + self.train_seconds, 3)     # every part's training time
        metrics = {**{k: v if np.isfinite(v) else None for k, v in losses.items()},  # JSON has no NaN
                   "step": step, **({"last": last} if last is not None else {}),
                   **({"evals": self.evals} if self.cfg.eval_every else {}),
                   "steps": self.cfg.steps, "seconds": seconds, "parts": self.parts,
                   "steps_per_second": round(self.cfg.steps / seconds, 1) if seconds else None,
                   "num_params": self.model.num_params,
                   "config": {**self.cfg.to_dict(), **self.record.to_json(), "model": self.model.kind,
                              **self.model.sizes, "dtype": str(self.model.dtype)},
                   "samples": names}
        for k in ("seconds", "parts"):
            metrics["config"].pop(k, None)
        try:
            atomic_write_json(self.out / "metrics.json", metrics)
        except OSError as e:
            raise cannot_write(self.out / "metrics.json", e) from None
        return metrics


def load_resumable(out: Path, typed: dict, diagnose: bool = False):
    """Everything --resume needs from `out`, checked: the checkpoint (load_checkpoint), that the run
    is not finished, that the typed options are the run's own, and (with --diagnose) the update:data
    ratios sampled so far (diagnose.UpdateRatios.load). -> (model, vocab, meta, lossi, ratios or
    None, notes about the run). Run.resume calls it; cli.py also calls it when the run's folder
    cannot be written, so a run that cannot be resumed anyway is refused as such first."""
    ckpt = out / "model.npz"
    if not ckpt.is_file():
        raise UsageError(f"--resume {out}: no model.npz there; give a run directory written by `npmlp train`")
    model, vocab, meta, lossi = load_checkpoint(ckpt)
    cfg, record, start = TrainConfig(**meta["train"]), RunRecord.from_json(meta["run"]), meta["step"]
    lossi = np.zeros(0, np.float32) if lossi is None else lossi
    if start >= cfg.steps and (out / "metrics.json").exists():  # without it: stopped during evaluation
        where = shlex.quote(str(out))
        raise UsageError(f"{out} finished all {cfg.steps:,} steps already; nothing to resume (its losses: "
                         f"npmlp eval {where}; its figures: npmlp plot {where})")
    _check_typed(typed, out, model, cfg, record, start)
    ratios, notes = None, []
    if diagnose or record.diagnose:
        from .diagnose import RATIOS, UpdateRatios
        kept = UpdateRatios.load(out / RATIOS, model.params, start) if start else None
        if kept is None and record.diagnose and start:
            notes.append(f"{out / RATIOS}, where this run kept its update:data ratios (--diagnose), is missing: "
                         f"the samples before step {start:,} are lost; sampling goes on from step {start:,}")
        ratios = kept.until(start) if kept is not None else UpdateRatios(model.params)
    return model, vocab, meta, lossi, ratios, notes


def _check_typed(typed: dict, out: Path, model, cfg: TrainConfig, record: RunRecord, start: int) -> None:
    """--resume continues a run with its own options: refuse a typed option that says otherwise,
    or that the run's model does not have. A run at step 0 (an imported one) may take --steps."""
    theirs = {**cfg.to_dict(), **model.sizes, "model": model.kind, "dtype": str(model.dtype), **record.options()}
    for key, mine in typed.items():
        if key == "steps" and start == 0:
            continue
        if key not in theirs and key in MODEL_OPTIONS:
            raise UsageError(f"{flag(key)} applies to {owners_text(key)} only, and {out} holds a "
                             f"{model.kind} model; "
                             f"--resume continues it with its own options: drop {flag(key)}")
        if key in theirs and mine != theirs[key]:
            o, their, typed_text = options().get(key), theirs[key], option_text(key, mine)
            if o is not None and o.const is not None:       # a switch: its states in words, or its values
                their, typed_text = (o.states[their], o.cli) if o.states else (their, f"{o.cli} {mine}")
            raise UsageError(f"{typed_text} differs from the run's {'none' if their is None else their}; "
                             f"--resume continues {out} with its own options: drop {flag(key)}, or start a new run "
                             f"with another --out")
