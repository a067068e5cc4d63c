"""Launch the Triton kernels (:mod:`.triton_kernels`) on torch CUDA tensors and CuPy arrays.

Each function has the signature of its neutral counterpart in
:mod:`shtopk._core` and returns the same values (indices exactly, floats to
rounding). Nothing here waits for the device: every size is known on the
host, and every launch goes to the current stream of the arrays' library
(torch's for tensors, CuPy's for CuPy arrays) on the arrays' device.

Triton takes any argument with ``data_ptr()`` and ``dtype``, so a CuPy array
travels in a thin wrapper; Triton looks up the device and stream through
torch when torch is installed, so CuPy launches swap in CuPy's for their
duration. Under Triton's interpreter the same functions run on torch CPU
tensors (the tests do so).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from .._array_api import device, is_cupy_array, is_torch_array
from .._core.finite import finite_gap
from .._core.flat import nan_factor
from .._core.plan import Round, Selection, n_rounds
from .._fast import argsort_descending, inverse_permutation, take_along_last


def kernels() -> ModuleType:
    """The module of compiled kernels (imported on first use: importing Triton is slow)."""
    from . import triton_kernels

    return triton_kernels


class _Rounds(list):
    """The rounds of a Triton plan (a list of :class:`~shtopk._core.plan.Round`, as the
    neutral backward takes them) and the buffers they are views of, for
    :func:`tournament_backward`."""

    def __init__(self, rounds: list[Round], records: tuple[Any, ...]) -> None:
        super().__init__(rounds)
        self.records = records


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


class _CupyPointer:
    """What Triton reads of an array argument: its address and dtype."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: Any) -> None:
        self.array = array
        self.dtype = array.dtype

    def data_ptr(self) -> int:
        return int(self.array.data.ptr)


@contextlib.contextmanager
def _cupy_launch(array: Any) -> Iterator[None]:
    """Launch on ``array``'s device and CuPy's current stream there."""
    import cupy
    from triton.runtime import driver

    active = driver.active
    dev = int(array.device.id)
    saved = (active.get_current_device, active.get_current_stream)
    active.get_current_device = lambda: dev
    active.get_current_stream = lambda *_: cupy.cuda.get_current_stream().ptr
    try:
        with cupy.cuda.Device(dev):
            yield
    finally:
        active.get_current_device, active.get_current_stream = saved


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` on the arrays' device and stream (no launch for an empty grid).

    Compiled without FMA contraction: the plan's merged scores then round as
    the neutral core's do, which keeps near-ties in the next round's sort in
    the same order.
    """
    if math.prod(grid) == 0:
        return
    meta.setdefault("enable_fp_fusion", False)
    first = next(a for a in args if is_cupy_array(a) or is_torch_array(a))
    if is_cupy_array(first):
        with _cupy_launch(first):
            kernel[grid](*(_CupyPointer(a) if is_cupy_array(a) else a for a in args), **meta)
    elif first.device.type == "cuda":
        import torch

        with torch.cuda.device(first.device):
            kernel[grid](*args, **meta)
    else:  # torch CPU tensors: Triton's interpreter
        kernel[grid](*args, **meta)


def _compiled(x: Any) -> bool:
    """Whether kernels on ``x`` are compiled (GPU arrays), not interpreted (torch CPU
    tensors): compiled kernels use CUDA's libdevice ``exp``/``log``, as torch and
    CuPy do, rather than Triton's faster approximations, so that the plan's weights
    and merged scores round as the neutral core's do on the same GPU."""
    return not (is_torch_array(x) and x.device.type == "cpu")


def _contiguous(x: Any) -> Any:
    if is_cupy_array(x):
        import cupy

        return cupy.ascontiguousarray(x)
    return x.contiguous()


#: Launch shapes of the gather-sum: a tile of at most this many elements of E per
#: step, and members split over programs until there are about this many programs
#: (untuned: no GPU was available).
GATHER_TILE = 4096
GATHER_PROGRAMS = 1024


def _gather_shape(S: int, P: int, d: int) -> tuple[int, int, int]:
    """``(BLOCK_P, BLOCK_D, chunks)`` of a gather-sum of ``S`` slots of ``P`` rows of length ``d``."""
    block_d = min(256, max(16, _pow2(d)), max(16, GATHER_TILE))
    while block_d > 32 and S * -(-d // block_d) < GATHER_PROGRAMS:  # narrower columns, more programs
        block_d //= 2
    block_p = min(_pow2(P), max(1, GATHER_TILE // block_d))
    programs = S * -(-d // block_d)
    chunks = max(1, min(-(-P // block_p), -(-GATHER_PROGRAMS // max(1, programs))))
    return block_p, block_d, chunks


def gather_sum(xp: Any, indices: Any, weights: Any, scores: Any, E: Any) -> Any:
    """See :func:`shtopk._core.apply.neutral_gather_sum`."""
    B, k, P = indices.shape
    n, d = E.shape[-2], E.shape[-1]
    block_p, block_d, chunks = _gather_shape(B * k, P, d)
    p_chunk = -(-P // chunks)
    p_chunk = -(-p_chunk // block_p) * block_p
    chunks = -(-P // p_chunk)
    if chunks == 1:
        out = xp.empty((B, k, d), dtype=E.dtype, device=device(E))
    else:  # float32 partial sums of the member chunks, added below
        out = xp.empty((chunks, B, k, d), dtype=xp.float32, device=device(E))
    _launch(
        kernels().gather_sum_kernel,
        (B * k, -(-d // block_d), chunks),
        _contiguous(indices),
        _contiguous(weights),
        _contiguous(scores),
        _contiguous(E),
        out,
        k,
        P,
        n,
        d,
        p_chunk,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
    )
    if chunks == 1:
        return out
    return xp.astype(xp.sum(out, axis=0), E.dtype)


def rows_backward(
    xp: Any, d_values: Any, slot_of_row: Any, weight_of_row: Any, E: Any, *, need_dE: bool, need_dw: bool
) -> tuple[Any, Any]:
    """See :func:`shtopk._core.apply.neutral_rows_backward`."""
    B, n, d = E.shape
    k = d_values.shape[-2]
    dev = device(E)
    dE = xp.empty((B, n, d), dtype=E.dtype, device=dev) if need_dE else None
    dw = xp.empty((B, n), dtype=xp.float32, device=dev) if need_dw else None
    if not (need_dE or need_dw):
        return None, None
    E = _contiguous(E)
    block_d = min(128, max(16, _pow2(d)))
    block_r = max(1, 1024 // block_d)  # 2048-element tiles took 214 registers (ptxas, sm_90)
    _launch(
        kernels().rows_backward_kernel,
        (-(-(B * n) // block_r),),
        _contiguous(d_values),
        _contiguous(slot_of_row),
        _contiguous(weight_of_row),
        E,
        E if dE is None else dE,
        weight_of_row if dw is None else dw,
        B * n,
        n,
        k,
        d,
        NEED_DE=need_dE,
        NEED_DW=need_dw,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
    )
    return dE, dw


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
) -> Selection:
    """See :func:`shtopk._core.plan.tournament`; ``s`` must be float32.

    Rows of up to :data:`.triton_kernels.MAX_ROW_BLOCK` padded items run all
    their rounds in one program; longer rows sort each round with the
    library's stable argsort and pair and merge it in one launch, until
    the halved rows fit one program.
    """
    K = kernels()
    B, n = s.shape
    dev = device(s)
    R = n_rounds(n, k)
    P = 1 << R
    m = k * P
    f32, i64 = xp.float32, xp.int64
    power = weighting == "power"
    log_boost = math.log(boost) if power else 0.0
    s = _contiguous(s)

    order_all = xp.empty((B, 2 * m), dtype=i64, device=dev)  # round r at 2m - 2M, M = m >> r
    sw_all = xp.empty((B, 2 * m), dtype=f32, device=dev)
    if record:  # per pair, round r at m - M
        w_hi, w_lo, s_hi, s_lo, t = (xp.empty((B, m), dtype=f32, device=dev) for _ in range(5))
        lo_valid = xp.empty((B, m), dtype=xp.int8, device=dev)
    else:
        w_hi = w_lo = s_hi = s_lo = t = lo_valid = sw_all  # not written
    records = (order_all, sw_all, w_hi, w_lo, s_hi, s_lo, t, lo_valid)
    final = xp.empty((B, k), dtype=f32, device=dev)

    # Rounds of rows too long for one program: the library's stable argsort, then one
    # launch that pairs and merges; the rows halve every round, and once they fit, one
    # program per row runs all remaining rounds.
    cur, r = s, 0
    while r < R and max(16, _pow2(m >> r)) > K.MAX_ROW_BLOCK:
        M = m >> r
        if r == 0 and m > n:
            cur = xp.concat([s, xp.full((B, m - n), -math.inf, dtype=f32, device=dev)], axis=-1)
        nxt = xp.empty((B, M // 2), dtype=f32, device=dev)
        block_r = min(1024, _pow2(M // 2))
        _launch(
            K.plan_round_kernel,
            (B, -(-(M // 2) // block_r)),
            cur,
            _contiguous(argsort_descending(xp, cur, nearly_sorted=r > 0)),
            nxt,
            M,
            m,
            boost,
            log_boost,
            *records,
            POWER=power,
            PRECISE=_compiled(s),
            RECORD=record,
            BLOCK=block_r,
        )
        cur, r = nxt, r + 1
    M = m >> r
    block = max(16, _pow2(M))
    if block <= K.MAX_ROW_BLOCK:
        perm = xp.empty((B, k), dtype=i64, device=dev)
        s_sorted = xp.empty((B, k), dtype=f32, device=dev)
        workspace = xp.empty((B, block), dtype=i64, device=dev)
        _launch(
            K.plan_rows_kernel,
            (B,),
            cur,
            cur.shape[-1],
            M,
            m,
            k,
            R - r,
            boost,
            log_boost,
            workspace,
            *records,
            final,
            perm,
            s_sorted,
            POWER=power,
            PRECISE=_compiled(s),
            RECORD=record,
            SORT_SLOTS=order == "score",
            BLOCK=block,
            num_warps=4 if block <= 512 else 8,  # 1024 items at 4 warps spilled (ptxas, sm_90)
        )
    else:  # k itself is too large for one program: no rounds are left
        final = _contiguous(cur)
        if order == "score":
            perm = _contiguous(argsort_descending(xp, final, nearly_sorted=R > 0))
            s_sorted = take_along_last(xp, final, perm)

    valid8 = _contiguous(xp.astype(valid, xp.int8))
    poison8 = _contiguous(xp.astype(poison, xp.int8))
    block_e = min(1024, max(16, _pow2(m)))

    def expand(slots: Any, *, mask: bool, rows: tuple[Any, Any]) -> tuple[Any, Any]:
        ids = xp.empty((B, k, P), dtype=i64, device=dev)
        weights = xp.empty((B, k, P), dtype=f32, device=dev)
        _launch(
            K.expand_kernel,
            (B, -(-m // block_e)),
            slots,
            order_all,
            sw_all,
            final,
            valid8,
            poison8,
            ids,
            weights,
            *rows,
            n,
            m,
            k,
            R,
            MASK=mask,
            RECORD=mask and record,
            BLOCK=block_e,
        )
        return ids, weights

    if order != "score":  # input order: each slot's place is its most important valid member's index
        slots = xp.zeros((B, k), dtype=i64, device=dev) + xp.arange(k, dtype=i64, device=dev)
        ids, weights = expand(slots, mask=False, rows=(slots, final))
        valid_m = valid
        if m > n:
            valid_m = xp.concat([valid, xp.zeros((B, m - n), dtype=xp.bool, device=dev)], axis=-1)
        member_valid = xp.reshape(take_along_last(xp, valid_m, xp.reshape(ids, (B, m))), (B, k, P))
        weights = weights * xp.astype(member_valid, f32)
        top_w = xp.max(weights, axis=-1, keepdims=True)
        candidates = xp.where(member_valid & (weights == top_w), ids, m)
        key = xp.where(final > -math.inf, xp.min(candidates, axis=-1), m)
        perm = _contiguous(xp.argsort(key, axis=-1, stable=True))
        s_sorted = take_along_last(xp, final, perm)

    if record:
        rows = (xp.empty((B, n), dtype=i64, device=dev), xp.empty((B, n), dtype=f32, device=dev))
    else:
        rows = (perm, final)  # not written
    indices, weights = expand(perm, mask=True, rows=rows)
    scores = s_sorted * nan_factor(xp, poison, f32)[:, None]
    if not record:
        return Selection(indices, weights, scores)
    gap = finite_gap(xp, s_hi, s_lo)  # the neutral core's recorded gap, exactly
    lo_valid_bool = lo_valid != 0
    rounds = _Rounds([], (*records, gap))
    for r in range(R):
        M = m >> r
        a, h = 2 * m - 2 * M, m - M
        pairs = slice(h, h + M // 2)
        rounds.append(
            Round(
                order_all[:, a : a + M],
                sw_all[:, a : a + M],
                w_hi[:, pairs],
                w_lo[:, pairs],
                s_hi[:, pairs],
                s_lo[:, pairs],
                gap[:, pairs],
                t[:, pairs],
                lo_valid_bool[:, pairs],
            )
        )
    return Selection(indices, weights, scores, rows[0], rows[1], rounds, inverse_permutation(xp, perm))


def backward_reads(sel: Selection) -> bool:
    """Whether the Triton backward reads ``sel``'s rounds: a recorded plan of
    :func:`tournament`, or any recorded rounds with the fields of the neutral
    :class:`~shtopk._core.plan.Round` (e.g. a plan that the torch custom op
    saved and unpacked for its backward, or the neutral core's)."""
    return isinstance(sel.rounds, _Rounds) or all(rd.t is not None for rd in sel.rounds)


#: The per-pair fields of a :class:`~shtopk._core.plan.Round`, in the order of the records.
_PAIR_FIELDS = ("w_hi", "w_lo", "s_hi", "s_lo", "t", "lo_valid", "gap")


def _records(xp: Any, sel: Selection, B: int, m: int, dev: Any) -> tuple[Any, ...]:
    """The buffers :func:`.triton_kernels.tournament_backward_kernel` reads: ``(order,
    sorted_weights)`` (B, 2m) with round r at ``2m - 2M``, the per-pair fields (B, m) with
    round r at ``m - M`` (``M = m >> r``), as :func:`tournament` writes them; from the
    rounds of any recorded selection (one copy of its O(m) numbers per row)."""
    if isinstance(sel.rounds, _Rounds):
        return sel.rounds.records

    def laid_out(parts: list[Any], width: int, dtype: Any) -> Any:
        pad = xp.zeros((B, width - sum(p.shape[-1] for p in parts)), dtype=dtype, device=dev)
        return _contiguous(xp.concat([*(xp.astype(p, dtype) for p in parts), pad], axis=-1))

    full = [laid_out([rd.order for rd in sel.rounds], 2 * m, xp.int64)]
    full.append(laid_out([rd.sorted_weights for rd in sel.rounds], 2 * m, xp.float32))
    for name in _PAIR_FIELDS:
        dtype = xp.int8 if name == "lo_valid" else xp.float32
        full.append(laid_out([getattr(rd, name) for rd in sel.rounds], m, dtype))
    return tuple(full)


def tournament_backward(xp: Any, sel: Selection, dw_items: Any, d_scores: Any, boost: float, weighting: str) -> Any:
    """See :func:`shtopk._core.plan_backward.neutral_tournament_backward`; ``sel`` must
    be a recorded selection whose rounds :func:`backward_reads` accepts, the cotangents
    in float32."""
    B, m = dw_items.shape
    k = d_scores.shape[-1]
    R = len(sel.rounds)
    dev = device(dw_items)
    power = weighting == "power"
    log_boost = math.log(boost) if power else 0.0
    log_log_boost = math.log(log_boost) if power else 0.0
    grad_cap = _power_grad_cap(log_boost) if power else 0.0
    out = xp.empty((B, m), dtype=xp.float32, device=dev)
    workspace = xp.empty((B, 4 * m), dtype=xp.float32, device=dev)
    dq = xp.empty((B, m), dtype=xp.float32, device=dev)
    _launch(
        kernels().tournament_backward_kernel,
        (B,),
        _contiguous(dw_items),
        _contiguous(d_scores),
        out,
        workspace,
        dq,
        *_records(xp, sel, B, m, dev),
        m,
        k,
        R,
        boost,
        log_boost,
        log_log_boost,
        grad_cap,
        POWER=power,
        PRECISE=_compiled(dw_items),
        BLOCK=min(kernels().BACKWARD_BLOCK, max(16, _pow2(m))),
        num_warps=8,  # 4 warps took 250 registers for blocks of 1024 (ptxas, sm_90)
    )
    return out


def _power_grad_cap(log_boost: float) -> float:
    """The clip of the power weighting's score gradient, as in the neutral backward (float32)."""
    return math.log(3.4028234663852886e38) - max(0.0, math.log(log_boost)) - 1.0
