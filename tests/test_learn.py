"""The learning benchmark (python -m shtopk.learn): its comparators, tasks, rule and quick mode."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import shtopk  # noqa: E402
from shtopk.learn import QUICK_OPERATORS, main, report  # noqa: E402
from shtopk.learn.operators import SOFTMAX_BOOSTS, operators, perturbed, straight_through  # noqa: E402
from shtopk.learn.tasks import Digits, Needles  # noqa: E402


def test_straight_through_is_exact_forward_softmax_backward(rng):
    E = torch.as_tensor(rng.normal(size=(3, 10, 4)))
    v = torch.tensor(rng.normal(size=(3, 10)), requires_grad=True)
    out = straight_through(E, v, 3)
    hard = shtopk.hard_topk(E, v.detach(), 3).values
    torch.testing.assert_close(out, hard)
    cot = torch.as_tensor(rng.normal(size=out.shape))
    (dv,) = torch.autograd.grad((out * cot).sum(), v)
    # the same as gating the kept rows by p = softmax(v): d/dv of sum_j p_{idx_j} <E_idx_j, cot_j>
    idx = torch.topk(v.detach(), 3).indices
    p = torch.softmax(v, -1).gather(-1, idx)
    coef = (hard * cot).sum(-1)
    (want,) = torch.autograd.grad((p * coef).sum(), v)
    torch.testing.assert_close(dv, want)


def test_perturbed_topk_matches_the_smoothed_indicator():
    # n = 2, k = 1: the indicator of item 0 is P(v0 + s z0 > v1 + s z1) = Phi(gap / (s sqrt 2))
    torch.manual_seed(0)
    sigma, gap = 0.5, 0.3
    v = torch.tensor([[gap, 0.0]], dtype=torch.float64, requires_grad=True)
    E = torch.eye(2, dtype=torch.float64)[None]
    out = perturbed(sigma, samples=200_000)(E, v, 1)
    scale = sigma * math.sqrt(2.0)
    want = 0.5 * (1.0 + math.erf(gap / scale / math.sqrt(2.0)))
    assert abs(float(out[0, 0, 0]) - want) < 0.01
    (dv,) = torch.autograd.grad(out[0, 0, 0], v)
    density = math.exp(-0.5 * (gap / scale) ** 2) / math.sqrt(2 * math.pi) / scale
    assert abs(float(dv[0, 0]) - density) < 0.05 * density
    assert abs(float(dv[0, 1]) + density) < 0.05 * density


def test_needles_plants_exactly_k_relevant_tokens_by_the_xor_rule():
    task = Needles(32, 3, test_size=64)
    task.load()
    b = task.test()
    assert b.x.shape == (64, 32, 8) and b.relevant.sum(-1).eq(3).all()
    assert torch.equal(b.relevant, (b.x[..., 0] * b.x[..., 1]) > 0)
    want = (b.x[..., 2:] @ task.data["w"] * b.relevant).sum(-1) / math.sqrt(3)
    torch.testing.assert_close(b.y, want)
    # the exact top-k of the true relevance pooled and summed determines the target linearly
    pooled = shtopk.hard_topk(b.x, b.relevant.double().to(b.x.dtype), 3).values.sum(-2)
    torch.testing.assert_close(pooled[:, 2:] @ task.data["w"] / math.sqrt(3), b.y)


def test_digits_items_pool_to_the_masked_image_and_its_mask():
    task = Digits(k=5)
    task.load()
    x = task.test().x[:4]
    v = torch.as_tensor(np.random.default_rng(0).normal(size=(4, 64)), dtype=x.dtype)
    pooled = shtopk.hard_topk(task.items(x), v, 5).values.sum(-2)
    mask = torch.zeros(4, 64).scatter_(1, torch.topk(v, 5).indices, 1.0)
    torch.testing.assert_close(pooled, torch.cat([x * mask, mask], -1))


def _rows(spec):
    """results.csv-like rows from {(setting, operator): [metric per seed]}, the selection seeds first."""
    seeds = report.SELECTION_SEEDS + report.CONFIRMATION_SEEDS
    return [
        dict(task="t", n=n, k=1, operator=op, seed=s, steps=1, metric_name="m", hard=x, soft=x, recall=x, ms_per_step=1)
        for (n, op), xs in spec.items()
        for s, x in zip(seeds, xs, strict=False)
    ]


def test_default_rule_is_the_most_reliable_candidate_then_softmax_then_the_largest_boost():
    spec = {}
    for n in (1, 2):
        for b in SOFTMAX_BOOSTS:
            spec[(n, f"sh-softmax-{b:g}")] = [0.1, 0.1, 0.1]
        spec[(n, "iterative")] = [0.6, 0.7, 0.8]
        spec[(n, "oracle")] = [1.0, 1.0, 1.0]  # a reference: never "the best operator tried"
        spec[(n, "sh-power-2")] = [0.1, 0.1, 0.1]
    spec[(1, "sh-softmax-1")] = spec[(2, "sh-softmax-1")] = [0.6, 0.6, 0.6]  # shortfall 0.1 on both
    spec[(1, "sh-softmax-3")] = [0.7, 0.7, 0.7]
    spec[(2, "sh-softmax-3")] = [0.1, 0.7, 0.7]  # fails on a seed: shortfall 0.2
    assert report.shortfalls(_rows(spec))["sh-softmax-1"] == pytest.approx(0.1)
    assert report.default_boost(_rows(spec)) == 1.0
    spec[(2, "sh-softmax-3")] = [0.6, 0.6, 0.62]  # shortfall 0.093: within 0.01 of boost 1's, and larger
    assert report.choose_default(_rows(spec)) == "sh-softmax-3" and report.default_boost(_rows(spec)) == 3.0
    # power is compared (it can be the best) but never chosen, however small its shortfall
    spec[(1, "sh-power-2")] = spec[(2, "sh-power-2")] = [0.8, 0.8, 0.8]
    assert "sh-power-2" not in report.shortfalls(_rows(spec))
    assert report.shortfalls(_rows(spec))["sh-softmax-3"] == pytest.approx(0.8 - (0.6 + 0.6 + 0.62) / 3)
    assert report.choose_default(_rows(spec)) == "sh-softmax-3"
    # within 0.01 of each other, a softmax boost goes before a scale-free one (no new option) ...
    spec[(1, "sh-softmax-3")] = spec[(2, "sh-softmax-3")] = [0.795, 0.795, 0.795]
    spec[(1, "sh-scalefree-1.5")] = spec[(2, "sh-scalefree-1.5")] = [0.8, 0.8, 0.8]
    assert report.choose_default(_rows(spec)) == "sh-softmax-3"
    # ... and a clearly more reliable scale-free candidate wins (of two equal ones, the larger boost)
    spec[(1, "sh-softmax-3")] = spec[(2, "sh-softmax-3")] = [0.7, 0.7, 0.7]
    spec[(1, "sh-scalefree-1")] = spec[(2, "sh-scalefree-1")] = [0.8, 0.8, 0.8]
    assert report.choose_default(_rows(spec)) == "sh-scalefree-1.5" and report.default_boost(_rows(spec)) == 1.5
    assert report.within_noise((0.605, 0.3), (0.7, 0.1)) and not report.within_noise((0.58, 0.3), (0.7, 0.1))


def test_confirmation_seeds_never_choose_and_are_judged_against_their_own_best():
    spec = {}
    for n in (1, 2):
        spec[(n, "sh-softmax-1")] = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
        spec[(n, "sh-softmax-3")] = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]  # best, but only on the confirmation seeds
        spec[(n, "iterative")] = [0.8, 0.8, 0.8, 0.5, 0.6, 0.7]
    rows = _rows(spec)
    assert report.SELECTION_SEEDS == (0, 1, 2) and report.CONFIRMATION_SEEDS == (6, 7, 8)
    assert report.choose_default(rows) == "sh-softmax-1"  # the confirmation seeds play no part
    checks = report.confirmation(rows, "sh-softmax-1")
    assert [c[2] for c in checks] == ["sh-softmax-3", "sh-softmax-3"]
    assert checks[0][1] == pytest.approx((0.9, 0.0)) and not any(c[-1] for c in checks)
    assert not report.confirmed(rows, "sh-softmax-1") and report.confirmed(rows, "sh-softmax-3")
    text = report.verdict(rows)
    assert "within noise of the best top-k operator on 0 of 2 settings" in text
    assert "every setting in the confirmation: sh-softmax-3." in text
    spec[(2, "sh-softmax-1")] = [0.9, 0.9, 0.9, 0.995, 0.99, 0.995]  # mean 0.993 >= 1.0 - 0 - 0.01 on setting 2
    rows = _rows(spec)
    assert [c[-1] for c in report.confirmation(rows, "sh-softmax-1")] == [False, True]
    table = report.boost_table(rows)
    assert "Chosen by the rule on the selection seeds: **softmax, C = 1**" in table
    assert "NOT within noise everywhere" in table
    summary = report.table(rows)
    assert "seeds 0-2" in summary and "seeds 6-8" in summary


def test_wide_and_final_confirmations_judge_the_recorded_choices_on_their_own_seeds():
    from shtopk import DEFAULT_BOOST

    default = f"sh-softmax-{DEFAULT_BOOST:g}"
    assert report.library_default() == default and report.FIRST_CHOICE == "sh-softmax-3"
    assert report.WIDE_CONFIRMATION_SEEDS == tuple(range(9, 19))
    assert report.FINAL_CONFIRMATION_SEEDS == tuple(range(19, 29))
    assert report.SECOND_SELECTION_SEEDS == (0, 1, 2, 6, 7, 8, *range(9, 19))
    phases = [set(p) for p in report.PHASES]
    assert all(not a & b for i, a in enumerate(phases) for b in phases[i + 1 :])  # disjoint seeds

    def rows_for(seeds, judged):
        return [
            dict(task="t", n=n, k=1, operator=op, seed=s, steps=1, metric_name="m", hard=x, soft=x, recall=x)
            | dict(ms_per_step=1)
            for n in (1, 2)
            for s in seeds
            for op, x in ((judged, 0.9), ("sh-softmax-1.5", 0.95 if n == 1 else 0.9), ("iterative", 0.8))
        ]

    # without the seeds a choice was made on, the recorded choice is judged: the first on the wide seeds ...
    rows = rows_for(report.WIDE_CONFIRMATION_SEEDS, report.FIRST_CHOICE)
    assert not report.shortfalls(rows)
    text = report.verdict(rows)
    assert "Wide confirmation (seeds 9-18): sh-softmax-3 within noise of the best top-k operator on 1 of 2" in text
    assert "not on t n=1 k=1 (0.900 vs sh-softmax-1.5 0.950 ± 0.000)" in text
    assert "every setting in the wide confirmation: sh-softmax-1.5." in text
    assert "sh-softmax-3 ahead of iterative on 2 of 2 settings (seeds 9-18)." in text
    assert "Confirmation (" not in text and "Final" not in text  # no seeds of those phases ran
    assert "seeds 9-18" in report.table(rows)
    # ... and the library's default, the second choice, on the final seeds
    text = report.verdict(rows_for(report.FINAL_CONFIRMATION_SEEDS, default))
    assert f"Final confirmation (seeds 19-28): {default} within noise of the best top-k operator on 1 of 2" in text
    assert report.verdict([r for r in rows if r["operator"] == "iterative"]) == ""


def test_annealed_prototype_follows_its_schedule_through_training():
    from shtopk.learn.operators import Operator, annealed, opt_in, successive_halving
    from shtopk.learn.runner import train

    op = annealed(1.0, 10.0)
    assert op.name == "sh-anneal-1-10" and op.name in {o.name for o in opt_in()}
    E, v = torch.randn(2, 16, 3, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    for progress, boost in ((0.0, 1.0), (0.5, 10**0.5), (1.0, 10.0)):
        torch.testing.assert_close(op.pool_at(progress)(E, v, 4), successive_halving(boost)(E, v, 4))
    torch.testing.assert_close(op.pool(E, v, 4), successive_halving(10.0)(E, v, 4))  # "as trained": the last
    seen = []

    def at(progress):
        seen.append(progress)
        return op.at(progress)

    train(Needles(16, 2), Operator("probe", "prototype", op.pool, at=at), seed=0, steps=3)
    # steps at progress 0, 1/2, 1; the evaluations (the "as trained" metric) at 1
    assert [p for p in seen if p < 1.0] == [0.0, 0.5] and seen.count(1.0) == len(seen) - 2
    # opt-in prototypes are not in the full run
    assert not {o.name for o in opt_in()} & {o.name for o in operators()}


def test_learnt_boost_prototype_trains_a_fresh_boost_per_run(monkeypatch):
    from shtopk.learn import runner
    from shtopk.learn.operators import learnt_boost, opt_in, successive_halving

    op = learnt_boost(1.0, 10.0)
    assert op.name == "sh-learnt-1-10" and op.name in {o.name for o in opt_in()}
    E, v = torch.randn(2, 16, 3, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    (pool_a, (theta_a,)), (pool_b, (theta_b,)) = op.fresh(), op.fresh()
    assert theta_a is not theta_b and float(theta_a.detach()) == 0.0
    torch.testing.assert_close(pool_a(E, v, 4), successive_halving(1.0)(E, v, 4))  # starts at boost 1
    with torch.no_grad():
        theta_a.fill_(math.log(3.0) / 10.0)
    torch.testing.assert_close(pool_a(E, v, 4), successive_halving(3.0)(E, v, 4))  # boost exp(10 theta)
    torch.testing.assert_close(pool_b(E, v, 4), successive_halving(1.0)(E, v, 4))  # the other run's is its own
    # the boost's gradient reaches theta, and the runner trains it with the models
    pool_a(E, v.requires_grad_(), 4).square().sum().backward()
    assert theta_a.grad is not None and float(theta_a.grad) != 0.0
    trained = []
    instance = type(op).instance

    def spy(self):
        out = instance(self)
        trained.extend(out[1])
        return out

    monkeypatch.setattr(type(op), "instance", spy)
    runner.train(Needles(16, 2), op, seed=0, steps=3)
    assert len(trained) == 1 and float(trained[0].detach()) != 0.0  # a fresh parameter, moved by the optimizer
    plain = operators()[1]
    assert plain.instance() == (plain, [])  # operators without parameters are used as they are


def test_phases_table_counts_settings_within_noise_per_phase():
    seeds = report.SELECTION_SEEDS + report.WIDE_CONFIRMATION_SEEDS
    rows = [
        dict(task="t", n=n, k=1, operator=op, seed=s, steps=1, metric_name="m", hard=x, soft=x, recall=x, ms_per_step=1)
        for n in (1, 2)
        for s in seeds
        for op, x in (
            ("sh-softmax-1", 0.9 if s < 3 else 0.95),
            ("sh-softmax-3", 0.95 if s < 3 or n == 1 else 0.5),
            ("oracle", 1.0),
        )
    ]
    text = report.phases_table(rows)
    assert "| operator | selection, seeds 0-2 | wide confirmation, seeds 9-18 |" in text
    assert "| sh-softmax-1 | 0 of 2, 0.050 | 2 of 2, 0.000 |" in text  # the oracle is a reference, never the best
    assert "| sh-softmax-3 | 2 of 2, 0.000 | 1 of 2, 0.450 |" in text
    assert "oracle" not in text


def test_seed_ranges(capsys):
    from shtopk.learn import _seeds

    assert _seeds("9-12") == (9, 10, 11, 12) and _seeds("0,1,5-6,1") == (0, 1, 5, 6)
    with pytest.raises(SystemExit):
        main(["--seeds", "3-x"])
    assert "ranges such as 9-18" in capsys.readouterr().err


def test_cli_filters_name_what_they_reject(capsys):
    with pytest.raises(SystemExit):
        main(["--operators", "sh-softmax-1,nonsense"])
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--settings", "needles:65:4"])
    assert "needles:1024:16" in capsys.readouterr().err  # the error lists the settings, the long one included
    with pytest.raises(SystemExit):
        main(["--seeds", "0,x"])
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--jobs", "0"])
    assert "--jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    assert "--steps" in capsys.readouterr().err


def test_filters_select_settings_operators_and_seeds(tmp_path):
    args = ["--out", str(tmp_path), "--jobs", "1", "--settings", "needles:64:4", "--operators", "straight-through"]
    assert main([*args, "--seeds", "7", "--steps", "30"]) == 0
    rows = report.read_results(tmp_path / "results.csv")
    assert [(r["task"], r["n"], r["k"], r["operator"], r["seed"], r["steps"]) for r in rows] == [
        ("needles", 64, 4, "straight-through", 7, 30)
    ]
    assert not (tmp_path / "boost_table.md").exists()  # no candidate ran: no rule to apply


def test_quick_mode_writes_its_outputs_and_the_default_learns(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    rows = report.read_results(tmp_path / "results.csv")
    assert [r["operator"] for r in rows] == list(QUICK_OPERATORS)
    for r in rows:
        assert r["task"] == "needles" and (r["n"], r["k"]) == (64, 4) and r["ms_per_step"] > 0
        assert -math.inf < r["hard"] <= 1 and 0 <= r["recall"] <= 1
    with open(tmp_path / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert {int(c["step"]) for c in curves} >= {0, rows[0]["steps"]}
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    assert "| sh-default" in (tmp_path / "summary.md").read_text()
    default = next(r for r in rows if r["operator"] == "sh-default")
    chance = 4 / 64
    assert default["recall"] > 8 * chance and default["hard"] > 0.5  # the default settings learn the rule
