"""The NumPy kernels of the passes over E give what the pure Array API versions give."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

import shtopk._core.apply as apply_module
from shtopk._api import check_inputs, flatten_inputs, successive_halving_operator
from shtopk._core.apply import neutral_gather_sum, neutral_rows_backward
from shtopk._kernels import numpy_ops as _numpy_kernels

# The chunked kernels do the neutral path's operations in its order (bit for bit on the machines
# measured); the dense path for k <= DENSE_MAX_K sums each output row in another order, so the
# tolerance allows float rounding of a sum of up to n terms (with cancellation).
TOL = {
    "float16": dict(rtol=1e-3, atol=1e-3),
    "float32": dict(rtol=1e-5, atol=1e-6),
    "float64": dict(rtol=1e-12, atol=1e-14),
}

# (batch, n, d, k): padding (n not a multiple of k * 2**R), several rounds, n == k, an empty batch
SHAPES = [(3, 70, 5, 3), (2, 64, 8, 2), (2, 33, 300, 7), (4, 9, 3, 9), (0, 10, 4, 2)]


def selection(rng, B, n, k, masked):
    v = rng.normal(size=(B, n))
    mask = rng.random((B, n)) < 0.7 if masked else None
    if masked and B:
        mask[0, 2:] = False  # fewer valid items than k: surplus slots
    flat = flatten_inputs(check_inputs(np.zeros((B, n, 1)), v, k, mask))
    return successive_halving_operator(3.0, "softmax", "score").plan(flat, record=True)


@pytest.fixture(params=[1 << 20, 64, 8 * 5 * 3])
def chunk_bytes(request, monkeypatch):
    """The default chunks, one row at a time, and chunks that split a slot's members."""
    monkeypatch.setattr(apply_module, "CHUNK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_sum_equals_neutral(rng, chunk_bytes, dtype, masked, shape):
    B, n, d, k = shape
    sel = selection(rng, B, n, k, masked)
    E = rng.normal(size=(B, n, d)).astype(dtype)
    got = _numpy_kernels.gather_sum(xp, sel.indices, sel.weights, sel.scores, E)
    want = neutral_gather_sum(xp, sel.indices, sel.weights, sel.scores, E)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(float), want.astype(float), **TOL[dtype])
    surplus = sel.scores == -np.inf
    assert (got[surplus] == 0).all()


def test_gather_sum_equals_neutral_on_any_plan(rng, chunk_bytes):
    # a hand-made plan: int32 indices, repeated rows, NaN weights and -inf scores
    B, k, P, n, d = 3, 4, 5, 11, 6
    indices = rng.integers(0, n, (B, k, P)).astype(np.int32)
    weights = rng.normal(size=(B, k, P))
    weights[0, 1, 2] = np.nan
    scores = rng.normal(size=(B, k))
    scores[1, 3] = scores[0, 1] = -np.inf  # a surplus slot (zero even with a NaN weight)
    E = rng.normal(size=(B, n, d)).astype(np.float32)
    got = _numpy_kernels.gather_sum(xp, indices, weights, scores, E)
    want = neutral_gather_sum(xp, indices, weights, scores, E)
    np.testing.assert_allclose(got, want, **TOL["float32"])
    assert (got[0, 1] == 0).all()


@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_rows_backward_equals_neutral(rng, chunk_bytes, need, dtype, masked, shape):
    B, n, d, k = shape
    need_dE, need_dw = need
    sel = selection(rng, B, n, k, masked)
    E = rng.normal(size=(B, n, d)).astype(dtype)
    d_values = rng.normal(size=(B, k, d)).astype(dtype)
    args = (xp, d_values, sel.slot_of_row, sel.weight_of_row, E)
    dE, dw = _numpy_kernels.rows_backward(*args, need_dE=need_dE, need_dw=need_dw)
    dE_want, dw_want = neutral_rows_backward(*args, need_dE=need_dE, need_dw=need_dw)
    if need_dE:
        assert dE.dtype == dE_want.dtype
        np.testing.assert_array_equal(dE, dE_want)  # one product per element: exact
    else:
        assert dE is None
    if need_dw:
        assert dw.dtype == dw_want.dtype
        np.testing.assert_allclose(dw, dw_want, **TOL["float32" if dtype == "float16" else dtype])
    else:
        assert dw is None


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_dense_gather_sum_is_taken_when_it_reads_the_same_rows(rng, k):
    B, n, d = 3, 45, 6
    v = rng.normal(size=(B, n))
    E = rng.normal(size=(B, n, d))
    p = successive_halving_operator(3.0, "softmax", "input").plan(flatten_inputs(check_inputs(E, v, k)))
    if n > k:
        dense = _numpy_kernels._dense_gather_sum(p.indices, p.weights, p.scores, E)
        assert dense is not None
        np.testing.assert_allclose(dense, neutral_gather_sum(xp, p.indices, p.weights, p.scores, E), rtol=1e-12)
    np.testing.assert_allclose(
        _numpy_kernels.gather_sum(xp, p.indices, p.weights, p.scores, E),
        neutral_gather_sum(xp, p.indices, p.weights, p.scores, E),
        rtol=1e-12,
    )


def test_dense_gather_sum_never_reads_rows_outside_the_plan(rng):
    B, n, d, k = 2, 40, 3, 4
    v = rng.normal(size=(B, n))
    mask = np.ones((B, n), bool)
    mask[1, 7] = False
    E = rng.normal(size=(B, n, d))
    E[1, 7] = np.nan  # masked: never read, so it cannot reach the output
    p = successive_halving_operator(3.0, "softmax", "score").plan(flatten_inputs(check_inputs(E, v, k, mask)))
    assert _numpy_kernels._dense_gather_sum(p.indices, p.weights, p.scores, E) is None
    got = _numpy_kernels.gather_sum(xp, p.indices, p.weights, p.scores, E)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, neutral_gather_sum(xp, p.indices, p.weights, p.scores, E), rtol=1e-12)
