"""The working range of the two weightings: gradient of one pair against the level of its scores.

One pair (n = 2, k = 1) with scores ``(m + gap/2, m - gap/2)``: the gradient
of the better item's weight with respect to its score, ``d w_hi / d s_hi``
(the signal that tells a scorer "raise this item to keep it"), computed by
shtopk's manual VJP in float32 (what a network trains in), as the pair's mean
level ``m`` sweeps -6..6, for several gaps. The softmax weighting depends only
on the gap (shift-invariant); the power weighting also on the level: below
about -2 the pair merges nearly 50/50 with a vanishing gradient, and a little
above 0 every pair saturates to weights (1, 0) with a gradient of exactly 0.
Writes ``power_range.csv`` and ``power_range.png`` to --out
(default docs/_static)::

    python docs/scripts/power_range.py
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

import shtopk

LEVELS = np.linspace(-6.0, 6.0, 241)
GAPS = (0.1, 0.5, 2.0)
SETTINGS = (("power", 20.0), ("softmax", 1.0), ("softmax", 70.0))


def pair_gradient(weighting: str, boost: float, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """The weight of the better item, and its gradient d w_hi / d s_hi, for every level (float32)."""
    v = np.stack([LEVELS + gap / 2, LEVELS - gap / 2], axis=-1).astype(np.float32)
    E = np.broadcast_to(np.eye(2, dtype=np.float32), (len(LEVELS), 2, 2))  # output row = (w_hi, w_lo)
    out, pullback = shtopk.vjp.successive_halving_topk(E, v, 1, boost=boost, weighting=weighting)
    d_values = np.zeros_like(out.values)
    d_values[..., 0] = 1.0
    _, dv = pullback(d_values)
    return out.values[:, 0, 0], dv[:, 0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "_static")
    args = parser.parse_args(argv)
    rows = []
    for weighting, boost in SETTINGS:
        for gap in GAPS:
            w_hi, grad = pair_gradient(weighting, boost, gap)
            rows += [
                dict(weighting=weighting, boost=boost, gap=gap, level=float(m), w_hi=float(w), grad=float(g))
                for m, w, g in zip(LEVELS, w_hi, grad, strict=True)
            ]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "power_range.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(10, 3.2), sharey=True)
    for ax, (weighting, boost) in zip(axes, SETTINGS, strict=True):
        for i, gap in enumerate(GAPS):
            sel = [r for r in rows if (r["weighting"], r["boost"], r["gap"]) == (weighting, boost, gap)]
            ax.semilogy(LEVELS, [max(r["grad"], 1e-9) for r in sel], color=f"C{i}", label=f"gap {gap:g}")
        ax.set_title(f"{weighting}, {'base' if weighting == 'power' else 'boost'} {boost:g}", fontsize=9)
        ax.set_xlabel("level m of the pair's scores")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("d w_hi / d s_hi (float32; 1e-9 = zero)")
    axes[0].set_ylim(1e-9, 1e2)
    axes[0].legend(fontsize=7)
    fig.suptitle("One pair (m + gap/2, m - gap/2): where the weighting passes gradient", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / "power_range.png", dpi=100)
    for weighting, boost in SETTINGS:
        for gap in GAPS:
            sel = [r for r in rows if (r["weighting"], r["boost"], r["gap"]) == (weighting, boost, gap)]
            live = [r["level"] for r in sel if r["grad"] >= 1e-3]
            span = f"{min(live):+.2f} .. {max(live):+.2f}" if live else "none"
            print(f"{weighting} {boost:g}, gap {gap:g}: levels with d w_hi / d s_hi >= 1e-3: {span}")


if __name__ == "__main__":
    main()
