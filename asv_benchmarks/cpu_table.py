"""CPU table: successive halving against the time to read E once, in one run.

For each k it measures, on the same NumPy inputs (batch 16, n = 4096, d = 256,
float32 by default):

- ``read E``: ``E.sum(axis=-2)``, the floor (every row of E read once);
- ``forward``: :func:`shtopk.successive_halving_topk`;
- ``fwd+bwd``: :func:`shtopk.vjp.successive_halving_topk` and its pullback;
- ``per-round``: the literal algorithm that sorts and gathers E every round
  (``tests/reference.py``, kept there as the naive reference);

and reports each as a ratio to ``read E``, plus the peak extra memory of
forward+backward (tracemalloc, which sees NumPy's allocations) over the bytes
of E. Timings are the median of ``--repeat`` runs after a warm-up.

Run from the repository root::

    python asv_benchmarks/cpu_table.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import per_round_successive_halving

import shtopk


def median_seconds(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak - base


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, nargs="+", default=[2, 64, 1024])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    E = rng.uniform(-1, 1, (args.batch, args.n, args.d)).astype(args.dtype)
    v = rng.uniform(0, 1, (args.batch, args.n)).astype(args.dtype)
    e_bytes = E.nbytes

    def forward(k):
        return shtopk.successive_halving_topk(E, v, k)

    def forward_backward(k):
        out, pullback = shtopk.vjp.successive_halving_topk(E, v, k)
        return pullback(np.ones_like(out.values), np.ones_like(out.scores))

    print(
        f"# NumPy {np.__version__}, {platform.processor() or platform.machine()}, "
        f"batch {args.batch}, n {args.n}, d {args.d}, {args.dtype}; median of {args.repeat}"
    )
    header = (
        f"{'k':>5} {'read E ms':>9} {'forward ms':>10} {'fwd+bwd ms':>10} {'per-round ms':>12} "
        f"{'fwd/read':>8} {'fwd+bwd/read':>12} {'per-round/read':>14} {'peak mem/E':>10}"
    )
    print(header)
    for k in args.k:
        read = median_seconds(lambda: E.sum(axis=-2), args.repeat)
        fwd = median_seconds(lambda k=k: forward(k), args.repeat)
        both = median_seconds(lambda k=k: forward_backward(k), args.repeat)
        naive = median_seconds(
            lambda k=k: per_round_successive_halving(E, v, k, boost=shtopk.DEFAULT_BOOST), max(3, args.repeat // 2)
        )
        mem = peak_extra_bytes(lambda k=k: forward_backward(k)) / e_bytes
        print(
            f"{k:>5} {read * 1e3:>9.2f} {fwd * 1e3:>10.2f} {both * 1e3:>10.2f} {naive * 1e3:>12.2f} "
            f"{fwd / read:>8.2f} {both / read:>12.2f} {naive / read:>14.2f} {mem:>10.2f}"
        )


if __name__ == "__main__":
    main()
