"""Two benchmark reports side by side: npmlp's step before and after a change, per cell, next to
the fastest other library of the same run, and which cells changed hands.

    python -m benchmarks.compare BEFORE.json AFTER.json [--label-before TEXT --label-after TEXT]

BEFORE and AFTER are `python -m benchmarks.bench` JSON reports of the same cells (lecture model;
any peers). It prints a Markdown table, one row per (thread setting, H, B): npmlp's median
us/step in each report and their ratio, the fastest other library's median in each report, and
the winner of each report (npmlp or that library, with its lead). A cell npmlp lost before and
wins after "flipped"; the lines under the table list them and the cells still lost.
"""
from __future__ import annotations

import argparse
import json
import sys

from .report import _us as fmt_us


def cells(report):
    """{(threads label, H, B): {peer: median us}} of the lecture model's configurations."""
    out = {}
    for run in report["runs"]:
        for c in run["configs"]:
            if c.get("model", "mlp") == "mlp":
                out[(run["label"], c["H"], c["B"])] = {p: v["median_us"] for p, v in c["peers"].items()
                                                       if v.get("median_us") is not None}
    return out


def best_other(peers):
    others = {p: us for p, us in peers.items() if not p.startswith("npmlp")}
    if not others:
        return None, None
    p = min(others, key=others.get)
    return p, others[p]


def winner(peers):
    p, us = best_other(peers)
    mine = peers["npmlp"]
    if p is None:
        return "npmlp", float("nan")
    return ("npmlp", us / mine) if mine <= us else (p, mine / us)


def table(before, after, label_before="before", label_after="after"):
    b, a = cells(before), cells(after)
    keys = [k for k in a if k in b and "npmlp" in a[k] and "npmlp" in b[k]]
    lines = [f"| setting | H | B | npmlp {label_before} | npmlp {label_after} | × | best other {label_before} "
             f"| best other {label_after} | fastest {label_before} | fastest {label_after} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    flipped, lost, kept, dropped = [], [], [], []
    for k in keys:
        pb, pa = b[k], a[k]
        ob, oa = best_other(pb), best_other(pa)
        wb, lb = winner(pb)
        wa, la = winner(pa)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {fmt_us(pb['npmlp'])} | {fmt_us(pa['npmlp'])} | "
                     f"{pb['npmlp'] / pa['npmlp']:.2f} | "
                     f"{fmt_us(ob[1]) + ' ' + ob[0] if ob[0] else '–'} | "
                     f"{fmt_us(oa[1]) + ' ' + oa[0] if oa[0] else '–'} | "
                     f"{wb} ({lb:.2f}×) | {wa} ({la:.2f}×) |")
        name = f"{k[0]}, H={k[1]}, B={k[2]}"
        if wb != "npmlp" and wa == "npmlp":
            flipped.append(name)
        elif wa != "npmlp":
            (lost if wb != "npmlp" else dropped).append(f"{name} ({wa} {la:.2f}× faster)")
        else:
            kept.append(name)
    lines += ["",
              f"Lost {label_before} and won {label_after} ({len(flipped)}): " + ("; ".join(flipped) or "none") + ".",
              f"Lost in both ({len(lost)}): " + ("; ".join(lost) or "none") + ".",
              f"Won {label_before}, lost {label_after} ({len(dropped)}): " + ("; ".join(dropped) or "none") + ".",
              f"npmlp fastest {label_after} in {len(flipped) + len(kept)} of {len(keys)} cells."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--label-before", default="before")
    p.add_argument("--label-after", default="after")
    a = p.parse_args(argv)
    with open(a.before) as f, open(a.after) as g:
        print(table(json.load(f), json.load(g), a.label_before, a.label_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
