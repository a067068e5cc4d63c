"""Numba kernels of the CPU engine: the scores' preparation, the passes over E and the
tournament, compiled loops.

Only :mod:`.cpu` imports this module (importing it imports Numba). Every
kernel mirrors a neutral function of :mod:`shtopk._core` formula by formula,
in the same dtype (constants arrive typed from the caller, so float32 math
stays float32); ``fastmath`` is off (but for the reassociation of one dot
product's sum, :func:`_dot`), so results equal the neutral ones to float
rounding, NaN and inf included. Kernels are compiled on first use and cached on disk
(``cache=True``).

Half precision arrives as its bits (uint16): ``half=1`` float16,
``half=2`` bfloat16. The kernels widen each element to float32 (and
round results back, to nearest even), so E is never copied.

Every kernel loops in parallel over ``chunks`` blocks of work (``prange``):
output or input rows for the passes over E, batch rows for the scores, the
tournament and its backward (O(n) per batch row, not O(n d)); the caller picks the number of
blocks and of threads for each call.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.extending import intrinsic, overload

# ---------------------------------------------------------------- the scores


@njit(parallel=True, cache=True, error_model="numpy")
def prepare_scores(v, keep, s, valid, poison, chunks):  # pragma: no cover -- compiled
    """:func:`shtopk._core.flat.prepare_scores` in one pass over the scores ``v`` (B, n), in
    parallel over ``chunks`` blocks of batch rows: ``s`` (of v's dtype) is ``v`` where the
    item is valid (not NaN, not ``-inf``, kept by ``keep`` (B, n); (0, 0): no mask) and
    ``-inf`` elsewhere; ``poison[b]``: a NaN score on a kept item of row ``b``."""
    B, n = v.shape
    masked = keep.shape[0] > 0
    neg_inf = -np.inf
    step = (B + chunks - 1) // chunks
    for c in prange(chunks):
        for b in range(c * step, min(B, (c + 1) * step)):
            nan = False
            for i in range(n):
                x = v[b, i]
                kept = keep[b, i] if masked else True
                ok = kept and x > neg_inf
                nan |= kept and x != x
                valid[b, i] = ok
                s[b, i] = x if ok else neg_inf
            poison[b] = nan


# ---------------------------------------------------------------- half precision


@intrinsic
def _bits_f16_to_f32(typingctx, x):
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width != 16:
            v = builder.trunc(v, ir.IntType(16)) if v.type.width > 16 else builder.zext(v, ir.IntType(16))
        return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def _f32_to_bits_f16(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(x), codegen


@intrinsic
def _u32_as_f32(typingctx, x):
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32)) if v.type.width > 32 else builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def _f32_as_u32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _descending_key(typingctx, x):
    """A float32/float64 (not NaN) as a uint64 whose ascending order is the float's descending
    order, ``-0.0`` and ``0.0`` equal (float32 keys use the low 32 bits)."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        ft = args[0].type
        width = 32 if ft == ir.FloatType() else 64
        it = ir.IntType(width)
        u = builder.bitcast(builder.fadd(args[0], ir.Constant(ft, 0.0)), it)  # -0.0 + 0.0 = 0.0
        sign = ir.Constant(it, 1 << (width - 1))
        # ascending key: flip every bit of negatives, the sign bit of the others; then invert
        ascending = builder.xor(u, builder.or_(builder.ashr(u, ir.Constant(it, width - 1)), sign))
        key = builder.not_(ascending)
        return key if width == 64 else builder.zext(key, ir.IntType(64))

    return types.uint64(x), codegen


def _exp_neg(t):  # pragma: no cover -- compiled (see the overload below)
    """``exp(-t)`` for ``t >= 0`` (``+inf`` included; NaN gives NaN), in the dtype of ``t``."""
    return np.exp(-t)


@overload(_exp_neg)
def _exp_neg_typed(t):
    """float32: the Cephes ``expf`` (range reduction by ``ln 2``, a degree-6 polynomial,
    the power of two from its bits), written so that loops over it vectorize. Within 1
    ulp of the correctly rounded value (as glibc's ``expf``; NumPy's float32 ``exp`` is
    within 3), subnormal results included; at 0.4 ns per item against 2.5 for a call
    of ``expf`` per item (measured). Other dtypes: ``np.exp``."""
    if t != types.float32:
        return lambda t: np.exp(-t)

    def impl(t):
        x = max(-t, np.float32(-104.0))  # exp(-104) rounds to 0 in float32 (NaN stays NaN)
        fn = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - fn * np.float32(0.693359375) - fn * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * (r * r) + r + np.float32(1.0)
        n = np.int32(fn)
        low = n < -126  # a subnormal result: scale by 2**(n + 64), then by 2**-64
        scale = _u32_as_f32(np.uint32((n + np.int32(64) if low else n) + np.int32(127)) << np.uint32(23))
        y = p * scale
        return y * np.float32(5.421010862427522e-20) if low else y

    return impl


@njit(inline="always")
def _widen(x, half):
    """A uint16 half-precision element (``half`` 1: float16, 2: bfloat16) as float32."""
    if half == 1:
        return _bits_f16_to_f32(x)
    return _u32_as_f32(np.uint32(x) << np.uint32(16))


@njit(inline="always")
def _narrow(x, half):
    """float32 -> the bits of a float16 or bfloat16, rounded to nearest even (as NumPy and torch)."""
    if half == 1:
        return _f32_to_bits_f16(x)
    if x != x:
        return np.uint16((_f32_as_u32(x) >> np.uint32(16)) | np.uint32(0x40))  # a quiet NaN
    u = _f32_as_u32(x)
    u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16(u >> np.uint32(16))


def _load(x, half):  # pragma: no cover -- compiled (see the overload below)
    """An element of E in the accumulation dtype: a float as it is, half-precision bits widened
    to float32 (:func:`_widen`)."""
    return x


@overload(_load, inline="always")
def _load_typed(x, half):
    """Chosen by the element's type when a kernel is compiled: no test at run time for floats."""
    if isinstance(x, types.Float):
        return lambda x, half: x
    return lambda x, half: _widen(x, half)


# ---------------------------------------------------------------- the gather-sum


@njit(parallel=True, cache=True, error_model="numpy")
def gather_sum(idx, w, skip, E, out, chunks):  # pragma: no cover -- compiled
    """``out[s] = sum_r w[s, r] * E[b(s), idx[s, r]]`` for slots ``s`` (of batch row ``s // k``);
    slots with ``skip[s]`` are zero. ``idx``/``w`` (S, P), ``skip`` (S,), E (B, n, d) in the
    accumulation dtype of ``w``, ``out`` (S, d).

    Eight member rows are read at a time: eight independent streams keep more
    loads of randomly placed rows in flight (measured: 1.3-1.8x the time of
    reading E in order, against 2.5-3x one row at a time).
    """
    S, P = idx.shape
    B, _, d = E.shape
    k = S // B if B else 1
    step = (S + chunks - 1) // chunks
    for c in prange(chunks):
        for s in range(c * step, min(S, (c + 1) * step)):
            o = out[s]
            if skip[s] or P == 0:
                o[:] = 0
                continue
            Eb = E[s // k]
            x = idx[s]
            v = w[s]
            if P >= 8:  # the first group (or member) is written, not added to zeros: one pass less
                w0, w1, w2, w3 = v[0], v[1], v[2], v[3]
                w4, w5, w6, w7 = v[4], v[5], v[6], v[7]
                a0, a1, a2, a3 = Eb[x[0]], Eb[x[1]], Eb[x[2]], Eb[x[3]]
                a4, a5, a6, a7 = Eb[x[4]], Eb[x[5]], Eb[x[6]], Eb[x[7]]
                for j in range(d):
                    o[j] = ((w0 * a0[j] + w1 * a1[j]) + (w2 * a2[j] + w3 * a3[j])) + (
                        (w4 * a4[j] + w5 * a5[j]) + (w6 * a6[j] + w7 * a7[j])
                    )
                r = 8
            else:
                w0 = v[0]
                a0 = Eb[x[0]]
                for j in range(d):
                    o[j] = w0 * a0[j]
                r = 1
            while r + 8 <= P:
                w0, w1, w2, w3 = v[r], v[r + 1], v[r + 2], v[r + 3]
                w4, w5, w6, w7 = v[r + 4], v[r + 5], v[r + 6], v[r + 7]
                a0, a1, a2, a3 = Eb[x[r]], Eb[x[r + 1]], Eb[x[r + 2]], Eb[x[r + 3]]
                a4, a5, a6, a7 = Eb[x[r + 4]], Eb[x[r + 5]], Eb[x[r + 6]], Eb[x[r + 7]]
                for j in range(d):
                    o[j] += ((w0 * a0[j] + w1 * a1[j]) + (w2 * a2[j] + w3 * a3[j])) + (
                        (w4 * a4[j] + w5 * a5[j]) + (w6 * a6[j] + w7 * a7[j])
                    )
                r += 8
            while r < P:
                wr = v[r]
                a0 = Eb[x[r]]
                for j in range(d):
                    o[j] += wr * a0[j]
                r += 1


@njit(parallel=True, cache=True, error_model="numpy")
def gather_sum_by_row(idx, w, skip, E, out, chunks):  # pragma: no cover -- compiled
    """:func:`gather_sum` reading E in row order: parallel over ``chunks`` blocks of batch rows
    (:func:`_gather_row_by_row` for each)."""
    S, P = idx.shape
    B, n = E.shape[0], E.shape[1]
    k = S // B if B else 1
    step = (B + chunks - 1) // chunks
    for c in prange(chunks):
        start = np.empty(n + 1, np.int64)
        pair_slot = np.empty(k * P, np.int64)
        pair_w = np.empty(k * P, w.dtype)
        for b in range(c * step, min(B, (c + 1) * step)):
            rows = slice(b * k, (b + 1) * k)
            _gather_row_by_row(idx[rows], w[rows], skip[rows], E[b], out[rows], start, pair_slot, pair_w, 0)


@njit(parallel=True, cache=True, error_model="numpy")
def gather_sum_by_row_half(idx, w, skip, E, out, chunks, half):  # pragma: no cover -- compiled
    """:func:`gather_sum_by_row` for half-precision E and ``out`` given as uint16 bits (``half`` as
    in :func:`_widen`): each batch row summed in float32 (a (k, d) buffer per block of
    rows), then rounded into ``out``. Reads E in row order, where :func:`gather_sum_half`
    reads the members of each slot at random."""
    S, P = idx.shape
    B, n, d = E.shape
    k = S // B if B else 1
    step = (B + chunks - 1) // chunks
    for c in prange(chunks):
        start = np.empty(n + 1, np.int64)
        pair_slot = np.empty(k * P, np.int64)
        pair_w = np.empty(k * P, w.dtype)
        acc = np.empty((k, d), np.float32)
        for b in range(c * step, min(B, (c + 1) * step)):
            rows = slice(b * k, (b + 1) * k)
            _gather_row_by_row(idx[rows], w[rows], skip[rows], E[b], acc, start, pair_slot, pair_w, half)
            o = out[rows]
            for s in range(k):
                for j in range(d):
                    o[s, j] = _narrow(acc[s, j], half)


@njit(cache=True, error_model="numpy")
def _gather_row_by_row(idx, w, skip, Eb, out, start, pair_slot, pair_w, half):  # pragma: no cover -- compiled
    """One batch row of :func:`gather_sum`, reading its E (n, d) in row order: ``idx``/``w`` (k, P),
    ``skip`` (k,), ``out`` (k, d) in the accumulation dtype (E's elements widened by
    :func:`_load`, ``half`` as there); ``start`` (n + 1), ``pair_slot``/``pair_w`` (k P) are scratch.

    The (slot, weight) pairs of the members are grouped by row (a counting sort of
    ``idx``, O(n + k P)); then E is read front to back, once, each row added into
    the output rows of its pairs (a slot's members repeated for padding or masks are
    visited once per pair, as in :func:`gather_sum`). E streams as in a plain sum
    (measured: 1.0-1.7x the time of reading E against 1.6-3x for the plan order at
    d = 256, one thread); the output rows are reused from cache when they are few.
    """
    k, P = idx.shape
    n, d = Eb.shape
    start[:] = 0
    for s in range(k):
        if not skip[s]:
            for q in range(P):
                start[idx[s, q] + 1] += 1
    for i in range(n):
        start[i + 1] += start[i]
    for s in range(k):
        if not skip[s]:
            for q in range(P):
                row = idx[s, q]
                at = start[row]
                start[row] = at + 1
                pair_slot[at] = s
                pair_w[at] = w[s, q]
    out[:] = 0  # start[i] is now the end of row i's pairs
    at = 0
    for i in range(n):
        end = start[i]
        if at < end:
            e = Eb[i]
            while at < end:
                o = out[pair_slot[at]]
                wt = pair_w[at]
                for j in range(d):
                    o[j] += wt * _load(e[j], half)
                at += 1


@njit(inline="always")
def _add_row(o, wt, e, again, zero):  # pragma: no cover -- compiled
    """``o += wt * e`` for a member row ``e`` of the slot whose output row is ``o``; with
    ``again``, ``0 * e`` once more, for a member the selection repeats with weight 0 in
    place of invalid ones (NaN where ``e`` holds inf or NaN, as those pairs give)."""
    for c in range(e.shape[0]):
        o[c] += wt * e[c]
    if again:
        for c in range(e.shape[0]):
            o[c] += zero * e[c]


@njit(inline="always")
def _set_row(o, wt, e, again, zero):  # pragma: no cover -- compiled
    """:func:`_add_row` into a row ``o`` not written yet: ``o = wt * e`` (``+ 0 * e`` with
    ``again``), the sum of a slot's one member, bit for bit (``-0.0`` stays ``-0.0``),
    without zeroing ``o`` first and reading it back."""
    if again:
        for c in range(e.shape[0]):
            o[c] = wt * e[c] + zero * e[c]
    else:
        for c in range(e.shape[0]):
            o[c] = wt * e[c]


@njit(cache=True, error_model="numpy")
def _gather_each_row_once(ind, wts, P, skip, Eb, out, slot_of, w_of, repeated):  # pragma: no cover
    """:func:`_gather_row_by_row` of a batch row's selection (``ind``/``wts``: slot after slot of
    ``P`` members) in which each row of ``Eb`` (n, d) is a member of one slot at most,
    but for the invalid members, which repeat their slot's first (valid) member with
    weight 0; no poisoned row (whose weights are NaN). ``slot_of``/``w_of``/``repeated``
    (n at least) are scratch.

    Each row's slot and weight are scattered (one pass over the members), then E
    is read front to back, each member row added into its slot: the same sums in
    the same order as grouping the pairs by row with a counting sort, which this
    spares. A repeated row adds ``0 * E[row]`` once more, as its zero-weight pairs
    would (NaN where that row holds inf or NaN; adding +0 once or several times is
    the same).
    """
    n = Eb.shape[0]
    zero = wts.dtype.type(0)
    slot_of[:n] = -1
    for q in range(ind.shape[0]):
        j = q // P
        if skip[j]:
            continue
        row = ind[q]
        if slot_of[row] < 0:
            slot_of[row] = j
            w_of[row] = wts[q]
            repeated[row] = 0
        else:
            repeated[row] = 1
    out[:] = 0
    for i in range(n):
        j = slot_of[i]
        if j >= 0:
            _add_row(out[j], w_of[i], Eb[i], repeated[i] != 0, zero)


@njit(cache=True, error_model="numpy")
def _gather_by_slot(slot_of, w_of, skip, Eb, out, valid, repeated, masked, single):  # pragma: no cover -- compiled
    """:func:`_gather_each_row_once` of a selection given as a row layout: row ``i`` of ``Eb``
    (n, d) is added, weighted by ``w_of[i]``, into ``out[slot_of[i]]`` (unless that slot is
    skipped), front to back: the same sums in the same order. With ``masked``, rows that
    are not ``valid`` are left out, and a row with ``repeated[i]`` (the first member of a
    slot with invalid ones, which the selection repeats with weight 0) adds ``0 * Eb[i]``
    once more.

    With ``masked``, a slot of one valid member (``single[j]``; at k = n - 1 every slot but
    one) is written from its row (:func:`_set_row`), not added into a zeroed output row, as
    :func:`_gather_single_members` writes slots without rounds: ``w * e + 0 * e``, the
    neutral core's sum of its members in their order, bit for bit (``-0.0`` stays
    ``-0.0``; an inf in ``e`` gives NaN)."""
    zero = w_of.dtype.type(0)
    if not masked:
        out[:] = 0
        for i in range(Eb.shape[0]):
            j = slot_of[i]
            if not skip[j]:
                _add_row(out[j], w_of[i], Eb[i], False, zero)
        return
    for j in range(out.shape[0]):
        if skip[j] or not single[j]:
            out[j] = 0
    for i in range(Eb.shape[0]):
        if not valid[i]:
            continue
        j = slot_of[i]
        if skip[j]:
            continue
        if single[j]:
            _set_row(out[j], w_of[i], Eb[i], repeated[i] != 0, zero)
        else:
            _add_row(out[j], w_of[i], Eb[i], repeated[i] != 0, zero)


@njit(cache=True, error_model="numpy")
def _gather_single_members(slot_of, w_of, skip, Eb, out):  # pragma: no cover -- compiled
    """:func:`_gather_by_slot` of a selection without rounds (k = m = n: each slot has one member,
    and each row of ``Eb`` is the member of one slot): row ``i`` is written, weighted, into
    ``out[slot_of[i]]`` unless that slot is skipped (its member is invalid), then the
    skipped slots are zeroed. No pass that zeroes the E-sized output first and no read of
    it back; ``-0.0`` stays ``-0.0``, as in the neutral core's sum of one member."""
    zero = w_of.dtype.type(0)
    for i in range(Eb.shape[0]):
        j = slot_of[i]
        if not skip[j]:
            _set_row(out[j], w_of[i], Eb[i], False, zero)
    for j in range(out.shape[0]):
        if skip[j]:
            out[j] = 0


@njit(parallel=True, cache=True, error_model="numpy")
def gather_sum_half(idx, w, skip, E, out, chunks, half):  # pragma: no cover -- compiled
    """:func:`gather_sum` for half precision E and ``out`` given as uint16 bits; float32 sums."""
    S, P = idx.shape
    B, _, d = E.shape
    k = S // B if B else 1
    step = (S + chunks - 1) // chunks
    for c in prange(chunks):
        acc = np.empty(d, np.float32)
        for s in range(c * step, min(S, (c + 1) * step)):
            acc[:] = 0
            if not skip[s]:
                Eb = E[s // k]
                x = idx[s]
                v = w[s]
                r = 0
                while r + 4 <= P:
                    w0, w1, w2, w3 = v[r], v[r + 1], v[r + 2], v[r + 3]
                    a0, a1, a2, a3 = Eb[x[r]], Eb[x[r + 1]], Eb[x[r + 2]], Eb[x[r + 3]]
                    for j in range(d):
                        acc[j] += (w0 * _widen(a0[j], half) + w1 * _widen(a1[j], half)) + (
                            w2 * _widen(a2[j], half) + w3 * _widen(a3[j], half)
                        )
                    r += 4
                while r < P:
                    wr = v[r]
                    a0 = Eb[x[r]]
                    for j in range(d):
                        acc[j] += wr * _widen(a0[j], half)
                    r += 1
            o = out[s]
            for j in range(d):
                o[j] = _narrow(acc[j], half)


# ---------------------------------------------------------------- the rows backward


@njit(cache=True, fastmath={"reassoc"})
def _dot(a, b, zero):  # pragma: no cover -- compiled
    """``<a, b>``. Its sum alone may be reassociated (``fastmath={"reassoc"}``: no other fast-math
    flag, so NaN and inf propagate as usual): that lets it vectorize, and brings the rows backward
    from 2.5x to 1x the time of reading E (measured)."""
    s = zero
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@njit(parallel=True, cache=True, error_model="numpy")
def rows_backward(dv, slot_of_row, weight_of_row, E, dE, dw, need_dE, need_dw, zero, chunks):  # pragma: no cover
    """``dE[b, i] = weight_of_row[b, i] * dv[b, slot]`` and ``dw[b, i] = <dv[b, slot], E[b, i]>``
    (``slot = slot_of_row[b, i]``) in one pass over E. ``dv`` and ``weight_of_row`` are in the
    accumulation dtype (that of E here), ``zero`` a zero of it."""
    B, n, d = E.shape
    N = B * n
    step = (N + chunks - 1) // chunks
    for c in prange(chunks):
        lo = c * step
        b = lo // n  # (b, r) of row lo, then stepped: no division per row
        r = lo - b * n
        for _ in range(lo, min(N, lo + step)):
            g = dv[b, slot_of_row[b, r]]
            if need_dw:
                dw[b, r] = _dot(g, E[b, r], zero)
            if need_dE:
                wt = weight_of_row[b, r]
                o = dE[b, r]
                for j in range(d):
                    o[j] = wt * g[j]
            r += 1
            if r == n:
                r = 0
                b += 1


@njit(parallel=True, cache=True, error_model="numpy")
def rows_backward_half(dv, slot_of_row, weight_of_row, E, dE, dw, need_dE, need_dw, chunks, half):  # pragma: no cover
    """:func:`rows_backward` for half precision E and ``dE`` as uint16 bits; float32 math."""
    B, n, d = E.shape
    N = B * n
    step = (N + chunks - 1) // chunks
    for c in prange(chunks):
        row = np.empty(d, np.float32)
        lo = c * step
        b = lo // n
        r = lo - b * n
        for _ in range(lo, min(N, lo + step)):
            g = dv[b, slot_of_row[b, r]]
            if need_dw:
                e = E[b, r]
                for j in range(d):
                    row[j] = _widen(e[j], half)
                dw[b, r] = _dot(g, row, np.float32(0))
            if need_dE:
                wt = weight_of_row[b, r]
                o = dE[b, r]
                for j in range(d):
                    o[j] = _narrow(wt * g[j], half)
            r += 1
            if r == n:
                r = 0
                b += 1


# ---------------------------------------------------------------- the tournament

_MIN_RUN = 16


@njit(cache=True, error_model="numpy")
def _sort_desc(keys, idx, ktmp, itmp, runs):  # pragma: no cover -- compiled
    """Sort ``keys`` descending in place, stably, carrying ``idx`` along.

    A natural merge sort: runs that are already non-increasing are kept (and
    extended to 16 items by insertion), then neighbouring runs are merged
    pass by pass; a pair of runs already in order is copied. Rows that are
    nearly sorted (the merged scores of every round after the first) take
    few passes. ``ktmp``, ``itmp`` and ``runs`` (M + 1) are scratch.
    """
    M = keys.shape[0]
    nr = 0
    i = 0
    while i < M:
        j = i + 1
        while j < M and keys[j] <= keys[j - 1]:
            j += 1
        end = min(M, max(j, i + _MIN_RUN))
        for a in range(j, end):
            kv = keys[a]
            iv = idx[a]
            p = a - 1
            while p >= i and keys[p] < kv:
                keys[p + 1] = keys[p]
                idx[p + 1] = idx[p]
                p -= 1
            keys[p + 1] = kv
            idx[p + 1] = iv
        runs[nr] = i
        nr += 1
        i = end
    runs[nr] = M
    src_k, src_i, dst_k, dst_i = keys, idx, ktmp, itmp
    swapped = False
    while nr > 1:
        new_nr = 0
        r = 0
        while r < nr:
            lo = runs[r]
            mid = runs[r + 1]
            hi = runs[r + 2] if r + 1 < nr else mid
            if hi == mid or src_k[mid - 1] >= src_k[mid]:
                dst_k[lo:hi] = src_k[lo:hi]
                dst_i[lo:hi] = src_i[lo:hi]
            else:
                a, b, o = lo, mid, lo
                while a < mid and b < hi:
                    if src_k[a] >= src_k[b]:
                        dst_k[o] = src_k[a]
                        dst_i[o] = src_i[a]
                        a += 1
                    else:
                        dst_k[o] = src_k[b]
                        dst_i[o] = src_i[b]
                        b += 1
                    o += 1
                while a < mid:
                    dst_k[o] = src_k[a]
                    dst_i[o] = src_i[a]
                    a += 1
                    o += 1
                while b < hi:
                    dst_k[o] = src_k[b]
                    dst_i[o] = src_i[b]
                    b += 1
                    o += 1
            runs[new_nr] = lo
            new_nr += 1
            r += 2
        runs[new_nr] = M
        nr = new_nr
        src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
        swapped = not swapped
    if swapped:
        keys[:] = src_k
        idx[:] = src_i


#: Moves per item an insertion sort may make before it gives up (for a radix or merge sort).
_INSERTION_MOVES = 4

#: Merged scores with more than one ascent per this many items are sorted by radix, not by
#: insertion (see :func:`_ascents`).
_ASCENTS_FOR_RADIX = 6


@njit(cache=True, error_model="numpy")
def _ascents(x):  # pragma: no cover -- compiled
    """How many neighbours of ``x`` are in ascending order (``x[i] < x[i + 1]``): one pass that
    vectorizes, to tell merged scores that an insertion sort puts in order in a few moves
    per item from those it would not. Measured on rounds of 256-8192 merged scores at
    boost 1: normal scores 10-15% ascents, 1-1.3 places from where they belong;
    uniform(0, 1) or narrowly spread scores 17-43%, 4-42 places (an insertion sort
    then costs 2-3x a radix sort)."""
    c = 0
    for i in range(1, x.shape[0]):
        u = np.uint64(i)  # (unsigned: no wraparound check, so that the loop vectorizes)
        c += x[u - np.uint64(1)] < x[u]
    return c


@njit(cache=True, error_model="numpy")
def _insertion_sort_desc(keys, idx, budget):  # pragma: no cover -- compiled
    """Sort ``keys`` descending in place, stably, carrying ``idx`` along, by insertion; give up
    (return False, the arrays still a stable partial sort) after ``budget`` moves.

    The merged scores of a round mostly follow the order of their pairs (measured:
    items are about 1-2 places from where they belong, at boosts 1-70), so the
    later rounds sort in a few moves per item, against ~8 ns per item for a radix
    sort; scores out of order for any reason fall back to the radix sort (long rows)
    or to :func:`_sort_desc`.
    """
    moves = 0
    for a in range(1, keys.shape[0]):
        kv = keys[a]
        if not keys[a - 1] < kv:
            continue
        iv = idx[a]
        p = a - 1
        while p >= 0 and keys[p] < kv:
            keys[p + 1] = keys[p]
            idx[p + 1] = idx[p]
            p -= 1
        keys[p + 1] = kv
        idx[p + 1] = iv
        moves += a - 1 - p
        if moves > budget:
            return False
    return True


#: Rows at least this long are sorted by radix (below it, by :func:`_sort_desc`).
_RADIX_MIN = 256
_DIGIT_BITS = 11


@njit(cache=True, error_model="numpy")
def _radix_order(x, order, keys, ktmp, itmp, hist):  # pragma: no cover -- compiled
    """The stable descending order of the float row ``x`` (no NaN) into ``order``.

    A least-significant-digit radix sort of :func:`_descending_key` keys, 11 bits
    per pass (float32: at most 11, over the bits in which the row's keys differ): one
    pass counts every digit, then one scatter per digit that is not the same for the
    whole row. Linear in the row, and stable, as the neutral
    core's sort. ``hist`` (passes, 2048) int32: 3 passes for float32, whose 32-bit
    key is packed with the position into one uint64 (half the bytes to move per
    pass; :func:`_radix_order_packed`), 6 for float64 (the position moves beside
    the key, in ``itmp``; :func:`_radix_order_wide`). ``keys``/``ktmp`` (uint64),
    ``itmp`` (int64) are scratch of the row's length (rows under 2**32 items).
    """
    # trailing -inf (padding, or invalid items last) sort last, in their order: only the rest moves
    # (a run of equal keys is the slowest input of a radix sort: each count and place it takes
    # waits for the one before; 4096 scores and 4094 -inf took 2.6x as long as the scores alone)
    M = x.shape[0]
    t = M
    while t > 0 and x[t - 1] == -np.inf:
        t -= 1
    for i in range(t, M):
        order[i] = i
    if t == 0:
        return
    if hist.shape[0] == 3:
        _radix_order_packed(x[:t], order[:t], keys[:t], ktmp[:t], hist)
    else:
        _radix_order_wide(x[:t], order[:t], keys[:t], ktmp[:t], itmp[:t], hist)


@njit(cache=True, error_model="numpy")
def _radix_order_packed(x, order, keys, ktmp, hist):  # pragma: no cover -- compiled
    """:func:`_radix_order` of a float32 row: keys packed with their position, sorted on the
    bits in which the row's keys differ, in as few passes of at most 11 bits as those
    take, of equal width (the last pass that moves writes the positions into ``order``
    itself: 25% less time than one routine for both layouts at 4096 items).

    Digits over the varying bits, not fixed ones: scores in a narrow range (probabilities,
    and every round's merged scores, which are averages) share their sign and most of their
    exponent, so a fixed top digit takes a few values, and a pass that moves items into few
    buckets waits on each bucket's count. Measured (one thread, 4096 float32 scores, against
    fixed 11-bit digits): uniform(0, 1) 8.7 -> 5.1 ns per item, uniform(0.45, 0.75) 7.8 ->
    5.9, normal 6.9 -> 6.5 (its keys differ in every bit: the same digits, counted in a loop
    of their own)."""
    M = x.shape[0]
    base = np.uint64(32)
    low = np.uint64(0xFFFFFFFF)
    k0 = _descending_key(x[0])
    diff = np.uint64(0)  # the bits in which some key differs from the first
    for i in range(M):
        kx = _descending_key(x[i])
        keys[i] = (kx << base) | np.uint64(i)
        diff |= kx ^ k0
    bits = 0
    while diff >> np.uint64(bits):
        bits += 1
    passes = (bits + _DIGIT_BITS - 1) // _DIGIT_BITS
    width = (bits + passes - 1) // passes if passes else 0
    mask = np.uint64((1 << width) - 1)
    w = np.uint64(width)
    hist[:, : 1 << width] = 0
    for i in range(M):  # three digits counted whatever the passes (a row beyond them is unread)
        key = keys[i] >> base
        hist[0, key & mask] += 1
        hist[1, (key >> w) & mask] += 1
        hist[2, (key >> (w + w)) & mask] += 1
    first = keys[0]
    last = -1  # the last pass with more than one digit value (the others move nothing)
    for p in range(passes):
        if hist[p, (first >> (base + np.uint64(p * width))) & mask] != M:
            last = p
    if last < 0:  # one key for the whole row: the order is the positions'
        for i in range(M):
            order[i] = i
        return
    src_k, dst_k = keys, ktmp
    for p in range(last + 1):
        h = hist[p]
        shift = base + np.uint64(p * width)
        if h[(first >> shift) & mask] == M:
            continue
        total = 0
        for j in range(1 << width):
            c = h[j]
            h[j] = total
            total += c
        if p == last:
            for i in range(M):
                key = src_k[i]
                digit = (key >> shift) & mask
                at = h[digit]
                h[digit] = at + 1
                order[at] = np.int64(key & low)
        else:
            for i in range(M):
                key = src_k[i]
                digit = (key >> shift) & mask
                at = h[digit]
                h[digit] = at + 1
                dst_k[at] = key
            src_k, dst_k = dst_k, src_k


@njit(cache=True, error_model="numpy")
def _radix_order_wide(x, order, keys, ktmp, itmp, hist):  # pragma: no cover -- compiled
    """:func:`_radix_order` with the position beside the key: float64 rows, or float32
    rows of 2**32 items or more (``hist.shape[0]`` passes of 11 bits)."""
    M = x.shape[0]
    passes = hist.shape[0]
    mask = np.uint64((1 << _DIGIT_BITS) - 1)
    hist[:] = 0
    for i in range(M):
        key = _descending_key(x[i])
        order[i] = i
        keys[i] = key
        for p in range(passes):
            hist[p, (key >> np.uint64(p * _DIGIT_BITS)) & mask] += 1
    src_k, src_i, dst_k, dst_i = keys, order, ktmp, itmp
    swapped = False
    for p in range(passes):
        h = hist[p]
        shift = np.uint64(p * _DIGIT_BITS)
        if h[(src_k[0] >> shift) & mask] == M:
            continue  # one digit value for the whole row: nothing moves
        total = 0
        for j in range(h.shape[0]):
            c = h[j]
            h[j] = total
            total += c
        for i in range(M):
            key = src_k[i]
            digit = (key >> shift) & mask
            at = h[digit]
            h[digit] = at + 1
            dst_k[at] = key
            dst_i[at] = src_i[i]
        src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
        swapped = not swapped
    if swapped:
        order[:] = src_i


@njit(cache=True, error_model="numpy")
def _pair_gap(s_hi, s_lo, boost, lb, cap, power, zero):
    """:func:`shtopk._core.plan.pair_gap` for one pair (all constants in the scores' dtype)."""
    if np.isinf(s_hi) and s_hi == s_lo:  # +inf vs +inf: a tie
        s_hi = zero
        s_lo = zero
    if not power:
        return boost * (s_hi - s_lo)
    a_hi = s_hi * lb
    a_lo = s_lo * lb
    if a_hi <= cap:
        return np.exp(min(a_hi, cap)) - np.exp(min(a_lo, cap))
    x = a_hi - a_lo
    if x > zero:
        return np.exp(min(a_hi + np.log(-np.expm1(-x)), cap))
    return zero


@njit(parallel=True, cache=True, error_model="numpy")
def tournament(
    s,
    valid,
    poison,
    k,
    consts,
    power,
    by_input,
    masked,
    record,
    orders,
    sorted_w,
    w_hi,
    w_lo,
    s_hi0,
    s_lo0,
    gap,
    t_out,
    lo_valid,
    indices,
    weights,
    scores,
    slot_of_row,
    weight_of_row,
    inv_perm,
    first_order,
    E,
    out,
    fbufs,
    ibufs,
    kbufs,
    ubufs,
    hists,
    o_scratch,
    sw_scratch,
    sel_idx,
    sel_w,
    starts,
    pair_slots,
    pair_ws,
    replay,
    bconsts,
    dv,
    d_scores,
    dE,
    d_s,
    need_dE,
    need_dv,
    rfs,
    ris,
    rbs,
    chunks,
):  # pragma: no cover -- compiled
    """:func:`shtopk._core.plan.tournament` for every batch row, in parallel over ``chunks``
    blocks of batch rows; with a non-empty ``E`` (B, n, d), also the gather-sum of each
    row's selection into ``out`` (B, k, d), both of the scores' dtype.

    ``s``/``valid`` (B, m) are padded. With ``record``, the rounds are written side
    by side into one array per field (:func:`.cpu.round_columns`): round ``r``
    (``M_r = m >> r`` items) at columns ``2m - 2 M_r`` of ``orders``/``sorted_w``
    (B, 2m - 2k) and at ``m - M_r`` of the per-pair arrays ``w_hi`` ... ``lo_valid``
    (B, m - k); without it, these arrays are empty and each thread keeps the
    rounds of its current row in scratch (the expansion needs them), so a forward
    writes no O(n) memory but the selection. The selection goes to ``indices``,
    ``weights`` (B, k * P), ``scores`` (B, k) and, with ``record``,
    ``slot_of_row``/``weight_of_row`` (B, n) and ``inv_perm`` (B, k); a non-empty
    ``first_order`` (B, m) int32 takes each row's first-round order, for a backward
    that replays the tournament (``replay``, below; a forward that keeps no record). The rest is
    scratch, one of each per thread (:func:`numba.get_thread_id`), allocated by
    the caller (NumPy maps large arrays on huge pages, which a virtual machine
    faults in several times faster than Numba's small ones): ``fbufs`` (T, 3, m) of
    the scores' dtype, ``ibufs`` (T, 3, m + 1) and ``kbufs`` (T, 3, k) int64, ``ubufs``
    (T, 2, m) uint64, ``hists`` (T, passes, 2048) int32 (radix passes of the first
    round's sort: 3 for float32, 6 for float64), and without ``record`` the rounds
    of the current row, ``o_scratch`` (T, 2m - 2k) int64 and ``sw_scratch``.

    The gather-sum (a forward without record): the row's selection goes to the
    thread's ``sel_idx``/``sel_w`` (T, m) instead of ``indices``/``weights`` (then
    empty), and is summed in row order (:func:`_gather_each_row_once`, with ``starts``
    (T, n + 1) and ``pair_slots``/``pair_ws`` (T, m) as its scratch; poisoned rows,
    whose weights are all NaN, by :func:`_gather_row_by_row`): the same values as
    :func:`gather_sum_by_row` of the written selection, in one parallel call
    without writing it to memory. When the slots are in the scores' order
    (``by_slot``; rows not poisoned), the selection is made as a row layout instead,
    each item's slot and weight in ``pair_slots``/``pair_ws`` (:func:`_row_layout`), and
    summed from there (:func:`_gather_by_slot`, ``starts`` flagging the first members
    that stand for invalid ones; slots of one valid member written, not added; without
    rounds, :func:`_gather_single_members`): the same
    sums, without the top-down expansion's random reads, the selection's writing and its
    scattering by row. A replay's selection goes
    the same way into its record's ``slot_of_row`` and ``weight_of_row``, the layout its
    backward reads.

    With ``replay``, the backward of a forward that kept no record, in the same call (one
    kernel holds the tournament's code, whose compilation is the costly part): each row's
    tournament is replayed from its scores and its ``first_order`` (no sort of the whole
    row) into one-row record and selection arrays carved out of the thread's ``rfs``
    (scores' dtype), ``ris`` (int64) and ``rbs`` (bool) by :func:`_replay_views`; then
    :func:`_replayed_row_backward` writes its ``dE`` (B, n, d), with ``need_dE``, from
    ``dv`` (B, k, d) and ``E``, and its score cotangents ``d_s`` (B, n), with ``need_dv``,
    from ``d_scores`` (B, k) and the backward's constants ``bconsts`` (as for
    :func:`tournament_backward`). The replay is the forward's own tournament on the same
    scores, so it makes the same selection bit for bit, and the backward computes what
    :func:`rows_backward` and :func:`score_cotangents` compute from a record, with the
    same arithmetic; its O(n) numbers per row stay in the thread's scratch (in cache).
    The forward's arrays are then empty, but ``first_order``, and there is no gather-sum.
    """
    B, m = s.shape
    P = m // k
    k_P = (k, P)
    gather = E.shape[0] > 0 and not replay
    # slots in the scores' order, and the selection only read as a row layout (by the
    # gather-sum, or the replay's backward): made as a row layout (but in poisoned rows)
    by_slot = not by_input and (replay or (gather and not record))
    zero = consts[0]
    step = (B + chunks - 1) // chunks
    for c in prange(chunks):
        # scratch of one thread, reused row after row (rows of 16k scores or more would
        # otherwise be fresh memory -- page faults -- for every row)
        tid = get_thread_id()
        fbuf, ibuf, kbuf, ubuf, hist = fbufs[tid], ibufs[tid], kbufs[tid], ubufs[tid], hists[tid]
        skip = np.empty(k if gather else 0, np.bool_)
        single = np.empty(k if gather else 0, np.bool_)
        no_order = np.empty(0, np.int32)
        st, ps, pw = starts[tid], pair_slots[tid], pair_ws[tid]
        for b in range(c * step, min(B, (c + 1) * step)):
            if replay:  # the row's record and selection in the thread's scratch (row 0 of each)
                row, s_b, valid_b, poison_b = b - b, s[b : b + 1], valid[b : b + 1], poison[b : b + 1]
                o_row, sw_row, pairs, lo_valid_b, ind, wts, scores_b, slots_b, wrow_b, inv_b, buf = _replay_views(
                    m, k, E.shape[1], rfs[tid], ris[tid], rbs[tid]
                )
                w_hi_b, w_lo_b, s_hi_b, s_lo_b, gap_b, t_b = (
                    pairs[0:1],
                    pairs[1:2],
                    pairs[2:3],
                    pairs[3:4],
                    pairs[4:5],
                    pairs[5:6],
                )
                first_row, use_first, rec = first_order[b], replay, replay
                row_slot, row_w = (slots_b[0], wrow_b[0]) if by_slot and not poison[b] else (st[:0], pw[:0])
            else:
                row, s_b, valid_b, poison_b = b, s, valid, poison
                if record:
                    o_row, sw_row = orders[b], sorted_w[b]
                else:
                    o_row, sw_row = o_scratch[tid], sw_scratch[tid]
                if gather:
                    ind, wts = sel_idx[tid], sel_w[tid]
                else:
                    ind, wts = indices[b], weights[b]
                w_hi_b, w_lo_b, s_hi_b, s_lo_b, gap_b, t_b = w_hi, w_lo, s_hi0, s_lo0, gap, t_out
                lo_valid_b, scores_b, slots_b, wrow_b, inv_b, buf = (
                    lo_valid,
                    scores,
                    slot_of_row,
                    weight_of_row,
                    inv_perm,
                    fbuf,
                )
                first_row = first_order[b] if first_order.shape[0] else no_order
                use_first, rec = replay, record  # (values, not literals: see _replay_views)
                row_slot, row_w = (ps[:m], pw[:m]) if by_slot and not poison[b] else (ps[:0], pw[:0])
            _tournament_row(
                fbuf,
                ibuf,
                kbuf,
                ubuf,
                hist,
                row,
                s_b,
                valid_b,
                poison_b,
                k,
                consts,
                power,
                by_input,
                masked,
                rec,
                o_row,
                sw_row,
                w_hi_b,
                w_lo_b,
                s_hi_b,
                s_lo_b,
                gap_b,
                t_b,
                lo_valid_b,
                ind,
                wts,
                scores_b,
                slots_b,
                wrow_b,
                inv_b,
                first_row,
                use_first,
                row_slot,
                row_w,
            )
            if replay:
                _replayed_row_backward(
                    b,
                    row,
                    dv,
                    d_scores,
                    E,
                    dE,
                    d_s,
                    valid,
                    poison,
                    need_dE,
                    need_dv,
                    buf,
                    o_row.reshape((1, o_row.shape[0])),
                    sw_row.reshape((1, sw_row.shape[0])),
                    s_hi_b,
                    s_lo_b,
                    gap_b,
                    t_b,
                    lo_valid_b,
                    slots_b[0],
                    wrow_b[0],
                    inv_b,
                    bconsts,
                    power,
                    zero,
                )
            if gather:
                for j in range(k):
                    skip[j] = scores[b, j] == consts[2]  # -inf: a slot of invalid members only
                if row_slot.shape[0] and P == 1:  # no rounds: each slot's one member written, not added
                    _gather_single_members(row_slot, row_w, skip, E[b], out[b])
                elif row_slot.shape[0]:
                    repeated = st[: E.shape[1]]
                    if masked:  # a slot's first member stands for its invalid ones (weight 0)
                        repeated[:] = 0
                        for j in range(k):  # (kbuf[1]: each slot's count of invalid members)
                            single[j] = P - kbuf[1, j] == 1
                            if kbuf[1, j] and not skip[j]:
                                repeated[_slot_first(o_row, kbuf[0], k, m, j)] = 1
                    _gather_by_slot(row_slot, row_w, skip, E[b], out[b], valid[b], repeated, masked, single)
                elif not poison[b]:  # each row in one slot at most (but the invalid ones)
                    _gather_each_row_once(ind, wts, P, skip, E[b], out[b], st, pw, ps)
                else:
                    _gather_row_by_row(ind.reshape(k_P), wts.reshape(k_P), skip, E[b], out[b], st, ps, pw, 0)


@njit(cache=True, error_model="numpy")
def _tournament_row(
    fbuf,
    ibuf,
    kbuf,
    ubuf,
    hist,
    b,
    s,
    valid,
    poison,
    k,
    consts,
    power,
    by_input,
    masked,
    record,
    orders,
    sorted_w,
    w_hi,
    w_lo,
    s_hi0,
    s_lo0,
    gap,
    t_out,
    lo_valid,
    ind,
    wts,
    scores,
    slot_of_row,
    weight_of_row,
    inv_perm,
    first,
    use_first,
    row_slot,
    row_w,
):  # pragma: no cover -- compiled
    """Batch row ``b`` of :func:`tournament` (a function of its own: Numba compiles a parallel
    loop around a call much faster than around a large body). The first round's
    order is sorted here too: by radix for long rows (:func:`_radix_order`); or, with
    ``use_first``, taken from ``first`` (m,) int32, where a forward saved it (a ``first``
    of m items without ``use_first``: the order is written there). A replay (``use_first``)
    under the softmax weighting records of its pairs of finite members only what its backward
    reads (``t_out``: the backward reads the pairs' weights from ``sorted_w``; the record is
    its own scratch).
    ``orders``/``sorted_w`` are this row's (2m - 2k): of the record, or scratch; so
    are ``ind``/``wts`` (m), its selection (member rows and weights, slot after slot).
    ``fbuf``/``ibuf``/``kbuf``/``ubuf``/``hist`` are the calling thread's scratch.

    With a non-empty ``row_slot`` (int64) and ``row_w``, for a row in the scores' order, not
    poisoned, whose selection is read only as a row layout (a forward's gather-sum: m
    items; a replay's backward: ``slot_of_row``/``weight_of_row`` of its record, n items),
    the selection goes there, each item's slot and weight (:func:`_row_layout`; ``key``
    then holds each slot's count of invalid members), instead of ``ind``/``wts``; with
    ``record`` also ``inv_perm``."""
    m = s.shape[1]
    n = slot_of_row.shape[1]
    P = m // k
    zero, one, neg_inf, nan, boost, lb, cap, big = (
        consts[0],
        consts[1],
        consts[2],
        consts[3],
        consts[4],
        consts[5],
        consts[6],
        consts[7],
    )
    cur, keys, ktmp = fbuf[0], fbuf[1], fbuf[2]
    # scores finite or invalid (-inf), none +inf, under the softmax weighting: the weights of
    # pairs of two finite members without the fix-ups for invalid or infinite ones
    fast = not power
    for i in range(m):  # (a loop: a slice assignment copies several times slower)
        x = s[b, i]
        cur[i] = x
        fast &= x <= big  # finite or -inf (invalid)
    pos, itmp, runs = ibuf[0, :m], ibuf[1, :m], ibuf[2]
    perm, key, key_tmp = kbuf[0], kbuf[1], kbuf[2]
    ukeys, utmp = ubuf[0], ubuf[1]
    M = m
    full_off = 0
    half_off = 0
    while M > k:
        h = M // 2
        o = orders[full_off : full_off + M]
        sw = sorted_w[full_off : full_off + M]
        # long rows by radix: the scores as given, and merged scores far out of order; merged
        # scores mostly in order by insertion; short rows as given (or whose insertion gives up)
        # by a merge sort (all three stable: the same order)
        if M == m and use_first:  # the first round's order as a forward saved it: no sort
            for i in range(M):
                o[i] = first[i]
                keys[i] = cur[o[i]]
        else:
            radix = M >= _RADIX_MIN and (M == m or _ascents(cur[:M]) * _ASCENTS_FOR_RADIX > M)
            if not radix:  # sorted into the round's order itself (a radix sort overwrites it)
                for i in range(M):
                    keys[i] = cur[i]
                    o[i] = i
                if M == m or not _insertion_sort_desc(keys[:M], o, _INSERTION_MOVES * M):
                    radix = M >= _RADIX_MIN
                    if not radix:
                        _sort_desc(keys[:M], o, ktmp[:M], itmp[:M], runs)
            if radix:
                _radix_order(cur[:M], o, ukeys[:M], utmp[:M], itmp[:M], hist)
                for i in range(M):
                    keys[i] = cur[o[i]]
            if M == m and first.shape[0] == m:  # saved for a backward that replays the tournament
                for i in range(M):
                    first[i] = o[i]
        # pairs [0, lo) by the general formulas; [lo, h), whose members are both finite, without
        # their fix-ups (the same values), in loops that vectorize. Invalid items (-inf) sort
        # last, so in a row of finite and invalid items only the first pairs have an invalid member.
        lo = h
        if fast:
            lo = 0
            while lo < h and keys[M - 1 - lo] == neg_inf:
                lo += 1
        for i in range(lo):
            sh = keys[i]
            sl = keys[M - 1 - i]
            hv = sh > neg_inf
            lv = sl > neg_inf
            sh0 = sh if hv else zero
            if lv:
                sl0 = sl
            elif np.isinf(sh0):
                sl0 = zero
            else:
                sl0 = sh0
            t = _pair_gap(sh0, sl0, boost, lb, cap, power, zero)
            if lv:  # (a pair with an invalid low member takes no exp: its weights are 1 or 0, and 0)
                e = _exp_neg(t)
                one_e = one + e
                wh = one / one_e
                wl = e / one_e
                cur[i] = wh * sh0 + wl * sl0
            else:
                wh = one if hv else zero
                wl = zero
                cur[i] = sh
            sw[i] = wh
            sw[M - 1 - i] = wl
            if record:
                p = half_off + i
                w_hi[b, p] = wh
                w_lo[b, p] = wl
                s_hi0[b, p] = sh0
                s_lo0[b, p] = sl0
                gap[b, p] = zero if sh0 == sl0 else min(sh0 - sl0, big)  # finite_gap
                t_out[b, p] = t
                lo_valid[b, p] = lv
        if lo < h:  # (ktmp is free until the next sort)
            ee = ktmp[:h]
            # unsigned indices: no check for negative ones (wraparound), which stops vectorizing
            last = np.uint64(M - 1)
            for i in range(lo, h):
                u = np.uint64(i)
                ee[u] = _exp_neg(boost * (keys[u] - keys[last - u]))
            for i in range(lo, h):
                u = np.uint64(i)
                sh = keys[u]
                sl = keys[last - u]
                e = ee[u]
                one_e = one + e
                wh = one / one_e
                wl = e / one_e
                cur[u] = wh * sh + wl * sl
                sw[u] = wh
                sw[last - u] = wl
            for i in range(lo, h):
                fast &= cur[np.uint64(i)] <= big  # (sums of two scores near the largest may round up)
            if record and use_first and not power:  # a replay's softmax backward reads no more
                for i in range(lo, h):
                    t_out[b, half_off + i] = boost * (keys[i] - keys[M - 1 - i])
            elif record:
                for i in range(lo, h):
                    sh = keys[i]
                    sl = keys[M - 1 - i]
                    p = half_off + i
                    w_hi[b, p] = sw[i]
                    w_lo[b, p] = sw[M - 1 - i]
                    s_hi0[b, p] = sh
                    s_lo0[b, p] = sl
                    gap[b, p] = zero if sh == sl else min(sh - sl, big)  # finite_gap
                    t_out[b, p] = boost * (sh - sl)
                    lo_valid[b, p] = True
        full_off += M
        half_off += h
        M = h

    # final order of the slots; expansion top-down, in place, from the last round
    if by_input:
        for j in range(k):
            pos[j] = j
    elif k >= _RADIX_MIN:
        # merged scores mostly in order by insertion (as in the rounds); the scores as given
        # (no round) and merged scores far out of order by radix
        radix = M == m or _ascents(cur[:k]) * _ASCENTS_FOR_RADIX > k
        if not radix:
            for j in range(k):
                keys[j] = cur[j]
                perm[j] = j
            radix = not _insertion_sort_desc(keys[:k], perm[:k], _INSERTION_MOVES * k)
        if radix:
            _radix_order(cur[:k], perm, ukeys[:k], utmp[:k], itmp[:k], hist)
        for j in range(k):
            pos[j] = perm[j]
    else:
        for j in range(k):
            keys[j] = cur[j]
            perm[j] = j
        _sort_desc(keys[:k], perm, ktmp[:k], itmp[:k], runs)
        for j in range(k):
            pos[j] = perm[j]
    if row_slot.shape[0]:  # each item's slot and weight, bottom-up; then the slots' scores
        vb = valid[b]
        _row_layout(orders, sorted_w, perm, k, m, row_slot, row_w, pos, itmp, keys, ktmp, vb, masked, key, one, zero)
        for j in range(k):
            scores[b, j] = cur[perm[j]]
        if record:
            for j in range(k):
                inv_perm[b, perm[j]] = j
        return
    w = ktmp  # the member weights (B, k*P) in place of the sort scratch
    for j in range(k):
        w[j] = one
    width = k
    while M < m:
        M2 = M * 2
        full_off -= M2
        o = orders[full_off : full_off + M2]
        sw = sorted_w[full_off : full_off + M2]
        for q in range(width - 1, -1, -1):
            p = pos[q]
            wq = w[q]
            pos[2 * q] = o[p]
            pos[2 * q + 1] = o[M2 - 1 - p]
            w[2 * q] = sw[p] * wq
            w[2 * q + 1] = sw[M2 - 1 - p] * wq
        width *= 2
        M = M2
    vb = valid[b]
    if by_input:
        for j in range(k):
            top = neg_inf
            for q in range(j * P, (j + 1) * P):
                w[q] = w[q] * (one if vb[pos[q]] else zero)
                top = max(top, w[q])
            first = m
            if cur[j] > neg_inf:
                for q in range(j * P, (j + 1) * P):
                    if vb[pos[q]] and w[q] == top and pos[q] < first:
                        first = pos[q]
            key[j] = -first
            perm[j] = j
        _sort_desc(key, perm, key_tmp, itmp[:k], runs)
        for j in range(k):
            src = perm[j] * P
            for q in range(P):
                itmp[j * P + q] = pos[src + q]
                keys[j * P + q] = w[src + q]
        pos[:] = itmp
        w[:] = keys
    factor = nan if poison[b] else one
    for j in range(k):
        sj = cur[perm[j]]
        scores[b, j] = sj * factor if masked else sj
        first = pos[j * P] if sj > neg_inf else 0
        for q in range(j * P, (j + 1) * P):
            if masked:
                mv = vb[pos[q]]
                ind[q] = pos[q] if mv else first
                wts[q] = w[q] * ((one if mv else zero) * factor)
            else:
                ind[q] = pos[q]
                wts[q] = w[q]
    if record:
        slots = slot_of_row[b]
        wrow = weight_of_row[b]
        for j in range(k):
            for q in range(j * P, (j + 1) * P):
                row = pos[q]
                if row < n:
                    slots[row] = j
                    wrow[row] = wts[q]
        for j in range(k):
            inv_perm[b, perm[j]] = j


@njit(cache=True, error_model="numpy")
def _row_layout(
    orders, sorted_w, perm, k, m, row_slot, row_w, s_a, s_b, w_a, w_b, vb, masked, invalid, one, zero
):  # pragma: no cover -- compiled
    """The expansion of :func:`_tournament_row` as a row layout: ``row_slot[i]``/``row_w[i]``, the
    slot and weight of item ``i`` (the first ``row_slot.shape[0]`` items: padding beyond is
    left out), from the rounds (``orders``/``sorted_w``, rounds side by side) and the final
    order ``perm`` (k,). With ``masked``, an item that is not valid (``vb``, m) gets weight
    0 (its weight times 0, as in the selection) and ``invalid[j]`` (k,) counts slot ``j``'s.

    Bottom-up, from the last round: the slot and weight of each round's item are those of
    its pair in the next round, the weight times its side's ``sorted_w`` (the products
    of the top-down expansion, in the same order: the same weights, bit for bit). Every
    round reads its order and weights front to back and scatters into the next arrays
    (``s_a``/``s_b`` int64, ``w_a``/``w_b`` m/2 at least, scratch), where the top-down
    expansion reads them at random and then writes the selection slot by slot, which
    the gather-sum scatters by row again."""
    for j in range(k):
        s_a[perm[j]] = j
        w_a[perm[j]] = one
        invalid[j] = 0
    M = k
    off = 2 * m - 2 * k
    while M * 2 < m:  # every round but the first
        M2 = M * 2
        off -= M2
        o = orders[off : off + M2]
        sw = sorted_w[off : off + M2]
        for t in range(M):  # the pairs' high members, then their low members
            x = o[t]
            s_b[x] = s_a[t]
            w_b[x] = sw[t] * w_a[t]
        for t in range(M, M2):
            x = o[t]
            p = M2 - 1 - t
            s_b[x] = s_a[p]
            w_b[x] = sw[t] * w_a[p]
        s_a, s_b, w_a, w_b = s_b, s_a, w_b, w_a
        M = M2
    n = row_slot.shape[0]
    rounds = M < m
    o = orders[0:m]
    sw = sorted_w[0:m]
    for t in range(m):  # the first round (without rounds, the final order): into the row layout
        if rounds:
            x = o[t]
            p = t if t < M else m - 1 - t
            w = sw[t] * w_a[p]
        else:
            x = p = t
            w = w_a[t]
        slot = s_a[p]
        if masked and not vb[x]:
            w = w * zero
            invalid[slot] += 1
        elif masked:
            w = w * one
        if x < n:
            row_slot[x] = slot
            row_w[x] = w


@njit(inline="always")
def _slot_first(orders, perm, k, m, j):  # pragma: no cover -- compiled
    """The first member of slot ``j`` in the selection's order: the high member of every pair down
    from the last round (valid when any member of the slot is)."""
    x = perm[j]
    M = k
    off = 2 * m - 2 * k
    while M < m:
        M2 = M * 2
        off -= M2
        x = orders[off + x]
        M = M2
    return x


# ---------------------------------------------------------------- the tournament's backward


@njit(inline="always")
def _clip_max(x, hi):
    """``min(x, hi)`` that keeps NaN (as ``np.clip``)."""
    return hi if x > hi else x


@njit(inline="always")
def _saturate(x, big):
    """:func:`shtopk._core.finite.saturate` of one value: ``+-inf -> +-big``, NaN stays."""
    if x > big:
        return big
    if x < -big:
        return -big
    return x


@njit(cache=True, error_model="numpy")
def _power_side(s, dq, sigma, log_ww, lo_valid, has_gap, log_gap, c):  # pragma: no cover -- compiled
    """``side(s)`` of :func:`shtopk._core.plan_backward._pair_weight_grad` (power weighting);
    ``c`` holds its typed constants (see :func:`tournament_backward`)."""
    zero, big, lb, cap, cap_g, quarter = c[0], c[1], c[3], c[5], c[6], c[7]
    a = s * lb
    if a < -quarter:
        a = -quarter
    elif a > quarter:
        a = quarter
    e = a + log_ww
    f = (np.exp(_clip_max(e, cap)) if lo_valid else zero) * lb
    gf = np.exp(_clip_max(e + log_gap, cap_g)) if has_gap else zero
    return _saturate(_saturate(dq * f, big) + _saturate(sigma * gf, big), big)


@njit(parallel=True, cache=True, error_model="numpy")
def tournament_backward(
    orders, sorted_w, s_hi0, s_lo0, gap, t, lo_valid, dw_items, d_scores, consts, power, out, chunks
):  # pragma: no cover -- compiled
    """:func:`shtopk._core.plan_backward.neutral_tournament_backward` for every batch row, in
    parallel over ``chunks`` blocks of batch rows, formula by formula.

    The rounds' arrays are those :func:`tournament` writes (recorded), one per
    field, rounds side by side (:func:`.cpu.round_columns`), but ``w_hi``/``w_lo``:
    the pairs' weights are read from ``sorted_w``, which holds the same values.
    ``consts``: 0, the largest finite value, boost, ``ln b``, ``ln ln b``, the two exp
    caps and ``big / 4`` (power), 1, in the scores' dtype.
    """
    B, m = dw_items.shape
    k = d_scores.shape[1]
    step = (B + chunks - 1) // chunks
    for c in prange(chunks):
        buf = np.empty((7, m), dw_items.dtype)  # the thread's scratch, reused row after row
        for b in range(c * step, min(B, (c + 1) * step)):
            buf[0] = dw_items[b]
            buf[3, :k] = d_scores[b]
            out[b] = _tournament_backward_row(
                buf, b, k, orders, sorted_w, s_hi0, s_lo0, gap, t, lo_valid, consts, power
            )


@njit(parallel=True, cache=True, error_model="numpy")
def score_cotangents(
    orders,
    sorted_w,
    s_hi0,
    s_lo0,
    gap,
    t,
    lo_valid,
    dw,
    valid,
    poison,
    d_scores,
    inv_perm,
    consts,
    power,
    out,
    chunks,
):  # pragma: no cover -- compiled
    """The score cotangents of :func:`shtopk._backward.selection_backward` (successive halving)
    for every batch row: :func:`tournament_backward` with the steps around it fused in.

    Reads the rows' weight cotangents ``dw`` (B, n) where ``valid`` (0 elsewhere, and for
    the padding up to ``m`` items), and ``d_scores`` (B, k) by ``inv_perm`` (slot order to
    plan order); writes ``out`` (B, n): the cotangents where valid, 0 elsewhere, NaN on
    ``poison``-ed rows. The same arithmetic as the separate steps, in the scores' dtype.
    """
    B, n = dw.shape
    k = d_scores.shape[1]
    m = orders.shape[1] // 2 + k
    step = (B + chunks - 1) // chunks
    zero = consts[0]
    for c in prange(chunks):
        buf = np.empty((7, m), out.dtype)  # the thread's scratch, reused row after row
        for b in range(c * step, min(B, (c + 1) * step)):
            Q = buf[0]
            for i in range(n):
                Q[i] = dw[b, i] if valid[b, i] else zero
            _score_cotangents_row(
                buf,
                b,
                b,
                d_scores,
                inv_perm,
                orders,
                sorted_w,
                s_hi0,
                s_lo0,
                gap,
                t,
                lo_valid,
                valid,
                poison,
                consts,
                power,
                out,
            )


@njit(cache=True, error_model="numpy")
def _score_cotangents_row(
    buf,
    b,
    r,
    d_scores,
    inv_perm,
    orders,
    sorted_w,
    s_hi0,
    s_lo0,
    gap,
    t,
    lo_valid,
    valid,
    poison,
    consts,
    power,
    out,
):  # pragma: no cover -- compiled
    """Batch row ``b`` of :func:`score_cotangents` from its rows' weight cotangents, already in
    ``buf[0, :n]`` (0 where invalid), and row ``r`` of the record (``r = b``, or 0 for a
    replay's one-row record): the padding, ``d_scores`` by ``inv_perm``, the tournament's
    backward, then ``out[b]`` (``out`` (B, n); 0 where invalid, NaN on a poisoned row)."""
    n = out.shape[1]  # (``valid`` may be padded to m items)
    k = d_scores.shape[1]
    zero = consts[0]
    buf[0, n:] = zero
    for j in range(k):
        buf[3, j] = d_scores[b, inv_perm[r, j]]
    sigma = _tournament_backward_row(buf, r, k, orders, sorted_w, s_hi0, s_lo0, gap, t, lo_valid, consts, power)
    if poison[b]:
        out[b] = np.nan
    else:
        for i in range(n):
            out[b, i] = sigma[i] if valid[b, i] else zero


@njit(cache=True, error_model="numpy")
def _replay_views(m, k, n, fs, ints, bs):  # pragma: no cover -- compiled
    """One batch row's record and selection for a replay (:func:`tournament` with ``replay``),
    carved out of one thread's scratch ``fs`` (scores' dtype), ``ints`` (int64) and ``bs``
    (bool; widths: ``_replay_scratch`` in :mod:`.cpu`), in the types :func:`tournament`
    gives :func:`_tournament_row` otherwise (so that its compiled code serves both; for the
    same reason the kernel passes values rather than literals, which Numba would compile
    it again for): ``(orders, sorted_w`` (2P,), ``pairs`` (6, P) (``w_hi`` ... ``t``), ``lo_valid``
    (1, P), ``ind``/``wts`` (m,), ``scores`` (1, k), ``slot_of_row``/``weight_of_row`` (1, n),
    ``inv_perm`` (1, k), ``buf`` (7, m): the tournament backward's), P = m - k."""
    P = m - k
    f = 0
    sorted_w = fs[f : f + 2 * P]
    f += 2 * P
    pairs = fs[f : f + 6 * P].reshape((6, P))
    f += 6 * P
    wts = fs[f : f + m]
    f += m
    scores = fs[f : f + k].reshape((1, k))
    f += k
    weight_of_row = fs[f : f + n].reshape((1, n))
    f += n
    buf = fs[f : f + 7 * m].reshape((7, m))
    i = 0
    orders = ints[i : i + 2 * P]
    i += 2 * P
    ind = ints[i : i + m]
    i += m
    slot_of_row = ints[i : i + n].reshape((1, n))
    i += n
    inv_perm = ints[i : i + k].reshape((1, k))
    lo_valid = bs[:P].reshape((1, P))
    return orders, sorted_w, pairs, lo_valid, ind, wts, scores, slot_of_row, weight_of_row, inv_perm, buf


@njit(cache=True, error_model="numpy")
def _replayed_row_backward(
    b,
    r,
    dv,
    d_scores,
    E,
    dE,
    out,
    valid,
    poison,
    need_dE,
    need_dv,
    buf,
    orders,
    sorted_w,
    s_hi0,
    s_lo0,
    gap,
    t,
    lo_valid,
    slots,
    wrow,
    inv_perm,
    bconsts,
    power,
    zero,
):  # pragma: no cover -- compiled
    """Batch row ``b`` of a replay (:func:`tournament` with ``replay``) after its tournament:
    the rows backward of the row (:func:`rows_backward`'s ``dE``, the weight cotangents
    into ``buf[0]``), then :func:`score_cotangents`' steps on the replayed record (row
    ``r`` of its arrays)."""
    n, d = E.shape[1], E.shape[2]
    Q = buf[0]
    vb = valid[b]
    for i in range(n):
        g = dv[b, slots[i]]
        if need_dv:
            Q[i] = _dot(g, E[b, i], zero) if vb[i] else zero
        if need_dE:
            wt = wrow[i]
            o = dE[b, i]
            for j in range(d):
                o[j] = wt * g[j]
    if need_dv:
        _score_cotangents_row(
            buf,
            b,
            r,
            d_scores,
            inv_perm,
            orders,
            sorted_w,
            s_hi0,
            s_lo0,
            gap,
            t,
            lo_valid,
            valid,
            poison,
            bconsts,
            power,
            out,
        )


@njit(cache=True, error_model="numpy")
def _tournament_backward_row(
    buf, b, k, orders, sorted_w, s_hi0, s_lo0, gap, t, lo_valid, consts, power
):  # pragma: no cover -- compiled
    """Batch row ``b`` of :func:`tournament_backward`: ``Q`` bottom-up, then ``sigma`` and ``D``
    top-down (the pairs' weights from ``sorted_w``). Takes ``Q`` (the padded items' weight
    cotangents) in ``buf[0]`` and the slots' score cotangents in ``buf[3, :k]``; returns
    ``sigma`` (m,), the items' score cotangents (a view of ``buf``)."""
    m = buf.shape[1]
    zero, big, boost, log_log_b, one = consts[0], consts[1], consts[2], consts[4], consts[8]
    dQ = buf[2]  # round r's pairs at m - M_r
    Q = buf[0]
    M = m
    fo = 0
    flip = 1
    while M > k:
        h = M // 2
        o = orders[b, fo : fo + M]
        sw = sorted_w[b, fo : fo + M]
        Qn = buf[flip, :h]
        flip = 1 - flip
        for i in range(h):
            qh = Q[o[i]]
            ql = Q[o[M - 1 - i]]
            Qn[i] = qh * sw[i] + ql * sw[M - 1 - i]
            dQ[m - M + i] = qh - ql
        Q = Qn
        fo += M
        M = h
    sigma = buf[3, :k]
    D = buf[5, :k]
    D[:] = one
    flip = 0
    while M < m:
        M2 = 2 * M
        fo = 2 * m - 2 * M2
        ho = m - M2
        o = orders[b, fo : fo + M2]
        sw = sorted_w[b, fo : fo + M2]
        sigma2 = buf[4 - flip, :M2]
        D2 = buf[6 - flip, :M2]
        flip = 1 - flip
        for i in range(M):
            dq = D[i] * dQ[m - M2 + i]
            si = sigma[i]
            p = ho + i
            if power:
                tp = t[b, p]
                log_ww = -tp - (one + one) * np.log1p(np.exp(-tp))
                lv = lo_valid[b, p]
                has_gap = lv and gap[b, p] > zero
                log_gap = np.log(gap[b, p] if has_gap else one) + log_log_b
                ds_hi = _power_side(s_hi0[b, p], dq, si, log_ww, lv, has_gap, log_gap, consts)
                ds_lo = -_power_side(s_lo0[b, p], dq, si, log_ww, lv, has_gap, log_gap, consts)
            else:
                ww = sw[i] * sw[M2 - 1 - i]  # the pair's w_hi * w_lo
                ds_hi = _saturate(dq * (ww * boost) + si * (ww * _clip_max(t[b, p], big)), big)
                ds_lo = -ds_hi
            hi, lo = o[i], o[M2 - 1 - i]
            sigma2[hi] = _saturate(si * sw[i] + ds_hi, big)
            sigma2[lo] = _saturate(si * sw[M2 - 1 - i] + ds_lo, big)
            D2[hi] = D[i] * sw[i]
            D2[lo] = D[i] * sw[M2 - 1 - i]
        sigma = sigma2
        D = D2
        M = M2
    return sigma
