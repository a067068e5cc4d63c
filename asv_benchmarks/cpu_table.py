"""CPU table: successive halving against the time to read E once, in one run.

For each k it measures, on the same NumPy inputs (batch 16, n = 4096, d = 256,
float32 by default):

- ``read E``: ``E.sum(axis=-2)``, the floor (every row of E read once);
- ``forward``: :func:`shtopk.successive_halving_topk`;
- ``fwd+bwd``: :func:`shtopk.vjp.successive_halving_topk` and its pullback
  (the output cotangents are made once, outside the timed region);
- ``per-round``: the literal algorithm that sorts and gathers E every round
  (``tests/reference.py``, kept there as the naive reference);

and reports each as a ratio to ``read E``, plus the peak extra memory of
forward+backward (tracemalloc, which sees NumPy's allocations) over the bytes
of E (the cotangents excluded). The four are timed in turn, ``--repeat``
rounds after a warm-up round; times are medians and ratios the median of
the per-round ratios (robust to a noisy machine).

Run from the repository root::

    python asv_benchmarks/cpu_table.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import per_round_successive_halving

import shtopk


def interleaved_seconds(fns, repeat):
    """Time each function once per round, ``repeat`` rounds after a warm-up round.

    Returns the per-round times (rounds x functions). Interleaving puts the
    floor and the operator under the same machine load, so the per-round
    ratios are robust on a noisy machine; their median is reported.
    """
    for fn in fns:
        fn()
    times = np.empty((repeat, len(fns)))
    for r in range(repeat):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[r, j] = time.perf_counter() - start
    return times


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

    def forward_backward(k, cotangents={}):  # noqa: B006 -- made once per k, outside the timed region
        if k not in cotangents:
            cotangents[k] = (
                rng.normal(size=(args.batch, k, args.d)).astype(args.dtype),
                np.ones((args.batch, k), args.dtype),
            )
        _, pullback = shtopk.vjp.successive_halving_topk(E, v, k)
        return pullback(*cotangents[k])

    print(
        f"# NumPy {np.__version__}, {platform.processor() or platform.machine()}, "
        f"batch {args.batch}, n {args.n}, d {args.d}, {args.dtype}; median of {args.repeat} interleaved rounds"
    )
    header = (
        f"{'k':>5} {'read E ms':>9} {'forward ms':>10} {'fwd+bwd ms':>10} {'per-round ms':>12} "
        f"{'fwd/read':>8} {'fwd+bwd/read':>12} {'per-round/read':>14} {'peak mem/E':>10}"
    )
    print(header)
    for k in args.k:
        times = interleaved_seconds(
            [
                lambda: E.sum(axis=-2),
                lambda k=k: forward(k),
                lambda k=k: forward_backward(k),
                lambda k=k: per_round_successive_halving(E, v, k, boost=shtopk.DEFAULT_BOOST),
            ],
            args.repeat,
        )
        read, fwd, both, naive = np.median(times, axis=0)
        ratios = np.median(times[:, 1:] / times[:, :1], axis=0)
        mem = peak_extra_bytes(lambda k=k: forward_backward(k)) / e_bytes
        print(
            f"{k:>5} {read * 1e3:>9.2f} {fwd * 1e3:>10.2f} {both * 1e3:>10.2f} {naive * 1e3:>12.2f} "
            f"{ratios[0]:>8.2f} {ratios[1]:>12.2f} {ratios[2]:>14.2f} {mem:>10.2f}"
        )


if __name__ == "__main__":
    main()
