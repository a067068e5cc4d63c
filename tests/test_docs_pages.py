"""The documentation a user reads first: the landing page, code that fits the page, cross-links, the comparison."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import shtopk
import shtopk.vjp

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Characters of code that fit a code block at 1280 px without horizontal scrolling
#: (checked in headless Chromium screenshots of the built pages, API pages included).
CODE_WIDTH = 88


def fenced(path: Path, lang: str = r"\w+") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_landing_page_has_picture_example_backends_and_links():
    text = (DOCS / "index.md").read_text()
    assert "](_static/tournament.png)" in text and (DOCS / "_static" / "tournament.png").is_file()
    (example,) = fenced(DOCS / "index.md", "python")
    assert len(example.strip().splitlines()) <= 10
    namespace: dict = {}
    exec(compile(example, "index.md", "exec"), namespace)  # our own documentation
    assert namespace["out"].values.shape == (8, 16, 64)
    for library in ("NumPy", "PyTorch", "CuPy", "any Array API library"):
        assert re.search(rf"^\| {library} \|", text, re.M)
    for page in ("install", "quickstart", "api", "comparison", "reproduction", "benchmarks"):
        assert f"]({page}.md)" in text and (DOCS / f"{page}.md").is_file()


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_code_fits_the_page(path):
    blocks = fenced(path)
    long = [line for block in blocks for line in block.splitlines() if len(line) > CODE_WIDTH]
    assert not long, long


def public_objects():
    names = ["successive_halving_topk", "hard_topk", "iterative_softmax_topk", "plan", "apply", "nccs", "TopK", "Plan"]
    objs = [getattr(shtopk, name) for name in names]
    objs += [shtopk.vjp.successive_halving_topk, shtopk.vjp.hard_topk, shtopk.vjp.iterative_softmax_topk]
    try:
        torch_module = importlib.import_module("shtopk.torch")
    except ModuleNotFoundError:  # without PyTorch: its layer is not documented here
        return objs
    objs += [torch_module.SuccessiveHalvingTopK]
    return objs


@pytest.mark.parametrize("obj", public_objects(), ids=lambda o: f"{o.__module__}.{o.__qualname__}")
def test_public_docstrings_cross_link_and_fit(obj):
    pytest.importorskip("torch")  # to resolve the links to shtopk.torch
    torch_module = importlib.import_module("shtopk.torch")
    doc = inspect.getdoc(obj)
    assert "\nSee Also\n--------\n" in doc
    see_also = doc.split("\nSee Also\n--------\n")[1].split("\n\n")[0]
    for line in see_also.splitlines():
        if not line.startswith(" "):
            for name in line.split(" : ")[0].split(", "):
                target = shtopk
                for part in name.removeprefix("shtopk.").split("."):
                    target = getattr(target, part, None) or getattr(torch_module, part)
    examples = [line for line in doc.splitlines() if line.startswith((">>> ", "... "))]
    assert examples and all(len(line) <= CODE_WIDTH for line in examples)


def test_readme_says_where_the_selection_is():
    text = (ROOT / "README.md").read_text()
    assert "`plan.indices` and\n`plan.weights`" in text or "`plan.indices` and `plan.weights`" in text
    assert "soft* positions" in text or "soft positions" in text


def load_comparison():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("comparison", DOCS / "scripts" / "comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparators_reach_the_exact_top_k_in_their_limits(rng):
    c = load_comparison()
    import torch

    E = torch.from_numpy(rng.uniform(-1, 1, (3, 32, 5)))
    v = torch.from_numpy(rng.permutation(32 * 3).reshape(3, 32) / 96.0)  # distinct scores, gaps >= 0.01
    exact = c.hard(E, v, 4)
    assert torch.equal(exact, shtopk.hard_topk(E, v, 4).values)
    torch.testing.assert_close(c.sortnet(1e6)(E, v, 4), exact)  # a sharp network sorts exactly
    torch.testing.assert_close(c.perturbed(1e-6, 5)(E, v, 4), exact)  # tiny noise: the hard top-k
    # soft settings are not exact, and their gradients reach v
    for fn in (c.sortnet(30.0), c.perturbed(0.05, 200)):
        Ev, vv = E.clone().requires_grad_(), v.clone().requires_grad_()
        out = fn(Ev, vv, 4)
        assert not torch.allclose(out, exact)
        out.sum().backward()
        assert vv.grad is not None and bool(vv.grad.abs().sum() > 0) and Ev.grad is not None


def test_perturbed_gradient_estimator_matches_finite_differences_of_its_expectation(rng):
    """The Monte-Carlo gradient of the perturbed top-k agrees with a smoothed finite difference."""
    c = load_comparison()
    import torch

    torch.manual_seed(0)
    v = torch.tensor([[0.0, 0.3, 0.35, 0.4]], dtype=torch.float64)
    E = torch.eye(4, dtype=torch.float64)[None]
    G = torch.zeros(1, 1, 4, dtype=torch.float64)
    G[..., 2] = 1.0  # d/dv of the weight of item 2 in the top-1
    vv = v.clone().requires_grad_()
    (c.perturbed(0.1, 200_000)(E, vv, 1) * G).sum().backward()
    h = 1e-2
    plus, minus = v.clone(), v.clone()
    plus[0, 2] += h
    minus[0, 2] -= h
    weight = []
    for x in (plus, minus):  # common random numbers: the same noise on both sides
        torch.manual_seed(1)
        weight.append(float(c.perturbed(0.1, 200_000)(E, x, 1)[0, 0, 2]))
    fd = (weight[0] - weight[1]) / (2 * h)
    assert float(vv.grad[0, 2]) == pytest.approx(fd, rel=0.05)
    assert float(vv.grad[0, 2]) > 0  # raising item 2's score raises its weight


def test_bitonic_layers_sort(rng):
    c = load_comparison()
    for n in (2, 8, 64):
        x = list(rng.permutation(n))
        for i, j, larger_first in c._bitonic_layers(n):
            for a, b, first in zip(i.tolist(), j.tolist(), larger_first.tolist(), strict=True):
                if (x[a] < x[b]) == first:
                    x[a], x[b] = x[b], x[a]
        assert x == sorted(x, reverse=True)


def test_comparison_results_are_committed_and_complete():
    rows = list(csv.DictReader(open(DOCS / "_static" / "comparison.csv")))
    methods = {r["method"] for r in rows}
    assert {"hard", "shtopk", "iterative"} <= methods
    assert any(m.startswith("perturbed") for m in methods) and any(m.startswith("sortnet") for m in methods)
    for r in rows:
        if r["method"] == "hard":
            assert float(r["nccs"]) == 1.0
        assert float(r["fwd_ms"]) > 0 and float(r["fwd_bwd_ms"]) > 0 and 0 < float(r["nccs"]) <= 1.0001
    assert "comparison.csv" in (DOCS / "comparison.md").read_text()


def test_shtopk_matches_numpy_on_the_comparison_data():
    """The script's torch path measures the same operator as the NumPy one."""
    c = load_comparison()
    E, v = c.data(0, 64, 8, 0, 4)
    out = c.methods()["shtopk"](E, v, 8)
    expected = shtopk.successive_halving_topk(E.numpy(), v.numpy(), 8).values
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
