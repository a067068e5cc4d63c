"""The single import site of ``array-api-compat`` and ``array-api-extra``.

Every module of :mod:`shtopk` that needs an array namespace, a device, to ask
which library an array comes from, or to update an array at an index (:func:`at`,
in place where the library allows it, out of place for JAX) goes through this
module, so that these dependencies stay in one place.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat
from array_api_compat import is_cupy_array, is_jax_array, is_numpy_array, is_writeable_array
from array_api_extra import at

__all__ = [
    "array_namespace",
    "at",
    "compute_dtype",
    "device",
    "is_array_api_obj",
    "is_cupy_array",
    "is_half",
    "is_jax_array",
    "is_torch_array",
    "is_writeable_array",
    "library_name",
]


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# torch tensors take these direct paths: the same answers as array-api-compat, but in code
# that torch.compile (Dynamo) traces without warnings (array-api-compat's lru_cache helpers)


def is_torch_array(x: Any) -> bool:
    """Whether ``x`` is a torch tensor."""
    return _is_tensor(x)


def is_array_api_obj(x: Any) -> bool:
    """Whether ``x`` is an array of a library that shtopk can use."""
    return _is_tensor(x) or array_api_compat.is_array_api_obj(x)


def array_namespace(*xs: Any) -> Any:
    """The Array API namespace of the arrays ``xs`` (array-api-compat's wrapper for torch)."""
    if xs and all(_is_tensor(x) for x in xs):
        from array_api_compat import torch as torch_namespace

        return torch_namespace
    return array_api_compat.array_namespace(*xs)


def device(x: Any) -> Any:
    """The device of the array ``x``."""
    return x.device if _is_tensor(x) else array_api_compat.device(x)


def library_name(x: Any) -> str:
    """Return a short, human-readable name of the library ``x`` comes from."""
    if is_numpy_array(x):
        return "numpy"
    if is_torch_array(x):
        return "torch"
    if is_cupy_array(x):
        return "cupy"
    if is_jax_array(x):
        return "jax"
    namespace = getattr(x, "__array_namespace__", None)
    if namespace is not None and array_api_compat.is_array_api_strict_namespace(namespace()):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


def is_half(xp: Any, dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than float32 (float16, bfloat16)."""
    return xp.finfo(dtype).bits < 32


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype the tournament weights are computed in: float64 for float64-like dtypes
    (also big-endian ``>f8`` and ``longdouble``), float32 otherwise (at least float32)."""
    return xp.float64 if xp.finfo(dtype).bits > 32 else xp.float32
