"""The reproduction job: outputs, the published data, and its check."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from shtopk.reproduce import main
from shtopk.reproduce.evaluate import METHODS, PAPER_K, PAPER_N, Measurement, cell_data, grid, summarize
from shtopk.reproduce.published import ITERATIVE_NCCS, ITERATIVE_TIME, SH_NCCS, SH_TIME
from shtopk.reproduce.report import SHORT, comparison, figures, table


def test_published_tables_cover_the_paper_grid():
    cells = set(grid([2**a for a in range(4, 15)], [2**b for b in range(1, 12)]))
    for published in (SH_TIME, SH_NCCS, ITERATIVE_TIME, ITERATIVE_NCCS):
        assert set(published) == cells
    assert SH_NCCS[(16384, 2)] == 0.1945 and ITERATIVE_TIME[(16384, 2048)] == 2.8369


def test_data_is_seeded_per_cell_and_batch():
    a = cell_data(0, 16, 2, 0, 4)
    assert (a[0] == cell_data(0, 16, 2, 0, 4)[0]).all()
    assert not (a[1] == cell_data(0, 16, 2, 1, 4)[1]).all()
    assert a[0].shape == (16, 16, 4) and a[0].min() >= -1 and a[1].min() >= 0 and a[1].max() <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_small_run_writes_every_output(tmp_path, capsys):
    status = main(["--n", "16", "32", "--k", "2", "4", "16", "--batches", "2", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert status in (0, 1)  # 2 batches are too few to promise the 0.02 check
    assert "published nCCS" in out and "sh-auth = sh-authors" in out and "cell by cell" in out
    rows = list(csv.DictReader(open(tmp_path / "measurements.csv")))
    cells = {(int(r["n"]), int(r["k"])) for r in rows}
    assert cells == {(16, 2), (16, 4), (32, 2), (32, 4), (32, 16)}  # k < n only
    assert len(rows) == 5 * 2 * 4  # cells x batches x methods
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["backend"] == "numpy" and "numpy" in env["versions"] and env["options"]["batches"] == 2
    for name in ("figure1_time.png", "figure2_nccs.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def _summary(rng, methods, cells):
    out = {}
    for n, k in cells:
        for m in methods:
            ms = [Measurement(n, k, b, m, float(rng.uniform()), float(rng.uniform(0.01, 0.02))) for b in range(16)]
            out[(n, k, m)] = summarize(ms)[(n, k, m)]
    return out


def test_the_table_fits_100_columns_and_says_the_published_columns_are_nccs(rng):
    methods = list(METHODS)
    cells = grid(PAPER_N, PAPER_K)
    text = table(_summary(rng, methods, cells), methods)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    header = next(i for i, line in enumerate(lines) if "published nCCS" in line)
    assert "nCCS" in lines[header] and "ms/batch" in lines[header]
    assert lines[header + 1].split() == ["n", "k"] + [SHORT[m] for m in methods] * 2 + ["sh-auth", "iter"]
    rows = lines[header + 2 : header + 2 + len(cells)]
    assert [tuple(map(int, r.split()[:2])) for r in rows] == cells
    n, k = cells[-1]
    assert float(rows[-1].split()[-2]) == SH_NCCS[(n, k)] and float(rows[-1].split()[-1]) == ITERATIVE_NCCS[(n, k)]


def test_the_table_names_cells_with_noisy_timings(rng):
    methods = ["sh-default", "iterative"]
    summary = _summary(rng, methods, [(16, 2), (256, 8)])
    assert "noisy" not in table(summary, methods)  # every batch within 2x of the median
    s = summary[(256, 8, "iterative")]
    summary[(256, 8, "iterative")] = s._replace(seconds_max=45 * s.seconds)
    text = table(summary, methods)
    assert "noisy timings (slowest batch >= 3x the median) in 1 of 4 cells" in text
    assert "n=256 k=8 iterative" in text and "(45x the median)" in text


def test_summaries_keep_the_spread_over_batches():
    ms = [Measurement(16, 2, b, "hard", nccs, s) for b, (nccs, s) in enumerate([(0.5, 3.0), (1.0, 1.0), (0.9, 2.0)])]
    s = summarize(ms)[(16, 2, "hard")]
    assert s == pytest.approx((0.8, 2.0, 0.5, 1.0, 1.0, 3.0))
    assert (s.nccs_min, s.nccs_max, s.seconds, s.seconds_min, s.seconds_max) == (0.5, 1.0, 2.0, 1.0, 3.0)


def test_figures_label_the_device_of_every_curve(tmp_path, rng, monkeypatch):
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.plot

    def plot(self, *args, label=None, **kw):
        labels.append(label)
        return original(self, *args, label=label, **kw)

    fills = []
    original_fill = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    monkeypatch.setattr(
        matplotlib.axes.Axes, "fill_between", lambda self, *a, **kw: fills.append(a) or original_fill(self, *a, **kw)
    )
    methods = ["sh-authors", "hard"]
    paths = figures(_summary(rng, methods, [(16, 2), (64, 2)]), tmp_path, methods, "Test CPU")
    assert [p.name for p in paths] == ["figure1_time.png", "figure2_nccs.png"]
    assert set(labels) == {
        "sh-authors: ours, Test CPU",
        "sh-authors: published, NVIDIA A100",
        "hard: ours, Test CPU",
    }
    assert len(fills) == 2 * len(methods)  # a min-max band for every curve of ours, in both figures
    lo, hi = fills[0][1], fills[0][2]
    assert all(a <= b for a, b in zip(lo, hi, strict=True))


def test_the_check_fails_beyond_the_tolerance():
    summary = {(16, 2, "sh-authors"): (SH_NCCS[(16, 2)] + 0.03, 0.01), (32, 2, "sh-authors"): (SH_NCCS[(32, 2)], 0.01)}
    text, ok = comparison(summary)
    assert not ok and "n=16 k=2: difference +0.0300" in text
    summary[(16, 2, "sh-authors")] = (SH_NCCS[(16, 2)] - 0.019, 0.01)
    assert comparison(summary)[1]


def test_module_and_console_script_entry_points(tmp_path):
    args = ["--n", "16", "--k", "2", "--batches", "16", "--methods", "sh-authors", "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "shtopk.reproduce", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reproduced" in result.stdout
    assert "100.0%" in result.stderr  # the progress bar


def test_a_jax_run_matches_the_numpy_run(tmp_path):
    pytest.importorskip("jax", reason="jax is not installed")
    args = ["--n", "16", "--k", "4", "--batches", "2", "--methods", "sh-authors", "hard", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "np")]) in (0, 1)
    assert main([*args, "--backend", "jax", "--device", "cpu", "--out", str(tmp_path / "jax")]) in (0, 1)
    rows = {b: list(csv.DictReader(open(tmp_path / b / "measurements.csv"))) for b in ("np", "jax")}
    assert len(rows["jax"]) == 2 * 2
    for a, b in zip(rows["np"], rows["jax"], strict=True):
        assert a["method"] == b["method"] and float(a["nccs"]) == pytest.approx(float(b["nccs"]), abs=1e-5)
    env = json.loads((tmp_path / "jax" / "environment.json").read_text())
    assert env["backend"] == "jax" and "jaxlib" in env["versions"]
