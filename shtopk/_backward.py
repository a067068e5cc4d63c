"""Manual, backend-neutral backward passes (vector-Jacobian products).

They serve :mod:`shtopk.vjp` (for libraries without autograd) and the
``torch.autograd.Function`` wrappers in :mod:`shtopk.torch`.

Successive halving: every input row lands in exactly one output slot, so

- ``dE[i] = weight_of_row[i] * d_values[slot_of_row[i]]`` (a gather), and
- the cotangent of row ``i``'s final weight is ``<d_values[slot], E[i]>``;

both are computed in one chunked pass over E. The weight cotangents then flow
back through the scores-only tournament, round by round in reverse, using only
the O(n) per-row records the forward pass kept (never a copy of E).
"""

from __future__ import annotations

from typing import Any

from ._core.apply import accumulation_dtype
from ._core.baseline import BaselineState, distributions, score_offsets, step_chunks
from ._core.finite import cast_saturated, saturate
from ._core.flat import Flat, nan_factor
from ._core.plan import Selection, n_rounds
from ._fast import take_along_last
from ._kernels import replay_backward, rows_backward, score_cotangents, tournament_backward


def _zeros_scores(xp: Any, flat: Flat, k: int) -> Any:
    return xp.zeros((flat.B, k), dtype=flat.s.dtype, device=flat.device)


def selection_backward(
    flat: Flat,
    sel: Selection,
    d_values: Any,
    d_scores: Any,
    *,
    tournament: dict[str, Any] | None,
    need_dE: bool = True,
    need_dv: bool = True,
) -> tuple[Any, Any]:
    """Backward of a plan-layout selection (successive halving or hard top-k).

    ``tournament`` holds ``boost``, ``weighting`` and ``order`` for successive halving
    and is None for hard top-k (whose weights do not depend on the scores).
    Returns ``(dE (B, n, d), dv (B, n))`` in the dtypes of E and v (or None).
    """
    xp = flat.xp
    k = flat.k
    if sel.replay is not None and tournament is not None:  # no record: the engine replays the tournament
        dE, ds = replay_backward(
            xp,
            sel,
            flat.s,
            flat.valid,
            flat.poison,
            flat.E,
            d_values,
            d_scores,
            k,
            **tournament,
            need_dE=need_dE,
            need_dv=need_dv,
        )
        return dE, (cast_saturated(xp, ds, flat.v_dtype) if need_dv else None)
    d_scores = _zeros_scores(xp, flat, k) if d_scores is None else xp.astype(d_scores, flat.s.dtype)
    need_dw = need_dv and tournament is not None
    dE, dw = rows_backward(xp, d_values, sel.slot_of_row, sel.weight_of_row, flat.E, need_dE=need_dE, need_dw=need_dw)
    if not need_dv:
        return dE, None
    if tournament is None:
        ds = take_along_last(xp, d_scores, sel.slot_of_row) * sel.weight_of_row
    else:
        ds = _score_cotangents(flat, sel, dw, d_scores, tournament)
    return dE, cast_saturated(xp, ds, flat.v_dtype)


def _score_cotangents(flat: Flat, sel: Selection, dw: Any, d_scores: Any, tournament: dict[str, Any]) -> Any:
    """Successive halving's score cotangents (B, n), in the scores' compute dtype, from the
    rows' weight cotangents ``dw`` (B, n) and the slots' score cotangents (B, k): back
    through the tournament, in one engine call where the engine fuses these steps.
    ``tournament``: as for :func:`selection_backward`."""
    xp = flat.xp
    B, n, k = flat.B, flat.n, flat.k
    weights = {"boost": tournament["boost"], "weighting": tournament["weighting"]}
    fused = score_cotangents(xp, sel, dw, d_scores, flat.valid, flat.poison, **weights)
    if fused is not None:
        return fused
    m = k << n_rounds(n, k)
    dw = xp.where(flat.valid, xp.astype(dw, flat.s.dtype, copy=False), 0.0)
    if m > n:
        dw = xp.concat([dw, xp.zeros((B, m - n), dtype=dw.dtype, device=flat.device)], axis=-1)
    d_scores_t = take_along_last(xp, d_scores, sel.inv_perm)
    ds = tournament_backward(xp, sel, dw, d_scores_t, **weights)[:, :n]
    ds = xp.where(flat.valid, ds, 0.0)  # invalid items: constant -inf scores (matters when n == k)
    return ds * nan_factor(xp, flat.poison, ds.dtype)[:, None]  # poisoned rows: NaN, as their outputs


def baseline_backward(
    flat: Flat, state: BaselineState, d_values: Any, d_scores: Any, *, need_dE: bool = True, need_dv: bool = True
) -> tuple[Any, Any]:
    """Backward of the iterative baseline, recomputing the distributions chunk by chunk."""
    xp = flat.xp
    B, n, k = flat.B, flat.n, flat.k
    E = flat.E
    acc = accumulation_dtype(xp, E.dtype)
    E_acc = xp.astype(E, acc, copy=False)
    dv_acc = xp.astype(d_values, acc, copy=False)
    d_scores = _zeros_scores(xp, flat, k) if d_scores is None else xp.astype(d_scores, flat.s.dtype)
    cdt = flat.s.dtype
    dE = xp.zeros(E.shape, dtype=acc, device=flat.device) if need_dE else None
    ds = xp.zeros((B, n), dtype=cdt, device=flat.device)
    dm = []
    for i0, i1 in step_chunks(B, n, k):
        p = distributions(xp, state, i0, i1)
        if need_dE:
            dE += xp.matmul(xp.matrix_transpose(xp.astype(p, acc, copy=False)), dv_acc[:, i0:i1, :])
        if not need_dv:
            continue
        dS = d_scores[:, i0:i1, None]
        # saturate (finite.py): scores near the dtype's range (or +inf) make dS * s0 overflow,
        # and an inf here would meet a probability of exactly 0 (inf * 0 = NaN)
        dp = saturate(xp, xp.astype(xp.matmul(dv_acc[:, i0:i1, :], xp.matrix_transpose(E_acc)), cdt))
        dp = saturate(xp, dp + saturate(xp, dS * saturate(xp, state.s0)[:, None, :]))  # +inf * 0: no NaN
        dz = p * saturate(xp, dp - saturate(xp, xp.sum(p * dp, axis=-1, keepdims=True)))
        # dz/ds = -2 alpha (s - m_i): finite wherever p > 0 (|alpha (s - m_i)| <= sqrt(alpha * 104));
        # where p == 0 the offset may be +-inf and the gradient is exactly 0
        offset = score_offsets(xp, state, i0, i1)
        live = p > 0.0
        g = xp.where(live, saturate(xp, dz * (-2.0 * (state.alpha * xp.where(live, offset, 0.0)))), 0.0)
        ds = saturate(xp, ds + xp.sum(g + p * dS, axis=1))
        dm.append(-saturate(xp, xp.sum(g, axis=-1)))
    if need_dE:
        dE = xp.astype(dE * xp.astype(state.factor, acc)[:, None, None], E.dtype)
    if not need_dv:
        return dE, None
    if dm:
        # the chosen score m_i is the score of the item of rank i
        dm = xp.concat(dm, axis=-1)
        chosen = take_along_last(xp, dm, xp.clip(state.rank, max=k - 1))
        ds = saturate(xp, ds + xp.where(state.valid & (state.rank < k), chosen, 0.0))
    ds = ds * state.factor[:, None]
    return dE, cast_saturated(xp, ds, flat.v_dtype)
