"""The default boost follows the documented rule on the committed measurement."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import shtopk

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_default_boost_is_what_the_committed_study_selects():
    spec = importlib.util.spec_from_file_location("boost_study", DOCS / "scripts" / "boost_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    with open(DOCS / "_static" / "boost_study.csv") as f:
        rows = [
            {**r, "n": int(r["n"]), "k": int(r["k"]), "boost": float(r["boost"]), "nccs": float(r["nccs"])}
            for r in csv.DictReader(f)
        ]
    assert len({(r["n"], r["k"]) for r in rows}) == 85  # the whole paper grid
    assert study.default_boost(rows) == shtopk.DEFAULT_BOOST
