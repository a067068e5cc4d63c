"""CPU table: successive halving against the time to read E once, in one run.

For each (n, d, k) it measures, on the same inputs (batch 16, float32 by
default), interleaved round by round:

- ``floor``: the faster of ``E.sum(axis=-2)`` and a flat ``E.sum()`` (every
  row of E read once; at small d the axis sum is slower than memory);
- ``np fwd`` / ``np f+b``: :func:`shtopk.successive_halving_topk` on NumPy
  arrays, and :func:`shtopk.vjp.successive_halving_topk` with its pullback;
- ``th fwd`` / ``th f+b``: the same on torch CPU tensors (forward without
  grad; forward+backward through autograd, E and v requiring grad);
- ``topk``: ``torch.topk`` + ``torch.take_along_dim`` (the hard top-k rows),
  a second reference;

each reported as a ratio to the floor (the median of the per-round ratios,
robust to a noisy machine; ``--stat min``: the ratio of the fastest rounds), plus the peak extra memory of the NumPy
forward+backward over the bytes of E (tracemalloc: the NumPy allocations,
dE included; the cotangents are made once, outside) and, beside it, ``mem bound``:
the bytes of what that call returns (values and scores, dE and dv: ``k/n (1 + 1/d)
+ 1 + 1/d`` times the bytes of E for scores of E's dtype, :func:`returned_bytes`),
which any implementation must hold at once. The kernels' engine is
the default one (``SHTOPK_KERNELS`` or ``--engine`` restricts it).

``--busy`` runs the table while one other CPU-bound process spins (as a
data loader or a second job would); torch is always imported in this
process. ``--compile`` reports the first-call cost instead: a fresh process,
first with an empty Numba cache (compilation), then with the cache filled.

``--keep-freed-memory`` runs the table with glibc's malloc keeping freed memory
for reuse (:data:`KEEP_FREED`, set in the environment before the process
starts), so that a new E-sized ``dE`` or output reuses pages already faulted
in instead of fresh ones from the kernel. The header line names the ``MALLOC_``
settings in effect, and how OpenMP's idle workers wait (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``) where the environment sets it.

Run from the repository root::

    python asv_benchmarks/cpu_table.py
    python asv_benchmarks/cpu_table.py --busy
    python asv_benchmarks/cpu_table.py --compile
    python asv_benchmarks/cpu_table.py --keep-freed-memory
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np


def interleaved_seconds(fns, repeat, clock=time.perf_counter):
    """Time each function once per round, ``repeat`` rounds after a warm-up round.

    Returns the per-round times (rounds x functions). Interleaving puts the
    floor and the operators under the same machine load.
    """
    for fn in fns:
        fn()
    times = np.empty((repeat, len(fns)))
    for r in range(repeat):
        for j, fn in enumerate(fns):
            start = clock()
            fn()
            times[r, j] = clock() - start
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


def _spin():
    while True:
        pass


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, shtopk
rng = np.random.default_rng(0)
E = rng.normal(size=(2, 64, 8)).astype(np.float32)
v = rng.normal(size=(2, 64)).astype(np.float32)
t1, c1 = time.perf_counter(), time.process_time()
out, pullback = shtopk.vjp.successive_halving_topk(E, v, 4)
pullback(np.ones_like(out.values))
t2, c2 = time.perf_counter(), time.process_time()
out, pullback = shtopk.vjp.successive_halving_topk(E, v, 4)
pullback(np.ones_like(out.values))
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {c2 - c1:.3f} {t3 - t2:.4f}")
"""


def first_call_table():
    """Seconds of the first forward+backward (float32 NumPy) in a fresh process, cold and warm cache
    (wall clock, and the CPU seconds of the first call, which a loaded machine inflates less)."""
    print(
        f"# first forward+backward (float32, NumPy) in a fresh process; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'Numba cache':>12} {'import s':>9} {'first call s':>12} {'(CPU s)':>8} {'second call s':>13}")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("empty", "filled"):
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(out.stderr)
            imp, first, cpu, second = (float(x) for x in out.stdout.split())
            print(f"{label:>12} {imp:>9.2f} {first:>12.2f} {cpu:>8.2f} {second:>13.4f}")


#: The environment variables the header line names where set (prefixes): glibc's malloc, OpenMP's idle workers.
HEADER_ENV = ("MALLOC_", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: glibc malloc settings under which freed memory stays in the process for reuse: allocations up to 4 GiB
#: come from the heap rather than fresh ``mmap`` s, and up to 16 GiB freed at its top is not returned.
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def returned_bytes(batch: int, n: int, d: int, k: int, itemsize: int) -> int:
    """Bytes of what a forward+backward returns and keeps at once: the values (B, k, d) and
    scores (B, k), then dE (B, n, d) and dv (B, n), all of the dtype's ``itemsize``: the
    least peak memory any implementation can have (above E, the cotangent and v)."""
    return batch * (k * d + k + n * d + n) * itemsize


def k_value(arg: str, n: int) -> int:
    """k for a ``--k`` value: an integer, ``n``, or ``n-j`` (k = n - j)."""
    if arg == "n":
        return n
    if arg.startswith("n-"):
        return n - int(arg[2:])
    return int(arg)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, nargs="+", default=[4096])
    parser.add_argument("--d", type=int, nargs="+", default=[256])
    parser.add_argument(
        "--k", nargs="+", default=["2", "64", "1024", "n"], help="values of k; 'n' means k = n, 'n-1' k = n - 1"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="median of the per-round ratios (default), or the ratio of the fastest rounds (on a machine other "
        "processes load, the rounds least disturbed)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall-clock time (default), or the CPU time of this process (all its threads): on a machine "
        "where other processes take turns on the cores, the work done, without the time spent waiting",
    )
    parser.add_argument("--engine", choices=["auto", "numba", "numpy", "neutral"], help="sets SHTOPK_KERNELS")
    parser.add_argument("--busy", action="store_true", help="one competing CPU-bound process runs meanwhile")
    parser.add_argument("--no-torch", action="store_true", help="NumPy columns only")
    parser.add_argument("--compile", action="store_true", help="report the first-call (JIT) cost and exit")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="rerun this script with glibc's malloc keeping freed memory for reuse (KEEP_FREED)",
    )
    args = parser.parse_args(argv)
    if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP_FREED.items()):
        # glibc reads these when the process starts: run the same command again with them set
        script = [sys.executable, os.path.abspath(__file__)]
        os.execve(sys.executable, [*script, *(sys.argv[1:] if argv is None else argv)], {**os.environ, **KEEP_FREED})
    if args.engine:
        os.environ["SHTOPK_KERNELS"] = args.engine
    if args.compile:
        first_call_table()
        return

    import shtopk
    from shtopk import _kernels

    torch = None
    if not args.no_torch:
        import torch

    spinner = None
    if args.busy:
        spinner = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
        spinner.start()
        # measured from the steady state: a spawned interpreter takes ~0.1 s to start spinning,
        # and the kernels count busy cores over the last 50 ms (shtopk._kernels.cpu._busy)
        time.sleep(1.0)
    try:
        rng = np.random.default_rng(args.seed)
        engine = _kernels.engine(np.zeros(1))
        print(
            f"# NumPy {np.__version__}" + (f", torch {torch.__version__}" if torch else "") + f", engine {engine}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, batch {args.batch}, {args.dtype}"
            + (", one competing CPU-bound process" if args.busy else "")
            + "".join(f", {k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith(HEADER_ENV))
            + f"; {args.clock} time, ratios to the floor, {args.stat} of {args.repeat} interleaved rounds"
        )
        cols = ["n", "d", "k", "floor ms", "np fwd", "np f+b"]
        if torch:
            cols += ["th fwd", "th f+b", "topk"]
        cols += ["peak mem/E", "mem bound"]
        print(" ".join(f"{c:>10}" for c in cols))
        for n in args.n:
            for d in args.d:
                E = rng.uniform(-1, 1, (args.batch, n, d)).astype(args.dtype)
                v = rng.uniform(0, 1, (args.batch, n)).astype(args.dtype)
                for k_arg in args.k:
                    k = k_value(k_arg, n)
                    if k > n:
                        continue
                    dv = rng.normal(size=(args.batch, k, d)).astype(args.dtype)

                    def np_fb(k=k, dv=dv, E=E, v=v):
                        _, pullback = shtopk.vjp.successive_halving_topk(E, v, k)
                        return pullback(dv)

                    fns = [
                        lambda E=E: E.sum(axis=-2),
                        lambda E=E: E.sum(),
                        lambda k=k, E=E, v=v: shtopk.successive_halving_topk(E, v, k),
                        np_fb,
                    ]
                    if torch:
                        Et, vt, dvt = torch.from_numpy(E), torch.from_numpy(v), torch.from_numpy(dv)
                        Eg, vg = Et.clone().requires_grad_(), vt.clone().requires_grad_()

                        def th_fb(k=k, Eg=Eg, vg=vg, dvt=dvt):
                            Eg.grad = vg.grad = None
                            out = shtopk.successive_halving_topk(Eg, vg, k)
                            out.values.backward(dvt)

                        def topk(k=k, Et=Et, vt=vt):
                            idx = torch.topk(vt, k, dim=-1).indices
                            return torch.take_along_dim(Et, idx[..., None], dim=-2)

                        fns += [lambda k=k, Et=Et, vt=vt: shtopk.successive_halving_topk(Et, vt, k), th_fb, topk]
                    clock = time.perf_counter if args.clock == "wall" else time.process_time
                    times = interleaved_seconds(fns, args.repeat, clock)
                    floor = times[:, :2].min(axis=1, keepdims=True)
                    if args.stat == "median":
                        ratios = np.median(times[:, 2:] / floor, axis=0)
                    else:
                        floor = floor.min(axis=0, keepdims=True)
                        ratios = times[:, 2:].min(axis=0) / floor[0]
                    mem = peak_extra_bytes(np_fb) / E.nbytes
                    row = [f"{n:>10}", f"{d:>10}", f"{k:>10}", f"{np.median(floor) * 1e3:>10.2f}"]
                    bound = returned_bytes(args.batch, n, d, k, E.itemsize) / E.nbytes
                    row += [f"{r:>10.2f}" for r in ratios] + [f"{mem:>10.2f}", f"{bound:>10.2f}"]
                    print(" ".join(row), flush=True)
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.join()


if __name__ == "__main__":
    main()
