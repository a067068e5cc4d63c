"""Aggregate the runs: mean +- std over seeds, the default rule, CSV files, tables and plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .operators import SOFTMAX_BOOSTS

RESULT_FIELDS = ("task", "n", "k", "operator", "seed", "steps", "metric_name", "hard", "soft", "recall", "ms_per_step")
CURVE_FIELDS = ("task", "n", "k", "operator", "seed", "step", "hard", "soft", "recall")


def write_csv(results: list[Any], out: Path) -> None:
    """``results.csv`` (one row per run) and ``curves.csv`` (one row per evaluation)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESULT_FIELDS)
        for r in results:
            w.writerow([_fmt(getattr(r, name)) for name in RESULT_FIELDS])
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_FIELDS)
        for r in results:
            for step, hard, soft, recall in r.curve:
                w.writerow([r.task, r.n, r.k, r.operator, r.seed, step, _fmt(hard), _fmt(soft), _fmt(recall)])


def _fmt(x: Any) -> Any:
    return f"{x:.5g}" if isinstance(x, float) else x


def read_results(path: Path) -> list[dict]:
    """``results.csv`` as dicts with numbers parsed."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("n", "k", "seed", "steps"):
            r[key] = int(r[key])
        for key in ("hard", "soft", "recall", "ms_per_step"):
            r[key] = float(r[key])
    return rows


def settings(rows: list[dict]) -> list[tuple[str, int, int]]:
    """The (task, n, k) settings, in order of appearance."""
    return list(dict.fromkeys((r["task"], r["n"], r["k"]) for r in rows))


def summarize(rows: list[dict]) -> dict[tuple[str, int, int, str], dict[str, tuple[float, float]]]:
    """(task, n, k, operator) -> metric -> (mean, std over seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["n"], r["k"], r["operator"])].append(r)
    out = {}
    for key, runs in groups.items():
        out[key] = {m: _mean_std([r[m] for r in runs]) for m in ("hard", "soft", "recall", "ms_per_step")}
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if any(math.isnan(x) for x in xs):
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


#: Differences of the test metric below this are not told apart (accuracy on 599 test images moves by 0.0017
#: per image; runs that all reach R^2 = 1.000 +- 0.000 would otherwise separate on the third decimal).
TOLERANCE = 0.01


def within_noise(candidate: tuple[float, float], best: tuple[float, float]) -> bool:
    """``candidate`` (mean, std over seeds) is within noise of ``best``.

    Its mean reaches the best's band, mean - std, less TOLERANCE. The
    candidate's own spread does not widen the band: an operator that fails on
    some seeds has a low mean and is not within noise.
    """
    return candidate[0] + TOLERANCE >= best[0] - best[1]


#: Operators that select items (the references and the non-top-k control are not "tried operators").
REFERENCES = ("oracle", "all-items", "softmax-pool", "sh-default")


def best_operator(summary: dict, setting: tuple[str, int, int]) -> str:
    """The top-k operator with the highest mean hard-selection metric on one setting."""
    cands = {op: s for (t, n, k, op), s in summary.items() if (t, n, k) == setting and op not in REFERENCES}
    return max(cands, key=lambda op: cands[op]["hard"][0])


def shortfalls(rows: list[dict]) -> dict[float, float]:
    """Softmax boost -> its largest shortfall, over the settings, from the best top-k operator tried.

    The shortfall on a setting is the best operator's mean test metric
    (exact top-k of the learnt scores) minus the boost's.
    """
    summary = summarize(rows)
    out = {}
    for boost in SOFTMAX_BOOSTS:
        op = f"sh-softmax-{boost:g}"
        gaps = [
            summary[(*s, best_operator(summary, s))]["hard"][0] - summary[(*s, op)]["hard"][0]
            for s in settings(rows)
            if (*s, op) in summary
        ]
        if gaps:
            out[boost] = max(gaps)
    return out


def default_boost(rows: list[dict]) -> float:
    """The rule behind ``shtopk.DEFAULT_BOOST``: learning first, approximation second.

    The softmax boost of the grid with the smallest largest shortfall from the
    best top-k operator tried (the most reliable learner across tasks, n/k
    and seeds); among boosts within TOLERANCE of that, the largest (a larger
    boost approximates the exact top-k better; see the nCCS study).
    """
    worst = shortfalls(rows)
    least = min(worst.values())
    return max(b for b, w in worst.items() if w <= least + TOLERANCE)


def table(rows: list[dict]) -> str:
    """Markdown table: per setting, per operator, mean +- std over seeds."""
    summary = summarize(rows)
    ops = list(dict.fromkeys(r["operator"] for r in rows))
    lines = []
    for s in settings(rows):
        metric = next(r["metric_name"] for r in rows if (r["task"], r["n"], r["k"]) == s)
        seeds = len({r["seed"] for r in rows if (r["task"], r["n"], r["k"]) == s})
        steps = next(r["steps"] for r in rows if (r["task"], r["n"], r["k"]) == s)
        best = best_operator(summary, s)
        lines += [
            f"**{s[0]}, n = {s[1]}, k = {s[2]}** ({steps} steps, {seeds} seeds; best top-k operator: {best})",
            "",
            f"| operator | test {metric}, exact top-k | test {metric}, as trained | recall | ms / step |",
            "| --- | --- | --- | --- | --- |",
        ]
        for op in ops:
            if (*s, op) not in summary:
                continue
            m = summary[(*s, op)]
            mark = "" if op in REFERENCES else (" *" if within_noise(m["hard"], summary[(*s, best)]["hard"]) else "")
            lines.append(
                f"| {op}{mark} | {_pm(m['hard'])} | {_pm(m['soft'])} | {_pm(m['recall'])} | {m['ms_per_step'][0]:.1f} |"
            )
        lines.append("")
    lines.append(f"`*`: within noise of the best top-k operator (mean within its mean - std - {TOLERANCE}).")
    return "\n".join(lines)


def _pm(ms: tuple[float, float]) -> str:
    return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def read_curves(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("n", "k", "seed", "step"):
            r[key] = int(r[key])
        for key in ("hard", "soft", "recall"):
            r[key] = float(r[key])
    return rows


def plot_curves(curves: list[dict], path: Path) -> None:
    """Learning curves: test metric with the exact top-k of the learnt scores, mean over seeds, per operator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = list(dict.fromkeys((r["task"], r["n"], r["k"]) for r in curves))
    ops = list(dict.fromkeys(r["operator"] for r in curves))
    fig, axes = plt.subplots(1, len(grid), figsize=(3.6 * len(grid), 3.6), squeeze=False)
    styles = {op: (f"C{i % 10}", "-" if i < 10 else "--") for i, op in enumerate(ops)}
    for ax, s in zip(axes[0], grid, strict=True):
        for op in ops:
            pts: dict[int, list[float]] = defaultdict(list)
            for r in curves:
                if (r["task"], r["n"], r["k"]) == s and r["operator"] == op:
                    pts[r["step"]].append(r["hard"])
            if pts:
                steps = sorted(pts)
                color, ls = styles[op]
                ax.plot(steps, [statistics.fmean(pts[t]) for t in steps], ls, color=color, label=op, lw=1.2)
        lo = 0.0 if s[0] == "needles" else 0.1
        ax.set_ylim(lo - 0.05, 1.02)
        ax.set_title(f"{s[0]}, n = {s[1]}, k = {s[2]}", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test metric, exact top-k (mean of seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def boost_table(rows: list[dict]) -> str:
    """Markdown: successive halving per weighting and boost, per setting (test metric, mean ± std), shortfall."""
    summary = summarize(rows)
    grid = settings(rows)
    worst = shortfalls(rows)
    head = " | ".join(f"{t} n={n} k={k}" for t, n, k in grid)
    lines = [f"| setting | {head} | largest shortfall |", "| --- |" + " --- |" * (len(grid) + 1)]
    ops = [
        o for o in dict.fromkeys(r["operator"] for r in rows) if o.startswith("sh-softmax-") or o.startswith("sh-power")
    ]
    ops += ["best other operator"]
    for op in ops:
        if op == "best other operator":
            cells = []
            for s in grid:
                others = {
                    o: m
                    for (t, n, k, o), m in summary.items()
                    if (t, n, k) == s and o not in REFERENCES and not o.startswith("sh-")
                }
                best = max(others, key=lambda o: others[o]["hard"][0])
                cells.append(f"{_pm(others[best]['hard'])} ({best})")
            lines.append(f"| {op} | " + " | ".join(cells) + " | |")
            continue
        weighting, boost = op.split("-")[1], float(op.split("-")[2])
        label = f"{weighting}, {'C' if weighting == 'softmax' else 'b'} = {boost:g}"
        cells = [_pm(summary[(*s, op)]["hard"]) if (*s, op) in summary else "" for s in grid]
        short = f"{worst[boost]:.3f}" if weighting == "softmax" and boost in worst else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {short} |")
    return "\n".join(lines)
