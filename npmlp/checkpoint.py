"""Checkpoints: one .npz of plain arrays, written atomically, read with allow_pickle=False
(so loading a file can never run code), and validated before anything is used."""
from __future__ import annotations

import json
import zipfile

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
    arrays["meta"] = np.array(json.dumps(meta))          # a 0-d unicode array, not an object
    if lossi is not None:
        arrays["lossi"] = np.asarray(lossi, np.float32)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """-> (model, vocab, meta, lossi or None). Raises NpmlpError naming what is wrong."""
    name = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise NpmlpError(f"checkpoint {name} does not exist; give a run directory written by `npmlp train`") from None
    except IsADirectoryError:
        raise NpmlpError(f"{name} is a directory, not a checkpoint file") from None
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise NpmlpError(f"checkpoint {name} holds pickled Python objects; refusing to load it "
                             f"(loading could run code)") from None
        raise NpmlpError(f"checkpoint {name} is corrupt or truncated ({e}); retrain or use another copy") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise NpmlpError(f"checkpoint {name} is corrupt or truncated ({type(e).__name__}); "
                         f"retrain or use another copy") from None
    missing = [k for k in (*PARAM_NAMES, "meta") if k not in files]
    if missing:
        raise NpmlpError(f"checkpoint {name} lacks {', '.join(missing)}; it was not written by npmlp")
    try:
        meta = json.loads(str(files["meta"]))
        assert meta.get("format") == FORMAT
        vocab = Vocab(tuple(meta["itos"]))
        assert vocab.itos and vocab.itos[0] == "." and all(isinstance(c, str) and len(c) == 1 for c in vocab.itos)
        assert len(set(vocab.itos)) == len(vocab.itos)
        T, E, H = int(meta["block_size"]), int(meta["n_embd"]), int(meta["n_hidden"])
    except Exception:
        raise NpmlpError(f"checkpoint {name} has missing or malformed metadata; it was not written by "
                         f"this version of npmlp") from None
    want = param_shapes(vocab.size, T, E, H)
    for k in PARAM_NAMES:
        a = files[k]
        if a.shape != want[k]:
            raise NpmlpError(f"checkpoint {name}: {k} has shape {a.shape}, expected {want[k]} "
                             f"for vocab {vocab.size}, block_size {T}, n_embd {E}, n_hidden {H}")
        if a.dtype != np.dtype(meta["dtype"]) or a.dtype not in (np.float32, np.float64):
            raise NpmlpError(f"checkpoint {name}: {k} has dtype {a.dtype}, expected {meta['dtype']}")
        if not np.isfinite(a).all():
            raise NpmlpError(f"checkpoint {name}: {k} contains NaN or inf; the file is damaged")
    lossi = files.get("lossi")
    return MLP({k: files[k] for k in PARAM_NAMES}), vocab, meta, lossi
