"""The gradcheck report: every hand-written gradient of one minibatch, held against torch autograd
and against central finite differences, one row per tensor in backward order.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.

Nothing here recomputes the model's math. The hand-written gradients are MLP.backward's (the
intermediates come from its `dacts`, i.e. the same forward cache training uses). The finite
differences perturb one number and rerun the forward: for a parameter, MLP.loss; for an
intermediate, the rest of the forward through the same layer functions model.py calls.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .layers import cross_entropy_forward, linear_forward, tanh_forward, with_ones
from .model import ACT_NAMES, MLP, PARAM_NAMES

ROWS = ACT_NAMES + ("W2", "b2", "W1", "b1", "C")   # backward order: logits ... emb, then params
EPS = 1e-4                                         # central-difference step, in float64 (measured best of 1e-3..1e-5)
# (torch rtol, finite-difference tolerance) by dtype. torch: float64 agrees to ~1e-12, float32 to
# ~2e-6 (summation order differs). fd: float64 differences are good to ~1e-8 here; in float32 mode
# the float32 gradients are compared with float64 differences, so float32 round-off sets the bar.
TOL = {np.dtype(np.float64): (1e-10, 1e-5), np.dtype(np.float32): (2e-5, 1e-4)}


class Row(NamedTuple):
    name: str
    shape: tuple
    torch_maxdiff: float | None   # max |mine - torch|; None without torch
    torch_verdict: str            # exact / approx / FAIL / "torch not installed"
    fd_relerr: float              # max |mine - fd| at the sampled coordinates / max(|mine| in the tensor, |fd|)
    fd_coords: int                # how many coordinates were perturbed
    fd_ok: bool
    norm: float                   # ||mine||, Frobenius

    @property
    def ok(self):
        return self.fd_ok and self.torch_verdict != "FAIL"


def minibatch(X, Y, batch_size=32, seed=0):
    """A seeded minibatch of rows: Xb (B, T), Yb (B,)."""
    ix = np.random.default_rng(seed).integers(0, len(X), size=batch_size)  # (B,)
    return X[ix], Y[ix]


def loss_from(model: MLP, name: str, value, Y) -> float:
    """The loss when the intermediate `name` is replaced by `value`: the rest of model.forward,
    with the same layer functions."""
    rest = (("emb", lambda x: x.reshape(len(x), -1)),                             # (B, T*E) embcat
            ("embcat", lambda x: linear_forward(with_ones(x), model.W1b)[0]),     # (B, H) hpreact
            ("hpreact", lambda x: tanh_forward(x)[0]),                            # (B, H) h
            ("h", lambda x: linear_forward(with_ones(x), model.W2b)[0]),          # (B, V) logits
            ("logits", lambda x: cross_entropy_forward(x, Y)[0]))           # () loss
    start = [n for n, _ in rest].index(name)
    x = value
    for _, f in rest[start:]:                                               # from `name` to the loss
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


def torch_verdict(mine, ref, rtol):
    """The backprop-ninja `cmp`: exact if bitwise equal, approx if allclose, else FAIL.
    atol scales with the tensor so tiny entries (saturated tanh) are judged against its size."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    if np.array_equal(mine, ref):
        return "exact"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return "approx" if np.allclose(mine, ref, rtol=rtol, atol=rtol * scale) else "FAIL"


def report(model: MLP, X, Y, coords: int = 20, seed: int = 0, use_torch: bool = True):
    """-> (loss, torch_loss or None, [Row, ...] in ROWS order) for the minibatch X (B, T), Y (B,)."""
    from .reference import torch_available, torch_loss_and_grads

    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    mine = {**dacts, **grads}
    rtol, fd_tol = TOL[model.dtype]

    have_torch = use_torch and torch_available()
    if have_torch:
        torch_loss, tgrads, tdacts = torch_loss_and_grads(model.params, X, Y)
        ref = {**tdacts, **tgrads}
    else:
        torch_loss = None

    # finite differences always in float64, on a copy (the model itself is never touched)
    m64 = MLP({k: v.astype(np.float64) for k, v in model.params.items()})
    _, c64 = m64.forward(X, Y)
    rng = np.random.default_rng(seed)
    rows = []
    for name in ROWS:
        g = np.asarray(mine[name], np.float64)
        n = g.size
        idx = np.arange(n) if n <= coords else np.sort(rng.choice(n, coords, replace=False))
        if name in PARAM_NAMES:
            p = m64.params[name]
            fd = central_difference(lambda: m64.loss(X, Y), p, idx)
        else:
            a = getattr(c64, name).copy()
            fd = central_difference(lambda: loss_from(m64, name, a, Y), a, idx)
        got = g.reshape(-1)[idx]
        # relative to the whole tensor's largest gradient: entries near zero (a peaked softmax, a
        # saturated tanh) would otherwise turn the differences' round-off into a large ratio
        scale = max(np.abs(g).max(), np.abs(fd).max())
        relerr = float(np.abs(got - fd).max() / scale) if scale > 0 else 0.0
        if have_torch:
            maxdiff = float(np.abs(g - ref[name]).max())
            verdict = torch_verdict(mine[name], ref[name], rtol)
        else:
            maxdiff, verdict = None, "torch not installed"
        rows.append(Row(name, tuple(g.shape), maxdiff, verdict, relerr, len(idx), relerr <= fd_tol,
                        float(np.linalg.norm(g))))
    return loss, torch_loss, rows


def format_table(rows, dtype) -> str:
    """The report as a fixed-width text table."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    head = ("tensor", "shape", "max|mine-torch|", "torch", "fd rel err", "fd", "grad norm")
    lines = []
    for r in rows:
        diff = "-" if r.torch_maxdiff is None else f"{r.torch_maxdiff:.2e}"
        fd = f"ok ({r.fd_coords})" if r.fd_ok else f"FAIL ({r.fd_coords})"
        lines.append((f"d{r.name}", "x".join(map(str, r.shape)), diff, r.torch_verdict,
                      f"{r.fd_relerr:.2e}", fd, f"{r.norm:.4e}"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 3, 5) else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule, *map(fmt, lines), rule,
                      f"torch: exact = bitwise equal; approx = allclose(rtol={rtol:g}, atol={rtol:g} * max|torch|)",
                      f"fd:    float64 central differences (eps {EPS:g}) at (n) random coordinates;",
                      f"       rel err = max|mine - fd| / (largest |mine| in the tensor, or |fd| if larger); ok if <= {fd_tol:g}"])
