"""A/B of what the torch custom op saves for successive halving's backward on the CPU: the
tournament's record, or the first round's order (the backward replays the tournament).

Through ``torch.func.vjp`` the two are interleaved call by call in one process (the layout
is decided per call). Through ``torch.compile`` (backend ``aot_eager``: the op is opaque
either way) it is a constant of the trace, so each layout runs in a process of its own,
with the floor (reading E once) timed in the same process. Peak extra memory of one
forward+backward by ``tracemalloc`` (the CPU path allocates through NumPy), as a multiple of
the bytes of E. Run: ``python asv_benchmarks/op_replay_ab.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np

_REPLAYS: list = []  # the op's own layout decision, kept while a benchmark overrides it


def _inputs(n: int, d: int, B: int, k: int):
    import torch

    rng = np.random.default_rng(0)
    E = torch.from_numpy(rng.normal(size=(B, n, d)).astype(np.float32))
    v = torch.from_numpy(rng.normal(size=(B, n)).astype(np.float32))
    dV = torch.from_numpy(rng.normal(size=(B, k, d)).astype(np.float32))
    return E, v, dV


def _peak(fn, nbytes: int) -> float:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / nbytes
    finally:
        tracemalloc.stop()


def _use(layout: str) -> None:
    """The op's next calls save the record, or the first round's order where it would."""
    from shtopk import _torch_ops

    if not _REPLAYS:
        _REPLAYS.append(_torch_ops.replays)
    _torch_ops.replays = _REPLAYS[0] if layout == "replay" else (lambda *args: False)


def func_rows(cells: list[tuple[int, int]], B: int, k: int, repeat: int) -> None:
    import torch

    import shtopk

    for n, d in cells:
        E, v, dV = _inputs(n, d, B, k)

        def values(E_, v_):
            return shtopk.successive_halving_topk(E_, v_, k).values

        def run(layout: str, E=E, v=v, dV=dV) -> None:
            _use(layout)
            torch.func.vjp(values, E, v)[1](dV)

        for layout in ("record", "replay", "record", "replay"):
            run(layout)
        mem = {layout: _peak(lambda layout=layout: run(layout), E.nbytes) for layout in ("record", "replay")}
        times: dict[str, list[float]] = {"record": [], "replay": []}
        for _ in range(repeat):
            for layout in times:
                t0 = time.perf_counter()
                run(layout)
                times[layout].append(time.perf_counter() - t0)
        a, b = (float(np.median(times[layout])) * 1e3 for layout in ("record", "replay"))
        print(_row(n, d, "torch.func", f"{a:>10.2f}", f"{b:>10.2f}", b / a, mem))


def compile_cell(n: int, d: int, B: int, k: int, repeat: int, layout: str) -> None:
    """One layout through torch.compile: prints ``floor_ms step_ms peak/E``."""
    import torch

    import shtopk

    _use(layout)
    E, v, dV = _inputs(n, d, B, k)
    compiled = torch.compile(
        lambda E_, v_: (shtopk.successive_halving_topk(E_, v_, k).values * dV).sum(),
        backend="aot_eager",
        fullgraph=True,
        dynamic=False,
    )
    Ec, vc = E.clone().requires_grad_(), v.clone().requires_grad_()
    En = E.numpy()

    def step() -> None:
        Ec.grad = vc.grad = None
        compiled(Ec, vc).backward()

    for _ in range(3):
        step()
    peak = _peak(step, E.nbytes)
    floor, times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        En.sum()
        floor.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(f"{np.median(floor) * 1e3:.4f} {np.median(times) * 1e3:.4f} {peak:.4f}")


def _row(n: int, d: int, path: str, record: str, replay: str, ratio: float, mem: dict[str, float]) -> str:
    return f"{n:>6} {d:>4} {path:>13} {record} {replay} {ratio:>6.2f} {mem['record']:>9.2f} {mem['replay']:>9.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--cells", nargs="+", default=["4096x32", "16384x32", "4096x256"], help="NxD cells")
    parser.add_argument("--cell", nargs=3, metavar=("N", "D", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        n, d, layout = int(args.cell[0]), int(args.cell[1]), args.cell[2]
        compile_cell(n, d, args.batch, args.k, args.repeat, layout)
        return
    import torch

    now = datetime.datetime.now(datetime.UTC)
    print(
        f"# {now:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"batch {args.batch}, k {args.k}, float32; median of {args.repeat} rounds; peak extra memory "
        "of one forward+backward (tracemalloc) / bytes of E"
    )
    print(f"{'n':>6} {'d':>4} {'path':>13} {'record ms':>10} {'replay ms':>10} {'ratio':>6}", end=" ")
    print(f"{'mem rec/E':>9} {'mem rep/E':>9}")
    cells = [(int(n), int(d)) for n, d in (cell.split("x") for cell in args.cells)]
    func_rows(cells, args.batch, args.k, args.repeat)
    for n, d in cells:  # torch.compile: each layout in a fresh process, alternating twice
        res: dict[str, list[tuple[float, float, float]]] = {"record": [], "replay": []}
        for layout in ("record", "replay", "record", "replay"):
            cmd = [sys.executable, __file__, "--cell", str(n), str(d), layout]
            cmd += ["--batch", str(args.batch), "--k", str(args.k), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
            res[layout].append(tuple(float(x) for x in out[-3:]))
        ratio = {layout: [step / floor for floor, step, _ in rows] for layout, rows in res.items()}
        mem = {layout: max(p for *_, p in rows) for layout, rows in res.items()}
        a, b = (min(ratio[layout]) for layout in ("record", "replay"))
        print(_row(n, d, "torch.compile", f"{a:>9.2f}x", f"{b:>9.2f}x", b / a, mem))
    print("# torch.compile rows: forward+backward as ratios to reading E once (the faster of two processes each)")


if __name__ == "__main__":
    main()
