"""Plans are checked against E, and every argument error is clear (issue 7), on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import shtopk
from shtopk import vjp


def scores(backend, shape, seed=0):
    return backend.asarray(np.random.default_rng(seed).normal(size=shape))


@pytest.mark.parametrize("k", [3, 9])  # NumPy: the dense path (k <= 8) and the gather (k >= 9)
def test_a_plan_rejects_E_with_another_n(backend, k):
    p = shtopk.plan(scores(backend, (2, 40)), k)
    assert p.built_for.n == 40 and p.built_for.batch_shape == (2,)
    with pytest.raises(ValueError, match=r"the plan was built for n = 40, batch shape \(2,\).* got E with n = 20"):
        shtopk.apply(p, scores(backend, (2, 20, 3)))
    with pytest.raises(ValueError, match="got E with n = 41"):
        shtopk.apply(p, scores(backend, (2, 41, 3)))
    assert shtopk.apply(p, scores(backend, (2, 40, 3))).values.shape == (2, k, 3)


def test_a_plan_rejects_E_with_another_batch_shape(backend):
    p = shtopk.plan(scores(backend, (2, 3, 10)), 2)
    with pytest.raises(ValueError, match="E must have shape"):
        shtopk.apply(p, scores(backend, (3, 2, 10, 4)))
    # a plan reshaped by hand keeps what it was built for: the mismatch is still caught
    p2 = shtopk.Plan(*(backend.xp.reshape(x, (6, *x.shape[2:])) for x in p), built_for=p.built_for)
    with pytest.raises(ValueError, match=r"batch shape \(2, 3\).* batch shape \(6,\)"):
        shtopk.apply(p2, scores(backend, (6, 10, 4)))


def test_a_plan_rejects_another_device_or_library(backend):
    p = shtopk.plan(scores(backend, (2, 10)), 2)
    other = "numpy" if backend.name != "numpy" else "torch"
    if other == "torch":
        torch = pytest.importorskip("torch")
        E = torch.ones(2, 10, 3)
    else:
        E = np.ones((2, 10, 3))
    with pytest.raises(TypeError, match="same array library"):
        shtopk.apply(p, E)
    # a plan whose arrays were swapped for another library's keeps its target
    E_own = scores(backend, (2, 10, 3))
    moved = shtopk.Plan(*p, built_for=shtopk.PlanTarget(10, (2,), other, p.built_for.device))
    with pytest.raises(ValueError, match=f"{other} on"):
        shtopk.apply(moved, E_own)


def test_hand_made_plans_with_indices_out_of_range_are_rejected_on_the_host(backend):
    xp = backend.xp
    E = scores(backend, (5, 3))
    w = backend.asarray(np.ones((1, 2)))
    s = backend.asarray(np.ones(1))
    for bad in ([[-1, 0]], [[0, 5]]):
        idx = xp.asarray(backend.asarray(np.array(bad)), dtype=xp.int64)
        if backend.name in ("numpy", "torch"):  # host arrays: checked (elsewhere trusted, as documented)
            with pytest.raises(ValueError, match=r"plan.indices must lie in \[0, n\) = \[0, 5\)"):
                shtopk.apply(shtopk.Plan(idx, w, s), E)
    good = xp.asarray(backend.asarray(np.array([[4, 0]])), dtype=xp.int64)
    got = backend.to_numpy(shtopk.apply(shtopk.Plan(good, w, s), E).values)
    E_np = backend.to_numpy(E)
    np.testing.assert_allclose(got, (E_np[4] + E_np[0])[None])


def test_k_must_be_a_true_int(backend):
    E, v = scores(backend, (6, 2)), scores(backend, (6,))
    torch = pytest.importorskip("torch")
    bad_types = [True, np.True_, torch.tensor(True), np.array(True), torch.tensor([2]), np.array([2]), 2.0]
    for k in bad_types:
        with pytest.raises(TypeError, match="k must be an int"):
            shtopk.successive_halving_topk(E, v, k)
    for k in (np.int64(2), torch.tensor(2), np.array(2)):
        assert shtopk.successive_halving_topk(E, v, k).values.shape == (2, 2)


def test_k_is_accepted_by_keyword_everywhere(backend):
    E, v = scores(backend, (6, 2)), scores(backend, (6,))
    for fn in (shtopk.successive_halving_topk, shtopk.hard_topk, shtopk.iterative_softmax_topk):
        assert fn(E=E, v=v, k=3).values.shape == (3, 2)
    for fn in (vjp.successive_halving_topk, vjp.hard_topk, vjp.iterative_softmax_topk):
        assert fn(E=E, v=v, k=3)[0].values.shape == (3, 2)
    p = shtopk.plan(v=v, k=3)
    assert shtopk.apply(plan=p, E=E).values.shape == (3, 2)


def test_masked_arrays_are_rejected_clearly():
    E, v = np.ones((4, 2)), np.arange(4.0)
    with pytest.raises(TypeError, match=r"v is a numpy.ma.MaskedArray.*mask="):
        shtopk.successive_halving_topk(E, np.ma.masked_array(v, mask=[0, 1, 0, 0]), 2)
    with pytest.raises(TypeError, match=r"E is a numpy\.ma\.MaskedArray"):
        shtopk.hard_topk(np.ma.masked_array(E), v, 2)
    with pytest.raises(TypeError, match=r"v is a numpy\.ma\.MaskedArray"):
        shtopk.plan(np.ma.masked_array(v), 2)
    with pytest.raises(TypeError, match=r"Y_true is a numpy\.ma\.MaskedArray"):
        shtopk.nccs(np.ma.masked_array(E), E)


def test_nccs_of_an_empty_set_is_rejected(backend):
    Y = scores(backend, (3, 2))
    empty = scores(backend, (0, 2))
    for a, b in ((empty, Y), (Y, empty), (empty, empty)):
        with pytest.raises(ValueError, match="at least one vector"):
            shtopk.nccs(a, b)


def test_the_module_names_k_not_n():
    torch = pytest.importorskip("torch")
    from shtopk.torch import SuccessiveHalvingTopK

    with pytest.raises(ValueError, match=r"k must be >= 1; got k = 0$"):
        SuccessiveHalvingTopK(0)
    with pytest.raises(TypeError, match="k must be an int"):
        SuccessiveHalvingTopK(torch.tensor(True))
