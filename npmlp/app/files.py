"""Files the application writes: whole or not at all (loading.atomic_open), and the lock that keeps
a run directory to one `npmlp train` at a time."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from ..loading import atomic_open
from .errors import NpmlpError, UsageError

try:
    import fcntl
    HAVE_FLOCK = True
except ImportError:      # not POSIX: the lock falls back to an exclusive create
    HAVE_FLOCK = False

LOCK = ".npmlp.lock"

__all__ = ["LOCK", "atomic_open", "atomic_write_bytes", "atomic_write_json", "cannot_write", "claim", "make_out_dir",
           "output_folder"]


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def make_out_dir(out: Path, fix: str = "choose another --out") -> Path:
    """Create the output folder now (parents too) and write a probe file in it, so an --out that
    cannot be written (a file in the way, a read-only folder, /proc) fails before any work, in
    one line ending with `fix`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder {out}: {e.strerror}; {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".npmlp-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write in {out}: {e.strerror}; {fix}") from None
    return out


@contextlib.contextmanager
def output_folder(out: Path, fix: str = "choose another --out"):
    """make_out_dir(out) for the length of a command: if the command fails or is interrupted
    (Ctrl-C) before it wrote anything there, the folders made for it are removed again, so an
    interrupted `npmlp lr-find` leaves no empty folder behind. Folders holding a file stay."""
    made = [p for p in (out, *out.parents) if not p.exists()]     # the deepest first
    try:
        yield make_out_dir(out, fix)
    except BaseException:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()                                         # only ever an empty folder
        raise


def cannot_write(path, e: OSError, fix: str = "free space or choose another --out") -> NpmlpError:
    """The one-line error for a file that could not be written after its folder passed
    make_out_dir (a full disk, a folder made read-only meanwhile): `raise cannot_write(path, e)`."""
    return NpmlpError(f"cannot write {path}: {e.strerror or e}; {fix}")


@contextlib.contextmanager
def claim(out: Path, notes: list[str], fix: str = "choose another --out"):
    """Hold the run directory `out` while training writes it: a second `npmlp train` into it is
    refused (exit 2) until this one ends. The lock is a flock on out/.npmlp.lock, which the
    kernel releases when the process dies, so a killed run leaves no lock that blocks anyone;
    the file it leaves behind (with its pid) is reported in `notes`. A folder that cannot be
    written is refused first, ending with `fix` (output_folder)."""
    with output_folder(out, fix):
        path = out / LOCK
        if not HAVE_FLOCK:
            fd = _create_exclusive(path, out, fix)
        else:
            fd = _flock(path, out, notes, fix)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)        # before the close: a new run then locks a new file
            os.close(fd)


def _flock(path: Path, out: Path, notes: list[str], fix: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write in {out}: {e.strerror}; {fix}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held = os.read(fd, 32).split()
            pid = held[0].decode() if held and held[0].isdigit() else "?"
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
    left = os.read(fd, 32)
    if left.strip():               # a pid, or whatever else the file holds: never printed as it is
        pid = left.split()[0].decode(errors="replace") if left.split()[0].isdigit() else "unknown"
        notes.append(f"{out} was still marked as in use by pid {pid}, a run that was killed before it "
                     f"could clean up; its last checkpoint, if it saved one, is kept")
    return fd


def _create_exclusive(path: Path, out: Path, fix: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"{out} is in use by another `npmlp train` (or one was killed: then delete "
                         f"{path})") from None
    except OSError as e:
        raise UsageError(f"cannot write in {out}: {e.strerror}; {fix}") from None
