"""Hard top-k, the iterative baseline and nCCS against loop references."""

from __future__ import annotations

import numpy as np
import pytest
from reference import loop_hard, loop_iterative, loop_nccs, loop_successive_halving, per_round_successive_halving

import shtopk

SIZES = [(1, 1), (6, 6), (7, 3), (16, 2), (33, 5)]


def problem(rng, batch, n, d=3, masked=True, ties=False):
    E = rng.uniform(-1, 1, (*batch, n, d))
    v = rng.integers(0, 3, (*batch, n)) / 2.0 if ties else rng.uniform(0, 1, (*batch, n))
    mask = rng.random((*batch, n)) < 0.7 if masked else None
    return E, v, mask


def on(backend, E, v, mask):
    """(E, v) positional and mask as keyword, on the backend."""
    return (backend.asarray(E), backend.asarray(v)), {"mask": None if mask is None else backend.asarray(mask)}


@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("ties", [False, True])
def test_hard_topk_matches_loop_reference(backend, rng, n, k, order, ties):
    for batch in [(), (2,), (2, 3)]:
        E, v, mask = problem(rng, batch, n, ties=ties)
        args, kw = on(backend, E, v, mask)
        out = shtopk.hard_topk(*args, k, order=order, **kw)
        want = loop_hard(E, v, k, mask=mask, order=order)
        np.testing.assert_array_equal(backend.to_numpy(out.values), want[0])
        np.testing.assert_array_equal(backend.to_numpy(out.scores), want[1])


@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("alpha", [1.0, 30.0])
def test_iterative_matches_the_authors_algorithm(backend, rng, n, k, alpha):
    for batch in [(), (2,), (2, 3)]:
        E, v, mask = problem(rng, batch, n)
        args, kw = on(backend, E, v, mask)
        out = shtopk.iterative_softmax_topk(*args, k, alpha=alpha, **kw)
        want = loop_iterative(E, v, k, alpha=alpha, mask=mask)
        np.testing.assert_allclose(backend.to_numpy(out.values), want[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(out.scores), want[1], rtol=1e-10, atol=1e-12)


def test_iterative_in_chunks_equals_unchunked(monkeypatch, rng):
    import shtopk._core.baseline as baseline

    E, v, mask = problem(rng, (3,), 50)
    whole = shtopk.iterative_softmax_topk(E, v, 20, mask=mask)
    monkeypatch.setattr(baseline, "CHUNK_ELEMENTS", 1)  # one step at a time
    chunked = shtopk.iterative_softmax_topk(E, v, 20, mask=mask)
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-12)


def test_gather_in_chunks_equals_unchunked(monkeypatch, rng):
    import shtopk._core.apply as apply_module

    E, v, mask = problem(rng, (2,), 70, d=5)
    whole = shtopk.successive_halving_topk(E, v, 3, mask=mask)
    for chunk_bytes in (1, 8 * 5 * 3, 8 * 5 * 40):  # one row, partial slots, several slots at a time
        monkeypatch.setattr(apply_module, "CHUNK_BYTES", chunk_bytes)
        chunked = shtopk.successive_halving_topk(E, v, 3, mask=mask)
        np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-12, atol=1e-14)


def test_nccs_matches_loop_reference(backend, rng):
    for batch in [(), (4,), (2, 3)]:
        A = rng.normal(size=(*batch, 5, 3))
        B = rng.normal(size=(*batch, 7, 3))
        A[..., 1, :] = 0.0  # zero vectors: cosine 0, no NaN
        B[..., 2, :] = 0.0
        got = backend.to_numpy(shtopk.nccs(backend.asarray(A), backend.asarray(B)))
        assert got.shape == batch
        want = np.array([loop_nccs(A[i], B[i]) for i in np.ndindex(*batch)]).reshape(batch)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_nccs_is_one_for_the_exact_top_k_in_any_order(backend, rng):
    E, v, _ = problem(rng, (3,), 20, masked=False)
    exact = shtopk.hard_topk(backend.asarray(E), backend.asarray(v), 4)
    shuffled = shtopk.hard_topk(backend.asarray(E), backend.asarray(v), 4, order="input")
    np.testing.assert_allclose(backend.to_numpy(shtopk.nccs(exact.values, shuffled.values)), 1.0)


@pytest.mark.parametrize("n,k", [(16, 2), (13, 3), (64, 64), (100, 7)])
@pytest.mark.parametrize("weighting,boost", [("softmax", 4.0), ("power", 20.0)])
def test_per_round_reference_matches_loop_reference(rng, n, k, weighting, boost):
    E, v, _ = problem(rng, (3,), n, masked=False)
    values, scores = per_round_successive_halving(E, v, k, boost=boost, weighting=weighting)
    want = loop_successive_halving(E, v, k, boost=boost, weighting=weighting)
    np.testing.assert_allclose(values, want[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores, want[1], rtol=1e-10, atol=1e-12)
