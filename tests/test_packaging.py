"""What a user gets besides the code: the torch extra's message, license, type marker, citation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import shtopk

ROOT = Path(__file__).resolve().parents[1]


def test_import_shtopk_torch_without_torch_names_the_extra():
    code = "import sys; sys.modules['torch'] = None; import shtopk.torch"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert 'pip install "shtopk[torch]"' in result.stderr
    assert "ModuleNotFoundError" in result.stderr


def test_import_shtopk_does_not_need_torch():
    code = "import sys; sys.modules['torch'] = None; import shtopk, numpy; shtopk.plan(numpy.ones(2), 1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_package_ships_its_type_marker_and_license():
    assert (ROOT / "shtopk" / "py.typed").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["package-data"]["shtopk"] == ["py.typed"]
    meta = project["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert meta["authors"] and "Typing :: Typed" in meta["classifiers"]
    low = meta["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {low}" in meta["classifiers"]
    # no project URL that does not exist
    assert "urls" not in meta or all("shtopk/shtopk" not in url for url in meta["urls"].values())


def test_versions_agree():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert shtopk.__version__ == version
    assert re.search(rf"^version: {re.escape(version)}$", (ROOT / "CITATION.cff").read_text(), re.M)
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()


def test_citation_names_the_paper_and_the_software():
    text = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in text and "type: software" in text and "license: MIT" in text
    assert "preferred-citation:" in text and "Successive Halving Top-k Operator" in text
    assert "2010.15552" in text  # the paper's arXiv id
    for author in ("Pietruszka", "Borchmann", "Graliński"):
        assert author in text


def test_install_docs_do_not_promise_a_package_on_the_index():
    text = (ROOT / "docs" / "install.md").read_text()
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    assert not re.search(r"pip install (-U )?\"?shtopk\b", commands), "shtopk is not on the index"
    assert "pip install ." in commands and ".whl" in commands and "python -m build" in commands


def test_reproduce_results_are_git_ignored():
    gitignore = ROOT / ".gitignore"
    if not gitignore.exists():
        pytest.skip("not a git checkout (e.g. an extracted sdist)")
    assert "/reproduce-results/" in gitignore.read_text().splitlines()


def test_typing_user_script_runs():
    """The script that .ci/package type-checks with mypy also runs as plain Python."""
    script = ROOT / "tests" / "typing" / "user_script.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
