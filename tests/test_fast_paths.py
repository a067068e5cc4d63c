"""Backend fast paths give exactly what the pure Array API versions give."""

from __future__ import annotations

import numpy as np
import pytest

from shtopk import _fast


def test_argsort_descending_matches_the_stable_sort(backend, rng):
    xp = backend.xp
    for dtype in ("float32", "float64"):
        for values in (
            rng.normal(size=(5, 300)),
            rng.integers(-3, 3, (5, 300)).astype(float),  # many ties
            np.where(rng.random((5, 300)) < 0.3, -np.inf, rng.normal(size=(5, 300))),
            np.array([[0.0, -0.0, 1.0, -0.0, 0.0, np.inf, -np.inf]]),  # signed zeros tie
        ):
            s = backend.asarray(values, dtype)
            want = backend.to_numpy(_fast.neutral_argsort_descending(xp, s))
            for nearly_sorted in (False, True):
                got = backend.to_numpy(_fast.argsort_descending(xp, s, nearly_sorted=nearly_sorted))
                np.testing.assert_array_equal(got, want)
            ref = np.argsort(-values.astype(dtype), axis=-1, kind="stable")
            np.testing.assert_array_equal(want, ref)


def test_unsort_and_inverse_permutation(backend, rng):
    xp = backend.xp
    perm_np = np.stack([rng.permutation(257) for _ in range(4)])
    perm = backend.asarray(perm_np)
    inv = backend.to_numpy(_fast.inverse_permutation(xp, perm))
    np.testing.assert_array_equal(np.take_along_axis(perm_np, inv, -1), np.broadcast_to(np.arange(257), (4, 257)))
    np.testing.assert_array_equal(inv, backend.to_numpy(_fast.neutral_inverse_permutation(xp, perm)))
    values_np = rng.normal(size=(4, 257))
    out = backend.to_numpy(_fast.unsort(xp, backend.asarray(values_np), perm))
    np.testing.assert_array_equal(np.take_along_axis(out, perm_np, -1), values_np)


def test_unsort_many_equals_unsort(backend, rng):
    xp = backend.xp
    perm = backend.asarray(np.stack([rng.permutation(33) for _ in range(3)]))
    values = [backend.asarray(rng.normal(size=(3, 33))), backend.asarray(rng.integers(0, 9, (3, 33)))]
    got = _fast.unsort_many(xp, values, perm)
    assert len(got) == 2
    for g, v in zip(got, values, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(_fast.unsort(xp, v, perm)))


@pytest.mark.parametrize("shape", [(3, 10), (0, 4), (2, 0)])
def test_take_along_last(backend, rng, shape):
    xp = backend.xp
    x_np = rng.normal(size=shape)
    idx_np = rng.integers(0, max(shape[1], 1), (shape[0], 7)) if shape[1] else np.zeros((shape[0], 0), int)
    got = _fast.take_along_last(xp, backend.asarray(x_np), backend.asarray(idx_np))
    np.testing.assert_array_equal(backend.to_numpy(got), np.take_along_axis(x_np, idx_np, -1))
    y_np = rng.integers(-5, 5, shape)
    both = _fast.take_along_last_many(xp, [backend.asarray(x_np), backend.asarray(y_np)], backend.asarray(idx_np))
    assert len(both) == 2
    np.testing.assert_array_equal(backend.to_numpy(both[0]), np.take_along_axis(x_np, idx_np, -1))
    np.testing.assert_array_equal(backend.to_numpy(both[1]), np.take_along_axis(y_np, idx_np, -1))
    wider = rng.normal(size=(shape[0], shape[1] + 3))  # another row length: its own flat index
    got = _fast.take_along_last_many(xp, [backend.asarray(x_np), backend.asarray(wider)], backend.asarray(idx_np))
    np.testing.assert_array_equal(backend.to_numpy(got[1]), np.take_along_axis(wider, idx_np, -1))


def test_all_finite_on_host(backend):
    xp = backend.xp
    finite = _fast.all_finite_on_host(xp, backend.asarray(np.array([[0.0, -1.0], [2.0, 3.0]])))
    answers = [
        _fast.all_finite_on_host(xp, backend.asarray(np.array([[0.0, bad]]))) for bad in (np.inf, -np.inf, np.nan)
    ]
    if backend.name in ("cupy", "torch-cuda", "array_api_strict", "jax"):  # jax: tracers have no values
        assert finite is None and answers == [None] * 3
    else:
        assert finite is True and answers == [False] * 3


def test_all_true_on_host(backend):
    xp = backend.xp
    answer = _fast.all_true_on_host(xp, backend.asarray(np.array([True, False])))
    if backend.name in ("cupy", "torch-cuda", "array_api_strict", "jax"):  # jax: tracers have no values
        assert answer is None  # never synchronizes with a GPU; unknown libraries are not assumed host-only
    else:
        assert answer is False
        assert _fast.all_true_on_host(xp, backend.asarray(np.array([True, True]))) is True
