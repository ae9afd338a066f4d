"""A tqdm progress bar for long loops, updated a few times a second, not every step."""
from __future__ import annotations

import sys


class Progress:
    """bar.step(step, loss, lr) after each step (or every `every`-th); shows steps/s, the current
    loss and rate."""

    def __init__(self, total: int, start: int = 0, quiet: bool = False, every: int | None = None,
                 desc: str = "train"):
        # every: a few hundred updates over the run, at most one per 250 steps
        self.every = every or max(1, min(250, total // 100))
        self.quiet, self.bar = quiet, None
        if not quiet:
            from tqdm import tqdm
            # no monitor thread: the bar is updated often anyway, and a process that forks (the fast
            # engine's helpers, another library's workers) must have no other thread running
            tqdm.monitor_interval = 0
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.25, smoothing=0.05)
        self._last = start

    def step(self, step: int, loss: float, lr: float | None = None):
        if self.bar is not None and (step + 1) % self.every == 0:
            self.bar.update(step + 1 - self._last)
            self._last = step + 1
            self.bar.set_postfix_str(f"loss {loss:.4f}" + (f", lr {lr:g}" if lr is not None else ""), refresh=False)

    def write(self, line: str):
        """A line on stderr above the bar (none with quiet)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)

    def finish(self, n: int):
        """Bring the bar to step n (the last update may have been up to `every` steps before)."""
        if self.bar is not None and n > self._last:
            self.bar.update(n - self._last)
            self._last = n

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
