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
from .._fast import (
    all_finite_on_host,
    all_true_on_host,
    argsort_descending,
    inverse_permutation,
    take_along_last,
    take_along_last_many,
)
from .finite import finite_gap
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
    """What one round did: the pairs it formed, and what the backward pass needs.

    ``order`` (B, M) lists the group positions by score (descending,
    stable); pair ``i`` is its ``hi`` member ``order[:, i]`` and its ``lo``
    member ``order[:, M - 1 - i]``. ``sorted_weights`` (B, M) is the weight
    of the group at each place of ``order`` (``w_hi`` of pair ``i`` at ``i``,
    its ``w_lo`` at ``M - 1 - i``); ``w_hi``/``w_lo`` (B, M/2) are the same
    weights by pair. Keeping the sort order itself (rather than stacked
    pairs) saves building the pairs in the forward pass and re-assembling
    them for the backward scatter. With ``record``, also ``s_hi``/``s_lo``,
    the pair's scores with finite stand-ins for invalid entries, their
    difference ``gap`` (saturated at the dtype's largest finite value, see
    :func:`.finite.finite_gap`), ``t``, the non-negative gap behind the
    weights, and ``lo_valid``.
    """

    order: Any
    sorted_weights: Any
    w_hi: Any
    w_lo: Any
    s_hi: Any = None
    s_lo: Any = None
    gap: Any = None
    t: Any = None
    lo_valid: Any = None


@dataclass(frozen=True)
class Selection:
    """A selection in plan layout: slot ``j`` is a weighted sum of ``P`` rows.

    ``indices`` (B, k, P) are valid row indices (padding and masked members
    repeat the slot's first index), ``weights`` (B, k, P) and ``scores`` (B, k)
    are in the compute dtype, NaN on poisoned batch rows. With ``record``, the
    selection also holds what the manual backward pass needs: the row layout
    (``slot_of_row``, ``weight_of_row``: (B, n), the output slot and weight of
    every input row), the rounds, and ``inv_perm`` (B, k), the inverse of the
    final ordering of the slots. An engine that writes the rounds' fields side by
    side (one array per :class:`Round` field, round ``r`` at the columns
    :func:`shtopk._kernels.cpu.round_columns` gives) may also hand over those arrays
    as ``columns``, of which the rounds are views; None otherwise. An engine that replays
    the tournament in its backward instead (where the caller asks for it) keeps only
    ``scores`` and, as ``replay``, what its replay needs besides the scores
    (:func:`shtopk._kernels.replay_backward`); ``replay`` is None otherwise.
    """

    indices: Any
    weights: Any
    scores: Any
    slot_of_row: Any = None
    weight_of_row: Any = None
    rounds: list[Round] = field(default_factory=list)
    inv_perm: Any = None
    columns: tuple[Any, ...] | None = None
    replay: Any = None


def pair_gap(xp: Any, s_hi: Any, s_lo: Any, boost: float, weighting: str, *, all_finite: bool = False) -> Any:
    """The gap ``t = g(s_hi) - g(s_lo) >= 0`` so that ``w_hi = sigmoid(t)``.

    ``g(s) = boost * s`` for ``"softmax"`` and ``g(s) = boost ** s`` for
    ``"power"``. Computed without overflow to NaN for any finite scores: a gap
    too large for the dtype becomes ``inf`` (weights exactly 1 and 0).
    ``s_hi >= s_lo`` holds for every pair because pairs follow the sort.
    ``all_finite=True`` (checked by the caller) skips the ``+inf`` tie fix-up.
    """
    if not all_finite:
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


def pair_weights(
    xp: Any, s_hi: Any, s_lo: Any, boost: float, weighting: str, *, all_finite: bool = False
) -> tuple[Any, ...]:
    """Weights of every pair; invalid members (score ``-inf``) get exactly 0.

    Returns ``(s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged_score)`` where the
    ``*0`` scores have invalid entries replaced by finite stand-ins (``s_hi0``
    by 0, ``s_lo0`` by finite ``s_hi0``), which keeps every intermediate finite and
    safe to differentiate.

    ``all_finite=True`` promises that every score is finite (the caller
    checked it on the host): then every ``where`` below selects its first
    branch, and skipping them gives the same values with half the passes.
    """
    if all_finite:
        t = pair_gap(xp, s_hi, s_lo, boost, weighting, all_finite=True)
        e = xp.exp(-t)
        one_e = 1.0 + e
        w_hi = 1.0 / one_e
        w_lo = e / one_e
        lo_valid = xp.ones(s_hi.shape, dtype=xp.bool, device=device(s_hi))
        return s_hi, s_lo, t, w_hi, w_lo, lo_valid, w_hi * s_hi + w_lo * s_lo
    hi_valid = s_hi > _NEG_INF
    lo_valid = s_lo > _NEG_INF
    s_hi0 = xp.where(hi_valid, s_hi, 0.0)
    # an invalid lo gets a finite stand-in equal to hi (t = 0: no overflow, no inf * 0)
    s_lo0 = xp.where(lo_valid, s_lo, xp.where(xp.isinf(s_hi0), 0.0, s_hi0))
    t = pair_gap(xp, s_hi0, s_lo0, boost, weighting)
    e = xp.exp(-t)
    one_e = 1.0 + e
    one = xp.ones_like(s_hi)
    w_hi = xp.where(lo_valid, 1.0 / one_e, xp.where(hi_valid, one, 0.0))
    w_lo = xp.where(lo_valid, e / one_e, 0.0)
    merged = xp.where(lo_valid, w_hi * s_hi0 + w_lo * s_lo0, s_hi)
    return s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, merged


def _stack_last(xp: Any, a: Any, b: Any) -> Any:
    """(B, h), (B, h) -> (B, h, 2)."""
    return xp.stack([a, b], axis=-1)


def take_slots(xp: Any, x: Any, perm: Any) -> Any:
    """Reorder the slots of ``x`` (B, k, P) by ``perm`` (B, k)."""
    B, k, P = x.shape
    idx = xp.reshape(perm[..., None] * P + xp.arange(P, dtype=perm.dtype, device=device(perm)), (B, k * P))
    return xp.reshape(take_along_last(xp, xp.reshape(x, (B, k * P)), idx), (B, k, P))


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

    # The rounds, on the scores only: sizes m, m/2, ..., 2k (O(m log m) in all).
    rounds: list[Round] = []
    for r in range(R):
        M = m >> r
        order_r = argsort_descending(xp, s, nearly_sorted=r > 0)
        s_sorted = take_along_last(xp, s, order_r)
        s_hi = s_sorted[:, : M // 2]
        s_lo = xp.flip(s_sorted[:, M // 2 :], axis=-1)
        # on the host, a cheap check lets every round of finite scores skip the -inf/+inf handling
        finite = all_finite_on_host(xp, s) is True
        s_hi0, s_lo0, t, w_hi, w_lo, lo_valid, s = pair_weights(xp, s_hi, s_lo, boost, weighting, all_finite=finite)
        sorted_weights = xp.concat([w_hi, xp.flip(w_lo, axis=-1)], axis=-1)
        if record:
            gap = finite_gap(xp, s_hi0, s_lo0)  # never inf (scores near both ends of the range, or +inf)
            rounds.append(Round(order_r, sorted_weights, w_hi, w_lo, s_hi0, s_lo0, gap, t, lo_valid))
        else:
            rounds.append(Round(order_r, sorted_weights, w_hi, w_lo))
    slot_valid = s > _NEG_INF

    if order == "score":
        perm = argsort_descending(xp, s, nearly_sorted=R > 0)
        ids, weights = _expand(xp, rounds, perm, s.dtype)
    else:
        ids, weights = _expand(xp, rounds, xp.broadcast_to(xp.arange(k, device=dev), (B, k)), s.dtype)
        member_valid = xp.reshape(take_along_last(xp, valid, xp.reshape(ids, (B, m))), (B, k, P))
        weights = weights * xp.astype(member_valid, weights.dtype)
        top_w = xp.max(weights, axis=-1, keepdims=True)
        candidates = xp.where(member_valid & (weights == top_w), ids, m)
        key = xp.where(slot_valid, xp.min(candidates, axis=-1), m)
        perm = xp.argsort(key, axis=-1, stable=True)
        ids = take_slots(xp, ids, perm)
        weights = take_slots(xp, weights, perm)
    s = take_along_last(xp, s, perm)
    if all_true_on_host(xp, valid) is True and all_true_on_host(xp, ~poison) is True:
        # Host arrays with every item valid and no NaN (no mask, no padding): every member is
        # valid and every factor 1, so the masking below would return its inputs unchanged.
        indices = ids
        scores = s
    else:
        slot_valid = take_along_last(xp, slot_valid, perm)
        member_valid = xp.reshape(take_along_last(xp, valid, xp.reshape(ids, (B, m))), (B, k, P))

        # Members that are padding or masked read the slot's first row (weight 0),
        # so rows excluded by the mask are never read; slots without any valid
        # member read row 0 and are zeroed by the apply step.
        first = xp.where(slot_valid[..., None], ids[..., :1], 0)
        indices = xp.where(member_valid, ids, first)
        factor = nan_factor(xp, poison, s.dtype)
        weights = weights * (xp.astype(member_valid, s.dtype) * factor[:, None, None])
        scores = s * factor[:, None]
    if not record:
        return Selection(indices, weights, scores)
    # Row layout: the member ids of all slots form a permutation of [0, m).
    position = inverse_permutation(xp, xp.reshape(ids, (B, m)))[:, :n]
    slot_of_row = position // P
    weight_of_row = take_along_last(xp, xp.reshape(weights, (B, m)), position)
    return Selection(indices, weights, scores, slot_of_row, weight_of_row, rounds, inverse_permutation(xp, perm))


def _expand(xp: Any, rounds: list[Round], slots: Any, dtype: Any) -> tuple[Any, Any]:
    """Member ids and weights (B, k, P) of the final groups listed in ``slots`` (B, k).

    Top-down: every group of round r + 1 (pair ``i`` of round r) splits in
    place into its ``[hi, lo]`` members, at places ``i`` and ``M - 1 - i`` of
    the round's sort order, so a slot lists its members best first, and the
    weights multiply along the way. Sizes k, 2k, ..., m: O(m) in all.
    """
    B, k = slots.shape
    pos = slots
    weights = None
    for rd in reversed(rounds):
        width = 2 * pos.shape[-1]
        M = rd.order.shape[-1]
        both = xp.reshape(_stack_last(xp, pos, (M - 1) - pos), (B, width))  # places of [hi, lo] of each group
        side, pos = take_along_last_many(xp, [rd.sorted_weights, rd.order], both)
        if weights is None:
            weights = side
        else:
            # both members of a group inherit its weight; stacking it first keeps the product
            # contiguous (NumPy runs a broadcast over a last axis of 2 ~4x slower)
            weights = side * xp.reshape(_stack_last(xp, weights, weights), (B, width))
    if weights is None:
        weights = xp.ones(slots.shape, dtype=dtype, device=device(slots))
    P = pos.shape[-1] // k
    return xp.reshape(pos, (B, k, P)), xp.reshape(weights, (B, k, P))
