"""Aggregate the runs: mean +- std over seeds, the default rule, CSV files, tables and plots.

The rule behind ``shtopk.DEFAULT_BOOST`` was fixed before the runs it was
applied to, on disjoint seeds: :func:`choose_default` picked a candidate on
:data:`SELECTION_SEEDS` (:data:`FIRST_CHOICE`); :func:`confirmation` checked it
on :data:`CONFIRMATION_SEEDS` and :data:`WIDE_CONFIRMATION_SEEDS`, against the
best top-k operator on those seeds (:func:`within_noise`). The same rule on all
of those seeds (:data:`SECOND_SELECTION_SEEDS`) made the second choice, the
default now, checked on :data:`FINAL_CONFIRMATION_SEEDS`. Each phase was fixed
before its seeds ran.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

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


def summarize(rows: list[dict], seeds=None) -> dict[tuple[str, int, int, str], dict[str, tuple[float, float]]]:
    """(task, n, k, operator) -> metric -> (mean, std over seeds), over ``seeds`` (all if None)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if seeds is None or r["seed"] in seeds:
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

#: Seeds on which the default is chosen (the selection phase) ...
SELECTION_SEEDS = (0, 1, 2)
#: ... and fresh seeds on which the choice is confirmed, never used for choosing (the confirmation phase). Seeds
#: 3-5 confirmed an earlier budget of the benchmark; once looked at, they are not reused.
CONFIRMATION_SEEDS = (6, 7, 8)
#: ... and a wider confirmation on ten further fresh seeds, never used for choosing either. Pre-registered after
#: the first confirmation missed on 2 of 4 settings: per-seed spreads of 0.005-0.025 over three seeds cannot
#: resolve the 0.01 the rule asks about. Not part of the full run (``python -m shtopk.learn --seeds 9-18``).
WIDE_CONFIRMATION_SEEDS = tuple(range(9, 19))
#: The first choice, made on SELECTION_SEEDS (``DEFAULT_BOOST`` until the second choice); the first and the wide
#: confirmation judge it (when the selection seeds are not among the rows to re-derive it).
FIRST_CHOICE = "sh-softmax-3"
#: The second choice (pre-registered after the wide confirmation, before FINAL_CONFIRMATION_SEEDS ran): the same
#: rule on every seed run so far at the current budgets, 16 seeds ...
SECOND_SELECTION_SEEDS = SELECTION_SEEDS + CONFIRMATION_SEEDS + WIDE_CONFIRMATION_SEEDS
#: ... judged on ten further fresh seeds (``python -m shtopk.learn --seeds 19-28``, not part of the full run).
FINAL_CONFIRMATION_SEEDS = tuple(range(19, 29))
#: The phases, in table order, and their names.
PHASES = {
    SELECTION_SEEDS: "selection",
    CONFIRMATION_SEEDS: "confirmation",
    WIDE_CONFIRMATION_SEEDS: "wide confirmation",
    FINAL_CONFIRMATION_SEEDS: "final confirmation",
}


def is_candidate(operator: str) -> bool:
    """Whether a compared operator may become the default: a softmax boost or a scale-free prototype's boost.

    The power weighting is compared but is no candidate: it is not
    shift-invariant (see :mod:`shtopk.learn.operators`).
    """
    return operator.startswith(("sh-softmax-", "sh-scalefree-"))


def boost_of(operator: str) -> float:
    """The boost in a successive-halving operator's name (``sh-<weighting>-<boost>``)."""
    return float(operator.split("-")[2])


def best_operator(summary: dict, setting: tuple[str, int, int]) -> str:
    """The top-k operator with the highest mean hard-selection metric on one setting."""
    cands = {op: s for (t, n, k, op), s in summary.items() if (t, n, k) == setting and op not in REFERENCES}
    return max(cands, key=lambda op: cands[op]["hard"][0])


def shortfalls(rows: list[dict], seeds=SELECTION_SEEDS) -> dict[str, float]:
    """Candidate -> its largest shortfall, over the settings, from the best top-k operator tried, on ``seeds``.

    The shortfall on a setting is the best operator's mean test metric
    (exact top-k of the learnt scores) minus the candidate's.
    """
    summary = summarize(rows, seeds)
    out = {}
    for op in dict.fromkeys(r["operator"] for r in rows):
        if not is_candidate(op):
            continue
        gaps = [
            summary[(*s, best_operator(summary, s))]["hard"][0] - summary[(*s, op)]["hard"][0]
            for s in settings(rows)
            if (*s, op) in summary
        ]
        if gaps:
            out[op] = max(gaps)
    return out


def choose_default(rows: list[dict], seeds=SELECTION_SEEDS) -> str:
    """The pre-registered rule behind ``shtopk.DEFAULT_BOOST``: learning first, approximation second.

    On the selection seeds only: the candidate with the smallest largest
    shortfall from the best top-k operator tried (the most reliable learner
    across tasks, n/k and seeds); among candidates within TOLERANCE of that,
    a plain softmax boost before a scale-free one (no new option), then the
    largest boost (a larger boost approximates the exact top-k better; see
    the nCCS study). The confirmation seeds play no part in the choice.
    The first choice used ``SELECTION_SEEDS``, the second ``SECOND_SELECTION_SEEDS``.
    """
    worst = shortfalls(rows, seeds)
    least = min(worst.values())
    near = [op for op, w in worst.items() if w <= least + TOLERANCE]
    return max(near, key=lambda op: (op.startswith("sh-softmax-"), boost_of(op)))


def default_boost(rows: list[dict], seeds=SELECTION_SEEDS) -> float:
    """The boost of :func:`choose_default`'s candidate."""
    return boost_of(choose_default(rows, seeds))


def ran_all(rows: list[dict], seeds) -> bool:
    """Whether every (setting, operator) of ``rows`` ran on every one of ``seeds``."""
    ran = defaultdict(set)
    for r in rows:
        ran[(r["task"], r["n"], r["k"], r["operator"])].add(r["seed"])
    return bool(ran) and all(set(seeds) <= got for got in ran.values())


def confirmation(rows: list[dict], operator: str, seeds=CONFIRMATION_SEEDS) -> list[tuple]:
    """Per setting on the confirmation ``seeds``: (setting, operator's (mean, std), best operator, its (mean, std),
    within noise).

    The best is the best top-k operator on the confirmation seeds themselves.
    """
    summary = summarize(rows, seeds)
    out = []
    for s in settings(rows):
        if (*s, operator) not in summary:
            continue
        best = best_operator(summary, s)
        mine, theirs = summary[(*s, operator)]["hard"], summary[(*s, best)]["hard"]
        out.append((s, mine, best, theirs, within_noise(mine, theirs)))
    return out


def confirmed(rows: list[dict], operator: str, seeds=CONFIRMATION_SEEDS) -> bool:
    """``operator`` is within noise of the best top-k operator on every setting of a confirmation phase."""
    checks = confirmation(rows, operator, seeds)
    return bool(checks) and all(c[-1] for c in checks)


def phases_run(rows: list[dict]) -> dict[tuple[int, ...], str]:
    """The seeds of each phase that ``rows`` ran (phases that ran none left out) -> the phase's name."""
    ran = {r["seed"] for r in rows}
    return {tuple(sorted(ran & set(p))): name for p, name in PHASES.items() if ran & set(p)}


def table(rows: list[dict]) -> str:
    """Markdown table: per setting, per operator, mean +- std over the seeds of each phase."""
    phases = list(phases_run(rows))
    summaries = [summarize(rows, p) for p in phases]
    every = summarize(rows)
    ops = list(dict.fromkeys(r["operator"] for r in rows))
    lines = []
    for s in settings(rows):
        metric = next(r["metric_name"] for r in rows if (r["task"], r["n"], r["k"]) == s)
        steps = next(r["steps"] for r in rows if (r["task"], r["n"], r["k"]) == s)
        bests = [best_operator(summary, s) for summary in summaries]
        lines += [
            f"**{s[0]}, n = {s[1]}, k = {s[2]}** ({steps} steps; best top-k operator: "
            + ", ".join(f"{b} on {_seed_label(p)}" for b, p in zip(bests, phases, strict=True))
            + ")",
            "",
            "| operator | "
            + " | ".join(f"test {metric}, exact top-k, {_seed_label(p)}" for p in phases)
            + f" | test {metric}, as trained | recall | ms / step |",
            "| --- |" + " --- |" * (len(phases) + 3),
        ]
        for op in ops:
            if (*s, op) not in every:
                continue
            cells = []
            for summary, best in zip(summaries, bests, strict=True):
                m = summary.get((*s, op))
                if m is None:
                    cells.append("")
                    continue
                near = op not in REFERENCES and within_noise(m["hard"], summary[(*s, best)]["hard"])
                cells.append(_pm(m["hard"]) + (" *" if near else ""))
            m = every[(*s, op)]
            lines.append(
                f"| {op} | " + " | ".join(cells) + f" | {_pm(m['soft'])} | {_pm(m['recall'])} | "
                f"{m['ms_per_step'][0]:.1f} |"
            )
        lines.append("")
    lines.append(
        f"`*`: within noise of the best top-k operator on the same seeds (mean within its mean - std - {TOLERANCE})."
        " As trained, recall and ms / step: over all seeds."
    )
    return "\n".join(lines)


def phases_table(rows: list[dict]) -> str:
    """Markdown: per successive-halving setting and baseline, per phase, on how many settings it is within
    noise of the best top-k operator on that phase's seeds, and its largest shortfall from that best."""
    phases = phases_run(rows)
    ops = [o for o in dict.fromkeys(r["operator"] for r in rows) if o not in REFERENCES]
    lines = [
        "| operator | " + " | ".join(f"{name}, {_seed_label(p)}" for p, name in phases.items()) + " |",
        "| --- |" + " --- |" * len(phases),
    ]
    summaries = [summarize(rows, p) for p in phases]
    for op in ops:
        cells = []
        for summary in summaries:
            grid = [s for s in settings(rows) if (*s, op) in summary]
            if not grid:
                cells.append("")
                continue
            best = {s: summary[(*s, best_operator(summary, s))]["hard"] for s in grid}
            near = sum(within_noise(summary[(*s, op)]["hard"], best[s]) for s in grid)
            gap = max(best[s][0] - summary[(*s, op)]["hard"][0] for s in grid)
            cells.append(f"{near} of {len(grid)}, {gap:.3f}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: the settings on which the operator is within noise of the best top-k operator on the same seeds,"
        " and its largest shortfall from that best (mean test metric, exact top-k).",
    ]
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
    """Markdown: successive halving per weighting and boost, per setting, in both phases, with the rule's outcome."""
    grid = settings(rows)
    head = " | ".join(f"{t} n={n} k={k}" for t, n, k in grid)
    ops = [o for o in dict.fromkeys(r["operator"] for r in rows) if o.startswith("sh-") and o not in REFERENCES]
    worst = shortfalls(rows, SELECTION_SEEDS)
    lines = [
        f"Selection ({_seed_label(SELECTION_SEEDS)}): test metric with the exact top-k, mean ± std, and the largest"
        " shortfall from the best top-k operator (candidates only).",
        "",
        f"| setting | {head} | largest shortfall |",
        "| --- |" + " --- |" * (len(grid) + 1),
    ]
    summary = summarize(rows, SELECTION_SEEDS)
    for op in ops:
        cells = [_pm(summary[(*s, op)]["hard"]) if (*s, op) in summary else "" for s in grid]
        short = f"{worst[op]:.3f}" if op in worst else ""
        lines.append(f"| {_label(op)} | " + " | ".join(cells) + f" | {short} |")
    lines.append("| best top-k operator | " + " | ".join(_best_cell(summary, s) for s in grid) + " | |")
    lines.append("| best other operator | " + " | ".join(_best_cell(summary, s, other=True) for s in grid) + " | |")
    chosen = choose_default(rows)
    lines += ["", f"Chosen by the rule on the selection seeds: **{_label(chosen)}** (`{chosen}`)."]
    if not any(r["seed"] in CONFIRMATION_SEEDS for r in rows):
        return "\n".join(lines)
    summary = summarize(rows, CONFIRMATION_SEEDS)
    lines += [
        "",
        f"Confirmation ({_seed_label(CONFIRMATION_SEEDS)}, never used for choosing): test metric with the exact top-k,"
        " mean ± std; ✓ within noise of the best top-k operator on these seeds.",
        "",
        f"| setting | {head} | within noise everywhere |",
        "| --- |" + " --- |" * (len(grid) + 1),
    ]
    for op in ops:
        checks = {c[0]: c for c in confirmation(rows, op)}
        cells = [(_pm(checks[s][1]) + (" ✓" if checks[s][-1] else "")) if s in checks else "" for s in grid]
        verdict = ("yes" if confirmed(rows, op) else "no") if is_candidate(op) else ""
        lines.append(f"| {_label(op)} | " + " | ".join(cells) + f" | {verdict} |")
    lines.append("| best top-k operator | " + " | ".join(_best_cell(summary, s) for s in grid) + " | |")
    lines.append("| best other operator | " + " | ".join(_best_cell(summary, s, other=True) for s in grid) + " | |")
    verdict = "within noise of the best on every setting" if confirmed(rows, chosen) else "NOT within noise everywhere"
    lines += ["", f"Confirmation of the chosen default ({_label(chosen)}): {verdict}."]
    return "\n".join(lines)


def _label(op: str) -> str:
    if op.count("-") != 2:  # a prototype with more than a weighting and a boost in its name
        return op
    weighting, boost = op.split("-")[1], boost_of(op)
    return f"{weighting}, {'b' if weighting == 'power' else 'C'} = {boost:g}"


def _best_cell(summary: dict, s: tuple[str, int, int], other: bool = False) -> str:
    """The best top-k operator on a setting, or the best that is not successive halving (``other``)."""
    cands = {
        o: m
        for (t, n, k, o), m in summary.items()
        if (t, n, k) == s and o not in REFERENCES and not (other and o.startswith("sh-"))
    }
    if not cands:
        return ""
    best = max(cands, key=lambda o: cands[o]["hard"][0])
    return f"{_pm(cands[best]['hard'])} ({best})"


#: The comparators the default must beat on most settings (the issue's "done when").
BASELINES = ("iterative", "straight-through", "perturbed-0.5")


def library_default() -> str:
    """The operator name of the library's default setting (softmax weighting at ``shtopk.DEFAULT_BOOST``)."""
    from shtopk import DEFAULT_BOOST

    return f"sh-softmax-{DEFAULT_BOOST:g}"


def verdict(rows: list[dict]) -> str:
    """The rule's outcome in words: the choices, and their confirmations on fresh seeds.

    The first choice (on the selection seeds) is judged by the first and the
    wide confirmation, the second choice (on the 16 seeds of the earlier
    phases) by the final one. Where the seeds a choice was made on are not
    among the rows, the recorded choice (FIRST_CHOICE, the library's default)
    is judged. Empty when there is nothing to judge.
    """
    lines = []
    first, second = FIRST_CHOICE, library_default()
    for seeds, title, is_first in ((SELECTION_SEEDS, "", True), (SECOND_SELECTION_SEEDS, "Second choice: ", False)):
        worst = shortfalls(rows, seeds)
        if not worst or not ran_all([r for r in rows if is_candidate(r["operator"])], seeds):
            continue
        chosen = choose_default(rows, seeds)
        lines += [
            f"{title}Largest shortfall from the best top-k operator over the settings ({_seed_label(seeds)}), per"
            " candidate: " + ", ".join(f"{op} {w:.3f}" for op, w in worst.items()) + ".",
            "Default by the pre-registered rule (learning first, then no new option, then the largest boost):"
            f" {chosen}.",
        ]
        if is_first:
            first = chosen
        else:
            second = chosen
    for seeds, judged in (
        (CONFIRMATION_SEEDS, first),
        (WIDE_CONFIRMATION_SEEDS, first),
        (FINAL_CONFIRMATION_SEEDS, second),
    ):
        lines += _confirmation_lines(rows, judged, PHASES[seeds].capitalize(), seeds)
    return "\n".join(lines)


def _seed_label(seeds) -> str:
    """``seed 7``, ``seeds 0-2``, ``seeds 0-2, 6-18``."""
    text = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in _runs(sorted(seeds)))
    return f"seeds {text}" if len(seeds) > 1 else f"seed {text}"


def _runs(seeds: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted ``seeds``."""
    out = [[seeds[0]]]
    for s in seeds[1:]:
        if s == out[-1][-1] + 1:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def _confirmation_lines(rows: list[dict], chosen: str, title: str, seeds: tuple[int, ...]) -> list[str]:
    ran = tuple(sorted({r["seed"] for r in rows} & set(seeds)))
    checks = confirmation(rows, chosen, seeds)
    if not checks:
        return []
    misses = [
        f"{t} n={n} k={k} ({mine[0]:.3f} vs {best} {theirs[0]:.3f} ± {theirs[1]:.3f})"
        for (t, n, k), mine, best, theirs, ok in checks
        if not ok
    ]
    lines = [
        f"{title} ({_seed_label(ran)}): {chosen} within noise of the best top-k operator on"
        f" {len(checks) - len(misses)} of {len(checks)} settings"
        + (f"; not on {', '.join(misses)}." if misses else ".")
    ]
    candidates = [op for op in dict.fromkeys(r["operator"] for r in rows) if is_candidate(op)]
    passing = [op for op in candidates if confirmed(rows, op, seeds)]
    lines.append(
        f"Candidates within noise of the best on every setting in the {title.lower()}: "
        + (", ".join(passing) if passing else "none")
        + "."
    )
    summary = summarize(rows, seeds)
    for base in BASELINES:
        compared = [s for s in settings(rows) if (*s, base) in summary and (*s, chosen) in summary]
        ahead = sum(summary[(*s, chosen)]["hard"][0] > summary[(*s, base)]["hard"][0] for s in compared)
        lines.append(f"{chosen} ahead of {base} on {ahead} of {len(compared)} settings ({_seed_label(ran)}).")
    return lines
