"""The kernels layer: the one place that picks an implementation of each pass.

The neutral core (:mod:`shtopk._core`) is written once against the Array API
and runs on any library; it is the fallback and the reference. For the passes
that dominate the cost, faster implementations exist for some libraries, and
:func:`engine` chooses among them per call, from the arrays at hand:

``"numba"``
    NumPy arrays and torch CPU tensors, when Numba is installed: compiled
    kernels (:mod:`.cpu`), the same for both (tensors are viewed as NumPy
    arrays without copying).
``"numpy"``
    NumPy arrays without Numba: NumPy calls that write into buffers they own
    (:mod:`.numpy_ops`).
``"triton"``
    torch CUDA tensors and CuPy arrays, when Triton is installed: GPU
    kernels written once in Triton (:mod:`.triton_kernels`, launched by
    :mod:`.triton_ops`) for float32/float16/bfloat16 (float64 runs the
    neutral core).
``"neutral"``
    Everything else: the pure Array API core.

The environment variable ``SHTOPK_KERNELS`` restricts the choice, for tests
and benchmarks: ``auto`` (the default) takes the fastest available,
``neutral`` always runs the Array API core, and naming an engine allows only
that engine (falling back to the neutral core where it does not apply).

Every dispatch function has the signature of its neutral counterpart in
:mod:`shtopk._core` and returns the same values (to float rounding).
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

from .._array_api import is_cupy_array, is_numpy_array, is_torch_array
from .._core.apply import neutral_gather_sum, neutral_rows_backward
from .._core.flat import prepare_scores as neutral_prepare_scores
from .._core.plan import Selection
from .._core.plan import tournament as neutral_tournament
from .._core.plan_backward import neutral_tournament_backward
from . import cpu

ENGINES = ("numba", "numpy", "triton", "neutral")


def _allowed() -> str:
    choice = os.environ.get("SHTOPK_KERNELS", "auto").strip().lower() or "auto"
    if choice != "auto" and choice not in ENGINES:
        raise ValueError(f"SHTOPK_KERNELS must be 'auto' or one of {', '.join(ENGINES)}; got {choice!r}")
    return choice


def engine(*arrays: Any) -> str:
    """The engine that serves these arrays (all from one library and device)."""
    allowed = _allowed()
    if allowed == "neutral":
        return "neutral"
    if allowed in ("auto", "numba") and cpu.serves(*arrays):
        return "numba"
    if allowed in ("auto", "numpy") and all(is_numpy_array(x) for x in arrays):
        return "numpy"
    if allowed in ("auto", "triton") and _on_gpu(arrays) and _triton_installed():
        return "triton"
    return "neutral"


def compiled_cpu_allowed() -> bool:
    """Whether the compiled CPU engine may serve CPU arrays: installed, and allowed by
    ``SHTOPK_KERNELS``."""
    return _allowed() in ("auto", "numba") and cpu.available()


def host_inputs(inp: Any) -> Any | None:
    """Validated inputs of torch CPU tensors as NumPy views (no copy) when the compiled engine
    serves them, else None.

    The whole operator then runs on NumPy, around the same kernels: the few
    small steps between the kernels (flattening, masks, cotangent layout)
    cost microseconds in NumPy but are each a parallel region in torch, which
    waits for a descheduled thread whenever another process keeps a core
    busy (measured: 5-13 ms per step). bfloat16 E (no NumPy dtype) stays on
    torch, with the same kernels.
    """
    if not is_torch_array(inp.E) or engine(inp.E, inp.v) != "numba":
        return None
    import dataclasses

    import torch

    if inp.E.dtype == torch.bfloat16:
        return None
    from .._array_api import array_namespace

    E, v = cpu.numpy_view(inp.E), cpu.numpy_view(inp.v)
    mask = None if inp.mask is None else cpu.numpy_view(inp.mask)
    return dataclasses.replace(inp, xp=array_namespace(E), device="cpu", E=E, v=v, mask=mask)


def to_torch(x: Any) -> Any:
    """A NumPy result of :func:`host_inputs`' inputs as a torch tensor (sharing its memory)."""
    import torch

    return torch.from_numpy(x) if x is not None else None


def _numpy_allowed(*arrays: Any) -> bool:
    """Whether the NumPy kernels may serve arrays the compiled kernels declined."""
    return _allowed() in ("auto", "numpy") and all(is_numpy_array(x) for x in arrays)


def _on_gpu(arrays: tuple[Any, ...]) -> bool:
    """All CuPy arrays, or all torch CUDA tensors."""
    if not arrays:
        return False
    return all(is_cupy_array(x) for x in arrays) or all(is_torch_array(x) and x.device.type == "cuda" for x in arrays)


@cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_takes(xp: Any, *dtypes: Any) -> bool:
    """The Triton kernels take float32/float16/bfloat16 arrays (float64 runs the neutral core)."""
    return all(dt != xp.float64 for dt in dtypes)


def prepare_scores(xp: Any, v: Any, keep: Any) -> tuple[Any, Any, Any]:
    """``(s, valid, poison)`` of flattened scores and mask; see
    :func:`shtopk._core.flat.prepare_scores`."""
    if engine(v, *(() if keep is None else (keep,))) == "numba" and is_numpy_array(v):
        prepared = cpu.prepare_scores(v, keep)
        if prepared is not None:
            return prepared
    return neutral_prepare_scores(xp, v, keep)


def gather_sum(xp: Any, indices: Any, weights: Any, scores: Any, E: Any) -> Any:
    """``out[b, j] = sum_r weights[b, j, r] * E[b, indices[b, j, r]]``; see
    :func:`shtopk._core.apply.neutral_gather_sum`."""
    arrays = (indices, weights, scores, E)
    chosen = engine(*arrays)
    if chosen == "numba":
        out = cpu.gather_sum(xp, indices, weights, scores, E)
        if out is not None:
            return out
        chosen = "numpy" if _numpy_allowed(*arrays) else "neutral"  # indices out of range: the reference's errors
    if chosen == "numpy":
        from . import numpy_ops

        return numpy_ops.gather_sum(xp, indices, weights, scores, E)
    if chosen == "triton" and _triton_takes(xp, E.dtype):
        from . import triton_ops

        return triton_ops.gather_sum(xp, indices, weights, scores, E)
    return neutral_gather_sum(xp, indices, weights, scores, E)


def rows_backward(
    xp: Any, d_values: Any, slot_of_row: Any, weight_of_row: Any, E: Any, *, need_dE: bool, need_dw: bool
) -> tuple[Any, Any]:
    """``(dE, dw)`` of a selection whose rows each land in one slot; see
    :func:`shtopk._core.apply.neutral_rows_backward`."""
    chosen = engine(d_values, slot_of_row, weight_of_row, E)
    if chosen == "numba":
        return cpu.rows_backward(xp, d_values, slot_of_row, weight_of_row, E, need_dE=need_dE, need_dw=need_dw)
    if chosen == "numpy":
        from . import numpy_ops

        return numpy_ops.rows_backward(xp, d_values, slot_of_row, weight_of_row, E, need_dE=need_dE, need_dw=need_dw)
    if chosen == "triton" and _triton_takes(xp, E.dtype):
        from . import triton_ops

        return triton_ops.rows_backward(xp, d_values, slot_of_row, weight_of_row, E, need_dE=need_dE, need_dw=need_dw)
    return neutral_rows_backward(xp, d_values, slot_of_row, weight_of_row, E, need_dE=need_dE, need_dw=need_dw)


def tournament(
    xp: Any,
    s: Any,
    valid: Any,
    poison: Any,
    k: int,
    *,
    boost: float,
    weighting: str,
    order: str,
    record: bool = False,
) -> Selection:
    """The scores-only tournament (the plan); see :func:`shtopk._core.plan.tournament`."""
    chosen = engine(s, valid, poison)
    if chosen == "numba":
        return cpu.tournament(xp, s, valid, poison, k, boost=boost, weighting=weighting, order=order, record=record)
    if chosen == "triton" and _triton_takes(xp, s.dtype):
        from . import triton_ops

        return triton_ops.tournament(
            xp, s, valid, poison, k, boost=boost, weighting=weighting, order=order, record=record
        )
    return neutral_tournament(xp, s, valid, poison, k, boost=boost, weighting=weighting, order=order, record=record)


def selection_values(
    xp: Any,
    s: Any,
    valid: Any,
    poison: Any,
    E: Any,
    k: int,
    *,
    boost: float,
    weighting: str,
    order: str,
    record: bool = False,
    replay: bool = False,
) -> tuple[Any, Any, Selection | None]:
    """``(values, scores, selection)``: the tournament's selection applied to E; the selection
    (with its record for the backward) only with ``record``, else None.

    The compiled CPU engine runs both in one call, without writing the plan layout
    to memory (:func:`.cpu.tournament_gather`: a recorded selection then has None for
    ``indices`` and ``weights``, which the backward does not read); elsewhere, and where
    that call does not apply, :func:`tournament` then :func:`gather_sum`. With ``replay``
    (the caller's backward takes any selection whose ``replay`` is not None to
    :func:`replay_backward`), that engine may keep no record of the tournament.
    """
    if engine(s, valid, poison, E) == "numba":
        fused = cpu.tournament_gather(
            xp, s, valid, poison, E, k, boost=boost, weighting=weighting, order=order, record=record, replay=replay
        )
        if fused is not None:
            return fused
        if record and replay and cpu.replays(E, s):  # the tournament, then the gather-sum: no record
            sel = cpu.tournament(xp, s, valid, poison, k, boost=boost, weighting=weighting, order=order, replay=True)
            values = gather_sum(xp, sel.indices, sel.weights, sel.scores, E)
            return values, sel.scores, Selection(None, None, sel.scores, replay=sel.replay)
    sel = tournament(xp, s, valid, poison, k, boost=boost, weighting=weighting, order=order, record=record)
    return gather_sum(xp, sel.indices, sel.weights, sel.scores, E), sel.scores, sel if record else None


#: ``(dE, dv)`` (dv in the scores' dtype) of a successive-halving selection made to be replayed
#: (its ``replay`` is not None): only the compiled CPU engine makes such selections (it keeps
#: no record of the tournament), so only it replays them (:func:`.cpu.replay_backward`).
replay_backward = cpu.replay_backward


def score_cotangents(
    xp: Any, sel: Selection, dw: Any, d_scores: Any, valid: Any, poison: Any, boost: float, weighting: str
) -> Any | None:
    """The score cotangents (B, n) of a recorded successive-halving selection, in one call
    where an engine fuses :func:`tournament_backward` with the steps around it (the
    compiled CPU engine: :func:`.cpu.score_cotangents`); None elsewhere, where the caller
    runs the steps (:func:`shtopk._backward.selection_backward`)."""
    if engine(dw, d_scores, valid, poison, sel.inv_perm) == "numba":
        return cpu.score_cotangents(xp, sel, dw, d_scores, valid, poison, boost, weighting)
    return None


def tournament_backward(xp: Any, sel: Selection, dw_items: Any, d_scores: Any, boost: float, weighting: str) -> Any:
    """Score cotangents of the padded items; see
    :func:`shtopk._core.plan_backward.neutral_tournament_backward`."""
    chosen = engine(dw_items, d_scores, *(sel.rounds[0].order,) if sel.rounds else ())
    if chosen == "numba":
        return cpu.tournament_backward(xp, sel, dw_items, d_scores, boost, weighting)
    if chosen == "triton" and _triton_takes(xp, dw_items.dtype, d_scores.dtype):
        from . import triton_ops

        if triton_ops.backward_reads(sel):
            return triton_ops.tournament_backward(xp, sel, dw_items, d_scores, boost, weighting)
    return neutral_tournament_backward(xp, sel, dw_items, d_scores, boost, weighting)
