"""makemore part 1 in NumPy: the bigram model, counted and then trained, with its gradient by hand.

Open it as a notebook:   marimo edit examples/bigram.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/bigram.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/bigram.py        (the same results on the terminal)
Data: names.txt from $NPMLP_DATA, npmlp's cache, or the lecture's URL (a checked download), as
`npmlp train` finds it; without any of them the notebook stops and says what to do. torch is
optional: with it the hand-written gradient is also held against torch autograd; central finite
differences check it either way.
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
    # makemore part 1: the bigram model, counted and trained

    A bigram model predicts each character from the one before it, and nothing else. The
    lecture builds it twice:

    1. **by counting**: how often does each character follow each other one in names.txt?
       Normalise the counts into probabilities;
    2. **as a neural net**: one layer, a (27, 27) weight matrix `W`, trained by gradient
       descent on the same pairs.

    Both are scored by the same number, the mean negative log-likelihood of the data, and
    both end at (almost) the same model. Here everything is NumPy, float64, and the net's
    gradient is written by hand. Part 2 (`examples/lecture2.py`) gives the net a longer context.
    """)
    return


@app.cell
def _():
    import matplotlib.pyplot as plt
    import numpy as np
    from threadpoolctl import threadpool_limits

    try:  # optional: torch only checks the hand-written gradient
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = F = None
    return F, np, plt, threadpool_limits, torch


@app.cell
def _(load_names):
    # one name per line ($NPMLP_DATA, npmlp's cache, or the lecture's URL)
    words = load_names()
    len(words), words[:8]
    return (words,)


@app.cell
def _(words):
    chars = sorted(set("".join(words)))
    stoi = {s: i + 1 for i, s in enumerate(chars)}   # {'a': 1, ..., 'z': 26}
    stoi["."] = 0                                    # '.' marks both the start and the end of a name
    itos = {i: s for s, i in stoi.items()}
    V = len(itos)                                    # 27 characters
    return V, itos, stoi


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Counting

    Put a `'.'` before and after each name and count every pair of neighbours: *emma* gives
    `.e`, `em`, `mm`, `ma`, `a.`. `N[i, j]` is how many times character `j` follows character
    `i`. The same loop keeps each pair as an example for the neural net later: `xs` the first
    character, `ys` the second.
    """)
    return


@app.cell
def _(V, np, stoi, words):
    N = np.zeros((V, V), dtype=np.int64)             # (V, V) the counts
    xs, ys = [], []
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:], strict=False):   # each character with the next
            ix1, ix2 = stoi[ch1], stoi[ch2]
            N[ix1, ix2] += 1
            xs.append(ix1)
            ys.append(ix2)
    xs, ys = np.array(xs), np.array(ys)              # (num,), (num,)
    num = len(xs)                                    # 228,146 pairs
    num, int(N.sum())
    return N, num, xs, ys


@app.cell
def _(N, V, itos, plt):
    plt.figure(figsize=(9, 9))
    plt.imshow(N, cmap="Blues")
    plt.xticks(range(V), [itos[i] for i in range(V)])
    plt.yticks(range(V), [itos[i] for i in range(V)])
    plt.xlabel("next character")
    plt.ylabel("character")
    plt.title("N: how often each pair occurs")
    plt.gca()
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    Each row of `N`, divided by its sum, is a probability distribution over the next
    character. Before dividing, add 1 to every count (smoothing): a pair that never occurs,
    like `jq`, would otherwise get probability 0, and any name containing it an infinite loss.

    To sample a name, start after `'.'`, draw the next character from its row, move to that
    character's row, and stop when `'.'` is drawn.
    """)
    return


@app.cell
def _(N, V, itos, np, show):
    P = (N + 1) / (N + 1).sum(1, keepdims=True)      # (V, V) row i: P(next | i)

    def sample_names(next_probs, how_many=5, seed=2147483647):
        """Names drawn one character at a time from next_probs(ix) -> (V,) probabilities."""
        gen = np.random.default_rng(seed)            # the lecture's seed
        names = []
        for _ in range(how_many):
            out, ix = [], 0
            while True:
                ix = int(gen.choice(V, p=next_probs(ix)))
                out.append(itos[ix])
                if ix == 0:
                    break
            names.append("".join(out))
        return names

    samples_counts = sample_names(lambda ix: P[ix])
    show("counting model samples: " + " ".join(samples_counts))
    return P, sample_names, samples_counts


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## How good is it? The negative log-likelihood

    The model's probability of the whole dataset is the product of `P[x, y]` over every pair.
    That product is far too small to store, so take its log (a sum of logs), negate it (so that
    lower is better) and divide by the number of pairs: the mean negative log-likelihood. A
    model that guessed uniformly would score ln 27 ≈ 3.30; a perfect one, 0.
    """)
    return


@app.cell
def _(N, P, np, show, stoi, xs, ys):
    nll_counts = -np.log(P[xs, ys]).mean()                         # () smoothed, the model
    nll_unsmoothed = -np.log(N[xs, ys] / N[xs].sum(1)).mean()      # () the same without the + 1
    show(f"counting model nll {nll_counts:.4f}\n\n"
         f"without smoothing {nll_unsmoothed:.4f}: N[j, q] = {N[stoi['j'], stoi['q']]}, "
         f"P[j, q] = {P[stoi['j'], stoi['q']]:.2e}")
    return (nll_counts,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The same model as a neural net

    The same 228,146 pairs are now training examples: input `xs[i]`, target `ys[i]`. The
    network is one linear layer without a bias: the input character as a one-hot row
    `xenc` (1 in column `x`, 0 elsewhere) times `W` (27, 27). A one-hot row times `W` is just
    row `x` of `W`, so `logits = xenc @ W` is `W[xs]`, and that is how it is computed below.
    The logits are read as log-counts: `exp` makes them positive "counts", and dividing by the
    row sum makes probabilities (together: the softmax). The loss is the same mean negative
    log-likelihood as above, plus `0.01 * (W**2).mean()`, which pulls every weight toward 0,
    that is, every row toward the uniform distribution: the net's version of the + 1.

    The gradient, by hand:

    - **`dlogits = (probs - onehot(ys)) / num`.** The derivative of $-\log \mathrm{softmax}(l)_y$
      by $l_j$ is $\mathrm{softmax}(l)_j - [j = y]$; the mean over the `num` pairs divides by `num`.
    - **`dW = xenc.T @ dlogits`.** The backward of `xenc @ W`: row `x` of `dW` adds up the
      `dlogits` rows of all pairs that start with `x`.
    - **`+ 0.01 * 2 * W / W.size`.** The derivative of `0.01 * (W**2).mean()`.
    """)
    return


@app.cell
def _(V, np, num, xs, ys):
    xenc = np.eye(V)[xs]                                 # (num, V) one-hot inputs
    yenc = np.eye(V)[ys]                                 # (num, V) one-hot targets

    def forward(W):
        """-> (data loss, regularisation, probs (num, V)), over all the pairs at once."""
        logits = W[xs]                                   # (num, V) = xenc @ W: a one-hot row picks a row of W
        counts = np.exp(logits)                          # (num, V)
        probs = counts / counts.sum(1, keepdims=True)    # (num, V)
        data_loss = -np.log(probs[np.arange(num), ys]).mean()  # ()
        reg_loss = 0.01 * (W**2).mean()                  # ()
        return data_loss, reg_loss, probs

    def backward(W, probs):
        """-> dW (V, V), the gradient of data loss + regularisation."""
        dlogits = (probs - yenc) / num                   # (num, V) softmax - onehot, averaged
        dW = xenc.T @ dlogits                            # (V, V)
        dW += 0.01 * 2 * W / W.size                      # (V, V) the regularisation's share
        return dW

    return backward, forward


@app.cell
def _(V, np):
    g = np.random.default_rng(2147483647)            # the lecture's seed
    W = g.standard_normal((V, V))                    # (V, V)
    return (W,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ### Checking the gradient

    At the initial `W`, the hand-written `dW` against two references, in the lecture's `cmp`
    format (bitwise equal? equal up to the tolerance? largest difference?):

    - **central differences**, always: nudge one entry of `W` by ±1e-5, rerun the forward, and
      divide the change in the loss by 2e-5, at 8 random entries (tolerance 1e-6 of the
      largest entry of `dW`: the differences are only that good);
    - **torch autograd**, when torch is installed: the lecture's forward with `F.one_hot`, in
      float64, and `loss.backward()` (tolerance 1e-10: round-off only).
    """)
    return


@app.cell
def _(F, W, backward, cmp_table, forward, np, torch, xs, ys):
    def cmp(name, mine, ref, tol):
        """The lecture's cmp: bitwise equal? equal within tol * max|mine|? largest difference?
        Entries where `ref` is NaN (no finite difference taken there) are skipped. -> a row of cmp_table."""
        known = ~np.isnan(ref)
        maxdiff = float(np.abs(mine[known] - ref[known]).max())
        return {"name": name, "exact": bool(np.array_equal(mine[known], ref[known])),
                "approximate": maxdiff <= tol * float(np.abs(mine).max()), "maxdiff": maxdiff}

    _data, _reg, _probs = forward(W)
    loss0 = _data + _reg
    dW0 = backward(W, _probs)                            # (V, V)

    # central differences at 8 random entries of W
    _rng = np.random.default_rng(0)
    dW_fd = np.full(W.shape, np.nan)
    for _j in _rng.choice(W.size, 8, replace=False):
        _Wp, _Wm = W.copy(), W.copy()
        _Wp.flat[_j] += 1e-5
        _Wm.flat[_j] -= 1e-5
        dW_fd.flat[_j] = (sum(forward(_Wp)[:2]) - sum(forward(_Wm)[:2])) / 2e-5
    check_rows = [cmp("dW vs central differences", dW0, dW_fd, 1e-6)]

    if torch is not None:
        _Wt = torch.tensor(W, requires_grad=True)
        _xenc = F.one_hot(torch.as_tensor(xs), num_classes=W.shape[0]).double()
        _counts = (_xenc @ _Wt).exp()
        _probs_t = _counts / _counts.sum(1, keepdims=True)
        _loss_t = -_probs_t[torch.arange(len(ys)), torch.as_tensor(ys)].log().mean() + 0.01 * (_Wt**2).mean()
        _loss_t.backward()
        check_rows.append(cmp("dW vs torch autograd", dW0, _Wt.grad.numpy(), 1e-10))
        _title = f"dW at the initial W: loss {loss0:.12f}, torch's {_loss_t.item():.12f}"
    else:
        _title = "dW at the initial W (torch is not installed: dW is checked against central differences only)"
    cmp_table(_title, check_rows)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Training: gradient descent on all the pairs

    Every step uses all 228,146 pairs (no minibatches) and a large learning rate, 50, as in the
    lecture: the loss surface of this one-layer net is smooth and convex. 100 steps, each a
    forward, the backward above and the update `W += -50 * dW`, which changes `W` in place as
    the lecture's `W.data += -50 * W.grad` does (rerun the cell that draws `W` to start again).
    """)
    return


@app.cell
def _(W, backward, forward, show, threadpool_limits):
    lossi = []
    # one BLAS thread: xenc.T @ dlogits sums 228,146 rows into a (27, 27) matrix, which a second
    # OpenBLAS thread only slows down when the cores are busy
    with threadpool_limits(1, user_api="blas"):
        for _ in range(100):
            data_loss, reg_loss, probs = forward(W)     # (), (), (num, V)
            dW = backward(W, probs)                     # (V, V)
            W[:] += -50 * dW                            # in place; `W[:]`, as marimo lets only W's own cell rebind W
            lossi.append(data_loss + reg_loss)
    nll_nn, reg_nn, _ = forward(W)                      # the data loss and the penalty after the last step
    show(f"neural net nll {nll_nn:.4f}\n\nregularisation {reg_nn:.4f} (loss minimised: {nll_nn + reg_nn:.4f})")
    return lossi, nll_nn


@app.cell
def _(lossi, plt):
    plt.figure(figsize=(8, 3.5))
    plt.plot(lossi)
    plt.xlabel("step")
    plt.ylabel("loss (data + regularisation)")
    plt.gca()
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Why the two meet

    Every row of `logits` is one of the 27 rows of `W`, so the sum in `dW = xenc.T @ dlogits`
    can be done per character: the $n_x$ = `N[x].sum()` pairs that start with `x` share the
    same softmax row, and their one-hot targets add up to `N[x]`. So

    $$dW_x = \frac{n_x\,\mathrm{softmax}(W_x) - N_x}{\texttt{num}} + \text{the regularisation's share}$$

    and without the regularisation that is zero exactly when `softmax(W[x]) = N[x] / N[x].sum()`:
    the counting model without smoothing. The net, trained, can only approach the table of
    counts; the regularisation, like the + 1, keeps it a little closer to uniform.

    The formula also says how fast each row gets there: row `x`'s gradient is weighted by
    $n_x$ / `num`, the share of pairs that start with `x`. The rows of common characters
    match `P` closely after 100 steps; the row of `q`, which starts 272 of the 228,146 pairs,
    is still well short of it. That costs the loss little, for the same reason.
    """)
    return


@app.cell
def _(N, P, W, backward, forward, itos, nll_counts, nll_nn, np, num, show):
    _counts = np.exp(W)
    probs_nn = _counts / _counts.sum(1, keepdims=True)   # (V, V) the net's table: softmax of each row of W
    _dW_grouped = (N.sum(1, keepdims=True) * probs_nn - N) / num + 0.01 * 2 * W / W.size   # (V, V)
    _dW = backward(W, forward(W)[2])                     # (V, V)
    _row_diff = np.abs(probs_nn - P).max(1)              # (V,) each row's largest difference from P
    _common = N.sum(1) >= 3000                           # (V,) characters that start 3,000 pairs or more
    _worst = int(_row_diff.argmax())
    _col = int(np.abs(probs_nn - P)[_worst].argmax())
    show(f"""
    - nll: the net {nll_nn:.4f}, the counts {nll_counts:.4f}
    - `dW` from the counts vs from all {num:,} pairs: largest difference {np.abs(_dW_grouped - _dW).max():.1e}
    - the net's table vs `P` in the rows of the {_common.sum()} characters that start 3,000 pairs or more:
      largest difference {_row_diff[_common].max():.4f}
    - the row furthest from `P`, `{itos[_worst]}` ({N[_worst].sum():,} pairs): largest difference
      {_row_diff[_worst]:.4f}, P(`{itos[_col]}` after `{itos[_worst]}`) is {P[_worst, _col]:.3f} in `P`,
      {probs_nn[_worst, _col]:.3f} in the net
    """)
    return (probs_nn,)


@app.cell
def _(probs_nn, sample_names, samples_counts, show):
    # the same sampler and seed as the counting model: the net's row for ix is softmax(W[ix])
    samples_nn = sample_names(lambda ix: probs_nn[ix])
    show(f"neural net samples: {' '.join(samples_nn)}\n\ncounting model samples: {' '.join(samples_counts)}")
    return


if __name__ == "__main__":
    app.run()
