"""Checks shared by the bad-input / fault tests: how a user error must look, and what must be left on disk."""
from __future__ import annotations

import hashlib
import signal
from pathlib import Path

TINY = ("--n-hidden", "8", "--n-embd", "2", "--quiet")  # a model that trains at ~10k steps/s


def assert_user_error(r, code: int, *needles: str) -> str:
    """Exit `code`, exactly one `npmlp: error: ...` line containing every needle, no traceback,
    and (runs use --quiet) nothing on stderr that is not an `npmlp:` line: no usage dump, no warnings."""
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("npmlp: error: ")]
    assert len(errors) == 1, f"want one error line, got:\n{r.stderr}"
    stray = [line for line in lines if not line.startswith("npmlp: ")]
    assert not stray, f"stray stderr lines: {stray}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def notes(r) -> list[str]:
    return [line[len("npmlp: note: "):] for line in r.stderr.splitlines() if line.startswith("npmlp: note: ")]


def snapshot(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of every file under `folder` (hidden temp files included), to prove nothing changed."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of an atomic write (fileio.atomic_open names them .NAME.XXXX.tmp)."""
    return sorted(Path(folder).rglob(".*.tmp")) if Path(folder).exists() else []


class StopAfter:
    """Stands in for cli.StopFlag: 'receives' SIGINT after `n` steps, so the checkpoint is made by the
    real interrupt path of cmd_train at an exact step (test_resume.py sends real signals)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signum(self):
        self.calls += 1
        return signal.SIGINT if self.calls >= self.n else None
