"""makemore.py's recurrent models in NumPy: the RNN cell, backprop through time, the GRU's gates, AdamW.

Open it as a notebook:   marimo edit examples/rnn.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/rnn.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/rnn.py        (the same results on the terminal)
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
    # makemore.py's RNN: backprop through time, by hand

    makemore.py reads a name one character at a time. A recurrent model keeps a hidden state `h`
    and updates it at each position from the character it reads and the state before; from each
    state it scores the next character. The same cell, with the same weights, runs at every
    position:

    ```
    X (B,T) -> emb = wte[X] (B,T,E)
            -> h_t = tanh([emb_t, h_t-1] @ W + b), h_-1 = start   hidden (B,T,H)
            -> logits = hidden @ W_lm + b_lm (B,T,V) -> cross-entropy over the targets that count
    ```

    Shapes: `B` names in a batch (32), `T` positions (16 on names.txt: the longest name and the
    closing '.'), `E` embedding size (64), `H` hidden state (64, makemore.py's `n_embd2`), `V`
    vocabulary (27). The parameter names are makemore.py's (`wte`, `cell.xh_to_h`, `lm_head`,
    `start`), every weight in NumPy's (in, out) layout. Below: one cell step and its backward,
    then the loop through time and its backward, the GRU's gates, makemore.py's AdamW, a short
    training run, and what happens to a gradient on its way back to the first characters.
    Everything is NumPy in float64; torch, when installed, only checks the answers.
    """)
    return


@app.cell
def _():
    import matplotlib.pyplot as plt
    import numpy as np
    from threadpoolctl import threadpool_limits

    from npmlp import gradcheck
    from npmlp.contract import SEED, Intermediates
    from npmlp.data import Vocab, build_sequences, split_words
    from npmlp.recurrent import GRU, RNN
    from npmlp.train import AdamW, evaluate, sample

    try:  # optional: torch only checks the gradients below
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(1)         # small tensors: a second thread only waits
    except ImportError:
        torch = F = None
    return (AdamW, F, GRU, Intermediates, RNN, SEED, Vocab, build_sequences, evaluate, gradcheck, np, plt,
            sample, split_words, threadpool_limits, torch)


@app.cell
def _(load_names, mo):
    words = load_names()               # $NPMLP_DATA, npmlp's cache, or the lecture's URL
    mo.md(f"{len(words):,} names, e.g. {', '.join(words[:8])}")
    return (words,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Names as sequences

    The lectures cut each name into rows of a fixed context. makemore.py's `CharDataset` keeps
    each name whole, one row of T positions: the input `x` is the start token `'.'` (0) and
    the name, the target `y` is the name and the closing `'.'`, one position ahead. After that,
    `x` is padded with 0 and `y` with -1, which masks a position out of the loss
    (`F.cross_entropy(..., ignore_index=-1)`): the loss is the mean over the targets that
    count, the same per-character loss as the lectures'. The names are split 80/10/10 after the
    lecture's `random.seed(42)` shuffle (makemore.py holds out 1,000 test names instead).
    """)
    return


@app.cell
def _(Vocab, build_sequences, np, show, split_words, words):
    vocab = Vocab.from_words(words)
    stoi = vocab.stoi                                     # '.' 0, then a..z 1..26
    T = max(len(w) for w in words) + 1                    # positions: the longest name and its closing '.'

    def encode(w):
        """One name -> x (T,), y (T,), as makemore.py's CharDataset.__getitem__."""
        ix = [stoi[ch] for ch in w]
        x = np.zeros(T, np.int64)                         # (T,) '.', the name, then 0s
        y = np.full(T, -1, np.int64)                      # (T,) the name, '.', then -1s
        x[1:1 + len(ix)] = ix
        y[:len(ix)] = ix
        y[len(ix)] = 0                                    # the closing '.'
        return x, y

    _tr, _dev, _te = split_words(words)                   # the lecture's random.seed(42) shuffle, 80/10/10
    Xtr, Ytr = (np.stack(a) for a in zip(*map(encode, _tr), strict=True))    # (N, T) each
    Xdev, Ydev = (np.stack(a) for a in zip(*map(encode, _dev), strict=True))
    same_rows = all(np.array_equal(a, b) for a, b in zip((Xtr, Ytr), build_sequences(_tr, vocab, T), strict=True))
    _w = _tr[0]
    _x, _y = encode(_w)
    _cols = range(min(len(_w) + 3, T))                     # the name, its closing ".", a masked position or two
    show(f"""
    vocabulary of {vocab.size}, T = {T}; names: train {len(Xtr):,}, dev {len(Xdev):,}. The first, `{_w}`:

    | t | {' | '.join(str(t) for t in _cols)} |
    |---|{'---|' * len(_cols)}
    | x | {' | '.join(f"{_x[t]} `{vocab.itos[_x[t]]}`" for t in _cols)} |
    | y | {' | '.join(f"{_y[t]} `{vocab.itos[_y[t]]}`" if _y[t] >= 0 else "-1" for t in _cols)} |

    (`npmlp.build_sequences` builds the same rows: {same_rows}.)
    """)
    return T, Xdev, Xtr, Ydev, Ytr, same_rows, vocab


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
    output counts with its own weight. A gradient of an intermediate (`hpreact`, a gate) is
    checked by perturbing the intermediate itself: the forward takes `at={name: array}` and
    runs the rest from it.
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
    ## One step of the RNN cell

    makemore.py's `RNNCell` puts the character's embedding `x` and the previous state `hprev`
    side by side and runs one tanh layer: `xh = [x, hprev]` (B, E+H),
    `h = tanh(xh @ W + b)` with `W` (E+H, H), whose first E rows read `x` and the last H read
    `hprev`. Its backward is lecture 2's hidden layer, with one new line at the end: the
    gradient of `xh` is cut back into its two halves, and the second half, `dhprev`, is what
    the step before receives.

    ```
    dhpreact = (1 - h**2) * dh          tanh' from the output
    dW = xh.T @ dhpreact                db = dhpreact.sum(0)
    dxh = dhpreact @ W.T                dx, dhprev = dxh[:, :E], dxh[:, E:]
    ```
    """)
    return


@app.cell
def _(Intermediates, RNN, T, Xtr, Ytr, check, cmp_table, gradcheck, np, ref_kind, torch, vocab):
    def rnn_cell_forward(x, hprev, W, b, at=None):
        """x (B, E), hprev (B, H), W (E+H, H), b (H,) -> h (B, H), c: the cache, by name."""
        c = Intermediates(at, x=x, W=W)
        c.xh = np.concatenate([x, hprev], axis=1)         # (B, E+H)
        c.hpreact = c.xh @ W + b                          # (B, H)
        c.h = np.tanh(c.hpreact)                          # (B, H)
        return c.h, c

    def rnn_cell_backward(dh, c):
        """dh (B, H) -> d: d.x (B, E), d.hprev (B, H), d.W (E+H, H), d.b (H,) (and d.hpreact, d.xh)."""
        E = c.x.shape[1]
        d = Intermediates()                               # the gradients by name: d.W is dL/dW
        d.hpreact = (1 - c.h ** 2) * dh                   # (B, H) tanh' = 1 - tanh^2
        d.W = c.xh.T @ d.hpreact                          # (E+H, H)
        d.b = d.hpreact.sum(0)                            # (H,)
        d.xh = d.hpreact @ c.W.T                          # (B, E+H)
        d.x, d.hprev = d.xh[:, :E], d.xh[:, E:]           # (B, E), (B, H) the two halves of [x, hprev]
        return d

    def _torch_cell(x, hprev, W, b):
        hpreact = torch.cat([x, hprev], 1) @ W + b
        return torch.tanh(hpreact), {"hpreact": hpreact}

    _rng = np.random.default_rng(0)
    _Xb, _ = gradcheck.minibatch(Xtr, Ytr, 32, seed=0)                        # (32, T)
    _P = RNN.init(vocab.size, T, 64, 64, dtype=np.float64).params             # torch's init: b is not 0
    cell_inputs = {"x": _P["wte.weight"][_Xb[:, 1]],                          # (B, E) the names' first characters
                   "hprev": np.tanh(_rng.standard_normal((32, 64))),          # (B, H) a state, not the start's 0s
                   "W": _P["cell.xh_to_h.weight"], "b": _P["cell.xh_to_h.bias"]}
    _h, _c = rnn_cell_forward(**cell_inputs)
    _dh = _rng.standard_normal(_h.shape)                                      # (B, H) dout
    _d = rnn_cell_backward(_dh, _c)
    cell_rows = check({k: _d[k] for k in ("hpreact", "W", "b", "x", "hprev")}, rnn_cell_forward, _torch_cell,
                      cell_inputs, _dh)
    cmp_table(f"one RNN step, B = 32, E = H = 64, against {ref_kind}", cell_rows)
    return cell_rows, rnn_cell_backward, rnn_cell_forward


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Through time: the forward, and its backward upside down

    The forward runs the cell T times, each step reading the state the previous one wrote. The
    backward runs the steps from the last position to the first, and the one new idea is where
    a state's gradient comes from. `h_t` is used twice: by position t's output (the logits) and
    by step t+1 as its `hprev`. So

    ```
    dh_t = dhidden_t + dhprev from step t+1's backward      (dhprev = 0 after the last step)
    ```

    and the loop carries that `dhprev` from step t+1 down to step t. `W` and `b` are one pair
    used at every step, so their gradients add the steps' up: `dW = sum_t dW_t`. The first
    state `start` (1, H) is a parameter, broadcast over the B rows: its gradient is the
    `dhprev` that comes out of step 0, summed over the rows. The output layer and the
    embedding see every position as a row, `(B, T, H)` as `(B*T, H)`: `dW_lm` adds every
    position's product, and `dwte` adds `demb` into the row of each character read (`np.add.at`,
    which adds repeated indices too).
    """)
    return


@app.cell
def _(Intermediates, np, rnn_cell_backward, rnn_cell_forward):
    def rnn_forward(P, X, Y):
        """makemore.py's RNN: X, Y (B, T) -> (loss over the targets that count, c: the cache, by name)."""
        B, T = X.shape
        c = Intermediates(X=X, Y=Y, steps=[])
        c.emb = P["wte.weight"][X]                                        # (B, T, E)
        hprev = np.broadcast_to(P["start"], (B, P["start"].shape[1]))     # (B, H) the learned start, every row
        for t in range(T):
            hprev, step = rnn_cell_forward(c.emb[:, t], hprev, P["cell.xh_to_h.weight"], P["cell.xh_to_h.bias"])
            c.steps.append(step)                                          # h_t becomes step t+1's hprev
        c.hidden = np.stack([step.h for step in c.steps], axis=1)         # (B, T, H)
        c.logits = c.hidden @ P["lm_head.weight"] + P["lm_head.bias"]     # (B, T, V)
        # the cross-entropy of the n targets that count: F.cross_entropy(..., ignore_index=-1)
        c.counts = Y != -1                                                # (B, T)
        logits = c.logits[c.counts]                                       # (n, V)
        e = np.exp(logits - logits.max(1, keepdims=True))                 # (n, V) shifted: exp cannot overflow
        c.probs = e / e.sum(1, keepdims=True)                             # (n, V) softmax
        loss = -np.log(c.probs[np.arange(len(logits)), Y[c.counts]]).mean()
        return loss, c

    def bptt(dhidden, steps):
        """dhidden (B, T, H), the gradient reaching each h_t from position t's output -> demb (B, T, E),
        dstart (1, H), dW (E+H, H), db (H,), dh (B, T, H): the gradient reaching each h_t in all."""
        B, T, H = dhidden.shape
        demb = np.zeros((B, T, steps[0].x.shape[1]))                      # (B, T, E)
        dW, db = np.zeros_like(steps[0].W), np.zeros(H)                   # (E+H, H), (H,)
        dh = np.zeros((B, T, H))                                          # (B, T, H)
        dhprev = np.zeros((B, H))                                         # nothing comes back from beyond the end
        for t in reversed(range(T)):
            dh[:, t] = dhidden[:, t] + dhprev                             # (1) position t's output (2) step t+1
            d = rnn_cell_backward(dh[:, t], steps[t])
            demb[:, t] = d.x                                              # (B, E)
            dW += d.W                                                     # one W for every step: the sum of theirs
            db += d.b
            dhprev = d.hprev                                              # (B, H) to step t-1
        dstart = dhprev.sum(0, keepdims=True)                             # (1, H) start was broadcast over B
        return demb, dstart, dW, db, dh

    def rnn_backward(P, c):
        """-> (grads by makemore.py's names, d: the intermediates' gradients, d.dh through time)."""
        B, T, H = c.hidden.shape
        V = c.logits.shape[-1]
        d = Intermediates()
        # dlogits = (probs - onehot(y)) / n at the n targets that count, 0 where masked
        d.logits = np.zeros_like(c.logits)                                # (B, T, V)
        d.logits[c.counts] = (c.probs - np.eye(V)[c.Y[c.counts]]) / len(c.probs)
        dW_lm = c.hidden.reshape(-1, H).T @ d.logits.reshape(-1, V)       # (H, V) every position a row
        db_lm = d.logits.sum((0, 1))                                      # (V,)
        d.hidden = d.logits @ P["lm_head.weight"].T                       # (B, T, H)
        d.emb, dstart, dW, db, d.dh = bptt(d.hidden, c.steps)             # backprop through time
        dwte = np.zeros_like(P["wte.weight"])                             # (V, E)
        np.add.at(dwte, c.X, d.emb)                                       # dwte[X[b, t]] += demb[b, t], repeats too
        grads = {"lm_head.weight": dW_lm, "lm_head.bias": db_lm, "cell.xh_to_h.weight": dW,
                 "cell.xh_to_h.bias": db, "start": dstart, "wte.weight": dwte}
        return grads, d
    return bptt, rnn_backward, rnn_forward


@app.cell
def _(F, RNN, T, Xtr, Ytr, cmp, cmp_table, gradcheck, mo, np, rnn_backward, rnn_forward, torch, vocab):
    def torch_rnn(P, X, Y):
        """makemore.py's RNN.forward in torch, on leaf tensors P (npmlp's (in, out) layout)
        -> (loss, hidden, [h_t])."""
        X, Y = torch.as_tensor(X, dtype=torch.long), torch.as_tensor(Y, dtype=torch.long)
        emb = P["wte.weight"][X]                                          # (B, T, E)
        hprev = P["start"].expand(X.shape[0], -1)                         # (B, H)
        hs = []
        for t in range(X.shape[1]):
            xh = torch.cat([emb[:, t], hprev], 1)
            hprev = torch.tanh(xh @ P["cell.xh_to_h.weight"] + P["cell.xh_to_h.bias"])
            hs.append(hprev)
        hidden = torch.stack(hs, 1)                                       # (B, T, H)
        logits = hidden @ P["lm_head.weight"] + P["lm_head.bias"]         # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), Y.view(-1), ignore_index=-1)
        return loss, hidden, hs

    P_check = RNN.init(vocab.size, T, 64, 64, dtype=np.float64).params
    P_check["start"] = 0.1 * np.random.default_rng(1).standard_normal(P_check["start"].shape)  # not 0: see dstart
    Xb, Yb = gradcheck.minibatch(Xtr, Ytr, 32, seed=0)                    # (B, T) each
    loss_check, _c = rnn_forward(P_check, Xb, Yb)
    grads_check, d_check = rnn_backward(P_check, _c)
    mine_check = {"hidden": d_check.hidden, "h through time": d_check.dh, **grads_check}
    if torch is not None:
        _P = {k: torch.tensor(v, requires_grad=True) for k, v in P_check.items()}
        _loss, _hidden, _hs = torch_rnn(_P, Xb, Yb)
        _hidden.retain_grad()                                             # dL/dhidden: from the outputs only
        for _h in _hs:
            _h.retain_grad()                                              # dL/dh_t: through time too
        _loss.backward()
        _ref = {"hidden": _hidden.grad.numpy(), "h through time": np.stack([h.grad.numpy() for h in _hs], 1),
                **{k: p.grad.numpy() for k, p in _P.items()}}
        _title, _rtol = "torch autograd (float64), makemore.py's forward", 1e-10
    else:                                     # central differences of the loss, at 20 places of each parameter
        _rng = np.random.default_rng(0)
        _ref = {}
        for _k, _p in P_check.items():
            _x = _p.copy()
            _idx = np.sort(_rng.choice(_x.size, min(20, _x.size), replace=False))
            _ref[_k] = np.full(_x.shape, np.nan)
            _ref[_k].flat[_idx] = gradcheck.central_difference(
                lambda k=_k, x=_x: rnn_forward({**P_check, k: x}, Xb, Yb)[0], _x, _idx, eps=1e-5)
        _title, _rtol = "central differences of the loss (torch is not installed)", 1e-5
    bptt_rows = [cmp(k, g, _ref[k], _rtol) for k, g in mine_check.items() if k in _ref]
    # the library: npmlp's RNN.backward, the model `npmlp train --model rnn` runs
    _model = RNN(P_check, block_size=T)
    lib_loss, _lc = _model.forward(Xb, Yb)
    _lg, _ld, _ldh = _model.backward(_lc, return_dh=True)
    _lib = {"hidden": _ld["hidden"], "h through time": _ldh, **_lg}
    lib_rows = [cmp(k, g, _lib[k], 1e-12) for k, g in mine_check.items()]
    mo.vstack([cmp_table(f"backprop through time, B = 32, T = {T}, against {_title}", bptt_rows),
               cmp_table(f"the same against npmlp's RNN.backward (loss {loss_check:.12f} vs {lib_loss:.12f})",
                         lib_rows)])
    return P_check, Xb, Yb, bptt_rows, grads_check, lib_loss, lib_rows, loss_check, torch_rnn


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The GRU's gates

    makemore.py's `GRUCell` adds two gates to the cell, each a sigmoid layer of `[x, hprev]`:
    the reset gate `r` wipes channels of `hprev` before the candidate state `hbar` reads it,
    and the switch gate `z` blends the old state with the candidate. Where `z` is 0 the state
    passes through the step unchanged, and so does its gradient: the path that keeps a
    gradient alive over many steps.

    ```
    r = sigmoid(xh @ Wr + br)                     xh = [x, hprev]
    hbar = tanh([x, r * hprev] @ Wh + bh)
    z = sigmoid(xh @ Wz + bz)
    h = (1 - z) * hprev + z * hbar
    ```

    Backward, one line per gate, sigmoid' = s (1 - s) and tanh' = 1 - tanh² from the outputs.
    `hprev` reaches `h` three ways (the blend, through `r * hprev` into `hbar`, and through `xh`
    into both gates), so its gradient has three terms; `x` two.
    """)
    return


@app.cell
def _(GRU, Intermediates, T, Xtr, Ytr, check, cmp_table, gradcheck, np, ref_kind, torch, vocab):
    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    def gru_cell_forward(x, hprev, Wr, br, Wz, bz, Wh, bh, at=None):
        """x (B, E), hprev (B, H), each W (E+H, H), each b (H,) -> h (B, H), c: the cache, by name."""
        c = Intermediates(at, x=x, hprev=hprev, Wr=Wr, Wz=Wz, Wh=Wh)
        c.xh = np.concatenate([x, hprev], axis=1)                         # (B, E+H)
        c.r = sigmoid(c.xh @ Wr + br)                                     # (B, H) the reset gate
        c.xhr = np.concatenate([x, c.r * hprev], axis=1)                  # (B, E+H) [x, hprev with channels reset]
        c.hbar = np.tanh(c.xhr @ Wh + bh)                                 # (B, H) the candidate
        c.z = sigmoid(c.xh @ Wz + bz)                                     # (B, H) the switch gate
        c.h = (1 - c.z) * hprev + c.z * c.hbar                            # (B, H)
        return c.h, c

    def gru_cell_backward(dh, c):
        """dh (B, H) -> d: d.x, d.hprev, d.Wr, d.br, d.Wz, d.bz, d.Wh, d.bh, and every gate's."""
        E = c.x.shape[1]
        d = Intermediates()
        d.z = dh * (c.hbar - c.hprev)                                     # (B, H) h = hprev + z (hbar - hprev)
        d.hbar = dh * c.z                                                 # (B, H)
        d.hbarpreact = d.hbar * (1 - c.hbar ** 2)                         # (B, H) tanh'
        d.xhr = d.hbarpreact @ c.Wh.T                                     # (B, E+H)
        d.r = d.xhr[:, E:] * c.hprev                                      # (B, H) d(r * hprev)/dr = hprev
        d.rpreact = d.r * c.r * (1 - c.r)                                 # (B, H) sigmoid'
        d.zpreact = d.z * c.z * (1 - c.z)                                 # (B, H) sigmoid'
        d.xh = d.rpreact @ c.Wr.T + d.zpreact @ c.Wz.T                    # (B, E+H) both gates read xh
        d.Wr, d.br = c.xh.T @ d.rpreact, d.rpreact.sum(0)                 # (E+H, H), (H,)
        d.Wz, d.bz = c.xh.T @ d.zpreact, d.zpreact.sum(0)
        d.Wh, d.bh = c.xhr.T @ d.hbarpreact, d.hbarpreact.sum(0)
        d.x = d.xhr[:, :E] + d.xh[:, :E]                                  # (B, E) (1) via hbar (2) via the gates
        # (1) the blend (1 - z) hprev, (2) r * hprev in hbar, (3) the gates' input xh
        d.hprev = dh * (1 - c.z) + d.xhr[:, E:] * c.r + d.xh[:, E:]       # (B, H)
        return d

    def _torch_gru(x, hprev, Wr, br, Wz, bz, Wh, bh):                    # makemore.py's GRUCell.forward
        xh = torch.cat([x, hprev], 1)
        r = torch.sigmoid(xh @ Wr + br)
        hbar = torch.tanh(torch.cat([x, r * hprev], 1) @ Wh + bh)
        z = torch.sigmoid(xh @ Wz + bz)
        return (1 - z) * hprev + z * hbar, {"r": r, "z": z, "hbar": hbar}

    _rng = np.random.default_rng(2)
    _Xb, _ = gradcheck.minibatch(Xtr, Ytr, 32, seed=0)
    _P = GRU.init(vocab.size, T, 64, 64, dtype=np.float64).params
    gru_inputs = {"x": _P["wte.weight"][_Xb[:, 1]], "hprev": np.tanh(_rng.standard_normal((32, 64))),
                  **{f"{w}{g}": _P[f"cell.xh_to_{gate}.{k}"] for g, gate in (("r", "r"), ("z", "z"), ("h", "hbar"))
                     for w, k in (("W", "weight"), ("b", "bias"))}}
    _h, _c = gru_cell_forward(**gru_inputs)
    _dh = _rng.standard_normal(_h.shape)
    _d = gru_cell_backward(_dh, _c)
    gru_rows = check({k: _d[k] for k in ("z", "hbar", "r", "Wr", "br", "Wz", "bz", "Wh", "bh", "x", "hprev")},
                     gru_cell_forward, _torch_gru, gru_inputs, _dh)
    cmp_table(f"one GRU step, B = 32, E = H = 64, against {ref_kind}", gru_rows)
    return (gru_rows,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## makemore.py's optimiser: AdamW, written out

    The lectures step every parameter by `-lr * grad`. makemore.py uses
    `torch.optim.AdamW(lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)`, which keeps two
    running averages per parameter and divides one by the root of the other, so every number
    moves by about `lr` whatever the size of its gradient. Step t (from 1) of a parameter `p`
    with gradient `g`, in torch's order:

    ```
    p *= 1 - lr * weight_decay              decoupled weight decay, before the moments
    m = beta1 * m + (1 - beta1) * g         the gradient's running mean
    v = beta2 * v + (1 - beta2) * g**2      ... and its running mean square
    m_hat = m / (1 - beta1**t)              both start at 0: the bias corrections undo that
    v_hat = v / (1 - beta2**t)
    p -= lr * m_hat / (sqrt(v_hat) + eps)
    ```

    The loop below is makemore.py's: a batch of names, the forward, the backward through time,
    the update. It is checked for 5 steps from the same init on the same batches against
    npmlp's `train.AdamW` (on `RNN.backward`) and against `torch.optim.AdamW` (on autograd):
    the change each made to every parameter.
    """)
    return


@app.cell
def _(AdamW, RNN, SEED, T, Xtr, Ytr, cmp, cmp_table, mo, np, rnn_backward, rnn_forward, show, torch, torch_rnn,
      vocab):
    def train(P, X, Y, batches, lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01):
        """makemore.py's training loop on P, in place, one step per row of `batches` (steps, B). -> lossi."""
        beta1, beta2 = betas
        m = {k: np.zeros_like(p) for k, p in P.items()}                  # the gradients' running means
        v = {k: np.zeros_like(p) for k, p in P.items()}                  # ... and mean squares
        lossi = []
        for t, ix in enumerate(batches, start=1):
            loss, c = rnn_forward(P, X[ix], Y[ix])                       # forward
            grads, _ = rnn_backward(P, c)                                 # backward, through time
            for k, p in P.items():                                       # update, every parameter
                g = grads[k]
                p *= 1 - lr * weight_decay
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g ** 2
                m_hat = m[k] / (1 - beta1 ** t)
                v_hat = v[k] / (1 - beta2 ** t)
                p -= lr * m_hat / (np.sqrt(v_hat) + eps)
            lossi.append(loss)
        return np.array(lossi)

    P0 = RNN.init(vocab.size, T, 64, 64, dtype=np.float64).params        # makemore.py's init: start 0
    _batches = np.random.default_rng(SEED).integers(0, len(Xtr), (5, 32))
    _P = {k: p.copy() for k, p in P0.items()}
    adamw_losses = {"this loop": train(_P, Xtr, Ytr, _batches)}
    steps_mine = {k: _P[k] - P0[k] for k in P0}                          # what the 5 steps changed
    # npmlp: RNN.backward and train.AdamW
    _model = RNN(P0, block_size=T)                                        # copies P0
    _opt = AdamW(_model.params, lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    _losses = []
    for _ix in _batches:
        _loss, _g = _model.loss_and_grads(Xtr[_ix], Ytr[_ix])
        _opt.step(_g)
        _losses.append(_loss)
    adamw_losses["npmlp AdamW"] = np.array(_losses)
    adamw_rows = [cmp(f"{k} (npmlp AdamW)", steps_mine[k], _model.params[k] - P0[k], 1e-10) for k in P0]
    if torch is not None:                                                 # torch: autograd and torch.optim.AdamW
        _Pt = {k: torch.tensor(p, requires_grad=True) for k, p in P0.items()}
        _opt = torch.optim.AdamW(_Pt.values(), lr=5e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
        _losses = []
        for _ix in _batches:
            _loss = torch_rnn(_Pt, Xtr[_ix], Ytr[_ix])[0]
            _opt.zero_grad()
            _loss.backward()
            _opt.step()
            _losses.append(_loss.item())
        adamw_losses["torch.optim.AdamW"] = np.array(_losses)
        adamw_rows += [cmp(f"{k} (torch AdamW)", steps_mine[k], _Pt[k].detach().numpy() - P0[k]) for k in P0]
    _table = "\n".join([f"| step | {' | '.join(adamw_losses)} |", "|---|" + "---:|" * len(adamw_losses),
                        *(f"| {i + 1} | {' | '.join(f'{v[i]:.12f}' for v in adamw_losses.values())} |"
                          for i in range(5))])
    mo.vstack([show("**The loss of each of the 5 steps**\n\n" + _table),
               cmp_table("the change 5 steps made to each parameter, against npmlp's train.AdamW"
                         + (" and torch.optim.AdamW" if torch is not None else ""), adamw_rows)])
    return P0, adamw_losses, adamw_rows, train


@app.cell(hide_code=True)
def _(mo):
    steps = mo.ui.slider(steps=[100, 300, 500, 1000, 2000, 5000, 30_000], value=500, label="AdamW steps",
                         show_value=True)
    mo.vstack([mo.md("## Training on the names\n\nThe loop above, at makemore.py's settings (batches of 32 "
                     "names, lr 5e-4). Move the slider and the cells below rerun; `npmlp train --model rnn` "
                     "trains 30,000 steps with its fast engine."), steps])
    return (steps,)


@app.cell
def _(P0, RNN, SEED, T, Xdev, Xtr, Ydev, Ytr, evaluate, mo, np, plt, sample, show, steps, threadpool_limits, train,
      vocab):
    P = {k: p.copy() for k, p in P0.items()}
    _batches = np.random.default_rng(SEED).integers(0, len(Xtr), (steps.value, 32))
    with threadpool_limits(1, user_api="blas"):           # small products: a second BLAS thread only waits
        lossi = train(P, Xtr, Ytr, _batches)
        trained = RNN(P, block_size=T)                     # npmlp's model holding the trained arrays
        train_loss, dev_loss = evaluate(trained, Xtr, Ytr), evaluate(trained, Xdev, Ydev)
    samples = sample(trained, vocab, 12)
    _w = max(1, steps.value // 50)
    _fig, _ax = plt.subplots(figsize=(7, 3))
    _ax.plot(lossi, alpha=0.3, label="each batch")
    _ax.plot(np.arange(len(lossi) // _w) * _w + _w / 2, lossi[:len(lossi) // _w * _w].reshape(-1, _w).mean(1),
             label=f"mean of {_w}")
    _ax.axhline(np.log(vocab.size), color="gray", ls=":", label=f"ln {vocab.size}: a uniform guess")
    _ax.set(xlabel="step", ylabel="loss", title="makemore.py's RNN, AdamW")
    _ax.legend()
    _result = (f"After {steps.value:,} steps: train loss **{train_loss:.4f}**, dev loss **{dev_loss:.4f}** (the "
               f"first 20 batches {lossi[:20].mean():.4f}, the last 50 {lossi[-50:].mean():.4f}).")
    mo.vstack([show(_result), _fig, show("### Samples\n\n" + ", ".join(f"`{s}`" for s in samples))])
    return P, dev_loss, lossi, samples, train_loss


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The gradient on its way back through time

    Each step of the backward multiplies the gradient by the step's Jacobian,
    `dhprev = ((1 - h**2) * dh) @ W_hh.T` (`W_hh` the last H rows of W). Through k steps, k
    such factors: if they shrink the gradient, the loss at a late position barely reaches the
    states of the early characters, and the early characters learn little from it (the
    vanishing gradient); a saturated tanh (`1 - h**2` near 0) shrinks it fastest.

    Left: `||dL/dh_t||`, the whole gradient reaching each state (what `npmlp diagnose` draws),
    over 256 dev names. It falls towards the end only because fewer names are that long. Right:
    the part of it that comes from one position's loss, at t0 = 7, as it travels back: the
    BPTT loop above, fed the gradient of position 7's output alone. Three models: torch's init
    (small weights: every step shrinks the gradient), the same init with every bias shifted by
    +3 (the tanh saturated), and the model trained above.
    """)
    return


@app.cell
def _(P, P0, Xdev, Ydev, bptt, gradcheck, mo, np, plt, rnn_backward, rnn_forward, show):
    _Xv, _Yv = gradcheck.minibatch(Xdev, Ydev, 256, seed=1)
    t0 = min(7, _Xv.shape[1] - 2)
    _saturated = {**P0, "cell.xh_to_h.bias": P0["cell.xh_to_h.bias"] + 3}
    through_time = {}
    for _name, _P in (("at init", P0), ("saturated: bias + 3", _saturated), ("trained", P)):
        _, _c = rnn_forward(_P, _Xv, _Yv)
        _, _d = rnn_backward(_P, _c)
        _one = np.zeros_like(_d.hidden)
        _one[:, t0] = _d.hidden[:, t0]                        # position t0's loss alone
        _dh_one = bptt(_one, _c.steps)[-1]                    # (B, T, H)
        through_time[_name] = {"dh_norm": np.linalg.norm(_d.dh, axis=(0, 2)),            # (T,)
                               "from_t0": np.linalg.norm(_dh_one, axis=(0, 2))[:t0 + 1],  # (t0 + 1,)
                               "saturation": float((np.abs(_c.hidden[_c.counts]) > 0.97).mean())}
    _fig, (_a1, _a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for _name, _r in through_time.items():
        _a1.plot(_r["dh_norm"], marker=".", label=_name)
        _a2.semilogy(_r["from_t0"] / _r["from_t0"][-1], marker=".", label=_name)
    _a1.set(xlabel="position t", ylabel="||dL/dh_t||", title="the whole gradient reaching h_t")
    _a2.set(xlabel="position t", ylabel=f"||dL_{t0}/dh_t|| / ||dL_{t0}/dh_{t0}||",
            title=f"position {t0}'s loss, travelling back")
    _a1.legend()
    _fig.tight_layout()
    _table = "\n".join([f"| model | tanh outputs beyond ±0.97 | ‖dL_{t0}/dh_0‖ / ‖dL_{t0}/dh_{t0}‖ | "
                        "per step back |", "|---|---:|---:|---:|",
                        *(f"| {k} | {r['saturation']:.1%} | {r['from_t0'][0] / r['from_t0'][-1]:.2e} | "
                          f"× {(r['from_t0'][0] / r['from_t0'][-1]) ** (1 / t0):.2f} |"
                          for k, r in through_time.items())])
    mo.vstack([_fig, show(_table + """

    At init the recurrent weights are small (torch's uniform ±1/sqrt(E+H)): each step back
    multiplies the gradient by a matrix that shrinks it, and almost nothing of a late loss
    reaches the first states. With the tanh saturated, `1 - h**2` is near 0 at almost every
    unit and the gradient vanishes much faster still. Training grows `W_hh`, and a step back
    loses less. The GRU's switch gate is the designed way out: where z is near 0, the state and
    its gradient pass a step unchanged.
    """, _table)])
    return t0, through_time


if __name__ == "__main__":
    app.run()
