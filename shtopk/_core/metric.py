"""The normalized Chamfer cosine similarity (nCCS) of the paper's evaluation."""

from __future__ import annotations

from typing import Any


def nccs(xp: Any, Y_true: Any, Y_pred: Any) -> Any:
    """``mean_i max_j cos(Y_true[..., i, :], Y_pred[..., j, :])`` over the last two axes.

    A zero vector has cosine 0 with everything (never NaN).
    """
    dtype = xp.result_type(Y_true.dtype, Y_pred.dtype, xp.float32)
    a = _unit_rows(xp, xp.astype(Y_true, dtype, copy=False))
    b = _unit_rows(xp, xp.astype(Y_pred, dtype, copy=False))
    cos = xp.matmul(a, xp.matrix_transpose(b))
    return xp.mean(xp.max(cos, axis=-1), axis=-1)


def _unit_rows(xp: Any, x: Any) -> Any:
    norm = xp.linalg.vector_norm(x, axis=-1, keepdims=True)
    return x / xp.where(norm > 0.0, norm, 1.0)
