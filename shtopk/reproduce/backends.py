"""The array library and device the reproduction runs on."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKENDS = ("numpy", "torch", "cupy", "jax")


@dataclass
class Runtime:
    """Moves seeded NumPy data to the chosen library/device and synchronizes it."""

    backend: str
    device: str
    dtype: str
    lib: Any = None

    def __post_init__(self) -> None:
        """Check the combination up front: a ``ValueError`` with a one-line reason, never a
        traceback from deep inside a library halfway through a run."""
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.dtype == "bfloat16" and self.backend not in ("torch", "jax"):
            raise ValueError(f"--dtype bfloat16 needs --backend torch or jax ({self.backend} has no bfloat16)")
        if self.backend == "numpy":
            if self.device not in ("cpu", ""):
                raise ValueError(f"--device {self.device!r}: NumPy runs on the CPU only")
            self.lib = np
        elif self.backend == "torch":
            self.lib = _import("torch", "PyTorch", "pip install torch")
            self.device = self.device or ("cuda" if self.lib.cuda.is_available() else "cpu")
            self._check_torch_device()
        elif self.backend == "jax":
            self.lib = _import("jax", "JAX", 'pip install "shtopk[jax]"')
            if self.dtype == "float64":
                self.lib.config.update("jax_enable_x64", True)
            self._jax_device = _jax_device(self.lib, self.device)
            self.device = str(self._jax_device)
        else:
            self.lib = _import("cupy", "CuPy", "pip install cupy-cuda12x")
            try:
                if self.lib.cuda.runtime.getDeviceCount() < 1:
                    raise ValueError("--backend cupy: CuPy sees no GPU")
                if self.device not in ("", "cuda", "gpu"):
                    self.lib.cuda.Device(int(self.device.split(":")[-1])).use()
            except ValueError as exc:
                raise ValueError(f"--backend cupy --device {self.device!r}: {exc}") from None
            except Exception as exc:  # CUDA runtime errors of a machine without a usable GPU
                raise ValueError(f"--backend cupy: no usable GPU ({type(exc).__name__}: {exc})") from None

    def _check_torch_device(self) -> None:
        torch = self.lib
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"--device {self.device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA GPU"
            raise ValueError(f"--device {self.device!r}: this PyTorch ({torch.__version__}) {why}")
        try:
            torch.empty(1, device=dev)
        except Exception as exc:  # an unavailable device of another kind, or a bad index
            raise ValueError(f"--device {self.device!r} cannot be used ({type(exc).__name__}: {exc})") from None

    def asarray(self, x: np.ndarray) -> Any:
        if self.backend == "numpy":
            return x.astype(self.dtype)
        if self.backend == "torch":
            return self.lib.from_numpy(x).to(device=self.device, dtype=getattr(self.lib, self.dtype))
        if self.backend == "jax":
            return self.lib.device_put(self.lib.numpy.asarray(x, dtype=self.dtype), self._jax_device)
        return self.lib.asarray(x.astype(self.dtype))

    def synchronize(self, result: Any = None) -> None:
        """Wait for the device; JAX waits for the arrays of ``result`` (it has no device-wide wait)."""
        if self.backend == "torch" and str(self.device).startswith("cuda"):
            self.lib.cuda.synchronize()
        elif self.backend == "cupy":
            self.lib.cuda.Device().synchronize()
        elif self.backend == "jax" and result is not None:
            self.lib.block_until_ready(result)

    def to_float(self, x: Any) -> float:
        if self.backend == "torch":
            return float(x.float().mean().item())
        if self.backend == "cupy":
            return float(x.mean().get())
        if self.backend == "jax":
            return float(self.lib.numpy.mean(x.astype(self.lib.numpy.float32)))
        return float(np.mean(x))

    def device_name(self) -> str:
        if self.backend == "torch" and str(self.device).startswith("cuda"):
            return self.lib.cuda.get_device_name(self.lib.device(self.device))
        if self.backend == "cupy":
            props = self.lib.cuda.runtime.getDeviceProperties(self.lib.cuda.Device().id)
            return props["name"].decode()
        if self.backend == "jax" and self._jax_device.platform != "cpu":
            return self._jax_device.device_kind
        return cpu_name()

    def versions(self) -> dict[str, str]:
        import array_api_compat

        import shtopk

        out = {
            "python": platform.python_version(),
            "shtopk": shtopk.__version__,
            "numpy": np.__version__,
            "array_api_compat": array_api_compat.__version__,
        }
        if self.backend != "numpy":
            out[self.backend] = self.lib.__version__
        if self.backend == "torch" and self.lib.version.cuda:
            out["cuda"] = self.lib.version.cuda
        if self.backend == "jax":
            import jaxlib

            out["jaxlib"] = jaxlib.__version__
        return out


def _import(module: str, name: str, hint: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"--backend {module}: {name} is not installed ({hint})") from None


def _jax_device(jax: Any, name: str) -> Any:
    """The JAX device for ``--device``: "" (JAX's default), "cpu", "gpu"/"cuda", optionally ":<index>"."""
    if not name:
        return jax.devices()[0]
    kind, _, index = name.partition(":")
    try:
        return jax.devices("gpu" if kind == "cuda" else kind)[int(index or 0)]
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ValueError(f"--device {name!r}: no such JAX device ({exc})") from None


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
