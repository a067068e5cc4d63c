"""Flatten batch dimensions and prepare the scores every operator starts from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._array_api import compute_dtype, device


@dataclass(frozen=True)
class Flat:
    """Inputs reshaped to one batch dimension, with scores ready for selection.

    Attributes
    ----------
    E : array (B, n, d) or None
        The vectors, in their own dtype.
    s : array (B, n)
        The scores in the compute dtype (at least float32), ``-inf`` where the
        item is not valid (score ``-inf`` or NaN, or masked out).
    valid : bool array (B, n)
    poison : bool array (B,)
        Batch rows with a NaN score on a kept item: their outputs are NaN.
    """

    xp: Any
    device: Any
    batch_shape: tuple[int, ...]
    n: int
    d: int
    k: int
    v_dtype: Any
    E: Any
    s: Any
    valid: Any
    poison: Any

    @property
    def B(self) -> int:
        return math.prod(self.batch_shape)

    def unflatten_values(self, values: Any) -> Any:
        """(B, k, d) -> (*batch, k, d)."""
        return self.xp.reshape(values, (*self.batch_shape, *values.shape[1:]))

    def unflatten_scores(self, scores: Any) -> Any:
        """(B, k) in any float dtype -> (*batch, k) in the dtype of v."""
        xp = self.xp
        return xp.reshape(xp.astype(scores, self.v_dtype), (*self.batch_shape, scores.shape[-1]))


def flatten(xp: Any, device: Any, E: Any, v: Any, mask: Any, k: int, *, prepare: Any = None) -> Flat:
    """Reshape ``E`` (may be None), ``v`` and ``mask`` to one batch dimension.

    The item validity and the NaN policy are decided here, once for all
    operators (:func:`prepare_scores`, or ``prepare``, an engine's equivalent
    with the same results).
    """
    batch_shape = tuple(v.shape[:-1])
    n = int(v.shape[-1])
    B = math.prod(batch_shape)
    d = int(E.shape[-1]) if E is not None else 0
    E_flat = xp.reshape(E, (B, n, d)) if E is not None else None
    keep = xp.reshape(mask, (B, n)) if mask is not None else None
    s, valid, poison = (prepare or prepare_scores)(xp, xp.reshape(v, (B, n)), keep)
    return Flat(xp, device, batch_shape, n, d, k, v.dtype, E_flat, s, valid, poison)


def prepare_scores(xp: Any, v: Any, keep: Any) -> tuple[Any, Any, Any]:
    """``(s, valid, poison)`` of scores ``v`` (B, n) and the mask ``keep`` (B, n) or None.

    An item with score NaN or ``-inf``, or masked out, is invalid; ``s`` holds the
    scores in the compute dtype, ``-inf`` where invalid; a NaN score on an item that
    is not masked out poisons its whole batch row (``poison`` (B,)).
    """
    s = xp.astype(v, compute_dtype(xp, v.dtype), copy=False)  # where() below copies
    nan = xp.isnan(s)
    valid = s > -math.inf
    if keep is not None:
        valid = valid & keep
        nan = nan & keep
    poison = xp.any(nan, axis=-1)
    return xp.where(valid, s, -math.inf), valid, poison


def nan_factor(xp: Any, poison: Any, dtype: Any) -> Any:
    """A (B,) factor: NaN on poisoned batch rows, 1 elsewhere (multiply to poison)."""
    nan = xp.full(poison.shape, math.nan, dtype=dtype, device=device(poison))
    return xp.where(poison, nan, 1.0)
