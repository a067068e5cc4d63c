"""shtopk: the Successive Halving Top-k Operator, a differentiable top-k.

Give it n vectors ``E`` (..., n, d) and their scores ``v`` (..., n); get back k
vectors (..., k, d) that a network can backpropagate through to both E and v,
on NumPy, CuPy, PyTorch, JAX or any Python Array API library.
"""

from . import vjp
from ._api import (
    DEFAULT_BOOST,
    DEFAULT_POWER_BASE,
    apply,
    hard_topk,
    iterative_softmax_topk,
    nccs,
    plan,
    successive_halving_topk,
)
from ._types import Plan, PlanTarget, TopK

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BOOST",
    "DEFAULT_POWER_BASE",
    "Plan",
    "PlanTarget",
    "TopK",
    "apply",
    "hard_topk",
    "iterative_softmax_topk",
    "nccs",
    "plan",
    "successive_halving_topk",
    "vjp",
]
