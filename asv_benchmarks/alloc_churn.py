"""Forward+backward on the CPU, NumPy alone, torch alone, or the two interleaved in one process.

Prints, per mode, the median forward and backward time as ratios to reading E once
(``E.sum(axis=-2)``, measured in the same loop) and the page faults and huge-page
faults the timed calls caused (``/proc/vmstat``, Linux). On the development VM a fresh
4 KiB page costs about 1.7 us; interleaving the two libraries' calls (as
``cpu_table.py`` does, cell by cell) makes the allocator hand out fresh pages that
either library alone reuses. Each mode runs in a process of its own::

    python asv_benchmarks/alloc_churn.py                 # batch 16, n 4096, d 256, k 1024
    python asv_benchmarks/alloc_churn.py --n 16384 --d 1024 --k 64
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("numpy", "torch", "mixed")


def vmstat() -> dict[str, int]:
    """Page-fault counters of the whole machine (empty where /proc/vmstat is missing)."""
    path = Path("/proc/vmstat")
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines())
    return {k: int(v) for k, v in pairs if k in ("pgfault", "thp_fault_alloc", "thp_fault_fallback")}


def measure(mode: str, batch: int, n: int, d: int, k: int, repeat: int) -> str:
    """One mode's line: median ratios to the floor, and the faults per forward+backward."""
    import shtopk
    import shtopk.vjp

    rng = np.random.default_rng(0)
    E = rng.uniform(-1, 1, (batch, n, d)).astype(np.float32)
    v = rng.uniform(0, 1, (batch, n)).astype(np.float32)
    dv = rng.normal(size=(batch, k, d)).astype(np.float32)
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def numpy_step():
        _, pullback = timed("np fwd", lambda: shtopk.vjp.successive_halving_topk(E, v, k))
        timed("np bwd", lambda: pullback(dv))

    steps = []
    if mode in ("numpy", "mixed"):
        steps.append(numpy_step)
    if mode in ("torch", "mixed"):
        import torch

        Et = torch.from_numpy(E).clone().requires_grad_()
        vt = torch.from_numpy(v).clone().requires_grad_()
        dvt = torch.from_numpy(dv)

        def torch_step():
            Et.grad = vt.grad = None
            out = timed("torch fwd", lambda: shtopk.successive_halving_topk(Et, vt, k))
            timed("torch bwd", lambda: out.values.backward(dvt))

        steps.append(torch_step)
    for step in steps:  # compile, warm the allocator
        step()
        step()
    times.clear()
    before = vmstat()
    for _ in range(repeat):
        timed("floor", lambda: E.sum(axis=-2))
        for step in steps:
            step()
    after = vmstat()
    floor = float(np.median(times.pop("floor")))
    cells = [f"{name} {np.median(t) / floor:5.2f}x" for name, t in times.items()]
    calls = repeat * len(steps)
    faults = [f"{key} {(after[key] - before[key]) / calls:.0f}" for key in before]
    return f"{mode:>6}: " + "  ".join(cells) + (f"  | per f+b: {', '.join(faults)}" if faults else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--mode", choices=MODES, help="run one mode in this process (default: each in its own)")
    args = parser.parse_args(argv)
    sizes = (args.batch, args.n, args.d, args.k, args.repeat)
    if args.mode:
        print(measure(args.mode, *sizes), flush=True)
        return
    print(f"batch {args.batch}, n {args.n}, d {args.d}, k {args.k}, fp32: median time / reading E once", flush=True)
    for mode in MODES:
        flags = [f"--{name}={value}" for name, value in zip(("batch", "n", "d", "k", "repeat"), sizes, strict=True)]
        subprocess.run([sys.executable, __file__, "--mode", mode, *flags], check=True)


if __name__ == "__main__":
    main()
