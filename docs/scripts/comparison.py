"""Compare shtopk with the differentiable top-k alternatives a user would consider.

On the paper's data (E ~ U[-1, 1] with d = 32, v ~ U[0, 1], batches of 16), in
PyTorch on the CPU, float32, for every cell (n, k) it measures, for each method:

- ``nccs``: the nCCS of its output against the exact top-k (mean over the
  batch rows of ``--batches`` batches; 1 is exact);
- ``fwd_ms`` and ``fwd_bwd_ms``: the median time of the forward and of the
  forward + backward of ``(values * G).sum()`` for a fixed random G (the
  methods are timed in turn, over interleaved rounds, so that they share the
  machine's noise);
- ``peak_mb``: the peak memory of one forward + backward above what the
  process held before it (the inputs), in a fresh process per method and cell
  (Linux: the reset peak RSS; it counts what autograd keeps for the backward,
  the temporaries of both passes, the output and the gradients).

The methods (the comparators are implemented here, not in shtopk):

- ``hard``: ``torch.topk`` + gather, the exact top-k; no gradient reaches v.
- ``shtopk``: :func:`shtopk.successive_halving_topk` with the default settings.
- ``iterative``: :func:`shtopk.iterative_softmax_topk`, the paper's baseline
  (Goyal et al. 2017), alpha = 1.
- ``perturbed``: perturbed top-k (Berthet et al. 2020, "Learning with
  differentiable perturbed optimizers"; the top-k form of Cordonnier et al.
  2021): the mean of the hard top-k one-hot matrices of ``v + sigma * Z`` over
  ``M`` Gaussian samples Z, applied to E; gradient to v by the Monte-Carlo
  estimator ``E[<P(v + sigma Z), G_P> Z] / sigma``.
- ``sortnet``: a differentiable bitonic sorting network (Petersen et al. 2021,
  "Differentiable sorting networks"): every compare-swap of (a, b) is relaxed
  with the logistic ``s = sigmoid(beta * (a - b))`` and moves the rows of E with
  the scores; the first k outputs are the top-k. n must be a power of 2.

The perturbed and sorting-network methods have a free parameter (sigma and the
number of samples M; beta); each is run over a small grid and every setting is
reported; their nCCS alone is also swept over a wider grid (beta up to 1e5,
sigma down to 1e-4: their cost does not depend on it). Writes to --out
(default: docs/_static) ``comparison_sweep.csv`` and ``.txt`` (the sweep),
``comparison.csv`` (every number), ``comparison.txt`` (the table of the docs,
with times and memory as ratios to shtopk's) and ``comparison.json``
(versions, options)::

    python docs/scripts/comparison.py
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import shtopk

Method = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def hard(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.topk(v, k, dim=-1).indices
    return torch.gather(E, -2, idx[..., None].expand(*idx.shape, E.shape[-1]))


class _PerturbedTopK(torch.autograd.Function):
    """Forward: mean one-hot top-k matrix over Gaussian perturbations; backward: the Monte-Carlo estimator."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, k: int, sigma: float, samples: int) -> torch.Tensor:
        B, n = v.shape
        Z = torch.randn(B, samples, n, dtype=v.dtype)
        idx = torch.topk(v[:, None, :] + sigma * Z, k, dim=-1).indices  # (B, M, k), by perturbed score
        P = torch.zeros(B, k, n, dtype=v.dtype)
        P.scatter_add_(-1, idx.transpose(1, 2), torch.full((B, k, samples), 1.0 / samples, dtype=v.dtype))
        ctx.save_for_backward(Z, idx)
        ctx.sigma = sigma
        return P

    @staticmethod
    def backward(ctx, G: torch.Tensor):
        Z, idx = ctx.saved_tensors
        # <P_s, G> for every sample s: the sum over slots j of G[j, idx_s[j]]
        B, M, k = idx.shape
        inner = torch.gather(G[:, None].expand(B, M, k, G.shape[-1]), -1, idx[..., None]).squeeze(-1).sum(-1)  # (B, M)
        dv = (inner[..., None] * Z).mean(1) / ctx.sigma
        return dv, None, None, None


def perturbed(sigma: float, samples: int) -> Method:
    def run(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        return _PerturbedTopK.apply(v, k, sigma, samples) @ E

    return run


def _bitonic_layers(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(i, l, larger_first) for every layer of a bitonic network that sorts n = 2^m items descending."""
    layers = []
    i = torch.arange(n)
    size = 2
    while size <= n:
        step = size // 2
        while step >= 1:
            partner = i ^ step
            first = i[partner > i]
            layers.append((first, first ^ step, (first & size) == 0))
            step //= 2
        size *= 2
    return layers


def sortnet(beta: float) -> Method:
    def run(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        n = v.shape[-1]
        if n & (n - 1):
            raise ValueError("the bitonic network needs n to be a power of 2")
        x, X = v, E
        for i, j, larger_first in _bitonic_layers(n):
            a, b = x[..., i], x[..., j]
            s = torch.sigmoid(beta * (a - b))  # how much a is the larger
            s = torch.where(larger_first, s, 1 - s)  # weight of a at position i
            xi, xl = s * a + (1 - s) * b, (1 - s) * a + s * b
            Xa, Xb, w = X[..., i, :], X[..., j, :], s[..., None]
            Xi, Xl = w * Xa + (1 - w) * Xb, (1 - w) * Xa + w * Xb
            x = torch.empty_like(x).index_copy(-1, i, xi).index_copy(-1, j, xl)
            X = torch.empty_like(X).index_copy(-2, i, Xi).index_copy(-2, j, Xl)
        return X[..., :k, :]

    return run


SIGMAS = (0.01, 0.05)
SAMPLES = (100,)
BETAS = (100.0, 1000.0)


def methods() -> dict[str, Method]:
    out: dict[str, Method] = {
        "hard": hard,
        "shtopk": lambda E, v, k: shtopk.successive_halving_topk(E, v, k).values,
        "iterative": lambda E, v, k: shtopk.iterative_softmax_topk(E, v, k).values,
    }
    for sigma, m in itertools.product(SIGMAS, SAMPLES):
        out[f"perturbed(sigma={sigma:g},M={m})"] = perturbed(sigma, m)
    for beta in BETAS:
        out[f"sortnet(beta={beta:g})"] = sortnet(beta)
    return out


def data(seed: int, n: int, k: int, batch: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, n, k, batch])
    E = torch.from_numpy(rng.uniform(-1.0, 1.0, (16, n, d)).astype(np.float32))
    v = torch.from_numpy(rng.uniform(0.0, 1.0, (16, n)).astype(np.float32))
    return E, v


def fwd_bwd(fn: Method, E: torch.Tensor, v: torch.Tensor, k: int, G: torch.Tensor) -> None:
    E, v = E.detach().requires_grad_(), v.detach().requires_grad_()
    (fn(E, v, k) * G).sum().backward()


def peak_mb(name: str, n: int, k: int, d: int, seed: int) -> float:
    """Peak memory of one forward + backward above the memory held before it, in a fresh process.

    Linux only: the peak resident set size (VmHWM) is reset just before the run
    (``/proc/self/clear_refs``), and glibc returns every block of 64 KiB or more
    to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``), so the peak
    counts what the run holds at once: autograd's saved tensors, temporaries,
    the output and the gradients.
    """
    code = (
        "import gc, json, re, sys, torch; sys.path.insert(0, sys.argv[1]); import comparison as c\n"
        "def kb(key): return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "n, k, d, seed = map(int, sys.argv[3:7]); torch.manual_seed(seed); torch.set_num_threads(1)\n"
        "fn = c.methods()[sys.argv[2]]; E, v = c.data(seed, n, k, 0, d); G = torch.randn(16, k, d)\n"
        "c.fwd_bwd(fn, E, v, k, G); gc.collect()\n"  # first-call allocations (caches, thread pools)
        "before = kb('VmRSS'); open('/proc/self/clear_refs', 'w').write('5')\n"
        "c.fwd_bwd(fn, E, v, k, G)\n"
        "print(json.dumps((kb('VmHWM') - before) / 1024))\n"
    )
    args = [sys.executable, "-c", code, str(Path(__file__).parent), name, str(n), str(k), str(d), str(seed)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def measure_cell(n: int, k: int, *, d: int, batches: int, rounds: int, seed: int) -> list[dict]:
    fns = {name: fn for name, fn in methods().items() if not (name.startswith("sortnet") and n & (n - 1))}
    nccs = {name: [] for name in fns}
    for b in range(batches):
        E, v = data(seed, n, k, b, d)
        truth = hard(E, v, k)
        for name, fn in fns.items():
            with torch.no_grad():
                nccs[name].append(shtopk.nccs(truth, fn(E, v, k)))
    E, v = data(seed, n, k, 0, d)
    G = torch.randn(16, k, d, generator=torch.Generator().manual_seed(seed))
    times = {(name, what): [] for name in fns for what in ("fwd", "fwd_bwd")}
    for fn in fns.values():  # warm-up
        fwd_bwd(fn, E, v, k, G)
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            with torch.no_grad():
                fn(E, v, k)
            times[(name, "fwd")].append(time.perf_counter() - start)
            start = time.perf_counter()
            fwd_bwd(fn, E, v, k, G)
            times[(name, "fwd_bwd")].append(time.perf_counter() - start)
    rows = []
    for name in fns:
        rows.append(
            {
                "n": n,
                "k": k,
                "method": name,
                "nccs": round(float(torch.cat(nccs[name]).mean()), 4),
                "fwd_ms": round(1e3 * statistics.median(times[(name, "fwd")]), 3),
                "fwd_bwd_ms": round(1e3 * statistics.median(times[(name, "fwd_bwd")]), 3),
                "peak_mb": round(peak_mb(name, n, k, d, seed), 1),
            }
        )
        print(" ".join(f"{key}={val}" for key, val in rows[-1].items()), flush=True)
    return rows


#: The free parameters swept for the nCCS alone (their cost does not depend on them).
SWEEP_BETAS = (1e2, 1e3, 1e4, 1e5)
SWEEP_SIGMAS = (1e-2, 1e-3, 1e-4)


def sweep(n: int, k: int, *, d: int, seed: int) -> list[dict]:
    """nCCS of the sorting network over beta and of perturbed top-k over sigma, on one batch of 16."""
    E, v = data(seed, n, k, 0, d)
    truth = hard(E, v, k)
    settings = [("sortnet", "beta", beta, sortnet(beta)) for beta in SWEEP_BETAS if not n & (n - 1)]
    settings += [("perturbed", "sigma", sigma, perturbed(sigma, 100)) for sigma in SWEEP_SIGMAS]
    rows = []
    with torch.no_grad():
        for method, name, value, fn in settings:
            nccs = float(shtopk.nccs(truth, fn(E, v, k)).mean())
            rows.append({"n": n, "k": k, "method": method, "parameter": name, "value": value, "nccs": round(nccs, 4)})
            print(" ".join(f"{key}={val}" for key, val in rows[-1].items()), flush=True)
    return rows


def render_sweep(rows: list[dict]) -> str:
    """The sweep as a text table: one line per cell, the nCCS for every beta and sigma."""
    settings = list(dict.fromkeys((r["method"], r["parameter"], float(r["value"])) for r in rows))
    names = [f"{'beta' if p == 'beta' else 'sigma'}={v:g}" for _, p, v in settings]
    lines = [f"{'n':>5} {'k':>3}  " + " ".join(f"{name:>12}" for name in names)]
    for (n, k), group in itertools.groupby(rows, key=lambda r: (int(r["n"]), int(r["k"]))):
        nccs = {(r["method"], r["parameter"], float(r["value"])): float(r["nccs"]) for r in group}
        lines.append(f"{n:>5} {k:>3}  " + " ".join(f"{nccs.get(s, float('nan')):>12.3f}" for s in settings))
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    """The results as a text table, cell by cell, with times and memory as ratios to shtopk's."""
    head = f"{'n':>5} {'k':>3}  {'method':<27} {'nCCS':>6} {'fwd ms':>8} {'f+b ms':>8} {'f+b/sh':>7}"
    head += f" {'peak MB':>8} {'mem/sh':>7}"
    lines = [head]
    for (n, k), group in itertools.groupby(rows, key=lambda r: (int(r["n"]), int(r["k"]))):
        group = list(group)
        ref = next(r for r in group if r["method"] == "shtopk")
        for r in group:
            time_ratio = float(r["fwd_bwd_ms"]) / float(ref["fwd_bwd_ms"])
            mem_ratio = float(r["peak_mb"]) / float(ref["peak_mb"]) if float(ref["peak_mb"]) > 0 else float("nan")
            lines.append(
                f"{n:>5} {k:>3}  {r['method']:<27} {float(r['nccs']):>6.3f} {float(r['fwd_ms']):>8.2f} "
                f"{float(r['fwd_bwd_ms']):>8.2f} {time_ratio:>7.2f} {float(r['peak_mb']):>8.1f} {mem_ratio:>7.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--k", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches of 16 for the nCCS")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust to a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "_static")
    parser.add_argument("--sweep-only", action="store_true", help="only the nCCS sweep of beta and sigma")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [(n, k) for n in args.n for k in args.k if k < n]
    swept = [row for n, k in cells for row in sweep(n, k, d=args.d, seed=args.seed)]
    with open(args.out / "comparison_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(swept[0]))
        writer.writeheader()
        writer.writerows(swept)
    (args.out / "comparison_sweep.txt").write_text(render_sweep(swept) + "\n")
    if args.sweep_only:
        return
    rows = []
    for n, k in cells:
        rows.extend(measure_cell(n, k, d=args.d, batches=args.batches, rounds=args.rounds, seed=args.seed))
    with open(args.out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "shtopk": shtopk.__version__,
        "threads": args.threads,
        "options": {key: str(val) for key, val in vars(args).items() if key != "out"},
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (args.out / "comparison.json").write_text(json.dumps(meta, indent=2) + "\n")
    (args.out / "comparison.txt").write_text(render(rows) + "\n")
    print(f"wrote {args.out / 'comparison.csv'}")


if __name__ == "__main__":
    main()
