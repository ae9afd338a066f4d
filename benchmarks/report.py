"""The benchmark's Markdown tables and its plot, from the JSON report bench.py writes."""
from __future__ import annotations

from .opprofile import profile_markdown
from .peers import PEERS

SHORT = {"npmlp": "npmlp", "torch_eager": "torch eager", "torch_manual": "torch manual",
         "torch_compile": "torch.compile", "jax": "JAX jit"}


def _us(x):
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs" if x >= 100 else f"{x:.1f} µs"


def _range(med, lo, hi):
    """'4.42 ms [4.40–4.51]': the median with its unit, min–max in the same unit."""
    scale, unit, nd = (1000, "ms", 2) if med >= 1000 else (1, "µs", 0 if med >= 100 else 1)
    return f"{med / scale:.{nd}f} {unit} [{lo / scale:.{nd}f}–{hi / scale:.{nd}f}]"


def peers_in(report):
    seen = {p for run in report["runs"] for c in run["configs"] for p in c["peers"]}
    return [p for p in PEERS if p in seen]


def losses(report):
    """[(setting, H, B, npmlp us, best peer, its us)] where another peer's median beats npmlp's."""
    out = []
    for run in report["runs"]:
        for c in run["configs"]:
            P = c["peers"]
            best = min((p for p in P if p != "npmlp"), key=lambda p: P[p]["median_us"], default=None)
            if best and P[best]["median_us"] < P["npmlp"]["median_us"]:
                out.append((run["label"], c["H"], c["B"], P["npmlp"]["median_us"], best, P[best]["median_us"]))
    return out


def step_table(run, peers):
    head = "| H | B | " + " | ".join(SHORT[p] for p in peers) + " | npmlp GFLOP/s (of peak) |"
    lines = [head, "|---:|---:|" + "---:|" * len(peers) + "---:|"]
    for c in run["configs"]:
        cells = []
        for p in peers:
            r = c["peers"].get(p)
            if r is None:
                cells.append("–")
                continue
            ratio = r.get("ratio_vs_torch_eager")
            best = min(c["peers"].values(), key=lambda x: x["median_us"]) is r
            txt = _range(r["median_us"], r["min_us"], r["max_us"])
            if ratio is not None and p != "torch_eager":
                txt += f" ×{ratio:.2f}"
            cells.append(f"**{txt}**" if best else txt)
        n = c["peers"]["npmlp"]
        lines.append(f"| {c['H']} | {c['B']} | " + " | ".join(cells) +
                     f" | {n['gflops']:.1f} ({100 * n['peak_frac']:.0f} %) |")
    return "\n".join(lines)


def markdown(report, png_name="bench.png"):
    m = report["machine"]
    v = m["versions"]
    peers = peers_in(report)
    L = ["# npmlp CPU benchmark", "",
         f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gb']} GB RAM, {m['os']}; Python {v['python']}, "
         f"NumPy {v['numpy']}, torch {v['torch']}, JAX {v.get('jax')} (jaxlib {v.get('jaxlib')}). "
         f"Run {report['started']} – {report['finished']}.", "",
         f"Command: `{report['command']}`", "",
         "Each cell: median time per training step (gather the minibatch, forward, backward, SGD update, "
         "loss to a Python float) over the timed repeats, [min–max], and ×: speed-up over torch eager "
         "(the lecture's loop). Bold: the fastest peer of the row. Every peer started from the same "
         "parameters, trained on the same minibatch indices, and matched npmlp's first "
         "three losses (float32, rtol 1e-4) before timing. GFLOP/s counts the step's matmul FLOPs, "
         "6·B·H·(T·E + V) = 342·B·H here, against the measured sgemm peak of the same setting.", ""]
    for run in report["runs"]:
        tr = run["thread_report"]
        blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('num_threads')} thread(s)"
                         + (f" ({b['architecture']})" if b.get("architecture") else "") for b in tr["numpy_blas"])
        L += [f"## Training step, {run['label']}", "",
              f"CPUs {tr['affinity']}; NumPy BLAS: {blas}; torch threads: {tr.get('torch_threads', '–')}; "
              f"OMP_NUM_THREADS={tr['env'].get('OMP_NUM_THREADS')}, "
              f"XLA_FLAGS={tr['env'].get('XLA_FLAGS') or '(default)'}. "
              f"sgemm peak {run['sgemm_peak_gflops']:.0f} GFLOP/s. Load average before/after "
              f"{run['load_before'][0]:.2f}/{run['load_after'][0]:.2f} (the machine is shared).", ""]
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
    L += ["## Where npmlp loses", ""]
    if lost:
        L.append(f"npmlp has the fastest median in {cells - len(lost)} of {cells} cells. It loses at:")
        L += [f"- {s}, H={h}, B={b}: npmlp {_us(n)}, {SHORT[p]} {_us(t)} ({n / t:.2f}× slower)"
              for s, h, b, n, p, t in lost]
    else:
        L.append(f"Nowhere in this run: npmlp has the fastest median in all {cells} cells.")
    L.append("")
    if report.get("e2e"):
        steps = report["e2e"][0]["steps"]
        L += [f"## End to end: `npmlp train` ({steps:,} steps; data loading, evaluation, sampling and "
              "figures included)", "",
              "| setting | wall | training loop | µs/step | peak RSS | dev loss |", "|---|---:|---:|---:|---:|---:|"]
        L += [f"| {e['label']} | {e['wall_s']:.1f} s | {e['train_s']:.1f} s | {e['us_per_step']:.1f} | "
              + (f"{e['peak_rss_mb']:.0f} MB" if e.get("peak_rss_mb") else "n/a (no GNU time)")
              + f" | {e['dev_loss']:.4f} |" for e in report["e2e"]]
        L.append("")
    profs = [(run["label"], p) for run in report["runs"] for p in run.get("profiles", [])]
    if profs:
        L += ["## Per-op profile of the npmlp step", ""]
        for label, p in profs:
            L += [f"### {label}", "", profile_markdown(p), ""]
    L += [f"![us per step against batch size]({png_name})", ""]
    return "\n".join(L)


def plot(report, path):
    """us/step against batch size, log axes, one line per peer; one panel per (setting, H)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npmlp.fileio import atomic_open

    runs = report["runs"]
    Hs = sorted({c["H"] for r in runs for c in r["configs"]})
    fig, axes = plt.subplots(len(Hs), len(runs), figsize=(5.2 * len(runs), 4.0 * len(Hs)), squeeze=False,
                             sharex=True)
    styles = {"npmlp": ("k", "o", 2.2), "torch_eager": ("tab:red", "s", 1.2),
              "torch_manual": ("tab:orange", "^", 1.2), "torch_compile": ("tab:purple", "v", 1.2),
              "jax": ("tab:blue", "D", 1.2)}
    for j, run in enumerate(runs):
        for i, H in enumerate(Hs):
            ax = axes[i][j]
            cs = [c for c in run["configs"] if c["H"] == H]
            for p in peers_in(report):
                pts = [(c["B"], c["peers"][p]) for c in cs if p in c["peers"]]
                if not pts:
                    continue
                color, marker, lw = styles[p]
                B = [b for b, _ in pts]
                med = [r["median_us"] for _, r in pts]
                err = [[r["median_us"] - r["min_us"] for _, r in pts], [r["max_us"] - r["median_us"] for _, r in pts]]
                ax.errorbar(B, med, yerr=err, color=color, marker=marker, lw=lw, ms=4, capsize=2, label=SHORT[p])
            ax.set_xscale("log")
            ax.set_yscale("log")
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
            P = c["peers"]
            best = min(P, key=lambda p: P[p]["median_us"])
            cells = []
            for p in peers:
                if p not in P:
                    cells.append("–")
                    continue
                r = P[p]
                txt = _us(r["median_us"]) + (f" ×{r['ratio_vs_torch_eager']:.1f}"
                                             if p != "torch_eager" and r.get("ratio_vs_torch_eager") else "")
                cells.append(f"**{txt}**" if p == best else txt)
            L.append(f"| {run['label'].split()[0]} | {c['H']} | {c['B']} | " + " | ".join(cells) + " |")
    return "\n".join(L)
