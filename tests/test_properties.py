"""Property tests (hypothesis) of successive halving, on NumPy in float64."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import loop_hard

import shtopk


@st.composite
def problems(draw, *, max_n=40, distinct=False, batch=False):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, n))
    d = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if batch else ()
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    E = rng.uniform(-1, 1, (*shape, n, d))
    if distinct:
        v = np.stack([rng.permutation(n) for _ in range(int(np.prod(shape)))]).reshape(*shape, n) / n
        v = v + rng.uniform(0, 0.1 / n, v.shape)
    else:
        v = rng.choice([-1.0, 0.0, 0.5, 1.0], size=(*shape, n)) if draw(st.booleans()) else rng.normal(size=(*shape, n))
    mask = rng.random((*shape, n)) < draw(st.floats(0.0, 1.0)) if draw(st.booleans()) else None
    settings = dict(
        boost=draw(st.sampled_from([0.5, 3.0, 10.0])),
        weighting="softmax",
        order=draw(st.sampled_from(["score", "input"])),
    )
    if draw(st.booleans()):
        settings.update(weighting="power", boost=draw(st.sampled_from([2.0, 20.0])))
    return E, v, k, mask, settings


@given(problems(batch=True))
def test_each_output_row_is_a_convex_combination_of_valid_rows(problem):
    E, v, k, mask, kw = problem
    p = shtopk.plan(v, k, mask=mask, **kw)
    out = shtopk.successive_halving_topk(E, v, k, mask=mask, **kw)
    valid = np.isfinite(v) if mask is None else mask & np.isfinite(v)
    member_valid = np.take_along_axis(valid, p.indices.reshape(*v.shape[:-1], -1), -1).reshape(p.indices.shape)
    assert (p.weights >= 0).all()
    assert (p.weights[~member_valid] == 0).all()
    sums = p.weights.sum(-1)
    has_member = np.isfinite(out.scores)
    np.testing.assert_allclose(sums[has_member], 1.0, rtol=1e-12)
    assert (sums[~has_member] == 0).all() and (out.values[~has_member] == 0).all()
    # the output is inside the box spanned by the rows it mixes
    gathered = np.take_along_axis(E[..., None, :, :], p.indices[..., None], -2)
    lo = np.where(member_valid[..., None], gathered, np.inf).min(-2)
    hi = np.where(member_valid[..., None], gathered, -np.inf).max(-2)
    ok = has_member[..., None]
    assert np.all(~ok | (out.values >= lo - 1e-12)) and np.all(~ok | (out.values <= hi + 1e-12))


@given(problems(batch=True))
def test_each_valid_row_lands_in_exactly_one_slot(problem):
    _E, v, k, mask, kw = problem
    kw["boost"] = min(kw["boost"], 3.0)  # no weight underflows to 0
    p = shtopk.plan(v, k, mask=mask, **kw)
    valid = np.isfinite(v) if mask is None else mask & np.isfinite(v)
    B = int(np.prod(v.shape[:-1]))
    indices = p.indices.reshape(B, -1)
    weights = p.weights.reshape(B, -1)
    valid = valid.reshape(B, -1)
    for b in range(B):
        landed = indices[b][weights[b] > 0]
        assert sorted(landed) == sorted(np.flatnonzero(valid[b]))


@given(problems(batch=True))
def test_batched_equals_row_by_row(problem):
    E, v, k, mask, kw = problem
    out = shtopk.successive_halving_topk(E, v, k, mask=mask, **kw)
    p = shtopk.plan(v, k, mask=mask, **kw)
    for idx in np.ndindex(*v.shape[:-1]):
        row_mask = None if mask is None else mask[idx]
        row = shtopk.successive_halving_topk(E[idx], v[idx], k, mask=row_mask, **kw)
        row_plan = shtopk.plan(v[idx], k, mask=row_mask, **kw)
        # the selection is the same to the bit ...
        for a, b in zip(p, row_plan, strict=True):
            np.testing.assert_array_equal(a[idx], b)
        np.testing.assert_array_equal(out.scores[idx], row.scores)
        # ... and the weighted sums to float rounding: NumPy applies a small-k plan that reads
        # every row of E as one dense product, a choice made per call (so per batch, or per row)
        np.testing.assert_allclose(out.values[idx], row.values, rtol=1e-12, atol=1e-15)


@given(problems(distinct=True), st.integers(0, 2**32 - 1))
def test_permuting_input_rows_does_not_change_the_output(problem, seed):
    E, v, k, mask, kw = problem
    kw["order"] = "score"
    perm = np.random.default_rng(seed).permutation(v.shape[-1])
    a = shtopk.successive_halving_topk(E, v, k, mask=mask, **kw)
    b = shtopk.successive_halving_topk(E[perm], v[perm], k, mask=None if mask is None else mask[perm], **kw)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)


@given(problems(distinct=True))
def test_huge_boost_equals_hard_topk(problem):
    E, v, k, mask, kw = problem
    boost = 1e12 if kw["weighting"] == "softmax" else 1e200
    for order in ("score", "input"):
        got = shtopk.successive_halving_topk(E, v, k, mask=mask, boost=boost, weighting=kw["weighting"], order=order)
        want = loop_hard(E, v, k, mask=mask, order=order)
        np.testing.assert_array_equal(got.values, want[0])
        np.testing.assert_array_equal(got.scores, want[1])
        hard = shtopk.hard_topk(E, v, k, mask=mask, order=order)
        np.testing.assert_array_equal(hard.values, want[0])


@given(problems(), st.data())
def test_masking_equals_deletion(problem, data):
    E, v, k, _, kw = problem
    n = v.shape[-1]
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assume(keep.sum() >= k)
    masked = shtopk.successive_halving_topk(E, v, k, mask=keep, **kw)
    deleted = shtopk.successive_halving_topk(E[keep], v[keep], k, **kw)
    np.testing.assert_allclose(masked.values, deleted.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(masked.scores, deleted.scores, rtol=1e-12)
