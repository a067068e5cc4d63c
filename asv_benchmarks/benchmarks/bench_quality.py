"""Approximation quality against the exact top-k, tracked so that a regression shows like a slowdown.

asv treats a larger tracked value as worse, so the value tracked is the
shortfall ``1 - nCCS`` (0 = the exact top-k): a drop in quality then appears
in ``asv compare`` and ``asv continuous`` as a regression, as a slowdown does.
"""

from __future__ import annotations

import numpy as np

import shtopk

METHODS = {
    "successive_halving": {},
    "successive_halving_authors": {"boost": 20.0, "weighting": "power"},
}


class Quality:
    """The paper's evaluation on NumPy (deterministic: seeded data, 2 batches of 16, d = 32)."""

    params = (["successive_halving", "successive_halving_authors", "iterative"], [16, 256, 4096, 16384], [2, 32, 256])
    param_names = ("method", "n", "k")
    timeout = 600

    def setup(self, method, n, k):
        if k >= n:
            raise NotImplementedError("k >= n")
        rng = np.random.default_rng([n, k])
        self.batches = [
            (rng.uniform(-1, 1, (16, n, 32)).astype(np.float32), rng.uniform(0, 1, (16, n)).astype(np.float32))
            for _ in range(2)
        ]

    def track_nccs_shortfall(self, method, n, k):
        """``1 - nCCS`` of ``method`` on the cell (n, k)."""
        scores = []
        for E, v in self.batches:
            truth = shtopk.hard_topk(E, v, k).values
            if method == "iterative":
                out = shtopk.iterative_softmax_topk(E, v, k)
            else:
                out = shtopk.successive_halving_topk(E, v, k, **METHODS[method])
            scores.append(float(np.mean(shtopk.nccs(truth, out.values))))
        return 1.0 - float(np.mean(scores))

    track_nccs_shortfall.unit = "1 - nCCS"
