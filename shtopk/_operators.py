"""Each operator as a (forward, backward) pair over flattened inputs.

The public functions (:mod:`shtopk._api`), the manual VJPs (:mod:`shtopk.vjp`)
and the torch autograd wrappers (:mod:`shtopk.torch`) all run an operator
through this one interface, so the three agree by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np

from ._backward import baseline_backward, selection_backward
from ._core.baseline import iterative_forward
from ._core.flat import Flat
from ._core.hard import hard_selection
from ._kernels import gather_sum, selection_values, tournament

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _saturating(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """``method`` with NumPy's overflow and invalid-operation warnings off.

    The core's formulas saturate on purpose: a pair gap beyond the dtype's range
    becomes ``inf`` (weights exactly 1 and 0), the backward clips every product,
    and the baseline's softmax of scores near the largest float is formed the same
    way. On NumPy, or an Array API library built on it, each such intermediate step
    would warn, although the results are finite and as documented; other libraries
    do not warn, and the context costs about a microsecond per call.
    """

    @functools.wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with np.errstate(over="ignore", invalid="ignore"):
            return method(*args, **kwargs)

    return run


@dataclass(frozen=True)
class SuccessiveHalving:
    """The successive-halving top-k operator with fixed settings."""

    boost: float
    weighting: str
    order: str

    @_saturating
    def plan(self, flat: Flat, *, record: bool = False) -> Any:
        return tournament(
            flat.xp,
            flat.s,
            flat.valid,
            flat.poison,
            flat.k,
            boost=self.boost,
            weighting=self.weighting,
            order=self.order,
            record=record,
        )

    @_saturating
    def forward(self, flat: Flat, *, record: bool = False, replay: bool = False) -> tuple[Any, Any, Any]:
        """``(values, scores, selection)``; without ``record`` the selection is None, and with it
        it holds what the backward reads (an engine may apply it without ever writing its
        plan layout, ``indices`` and ``weights``, to memory). With ``replay`` too, an engine
        may keep no record and replay the tournament in :meth:`backward` (which then reads
        ``flat``'s scores again: a selection for a caller that keeps ``flat``)."""
        return selection_values(
            flat.xp,
            flat.s,
            flat.valid,
            flat.poison,
            flat.E,
            flat.k,
            boost=self.boost,
            weighting=self.weighting,
            order=self.order,
            record=record,
            replay=replay,
        )

    @_saturating
    def backward(
        self, flat: Flat, saved: Any, d_values: Any, d_scores: Any, *, need_dE: bool = True, need_dv: bool = True
    ) -> tuple[Any, Any]:
        tourney = {"boost": self.boost, "weighting": self.weighting, "order": self.order}
        return selection_backward(flat, saved, d_values, d_scores, tournament=tourney, need_dE=need_dE, need_dv=need_dv)


@dataclass(frozen=True)
class HardTopK:
    """Exact top-k selection."""

    order: str

    @_saturating
    def forward(self, flat: Flat, *, record: bool = False, replay: bool = False) -> tuple[Any, Any, Any]:
        """As :meth:`SuccessiveHalving.forward`; there is no tournament to replay."""
        sel = hard_selection(flat.xp, flat.s, flat.valid, flat.poison, flat.k, order=self.order, record=record)
        return gather_sum(flat.xp, sel.indices, sel.weights, sel.scores, flat.E), sel.scores, sel

    @_saturating
    def backward(
        self, flat: Flat, saved: Any, d_values: Any, d_scores: Any, *, need_dE: bool = True, need_dv: bool = True
    ) -> tuple[Any, Any]:
        return selection_backward(flat, saved, d_values, d_scores, tournament=None, need_dE=need_dE, need_dv=need_dv)


@dataclass(frozen=True)
class IterativeSoftmax:
    """The iterative softmax baseline."""

    alpha: float

    @_saturating
    def forward(self, flat: Flat, *, record: bool = False, replay: bool = False) -> tuple[Any, Any, Any]:
        """As :meth:`SuccessiveHalving.forward` (its state is always kept; nothing to replay)."""
        return iterative_forward(flat.xp, flat.s, flat.valid, flat.poison, flat.E, flat.k, alpha=self.alpha)

    @_saturating
    def backward(
        self, flat: Flat, saved: Any, d_values: Any, d_scores: Any, *, need_dE: bool = True, need_dv: bool = True
    ) -> tuple[Any, Any]:
        return baseline_backward(flat, saved, d_values, d_scores, need_dE=need_dE, need_dv=need_dv)
