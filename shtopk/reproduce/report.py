"""Tables, files and figures of a reproduction run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .evaluate import METHODS, Measurement
from .published import PUBLISHED

TOLERANCE = 0.02  # |nCCS - published| allowed per cell for the authors' weighting

#: (n, k, method) -> (nCCS, seconds, ...): a CellSummary of evaluate.summarize, or any tuple that starts so.
Summary = Mapping[tuple[int, int, str], tuple[float, ...]]


def cells_of(summary: Summary) -> list[tuple[int, int]]:
    return sorted({(n, k) for n, k, _ in summary})


#: Short column names of the methods in the table (the table fits 100 columns).
SHORT = {"sh-default": "sh-def", "sh-authors": "sh-auth", "iterative": "iter", "hard": "hard"}
#: The methods whose published nCCS the table shows.
PUBLISHED_COLUMNS = ("sh-authors", "iterative")
#: A cell whose slowest batch took this many times its median is reported as noisy.
NOISY = 3.0


def table(summary: Summary, methods: list[str]) -> str:
    """One line per cell: every method's nCCS, its ms per batch, and the published nCCS; then noisy timings.

    At most 100 characters wide for the four methods. Summary values are
    ``(nCCS, seconds, ...)``; with the min and max over batches (from
    :func:`~shtopk.reproduce.evaluate.summarize`) the table also names the
    cells whose timings spread widely.
    """
    w = 8  # one column: a space and 7 characters
    names = "".join(f"{SHORT.get(m, m)[:7]:>{w}}" for m in methods)
    published = "".join(f"{SHORT[m]:>{w}}" for m in PUBLISHED_COLUMNS)
    lines = [
        "nCCS: mean over batches, vs the exact top-k; ms: median per batch; published: the authors' nCCS",
        ", ".join(f"{SHORT.get(m, m)[:7]} = {m}" for m in methods if SHORT.get(m, m) != m),
        f"{'':11} {' nCCS ':-^{w * len(methods) - 1}} {' ms/batch ':-^{w * len(methods) - 1}}"
        f" {' published nCCS ':-^{w * len(PUBLISHED_COLUMNS) - 1}}",
        f"{'n':>6}{'k':>5}{names}{names}{published}",
    ]
    for n, k in cells_of(summary):
        cell = [summary.get((n, k, m), (math.nan, math.nan)) for m in methods]
        row = f"{n:>6}{k:>5}"
        row += "".join(f"{c[0]:>{w}.4f}" for c in cell)
        row += "".join(f"{_ms(c[1]):>{w}}" for c in cell)
        row += "".join(f"{_published(m, 'nccs', n, k):>{w}.4f}" for m in PUBLISHED_COLUMNS)
        lines.append(row)
    lines += _noisy_timings(summary)
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 1000 or math.isnan(ms) else f"{ms:.0f}"


def _noisy_timings(summary: Summary) -> list[str]:
    """Cells whose slowest batch took ``NOISY`` times the median or more (the median is what the table shows)."""
    noisy = sorted(
        ((s[5] / s[1], n, k, m, s) for (n, k, m), s in summary.items() if len(s) >= 6 and s[1] > 0),
        reverse=True,
    )
    noisy = [x for x in noisy if x[0] >= NOISY]
    if not noisy:
        return []
    lines = [f"noisy timings (slowest batch >= {NOISY:g}x the median) in {len(noisy)} of {len(summary)} cells:"]
    for ratio, n, k, m, s in noisy[:5]:
        lines.append(
            f"  n={n} k={k} {m}: median {_ms(s[1])} ms, min {_ms(s[4])}, max {_ms(s[5])} ({ratio:.0f}x the median)"
        )
    if len(noisy) > 5:
        lines.append(f"  ... and {len(noisy) - 5} more (every batch is in measurements.csv)")
    return lines


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
        gaps = [summary[(n, k, "iterative")][0] - _published("iterative", "nccs", n, k) for n, k in cells]
        lines.append(
            f"Iterative baseline vs its published nCCS: mean difference {sum(gaps) / len(gaps):+.4f}, "
            f"max |difference| {max(abs(g) for g in gaps):.4f}."
        )
    return "\n".join(lines), ok


def write_csv(path: Path, measurements: list[Measurement]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Measurement)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(m) for m in measurements)


def write_json(path: Path, environment: dict[str, Any]) -> None:
    path.write_text(json.dumps(environment, indent=2, sort_keys=True) + "\n")


#: The device of the authors' published times (the paper: "on the NVIDIA A100 GPU").
PUBLISHED_DEVICE = "NVIDIA A100"


def figures(summary: Summary, out: Path, methods: list[str], device: str) -> list[Path]:
    """Figure 1 (seconds per batch vs n) and Figure 2 (nCCS vs n), one panel per k.

    Every curve is labelled with the device it was measured on: ours (solid,
    with the min-max over batches shaded) on ``device``, the authors'
    published means (dashed) on an NVIDIA A100.
    """
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
        lo, hi = (4, 5) if metric == "seconds" else (2, 3)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 1.0), squeeze=False, sharey=not logy)
        for ax, k in zip(axes.flat, ks, strict=False):
            ns = [n for n, kk in cells if kk == k]
            for i, m in enumerate(methods):
                stats = [summary[(n, k, m)] for n in ns]
                ax.plot(ns, [s[index] for s in stats], "o-", ms=3, color=f"C{i}", label=f"{m}: ours, {device}")
                if all(len(s) > hi for s in stats):
                    ax.fill_between(ns, [s[lo] for s in stats], [s[hi] for s in stats], color=f"C{i}", alpha=0.2, lw=0)
                published = PUBLISHED.get(m, {}).get(metric)
                if published:
                    pn = [n for n in sorted({n for n, kk in published if kk == k}) if n > k]
                    label = f"{m}: published, {PUBLISHED_DEVICE}"
                    ax.plot(pn, [published[(n, k)] for n in pn], "s--", ms=2, color=f"C{i}", lw=1, label=label)
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
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        what = "median" if metric == "seconds" else "mean"
        title = "Figure 1: time" if metric == "seconds" else "Figure 2: approximation quality"
        fig.suptitle(
            f"{title}. Solid: ours on {device} ({what}; shaded: min-max over batches). "
            f"Dashed: the authors' published means on an {PUBLISHED_DEVICE}.",
            fontsize=8,
        )
        legend_rows = math.ceil(len(labels) / 2)
        fig.tight_layout(rect=(0, (0.035 * legend_rows + 0.01) * 4 / (3.2 * rows + 1.0), 1, 0.95))
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


METHOD_LABELS = {name: label for name, (label, _) in METHODS.items()}
