"""Successive halving against the loop reference, and every line of its semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import loop_hard, loop_successive_halving

import shtopk

SIZES = [(1, 1), (5, 5), (6, 1), (7, 3), (8, 2), (13, 2), (16, 4), (33, 4), (17, 16), (64, 8)]
BATCHES = [(), (3,), (2, 2)]
SETTINGS = [("softmax", 3.0), ("power", 20.0)]


def make_inputs(rng, batch, n, d=3, *, masked=False, ties=False):
    E = rng.uniform(-1, 1, batch + (n, d))
    v = rng.integers(0, 4, batch + (n,)) / 4.0 if ties else rng.uniform(-1, 1, batch + (n,))
    mask = rng.random(batch + (n,)) < 0.7 if masked else None
    return E, v, mask


def run(backend, E, v, k, mask=None, **kw):
    out = shtopk.successive_halving_topk(
        backend.asarray(E), backend.asarray(v), k, mask=None if mask is None else backend.asarray(mask), **kw
    )
    return backend.to_numpy(out.values), backend.to_numpy(out.scores)


@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("weighting,boost", SETTINGS)
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_loop_reference(backend, rng, n, k, weighting, boost, order, masked):
    for batch in BATCHES:
        E, v, mask = make_inputs(rng, batch, n, masked=masked)
        ref_values, ref_scores, _ = loop_successive_halving(
            E, v, k, boost=boost, weighting=weighting, mask=mask, order=order
        )
        values, scores = run(backend, E, v, k, mask, boost=boost, weighting=weighting, order=order)
        np.testing.assert_allclose(values, ref_values, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,k", [(8, 2), (13, 3), (32, 4)])
@pytest.mark.parametrize("order", ["score", "input"])
def test_ties_follow_the_stable_sort(backend, rng, n, k, order):
    E, v, _ = make_inputs(rng, (4,), n, ties=True)
    ref_values, ref_scores, _ = loop_successive_halving(E, v, k, boost=2.0, order=order)
    values, scores = run(backend, E, v, k, boost=2.0, order=order)
    np.testing.assert_allclose(values, ref_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,k", [(7, 3), (16, 4), (33, 2)])
@pytest.mark.parametrize("weighting,boost", SETTINGS)
def test_plan_members_match_reference(backend, rng, n, k, weighting, boost):
    E, v, mask = make_inputs(rng, (2,), n, masked=True)
    _, _, ref_members = loop_successive_halving(E, v, k, boost=boost, weighting=weighting, mask=mask)
    p = shtopk.plan(backend.asarray(v), k, boost=boost, weighting=weighting, mask=backend.asarray(mask))
    indices, weights = backend.to_numpy(p.indices), backend.to_numpy(p.weights)
    R = math.ceil(math.log2(n / k)) if n > k else 0
    assert indices.shape == (2, k, 2**R) and weights.shape == (2, k, 2**R)
    assert ((indices >= 0) & (indices < n)).all()
    for b in range(2):
        for j in range(k):
            got = {}
            for i, w in zip(indices[b, j], weights[b, j], strict=True):
                if w != 0:
                    got[int(i)] = got.get(int(i), 0.0) + w
            want = {i: w for i, w in ref_members[(b, j)].items() if w != 0}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-10)
            total = weights[b, j].sum()
            assert total == pytest.approx(1.0) if want else total == 0.0


def test_plan_then_apply_equals_the_operator(backend, rng):
    E, v, mask = make_inputs(rng, (2, 3), 21, d=5, masked=True)
    kw = dict(boost=4.0, order="input")
    p = shtopk.plan(backend.asarray(v), 4, mask=backend.asarray(mask), **kw)
    via_plan = shtopk.apply(p, backend.asarray(E))
    direct = shtopk.successive_halving_topk(backend.asarray(E), backend.asarray(v), 4, mask=backend.asarray(mask), **kw)
    np.testing.assert_array_equal(backend.to_numpy(via_plan.values), backend.to_numpy(direct.values))
    np.testing.assert_array_equal(backend.to_numpy(via_plan.scores), backend.to_numpy(direct.scores))
    # one plan serves any tensor with the same rows
    positions = np.broadcast_to(np.arange(21.0)[:, None], (2, 3, 21, 1))
    pooled = backend.to_numpy(shtopk.apply(p, backend.asarray(positions)).values)
    assert pooled.shape == (2, 3, 4, 1)


def test_rounds_and_padding_shapes(backend):
    for n, k, R in [(1, 1, 0), (4, 4, 0), (5, 4, 1), (8, 4, 1), (9, 4, 2), (1000, 3, 9), (1024, 2, 9)]:
        p = shtopk.plan(backend.asarray(np.linspace(0, 1, n)), k)
        assert tuple(p.indices.shape) == (k, 2**R)


def test_n_equals_k_keeps_every_valid_row(backend, rng):
    E, v, _ = make_inputs(rng, (), 6)
    values, scores = run(backend, E, v, 6)
    order = np.argsort(-v, kind="stable")
    np.testing.assert_array_equal(values, E[order])
    np.testing.assert_array_equal(scores, v[order])


def test_fewer_valid_items_than_k_gives_zero_rows_with_minus_inf(backend, rng):
    E, v, _ = make_inputs(rng, (2,), 9)
    mask = np.zeros((2, 9), bool)
    mask[0, [1, 5]] = True  # two valid items, k = 4
    v[1, :] = -np.inf  # no valid item at all
    for order in ("score", "input"):
        values, scores = run(backend, E, v, 4, mask, order=order)
        assert np.isfinite(scores[0, :2]).all() and (scores[0, 2:] == -np.inf).all()
        assert (values[0, 2:] == 0).all()
        assert (scores[1] == -np.inf).all() and (values[1] == 0).all()
        kept = sorted(np.flatnonzero(mask[0]))
        if order == "input":
            np.testing.assert_allclose(values[0, :2], E[0, kept], atol=1e-12)


def test_masking_equals_deleting(backend, rng):
    E, v, _ = make_inputs(rng, (), 20, d=4)
    mask = np.ones(20, bool)
    mask[[0, 3, 4, 11, 19]] = False
    for order in ("score", "input"):
        masked = run(backend, E, v, 5, mask, boost=2.0, order=order)
        deleted = run(backend, E[mask], v[mask], 5, boost=2.0, order=order)
        np.testing.assert_allclose(masked[0], deleted[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(masked[1], deleted[1], rtol=1e-12)


def test_masked_rows_are_never_read(backend, rng):
    E, v, _ = make_inputs(rng, (), 12)
    mask = np.ones(12, bool)
    mask[[2, 7]] = False
    clean = run(backend, E, v, 3, mask)
    E[~mask] = np.nan
    v[~mask] = np.nan  # a masked NaN score does not poison either
    dirty = run(backend, E, v, 3, mask)
    np.testing.assert_array_equal(clean[0], dirty[0])
    np.testing.assert_array_equal(clean[1], dirty[1])


def test_minus_inf_scores_act_like_a_mask(backend, rng):
    E, v, _ = make_inputs(rng, (), 12)
    mask = rng.random(12) < 0.6
    v_inf = np.where(mask, v, -np.inf)
    a = run(backend, E, v, 4, mask)
    b = run(backend, E, v_inf, 4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_nan_score_poisons_only_its_batch_row(backend, rng):
    E, v, _ = make_inputs(rng, (3,), 10)
    v[1, 4] = np.nan
    for fn in (
        lambda E_, v_: shtopk.successive_halving_topk(E_, v_, 3),
        lambda E_, v_: shtopk.hard_topk(E_, v_, 3),
        lambda E_, v_: shtopk.iterative_softmax_topk(E_, v_, 3),
    ):
        out = fn(backend.asarray(E), backend.asarray(v))
        values, scores = backend.to_numpy(out.values), backend.to_numpy(out.scores)
        assert np.isnan(values[1]).all() and np.isnan(scores[1]).all()
        assert np.isfinite(values[[0, 2]]).all() and np.isfinite(scores[[0, 2]]).all()


def test_order_input_sorts_by_the_largest_weight_member(backend, rng):
    _, v, _ = make_inputs(rng, (2,), 40)
    p = shtopk.plan(backend.asarray(v), 5, boost=3.0, order="input")
    indices, weights = backend.to_numpy(p.indices), backend.to_numpy(p.weights)
    top = np.take_along_axis(indices, weights.argmax(axis=-1)[..., None], -1)[..., 0]
    assert (np.diff(top, axis=-1) > 0).all()
    scores = backend.to_numpy(shtopk.plan(backend.asarray(v), 5, boost=3.0).scores)
    assert (np.diff(scores, axis=-1) <= 0).all()


def test_huge_boost_converges_to_hard_topk(backend, rng):
    E, v, _ = make_inputs(rng, (4,), 50)
    for weighting, boost in [("softmax", 1e9), ("power", 1e30)]:
        for order in ("score", "input"):
            got = run(backend, E, v, 6, boost=boost, weighting=weighting, order=order)
            want = loop_hard(E, v, 6, order=order)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("weighting,boost", [("softmax", 1e6), ("power", 1e6), ("power", 20.0), ("softmax", 1e-6)])
def test_no_overflow_at_extreme_boost(backend, rng, weighting, boost):
    E, _, _ = make_inputs(rng, (2,), 64)
    v = rng.uniform(-1e3, 1e3, (2, 64))
    v[0, :3] = v[0, 3]  # exact ties among large scores
    for dtype in ("float32", "float64"):
        out = shtopk.successive_halving_topk(
            backend.asarray(E, dtype), backend.asarray(v, dtype), 4, boost=boost, weighting=weighting
        )
        assert np.isfinite(backend.to_numpy(out.values)).all()
        assert np.isfinite(backend.to_numpy(out.scores)).all()


def test_plus_inf_scores_are_kept_without_nan(backend, rng):
    E, v, _ = make_inputs(rng, (), 10)
    v[[2, 6]] = np.inf
    values, scores = run(backend, E, v, 3, boost=5.0)
    assert (scores[:2] == np.inf).all() and np.isfinite(scores[2])
    assert not np.isnan(values).any()


@pytest.mark.parametrize(
    "e_dtype,v_dtype", [("float32", "float64"), ("float64", "float32"), ("float16", "float32"), ("float32", "float16")]
)
def test_output_dtypes_follow_inputs(backend, rng, e_dtype, v_dtype):
    E, v, _ = make_inputs(rng, (2,), 12)
    out = shtopk.successive_halving_topk(backend.asarray(E, e_dtype), backend.asarray(v, v_dtype), 3)
    assert out.values.dtype == backend.dtype(e_dtype)
    assert out.scores.dtype == backend.dtype(v_dtype)
    p = shtopk.plan(backend.asarray(v, v_dtype), 3)
    assert p.weights.dtype == backend.dtype("float64" if v_dtype == "float64" else "float32")
    # the reference sees the same rounded inputs; what is left is the compute and output precision
    E, v = E.astype(e_dtype), v.astype(v_dtype)
    ref_values, ref_scores, _ = loop_successive_halving(E, v, 3, boost=shtopk.DEFAULT_BOOST)
    tol = 3e-3 if "float16" in (e_dtype, v_dtype) else 1e-5
    np.testing.assert_allclose(backend.to_numpy(out.values), ref_values, atol=tol)
    np.testing.assert_allclose(backend.to_numpy(out.scores), ref_scores, atol=tol)


def test_results_stay_in_the_callers_library_and_device(backend, rng):
    E, v, mask = make_inputs(rng, (2,), 12, masked=True)
    import array_api_compat

    Ea = backend.asarray(E)
    for out in (
        shtopk.successive_halving_topk(Ea, backend.asarray(v), 3, mask=backend.asarray(mask)),
        shtopk.hard_topk(Ea, backend.asarray(v), 3),
        shtopk.iterative_softmax_topk(Ea, backend.asarray(v), 3),
    ):
        for x in out:
            assert type(x) is type(Ea)
            assert array_api_compat.device(x) == array_api_compat.device(Ea)


def test_empty_batch(backend):
    for fn in (shtopk.successive_halving_topk, shtopk.hard_topk, shtopk.iterative_softmax_topk):
        out = fn(backend.asarray(np.zeros((0, 3, 8, 2))), backend.asarray(np.zeros((0, 3, 8))), 3)
        assert tuple(out.values.shape) == (0, 3, 3, 2) and tuple(out.scores.shape) == (0, 3, 3)


@pytest.mark.parametrize("weighting,boost", SETTINGS)
def test_pair_weights_shortcut_for_finite_scores_changes_nothing(rng, weighting, boost):
    import array_api_compat.numpy as xp

    from shtopk._core.plan import pair_weights

    s = np.sort(rng.uniform(-3, 3, (4, 40)), axis=-1)[:, ::-1]
    s[0, :4] = s[0, 4]  # ties
    s_hi, s_lo = s[:, :20], s[:, 20:][:, ::-1]
    general = pair_weights(xp, s_hi, s_lo, boost, weighting)
    shortcut = pair_weights(xp, s_hi, s_lo, boost, weighting, all_finite=True)
    for got, want in zip(shortcut, general, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n,k", [(64, 8), (70, 3), (16, 16)])
@pytest.mark.parametrize("weighting,boost", SETTINGS)
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("masked", [False, True])
def test_host_shortcuts_give_the_device_plan(monkeypatch, rng, n, k, weighting, boost, order, masked):
    # NumPy takes the host-only shortcuts (finite rounds, all-valid selection, packed sort);
    # array_api_strict cannot (no host checks): both plans must be identical. Both on the
    # neutral core (the compiled engine has its own test, tests/test_kernels_cpu.py).
    import array_api_strict

    monkeypatch.setenv("SHTOPK_KERNELS", "numpy")

    from shtopk._api import check_inputs, flatten_inputs, successive_halving_operator

    _, v, mask = make_inputs(rng, (3,), n, masked=masked)
    v = v.astype(np.float32)
    op = successive_halving_operator(boost, weighting, order)
    plans = []
    for lib in (np, array_api_strict):
        m = None if mask is None else lib.asarray(mask)
        flat = flatten_inputs(check_inputs(lib.asarray(np.zeros((3, n, 1), np.float32)), lib.asarray(v), k, m))
        plans.append(op.plan(flat, record=True))
    host, device = plans
    for name in ("indices", "weights", "scores", "slot_of_row", "weight_of_row", "inv_perm"):
        np.testing.assert_array_equal(getattr(host, name), np.asarray(getattr(device, name)._array), err_msg=name)
