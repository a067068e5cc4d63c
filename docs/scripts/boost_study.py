"""Measure the quality/gradient trade-off of ``boost`` on the paper's setup.

For every cell of the paper's grid (n = 2^4..2^14, k = 2^1..2^11, k < n;
E ~ U[-1, 1] with d = 32, v ~ U[0, 1], batches of 16) and every boost of a
log grid, it records, for ``weighting="softmax"``:

- the nCCS against the exact top-k;
- the gradient reaching v for a random output cotangent: its RMS per batch
  row, and its coverage, the share of items whose gradient is at least 1e-3
  of the row's largest (how many items a training step actually moves);

and the same for the authors' released weighting (``"power"``, base 20).

It also reports the approximation-only answer: the smallest boost of the grid
whose nCCS is no worse than the released weighting's minus 0.02 (the
reproduction tolerance) on every cell. The default boost itself is chosen by
the learning benchmark (``python -m shtopk.learn``) first; this study is the
second criterion (among boosts that learn equally well, the sharper). Writes
``boost_study.csv`` and ``boost_study.png`` to --out (default: docs/_static)
and prints the summary::

    python docs/scripts/boost_study.py
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

import shtopk

BOOSTS = [0.3, 1.0, 1.5, 2.0, 3.0, 10.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 300.0, 1000.0]
TOLERANCE = 0.02


def measure(E, v, k, rng, **kw):
    truth = shtopk.hard_topk(E, v, k).values
    out, pullback = shtopk.vjp.successive_halving_topk(E, v, k, **kw)
    _, dv = pullback(rng.normal(size=out.values.shape))
    largest = np.abs(dv).max(axis=-1, keepdims=True)
    return (
        float(shtopk.nccs(truth, out.values).mean()),
        float(np.sqrt((dv**2).mean(axis=-1)).mean()),
        float((np.abs(dv) >= 1e-3 * largest).mean()),
    )


def run(batches: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in [2**a for a in range(4, 15)]:
        for k in [2**b for b in range(1, 12) if 2**b < n]:
            acc: dict[str, list] = {}
            for _ in range(batches):
                E = rng.uniform(-1, 1, (16, n, 32))
                v = rng.uniform(0, 1, (16, n))
                settings = [("power", 20.0)] + [("softmax", b) for b in BOOSTS]
                for weighting, boost in settings:
                    acc.setdefault(f"{weighting}:{boost:g}", []).append(
                        measure(E, v, k, rng, boost=boost, weighting=weighting)
                    )
            for key, values in acc.items():
                weighting, boost = key.split(":")
                nccs, rms, coverage = np.mean(values, axis=0)
                rows.append(
                    dict(n=n, k=k, weighting=weighting, boost=float(boost), nccs=nccs, grad_rms=rms, coverage=coverage)
                )
    return rows


def nccs_match_boost(rows: list[dict]) -> float:
    """The smallest boost whose nCCS >= the released weighting's - TOLERANCE on every cell."""
    released = {(r["n"], r["k"]): r["nccs"] for r in rows if r["weighting"] == "power"}
    for boost in sorted({r["boost"] for r in rows if r["weighting"] == "softmax"}):
        cells = [r for r in rows if r["weighting"] == "softmax" and r["boost"] == boost]
        if all(r["nccs"] >= released[(r["n"], r["k"])] - TOLERANCE for r in cells):
            return boost
    raise RuntimeError("no boost of the grid matches the released weighting")


def summary(rows: list[dict]) -> dict[tuple[str, float], tuple[float, float, float]]:
    """Mean nCCS, mean RMS gradient and mean coverage over the grid, per setting."""
    out = {}
    for key in sorted({(r["weighting"], r["boost"]) for r in rows}):
        cells = [r for r in rows if (r["weighting"], r["boost"]) == key]
        out[key] = tuple(float(np.mean([r[m] for r in cells])) for m in ("nccs", "grad_rms", "coverage"))
    return out


def plot(rows: list[dict], path: Path, matched: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summary(rows)
    boosts = sorted(b for w, b in stats if w == "softmax")
    nccs = [stats[("softmax", b)][0] for b in boosts]
    coverage = [stats[("softmax", b)][2] for b in boosts]
    released = stats[("power", 20.0)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.semilogx(boosts, nccs, "o-", color="C0", label="nCCS, softmax weighting")
    ax.axhline(released[0], color="C0", ls="--", label="nCCS, released weighting (power, b = 20)")
    ax.set_xlabel("boost C (softmax(C s_i, C s_j))")
    ax.set_ylabel("mean nCCS over the paper's grid", color="C0")
    ax.axvline(matched, color="gray", lw=0.8, ls=":")
    ax.axvline(shtopk.DEFAULT_BOOST, color="k", lw=0.8)
    ax2 = ax.twinx()
    ax2.semilogx(boosts, coverage, "s-", color="C3", label="gradient coverage, softmax")
    ax2.axhline(released[2], color="C3", ls="--", label="gradient coverage, released")
    ax2.set_ylabel("share of items with gradient >= 1e-3 of the max", color="C3")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, fontsize=7, loc="center left")
    ax.set_title(
        f"nCCS and gradient coverage (paper setup; default C = {shtopk.DEFAULT_BOOST:g}, "
        f"nCCS-matching C = {matched:g})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: list[dict], matched: float) -> str:
    """Markdown table of the summary, the default and the nCCS-matching boost marked."""
    lines = ["| setting | mean nCCS | gradient RMS | coverage |", "| --- | --- | --- | --- |"]
    for (weighting, boost), (nccs, rms, coverage) in summary(rows).items():
        if weighting == "power":
            label = f"released: power, b = {boost:g}"
        else:
            label = f"softmax, C = {boost:g}"
            label += " (default)" if boost == shtopk.DEFAULT_BOOST else ""
            label += " (matches released nCCS)" if boost == matched else ""
        cells = f"{nccs:.3f} | {rms:.2f} | {coverage:.0%}"
        lines.append(
            f"| **{label}** | **{cells.replace(' | ', '** | **')}** |"
            if "default" in label
            else f"| {label} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return [
            {
                **r,
                **{key: float(r[key]) for key in ("boost", "nccs", "grad_rms", "coverage")},
                "n": int(r["n"]),
                "k": int(r["k"]),
            }
            for r in csv.DictReader(f)
        ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2, help="batches of 16 per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "_static")
    parser.add_argument("--report-only", action="store_true", help="redo the plot and table from the CSV in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        rows = read(args.out / "boost_study.csv")
    else:
        rows = run(args.batches, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "boost_study.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    matched = nccs_match_boost(rows)
    plot(rows, args.out / "boost_study.png", matched)
    (args.out / "boost_study_table.md").write_text(table(rows, matched))
    print(f"{'setting':>16} {'mean nCCS':>9} {'grad RMS':>9} {'coverage':>9}")
    for (weighting, boost), (nccs, rms, coverage) in summary(rows).items():
        print(f"{weighting + ' ' + format(boost, 'g'):>16} {nccs:>9.4f} {rms:>9.3f} {coverage:>9.3f}")
    print(f"smallest boost matching the released nCCS on every cell: {matched:g}")
    print(f"shtopk.DEFAULT_BOOST (chosen by python -m shtopk.learn) = {shtopk.DEFAULT_BOOST:g}")


if __name__ == "__main__":
    main()
