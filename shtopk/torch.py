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

from ._api import DEFAULT_BOOST, flatten_inputs, run_operator, successive_halving_operator
from ._kernels import host_inputs, to_torch
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
        inp = dataclasses.replace(inp, E=E, v=v)
        host = host_inputs(inp)  # CPU tensors: as NumPy arrays, for the compiled CPU engine
        flat = flatten_inputs(host or inp)
        values, scores, saved = op.forward(flat, record=True)
        ctx.save_for_backward(E)
        ctx.op, ctx.flat, ctx.saved, ctx.host = op, dataclasses.replace(flat, E=None), saved, host is not None
        values, scores = flat.unflatten_values(values), flat.unflatten_scores(scores)
        return (to_torch(values), to_torch(scores)) if ctx.host else (values, scores)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_values: torch.Tensor, d_scores: torch.Tensor) -> tuple[Any, ...]:
        (E,) = ctx.saved_tensors
        shape, B, k = E.shape, ctx.flat.B, ctx.flat.k
        E, d_values, d_scores = E.reshape(B, ctx.flat.n, ctx.flat.d), d_values.reshape(B, k, -1), d_scores.reshape(B, k)
        d_values = d_values.to(E.dtype)
        if ctx.host:
            E, d_values, d_scores = (x.detach().contiguous().numpy() for x in (E, d_values, d_scores))
        flat = dataclasses.replace(ctx.flat, E=E)
        dE, dv = ctx.op.backward(
            flat, ctx.saved, d_values, d_scores, need_dE=ctx.needs_input_grad[0], need_dv=ctx.needs_input_grad[1]
        )
        if ctx.host:
            dE, dv = to_torch(dE), to_torch(dv)
        dE = dE.reshape(shape) if dE is not None else None
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

    def __init__(
        self, k: int, *, boost: float = DEFAULT_BOOST, weighting: str = "softmax", order: str = "score"
    ) -> None:
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
