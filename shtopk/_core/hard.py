"""Exact (non-relaxed) top-k, expressed in the plan layout with one member per slot."""

from __future__ import annotations

from typing import Any

from .._array_api import device
from .._fast import argsort_descending, inverse_permutation, take_along_last
from .flat import nan_factor
from .plan import Selection


def hard_selection(xp: Any, s: Any, valid: Any, poison: Any, k: int, *, order: str, record: bool = False) -> Selection:
    """The k valid items with the highest scores (ties to the lower index).

    ``s`` (B, n) is in the compute dtype with ``-inf`` on invalid items. Slots
    beyond the number of valid items have weight 0 and score ``-inf``.
    """
    B, n = s.shape
    by_score = argsort_descending(xp, s)
    top = by_score[:, :k]
    top_valid = take_along_last(xp, valid, top)
    if order == "input":
        rank_in_top = xp.broadcast_to(xp.arange(k, dtype=top.dtype, device=device(top)), (B, k))
        perm = xp.argsort(xp.where(top_valid, top, n + rank_in_top), axis=-1, stable=True)
        top = take_along_last(xp, top, perm)
        top_valid = take_along_last(xp, top_valid, perm)
    else:
        perm = None
    factor = nan_factor(xp, poison, s.dtype)
    weights = xp.astype(top_valid, s.dtype) * factor[:, None]
    scores = take_along_last(xp, s, top) * factor[:, None]
    indices = top[..., None]
    if not record:
        return Selection(indices, weights[..., None], scores)
    # Row layout: an item's rank in the score order is its slot (before `perm`).
    rank = inverse_permutation(xp, by_score)
    selected = valid & (rank < k)
    slot = xp.clip(rank, max=k - 1)
    if perm is not None:
        slot = take_along_last(xp, inverse_permutation(xp, perm), slot)
    weight_of_row = xp.astype(selected, s.dtype) * factor[:, None]
    return Selection(indices, weights[..., None], scores, slot_of_row=slot, weight_of_row=weight_of_row)
