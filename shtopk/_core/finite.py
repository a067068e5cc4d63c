"""Helpers that keep intermediate values finite for any finite (or ``+inf``) input.

The weights of a pair are a sigmoid of a gap: they saturate at 0 and 1 and never
overflow. Their derivatives, however, can exceed the dtype's range (a boost of
1e38, or ``weighting="power"`` with ``boost**s`` beyond the largest float32):
such cotangents *saturate* at the dtype's largest finite value instead of
becoming ``inf``, which would turn into NaN at the next ``inf * 0`` or
``inf - inf``.
"""

from __future__ import annotations

from typing import Any


def largest(xp: Any, dtype: Any) -> float:
    """The largest finite value of the floating ``dtype``."""
    return float(xp.finfo(dtype).max)


def saturate(xp: Any, x: Any) -> Any:
    """``x`` clipped to the finite range of its dtype (``+-inf`` -> ``+-max``; NaN stays NaN)."""
    big = largest(xp, x.dtype)
    return xp.clip(x, min=-big, max=big)


def cast_saturated(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` cast to ``dtype`` (e.g. a float32 gradient to float16 scores), saturating values
    beyond the target's range at its largest finite value instead of rounding them to inf."""
    big = largest(xp, dtype)
    if big < largest(xp, x.dtype):
        x = xp.clip(x, min=-big, max=big)
    return xp.astype(x, dtype, copy=False)


def finite_gap(xp: Any, s_hi: Any, s_lo: Any) -> Any:
    """``s_hi - s_lo >= 0`` saturated at the dtype's largest finite value.

    Equal scores (also two ``+inf``, whose difference would be NaN) give exactly 0; a
    gap that overflows (scores near both ends of the range, or ``+inf`` against a
    finite score) gives the largest finite value instead of ``inf``.
    """
    return xp.where(s_hi == s_lo, 0.0, xp.clip(s_hi - s_lo, max=largest(xp, s_hi.dtype)))
