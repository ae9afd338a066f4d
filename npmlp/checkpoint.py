"""Checkpoints: one .npz of plain arrays, written atomically, read with allow_pickle=False
(so loading a file can never run code), and validated before anything is used."""
from __future__ import annotations

import json

import numpy as np

from .data import Vocab
from .errors import NpmlpError
from .fileio import atomic_open
from .model import MLP, PARAM_NAMES, param_shapes

FORMAT = "npmlp-checkpoint-1"


def save_checkpoint(path, model: MLP, vocab: Vocab, meta: dict, lossi=None) -> None:
    """params C, W1, b1, W2, b2; `meta` (JSON: vocab, sizes, config, step...); optional lossi."""
    if not np.isfinite(model.flat).all():
        raise NpmlpError("refusing to save a checkpoint with NaN/inf parameters")
    meta = dict(meta, format=FORMAT, itos=list(vocab.itos), dtype=str(model.dtype),
                block_size=model.block_size, n_embd=model.n_embd, n_hidden=model.n_hidden)
    arrays = {k: model.params[k] for k in PARAM_NAMES}
    if lossi is not None:
        arrays["lossi"] = np.asarray(lossi, np.float32)
    meta["arrays"] = sorted([*arrays, "meta"])           # so a member lost from the zip is noticed
    arrays["meta"] = np.array(json.dumps(meta))          # a 0-d unicode array, not an object
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_arrays(path, name: str) -> dict:
    """Every array of the .npz, read in full with allow_pickle=False, or NpmlpError."""
    corrupt = f"checkpoint {name} is corrupt or truncated; retrain or use another copy"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise NpmlpError(f"checkpoint {name} does not exist; give a run directory written by `npmlp train`") from None
    except IsADirectoryError:
        raise NpmlpError(f"{name} is a directory, not a checkpoint file") from None
    except OSError as e:
        raise NpmlpError(f"cannot read checkpoint {name}: {e.strerror}") from None
    if magic[:1] == b"\x80":  # the first byte of a pickle (protocol 2+): np.load would unpickle it
        raise NpmlpError(f"{name} is a Python pickle, not an npmlp checkpoint; refusing to load it "
                         f"(unpickling can run code)")
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise NpmlpError(f"{name} is not an npmlp checkpoint (.npz); give a model.npz written by `npmlp train`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}  # read everything now: a bad member fails here, not later
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise NpmlpError(f"checkpoint {name} holds pickled Python objects; refusing to load it "
                             f"(unpickling can run code)") from None
        raise NpmlpError(corrupt) from None
    except Exception:  # whatever a damaged zip or npy header makes the parsers raise (fuzzed in tests)
        raise NpmlpError(corrupt) from None


def load_checkpoint(path):
    """-> (model, vocab, meta, lossi or None). Raises NpmlpError naming what is wrong."""
    name = str(path)
    files = _read_arrays(path, name)
    missing = [k for k in (*PARAM_NAMES, "meta") if k not in files]
    if missing:
        raise NpmlpError(f"checkpoint {name} lacks {', '.join(missing)}; it was not written by npmlp")
    extra = sorted(set(files) - {*PARAM_NAMES, "meta", "lossi"})
    if extra:  # e.g. a damaged member name: refuse rather than load part of the file
        raise NpmlpError(f"checkpoint {name} holds unexpected arrays {', '.join(extra)}; it is damaged or "
                         f"was not written by npmlp")
    try:
        meta = json.loads(str(files["meta"]))
        itos = meta["itos"]
        T, E, H = int(meta["block_size"]), int(meta["n_embd"]), int(meta["n_hidden"])
        dtype = np.dtype(meta["dtype"])
        ok = (meta.get("format") == FORMAT and isinstance(itos, list) and itos[:1] == ["."]
              and all(isinstance(c, str) and len(c) == 1 for c in itos) and len(set(itos)) == len(itos)
              and min(T, E, H) >= 1 and dtype in (np.float32, np.float64))
    except Exception:  # not JSON, not a dict, a key missing, a value of the wrong type...
        ok = False
    if not ok:
        raise NpmlpError(f"checkpoint {name} has missing or malformed metadata; it was not written by "
                         f"this version of npmlp")
    listed = meta.get("arrays")
    if listed is not None and sorted(files) != listed:  # zip members are CRC-checked, their list is not
        raise NpmlpError(f"checkpoint {name} holds arrays {', '.join(sorted(files))} but was written with "
                         f"{', '.join(map(str, listed))}; the file is damaged")
    vocab = Vocab(tuple(itos))
    want = param_shapes(vocab.size, T, E, H)
    for k in PARAM_NAMES:
        a = files[k]
        if a.shape != want[k]:
            raise NpmlpError(f"checkpoint {name}: {k} has shape {a.shape}, expected {want[k]} "
                             f"for vocab {vocab.size}, block_size {T}, n_embd {E}, n_hidden {H}")
        if a.dtype != dtype:
            raise NpmlpError(f"checkpoint {name}: {k} has dtype {a.dtype}, expected {dtype}")
        if not np.isfinite(a).all():
            raise NpmlpError(f"checkpoint {name}: {k} contains NaN or inf; the file is damaged")
    lossi = files.get("lossi")
    if lossi is not None and (lossi.ndim != 1 or lossi.dtype != np.float32 or not np.isfinite(lossi).all()):
        raise NpmlpError(f"checkpoint {name}: the loss history lossi is not a finite float32 vector "
                         f"(shape {lossi.shape}, dtype {lossi.dtype}); the file is damaged")
    return MLP({k: files[k] for k in PARAM_NAMES}), vocab, meta, lossi
