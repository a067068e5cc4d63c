"""PyTorch integration: an ``nn.Module`` and the autograd wrapper of the manual VJP.

The plain functions (:func:`shtopk.successive_halving_topk`,
:func:`shtopk.hard_topk`, :func:`shtopk.iterative_softmax_topk`) already
backpropagate when given tensors that require grad: they run through
:class:`OperatorFunction`, a ``torch.autograd.Function`` whose backward is the
memory-lean manual VJP of :mod:`shtopk.vjp` (it keeps the plan, O(n) numbers
per row, and E; never a per-round copy of E).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ._api import flatten_inputs, run_operator, successive_halving_operator
from ._types import TopK
from ._validation import Inputs, check_inputs, check_k

__all__ = ["OperatorFunction", "SuccessiveHalvingTopK"]


class OperatorFunction(torch.autograd.Function):
    """Autograd wrapper: forward with the neutral core, backward with the manual VJP.

    The plain functions use it for tensors that require grad; it saves E and
    the plan (a few numbers per item), and its backward computes only the
    gradients that are needed. Once differentiable (no double backward).

    Examples
    --------
    >>> import torch
    >>> import shtopk
    >>> E = torch.randn(10, 3, requires_grad=True)
    >>> out = shtopk.successive_halving_topk(E, torch.randn(10), 2)
    >>> type(out.values.grad_fn).__name__
    'OperatorFunctionBackward'
    """

    @staticmethod
    def forward(ctx: Any, E: torch.Tensor, v: torch.Tensor, op: Any, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        flat = flatten_inputs(dataclasses.replace(inp, E=E, v=v))
        values, scores, saved = op.forward(flat, record=True)
        ctx.save_for_backward(E)
        ctx.op, ctx.flat, ctx.saved = op, dataclasses.replace(flat, E=None), saved
        return flat.unflatten_values(values), flat.unflatten_scores(scores)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_values: torch.Tensor, d_scores: torch.Tensor) -> tuple[Any, ...]:
        (E,) = ctx.saved_tensors
        flat = dataclasses.replace(ctx.flat, E=E.reshape(ctx.flat.B, ctx.flat.n, ctx.flat.d))
        B, k = flat.B, flat.k
        dE, dv = ctx.op.backward(
            flat,
            ctx.saved,
            d_values.reshape(B, k, flat.d).to(E.dtype),
            d_scores.reshape(B, k),
            need_dE=ctx.needs_input_grad[0],
            need_dv=ctx.needs_input_grad[1],
        )
        dE = dE.reshape(E.shape) if dE is not None else None
        dv = dv.reshape(flat.batch_shape + (flat.n,)) if dv is not None else None
        return dE, dv, None, None


def autograd_run(op: Any, inp: Inputs) -> TopK:
    """Run ``op`` on tensors that require grad, through :class:`OperatorFunction`."""
    values, scores = OperatorFunction.apply(inp.E, inp.v, op, inp)
    return TopK(values, scores)


class SuccessiveHalvingTopK(torch.nn.Module):
    """Successive-halving top-k as a layer: ``forward(E, v, mask=None) -> TopK``.

    Parameters
    ----------
    k : int
        How many vectors to keep.
    boost, weighting, order
        As in :func:`shtopk.successive_halving_topk`.

    Examples
    --------
    >>> import torch
    >>> from shtopk.torch import SuccessiveHalvingTopK
    >>> pool = SuccessiveHalvingTopK(4)
    >>> E = torch.randn(2, 16, 8, requires_grad=True)
    >>> v = torch.randn(2, 16, requires_grad=True)
    >>> out = pool(E, v)
    >>> out.values.shape
    torch.Size([2, 4, 8])
    >>> out.values.sum().backward()
    >>> E.grad.shape, v.grad.shape
    (torch.Size([2, 16, 8]), torch.Size([2, 16]))
    """

    def __init__(self, k: int, *, boost: float | None = None, weighting: str = "softmax", order: str = "score") -> None:
        super().__init__()
        self.k = check_k(k, n=k)
        self._op = successive_halving_operator(boost, weighting, order)

    @property
    def boost(self) -> float:
        return self._op.boost

    @property
    def weighting(self) -> str:
        return self._op.weighting

    @property
    def order(self) -> str:
        return self._op.order

    def forward(self, E: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> TopK:
        return run_operator(self._op, check_inputs(E, v, self.k, mask))

    def extra_repr(self) -> str:
        return f"k={self.k}, boost={self.boost:g}, weighting={self.weighting!r}, order={self.order!r}"
