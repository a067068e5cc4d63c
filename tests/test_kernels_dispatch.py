"""The kernels layer's dispatch point: which engine serves which arrays, and the override."""

from __future__ import annotations

import numpy as np
import pytest

import shtopk
from shtopk import _kernels


def test_numpy_arrays_get_a_numpy_engine(monkeypatch):
    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)
    assert _kernels.engine(np.zeros(3), np.zeros(2)) == ("numba" if _kernels.cpu.available() else "numpy")
    monkeypatch.setenv("SHTOPK_KERNELS", "numpy")
    assert _kernels.engine(np.zeros(3), np.zeros(2)) == "numpy"


def test_other_libraries_get_the_neutral_core(monkeypatch):
    import array_api_strict

    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)
    assert _kernels.engine(array_api_strict.zeros(3)) == "neutral"
    assert _kernels.engine(np.zeros(3), array_api_strict.zeros(3)) == "neutral"


def test_override_forces_the_neutral_core(monkeypatch):
    monkeypatch.setenv("SHTOPK_KERNELS", "neutral")
    assert _kernels.engine(np.zeros(3)) == "neutral"


def test_override_rejects_unknown_engines(monkeypatch):
    monkeypatch.setenv("SHTOPK_KERNELS", "fortran")
    with pytest.raises(ValueError, match="SHTOPK_KERNELS"):
        _kernels.engine(np.zeros(3))


def test_engines_agree_end_to_end(monkeypatch, rng):
    E, v = rng.normal(size=(3, 50, 7)), rng.normal(size=(3, 50))
    got = {}
    for choice in ("auto", "neutral"):
        monkeypatch.setenv("SHTOPK_KERNELS", choice)
        out, pullback = shtopk.vjp.successive_halving_topk(E, v, 4, boost=3.0)
        got[choice] = (out.values, *pullback(np.ones_like(out.values)))
    for a, b in zip(got["auto"], got["neutral"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
