"""Helper processes that run some of a large batch's chunks on the other CPU cores (fast tier).

NumPy runs element-wise work on one core, and two Python threads serialise on the GIL (they
gained nothing), so a batch of several chunks (fast.CHUNK rows each) is shared with forked processes:

    parent:  gather the rows -> copy params to shared memory -> "go" -> its chunks -> wait -> sum, update
    helper:                                         "go" -> copy params -> its chunks -> "done"

Each helper runs the same fast.run_chunks on its chunks (with a copy of the engine made by the
fork) and writes each chunk's update and loss into shared memory. The parent adds the chunk
gradients in chunk order, exactly as a one-process run does, so the result is the same bits.
Linux only (fork); helpers ignore Ctrl-C (the parent handles it) and exit when the parent closes
their pipe or dies.
"""
from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .engine import ENGINE_CLASS, Chunks, batch_chunks, run_chunks

_PARENT_ENDS: set = set()   # the pipe ends of every open ChunkPool: a new helper must close its copies
FORK = sys.platform.startswith("linux")   # helpers are forked: safe on Linux only


class HelperFailed(RuntimeError):
    """A helper process raised or died; the parameters are those of the last finished step."""


def cpu_quota(root="/sys/fs/cgroup", self_cgroup="/proc/self/cgroup") -> float | None:
    """The CPU time this process's cgroup (a container, a systemd slice) may use, in cores:
    cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the smallest along the
    path up to the root. None when there is no limit or no cgroup file to read."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:                                   # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            bases = [Path(root), Path(root) / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [Path(root) / controllers, Path(root) / "cpu"]
        else:
            continue
        for base in dict.fromkeys(bases):               # "cpu" alone would be read twice
            d = base / path.lstrip("/")
            while True:
                quotas.append(_read_quota(d))
                if d == base or base not in d.parents:
                    break
                d = d.parent
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _read_quota(d: Path) -> float | None:
    try:
        if (d / "cpu.max").exists():                     # v2: "max 100000" or "150000 100000"
            quota, period = (d / "cpu.max").read_text().split()[:2]
        else:                                            # v1: quota -1 means none
            quota = (d / "cpu.cfs_quota_us").read_text().strip()
            period = (d / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity (as taskset sets it), cut to a container's
    CPU quota (a 1-CPU container on a 2-core host sees 2 cores but would run two busy processes
    by turns, each step waiting for the slower)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:               # not Linux
        return 1
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))


def default_processes(n_chunks: int) -> int:
    """One process per chunk up to the usable cores; 1 where fork is not safe (not Linux)."""
    return max(1, min(n_chunks, usable_cores())) if FORK else 1


def shared_array(shape, dtype) -> np.ndarray:
    """A zeroed array in anonymous shared memory: a forked child writes where the parent reads."""
    count = math.prod(shape)
    buf = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(buf, dtype, count=count).reshape(shape)


SPIN = 0.0005   # seconds a process polls its pipe before sleeping in recv (see Receiver)
BACKOFF = 64    # at most this many waits sleep at once after polls that ran out


class Receiver:
    """Waits for the next message on a pipe: first polls it for up to SPIN seconds, then sleeps.

    Waking a process that sleeps in recv takes tens of microseconds, once per step each way, and
    the processes usually finish within microseconds of each other, so polling first saves both
    wake-ups (benchmarks/README.md has the numbers). But when another program holds a core,
    polling takes CPU time that another process of ours needs. There the polls keep running out,
    so after k polls in a row ran out the next
    2**k - 1 waits (at most BACKOFF) sleep at once; one that ran out after a rare long pause (the
    parent gathering rows) costs a single sleep."""

    def __init__(self):
        self.sleep_next = 0     # waits left that go straight to sleep
        self.missed = 0         # polls in a row that ran out

    def __call__(self, conn) -> bytes:
        if self.sleep_next:
            self.sleep_next -= 1
        else:
            end = time.perf_counter() + SPIN
            while not conn.poll(0):
                if time.perf_counter() > end:
                    self.missed += 1
                    self.sleep_next = min(BACKOFF, 2 ** self.missed - 1)
                    break
            else:
                self.missed = 0
        return conn.recv_bytes()


class ChunkPool(Chunks):
    """fast.Chunks with `processes - 1` forked helpers that run some of the chunks: the arrays a
    step shares (the params (P,), each chunk's update (n, P) and loss (n,), the gathered rows Xg,
    Yg) live in shared memory. The parent runs the first share of each step's chunks (cut). Use as
    a context manager: close() stops the helpers."""

    array = staticmethod(shared_array)

    def __init__(self, model, batch_size: int, processes: int, distinct: bool | None = None):
        super().__init__(model, batch_size, distinct)
        n = len(self.chunks)
        processes = max(1, min(processes, n)) if FORK else 1
        self.processes = processes                                     # contiguous runs of chunks (cut)
        self.params = shared_array(self.engine.flat.shape, model.dtype)
        self.conns: list = []                 # per helper: its pipe end, process, owed answer, Receiver
        self.procs: list = []
        self._owed: list = []
        self._recv: list = []
        if processes == 1:
            return
        ctx = multiprocessing.get_context("fork")
        try:
            for p in range(1, processes):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=self._helper, daemon=True, name=f"npmlp-helper-{p}",
                                   args=(child_end, [*_PARENT_ENDS, parent_end], p))
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self._recv.append(Receiver())
                _PARENT_ENDS.add(parent_end)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    def _helper(self, conn, parent_ends, p: int):
        """The loop a helper runs: wait for "go" (group index, lr), do process p's chunks, answer."""
        for c in parent_ends:    # the fork copied the parent's pipe ends: while they are open here,
            c.close()            # the parent closing its own would not end our recv with EOF
        # Ctrl-C, `timeout`/`kill -- -PGID` and a closed terminal (SIGHUP) signal the whole process
        # group: the parent finishes its step and saves; a helper must not die under it. It exits
        # when the parent closes the pipe, or dies (EOF).
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):     # fork: Linux, which has all three
            signal.signal(s, signal.SIG_IGN)
        eng, recv = self.engine, Receiver()
        try:
            while True:
                try:
                    g, lr = struct.unpack("<id", recv(conn))
                except EOFError:                       # the parent closed the pipe (or died)
                    return
                np.copyto(eng.flat, self.params)
                run_chunks(eng, self, self.cut(g, p), g, lr)
                conn.send_bytes(b"")
        except BaseException as e:  # noqa: BLE001  (any failure: report it, no traceback)
            try:
                conn.send_bytes(f"{type(e).__name__}: {e}".encode() or b"error")
            except OSError:
                pass

    def start(self, g: int, lr: float, flat):
        """Hand the current params and "go on the rows Xg[g]" to every helper."""
        if self.closed:
            raise ValueError("these batches are closed")
        if not self.conns:
            return
        if self._owed:           # a step interrupted between start and wait (an exception in the
            self._drain()        # parent): its late answers must not be read as this step's
        np.copyto(self.params, flat)
        msg = struct.pack("<id", g, lr)
        for c, proc in zip(self.conns, self.procs, strict=True):
            try:
                c.send_bytes(msg)
            except OSError:                            # its end of the pipe is gone: it died
                self._failed(proc, None)
            self._owed.append(c)

    def wait(self):
        """Until every helper has written its chunks."""
        for c, proc, recv in zip(self.conns, self.procs, self._recv, strict=True):
            try:
                msg = recv(c)
            except (EOFError, OSError):
                self._failed(proc, None)
            self._owed.remove(c)
            if msg:
                self._failed(proc, msg.decode())

    def _drain(self):
        for c in list(self._owed):
            try:
                c.recv_bytes()
            except (EOFError, OSError):
                pass
            self._owed.remove(c)

    @staticmethod
    def _failed(proc, why):
        if why is None:
            proc.join(timeout=1)
            why = f"it exited with code {proc.exitcode}"
        raise HelperFailed(f"a helper process of the training step failed ({why})")

    def close(self):
        if self.closed:
            return
        for c in self.conns:
            c.close()                                  # the helper's recv ends with EOFError
            _PARENT_ENDS.discard(c)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():                        # it ignores SIGTERM
                proc.kill()
                proc.join()
        self.conns, self.procs, self._recv, self._owed = [], [], [], []
        super().close()


def make_batches(model, batch_size: int, processes: int | None = None, distinct: bool | None = None) -> Chunks:
    """What fast.sgd runs batches of batch_size rows with: a ChunkPool with one process per chunk
    up to the usable cores (or `processes`), or a plain fast.Chunks when that is one process.
    Forking costs ~20 ms: make one per run, not per step, and before any thread starts (a fork
    beside a running thread can deadlock the child; Python 3.12+ warns)."""
    n = len(batch_chunks(batch_size)) if ENGINE_CLASS[model.spec.engine].chunked else 1
    procs = default_processes(n) if processes is None else min(processes, n)
    return ChunkPool(model, batch_size, procs, distinct) if procs > 1 else Chunks(model, batch_size, distinct)
