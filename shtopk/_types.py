"""Result types of the public API."""

from __future__ import annotations

from typing import Any, NamedTuple


class TopK(NamedTuple):
    """The k selected (or softly selected) vectors and their scores.

    Attributes
    ----------
    values : array, shape (..., k, d)
        The output vectors, in the array library, device and dtype of ``E``.
    scores : array, shape (..., k)
        Their scores, in the array library, device and dtype of ``v``.
        Output rows without any valid member have score ``-inf`` (and a zero
        vector in ``values``).
    """

    values: Any
    scores: Any


class Plan(NamedTuple):
    """A selection computed from the scores alone, to be applied to any tensor.

    Output row ``j`` of ``apply(plan, X)`` is
    ``sum(plan.weights[..., j, r] * X[..., plan.indices[..., j, r], :] for r)``.

    Attributes
    ----------
    indices : integer array, shape (..., k, 2**R)
        Row indices in ``[0, n)``: the members of each output row, best first
        (position 0 holds the member that won every round it played).
    weights : float array, shape (..., k, 2**R)
        The matching weights, in at least float32. For an output row with at
        least one valid member they sum to 1; padding and masked members have
        weight exactly 0 (and their index repeats the row's first index, so
        that rows excluded by ``mask`` are never read). Rows without any valid
        member have all weights 0.
    scores : float array, shape (..., k)
        The output scores, in the dtype of ``v``; ``-inf`` marks rows without
        any valid member.
    """

    indices: Any
    weights: Any
    scores: Any
