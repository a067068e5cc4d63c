"""The benchmark scripts run (tiny sizes, CPU), so that they cannot rot between GPU sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "asv_benchmarks"


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cpu_table_runs():
    out = run(str(SCRIPTS / "cpu_table.py"), "--batch", "2", "--n", "64", "--d", "8", "--k", "2", "16", "--repeat", "2")
    lines = out.strip().splitlines()
    assert "fwd/read" in lines[1] and len(lines) == 4


def test_gpu_table_runs_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    csv_path = tmp_path / "rows.csv"
    args = ["--backend", "torch", "--device", "cpu", "--n", "64", "--k", "2", "--d", "32", "--repeat", "2"]
    out = run(str(SCRIPTS / "gpu_table.py"), *args, "--out", str(csv_path))
    assert "fwd<=5x topk" in out and out.count("\n") == 4  # title, header, float32 and bfloat16 rows
    assert csv_path.read_text().count("\n") == 3
