"""Forward and forward+backward of successive halving, the iterative baseline and hard top-k.

Parametrized by backend (``numpy``, ``torch:cpu``, ``torch:cuda``, ``cupy``, ``jax:cpu``),
method, n, k, d and dtype, on the paper's data with batch 16. Timed calls
synchronize the device before returning; ``setup`` warms up (first calls
allocate, load kernels and fill caches). For GPUs, ``DeviceTime`` also reports
CUDA-event milliseconds and the peak device memory of forward+backward (asv's
``peakmem_`` only sees host memory).
"""

from __future__ import annotations

from .common import (
    BACKENDS,
    DTYPES,
    METHODS,
    D,
    DeviceTimer,
    K,
    N,
    check_size,
    cotangent,
    forward_backward,
    inputs,
    is_gpu,
    operator,
    peak_device_bytes,
    synchronize,
)

PARAMS = (BACKENDS, METHODS, N, K, D, DTYPES)
PARAM_NAMES = ["backend", "method", "n", "k", "d", "dtype"]


def _check(backend: str, method: str, n: int, k: int, d: int, dtype: str) -> None:
    check_size(backend, method, n, k, d, dtype)
    if dtype != "float32" and not is_gpu(backend):
        raise NotImplementedError("half-precision benchmarks are for GPUs")


class Forward:
    """Seconds of one forward call (device synchronized)."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup(self, backend, method, n, k, d, dtype):
        _check(backend, method, n, k, d, dtype)
        self.E, self.v = inputs(backend, n, d, dtype)
        self.fn = operator(method, k)
        synchronize(backend, self.fn(self.E, self.v))

    def time_forward(self, backend, method, n, k, d, dtype):
        synchronize(backend, self.fn(self.E, self.v))


class ForwardBackward:
    """Seconds of one forward and backward pass: torch autograd, jitted ``jax.vjp``, or the manual VJP (NumPy, CuPy)."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup(self, backend, method, n, k, d, dtype):
        _check(backend, method, n, k, d, dtype)
        self.E, self.v = inputs(backend, n, d, dtype, requires_grad=True)
        self.d_values = cotangent(backend, operator(method, k)(self.E, self.v).values)
        self.run = lambda: forward_backward(backend, method, k, self.E, self.v, self.d_values)
        synchronize(backend, self.run())

    def time_forward_backward(self, backend, method, n, k, d, dtype):
        synchronize(backend, self.run())

    def peakmem_forward_backward(self, backend, method, n, k, d, dtype):
        synchronize(backend, self.run())


class DeviceTime:
    """GPU only: CUDA-event milliseconds, the read-E floor, and peak device memory."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup(self, backend, method, n, k, d, dtype):
        if not is_gpu(backend):
            raise NotImplementedError("device-event timing and device memory need a GPU backend")
        _check(backend, method, n, k, d, dtype)
        self.E, self.v = inputs(backend, n, d, dtype, requires_grad=backend == "torch:cuda")
        self.fn = operator(method, k)
        self.d_values = cotangent(backend, self.fn(self.E, self.v).values)
        self.timer = DeviceTimer(backend)
        self.forward_backward = lambda: forward_backward(backend, method, k, self.E, self.v, self.d_values)
        self.forward_backward()
        synchronize(backend)

    def track_forward_ms(self, backend, method, n, k, d, dtype):
        return self.timer.time(lambda: self.fn(self.E, self.v))

    track_forward_ms.unit = "ms"

    def track_forward_backward_ms(self, backend, method, n, k, d, dtype):
        return self.timer.time(self.forward_backward)

    track_forward_backward_ms.unit = "ms"

    def track_read_E_ms(self, backend, method, n, k, d, dtype):
        """The floor: reading E once (``E.sum(-2)``)."""
        return self.timer.time(lambda: self.E.sum(-2))

    track_read_E_ms.unit = "ms"

    def track_peak_extra_memory_MB(self, backend, method, n, k, d, dtype):
        """Peak device memory of forward+backward beyond the inputs, in MB."""
        return peak_device_bytes(backend, self.forward_backward) / 2**20

    track_peak_extra_memory_MB.unit = "MB"
