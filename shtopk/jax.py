"""JAX integration: the operators under ``jax.grad``, ``jax.jit`` and ``jax.vmap``.

The plain functions (:func:`shtopk.successive_halving_topk`,
:func:`shtopk.hard_topk`, :func:`shtopk.iterative_softmax_topk`) accept JAX
arrays and return JAX arrays. They run through :func:`custom_vjp_run`, a
``jax.custom_vjp`` whose backward is the memory-lean manual VJP of
:mod:`shtopk.vjp`: its residuals are E, v, the mask and the plan (a few
numbers per item), never a per-round copy of E. ``k`` and the settings are
Python values, static under ``jit``; nothing synchronizes with the host, so
the operators trace under ``jit`` and ``vmap``. Outside ``jit`` each call runs
as one compiled program (:func:`shtopk.plan` too), not op by op.
:func:`shtopk.plan`, :func:`shtopk.apply` and :func:`shtopk.nccs` are plain JAX
computations that JAX differentiates itself. See also the docs' JAX page.

Examples
--------
>>> import jax
>>> import jax.numpy as jnp
>>> import shtopk
>>> E = jnp.eye(4)
>>> v = jnp.array([0.1, 0.9, 0.3, 0.8])
>>> def loss(E, v):
...     return shtopk.successive_halving_topk(E, v, 2, boost=5.0).values[0, 1]
>>> dE, dv = jax.jit(jax.grad(loss, argnums=(0, 1)))(E, v)
>>> int(jnp.argmax(dv))  # the best score pulls its own row into the first output most
1
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from ._api import flatten_inputs, run_plan
from ._core.baseline import BaselineState
from ._core.plan import Round, Selection
from ._types import Plan, PlanTarget, TopK
from ._validation import Inputs, check_inputs, check_scores

__all__ = ["custom_vjp_run", "jit_plan"]

# The operators' saved state (the residuals) as JAX pytrees of arrays; the
# iterative baseline's ``alpha`` is a setting, static under jit.
for _cls, _static in ((Round, ()), (Selection, ()), (BaselineState, ("alpha",))):
    jax.tree_util.register_dataclass(
        _cls,
        data_fields=[f.name for f in dataclasses.fields(_cls) if f.name not in _static],
        meta_fields=list(_static),
    )
del _cls, _static


def _flat(k: int, E: Any, v: Any, mask: Any) -> Any:
    return flatten_inputs(check_inputs(E, v, k, mask))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _run(op: Any, k: int, E: Any, v: Any, mask: Any) -> tuple[Any, Any]:
    flat = _flat(k, E, v, mask)
    values, scores, _ = op.forward(flat)
    return flat.unflatten_values(values), flat.unflatten_scores(scores)


def _run_fwd(op: Any, k: int, E: Any, v: Any, mask: Any) -> tuple[tuple[Any, Any], tuple[Any, ...]]:
    flat = _flat(k, E, v, mask)
    values, scores, saved = op.forward(flat, record=True)
    return (flat.unflatten_values(values), flat.unflatten_scores(scores)), (E, v, mask, saved)


def _run_bwd(op: Any, k: int, residuals: tuple[Any, ...], cotangents: tuple[Any, Any]) -> tuple[Any, Any, None]:
    E, v, mask, saved = residuals
    d_values, d_scores = cotangents
    flat = _flat(k, E, v, mask)
    xp = flat.xp
    dE, dv = op.backward(
        flat,
        saved,
        xp.reshape(xp.astype(d_values, E.dtype, copy=False), (flat.B, k, flat.d)),
        xp.reshape(d_scores, (flat.B, k)),
    )
    return xp.reshape(dE, E.shape), xp.reshape(dv, v.shape), None  # the mask gets no cotangent


_run.defvjp(_run_fwd, _run_bwd)

# One compiled program per shape and settings (inlined into an enclosing jit): run op by op,
# eager JAX would compile and dispatch each of the core's many small operations separately.
_jit_run = jax.jit(_run, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_plan(op: Any, k: int, v: Any, mask: Any) -> Plan:
    return run_plan(op, check_scores(v, k, mask))


def jit_plan(op: Any, inp: Inputs) -> Plan[Any]:
    """:func:`shtopk.plan` of JAX scores as one compiled program (JAX differentiates it itself).

    A jitted function returns a plain ``Plan`` (JAX rebuilds the named tuple from its
    fields), so what the plan was built for is attached here, outside the program.
    """
    indices, weights, scores = _jit_plan(op, inp.k, inp.v, inp.mask)
    return Plan(indices, weights, scores, built_for=PlanTarget(inp.n, inp.batch_shape, "jax", inp.device))


def custom_vjp_run(op: Any, inp: Inputs) -> TopK:
    """Run ``op`` (validated settings) on the JAX arrays of ``inp`` through the ``jax.custom_vjp``.

    Parameters
    ----------
    op : operator
        One of the operators of :mod:`shtopk._operators` (a frozen, hashable
        bundle of settings: static under ``jit``).
    inp : Inputs
        The validated ``(E, v, k, mask)``; ``k`` is a Python int.

    Returns
    -------
    TopK
        JAX arrays: ``values`` in E's dtype, ``scores`` in v's dtype.
    """
    values, scores = _jit_run(op, inp.k, inp.E, inp.v, inp.mask)
    return TopK(values, scores)
