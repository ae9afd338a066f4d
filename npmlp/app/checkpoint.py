"""Checkpoints: one .npz of plain arrays, written atomically, read with allow_pickle=False
(so loading a file can never run code), and validated before anything is used.

Format 2 names its model (`meta["model"]`, `meta["sizes"]`) and holds the model's params and
buffers (running statistics) by name. Format 1 (npmlp 0.1, the lecture's MLP only) still loads."""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fast
from ..contract import Model
from ..data import SPLIT_SEED, Vocab
from ..train import TrainConfig
from .errors import NpmlpError
from .files import atomic_open
from .registry import FORMAT_1, MODELS

PREFIX = "npmlp-checkpoint-"
VERSION = 2
FORMAT = f"{PREFIX}{VERSION}"
RESERVED = {"meta", "lossi"}   # array names that are not the model's
OPT = "opt."                   # ... nor are these, the optimiser's state
VARIANCE = re.compile(r"var")   # buffers that are variances (bnvar, running_var1...): never negative


@dataclass
class RunRecord:
    """What a run records beside its model and training config (a checkpoint's meta["run"]): its
    names file and their SHA-256, the split seed, the init scheme, the engine and the rounding
    version of its steps (fast.ARITHMETIC), the training seconds and parts so far, whether
    --diagnose samples the update:data ratios, and where the weights came from if not from npmlp
    (imported: makemore.py's model.pt). The one home of its fields and their checks."""
    engine: str
    data: str | None = None
    split_seed: int | None = SPLIT_SEED
    data_sha256: str | None = None
    init: str | None = None
    arithmetic: str | int = 1              # runs recorded before the key rounded as version 1
    seconds: float = 0.0
    parts: int | None = None               # None: recorded before the key (one part if any step was run)
    diagnose: bool = False
    imported: str | None = None            # the makemore.py model.pt its step 0 was read from

    @classmethod
    def from_json(cls, d, inits: tuple[str, ...] = ()) -> RunRecord:
        """The record of a checkpoint's meta["run"]; ValueError for a field missing, of a wrong type
        or out of range (inits: the model's schemes, one of which it must name, if it has any)."""
        def number(v, kind) -> bool:       # JSON's true is not a number of steps
            return isinstance(v, kind) and not isinstance(v, bool)

        if not isinstance(d, dict) or not set(d) <= {f.name for f in dataclasses.fields(cls)}:
            raise ValueError("run record")
        r = cls(**d)
        ok = (isinstance(r.split_seed, (int, type(None))) and not isinstance(r.split_seed, bool)
              and isinstance(r.data, (str, type(None)))
              and isinstance(r.data_sha256, (str, type(None)))
              and r.engine in fast.ENGINES
              and (r.init in inits if inits else r.init is None or isinstance(r.init, str))
              and (r.parts is None or number(r.parts, int) and r.parts >= 0)
              and (isinstance(r.arithmetic, str) or number(r.arithmetic, int) and r.arithmetic >= 0)
              and number(r.seconds, (int, float)) and 0 <= r.seconds < 1e12
              and isinstance(r.diagnose, bool)
              and isinstance(r.imported, (str, type(None))))
        if not ok:
            raise ValueError("run record")
        return r

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in ("parts", "imported")}

    def options(self) -> dict:
        """The run's own values of the options a --resume may not change."""
        return {"init": self.init, "split_seed": self.split_seed, "engine": self.engine}


def save_checkpoint(path, model, vocab: Vocab, meta: dict, lossi=None, opt_state: dict | None = None) -> None:
    """The model's params and buffers; `meta` (JSON: config, step...) with the model's kind,
    sizes, vocabulary and dtype added; optional lossi; the optimiser's state (AdamW's moments,
    train.AdamW.state(): 'm.NAME', 'v.NAME'), kept as 'opt.m.NAME', 'opt.v.NAME'."""
    arrays = {**model.params, **model.buffers}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise NpmlpError("refusing to save a checkpoint with NaN/inf parameters")
    arrays.update({f"{OPT}{k}": a for k, a in (opt_state or {}).items()})
    meta = dict(meta, format=FORMAT, model=model.kind, sizes=model.sizes, itos=list(vocab.itos),
                dtype=str(model.dtype))
    if lossi is not None:
        arrays["lossi"] = np.asarray(lossi, np.float32)
    meta["arrays"] = sorted([*arrays, "meta"])           # so a member lost from the zip is noticed
    arrays["meta"] = np.array(json.dumps(meta))          # a 0-d unicode array, not an object
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path, kind: str = "checkpoint", fix: str = "retrain or use another copy") -> dict:
    """Every array of an .npz that npmlp wrote (a checkpoint, or a side file such as --diagnose's
    update_ratio.npz: `kind` names it in the messages), read in full with allow_pickle=False, or
    NpmlpError ending with `fix`. The one way npmlp reads its .npz files: it never runs code."""
    name = str(path)
    corrupt = f"{kind} {name} is corrupt or truncated; {fix}"
    also = "" if kind == "checkpoint" else f"; {fix}"     # a side file's data may still be had from a copy
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise NpmlpError(f"{kind} {name} does not exist; give a run directory written by `npmlp train`") from None
    except IsADirectoryError:
        raise NpmlpError(f"{name} is a directory, not {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
                         + ("" if kind.endswith(" file") else " file")) from None
    except OSError as e:
        raise NpmlpError(f"cannot read {kind} {name}: {e.strerror}") from None
    if magic[:1] == b"\x80":  # the first byte of a pickle (protocol 2+): np.load would unpickle it
        raise NpmlpError(f"{name} is a Python pickle, not an npmlp {kind}; refusing to load it "
                         f"(unpickling can run code)" + also)
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise NpmlpError(f"{name} is not an npmlp {kind} (.npz); " + (
            "give a model.npz written by `npmlp train`" if kind == "checkpoint" else fix))
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}  # read everything now: a bad member fails here, not later
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise NpmlpError(f"{kind} {name} holds pickled Python objects; refusing to load it "
                             f"(unpickling can run code)" + also) from None
        raise NpmlpError(corrupt) from None
    except Exception:  # whatever a damaged zip or npy header makes the parsers raise (fuzzed in tests)
        raise NpmlpError(corrupt) from None


def _model_meta(meta) -> tuple[type[Model], dict]:
    """(model class, sizes) from the metadata of either format; raises on anything malformed."""
    if meta["format"] == FORMAT:
        cls = MODELS[meta["model"]]
        types: dict[str, Callable[[Any], Any]] = {"block_size": int, **{o.name: o.type for o in cls.spec.options}}
        given = meta["sizes"]
        if not isinstance(given, dict) or set(given) != set(types):
            raise ValueError(given)
        sizes = {}
        for k, kind in types.items():
            v = given[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or kind(v) != v:
                raise ValueError(k)
            sizes[k] = kind(v)
        return cls, sizes
    if meta["format"] != f"{PREFIX}1":
        raise ValueError(meta["format"])
    # format 1: the lecture's MLP, its sizes at the top level, trained by today's fast engine
    meta["model"], meta["run"] = FORMAT_1, dict(meta.get("run") or {})
    meta["sizes"] = {k: int(meta[k]) for k in ("block_size", "n_embd", "n_hidden")}
    meta["run"].setdefault("engine", "fast")
    return MODELS[FORMAT_1], meta["sizes"]


def _check_training_state(name: str, meta: dict, cls: type[Model], n_losses: int) -> None:
    """The training config, the run record and the step: what `npmlp train` wrote beside the
    model, checked for every command (a step past the run's end or a loss history of another
    length is damage, whichever command meets it first). meta["run"] becomes the record's JSON,
    its defaults filled in."""
    try:
        cfg = TrainConfig(**meta["train"])
        meta["run"] = RunRecord.from_json(meta["run"], cls.spec.inits).to_json()
        step = meta["step"]
        ok = isinstance(step, int) and not isinstance(step, bool)
    except (KeyError, TypeError, ValueError, AttributeError):  # a field missing, of a wrong type...
        ok = False
    if not ok:
        raise NpmlpError(f"checkpoint {name} has missing or malformed training state (config, step, run record); "
                         f"the file is damaged or was not written by npmlp")
    if not 0 <= step <= cfg.steps:
        raise NpmlpError(f"checkpoint {name} is at step {step:,} of a {cfg.steps:,}-step run; the file is damaged")
    if n_losses != step:
        raise NpmlpError(f"checkpoint {name} holds {n_losses:,} losses for {step:,} steps; the file is damaged")


def _check_opt_state(name: str, meta: dict, pshapes: dict, dtype, state: dict) -> dict:
    """The optimiser's state a checkpoint holds: AdamW's moments of every parameter (m finite, v
    finite and >= 0, of its shape and dtype) and its step count opt_t, or nothing for SGD."""
    adamw = meta["train"].get("optimizer") == "adamw"
    want = {f"{m}.{k}": s for k, s in pshapes.items() for m in "mv"} if adamw else {}
    t = meta.get("opt_t", 0 if not adamw else None)
    if set(state) != set(want) or not (isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= meta["step"]):
        raise NpmlpError(f"checkpoint {name} holds no complete optimiser state for its {'AdamW' if adamw else 'SGD'} "
                         f"run (moments {', '.join(sorted(state)) or 'none'}, step count {t!r}); the file is damaged")
    for k, a in state.items():
        if a.shape != tuple(want[k]) or a.dtype != dtype or not np.isfinite(a).all() or (k[0] == "v" and (a < 0).any()):
            raise NpmlpError(f"checkpoint {name}: the optimiser's {k} is not a finite {dtype} array of shape "
                             f"{tuple(want[k])}{' >= 0' if k[0] == 'v' else ''}; the file is damaged")
    return state


def _bounded(cls: type[Model], sizes: dict, files: dict) -> bool:
    """Sizes whose shapes may be listed: each within its option's bounds, and a size that counts
    repeated layers no larger than the file's arrays (a tampered n_layers of 10^9 is refused
    before 10^9 shapes are listed). Every other size is checked by the shapes it gives."""
    if sizes["block_size"] < 1:
        return False
    for o in cls.spec.options:
        v = sizes[o.name]
        if v < o.minimum or (o.maximum is not None and v >= o.maximum) or (o.repeats and v > len(files)):
            return False
    return True


def load_checkpoint(path):
    """-> (model, vocab, meta, lossi or None). Raises NpmlpError naming what is wrong; a model is
    built only from a file that passed every check."""
    name = str(path)
    files = read_npz(path)
    if "meta" not in files:
        raise NpmlpError(f"checkpoint {name} lacks meta; it was not written by npmlp")
    try:
        meta = json.loads(str(files["meta"]))
        fmt = meta["format"]
    except Exception:  # not JSON, not a dict, no format
        fmt = meta = None
    if isinstance(fmt, str) and fmt.startswith(PREFIX) and fmt not in (FORMAT, f"{PREFIX}1"):
        raise NpmlpError(f"checkpoint {name} has format {fmt!r}, newer than this npmlp reads ({FORMAT!r}); "
                         f"upgrade npmlp")
    kind = meta.get("model") if fmt == FORMAT else None
    if isinstance(kind, str) and kind not in MODELS:
        raise NpmlpError(f"checkpoint {name} holds a {kind!r} model, which this npmlp does not know (it knows "
                         f"{', '.join(MODELS)}); upgrade npmlp")
    try:
        cls, sizes = _model_meta(meta)
        itos = meta["itos"]
        dtype = np.dtype(meta["dtype"])
        ok = (isinstance(itos, list) and itos[:1] == ["."] and len(set(itos)) == len(itos)
              and all(isinstance(c, str) and len(c) == 1 for c in itos)
              and dtype in (np.float32, np.float64)
              and _bounded(cls, sizes, files))
        if not ok:
            raise ValueError(sizes)
        pshapes = cls.shapes(len(itos), **sizes)
        want = {**pshapes, **cls.buffer_shapes(len(itos), **sizes)}
    except Exception:  # a key missing, a value of the wrong type, an unknown model or size...
        ok = False
    if not ok:
        raise NpmlpError(f"checkpoint {name} has missing or malformed metadata; it was not written by "
                         f"this version of npmlp")
    missing = [k for k in want if k not in files]
    if missing:
        raise NpmlpError(f"checkpoint {name} lacks {', '.join(missing)}; it was not written by npmlp")
    opt_state = {k[len(OPT):]: a for k, a in files.items() if k.startswith(OPT)}
    extra = sorted(set(files) - set(want) - RESERVED - {OPT + k for k in opt_state})
    if extra:  # e.g. a damaged member name: refuse rather than load part of the file
        raise NpmlpError(f"checkpoint {name} holds unexpected arrays {', '.join(extra)}; it is damaged or "
                         f"was not written by npmlp")
    listed = meta.get("arrays")
    if listed is not None and sorted(files) != listed:  # zip members are CRC-checked, their list is not
        raise NpmlpError(f"checkpoint {name} holds arrays {', '.join(sorted(files))} but was written with "
                         f"{', '.join(map(str, listed))}; the file is damaged")
    vocab = Vocab(tuple(itos))
    for k, shape in want.items():
        a = files[k]
        if a.shape != shape:
            raise NpmlpError(f"checkpoint {name}: {k} has shape {a.shape}, expected {shape} "
                             f"for vocab {vocab.size}, {', '.join(f'{s} {v}' for s, v in sizes.items())}")
        if a.dtype != dtype:
            raise NpmlpError(f"checkpoint {name}: {k} has dtype {a.dtype}, expected {dtype}")
        if not np.isfinite(a).all():
            raise NpmlpError(f"checkpoint {name}: {k} contains NaN or inf; the file is damaged")
        if VARIANCE.search(k) and k not in pshapes and (a < 0).any():
            raise NpmlpError(f"checkpoint {name}: {k} holds negative values ({a.min():.4g}), and a variance "
                             f"cannot be negative; the file is damaged")
    lossi = files.get("lossi")
    if lossi is not None and (lossi.ndim != 1 or lossi.dtype != np.float32 or not np.isfinite(lossi).all()):
        raise NpmlpError(f"checkpoint {name}: the loss history lossi is not a finite float32 vector "
                         f"(shape {lossi.shape}, dtype {lossi.dtype}); the file is damaged")
    _check_training_state(name, meta, cls, 0 if lossi is None else len(lossi))
    meta["opt_state"] = _check_opt_state(name, meta, pshapes, dtype, opt_state)
    model = cls.from_params({k: files[k] for k in pshapes}, sizes, {k: files[k] for k in want if k not in pshapes})
    return model, vocab, meta, lossi
