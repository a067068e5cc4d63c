"""Backend fast paths for small helpers of the neutral core.

Each function has a pure Array API fallback; the fast paths must give the same
results (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import sys
from typing import Any

from ._array_api import at, device, is_cupy_array, is_jax_array, is_numpy_array, is_torch_array


def inverse_permutation(xp: Any, perm: Any) -> Any:
    """The inverse of each row of ``perm`` (B, M): ``inv[b, perm[b, i]] = i``."""
    B, M = perm.shape
    return unsort(xp, xp.broadcast_to(xp.arange(M, dtype=perm.dtype, device=device(perm)), (B, M)), perm)


def unsort(xp: Any, values: Any, perm: Any) -> Any:
    """Undo a gather: ``out[b, perm[b, i]] = values[b, i]`` for permutations ``perm`` (B, M).

    The Array API has no scatter, so the neutral version sorts (O(M log M));
    NumPy, CuPy, PyTorch and JAX scatter instead (O(M)).
    """
    return unsort_many(xp, [values], perm)[0]


def unsort_many(xp: Any, values: list[Any], perm: Any) -> list[Any]:
    """:func:`unsort` of several (B, M) arrays by the same ``perm``, the index work done once."""
    B, M = perm.shape
    if is_torch_array(perm):
        return [v.new_empty(v.shape).scatter_(-1, perm, v) for v in values]
    if is_numpy_array(perm) or is_cupy_array(perm) or is_jax_array(perm):
        # libraries that index with integer arrays: one flat scatter (in place, or JAX's .at[])
        dev = device(perm)
        flat = xp.reshape(perm + xp.reshape(xp.arange(B, dtype=perm.dtype, device=dev) * M, (B, 1)), (-1,))
        return [
            xp.reshape(at(xp.empty((B * M,), dtype=v.dtype, device=dev), flat).set(xp.reshape(v, (-1,)), xp=xp), (B, M))
            for v in values
        ]
    inv = neutral_inverse_permutation(xp, perm)
    return [take_along_last(xp, v, inv) for v in values]


def neutral_inverse_permutation(xp: Any, perm: Any) -> Any:
    """The pure Array API inverse permutation (a sort)."""
    return xp.argsort(perm, axis=-1)


def argsort_descending(xp: Any, s: Any, *, nearly_sorted: bool = False) -> Any:
    """Stable descending argsort of each row of the float scores ``s`` (B, M).

    Ties keep the lower position first; ``s`` holds no NaN. NumPy fast paths
    (same permutation as the stable sort): ``nearly_sorted`` rows (the merged
    scores of every round after the first, which mostly follow pair order) go
    to NumPy's adaptive stable sort (timsort, ~10x faster on such rows; the
    packed keys below are no faster there, measured). Other float32 rows are
    packed with their position into unique uint64 keys, which NumPy *sorts*
    (not argsorts) with its vectorized quicksort -- unique keys make any sort
    the stable one -- and the positions are read back from the low 32 bits:
    ~2.5x faster than an argsort of the same keys, ~5x faster than timsort.
    """
    if is_numpy_array(s):
        import numpy as np

        B, M = s.shape
        packable = s.dtype == np.float32 and M <= 1 << 32 and sys.byteorder == "little" and np.intp().itemsize == 8
        if nearly_sorted or not packable:
            return np.argsort(-s, axis=-1, kind="stable")
        # Order-preserving map of -s to uint32: flip every bit of negatives, the sign bit of
        # the others (0.0 - s also turns -0.0 into 0.0, so signed zeros tie).
        neg = np.subtract(np.float32(0.0), s, dtype=np.float32).view(np.int32)
        flip = neg >> np.int32(31)
        flip |= np.int32(-(1 << 31))
        flip ^= neg
        key = np.empty((B, M, 2), dtype=np.uint32)  # (low, high) words of a little-endian uint64
        key[..., 1] = flip.view(np.uint32)
        key[..., 0] = np.arange(M, dtype=np.uint32)
        packed = key.view(np.uint64)[..., 0]
        packed.sort(axis=-1)
        packed &= np.uint64(0xFFFFFFFF)
        return packed.view(np.intp)
    return neutral_argsort_descending(xp, s)


def neutral_argsort_descending(xp: Any, s: Any) -> Any:
    """The pure Array API stable descending argsort."""
    return xp.argsort(s, axis=-1, descending=True, stable=True)


def take_along_last(xp: Any, x: Any, idx: Any) -> Any:
    """``take_along_axis(x, idx, axis=-1)`` for 2-D ``x`` (B, N) and ``idx`` (B, K).

    NumPy's ``take_along_axis`` builds a broadcast fancy index; a flat ``take``
    with batch offsets is 2-3x faster and gives the same result.
    """
    return take_along_last_many(xp, [x], idx)[0]


def take_along_last_many(xp: Any, xs: list[Any], idx: Any) -> list[Any]:
    """:func:`take_along_last` of several (B, N) arrays by the same ``idx``; on NumPy the
    flat index is computed once for all arrays of the first one's shape."""
    if xs and is_numpy_array(idx) and all(is_numpy_array(x) for x in xs):
        import numpy as np

        def flat_index(N: int) -> Any:
            return idx + (np.arange(idx.shape[0], dtype=idx.dtype) * N)[:, None]

        shared = flat_index(xs[0].shape[-1])
        return [np.take(x.reshape(-1), shared if x.shape == xs[0].shape else flat_index(x.shape[-1])) for x in xs]
    return [xp.take_along_axis(x, idx, axis=-1) for x in xs]


def all_true_on_host(xp: Any, x: Any) -> bool | None:
    """``bool(all(x))`` for NumPy arrays and CPU tensors, else None.

    Lets host arrays skip work that a cheap check proves unnecessary, without
    ever synchronizing with a GPU (device arrays, and libraries not known to
    be host-only, get None). JAX arrays get None even on the CPU: under
    ``jit`` they are tracers, whose values are unknown.
    """
    if is_numpy_array(x) or (is_torch_array(x) and x.device.type == "cpu"):
        return bool(xp.all(x))
    return None


def all_finite_on_host(xp: Any, x: Any) -> bool | None:
    """``bool(all(isfinite(x)))`` for NumPy arrays and CPU tensors, else None (no device sync,
    and no work at all off the host)."""
    if is_numpy_array(x) or (is_torch_array(x) and x.device.type == "cpu"):
        return bool(xp.all(xp.isfinite(x)))
    return None
