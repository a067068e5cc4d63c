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

In plain eager mode an autograd function without ``setup_context``
(:class:`EagerTopKFunction`) calls the ops' bodies directly (:func:`_plain_eager`):
the same computation without the dispatcher's cost per call, and the backward
reuses the forward's flattened inputs and record; a call that nothing can
differentiate skips the autograd function as well (:func:`run`).

The backward keeps E, v, the mask and, for successive halving, what the forward
op returns for it as extra, non-differentiable outputs: on the compiled CPU
engine (:func:`replays`) the first round's order (4 bytes per item), from which
the backward replays the tournament; elsewhere the record of the scores-only
tournament (O(n) numbers per row); no copy of E is ever made.
Without a record (the baseline, hard top-k, or a forward run without grad)
the selection is recomputed from v inside the backward op. Higher-order
gradients are not implemented: differentiating the backward raises a
``RuntimeError`` (never silent zeros). Forward-mode AD (``jvp``, ``jacfwd``)
is not implemented either, and torch says so (a custom ``jvp`` method would
stop Dynamo from tracing the function).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._core.flat import Flat
from ._core.hard import hard_selection
from ._core.plan import Round, Selection, n_rounds
from ._kernels import compiled_cpu_allowed, host_inputs
from ._kernels.cpu import ROUND_FIELDS, cores, numpy_view, replay_shape, round_columns, round_fields
from ._operators import HardTopK, IterativeSoftmax, SuccessiveHalving
from ._validation import Inputs, check_inputs

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


def _flat(E: Tensor, v: Tensor, mask: Tensor | None, k: int) -> tuple[Any, bool]:
    """The flattened, validated inputs, and whether they are NumPy views of the tensors."""
    return _flat_of(check_inputs(E, v, k, mask))


def _flat_of(inp: Inputs) -> tuple[Any, bool]:
    """:func:`_flat` of inputs already validated.

    CPU tensors that the compiled CPU engine serves (:func:`shtopk._kernels.host_inputs`)
    run the whole operator on NumPy views (no copy) around its kernels; the results
    come back through ``torch.from_numpy`` (no copy either).
    """
    from ._api import flatten_inputs  # imported late: _api imports this module's users

    host = host_inputs(inp)
    return flatten_inputs(host or inp), host is not None


def _to_torch(x: Any) -> Tensor:
    """A result of the operator as a tensor (NumPy arrays of the host path: sharing memory)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _topk(
    E: Tensor,
    v: Tensor,
    mask: Tensor | None,
    k: int,
    method: str,
    boost: float,
    weighting: str,
    order: str,
    alpha: float,
    record: bool,
    replay: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(values (..., k, d), scores (..., k), saved)`` of the operator ``method``.

    With ``record`` (successive halving only), ``saved`` holds what the backward needs,
    never a copy of E: with ``replay`` (the caller asks :func:`replays`), the first
    round's order of every batch row (one int32 tensor, 4 bytes per item: the backward
    replays the tournament); else the record (:func:`pack_selection`: about 60 bytes
    per item). Without ``record`` it is empty.
    """
    replay = replay and record and method == "successive_halving"
    flat = _flat(E, v, mask, k)[0]
    values, scores, sel = _forward(flat, method, boost, weighting, order, alpha, record, replay=replay)
    if replay:
        return values, scores, [_first_order(sel, flat.B, v.shape[-1], k)]
    return values, scores, pack_selection(sel) if sel is not None else []


def replays(E: Tensor, v: Tensor, method: str, record: bool) -> bool:
    """The op's ``replay`` argument for these inputs: whether its forward should save only the
    first round's order for its backward, which then replays the tournament (as eager calls
    do, :func:`shtopk._kernels.cpu.replays`): successive halving with a record, on the
    compiled CPU engine, for E in the scores' dtype (float32 or float64) and batch rows at
    least as many as cores.

    Decided by the caller of the op from shapes, dtypes and the device (Dynamo traces
    it: a symbolic batch size gets a guard, the cores are a constant of the trace), so
    that the op's fake and real implementations, which both follow the argument,
    promise and return the same outputs."""
    if not (
        record
        and method == "successive_halving"
        and E.device.type == "cpu"
        and E.dtype == v.dtype
        and E.dtype in (torch.float32, torch.float64)
    ):
        return False
    cores = _replay_cores()
    return cores > 0 and replay_shape(math.prod(v.shape[:-1]), v.shape[-1], cores)


@torch.compiler.assume_constant_result
def _replay_cores() -> int:
    """The cores the compiled CPU engine runs on (0 where it may not run): a constant for Dynamo,
    which cannot trace the affinity query."""
    return cores() if compiled_cpu_allowed() else 0


def _first_order(sel: Selection | None, B: int, n: int, k: int) -> Tensor:
    """The saved tensor of a forward with ``replay``: the first round's order (B, m) int32 the
    engine kept (``sel.replay``), or -1 everywhere where it kept a record instead (another
    engine than the one :func:`replays` expected, e.g. ``SHTOPK_KERNELS`` changed since a
    graph was traced: then the backward plans again)."""
    if sel is not None and sel.replay is not None:
        return _to_torch(sel.replay)
    return torch.full((B, k << n_rounds(n, k)), -1, dtype=torch.int32)


def _forward(
    flat: Flat,
    method: str,
    boost: float,
    weighting: str,
    order: str,
    alpha: float,
    record: bool,
    *,
    replay: bool = False,
) -> tuple[Tensor, Tensor, Selection | None]:
    """``(values, scores)`` of :func:`_topk` on flattened inputs, and the recorded selection
    (None without a record) as the engine returned it (an eager backward reuses it; with
    ``replay``, one that keeps ``flat`` for the backward: the engine may replay the
    tournament there instead of keeping a record, see ``SuccessiveHalving.forward``)."""
    op = _operator(method, boost, weighting, order, alpha)
    record = record and method == "successive_halving"
    values, scores, sel = op.forward(flat, record=record, replay=replay)
    values, scores = _to_torch(flat.unflatten_values(values)), _to_torch(flat.unflatten_scores(scores))
    return values, scores, sel if record else None


topk = torch.library.custom_op("shtopk::topk", _topk, mutates_args=())


@topk.register_fake
def _topk_fake(E, v, mask, k, method, boost, weighting, order, alpha, record, replay):
    batch = v.shape[:-1]
    values, scores = E.new_empty((*batch, k, E.shape[-1])), v.new_empty((*batch, k))
    if not (record and method == "successive_halving"):
        return values, scores, []
    B, n = math.prod(batch), v.shape[-1]
    if replay:
        return values, scores, [v.new_empty((B, k << n_rounds(n, k)), dtype=torch.int32)]
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    saved = []
    for shape, dtype in selection_layout(B, n, k):
        saved.append(v.new_empty(shape, dtype={"index": torch.int64, "bool": torch.bool, "float": cdt}[dtype]))
    return values, scores, saved


def selection_layout(B: Any, n: int, k: int) -> list[tuple[tuple[Any, ...], str]]:
    """Shapes and kinds (``"index"``, ``"float"``, ``"bool"``) of :func:`pack_selection`'s tensors:
    one per :class:`~shtopk._core.plan.Round` field, the rounds side by side
    (:func:`shtopk._kernels.cpu.round_columns`), then the row layout and ``inv_perm``."""
    m = k << n_rounds(n, k)
    full, half = (B, 2 * m - 2 * k), (B, m - k)
    layout = [(full, "index"), (full, "float")]  # order, sorted_weights
    layout += [(half, "float")] * 6 + [(half, "bool")]  # w_hi .. t, lo_valid
    return [*layout, ((B, n), "index"), ((B, n), "float"), ((B, k), "index")]


def pack_selection(sel: Selection) -> list[Tensor]:
    """The tensors of a recorded selection that its backward reads, in :func:`selection_layout` order.

    Each field of the rounds is one tensor, the rounds side by side: the very
    array an engine wrote them into when the selection has them (``columns``: no
    copy); otherwise one concatenation. Views are copied (a custom op's outputs may not
    alias one another), and every tensor is contiguous.
    """
    like = sel.weight_of_row
    out: list[Any]  # NumPy arrays on the host path, tensors otherwise
    if isinstance(like, np.ndarray):  # the host path: the arrays the compiled backward reads
        out = round_fields(sel, like.shape[0], like.dtype)
    elif sel.columns is not None:  # the arrays the engine wrote the rounds into
        out = list(sel.columns)
    else:
        kinds = {"order": torch.int64, "lo_valid": torch.bool}
        out = [
            torch.cat([getattr(rd, name) for rd in sel.rounds], dim=-1)
            if sel.rounds
            else like.new_empty((like.shape[0], 0), dtype=kinds.get(name, like.dtype))  # no rounds (k >= n)
            for name in ROUND_FIELDS
        ]
    out += [sel.slot_of_row, sel.weight_of_row, sel.inv_perm]
    seen: set[int] = set()
    packed: list[Tensor] = []
    for x in out:
        if isinstance(x, np.ndarray):  # the host path's record: a tensor of its own memory
            own = x.base is None and x.flags.c_contiguous and id(x) not in seen
            seen.add(id(x))
            x = torch.from_numpy(x if own else x.copy())
        if x._base is not None or id(x) in seen:
            x = x.clone(memory_format=torch.contiguous_format)
        x = x.contiguous()  # the fake implementation promises contiguous tensors
        seen.add(id(x))
        packed.append(x)
    return packed


def unpack_selection(saved: list[Tensor]) -> Selection:
    """The inverse of :func:`pack_selection` (the fields the backward reads; rounds as views)."""
    per = len(ROUND_FIELDS)
    fields, (slot_of_row, weight_of_row, inv_perm) = saved[:per], saved[per:]
    k = inv_perm.shape[-1]
    m = fields[2].shape[-1] + k
    rounds = [
        Round(
            **{
                name: f[:, full if i < 2 else half]
                for i, (name, f) in enumerate(zip(ROUND_FIELDS, fields, strict=True))
            }
        )
        for full, half in round_columns(m, k)
    ]
    return Selection(None, None, None, slot_of_row, weight_of_row, rounds, inv_perm, tuple(fields))


def _topk_backward(
    E: Tensor,
    v: Tensor,
    mask: Tensor | None,
    d_values: Tensor,
    d_scores: Tensor,
    saved: list[Tensor],
    k: int,
    method: str,
    boost: float,
    weighting: str,
    order: str,
    alpha: float,
    need_dE: bool,
    need_dv: bool,
) -> tuple[Tensor, Tensor]:
    """``(dE, dv)``; an input whose gradient is not needed gets an empty tensor.

    ``saved`` is what the forward saved (successive halving: the first round's order,
    from which the tournament is replayed, or the record), or empty: then the
    selection is recomputed from the scores (E is not read for it).
    """
    settings = (method, boost, weighting, order, alpha, need_dE, need_dv)
    return _topk_backward_flat(None, E, v, mask, d_values, d_scores, saved, k, *settings)


@dataclasses.dataclass(frozen=True)
class _Carried:
    """What an eager forward hands its backward besides the saved tensors: the flattened inputs
    (their E a view of the E saved for the backward, whose version torch checks) and the
    recorded selection as the engine returned it (None without a record)."""

    flat: Flat
    selection: Selection | None


def _topk_backward_flat(
    carried: _Carried | None,
    E: Tensor,
    v: Tensor,
    mask: Tensor | None,
    d_values: Tensor,
    d_scores: Tensor | None,
    saved: list[Any],
    k: int,
    *settings: Any,
) -> tuple[Tensor, Tensor]:
    """:func:`_topk_backward` (``settings``: its ``method`` ... ``need_dv``); with ``carried``
    (:class:`_Carried`), the forward's flattened inputs (not flattened and checked again) and
    its recorded selection (then not unpacked from ``saved``). ``d_scores`` None means zeros."""
    method, boost, weighting, order, alpha, need_dE, need_dv = settings
    sel = None
    if carried is None:
        flat, host = _flat(E, v, mask, k)
    else:
        flat, sel = carried.flat, carried.selection
        host = isinstance(flat.s, np.ndarray)
    dv_in: Any = d_values
    ds_in: Any = d_scores
    if host:  # NumPy views of the record and of the cotangents, as of E and v
        saved = [numpy_view(x) for x in saved]
        dv_in = numpy_view(d_values.to(E.dtype))
        ds_in = None if d_scores is None else numpy_view(d_scores)
    op = _operator(method, boost, weighting, order, alpha)
    if method == "successive_halving":
        if sel is None and len(saved) == 1:  # the first round's order (see _topk): a replay
            first = saved[0]
            replayed = host and first.shape[0] and int(first[0, 0]) >= 0
            sel = Selection(None, None, None, replay=first) if replayed else op.plan(flat, record=True)
        elif sel is None:
            sel = unpack_selection(saved) if saved else op.plan(flat, record=True)
    elif method == "hard":
        sel = hard_selection(flat.xp, flat.s, flat.valid, flat.poison, k, order=order, record=True)
    else:
        sel = op.forward(flat, record=True)[2]  # the baseline's state comes with its forward
    B, d = flat.B, flat.d
    dv_in = dv_in.reshape(B, k, d)
    dE, dv = op.backward(
        flat,
        sel,
        dv_in if host else dv_in.to(E.dtype),
        None if ds_in is None else ds_in.reshape(B, k),
        need_dE=need_dE,
        need_dv=need_dv,
    )
    dE = _to_torch(dE.reshape(E.shape)) if need_dE else E.new_empty(0)
    dv = _to_torch(dv.reshape(v.shape)) if need_dv else v.new_empty(0)
    return dE, dv


topk_backward = torch.library.custom_op("shtopk::topk_backward", _topk_backward, mutates_args=())


@topk_backward.register_fake
def _topk_backward_fake(E, v, mask, d_values, d_scores, saved, *settings):
    need_dE, need_dv = settings[-2], settings[-1]
    return (E.new_empty(E.shape) if need_dE else E.new_empty(0)), (v.new_empty(v.shape) if need_dv else v.new_empty(0))


_PLAIN = (Tensor, torch.nn.Parameter)


def _plain_eager(*tensors: Tensor | None) -> bool:
    """Whether the ops' Python bodies may run directly instead of through the dispatcher.

    Only for plain tensors in plain eager mode: not while Dynamo or ``torch.jit.trace``
    traces (they must see the opaque op), under ``torch.func`` transforms
    (their vmap rules are the op's), under a dispatch or function mode (which
    should see the op), or while the profiler records (which names it). There
    the bodies compute the same thing, without the dispatcher's cost per call
    (measured: 40-130 us per op call, the more after a large kernel has evicted
    the interpreter from cache). Any check torch does not have says "no".
    """
    if not all(x is None or type(x) in _PLAIN for x in tensors):
        return False
    try:
        return not (
            torch.compiler.is_compiling()
            or torch._C._get_tracing_state() is not None
            or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack()
            or torch._C._len_torch_function_stack()
            or torch.autograd._profiler_enabled()
        )
    except AttributeError:  # a torch without one of these private checks: always dispatch
        return False


def _forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (dual tensors may be about)."""
    try:
        return torch.autograd.forward_ad._current_level >= 0
    except AttributeError:  # a torch without this private state: assume so
        return True


def run(inp: Inputs, settings: tuple[Any, ...]) -> tuple[Tensor, Tensor]:
    """``(values, scores)`` of the operator with ``settings`` (:func:`op_arguments`) on validated
    torch inputs, through :class:`TopKFunction`, recording the tournament when a backward may follow.

    In plain eager mode (torch would see nothing of the call, :func:`_plain_eager`) and
    without a forward-mode AD level open: through :class:`EagerTopKFunction` when grad is
    recorded for these inputs; otherwise, since no derivative of the call can be taken, the
    operator runs directly, the same values without ``Function.apply``'s cost (and the
    outputs require no grad, as the function's would not).
    """
    E, v, mask = inp.E, inp.v, inp.mask
    record = torch.is_grad_enabled() and (E.requires_grad or v.requires_grad)
    if _plain_eager(E, v, mask) and not _forward_ad_active():
        if record:
            return EagerTopKFunction.apply(E, v, mask, inp, (inp.k, *settings))  # type: ignore[no-any-return]
        method, boost, weighting, order, alpha = settings
        return _forward(_flat_of(inp)[0], method, boost, weighting, order, alpha, False)[:2]
    values, scores, *_ = TopKFunction.apply(E, v, mask, inp.k, *settings, record)
    return values, scores


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
    It saves E, v, the mask and what the op's forward saved of the tournament (the first
    round's order where :func:`replays` says so, else the record: O(n) numbers per batch
    row, marked non-differentiable). Plain eager calls take :class:`EagerTopKFunction`
    instead, whose context keeps the record and the flattened inputs as the engine
    returned them (:class:`_Carried`), for the first backward only.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(E: Tensor, v: Tensor, mask: Tensor | None, *settings: Any) -> tuple[Any, ...]:
        # settings: the op's ``k`` ... ``record``
        method, record = settings[1], settings[-1]
        values, scores, saved = topk(E, v, mask, *settings, replays(E, v, method, record))
        return (values, scores, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        E, v, mask, *settings = inputs
        saved = output[2:]
        ctx.carried = None
        ctx.mark_non_differentiable(*saved)
        ctx.save_for_backward(E, v, mask, *saved)
        ctx.settings = tuple(settings[:-1])  # without ``record``
        # no zero cotangents for the record's many tensors (each a fill, and a parallel region
        # that waits for a descheduled thread when another process keeps a core busy)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, d_values: Tensor | None, d_scores: Tensor | None, *_: Any) -> tuple[Any, ...]:
        return _backward(ctx, d_values, d_scores) + (None,) * (2 + len(ctx.settings))


class EagerTopKFunction(torch.autograd.Function):
    """:class:`TopKFunction` for plain eager calls (:func:`run` decides: inside a function,
    tracing and transforms are not visible), taking the validated inputs as they are.

    The flattened inputs and the record go to the backward as they are, not as tensors
    (:class:`_Carried`). A ``forward`` that takes ``ctx`` (no ``setup_context``): torch then
    neither binds each call's arguments to the forward's signature nor calls a second
    Python method (``Function.apply``: 16 against 32 us per call on the development VM);
    ``torch.func`` transforms, which need ``setup_context``, never reach this class.
    """

    @staticmethod
    def forward(ctx: Any, E: Tensor, v: Tensor, mask: Tensor | None, inp: Inputs, settings: tuple[Any, ...]) -> Any:
        # settings: the op's ``k`` ... ``alpha`` (a forward that records the tournament)
        flat, _ = _flat_of(inp)
        method, boost, weighting, order, alpha = settings[1:]
        values, scores, sel = _forward(flat, method, boost, weighting, order, alpha, True, replay=True)
        ctx.carried = _Carried(flat, sel)
        ctx.save_for_backward(E, v, mask)
        ctx.settings = settings
        ctx.set_materialize_grads(False)
        return values, scores

    @staticmethod
    def backward(ctx: Any, d_values: Tensor | None, d_scores: Tensor | None) -> tuple[Any, ...]:
        return (*_backward(ctx, d_values, d_scores), None, None, None)


def _backward(ctx: Any, d_values: Tensor | None, d_scores: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """``(dE, dv)`` of :class:`TopKFunction` and :class:`EagerTopKFunction` (None where not needed)."""
    E, v, mask, *saved = ctx.saved_tensors
    k = ctx.settings[0]
    if d_values is None:
        d_values = E.new_zeros((*v.shape[:-1], k, E.shape[-1]))
    need_dE, need_dv = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    settings = (*ctx.settings, need_dE, need_dv)
    # grad mode is on only when the gradient itself may be differentiated (create_graph=True,
    # torch.func): then through a function whose derivative raises; otherwise the bare op
    # (what torch.compile traces: Dynamo cannot nest an autograd.Function in a backward)
    carried, ctx.carried = ctx.carried, None  # kept no longer than the first backward
    if not torch.is_grad_enabled() and _plain_eager(E, v, mask, d_values, d_scores, *saved):
        # (no zero tensor for an unused d_scores: the body takes None)
        dE, dv = _topk_backward_flat(carried, E, v, mask, d_values, d_scores, saved, *settings)
    else:
        if d_scores is None:
            d_scores = v.new_zeros((*v.shape[:-1], k))
        args = (E, v, mask, d_values, d_scores, saved, *settings)
        dE, dv = (TopKBackwardFunction.apply if torch.is_grad_enabled() else topk_backward)(*args)
    return (dE if need_dE else None, dv if need_dv else None)


# ``Function.apply`` binds its arguments to ``inspect.signature(forward)`` on every call
# (~35 us); inspect returns a function's ``__signature__`` when it has one.
TopKFunction.forward.__signature__ = inspect.signature(TopKFunction.forward)  # type: ignore[attr-defined]


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


TopKBackwardFunction.forward.__signature__ = inspect.signature(TopKBackwardFunction.forward)  # type: ignore[attr-defined]


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
    size = info.batch_size
    args = [_with_batch_dim(x, dim, size) for x, dim in zip((E, v, mask), in_dims[:3], strict=True)]
    values, scores, saved = topk(*args, *settings)
    # the record's (B, ...) rows are (vmapped, rest) flattened: unflatten the vmapped dimension
    saved = [x.reshape(size, x.shape[0] // size, *x.shape[1:]) for x in saved]
    return (values, scores, saved), (0, 0, [0] * len(saved))


@topk_backward.register_vmap
def _topk_backward_vmap(info, in_dims, E, v, mask, d_values, d_scores, saved, *settings):
    size = info.batch_size
    tensors = (E, v, mask, d_values, d_scores)
    args = [_with_batch_dim(x, dim, size) for x, dim in zip(tensors, in_dims[:5], strict=True)]
    saved_dims = in_dims[5] if isinstance(in_dims[5], (list, tuple)) else [in_dims[5]] * len(saved)
    saved = [_with_batch_dim(x, dim, size) for x, dim in zip(saved, saved_dims, strict=True)]
    saved = [x.reshape(size * x.shape[1], *x.shape[2:]) for x in saved]  # (vmapped, rest) -> rows
    dE, dv = topk_backward(*args, saved, *settings)
    need_dE, need_dv = settings[-2], settings[-1]
    return (dE, dv), (0 if need_dE else None, 0 if need_dv else None)
