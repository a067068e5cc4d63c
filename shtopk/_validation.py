"""Argument checking shared by every public entry point.

Each check raises a ``TypeError`` (wrong kind of object) or ``ValueError``
(right kind, wrong value) whose message names the offending argument.
Nothing here reads array *values*: checks only use shapes, dtypes, devices and
libraries, so validating a device array never synchronizes with the device.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any

from ._array_api import array_namespace, compute_dtype, device, is_array_api_obj, library_name

WEIGHTINGS = ("softmax", "power")
ORDERS = ("score", "input")


@dataclass(frozen=True)
class Inputs:
    """Validated ``(E, v, k, mask)`` with the facts the core needs."""

    xp: Any
    device: Any
    E: Any
    v: Any
    mask: Any
    k: int
    batch_shape: tuple[int, ...]
    n: int
    d: int


def namespace_of(x: Any, name: str) -> Any:
    if type(x).__module__.startswith("numpy.ma"):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, whose mask shtopk would not see; pass the data "
            "(x.data) and express masked items with the mask= argument (mask = ~x.mask for v)"
        )
    if not is_array_api_obj(x):
        raise TypeError(
            f"{name} must be an array (NumPy, CuPy, PyTorch or any Array API library); got {type(x).__name__}"
        )
    return array_namespace(x)


def check_same_library(xp: Any, x: Any, name: str, ref_name: str, ref: Any) -> None:
    """Raise if ``x`` is not from the namespace ``xp`` and the device of ``ref``.

    A device of None (a JAX array traced under ``jit``, placed by the compiler) matches any.
    """
    if namespace_of(x, name) is not xp:
        libraries = f"{library_name(x)} and {library_name(ref)}"
        raise TypeError(f"{name} and {ref_name} must come from the same array library; got {libraries}")
    dx, dref = device(x), device(ref)
    if dx is not None and dref is not None and dx != dref:
        raise ValueError(f"{name} and {ref_name} must be on the same device; got {dx} and {dref}")


def check_real_floating(xp: Any, x: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float16, bfloat16, float32 or float64); got {x.dtype}"
        )


def check_positive_int(k: Any, name: str = "k") -> int:
    """Return ``k`` as an int after checking it is an integer (a Python int or a 0-d integer
    array, never a bool) and ``>= 1``."""
    dtype = getattr(k, "dtype", None)
    if isinstance(k, bool) or (dtype is not None and "bool" in str(dtype)):
        raise TypeError(f"{name} must be an int; got {k!r}")
    if getattr(k, "ndim", 0) != 0:
        shape = tuple(k.shape)
        raise TypeError(f"{name} must be an int or a 0-d integer array; got a {k.ndim}-d array of shape {shape}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"{name} must be an int; got {type(k).__name__} {k!r}") from None
    if k < 1:
        raise ValueError(f"{name} must be >= 1; got {name} = {k}")
    return k


def check_k(k: Any, n: int) -> int:
    """Return ``k`` as an int after checking ``1 <= k <= n``."""
    k = check_positive_int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n} (the number of rows of E); got k = {k}")
    return k


def check_positive_real(value: Any, name: str, *, greater_than: float = 0.0) -> float:
    """Return ``value`` as a float after checking it is finite and ``> greater_than``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ValueError(f"{name} must be finite and > {greater_than:g}; got an int too large for a float") from None
    if not math.isfinite(value) or value <= greater_than:
        raise ValueError(f"{name} must be finite and > {greater_than:g}; got {value!r}")
    return value


def check_boost(boost: Any, weighting: str) -> float:
    """Validate ``boost`` for ``weighting`` (the base of a power must exceed 1)."""
    return check_positive_real(boost, "boost", greater_than=1.0 if weighting == "power" else 0.0)


def check_fits_compute_dtype(value: float, name: str, xp: Any, v_dtype: Any) -> None:
    """Raise ``ValueError`` if ``value`` exceeds the largest finite value of the dtype the
    weights are computed in for scores of ``v_dtype`` (float32 unless float64-like)."""
    dtype = compute_dtype(xp, v_dtype)
    limit = float(xp.finfo(dtype).max)
    if value > limit:
        largest = "float64" if dtype == xp.float64 else "float32"
        raise ValueError(
            f"{name} must be at most {limit:.7g}, the largest {largest} (the dtype the weights are "
            f"computed in for scores of dtype {_dtype_name(v_dtype)}); got {value!r}. Use a smaller {name}, "
            "or float64 scores."
        )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def check_choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def check_scores(v: Any, k: Any, mask: Any = None) -> Inputs:
    """Validate ``(v, k, mask)`` for operators that only need the scores."""
    xp = namespace_of(v, "v")
    check_real_floating(xp, v, "v")
    if v.ndim < 1:
        raise ValueError("v must have at least 1 dimension (..., n); got a 0-d array")
    _check_mask(xp, mask, v)
    n = int(v.shape[-1])
    k = check_k(k, n)
    return Inputs(xp=xp, device=device(v), E=None, v=v, mask=mask, k=k, batch_shape=tuple(v.shape[:-1]), n=n, d=0)


def _check_mask(xp: Any, mask: Any, v: Any) -> None:
    if mask is None:
        return
    check_same_library(xp, mask, "mask", "v", v)
    if mask.dtype != xp.bool:
        raise TypeError(f"mask must be a boolean array (True = keep); got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(v.shape):
        raise ValueError(f"mask must have the shape of v, {tuple(v.shape)}; got {tuple(mask.shape)}")


def check_inputs(E: Any, v: Any, k: Any, mask: Any = None) -> Inputs:
    """Validate the ``(E, v, k, mask)`` arguments shared by every operator."""
    xp = namespace_of(E, "E")
    check_same_library(xp, v, "v", "E", E)
    check_real_floating(xp, E, "E")
    check_real_floating(xp, v, "v")
    if E.ndim < 2:
        raise ValueError(f"E must have at least 2 dimensions (..., n, d); got shape {tuple(E.shape)}")
    if tuple(v.shape) != tuple(E.shape[:-1]):
        raise ValueError(f"v must have shape E.shape[:-1] = {tuple(E.shape[:-1])}; got {tuple(v.shape)}")
    _check_mask(xp, mask, v)
    n, d = int(E.shape[-2]), int(E.shape[-1])
    k = check_k(k, n)
    return Inputs(xp=xp, device=device(E), E=E, v=v, mask=mask, k=k, batch_shape=tuple(E.shape[:-2]), n=n, d=d)
