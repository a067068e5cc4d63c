"""Reproduce the paper's evaluation (Figures 1 and 2): ``python -m shtopk.reproduce``.

On the paper's data (E ~ U[-1, 1], v ~ U[0, 1], batches of 16, seeded) it
measures, for every cell (n, k) of the grid, the nCCS against the exact top-k
and the seconds per batch (device synchronized) of successive halving with the
default settings, successive halving with the authors' weighting, the
iterative softmax baseline and hard top-k. It prints a table and a
cell-by-cell comparison with the authors' published numbers, and writes to
``--out`` a CSV of every measurement, a JSON of the environment and two
figures in the style of the paper's. It exits with status 1 if the authors'
weighting misses a published nCCS by more than 0.02.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .backends import BACKENDS, Runtime
from .evaluate import DEFAULT_K, DEFAULT_N, METHODS, PAPER_K, PAPER_N, grid, run, summarize
from .published import SH_NCCS
from .report import comparison, figures, table, write_csv, write_json

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shtopk-reproduce",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library")
    parser.add_argument("--device", default="", help="torch/cupy/jax device (default: the GPU if available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reproduce-results"), help="output directory")
    parser.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N), help="values of n (grid selection)")
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_K), help="values of k (grid selection)")
    parser.add_argument("--full", action="store_true", help="the whole paper grid: n = 2^4..2^14, k = 2^1..2^11")
    parser.add_argument("--batches", type=int, default=16, help="batches of 16 per cell (the paper: 16)")
    parser.add_argument("--d", type=int, default=32, help="vector dimension (the paper: 32)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.full:
        args.n, args.k = list(PAPER_N), list(PAPER_K)
    if args.batches < 1 or args.d < 1 or min(args.n) < 2 or min(args.k) < 1:
        parser.error("--batches, --d and --k must be >= 1 and --n >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtime = Runtime(args.backend, args.device, args.dtype)
    except ValueError as exc:
        print(f"shtopk-reproduce: error: {exc}", file=sys.stderr)
        return 2
    cells = grid(args.n, args.k)
    if not cells:
        print("no cell with k < n in the selected grid", file=sys.stderr)
        return 2
    start = time.time()
    measurements = run(
        runtime,
        cells,
        batches=args.batches,
        d=args.d,
        seed=args.seed,
        methods=args.methods,
        progress=not args.no_progress,
    )
    # the data first: nothing below may lose it
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "measurements.csv", measurements)
    summary = summarize(measurements)
    compared = "sh-authors" in args.methods and any(cell in PUBLISHED_CELLS for cell in cells)
    text, ok = comparison(summary)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_json(
        args.out / "environment.json",
        {
            "versions": runtime.versions(),
            "device": runtime.device_name(),
            "backend": args.backend,
            "options": options,
            "methods": {m: METHODS[m][0] for m in args.methods},
            "wall_seconds": round(time.time() - start, 1),
            # "not compared": no cell of the run has a published nCCS of the authors' weighting
            "reproduced": ok if compared else "not compared",
        },
    )
    print(
        f"# {len(cells)} cells x {args.batches} batches of 16, d={args.d}, {args.dtype}, "
        f"{args.backend} on {runtime.device_name()}; nCCS mean, ms per batch median"
    )
    print(table(summary, args.methods))
    print()
    print(text if compared else NOT_COMPARED)
    written = [args.out / "measurements.csv", args.out / "environment.json"]
    try:
        written += figures(summary, args.out, args.methods, runtime.device_name())
    except ImportError as exc:
        print(f"figures skipped: {exc.name or 'matplotlib'} is not installed (pip install 'shtopk[reproduce]')")
    print("\nwrote " + ", ".join(str(p) for p in written))
    if compared and not ok:
        print("REPRODUCTION CHECK FAILED: see the differences above", file=sys.stderr)
        return 1
    return 0


#: The cells (n, k) with a published nCCS of the authors' weighting: the paper's grid.
PUBLISHED_CELLS = frozenset(SH_NCCS)
NOT_COMPARED = (
    "not compared: no cell of this run has a published nCCS of the authors' weighting "
    "(sh-authors on the paper's grid n = 2^4..2^14, k = 2^1..2^11, k < n)"
)
