"""The reproduction CLI never ends in a traceback, and never loses a run's data (issue 7)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import pytest

from shtopk.reproduce import main

SMALL = ["--n", "16", "--k", "2", "--batches", "1", "--no-progress"]


def one_line_error(capsys, argv, expected):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("shtopk-reproduce: error: ") and "\n" not in err and expected in err


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_cupy_without_cupy(tmp_path, capsys):
    one_line_error(capsys, [*SMALL, "--backend", "cupy", "--out", str(tmp_path)], "CuPy is not installed")


def test_bfloat16_with_numpy(tmp_path, capsys):
    one_line_error(capsys, [*SMALL, "--dtype", "bfloat16", "--out", str(tmp_path)], "bfloat16 needs --backend torch")


def test_cuda_device_on_a_cpu_torch(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch has a CUDA GPU")
    one_line_error(capsys, [*SMALL, "--backend", "torch", "--device", "cuda", "--out", str(tmp_path)], "'cuda'")
    one_line_error(capsys, [*SMALL, "--backend", "torch", "--device", "gpu0", "--out", str(tmp_path)], "'gpu0'")


def test_without_matplotlib_the_data_is_written_and_the_figures_skipped(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    status = main([*SMALL, "--methods", "sh-authors", "hard", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status in (0, 1)
    assert "figures skipped: matplotlib is not installed" in out
    assert len(list(csv.DictReader(open(tmp_path / "measurements.csv")))) == 2
    assert json.loads((tmp_path / "environment.json").read_text())["reproduced"] in (True, False)
    assert not (tmp_path / "figure1_time.png").exists()


def test_an_off_grid_run_is_not_compared(tmp_path, capsys):
    status = main(["--n", "100", "--k", "3", "--batches", "1", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "not compared" in out and "reproduced" not in out
    assert json.loads((tmp_path / "environment.json").read_text())["reproduced"] == "not compared"
    assert len(list(csv.DictReader(open(tmp_path / "measurements.csv")))) == 4  # one batch of 4 methods
    # without the authors' weighting nothing is compared either, even on the grid
    main([*SMALL, "--methods", "hard", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "environment.json").read_text())["reproduced"] == "not compared"
