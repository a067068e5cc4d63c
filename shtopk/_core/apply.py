"""Apply a plan: one weighted gather-sum over E, reading each row of E once.

The gather is done in chunks of about :data:`CHUNK_BYTES` so that each chunk
of gathered rows is reduced while it is still in cache and the extra memory
stays bounded, whatever the size of E. Arrays that cannot be written in place
(JAX) are processed in one piece instead: each chunk would cost a copy of the
whole output outside ``jit``, and under ``jit`` XLA plans the memory itself.
"""

from __future__ import annotations

import math
from typing import Any

from .._array_api import at, compute_dtype, device, is_half, is_writeable_array
from .._fast import all_true_on_host

#: Bytes of gathered rows processed at a time (measured on a 2-core CPU:
#: 1 MiB chunks run 1.5-2.5x the time of ``E.sum(axis=-2)``, a whole-array
#: gather 5x, and they never hold more than one chunk of extra memory).
CHUNK_BYTES = 1 << 20


def accumulation_dtype(xp: Any, dtype: Any) -> Any:
    """float16/bfloat16 accumulate in float32; float32/float64 in themselves; other
    float64-like dtypes (big-endian ``>f8``, ``longdouble``) in float64."""
    if is_half(xp, dtype):
        return xp.float32
    return dtype if dtype in (xp.float32, xp.float64) else compute_dtype(xp, dtype)


def chunk_rows(xp: Any, d: int, dtype: Any) -> int:
    """How many rows of length ``d`` make one chunk of :data:`CHUNK_BYTES`."""
    itemsize = xp.finfo(dtype).bits // 8
    return max(1, CHUNK_BYTES // max(1, d * itemsize))


def rows_per_chunk(xp: Any, d: int, dtype: Any, out: Any, total: int) -> int:
    """:func:`chunk_rows`, or ``total`` (one piece) when ``out`` cannot be written in place."""
    return chunk_rows(xp, d, dtype) if is_writeable_array(out) else max(1, total)


def batch_offsets(xp: Any, B: int, stride: int, like: Any) -> Any:
    """(B, 1) offsets ``b * stride`` to index a flattened batch."""
    return xp.reshape(xp.arange(B, dtype=like.dtype, device=device(like)) * stride, (B, 1))


def neutral_gather_sum(xp: Any, indices: Any, weights: Any, scores: Any, E: Any) -> Any:
    """The pure Array API :func:`gather_sum`."""
    B, k, P = indices.shape
    n, d = E.shape[-2], E.shape[-1]
    S = B * k
    acc_dtype = accumulation_dtype(xp, E.dtype)
    rows = xp.reshape(xp.reshape(indices, (B, k * P)) + batch_offsets(xp, B, n, indices), (S, P))
    w = xp.reshape(xp.astype(weights, acc_dtype), (S, P))
    E2 = xp.reshape(E, (B * n, d))
    keep = xp.reshape(scores != -math.inf, (S, 1))
    zero_surplus = all_true_on_host(xp, keep) is not True
    out = xp.empty((S, d), dtype=E.dtype, device=device(E))
    per_chunk = rows_per_chunk(xp, d, E.dtype, out, S * P)
    p_step = min(P, per_chunk)
    s_step = max(1, per_chunk // p_step)
    for a in range(0, S, s_step):
        b = min(S, a + s_step)
        acc = None
        for p0 in range(0, P, p_step):
            p1 = min(P, p0 + p_step)
            G = xp.take(E2, xp.reshape(rows[a:b, p0:p1], (-1,)), axis=0)
            G = xp.astype(xp.reshape(G, (b - a, p1 - p0, d)), acc_dtype, copy=False)
            if p1 - p0 == 1:
                part = w[a:b, p0:p1] * G[:, 0, :]
            else:
                part = xp.matmul(w[a:b, None, p0:p1], G)[:, 0, :]
            if acc is None:
                acc = part
            else:
                acc += part  # in place where the library can (``acc`` is ours), else a new array
        if acc is None:
            continue
        if zero_surplus:  # slots without any valid member, zeroed while the chunk is in cache
            acc = xp.where(keep[a:b, ...], acc, 0.0)
        out = at(out)[a:b, ...].set(xp.astype(acc, E.dtype, copy=False), xp=xp)
    return xp.reshape(out, (B, k, d))


def neutral_rows_backward(
    xp: Any, d_values: Any, slot_of_row: Any, weight_of_row: Any, E: Any, *, need_dE: bool, need_dw: bool
) -> tuple[Any, Any]:
    """The backward of :func:`neutral_gather_sum` for selections whose rows each land in one slot.

    ``dE[i] = weight_of_row[i] * d_values[slot_of_row[i]]`` and
    ``dw[i] = <d_values[slot_of_row[i]], E[i]>``, the cotangent of row ``i``'s
    weight, both in one chunked pass over E. Returns ``dE`` (B, n, d) in E's
    dtype (or None) and ``dw`` (B, n) in the accumulation dtype (or None).
    """
    B, n, d = E.shape
    k = d_values.shape[-2]
    acc = accumulation_dtype(xp, E.dtype)
    slots = xp.reshape(slot_of_row + batch_offsets(xp, B, k, slot_of_row), (B * n,))
    w = xp.reshape(xp.astype(weight_of_row, acc), (B * n, 1))
    dv2 = xp.reshape(d_values, (B * k, d))
    E2 = xp.reshape(E, (B * n, d))
    dE: Any = xp.empty((B * n, d), dtype=E.dtype, device=device(E)) if need_dE else None
    dw: Any = xp.empty((B * n,), dtype=acc, device=device(E)) if need_dw else None
    step = rows_per_chunk(xp, d, E.dtype, dE if need_dE else dw, B * n)
    for a in range(0, B * n, step):
        b = min(B * n, a + step)
        G = xp.astype(xp.take(dv2, slots[a:b], axis=0), acc, copy=False)  # a fresh chunk: ours to modify
        if need_dw:
            dw = at(dw)[a:b].set(xp.vecdot(G, xp.astype(E2[a:b, ...], acc, copy=False)), xp=xp)
        if need_dE:
            G *= w[a:b, ...]  # in place where the library can: a temporary per chunk costs ~2x (NumPy)
            dE = at(dE)[a:b, ...].set(xp.astype(G, E.dtype, copy=False), xp=xp)
    return (
        xp.reshape(dE, (B, n, d)) if need_dE else None,
        xp.reshape(dw, (B, n)) if need_dw else None,
    )
