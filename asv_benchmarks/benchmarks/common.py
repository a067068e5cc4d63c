"""Shared set-up of the benchmarks: backends, problem sizes, synchronization.

A benchmark whose backend is missing (no GPU, no CuPy), whose dtype the
backend lacks, or whose size is out of reach of a CPU backend raises
``NotImplementedError`` in ``setup``, which asv records as skipped.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

import shtopk

# Import the optional libraries once, at discovery: asv's fork server then
# preloads them and every benchmark process starts without paying the import.
for _name in ("torch", "cupy", "jax"):
    try:
        importlib.import_module(_name)
    except ImportError:
        pass
#: No NVIDIA device node: GPU backends are skipped without initializing CUDA.
NO_GPU = not os.path.exists("/dev/nvidiactl")

BACKENDS = ["numpy", "torch:cpu", "torch:cuda", "cupy", "jax:cpu"]
METHODS = ["successive_halving", "iterative", "hard"]
BATCH = 16
N = [1024, 16384]
K = [2, 256]
D = [32, 768]
DTYPES = ["float32", "bfloat16"]

#: CPU backends skip problems beyond these sizes (elements of E; multiply-adds
#: of the O(k n d) iterative baseline), so that the suite stays runnable there.
CPU_MAX_ELEMENTS = 2**24
CPU_MAX_ITERATIVE_MACS = 2**29


def is_gpu(backend: str) -> bool:
    return backend in ("torch:cuda", "cupy")


def library(backend: str) -> Any:
    """Import the backend's library, or skip when it is not usable here."""
    if is_gpu(backend) and NO_GPU:
        raise NotImplementedError(f"{backend}: no GPU")
    try:
        if backend == "cupy":
            cupy = importlib.import_module("cupy")
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("cupy: no GPU")
            return cupy
        if backend.startswith("torch"):
            torch = importlib.import_module("torch")
            if backend == "torch:cuda" and not torch.cuda.is_available():
                raise NotImplementedError("torch:cuda: no GPU")
            return torch
        if backend.startswith("jax"):
            return importlib.import_module("jax")
        return np
    except ImportError as exc:
        raise NotImplementedError(f"{backend}: {exc}") from None
    except NotImplementedError:
        raise
    except Exception as exc:  # a CUDA runtime without a device raises its own errors
        raise NotImplementedError(f"{backend}: {exc}") from None


def check_size(backend: str, method: str, n: int, k: int, d: int, dtype: str) -> None:
    """Skip what cannot or should not run on this backend, and methods that
    ``SHTOPK_BENCH_METHODS`` (a comma-separated list, when set) leaves out."""
    chosen = os.environ.get("SHTOPK_BENCH_METHODS")
    if chosen and method not in chosen.split(","):
        raise NotImplementedError(f"SHTOPK_BENCH_METHODS={chosen} leaves out {method}")
    library(backend)
    if k >= n:
        raise NotImplementedError("k >= n")
    if dtype == "bfloat16" and not backend.startswith(("torch", "jax")):
        raise NotImplementedError(f"{backend} has no bfloat16")
    if not is_gpu(backend):
        if BATCH * n * d > CPU_MAX_ELEMENTS:
            raise NotImplementedError("too large for a CPU backend")
        if method == "iterative" and BATCH * k * n * d > CPU_MAX_ITERATIVE_MACS:
            raise NotImplementedError("the O(k n d) baseline is too slow for a CPU backend here")


def inputs(backend: str, n: int, d: int, dtype: str, *, requires_grad: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """The paper's data, E ~ U[-1, 1] (BATCH, n, d) and v ~ U[0, 1] (BATCH, n), on the backend."""
    lib = library(backend)
    rng = np.random.default_rng(seed)
    E = rng.uniform(-1.0, 1.0, (BATCH, n, d)).astype(np.float32)
    v = rng.uniform(0.0, 1.0, (BATCH, n)).astype(np.float32)
    if backend == "numpy":
        return E, v
    if backend == "cupy":
        return lib.asarray(E), lib.asarray(v)
    if backend.startswith("jax"):
        device = lib.devices(backend.split(":")[1])[0]
        return tuple(lib.device_put(lib.numpy.asarray(x, dtype=dtype), device) for x in (E, v))
    device = backend.split(":")[1]
    out = []
    for x in (E, v):
        t = lib.from_numpy(x).to(device=device, dtype=getattr(lib, dtype))
        out.append(t.requires_grad_(requires_grad))
    return tuple(out)


def operator(method: str, k: int):
    """The forward function (E, v) -> TopK of ``method``."""
    if method == "successive_halving":
        return lambda E, v: shtopk.successive_halving_topk(E, v, k)
    if method == "iterative":
        return lambda E, v: shtopk.iterative_softmax_topk(E, v, k)
    return lambda E, v: shtopk.hard_topk(E, v, k)


def manual_vjp(method: str, k: int):
    """The (E, v) -> (TopK, pullback) function of ``method`` (for libraries without autograd)."""
    return {
        "successive_halving": lambda E, v: shtopk.vjp.successive_halving_topk(E, v, k),
        "iterative": lambda E, v: shtopk.vjp.iterative_softmax_topk(E, v, k),
        "hard": lambda E, v: shtopk.vjp.hard_topk(E, v, k),
    }[method]


def synchronize(backend: str, result: Any = None) -> None:
    """Wait for the device, so that a timed call includes all of its work (JAX: the work behind ``result``)."""
    if backend == "torch:cuda":
        library(backend).cuda.synchronize()
    elif backend == "cupy":
        library(backend).cuda.get_current_stream().synchronize()
    elif backend.startswith("jax") and result is not None:
        library(backend).block_until_ready(result)


def jax_gradient(method: str, k: int):
    """JAX: the jitted (E, v, d_values) -> (dE, dv) of ``method`` (jax.vjp through the custom VJP)."""
    jax = importlib.import_module("jax")
    fn = operator(method, k)
    return jax.jit(lambda E, v, d_values: jax.vjp(lambda E_, v_: fn(E_, v_).values, E, v)[1](d_values))


def forward_backward(backend: str, method: str, k: int, E: Any, v: Any, d_values: Any) -> Any:
    """One forward and backward pass: autograd for torch, jax.vjp for JAX, the manual VJP otherwise."""
    if backend.startswith("torch"):
        E.grad = v.grad = None
        out = operator(method, k)(E, v)
        out.values.backward(d_values)
        return None
    if backend.startswith("jax"):
        return _jax_gradients(method, k)(E, v, d_values)
    out, pullback = manual_vjp(method, k)(E, v)
    return pullback(d_values)


_JAX_GRADIENTS: dict[tuple[str, int], Any] = {}


def _jax_gradients(method: str, k: int) -> Any:
    if (method, k) not in _JAX_GRADIENTS:
        _JAX_GRADIENTS[method, k] = jax_gradient(method, k)
    return _JAX_GRADIENTS[method, k]


def cotangent(backend: str, like: Any) -> Any:
    """A fixed random output cotangent shaped like ``like``."""
    lib = library(backend)
    rng = np.random.default_rng(1)
    x = rng.normal(size=tuple(like.shape)).astype(np.float32)
    if backend == "numpy":
        return x
    if backend == "cupy":
        return lib.asarray(x)
    if backend.startswith("jax"):
        return lib.device_put(lib.numpy.asarray(x, dtype=like.dtype), like.devices().pop())
    return lib.from_numpy(x).to(device=like.device, dtype=like.dtype)


class DeviceTimer:
    """Milliseconds between two CUDA events on the current stream (torch or CuPy)."""

    def __init__(self, backend: str) -> None:
        lib = library(backend)
        if backend == "torch:cuda":
            self.start, self.end = lib.cuda.Event(enable_timing=True), lib.cuda.Event(enable_timing=True)
            self.elapsed = lambda: self.start.elapsed_time(self.end)
        else:
            self.start, self.end = lib.cuda.Event(), lib.cuda.Event()
            self.elapsed = lambda: lib.cuda.get_elapsed_time(self.start, self.end)

    def time(self, fn, repeat: int = 10) -> float:
        """Median device milliseconds of ``fn`` over ``repeat`` calls."""
        times = []
        for _ in range(repeat):
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            times.append(self.elapsed())
        return float(np.median(times))


def peak_device_bytes(backend: str, fn) -> int:
    """Peak device memory allocated while ``fn`` runs, above what was allocated before."""
    lib = library(backend)
    synchronize(backend)
    if backend == "torch:cuda":
        lib.cuda.reset_peak_memory_stats()
        before = lib.cuda.memory_allocated()
        fn()
        synchronize(backend)
        return int(lib.cuda.max_memory_allocated() - before)
    hook = _cupy_peak_hook(lib)
    with hook:
        fn()
        synchronize(backend)
    return hook.peak


def _cupy_peak_hook(cupy: Any) -> Any:
    """A CuPy MemoryHook that tracks the pool's bytes in use and their peak (CuPy is optional)."""

    class PeakHook(cupy.cuda.MemoryHook):
        """Tracks the bytes handed out by CuPy's memory pool, and their peak."""

        name = "PeakHook"

        def __init__(self) -> None:
            self.used = 0
            self.peak = 0

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.used += kwargs["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.used -= kwargs["mem_size"]

    return PeakHook()
