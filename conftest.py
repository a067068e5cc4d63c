"""Collection settings for the whole repository (``pytest`` also collects the doctests of ``shtopk/``)."""

import importlib.util

# The Triton kernels module imports Triton: without the optional extra, leave it out of the
# doctest collection (tests/test_kernels_triton.py skips itself with the reason).
collect_ignore = [] if importlib.util.find_spec("triton") else ["shtopk/_kernels/triton_kernels.py"]
