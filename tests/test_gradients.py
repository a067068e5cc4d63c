"""Gradients: manual VJP == torch autograd through the neutral core == finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import shtopk
from shtopk import vjp
from shtopk._api import check_inputs, flatten_inputs, hard_operator, iterative_operator, successive_halving_operator

torch = pytest.importorskip("torch")

SH_SETTINGS = [
    dict(boost=3.0, weighting="softmax", order="score"),
    dict(boost=20.0, weighting="power", order="input"),
    dict(boost=0.7, weighting="softmax", order="input"),
]
SIZES = [(7, 3), (16, 2), (9, 9), (12, 1)]


def random_problem(rng, batch, n, d, masked):
    """Random E, scores in [0, 1) at least 0.1 / n apart, and a mask.

    Every operator's output jumps where two scores swap order, so the scores are kept apart: a
    pair within gradcheck's step (1e-6) of each other makes its finite differences straddle the
    jump (CI met one such pair for the iterative baseline)."""
    E = rng.uniform(-1, 1, (*batch, n, d))
    v = (rng.permuted(np.broadcast_to(np.arange(n), (*batch, n)), axis=-1) + rng.uniform(0.05, 0.95, (*batch, n))) / n
    mask = rng.random((*batch, n)) < 0.75 if masked else None
    return E, v, mask


def finite(out):
    """(values, scores) with the ``-inf`` scores of surplus rows replaced by 0 (for gradcheck)."""
    values, scores = out
    return values, torch.where(torch.isfinite(scores), scores, 0)


def neutral_autograd(op, E, v, k, mask=None):
    """Run ``op`` through the neutral core with plain torch autograd (no custom Function)."""
    inp = check_inputs(E, v, k, mask)
    flat = flatten_inputs(inp)
    values, scores, _ = op.forward(flat)
    return flat.unflatten_values(values), flat.unflatten_scores(scores)


def operator_for(name, **kw):
    if name == "sh":
        return successive_halving_operator(kw["boost"], kw["weighting"], kw["order"])
    if name == "hard":
        return hard_operator(kw.get("order", "score"))
    return iterative_operator(kw.get("alpha", 1.0))


VJP_FUNCTIONS = {"sh": vjp.successive_halving_topk, "hard": vjp.hard_topk, "iterative": vjp.iterative_softmax_topk}
PUBLIC_FUNCTIONS = {
    "sh": shtopk.successive_halving_topk,
    "hard": shtopk.hard_topk,
    "iterative": shtopk.iterative_softmax_topk,
}
CASES = [("sh", s) for s in SH_SETTINGS] + [
    ("hard", dict(order="input")),
    ("iterative", dict(alpha=1.0)),
    ("iterative", dict(alpha=4.0)),
]


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_public_functions(rng, name, kw, n, k, masked):
    E, v, mask = random_problem(rng, (2,), n, 3, masked)
    Et = torch.tensor(E, requires_grad=True)
    vt = torch.tensor(v, requires_grad=True)
    mt = None if mask is None else torch.tensor(mask)
    fn = PUBLIC_FUNCTIONS[name]
    assert torch.autograd.gradcheck(lambda a, b: finite(fn(a, b, k, mask=mt, **kw)), (Et, vt))


@pytest.mark.parametrize("name,kw", CASES)
def test_gradcheck_neutral_core_under_autograd(rng, name, kw):
    E, v, mask = random_problem(rng, (3,), 11, 2, True)
    op = operator_for(name, **kw)
    mt = torch.tensor(mask)
    assert torch.autograd.gradcheck(
        lambda a, b: finite(neutral_autograd(op, a, b, 3, mt)),
        (torch.tensor(E, requires_grad=True), torch.tensor(v, requires_grad=True)),
    )


def test_gradcheck_plan_and_apply(rng):
    E, v, mask = random_problem(rng, (2,), 13, 3, True)
    mt = torch.tensor(mask)

    def f(E_, v_):
        p = shtopk.plan(v_, 3, boost=2.0, mask=mt, order="input")
        return (*finite(shtopk.apply(p, E_)), p.weights)

    assert torch.autograd.gradcheck(f, (torch.tensor(E, requires_grad=True), torch.tensor(v, requires_grad=True)))


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("n,k", SIZES)
def test_manual_vjp_equals_autograd_and_finite_differences(rng, name, kw, n, k):
    E, v, mask = random_problem(rng, (2, 2), n, 4, True)
    out, pullback = VJP_FUNCTIONS[name](E, v, k, mask=mask, **kw)
    d_values = rng.normal(size=out.values.shape)
    d_scores = rng.normal(size=out.scores.shape)
    dE, dv = pullback(d_values, d_scores)

    # torch autograd through the neutral core, no custom Function
    Et = torch.tensor(E, requires_grad=True)
    vt = torch.tensor(v, requires_grad=True)
    values, scores = neutral_autograd(operator_for(name, **kw), Et, vt, k, torch.tensor(mask))
    np.testing.assert_allclose(values.detach().numpy(), out.values, rtol=1e-12, atol=1e-14)
    ((values * torch.tensor(d_values)).sum() + (scores * torch.tensor(d_scores)).sum()).backward()
    np.testing.assert_allclose(dE, Et.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dv, vt.grad.numpy(), rtol=1e-9, atol=1e-11)

    # central finite differences of the forward along random directions
    fn = PUBLIC_FUNCTIONS[name]

    def objective(E_, v_):
        o = fn(E_, v_, k, mask=mask, **kw)
        return float((o.values * d_values).sum() + (np.where(np.isfinite(o.scores), o.scores, 0) * d_scores).sum())

    # The sort orders (and, for order="input", the output order) are piecewise constant: a
    # direction whose step crosses a change of order is not differentiable there. Such a step
    # shows as one-sided differences that disagree; it is skipped for a fresh direction.
    eps, checked = 1e-6, 0
    for _ in range(10):
        tE, tv = rng.normal(size=E.shape), rng.normal(size=v.shape) * mask
        f0, fp, fm = objective(E, v), objective(E + eps * tE, v + eps * tv), objective(E - eps * tE, v - eps * tv)
        if abs((fp - f0) - (f0 - fm)) > 1e-3 * eps * (1 + abs(fp - f0) / eps):
            continue
        assert (fp - fm) / (2 * eps) == pytest.approx(float((dE * tE).sum() + (dv * tv).sum()), rel=1e-5, abs=1e-7)
        checked += 1
        if checked == 2:
            break
    assert checked == 2


@pytest.mark.parametrize("name,kw", CASES)
def test_torch_custom_function_equals_plain_autograd(rng, name, kw):
    E, v, mask = random_problem(rng, (3,), 21, 5, True)
    grads = []
    for run in ("function", "neutral"):
        Et = torch.tensor(E, requires_grad=True)
        vt = torch.tensor(v, requires_grad=True)
        if run == "function":
            values, scores = PUBLIC_FUNCTIONS[name](Et, vt, 4, mask=torch.tensor(mask), **kw)
        else:
            values, scores = neutral_autograd(operator_for(name, **kw), Et, vt, 4, torch.tensor(mask))
        (values.square().sum() + torch.where(scores.isfinite(), scores, 0).sum()).backward()
        grads.append((Et.grad, vt.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-12)


def test_masked_and_padded_items_get_no_gradient(rng):
    E, v, _ = random_problem(rng, (2,), 10, 3, False)
    mask = np.ones((2, 10), bool)
    mask[:, [1, 4]] = False
    v[0, 7] = -np.inf
    E[:, [1, 4]] = np.nan  # never read, so even NaN there stays out of every gradient
    out, pullback = vjp.successive_halving_topk(E, v, 3, mask=mask)
    dE, dv = pullback(np.ones_like(out.values), np.ones_like(out.scores))
    assert (dE[:, [1, 4]] == 0).all() and (dv[:, [1, 4]] == 0).all()
    assert (dE[0, 7] == 0).all() and dv[0, 7] == 0
    assert np.isfinite(dE).all() and np.isfinite(dv).all()


def test_only_what_is_needed_is_computed(rng):
    E, v, _ = random_problem(rng, (2,), 10, 3, False)
    for requires in ((True, False), (False, True)):
        Et = torch.tensor(E, requires_grad=requires[0])
        vt = torch.tensor(v, requires_grad=requires[1])
        shtopk.successive_halving_topk(Et, vt, 3).values.sum().backward()
        assert (Et.grad is not None) == requires[0] and (vt.grad is not None) == requires[1]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name,kw", CASES)
def test_half_precision_forward_and_backward_are_finite(rng, dtype, name, kw):
    E, v, mask = random_problem(rng, (4,), 64, 16, True)
    half = getattr(torch, dtype)
    Et = torch.tensor(E).to(half).requires_grad_()
    vt = torch.tensor(v).to(half).requires_grad_()
    values, scores = PUBLIC_FUNCTIONS[name](Et, vt, 8, mask=torch.tensor(mask), **kw)
    assert values.dtype == half and scores.dtype == half
    assert torch.isfinite(values).all() and torch.isfinite(scores[scores != -torch.inf]).all()
    (values.float().square().sum() + torch.where(scores.isfinite(), scores, 0).float().sum()).backward()
    assert Et.grad.dtype == half and vt.grad.dtype == half
    assert torch.isfinite(Et.grad).all() and torch.isfinite(vt.grad).all()
    # Half-precision inputs are computed in float32: the float32 result on the same (rounded)
    # inputs takes the same tournament, so only the rounding of the outputs differs. (A float64
    # reference could break near-ties of merged scores differently and pair other items.)
    ref = PUBLIC_FUNCTIONS[name](Et.detach().float(), vt.detach().float(), 8, mask=torch.tensor(mask), **kw)
    torch.testing.assert_close(values.float(), ref.values, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("weighting,boost", [("softmax", 1e6), ("power", 1e6), ("power", 20.0)])
def test_gradients_finite_at_extreme_boost(rng, weighting, boost):
    E = rng.uniform(-1, 1, (2, 64, 3))
    v = rng.uniform(-1e3, 1e3, (2, 64))
    for dtype in (np.float32, np.float64):
        out, pullback = vjp.successive_halving_topk(
            E.astype(dtype), v.astype(dtype), 4, boost=boost, weighting=weighting
        )
        dE, dv = pullback(np.ones_like(out.values), np.ones_like(out.scores))
        assert np.isfinite(dE).all() and np.isfinite(dv).all()


def test_pullback_checks_cotangents_and_can_be_reused(rng):
    E, v, _ = random_problem(rng, (), 10, 3, False)
    _out, pullback = vjp.successive_halving_topk(E, v, 3)
    with pytest.raises(ValueError, match="d_values"):
        pullback(np.ones((2, 3)))
    with pytest.raises(ValueError, match="d_scores"):
        pullback(np.ones((3, 3)), np.ones(4))
    with pytest.raises(TypeError, match="d_values"):
        pullback(torch.ones(3, 3))
    first = pullback(np.ones((3, 3)))
    second = pullback(np.ones((3, 3)))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_manual_vjp_runs_on_every_backend(backend, rng):
    E, v, mask = random_problem(rng, (2,), 12, 3, True)
    ref_out, ref_pullback = vjp.successive_halving_topk(E, v, 3, mask=mask)
    ref = ref_pullback(np.ones_like(ref_out.values), np.ones_like(ref_out.scores))
    _out, pullback = vjp.successive_halving_topk(backend.asarray(E), backend.asarray(v), 3, mask=backend.asarray(mask))
    dE, dv = pullback(backend.asarray(np.ones((2, 3, 3))), backend.asarray(np.ones((2, 3))))
    np.testing.assert_allclose(backend.to_numpy(dE), ref[0], rtol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(dv), ref[1], rtol=1e-10)
