"""Bad input gets a clear error naming the argument; inputs are never modified."""

from __future__ import annotations

import math

import numpy as np
import pytest

import shtopk
from shtopk import vjp

torch = pytest.importorskip("torch")


def inputs(backend, n=6, d=2, batch=(2,)):
    rng = np.random.default_rng(0)
    return backend.asarray(rng.normal(size=(*batch, n, d))), backend.asarray(rng.normal(size=(*batch, n)))


OPERATORS = [
    ("successive_halving_topk", shtopk.successive_halving_topk),
    ("hard_topk", shtopk.hard_topk),
    ("iterative_softmax_topk", shtopk.iterative_softmax_topk),
    ("vjp.successive_halving_topk", vjp.successive_halving_topk),
    ("vjp.hard_topk", vjp.hard_topk),
    ("vjp.iterative_softmax_topk", vjp.iterative_softmax_topk),
]


@pytest.mark.parametrize("name,fn", OPERATORS)
def test_bad_k(backend, name, fn):
    E, v = inputs(backend)
    for k, err in [
        (2.0, TypeError),
        ("2", TypeError),
        (True, TypeError),
        (None, TypeError),
        (0, ValueError),
        (-1, ValueError),
        (7, ValueError),
    ]:
        with pytest.raises(err, match="k "):
            fn(E, v, k)
    fn(E, v, np.int64(2))  # integers of any kind are fine


@pytest.mark.parametrize("name,fn", OPERATORS)
def test_bad_shapes(backend, name, fn):
    E, _v = inputs(backend)
    with pytest.raises(ValueError, match="E must have at least 2 dimensions"):
        fn(backend.asarray(np.ones(6)), backend.asarray(np.ones(6)), 2)
    with pytest.raises(ValueError, match=r"v must have shape E.shape\[:-1\]"):
        fn(E, backend.asarray(np.ones((2, 5))), 2)
    with pytest.raises(ValueError, match=r"v must have shape"):
        fn(E, backend.asarray(np.ones((6,))), 2)


@pytest.mark.parametrize("name,fn", OPERATORS)
def test_bad_mask(backend, name, fn):
    E, v = inputs(backend)
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        fn(E, v, 2, mask=backend.asarray(np.ones((2, 6))))
    with pytest.raises(ValueError, match="mask must have the shape of v"):
        fn(E, v, 2, mask=backend.asarray(np.ones((2, 5), bool)))
    with pytest.raises(TypeError, match="mask must be an array"):
        fn(E, v, 2, mask=[[True] * 6] * 2)


@pytest.mark.parametrize("name,fn", OPERATORS)
def test_bad_dtypes(backend, name, fn):
    E, v = inputs(backend)
    ints = backend.asarray(np.ones((2, 6, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="E must have a real floating dtype"):
        fn(ints, v, 2)
    with pytest.raises(TypeError, match="v must have a real floating dtype"):
        fn(E, backend.asarray(np.ones((2, 6), dtype=np.int32)), 2)
    with pytest.raises(TypeError, match="v must have a real floating dtype"):
        fn(E, backend.asarray(np.ones((2, 6), dtype=bool)), 2)
    if backend.name != "array_api_strict":  # has complex dtypes but we check all others the same way
        with pytest.raises(TypeError, match="E must have a real floating dtype"):
            fn(backend.asarray(np.ones((2, 6, 2), dtype=np.complex128)), v, 2)


@pytest.mark.parametrize("name,fn", OPERATORS)
def test_mixed_libraries_and_non_arrays(name, fn):
    E = np.ones((6, 2))
    v = np.ones(6)
    with pytest.raises(TypeError, match="v and E must come from the same array library; got torch and numpy"):
        fn(E, torch.ones(6, dtype=torch.float64), 2)
    with pytest.raises(TypeError, match="mask and v must come from the same array library; got torch and numpy"):
        fn(E, v, 2, mask=torch.ones(6, dtype=torch.bool))
    with pytest.raises(TypeError, match="E must be an array"):
        fn([[1.0, 2.0]] * 6, v, 2)
    with pytest.raises(TypeError, match="v must be an array"):
        fn(E, [1.0] * 6, 2)


def test_different_devices():
    import array_api_strict as xp

    E = xp.ones((6, 2))
    v = xp.asarray(np.ones(6), device=xp.Device("device1"))
    with pytest.raises(ValueError, match="v and E must be on the same device"):
        shtopk.successive_halving_topk(E, v, 2)
    mask = xp.asarray(np.ones(6, bool), device=xp.Device("device1"))
    with pytest.raises(ValueError, match="mask and v must be on the same device"):
        shtopk.successive_halving_topk(E, xp.ones(6), 2, mask=mask)


@pytest.mark.parametrize("fn", [shtopk.successive_halving_topk, shtopk.plan, vjp.successive_halving_topk])
def test_bad_settings(fn):
    E, v = np.ones((6, 2)), np.ones(6)
    args = (v, 2) if fn is shtopk.plan else (E, v, 2)
    for boost, err in [
        (0.0, ValueError),
        (-1.0, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("3", TypeError),
        (True, TypeError),
    ]:
        with pytest.raises(err, match="boost"):
            fn(*args, boost=boost)
    with pytest.raises(ValueError, match="boost must be finite and > 1"):
        fn(*args, boost=1.0, weighting="power")
    with pytest.raises(ValueError, match="weighting must be one of 'softmax', 'power'; got 'exp'"):
        fn(*args, weighting="exp")
    with pytest.raises(ValueError, match="order must be one of 'score', 'input'"):
        fn(*args, order="index")


def test_bad_baseline_and_hard_settings():
    E, v = np.ones((6, 2)), np.ones(6)
    for alpha in (0.0, -2.0, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            shtopk.iterative_softmax_topk(E, v, 2, alpha=alpha)
    with pytest.raises(ValueError, match="order"):
        shtopk.hard_topk(E, v, 2, order="sorted")


def test_bad_plan_for_apply(backend):
    E, v = inputs(backend)
    p = shtopk.plan(v, 2)
    with pytest.raises(TypeError, match="plan must be a Plan"):
        shtopk.apply(E, E)
    with pytest.raises(TypeError, match=r"plan\.indices must have an integer dtype"):
        shtopk.apply(shtopk.Plan(p.weights, p.weights, p.scores), E)
    with pytest.raises(ValueError, match="plan must hold"):
        shtopk.apply(shtopk.Plan(p.indices, p.weights[..., :1], p.scores), E)
    with pytest.raises(ValueError, match="E must have shape"):
        shtopk.apply(p, E[:1, ...])
    with pytest.raises(TypeError, match="E must have a real floating dtype"):
        shtopk.apply(p, p.indices)


def test_bad_nccs_arguments(backend):
    Y = backend.asarray(np.ones((3, 2)))
    with pytest.raises(ValueError, match="same d"):
        shtopk.nccs(Y, backend.asarray(np.ones((3, 4))))
    with pytest.raises(ValueError, match="shapes"):
        shtopk.nccs(backend.asarray(np.ones(3)), Y)
    with pytest.raises(TypeError, match="Y_pred and Y_true must come from the same array library"):
        shtopk.nccs(np.ones((3, 2)), torch.ones(3, 2))


def test_module_validates_its_settings():
    from shtopk.torch import SuccessiveHalvingTopK

    with pytest.raises(ValueError, match=r"k must be >= 1; got k = 0$"):  # no "n = 0 (the number of rows of E)"
        SuccessiveHalvingTopK(0)
    with pytest.raises(TypeError, match="k must be an int"):
        SuccessiveHalvingTopK(2.5)
    with pytest.raises(ValueError, match="weighting"):
        SuccessiveHalvingTopK(2, weighting="max")
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= n = 3"):
        SuccessiveHalvingTopK(4)(torch.ones(3, 2), torch.ones(3))


def test_inputs_are_never_modified(backend):
    rng = np.random.default_rng(1)
    E_np, v_np = rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9))
    mask_np = rng.random((2, 9)) < 0.7
    E, v, mask = backend.asarray(E_np), backend.asarray(v_np), backend.asarray(mask_np)
    shtopk.successive_halving_topk(E, v, 3, mask=mask, order="input")
    shtopk.hard_topk(E, v, 3, mask=mask)
    shtopk.iterative_softmax_topk(E, v, 3, mask=mask)
    p = shtopk.plan(v, 3, mask=mask)
    p_copy = [backend.to_numpy(x) for x in p]
    shtopk.apply(p, E)
    shtopk.nccs(E, E)
    for fn in (vjp.successive_halving_topk, vjp.hard_topk, vjp.iterative_softmax_topk):
        _out, pullback = fn(E, v, 3, mask=mask)
        d_values = backend.asarray(np.ones((2, 3, 3)))
        d_scores = backend.asarray(np.ones((2, 3)))
        pullback(d_values, d_scores)
        np.testing.assert_array_equal(backend.to_numpy(d_values), 1.0)
        np.testing.assert_array_equal(backend.to_numpy(d_scores), 1.0)
    np.testing.assert_array_equal(backend.to_numpy(E), E_np)
    np.testing.assert_array_equal(backend.to_numpy(v), v_np)
    np.testing.assert_array_equal(backend.to_numpy(mask), mask_np)
    for a, b in zip(p, p_copy, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a), b)


def test_read_only_numpy_arrays_are_accepted():
    rng = np.random.default_rng(2)
    E, v, mask = rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9)), rng.random((2, 9)) < 0.8
    for x in (E, v, mask):
        x.flags.writeable = False
    shtopk.successive_halving_topk(E, v, 3, mask=mask)
    shtopk.hard_topk(E, v, 3, mask=mask, order="input")
    shtopk.iterative_softmax_topk(E, v, 3, mask=mask)
    shtopk.apply(shtopk.plan(v, 3, mask=mask), E)
    out, pullback = vjp.successive_halving_topk(E, v, 3, mask=mask)
    d = np.ones_like(out.values)
    d.flags.writeable = False
    pullback(d)
    # non-contiguous views work too
    shtopk.successive_halving_topk(E[:, ::2], v[:, ::2], 2)
