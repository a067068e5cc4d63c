"""The backward of the scores-only tournament: score cotangents from weight cotangents.

It walks the rounds that :func:`.plan.tournament` recorded (``record=True``),
in reverse, using only their O(m) numbers per batch row.
"""

from __future__ import annotations

import math
from typing import Any

from .._fast import take_along_last, unsort_many
from .finite import largest, saturate
from .plan import Round, Selection


def _pair_weight_grad(xp: Any, rd: Round, dq: Any, sigma: Any, boost: float, weighting: str) -> tuple[Any, Any]:
    """Score cotangents of a pair's members through ``w_hi = sigmoid(t)``.

    The weight cotangent ``dL/dw_hi - dL/dw_lo`` is ``dq + sigma * gap`` (``dq = D * dQ``);
    the two terms go through the sigmoid separately so that nothing overflows to
    ``inf`` and no ``inf * 0`` arises. With ``ww = w_hi * w_lo``:

    - softmax (``t = boost * gap``): ``c = dq * ww * boost + sigma * ww * t``, and
      ``ds_hi = c = -ds_lo``. ``ww * t <= 0.23`` is bounded (``ww`` is 0 where ``t``
      is huge or ``inf``), which replaces ``sigma * gap * ww * boost``, whose ``gap``
      may overflow.
    - power (``t = b**s_hi - b**s_lo``): ``ds_hi = dq * f_hi + sigma * gap * f_hi``
      and ``ds_lo = -(dq * f_lo + sigma * gap * f_lo)`` with
      ``f = ww * ln(b) * b**s``; ``f`` and ``gap * f`` are formed in log space
      (``exp(s ln b + log ww)``, ``exp(log gap + log ln b + s ln b + log ww)``).

    Every product saturates at the dtype's largest finite value (a true cotangent
    beyond the range, e.g. a tie at boost 1e38, comes out as +-max, never inf/NaN).
    """
    dt = rd.t.dtype
    big = largest(xp, dt)
    if weighting == "softmax":
        ww = rd.w_hi * rd.w_lo
        # clip(t): t = inf only where ww = 0 (weights 1 and 0), and ww * max = 0 there
        c = saturate(xp, dq * (ww * boost) + sigma * (ww * xp.clip(rd.t, max=big)))
        return c, -c
    lb = math.log(boost)
    cap = math.log(big) - max(0.0, math.log(lb)) - 1.0  # f = ln(b) * exp(<= cap) <= max / e
    cap_g = math.log(big) - 1.0
    log_ww = -rd.t - 2.0 * xp.log1p(xp.exp(-rd.t))  # t is finite here (pair_gap saturates it)
    has_gap = rd.lo_valid & (rd.gap > 0.0)
    log_gap = xp.log(xp.where(has_gap, rd.gap, 1.0)) + math.log(lb)

    def side(s: Any) -> Any:
        # s ln b clipped to +-max/4: +inf scores stay finite; the clip only acts where t is
        # saturated too, and there log_ww (<= -max/e) already makes the exponent negative
        e = xp.clip(s * lb, min=-big / 4, max=big / 4) + log_ww
        f = xp.where(rd.lo_valid, xp.exp(xp.clip(e, max=cap)), 0.0) * lb
        gf = xp.where(has_gap, xp.exp(xp.clip(e + log_gap, max=cap_g)), 0.0)
        return saturate(xp, saturate(xp, dq * f) + saturate(xp, sigma * gf))

    return side(rd.s_hi), -side(rd.s_lo)


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
    ``dL/dw_hi - dL/dw_lo = D * (Q_hi - Q_lo) + sigma * (s_hi - s_lo)``
    (the two terms enter :func:`_pair_weight_grad` separately; ``sigma``
    saturates at the dtype's largest finite value).
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
        ds_hi, ds_lo = _pair_weight_grad(xp, rd, D * dQ, sigma, boost, weighting)
        sigma, D = unsort_many(
            xp,
            [
                saturate(xp, _sorted_layout(xp, sigma, sigma) * rd.sorted_weights + _sorted_layout(xp, ds_hi, ds_lo)),
                _sorted_layout(xp, D, D) * rd.sorted_weights,
            ],
            rd.order,
        )
    return sigma
