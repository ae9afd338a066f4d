"""The gradcheck report: every hand-written gradient of one minibatch, held against torch autograd,
central finite differences and the fast engine, one row per tensor in backward order.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.

Nothing here recomputes the model's maths. The hand-written gradients are the reference
backward's (the intermediates' come from its `dacts`, the same cache training uses). The finite
differences perturb one number and rerun the forward: for a parameter, the model's forward; for an
intermediate, the rest of the forward after it, through the same layer functions (loss_from).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .layers import cross_entropy_forward, linear_forward, tanh_forward

EPS = 1e-4                                         # central-difference step, in float64 (measured best of 1e-3..1e-5)
# (rtol against torch and the fast engine, finite-difference tolerance) by dtype. torch: float64 agrees
# to ~1e-12, float32 to ~2e-6 (summation order differs). fd: float64 differences are good to ~1e-8
# here; in float32 mode float32 gradients meet float64 differences, so float32 round-off sets the bar.
TOL = {np.dtype(np.float64): (1e-10, 1e-5), np.dtype(np.float32): (2e-5, 1e-4)}
NOT_CHECKED = "-"


class Row(NamedTuple):
    name: str
    shape: tuple
    torch_maxdiff: float | None   # max |mine - torch|; None without torch
    torch_verdict: str            # exact / approx / FAIL, or "-" without torch
    fd_relerr: float              # max |mine - fd| at the sampled coordinates / max(|mine| in the tensor, |fd|)
    fd_coords: int                # how many coordinates were perturbed
    fd_ok: bool
    fast_verdict: str             # the fast engine's gradient: exact / approx / FAIL, "-" where it has none
    norm: float                   # ||mine||, Frobenius

    @property
    def failed(self) -> list[str]:
        """The checks this row fails: 'torch', 'fd', 'fast'."""
        return [w for w, bad in (("torch", self.torch_verdict == "FAIL"), ("fd", not self.fd_ok),
                                 ("fast", self.fast_verdict == "FAIL")) if bad]

    @property
    def ok(self) -> bool:
        return not self.failed


class Report(NamedTuple):
    loss: float
    torch_loss: float | None      # None without torch
    rows: list                    # [Row], in backward order


def minibatch(X, Y, batch_size=32, seed=0):
    """A seeded minibatch of rows: Xb (B, T), Yb (B,)."""
    ix = np.random.default_rng(seed).integers(0, len(X), size=batch_size)  # (B,)
    return X[ix], Y[ix]


def loss_from(model, name: str, value, Y) -> float:
    """The lecture MLP's loss when its intermediate `name` is replaced by `value`: the rest of
    model.MLP.forward, through the same layer functions."""
    p = model.params
    rest = (("emb", lambda x: x.reshape(len(x), -1)),                            # (B, T*E) embcat
            ("embcat", lambda x: linear_forward(x, p["W1"], p["b1"])[0]),        # (B, H) hpreact
            ("hpreact", lambda x: tanh_forward(x)[0]),                           # (B, H) h
            ("h", lambda x: linear_forward(x, p["W2"], p["b2"])[0]),             # (B, V) logits
            ("logits", lambda x: cross_entropy_forward(x, Y)[0]))                # () loss
    start = [n for n, _ in rest].index(name)
    x = value
    for _, f in rest[start:]:                                                    # from `name` to the loss
        x = f(x)
    return float(x)


def central_difference(f, x, coords, eps=EPS):
    """d f / d x.flat[i] for i in coords, by (f(x + eps) - f(x - eps)) / 2 eps. x is restored."""
    out = np.empty(len(coords))
    flat = x.reshape(-1)          # a view: writing it perturbs x
    for j, i in enumerate(coords):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        out[j] = (up - down) / (2 * eps)
    return out


def verdict(mine, ref, rtol):
    """The backprop-ninja `cmp`: exact if bitwise equal, approx if allclose, else FAIL.
    atol scales with the tensor so tiny entries (saturated tanh) are judged against its size."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    if np.array_equal(mine, ref):
        return "exact"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return "approx" if np.allclose(mine, ref, rtol=rtol, atol=rtol * scale) else "FAIL"


def fast_gradients(model, X, Y) -> dict:
    """The fast engine's parameter gradients, {} for a model it does not train."""
    from . import fast
    return fast.gradients(model, X, Y) if model.kind in fast.MODELS else {}


def report(model, X, Y, coords: int = 20, seed: int = 0, use_torch: bool = True) -> Report:
    """Every row of the minibatch X (B, T), Y (B,), checked three ways."""
    from .reference import torch_available, torch_loss_and_grads

    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    mine = {**dacts, **grads}        # the rows, in the order the backward computes them
    rtol, fd_tol = TOL[model.dtype]
    torch_loss, ref = None, None
    if use_torch and torch_available():
        torch_loss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
        ref = {**tdacts, **tgrads}
    fastg = fast_gradients(model, X, Y)

    # finite differences always in float64, on a copy (the model itself is never touched)
    m64 = type(model)({k: v.astype(np.float64) for k, v in model.params.items()})
    _, c64 = m64.forward(X, Y)
    rng = np.random.default_rng(seed)
    rows = []
    for name in mine:
        g = np.asarray(mine[name], np.float64)
        idx = np.arange(g.size) if g.size <= coords else np.sort(rng.choice(g.size, coords, replace=False))
        if name in m64.params:
            fd = central_difference(lambda: m64.forward(X, Y)[0], m64.params[name], idx)
        else:
            a = getattr(c64, name).copy()
            fd = central_difference(lambda: loss_from(m64, name, a, Y), a, idx)
        # relative to the whole tensor's largest gradient: entries near zero (a peaked softmax, a
        # saturated tanh) would otherwise turn the differences' round-off into a large ratio
        scale = max(np.abs(g).max(), np.abs(fd).max())
        relerr = float(np.abs(g.reshape(-1)[idx] - fd).max() / scale) if scale > 0 else 0.0
        if ref is not None:
            maxdiff, tv = float(np.abs(g - ref[name]).max()), verdict(mine[name], ref[name], rtol)
        else:
            maxdiff, tv = None, NOT_CHECKED
        fv = verdict(fastg[name], mine[name], rtol) if name in fastg else NOT_CHECKED
        rows.append(Row(name, tuple(g.shape), maxdiff, tv, relerr, len(idx), relerr <= fd_tol, fv,
                        float(np.linalg.norm(g))))
    return Report(loss, torch_loss, rows)


HEAD = ("tensor", "shape", "max|mine-torch|", "torch", "fd rel err", "fd", "fast", "grad norm")


def format_table(rows, dtype) -> str:
    """The report as a fixed-width text table, with a legend of its verdicts."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    lines = []
    for r in rows:
        diff = NOT_CHECKED if r.torch_maxdiff is None else f"{r.torch_maxdiff:.2e}"
        fd = f"ok ({r.fd_coords})" if r.fd_ok else f"FAIL ({r.fd_coords})"
        lines.append((f"d{r.name}", "x".join(map(str, r.shape)), diff, r.torch_verdict,
                      f"{r.fd_relerr:.2e}", fd, r.fast_verdict, f"{r.norm:.4e}"))
    widths = [max(len(x[i]) for x in [HEAD, *lines]) for i in range(len(HEAD))]
    left = {0, 1, 3, 5, 6}
    fmt = lambda cells: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    no_torch = all(r.torch_maxdiff is None for r in rows)
    return "\n".join([
        fmt(HEAD), rule, *map(fmt, lines), rule,
        "torch: not installed (pip install torch==2.13.0 adds this column)" if no_torch else
        f"torch: exact = bitwise equal; approx = allclose(rtol={rtol:g}, atol={rtol:g} * max|torch|)",
        f"fd:    float64 central differences (eps {EPS:g}) at (n) random coordinates;",
        f"       rel err = max|mine - fd| / (largest |mine| in the tensor, or |fd| if larger); ok if <= {fd_tol:g}",
        "fast:  the fast engine's gradient (its update / -lr), same verdicts as torch; - where it has none"])


def parse_table(text: str) -> dict:
    """A printed table -> {row name without 'd': {column header: cell}} (for tests and tools)."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.split()[:1] == ["tensor"])
    spans, at = [], 0
    for dashes in lines[i + 1].split("  "):       # the rule under the header: one run per column
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    head = [lines[i][a:b].strip() for a, b in spans]
    out = {}
    for line in lines[i + 2:]:
        if line.startswith("-"):
            break
        cells = [line[a:b].strip() for a, b in spans]
        out[cells[0][1:]] = dict(zip(head, cells))
    return out
