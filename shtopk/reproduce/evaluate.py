"""Run the paper's evaluation: nCCS against the exact top-k and seconds per batch."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

import shtopk

from .backends import Runtime

#: The methods compared, in table order: name -> (label, function of (E, v, k)).
METHODS: dict[str, tuple[str, Callable[..., Any]]] = {
    "sh-default": (
        f"successive halving (softmax, boost {shtopk.DEFAULT_BOOST:g})",
        lambda E, v, k: shtopk.successive_halving_topk(E, v, k),
    ),
    "sh-authors": (
        "successive halving (authors' weighting: power, base 20)",
        lambda E, v, k: shtopk.successive_halving_topk(E, v, k, boost=20.0, weighting="power"),
    ),
    "iterative": (
        "iterative softmax baseline (alpha 1)",
        lambda E, v, k: shtopk.iterative_softmax_topk(E, v, k),
    ),
    "hard": ("hard top-k", lambda E, v, k: shtopk.hard_topk(E, v, k)),
}

PAPER_N = tuple(2**a for a in range(4, 15))
PAPER_K = tuple(2**b for b in range(1, 12))
#: The default grid: n/k from 2 to 8192, every power of two of n up to 4096 (the small n are
#: cheap) and 16384, in about a minute on 2 idle CPU cores.
DEFAULT_N = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)
DEFAULT_K = (2, 8, 64, 512)


@dataclass(frozen=True)
class Measurement:
    """One method on one batch of one cell."""

    n: int
    k: int
    batch: int
    method: str
    nccs: float
    seconds: float


def grid(ns: Iterable[int], ks: Iterable[int]) -> list[tuple[int, int]]:
    """The cells (n, k) with k < n, as in the paper."""
    return [(n, k) for n in sorted(set(ns)) for k in sorted(set(ks)) if k < n]


def cell_data(seed: int, n: int, k: int, batch: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's data for one batch: E ~ U[-1, 1] (16, n, d), v ~ U[0, 1] (16, n); seeded per cell and batch."""
    rng = np.random.default_rng([seed, n, k, batch])
    return rng.uniform(-1.0, 1.0, (16, n, d)), rng.uniform(0.0, 1.0, (16, n))


def run_cell(
    runtime: Runtime, n: int, k: int, *, batches: int, d: int, seed: int, methods: list[str]
) -> list[Measurement]:
    """Every method on ``batches`` batches of one cell."""
    out = []
    warm = runtime.backend != "numpy"  # first calls on a GPU compile and allocate
    for b in range(batches):
        E_np, v_np = cell_data(seed, n, k, b, d)
        E, v = runtime.asarray(E_np), runtime.asarray(v_np)
        truth = shtopk.hard_topk(E, v, k).values
        for name in methods:
            fn = METHODS[name][1]
            if warm and b == 0:
                fn(E, v, k)
            runtime.synchronize(truth)
            start = time.perf_counter()
            result = fn(E, v, k)
            runtime.synchronize(result)
            seconds = time.perf_counter() - start
            out.append(Measurement(n, k, b, name, runtime.to_float(shtopk.nccs(truth, result.values)), seconds))
    return out


def run(
    runtime: Runtime,
    cells: list[tuple[int, int]],
    *,
    batches: int,
    d: int,
    seed: int,
    methods: list[str],
    progress: bool = True,
) -> list[Measurement]:
    """All cells, with a progress bar on stderr (weighted by the cells' expected cost)."""
    cost = [n * max(k, 8) for n, k in cells]
    total, done = sum(cost), 0
    out: list[Measurement] = []
    start = time.perf_counter()
    for (n, k), c in zip(cells, cost, strict=True):
        if progress:
            _bar(done / total, f"n={n} k={k}", time.perf_counter() - start)
        out.extend(run_cell(runtime, n, k, batches=batches, d=d, seed=seed, methods=methods))
        done += c
    if progress:
        _bar(1.0, "done", time.perf_counter() - start)
        print(file=sys.stderr)
    return out


def _bar(fraction: float, label: str, elapsed: float) -> None:
    width = 30
    filled = round(fraction * width)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:6.1%} {elapsed:6.1f}s {label:<16}")
    sys.stderr.flush()


class CellSummary(NamedTuple):
    """One method on one cell, over its batches: the centre and the spread of each metric."""

    nccs: float  # mean
    seconds: float  # median
    nccs_min: float
    nccs_max: float
    seconds_min: float
    seconds_max: float


def summarize(measurements: list[Measurement]) -> dict[tuple[int, int, str], CellSummary]:
    """(n, k, method) -> mean nCCS, median seconds per batch, and the min and max over batches of both."""
    groups: dict[tuple[int, int, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.n, m.k, m.method), []).append(m)
    out = {}
    for key, ms in groups.items():
        nccs, seconds = [m.nccs for m in ms], [m.seconds for m in ms]
        out[key] = CellSummary(
            statistics.fmean(nccs), statistics.median(seconds), min(nccs), max(nccs), min(seconds), max(seconds)
        )
    return out
