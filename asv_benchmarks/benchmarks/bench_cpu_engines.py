"""The CPU engines side by side: compiled Numba kernels, NumPy kernels, the neutral core.

Successive halving on the CPU backends (``numpy``, ``torch:cpu``), batch 16,
float32, with ``SHTOPK_KERNELS`` set to each engine (``numba`` is skipped
where Numba is not installed; ``numpy`` serves only NumPy arrays). ``setup``
makes the first call, so compilation is not timed there; :class:`FirstCall`
tracks that first-call cost (as ``asv_benchmarks/cpu_table.py --compile``).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile

from .common import cotangent, forward_backward, inputs, library, operator

ENGINES = ["numba", "numpy", "neutral"]
PARAMS = (["numpy", "torch:cpu"], ENGINES, [4096], [2, 64], [256])
PARAM_NAMES = ["backend", "engine", "n", "k", "d"]
HALF_PARAMS = (["numpy:float16", "torch:cpu:bfloat16"], [4096], [64], [32, 256])
HALF_PARAM_NAMES = ["input", "n", "k", "d"]
EDGE_PARAMS = (["numpy", "torch:cpu"], ["n - 1", "n"], [4096], [32])
EDGE_PARAM_NAMES = ["backend", "k", "n", "d"]


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


class _Timed:
    """Seconds of one forward, and of one forward+backward, of successive halving on the inputs
    that :meth:`_prepare` sets (after one untimed call: compilation is not timed)."""

    timeout = 600

    def _prepare(self, backend, k, E, v, cotangent_dtype=None):
        self.E, self.v = E, v
        self.fn = operator("successive_halving", k)
        d_values = cotangent(backend, self.fn(E, v).values)
        self.d_values = d_values if cotangent_dtype is None else d_values.astype(cotangent_dtype)
        self.run = lambda: forward_backward(backend, "successive_halving", k, self.E, self.v, self.d_values)
        self.run()

    def time_forward(self, *params):
        self.fn(self.E, self.v)

    def time_forward_backward(self, *params):
        self.run()


class Engines(_Timed):
    """Seconds of one forward, and of one forward+backward, per engine."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, backend, engine, n, k, d):
        self._previous = os.environ.get("SHTOPK_KERNELS")
        _use(backend, engine)
        E, v = inputs(backend, n, d, "float32", requires_grad=backend == "torch:cpu")
        self._prepare(backend, k, E, v)

    def teardown(self, backend, engine, n, k, d):
        if self._previous is None:
            os.environ.pop("SHTOPK_KERNELS", None)
        else:
            os.environ["SHTOPK_KERNELS"] = self._previous


_FIRST_CALL = """
import time
import numpy as np, shtopk
rng = np.random.default_rng(0)
E = rng.normal(size=(2, 64, 8)).astype(np.float32)
v = rng.normal(size=(2, 64)).astype(np.float32)
c0 = time.process_time()
out, pullback = shtopk.vjp.successive_halving_topk(E, v, 4)
pullback(np.ones_like(out.values))
print(time.process_time() - c0)
"""


class FirstCall:
    """CPU seconds of the first forward+backward (float32 NumPy) in a fresh process with an empty
    Numba cache: the compilation a user waits for once per machine and dtype, tracked so that a
    kernel change that compiles slower shows up."""

    timeout = 600
    number = 1
    repeat = 1
    unit = "seconds"

    def setup(self):
        _use("numpy", "numba")
        os.environ.pop("SHTOPK_KERNELS", None)

    def track_first_call_cpu_seconds(self):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, SHTOPK_KERNELS="numba")
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return float(out.stdout)


class HalfPrecision(_Timed):
    """Seconds of one forward, and of one forward+backward, of successive halving on half-precision
    inputs on the CPU: NumPy float16 and torch-CPU bfloat16, batch 16, with the default engine (the
    kernels widen each element and sum in float32). d = 32 reads E in plan order, d = 256 in row
    order (``shtopk._kernels.cpu.HALF_BY_ROW_BYTES``)."""

    params = HALF_PARAMS
    param_names = HALF_PARAM_NAMES

    def setup(self, input, n, k, d):
        backend, dtype = input.rsplit(":", 1)
        torch_backend = backend != "numpy"
        E, v = inputs(backend, n, d, dtype, requires_grad=torch_backend)
        if torch_backend:
            self._prepare(backend, k, E, v)
        else:  # (the NumPy inputs come as float32)
            self._prepare(backend, k, E.astype(dtype), v.astype(dtype), cotangent_dtype=dtype)


class EdgeCells(_Timed):
    """Seconds of one forward, and of one forward+backward, of successive halving at k = n - 1 (one
    round over 2n - 2 items, n - 2 of them padding: every slot but one has one valid member) and
    k = n (no rounds, an E-sized output), batch 16, float32, with the default engine: the cells
    where the work per item differs most from k < n - 1, tracked so that neither drifts."""

    params = EDGE_PARAMS
    param_names = EDGE_PARAM_NAMES

    def setup(self, backend, k, n, d):
        E, v = inputs(backend, n, d, "float32", requires_grad=backend == "torch:cpu")
        self._prepare(backend, n - 1 if k == "n - 1" else n, E, v)
