"""The operators as real PyTorch custom ops (``torch.library.custom_op``).

``shtopk::topk`` runs any of the three operators forward; ``shtopk::topk_backward``
is its manual, memory-lean VJP. Both call the array-API operators of
:mod:`shtopk._operators`, hence the passes over E through the kernels dispatch
point :mod:`shtopk._kernels` (whichever engine serves the tensors: NumPy-free
neutral core, Numba, Triton, ...). Registered with torch, they give:

- ``torch.compile(fullgraph=True)``: Dynamo sees one opaque op with a fake
  (shape-only) implementation, so no host check of the kernels (``.item()``,
  the fast paths of :mod:`shtopk._fast`) is ever traced, and symbolic batch
  sizes need no recompilation;
- autograd through :class:`TopKFunction`, an ``autograd.Function`` with
  ``setup_context``, hence ``torch.func.grad``, ``vjp`` and ``jacrev``;
- ``torch.vmap`` through ``register_vmap`` rules that fold the vmapped
  dimension into the operator's own leading batch dimensions.

The backward saves only E, v and the mask: the scores-only plan (O(n) numbers
per row) is recomputed from v inside the backward op, and no copy of E is
ever made. Higher-order gradients are not implemented: differentiating the
backward raises a ``RuntimeError`` (never silent zeros). Forward-mode AD
(``jvp``, ``jacfwd``) is not implemented either, and torch says so (a custom
``jvp`` method would stop Dynamo from tracing the function).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._core.hard import hard_selection
from ._operators import HardTopK, IterativeSoftmax, SuccessiveHalving
from ._validation import check_inputs

#: The ``method`` argument of the ops, per operator class.
METHODS = {SuccessiveHalving: "successive_halving", HardTopK: "hard", IterativeSoftmax: "iterative"}


def op_arguments(op: Any) -> tuple[str, float, str, str, float]:
    """``(method, boost, weighting, order, alpha)`` of an operator, as the ops take them."""
    return (
        METHODS[type(op)],
        float(getattr(op, "boost", 1.0)),
        getattr(op, "weighting", "softmax"),
        getattr(op, "order", "score"),
        float(getattr(op, "alpha", 1.0)),
    )


def _operator(method: str, boost: float, weighting: str, order: str, alpha: float) -> Any:
    if method == "successive_halving":
        return SuccessiveHalving(boost, weighting, order)
    if method == "hard":
        return HardTopK(order)
    if method == "iterative":
        return IterativeSoftmax(alpha)
    raise ValueError(f"unknown method {method!r}")


def _flat(E: Tensor, v: Tensor, mask: Tensor | None, k: int) -> Any:
    from ._api import flatten_inputs  # imported late: _api imports this module's users

    return flatten_inputs(check_inputs(E, v, k, mask))


@torch.library.custom_op("shtopk::topk", mutates_args=())
def topk(
    E: Tensor,
    v: Tensor,
    mask: Tensor | None,
    k: int,
    method: str,
    boost: float,
    weighting: str,
    order: str,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """``(values (..., k, d), scores (..., k))`` of the operator ``method``."""
    flat = _flat(E, v, mask, k)
    values, scores, _ = _operator(method, boost, weighting, order, alpha).forward(flat)
    return flat.unflatten_values(values), flat.unflatten_scores(scores)


@topk.register_fake
def _topk_fake(E, v, mask, k, method, boost, weighting, order, alpha):
    batch = v.shape[:-1]
    return E.new_empty((*batch, k, E.shape[-1])), v.new_empty((*batch, k))


@torch.library.custom_op("shtopk::topk_backward", mutates_args=())
def topk_backward(
    E: Tensor,
    v: Tensor,
    mask: Tensor | None,
    d_values: Tensor,
    d_scores: Tensor,
    k: int,
    method: str,
    boost: float,
    weighting: str,
    order: str,
    alpha: float,
    need_dE: bool,
    need_dv: bool,
) -> tuple[Tensor, Tensor]:
    """``(dE, dv)``; an input whose gradient is not needed gets an empty tensor."""
    flat = _flat(E, v, mask, k)
    op = _operator(method, boost, weighting, order, alpha)
    if method == "successive_halving":
        saved = op.plan(flat, record=True)  # scores only: O(n log n) per row, E is not read
    elif method == "hard":
        saved = hard_selection(flat.xp, flat.s, flat.valid, flat.poison, k, order=order, record=True)
    else:
        saved = op.forward(flat, record=True)[2]  # the baseline's state comes with its forward
    B, d = flat.B, flat.d
    dE, dv = op.backward(
        flat,
        saved,
        d_values.reshape(B, k, d).to(E.dtype),
        d_scores.reshape(B, k),
        need_dE=need_dE,
        need_dv=need_dv,
    )
    dE = dE.reshape(E.shape) if need_dE else E.new_empty(0)
    dv = dv.reshape(v.shape) if need_dv else v.new_empty(0)
    return dE, dv


@topk_backward.register_fake
def _topk_backward_fake(E, v, mask, d_values, d_scores, k, method, boost, weighting, order, alpha, need_dE, need_dv):
    return (E.new_empty(E.shape) if need_dE else E.new_empty(0)), (v.new_empty(v.shape) if need_dv else v.new_empty(0))


HIGHER_ORDER_ERROR = (
    "shtopk: higher-order gradients (double backward, hessian, grad of grad) are not implemented; "
    "the first-order gradient is exact, but it cannot be differentiated again"
)


class TopKFunction(torch.autograd.Function):
    """Autograd of ``shtopk::topk``: backward through ``shtopk::topk_backward``.

    An ``autograd.Function`` with ``setup_context`` (rather than the op's
    ``register_autograd``, whose generated wrapper torch 2.13's ``torch.func``
    rejects, pytorch/pytorch#168393) so that ``torch.func.grad``/``vjp``/``jacrev``
    work; ``generate_vmap_rule`` lets ``torch.vmap`` reach the ops' vmap rules.
    It saves E, v and the mask only.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(E: Tensor, v: Tensor, mask: Tensor | None, *settings: Any) -> tuple[Tensor, Tensor]:
        return topk(E, v, mask, *settings)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        E, v, mask, *settings = inputs
        ctx.save_for_backward(E, v, mask)
        ctx.settings = tuple(settings)

    @staticmethod
    def backward(ctx: Any, d_values: Tensor, d_scores: Tensor) -> tuple[Any, ...]:
        E, v, mask = ctx.saved_tensors
        need_dE, need_dv = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        args = (E, v, mask, d_values, d_scores, *ctx.settings, need_dE, need_dv)
        # grad mode is on only when the gradient itself may be differentiated (create_graph=True,
        # torch.func): then through a function whose derivative raises; otherwise the bare op
        # (what torch.compile traces: Dynamo cannot nest an autograd.Function in a backward)
        dE, dv = TopKBackwardFunction.apply(*args) if torch.is_grad_enabled() else topk_backward(*args)
        return (dE if need_dE else None, dv if need_dv else None) + (None,) * (1 + len(ctx.settings))


class TopKBackwardFunction(torch.autograd.Function):
    """``shtopk::topk_backward`` as a function whose own derivative is a clear error."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[Tensor, Tensor]:
        return topk_backward(*args)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        return None

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(HIGHER_ORDER_ERROR)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise RuntimeError(HIGHER_ORDER_ERROR)


def _with_batch_dim(x: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """``x`` with the vmapped dimension first (expanded, without a copy, if ``x`` is not batched)."""
    if x is None:
        return None
    if dim is None:
        return x.expand(size, *x.shape)
    return x.movedim(dim, 0)


@topk.register_vmap
def _topk_vmap(info, in_dims, E, v, mask, *settings):
    # the operator already takes any leading batch dimensions: the vmapped one becomes the first
    args = [_with_batch_dim(x, dim, info.batch_size) for x, dim in zip((E, v, mask), in_dims[:3], strict=True)]
    return topk(*args, *settings), (0, 0)


@topk_backward.register_vmap
def _topk_backward_vmap(info, in_dims, E, v, mask, d_values, d_scores, *settings):
    tensors = (E, v, mask, d_values, d_scores)
    args = [_with_batch_dim(x, dim, info.batch_size) for x, dim in zip(tensors, in_dims[:5], strict=True)]
    dE, dv = topk_backward(*args, *settings)
    need_dE, need_dv = settings[-2], settings[-1]
    return (dE, dv), (0 if need_dE else None, 0 if need_dv else None)
