"""JAX: the operators under jit, grad and vmap; the custom VJP against finite differences and torch.

The conformance, property, bad-input and no-mutation tests run on JAX through
the ``backend`` fixture; this file covers what is specific to JAX. Shapes are
small and few: every new shape or setting is one XLA compilation.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

import shtopk

jax = pytest.importorskip("jax", reason="jax is not installed")
jnp = jax.numpy
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)  # float64 comparisons with torch and finite differences
jax.config.update("jax_disable_most_optimizations", True)  # faster compiles (see tests/conftest.py)

from shtopk import jax as shtopk_jax  # noqa: E402
from shtopk._api import hard_operator, iterative_operator, successive_halving_operator  # noqa: E402

CASES = [
    ("sh", dict(boost=3.0, weighting="softmax", order="score")),
    ("sh", dict(boost=20.0, weighting="power", order="input")),
    ("hard", dict(order="input")),
    ("iterative", dict(alpha=2.0)),
]
FUNCTIONS = {
    "sh": shtopk.successive_halving_topk,
    "hard": shtopk.hard_topk,
    "iterative": shtopk.iterative_softmax_topk,
}


def problem(rng, batch=(3,), n=13, d=4, masked=True):
    E = rng.uniform(-1, 1, (*batch, n, d))
    v = rng.uniform(0, 1, (*batch, n))
    mask = rng.random((*batch, n)) < 0.75 if masked else np.ones((*batch, n), bool)
    return E, v, mask


def objective(lib, fn, k, kw, d_values, d_scores):
    """A scalar loss of the operator's outputs (``-inf`` scores count as 0), for JAX or NumPy."""

    def loss(E, v, mask):
        values, scores = fn(E, v, k, mask=mask, **kw)
        return (values * d_values).sum() + (lib.where(scores > -np.inf, scores, 0.0) * d_scores).sum()

    return loss


def torch_gradients(fn, k, kw, E, v, mask, d_values, d_scores):
    Et = torch.tensor(E, requires_grad=True)
    vt = torch.tensor(v, requires_grad=True)
    values, scores = fn(Et, vt, k, mask=torch.tensor(mask), **kw)
    scores = torch.where(torch.isfinite(scores), scores, 0)
    ((values * torch.tensor(d_values)).sum() + (scores * torch.tensor(d_scores)).sum()).backward()
    return Et.grad.numpy(), vt.grad.numpy()


@pytest.mark.parametrize("name,kw", CASES)
def test_custom_vjp_equals_torch_and_finite_differences(rng, name, kw):
    fn, k = FUNCTIONS[name], 3
    E, v, mask = problem(rng)
    d_values, d_scores = rng.normal(size=(3, k, 4)), rng.normal(size=(3, k))
    loss = objective(jnp, fn, k, kw, jnp.asarray(d_values), jnp.asarray(d_scores))
    value, (dE, dv) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask)
    )
    assert dE.dtype == jnp.float64 and dE.shape == E.shape and dv.shape == v.shape
    dE, dv = np.asarray(dE), np.asarray(dv)

    want_dE, want_dv = torch_gradients(fn, k, kw, E, v, mask, d_values, d_scores)
    np.testing.assert_allclose(dE, want_dE, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dv, want_dv, rtol=1e-10, atol=1e-13)

    # central differences along random directions (skipping steps that cross a change of sort order)
    np_loss = objective(np, fn, k, kw, d_values, d_scores)

    def f(E_, v_):
        return float(np_loss(E_, v_, mask))

    assert float(value) == pytest.approx(f(E, v), rel=1e-12)
    eps, checked = 1e-6, 0
    for _ in range(10):
        tE, tv = rng.normal(size=E.shape), rng.normal(size=v.shape) * mask
        f0, fp, fm = f(E, v), f(E + eps * tE, v + eps * tv), f(E - eps * tE, v - eps * tv)
        if abs((fp - f0) - (f0 - fm)) > 1e-3 * eps * (1 + abs(fp - f0) / eps):
            continue
        assert (fp - fm) / (2 * eps) == pytest.approx(float((dE * tE).sum() + (dv * tv).sum()), rel=1e-5, abs=1e-7)
        checked += 1
        if checked == 2:
            break
    assert checked == 2


def test_the_public_functions_go_through_the_custom_vjp(rng):
    E, v, _ = problem(rng, masked=False)
    jaxpr = str(jax.make_jaxpr(lambda E, v: shtopk.successive_halving_topk(E, v, 2).values)(E, v))
    assert "custom_vjp_call" in jaxpr


def test_residuals_are_the_plan_not_copies_of_E(rng):
    """Memory-lean: besides E itself, the saved state holds O(n) numbers per row, nothing of size n * d."""
    B, n, d = 2, 30, 64
    E, v, mask = problem(rng, batch=(B,), n=n, d=d)
    E, v, mask = jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask)
    ops = (successive_halving_operator(3.0, "softmax", "score"), hard_operator("score"), iterative_operator(1.0))
    for op in ops:
        _, residuals = jax.eval_shape(functools.partial(shtopk_jax._run_fwd, op, 4), E, v, mask)  # traced, not compiled
        assert residuals[0].shape == E.shape
        leaves = jax.tree_util.tree_leaves(residuals[1:])
        assert len(leaves) > 3 and all(leaf.size <= B * 2 * n for leaf in leaves)  # padded to m < 2n items


@pytest.mark.parametrize("name,kw", CASES)
def test_jit_and_vmap_match_the_eager_numpy_result(rng, name, kw):
    fn, k = FUNCTIONS[name], 4
    E, v, mask = problem(rng, batch=(2, 3), n=11, d=3)
    want = fn(E, v, k, mask=mask, **kw)

    def call(E, v, mask):
        return fn(E, v, k, mask=mask, **kw)

    jitted = jax.jit(call)(jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask))
    mapped = jax.jit(jax.vmap(call))(jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask))  # vmap over the leading 2
    for got in (jitted, mapped):
        assert isinstance(got.values, jax.Array) and got.values.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got.values), want.values, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(got.scores), want.scores, rtol=1e-12, atol=1e-14)


def test_vmap_of_grad_gives_per_example_gradients(rng):
    k, kw = 3, dict(boost=5.0)
    E, v, mask = problem(rng, batch=(4,), n=10, d=3)

    def loss(E, v, mask):
        return shtopk.successive_halving_topk(E, v, k, mask=mask, **kw).values.sum()

    per_example = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask))
    batched = jax.grad(loss, argnums=(0, 1))(jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask))
    for a, b in zip(per_example, batched, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    masked_out = ~mask
    assert (np.asarray(per_example[1])[masked_out] == 0).all()
    assert (np.asarray(per_example[0])[masked_out] == 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_narrow_dtypes_keep_their_dtype_and_device(rng, dtype):
    E, v, mask = problem(rng, batch=(2,), n=16, d=8)
    E, v, mask = jnp.asarray(E, dtype=dtype), jnp.asarray(v, dtype=dtype), jnp.asarray(mask)
    out = shtopk.successive_halving_topk(E, v, 4, mask=mask)
    assert out.values.dtype == E.dtype and out.scores.dtype == v.dtype
    assert out.values.devices() == E.devices() and out.scores.devices() == v.devices()
    ref = shtopk.successive_halving_topk(np.asarray(E, np.float32), np.asarray(v, np.float32), 4, mask=np.asarray(mask))
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.asarray(out.values, np.float32), ref.values, rtol=tol, atol=tol)

    def loss(E, v):
        values, scores = shtopk.successive_halving_topk(E, v, 4, mask=mask)
        return values.astype(jnp.float32).sum() + jnp.where(scores > -jnp.inf, scores, 0).astype(jnp.float32).sum()

    dE, dv = jax.jit(jax.grad(loss, argnums=(0, 1)))(E, v)
    assert dE.dtype == E.dtype and dv.dtype == v.dtype
    assert bool(jnp.isfinite(dE).all()) and bool(jnp.isfinite(dv).all())


def test_plan_apply_and_nccs_under_jit_and_grad_equal_torch(rng):
    """plan/apply/nccs are plain JAX computations: JAX's own autodiff agrees with torch autograd."""
    E, v, mask = problem(rng, batch=(2,), n=13, d=3)
    kw = dict(boost=2.0, order="input")

    def loss(E_, v_, mask_):
        p = shtopk.plan(v_, 3, mask=mask_, **kw)
        pooled = shtopk.apply(p, E_).values
        return shtopk.nccs(E_[..., :3, :], pooled).sum() + (p.weights**2).sum()

    value, (dE, dv) = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b, jnp.asarray(mask)), argnums=(0, 1)))(
        jnp.asarray(E), jnp.asarray(v)
    )
    Et = torch.tensor(E, requires_grad=True)
    vt = torch.tensor(v, requires_grad=True)
    want = loss(Et, vt, torch.tensor(mask))
    want.backward()
    assert float(value) == pytest.approx(float(want), rel=1e-12)
    np.testing.assert_allclose(np.asarray(dE), Et.grad.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(dv), vt.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_manual_vjp_module_traces_under_jit(rng):
    E, v, mask = problem(rng, batch=(2,), n=9, d=3)

    @jax.jit
    def pulled(E, v, mask):
        out, pullback = shtopk.vjp.successive_halving_topk(E, v, 2, mask=mask)
        return pullback(jnp.ones_like(out.values), jnp.ones_like(out.scores))

    dE, dv = pulled(jnp.asarray(E), jnp.asarray(v), jnp.asarray(mask))
    out, pullback = shtopk.vjp.successive_halving_topk(E, v, 2, mask=mask)
    want = pullback(np.ones_like(out.values), np.ones_like(out.scores))
    np.testing.assert_allclose(np.asarray(dE), want[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dv), want[1], rtol=1e-12, atol=1e-14)


def test_jitted_vmapped_training_step_has_torch_gradients(rng):
    """A scorer learns which rows to keep: optax SGD under jit, the operator under vmap, the
    parameters after every step equal to torch's on the same data (float64, to rounding)."""
    optax = pytest.importorskip("optax")
    n, d, k, batch = 16, 5, 3, 8
    W0 = rng.normal(size=(d,)) * 0.1
    batches = []
    for _ in range(3):
        E = rng.normal(size=(batch, n, d))
        E[..., 0] = rng.random((batch, n)) < 0.25  # feature 0 flags the rows worth keeping
        batches.append((E, rng.random((batch, n)) < 0.9))

    def example_loss(W, E, mask):  # one example: E (n, d)
        return -shtopk.successive_halving_topk(E, E @ W, k, boost=5.0, mask=mask).values[:, 0].mean()

    def loss(W, E, mask):
        return jax.vmap(example_loss, in_axes=(None, 0, 0))(W, E, mask).mean()

    opt = optax.sgd(0.5)

    @jax.jit
    def step(W, state, E, mask):
        value, grad = jax.value_and_grad(loss)(W, E, mask)
        updates, state = opt.update(grad, state, W)
        return optax.apply_updates(W, updates), state, value, grad

    W, state = jnp.asarray(W0), opt.init(jnp.asarray(W0))
    Wt = torch.tensor(W0, requires_grad=True)
    for E, mask in batches:
        W, state, value, grad = step(W, state, jnp.asarray(E), jnp.asarray(mask))
        Et, mt = torch.tensor(E), torch.tensor(mask)
        want = -shtopk.successive_halving_topk(Et, Et @ Wt, k, boost=5.0, mask=mt).values[..., 0].mean()
        (want_grad,) = torch.autograd.grad(want, Wt)
        assert float(value) == pytest.approx(float(want), rel=1e-12)
        np.testing.assert_allclose(np.asarray(grad), want_grad.numpy(), rtol=1e-10, atol=1e-13)
        with torch.no_grad():
            Wt -= 0.5 * want_grad
        np.testing.assert_allclose(np.asarray(W), Wt.detach().numpy(), rtol=1e-10, atol=1e-13)
    assert np.abs(np.asarray(W) - W0).sum() > 0


def test_the_jax_docs_examples_run():
    pytest.importorskip("optax")
    text = (Path(__file__).resolve().parents[1] / "docs" / "jax.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/jax.md", "exec"), namespace)  # our own documentation
    assert namespace["dE"].shape == (8, 1000, 64) and namespace["dv"].shape == (8, 1000)
    assert float(jnp.abs(namespace["params"]["w"]).sum()) > 0  # the scorer was trained
