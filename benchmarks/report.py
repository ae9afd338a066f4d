"""The benchmark's Markdown tables and its plot, from the JSON report bench.py writes."""
from __future__ import annotations

import statistics

from .opprofile import profile_markdown
from .peers import PEERS

SHORT = {"npmlp": "npmlp", "npmlp_reference": "npmlp reference", "torch_eager": "torch eager",
         "torch_manual": "torch manual", "torch_compile": "torch.compile", "jax": "JAX jit"}

# A cell measured while the machine was busy: the peers alternate, so on a quiet machine a cell's
# repeats agree and a row's peers stay within a few times of each other (at most ~6x in every
# report so far); another program holding a core shows up as repeats far apart, or as one peer
# (torch's second thread waiting for the core) hundreds of times slower than the rest of its row.
BUSY_SPREAD = 3.0          # max/min of a cell's repeats above this
BUSY_FACTOR = 10.0         # a cell's median above this times the median of its row's other peers
BUSY = "†"
BUSY_LEGEND = (f"{BUSY}: measured while the machine was busy (the cell's repeats spread more than "
               f"{BUSY_SPREAD:g}× from min to max, or its median is more than {BUSY_FACTOR:g}× the median of its "
               f"row's other peers); it is never bolded as the fastest, and a × against a {BUSY} torch eager cell "
               "is not a speed-up.")


def _us(x):
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs" if x >= 100 else f"{x:.1f} µs"


def _range(med, lo, hi):
    """'4.42 ms [4.40–4.51]': the median with its unit, min–max in the same unit."""
    scale, unit, nd = (1000, "ms", 2) if med >= 1000 else (1, "µs", 0 if med >= 100 else 1)
    return f"{med / scale:.{nd}f} {unit} [{lo / scale:.{nd}f}–{hi / scale:.{nd}f}]"


def peers_in(report, key="configs"):
    """The peers that ran in the report's `key` cells ("configs": the lecture's MLP; "bn_configs",
    "deep_configs", "wavenet_configs": the sections'), in PEERS order."""
    seen = {p for run in report["runs"] for c in run.get(key, []) for p in c["peers"]}
    return [p for p in PEERS if p in seen]


def busy(c, p):
    """Whether peer p's cell of the row (configuration) c was measured while the machine was busy:
    its repeats spread by more than BUSY_SPREAD, or its median is more than BUSY_FACTOR times the
    median of the row's other peers."""
    r = c["peers"][p]
    if r["min_us"] > 0 and r["max_us"] / r["min_us"] > BUSY_SPREAD:
        return True
    others = [q["median_us"] for k, q in c["peers"].items() if k != p]
    return bool(others) and r["median_us"] > BUSY_FACTOR * statistics.median(others)


def fastest(c):
    """The row's fastest peer, or None when that cell is busy (a busy cell is never called the fastest)."""
    P = c["peers"]
    best = min(P, key=lambda p: P[p]["median_us"])
    return None if busy(c, best) else best


def any_busy(report, key="configs"):
    return any(busy(c, p) for run in report["runs"] for c in run.get(key, []) for p in c["peers"])


def losses(report, key="configs"):
    """[(setting, H, B, npmlp us, best peer, its us, marker)] where another library's median beats
    npmlp's (npmlp's own reference loop is not another library: see tricks()); the marker is BUSY
    when either of the two cells was measured on a busy machine, else ""."""
    out = []
    for run in report["runs"]:
        for c in run.get(key, []):
            P = c["peers"]
            best = min((p for p in P if p not in ("npmlp", "npmlp_reference")), key=lambda p: P[p]["median_us"],
                       default=None)
            if best and P[best]["median_us"] < P["npmlp"]["median_us"]:
                mark = BUSY if busy(c, "npmlp") or busy(c, best) else ""
                out.append((run["label"], c["H"], c["B"], P["npmlp"]["median_us"], best, P[best]["median_us"], mark))
    return out


def tricks(report):
    """[(setting, H, B, reference us / fast us)] for every cell where both npmlp engines ran."""
    return [(run["label"], c["H"], c["B"], c["peers"]["npmlp"]["speedup_vs_reference"])
            for run in report["runs"] for c in run["configs"] if "speedup_vs_reference" in c["peers"]["npmlp"]]


def _ratio(c, p, digits):
    """' ×2.41' (p's speed-up over torch eager in row c), BUSY after it when torch eager's cell is
    busy; '' for torch eager itself or without it."""
    ratio = c["peers"][p].get("ratio_vs_torch_eager")
    if ratio is None or p == "torch_eager":
        return ""
    return f" ×{ratio:.{digits}f}" + (BUSY if "torch_eager" in c["peers"] and busy(c, "torch_eager") else "")


def step_cells(c, peers):
    """One table row's cells: each peer's median [min–max] ×ratio to torch eager (bold: the
    fastest, unless busy; BUSY: measured on a busy machine), then, when the reference loop is among
    the peers, the fast engine's speed-up over it."""
    cells = []
    best = fastest(c)
    for p in peers:
        r = c["peers"].get(p)
        if r is None:
            cells.append("–")
            continue
        txt = _range(r["median_us"], r["min_us"], r["max_us"]) + (BUSY if busy(c, p) else "") + _ratio(c, p, 2)
        cells.append(f"**{txt}**" if p == best else txt)
    n = c["peers"]["npmlp"]
    if "npmlp_reference" in peers:
        cells.append(f"×{n['speedup_vs_reference']:.2f}" if "speedup_vs_reference" in n else "–")
    return cells


def step_table(run, peers):
    ref = "npmlp_reference" in peers
    head = ("| H | B | " + " | ".join(SHORT[p] for p in peers) + (" | fast vs reference" if ref else "")
            + " | npmlp GFLOP/s (of peak) |")
    lines = [head, "|---:|---:|" + "---:|" * (len(peers) + ref) + "---:|"]
    for c in run["configs"]:
        n = c["peers"]["npmlp"]
        lines.append(f"| {c['H']} | {c['B']} | " + " | ".join(step_cells(c, peers)) +
                     f" | {n['gflops']:.1f} ({100 * n['peak_frac']:.0f} %) |")
    if any(busy(c, p) for c in run["configs"] for p in c["peers"]):
        lines += ["", BUSY_LEGEND]
    return "\n".join(lines)


# each section's title, its model in a sentence, and what each of its peers runs
LAYERS_WHAT = {"npmlp": ("the fast engine's StackEngine (npmlp/fast/stack.py: the layers fused block by block, "
                         "the whole batch at once, so no helper processes)"),
               "npmlp_reference": "`train.sgd` on the model: its layer objects' forward and backward, one by one",
               "torch_eager": ("the lectures' loop with autograd over the package's torch mirror of the network "
                               "(`npmlp.torch_mirrors`: `deep_forward`, `wavenet_forward`) from the npmlp model's "
                               "initial values, `loss.backward()`, `p.data += -lr * p.grad`, the running statistics "
                               "updated by the mirror each step"),
               "torch_compile": ("torch eager's step (the same mirror) compiled whole, its gradient by "
                                 "`torch.func.grad_and_value`, returning the new parameters and running statistics")}
SECTION_TEXT = {
    "bn": ("bn model (makemore part 4)",
           "Part 4's network: the lecture's MLP with a BatchNorm between the first linear layer and tanh "
           "(npmlp.bn.BNMLP: C, W1, b1, bngain, bnbias, W2, b2; the batch's mean and Bessel-corrected "
           "variance, eps 1e-5)",
           {"npmlp": "the fast engine's BNEngine (the whole batch at once, never chunked, so no helper processes)",
            "npmlp_reference": "`train.sgd` on BNMLP (the atom-by-atom backward of bn.py)",
            "torch_eager": ("part 4's loop (`hprebn.mean`, `hprebn.var(unbiased=True)`, `(bnvar + 1e-5)**-0.5`, "
                            "gain and bias, tanh, `F.cross_entropy`, `loss.backward()`, `p.data += -lr * p.grad`)"),
            "torch_compile": ("torch eager's step compiled whole, its gradient by `torch.func.grad_and_value`, "
                              "returning new parameters")}),
    "deep": ("deep model (makemore part 3)",
             "Part 3's network: the context's embeddings flattened (block 3, n_embd 10), five hidden layers of "
             "Linear (no bias) -> BatchNorm1d -> tanh, H wide, then Linear -> BatchNorm1d to the vocab "
             "(npmlp.deep.Deep; the batch's mean and biased variance, as torch.nn.BatchNorm1d, eps 1e-5, and "
             "running statistics with momentum 0.1 updated every step)",
             LAYERS_WHAT),
    "wavenet": ("wavenet model (makemore part 5)",
                "Part 5's network: block 8, n_embd 24, three levels of FlattenConsecutive(2) -> Linear (no bias) "
                "-> BatchNorm1d over every axis but the channels (the unbiased variance) -> tanh, H wide, then "
                "Linear to the vocab (npmlp.wavenet.Wavenet; running statistics with momentum 0.1 updated every "
                "step)",
                LAYERS_WHAT)}


def section_markdown(report, kind):
    """The `kind` model's section (bn, deep, wavenet): one small table, a row per (setting, H, B);
    [] when it did not run."""
    key = f"{kind}_configs"
    peers = peers_in(report, key)
    if not peers:
        return []
    title, model, what = SECTION_TEXT[kind]
    ref = "npmlp_reference" in peers
    asked = report.get("settings", {}).get("peers", [])
    without = [SHORT[p] for p in asked if p in PEERS and p not in peers
               and not any(p in run.get("skipped", {}) for run in report["runs"])]
    L = [f"## {title}", "",
         (f"{model}, float32, every peer from the same `init` parameters and minibatch rows, its first three "
          "losses matched to npmlp's (rtol 1e-4) before timing; measured as the tables above. "
          + "; ".join(f"{SHORT[p]}: {what[p]}" for p in peers) + "."
          + (f" No {kind} version of: {', '.join(without)}." if without else "")), "",
         "| setting | H | B | " + " | ".join(SHORT[p] for p in peers) + (" | fast vs reference" if ref else "") + " |",
         "|---|---:|---:|" + "---:|" * (len(peers) + ref)]
    for run in report["runs"]:
        for c in run.get(key, []):
            L.append(f"| {run['label']} | {c['H']} | {c['B']} | " + " | ".join(step_cells(c, peers)) + " |")
    L.append("")
    if any_busy(report, key):
        L += [BUSY_LEGEND, ""]
    comp = [(run["label"], c["H"], c["B"], c["peers"]["torch_compile"]["compile_s"]) for run in report["runs"]
            for c in run.get(key, []) if "torch_compile" in c["peers"]]
    if comp:
        L += ["Compile time of the first step (not in the table): " +
              "; ".join(f"{s}, H={h} B={b}: {t:.1f} s" for s, h, b, t in comp) + ".", ""]
    lost = losses(report, key)
    cells = sum(len(r.get(key, [])) for r in report["runs"])
    if any(p not in ("npmlp", "npmlp_reference") for p in peers):
        L.append(f"npmlp has the fastest median of the libraries in {cells - len(lost)} of {cells} cells"
                 + (": it loses at " + "; ".join(f"{s}, H={h}, B={b} ({SHORT[p]} {_us(t)}, npmlp {_us(n)}, "
                                                 f"{n / t:.2f}× slower){mark}" for s, h, b, n, p, t, mark in lost)
                    if lost else "") + ".")
        L.append("")
    return L


def markdown(report, png_name="bench.png"):
    m = report["machine"]
    v = m["versions"]
    peers = peers_in(report)
    L = ["# npmlp CPU benchmark", "",
         (f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gb']} GB RAM, {m['os']}; Python {v['python']}, "
          f"NumPy {v['numpy']}, torch {v['torch']}, JAX {v.get('jax')} (jaxlib {v.get('jaxlib')}). "
          f"Run {report['started']} – {report['finished']}."), "",
         f"Command: `{report['command']}`", "",
         ("Each cell: median time per training step (gather the minibatch, forward, backward, SGD update, "
          "loss to a Python float) over the timed repeats, [min–max], and ×: speed-up over torch eager "
          "(the lecture's loop). npmlp is the fast engine as `npmlp train` runs it (npmlp/fast/engine.py, with "
          "helper processes where it would use them); npmlp reference is the readable lecture loop "
          "(`npmlp train --engine reference`), and \"fast vs reference\" is what the fast engine's tricks buy. "
          f"Bold: the fastest peer of the row, unless its cell is marked {BUSY} (measured while the machine was "
          "busy: a line under such a table says how that is told). Every peer started from the same "
          "parameters, trained on the same minibatch indices, and matched npmlp's first "
          "three losses (float32, rtol 1e-4) before timing. GFLOP/s counts the step's matmul FLOPs, "
          "6·B·H·(T·E + V) = 342·B·H here, against the measured sgemm peak of the same setting."), ""]
    for run in report["runs"]:
        tr = run["thread_report"]
        blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('num_threads')} thread(s)"
                         + (f" ({b['architecture']})" if b.get("architecture") else "") for b in tr["numpy_blas"])
        L += [f"## Training step, {run['label']}", "",
              (f"CPUs {tr['affinity']}; NumPy BLAS: {blas}; torch threads: {tr.get('torch_threads', '–')}; "
               f"OMP_NUM_THREADS={tr['env'].get('OMP_NUM_THREADS')}, "
               f"XLA_FLAGS={tr['env'].get('XLA_FLAGS') or '(default)'}. "
               f"sgemm peak {run['sgemm_peak_gflops']:.0f} GFLOP/s. Load average before/after "
               f"{run['load_before'][0]:.2f}/{run['load_after'][0]:.2f} (the machine is shared)."), ""]
        for p, why in run.get("skipped", {}).items():
            L.append(f"- {SHORT[p]}: skipped: {why}")
        L += [step_table(run, peers), ""]
        comp = [(c["H"], c["B"], p, c["peers"][p]["compile_s"]) for c in run["configs"]
                for p in ("torch_compile", "jax") if p in c["peers"]]
        if comp:
            L.append("Compile time of the first step (not in the table): " +
                     "; ".join(f"{SHORT[p]} H={h} B={b}: {s:.1f} s" for h, b, p, s in comp) + ".")
            L.append("")
        for e in run.get("eval", []):
            times = ", ".join(f"{SHORT[k]} {r['median']:.1f} ms [{r['min']:.1f}–{r['max']:.1f}]"
                              for k, r in e["ms"].items())
            L.append(f"Full-split evaluation, forward only, {e['rows']:,} rows, H={e['H']} (losses agree to "
                     f"{e['max_rel_diff']:.1e}): {times}.")
            L.append("")
    lost = losses(report)
    cells = sum(len(r["configs"]) for r in report["runs"])
    others = [p for p in peers if p not in ("npmlp", "npmlp_reference")]
    L += ["## Where npmlp loses", ""]
    if not others:
        L.append("No other library ran: nothing to lose against.")
    elif lost:
        L.append(f"npmlp has the fastest median of the libraries in {cells - len(lost)} of {cells} cells. "
                 f"It loses at:")
        L += [f"- {s}, H={h}, B={b}: npmlp {_us(n)}, {SHORT[p]} {_us(t)} ({n / t:.2f}× slower){mark}"
              for s, h, b, n, p, t, mark in lost]
    else:
        L.append(f"Nowhere in this run: npmlp has the fastest median of the libraries in all {cells} cells.")
    L.append("")
    sped = tricks(report)
    if sped:
        slower = [f"{s}, H={h}, B={b} (×{x:.2f})" for s, h, b, x in sped if x < 1]
        L += ["## What the fast engine's tricks buy", "",
              "The fast engine's step against the reference loop's, median over median: "
              f"×{min(x for *_, x in sped):.2f}–×{max(x for *_, x in sped):.2f} over {len(sped)} cells"
              + (f"; the reference loop is faster at {', '.join(slower)}." if slower else "."), ""]
    for kind in SECTION_TEXT:
        L += section_markdown(report, kind)
    if report.get("e2e"):
        L += e2e_markdown(report["e2e"])
    profs = [(run["label"], p) for run in report["runs"] for p in run.get("profiles", [])]
    if profs:
        L += ["## Per-op profile of the npmlp fast step", ""]
        for label, p in profs:
            L += [f"### {label}", "", profile_markdown(p), ""]
    L += [f"![us per step against batch size]({png_name})", ""]
    return "\n".join(L)


def e2e_markdown(e2e):
    """The whole-process section: one row per run, and the per-pair ratio of the two programs."""
    first = e2e[0]
    L = [f"## End to end: whole processes ({first['steps']:,} steps at B={first.get('batch_size', 32)})", "",
         ("`npmlp train` (the fast engine) loads the data, trains, evaluates the three splits, samples 20 "
          "names and writes its checkpoint and figures; the lecture's torch loop as a program "
          "(`python -m benchmarks.torch_lecture`: same split, init and minibatches) loads the data, trains and "
          "evaluates the train and dev splits. Wall: the whole process, start-up included; training "
          "loop: each program's own timer around its steps. The programs alternate."), "",
         "| program | setting | wall | training loop | µs/step | peak RSS | dev loss |",
         "|---|---|---:|---:|---:|---:|---:|"]
    L += [f"| {e.get('program', 'npmlp train')} | {e['label']} | {e['wall_s']:.1f} s | {e['train_s']:.1f} s | "
          f"{e['us_per_step']:.1f} | "
          + (f"{e['peak_rss_mb']:.0f} MB" if e.get("peak_rss_mb") else "n/a (no GNU time)")
          + f" | {e['dev_loss']:.4f} |" for e in e2e]
    pairs = {}
    for e in e2e:
        pairs.setdefault((e["label"], e.get("repeat", 0)), {})[e.get("program", "npmlp train")] = e
    for label in dict.fromkeys(e["label"] for e in e2e):
        ratios = [p["torch lecture"]["wall_s"] / p["npmlp train"]["wall_s"] for (lab, _), p in pairs.items()
                  if lab == label and len(p) == 2]
        if ratios:
            L += ["", (f"{label}: the torch loop's wall time over `npmlp train`'s, pair by pair: median "
                       f"×{statistics.median(ratios):.2f} (×{min(ratios):.2f}–×{max(ratios):.2f}, "
                       f"{len(ratios)} pairs).")]
    return [*L, ""]


def plot(report, path):
    """us/step against batch size, log axes, one line per peer; one panel per (setting, H)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npmlp.app.files import atomic_open

    runs = report["runs"]
    Hs = sorted({c["H"] for r in runs for c in r["configs"]})
    fig, axes = plt.subplots(len(Hs), len(runs), figsize=(5.2 * len(runs), 4.0 * len(Hs)), squeeze=False,
                             sharex=True)
    styles = {"npmlp": ("k", "o", 2.2, "-"), "npmlp_reference": ("0.5", "o", 1.2, "--"),
              "torch_eager": ("tab:red", "s", 1.2, "-"), "torch_manual": ("tab:orange", "^", 1.2, "-"),
              "torch_compile": ("tab:purple", "v", 1.2, "-"), "jax": ("tab:blue", "D", 1.2, "-")}
    for j, run in enumerate(runs):
        for i, H in enumerate(Hs):
            ax = axes[i][j]
            cs = [c for c in run["configs"] if c["H"] == H]
            for p in peers_in(report):
                pts = [(c["B"], c["peers"][p]) for c in cs if p in c["peers"]]
                if not pts:
                    continue
                color, marker, lw, ls = styles[p]
                B = [b for b, _ in pts]
                med = [r["median_us"] for _, r in pts]
                err = [[r["median_us"] - r["min_us"] for _, r in pts], [r["max_us"] - r["median_us"] for _, r in pts]]
                ax.errorbar(B, med, yerr=err, color=color, marker=marker, lw=lw, ls=ls, ms=4, capsize=2,
                            label=SHORT[p])
            ax.set_xscale("log")
            ax.set_yscale("log")
            if len({c["B"] for c in cs}) == 1:         # one batch size: a log axis needs a width
                ax.set_xlim(cs[0]["B"] / 2, cs[0]["B"] * 2)
            ax.set_title(f"{run['label']}, H={H}")
            ax.grid(True, which="both", alpha=0.3)
            if i == len(Hs) - 1:
                ax.set_xlabel("batch size B")
            if j == 0:
                ax.set_ylabel("µs per training step")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("One SGD step of the lecture's MLP, float32 (lower is better)", fontsize=11)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def readme_table(report):
    """The compact table of the README: one row per (setting, H, B), medians and × vs torch eager."""
    peers = peers_in(report)
    L = ["| cores | H | B | " + " | ".join(SHORT[p] for p in peers) + " |",
         "|---|---:|---:|" + "---:|" * len(peers)]
    for run in report["runs"]:
        for c in run["configs"]:
            best = fastest(c)
            cells = []
            for p in peers:
                if p not in c["peers"]:
                    cells.append("–")
                    continue
                txt = _us(c["peers"][p]["median_us"]) + (BUSY if busy(c, p) else "") + _ratio(c, p, 1)
                cells.append(f"**{txt}**" if p == best else txt)
            L.append(f"| {run['label'].split()[0]} | {c['H']} | {c['B']} | " + " | ".join(cells) + " |")
    if any_busy(report):
        L += ["", BUSY_LEGEND]
    return "\n".join(L)
