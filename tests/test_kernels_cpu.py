"""The compiled CPU engine (Numba) gives what the neutral core gives, on NumPy arrays and torch CPU tensors.

Selections (indices, sort orders, row layout) must be identical; values and
gradients equal to float rounding. Every test here compares the engine with
the neutral core on fresh random inputs; the last ones check that the library
works without Numba.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import array_api_compat.numpy as xp_np
import numpy as np
import pytest

import shtopk
from shtopk import _kernels
from shtopk._api import check_inputs, flatten_inputs
from shtopk._core.apply import neutral_gather_sum, neutral_rows_backward
from shtopk._core.plan import n_rounds
from shtopk._core.plan import tournament as neutral_tournament
from shtopk._core.plan_backward import neutral_tournament_backward
from shtopk._kernels import cpu

pytest.importorskip("numba", reason="numba is not installed (pip install shtopk[cpu]): the CPU engine is unavailable")
torch = pytest.importorskip("torch")

TOL = {
    "float16": dict(rtol=2e-3, atol=2e-3),
    "bfloat16": dict(rtol=2e-2, atol=2e-2),
    "float32": dict(rtol=2e-5, atol=2e-5),
    "float64": dict(rtol=1e-11, atol=1e-12),
}

# (batch dims, n, k, d): n not a power of two (padding), several rounds, k = n, k = n - 1,
# d = 1, an empty batch, n = 1
CASES = [
    ((), 70, 3, 5),
    ((3,), 64, 2, 8),
    ((2, 3), 33, 7, 4),
    ((4,), 9, 9, 3),
    ((2,), 10, 9, 4),
    ((3,), 37, 5, 1),
    ((0,), 10, 2, 3),
    ((2,), 1, 1, 2),
    ((2,), 600, 5, 3),  # rows long enough for the first round's radix sort
    ((2,), 640, 5, 3),  # n = k 2**R, no padding: the fused forward's gather without a sort of the pairs
]


def inputs(rng, batch, n, d, *, mask, special):
    """Scores with (optionally) a mask, -inf, +inf and a NaN that poisons one batch row."""
    E = rng.normal(size=(*batch, n, d))
    v = rng.normal(size=(*batch, n))
    keep = rng.random((*batch, n)) < 0.7 if mask else None
    if special and v.size and n > 3:
        flat_v = v.reshape(-1, n)
        flat_v[0, 1] = -np.inf
        flat_v[-1, 2] = np.inf
        flat_v[-1, 3] = np.nan  # poisons the last batch row unless masked out
        if keep is not None:
            E.reshape(-1, n, d)[~keep.reshape(-1, n)] = np.nan  # masked rows are never read
    return E, v, keep


def run(monkeypatch, choice, fn, *args, **kw):
    monkeypatch.setenv("SHTOPK_KERNELS", choice)
    return fn(*args, **kw)


def numpy_of(x):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return x.double().numpy() if x.dtype.is_floating_point else x.numpy()
    return np.asarray(x)


def assert_same(got, want, tol):
    got, want = numpy_of(got), numpy_of(want)
    assert got.shape == want.shape
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("weighting", ["softmax", "power"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_tournament_equals_neutral(rng, case, special, mask, weighting, order):
    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=mask, special=special)
    flat = flatten_inputs(check_inputs(E, v, k, keep))
    kw = dict(boost=3.0 if weighting == "softmax" else 20.0, weighting=weighting, order=order, record=True)
    got = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw)
    want = neutral_tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw)
    tol = TOL["float64"]
    for name in ("indices", "slot_of_row", "inv_perm"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("weights", "scores", "weight_of_row"):
        assert getattr(got, name).dtype == getattr(want, name).dtype
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), err_msg=name, **tol)
    # without a record: the same selection, no rounds (kept in the kernel's scratch)
    plain = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **{**kw, "record": False})
    assert plain.rounds == [] and plain.slot_of_row is None
    for name in ("indices", "weights", "scores"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(got, name), err_msg=name)
    assert len(got.rounds) == len(want.rounds)
    for r, (a, b) in enumerate(zip(got.rounds, want.rounds, strict=True)):
        np.testing.assert_array_equal(a.order, b.order, err_msg=f"round {r} order")
        np.testing.assert_array_equal(a.lo_valid, b.lo_valid, err_msg=f"round {r} lo_valid")
        for name in ("sorted_weights", "w_hi", "w_lo", "s_hi", "s_lo", "gap", "t"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), err_msg=f"round {r} {name}", **tol)
    # the backward of the tournament, on the recorded rounds
    B, m = flat.B, k * got.indices.shape[-1]
    dw = rng.normal(size=(B, m))
    ds = rng.normal(size=(B, k))
    bw = dict(boost=kw["boost"], weighting=weighting)
    np.testing.assert_allclose(
        cpu.tournament_backward(xp_np, got, dw, ds, **bw), neutral_tournament_backward(xp_np, want, dw, ds, **bw), **tol
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("weighting", ["softmax", "power"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_tournament_gather_is_tournament_then_gather(monkeypatch, rng, case, special, mask, weighting, order, dtype):
    """The fused forward (no selection written) gives exactly the tournament's scores and its
    row-order gather-sum's values, NaN of poisoned rows included; and the neutral ones to
    float rounding. (One core, so that every batch size takes the row order.)"""
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=mask, special=special)
    flat = flatten_inputs(check_inputs(E.astype(dtype), v.astype(dtype), k, keep))
    kw = dict(boost=3.0 if weighting == "softmax" else 20.0, weighting=weighting, order=order)
    fused = cpu.tournament_gather(xp_np, flat.s, flat.valid, flat.poison, flat.E, k, **kw)
    if flat.B * k == 0:
        assert fused is None
        return
    values, scores, none = fused
    assert none is None
    sel = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw, record=True)
    np.testing.assert_array_equal(scores, sel.scores)
    np.testing.assert_array_equal(values, cpu.gather_sum(xp_np, sel.indices, sel.weights, sel.scores, flat.E))
    want = neutral_tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw)
    if dtype == "float32":
        # float32 plans differ from the neutral core's by more than the values' tolerance: merged
        # scores 1 ulp apart (the kernels' exp and NumPy's round differently) can swap two items
        # in a later round, and with them the pairs, and the power weighting's gaps (20**s) carry
        # relative errors of order s * ln 20 ulp. The reference is then the neutral gather-sum of
        # the kernels' own plan; the plans are compared with the neutral core's in float64.
        want = sel
    reference = neutral_gather_sum(xp_np, want.indices, want.weights, want.scores, flat.E)
    np.testing.assert_allclose(values, reference, **TOL[dtype])
    assert values.dtype == flat.E.dtype and scores.dtype == flat.s.dtype
    # with a record (a forward before a backward): the same values and scores, and exactly the
    # record of the tournament alone, without the plan layout
    args = (xp_np, flat.s, flat.valid, flat.poison, flat.E, k)
    values_r, scores_r, rec = cpu.tournament_gather(*args, **kw, record=True)
    np.testing.assert_array_equal(values_r, values)
    np.testing.assert_array_equal(scores_r, scores)
    assert rec.indices is None and rec.weights is None
    for name in ("scores", "slot_of_row", "weight_of_row", "inv_perm"):
        np.testing.assert_array_equal(getattr(rec, name), getattr(sel, name), err_msg=name)
    assert len(rec.rounds) == len(sel.rounds)
    for a, b in zip(rec.rounds, sel.rounds, strict=True):
        for f in dataclasses.fields(a):
            np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] > c[2]])
def test_recorded_columns_are_the_rounds_side_by_side(rng, case):
    """A recorded selection of the compiled tournament hands over the arrays it wrote the rounds
    into (``columns``): every round's field is a view of its columns; the backward kernels and
    the torch custom op's saved tensors take those arrays as they are (no copy), and the
    neutral core's selection (no columns) gives equal ones by concatenation."""
    from shtopk._torch_ops import pack_selection

    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=True, special=True)
    flat = flatten_inputs(check_inputs(E, v, k, keep))
    kw = dict(boost=3.0, weighting="softmax", order="score", record=True)
    sel = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw)
    names = [f.name for f in dataclasses.fields(sel.rounds[0])]
    m = k * sel.indices.shape[-1]
    assert len(sel.columns) == len(names)
    for i, name in enumerate(names):
        for (full, half), rd in zip(cpu.round_columns(m, k), sel.rounds, strict=True):
            part = getattr(rd, name)
            np.testing.assert_array_equal(part, sel.columns[i][:, full if i < 2 else half])
            assert part.size == 0 or np.shares_memory(part, sel.columns[i])
    fields = cpu.round_fields(sel, flat.B, flat.s.dtype)
    assert all(a is b for a, b in zip(fields, sel.columns, strict=True))
    packed = pack_selection(sel)
    assert all(np.shares_memory(t.numpy(), c) for t, c in zip(packed, sel.columns, strict=False) if c.size)
    assert neutral_tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw).columns is None
    copies = [type(rd)(*(np.array(getattr(rd, name)) for name in names)) for rd in sel.rounds]
    concatenated = cpu.round_fields(dataclasses.replace(sel, rounds=copies, columns=None), flat.B, flat.s.dtype)
    for a, b in zip(fields, concatenated, strict=True):
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weighting", ["softmax", "power"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_score_cotangents_are_the_steps_around_the_tournament_backward(
    monkeypatch, rng, case, special, mask, weighting, dtype
):
    """The fused score cotangents (one kernel call) are exactly the steps they replace: the
    weight cotangents where valid and padded, d_scores in plan order, the tournament's
    backward kernel, then 0 where invalid and NaN on poisoned rows (E's dtype float32 or
    float64 for the weight cotangents, the scores' for the rest)."""
    from shtopk import _backward

    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=mask, special=special)
    flat = flatten_inputs(check_inputs(E.astype(dtype), v.astype(dtype), k, keep))
    tourney = dict(boost=3.0 if weighting == "softmax" else 20.0, weighting=weighting)
    sel = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **tourney, order="score", record=True)
    for dw_dtype in ("float32", "float64"):
        dw = rng.normal(size=(flat.B, n)).astype(dw_dtype)
        d_scores = rng.normal(size=(flat.B, k)).astype(flat.s.dtype)
        fused = _backward._score_cotangents(flat, sel, dw, d_scores, tourney)
        with monkeypatch.context() as m:
            m.setattr(_backward, "score_cotangents", lambda *a, **kw: None)
            steps = _backward._score_cotangents(flat, sel, dw, d_scores, tourney)
        assert fused.dtype == steps.dtype == flat.s.dtype and fused.shape == (flat.B, n)
        np.testing.assert_array_equal(fused, steps)
        if special and flat.B:
            assert np.isnan(fused).any() == bool(flat.poison.any())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("weighting", ["softmax", "power"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("case", [*CASES, ((2,), 64, 2, 1024)])  # (last: a forward in two calls)
def test_replayed_backward_is_the_recorded_one(monkeypatch, rng, case, special, mask, weighting, order, dtype):
    """A forward that may keep no record (``replay=True``) keeps none but the first round's
    order, gives the values and scores of a recorded one, and its backward, which replays
    the tournament from the scores (and that order), gives exactly the recorded backward's
    dE and dv, with and without d_scores and
    for either gradient alone (NaN of poisoned rows included). (One core, so that every
    batch size replays.)"""
    from shtopk._operators import SuccessiveHalving

    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=mask, special=special)
    flat = flatten_inputs(check_inputs(E.astype(dtype), v.astype(dtype), k, keep))
    op = SuccessiveHalving(3.0 if weighting == "softmax" else 20.0, weighting, order)
    values_r, scores_r, recorded = op.forward(flat, record=True)
    values, scores, sel = op.forward(flat, record=True, replay=True)
    np.testing.assert_array_equal(values, values_r)
    np.testing.assert_array_equal(scores, scores_r)
    if flat.B * k == 0:
        return
    assert recorded.replay is None
    assert sel.rounds == [] and sel.slot_of_row is None and sel.columns is None
    # what it keeps for the replay: the first round's order of every row
    m = k << n_rounds(n, k)
    assert sel.replay.dtype == np.int32 and sel.replay.shape == (flat.B, m)
    if recorded.rounds:  # (k = n: no rounds, nothing to replay)
        np.testing.assert_array_equal(sel.replay, recorded.rounds[0].order)
    dV = rng.normal(size=(flat.B, k, d)).astype(dtype)
    dS = rng.normal(size=(flat.B, k)).astype(dtype)
    for d_scores in (dS, None):
        for need_dE, need_dv in ((True, True), (True, False), (False, True)):
            need = dict(need_dE=need_dE, need_dv=need_dv)
            got = op.backward(flat, sel, dV, d_scores, **need)
            want = op.backward(flat, recorded, dV, d_scores, **need)
            for g, w in zip(got, want, strict=True):
                assert (g is None) == (w is None)
                if w is not None:
                    assert g.dtype == w.dtype
                    np.testing.assert_array_equal(g, w)


def test_replay_only_with_batch_rows_for_every_thread(monkeypatch, rng):
    """The replayed backward is parallel over batch rows: with fewer batch rows than cores, or
    for E of another dtype than the scores, the forward keeps its record."""
    from shtopk._operators import SuccessiveHalving

    op = SuccessiveHalving(1.0, "softmax", "score")
    E, v, _ = inputs(rng, (3,), 40, 4, mask=False, special=False)
    flat = flatten_inputs(check_inputs(E, v, 3))
    monkeypatch.setattr(cpu, "_cores", lambda: 3)
    assert op.forward(flat, record=True, replay=True)[2].replay is not None
    monkeypatch.setattr(cpu, "_cores", lambda: 4)
    assert op.forward(flat, record=True, replay=True)[2].rounds
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    flat = flatten_inputs(check_inputs(E.astype(np.float32), v, 3))
    assert op.forward(flat, record=True, replay=True)[2].rounds


@pytest.mark.parametrize("library", ["numpy", "torch", "torch.func", "torch.compile"])
def test_forward_backward_keeps_no_record(monkeypatch, rng, library):
    """A forward+backward (vjp; torch autograd, eager, through ``torch.func`` or compiled, the
    last two through the custom op) holds no record of the tournament (some 60 bytes per
    item, 0.5x the bytes of float32 E at d = 32): its peak extra memory (tracemalloc:
    NumPy's allocations, which the torch CPU path makes too) is dE and a few numbers per
    item."""
    import tracemalloc

    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    B, n, d, k = 4, 2048, 32, 4
    E = rng.normal(size=(B, n, d)).astype(np.float32)
    v = rng.normal(size=(B, n)).astype(np.float32)
    dV = rng.normal(size=(B, k, d)).astype(np.float32)

    def values(E_, v_):
        return shtopk.successive_halving_topk(E_, v_, k).values

    if library == "torch.compile":
        torch._dynamo.reset()
        compiled = torch.compile(lambda E_, v_, dV_: (values(E_, v_) * dV_).sum(), backend="aot_eager", fullgraph=True)

    def forward_backward():
        if library == "numpy":
            _, pullback = shtopk.vjp.successive_halving_topk(E, v, k)
            return pullback(dV)
        if library == "torch.func":
            return torch.func.vjp(values, torch.from_numpy(E), torch.from_numpy(v))[1](torch.from_numpy(dV))
        Et, vt = torch.from_numpy(E).requires_grad_(), torch.from_numpy(v).requires_grad_()
        if library == "torch.compile":
            compiled(Et, vt, torch.from_numpy(dV)).backward()
        else:
            values(Et, vt).backward(torch.from_numpy(dV))
        return Et.grad, vt.grad

    forward_backward()  # the threads' scratch, kept for later calls
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        grads = forward_backward()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert grads[0].shape == E.shape
    assert peak < 1.2 * E.nbytes, peak / E.nbytes


@pytest.mark.parametrize("mask", [False, True])
def test_tournament_gather_with_inf_in_E(monkeypatch, rng, mask):
    """Slots with invalid members (padding, masked items) add their zero-weight members'
    ``0 * E[first]`` in the fused forward too: NaN where that row holds inf, exactly as the
    two calls (and the neutral gather-sum) give."""
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    E, v = rng.normal(size=(4, 37, 3)), rng.normal(size=(4, 37))
    E[:2, :, 0] = np.inf
    E[1, ::3, 1] = np.nan
    keep = rng.random((4, 37)) < 0.7 if mask else None
    flat = flatten_inputs(check_inputs(E, v, 5, keep))
    kw = dict(boost=1.5, weighting="softmax", order="score")
    values, scores, _ = cpu.tournament_gather(xp_np, flat.s, flat.valid, flat.poison, flat.E, 5, **kw)
    sel = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, 5, **kw)
    two_calls = cpu.gather_sum(xp_np, sel.indices, sel.weights, sel.scores, flat.E)
    np.testing.assert_array_equal(scores, sel.scores)
    np.testing.assert_array_equal(values, two_calls)
    assert np.isnan(values[0, :, 0]).any()  # a slot with an invalid member
    if not mask:  # 3 padding items: a slot without any
        assert np.isinf(values[0, :, 0]).any()
    reference = neutral_gather_sum(xp_np, sel.indices, sel.weights, sel.scores, flat.E)
    np.testing.assert_allclose(values, reference, **TOL["float64"])  # (NaN where NaN, inf where inf)


@pytest.mark.parametrize("k", [40, 39, 21])
def test_tournament_gather_writes_slots_of_one_valid_member(monkeypatch, rng, k):
    """A slot with one valid member (every slot at k = n; with padding, most at k = n - 1) is
    written from its row rather than added to zeros: its value is the sum of its members
    in their order, bit for bit, as the neutral gather-sum's of one member (``-0.0`` keeps
    its sign; a repeated member with weight 0 makes an inf NaN); the other slots are the
    neutral sums to rounding, and slots of masked items are zero."""
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    E, v = rng.normal(size=(3, 40, 4)), rng.normal(size=(3, 40))
    E[:, ::2, 1] = -0.0
    E[:, 5:8, 2] = np.inf
    kw = dict(boost=1.5, weighting="softmax", order="score")
    for keep in (None, rng.random((3, 40)) < 0.7):
        flat = flatten_inputs(check_inputs(E, v, k, keep))
        values, scores, _ = cpu.tournament_gather(xp_np, flat.s, flat.valid, flat.poison, flat.E, k, **kw)
        sel = cpu.tournament(xp_np, flat.s, flat.valid, flat.poison, k, **kw)
        np.testing.assert_array_equal(scores, sel.scores)
        np.testing.assert_allclose(values, neutral_gather_sum(xp_np, sel.indices, sel.weights, sel.scores, flat.E))
        members = np.take_along_axis(flat.E[:, None], sel.indices[..., None], axis=2)  # (B, k, P, d)
        terms = sel.weights[..., None] * members
        in_order = terms[:, :, 0]
        for q in range(1, terms.shape[2]):
            in_order = in_order + terms[:, :, q]
        valid = np.take_along_axis(flat.valid[:, None], sel.indices, axis=2) & (sel.weights != 0)
        single = (valid.sum(-1) == 1) & (sel.scores > -np.inf)
        assert single.any()
        np.testing.assert_array_equal(values[single], in_order[single])
        np.testing.assert_array_equal(np.signbit(values[single]), np.signbit(in_order[single]))
        assert np.signbit(values[single]).any()
        assert not (values[sel.scores == -np.inf]).any()
        if k == 39 and keep is None:
            assert np.isnan(values[single]).any()  # the infs, times 0 in a repeat


def test_tournament_gather_declines(monkeypatch, rng):
    """Half-precision E, E of another dtype than the scores, and batches too small for every core
    to take a batch row, unless E's rows are short (at most ``FUSED_ROW_BYTES``) and no record
    is kept: the two calls instead (None), and the public forward is the same."""
    E, v = rng.normal(size=(3, 40, 32)), rng.normal(size=(3, 40))
    kw = dict(boost=1.5, weighting="softmax", order="score")
    for E_, v_ in ((E.astype(np.float16), v.astype(np.float32)), (E.astype(np.float32), v)):
        flat = flatten_inputs(check_inputs(E_, v_, 4, None))
        assert cpu.tournament_gather(xp_np, flat.s, flat.valid, flat.poison, flat.E, 4, **kw) is None
    monkeypatch.setattr(cpu, "_cores", lambda: 8)
    for d, record, fused in ((32, False, False), (16, False, True), (16, True, False)):
        flat = flatten_inputs(check_inputs(E[..., :d], v, 4, None))  # rows of 256 and 128 bytes
        got = cpu.tournament_gather(xp_np, flat.s, flat.valid, flat.poison, flat.E, 4, record=record, **kw)
        assert (got is not None) == fused, (d, record)
    two_calls = shtopk.successive_halving_topk(E, v, 4)
    monkeypatch.setattr(cpu, "_cores", lambda: 1)
    fused = shtopk.successive_halving_topk(E, v, 4)
    np.testing.assert_allclose(fused.values, two_calls.values, **TOL["float64"])
    np.testing.assert_array_equal(fused.scores, two_calls.scores)


@pytest.mark.parametrize(
    "row", ["mixed", "constant", "two values", "normal", "padded", "all -inf", "probabilities", "1 pass", "2 passes"]
)
@pytest.mark.parametrize(("dtype", "passes"), [("float32", 3), ("float32", 6), ("float64", 6)])
@pytest.mark.parametrize("M", [256, 257, 1000, 4096])
def test_radix_order_is_the_stable_descending_sort(rng, M, dtype, passes, row):
    """The first round's radix sort == NumPy's stable argsort of -x: ties (signed zeros
    included) keep the lower position first; +-inf, subnormals and huge values in place.
    float32 keys packed with their position (3 passes) or beside it (6, rows >= 2**32).
    A constant row moves in no pass; two values differ in one digit only (the passes
    whose digit is the same for the whole row are skipped, the last moving one writes
    the order); trailing -inf (padding, some -inf before it too) stay in place unsorted.
    float32 digits span the bits in which the keys differ: scores in (0, 1) share sign and
    high exponent bits; 1 + j eps for j < 2**10 (2**20) differ in at most 10 (20) bits, one
    pass (two of 10 bits)."""
    cpu.available()
    kernels = cpu._kernels
    fin = np.finfo(dtype)
    pool = np.array([0.0, -0.0, np.inf, -np.inf, fin.max, -fin.max, fin.smallest_subnormal, -fin.tiny, 1.0, -1.0])
    if row == "mixed":
        x = np.where(rng.random(M) < 0.3, rng.choice(pool, M), rng.integers(-4, 4, M) * rng.choice([1.0, 0.5, 1e-3], M))
    elif row == "constant":
        x = np.full(M, rng.normal())
    elif row == "two values":
        x = rng.choice([1.0, 1.0 + 4 * np.finfo(dtype).eps], M)  # the lowest digit differs
    elif row == "normal":
        x = rng.normal(size=M)
    elif row == "probabilities":
        x = rng.uniform(0.0, 1.0, M)
    elif row in ("1 pass", "2 passes"):
        j = rng.integers(0, 2 ** (10 if row == "1 pass" else 20), M)
        x = (1 + j * np.finfo(np.float32).eps).astype(np.float32)  # (exact in float64 too)
    elif row == "padded":
        head = np.where(rng.random(M // 2) < 0.1, -np.inf, rng.normal(size=M // 2))
        x = np.concatenate([head, np.full(M - M // 2, -np.inf)])
    else:
        x = np.full(M, -np.inf)
    x = x.astype(dtype)
    order = np.empty(M, np.int64)
    scratch = np.empty(M, np.uint64), np.empty(M, np.uint64), np.empty(M, np.int64)
    kernels._radix_order(x, order, *scratch, np.empty((passes, 2048), np.int32))
    np.testing.assert_array_equal(order, np.argsort(-x, kind="stable"))


@pytest.mark.parametrize("budget", [0, 10, 10**9])
@pytest.mark.parametrize("shape", ["random", "nearly sorted", "tied"])
def test_insertion_sort_and_its_fallback_are_stable(rng, shape, budget):
    """The later rounds' insertion sort (within its move budget), or the merge sort it hands a
    partly sorted row to when the budget runs out, gives NumPy's stable descending order."""
    assert cpu.available()
    kernels = cpu._kernels
    M = 700
    x = {
        "random": rng.normal(size=M),
        "nearly sorted": -np.arange(M) + rng.normal(scale=2.0, size=M),
        "tied": rng.integers(-3, 3, M).astype(float),
    }[shape]
    keys, idx = x.copy(), np.arange(M)
    done = kernels._insertion_sort_desc(keys, idx, budget)
    assert done or budget < 10**9
    if not done:
        kernels._sort_desc(keys, idx, np.empty(M), np.empty(M, np.int64), np.empty(M + 1, np.int64))
    np.testing.assert_array_equal(idx, np.argsort(-x, kind="stable"))
    np.testing.assert_array_equal(keys, x[idx])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [16, 300, 1500, 2999, 3000])
def test_tournament_long_rows_with_ties(rng, k, dtype):
    """Rows of 3000 scores with many ties (k >= 256: the slots' final order by insertion after
    rounds, by radix where insertion gives up and for k = n; k = 300 and n - 1 pad the rows
    with -inf, which the first round's radix sort leaves in place): the first round's order
    is the neutral core's, and in float64 so is the whole plan.
    (In float32 the merged scores of later rounds differ from NumPy's in the last bit --
    another exp -- which may swap near-ties from round 2 on.)"""
    v = (rng.integers(-20, 20, size=(3, 3000)) / 4).astype(dtype)
    v[0, :10] = -0.0
    valid, poison = np.ones(v.shape, bool), np.zeros(3, bool)
    kw = dict(boost=2.0, weighting="softmax", order="score", record=True)
    got = cpu.tournament(xp_np, v, valid, poison, k, **kw)
    want = neutral_tournament(xp_np, v, valid, poison, k, **kw)
    assert len(got.rounds) == len(want.rounds)
    if got.rounds:
        np.testing.assert_array_equal(got.rounds[0].order, want.rounds[0].order)
        np.testing.assert_allclose(got.rounds[0].sorted_weights, want.rounds[0].sorted_weights, **TOL[dtype])
    if dtype == "float64" or not got.rounds:
        for name in ("indices", "slot_of_row", "inv_perm"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        for a, b in zip(got.rounds, want.rounds, strict=True):
            np.testing.assert_array_equal(a.order, b.order)
        np.testing.assert_allclose(got.weights, want.weights, **TOL[dtype])
    np.testing.assert_allclose(got.scores, want.scores, **TOL[dtype])


def test_exp_of_the_pairs_is_within_one_ulp():
    """The tournament's vectorizing float32 ``exp(-t)``: within 1 ulp of the correctly rounded
    value for t in [0, 110] (subnormal results, 0 and t = inf included); float64 calls ``exp``."""
    from numba import njit

    from shtopk._kernels.numba_kernels import _exp_neg

    @njit
    def exp_neg(t, out):
        for i in range(t.shape[0]):
            out[i] = _exp_neg(t[i])

    special = [0.0, 1e-30, 1e-8, 0.5, 87.3, 88.7, 103.2, 103.9, 104.0, 1e30, np.inf]
    t = np.concatenate([np.linspace(0, 110, 400_001), special]).astype(np.float32)
    got = np.empty_like(t)
    exp_neg(t, got)
    exact = np.exp(-t.astype(np.float64)).astype(np.float32)
    assert np.abs(got.view(np.int32).astype(np.int64) - exact.view(np.int32)).max() <= 1
    assert got[-1] == 0 and got[-2] == 0 and got[-len(special)] == 1
    nan = np.array([np.nan], np.float32)
    exp_neg(nan, nan)
    assert np.isnan(nan[0])
    t64 = t.astype(np.float64)
    got64 = np.empty_like(t64)
    exp_neg(t64, got64)
    np.testing.assert_array_max_ulp(got64, np.exp(-t64), maxulp=1)  # the C library's exp


@pytest.mark.parametrize("spread", ["uniform", "narrow"])
def test_tournament_merged_scores_far_out_of_order(rng, spread):
    """Uniform(0, 1) or narrowly spread scores at boost 1: later rounds' merged scores are far
    out of order (over one ascent in six), and sorted by radix rather than by insertion.
    The plan is the neutral core's (float64: every order, exactly)."""
    n, k = 4096, 4
    v = rng.uniform(0, 1, (2, n)) if spread == "uniform" else 0.1 * rng.normal(size=(2, n))
    valid, poison = np.ones(v.shape, bool), np.zeros(2, bool)
    kw = dict(boost=1.0, weighting="softmax", order="score", record=True)
    got = cpu.tournament(xp_np, v, valid, poison, k, **kw)
    want = neutral_tournament(xp_np, v, valid, poison, k, **kw)
    merged = [rd.w_hi * rd.s_hi + rd.w_lo * rd.s_lo for rd in want.rounds]
    assert any(x.shape[-1] >= 256 and (np.diff(x, axis=-1) > 0).mean() > 1 / 6 for x in merged)
    for r, (a, b) in enumerate(zip(got.rounds, want.rounds, strict=True)):
        np.testing.assert_array_equal(a.order, b.order, err_msg=f"round {r}")
    for name in ("indices", "slot_of_row", "inv_perm"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.weights, want.weights, **TOL["float64"])
    np.testing.assert_allclose(got.scores, want.scores, **TOL["float64"])


def test_tournament_merged_scores_with_few_ascents_far_out_of_order():
    """Merged scores with one ascent but a block that must move 256 places (the insertion sort
    gives up after 4 moves per item): sorted by radix then, and the plan is the neutral core's."""
    i = np.arange(512.0)
    top = 5000 - 3 * i  # the first round's higher members, and merged (about halfway: boost 1e-9) ...
    merged = np.where(i < 256, 1000 - i, 1756 - i)  # ... into two descending blocks, the second higher
    bottom = 2 * merged - top  # the lower members, ascending with i
    v = np.stack([np.concatenate([top, bottom]), np.concatenate([bottom, top])[::-1]])
    valid, poison = np.ones(v.shape, bool), np.zeros(2, bool)
    kw = dict(boost=1e-9, weighting="softmax", order="score", record=True)
    got = cpu.tournament(xp_np, v, valid, poison, 256, **kw)
    want = neutral_tournament(xp_np, v, valid, poison, 256, **kw)
    rd = want.rounds[0]
    m = (rd.w_hi * rd.s_hi + rd.w_lo * rd.s_lo)[0]
    assert (np.diff(m) > 0).sum() == 1  # few ascents: the insertion sort is tried first
    assert (m[:, None] < m[None, :])[np.triu_indices(512, 1)].sum() > 4 * 512  # more moves than it may make
    for r, (a, b) in enumerate(zip(got.rounds, want.rounds, strict=True)):
        np.testing.assert_array_equal(a.order, b.order, err_msg=f"round {r}")
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.weights, want.weights, **TOL["float64"])


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("order", ["score", "input"])
@pytest.mark.parametrize("weighting", ["softmax", "power"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_operator_and_gradients_equal_neutral(monkeypatch, rng, case, special, mask, weighting, order, library):
    """End to end: values, scores and both gradients, numba engine vs the neutral core."""
    batch, n, k, d = case
    E, v, keep = inputs(rng, batch, n, d, mask=mask, special=special)
    kw = dict(boost=3.0 if weighting == "softmax" else 20.0, weighting=weighting, order=order, mask=keep)
    dV = rng.normal(size=(*batch, k, d))
    dS = rng.normal(size=(*batch, k))
    if library == "torch":
        E, v, dV, dS = (torch.from_numpy(x) for x in (E, v, dV, dS))
        if keep is not None:
            kw["mask"] = torch.from_numpy(keep)
    results = {}
    for choice in ("numba", "neutral"):
        out, pullback = run(monkeypatch, choice, shtopk.vjp.successive_halving_topk, E, v, k, **kw)
        results[choice] = (out.values, out.scores, *run(monkeypatch, choice, pullback, dV, dS))
    for got, want in zip(results["numba"], results["neutral"], strict=True):
        assert type(got) is type(want) and got.dtype == want.dtype
        assert_same(got, want, TOL["float64"])


@pytest.mark.parametrize("by_row", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_passes_over_E_in_every_dtype(rng, monkeypatch, library, dtype, by_row):
    """The gather-sum and the rows backward, half precision included (widened in the kernel);
    the gather-sum reading E in row order and in plan order, whatever the shape and cores."""
    if library == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    monkeypatch.setattr(cpu, "_by_row", lambda *args: by_row)
    monkeypatch.setattr(cpu, "HALF_BY_ROW_BYTES", 0)
    kernel = "gather_sum" + ("_by_row" if by_row else "") + ("_half" if dtype in ("float16", "bfloat16") else "")
    calls = []
    monkeypatch.setattr(cpu, "_run", lambda fn, *args: (calls.append(fn), fn(*args)))
    B, n, d, k = 3, 45, 19, 4
    E64, v = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    keep = rng.random((B, n)) < 0.8
    flat = flatten_inputs(check_inputs(E64, v, k, keep))
    sel = neutral_tournament(
        xp_np, flat.s, flat.valid, flat.poison, k, boost=3.0, weighting="softmax", order="score", record=True
    )
    dV = rng.normal(size=(B, k, d))
    if library == "torch":
        import array_api_compat.torch as xp

        def conv(x):
            t = torch.from_numpy(np.ascontiguousarray(x))
            return t.to(getattr(torch, dtype)) if t.dtype == torch.float64 and x is not sel.weights else t

        E, d_values = conv(E64), conv(dV)
        idx, w, sc, slots, wrow = (
            torch.from_numpy(x) for x in (sel.indices, sel.weights, sel.scores, sel.slot_of_row, sel.weight_of_row)
        )
    else:
        xp = xp_np
        E, d_values = E64.astype(dtype), dV.astype(dtype)
        idx, w, sc, slots, wrow = sel.indices, sel.weights, sel.scores, sel.slot_of_row, sel.weight_of_row
    calls.clear()
    got = cpu.gather_sum(xp, idx, w, sc, E)
    assert calls == [getattr(cpu._kernels, kernel)]
    want = neutral_gather_sum(xp, idx, w, sc, E)
    assert got.dtype == want.dtype and type(got) is type(want)
    assert_same(got, want, TOL[dtype])
    dE, dw = cpu.rows_backward(xp, d_values, slots, wrow, E, need_dE=True, need_dw=True)
    dE_want, dw_want = neutral_rows_backward(xp, d_values, slots, wrow, E, need_dE=True, need_dw=True)
    assert dE.dtype == dE_want.dtype and dw.dtype == dw_want.dtype
    assert_same(dE, dE_want, TOL[dtype])  # one product per element, rounded the same way
    assert_same(dw, dw_want, TOL["float32" if dtype in ("float16", "bfloat16") else dtype])
    for need in ((True, False), (False, True)):
        a, b = cpu.rows_backward(xp, d_values, slots, wrow, E, need_dE=need[0], need_dw=need[1])
        assert (a is None) != need[0] and (b is None) != need[1]


def test_bfloat16_rounds_to_nearest_even_as_torch(rng):
    """The kernel's float32 -> bfloat16 rounding is torch's, ties and NaN included."""
    x = torch.from_numpy(rng.normal(size=(1, 1, 4000)).astype(np.float32))
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8])  # two ties
    E = x.to(torch.bfloat16)
    ones = torch.ones((1, 1, 1))
    # a single member of weight 1: the sum is the float32 value, rounded to bfloat16 by the kernel
    got = cpu.gather_sum(
        None, torch.zeros((1, 1, 1), dtype=torch.int64), ones, torch.zeros((1, 1)), x.to(torch.bfloat16)
    )
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.float().numpy()[0, 0], E.float().numpy()[0, 0])  # NaN matches NaN
    dE, _ = cpu.rows_backward(
        None,
        x.reshape(1, 1, -1),
        torch.zeros((1, 1), dtype=torch.int64),
        torch.ones((1, 1)),
        E[:, :1],
        need_dE=True,
        need_dw=False,
    )
    np.testing.assert_array_equal(dE.float().numpy()[0, 0], E.float().numpy()[0, 0])


@pytest.mark.parametrize("scale", [1.0, 0.9, 1.0 / 3.0])
def test_tournament_of_scores_near_the_largest_float(rng, scale):
    """Finite rows take the pair loop without fix-ups for infinities; merged scores of
    values near float32's largest may round past it: the rounds after that must take the
    full loop (no inf - inf = NaN), and the result is the neutral core's."""
    big = np.finfo(np.float32).max * scale
    v = np.where(rng.random((3, 600)) < 0.5, big, -big).astype(np.float32)
    v[1] = big
    v[2, ::3] = np.nextafter(np.float32(big), np.float32(0))
    valid, poison = np.ones(v.shape, bool), np.zeros(3, bool)
    kw = dict(boost=1.5, weighting="softmax", order="score", record=True)
    got = cpu.tournament(xp_np, v, valid, poison, 5, **kw)
    want = neutral_tournament(xp_np, v, valid, poison, 5, **kw)
    assert not np.isnan(got.scores).any() and not np.isnan(got.weights).any()
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.weights, want.weights, **TOL["float32"])
    np.testing.assert_allclose(got.scores, want.scores, **TOL["float32"])
    for a, b in zip(got.rounds, want.rounds, strict=True):
        for name in ("sorted_weights", "s_hi", "s_lo", "gap", "t"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), err_msg=name, **TOL["float32"])


def test_scratch_is_carved_and_kept_when_small():
    """Kernel scratch: disjoint, aligned, C-contiguous arrays of the asked shapes and dtypes
    out of one block; a small block serves the thread's next calls (the same views for
    each of a few layouts), a large one does not."""
    layout = [((2, 3, 5), np.float32), ((2, 0), np.int64), ((3, 7), np.uint64), ((4,), np.int32)]
    arrays = cpu.scratch(layout)
    for a, (shape, dtype) in zip(arrays, layout, strict=True):
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0 or a.size == 0
    for i, a in enumerate(arrays):
        a[...] = i + 1
    for i, a in enumerate(arrays):
        assert (a == i + 1).all()  # no overlap
    again = cpu.scratch(layout)
    assert again[0].ctypes.data == arrays[0].ctypes.data  # kept for the next call
    assert all(a is b for a, b in zip(again, arrays, strict=True))  # the same layout: the same views
    other = cpu.scratch(layout[:2])
    assert other[0].ctypes.data == arrays[0].ctypes.data and len(other) == 2
    assert all(a is b for a, b in zip(cpu.scratch(layout), arrays, strict=True))  # alternating layouts
    assert all(a is b for a, b in zip(cpu.scratch(layout[:2]), other, strict=True))
    larger = cpu.scratch([((2, 3, 50), np.float32)])[0]  # a larger kept block: views of the old one dropped
    assert cpu.scratch(layout)[0].ctypes.data == larger.ctypes.data
    huge = cpu.scratch([((cpu.SCRATCH_KEPT_BYTES + 8,), np.uint8)])[0]
    assert cpu.scratch(layout)[0].ctypes.data == larger.ctypes.data  # the large one was not kept
    assert huge.base is not larger.base


def test_gather_sum_on_a_hand_made_plan(rng):
    """int32 indices, repeated rows, NaN weights, -inf scores; out-of-range indices are declined."""
    B, k, P, n, d = 3, 4, 5, 11, 6
    indices = rng.integers(0, n, (B, k, P)).astype(np.int32)
    weights = rng.normal(size=(B, k, P))
    weights[0, 1, 2] = np.nan
    scores = rng.normal(size=(B, k))
    scores[1, 3] = scores[0, 1] = -np.inf
    E = rng.normal(size=(B, n, d)).astype(np.float32)
    got = cpu.gather_sum(xp_np, indices, weights, scores, E)
    np.testing.assert_allclose(got, neutral_gather_sum(xp_np, indices, weights, scores, E), **TOL["float32"])
    assert (got[0, 1] == 0).all()
    indices[2, 0, 0] = n
    assert cpu.gather_sum(xp_np, indices, weights, scores, E) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 11, 6), (1, 4, 5, 11, 6), (3, 2, 20, 40, 1024), (4, 9, 1, 9, 3)])
def test_gather_sum_row_and_plan_order_agree(rng, shape, dtype):
    """Both loop orders of the gather-sum (by E's rows, by the plan's slots) give the neutral
    sums: repeated rows, NaN weights, skipped slots; whichever :func:`cpu._by_row` picks."""
    B, k, P, n, d = shape
    assert cpu.available()
    kernels = (cpu._kernels.gather_sum, cpu._kernels.gather_sum_by_row)
    idx = rng.integers(0, n, (B * k, P))
    w = rng.normal(size=(B * k, P)).astype(dtype)
    w[0, -1] = np.nan
    skip = rng.random(B * k) < 0.3
    E = rng.normal(size=(B, n, d)).astype(dtype)
    scores = np.where(skip, -np.inf, 0.0).reshape(B, k)
    want = neutral_gather_sum(xp_np, idx.reshape(B, k, P), w.reshape(B, k, P), scores, E).reshape(B * k, d)
    for kernel in kernels:
        out = np.full((B * k, d), 7.0, dtype)
        kernel(idx, w, skip, E, out, 2)
        np.testing.assert_allclose(out, want, **TOL[dtype], err_msg=kernel.__name__)
    np.testing.assert_allclose(
        cpu.gather_sum(xp_np, idx.reshape(B, k, P), w.reshape(B, k, P), scores, E).reshape(B * k, d), want, **TOL[dtype]
    )


def test_torch_autograd_matches_neutral(monkeypatch, rng):
    """Tensors that require grad: the autograd Function runs the same kernels."""
    E0, v0 = rng.normal(size=(2, 3, 50, 8)).astype(np.float32), rng.normal(size=(2, 3, 50)).astype(np.float32)
    grads = {}
    for choice in ("numba", "neutral"):
        monkeypatch.setenv("SHTOPK_KERNELS", choice)
        E = torch.from_numpy(E0).requires_grad_()
        v = torch.from_numpy(v0).requires_grad_()
        out = shtopk.successive_halving_topk(E, v, 5)
        (out.values.square().sum() + out.scores.sum()).backward()
        grads[choice] = (out.values, E.grad, v.grad)
    for got, want in zip(grads["numba"], grads["neutral"], strict=True):
        assert_same(got, want, TOL["float32"])


def test_engine_choice(monkeypatch):
    monkeypatch.setenv("SHTOPK_KERNELS", "auto")
    assert _kernels.engine(np.zeros(3)) == "numba"
    assert _kernels.engine(torch.zeros(3), torch.zeros(2, dtype=torch.bool)) == "numba"
    assert _kernels.engine(torch.zeros(3, dtype=torch.complex64)) == "neutral"
    assert _kernels.engine(np.zeros(3), torch.zeros(3)) == "neutral"
    monkeypatch.setenv("SHTOPK_KERNELS", "numpy")
    assert _kernels.engine(np.zeros(3)) == "numpy"
    assert _kernels.engine(torch.zeros(3)) == "neutral"
    monkeypatch.setenv("SHTOPK_KERNELS", "numba")
    assert _kernels.engine(np.zeros(3)) == "numba"


def test_threads_per_call():
    MiB = cpu.WORK_PER_THREAD
    assert cpu.threads_for(4, 0, 100 * MiB, 10_000) == 4  # large work, idle machine: every core
    assert cpu.threads_for(4, 1, 100 * MiB, 10_000) == 3  # a busy neighbour: its core is left out
    assert cpu.threads_for(2, 5, 100 * MiB, 10_000) == 1  # oversubscribed: the calling thread only
    assert cpu.threads_for(4, 0, 2.5 * MiB, 10_000) == 2  # small work: few threads
    assert cpu.threads_for(4, 0, 100 * MiB, 3) == 3  # no more threads than items
    assert cpu.threads_for(4, 0, 10, 1) == 1


def test_busy_cores_from_cpu_time():
    """Other processes' cores: all CPU time minus this process's own, per second of wall clock."""
    assert cpu.busy_cores((0.0, 100.0, 5.0), (0.1, 100.2, 5.1)) == 1  # 0.2 s of CPU, 0.1 s ours
    assert cpu.busy_cores((0.0, 100.0, 5.0), (0.1, 100.2, 5.2)) == 0  # all of it ours (2 threads)
    assert cpu.busy_cores((0.0, 100.0, 5.0), (0.5, 101.5, 5.0)) == 3
    assert cpu.busy_cores((0.0, 100.0, 5.0), (0.1, 100.0, 5.1)) == 0  # tick rounding never negative
    assert cpu.busy_cores((1.0, 100.0, 5.0), (1.0, 101.0, 5.0)) == 0  # no time passed


def test_busy_is_a_count(monkeypatch):
    """Fresh, windowed and stale estimates are all counts of cores (Linux counters read)."""
    monkeypatch.setattr(cpu, "_sample", None)
    assert cpu._busy() >= 0 and cpu._running_threads_of_this_process() >= 1
    assert cpu._sample is not None
    monkeypatch.setattr(cpu, "_sample", (cpu._sample[0] - 0.2, cpu._sample[1], cpu._sample[2]))
    assert 0 <= cpu._busy() <= os.cpu_count()


def test_busy_reads_the_counters_once_per_window(monkeypatch):
    """Within the 50 ms window the last estimate stands, without reading /proc/stat again."""
    reads = []
    monkeypatch.setattr(cpu, "_cpu_seconds", lambda: reads.append(1) or (time.monotonic(), 0.0, 0.0))
    monkeypatch.setattr(cpu, "_busy_cores", 1)
    monkeypatch.setattr(cpu, "_sample", (time.monotonic(), 0.0, 0.0))
    assert cpu._busy() == 1 and not reads
    monkeypatch.setattr(cpu, "_sample", (time.monotonic() - 0.2, 0.0, 0.0))
    assert cpu._busy() == 0 and len(reads) == 1  # a new window: read, no CPU time used by others


def test_serves_numpy_and_torch_cpu_of_supported_dtypes():
    x = np.zeros(3, np.float32)
    assert cpu.serves(x, np.zeros(3, bool), np.zeros(3, np.int64))
    assert not cpu.serves()
    assert not cpu.serves(x, np.zeros(3, ">f8"))  # non-native byte order
    assert not cpu.serves(x, np.zeros(3, np.complex64))
    assert not cpu.serves(x, [1.0, 2.0])  # not an array
    if np.dtype(np.longdouble).itemsize > 8:
        assert not cpu.serves(np.zeros(3, np.longdouble))
    t = torch.zeros(3)
    assert cpu.serves(t, torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.int64))
    assert not cpu.serves(t, x)  # two libraries
    assert not cpu.serves(t, torch.zeros(3, dtype=torch.complex64))
    assert not cpu.serves(t.requires_grad_())  # autograd is recording
    with torch.no_grad():
        assert cpu.serves(t)


@pytest.fixture
def without_numba(monkeypatch):
    """Make ``import numba`` fail, as on an install without the ``cpu`` extra."""
    for name in ("_kernels", "_numba", "_checked"):
        monkeypatch.setattr(cpu, name, getattr(cpu, name))
    monkeypatch.setattr(cpu, "_checked", False)
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)


def test_without_numba_the_library_falls_back(without_numba, rng):
    assert not cpu.available()
    assert _kernels.engine(np.zeros(3)) == "numpy"
    assert _kernels.engine(torch.zeros(3)) == "neutral"
    E, v = rng.normal(size=(2, 30, 4)), rng.normal(size=(2, 30))
    out, pullback = shtopk.vjp.successive_halving_topk(E, v, 3)
    dE, dv = pullback(np.ones_like(out.values))
    assert np.isfinite(out.values).all() and dE.shape == E.shape and dv.shape == v.shape
    t_out = shtopk.successive_halving_topk(torch.from_numpy(E), torch.from_numpy(v), 3)
    np.testing.assert_allclose(t_out.values.numpy(), out.values, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("shape", [(5, 37), (0, 9), (3, 0), (1, 1)])
def test_prepare_scores_equals_neutral(rng, dtype, mask, shape):
    """The scores' one-pass preparation (validity, poisoned rows, -inf where invalid) gives the
    neutral flatten's arrays exactly; float16 scores (cast to float32) take the neutral one."""
    from shtopk._core.flat import prepare_scores as neutral_prepare_scores

    v = rng.normal(size=shape).astype(dtype)
    if v.size:
        v.flat[rng.integers(0, v.size, 6)] = [np.nan, np.inf, -np.inf, np.nan, -np.inf, np.inf]
        v[0] = np.nan if shape[0] > 1 else v[0]  # a row of NaN scores only
    keep = rng.random(shape) < 0.7 if mask else None
    want = neutral_prepare_scores(xp_np, v, keep)
    got = _kernels.prepare_scores(xp_np, v, keep)
    assert (cpu.prepare_scores(v, keep) is None) == (dtype == "float16")
    for name, a, b in zip(("s", "valid", "poison"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.isnan(got[0]).any()  # NaN scores become -inf (invalid), their rows poisoned
