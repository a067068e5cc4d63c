"""Manual gradients: each operator with a pullback, for any Array API library.

This is how CuPy and NumPy users train: the forward returns the result and a
``pullback`` that maps output cotangents to input cotangents. It needs only
gathers and keeps only the plan (O(n) numbers per row), never per-round
copies of E. PyTorch users do not need this module: the plain functions
backpropagate through autograd (using these same pullbacks).

Examples
--------
>>> import numpy as np
>>> from shtopk import vjp
>>> rng = np.random.default_rng(0)
>>> E, v = rng.normal(size=(8, 3)), rng.normal(size=8)
>>> out, pullback = vjp.successive_halving_topk(E, v, 2)
>>> dE, dv = pullback(np.ones_like(out.values))  # gradient of out.values.sum()
>>> dE.shape, dv.shape
((8, 3), (8,))
>>> bool(np.isclose(dE.sum(), 2 * 3))  # every output row is a convex combination
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._api import (
    check_operator_fits,
    flatten_inputs,
    hard_operator,
    iterative_operator,
    successive_halving_operator,
)
from ._kernels import host_inputs, to_torch
from ._kernels.cpu import numpy_view
from ._types import ScoresT, TopK, ValuesT
from ._validation import Inputs, check_inputs, check_real_floating, check_same_library

__all__ = ["hard_topk", "iterative_softmax_topk", "successive_halving_topk"]

#: ``pullback(d_values, d_scores=None) -> (dE, dv)``, shaped and typed like ``(E, v)``.
Pullback = Callable[..., tuple[ValuesT, ScoresT]]


def _with_pullback(op: Any, inp: Inputs) -> tuple[TopK[Any, Any], Pullback[Any, Any]]:
    check_operator_fits(op, inp)
    host = host_inputs(inp)  # torch CPU tensors the compiled CPU engine serves: NumPy views, as in shtopk::topk
    flat = flatten_inputs(host or inp)
    # replay: the pullback keeps ``flat``, so the backward may replay the tournament from its scores
    values, scores, saved = op.forward(flat, record=True, replay=True)
    wrap = to_torch if host else (lambda x: x)
    out = TopK(wrap(flat.unflatten_values(values)), wrap(flat.unflatten_scores(scores)))
    xp, fxp, B, k, d = inp.xp, flat.xp, flat.B, inp.k, inp.d

    def pullback(d_values: Any, d_scores: Any = None) -> tuple[Any, Any]:
        """Map cotangents of ``(values, scores)`` to cotangents ``(dE, dv)``.

        Parameters
        ----------
        d_values : array, shape (..., k, d)
            Cotangent of ``values`` (same library and device).
        d_scores : array, shape (..., k), optional
            Cotangent of ``scores``; None means zero.

        Returns
        -------
        (dE, dv)
            Shaped and typed like ``E`` and ``v``.
        """
        _check_cotangent(xp, d_values, "d_values", out.values, inp.E)
        if d_scores is not None:
            _check_cotangent(xp, d_scores, "d_scores", out.scores, inp.E)
            d_scores = fxp.reshape(numpy_view(d_scores) if host else d_scores, (B, k))
        # copy=False: the backward passes only read the cotangent (a copy cost 2 ms at k=1024, d=256)
        d_values = xp.astype(d_values, inp.E.dtype, copy=False)
        d_values = fxp.reshape(numpy_view(d_values) if host else d_values, (B, k, d))
        dE, dv = op.backward(flat, saved, d_values, d_scores)
        return wrap(fxp.reshape(dE, tuple(inp.E.shape))), wrap(fxp.reshape(dv, tuple(inp.v.shape)))

    return out, pullback


def _check_cotangent(xp: Any, x: Any, name: str, like: Any, ref: Any) -> None:
    check_same_library(xp, x, name, "E", ref)
    check_real_floating(xp, x, name)
    if tuple(x.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the shape of the output, {tuple(like.shape)}; got {tuple(x.shape)}")


def successive_halving_topk(
    E: ValuesT,
    v: ScoresT,
    k: int,
    *,
    boost: float | None = None,
    weighting: str = "softmax",
    mask: Any = None,
    order: str = "score",
) -> tuple[TopK[ValuesT, ScoresT], Pullback[ValuesT, ScoresT]]:
    """:func:`shtopk.successive_halving_topk` with its pullback ``(d_values, d_scores=None) -> (dE, dv)``.

    Arguments as in :func:`shtopk.successive_halving_topk`. The pullback maps
    the cotangents of ``(values, scores)`` to those of ``(E, v)``; it can be
    called several times.

    See Also
    --------
    shtopk.successive_halving_topk : Without the pullback; with torch autograd.
    shtopk.plan : The selection from the scores alone.

    Examples
    --------
    >>> import numpy as np
    >>> from shtopk import vjp
    >>> E, v = np.eye(4), np.array([0.1, 0.9, 0.3, 0.8])
    >>> out, pullback = vjp.successive_halving_topk(E, v, 2, boost=5.0)
    >>> d_scores = np.array([1.0, 0.0])  # the gradient of out.scores[0]
    >>> dE, dv = pullback(np.zeros((2, 4)), d_scores=d_scores)
    >>> int(np.argmax(dv))  # the best item's score moves out.scores[0] most
    1
    """
    op = successive_halving_operator(boost, weighting, order)
    return _with_pullback(op, check_inputs(E, v, k, mask))


def hard_topk(
    E: ValuesT, v: ScoresT, k: int, *, mask: Any = None, order: str = "score"
) -> tuple[TopK[ValuesT, ScoresT], Pullback[ValuesT, ScoresT]]:
    """:func:`shtopk.hard_topk` with its pullback ``(d_values, d_scores=None) -> (dE, dv)``.

    The selected rows receive the cotangents of their output rows; the others 0.

    See Also
    --------
    shtopk.hard_topk : Without the pullback; with torch autograd.

    Examples
    --------
    >>> import numpy as np
    >>> from shtopk import vjp
    >>> out, pullback = vjp.hard_topk(np.eye(3), np.array([0.2, 0.7, 0.5]), 1)
    >>> dE, dv = pullback(np.ones((1, 3)), np.ones(1))
    >>> dE
    array([[0., 0., 0.],
           [1., 1., 1.],
           [0., 0., 0.]])
    >>> dv
    array([0., 1., 0.])
    """
    return _with_pullback(hard_operator(order), check_inputs(E, v, k, mask))


def iterative_softmax_topk(
    E: ValuesT, v: ScoresT, k: int, *, alpha: float = 1.0, mask: Any = None
) -> tuple[TopK[ValuesT, ScoresT], Pullback[ValuesT, ScoresT]]:
    """:func:`shtopk.iterative_softmax_topk` with its pullback ``(d_values, d_scores=None) -> (dE, dv)``.

    See Also
    --------
    shtopk.iterative_softmax_topk : Without the pullback; with torch autograd.

    Examples
    --------
    >>> import numpy as np
    >>> from shtopk import vjp
    >>> E, v = np.eye(3), np.array([0.0, 0.5, 1.0])
    >>> out, pullback = vjp.iterative_softmax_topk(E, v, 2)
    >>> dE, dv = pullback(np.ones((2, 3)))
    >>> dE.sum(axis=-1).round(3)  # 3 x each row's total probability
    array([1.828, 2.775, 1.398])
    """
    return _with_pullback(iterative_operator(alpha), check_inputs(E, v, k, mask))
