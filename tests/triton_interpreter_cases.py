"""Every Triton kernel under Triton's interpreter, on tiny torch CPU tensors, against the neutral core.

Not collected by default (the interpreter must be switched on before Triton is
imported): ``tests/test_kernels_triton.py`` runs this file in a subprocess with
``TRITON_INTERPRET=1``; by hand::

    TRITON_INTERPRET=1 python -m pytest -p no:cacheprovider tests/triton_interpreter_cases.py

Indices must be equal, floats equal to rounding.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs under TRITON_INTERPRET=1, from tests/test_kernels_triton.py", allow_module_level=True)

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install '.[triton]')")
torch = pytest.importorskip("torch", reason="the interpreter tests run on torch CPU tensors")

import array_api_compat.torch as xp  # noqa: E402

import shtopk  # noqa: E402
from shtopk import _kernels  # noqa: E402
from shtopk._core.apply import neutral_gather_sum, neutral_rows_backward  # noqa: E402
from shtopk._core.flat import flatten  # noqa: E402
from shtopk._core.plan import Round, Selection  # noqa: E402
from shtopk._core.plan import tournament as neutral_tournament  # noqa: E402
from shtopk._core.plan_backward import neutral_tournament_backward  # noqa: E402
from shtopk._kernels import triton_ops  # noqa: E402

# The interpreter evaluates both sides of every tl.where with NumPy, so the discarded side's
# inf * 0 and 0 / 0 (for -inf scores, or gaps that overflow) warn; the kept results are checked.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")

TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


@pytest.fixture
def kernels(monkeypatch):
    """The (interpreted) kernels module; a test may lower its block limits."""
    from shtopk._kernels import triton_kernels

    monkeypatch.setattr(triton_kernels, "MAX_ROW_BLOCK", triton_kernels.MAX_ROW_BLOCK)
    monkeypatch.setattr(triton_kernels, "BACKWARD_BLOCK", triton_kernels.BACKWARD_BLOCK)
    return triton_kernels


def _scores(rng, batch, n, *, ties=False, specials=False, masked=False):
    v = rng.normal(size=(*batch, n)).astype(np.float32)
    if ties:
        v = np.round(v * 2)  # many exact ties
    mask = None
    flat_v = v.reshape(-1, n)
    if specials:  # -inf, +inf (also tied), a NaN that poisons row 1, a NaN that a mask hides in row 0
        flat_v[0, :3] = [-np.inf, np.inf, np.inf]
        flat_v[0, 4] = np.nan
        flat_v[1 % flat_v.shape[0], 5] = np.nan
        flat_v[-1, -2:] = 0.0
        flat_v[-1, -3] = -0.0
    if masked or specials:
        mask = rng.random(v.shape) < 0.75
        mask.reshape(-1, n)[0, 4] = False
        if specials:
            mask.reshape(-1, n)[1 % flat_v.shape[0], 5] = True
    return torch.from_numpy(v), None if mask is None else torch.from_numpy(mask)


def _assert_same_selection(want, got, *, record):
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.weights, want.weights, equal_nan=True, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.scores, want.scores, equal_nan=True, rtol=1e-5, atol=1e-6)
    if record:
        assert torch.equal(got.slot_of_row, want.slot_of_row)
        assert torch.equal(got.inv_perm, want.inv_perm)
        torch.testing.assert_close(got.weight_of_row, want.weight_of_row, equal_nan=True, rtol=1e-5, atol=1e-7)
        assert len(got.rounds) == len(want.rounds)


# (batch, n, k, weighting, order, scores): several batch dims, n not a power of two, k = n, k = 1,
# ties, masks, -inf/+inf/NaN/signed zeros
PLAN_CASES = [
    ((2,), 10, 3, "softmax", "score", {}),
    ((2, 2), 37, 5, "power", "input", {"masked": True}),
    ((2,), 37, 1, "softmax", "score", {}),
    # exact ties over one round: over many rounds, merged scores of different groups that are
    # equal to within an ulp (another exp) may be ordered differently by the two (1 in 200 seeds)
    ((2,), 37, 19, "softmax", "score", {"ties": True}),
    ((2,), 8, 8, "softmax", "input", {}),
    ((2,), 23, 23, "power", "score", {"masked": True}),
    ((3,), 19, 4, "softmax", "score", {"specials": True}),
    ((3,), 19, 4, "power", "input", {"specials": True, "ties": True}),
    ((1,), 50, 2, "softmax", "input", {"ties": True, "masked": True}),
    ((2,), 50, 20, "power", "input", {"masked": True}),  # per-round: k too large for one program
    ((2,), 1, 1, "softmax", "input", {}),
]


def _assert_power_gap_close(got, want, s_hi, boost):
    """The power weighting's gap ``t = b**s_hi - b**s_lo`` of two engines agrees to float32
    rounding of its terms: where they nearly cancel, an ulp of ``b**s_hi`` (each engine's own
    ``exp``) is a large part of a small ``t``, so the tolerance scales with ``b**s_hi``."""
    term = torch.exp(torch.clamp(s_hi.double() * math.log(boost), max=88.0))  # b**s_hi (>= b**s_lo)
    err = (got.double() - want.double()).abs()
    bound = 1e-5 * want.double().abs() + 1e-6 + 8 * torch.finfo(torch.float32).eps * term
    assert bool(torch.all((err <= bound) | (got == want))), f"t: {got} != {want}"


@pytest.mark.parametrize("one_program", [True, False], ids=["one-program", "per-round"])
@pytest.mark.parametrize(("batch", "n", "k", "weighting", "order", "kind"), PLAN_CASES)
def test_plan_equals_neutral(kernels, rng, one_program, batch, n, k, weighting, order, kind):
    if not one_program:
        kernels.MAX_ROW_BLOCK = 16  # longer rows start with per-round launches, then one program
        kernels.BACKWARD_BLOCK = 16  # and the backward walks its rounds in several blocks
    v, mask = _scores(rng, batch, n, **kind)
    flat = flatten(xp, "cpu", None, v, mask, k)
    boost = 2.5 if weighting == "power" else 3.0
    args = (xp, flat.s, flat.valid, flat.poison, k)
    opts = dict(boost=boost, weighting=weighting, order=order, record=True)
    want = neutral_tournament(*args, **opts)
    got = triton_ops.tournament(*args, **opts)
    _assert_same_selection(want, got, record=True)
    # every round has the neutral record's fields, shapes and dtypes (the torch custom op saves them
    # by the neutral layout), and the same values
    for rd_got, rd_want in zip(got.rounds, want.rounds, strict=True):
        for name in [f.name for f in dataclasses.fields(Round)]:
            a, b = getattr(rd_got, name), getattr(rd_want, name)
            assert a.shape == b.shape and a.dtype == b.dtype, name
            if name == "t" and weighting == "power":
                _assert_power_gap_close(a, b, rd_want.s_hi, boost)
            elif a.dtype == torch.float32:
                torch.testing.assert_close(
                    a, b, equal_nan=True, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
                )
            else:
                assert torch.equal(a, b), name
    # the recorded rounds drive the tournament backward to the same score cotangents
    B, m = flat.s.shape[0], k * got.indices.shape[-1]
    dw = torch.from_numpy(rng.normal(size=(B, m)).astype(np.float32))
    d_scores = torch.from_numpy(rng.normal(size=(B, k)).astype(np.float32))
    ds_want = neutral_tournament_backward(xp, want, dw, d_scores, boost, weighting)
    ds_got = neutral_tournament_backward(xp, got, dw, d_scores, boost, weighting)
    torch.testing.assert_close(ds_got, ds_want, equal_nan=True, rtol=1e-4, atol=1e-5)
    # and the Triton tournament backward gives them too, from its own record, from the same
    # rounds as a plain list (as the torch custom op unpacks a saved record) and from the neutral record
    plain = Selection(None, None, None, got.slot_of_row, got.weight_of_row, list(got.rounds), got.inv_perm)
    for sel in (got, plain, want):
        assert triton_ops.backward_reads(sel)
        ds_kernel = triton_ops.tournament_backward(xp, sel, dw, d_scores, boost, weighting)
        torch.testing.assert_close(ds_kernel, ds_want, equal_nan=True, rtol=1e-4, atol=1e-5)


def test_plan_without_record(kernels, rng):
    v, mask = _scores(rng, (2,), 29, masked=True)
    flat = flatten(xp, "cpu", None, v, mask, 3)
    args = (xp, flat.s, flat.valid, flat.poison, 3)
    want = neutral_tournament(*args, boost=3.0, weighting="softmax", order="score")
    got = triton_ops.tournament(*args, boost=3.0, weighting="softmax", order="score")
    _assert_same_selection(want, got, record=False)
    assert got.slot_of_row is None and got.rounds == []


def test_power_weighting_of_huge_scores(kernels):
    # boost ** s overflows float32: the gap's log form (as the neutral pair_gap) keeps the weights finite
    v = torch.tensor([[120.0, 119.99, 90.0, 89.0, 3.0, -2.0, 60.0, 100.0]])
    flat = flatten(xp, "cpu", None, v, None, 2)
    args = (xp, flat.s, flat.valid, flat.poison, 2)
    want = neutral_tournament(*args, boost=2.0, weighting="power", order="score", record=True)
    got = triton_ops.tournament(*args, boost=2.0, weighting="power", order="score", record=True)
    _assert_same_selection(want, got, record=True)
    assert torch.isfinite(got.weights).all()


@pytest.mark.parametrize("split", [False, True], ids=["one-chunk", "member-chunks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gather_sum_equals_neutral(kernels, monkeypatch, rng, dtype, split):
    if split:  # small tiles: every slot's members are split over several programs
        monkeypatch.setattr(triton_ops, "GATHER_TILE", 32)
        assert triton_ops._gather_shape(12, 5, 37)[2] > 1
    B, n, d, k, P = 3, 13, 37, 4, 5  # d spans several column blocks
    E = torch.from_numpy(rng.normal(size=(B, n, d))).to(dtype)
    indices = torch.from_numpy(rng.integers(0, n, size=(B, k, P)))
    weights = torch.from_numpy(rng.random((B, k, P)).astype(np.float32))
    scores = torch.from_numpy(rng.normal(size=(B, k)).astype(np.float32))
    scores[1, 2] = -math.inf  # a surplus slot: zero
    want = neutral_gather_sum(xp, indices, weights, scores, E)
    got = triton_ops.gather_sum(xp, indices.to(torch.int32), weights, scores, E.transpose(1, 2).contiguous().mT)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    assert (got[1, 2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("need_dE", "need_dw"), [(True, True), (True, False), (False, True)])
def test_rows_backward_equals_neutral(kernels, rng, dtype, need_dE, need_dw):
    B, n, d, k = 2, 11, 150, 3  # d spans several column blocks
    E = torch.from_numpy(rng.normal(size=(B, n, d))).to(dtype)
    d_values = torch.from_numpy(rng.normal(size=(B, k, d))).to(dtype)
    slot_of_row = torch.from_numpy(rng.integers(0, k, size=(B, n)))
    weight_of_row = torch.from_numpy(rng.random((B, n)).astype(np.float32))
    args = (xp, d_values, slot_of_row, weight_of_row, E)
    want = neutral_rows_backward(*args, need_dE=need_dE, need_dw=need_dw)
    got = triton_ops.rows_backward(*args, need_dE=need_dE, need_dw=need_dw)
    # dw is a dot product of d terms summed in float32 in another order than the reference:
    # near a zero sum its error is a few ulps of the terms' total magnitude, not of the sum
    terms = (torch.take_along_dim(d_values.double(), slot_of_row[..., None], dim=1) * E.double()).abs().sum(-1)
    dw_atol = torch.finfo(torch.float32).eps * terms
    for name, g, w in zip(("dE", "dw"), got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert g.dtype == w.dtype and g.shape == w.shape
        if name == "dE":
            torch.testing.assert_close(g.float(), w.float(), **TOL[dtype])
            continue
        tol = TOL[dtype]
        bound = tol["atol"] + dw_atol + tol["rtol"] * w.double().abs()
        excess = (g.double() - w.double()).abs() - bound
        assert (excess <= 0).all(), f"dw differs beyond float32 rounding of its terms: worst excess {excess.max()}"


@pytest.fixture
def triton_engine(kernels, monkeypatch):
    """The dispatch point serves torch CPU tensors with the (interpreted) Triton kernels."""
    monkeypatch.setattr(_kernels, "_on_gpu", lambda arrays: all(torch.is_tensor(x) for x in arrays))
    monkeypatch.setattr(_kernels.cpu, "serves", lambda *arrays: False)  # as for CUDA tensors: not the Numba engine's
    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)
    assert _kernels.engine(torch.zeros(2)) == "triton"


def _run(E, v, k, d_values, d_scores, **opts):
    E = E.detach().clone().requires_grad_(True)
    v = v.detach().clone().requires_grad_(True)
    out = shtopk.successive_halving_topk(E, v, k, **opts)
    torch.autograd.backward([out.values, out.scores], [d_values, d_scores])
    return out.values.detach(), out.scores.detach(), E.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("weighting", "order"), [("softmax", "score"), ("power", "input")])
def test_operator_forward_and_backward_through_the_triton_engine(
    triton_engine, monkeypatch, rng, dtype, weighting, order
):
    B, n, d, k = 2, 21, 6, 4
    E = torch.from_numpy(rng.normal(size=(B, n, d))).to(dtype)
    v = torch.from_numpy(rng.normal(size=(B, n))).to(dtype)
    v[1, 3] = math.nan  # row 1 poisoned
    mask = torch.from_numpy(rng.random((B, n)) < 0.8)
    d_values = torch.from_numpy(rng.normal(size=(B, k, d))).to(dtype)
    d_scores = torch.from_numpy(rng.normal(size=(B, k))).to(dtype)
    opts = dict(boost=2.0, weighting=weighting, order=order, mask=mask)
    got = _run(E, v, k, d_values, d_scores, **opts)
    monkeypatch.setenv("SHTOPK_KERNELS", "neutral")
    want = _run(E, v, k, d_values, d_scores, **opts)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), equal_nan=True, **TOL[dtype])


def test_float64_runs_the_neutral_core(triton_engine, monkeypatch, rng):
    def fail(*args, **kwargs):
        raise AssertionError("a Triton kernel ran on float64")

    for name in ("gather_sum", "rows_backward", "tournament"):
        monkeypatch.setattr(triton_ops, name, fail)
    E = torch.from_numpy(rng.normal(size=(2, 9, 3)))
    v = torch.from_numpy(rng.normal(size=(2, 9))).requires_grad_(True)
    out = shtopk.successive_halving_topk(E, v, 2)
    out.values.sum().backward()
    assert torch.isfinite(v.grad).all()


@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.lists(
                st.sampled_from([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0, -math.inf, math.inf, math.nan]), min_size=n, max_size=n
            ),
            min_size=1,
            max_size=2,
        )
    ),
    k_fraction=st.floats(0.0, 1.0),
    weighting=st.sampled_from(["softmax", "power"]),
    order=st.sampled_from(["score", "input"]),
)
def test_plan_equals_neutral_on_tied_and_special_scores(rows, k_fraction, weighting, order):
    v = torch.tensor(rows, dtype=torch.float32)
    n = v.shape[-1]
    k = max(1, min(n, round(k_fraction * n)))
    flat = flatten(xp, "cpu", None, v, None, k)
    args = (xp, flat.s, flat.valid, flat.poison, k)
    opts = dict(boost=2.0, weighting=weighting, order=order, record=True)
    want = neutral_tournament(*args, **opts)
    got = triton_ops.tournament(*args, **opts)
    _assert_same_selection(want, got, record=True)


@pytest.mark.parametrize(
    ("weighting", "boost", "row"),
    [
        # gaps that overflow (scores at both ends of the range), +inf against finite and tied, a tie at boost 1e38
        ("softmax", 1e38, [3e38, -3e38, 1e30, math.inf, math.inf, 2.0, 2.0, -1e38, 0.5, -math.inf, 1.0]),
        ("softmax", 3.0, [3e38, -3e38, 1e30, math.inf, 5.0, 2.0, 2.0, -1e38, 0.5, -math.inf, 1.0]),
        # boost ** s beyond float32 (and +inf scores): cotangents formed in log space, saturated
        ("power", 2.0, [200.0, 199.5, 150.0, 130.0, math.inf, 3.0, -2.0, 128.0, 128.0, -math.inf, 1e30]),
        ("power", 1e30, [3.0, 2.99, 2.0, 1.0, 0.5, 0.5, -1.0, -3e38, 3e38, -math.inf, 7.0]),
    ],
)
def test_backward_of_extreme_scores_equals_neutral(kernels, rng, weighting, boost, row):
    v = torch.tensor([row, row[::-1]], dtype=torch.float32)
    k = 2
    flat = flatten(xp, "cpu", None, v, None, k)
    args = (xp, flat.s, flat.valid, flat.poison, k)
    opts = dict(boost=boost, weighting=weighting, order="score", record=True)
    want = neutral_tournament(*args, **opts)
    got = triton_ops.tournament(*args, **opts)
    _assert_same_selection(want, got, record=True)
    for rd_got, rd_want in zip(got.rounds, want.rounds, strict=True):
        assert torch.equal(rd_got.gap, rd_want.gap) and torch.isfinite(rd_got.gap).all()
    B, m = v.shape[0], k * got.indices.shape[-1]
    for scale in (1.0, 1e30):  # large cotangents: the products saturate, never inf
        dw = torch.from_numpy(rng.normal(size=(B, m)).astype(np.float32)) * scale
        dw[:, v.shape[-1] :] = 0.0  # padding (as selection_backward pads)
        d_scores = torch.from_numpy(rng.normal(size=(B, k)).astype(np.float32)) * scale
        ds_want = neutral_tournament_backward(xp, want, dw, d_scores, boost, weighting)
        ds_got = triton_ops.tournament_backward(xp, got, dw, d_scores, boost, weighting)
        assert torch.isfinite(ds_want).all()
        torch.testing.assert_close(ds_got, ds_want, rtol=1e-4, atol=1e-5)
