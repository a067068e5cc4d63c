"""The CPU engine: compiled Numba kernels for NumPy arrays and torch CPU tensors.

Numba is optional (``pip install shtopk[cpu]``); without it :func:`available`
is False and the dispatch point (:mod:`shtopk._kernels`) uses the NumPy
kernels or the neutral core. The kernels themselves (:mod:`.numba_kernels`)
are imported, and compiled, on first use, and cached on disk.

Each function here takes the arrays of its neutral counterpart, views them
as NumPy arrays without copying (torch CPU tensors through ``.numpy()``,
bfloat16 as its uint16 bits), runs one kernel, and returns the results in the
caller's library (``torch.from_numpy``: no copy either).

Parallelism is decided per call, never left to a library's thread pool: a
kernel call gets ``min(idle cores, work / WORK_PER_THREAD)`` threads, so
small calls run on one thread, a call never waits on more threads than its
work can keep busy, and a core that another process keeps busy is not
counted (a parallel region waits for its slowest thread; other processes'
cores are estimated from their CPU time, see :func:`_busy`). Its work is split
into a few blocks per thread, handed out dynamically, so a thread that is
slowed anyway takes fewer blocks instead of holding the others up. After one
call that prepares the scores, a forward makes one parallel call over batch rows
(each row's tournament, then the gather-sum of its selection, which is never
written to memory; with a record for the backward, the record too) or, when
batch rows are fewer than cores, two (the tournament; the gather-sum); a
backward one more (:func:`replay_backward`: each row's tournament replayed, its
rows backward and the tournament's backward) or, from a record, two (the rows
backward; the tournament's backward with the steps around it,
:func:`score_cotangents`), never one per small step.

Fresh memory is costly (each new 4 KiB page faults), so the kernels' scratch is
carved out of one block, kept per thread when small (:func:`scratch`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._array_api import is_torch_array
from .._core.plan import Round, Selection, n_rounds
from .._core.plan_backward import neutral_tournament_backward

#: Bytes of E (or of the plan) one thread should have to itself before a call uses another thread.
WORK_PER_THREAD = 1 << 20

#: Blocks of work per thread: handed out dynamically, so a thread slowed by a busy neighbour takes fewer.
BLOCKS_PER_THREAD = 4

_kernels: Any = None
_numba: Any = None
_checked = False


def available() -> bool:
    """Whether Numba can be imported (the kernels module is imported here, once)."""
    global _kernels, _numba, _checked
    if not _checked:
        _checked = True
        try:
            import numba

            from . import numba_kernels
        except ImportError:
            _kernels = _numba = None
        else:
            _kernels, _numba = numba_kernels, numba
    return _kernels is not None


def _require() -> None:
    if not available():
        raise RuntimeError("the CPU engine needs Numba: pip install shtopk[cpu]")


def _numpy_dtype_ok(dt: np.dtype) -> bool:
    """Native bool, integer and float16/32/64 dtypes (not ``">f8"``, not longdouble)."""
    return dt.isnative and dt.kind in "biuf" and dt.itemsize <= 8


def _supported(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return _numpy_dtype_ok(x.dtype)
    if is_torch_array(x):
        import torch

        return x.device.type == "cpu" and (
            x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool)
            or not (x.dtype.is_floating_point or x.dtype.is_complex)
        )
    return False


def serves(*arrays: Any) -> bool:
    """True for NumPy arrays, or torch CPU tensors, of supported dtypes, when Numba is available.

    Not for tensors that torch autograd is recording (grad enabled and one of
    them requires grad): the kernels are opaque to autograd. The public
    functions run them inside their ``autograd.Function``, where recording
    is off.

    Called several times per operator call, so it checks types directly
    (``isinstance``) rather than through array-api-compat's more general helpers.
    """
    if not arrays:
        return False
    if all(is_torch_array(x) for x in arrays):
        import torch

        if torch.is_grad_enabled() and any(x.requires_grad for x in arrays):
            return False
    elif not all(isinstance(x, np.ndarray) for x in arrays):
        return False
    return all(_supported(x) for x in arrays) and available()


# ---------------------------------------------------------------- zero-copy views


def _host(x: Any, dtype: Any = None) -> np.ndarray:
    """A C-contiguous NumPy view of ``x`` (a copy only if it is strided or of another ``dtype``).
    bfloat16 tensors come as their uint16 bits."""
    if is_torch_array(x):
        import torch

        x = x.detach()
        if dtype is not None:
            x = x.to(getattr(torch, np.dtype(dtype).name))
        if x.dtype == torch.bfloat16:
            return x.contiguous().view(torch.int16).numpy().view(np.uint16)
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def numpy_view(x: Any) -> np.ndarray:
    """A torch CPU tensor (not bfloat16) as a NumPy array; no copy unless it is strided."""
    return x.detach().contiguous().numpy()


def _half_kind(x: Any) -> int:
    """0 for float32/float64, 1 for float16, 2 for bfloat16."""
    if is_torch_array(x):
        import torch

        return {torch.float16: 1, torch.bfloat16: 2}.get(x.dtype, 0)
    return 1 if x.dtype == np.float16 else 0


def _wrap(a: np.ndarray, like: Any, *, half: int = 0) -> Any:
    """``a`` in the library of ``like`` (torch: shares the memory); ``half`` 1 or 2: ``a`` holds
    the bits of float16 or bfloat16 values."""
    if half == 1:
        a = a.view(np.float16)
    if not is_torch_array(like):
        return a
    import torch

    if half == 2:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _cores() -> int:
    """Cores this process may use (its affinity), at most Numba's thread count."""
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(_numba.config.NUMBA_NUM_THREADS, mine))


def _running_threads_of_this_process() -> int:
    """Threads of this process that are running or runnable now (state ``R``), this one included."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        count += stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R"
    return max(1, count)


def _runnable_elsewhere() -> int:
    """Runnable threads (Linux ``procs_running``) that are not this process's own, now."""
    with open("/proc/stat", "rb") as f:
        running = next(int(line.split()[1]) for line in f if line.startswith(b"procs_running"))
    return max(0, running - _running_threads_of_this_process()) if running > 1 else 0


def _cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, CPU seconds of every process, CPU seconds of this process), now."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    busy = sum(int(x) for i, x in enumerate(fields[1:8], 1) if i not in (4, 5)) / _CLK_TCK
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def busy_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> int:
    """Cores other processes kept busy between two :func:`_cpu_seconds` samples, rounded.

    The CPU time of every process minus this process's own (its threads that spin
    after a parallel region count as its own, whatever state they are in at the
    moment of sampling), per second of wall clock.
    """
    wall = after[0] - before[0]
    if wall <= 0:
        return 0
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0, round(others / wall))


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Seconds over which other processes' CPU time is averaged (at least; at most :data:`_STALE`).
_WINDOW = 0.05
#: A window older than this no longer says what runs now: the instantaneous count is used.
_STALE = 1.0
_sample: tuple[float, float, float] | None = None
_busy_cores = 0


def _busy() -> int:
    """Cores busy with other processes now, re-estimated at most every 50 ms; 0 where Linux's
    counters are not available.

    From the CPU time other processes used since the last estimate (50 ms to
    1 s ago): a count of runnable threads at one instant miscounts this
    process's own pool threads that spin, then sleep, while it is read. After a
    longer pause, from the instantaneous count of runnable threads instead.
    """
    global _sample, _busy_cores
    if _sample is not None and time.monotonic() - _sample[0] < _WINDOW:
        return _busy_cores  # (without reading /proc/stat: ~17 us a read on this project's VM)
    try:
        now = _cpu_seconds()
        if _sample is not None and now[0] - _sample[0] <= _STALE:
            _busy_cores = busy_cores(_sample, now)
        else:
            _busy_cores = _runnable_elsewhere()
        _sample = now
    except (OSError, ValueError, StopIteration, IndexError):
        _busy_cores = 0
    return _busy_cores


def _launch(work_bytes: float, items: int) -> int:
    """Set the threads of the next kernel call; return the number of blocks to split it into.

    Threads: no more than the work can keep busy (:data:`WORK_PER_THREAD`),
    than there are items, or than there are cores not busy with other
    work: a parallel region waits for its slowest thread, and a thread that
    shares its core with another process is slow.
    """
    cores = _cores()
    threads = threads_for(cores, _busy() if cores > 1 else 0, work_bytes, items)
    _numba.set_num_threads(threads)
    return int(max(1, min(items, threads * BLOCKS_PER_THREAD))) if threads > 1 else 1


def threads_for(cores: int, busy: int, work_bytes: float, items: int) -> int:
    """Threads for a call: at most the idle cores, one per :data:`WORK_PER_THREAD` bytes, one per item."""
    return int(max(1, min(cores - busy, work_bytes // WORK_PER_THREAD, items)))


def _run(kernel: Any, *args: Any) -> None:
    old = _numba.set_parallel_chunksize(1)  # blocks handed out one at a time
    try:
        kernel(*args)
    finally:
        _numba.set_parallel_chunksize(old)


# ---------------------------------------------------------------- the scores


def prepare_scores(v: np.ndarray, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`shtopk._core.flat.prepare_scores` in one kernel call for float32/float64 NumPy
    scores (the same arrays); None for other dtypes (the neutral one casts them)."""
    _require()
    if v.dtype not in (np.float32, np.float64):
        return None
    v_h = _host(v)
    B, n = v_h.shape
    keep_h = _host(keep) if keep is not None else np.empty((0, 0), bool)
    s, valid, poison = np.empty((B, n), v_h.dtype), np.empty((B, n), bool), np.empty(B, bool)
    if B:
        _run(_kernels.prepare_scores, v_h, keep_h, s, valid, poison, _launch(B * n * v_h.itemsize, B))
    return s, valid, poison


# ---------------------------------------------------------------- the passes over E


def _by_row(B: int, P: int, row_bytes: int) -> bool:
    """Whether the gather-sum should read E in row order (:func:`.numba_kernels.gather_sum_by_row`)
    rather than in plan order: unless rows are long (>= 4 KiB) and slots have many members
    (>= 16), when the plan order streams each member row as well; and only with batch rows
    enough for every thread (it is parallel over batch rows)."""
    return B >= _cores() and not (row_bytes >= 4096 and P >= 16)


#: Rows of half-precision E at least this many bytes are gathered in row order where
#: :func:`_by_row` says so (:func:`.numba_kernels.gather_sum_by_row_half`); shorter ones in plan
#: order. Measured (2-core VM, batch 16, k = 64, float16 and bfloat16): in row order 1.3-1.5x
#: faster at d = 256 and 1.1x at d = 1024, but 1.4-2.2x slower at d = 32 and 64 (its counting
#: sort of the members by row costs more than reading short rows at random); d = 128 either way.
HALF_BY_ROW_BYTES = 512

#: Rows of E up to this many bytes are gathered in the tournament's call even with fewer batch
#: rows than cores (:func:`_fused`).
FUSED_ROW_BYTES = 128


def _fused(B: int, P: int, row_bytes: int, record: bool) -> bool:
    """Whether a forward runs the tournament and the gather-sum in one call
    (:func:`tournament_gather`): where the gather-sum reads E in row order (:func:`_by_row`),
    and, without a record, for short rows of E (at most :data:`FUSED_ROW_BYTES`) whatever
    the batch: the tournament is then most of the work, and the selection, made as a row
    layout, is never written out and scattered again (measured, one batch row of float32
    on 2 cores: n = 10**6, d = 4, k = 64 in 46 against 55 ms; n = 262144, d = 16, k = 2 in
    9.1 against 11.9 ms; at d = 1024, 0.83 against 0.62 ms: there the gather-sum wants
    both threads; with a record, slower and more memory: 121 against 105x the floor)."""
    return _by_row(B, P, row_bytes) or (not record and row_bytes <= FUSED_ROW_BYTES)


def gather_sum(xp: Any, indices: Any, weights: Any, scores: Any, E: Any) -> Any | None:
    """:func:`shtopk._core.apply.neutral_gather_sum` as one kernel call; None (use another
    engine) for indices outside ``[0, n)``."""
    _require()
    B, k, P = indices.shape
    n, d = E.shape[-2], E.shape[-1]
    half = _half_kind(E)
    E_h = _host(E).view(np.uint16) if half else _host(E)
    acc = np.float32 if half else E_h.dtype
    idx = _host(indices, np.int64).reshape(B * k, P)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        return None
    out = np.empty((B * k, d), dtype=E_h.dtype)
    if B * k and d:
        w = _host(weights, acc).reshape(B * k, P)
        skip = (_host(scores) == -math.inf).reshape(B * k)
        row_bytes = d * E_h.itemsize
        if _by_row(B, P, row_bytes) and (not half or row_bytes >= HALF_BY_ROW_BYTES):
            blocks = _launch(B * n * row_bytes, B)  # parallel over batch rows
            kernel = _kernels.gather_sum_by_row_half if half else _kernels.gather_sum_by_row
        else:
            blocks = _launch(B * k * P * row_bytes, B * k)  # over output rows, in plan order
            kernel = _kernels.gather_sum_half if half else _kernels.gather_sum
        _run(kernel, idx, w, skip, E_h, out, blocks, *((half,) if half else ()))
    return _wrap(out.reshape(B, k, d), E, half=half)


def rows_backward(
    xp: Any, d_values: Any, slot_of_row: Any, weight_of_row: Any, E: Any, *, need_dE: bool, need_dw: bool
) -> tuple[Any, Any]:
    """:func:`shtopk._core.apply.neutral_rows_backward`: ``dE`` and ``dw`` in one pass over E."""
    _require()
    B, n, d = E.shape
    half = _half_kind(E)
    E_h = _host(E).view(np.uint16) if half else _host(E)
    acc = np.dtype(np.float32 if half else E_h.dtype)
    dE = np.empty((B, n, d), dtype=E_h.dtype) if need_dE else np.empty((0, 0, 0), dtype=E_h.dtype)
    dw = np.empty((B, n), dtype=acc) if need_dw else np.empty((0, 0), dtype=acc)
    if B * n and d and (need_dE or need_dw):
        dv = _host(d_values, acc)
        slots = _host(slot_of_row, np.int64)
        w = _host(weight_of_row, acc)
        blocks = _launch(B * n * d * E_h.itemsize * (1 + need_dE), B * n)
        if half:
            _run(_kernels.rows_backward_half, dv, slots, w, E_h, dE, dw, need_dE, need_dw, blocks, half)
        else:
            _run(_kernels.rows_backward, dv, slots, w, E_h, dE, dw, need_dE, need_dw, acc.type(0), blocks)
    elif need_dw:
        dw[...] = 0
    return (
        _wrap(dE, E, half=half) if need_dE else None,
        _wrap(dw, E) if need_dw else None,
    )


# ---------------------------------------------------------------- the tournament


def round_columns(m: int, k: int) -> list[tuple[slice, slice]]:
    """Where each round of a tournament over ``m`` (padded) items down to ``k`` lies in the
    arrays of its record, one array per :class:`~shtopk._core.plan.Round` field with the
    rounds side by side: round ``r`` (``M = m >> r`` items, ``M / 2`` pairs) at columns
    ``2m - 2M`` of the per-item fields (``order``, ``sorted_weights``: (B, 2m - 2k)) and
    ``m - M`` of the per-pair fields (B, m - k). Returns ``(per-item columns, per-pair
    columns)`` per round."""
    out = []
    M = m
    while M > k:
        out.append((slice(2 * m - 2 * M, 2 * m - M), slice(m - M, m - M + M // 2)))
        M //= 2
    return out


def _consts(dtype: np.dtype, boost: float, weighting: str) -> np.ndarray:
    """Typed constants of the kernels: 0, 1, -inf, nan, boost, log(boost), the exp cap, the
    largest finite value."""
    power = weighting == "power"
    lb = math.log(boost) if power else 0.0
    big = float(np.finfo(dtype).max)
    return np.array([0.0, 1.0, -math.inf, math.nan, boost, lb, math.log(big) - 1.0, big], dtype=dtype)


#: Bytes of E-like work one item of the tournament counts as, for :func:`_launch` (measured:
#: a float32 row of 4096 scores takes about as long as reading 256 KiB).
TOURNAMENT_BYTES_PER_ITEM = 64


def _padded(s: Any, valid: Any, poison: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Host views of the tournament's inputs, the scores and validity padded to ``m = k 2**R``
    items; and whether any item is invalid or any batch row poisoned."""
    s_h, valid_h, poison_h = _host(s), _host(valid), _host(poison)
    B, n = s_h.shape
    m = k << n_rounds(n, k)
    if m > n:
        s_h = np.concatenate([s_h, np.full((B, m - n), -math.inf, dtype=s_h.dtype)], axis=-1)
        valid_h = np.concatenate([valid_h, np.zeros((B, m - n), dtype=bool)], axis=-1)
    return s_h, valid_h, poison_h, not (bool(valid_h.all()) and not bool(poison_h.any()))


def _row_scratch(
    m: int, n: int, k: int, dt: np.dtype, *, record: bool, gather: bool
) -> list[tuple[tuple[int, ...], Any]]:
    """The layout of the tournament kernel's per-thread scratch, for the threads of the next call."""
    T = _numba.get_num_threads()
    passes = 3 if dt == np.float32 and m < 1 << 32 else 6  # radix passes (float32: packed keys)
    rounds = (T, 0) if record else (T, 2 * m - 2 * k)  # the current row's rounds, unless recorded
    g, gn = ((T, m), (T, n + 1)) if gather else ((T, 0), (T, 0))  # the row's selection, its gather-sum
    return [
        ((T, 3, m), dt),
        ((T, 3, m + 1), np.int64),
        ((T, 3, k), np.int64),
        ((T, 2, m), np.uint64),
        ((T, passes, 1 << _kernels._DIGIT_BITS), np.int32),
        (rounds, np.int64),
        (rounds, dt),
        (g, np.int64),
        (g, dt),
        (gn, np.int64),
        (g, np.int64),
        (g, dt),
    ]


def tournament_gather(
    xp: Any,
    s: Any,
    valid: Any,
    poison: Any,
    E: Any,
    k: int,
    *,
    boost: float,
    weighting: str,
    order: str,
    record: bool = False,
    replay: bool = False,
) -> tuple[Any, Any, Selection | None] | None:
    """``(values, scores, selection)``: :func:`tournament` then :func:`gather_sum` as one
    kernel call, in parallel over batch rows, without writing the plan layout (``indices``,
    ``weights``) to memory; None where the two calls would not read E in row order
    (:func:`_by_row`), for half-precision E, and for E of another dtype than the scores
    (the gather-sum would cast the weights).

    With ``record``, the selection holds the rounds, the row layout and ``inv_perm``
    (what the backward reads) and None for ``indices`` and ``weights``; without, it is None.
    With ``record`` and ``replay`` (the caller's backward takes any selection whose
    ``replay`` is not None to :func:`replay_backward`), where :func:`replays` says so,
    the forward writes no record: the selection holds the scores and, as ``replay``,
    the first round's order of every row (B, m) int32 (4 bytes per item), from which
    :func:`replay_backward` replays the tournament."""
    _require()
    if _half_kind(E) or E.dtype != s.dtype:
        return None
    E_h = _host(E)
    (B, _, d), P = E_h.shape, 1 << n_rounds(s.shape[-1], k)
    saves_first = record and replay and replays(E, s)
    record = record and not saves_first
    if not (B * k and d and _fused(B, P, d * E_h.itemsize, record)):
        return None
    first = _first_order(s, k) if saves_first else None
    sel, fields, out = _run_tournament(
        s, valid, poison, k, boost, weighting, order, record=record, E_h=E_h, first_order=first
    )
    scores = _wrap(sel[2], s)
    recorded = _recorded(None, None, scores, sel[3:], fields, s, k * P, k) if record else None
    if first is not None:
        recorded = Selection(None, None, scores, replay=first)
    return _wrap(out, E), scores, recorded


def _first_order(s: Any, k: int) -> np.ndarray:
    """An array for the first round's order of every row (B, m) of a tournament over ``s``."""
    return np.empty((s.shape[0], k << n_rounds(s.shape[-1], k)), np.int32)


def replays(E: Any, s: Any) -> bool:
    """Whether a forward for a backward that can replay the tournament keeps no record of it:
    for E of the scores' dtype, float32 or float64, and batch rows enough for every thread
    (:func:`replay_backward` is parallel over batch rows).

    The record (about 60 bytes per item: 0.5x the bytes of float32 E at d = 32, 15x at
    d = 1) is written by the forward and read back by the backward; the replay costs a
    second tournament instead, in cache, started from the first round's order (4 bytes
    per item). Measured (2-core VM, n = 4096, k = 64, batch 16, float32, NumPy
    forward+backward): peak extra memory 1.61 -> 1.12x the bytes of E at d = 32, 6.45 ->
    1.85x at d = 4, 19.9 -> 4.4x at d = 1; time, interleaved in one process, 1.02-1.05x
    the record's at d = 32, 0.90x at d = 256, 0.78-0.87x at n = 16384, d = 32.
    """
    return (
        not _half_kind(E)
        and E.dtype == s.dtype
        and s.dtype in (np.float32, np.float64)
        and replay_shape(E.shape[0], s.shape[-1], _cores())
    )


def replay_shape(B: Any, n: Any, cores: int) -> bool:
    """The shape part of :func:`replays`: ``B`` batch rows of ``n`` items on ``cores`` cores
    (plain or symbolic integers: the torch custom op's caller decides by it)."""
    return bool(B >= cores and n <= 1 << 30)  # (the first round's order in int32)


def cores() -> int:
    """The cores the kernels run on (:func:`_cores`; Numba must be installed)."""
    _require()
    return _cores()


def replay_backward(
    xp: Any,
    sel: Selection,
    s: Any,
    valid: Any,
    poison: Any,
    E: Any,
    d_values: Any,
    d_scores: Any,
    k: int,
    *,
    boost: float,
    weighting: str,
    order: str,
    need_dE: bool,
    need_dv: bool,
) -> tuple[Any, Any]:
    """``(dE, dv)`` of successive halving from a selection made to be replayed (its ``replay``,
    see :func:`tournament_gather`): one call of the tournament's kernel
    (:func:`.numba_kernels.tournament` with ``replay``), in parallel over batch rows, that
    replays each row's tournament from its scores (and the first round's order) and runs
    the rows backward and the tournament's backward on it. ``dv`` (B, n) is in the
    scores' dtype (None without ``need_dv``), ``dE`` like E (None without ``need_dE``)."""
    _require()
    s_h, valid_h, poison_h, masked = _padded(s, valid, poison, k)
    E_h = _host(E)
    (B, m), (_, n, d), dt = s_h.shape, E_h.shape, s_h.dtype
    dE = np.empty((B, n, d) if need_dE else (0, 0, 0), dt)
    out = np.empty((B, n) if need_dv else (0, 0), dt)
    if B and (need_dE or need_dv):
        ds = np.zeros((B, k), dt) if d_scores is None else _host(d_scores, dt)
        work = B * (m * TOURNAMENT_BYTES_PER_ITEM + n * d * E_h.itemsize * (1 + need_dE))
        blocks = _launch(work, B)
        none = [np.empty((0, 0), t) for t in (np.int64, dt, dt, dt, dt, dt, dt, dt, np.bool_)]  # no record
        buffers = scratch(_replay_scratch(m, n, k, dt))
        _run(
            _kernels.tournament,
            s_h,
            valid_h,
            poison_h,
            k,
            _consts(dt, boost, weighting),
            weighting == "power",
            order == "input",
            masked,
            False,
            *none,
            np.empty((0, m), np.int64),  # no selection
            np.empty((0, m), dt),
            *(np.empty((0, 0), t) for t in (dt, np.int64, dt, np.int64)),
            sel.replay,
            E_h,
            np.empty((0, 0, 0), dt),
            *buffers[:-3],
            True,
            _backward_consts(dt, boost, weighting),
            _host(d_values, dt),
            ds,
            dE,
            out,
            need_dE,
            need_dv,
            *buffers[-3:],
            blocks,
        )
    return (_wrap(dE, E) if need_dE else None), (_wrap(out, s) if need_dv else None)


def _replay_scratch(m: int, n: int, k: int, dt: np.dtype) -> list[tuple[tuple[int, ...], Any]]:
    """The layout of :func:`replay_backward`'s scratch: the tournament's per-thread buffers
    (:func:`_row_scratch`, without the rounds, which the replay records), then one row per
    thread of the scores' dtype, int64 and bool, as wide as
    :func:`.numba_kernels._replay_views` carves them (one batch row of the record and of
    the selection, the tournament backward's buffer)."""
    T = _numba.get_num_threads()
    P = m - k  # the record's pairs
    return [
        *_row_scratch(m, n, k, dt, record=True, gather=False),
        ((T, 8 * P + m + k + n + 7 * m), dt),
        ((T, 2 * P + m + n + k), np.int64),
        ((T, P), np.bool_),
    ]


def tournament(
    xp: Any,
    s: Any,
    valid: Any,
    poison: Any,
    k: int,
    *,
    boost: float,
    weighting: str,
    order: str,
    record: bool = False,
    replay: bool = False,
) -> Selection:
    """:func:`shtopk._core.plan.tournament`: the first round's sort, every round, the expansion,
    the final order and the row layout in one kernel call, in parallel over batch rows.

    Without ``record`` the selection has no rounds (:class:`~shtopk._core.plan.Selection`
    promises them only with it): the kernel keeps them in per-thread scratch, and a
    forward allocates only its selection; with ``replay`` instead, its ``replay`` holds
    the first round's order of every row (B, m) int32, for :func:`replay_backward`."""
    _require()
    first = _first_order(s, k) if replay and not record else None
    (indices, weights, scores, slot_of_row, weight_of_row, inv_perm), fields, _ = _run_tournament(
        s, valid, poison, k, boost, weighting, order, record=record, E_h=None, first_order=first
    )
    if not record:
        return Selection(_wrap(indices, s), _wrap(weights, s), _wrap(scores, s), replay=first)
    m = indices.shape[1] * indices.shape[2]
    rows = (slot_of_row, weight_of_row, inv_perm)
    return _recorded(_wrap(indices, s), _wrap(weights, s), _wrap(scores, s), rows, fields, s, m, k)


def _recorded(
    indices: Any,
    weights: Any,
    scores: Any,
    rows: Sequence[np.ndarray],
    fields: list[np.ndarray],
    like: Any,
    m: int,
    k: int,
) -> Selection:
    """A recorded :class:`~shtopk._core.plan.Selection` of the kernel's arrays, in the library of
    ``like``: ``rows`` are ``slot_of_row``, ``weight_of_row``, ``inv_perm``; the rounds are views
    of ``fields`` (:func:`round_columns` over ``m`` padded items)."""
    rounds = [
        Round(*(_wrap(a[:, cols_full if i < 2 else cols_half], like) for i, a in enumerate(fields)))
        for cols_full, cols_half in round_columns(m, k)
    ]
    slot_of_row, weight_of_row, inv_perm = (_wrap(a, like) for a in rows)
    columns = tuple(_wrap(a, like) for a in fields)
    return Selection(indices, weights, scores, slot_of_row, weight_of_row, rounds, inv_perm, columns)


def _run_tournament(
    s: Any,
    valid: Any,
    poison: Any,
    k: int,
    boost: float,
    weighting: str,
    order: str,
    *,
    record: bool,
    E_h: np.ndarray | None,
    first_order: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """One call of :func:`.numba_kernels.tournament`; with ``E_h`` (B, n, d) of the scores'
    dtype, fused with the gather-sum (then the selection is not written: ``indices`` and
    ``weights`` are empty). Returns ``([indices (B, k, P), weights, scores (B, k),
    slot_of_row, weight_of_row, inv_perm], the record's fields (one array per
    :class:`~shtopk._core.plan.Round` field, rounds side by side), out (B, k, d))``;
    the row layout and the record are empty without ``record``. ``first_order`` (B, m)
    int32 takes the first round's order of each row (for :func:`replay_backward`)."""
    s_h, valid_h, poison_h, masked = _padded(s, valid, poison, k)
    (B, m), n, dt = s_h.shape, s.shape[-1], s_h.dtype
    P = m // k
    gather = E_h is not None
    # the rounds' record (B, 2m - 2k) per item, (B, m - k) per pair: only when recording
    full, half = ((B, 2 * m - 2 * k), (B, m - k)) if record else ((0, 0), (0, 0))
    fields = [np.empty(full, np.int64), np.empty(full, dt), *(np.empty(half, dt) for _ in range(6))]
    fields.append(np.empty(half, bool))
    sel_shape = (0, k, P) if gather else (B, k, P)
    rows = (B, n) if record else (0, 0)
    selection = [
        np.empty(sel_shape, np.int64),
        np.empty(sel_shape, dt),
        np.empty((B, k), dt),
        np.empty(rows, np.int64),
        np.empty(rows, dt),
        np.empty((B, k) if record else (0, 0), np.int64),
    ]
    out = np.empty((B, k, E_h.shape[-1]) if E_h is not None else (0, 0, 0), dt)
    if B:
        work = B * m * TOURNAMENT_BYTES_PER_ITEM
        blocks = _launch(max(work, E_h.nbytes) if E_h is not None else work, B)
        _run(
            _kernels.tournament,
            s_h,
            valid_h,
            poison_h,
            k,
            _consts(dt, boost, weighting),
            weighting == "power",
            order == "input",
            masked,
            record,
            *fields,
            selection[0].reshape(-1, m),
            selection[1].reshape(-1, m),
            *selection[2:],
            first_order if first_order is not None else np.empty((0, 0), np.int32),
            E_h if E_h is not None else np.empty((0, 0, 0), dt),
            out,
            *scratch(_row_scratch(m, n, k, dt, record=record, gather=gather)),
            False,  # no replay: its arrays empty
            np.empty(0, dt),
            np.empty((0, 0, 0), dt),
            np.empty((0, 0), dt),
            np.empty((0, 0, 0), dt),
            np.empty((0, 0), dt),
            False,
            False,
            np.empty((0, 0), dt),
            np.empty((0, 0), np.int64),
            np.empty((0, 0), np.bool_),
            blocks,
        )
    return selection, fields, out


#: A thread's kernel scratch up to this size is kept for its next call (see :func:`scratch`).
SCRATCH_KEPT_BYTES = 8 << 20

_kept = threading.local()


def scratch(layout: list[tuple[tuple[int, ...], Any]]) -> list[np.ndarray]:
    """Empty C-contiguous arrays of these (shape, dtype) for a kernel's scratch, carved out
    of one block.

    Fresh memory is costly: each new 4 KiB page faults (measured ~1.7 us on this
    project's VM, ~0.3 us on bare metal), which for a tournament over 16k-item rows
    cost as much as the tournament itself. So a block of at most
    :data:`SCRATCH_KEPT_BYTES` is kept for the calling thread's next call (scratch
    only: nothing returned to a caller lives in it, and no kernel call re-enters
    another). A larger block is allocated per call, in one NumPy allocation, which
    NumPy maps on huge pages from 4 MiB on (56 MB faulted in 25 ms in small
    pages, 5 ms in huge ones).
    """
    key = tuple(layout)
    block = getattr(_kept, "block", None)
    kept = getattr(_kept, "views", {})  # views of the kept block, by layout
    if key in kept:
        return kept[key]  # a layout of one of the thread's last calls: the same views
    sizes = [math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in layout]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // 64) * 64)  # 64-byte aligned
    total = starts[-1]
    if block is None or block.size < total:
        raw = np.empty(total + 64, np.uint8)
        block = raw[-raw.ctypes.data % 64 :][:total]  # 64-byte aligned (a cache line)
        if total <= SCRATCH_KEPT_BYTES:
            _kept.block = block
            kept = _kept.views = {}  # (the views of the smaller block go with it)
    out = [
        block[start : start + size].view(dtype).reshape(shape)
        for (shape, dtype), start, size in zip(layout, starts, sizes, strict=False)
    ]
    if block is getattr(_kept, "block", None):
        if len(kept) >= _KEPT_LAYOUTS:
            del kept[next(iter(kept))]  # the oldest
        _kept.views = kept
        kept[key] = out
    return out


#: Layouts whose views a thread keeps (a forward and a backward alternate theirs).
_KEPT_LAYOUTS = 4


def stacked(blocks: list[Any], dtype: Any = None) -> np.ndarray:
    """The rounds' (B, M_r) blocks of one field side by side (:func:`round_columns`): the array
    :func:`tournament` wrote them into when they are its views (of ``dtype``), else a copy."""
    first = blocks[0]
    base = first.base if isinstance(first, np.ndarray) else None
    width = sum(x.shape[-1] for x in blocks)
    if (
        isinstance(base, np.ndarray)
        and base.shape == (first.shape[0], width)
        and (dtype is None or base.dtype == dtype)
        and base.flags.c_contiguous
        and first.__array_interface__["data"][0] == base.__array_interface__["data"][0]
        and all(isinstance(x, np.ndarray) and x.base is base for x in blocks)
    ):
        return base
    return np.concatenate([_host(x, dtype) for x in blocks], axis=-1)


def _backward_consts(dtype: np.dtype, boost: float, weighting: str) -> np.ndarray:
    """Typed constants of the tournament's backward: 0, the largest finite value, boost, ln b,
    ln ln b, the exp caps of the power weighting, a quarter of the largest value, 1."""
    big = float(np.finfo(dtype).max)
    lb = llb = cap = cap_g = 0.0
    if weighting == "power":
        lb = math.log(boost)
        llb = math.log(lb)
        cap = math.log(big) - max(0.0, llb) - 1.0
        cap_g = math.log(big) - 1.0
    return np.array([0.0, big, boost, lb, llb, cap, cap_g, big / 4, 1.0], dtype=dtype)


def tournament_backward(xp: Any, sel: Selection, dw_items: Any, d_scores: Any, boost: float, weighting: str) -> Any:
    """:func:`shtopk._core.plan_backward.neutral_tournament_backward` in one kernel call, in
    parallel over batch rows (the same saturating formulas, in the scores' dtype)."""
    _require()
    if not sel.rounds:
        return d_scores
    dw_h = _host(dw_items)
    dt = dw_h.dtype
    if dt not in (np.float32, np.float64):
        rounds = [
            Round(*(None if x is None else _host(x) for x in (getattr(rd, f.name) for f in dataclasses.fields(rd))))
            for rd in sel.rounds
        ]
        out = neutral_tournament_backward(
            np, dataclasses.replace(sel, rounds=rounds), dw_h, _host(d_scores, dt), boost, weighting
        )
        return _wrap(np.ascontiguousarray(out), dw_items)
    B, m = dw_h.shape
    out = np.empty((B, m), dt)
    blocks = _launch(B * m * TOURNAMENT_BYTES_PER_ITEM, B)
    consts = _backward_consts(dt, boost, weighting)
    fields = backward_fields(round_fields(sel, B, dt))
    _run(_kernels.tournament_backward, *fields, dw_h, _host(d_scores, dt), consts, weighting == "power", out, blocks)
    return _wrap(out, dw_items)


#: The fields of a :class:`~shtopk._core.plan.Round`, in order, and the dtypes of those that
#: are not scores.
ROUND_FIELDS = tuple(f.name for f in dataclasses.fields(Round))
_FIELD_DTYPES = {"order": np.dtype(np.int64), "lo_valid": np.dtype(np.bool_)}


def round_fields(sel: Selection, B: int, dt: np.dtype) -> list[np.ndarray]:
    """A recorded selection's :class:`~shtopk._core.plan.Round` fields as the backward kernels
    read them (and the torch op saves them): one host array per field, the rounds side by
    side (:func:`round_columns`; (B, 0) without rounds), scores in ``dt``: its ``columns``
    when it has them, of these dtypes."""
    if sel.columns is not None:
        columns = [_host(c) for c in sel.columns]
        if all(c.dtype == _FIELD_DTYPES.get(name, dt) for c, name in zip(columns, ROUND_FIELDS, strict=True)):
            return columns
    if not sel.rounds:
        return [np.empty((B, 0), _FIELD_DTYPES.get(name, dt)) for name in ROUND_FIELDS]
    return [stacked([getattr(rd, name) for rd in sel.rounds], _FIELD_DTYPES.get(name, dt)) for name in ROUND_FIELDS]


def backward_fields(fields: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Of :func:`round_fields`, those the backward kernels read: all but ``w_hi``/``w_lo``, which
    repeat ``sorted_weights`` pair by pair (the kernels read the pairs' weights there)."""
    return [f for f, name in zip(fields, ROUND_FIELDS, strict=True) if name not in ("w_hi", "w_lo")]


def score_cotangents(
    xp: Any, sel: Selection, dw: Any, d_scores: Any, valid: Any, poison: Any, boost: float, weighting: str
) -> Any | None:
    """The score cotangents (B, n) of a recorded successive-halving selection from its rows'
    weight cotangents ``dw`` (B, n) and its slots' score cotangents ``d_scores`` (B, k), in
    one kernel call (:func:`.numba_kernels.score_cotangents`: the tournament's backward with
    the steps around it of :func:`shtopk._backward.selection_backward`), in the dtype of
    ``d_scores``; None unless that is float32 or float64."""
    _require()
    ds_h = _host(d_scores)
    dt = ds_h.dtype
    if dt not in (np.float32, np.float64):
        return None
    dw_h = _host(dw)
    B, n = dw_h.shape
    fields = backward_fields(round_fields(sel, B, dt))
    m = fields[0].shape[1] // 2 + ds_h.shape[1]
    out = np.empty((B, n), dt)
    if B:
        _run(
            _kernels.score_cotangents,
            *fields,
            dw_h,
            _host(valid),
            _host(poison),
            ds_h,
            _host(sel.inv_perm, np.int64),
            _backward_consts(dt, boost, weighting),
            weighting == "power",
            out,
            _launch(B * m * TOURNAMENT_BYTES_PER_ITEM, B),
        )
    return _wrap(out, d_scores)
