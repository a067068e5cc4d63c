"""The ``backend`` fixture: every test that takes it runs on every array library.

NumPy, array-api-strict and PyTorch (CPU) always run; JAX (with float64
enabled, as the float64 references need) runs when it is installed. CuPy and
PyTorch on CUDA join automatically when a GPU is present, and are skipped with
the reason otherwise.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.load_profile("ci")


@dataclass(frozen=True)
class Backend:
    """An array library (and device) the tests run on."""

    name: str
    xp: Any
    device: Any = None

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        """A NumPy array (or list) as this backend's array, on its device."""
        x = np.asarray(x)
        if dtype == "float16" and self.name == "array_api_strict":
            pytest.skip("array_api_strict has no float16")
        if dtype is not None and dtype != "bfloat16":
            x = x.astype(dtype)
        if self.name.startswith("torch"):
            import torch

            t = torch.from_numpy(np.array(x, copy=True)).to(self.device)
            return t.to(torch.bfloat16) if dtype == "bfloat16" else t
        if self.name == "jax":
            return self.xp.asarray(x, dtype=self.xp.bfloat16 if dtype == "bfloat16" else None)
        if dtype == "bfloat16":
            pytest.skip(f"{self.name} has no bfloat16")
        return self.xp.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy a backend array to a float64 (or bool/int) NumPy array."""
        if self.name.startswith("torch"):
            x = x.detach()
            if x.dtype.is_floating_point:
                x = x.double()
            return x.cpu().numpy()
        if self.name == "cupy":
            x = x.get()
        if self.name == "array_api_strict":
            x = np.asarray(x._array)
        if self.name == "jax" and self.xp.isdtype(x.dtype, "real floating"):
            x = self.xp.astype(x, self.xp.float64)  # NumPy has no bfloat16
        x = np.asarray(x)
        return x.astype(np.float64) if x.dtype.kind == "f" else x

    def dtype(self, name: str) -> Any:
        if self.name.startswith("torch"):
            import torch

            return getattr(torch, name)
        return getattr(self.xp, name)


def _gpu_reason(kind: str) -> str | None:
    try:
        if kind == "cupy":
            cupy = importlib.import_module("cupy")
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "CuPy is installed but sees no GPU"
            return None
        torch = importlib.import_module("torch")
        return None if torch.cuda.is_available() else "torch sees no CUDA GPU"
    except ImportError:
        return f"{kind} is not installed"
    except Exception as exc:  # a CUDA runtime without a device raises its own errors
        return f"{kind} cannot use a GPU here: {exc}"


def _make_backend(name: str) -> Backend:
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp)
    if name == "array_api_strict":
        import array_api_strict as xp

        return Backend(name, xp)
    if name == "cupy":
        import array_api_compat.cupy as xp

        return Backend(name, xp)
    if name == "jax":
        jax = pytest.importorskip("jax", reason="jax is not installed")
        jax.config.update("jax_enable_x64", True)  # the tests compare float64 results with float64 references
        # Every new shape is an XLA compilation, and compiling dominates the JAX tests: skip the
        # optimizations (faster compiles, slower programs, same values).
        jax.config.update("jax_disable_most_optimizations", True)
        return Backend(name, jax.numpy)
    import array_api_compat.torch as xp

    return Backend(name, xp, "cuda" if name == "torch-cuda" else "cpu")


BACKENDS = ["numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda"]
GPU_BACKENDS = {"cupy": "cupy", "torch-cuda": "torch"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name in GPU_BACKENDS:
        reason = _gpu_reason(GPU_BACKENDS[name])
        if reason:
            pytest.skip(f"{name}: {reason}")
    return _make_backend(name)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded freshly for every test; a failure report prints the seed,
    and ``SHTOPK_SEED=<seed>`` replays it."""
    seed = int(os.environ.get("SHTOPK_SEED", np.random.SeedSequence().entropy % (2**32)))
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.failed:
        for key, value in item.user_properties:
            if key == "seed":
                report.sections.append(("random seed", f"replay with SHTOPK_SEED={value}"))
    return report
