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
from .models import intermediate

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


FLOOR = 1e-2   # a tensor is judged against its own largest gradient, or FLOOR x the table's largest if
               # that is larger: a gradient that is zero up to round-off (b1 before a BatchNorm) has no
               # size of its own to be relative to


def verdict(mine, ref, rtol, floor=0.0):
    """The backprop-ninja `cmp`: exact if bitwise equal, approx if allclose, else FAIL.
    atol scales with the tensor (or `floor`, if larger) so tiny entries (a saturated tanh) are
    judged against its size."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    if np.array_equal(mine, ref):
        return "exact"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, floor)
    return "approx" if np.allclose(mine, ref, rtol=rtol, atol=rtol * scale) else "FAIL"


def largest(grads) -> float:
    return max((float(np.abs(g).max()) for g in grads.values() if np.size(g)), default=0.0)


def check_rows(mine: dict, ref: dict | None, fast: dict, fd_of, dtype, coords: int = 20, seed: int = 0):
    """[Row] for each gradient in `mine` (name -> array): against `ref` (torch's, or None), `fast`
    (the fast engine's, where it has one) and central differences: fd_of(name, flat indices)."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    rng = np.random.default_rng(seed)
    floor, ref_floor = FLOOR * largest(mine), FLOOR * largest(ref or {})
    rows = []
    for name, g in mine.items():
        g = np.asarray(g, np.float64)
        idx = np.arange(g.size) if g.size <= coords else np.sort(rng.choice(g.size, coords, replace=False))
        fd = fd_of(name, idx)
        # relative to the whole tensor's largest gradient: entries near zero (a peaked softmax, a
        # saturated tanh) would otherwise turn the differences' round-off into a large ratio
        scale = max(np.abs(g).max(), np.abs(fd).max(), floor)
        relerr = float(np.abs(g.reshape(-1)[idx] - fd).max() / scale) if scale > 0 else 0.0
        if ref is not None:
            maxdiff, tv = float(np.abs(g - ref[name]).max()), verdict(mine[name], ref[name], rtol, ref_floor)
        else:
            maxdiff, tv = None, NOT_CHECKED
        fv = verdict(fast[name], mine[name], rtol, floor) if name in fast else NOT_CHECKED
        rows.append(Row(name, tuple(g.shape), maxdiff, tv, relerr, len(idx), relerr <= fd_tol, fv,
                        float(np.linalg.norm(g))))
    return rows


def fast_gradients(model, X, Y) -> dict:
    """The fast engine's parameter gradients, {} for a model it does not train."""
    from . import fast
    return fast.gradients(model, X, Y) if model.kind in fast.MODELS else {}


def loss_at(model, name: str, value, X, Y) -> float:
    """The training loss with the intermediate `name` replaced by `value`: the rest of the forward."""
    if model.kind == "mlp":
        return loss_from(model, name, value, Y)
    return model.forward(X, Y, at={name: value})[0]


def report(model, X, Y, coords: int = 20, seed: int = 0, use_torch: bool = True) -> Report:
    """Every row of the minibatch X (B, T), Y (B,), checked three ways."""
    from .reference import torch_available, torch_loss_and_grads

    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    mine = {**dacts, **grads}        # the rows, in the order the backward computes them
    torch_loss, ref = None, None
    if use_torch and torch_available():
        torch_loss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
        ref = {**tdacts, **tgrads}

    # finite differences always in float64, on a copy (the model itself is never touched)
    m64 = type(model)({k: v.astype(np.float64) for k, v in model.params.items()})
    _, c64 = m64.forward(X, Y)

    def fd_of(name, idx):
        if name in m64.params:
            return central_difference(lambda: m64.forward(X, Y)[0], m64.params[name], idx)
        a = np.array(intermediate(c64, name))
        return central_difference(lambda: loss_at(m64, name, a, X, Y), a, idx)

    rows = check_rows(mine, ref, fast_gradients(model, X, Y), fd_of, model.dtype, coords, seed)
    return Report(loss, torch_loss, rows)


# ----------------------------------------------------------------------------- anyone's pair

class PairCheck(NamedTuple):
    rows: list       # [Row], one per floating-point input, in the forward's order
    ok: bool
    text: str        # the rows as the gradcheck table


def check_pair(forward, backward, *inputs, torch_forward=None, seed: int = 0, coords: int = 20) -> PairCheck:
    """Check a forward/backward pair written in npmlp's convention: forward(*inputs) -> (out, cache),
    backward(dout, cache) -> the gradients of the floating-point inputs, in their order.

    Everything runs in float64. Integer inputs (indices, targets) and None pass through unchecked.
    The upstream gradient dout is a seeded random array for an array output (1.0 for a scalar),
    so the checked function is L = sum(out * dout); each input's gradient is held against central
    differences of L and, given `torch_forward` (the same forward in torch ops), against autograd."""
    import inspect

    try:
        names = list(inspect.signature(forward).parameters)[:len(inputs)]
    except (TypeError, ValueError):            # a builtin, or a callable with no signature
        names = []
    names += [f"input{i}" for i in range(len(names), len(inputs))]
    checked = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype.kind == "f"]
    args = [np.array(x, np.float64) if i in checked else x for i, x in enumerate(inputs)]
    out, cache = forward(*args)
    rng = np.random.default_rng(seed)
    dout = rng.standard_normal(np.shape(out)) if np.ndim(out) else 1.0
    got = backward(dout, cache)
    got = [g for g in (got if isinstance(got, tuple) else (got,)) if g is not None]
    if len(got) != len(checked):
        raise ValueError(f"backward returned {len(got)} gradients for the {len(checked)} floating-point "
                         f"inputs {[names[i] for i in checked]}")
    mine = {names[i]: g for i, g in zip(checked, got)}

    def fd_of(name, idx):
        x = args[names.index(name)]
        return central_difference(lambda: float(np.sum(forward(*args)[0] * dout)), x, idx)

    ref = None
    if torch_forward is not None:
        import torch
        targs = [torch.tensor(x, requires_grad=True) if i in checked else
                 torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x for i, x in enumerate(args)]
        (torch_forward(*targs) * torch.as_tensor(dout)).sum().backward()
        ref = {names[i]: targs[i].grad.numpy() for i in checked}
    rows = check_rows(mine, ref, {}, fd_of, np.float64, coords, seed)
    return PairCheck(rows, all(r.ok for r in rows), format_table(rows, np.float64, fast=False))


HEAD = ("tensor", "shape", "max|mine-torch|", "torch", "fd rel err", "fd", "fast", "grad norm")


def format_table(rows, dtype, fast: bool = True) -> str:
    """The report as a fixed-width text table, with a legend of its verdicts (fast=False: without
    the fast engine's column)."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    head = HEAD if fast else HEAD[:6] + HEAD[7:]
    lines = []
    for r in rows:
        diff = NOT_CHECKED if r.torch_maxdiff is None else f"{r.torch_maxdiff:.2e}"
        fd = f"ok ({r.fd_coords})" if r.fd_ok else f"FAIL ({r.fd_coords})"
        cells = (f"d{r.name}", "x".join(map(str, r.shape)), diff, r.torch_verdict, f"{r.fd_relerr:.2e}", fd,
                 r.fast_verdict, f"{r.norm:.4e}")
        lines.append(cells if fast else cells[:6] + cells[7:])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    left = {"tensor", "shape", "torch", "fd", "fast"}
    fmt = lambda cells: "  ".join(c.ljust(w) if h in left else c.rjust(w)
                                  for h, c, w in zip(head, cells, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    no_torch = all(r.torch_maxdiff is None for r in rows)
    legend = [
        "torch: not installed (pip install torch==2.13.0 adds this column)" if no_torch else
        f"torch: exact = bitwise equal; approx = allclose(rtol={rtol:g}, atol={rtol:g} * max|torch|)",
        f"fd:    float64 central differences (eps {EPS:g}) at (n) random coordinates;",
        f"       rel err = max|mine - fd| / (largest |mine| in the tensor, or |fd| if larger); ok if <= {fd_tol:g}",
        f"       (max|torch| and largest |mine|: at least {FLOOR:g} x the table's largest, for gradients that are 0)"]
    if fast:
        legend.append("fast:  the fast engine's gradient (its update / -lr), same verdicts as torch; - where it has none")
    return "\n".join([fmt(head), rule, *map(fmt, lines), rule, *legend])


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
