"""Tables, files and figures of a reproduction run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .evaluate import METHODS, Measurement
from .published import PUBLISHED

TOLERANCE = 0.02  # |nCCS - published| allowed per cell for the authors' weighting

Summary = dict[tuple[int, int, str], tuple[float, float]]


def cells_of(summary: Summary) -> list[tuple[int, int]]:
    return sorted({(n, k) for n, k, _ in summary})


def table(summary: Summary, methods: list[str]) -> str:
    """One line per cell: nCCS and ms per batch of every method, and the published nCCS."""
    head = f"{'n':>6} {'k':>5} " + " ".join(f"{m + ' nCCS':>17} {'ms':>8}" for m in methods)
    head += f" {'published SH':>12} {'published it.':>13}"
    lines = [head]
    for n, k in cells_of(summary):
        row = f"{n:>6} {k:>5} "
        for m in methods:
            nccs, seconds = summary.get((n, k, m), (math.nan, math.nan))
            row += f" {nccs:>17.4f} {seconds * 1e3:>8.2f}"
        row += f" {_published('sh-authors', 'nccs', n, k):>12.4f} {_published('iterative', 'nccs', n, k):>13.4f}"
        lines.append(row)
    return "\n".join(lines)


def _published(method: str, metric: str, n: int, k: int) -> float:
    return PUBLISHED.get(method, {}).get(metric, {}).get((n, k), math.nan)


def comparison(summary: Summary) -> tuple[str, bool]:
    """How our numbers compare with the published ones, cell by cell; and whether the check passed."""
    lines = []
    ok = True
    cells = [c for c in cells_of(summary) if not math.isnan(_published("sh-authors", "nccs", *c))]
    if any((n, k, "sh-authors") in summary for n, k in cells):
        diffs = {(n, k): summary[(n, k, "sh-authors")][0] - _published("sh-authors", "nccs", n, k) for n, k in cells}
        worst = max(diffs, key=lambda c: abs(diffs[c]))
        ok = all(abs(d) <= TOLERANCE for d in diffs.values())
        lines.append(
            f"Authors' weighting (power, base 20) vs their published nCCS: max |difference| "
            f"{abs(diffs[worst]):.4f} at n={worst[0]}, k={worst[1]} over {len(diffs)} cells; "
            + (f"all within {TOLERANCE}: reproduced." if ok else f"NOT all within {TOLERANCE}:")
        )
        for (n, k), d in diffs.items():
            if abs(d) > TOLERANCE:
                lines.append(f"  n={n} k={k}: difference {d:+.4f}")
    if any((n, k, "sh-default") in summary for n, k in cells):
        lines.append("Default settings (softmax weighting) vs the authors' published nCCS, cell by cell:")
        better = worse = 0
        for n, k in cells:
            ours = summary[(n, k, "sh-default")][0]
            theirs = _published("sh-authors", "nccs", n, k)
            verdict = "better" if ours > theirs + TOLERANCE else "worse" if ours < theirs - TOLERANCE else "same"
            better += verdict == "better"
            worse += verdict == "worse"
            lines.append(f"  n={n:>5} k={k:>4}: {ours:.4f} vs {theirs:.4f} ({ours - theirs:+.4f}, {verdict})")
        same = len(cells) - better - worse
        lines.append(f"  better on {better}, within {TOLERANCE} on {same}, worse on {worse} of {len(cells)} cells.")
    if any((n, k, "iterative") in summary for n, k in cells):
        diffs = [summary[(n, k, "iterative")][0] - _published("iterative", "nccs", n, k) for n, k in cells]
        lines.append(
            f"Iterative baseline vs its published nCCS: mean difference {sum(diffs) / len(diffs):+.4f}, "
            f"max |difference| {max(map(abs, diffs)):.4f}."
        )
    return "\n".join(lines), ok


def write_csv(path: Path, measurements: list[Measurement]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Measurement)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(m) for m in measurements)


def write_json(path: Path, environment: dict[str, Any]) -> None:
    path.write_text(json.dumps(environment, indent=2, sort_keys=True) + "\n")


def figures(summary: Summary, out: Path, methods: list[str], device: str) -> list[Path]:
    """Figure 1 (seconds per batch vs n) and Figure 2 (nCCS vs n), one panel per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_of(summary)
    ks = sorted({k for _, k in cells})
    cols = min(4, len(ks))
    rows = math.ceil(len(ks) / cols)
    paths = []
    for metric, index, fname, ylabel, logy in (
        ("seconds", 1, "figure1_time.png", "seconds per batch of 16", True),
        ("nccs", 0, "figure2_nccs.png", "nCCS vs exact top-k", False),
    ):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.6), squeeze=False, sharey=not logy)
        for ax, k in zip(axes.flat, ks, strict=False):
            ns = [n for n, kk in cells if kk == k]
            for i, m in enumerate(methods):
                ax.plot(ns, [summary[(n, k, m)][index] for n in ns], "o-", ms=3, color=f"C{i}", label=m)
                published = PUBLISHED.get(m, {}).get(metric)
                if published:
                    pn = [n for n in sorted({n for n, kk in published if kk == k}) if n > k]
                    ax.plot(pn, [published[(n, k)] for n in pn], "--", color=f"C{i}", lw=1, label=f"{m} (published)")
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            ax.set_title(f"k = {k}", fontsize=9)
            ax.set_xlabel("n", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.flat[len(ks) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel, fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
        title = "Figure 1: time" if metric == "seconds" else "Figure 2: approximation quality"
        fig.suptitle(f"{title} (ours on {device}; dashed: the authors' published means, A100)", fontsize=9)
        fig.tight_layout(rect=(0, 0.08 + 0.02 * len(methods) / 3, 1, 0.95))
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


METHOD_LABELS = {name: label for name, (label, _) in METHODS.items()}
