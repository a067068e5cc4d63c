"""Draw the tournament of a small example, from the library's own plan.

Left: the rounds (n = 8 scores, k = 2): each round sorts its groups by score
and merges the best with the worst, the second best with the second worst, and
so on. Right: the plan that results, every input row landing in exactly one
output slot with one weight, which is all the apply step needs::

    python docs/scripts/tournament_figure.py   # writes docs/_static/tournament.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import shtopk

SCORES = np.array([0.62, 0.15, 0.91, 0.40, 0.77, 0.05, 0.33, 0.58])
K = 2
BOOST = 5.0


def rounds(scores: np.ndarray, k: int, boost: float) -> list[list[tuple[float, list[int]]]]:
    """The groups (score, member rows) at the start of each round, in sorted order."""
    groups = [(float(s), [i]) for i, s in enumerate(scores)]
    history = []
    while len(groups) > k:
        groups = sorted(groups, key=lambda g: -g[0])
        history.append(groups)
        half = len(groups) // 2
        merged = []
        for i in range(half):
            (s_hi, m_hi), (s_lo, m_lo) = groups[i], groups[-1 - i]
            w_hi = 1.0 / (1.0 + np.exp(-boost * (s_hi - s_lo)))
            merged.append((w_hi * s_hi + (1 - w_hi) * s_lo, m_hi + m_lo))
        groups = merged
    history.append(sorted(groups, key=lambda g: -g[0]))
    return history


def main() -> None:
    history = rounds(SCORES, K, BOOST)
    plan = shtopk.plan(SCORES, K, boost=BOOST)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})

    ys: dict[tuple[int, int], float] = {}
    for r, groups in enumerate(history):
        for j, (score, members) in enumerate(groups):
            y = -j * (len(history[0]) / len(groups))
            ys[(r, j)] = y
            label = "+".join(f"E{m}" for m in members)
            ax.text(
                r,
                y,
                f"{label}\n{score:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                bbox=dict(boxstyle="round", fc="white", ec="C0" if r < len(history) - 1 else "C3"),
            )
        if r + 1 < len(history):
            half = len(groups) // 2
            for i in range(half):
                (_, m_hi), (_, m_lo) = groups[i], groups[-1 - i]
                dest = next(t for t, g in enumerate(history[r + 1]) if g[1] == m_hi + m_lo)
                y_dest = -dest * (len(history[0]) / half)
                for src, color in ((i, "C0"), (len(groups) - 1 - i, "C1")):  # hi in blue, lo in orange
                    ax.annotate(
                        "",
                        xy=(r + 0.75, y_dest),
                        xytext=(r + 0.25, ys[(r, src)]),
                        arrowprops=dict(arrowstyle="-", color=color, lw=0.8),
                    )
    ax.set_xlim(-0.5, len(history) - 0.5)
    ax.set_ylim(-len(SCORES) + 0.3, 0.8)
    columns = [f"round {r}" for r in range(len(history) - 1)] + ["output"]
    ax.set_xticks(range(len(history)), columns)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"tournament on the scores (n = {len(SCORES)}, k = {K}): best pairs with worst", fontsize=9)

    weights = np.zeros((len(SCORES), K))
    for slot in range(K):
        for idx, w in zip(plan.indices[slot], plan.weights[slot], strict=True):
            weights[idx, slot] += w
    ax2.imshow(weights, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(len(SCORES)):
        for j in range(K):
            if weights[i, j] > 0:
                ax2.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax2.set_yticks(range(len(SCORES)), [f"E{i} ({s:.2f})" for i, s in enumerate(SCORES)], fontsize=8)
    ax2.set_xticks(range(K), [f"slot {j}" for j in range(K)], fontsize=8)
    ax2.set_title("the plan: one slot and weight per row;\napply = one weighted gather-sum over E", fontsize=9)
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "_static" / "tournament.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
