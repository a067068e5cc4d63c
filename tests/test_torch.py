"""PyTorch integration: the module, autograd dispatch, training, devices."""

from __future__ import annotations

import numpy as np
import pytest

import shtopk

torch = pytest.importorskip("torch")
from shtopk.torch import SuccessiveHalvingTopK  # noqa: E402


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch-cuda: torch sees no CUDA GPU")
    return torch.device(request.param)


def test_module_matches_the_function(device):
    torch.manual_seed(0)
    E = torch.randn(2, 3, 19, 8, device=device)
    v = torch.randn(2, 3, 19, device=device)
    mask = torch.rand(2, 3, 19, device=device) < 0.8
    layer = SuccessiveHalvingTopK(5, boost=4.0, order="input")
    assert "k=5, boost=4, weighting='softmax', order='input'" in repr(layer)
    got = layer(E, v, mask)
    want = shtopk.successive_halving_topk(E, v, 5, boost=4.0, mask=mask, order="input")
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=0)
    assert got.values.device == E.device and got.values.dtype == E.dtype


def test_requires_grad_goes_through_the_custom_function(device):
    E = torch.randn(16, 4, device=device, requires_grad=True)
    v = torch.randn(16, device=device)
    out = shtopk.successive_halving_topk(E, v, 3)
    assert "TopKFunction" in type(out.values.grad_fn).__name__
    with torch.no_grad():
        assert shtopk.successive_halving_topk(E, v, 3).values.grad_fn is None


def test_a_training_step_learns_to_select_the_flagged_rows():
    """Gradients reach a scorer through v: it learns which rows to keep."""
    torch.manual_seed(0)
    n, d, k = 32, 6, 4
    scorer = torch.nn.Linear(d, 1)
    pool = SuccessiveHalvingTopK(k, boost=5.0)
    opt = torch.optim.Adam(scorer.parameters(), lr=0.05)

    def batch():
        E = torch.randn(64, n, d)
        E[..., 0] = (torch.rand(64, n) < 0.25).float()  # feature 0 flags the rows worth keeping
        return E

    for _ in range(100):
        E = batch()
        loss = -pool(E, scorer(E).squeeze(-1)).values[..., 0].mean()  # keep as many flagged rows as possible
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        E = batch()
        picked = shtopk.hard_topk(E, scorer(E).squeeze(-1), k).values[..., 0]
    assert picked.mean() > 0.95  # 8 flagged rows on average, k = 4: almost all picks flagged
    assert scorer.weight[0, 0] > scorer.weight[0, 1:].abs().max()


def test_bfloat16_module_on_device(device):
    E = torch.randn(4, 100, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(4, 100, device=device, dtype=torch.bfloat16, requires_grad=True)
    out = SuccessiveHalvingTopK(10)(E, v)
    out.values.float().sum().backward()
    assert E.grad.dtype == torch.bfloat16 and torch.isfinite(E.grad).all() and torch.isfinite(v.grad).all()


def test_gradient_memory_is_lean():
    """The autograd graph keeps E, v and O(n) plan arrays (independent of d), never copies of E."""
    B, n, d = 8, 4096, 256
    E = torch.randn(B, n, d, requires_grad=True)
    v = torch.randn(B, n, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = shtopk.successive_halving_topk(E, v, 2)
    assert saved[0] is E and saved[1] is v  # then the forward's record of the tournament
    plan_bytes = sum(x.numel() * x.element_size() for x in saved[2:])
    assert plan_bytes <= 80 * B * n  # a few numbers per item: 2% of E's 1024 bytes per row here
    assert plan_bytes < 0.1 * E.numel() * E.element_size()
    out.values.sum().backward()
    assert E.grad.shape == E.shape and v.grad.shape == v.shape


def test_the_operator_is_a_registered_custom_op():
    assert hasattr(torch.ops.shtopk, "topk") and hasattr(torch.ops.shtopk, "topk_backward")
    assert np.isfinite(float(shtopk.nccs(torch.ones(2, 3), torch.ones(2, 3))))
