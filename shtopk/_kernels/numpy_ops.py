"""NumPy fast paths of the two passes over E: the gather-sum and the rows backward.

The neutral versions (:func:`shtopk._core.apply.neutral_gather_sum`,
:func:`shtopk._backward.neutral_rows_backward`) are written against the Array API,
which has no ``out=`` arguments: every chunk allocates its gathered rows and
its results, and the backward copies each chunk once more into ``dE``. On
NumPy these passes are memory bound, so those extra writes and the
allocations cost as much as the arithmetic. The versions here compute the
same values with the same operations, chunk by chunk, but write into buffers
they own (``dE`` itself, or one chunk buffer reused across chunks).
``tests/test_kernels_numpy.py`` checks that they equal the neutral versions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core import apply as _apply


def rows_backward(
    xp: Any, d_values: Any, slot_of_row: Any, weight_of_row: Any, E: Any, *, need_dE: bool, need_dw: bool
) -> tuple[Any, Any]:
    """NumPy version of :func:`shtopk._backward.neutral_rows_backward` (same arguments, same results).

    ``dE[i] = weight_of_row[i] * d_values[slot_of_row[i]]`` and
    ``dw[i] = <d_values[slot_of_row[i]], E[i]>``, in chunks of rows. When E
    is float32 or float64 the rows of ``d_values`` are taken straight into
    the chunk of ``dE`` (which is then scaled in place): no per-chunk
    temporary and no second copy.
    """
    B, n, d = E.shape
    k = d_values.shape[-2]
    acc = np.dtype(_apply.accumulation_dtype(xp, E.dtype))
    slots = (slot_of_row + (np.arange(B, dtype=slot_of_row.dtype) * k)[:, None]).reshape(B * n)
    w = weight_of_row.astype(acc, copy=False).reshape(B * n, 1)
    dv2 = d_values.reshape(B * k, d).astype(acc, copy=False)  # small (B, k, d): cast once, not per chunk
    E2 = E.reshape(B * n, d)
    dE = np.empty((B * n if need_dE else 0, d), dtype=E.dtype)
    dw = np.empty((B * n if need_dw else 0,), dtype=acc)
    step = _apply.chunk_rows(xp, d, E.dtype)
    direct = need_dE and E.dtype == acc  # gather straight into dE
    buf = np.empty((0 if direct else min(step, B * n), d), dtype=acc)
    for a in range(0, B * n, step):
        b = min(B * n, a + step)
        G = dE[a:b] if direct else buf[: b - a]
        # mode="clip": with the default "raise" NumPy gathers into a hidden temporary first
        # (measured: ~3x slower into a fresh dE); slots are in range by construction
        np.take(dv2, slots[a:b], axis=0, out=G, mode="clip")
        if need_dw:
            dw[a:b] = xp.vecdot(G, E2[a:b].astype(acc, copy=False))
        if need_dE:
            np.multiply(G, w[a:b], out=G)
            if not direct:
                dE[a:b] = G
    return (
        dE.reshape(B, n, d) if need_dE else None,
        dw.reshape(B, n) if need_dw else None,
    )


#: Up to this many output rows, a plan that reads every row of E is applied as one dense
#: (k, n) @ (n, d) product per batch row: E is then streamed in order instead of gathered
#: row by row. Measured (batch 16, n = 4096, d = 256, float32), in units of reading E
#: once: k = 2: 1.4 vs 2.6 for the gather; k = 8: 1.2 vs 1.6; k = 16: 1.8 vs 1.6.
DENSE_MAX_K = 8


def _dense_gather_sum(indices: Any, weights: Any, scores: Any, E: Any) -> Any | None:
    """The gather-sum as a dense matrix product, or None where it would differ.

    A dense product multiplies every row of E, also rows the plan never names
    (masked rows, whose values may be anything, NaN included); it is used only
    when every row of E is a member of some output row and no output row is a
    surplus one, so it reads exactly the rows the gather reads. Repeated
    indices add up, as in the gather. A non-finite result (E holds NaN or
    inf, which the dense product would spread to every output row of the
    batch row) also returns None, so that such rows poison only their own
    slot, as in every other backend.
    """
    B, k, P = indices.shape
    n = E.shape[-2]
    if (scores == -np.inf).any():
        return None
    rows = indices.astype(np.intp, copy=False).reshape(B, k * P) + (np.arange(B, dtype=np.intp) * n)[:, None]
    if not np.bincount(rows.reshape(-1), minlength=B * n).all():
        return None
    cells = rows + (np.arange(B, dtype=np.intp) * (k - 1) * n)[:, None]  # (b, i) -> b*k*n + i ...
    cells += np.repeat(np.arange(k, dtype=np.intp) * n, P)[None, :]  # ... + j*n for slot j
    dense = np.bincount(cells.reshape(-1), weights=weights.reshape(-1), minlength=B * k * n)
    out = np.matmul(dense.astype(E.dtype, copy=False).reshape(B, k, n), E)
    if not np.isfinite(out).all():
        # a NaN/inf row of E would reach every output row of its batch row here (0 * NaN = NaN);
        # the gather keeps it in its own slot, the documented per-slot policy
        return None
    return out


def gather_sum(xp: Any, indices: Any, weights: Any, scores: Any, E: Any) -> Any:
    """NumPy version of :func:`shtopk._core.apply.neutral_gather_sum` (same arguments, same results).

    Same chunks and the same ``take`` + batched ``matmul`` per chunk, but the
    rows are gathered into one buffer reused by every chunk and the weighted
    sums are written straight into the output (float32/float64 E), instead
    of fresh arrays per chunk.
    """
    B, k, P = indices.shape
    n, d = E.shape[-2], E.shape[-1]
    S = B * k
    acc = np.dtype(_apply.accumulation_dtype(xp, E.dtype))
    direct = E.dtype == acc  # matmul writes straight into ``out``
    if direct and 0 < k <= DENSE_MAX_K and P > 1:
        out = _dense_gather_sum(indices, weights, scores, E)
        if out is not None:
            return out
    rows = indices.astype(np.intp, copy=False).reshape(B, k * P) + (np.arange(B, dtype=np.intp) * n)[:, None]
    rows = rows.reshape(S, P)
    w = weights.astype(acc, copy=False).reshape(S, P, 1).transpose(0, 2, 1)  # (S, 1, P): a row vector per slot
    E2 = E.reshape(B * n, d)
    per_chunk = _apply.chunk_rows(xp, d, E.dtype)
    p_step = min(P, per_chunk)
    s_step = max(1, per_chunk // p_step)
    out = np.empty((S, d), dtype=E.dtype)
    if S == 0:
        return out.reshape(B, k, d)
    taken = np.empty((min(S, s_step) * p_step, d), dtype=E.dtype)
    gathered = taken if direct else np.empty(taken.shape, dtype=acc)
    total = np.empty((0 if direct else min(S, s_step), 1, d), dtype=acc)
    part = np.empty((min(S, s_step) if P > p_step else 0, 1, d), dtype=acc)
    for a in range(0, S, s_step):
        b = min(S, a + s_step)
        acc_rows = out[a:b, None, :] if direct else total[: b - a]
        for p0 in range(0, P, p_step):
            p1 = min(P, p0 + p_step)
            m = (b - a) * (p1 - p0)
            # mode="clip": with the default "raise" NumPy gathers into a hidden temporary first;
            # the rows are in range by construction
            np.take(E2, rows[a:b, p0:p1].reshape(m), axis=0, out=taken[:m], mode="clip")
            if not direct:
                gathered[:m] = taken[:m]  # half precision: accumulate in float32, as the neutral path
            G = gathered[:m].reshape(b - a, p1 - p0, d)
            if p0 == 0:
                np.matmul(w[a:b, :, p0:p1], G, out=acc_rows)
            else:
                np.matmul(w[a:b, :, p0:p1], G, out=part[: b - a])
                acc_rows += part[: b - a]
        if not direct:
            out[a:b] = total[: b - a, 0, :]
    # slots without any valid member are zero (their member rows were read as row 0 of the batch)
    surplus = (scores == -np.inf).reshape(S)
    if surplus.any():
        out[surplus] = 0.0
    return out.reshape(B, k, d)
