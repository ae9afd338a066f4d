"""Files the application writes: whole or not at all (data.atomic_open), and the lock that keeps
a run directory to one `npmlp train` at a time."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..data import atomic_open
from .errors import UsageError

try:
    import fcntl
except ImportError:      # not POSIX: the lock falls back to an exclusive create
    fcntl = None

LOCK = ".npmlp.lock"

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "make_out_dir", "claim", "LOCK"]


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


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
