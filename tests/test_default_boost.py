"""The defaults follow the documented rules on the committed measurements."""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import shtopk

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_default_boost_is_what_the_committed_learning_benchmark_selects():
    report = pytest.importorskip("shtopk.learn.report")
    learn = DOCS / "_static" / "learn"
    full = report.read_results(learn / "results.csv")
    wide = report.read_results(learn / "wide" / "results.csv")
    final = report.read_results(learn / "final" / "results.csv")
    for rows, phases in (
        (full, report.SELECTION_SEEDS + report.CONFIRMATION_SEEDS),
        (wide, report.WIDE_CONFIRMATION_SEEDS),
        (final, report.FINAL_CONFIRMATION_SEEDS),
    ):
        settings = report.settings(rows)
        assert len(settings) >= 4 and {t for t, _, _ in settings} == {"digits", "needles"}
        seeds = defaultdict(list)
        for r in rows:
            seeds[(r["task"], r["n"], r["k"], r["operator"])].append(r["seed"])
        assert all(sorted(ran) == sorted(phases) for ran in seeds.values())  # every run on every seed of the phases
    # the first choice, on the selection seeds; the second (the default), on all 16 seeds of the earlier phases
    assert report.choose_default(full) == report.FIRST_CHOICE
    assert report.choose_default(full + wide, report.SECOND_SELECTION_SEEDS) == f"sh-softmax-{shtopk.DEFAULT_BOOST:g}"
    assert report.default_boost(full + wide, report.SECOND_SELECTION_SEEDS) == shtopk.DEFAULT_BOOST
    assert report.library_default() == f"sh-softmax-{shtopk.DEFAULT_BOOST:g}"


def test_the_nccs_study_covers_the_grid_and_the_default():
    spec = importlib.util.spec_from_file_location("boost_study", DOCS / "scripts" / "boost_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    with open(DOCS / "_static" / "boost_study.csv") as f:
        rows = [
            {**r, "n": int(r["n"]), "k": int(r["k"]), "boost": float(r["boost"]), "nccs": float(r["nccs"])}
            for r in csv.DictReader(f)
        ]
    assert len({(r["n"], r["k"]) for r in rows}) == 85  # the whole paper grid
    assert shtopk.DEFAULT_BOOST in {r["boost"] for r in rows if r["weighting"] == "softmax"}
    assert study.BOOSTS == sorted({r["boost"] for r in rows if r["weighting"] == "softmax"})


def test_boost_none_means_the_weightings_own_default(rng):
    E, v = rng.normal(size=(2, 12, 3)), rng.normal(size=(2, 12))
    for weighting, boost in (("softmax", shtopk.DEFAULT_BOOST), ("power", shtopk.DEFAULT_POWER_BASE)):
        got = shtopk.successive_halving_topk(E, v, 3, weighting=weighting)
        want = shtopk.successive_halving_topk(E, v, 3, weighting=weighting, boost=boost)
        np.testing.assert_array_equal(got.values, want.values)
        plan = shtopk.plan(v, 3, weighting=weighting, boost=None)
        np.testing.assert_array_equal(plan.weights, shtopk.plan(v, 3, weighting=weighting, boost=boost).weights)
    assert shtopk.DEFAULT_POWER_BASE == 20.0  # the authors' released base


def test_torch_layer_reports_the_resolved_default():
    torch_mod = pytest.importorskip("shtopk.torch")
    assert torch_mod.SuccessiveHalvingTopK(2, weighting="power").boost == 20.0
    assert torch_mod.SuccessiveHalvingTopK(2).boost == shtopk.DEFAULT_BOOST
