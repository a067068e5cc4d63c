"""The iterative softmax top-k baseline (Goyal et al. 2017; the paper's Algorithm 1).

Step ``i`` (of ``k``) takes the best remaining score ``m_i`` and outputs
``p_i @ E`` and ``p_i @ s`` with ``p_i = softmax(-alpha * (s - m_i)**2)`` over
the items not yet chosen; the chosen item is then removed. The paper prints
the softmax denominator as ``sum(exp(v)) - exp(max v)``, a transcription slip
of the usual max-subtraction; this is the standard, numerically stable
softmax (the exponent is at most 0 and exactly 0 at the chosen item, so no
shift is needed). Removing the chosen item replaces the authors' overwrite of
its score by -10000, which has the same effect for any realistic scores
(``exp(-alpha * 1e8)`` is 0 in floating point) without that assumption.

Because the item removed at step ``i`` is the ``i``-th best, all ``k``
distributions are computed at once, chunk by chunk, as batched matrix
products instead of ``k`` sequential steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._array_api import device
from .._fast import argsort_descending, inverse_permutation, take_along_last
from .apply import accumulation_dtype
from .flat import nan_factor

#: Elements of the (B, steps, n) distribution array formed at a time.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BaselineState:
    """What the forward pass leaves for the backward pass (all O(n) per row)."""

    alpha: float
    s0: Any  # (B, n) scores, 0 on invalid items
    valid: Any  # (B, n)
    rank: Any  # (B, n) position of each item in the score order
    m0: Any  # (B, k) score of the item chosen at each step, 0 if none
    step_valid: Any  # (B, k) whether step i had any item left
    factor: Any  # (B,) NaN on poisoned rows


def step_chunks(B: int, n: int, k: int) -> list[tuple[int, int]]:
    """Split the ``k`` steps so that a chunk's distributions hold ~CHUNK_ELEMENTS."""
    step = max(1, CHUNK_ELEMENTS // max(1, B * n))
    return [(i, min(k, i + step)) for i in range(0, k, step)]


def score_offsets(xp: Any, state: BaselineState, i0: int, i1: int) -> Any:
    """``s - m_i`` (B, i1 - i0, n), exactly 0 where equal: a ``+inf`` score against the
    ``+inf`` chosen score is a tie (not ``inf - inf = NaN``); otherwise ``-inf`` or
    an overflow to ``+-inf``, which only ever gives probability 0."""
    s = state.s0[:, None, :]
    m = state.m0[:, i0:i1, None]
    tie = s == m
    return xp.where(tie, 0.0, xp.where(tie, 0.0, s) - xp.where(tie, 0.0, m))


def distributions(xp: Any, state: BaselineState, i0: int, i1: int) -> Any:
    """The softmax distributions ``p_i`` (B, i1 - i0, n) of steps ``i0 <= i < i1``."""
    steps = xp.arange(i0, i1, dtype=state.rank.dtype, device=device(state.rank))
    allowed = state.valid[:, None, :] & (state.rank[:, None, :] >= steps[None, :, None])
    z = -state.alpha * score_offsets(xp, state, i0, i1) ** 2
    ez = xp.where(allowed, xp.exp(z), 0.0)
    denom = xp.where(state.step_valid[:, i0:i1, None], xp.sum(ez, axis=-1, keepdims=True), 1.0)
    return ez / denom


def iterative_forward(
    xp: Any, s: Any, valid: Any, poison: Any, E: Any, k: int, *, alpha: float
) -> tuple[Any, Any, BaselineState]:
    """Values (B, k, d) in E's dtype, scores (B, k) in the compute dtype, and the state."""
    B, n = s.shape
    d = E.shape[-1]
    by_score = argsort_descending(xp, s)
    rank = inverse_permutation(xp, by_score)
    m = take_along_last(xp, s, by_score[:, :k])
    step_valid = m > -math.inf
    state = BaselineState(
        alpha=alpha,
        s0=xp.where(valid, s, 0.0),
        valid=valid,
        rank=rank,
        m0=xp.where(step_valid, m, 0.0),
        step_valid=step_valid,
        factor=nan_factor(xp, poison, s.dtype),
    )
    acc = accumulation_dtype(xp, E.dtype)
    E_acc = xp.astype(E, acc, copy=False)
    values, scores = [], []
    for i0, i1 in step_chunks(B, n, k):
        p = distributions(xp, state, i0, i1)
        values.append(xp.matmul(xp.astype(p, acc, copy=False), E_acc))
        # where(p > 0): a +inf score already chosen has p = 0 (0 * inf would be NaN)
        scores.append(xp.sum(xp.where(p > 0.0, p * state.s0[:, None, :], 0.0), axis=-1))
    values = xp.concat(values, axis=1) if values else xp.zeros((B, k, d), dtype=acc, device=device(E))
    scores = xp.concat(scores, axis=1) if scores else xp.zeros((B, k), dtype=s.dtype, device=device(s))
    values = xp.astype(values * state.factor[:, None, None], E.dtype)
    scores = xp.where(step_valid, scores, -math.inf) * state.factor[:, None]
    return values, scores, state
