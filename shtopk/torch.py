"""PyTorch integration: an ``nn.Module`` and the registered custom ops.

The plain functions (:func:`shtopk.successive_halving_topk`,
:func:`shtopk.hard_topk`, :func:`shtopk.iterative_softmax_topk`) run torch
tensors through the custom op ``torch.ops.shtopk.topk`` (registered with
``torch.library``; autograd by :class:`shtopk._torch_ops.TopKFunction`), whose backward is the memory-lean manual VJP of
:mod:`shtopk.vjp` (it keeps E, v, the mask and the O(n) record of the
scores-only tournament; never a per-round copy of E). The op
works under ``torch.compile(fullgraph=True)``, ``torch.func`` (``grad``,
``vjp``, ``jacrev``) and ``torch.vmap``; higher-order gradients raise a clear
error. See the "PyTorch" page of the docs.
"""

from __future__ import annotations

from typing import Any

try:
    import torch
except ModuleNotFoundError as exc:  # name the extra instead of a bare "No module named 'torch'"
    if exc.name != "torch":
        raise
    raise ModuleNotFoundError(
        "shtopk.torch needs PyTorch, which is not installed: install shtopk's torch extra "
        '(pip install "shtopk[torch]", or pip install ".[torch]" in a checkout) '
        "or the torch build for your platform (https://pytorch.org/get-started/locally/)",
        name="torch",
    ) from exc

from ._api import run_operator, successive_halving_operator
from ._torch_ops import op_arguments, run
from ._types import TopK
from ._validation import Inputs, check_inputs, check_positive_int

__all__ = ["SuccessiveHalvingTopK"]


def torch_run(op: Any, inp: Inputs) -> TopK[torch.Tensor, torch.Tensor]:
    """Run ``op`` on torch tensors through the custom op ``shtopk::topk`` (differentiable; a plain
    eager call that nothing can differentiate runs the operator directly, see :func:`shtopk._torch_ops.run`)."""
    return TopK(*run(inp, op_arguments(op)))


class SuccessiveHalvingTopK(torch.nn.Module):
    """Successive-halving top-k as a layer: ``forward(E, v, mask=None) -> TopK``.

    Parameters
    ----------
    k : int
        How many vectors to keep.
    boost, weighting, order
        As in :func:`shtopk.successive_halving_topk`.

    See Also
    --------
    shtopk.successive_halving_topk : The function it calls, with every argument.
    shtopk.plan : One selection for several tensors.

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
        self.k = check_positive_int(k)
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

    def forward(
        self, E: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> TopK[torch.Tensor, torch.Tensor]:
        return run_operator(self._op, check_inputs(E, v, self.k, mask))

    def extra_repr(self) -> str:
        return f"k={self.k}, boost={self.boost:g}, weighting={self.weighting!r}, order={self.order!r}"
