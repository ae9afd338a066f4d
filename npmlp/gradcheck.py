"""The gradcheck report: every hand-written gradient of one minibatch, held against torch autograd,
central finite differences and the fast engine, one row per tensor in backward order.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.

Nothing here recomputes the model's maths. The hand-written gradients are the reference
backward's (the intermediates' come from its `dacts`, the same cache training uses). The finite
differences perturb one number and rerun the model's forward: for an intermediate, the forward
with that intermediate put in place (`forward(X, Y, at={name: array})`), so the rest runs from it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .torch_mirrors import torch_hint

FD_STEP = 1e-4          # central-difference step, in float64 (measured best of 1e-3..1e-5 on the lecture's model)
REFINE = (1e-5, 1e-6, 1e-7)   # smaller steps that confirm a coordinate missed at FD_STEP (see fd_estimates)
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
    problem: str = ""             # why the gradient could not be compared at all: its shape, NaN/inf
    fd_refined: int = 0           # coordinates confirmed at a smaller step than FD_STEP

    @property
    def failed(self) -> list[str]:
        """The checks this row fails: the problem ('shape', 'NaN/inf'), 'torch', 'fd', 'fast'."""
        return [w for w, bad in ((self.problem.split(" ")[0], bool(self.problem)),
                                 ("torch", self.torch_verdict == "FAIL"), ("fd", not self.fd_ok),
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


def central_difference(f, x, coords, eps=FD_STEP):
    """d f / d x.flat[i] for i in coords, by (f(x + eps) - f(x - eps)) / 2 eps. x is restored."""
    out = np.empty(len(coords))
    flat = x.reshape(-1)          # a view: writing it perturbs x
    with np.errstate(all="ignore"):   # a step out of the domain (a variance below 0) gives NaN: a miss, not a warning
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


def verdict(mine, ref, rtol, floor=0.0, noise=0.0):
    """The backprop-ninja `cmp`: exact if bitwise equal, approx if allclose, else FAIL.
    atol scales with the tensor (or `floor`, if larger) so tiny entries (a saturated tanh) are
    judged against its size, and is at least NOISE x `noise`, the round-off the network itself
    puts on this gradient (see roundoff)."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    if np.array_equal(mine, ref):
        return "exact"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, floor)
    return "approx" if np.allclose(mine, ref, rtol=rtol, atol=max(rtol * scale, NOISE * noise)) else "FAIL"


NOISE = 10     # how many times a gradient's own round-off (roundoff) two right answers may differ by


def roundoff(model, X, Y, grads: dict, seed: int = 0) -> dict:
    """How far each gradient moves when every parameter moves by one unit in its last place:
    the round-off a right gradient carries. A deep tanh stack amplifies it layer by layer (to
    ~1e-10 relative in float64 after 100 layers), so two right answers, ours and torch's, may
    differ by that much; in the lecture's models it is ~1e-16 and rtol decides."""
    rng = np.random.default_rng(seed)
    ulp = np.finfo(model.dtype).eps
    moved = model.like({k: (v * (1 + ulp * rng.choice((-1, 1), v.shape))).astype(v.dtype)
                         for k, v in model.params.items()})
    g, d = moved.backward(moved.forward(X, Y)[1])
    return {k: float(np.abs(np.asarray(a, np.float64) - grads[k]).max()) for k, a in {**d, **g}.items()}


def largest(grads) -> float:
    """The largest finite |gradient| of a dict of them (0 if none)."""
    return max((float(np.abs(a[np.isfinite(a)]).max(initial=0.0)) for a in map(np.asarray, grads.values())),
               default=0.0)


def fd_estimates(fd_of, name, idx, g, tol):
    """Central differences of the coordinates idx of `name`, each close enough to the hand-written
    gradient g[idx] (within tol) at some step, or its closest miss -> (estimates, how many needed a
    smaller step than FD_STEP).

    One step cannot suit every coordinate: in a deep stack a perturbation of 1e-4 grows layer by
    layer and the difference's truncation error (~ step^2) swamps the gradient, and a variance
    near 0 has no room for a step of 1e-4 below it (NaN). So a coordinate that misses at FD_STEP is
    tried again at each smaller step of REFINE, 100x less truncation each time, until it agrees
    or the steps run out. A right gradient is met as the differences converge to it; a wrong one
    is not, since they converge to the true derivative, away from it."""
    fd = fd_of(name, idx, FD_STEP)
    miss = ~(np.abs(g - fd) <= tol)                           # NaN misses too
    refined = 0
    for step in REFINE:
        if not miss.any():
            break
        again = fd_of(name, idx[miss], step)
        closer = ~(np.abs(g[miss] - fd[miss]) <= np.abs(g[miss] - again))   # also replaces a NaN
        fd[np.flatnonzero(miss)[closer]] = again[closer]
        hit = np.abs(g[miss] - again) <= tol
        refined += int(hit.sum())
        miss[np.flatnonzero(miss)[hit]] = False
    return fd, refined


def check_rows(mine: dict, ref: dict | None, fast: dict, fd_of, dtype, coords: int = 20, seed: int = 0,
               shapes: dict | None = None, noise: dict | None = None):
    """[Row] for each gradient in `mine` (name -> array): against `ref` (torch's, or None), `fast`
    (the fast engine's, where it has one) and central differences: fd_of(name, flat indices, step).
    shapes: the shape each gradient must have (its input's); a gradient of another shape, or with
    NaN or inf in it, fails without being compared. noise: each gradient's round-off (roundoff),
    which the comparisons with torch and the fast engine allow."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    rng = np.random.default_rng(seed)
    floor, ref_floor = FLOOR * largest(mine), FLOOR * largest(ref or {})
    rows = []
    for name, g in mine.items():
        g = np.asarray(g, np.float64)
        want = tuple((shapes or {}).get(name, g.shape))
        problem = (f"shape {'x'.join(map(str, g.shape))}, not the input's {'x'.join(map(str, want))}"
                   if g.shape != want else "NaN/inf in the gradient" if not np.isfinite(g).all() else "")
        allow = (noise or {}).get(name, 0.0)
        fv = verdict(fast[name], mine[name], rtol, floor, allow) if name in fast and not problem else NOT_CHECKED
        if problem:
            rows.append(Row(name, g.shape, None, "FAIL" if ref is not None else NOT_CHECKED, float("inf"), 0,
                            False, fv, float("nan"), problem))
            continue
        idx = np.arange(g.size) if g.size <= coords else np.sort(rng.choice(g.size, coords, replace=False))
        # judged against the whole tensor's largest gradient: entries near zero (a peaked softmax,
        # a saturated tanh) would otherwise turn the differences' round-off into a large ratio
        scale = max(float(np.abs(g).max()), floor)
        fd, refined = fd_estimates(fd_of, name, idx, g.reshape(-1)[idx], fd_tol * scale)
        scale = max(scale, float(np.abs(fd[np.isfinite(fd)]).max(initial=0.0)))
        err = np.abs(g.reshape(-1)[idx] - fd)
        relerr = float(err.max() / scale) if scale > 0 and np.isfinite(err).all() else \
            0.0 if scale == 0 and np.isfinite(err).all() else float("inf")
        if ref is not None:
            maxdiff, tv = float(np.abs(g - ref[name]).max()), verdict(mine[name], ref[name], rtol, ref_floor, allow)
        else:
            maxdiff, tv = None, NOT_CHECKED
        rows.append(Row(name, tuple(g.shape), maxdiff, tv, relerr, len(idx), relerr <= fd_tol, fv,
                        float(np.linalg.norm(g)), "", refined))
    return rows


def report(model, X, Y, coords: int = 20, seed: int = 0, use_torch: bool = True, fast: dict | None = None) -> Report:
    """Every row of the minibatch X (B, T), Y (B,), checked three ways. fast: the fast engine's
    parameter gradients of the same minibatch (its caller computes them), None for no fast column.
    A model with dropout is checked at dropout 0: training draws new masks at every forward, which
    finite differences cannot follow (the dropout pair is checked on its own)."""
    from .torch_mirrors import torch_available, torch_loss_and_grads

    model = model.without_dropout()
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    mine = {**dacts, **grads}        # the rows, in the order the backward computes them
    torch_loss, ref = None, None
    if use_torch and torch_available():
        torch_loss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
        ref = {**tdacts, **tgrads}

    # finite differences always in float64, on a copy (the model itself is never touched)
    m64 = model.like({k: v.astype(np.float64) for k, v in model.params.items()})
    _, c64 = m64.forward(X, Y)

    def fd_of(name, idx, step):
        if name in m64.params:
            return central_difference(lambda: m64.forward(X, Y)[0], m64.params[name], idx, step)
        a = np.array(c64[name])
        return central_difference(lambda: m64.forward(X, Y, at={name: a})[0], a, idx, step)

    noise = roundoff(model, X, Y, mine, seed) if ref is not None or fast else None
    rows = check_rows(mine, ref, fast or {}, fd_of, model.dtype, coords, seed, noise=noise)
    return Report(loss, torch_loss, rows)


# ----------------------------------------------------------------------------- anyone's pair

class PairCheck(NamedTuple):
    rows: list       # [Row], one per floating-point input, in the forward's order
    ok: bool
    text: str        # the rows as the gradcheck table


def check_pair(forward, backward, *inputs, torch_forward=None, seed: int = 0, coords: int = 20) -> PairCheck:
    """Check a forward/backward pair written in npmlp's convention: forward(*inputs) -> (out, cache),
    backward(dout, cache) -> the gradients of the floating-point inputs, in their order (a tuple
    or list, or one array for one input; None for an input without one, e.g. b=None).

    Everything runs in float64. Only NumPy float arrays are checked; integer arrays (indices,
    targets), Python numbers (eps, flags) and None pass through unchecked. The upstream gradient
    dout is a seeded random array for an array output (1.0 for a scalar), so the checked function
    is L = sum(out * dout); each input's gradient is held against central differences of L and,
    given `torch_forward` (the same forward in torch ops), against autograd. A gradient that is
    NaN, inf, or not shaped like its input fails. A pair that breaks the convention (a forward
    without a cache, too few gradients) raises ValueError saying how."""
    import inspect

    try:
        names = list(inspect.signature(forward).parameters)[:len(inputs)]
    except (TypeError, ValueError):            # a builtin, or a callable with no signature
        names = []
    names += [f"input{i}" for i in range(len(names), len(inputs))]
    checked = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype.kind == "f"]
    if not checked:
        kinds = ", ".join(f"{names[i]} ({type(x).__name__})" for i, x in enumerate(inputs)) or "none"
        raise ValueError(f"check_pair checks the gradients of NumPy float arrays, and no input is one "
                         f"(inputs: {kinds}); pass the inputs to check as np.array(..., dtype=float)")
    empty = [names[i] for i in checked if inputs[i].size == 0]
    if empty:
        raise ValueError(f"input {empty[0]} is empty (shape {inputs[names.index(empty[0])].shape}); "
                         f"there is no gradient to check")
    if not isinstance(coords, (int, np.integer)) or coords < 1:
        raise ValueError(f"coords must be a whole number >= 1 (coordinates per input for the finite "
                         f"differences), got {coords!r}")
    args = [np.array(x, np.float64) if i in checked else x for i, x in enumerate(inputs)]
    result = forward(*args)
    if not (isinstance(result, tuple) and len(result) == 2):
        what = f"a {type(result).__name__}" + (f" of shape {result.shape}" if isinstance(result, np.ndarray) else
                                               f" of {len(result)}" if isinstance(result, tuple) else "")
        raise ValueError(f"forward must return (out, cache), the cache being what backward needs; it "
                         f"returned {what}")
    out, cache = result
    rng = np.random.default_rng(seed)
    dout = rng.standard_normal(np.shape(out)) if np.ndim(out) else 1.0
    got = backward(dout, cache)
    got = [g for g in (got if isinstance(got, (tuple, list)) else [got]) if g is not None]
    want = [names[i] for i in checked]
    if len(got) != len(checked):
        raise ValueError(f"backward returned {len(got)} gradient{'s' * (len(got) != 1)} for the {len(checked)} "
                         f"floating-point input{'s' * (len(checked) != 1)} {want}: one per float array, in the "
                         f"forward's order")
    mine = {names[i]: g for i, g in zip(checked, got, strict=True)}

    def fd_of(name, idx, step):
        x = args[names.index(name)]
        return central_difference(lambda: float(np.sum(forward(*args)[0] * dout)), x, idx, step)

    ref = None
    if torch_forward is not None:
        import torch
        targs = [torch.tensor(x, requires_grad=True) if i in checked else
                 torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x for i, x in enumerate(args)]
        (torch_forward(*targs) * torch.as_tensor(dout)).sum().backward()
        ref = {names[i]: np.asarray(targs[i].grad) for i in checked}
    rows = check_rows(mine, ref, {}, fd_of, np.float64, coords, seed, shapes={names[i]: args[i].shape for i in checked})
    torch_why = None if torch_forward is not None else "not checked (pass torch_forward to add this column)"
    return PairCheck(rows, all(r.ok for r in rows), format_table(rows, np.float64, fast=False, torch_why=torch_why))


HEAD = ("tensor", "shape", "max|mine-torch|", "torch", "fd rel err", "fd", "fast", "grad norm")
NO_TORCH = f"not installed ({torch_hint()}, adds this column)"


def format_table(rows, dtype, fast: bool = True, torch_why: str | None = None) -> str:
    """The report as a fixed-width text table, with a legend of its verdicts (fast=False: without
    the fast engine's column). torch_why: why a table without torch verdicts has none (default:
    torch is not installed)."""
    rtol, fd_tol = TOL[np.dtype(dtype)]
    head = HEAD if fast else HEAD[:6] + HEAD[7:]
    lines = []
    for r in rows:
        diff = NOT_CHECKED if r.torch_maxdiff is None else f"{r.torch_maxdiff:.2e}"
        fd = f"{'ok' if r.fd_ok else 'FAIL'} ({r.fd_coords}" + (f", {r.fd_refined} refined)" if r.fd_refined else ")")
        cells = (f"d{r.name}", "x".join(map(str, r.shape)), diff, r.torch_verdict, f"{r.fd_relerr:.2e}", fd,
                 r.fast_verdict, f"{r.norm:.4e}")
        lines.append(cells if fast else cells[:6] + cells[7:])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    left = {"tensor", "shape", "torch", "fd", "fast"}

    def fmt(cells) -> str:
        return "  ".join(c.ljust(w) if h in left else c.rjust(w)
                         for h, c, w in zip(head, cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    no_torch = all(r.torch_maxdiff is None for r in rows)
    legend = [f"torch: {torch_why or NO_TORCH}"] if no_torch else [
        f"torch: exact = bitwise equal; approx = allclose(rtol={rtol:g}, atol={rtol:g} * max|torch|, or {NOISE} x",
        "       the change one ulp in every parameter makes to the gradient, if larger: a deep stack's round-off)"]
    legend += [
        f"fd:    float64 central differences (step {FD_STEP:g}) at (n) random coordinates; a coordinate that misses",
        f"       is tried again at steps {', '.join(f'{h:g}' for h in REFINE)} (refined: how many then agreed);",
        f"       rel err = max|mine - fd| / (largest |mine| in the tensor, or |fd| if larger); ok if <= {fd_tol:g}",
        f"       (max|torch| and largest |mine|: at least {FLOOR:g} x the table's largest, for gradients that are 0)"]
    if fast:
        legend.append("fast:  the fast engine's gradient (its update / -lr), same verdicts as torch; "
                      "- where it has none")
    problems = [f"d{r.name}: {r.problem}" for r in rows if r.problem]
    return "\n".join([fmt(head), rule, *map(fmt, lines), rule, *legend, *problems])


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
        out[cells[0][1:]] = dict(zip(head, cells, strict=True))
    return out
