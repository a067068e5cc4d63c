"""torch as torch users expect it (issue 7): a registered custom op that works under
torch.compile(fullgraph=True) with dynamic batch sizes, torch.func and torch.vmap, and
that refuses higher-order gradients loudly instead of returning zeros."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import shtopk

torch = pytest.importorskip("torch")
from shtopk import _torch_ops as torch_ops  # noqa: E402
from shtopk._kernels import compiled_cpu_allowed, cpu  # noqa: E402
from shtopk.torch import SuccessiveHalvingTopK  # noqa: E402

OPERATORS = {
    "sh": lambda E, v, k: shtopk.successive_halving_topk(E, v, k, boost=3.0),
    "sh-power": lambda E, v, k: shtopk.successive_halving_topk(E, v, k, boost=2.0, weighting="power", order="input"),
    "hard": lambda E, v, k: shtopk.hard_topk(E, v, k),
    "iterative": lambda E, v, k: shtopk.iterative_softmax_topk(E, v, k, alpha=2.0),
}


def data(rng, *shape, d=4):
    E = torch.from_numpy(rng.normal(size=(*shape, d)))
    v = torch.from_numpy(rng.normal(size=shape))
    return E, v


def manual_vjp(name, E, v, k, d_values, d_scores=None):
    """(dE, dv) from the library's own pullbacks on NumPy, the reference for torch."""
    fns = {"sh": shtopk.vjp.successive_halving_topk, "hard": shtopk.vjp.hard_topk}
    fns["iterative"] = shtopk.vjp.iterative_softmax_topk
    kw = {"sh": {"boost": 3.0}, "hard": {}, "iterative": {"alpha": 2.0}}[name]
    _, pullback = fns[name](E.numpy(), v.numpy(), k, **kw)
    return pullback(d_values.numpy(), None if d_scores is None else d_scores.numpy())


@pytest.mark.parametrize("name", ["sh", "hard", "iterative"])
def test_func_grad_vjp_and_jacrev_match_the_manual_vjp(rng, name):
    E, v = data(rng, 12)
    k = 3
    fn = OPERATORS[name]
    g = torch.func.grad(lambda v_: fn(E, v_, k).values.sum())(v)
    dE_want, dv_want = manual_vjp(name, E, v, k, torch.ones(k, 4))
    np.testing.assert_allclose(g.numpy(), dv_want, rtol=1e-12, atol=1e-12)
    out, pullback = torch.func.vjp(lambda E_, v_: fn(E_, v_, k).values, E, v)
    d = torch.from_numpy(rng.normal(size=tuple(out.shape)))
    dE, dv = pullback(d)
    dE_want, dv_want = manual_vjp(name, E, v, k, d)
    np.testing.assert_allclose(dE.numpy(), dE_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dv.numpy(), dv_want, rtol=1e-12, atol=1e-12)
    J = torch.func.jacrev(lambda v_: fn(E, v_, k).scores)(v)
    for j in range(k):
        e = torch.zeros(k, dtype=v.dtype)
        e[j] = 1.0
        _, dv_j = manual_vjp(name, E, v, k, torch.zeros(k, 4, dtype=v.dtype), e)
        np.testing.assert_allclose(J[j].numpy(), dv_j, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_vmap_equals_the_batched_call(rng, name):
    E, v = data(rng, 5, 12)
    fn = OPERATORS[name]
    want = fn(E, v, 3)
    got = torch.vmap(lambda E_, v_: fn(E_, v_, 3))(E, v)
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)
    # an unbatched E with batched scores; and vmap over a non-leading dimension
    got = torch.vmap(lambda v_: fn(E[0], v_, 3).values)(v)
    torch.testing.assert_close(got, fn(E[0].expand(5, 12, 4), v, 3).values, rtol=0, atol=0)
    got = torch.vmap(lambda E_, v_: fn(E_, v_, 3).values, in_dims=(1, 1))(E.transpose(0, 1), v.transpose(0, 1))
    torch.testing.assert_close(got, want.values, rtol=0, atol=0)


def test_vmap_of_grad_gives_per_example_gradients(rng):
    E, v = data(rng, 4, 10)
    fn = OPERATORS["sh"]
    per_example = torch.vmap(torch.func.grad(lambda E_, v_: fn(E_, v_, 2).values.sum(), argnums=1))(E, v)
    for b in range(4):
        _, dv = manual_vjp("sh", E[b], v[b], 2, torch.ones(2, 4, dtype=v.dtype))
        np.testing.assert_allclose(per_example[b].numpy(), dv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sh", "iterative"])
def test_higher_order_gradients_raise_every_time(rng, name):
    E, v = data(rng, 8)
    fn = OPERATORS[name]
    E.requires_grad_(True)
    v.requires_grad_(True)
    message = r"higher-order gradients .* are not implemented"
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.functional.hessian(lambda v_: fn(E, v_, 2).values.sum(), v)
    (g,) = torch.autograd.grad(fn(E, v, 2).values.square().sum(), v, create_graph=True)
    assert g.requires_grad  # not a silently detached gradient
    with pytest.raises(RuntimeError, match=message):
        g.sum().backward()
    with pytest.raises(RuntimeError, match=r"implement the jvp function .* forward mode AD"):
        torch.func.hessian(lambda v_: fn(E, v_, 2).values.square().sum())(v.detach())
    with pytest.raises(RuntimeError, match=message):
        torch.func.jacrev(torch.func.jacrev(lambda v_: fn(E, v_, 2).values.square().sum()))(v.detach())
    with pytest.raises(RuntimeError, match=message):
        torch.func.grad(lambda v_: torch.func.grad(lambda w: fn(E, w, 2).values.square().sum())(v_).sum())(v.detach())
    # first-order gradients are unaffected
    fn(E, v, 2).values.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_compiled_training_step_fullgraph_without_recompiling_per_batch_size(monkeypatch):
    from torch._dynamo.testing import CompileCounterWithBackend

    # the op saves the first round's order instead of a record from as many batch rows as
    # cores on (a guard on the batch size): pinned, so every batch size below is on one side
    monkeypatch.setattr(cpu, "_cores", lambda: 2)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    pool = SuccessiveHalvingTopK(3, boost=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(E, mask):
        return pool(E, model(E).squeeze(-1), mask).values.square().mean()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss_fn, backend=counter, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Dynamo tracing into cached helpers
        for B in (2, 3, 4, 5, 7, 9):
            E = torch.randn(B, 16, 4, dtype=torch.float64)
            mask = torch.rand(B, 16) < 0.9
            loss = compiled(E, mask)
            opt.zero_grad()
            loss.backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.zero_grad()
            loss_fn(E, mask).backward()
            for got, want in zip(grads, [p.grad for p in model.parameters()], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            opt.step()
    # one static compile, one dynamic recompile at the second batch size, then none
    assert counter.frame_count == 2


@pytest.mark.parametrize("cores", [1, 10**6], ids=["replay", "record"])
def test_the_custom_op_passes_torch_opcheck(monkeypatch, rng, cores):
    """Both layouts of successive halving's saved outputs: the first round's order (batch rows
    at least as many as cores, on the compiled CPU engine), or the record."""
    monkeypatch.setattr(cpu, "_cores", lambda: cores)
    E, v = data(rng, 2, 9)
    mask = torch.from_numpy(rng.random((2, 9)) < 0.8)
    cases = [
        ((E, v, None), "successive_halving"),
        ((E.float(), v.float(), mask), "successive_halving"),
        ((E, v, mask), "hard"),
        ((E.float(), v, None), "iterative"),
    ]
    for (args, method), record in itertools.product(cases, (False, True)):
        replay = torch_ops.replays(args[0], args[1], method, record)
        torch.library.opcheck(
            torch.ops.shtopk.topk.default,
            (*args, 3, method, 3.0, "softmax", "score", 1.0, record, replay),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
        )
    replay = torch_ops.replays(E, v, "successive_halving", True)
    assert replay == (cores == 1 and compiled_cpu_allowed())
    op_args = (E, v, None, 3, "successive_halving", 3.0, "softmax", "score", 1.0, True, replay)
    saved = torch.ops.shtopk.topk.default(*op_args)[2]
    if replay:
        assert [(x.shape, x.dtype) for x in saved] == [((2, 12), torch.int32)]  # m = 3 * 2**2
    else:
        assert len(saved) == len(torch_ops.selection_layout(2, 9, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["torch.func", "torch.compile"])
def test_the_op_replays_the_tournament_as_eager_calls_do(monkeypatch, rng, dtype, kind):
    """Through the custom op (``torch.func``, ``torch.compile``) successive halving's backward
    replays the tournament from the first round's order, on the compiled CPU engine: the
    gradients are bit-equal to an eager backward's, and to the record's (many cores);
    with masks, both weightings and orders, k = n, and an order the engine did not keep
    (-1: the backward plans again)."""
    if not compiled_cpu_allowed():
        pytest.skip("the compiled CPU engine (numba) is not installed or not allowed: no replay")
    torch._dynamo.reset()
    B, n, d = 4, 37, 3
    E = torch.from_numpy(rng.normal(size=(B, n, d))).to(dtype)
    v = torch.from_numpy(rng.normal(size=(B, n))).to(dtype)
    mask = torch.from_numpy(rng.random((B, n)) < 0.8)
    mask[0] = False
    cases = [(5, {"boost": 1.5}), (4, {"boost": 2.0, "weighting": "power", "order": "input"}), (n, {})]
    for k, kw in cases:
        dV = torch.from_numpy(rng.normal(size=(B, k, d))).to(dtype)
        dS = torch.from_numpy(rng.normal(size=(B, k))).to(dtype)

        def loss(E_, v_, k=k, kw=kw, dV=dV, dS=dS):
            out = shtopk.successive_halving_topk(E_, v_, k, mask=mask, **kw)
            return (out.values * dV).sum() + (out.scores * dS).sum()

        Ee, ve = E.clone().requires_grad_(), v.clone().requires_grad_()
        loss(Ee, ve).backward()
        want = (Ee.grad, ve.grad)
        for cores in (1, 10**6):  # the replay, the record
            monkeypatch.setattr(cpu, "_cores", lambda cores=cores: cores)
            torch._dynamo.reset()  # (the cores are a constant of a trace)
            fn = loss if kind == "torch.func" else torch.compile(loss, backend="aot_eager", fullgraph=True)
            got = torch.func.grad(fn, argnums=(0, 1))(E, v) if kind == "torch.func" else None
            if kind == "torch.compile":
                Ec, vc = E.clone().requires_grad_(), v.clone().requires_grad_()
                fn(Ec, vc).backward()
                got = (Ec.grad, vc.grad)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
    # a forward whose engine kept a record after all: the saved order is -1, the backward plans again
    args = (E, v, mask, 5, "successive_halving", 1.5, "softmax", "score", 1.0)
    d_values = torch.from_numpy(rng.normal(size=(B, 5, d))).to(dtype)
    d_scores = torch.zeros(B, 5, dtype=dtype)
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    saved = torch_ops.topk(*args, True, True)[2]
    assert len(saved) == 1 and saved[0].dtype == torch.int32 and bool((saved[0] >= 0).all())
    want = torch_ops.topk_backward(*args[:3], d_values, d_scores, saved, *args[3:], True, True)
    none = [torch.full_like(saved[0], -1)]
    got = torch_ops.topk_backward(*args[:3], d_values, d_scores, none, *args[3:], True, True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    monkeypatch.setattr(cpu, "_cores", lambda: 10**6)  # the engine keeps a record: -1 is saved
    assert bool((torch_ops.topk(*args, True, True)[2][0] == -1).all())


def test_the_torch_page_examples_run(monkeypatch):
    """docs/torch.md runs as written (its DDP example only defines its worker: not __main__);
    torch.compile with the aot_eager backend: the same graph capture without a C++ compiler."""
    import functools
    import re
    from pathlib import Path

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    page = Path(__file__).resolve().parents[1] / "docs" / "torch.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {"__name__": "torch_page"}
    torch._dynamo.reset()
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # our own documentation
    assert namespace["per_example"].shape == (5, 32) and namespace["jacobian"].shape == (4, 32)
    assert callable(namespace["train"])


@pytest.mark.parametrize("name", ["sh", "iterative"])
def test_forward_mode_ad_raises_even_without_requires_grad(rng, name):
    """Forward-mode AD never gets silent zero tangents: inputs that do not require grad (jvp's
    and dual tensors') still go through the autograd.Function, which says it has no jvp."""
    E, v = data(rng, 8)
    fn = OPERATORS[name]

    def values(E_, v_):
        return fn(E_, v_, 2).values

    message = r"implement the jvp function"
    with pytest.raises(NotImplementedError, match=message):
        torch.func.jvp(values, (E, v), (torch.ones_like(E), torch.ones_like(v)))
    with pytest.raises(NotImplementedError, match=message):
        torch.func.jacfwd(values, argnums=1)(E, v)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError, match=message):
        values(E, fwAD.make_dual(v, torch.ones_like(v)))
    with torch.no_grad(), pytest.raises(NotImplementedError, match=message):
        torch.func.jvp(values, (E, v), (torch.ones_like(E), torch.ones_like(v)))


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_calls_without_autograd_skip_the_function_with_the_same_values(rng, monkeypatch, name):
    """A plain eager call that nothing can differentiate (no_grad, inference mode, or inputs that
    do not require grad) runs the operator without the autograd.Function: no grad_fn, and the
    values and scores of a call through the function, bit for bit. Calls that may be
    differentiated (grad recorded, a forward-mode AD level, torch.func) still go through it."""
    from shtopk import _torch_ops

    applied = []
    for function in (_torch_ops.TopKFunction, _torch_ops.EagerTopKFunction):
        monkeypatch.setattr(function, "apply", lambda *a, apply=function.apply: applied.append(1) or apply(*a))
    E, v = data(rng, 3, 16)
    fn = OPERATORS[name]
    through = fn(E.clone().requires_grad_(), v.clone().requires_grad_(), 4)
    assert len(applied) == 1 and through.values.grad_fn is not None
    for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with context():
            out = fn(E, v, 4)
        assert out.values.grad_fn is None and not out.values.requires_grad
        torch.testing.assert_close(out.values, through.values.detach(), rtol=0, atol=0)
        torch.testing.assert_close(out.scores, through.scores.detach(), rtol=0, atol=0)
    assert len(applied) == 1
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError):
        fn(E, fwAD.make_dual(v, torch.ones_like(v)), 4)
    assert len(applied) == 2
    torch.func.grad(lambda v_: fn(E, v_, 4).values.sum())(v)
    assert len(applied) > 2


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_eager_backward_after_an_inplace_change_of_E_raises(rng, name):
    """The eager backward reads the forward's flattened inputs (a view of E): changing E in place
    between forward and backward is the error torch reports for saved tensors, never a gradient
    of the changed values."""
    E0, v = data(rng, 2, 16)
    v.requires_grad_()
    E = E0.clone().requires_grad_() * 1.0  # a non-leaf, which may be changed in place
    out = OPERATORS[name](E, v, 4).values
    with torch.no_grad():
        E.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_gradients_of_a_plain_call(rng, use_reentrant):
    """``torch.utils.checkpoint`` (the forward recomputed in the backward, as long-sequence
    models use it) gives exactly the gradients of the same function without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    E0, v0 = data(rng, 3, 32)
    mask = torch.from_numpy(rng.random((3, 32)) < 0.8)

    def loss(E, v):
        return shtopk.successive_halving_topk(E * 2.0, v * 1.5, 4, boost=3.0, mask=mask).values.sin().sum()

    grads = []
    for checkpointed in (False, True):
        E, v = E0.clone().requires_grad_(), v0.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reentrant variant's note that no input requires grad
            out = checkpoint(loss, E, v, use_reentrant=use_reentrant) if checkpointed else loss(E, v)
        out.backward()
        grads.append((E.grad, v.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_jit_trace_records_the_function_not_constants(rng, grad):
    """``torch.jit.trace`` sees the autograd function (not the eager bodies, whose NumPy work it
    would freeze into constants): the traced function computes new inputs' values and gradients."""
    E, v = data(rng, 3, 16)
    E2, v2 = data(rng, 3, 16)

    def values(E_, v_):
        return shtopk.successive_halving_topk(E_, v_, 4, boost=3.0).values

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        traced = torch.jit.trace(values, (E.requires_grad_(grad), v.requires_grad_(grad)), check_trace=False)
    a = (E2.clone().requires_grad_(grad), v2.clone().requires_grad_(grad))
    b = (E2.clone().requires_grad_(grad), v2.clone().requires_grad_(grad))
    out, expected = traced(*a), values(*b)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if grad:
        d_values = torch.from_numpy(rng.normal(size=tuple(out.shape)))
        got, want = torch.autograd.grad(out, a, d_values), torch.autograd.grad(expected, b, d_values)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_eager_calls_skip_the_dispatcher_yet_modes_and_the_profiler_see_the_ops(rng, monkeypatch):
    """Plain eager calls (parameters too) run the ops' bodies without the dispatcher, the backward
    reusing the forward's flattened scores and record; a dispatch mode and the profiler still see
    ``shtopk::topk`` and ``shtopk::topk_backward``, with the same values and gradients either way."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from shtopk import _torch_ops

    calls = []
    for name in ("topk", "topk_backward"):
        op = getattr(_torch_ops, name)
        monkeypatch.setattr(_torch_ops, name, lambda *a, _op=op, _name=name: calls.append(_name) or _op(*a))

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    E0, v0 = data(rng, 3, 16)
    d_values = torch.from_numpy(rng.normal(size=(3, 4, 4)))

    def step():
        E, v = torch.nn.Parameter(E0.clone()), v0.clone().requires_grad_()
        out = shtopk.successive_halving_topk(E, v, 4, boost=3.0)
        out.values.backward(d_values)
        return out.values.detach(), E.grad, v.grad

    plain = step()
    assert calls == []
    with Seen() as mode:
        seen = step()
    assert {"shtopk.topk.default", "shtopk.topk_backward.default"} <= mode.ops
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = step()
    assert {"shtopk::topk", "shtopk::topk_backward"} <= {e.key for e in prof.key_averages()}
    assert calls == ["topk", "topk_backward"] * 2
    for a, b, c in zip(plain, seen, profiled, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    # the first eager backward reuses the forward's flattened scores, a second one (retain_graph)
    # flattens them again, with a mask too: the same gradients
    mask = torch.from_numpy(rng.random((3, 16)) < 0.7)
    E, v = E0.clone().requires_grad_(), v0.clone().requires_grad_()
    out = shtopk.successive_halving_topk(E, v, 4, boost=3.0, mask=mask).values
    first = torch.autograd.grad(out, (E, v), d_values, retain_graph=True)
    second = torch.autograd.grad(out, (E, v), d_values)
    with Seen():
        out = shtopk.successive_halving_topk(E, v, 4, boost=3.0, mask=mask).values
        dispatched = torch.autograd.grad(out, (E, v), d_values)
    for a, b, c in zip(first, second, dispatched, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
