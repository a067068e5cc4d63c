"""The one-call device check script parses, documents itself and plans its steps (no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "asv_benchmarks" / "device_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the device check is a bash script")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60)


def test_script_parses():
    result = run("-n", str(SCRIPT))
    assert result.returncode == 0, result.stderr


def test_help_describes_the_steps():
    result = run(str(SCRIPT), "--help")
    assert result.returncode == 0, result.stderr
    for words in ("--fetch-wheels", "gpu_table.py", "track_commits.py", "8 minutes", "summary.txt"):
        assert words in result.stdout


def test_dry_run_plans_every_step_within_budget(tmp_path):
    result = run(str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--commits", "abc123 def456")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pytest" in out and "-k 'cupy or cuda or gpu'" in out
    assert "gpu_table.py --backend torch cupy" in out
    assert "track_commits.py abc123 def456 --bench DeviceTime" in out
    budgets = [int(part.split("s)")[0]) for part in out.split("(at most ")[1:]]
    # the three steps, and the install when .whl/ holds wheels: all inside 8 minutes, with room to start
    assert len(budgets) in (3, 4) and sum(budgets) <= 8 * 60 - 10
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_unknown_arguments_are_refused():
    result = run(str(SCRIPT), "--frobnicate")
    assert result.returncode == 2 and "unknown argument" in result.stderr
