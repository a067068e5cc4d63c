"""The benchmark scripts run (tiny sizes, CPU), so that they cannot rot between GPU sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "asv_benchmarks"


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cpu_table_runs():
    args = ["--batch", "2", "--n", "64", "--d", "8", "--k", "2", "16", "n-1", "n", "--repeat", "2"]
    lines = run(str(SCRIPTS / "cpu_table.py"), *args).strip().splitlines()
    assert "np fwd" in lines[1] and "topk" in lines[1] and len(lines) == 6
    assert [line.split()[2] for line in lines[2:]] == ["2", "16", "63", "64"]
    assert lines[1].split()[-2:] == ["mem", "bound"]
    # values, scores, dE and dv: k/n (1 + 1/d) + 1 + 1/d of E (n = 64, d = 8)
    bounds = [float(line.split()[-1]) for line in lines[2:]]
    assert bounds == [round(k / 64 * 9 / 8 + 9 / 8, 2) for k in (2, 16, 63, 64)]
    assert all(float(line.split()[-2]) >= bound for line, bound in zip(lines[2:], bounds, strict=True))


def test_cpu_table_runs_beside_a_busy_process():
    args = ["--batch", "2", "--n", "32", "--d", "4", "--k", "2", "--repeat", "1", "--busy", "--no-torch"]
    lines = run(str(SCRIPTS / "cpu_table.py"), *args).strip().splitlines()
    assert "competing" in lines[0] and "topk" not in lines[1] and len(lines) == 3


def test_cpu_table_reruns_itself_keeping_freed_memory():
    args = ["--batch", "2", "--n", "32", "--d", "4", "--k", "2", "--repeat", "1", "--no-torch", "--keep-freed-memory"]
    lines = run(str(SCRIPTS / "cpu_table.py"), *args).strip().splitlines()
    assert "MALLOC_MMAP_THRESHOLD_=4294967296, MALLOC_TRIM_THRESHOLD_=17179869184" in lines[0] and len(lines) == 3
    plain = run(str(SCRIPTS / "cpu_table.py"), *args[:-1]).strip().splitlines()
    assert "MALLOC_" not in plain[0]


def test_cpu_table_names_how_openmp_workers_wait_where_the_environment_says():
    args = ["--batch", "2", "--n", "32", "--d", "4", "--k", "2", "--repeat", "1", "--no-torch"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    header = run(str(SCRIPTS / "cpu_table.py"), *args, env={**env, "GOMP_SPINCOUNT": "10000"}).splitlines()[0]
    assert header.endswith("GOMP_SPINCOUNT=10000; wall time, ratios to the floor, median of 1 interleaved rounds")
    assert "SPINCOUNT" not in run(str(SCRIPTS / "cpu_table.py"), *args, env=env).splitlines()[0]


def test_alloc_churn_runs_each_mode_in_a_process_of_its_own():
    pytest.importorskip("torch")
    lines = run(str(SCRIPTS / "alloc_churn.py"), "--batch", "2", "--n", "64", "--d", "8", "--k", "4", "--repeat", "2")
    lines = lines.strip().splitlines()
    assert "batch 2, n 64, d 8, k 4" in lines[0] and len(lines) == 4
    assert lines[1].lstrip().startswith("numpy: np fwd") and "torch" not in lines[1]
    assert lines[2].lstrip().startswith("torch: torch fwd") and "np fwd" not in lines[2]
    assert "np bwd" in lines[3] and "torch bwd" in lines[3]


def test_op_replay_ab_runs():
    pytest.importorskip("torch")
    args = ["--batch", "2", "--k", "4", "--repeat", "2", "--cells", "64x8"]
    lines = run(str(SCRIPTS / "op_replay_ab.py"), *args).strip().splitlines()
    assert "batch 2, k 4" in lines[0] and "mem rep/E" in lines[1] and len(lines) == 5
    assert "torch.func" in lines[2] and "torch.compile" in lines[3]


def test_gpu_table_runs_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    csv_path = tmp_path / "rows.csv"
    args = ["--backend", "torch", "--device", "cpu", "--n", "64", "--k", "2", "--d", "32", "--repeat", "2"]
    out = run(str(SCRIPTS / "gpu_table.py"), *args, "--out", str(csv_path))
    assert "fwd<=5x topk" in out and out.count("\n") == 4  # title, header, float32 and bfloat16 rows
    assert csv_path.read_text().count("\n") == 3
