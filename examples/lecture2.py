"""makemore part 2 in NumPy, cell by cell, with `loss.backward()` written out by hand.

Open it as a notebook:   marimo edit examples/lecture2.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/lecture2.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/lecture2.py        (the same results on the terminal)
Data: names.txt from $NPMLP_DATA, npmlp's cache, or the lecture's URL (a checked download), as
`npmlp train` finds it; without any of them the notebook stops and says what to do. torch is
optional: with it the hand-written gradients are held against torch autograd, without it against
central finite differences.
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
    # makemore part 2: the MLP, with `loss.backward()` written out

    The lecture's notebook, cell for cell and in its order, in NumPy. One thing changes: nothing
    records a graph, so where the lecture calls `loss.backward()` the training loop computes
    every gradient itself, one line each. The model is Bengio et al. (2003): look up each of the
    3 context characters in an embedding table `C`, put the 3 vectors side by side, a `tanh`
    hidden layer, and an output layer that scores each of the 27 possible next characters.

    ```
    C[X] -> concat -> @ W1 + b1 -> tanh -> @ W2 + b2 -> cross-entropy
    (B,T,E) (B,T*E)      (B,H)      (B,H)     (B,V)          ()
    ```

    Shapes: `B` batch (32), `T` context length (3), `E` embedding size (10), `H` hidden units
    (200), `V` vocabulary (27). Every array is float64 (NumPy's default; the lecture's torch
    tensors are float32): the gradient checks at the end then agree to round-off.
    """)
    return


@app.cell
def _():
    import matplotlib.pyplot as plt
    import numpy as np

    from npmlp import MLP

    try:  # optional: torch only checks the hand-written gradients at the end
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = F = None
    return F, MLP, np, plt, torch


@app.cell
def _(load_names):
    # read the dataset: one name per line ($NPMLP_DATA, npmlp's cache, or the lecture's URL)
    words = load_names()
    len(words), words[:8]
    return (words,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    The network only ever sees integers. `stoi` maps each character to one, `itos` maps back:
    `'.'` is 0 (it marks both the start and the end of a name), then `a` to `z` are 1 to 26.
    """)
    return


@app.cell
def _(words):
    chars = sorted(set("".join(words)))
    stoi = {s: i + 1 for i, s in enumerate(chars)}   # {'a': 1, ..., 'z': 26}
    stoi["."] = 0
    itos = {i: s for s, i in stoi.items()}           # {0: '.', 1: 'a', ...}
    vocab_size = len(itos)                           # V = 27
    return itos, stoi, vocab_size


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The dataset

    Each name gives one row per character plus one for the closing `'.'`: the previous
    `block_size` characters (padded with `'.'` at the start) and the character that follows.
    For *emma*:

    ```
    ...  -> e      (0, 0, 0)   -> 5
    ..e  -> m      (0, 0, 5)   -> 13
    .em  -> m      (0, 5, 13)  -> 13
    emm  -> a      (5, 13, 13) -> 1
    mma  -> .      (13, 13, 1) -> 0
    ```

    (`npmlp.build_dataset` is this loop; `npmlp.fast.dataset.build_dataset`, what `npmlp train`
    uses, builds the same rows without Python's per-character work, and the tests hold the two
    equal.)
    """)
    return


@app.cell
def _(np, stoi):
    block_size = 3  # T: how many characters predict the next one

    def build_dataset(words):
        X, Y = [], []
        for w in words:
            context = [0] * block_size
            for ch in w + ".":
                ix = stoi[ch]
                X.append(context)
                Y.append(ix)
                context = context[1:] + [ix]  # slide the window: drop the oldest, add this one
        return np.array(X), np.array(Y)       # (N, T), (N,)

    return block_size, build_dataset


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    Train, validation (dev) and test splits, 80/10/10, in the file's order: this notebook does
    not shuffle. That matters below: names.txt lists the most common names first and, after
    them, rarer names in alphabetical order, so the last 20% are not drawn from the same
    population as the first 80%.
    """)
    return


@app.cell
def _(build_dataset, words):
    n1 = int(len(words) * 0.8)
    n2 = int(len(words) * 0.9)
    Xtr, Ytr = build_dataset(words[:n1])       # (N, T), (N,)
    Xdev, Ydev = build_dataset(words[n1:n2])
    Xte, Yte = build_dataset(words[n2:])
    return Xdev, Xte, Xtr, Ydev, Yte, Ytr


@app.cell
def _(Xdev, Xte, Xtr):
    len(Xtr), len(Xdev), len(Xte)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The parameters

    Every parameter is drawn from a standard normal, as in the lecture, by one generator with the
    lecture's seed. NumPy's generator is not torch's, so the numbers (and the minibatches drawn
    from the same generator in the loop) differ from the lecture's; the statistics of the run
    do not. This plain init is what part 3 fixes: the first minibatch losses are 20 to 30, far
    above the ln 27 ≈ 3.30 of a uniform guess, and about two thirds of the `tanh` outputs start
    beyond ±0.99, saturated.
    """)
    return


@app.cell
def _(block_size, np, vocab_size):
    g = np.random.default_rng(2147483647)        # the lecture's torch.Generator().manual_seed(2147483647)
    n_embd, n_hidden = 10, 200                   # E, H
    C = g.standard_normal((vocab_size, n_embd))                # (V, E)
    W1 = g.standard_normal((block_size * n_embd, n_hidden))   # (T*E, H)
    b1 = g.standard_normal(n_hidden)                           # (H,)
    W2 = g.standard_normal((n_hidden, vocab_size))            # (H, V)
    b2 = g.standard_normal(vocab_size)                         # (V,)
    parameters = [C, W1, b1, W2, b2]
    return C, W1, W2, b1, b2, g, parameters


@app.cell
def _(parameters, show):
    n_params = sum(p.size for p in parameters)  # number of parameters in total
    show(f"{n_params:,} parameters")
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Training, with the backward pass by hand

    The lecture's `requires_grad` cell has no counterpart: no graph is recorded. Instead, after
    the forward pass the loop walks it backwards, and each line gives the gradient of the loss
    with respect to one array, `d` + its name:

    - **`dlogits = (probs - onehot(Yb)) / B`.** One row's loss is
      $-\log \mathrm{softmax}(l)_y = -l_y + \log \sum_j e^{l_j}$; its derivative by $l_j$ is
      $\mathrm{softmax}(l)_j - [j = y]$. The loss is the mean over the B rows, hence $/B$.
      torch's `F.cross_entropy` backward computes it in one piece too.
    - **`dW2 = h.T @ dlogits`, `db2 = dlogits.sum(0)`.** `logits = h @ W2 + b2`: `W2[j, k]`
      carries `h[b, j]` into `logits[b, k]` for every row `b`, so its gradient adds
      `h[b, j] * dlogits[b, k]` over the batch. `b2` was added to every row, so its gradient
      adds up the rows.
    - **`dh = dlogits @ W2.T`.** The same product, differentiated by its other operand.
    - **`dhpreact = (1 - h**2) * dh`.** The derivative of `tanh` is $1 - \tanh^2$, and `h` is
      that `tanh`, already computed. A unit near ±1 passes almost no gradient: saturation.
    - **`dW1`, `db1`, `dembcat`.** The first linear layer, the same three lines as the second.
    - **`demb = dembcat.reshape(emb.shape)`.** Concatenating only reshaped `emb`; undo it.
    - **`dC`.** `emb[b, t]` is a copy of row `Xb[b, t]` of `C`, so row `i` of `dC` adds `demb[b, t]`
      over every position where character `i` was looked up. The obvious `dC[Xb] += demb` is
      wrong: when an index repeats (`'.'` pads the start of every name, so it appears many times
      in every batch), NumPy's indexed `+=` keeps only one of the additions for it.
      `np.add.at(dC, Xb, demb)` performs every addition.

    Then the update, `p += -lr * grad`, changes the arrays of the cell above in place, as the
    lecture's `p.data += -lr * p.grad` does. To start again from the init, rerun the parameters
    cell: marimo then reruns everything that reads them.
    """)
    return


@app.cell
def _(C, W1, W2, Xtr, Ytr, b1, b2, g, np, parameters, vocab_size):
    steps, batch_size, lr = 5000, 32, 0.1
    lossi = []
    for i in range(steps):
        # minibatch
        ix = g.integers(0, Xtr.shape[0], batch_size)             # (B,)
        Xb, Yb = Xtr[ix], Ytr[ix]                                # (B, T), (B,)

        # forward pass
        emb = C[Xb]                                              # (B, T, E)
        embcat = emb.reshape(batch_size, -1)                     # (B, T*E) the lecture's emb.view(-1, 30)
        hpreact = embcat @ W1 + b1                               # (B, H)
        h = np.tanh(hpreact)                                     # (B, H)
        logits = h @ W2 + b2                                     # (B, V)
        # F.cross_entropy(logits, Yb), spelled out
        counts = np.exp(logits - logits.max(1, keepdims=True))  # (B, V) shifted so that exp cannot overflow
        probs = counts / counts.sum(1, keepdims=True)            # (B, V) softmax
        loss = -np.log(probs[np.arange(batch_size), Yb]).mean()  # () mean negative log-likelihood

        # backward pass: what loss.backward() computes
        dlogits = (probs - np.eye(vocab_size)[Yb]) / batch_size  # (B, V) softmax - onehot, averaged
        dW2 = h.T @ dlogits                                      # (H, V)
        db2 = dlogits.sum(0)                                     # (V,)
        dh = dlogits @ W2.T                                      # (B, H)
        dhpreact = (1 - h**2) * dh                               # (B, H) tanh' = 1 - tanh^2
        dW1 = embcat.T @ dhpreact                                # (T*E, H)
        db1 = dhpreact.sum(0)                                    # (H,)
        dembcat = dhpreact @ W1.T                                # (B, T*E)
        demb = dembcat.reshape(emb.shape)                        # (B, T, E)
        dC = np.zeros_like(C)                                    # (V, E)
        np.add.at(dC, Xb, demb)                                  # dC[Xb[b, t]] += demb[b, t], repeats too
        grads = [dC, dW1, db1, dW2, db2]

        if i == steps - 1:  # keep the parameters of the last step, before its update, for the checks
            params_last = {"C": C.copy(), "W1": W1.copy(), "b1": b1.copy(), "W2": W2.copy(), "b2": b2.copy()}

        # update
        for p, grad in zip(parameters, grads, strict=True):
            p += -lr * grad

        lossi.append(np.log10(loss))
    return (
        Xb,
        Yb,
        dC,
        dW1,
        dW2,
        db1,
        db2,
        demb,
        dembcat,
        dh,
        dhpreact,
        dlogits,
        loss,
        lossi,
        params_last,
    )


@app.cell
def _(lossi, plt):
    plt.figure(figsize=(8, 3.5))
    plt.plot(lossi)
    plt.xlabel("step")
    plt.ylabel("log10(loss) of the minibatch")
    plt.gca()
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The loss on each split

    The same forward pass over a whole split at once. A minibatch's loss is noisy; this is the
    number to compare.
    """)
    return


@app.cell
def _(C, W1, W2, b1, b2, np):
    def calculate_loss(X, Y):
        emb = C[X]                                               # (N, T, E)
        h = np.tanh(emb.reshape(len(X), -1) @ W1 + b1)           # (N, H)
        logits = h @ W2 + b2                                     # (N, V)
        counts = np.exp(logits - logits.max(1, keepdims=True))  # (N, V)
        probs = counts / counts.sum(1, keepdims=True)            # (N, V)
        return float(-np.log(probs[np.arange(len(X)), Y]).mean())

    return (calculate_loss,)


@app.cell
def _(Xdev, Xte, Xtr, Ydev, Yte, Ytr, calculate_loss, show):
    loss_train = calculate_loss(Xtr, Ytr)
    loss_val = calculate_loss(Xdev, Ydev)
    loss_test = calculate_loss(Xte, Yte)
    show(f"loss train {loss_train:.4f}\n\nloss val {loss_val:.4f}\n\nloss test {loss_test:.4f}")
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    After 5,000 steps the training loss lands between about 2.55 and 2.85, depending on the
    draws, and the validation loss 0.15 to 0.4 above it. That gap is not overfitting (11,897
    parameters, 182,778 training rows): the validation and test names are the file's rarer,
    alphabetical tail, which the popular names at the top teach less well. Shuffle the names
    before splitting, as the lecture's video does with `random.seed(42)`, and the same run gives
    train and validation losses within a few hundredths of each other.

    The same recipe from the command line (lecture init, file order, constant rate 0.1,
    5,000 steps of 32; its own random draws, so its numbers differ a little):

    ```
    npmlp train --split-seed none --steps 5000 --lr 0.1 --decay-at 1 --batch-size 32
    ```

    `--decay-at 1` puts the rate drop at the very end, so it never happens; the model defaults
    to this one (`--model mlp`, `--init lecture`, T 3, E 10, H 200), and `--dtype float64`
    matches this notebook's precision.
    """)
    return


@app.cell
def _(C, itos, plt):
    # visualise the first two dimensions of each character's embedding
    plt.figure(figsize=(8, 8))
    plt.scatter(C[:, 0], C[:, 1], s=200)
    for _i in range(C.shape[0]):
        plt.text(C[_i, 0], C[_i, 1], itos[_i], ha="center", va="center", color="white")
    plt.grid(True)
    plt.gca()
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    Only 2 of the 10 embedding dimensions are drawn here, so the picture is a shadow of the
    table, after a short run. In the lecture's run with 2-dimensional embeddings, trained much
    longer, the vowels gathered in one place and `q` and `'.'` sat apart from the rest.

    ## Sampling

    Start from a context of `'.'`s, compute the softmax over the next character, draw one,
    slide the context, and stop at the first `'.'`.
    """)
    return


@app.cell
def _(C, W1, W2, b1, b2, block_size, itos, np, show, vocab_size):
    def sample_name(gen):
        out = []
        context = [0] * block_size
        while True:
            emb = C[np.array([context])]                         # (1, T, E)
            h = np.tanh(emb.reshape(1, -1) @ W1 + b1)            # (1, H)
            logits = h @ W2 + b2                                 # (1, V)
            counts = np.exp(logits - logits.max())              # (1, V)
            probs = counts / counts.sum()                        # (1, V)
            ix = int(gen.choice(vocab_size, p=probs[0]))
            context = context[1:] + [ix]
            out.append(ix)
            if ix == 0:
                break
        return "".join(itos[i] for i in out)

    _gen = np.random.default_rng(2147483647 + 10)                # the lecture samples with seed + 10
    samples = [sample_name(_gen) for _ in range(20)]
    show(" ".join(samples), "\n".join(samples))             # the terminal: one name a line
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Checking the hand-written gradients

    After the loop, `dlogits`, `dW2`, ..., `dC` still hold the gradients of the last minibatch
    (`Xb`, `Yb`), and `params_last` the parameters they were computed at. Two checks:

    1. **Against an independent reference**, the lecture's `cmp`: is each gradient bitwise equal
       (`exact`), equal up to round-off (`approximate`: the largest difference at most 1e-10 of
       the largest entry), and the largest difference. With torch installed the reference is
       the lecture's forward in torch, float64, and `loss.backward()`. torch adds up its sums in
       another order, so `approximate`, not `exact`, is the expected verdict. Without torch, it
       is central differences: nudge one number of a parameter by ±1e-5, rerun the forward, and
       divide the change in the loss by 2e-5, at 10 random places of each parameter (tolerance
       1e-6 of the largest entry: the differences themselves are only that good).
    2. **Against the package**: `npmlp.MLP(params).backward(cache)` on the same parameters and
       minibatch, the backward that `npmlp train` runs.
    """)
    return


@app.cell
def _(np):
    def cmp(name, mine, ref, tol):
        """The lecture's cmp: bitwise equal? equal within tol * max|mine|? largest difference?
        Entries where `ref` is NaN (no finite difference taken there) are skipped."""
        known = ~np.isnan(ref)
        m, r = mine[known], ref[known]
        maxdiff = float(np.abs(m - r).max())
        scale = float(np.abs(mine).max())                        # the gradient's largest entry
        return {"name": name, "exact": bool(np.array_equal(m, r)),
                "approximate": maxdiff <= tol * scale, "maxdiff": maxdiff}   # a row of cmp_table

    return (cmp,)


@app.cell
def _(dC, dW1, dW2, db1, db2, demb, dembcat, dh, dhpreact, dlogits):
    # the loop's gradients of its last step, in the order it computed them
    mine = {"logits": dlogits, "W2": dW2, "b2": db2, "h": dh, "hpreact": dhpreact,
            "W1": dW1, "b1": db1, "embcat": dembcat, "emb": demb, "C": dC}
    return (mine,)


@app.cell
def _(F, MLP, Xb, Yb, np, params_last, torch):
    def torch_gradients(params, Xb, Yb):
        """The lecture's forward in torch (float64); autograd's gradient of every array."""
        P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        emb = P["C"][torch.as_tensor(Xb)]
        embcat = emb.view(len(Xb), -1)
        hpreact = embcat @ P["W1"] + P["b1"]
        h = torch.tanh(hpreact)
        logits = h @ P["W2"] + P["b2"]
        loss = F.cross_entropy(logits, torch.as_tensor(Yb))
        acts = {"logits": logits, "h": h, "hpreact": hpreact, "embcat": embcat, "emb": emb}
        for t in acts.values():
            t.retain_grad()                                      # keep the gradients of intermediates too
        loss.backward()
        return {k: t.grad.numpy() for k, t in {**acts, **P}.items()}

    def fd_gradients(params, Xb, Yb, places=10, eps=1e-5):
        """Central differences of the loss (npmlp's forward) at `places` random entries of each
        parameter; NaN elsewhere."""
        rng = np.random.default_rng(0)
        out = {}
        for name, p in params.items():
            ref = np.full(p.shape, np.nan)
            for j in rng.choice(p.size, min(places, p.size), replace=False):
                nudged = {k: v.copy() for k, v in params.items()}
                nudged[name].flat[j] += eps
                up = MLP(nudged).forward(Xb, Yb)[0]
                nudged[name].flat[j] -= 2 * eps
                down = MLP(nudged).forward(Xb, Yb)[0]
                ref.flat[j] = (up - down) / (2 * eps)
            out[name] = ref
        return out

    if torch is not None:
        ref_kind, ref_tol = "torch autograd (float64)", 1e-10
        ref = torch_gradients(params_last, Xb, Yb)
    else:
        ref_kind, ref_tol = "central differences (torch is not installed)", 1e-6
        ref = fd_gradients(params_last, Xb, Yb)
    return ref, ref_kind, ref_tol


@app.cell
def _(cmp, cmp_table, mine, mo, ref, ref_kind, ref_tol):
    ref_rows = [cmp(name, d, ref[name], ref_tol) for name, d in mine.items() if name in ref]
    _bad = [r["name"] for r in ref_rows if not r["approximate"]]
    mo.vstack([cmp_table(f"the loop's gradients against {ref_kind}", ref_rows),
               mo.callout(mo.md(f"{len(ref_rows)} gradients against {ref_kind}: "
                                + ("all agree" if not _bad else "FAIL " + ", ".join(_bad))),
                          kind="success" if not _bad else "danger")])
    return


@app.cell
def _(MLP, Xb, Yb, cmp, cmp_table, loss, mine, mo, params_last):
    model = MLP(params_last)
    lib_loss, _cache = model.forward(Xb, Yb)
    lib_grads, lib_dacts = model.backward(_cache)                # the backward `npmlp train` runs
    lib = {**lib_dacts, **lib_grads}
    lib_rows = [cmp(name, d, lib[name], 1e-12) for name, d in mine.items()]
    _bad = [r["name"] for r in lib_rows if not r["approximate"]]
    mo.vstack([cmp_table(f"the loop's gradients against npmlp's MLP.backward (loss {loss:.12f} vs {lib_loss:.12f})",
                         lib_rows),
               mo.callout(mo.md(f"{len(lib_rows)} gradients against `MLP.backward`: "
                                + ("all agree" if not _bad else "FAIL " + ", ".join(_bad))),
                          kind="success" if not _bad else "danger")])
    return


if __name__ == "__main__":
    app.run()
