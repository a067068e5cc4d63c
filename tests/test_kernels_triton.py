"""The Triton GPU kernels: checked on a CPU in CI, and at full size on a GPU.

Three layers, so that CI without a GPU still checks every kernel:

- Triton's interpreter runs every kernel on tiny torch CPU tensors against the
  neutral core (``tests/triton_interpreter_cases.py``, in a subprocess with
  ``TRITON_INTERPRET=1``: the interpreter must be on before Triton is imported).
- A compile-only check builds every kernel for sm_90 (Hopper), which catches
  what the interpreter accepts but the compiler rejects.
- With a GPU, the public operators run on torch CUDA and CuPy at full size
  (the Triton engine against ``SHTOPK_KERNELS=neutral`` on the same device);
  they are skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install '.[triton]')")
torch = pytest.importorskip("torch", reason="the Triton kernels are tested on torch tensors")

import shtopk  # noqa: E402
from shtopk import _kernels  # noqa: E402
from shtopk._kernels import triton_ops  # noqa: E402

CASES = Path(__file__).with_name("triton_interpreter_cases.py")
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "bfloat16": dict(rtol=1.6e-2, atol=1.6e-2)}


def test_every_kernel_under_the_interpreter():
    root = str(Path(shtopk.__file__).resolve().parents[1])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", str(CASES)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"the interpreter cases failed:\n{report}"
    assert " passed" in report and "skipped" not in report.splitlines()[-1], report


def test_engine_choice(monkeypatch):
    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)
    cpu_engine = "numba" if _kernels.cpu.available() else "neutral"
    assert _kernels.engine(torch.zeros(2)) == cpu_engine  # CPU tensors never take the GPU kernels
    monkeypatch.setattr(_kernels, "_on_gpu", lambda arrays: True)
    monkeypatch.setattr(_kernels.cpu, "serves", lambda *arrays: False)  # as for CUDA tensors
    assert _kernels.engine(torch.zeros(2)) == "triton"
    monkeypatch.setenv("SHTOPK_KERNELS", "numpy")
    assert _kernels.engine(torch.zeros(2)) == "neutral"
    monkeypatch.setenv("SHTOPK_KERNELS", "triton")
    assert _kernels.engine(torch.zeros(2)) == "triton"


@pytest.mark.parametrize(("dtype", "triton_type"), [("float32", "*fp32"), ("float16", "*fp16"), ("int64", "*i64")])
def test_cupy_arrays_travel_as_pointers(dtype, triton_type):
    from triton.runtime.jit import mangle_type

    class FakeCupyArray:  # what the wrapper reads of a CuPy array: .data.ptr and a NumPy dtype
        class data:
            ptr = 4096 * 3

    FakeCupyArray.dtype = np.dtype(dtype)
    wrapped = triton_ops._CupyPointer(FakeCupyArray())
    assert wrapped.data_ptr() == 4096 * 3
    assert mangle_type(wrapped) == triton_type  # Triton takes it as a pointer argument of that type


# ---------------------------------------------------------------- compile-only check for sm_90


def _signature(fn, types, constexprs):
    return {name: "constexpr" if name in constexprs else types.get(name, "*fp32") for name in fn.arg_names}


def _compile_cases(K):
    ints = dict.fromkeys(("n", "m", "k", "R", "M", "M0", "P", "d", "rows_total", "p_chunk"), "i32")
    floats = {"boost": "fp32", "log_boost": "fp32"}
    plan = {**ints, **floats, "key_ws_ptr": "*i64", "order_ptr": "*i64", "perm_ptr": "*i64", "lov_ptr": "*i8"}
    flags = dict(POWER=True, RECORD=True)
    return [
        (K.plan_rows_kernel, plan, dict(flags, PRECISE=True, SORT_SLOTS=True, BLOCK=64), 4),
        (K.plan_round_kernel, {**plan, "sorted_ptr": "*i64"}, dict(flags, PRECISE=True, BLOCK=128), 4),
        (
            K.expand_kernel,
            {**ints, "slots_ptr": "*i64", "order_ptr": "*i64", "valid_ptr": "*i8", "poison_ptr": "*i8"}
            | {"idx_ptr": "*i64", "slot_of_row_ptr": "*i64"},
            dict(MASK=True, RECORD=True, BLOCK=256),
            4,
        ),
        (
            K.gather_sum_kernel,
            {**ints, "idx_ptr": "*i64", "E_ptr": "*bf16", "out_ptr": "*bf16"},
            dict(BLOCK_P=16, BLOCK_D=128),
            4,
        ),
        (
            K.tournament_backward_kernel,
            {**plan, "grad_cap": "fp32", "log_log_boost": "fp32"},
            dict(POWER=True, PRECISE=True, BLOCK=1024),
            4,
        ),
        # Triton specializes integer arguments equal to 1 as constants (n = k = 1): loops that
        # reassign them must still compile
        (K.plan_rows_kernel, plan, dict(flags, PRECISE=True, SORT_SLOTS=True, BLOCK=16, n=1, M0=1, m=1, k=1), 4),
        (
            K.tournament_backward_kernel,
            {**plan, "grad_cap": "fp32", "log_log_boost": "fp32"},
            dict(POWER=False, PRECISE=True, BLOCK=16, m=1, k=1),
            4,
        ),
        (
            K.rows_backward_kernel,
            {**ints, "dv_ptr": "*fp16", "slot_ptr": "*i64", "E_ptr": "*fp16", "dE_ptr": "*fp16"},
            dict(NEED_DE=True, NEED_DW=True, BLOCK_R=16, BLOCK_D=128),
            4,
        ),
    ]


def _cuda_compiler_reason() -> str | None:
    from triton.backends import backends

    if "nvidia" not in backends:
        return "this Triton build has no CUDA backend"
    compiler_dir = Path(sys.modules[backends["nvidia"].compiler.__module__].__file__).parent
    if not list(compiler_dir.glob("bin/ptxas*")) and not shutil.which("ptxas"):
        return "this Triton build ships no ptxas"
    return None


@pytest.mark.parametrize(
    "index",
    range(8),
    ids=[
        "plan_rows",
        "plan_round",
        "expand",
        "gather_sum",
        "tournament_backward",
        "plan_rows_n1",
        "tournament_backward_m1",
        "rows_backward",
    ],
)
def test_kernels_compile_for_sm90(index):
    reason = _cuda_compiler_reason()
    if reason:
        pytest.skip(reason)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set for the whole session: the kernels module holds interpreted kernels")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from shtopk._kernels import triton_kernels

    fn, types, constexprs, num_warps = _compile_cases(triton_kernels)[index]
    source = ASTSource(fn, _signature(fn, types, constexprs), constexprs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "enable_fp_fusion": False}
    )
    assert compiled.asm["cubin"]


# ---------------------------------------------------------------- on a GPU, at full size


def _gpu_inputs(backend, rng, B, n, d, dtype):
    E = backend.asarray(rng.normal(size=(B, n, d)), dtype)
    v_np = rng.normal(size=(B, n))
    v_np[0, 7] = np.nan  # row 0 poisoned
    v = backend.asarray(v_np, dtype)
    mask = backend.asarray(rng.random((B, n)) < 0.9)
    return E, v, mask


@pytest.mark.parametrize(("weighting", "order"), [("softmax", "score"), ("power", "input")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("n", "k"), [(1000, 64), (5000, 8), (3000, 3000)], ids=["one-program", "per-round", "k=n"])
@pytest.mark.parametrize("backend", ["cupy", "torch-cuda"], indirect=True)  # skipped with the reason without a GPU
def test_gpu_operator_equals_neutral(backend, monkeypatch, rng, dtype, n, k, weighting, order):
    monkeypatch.delenv("SHTOPK_KERNELS", raising=False)
    E, v, mask = _gpu_inputs(backend, rng, 4, n, 96, dtype)
    assert _kernels.engine(E, v) == "triton"
    dv = backend.asarray(rng.normal(size=(4, k, 96)), dtype)
    opts = dict(weighting=weighting, order=order, mask=mask, boost=3.0 if weighting == "power" else 10.0)
    results = {}
    for choice in ("auto", "neutral"):
        monkeypatch.setenv("SHTOPK_KERNELS", choice)
        p = shtopk.plan(v, k, **opts)
        out, pullback = shtopk.vjp.successive_halving_topk(E, v, k, **opts)
        results[choice] = [p.indices, p.weights, out.values, out.scores, *pullback(dv)]
    for i, (g, w) in enumerate(zip(results["auto"], results["neutral"], strict=True)):
        g, w = backend.to_numpy(g), backend.to_numpy(w)
        if i == 0:
            np.testing.assert_array_equal(g, w)
            continue
        scale = max(1.0, float(np.nanmax(np.abs(w), initial=0.0)))  # dv sums many terms: tolerance by magnitude
        rtol, atol = (1.6e-2, 1.6e-2) if dtype == "bfloat16" else (1e-4, 1e-5)
        np.testing.assert_allclose(g, w, equal_nan=True, rtol=rtol, atol=atol * scale)


def test_gpu_torch_has_no_host_synchronization(rng):
    if not torch.cuda.is_available():
        pytest.skip("torch-cuda: torch sees no CUDA GPU")
    E = torch.randn(8, 2000, 64, device="cuda", requires_grad=True)
    v = torch.randn(8, 2000, device="cuda", requires_grad=True)
    mask = torch.rand(8, 2000, device="cuda") < 0.9
    shtopk.successive_halving_topk(E, v, 16, mask=mask)  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = shtopk.successive_halving_topk(E, v, 16, mask=mask)
        (out.values.sum() + out.scores.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(E.grad).all()


def test_gpu_cupy_stays_on_its_stream_and_device(rng):
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        pytest.skip(f"cupy cannot use a GPU here: {exc}")
    if count < 1:
        pytest.skip("cupy sees no GPU")
    dev = count - 1  # a non-zero device where there are several
    with cupy.cuda.Device(dev):
        E = cupy.asarray(rng.normal(size=(4, 3000, 32)), dtype=cupy.float32)
        v = cupy.asarray(rng.normal(size=(4, 3000)), dtype=cupy.float32)
        want = shtopk.successive_halving_topk(E, v, 8)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            got = shtopk.successive_halving_topk(E, v, 8)
        stream.synchronize()
    assert got.values.device.id == dev
    np.testing.assert_allclose(cupy.asnumpy(got.values), cupy.asnumpy(want.values), rtol=1e-5, atol=1e-6)
