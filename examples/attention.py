"""makemore.py's Transformer in NumPy: LayerNorm, softmax, attention and GELU backwards, a training step.

Open it as a notebook:   marimo edit examples/attention.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/attention.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/attention.py        (the same results on the terminal)
Data: as in examples/lecture2.py, the names come from $NPMLP_DATA, npmlp's cache, or the lecture's
URL (a checked download); without any of them the notebook stops and says what to do.
torch is optional: with it each hand-written gradient is held against torch autograd as well as
against central finite differences of the NumPy forward; without it against the differences.
"""
import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import marimo as mo
    return (mo,)


@app.cell(hide_code=True)
def _(mo):
    # The same cell in every notebook: how each result reaches the page and the terminal, and
    # what happens without the names. marimo's script mode (`python FILE`) shows no cell outputs,
    # so there each result is printed as well; in the browser it is only the cell's output.
    def show(md, text=None):
        """A result: markdown `md` as the cell's output. In a script run it is printed instead:
        `text` if given, else `md`, without markdown's marks (#, **, `) and blank lines."""
        if not mo.running_in_notebook():
            import inspect
            import re
            plain = re.sub(r"^#+ |\*\*|`", "", inspect.cleandoc(md if text is None else text), flags=re.M)
            print("\n".join(line for line in plain.splitlines() if line.strip()))
        return mo.md(md)

    def cmp_table(title, rows):
        """cmp's rows (name, exact, approximate, maxdiff) as a table under `title`, the cell's
        output; in a script run, `title` and the lecture's cmp lines printed."""
        width = max([15, *(len(r["name"]) for r in rows)])
        lines = [f"{r['name']:{width}s} | exact: {r['exact']!s:5s} | approximate: {r['approximate']!s:5s} | "
                 f"maxdiff: {r['maxdiff']:.3g}" for r in rows]
        table = [f"| {r['name']} | {r['exact']} | {r['approximate']} | {r['maxdiff']:.3g} |" for r in rows]
        return show("\n".join([f"**{title}**", "", "| name | exact | approximate | maxdiff |", "|---|---|---|---:|",
                               *table]), "\n".join([title, *lines]))

    def load_names():
        """npmlp's load_words(): the names of $NPMLP_DATA, else npmlp's cache, else the lecture's URL
        (a checked download). Without them the notebook stops and says why and what to do: in a
        callout on the page; in a script run, in one line on stderr, with exit status 1."""
        import html
        import sys
        from pathlib import Path

        from npmlp.data import DataError
        from npmlp.loading import data_source, load_words

        try:
            return load_words()
        except DataError as e:
            problem = str(e)
        if "--data" in problem:                   # the npmlp command's advice: a notebook has no --data
            problem = problem.rsplit("; ", 1)[0]
        problem += ("; check NPMLP_DATA, or unset it to use npmlp's cache or the checked download" if data_source()
                    else "; offline, set NPMLP_DATA=path/to/names.txt, a copy of the lecture's names.txt")
        notebook = f"examples/{Path(__file__).name}"
        if not mo.running_in_notebook():
            sys.exit(f"{notebook}: error: {problem}")
        mo.stop(True, mo.callout(mo.vstack([
            mo.md(f"**{notebook} stopped here: it has no names to work on.**"),
            mo.Html(f"<p>{html.escape(problem)}</p>"),
            mo.md(f"Every result below needs them. Fix that and start marimo again, for example with "
                  f"`NPMLP_DATA=path/to/names.txt marimo edit {notebook}`.")]), kind="danger"))

    return cmp_table, load_names, show


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # makemore.py's Transformer: attention, by hand

    The recurrent models read a name one position at a time, through one state. makemore.py's
    Transformer (GPT-2's blocks) lets every position read all the positions before it at once:
    each position asks a question (a query), every earlier position offers an answer (a key and
    a value), and the position takes the values, weighted by how well each key matches its
    query. Around that: a LayerNorm before each branch, a residual sum after it, and an MLP.

    ```
    X (B,T) -> x = wte[X] + wpe[0..T-1]                         (B,T,C)
      for each block:  x = x + c_proj(attention(c_attn(ln_1(x))))       nh heads of hs = C/nh
                       x = x + c_proj(gelu(c_fc(ln_2(x))))              c_fc (C,4C), c_proj (4C,C)
    logits = ln_f(x) @ lm_head (B,T,V) -> cross-entropy over the targets that count
    ```

    Shapes: `B` names, `T` positions (16 on names.txt), `C` channels (`n_embd`), `nh` heads,
    `hs` each head's size, `V` 27. The names are makemore.py's (`ln_1`, `c_attn`, `c_proj`,
    `ln_2`, `c_fc`, `ln_f`, `lm_head`), every weight in NumPy's (in, out) layout. Below: the
    backward of each new piece on its own, checked; then a tiny Transformer's training step
    with every gradient by hand, checked against npmlp's `Transformer.backward` and torch; a
    short training run; and what its heads look at. Everything is NumPy in float64.
    """)
    return


@app.cell
def _():
    import math

    import matplotlib.pyplot as plt
    import numpy as np
    from threadpoolctl import threadpool_limits

    from npmlp import gradcheck
    from npmlp.contract import SEED, Intermediates
    from npmlp.data import Vocab, build_sequences, split_words
    from npmlp.train import evaluate, sample
    from npmlp.transformer import Transformer

    try:  # optional: torch only checks the gradients below
        import torch
        import torch.nn.functional as F

        from npmlp import torch_mirrors
        torch.set_num_threads(1)         # small tensors: a second thread only waits
    except ImportError:
        torch = F = torch_mirrors = None
    return (F, Intermediates, SEED, Transformer, Vocab, build_sequences, evaluate, gradcheck, math, np, plt, sample,
            split_words, threadpool_limits, torch, torch_mirrors)


@app.cell
def _(load_names, mo):
    words = load_names()               # $NPMLP_DATA, npmlp's cache, or the lecture's URL
    mo.md(f"{len(words):,} names, e.g. {', '.join(words[:8])}")
    return (words,)


@app.cell
def _(Vocab, build_sequences, show, split_words, words):
    vocab = Vocab.from_words(words)
    T = max(len(w) for w in words) + 1                    # positions: the longest name and its closing '.'
    dev_words = split_words(words)[1]
    _tr, _dev, _te = split_words(words)                   # the lecture's random.seed(42) shuffle, 80/10/10
    # makemore.py's CharDataset: x = '.', the name, 0s; y = the name, '.', -1s (masked); see examples/rnn.py
    Xtr, Ytr = build_sequences(_tr, vocab, T)             # (N, T) each
    Xdev, Ydev = build_sequences(_dev, vocab, T)
    show(f"""
    vocabulary of {vocab.size}, T = {T}; names: train {len(Xtr):,}, dev {len(Xdev):,}. As in examples/rnn.py, each
    name is one row: `{_tr[0]}` is x = `{Xtr[0].tolist()}`, y = `{Ytr[0].tolist()}`.
    """)
    return T, Xdev, Xtr, Ydev, Ytr, dev_words, vocab


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Checking a gradient: `cmp`

    As in part 4: is the hand-written gradient bitwise equal to the reference (`exact`), equal up
    to round-off (`approximate`: `gradcheck.verdict`, rtol 1e-10 against torch in float64), and
    by how much do they differ? Each pair below is checked twice: against the same forward in
    torch, differentiated by autograd (when torch is installed), and against central finite
    differences of the NumPy forward: nudge one number by ±1e-5, rerun the forward, divide the
    change by 2e-5, at 20 random places of each array (rtol 1e-5: the differences are only that
    good). The checked function is `L = sum(out * dout)` for a random `dout`, so that every
    output counts with its own weight. A gradient of an intermediate (`xhat`, the attention
    weights) is checked by perturbing the intermediate itself: the forward takes
    `at={name: array}` and runs the rest from it.
    """)
    return


@app.cell
def _(gradcheck, np, torch):
    ref_kind = ("torch autograd (float64) and central differences" if torch is not None else
                "central differences of the NumPy forward (torch is not installed)")

    def cmp(name, mine, ref, rtol=1e-10):
        """The lecture's cmp: bitwise equal? equal up to round-off? largest difference? Entries
        where `ref` is NaN (no finite difference taken there) are skipped. -> a row of cmp_table."""
        mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
        assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != {ref.shape}"
        known = ~np.isnan(ref)
        verdict = gradcheck.verdict(mine[known], ref[known], rtol)
        return {"name": name, "shape": mine.shape, "exact": verdict == "exact", "approximate": verdict != "FAIL",
                "maxdiff": float(np.abs(mine[known] - ref[known]).max(initial=0.0)), "verdict": verdict}

    def check(grads, forward, forward_torch, inputs, dout, coords=20, seed=0):
        """Each gradient of L = sum(forward(**inputs)[0] * dout) in grads ({name: array}; the name of
        an input, or of an intermediate in forward's cache) against torch autograd when torch is
        installed (an intermediate if forward_torch returns it by name), and against central
        differences at `coords` random places. -> cmp rows, `name (torch)` and `name (differences)`."""
        ref = {}
        if torch is not None:
            tin = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
            out, acts = forward_torch(**tin)              # acts: the intermediates by name
            for a in acts.values():
                a.retain_grad()                           # keep the gradients of intermediates too
            (out * torch.tensor(dout)).sum().backward()
            ref = {k: t.grad.numpy() for k, t in {**tin, **acts}.items()}
        xs = {k: np.array(v) for k, v in inputs.items()}  # copies, nudged in place
        _, c = forward(**xs)

        def L(at):
            return float((forward(**xs, at=at)[0] * dout).sum())

        rng = np.random.default_rng(seed)
        rows = []
        for name, g in grads.items():
            x = xs[name] if name in xs else np.array(c[name])   # an intermediate: fed back through `at`
            at = {} if name in xs else {name: x}
            idx = np.sort(rng.choice(x.size, min(coords, x.size), replace=False))
            fd = np.full(x.shape, np.nan)
            fd.flat[idx] = gradcheck.central_difference(lambda at=at: L(at), x, idx, eps=1e-5)
            if name in ref:
                rows.append(cmp(f"{name} (torch)", g, ref[name]))
            rows.append(cmp(f"{name} (differences)", g, fd, 1e-5))
        return rows
    return check, cmp, ref_kind


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## LayerNorm: three ways to reach the loss

    BatchNorm normalised each channel over the batch; LayerNorm normalises each position's vector
    over its own C channels, so no statistic crosses rows (any batch, even one name, works):

    ```
    mean = x.mean(-1)     var = ((x - mean)**2).mean(-1)     rstd = 1 / sqrt(var + 1e-5)
    xhat = (x - mean) * rstd                                   out = w * xhat + b
    ```

    Backward: `db` and `dw` sum `dout` and `dout * xhat` over every row; `dxhat = w * dout`.
    Each `x_i` reaches the loss three ways: (1) through its own `xhat_i`, (2) through the mean,
    which every `xhat_j` of the row subtracts, (3) through the variance, which every `xhat_j`
    divides by. With means over the row's C channels:

    ```
    dx = rstd * (dxhat  -  mean(dxhat)  -  xhat * mean(dxhat * xhat))
                  (1)        (2)               (3)
    ```
    """)
    return


@app.cell
def _(Intermediates, T, Transformer, Xtr, Ytr, check, cmp_table, gradcheck, np, ref_kind, torch, vocab):
    def layernorm_forward(x, w, b, at=None):
        """x (..., C), w (C,), b (C,) -> out (..., C), c: the cache, by name."""
        c = Intermediates(at, w=w)
        mean = x.mean(-1, keepdims=True)                  # (..., 1)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)   # (..., 1) biased: / C, as torch's LayerNorm
        c.rstd = 1 / np.sqrt(var + 1e-5)                  # (..., 1)
        c.xhat = (x - mean) * c.rstd                      # (..., C)
        return c.xhat * w + b, c                          # (..., C)

    def layernorm_backward(dout, c):
        """dout (..., C) -> d: d.x (..., C), d.w, d.b (C,), d.xhat."""
        d = Intermediates()
        rows = tuple(range(dout.ndim - 1))                # every axis but the channels
        d.b = dout.sum(rows)                              # (C,)
        d.w = (dout * c.xhat).sum(rows)                   # (C,)
        d.xhat = c.w * dout                               # (..., C)
        d.x = c.rstd * (d.xhat                                              # (1) its own xhat
                        - d.xhat.mean(-1, keepdims=True)                    # (2) the mean
                        - c.xhat * (d.xhat * c.xhat).mean(-1, keepdims=True))  # (3) the variance
        return d

    def _torch_ln(x, w, b):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5), {}

    _rng = np.random.default_rng(0)
    _Xb, _ = gradcheck.minibatch(Xtr, Ytr, 8, seed=0)                          # (8, T)
    _P = Transformer.init(vocab.size, T, n_embd=32, n_layers=1, n_head=4, dtype=np.float64).params
    ln_inputs = {"x": _P["transformer.wte.weight"][_Xb] + _P["transformer.wpe.weight"],  # (B, T, C) the embeddings
                 "w": 1 + 0.1 * _rng.standard_normal(32), "b": 0.1 * _rng.standard_normal(32)}  # not 1 and 0
    _out, _c = layernorm_forward(**ln_inputs)
    _dout = _rng.standard_normal(_out.shape)
    _d = layernorm_backward(_dout, _c)
    ln_rows = check({k: _d[k] for k in ("b", "w", "xhat", "x")}, layernorm_forward, _torch_ln, ln_inputs, _dout)
    cmp_table(f"LayerNorm on 8 names' embeddings (8, {T}, 32), against {ref_kind} (torch: F.layer_norm)", ln_rows)
    return layernorm_backward, layernorm_forward, ln_rows


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The softmax's backward, in one line

    `y = softmax(x)` along the last axis: `y_i = exp(x_i) / sum_j exp(x_j)`. Its Jacobian is
    `dy_i/dx_j = y_i (1[i=j] - y_j)`: every output depends on every input. Multiplied out
    against the incoming gradient, the N×N matrix collapses to one line,

    ```
    dx = y * (dy - (dy * y).sum(-1))
    ```

    the incoming gradient minus its y-weighted mean, scaled by y. Below, that line against
    torch, the differences, and the explicit Jacobian product `J.T @ dy`, row by row.
    """)
    return


@app.cell
def _(Intermediates, check, cmp, cmp_table, np, ref_kind, torch):
    def softmax_forward(x, at=None):
        """x (..., N) -> y (..., N), c."""
        c = Intermediates(at)
        e = np.exp(x - x.max(-1, keepdims=True))          # (..., N) shifted: exp cannot overflow
        c.y = e / e.sum(-1, keepdims=True)                # (..., N)
        return c.y, c

    def softmax_backward(dy, c):
        return c.y * (dy - (dy * c.y).sum(-1, keepdims=True))   # (..., N)

    _rng = np.random.default_rng(1)
    sm_inputs = {"x": 2 * _rng.standard_normal((4, 16, 16))}  # (B, T, N) scores
    _y, _c = softmax_forward(**sm_inputs)
    _dy = _rng.standard_normal(_y.shape)
    _dx = softmax_backward(_dy, _c)
    _J = _c.y[..., :, None] * (np.eye(16) - _c.y[..., None, :])   # (B, T, N, N) J[i, j] = dy_i/dx_j
    _dx_jac = np.einsum("...ij,...i->...j", _J, _dy)              # (B, T, N) J.T @ dy
    softmax_rows = [*check({"x": _dx}, softmax_forward, lambda x: (torch.softmax(x, -1), {}), sm_inputs, _dy),
                    cmp("x (the Jacobian)", _dx, _dx_jac, 1e-12)]
    cmp_table(f"softmax on (4, 16, 16), against {ref_kind}, and the Jacobian", softmax_rows)
    return softmax_backward, softmax_forward, softmax_rows


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## One head of causal attention

    One head reads `q`, `k`, `v` (B, T, hs), cut from `c_attn`'s output. The score of position t
    for position s is `q_t . k_s / sqrt(hs)`; the future (s > t) is masked to -inf before the
    softmax, so its weight is exactly 0; each output is the weighted sum of the values:

    ```
    preatt = q @ k.T / sqrt(hs), -inf where s > t     att = softmax(preatt)     y = att @ v
    ```

    Backward, the forward read upwards (llm.c's `attention_backward`):

    ```
    1. y = att @ v            dv = att.T @ dy         datt = dy @ v.T
    2. the softmax            dpreatt = att * (datt - (datt * att).sum(-1))
    3. preatt = q @ k.T * s   dq = dpreatt @ k * s    dk = dpreatt.T @ q * s
    ```

    The mask needs no backward of its own: where it set -inf, `att` is 0, so line 2 gives
    `dpreatt` exactly 0 there, and no gradient flows from a position to the keys of its future.
    """)
    return


@app.cell
def _(Intermediates, T, Xtr, Ytr, check, cmp_table, gradcheck, layernorm_forward, math, mo, np, ref_kind, show,
      softmax_backward, softmax_forward, torch, vocab):
    def attention_forward(q, k, v, at=None):
        """q, k, v (..., T, hs) -> y (..., T, hs), c: causal scaled dot-product attention, one head
        (or many side by side: (B, nh, T, hs))."""
        c = Intermediates(at, q=q, k=k, v=v)
        T_, hs = q.shape[-2:]
        future = np.triu(np.ones((T_, T_), bool), 1)                   # (T, T) True where s > t
        c.preatt = np.where(future, -np.inf, q @ k.swapaxes(-1, -2) / math.sqrt(hs))  # (..., T, T)
        c.att, _ = softmax_forward(c.preatt)                           # (..., T, T) 0 on the future
        return c.att @ v, c                                            # (..., T, hs)

    def attention_backward(dy, c):
        """dy (..., T, hs) -> d: d.q, d.k, d.v (..., T, hs), d.att, d.preatt (..., T, T)."""
        d = Intermediates()
        s = 1 / math.sqrt(c.q.shape[-1])
        d.v = c.att.swapaxes(-1, -2) @ dy                              # 1. (..., T, hs)
        d.att = dy @ c.v.swapaxes(-1, -2)                              # 1. (..., T, T)
        d.preatt = softmax_backward(d.att, Intermediates(y=c.att))     # 2. (..., T, T) 0 where masked
        d.q = d.preatt @ c.k * s                                       # 3. (..., T, hs)
        d.k = d.preatt.swapaxes(-1, -2) @ c.q * s                      # 3. (..., T, hs)
        return d

    def _torch_attention(q, k, v):                                     # makemore.py's CausalSelfAttention
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(torch.tril(torch.ones(q.shape[-2], q.shape[-2])) == 0, float("-inf"))
        att = torch.softmax(att, dim=-1)
        return att @ v, {"att": att}

    # one head's q, k, v: 8 names through a random embedding, LayerNorm and c_attn, 8 of each 32 channels
    _rng = np.random.default_rng(3)
    _Xb, _ = gradcheck.minibatch(Xtr, Ytr, 8, seed=0)
    _x, _ = layernorm_forward(_rng.standard_normal((vocab.size, 32))[_Xb], np.ones(32), np.zeros(32))  # (8, T, 32)
    _q, _k, _v = np.split(_x @ (_rng.standard_normal((32, 96)) / math.sqrt(32)), 3, axis=-1)    # (8, T, 32) each
    att_inputs = {"q": _q[..., :8], "k": _k[..., :8], "v": _v[..., :8]}                         # (8, T, hs = 8)
    _y, _c = attention_forward(**att_inputs)
    _dy = _rng.standard_normal(_y.shape)
    _d = attention_backward(_dy, _c)
    att_rows = check({k: _d[k] for k in ("v", "att", "q", "k")}, attention_forward, _torch_attention, att_inputs, _dy)
    _future = np.triu(np.ones((T, T), bool), 1)
    future_grad = float(np.abs(_d.preatt[..., _future]).max())
    mo.vstack([cmp_table(f"one head, q, k, v (8, {T}, 8), against {ref_kind} (torch: makemore.py's lines)",
                         att_rows),
               show(f"dpreatt on the {_future.sum()} entries of each (T, T) above the diagonal (the future): "
                    f"largest |value| {future_grad:g}, so no position's query learns from a later key. "
                    f"`datt` there is not 0 (largest |value| {np.abs(_d.att[..., _future]).max():.3g}): "
                    "the softmax stops it.")])
    return attention_backward, attention_forward, att_rows, future_grad


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## GELU

    The MLP's non-linearity, GPT-2's tanh form (makemore.py's `NewGELU`, torch's
    `F.gelu(x, approximate='tanh')`): `out = 0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x³)`.
    The product rule, with `th = tanh(u)` kept from the forward:

    ```
    dx = dout * (0.5 (1 + th) + 0.5 x (1 - th**2) sqrt(2/pi) (1 + 3 * 0.044715 x**2))
    ```

    Unlike tanh it does not saturate for large x (its slope goes to 1), and it lets a little
    gradient through for negative x.
    """)
    return


@app.cell
def _(F, Intermediates, T, check, cmp_table, math, np, ref_kind):
    K, A = math.sqrt(2 / math.pi), 0.044715

    def gelu_forward(x, at=None):
        """x (...) -> out (...), c."""
        c = Intermediates(at, x=x)
        c.th = np.tanh(K * (x + A * (x * x * x)))                        # (...) x*x*x: x**3 is a slow pow
        return 0.5 * x * (1 + c.th), c

    def gelu_backward(dout, c):
        x, th = c.x, c.th
        return dout * (0.5 * (1 + th) + 0.5 * x * (1 - th ** 2) * K * (1 + 3 * A * x ** 2))  # (...)

    _rng = np.random.default_rng(4)
    gelu_inputs = {"x": 2 * _rng.standard_normal((8, T, 128))}         # (B, T, 4C) spread over the curve
    _out, _c = gelu_forward(**gelu_inputs)
    _dout = _rng.standard_normal(_out.shape)
    gelu_rows = check({"x": gelu_backward(_dout, _c)}, gelu_forward,
                      lambda x: (F.gelu(x, approximate="tanh"), {}), gelu_inputs, _dout)
    cmp_table(f"GELU on (8, {T}, 128), against {ref_kind} (torch: F.gelu(approximate='tanh'))", gelu_rows)
    return gelu_backward, gelu_forward, gelu_rows


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## A tiny Transformer's training step, written out

    The pieces put together as makemore.py's `Transformer.forward` does, and its backward the
    forward upside down. Two rules carry the gradient through a block: a residual sum
    `x + f(x)` hands its gradient unchanged to both the skip and the branch, and the two come
    back together where `x` was used (`dx = dresid + d(branch)`); the heads, cut side by
    side from `c_attn`'s output, have their gradients put back side by side. The embedding
    gradients add `demb` into the row of each character read (`wte`) and of each position
    (`wpe`, summed over the batch).

    The model: 2 blocks of 4 heads, C = 32 (hs = 8), torch's init drawn by npmlp's
    `Transformer.init`, with each LayerNorm's weight and bias moved off 1 and 0 for the check
    (a backward that forgets a term can still pass a check when the parameter it multiplies is
    1 or 0). The step ends with makemore.py's AdamW, the update examples/rnn.py checks against
    torch.optim.AdamW.
    """)
    return


@app.cell
def _(Intermediates, attention_backward, attention_forward, gelu_backward, gelu_forward, layernorm_backward,
      layernorm_forward, np):
    def split_heads(a, nh):
        B, T, C = a.shape
        return a.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)     # (B, nh, T, hs) channel block h -> head h

    def merge_heads(a):
        B, nh, T, hs = a.shape
        return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)          # (B, T, C) the heads side by side

    def rows(a):
        return a.reshape(-1, a.shape[-1])                              # (B*T, C): every position a row

    def block_forward(x, p, nh):
        """x (B, T, C), p: block i's params by their names within it -> x (B, T, C), c."""
        c = Intermediates()
        c.ln_1, c.ln_1_c = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])             # (B, T, C)
        qkv = c.ln_1 @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]                        # (B, T, 3C)
        q, k, v = (split_heads(a, nh) for a in np.split(qkv, 3, axis=-1))                     # (B, nh, T, hs) each
        yh, c.att_c = attention_forward(q, k, v)                                              # (B, nh, T, hs)
        c.y = merge_heads(yh)                                                                 # (B, T, C)
        attn = c.y @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]                          # (B, T, C)
        resid = x + attn                                                                      # (B, T, C)
        c.ln_2, c.ln_2_c = layernorm_forward(resid, p["ln_2.weight"], p["ln_2.bias"])         # (B, T, C)
        fc = c.ln_2 @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]                               # (B, T, 4C)
        c.act, c.gelu_c = gelu_forward(fc)                                                    # (B, T, 4C)
        mlp = c.act @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]                           # (B, T, C)
        return resid + mlp, c                                                                 # (B, T, C)

    def block_backward(dout, c, p, nh):
        """dout (B, T, C) -> dx (B, T, C), g: block i's gradients by their names within it."""
        g = {}
        # out = resid + mlp: both get dout
        dmlp = dout                                                                            # (B, T, C)
        dact = dmlp @ p["mlp.c_proj.weight"].T                                                 # (B, T, 4C)
        g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = rows(c.act).T @ rows(dmlp), dmlp.sum((0, 1))
        dfc = gelu_backward(dact, c.gelu_c)                                                    # (B, T, 4C)
        dln_2 = dfc @ p["mlp.c_fc.weight"].T                                                   # (B, T, C)
        g["mlp.c_fc.weight"], g["mlp.c_fc.bias"] = rows(c.ln_2).T @ rows(dfc), dfc.sum((0, 1))
        d2 = layernorm_backward(dln_2, c.ln_2_c)
        g["ln_2.weight"], g["ln_2.bias"] = d2.w, d2.b
        dresid = dout + d2.x                                       # (B, T, C) (1) the skip (2) ln_2 and the MLP
        # resid = x + attn: both get dresid
        dattn = dresid                                                                         # (B, T, C)
        dy = dattn @ p["attn.c_proj.weight"].T                                                 # (B, T, C)
        g["attn.c_proj.weight"], g["attn.c_proj.bias"] = rows(c.y).T @ rows(dattn), dattn.sum((0, 1))
        da = attention_backward(split_heads(dy, nh), c.att_c)                                  # every head at once
        dqkv = np.concatenate([merge_heads(da.q), merge_heads(da.k), merge_heads(da.v)], -1)  # (B, T, 3C)
        dln_1 = dqkv @ p["attn.c_attn.weight"].T                                               # (B, T, C)
        g["attn.c_attn.weight"], g["attn.c_attn.bias"] = rows(c.ln_1).T @ rows(dqkv), dqkv.sum((0, 1))
        d1 = layernorm_backward(dln_1, c.ln_1_c)
        g["ln_1.weight"], g["ln_1.bias"] = d1.w, d1.b
        return dresid + d1.x, g                                    # (B, T, C) (1) the skip (2) ln_1 and attention

    def blocks(P):
        """[block i's params by their names within it]: blocks(P)[0]["ln_1.weight"] is
        P["transformer.h.0.ln_1.weight"]."""
        n = 0
        while f"transformer.h.{n}.ln_1.weight" in P:
            n += 1
        return [{k[len(f"transformer.h.{i}."):]: v for k, v in P.items() if k.startswith(f"transformer.h.{i}.")}
                for i in range(n)]

    def transformer_forward(P, X, Y, nh):
        """makemore.py's Transformer: X, Y (B, T) -> (loss over the targets that count, c)."""
        B, T = X.shape
        c = Intermediates(X=X, Y=Y, blocks=[])
        x = P["transformer.wte.weight"][X] + P["transformer.wpe.weight"][:T]                 # (B, T, C)
        for p in blocks(P):
            x, bc = block_forward(x, p, nh)                                                   # (B, T, C)
            c.blocks.append(bc)
        c.ln_f, c.ln_f_c = layernorm_forward(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])
        c.logits = c.ln_f @ P["lm_head.weight"]                                               # (B, T, V) no bias
        # the cross-entropy of the n targets that count: F.cross_entropy(..., ignore_index=-1)
        c.counts = Y != -1                                                                     # (B, T)
        logits = c.logits[c.counts]                                                            # (n, V)
        e = np.exp(logits - logits.max(1, keepdims=True))
        c.probs = e / e.sum(1, keepdims=True)                                                  # (n, V)
        return -np.log(c.probs[np.arange(len(logits)), Y[c.counts]]).mean(), c

    def transformer_backward(P, c, nh):
        """-> grads, by makemore.py's names: the forward's steps in reverse."""
        V = c.logits.shape[-1]
        grads = {}
        # dlogits = (probs - onehot(y)) / n at the n targets that count, 0 where masked
        dlogits = np.zeros_like(c.logits)                                                      # (B, T, V)
        dlogits[c.counts] = (c.probs - np.eye(V)[c.Y[c.counts]]) / len(c.probs)
        grads["lm_head.weight"] = rows(c.ln_f).T @ rows(dlogits)                               # (C, V)
        dln_f = dlogits @ P["lm_head.weight"].T                                                # (B, T, C)
        df = layernorm_backward(dln_f, c.ln_f_c)
        grads["transformer.ln_f.weight"], grads["transformer.ln_f.bias"] = df.w, df.b
        dx = df.x                                                                              # (B, T, C)
        for i, p in reversed(list(enumerate(blocks(P)))):                                     # the last block first
            dx, g = block_backward(dx, c.blocks[i], p, nh)
            grads.update({f"transformer.h.{i}.{k}": v for k, v in g.items()})
        # x = wte[X] + wpe[0..T-1]: demb is dx
        grads["transformer.wpe.weight"] = np.zeros_like(P["transformer.wpe.weight"])           # (block_size, C)
        grads["transformer.wpe.weight"][:dx.shape[1]] = dx.sum(0)                              # broadcast over B
        grads["transformer.wte.weight"] = np.zeros_like(P["transformer.wte.weight"])           # (V, C)
        np.add.at(grads["transformer.wte.weight"], c.X, dx)                                    # repeats too
        return grads

    def train(P, X, Y, batches, nh, lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01):
        """makemore.py's training loop on P, in place, one step per row of `batches`. -> lossi."""
        beta1, beta2 = betas
        m = {k: np.zeros_like(p) for k, p in P.items()}
        v = {k: np.zeros_like(p) for k, p in P.items()}
        lossi = []
        for t, ix in enumerate(batches, start=1):
            loss, c = transformer_forward(P, X[ix], Y[ix], nh)                             # forward
            grads = transformer_backward(P, c, nh)                                          # backward
            for k, p in P.items():                                                          # AdamW
                g = grads[k]
                p *= 1 - lr * weight_decay
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g ** 2
                p -= lr * (m[k] / (1 - beta1 ** t)) / (np.sqrt(v[k] / (1 - beta2 ** t)) + eps)
            lossi.append(loss)
        return np.array(lossi)
    return train, transformer_backward, transformer_forward


@app.cell
def _(T, Transformer, Xtr, Ytr, cmp, cmp_table, gradcheck, mo, np, torch, torch_mirrors, transformer_backward,
      transformer_forward, vocab):
    n_head = 4
    P_check = Transformer.init(vocab.size, T, n_embd=32, n_layers=2, n_head=n_head, dtype=np.float64).params
    _rng = np.random.default_rng(5)
    for _k in P_check:
        if ".ln_" in _k:                                       # every LayerNorm off its init's 1 and 0
            P_check[_k] = P_check[_k] + 0.1 * _rng.standard_normal(P_check[_k].shape)
    Xb, Yb = gradcheck.minibatch(Xtr, Ytr, 8, seed=0)          # (B, T) each
    loss_check, _c = transformer_forward(P_check, Xb, Yb, n_head)
    grads_check = transformer_backward(P_check, _c, n_head)
    if torch is not None:                                      # npmlp's torch mirror of makemore.py's Transformer
        _loss, _ref, _ = torch_mirrors.torch_loss_and_grads(Transformer(P_check, n_head=n_head), Xb, Yb)
        _title, _rtol = "torch autograd (float64), makemore.py's Transformer", 1e-10
    else:                                                      # central differences of the loss, 10 places each
        _ref = {}
        for _k, _p in P_check.items():
            _x = _p.copy()
            _idx = np.sort(_rng.choice(_x.size, min(10, _x.size), replace=False))
            _ref[_k] = np.full(_x.shape, np.nan)
            _ref[_k].flat[_idx] = gradcheck.central_difference(
                lambda k=_k, x=_x: transformer_forward({**P_check, k: x}, Xb, Yb, n_head)[0], _x, _idx, eps=1e-5)
        _title, _rtol = "central differences of the loss (torch is not installed)", 1e-5
    step_rows = [cmp(k, g, _ref[k], _rtol) for k, g in grads_check.items()]
    # the library: npmlp's Transformer.backward, the model `npmlp train --model transformer` runs
    _model = Transformer(P_check, n_head=n_head)
    lib_loss, _lc = _model.forward(Xb, Yb)
    _lib = _model.backward(_lc)[0]
    lib_rows = [cmp(k, g, _lib[k], 1e-12) for k, g in grads_check.items()]
    mo.vstack([cmp_table(f"the training step's gradients, 8 names, against {_title}", step_rows),
               cmp_table(f"the same against npmlp's Transformer.backward (loss {loss_check:.12f} vs "
                         f"{lib_loss:.12f})", lib_rows)])
    return P_check, Xb, Yb, grads_check, lib_loss, lib_rows, loss_check, n_head, step_rows


@app.cell(hide_code=True)
def _(mo):
    steps = mo.ui.slider(steps=[100, 300, 500, 1000, 2000, 5000, 10_000], value=300, label="AdamW steps",
                         show_value=True)
    mo.vstack([mo.md("## Training it\n\nThe step above, from torch's init (LayerNorms at 1 and 0), on batches "
                     "of 32 names at lr 2e-3 (makemore.py's 5e-4 is for its 10,000s of steps; at it a few hundred "
                     "steps leave the heads almost uniform). Move the slider and the cells below rerun; "
                     "`npmlp train --model transformer` trains makemore.py's recipe."), steps])
    return (steps,)


@app.cell
def _(SEED, T, Transformer, Xdev, Xtr, Ydev, Ytr, evaluate, mo, n_head, np, plt, sample, show, steps,
      threadpool_limits, train, vocab):
    P = Transformer.init(vocab.size, T, n_embd=32, n_layers=2, n_head=n_head, dtype=np.float64).params
    _batches = np.random.default_rng(SEED).integers(0, len(Xtr), (steps.value, 32))
    with threadpool_limits(1, user_api="blas"):           # small products: a second BLAS thread only waits
        lossi = train(P, Xtr, Ytr, _batches, n_head, lr=2e-3)
        trained = Transformer(P, n_head=n_head)            # npmlp's model holding the trained arrays
        # the train loss over as many training names as dev holds: the whole split takes 10 s here
        train_loss, dev_loss = evaluate(trained, Xtr[:len(Xdev)], Ytr[:len(Xdev)]), evaluate(trained, Xdev, Ydev)
    samples = sample(trained, vocab, 12)
    _w = max(1, steps.value // 30)
    _fig, _ax = plt.subplots(figsize=(7, 3))
    _ax.plot(lossi, alpha=0.3, label="each batch")
    _ax.plot(np.arange(len(lossi) // _w) * _w + _w / 2, lossi[:len(lossi) // _w * _w].reshape(-1, _w).mean(1),
             label=f"mean of {_w}")
    _ax.axhline(np.log(vocab.size), color="gray", ls=":", label=f"ln {vocab.size}: a uniform guess")
    _ax.set(xlabel="step", ylabel="loss", title="a tiny Transformer (2 blocks, 4 heads, C = 32), AdamW")
    _ax.legend()
    _result = (f"After {steps.value:,} steps ({trained.num_params:,} parameters): train loss **{train_loss:.4f}** "
               f"(its first {len(Xdev):,} names), dev loss **{dev_loss:.4f}** (the first 20 batches "
               f"{lossi[:20].mean():.4f}, the last 50 {lossi[-50:].mean():.4f}).")
    mo.vstack([show(_result), _fig, show("### Samples\n\n" + ", ".join(f"`{s}`" for s in samples))])
    return P, dev_loss, lossi, samples, train_loss, trained


@app.cell(hide_code=True)
def _(dev_words, mo):
    name = mo.ui.dropdown(options=dev_words[:20], value=max(dev_words[:20], key=len), label="a dev name")
    mo.vstack([mo.md(r"""
    ## What the heads look at

    Each head's weights `att` for one name, in each block: row t is the position that reads
    (its query), column s the position it reads (its key), from the start token `.` on.
    Every row sums to 1 and the future, above the diagonal, is 0. Pick another name:
    """), name])
    return (name,)


@app.cell
def _(P, mo, n_head, name, np, plt, show, transformer_forward, vocab):
    _ids = [0, *(vocab.stoi[ch] for ch in name.value)]                   # '.', then the name
    _X = np.array([_ids])                                                 # (1, t)
    _, _c = transformer_forward(P, _X, np.full_like(_X, 0), n_head)
    patterns = [bc.att_c.att[0] for bc in _c.blocks]                       # [(nh, t, t)] per block
    _labels = [vocab.itos[i] for i in _ids]
    _fig, _axes = plt.subplots(len(patterns), n_head, figsize=(2.6 * n_head, 2.7 * len(patterns)), squeeze=False)
    for _i, _att in enumerate(patterns):
        for _h in range(n_head):
            _ax = _axes[_i, _h]
            _ax.imshow(_att[_h], cmap="Blues", vmin=0, vmax=1)
            _ax.set_xticks(range(len(_labels)), _labels)
            _ax.set_yticks(range(len(_labels)), _labels)
            _ax.set_title(f"block {_i}, head {_h}", fontsize=9)
    for _ax in _axes[-1]:
        _ax.set_xlabel("s: the position read (key)")
    for _ax in _axes[:, 0]:
        _ax.set_ylabel("t: reading (query)")
    _fig.tight_layout()
    # per head: the mean weight of a row's largest entry, and of the position just before (rows 1..)
    _heads = [(i, h) for i in range(len(patterns)) for h in range(n_head)]
    _sharp = {ih: float(patterns[ih[0]][ih[1]].max(1)[1:].mean()) for ih in _heads}
    _prev = {ih: float(np.diag(patterns[ih[0]][ih[1]], -1).mean()) for ih in _heads}
    _s, _p = max(_sharp, key=_sharp.get), max(_prev, key=_prev.get)
    _text = (f"`{name.value}`: the sharpest head is block {_s[0]}, head {_s[1]} (the largest weight of a row is "
             f"{_sharp[_s]:.0%} on average); block {_p[0]}, head {_p[1]} reads the position just before the most "
             f"({_prev[_p]:.0%} of each row's weight on average).")
    mo.vstack([_fig, show(_text)])
    return (patterns,)


if __name__ == "__main__":
    app.run()
