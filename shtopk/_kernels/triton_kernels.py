"""The GPU kernels, written once in Triton (launched by :mod:`.triton_ops`).

Every kernel mirrors a neutral counterpart in :mod:`shtopk._core` (the same
formulas, float32 arithmetic):

``plan_rows_kernel``
    All rounds of the tournament of one batch row in one program: each round
    sorts packed ``(score, position)`` keys with ``tl.sort`` (stable and
    descending by construction), pairs sorted place ``i`` with ``M - 1 - i``
    (the lo member read back from a per-row workspace) and merges the pairs
    (:func:`shtopk._core.plan.pair_weights`). For rows up to
    :data:`MAX_ROW_BLOCK` items.
``plan_round_kernel``
    One round for rows that do not fit one program: the pairing and merge of
    a round whose sort order the caller computed.
``expand_kernel``
    The top-down expansion of the final slots into their members, the
    masking of padded, masked and poisoned members, and the row layout the
    backward pass needs.
``gather_sum_kernel``
    The apply: one weighted gather-sum, reading each selected row of E once
    (slots with many members split them over several programs, whose
    float32 partial sums the caller adds).
``rows_backward_kernel``
    The backward of the apply in row layout: every row of E is read once and
    its ``dE`` row written once (no two programs touch one row).

Everything per pair works on blocks (no scalar compare folded into a block
mask, no ``tl.flip``, no reassigned constexpr), so the kernels run unchanged
under Triton's interpreter (``TRITON_INTERPRET=1``), which the CPU tests use.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from triton.language.extra import libdevice

#: The largest padded row (a power of two) that one program sorts in one block.
#: Compiled for sm_90 (``triton.compile`` and ``ptxas -v``, no GPU needed), a plan
#: of 2048 items uses 198 registers at 8 warps without spills; 4096 items spill
#: (255 registers and 80 bytes at 8 warps). A longer row first halves in
#: per-round launches (one for a row of 4096). Unmeasured on a GPU.
MAX_ROW_BLOCK = 2048

#: ``log(finfo(float32).max) - 1``, the clip of the power weighting (as in ``pair_gap``).
POWER_CAP = math.log(3.4028234663852886e38) - 1.0

#: Pairs per step of the tournament backward, which walks each round of a row in such blocks.
BACKWARD_BLOCK = 1024

#: The largest finite float32 (as ``finfo(float32).max``), where the backward's cotangents saturate.
FLOAT32_MAX = 3.4028234663852886e38

_ABSENT = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # the key of places past the round's groups: sorts last
_CAP = tl.constexpr(POWER_CAP)
_BIG = tl.constexpr(FLOAT32_MAX)
_QUARTER_BIG = tl.constexpr(FLOAT32_MAX / 4)


@triton.jit
def _pack(s, place, present):
    """Keys whose ascending order is ``s`` descending, then ``place`` ascending
    (a stable descending sort); signed zeros tie."""
    bits = s.to(tl.int32, bitcast=True)
    bits = tl.where(s == 0.0, 0, bits)
    ascending = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = ((~ascending).to(tl.int64) << 32) | place.to(tl.int64)
    return tl.where(present, key, _ABSENT)


@triton.jit
def _unpack(key):
    """The score and the place packed into ``key`` by :func:`_pack`."""
    ascending = ~((key >> 32).to(tl.int32))
    bits = tl.where(ascending < 0, ascending ^ 0x7FFFFFFF, ascending)
    return bits.to(tl.float32, bitcast=True), (key & 0xFFFFFFFF).to(tl.int64)


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    """``exp``: CUDA's ``expf`` (as torch and CuPy use) when compiled, NumPy's in the interpreter."""
    if PRECISE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _log(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _log1p(y, PRECISE: tl.constexpr):
    """``log(1 + y)`` for ``y >= 0``; in the interpreter from ``log`` (accurate for small ``y``)."""
    if PRECISE:
        return libdevice.log1p(y)
    else:
        u = 1.0 + y
        return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _one_minus_exp_neg(x, PRECISE: tl.constexpr):
    """``-expm1(-x)`` for ``x > 0``; in the interpreter a Taylor series where ``1 - exp(-x)`` would cancel."""
    if PRECISE:
        return -libdevice.expm1(-x)
    else:
        series = x * (
            1.0
            - x
            * (
                0.5
                - x
                * (
                    1.0 / 6.0
                    - x * (1.0 / 24.0 - x * (1.0 / 120.0 - x * (1.0 / 720.0 - x * (1.0 / 5040.0 - x / 40320.0))))
                )
            )
        )
        return tl.where(x < 0.5, series, 1.0 - tl.exp(-x))


@triton.jit
def _pair(s_hi, s_lo, boost, log_boost, POWER: tl.constexpr, PRECISE: tl.constexpr):
    """:func:`shtopk._core.plan.pair_weights` (the general branch) for blocks of pairs."""
    hi_valid = s_hi > float("-inf")
    lo_valid = s_lo > float("-inf")
    s_hi0 = tl.where(hi_valid, s_hi, 0.0)
    hi_inf = s_hi0 == float("inf")
    s_lo0 = tl.where(lo_valid, s_lo, tl.where(hi_inf, 0.0, s_hi0))
    both_inf = hi_inf & (s_hi0 == s_lo0)  # +inf vs +inf: a tie, t = 0
    a = tl.where(both_inf, 0.0, s_hi0)
    c = tl.where(both_inf, 0.0, s_lo0)
    if POWER:
        a_hi = a * log_boost
        a_lo = c * log_boost
        direct = _exp(tl.minimum(a_hi, _CAP), PRECISE) - _exp(tl.minimum(a_lo, _CAP), PRECISE)
        x = a_hi - a_lo
        x_pos = x > 0.0
        x_safe = tl.where(x_pos, x, 1.0)
        log_form = _exp(tl.minimum(a_hi + _log(_one_minus_exp_neg(x_safe, PRECISE), PRECISE), _CAP), PRECISE)
        log_form = tl.where(x_pos, log_form, 0.0)
        t = tl.where(a_hi <= _CAP, direct, log_form)
    else:
        t = boost * (a - c)
    e = _exp(-t, PRECISE)
    one_e = 1.0 + e
    w_hi = tl.where(lo_valid, tl.div_rn(tl.full(e.shape, 1.0, tl.float32), one_e), tl.where(hi_valid, 1.0, 0.0))
    w_lo = tl.where(lo_valid, tl.div_rn(e, one_e), 0.0)
    merged = tl.where(lo_valid, w_hi * s_hi0 + w_lo * s_lo0, s_hi)
    return s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged


@triton.jit
def _clip_max(x, hi):
    """``clip(x, max=hi)`` keeping NaN (as the neutral core's ``xp.clip``)."""
    return tl.minimum(x, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _saturate(x):
    """:func:`shtopk._core.finite.saturate`: ``x`` clipped to the finite float32 range, NaN kept."""
    return tl.maximum(_clip_max(x, _BIG), -_BIG, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _softmax_pair_grad(dq, sigma, w_hi, w_lo, t, boost):
    """Score cotangents ``(ds_hi, ds_lo)`` of softmax pairs
    (:func:`shtopk._core.plan_backward._pair_weight_grad`)."""
    ww = w_hi * w_lo
    c = _saturate(dq * (ww * boost) + sigma * (ww * _clip_max(t, _BIG)))
    return c, -c


@triton.jit
def _power_side(s, dq, sigma, log_ww, log_gap, lo_valid, has_gap, log_boost, grad_cap, PRECISE: tl.constexpr):
    """One member's ``|ds|`` of power pairs: ``f = ww ln(b) b**s`` and ``gap * f`` in log space."""
    e = tl.maximum(_clip_max(s * log_boost, _QUARTER_BIG), -_QUARTER_BIG, propagate_nan=tl.PropagateNan.ALL)
    e = e + log_ww
    f = tl.where(lo_valid, _exp(_clip_max(e, grad_cap), PRECISE), 0.0) * log_boost
    gf = tl.where(has_gap, _exp(_clip_max(e + log_gap, _CAP), PRECISE), 0.0)
    return _saturate(_saturate(dq * f) + _saturate(sigma * gf))


@triton.jit
def _power_pair_grad(
    dq, sigma, s_hi, s_lo, gap, t, lo_valid, log_boost, log_log_boost, grad_cap, PRECISE: tl.constexpr
):
    """Score cotangents ``(ds_hi, ds_lo)`` of power pairs
    (:func:`shtopk._core.plan_backward._pair_weight_grad`)."""
    log_ww = -t - 2.0 * _log1p(_exp(-t, PRECISE), PRECISE)
    has_gap = lo_valid & (gap > 0.0)
    log_gap = _log(tl.where(has_gap, gap, 1.0), PRECISE) + log_log_boost
    ds_hi = _power_side(s_hi, dq, sigma, log_ww, log_gap, lo_valid, has_gap, log_boost, grad_cap, PRECISE)
    ds_lo = _power_side(s_lo, dq, sigma, log_ww, log_gap, lo_valid, has_gap, log_boost, grad_cap, PRECISE)
    return ds_hi, -ds_lo


@triton.jit
def _store_round(
    b,
    i,
    pair,
    M,
    m,
    o_hi,
    o_lo,
    w_hi,
    w_lo,
    s_hi0,
    s_lo0,
    t,
    lo_valid,
    order_ptr,
    sw_ptr,
    whi_ptr,
    wlo_ptr,
    shi_ptr,
    slo_ptr,
    t_ptr,
    lov_ptr,
    RECORD: tl.constexpr,
):
    """Write what round ``M`` did: its sort order and the weight at each place
    (``order``, ``sorted_weights``: (B, 2m), round at ``2m - 2M``) and, with
    ``RECORD``, the per-pair records ((B, m), round at ``m - M``)."""
    full = b * (2 * m) + (2 * m - 2 * M)
    tl.store(order_ptr + full + i, o_hi, mask=pair)
    tl.store(order_ptr + full + (M - 1 - i), o_lo, mask=pair)
    tl.store(sw_ptr + full + i, w_hi, mask=pair)
    tl.store(sw_ptr + full + (M - 1 - i), w_lo, mask=pair)
    if RECORD:
        half = b * m + (m - M)
        tl.store(whi_ptr + half + i, w_hi, mask=pair)
        tl.store(wlo_ptr + half + i, w_lo, mask=pair)
        tl.store(shi_ptr + half + i, s_hi0, mask=pair)
        tl.store(slo_ptr + half + i, s_lo0, mask=pair)
        tl.store(t_ptr + half + i, t, mask=pair)
        tl.store(lov_ptr + half + i, lo_valid.to(tl.int8), mask=pair)


@triton.jit
def plan_rows_kernel(
    s_ptr,
    n,
    M0,
    m,
    k,
    R,
    boost,
    log_boost,
    key_ws_ptr,
    order_ptr,
    sw_ptr,
    whi_ptr,
    wlo_ptr,
    shi_ptr,
    slo_ptr,
    t_ptr,
    lov_ptr,
    final_ptr,
    perm_ptr,
    sorted_ptr,
    POWER: tl.constexpr,
    PRECISE: tl.constexpr,
    RECORD: tl.constexpr,
    SORT_SLOTS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The last ``R`` rounds of batch row ``program_id(0)``, from ``M0`` groups
    (``BLOCK >= M0``) whose scores ``s_ptr`` holds in rows of ``n``, padded to
    ``M0`` with ``-inf``; ``m`` is the padded row length of the first round.

    Writes the final group scores (B, k) to ``final_ptr`` and, with
    ``SORT_SLOTS``, the groups in score order to ``perm_ptr`` (B, k) and their
    scores, in that order, to ``sorted_ptr``.
    """
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    s = tl.load(s_ptr + b * n + i, mask=i < n, other=float("-inf"))
    ws = key_ws_ptr + b * BLOCK
    M = M0
    for _ in range(R):
        key = tl.sort(_pack(s, i, i < M))
        tl.store(ws + i, key)
        tl.debug_barrier()
        pair = i < M // 2
        lo_key = tl.load(ws + (M - 1 - i), mask=pair, other=_ABSENT)
        tl.debug_barrier()
        s_hi, o_hi = _unpack(key)
        s_lo, o_lo = _unpack(lo_key)
        s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged = _pair(s_hi, s_lo, boost, log_boost, POWER, PRECISE)
        _store_round(
            b,
            i,
            pair,
            M,
            m,
            o_hi,
            o_lo,
            w_hi,
            w_lo,
            s_hi0,
            s_lo0,
            t,
            lo_valid,
            order_ptr,
            sw_ptr,
            whi_ptr,
            wlo_ptr,
            shi_ptr,
            slo_ptr,
            t_ptr,
            lov_ptr,
            RECORD,
        )
        s = tl.where(pair, merged, float("-inf"))
        M = M // 2
    slot = i < k
    tl.store(final_ptr + b * k + i, s, mask=slot)
    if SORT_SLOTS:
        s_sorted, perm = _unpack(tl.sort(_pack(s, i, slot)))
        tl.store(perm_ptr + b * k + i, perm, mask=slot)
        tl.store(sorted_ptr + b * k + i, s_sorted, mask=slot)


@triton.jit
def plan_round_kernel(
    s_ptr,
    sorted_ptr,
    next_ptr,
    M,
    m,
    boost,
    log_boost,
    order_ptr,
    sw_ptr,
    whi_ptr,
    wlo_ptr,
    shi_ptr,
    slo_ptr,
    t_ptr,
    lov_ptr,
    POWER: tl.constexpr,
    PRECISE: tl.constexpr,
    RECORD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One round of ``M`` groups (B, M) in ``s_ptr``, sorted by ``sorted_ptr`` (B, M), for
    pairs ``program_id(1) * BLOCK + arange(BLOCK)``; the merged scores go to ``next_ptr`` (B, M/2)."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pair = i < M // 2
    o_hi = tl.load(sorted_ptr + b * M + i, mask=pair, other=0)
    o_lo = tl.load(sorted_ptr + b * M + (M - 1 - i), mask=pair, other=0)
    s_hi = tl.load(s_ptr + b * M + o_hi, mask=pair, other=0.0)
    s_lo = tl.load(s_ptr + b * M + o_lo, mask=pair, other=0.0)
    s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged = _pair(s_hi, s_lo, boost, log_boost, POWER, PRECISE)
    _store_round(
        b,
        i,
        pair,
        M,
        m,
        o_hi,
        o_lo,
        w_hi,
        w_lo,
        s_hi0,
        s_lo0,
        t,
        lo_valid,
        order_ptr,
        sw_ptr,
        whi_ptr,
        wlo_ptr,
        shi_ptr,
        slo_ptr,
        t_ptr,
        lov_ptr,
        RECORD,
    )
    tl.store(next_ptr + b * (M // 2) + i, merged, mask=pair)


@triton.jit
def expand_kernel(
    slots_ptr,
    order_ptr,
    sw_ptr,
    final_ptr,
    valid_ptr,
    poison_ptr,
    idx_ptr,
    w_ptr,
    slot_of_row_ptr,
    weight_of_row_ptr,
    n,
    m,
    k,
    R,
    MASK: tl.constexpr,
    RECORD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Members (B, k, P) of the groups ``slots`` (B, k), best first (``_expand``).

    Member ``p`` of a slot follows the bits of ``p`` down the rounds (most
    significant first: 0 the hi, 1 the lo member). With ``MASK``, padded and
    masked members read the slot's first row (row 0 for a slot without valid
    members) with weight 0, and poisoned batch rows get NaN weights
    (``final_ptr``: the final group scores (B, k) before any reordering);
    without it the raw member ids and weights are written. With ``RECORD``
    also the row layout: ``slot_of_row`` and ``weight_of_row`` (B, n).
    """
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = e < m
    j = e >> R
    p = e & ((1 << R) - 1)
    group = tl.load(slots_ptr + b * k + j, mask=live, other=0).to(tl.int64)
    pos = group
    first = group
    w = tl.full([BLOCK], 1.0, tl.float32)
    for rr in range(R):
        r = R - 1 - rr
        M = m >> r
        base = b * (2 * m) + (2 * m - 2 * M)
        place = tl.where(((p >> r) & 1) == 0, pos, M - 1 - pos)
        w = w * tl.load(sw_ptr + base + place, mask=live, other=0.0)
        pos = tl.load(order_ptr + base + place, mask=live, other=0)
        first = tl.load(order_ptr + base + first, mask=live, other=0)
    if MASK:
        real = live & (pos < n)
        member_valid = tl.load(valid_ptr + b * n + pos, mask=real, other=0) != 0
        slot_valid = tl.load(final_ptr + b * k + group, mask=live, other=float("-inf")) > float("-inf")
        idx = tl.where(member_valid, pos, tl.where(slot_valid, first, 0))
        poisoned = tl.load(poison_ptr + b + e * 0, mask=live, other=0) != 0  # a block, not a scalar
        factor = tl.where(poisoned, float("nan"), 1.0)
        w = w * (member_valid.to(tl.float32) * factor)
        if RECORD:
            tl.store(slot_of_row_ptr + b * n + pos, j.to(tl.int64), mask=real)
            tl.store(weight_of_row_ptr + b * n + pos, w, mask=real)
    else:
        idx = pos
    tl.store(idx_ptr + b * m + e, idx, mask=live)
    tl.store(w_ptr + b * m + e, w, mask=live)


@triton.jit
def gather_sum_kernel(
    idx_ptr,
    w_ptr,
    scores_ptr,
    E_ptr,
    out_ptr,
    k,
    P,
    n,
    d,
    p_chunk,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out[c, s, :] = sum_p w[s, p] * E[b, idx[s, p], :]`` for slot ``s = program_id(0)``
    (batch row ``b = s // k``), the columns of block ``program_id(1)`` and the members
    ``p`` in chunk ``c = program_id(2)`` of ``p_chunk``; zero where the slot's score
    is ``-inf``. Accumulates in float32 (one chunk: ``out`` may be E's dtype)."""
    slot = tl.program_id(0).to(tl.int64)
    b = slot // k
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < d
    chunk = tl.program_id(2)
    p_lo = chunk * p_chunk
    p_hi = tl.minimum(P, p_lo + p_chunk)
    acc = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < p_hi
        rows = tl.load(idx_ptr + slot * P + p, mask=p_ok, other=0).to(tl.int64)
        w = tl.load(w_ptr + slot * P + p, mask=p_ok, other=0.0).to(tl.float32)
        tile = tl.load(
            E_ptr + (b * n + rows)[:, None] * d + cols[None, :], mask=p_ok[:, None] & col_ok[None, :], other=0.0
        )
        acc += w[:, None] * tile.to(tl.float32)
    total = tl.sum(acc, axis=0)
    keep = tl.load(scores_ptr + slot + cols * 0).to(tl.float32) != float("-inf")  # a block, not a scalar
    total = tl.where(keep, total, 0.0)
    slots = tl.num_programs(0).to(tl.int64)
    tl.store(out_ptr + (chunk * slots + slot) * d + cols, total.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def rows_backward_kernel(
    dv_ptr,
    slot_ptr,
    wrow_ptr,
    E_ptr,
    dE_ptr,
    dw_ptr,
    rows_total,
    n,
    k,
    d,
    NEED_DE: tl.constexpr,
    NEED_DW: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``dE[i] = weight_of_row[i] * d_values[slot_of_row[i]]`` and
    ``dw[i] = <d_values[slot_of_row[i]], E[i]>`` for the rows of block
    ``program_id(0)`` of the flattened (B * n) rows, in float32."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    slot = tl.load(slot_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    dv_row = (rows // n) * k + slot
    w = tl.load(wrow_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    dot = tl.zeros([BLOCK_R], tl.float32)
    for c0 in range(0, d, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < d)[None, :]
        g = tl.load(dv_ptr + dv_row[:, None] * d + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if NEED_DW:
            x = tl.load(E_ptr + rows[:, None] * d + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            dot += tl.sum(g * x, axis=1)
        if NEED_DE:
            tl.store(dE_ptr + rows[:, None] * d + cols[None, :], (g * w[:, None]).to(dE_ptr.dtype.element_ty), mask=ok)
    if NEED_DW:
        tl.store(dw_ptr + rows, dot, mask=row_ok)


@triton.jit
def tournament_backward_kernel(
    dw_ptr,
    d_scores_ptr,
    out_ptr,
    ws_ptr,
    dq_ptr,
    order_ptr,
    sw_ptr,
    whi_ptr,
    wlo_ptr,
    shi_ptr,
    slo_ptr,
    t_ptr,
    lov_ptr,
    gap_ptr,
    m,
    k,
    R,
    boost,
    log_boost,
    log_log_boost,
    grad_cap,
    POWER: tl.constexpr,
    PRECISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """:func:`shtopk._core.plan_backward.neutral_tournament_backward` for batch row ``program_id(0)``.

    Bottom-up, each round gathers the groups' weighted cotangent sums ``Q`` by
    its sort order and keeps ``Q_hi - Q_lo`` per pair (``dq_ptr``, (B, m),
    round at ``m - M``); top-down, it scatters the merged-score cotangent
    ``sigma`` and the weight product ``D`` back through the sort order. Rows
    of any length: each round walks its pairs in blocks, and the per-group
    values live in a per-row workspace ``ws_ptr`` (B, 4 * m) of two
    ping-pong buffers for ``Q``/``sigma`` and two for ``D``. The round records
    are those :func:`plan_rows_kernel` and :func:`plan_round_kernel` write, and
    ``gap_ptr`` the recorded gaps (:func:`shtopk._core.finite.finite_gap`, laid
    out as the per-pair records). As in the neutral core, the cotangents
    saturate at the largest finite float32 (never ``inf``, NaN kept).
    """
    b = tl.program_id(0).to(tl.int64)
    ar = tl.arange(0, BLOCK)
    ws = ws_ptr + b * (4 * m)
    for c in range(0, m, BLOCK):
        i = c + ar
        tl.store(ws + i, tl.load(dw_ptr + b * m + i, mask=i < m, other=0.0), mask=i < m)
    tl.debug_barrier()
    M = m
    for r in range(R):
        src = ws + (r % 2) * m
        dst = ws + ((r + 1) % 2) * m
        full = b * (2 * m) + (2 * m - 2 * M)
        half = b * m + (m - M)
        for c in range(0, M // 2, BLOCK):
            i = c + ar
            pair = i < M // 2
            o_hi = tl.load(order_ptr + full + i, mask=pair, other=0)
            o_lo = tl.load(order_ptr + full + (M - 1 - i), mask=pair, other=0)
            q_hi = tl.load(src + o_hi, mask=pair, other=0.0)
            q_lo = tl.load(src + o_lo, mask=pair, other=0.0)
            sw_hi = tl.load(sw_ptr + full + i, mask=pair, other=0.0)
            sw_lo = tl.load(sw_ptr + full + (M - 1 - i), mask=pair, other=0.0)
            tl.store(dst + i, q_hi * sw_hi + q_lo * sw_lo, mask=pair)
            tl.store(dq_ptr + half + i, q_hi - q_lo, mask=pair)
        tl.debug_barrier()
        M = M // 2
    for c in range(0, k, BLOCK):
        i = c + ar
        tl.store(ws + i, tl.load(d_scores_ptr + b * k + i, mask=i < k, other=0.0), mask=i < k)
        tl.store(ws + 2 * m + i, tl.full([BLOCK], 1.0, tl.float32), mask=i < k)
    tl.debug_barrier()
    for rr in range(R):
        r = R - 1 - rr
        M = m >> r
        full = b * (2 * m) + (2 * m - 2 * M)
        half = b * m + (m - M)
        src_s = ws + (rr % 2) * m
        dst_s = ws + ((rr + 1) % 2) * m
        src_d = ws + 2 * m + (rr % 2) * m
        dst_d = ws + 2 * m + ((rr + 1) % 2) * m
        for c in range(0, M // 2, BLOCK):
            i = c + ar
            pair = i < M // 2
            sigma = tl.load(src_s + i, mask=pair, other=0.0)
            D = tl.load(src_d + i, mask=pair, other=0.0)
            dq = D * tl.load(dq_ptr + half + i, mask=pair, other=0.0)
            w_hi = tl.load(whi_ptr + half + i, mask=pair, other=0.0)
            w_lo = tl.load(wlo_ptr + half + i, mask=pair, other=0.0)
            t = tl.load(t_ptr + half + i, mask=pair, other=0.0)
            if POWER:
                s_hi = tl.load(shi_ptr + half + i, mask=pair, other=0.0)
                s_lo = tl.load(slo_ptr + half + i, mask=pair, other=0.0)
                gap = tl.load(gap_ptr + half + i, mask=pair, other=0.0)
                lo_valid = tl.load(lov_ptr + half + i, mask=pair, other=0) != 0
                ds_hi, ds_lo = _power_pair_grad(
                    dq, sigma, s_hi, s_lo, gap, t, lo_valid, log_boost, log_log_boost, grad_cap, PRECISE
                )
            else:
                ds_hi, ds_lo = _softmax_pair_grad(dq, sigma, w_hi, w_lo, t, boost)
            o_hi = tl.load(order_ptr + full + i, mask=pair, other=0)
            o_lo = tl.load(order_ptr + full + (M - 1 - i), mask=pair, other=0)
            sw_hi = tl.load(sw_ptr + full + i, mask=pair, other=0.0)
            sw_lo = tl.load(sw_ptr + full + (M - 1 - i), mask=pair, other=0.0)
            tl.store(dst_s + o_hi, _saturate(sigma * sw_hi + ds_hi), mask=pair)
            tl.store(dst_s + o_lo, _saturate(sigma * sw_lo + ds_lo), mask=pair)
            tl.store(dst_d + o_hi, D * sw_hi, mask=pair)
            tl.store(dst_d + o_lo, D * sw_lo, mask=pair)
        tl.debug_barrier()
    final = ws + (R % 2) * m
    for c in range(0, m, BLOCK):
        i = c + ar
        tl.store(out_ptr + b * m + i, tl.load(final + i, mask=i < m, other=0.0), mask=i < m)
