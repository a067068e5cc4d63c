"""A user's script, type-checked by mypy against the installed wheel (.ci/package).

Every ``assert_type`` is a claim about the public types: results carry the
caller's array types, so ``out.values`` is E's type, not ``Any``. Run as a
script it also executes (the claims hold at runtime too).
"""

from typing import assert_type

import numpy as np
from numpy.typing import NDArray

import shtopk
from shtopk import vjp

rng = np.random.default_rng(0)
E: NDArray[np.float32] = rng.normal(size=(2, 10, 4)).astype(np.float32)
v: NDArray[np.float64] = rng.normal(size=(2, 10))

out = shtopk.successive_halving_topk(E, v, 3)
assert_type(out, shtopk.TopK[NDArray[np.float32], NDArray[np.float64]])
assert_type(out.values, NDArray[np.float32])
assert_type(out.scores, NDArray[np.float64])
assert_type(shtopk.hard_topk(E, v, 3).values, NDArray[np.float32])
assert_type(shtopk.iterative_softmax_topk(E, v, 3).values, NDArray[np.float32])

plan = shtopk.plan(v, 3)
assert_type(plan, shtopk.Plan[NDArray[np.float64]])
assert_type(shtopk.apply(plan, E).values, NDArray[np.float32])

res, pullback = vjp.successive_halving_topk(E, v, 3)
dE, dv = pullback(np.ones_like(res.values))
assert_type(dE, NDArray[np.float32])
assert_type(dv, NDArray[np.float64])

assert out.values.dtype == np.float32 and dE.shape == E.shape and dv.shape == v.shape
