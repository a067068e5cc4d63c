"""Independent references, written from the paper, for the tests only.

- :func:`loop_successive_halving`: Algorithm 2 as loops over Python floats and
  lists, one batch row at a time, with the library's exact semantics (padding,
  masks, ties, orders, NaN poisoning). Slow; for conformance tests.
- :func:`per_round_successive_halving`: the literal vectorized algorithm, a
  sort and a gather of E in every round (NumPy). The benchmark times it as the
  "naive" implementation the plan/apply split replaces.
- :func:`loop_iterative`: Algorithm 1 as published by the authors (score of the
  chosen item overwritten by -10000).
- :func:`loop_hard`, :func:`loop_nccs`.
"""

from __future__ import annotations

import math

import numpy as np

NEG_INF = -math.inf


def _rounds(n, k):
    R = 0
    while k * 2**R < n:
        R += 1
    return R


def _pair_weights(s_hi, s_lo, boost, weighting):
    """(w_hi, w_lo) for s_hi >= s_lo, in Python floats."""
    if weighting == "softmax":
        t = 0.0 if s_hi == s_lo else boost * (s_hi - s_lo)
    else:
        try:
            t = boost**s_hi - boost**s_lo
        except OverflowError:
            t = math.inf if s_hi > s_lo else 0.0
    if t == math.inf:
        return 1.0, 0.0
    e = math.exp(-t)
    return 1.0 / (1.0 + e), e / (1.0 + e)


def _rows(shape):
    return list(np.ndindex(*shape)) if shape else [()]


def loop_successive_halving(E, v, k, *, boost, weighting="softmax", mask=None, order="score"):
    """Return (values, scores, members) in float64; members[b][j] = {row: weight}."""
    E = np.asarray(E, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    batch = E.shape[:-2]
    n, d = E.shape[-2:]
    keep = np.ones(v.shape, bool) if mask is None else np.asarray(mask, bool)
    values = np.zeros(batch + (k, d))
    scores = np.full(batch + (k,), NEG_INF)
    members_all = {}
    R = _rounds(n, k)
    m = k * 2**R
    for b in _rows(batch):
        if any(math.isnan(v[b][i]) and keep[b][i] for i in range(n)):
            values[b] = math.nan
            scores[b] = math.nan
            continue
        items = []  # (score, vector, {row: weight}); invalid items have score -inf
        for i in range(m):
            if i < n and keep[b][i] and v[b][i] > NEG_INF:
                items.append((float(v[b][i]), E[b][i].copy(), {i: 1.0}))
            else:
                items.append((NEG_INF, np.zeros(d), {}))
        for _ in range(R):
            M = len(items)
            ranked = sorted(range(M), key=lambda p: -items[p][0])  # stable: ties keep position
            merged = []
            for i in range(M // 2):
                hi, lo = items[ranked[i]], items[ranked[M - 1 - i]]
                if lo[0] == NEG_INF:
                    merged.append(hi)
                    continue
                w_hi, w_lo = _pair_weights(hi[0], lo[0], boost, weighting)
                mem = {r: w * w_hi for r, w in hi[2].items()}
                mem.update({r: w * w_lo for r, w in lo[2].items()})
                merged.append((w_hi * hi[0] + w_lo * lo[0], w_hi * hi[1] + w_lo * lo[1], mem))
            items = merged
        if order == "score":
            slots = sorted(range(k), key=lambda j: -items[j][0])
        else:

            def key(j, items=items):
                mem = items[j][2]
                if not mem:
                    return (1, j)
                top = max(mem.values())
                return (0, min(r for r, w in mem.items() if w == top))

            slots = sorted(range(k), key=key)
        for out_j, j in enumerate(slots):
            scores[b][out_j] = items[j][0]
            values[b][out_j] = items[j][1]
            members_all[b + (out_j,)] = items[j][2]
    return values, scores, members_all


def loop_hard(E, v, k, *, mask=None, order="score"):
    """Exact top-k in float64 loops (ties to the lower index)."""
    E = np.asarray(E, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    batch = E.shape[:-2]
    n, d = E.shape[-2:]
    keep = np.ones(v.shape, bool) if mask is None else np.asarray(mask, bool)
    values = np.zeros(batch + (k, d))
    scores = np.full(batch + (k,), NEG_INF)
    for b in _rows(batch):
        if any(math.isnan(v[b][i]) and keep[b][i] for i in range(n)):
            values[b] = math.nan
            scores[b] = math.nan
            continue
        cand = [i for i in range(n) if keep[b][i] and v[b][i] > NEG_INF]
        chosen = sorted(cand, key=lambda i: (-v[b][i], i))[:k]
        if order == "input":
            chosen = sorted(chosen)
        for j, i in enumerate(chosen):
            values[b][j] = E[b][i]
            scores[b][j] = v[b][i]
    return values, scores


def loop_iterative(E, v, k, *, alpha=1.0, mask=None):
    """Algorithm 1 as the authors ran it: overwrite the chosen score by -10000."""
    E = np.asarray(E, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    batch = E.shape[:-2]
    n, d = E.shape[-2:]
    keep = np.ones(v.shape, bool) if mask is None else np.asarray(mask, bool)
    values = np.zeros(batch + (k, d))
    scores = np.full(batch + (k,), NEG_INF)
    for b in _rows(batch):
        if any(math.isnan(v[b][i]) and keep[b][i] for i in range(n)):
            values[b] = math.nan
            scores[b] = math.nan
            continue
        live = [i for i in range(n) if keep[b][i] and v[b][i] > NEG_INF]
        s = {i: float(v[b][i]) for i in live}
        for step in range(min(k, len(live))):
            top = max(s.values())
            a = min(i for i in live if s[i] == top)
            z = {i: -alpha * (s[i] - top) ** 2 for i in live}
            zmax = max(z.values())
            ez = {i: math.exp(z[i] - zmax) for i in live}
            total = sum(ez.values())
            p = {i: ez[i] / total for i in live}
            values[b][step] = sum(p[i] * E[b][i] for i in live)
            scores[b][step] = sum(p[i] * s[i] for i in live)
            s[a] = -10000.0
    return values, scores


def loop_nccs(Y_true, Y_pred):
    """nCCS of one pair of (k, d) matrices, by loops."""
    total = 0.0
    for y in Y_true:
        best = -math.inf
        for z in Y_pred:
            ny, nz = math.sqrt(float(y @ y)), math.sqrt(float(z @ z))
            cos = 0.0 if ny == 0 or nz == 0 else float(y @ z) / (ny * nz)
            best = max(best, cos)
        total += best
    return total / len(Y_true)


def per_round_successive_halving(E, v, k, *, boost, weighting="softmax"):
    """The literal algorithm: every round sorts and gathers E itself (NumPy).

    No masks, scores ordered output, finite scores: the plain Algorithm 2,
    vectorized over the batch, materializing a new copy of E every round.
    """
    E = np.asarray(E)
    v = np.asarray(v)
    B = E.shape[:-2]
    n, d = E.shape[-2:]
    R = _rounds(n, k)
    m = k * 2**R
    s = v.astype(np.promote_types(v.dtype, np.float32))
    X = E
    if m > n:
        s = np.concatenate([s, np.full(B + (m - n,), -np.inf, s.dtype)], axis=-1)
        X = np.concatenate([X, np.zeros(B + (m - n, d), X.dtype)], axis=-2)
    for _ in range(R):
        M = s.shape[-1]
        order = np.argsort(-s, axis=-1, kind="stable")
        hi, lo = order[..., : M // 2], order[..., M // 2 :][..., ::-1]
        s_hi, s_lo = np.take_along_axis(s, hi, -1), np.take_along_axis(s, lo, -1)
        lo_valid = np.isfinite(s_lo)
        with np.errstate(over="ignore", invalid="ignore"):
            if weighting == "softmax":
                t = boost * (s_hi - np.where(lo_valid, s_lo, 0))
            else:
                t = np.power(boost, s_hi) - np.power(boost, np.where(lo_valid, s_lo, 0))
        e = np.exp(-t)
        w_hi = np.where(lo_valid, 1 / (1 + e), 1.0).astype(s.dtype)
        w_lo = np.where(lo_valid, e / (1 + e), 0.0).astype(s.dtype)
        X = (
            np.take_along_axis(X, hi[..., None], -2) * w_hi[..., None]
            + np.take_along_axis(X, lo[..., None], -2) * w_lo[..., None]
        ).astype(E.dtype)
        s = np.where(lo_valid, w_hi * s_hi + w_lo * np.where(lo_valid, s_lo, 0), s_hi)
    order = np.argsort(-s, axis=-1, kind="stable")
    return np.take_along_axis(X, order[..., None], -2), np.take_along_axis(s, order, -1)
