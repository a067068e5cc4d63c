"""The CPU engines side by side: compiled Numba kernels, NumPy kernels, the neutral core.

Successive halving on the CPU backends (``numpy``, ``torch:cpu``), batch 16,
float32, with ``SHTOPK_KERNELS`` set to each engine (``numba`` is skipped
where Numba is not installed; ``numpy`` serves only NumPy arrays). ``setup``
makes the first call, so compilation is not timed; ``asv_benchmarks/cpu_table.py
--compile`` reports that first-call cost.
"""

from __future__ import annotations

import importlib
import os

from .common import cotangent, forward_backward, inputs, library, operator

ENGINES = ["numba", "numpy", "neutral"]
PARAMS = (["numpy", "torch:cpu"], ENGINES, [4096], [2, 64], [256])
PARAM_NAMES = ["backend", "engine", "n", "k", "d"]


def _use(backend: str, engine: str) -> None:
    library(backend)
    try:  # imported here: commits before the CPU engine (asv_benchmarks/track_commits.py) skip, not fail
        cpu = importlib.import_module("shtopk._kernels.cpu")
    except ImportError:
        raise NotImplementedError("this version of shtopk has no CPU engine") from None
    if engine == "numba" and not cpu.available():
        raise NotImplementedError("numba is not installed")
    if engine == "numpy" and backend != "numpy":
        raise NotImplementedError("the NumPy kernels serve NumPy arrays only")
    os.environ["SHTOPK_KERNELS"] = engine


class Engines:
    """Seconds of one forward, and of one forward+backward, per engine."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup(self, backend, engine, n, k, d):
        self._previous = os.environ.get("SHTOPK_KERNELS")
        _use(backend, engine)
        self.E, self.v = inputs(backend, n, d, "float32", requires_grad=backend == "torch:cpu")
        self.fn = operator("successive_halving", k)
        self.d_values = cotangent(backend, self.fn(self.E, self.v).values)
        self.run = lambda: forward_backward(backend, "successive_halving", k, self.E, self.v, self.d_values)
        self.run()

    def teardown(self, backend, engine, n, k, d):
        if self._previous is None:
            os.environ.pop("SHTOPK_KERNELS", None)
        else:
            os.environ["SHTOPK_KERNELS"] = self._previous

    def time_forward(self, backend, engine, n, k, d):
        self.fn(self.E, self.v)

    def time_forward_backward(self, backend, engine, n, k, d):
        self.run()
