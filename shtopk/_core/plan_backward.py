"""The backward of the scores-only tournament: score cotangents from weight cotangents.

It walks the rounds that :func:`.plan.tournament` recorded (``record=True``),
in reverse, using only their O(m) numbers per batch row.
"""

from __future__ import annotations

import math
from typing import Any

from .._fast import take_along_last, unsort_many
from .plan import Round, Selection


def _pair_weight_grad(xp: Any, rd: Round, diff: Any, boost: float, weighting: str) -> tuple[Any, Any]:
    """Score cotangents from ``diff = dL/dw_hi - dL/dw_lo`` through ``w = sigmoid(t)``."""
    if weighting == "softmax":
        c = diff * rd.w_hi * rd.w_lo * boost
        return c, -c
    # d w_hi / d s = w_hi * w_lo * ln(b) * b**s, formed in log space (no overflow)
    lb = math.log(boost)
    cap = math.log(xp.finfo(rd.t.dtype).max) - max(0.0, math.log(lb)) - 1.0
    log_ww = -rd.t - 2.0 * xp.log1p(xp.exp(-rd.t))
    f_hi = xp.where(rd.lo_valid, xp.exp(xp.clip(rd.s_hi * lb + log_ww, max=cap)), 0.0) * lb
    f_lo = xp.where(rd.lo_valid, xp.exp(xp.clip(rd.s_lo * lb + log_ww, max=cap)), 0.0) * lb
    return diff * f_hi, -diff * f_lo


def _sorted_layout(xp: Any, hi_part: Any, lo_part: Any) -> Any:
    """Values of the pairs' members (B, M/2) placed as in the round's sort order (B, M):
    the hi member of pair ``i`` at ``i``, its lo member at ``M - 1 - i``."""
    return xp.concat([hi_part, xp.flip(lo_part, axis=-1)], axis=-1)


def neutral_tournament_backward(
    xp: Any, sel: Selection, dw_items: Any, d_scores: Any, boost: float, weighting: str
) -> Any:
    """Score cotangents (B, m) of the padded items, from the cotangents of the
    items' final weights ``dw_items`` (B, m) and of the slot scores ``d_scores``
    (B, k), both in tournament slot order.

    With ``Q`` a group's weighted sum of its members' weight cotangents and
    ``D`` the product of the weights a group receives from later rounds, the
    cotangent of a pair weight is ``D * Q + sigma * s`` (``sigma`` being the
    cotangent of the merged score), so a pair needs only
    ``dL/dw_hi - dL/dw_lo = D * (Q_hi - Q_lo) + sigma * (s_hi - s_lo)``.
    ``Q`` is built bottom-up, ``D`` and ``sigma`` top-down. Both directions
    work in each round's sort order, where a member's weight is at its own
    place (``sorted_weights``): one gather per round for ``Q``, one scatter
    (shared by ``sigma`` and ``D``) per round back.
    """
    dQs = []
    Q = dw_items
    for rd in sel.rounds:
        h = rd.order.shape[-1] // 2
        q = take_along_last(xp, Q, rd.order)
        weighted = q * rd.sorted_weights
        Q = weighted[:, :h] + xp.flip(weighted[:, h:], axis=-1)  # w_hi * Q_hi + w_lo * Q_lo
        dQs.append(q[:, :h] - xp.flip(q[:, h:], axis=-1))
    sigma = d_scores
    D = xp.ones_like(d_scores)
    for rd, dQ in zip(reversed(sel.rounds), reversed(dQs), strict=True):
        ds_hi, ds_lo = _pair_weight_grad(xp, rd, D * dQ + sigma * rd.gap, boost, weighting)
        sigma, D = unsort_many(
            xp,
            [
                _sorted_layout(xp, sigma, sigma) * rd.sorted_weights + _sorted_layout(xp, ds_hi, ds_lo),
                _sorted_layout(xp, D, D) * rd.sorted_weights,
            ],
            rd.order,
        )
    return sigma
