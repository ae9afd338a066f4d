"""Signals while a command runs. Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`) and SIGHUP (the
terminal or the ssh session closed) end a command the same way, and never in the middle of a save:

  - as a rule (`interrupts`), each raises Interrupted, a KeyboardInterrupt: a command cleans up as
    after Ctrl-C (a temporary file is deleted, an output folder it made and left empty removed)
    and exits 128 + the signal's number;
  - while `npmlp train` trains, StopFlag holds the signal: the step finishes, the run saves and
    says how to resume;
  - while a checkpoint is written, Saving holds the first signal, with one line saying the save is
    finishing, and lets the next one abort it: the write is atomic (loading.atomic_open), so the
    previous checkpoint, if there is one, stays intact.

A signal that was ignored when npmlp started stays ignored (`nohup` ignores SIGHUP, a shell's
background job SIGINT).
"""
from __future__ import annotations

import contextlib
import signal
import sys

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or a Ctrl-C that aborts a save), raised where the command was; `message`,
    if given, is what the command's last line says (else "interrupted")."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(message or signal.Signals(signum).name)
        self.signum, self.message = signum, message


def signum_of(e: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: Interrupted's, else Ctrl-C's."""
    return getattr(e, "signum", signal.SIGINT)


def name(signum: int) -> str:
    return signal.Signals(signum).name


class Held:
    """Handles the signals in SIGNALS (those not ignored) with `_handle` while the context is open,
    and puts the previous handlers back after. Outside the main thread it changes nothing."""

    signals: tuple[int, ...] = SIGNALS

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        try:
            for s in self.signals:
                if signal.getsignal(s) != signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        except ValueError:           # not the main thread: only it may set handlers
            pass
        return self

    def _handle(self, signum, frame):
        raise NotImplementedError

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


class interrupts(Held):
    """For the length of a command: SIGTERM and SIGHUP raise Interrupted, as Ctrl-C raises
    KeyboardInterrupt (whose handler is left as it is)."""

    signals = tuple(s for s in SIGNALS if s != signal.SIGINT)

    def _handle(self, signum, frame):
        raise Interrupted(signum)


class StopFlag(Held):
    """While training: the first signal sets the flag (`signum`); the loop finishes its step, then
    the run saves and exits 128 + signum. More signals change nothing until the save begins."""

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum


class Saving(Held):
    """While `path` is written: the first signal waits for the save to finish (`signum` says which
    one came), with one line on stderr saying so; the next one aborts the save (Interrupted)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        again = "Ctrl-C" if signum == signal.SIGINT else name(signum)
        with contextlib.suppress(Exception):     # a handler may run inside another write to stderr
            print(f"npmlp: {name(signum)}: finishing the save of {self.path} first; another {again} aborts it "
                  f"(the previous checkpoint, if any, stays intact)", file=sys.stderr, flush=True)
