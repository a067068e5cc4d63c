"""Result types of the public API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

#: The array type of ``values`` (E's array type: ``numpy.ndarray``, ``torch.Tensor``, ...).
ValuesT = TypeVar("ValuesT")
#: The array type of ``scores`` (v's array type).
ScoresT = TypeVar("ScoresT")
#: The array type of a plan's fields (v's library: ``numpy.ndarray``, ``torch.Tensor``, ...).
ArrayT = TypeVar("ArrayT")


class TopK(NamedTuple, Generic[ValuesT, ScoresT]):
    """The k selected (or softly selected) vectors and their scores.

    Generic over the caller's array types: ``successive_halving_topk(E, v, k)``
    returns ``TopK[type(E), type(v)]`` to a type checker, so ``out.values`` has
    E's type (``numpy.ndarray``, ``torch.Tensor``, ...).

    Attributes
    ----------
    values : array, shape (..., k, d)
        The output vectors, in the array library, device and dtype of ``E``.
    scores : array, shape (..., k)
        Their scores, in the array library, device and dtype of ``v``.
        Output rows without any valid member have score ``-inf`` (and a zero
        vector in ``values``).

    See Also
    --------
    successive_halving_topk, hard_topk, iterative_softmax_topk, apply : Return it.
    Plan : A selection without the values.

    Examples
    --------
    >>> import numpy as np
    >>> import shtopk
    >>> values, scores = shtopk.hard_topk(np.eye(3), np.array([0.2, 0.7, 0.5]), 2)
    >>> scores
    array([0.7, 0.5])
    """

    values: ValuesT
    scores: ScoresT


@dataclass(frozen=True)
class PlanTarget:
    """What a :class:`Plan` from :func:`shtopk.plan` was built for: ``apply`` checks E against it.

    Attributes
    ----------
    n : int
        The number of items (rows of E).
    batch_shape : tuple of int
        The leading dimensions of v (and of E).
    library : str
        The array library of v (``"numpy"``, ``"torch"``, ...).
    device : object
        The device of v.
    """

    n: int
    batch_shape: tuple[int, ...]
    library: str
    device: Any


class _PlanFields(NamedTuple, Generic[ArrayT]):
    indices: ArrayT
    weights: ArrayT
    scores: ArrayT


class Plan(_PlanFields[ArrayT]):
    """A selection computed from the scores alone, to be applied to any tensor.

    ``indices`` and ``weights`` are the selection (which input rows make up
    each output row, and with which weight); apply it with :func:`shtopk.apply`.
    Generic over the array type of the scores' library: ``plan(v, k)`` returns
    ``Plan[type(v)]``. The static type names the library's array class; the
    dtypes are as listed below (``indices`` is an integer array even where a
    type checker knows ``v`` as, say, ``NDArray[np.float32]``).

    Output row ``j`` of ``apply(plan, X)`` is
    ``sum(plan.weights[..., j, r] * X[..., plan.indices[..., j, r], :] for r)``.

    A Plan is the tuple ``(indices, weights, scores)``; one returned by
    :func:`shtopk.plan` also carries :attr:`built_for`, and :func:`shtopk.apply`
    rejects any E of another ``n``, batch shape, library or device (from
    metadata only: no device synchronization). Its indices are trusted: they
    are in range by construction. A Plan made by hand (``Plan(indices,
    weights, scores)``) has ``built_for = None``; its indices are checked to
    lie in ``[0, n)`` for host arrays (NumPy, PyTorch on the CPU) and trusted
    unchecked on a device (an index out of range there is undefined
    behaviour of the library's gather).

    Attributes
    ----------
    indices : integer array, shape (..., k, 2**R)
        Row indices in ``[0, n)``: the members of each output row, best first
        (position 0 holds the member that won every round it played).
    weights : float array, shape (..., k, 2**R)
        The matching weights, in at least float32. For an output row with at
        least one valid member they sum to 1; padding and masked members have
        weight exactly 0 (and their index repeats the row's first index, so
        that rows excluded by ``mask`` are never read). Rows without any valid
        member have all weights 0.
    scores : float array, shape (..., k)
        The output scores, in the dtype of ``v``; ``-inf`` marks rows without
        any valid member.
    built_for : PlanTarget or None
        What the plan was built for (None for a hand-made Plan).

    See Also
    --------
    plan : Compute one from the scores.
    apply : Apply it to a tensor.
    TopK : The result of applying it.

    Examples
    --------
    >>> import numpy as np
    >>> import shtopk
    >>> p = shtopk.plan(np.array([0.1, 0.9, 0.3, 0.8, 0.5]), 2, boost=1e6)
    >>> p.indices.shape  # 2 rows of 2**R = 4 members (n = 5 padded to 8)
    (2, 4)
    >>> p.indices[:, 0], p.weights[:, 0]  # each row's best member, all the weight
    (array([1, 3]), array([1., 1.]))
    >>> p.built_for.n, p.built_for.batch_shape
    (5, ())
    """

    #: What the plan was built for; None for a hand-made Plan (and after ``_replace``).
    built_for: PlanTarget | None = None

    def __new__(cls, indices: Any, weights: Any, scores: Any, *, built_for: PlanTarget | None = None) -> Plan[Any]:
        self = tuple.__new__(cls, (indices, weights, scores))  # what the named tuple's __new__ does
        if built_for is not None:
            self.built_for = built_for
        return self
