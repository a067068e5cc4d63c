"""The scores-only successive-halving tournament (the "plan").

The tournament runs on the scores alone. It tracks, for every output slot, the
list of original items ("members") merged into it and each member's
cumulative weight, so that the vectors E are never touched here: one weighted
gather-sum (:mod:`.apply`) produces the output afterwards, reading each row of
E once.

Notation: the scores are padded from ``n`` to ``m = k * 2**R`` items with
``-inf``. Round ``r`` starts with ``M = m / 2**r`` groups of ``2**r`` members.
It sorts the groups by score (descending, stable), pairs sorted position ``i``
with ``M - 1 - i`` (the "hi" and the "lo" member of pair ``i``) and merges
each pair into new group ``i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .._array_api import device
from .flat import nan_factor

_NEG_INF = -math.inf


def n_rounds(n: int, k: int) -> int:
    """The number of rounds ``R = ceil(log2(n / k))`` (0 when ``n == k``)."""
    R = 0
    while k << R < n:
        R += 1
    return R


@dataclass(frozen=True)
class Round:
    """What one round did, kept for the manual backward pass.

    ``hi``/``lo`` are the positions (B, M/2) of the better and worse member of
    each pair, ``rank`` (B, M) the sorted position of every group, ``s_hi`` and
    ``s_lo`` the pair's scores with finite stand-ins for invalid entries, ``t`` the
    non-negative gap of the pair weights and ``w_hi``/``w_lo`` the weights.
    """

    hi: Any
    lo: Any
    rank: Any
    s_hi: Any
    s_lo: Any
    t: Any
    w_hi: Any
    w_lo: Any
    lo_valid: Any


@dataclass(frozen=True)
class Selection:
    """A selection in plan layout: slot ``j`` is a weighted sum of ``P`` rows.

    ``indices`` (B, k, P) are valid row indices (padding and masked members
    repeat the slot's first index), ``weights`` (B, k, P) and ``scores`` (B, k)
    are in the compute dtype, NaN on poisoned batch rows. With ``record``, the
    selection also holds what the manual backward pass needs: the row layout
    (``slot_of_row``, ``weight_of_row``: (B, n), the output slot and weight of
    every input row), the rounds, and ``inv_perm`` (B, k), the inverse of the
    final ordering of the slots.
    """

    indices: Any
    weights: Any
    scores: Any
    slot_of_row: Any = None
    weight_of_row: Any = None
    rounds: list[Round] = field(default_factory=list)
    inv_perm: Any = None


def pair_gap(xp: Any, s_hi: Any, s_lo: Any, boost: float, weighting: str) -> Any:
    """The gap ``t = g(s_hi) - g(s_lo) >= 0`` so that ``w_hi = sigmoid(t)``.

    ``g(s) = boost * s`` for ``"softmax"`` and ``g(s) = boost ** s`` for
    ``"power"``. Computed without overflow to NaN for any finite scores: a gap
    too large for the dtype becomes ``inf`` (weights exactly 1 and 0).
    ``s_hi >= s_lo`` holds for every pair because pairs follow the sort.
    """
    both_inf = xp.isinf(s_hi) & (s_hi == s_lo)  # +inf vs +inf: a tie, t = 0
    s_hi = xp.where(both_inf, 0.0, s_hi)
    s_lo = xp.where(both_inf, 0.0, s_lo)
    if weighting == "softmax":
        return boost * (s_hi - s_lo)
    lb = math.log(boost)
    cap = math.log(xp.finfo(s_hi.dtype).max) - 1.0
    a_hi, a_lo = s_hi * lb, s_lo * lb
    direct = xp.exp(xp.clip(a_hi, max=cap)) - xp.exp(xp.clip(a_lo, max=cap))
    # b**s_hi - b**s_lo = exp(a_hi + log(1 - exp(a_lo - a_hi))) when b**s_hi overflows
    x = a_hi - a_lo
    x_pos = x > 0.0
    x_safe = xp.where(x_pos, x, 1.0)
    log_form = xp.where(x_pos, xp.exp(xp.clip(a_hi + xp.log(-xp.expm1(-x_safe)), max=cap)), 0.0)
    return xp.where(a_hi <= cap, direct, log_form)


def pair_weights(xp: Any, s_hi: Any, s_lo: Any, boost: float, weighting: str) -> tuple[Any, ...]:
    """Weights of every pair; invalid members (score ``-inf``) get exactly 0.

    Returns ``(s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged_score)`` where the
    ``*0`` scores have invalid entries replaced by finite stand-ins (``s_hi0``
    by 0, ``s_lo0`` by finite ``s_hi0``), which keeps every intermediate finite and
    safe to differentiate.
    """
    hi_valid = s_hi > _NEG_INF
    lo_valid = s_lo > _NEG_INF
    s_hi0 = xp.where(hi_valid, s_hi, 0.0)
    # an invalid lo gets a finite stand-in equal to hi (t = 0: no overflow, no inf * 0)
    s_lo0 = xp.where(lo_valid, s_lo, xp.where(xp.isinf(s_hi0), 0.0, s_hi0))
    t = pair_gap(xp, s_hi0, s_lo0, boost, weighting)
    e = xp.exp(-t)
    one = xp.ones_like(s_hi)
    w_hi = xp.where(lo_valid, 1.0 / (1.0 + e), xp.where(hi_valid, one, 0.0))
    w_lo = xp.where(lo_valid, e / (1.0 + e), 0.0)
    merged = xp.where(lo_valid, w_hi * s_hi0 + w_lo * s_lo0, s_hi)
    return s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged


def _group_gather(xp: Any, x: Any, pos: Any, group: int) -> Any:
    """Gather whole groups: ``x`` (B, M * group), ``pos`` (B, M') -> (B, M' * group)."""
    B, Mp = pos.shape
    offsets = xp.arange(group, dtype=pos.dtype, device=device(pos))
    idx = xp.reshape(pos[..., None] * group + offsets, (B, Mp * group))
    return xp.take_along_axis(x, idx, axis=-1)


def _interleave(xp: Any, a: Any, b: Any) -> Any:
    """(B, h), (B, h) -> (B, 2h) as ``[a0, b0, a1, b1, ...]``."""
    B, h = a.shape
    return xp.reshape(xp.concat([a[..., None], b[..., None]], axis=-1), (B, 2 * h))


def take_slots(xp: Any, x: Any, perm: Any) -> Any:
    """Reorder the slots of ``x`` (B, k, P) by ``perm`` (B, k)."""
    B, k, P = x.shape
    return xp.reshape(_group_gather(xp, xp.reshape(x, (B, k * P)), perm, P), (B, k, P))


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
    """Run the successive-halving tournament on the scores ``s`` (B, n).

    ``s`` is in the compute dtype with ``-inf`` on invalid items (see
    :func:`.flat.flatten`). Returns the plan in final slot order.
    """
    B, n = s.shape
    dev = device(s)
    R = n_rounds(n, k)
    P = 1 << R
    m = k * P
    if m > n:
        s = xp.concat([s, xp.full((B, m - n), _NEG_INF, dtype=s.dtype, device=dev)], axis=-1)
        valid = xp.concat([valid, xp.zeros((B, m - n), dtype=xp.bool, device=dev)], axis=-1)
    ids = xp.broadcast_to(xp.arange(m, device=dev), (B, m))
    cw = xp.astype(valid, s.dtype)
    rounds: list[Round] = []
    for r in range(R):
        group = 1 << r
        M = m >> r
        order_r = xp.argsort(s, axis=-1, descending=True, stable=True)
        hi = order_r[:, : M // 2]
        lo = xp.flip(order_r[:, M // 2 :], axis=-1)
        s_hi = xp.take_along_axis(s, hi, axis=-1)
        s_lo = xp.take_along_axis(s, lo, axis=-1)
        s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, s = pair_weights(xp, s_hi, s_lo, boost, weighting)
        # New group i = [group hi[i] | group lo[i]], each member scaled by its side's weight.
        pair_pos = _interleave(xp, hi, lo)
        ids = _group_gather(xp, ids, pair_pos, group)
        w_member = xp.broadcast_to(_interleave(xp, w_hi, w_lo)[..., None], (B, M, group))
        cw = _group_gather(xp, cw, pair_pos, group) * xp.reshape(w_member, (B, m))
        if record:
            rank = xp.argsort(order_r, axis=-1)
            rounds.append(Round(hi, lo, rank, s_hi0, s_lo0, t, w_hi, w_lo, lo_valid))
    ids = xp.reshape(ids, (B, k, P))
    weights = xp.reshape(cw, (B, k, P))
    member_valid = xp.reshape(xp.take_along_axis(valid, xp.reshape(ids, (B, m)), axis=-1), (B, k, P))
    slot_valid = s > _NEG_INF

    if order == "score":
        perm = xp.argsort(s, axis=-1, descending=True, stable=True)
    else:
        top_w = xp.max(weights, axis=-1, keepdims=True)
        candidates = xp.where(member_valid & (weights == top_w), ids, m)
        key = xp.where(slot_valid, xp.min(candidates, axis=-1), m)
        perm = xp.argsort(key, axis=-1, stable=True)
    ids = take_slots(xp, ids, perm)
    weights = take_slots(xp, weights, perm)
    member_valid = take_slots(xp, member_valid, perm)
    s = xp.take_along_axis(s, perm, axis=-1)
    slot_valid = xp.take_along_axis(slot_valid, perm, axis=-1)

    # Members that are padding or masked read the slot's first row (weight 0),
    # so rows excluded by the mask are never read; slots without any valid
    # member read row 0 and are zeroed by the apply step.
    first = xp.where(slot_valid[..., None], ids[..., :1], 0)
    indices = xp.where(member_valid, ids, first)

    factor = nan_factor(xp, poison, s.dtype)
    weights = weights * factor[:, None, None]
    scores = s * factor[:, None]
    if not record:
        return Selection(indices, weights, scores)

    # Row layout: the member ids of all slots form a permutation of [0, m).
    position = xp.argsort(xp.reshape(ids, (B, m)), axis=-1)[:, :n]
    slot_of_row = position // P
    weight_of_row = xp.take_along_axis(xp.reshape(weights, (B, m)), position, axis=-1)
    inv_perm = xp.argsort(perm, axis=-1)
    return Selection(indices, weights, scores, slot_of_row, weight_of_row, rounds, inv_perm)
