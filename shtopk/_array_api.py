"""The single import site of ``array-api-compat`` and ``array-api-extra``.

Every module of :mod:`shtopk` that needs an array namespace, a device, to ask
which library an array comes from, or to update an array at an index (:func:`at`,
in place where the library allows it, out of place for JAX) goes through this
module, so that these dependencies stay in one place.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_cupy_array,
    is_jax_array,
    is_numpy_array,
    is_torch_array,
    is_writeable_array,
)
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
    if array_api_compat.is_array_api_strict_namespace(getattr(x, "__array_namespace__", lambda: None)()):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


def is_half(xp: Any, dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than float32 (float16, bfloat16)."""
    return dtype not in (xp.float32, xp.float64)


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype the tournament weights are computed in: at least float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32
