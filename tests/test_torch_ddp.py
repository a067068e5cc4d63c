"""Multi-process training (issue 7): DistributedDataParallel, gloo, 2 CPU processes, gives
the gradients of one process on the full batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from shtopk.torch import SuccessiveHalvingTopK  # noqa: E402

WORLD = 2
BATCH, N, D, K = 8, 24, 6, 4


class Pooler(torch.nn.Module):
    """Score the rows, keep k of them by successive halving, classify the pooled rows."""

    def __init__(self) -> None:
        super().__init__()
        self.scorer = torch.nn.Linear(D, 1)
        self.pool = SuccessiveHalvingTopK(K, boost=4.0)
        self.head = torch.nn.Linear(K * D, 1)

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        out = self.pool(E, self.scorer(E).squeeze(-1))
        return self.head(out.values.flatten(-2)).squeeze(-1)


def make_model_and_data() -> tuple[Pooler, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Pooler().double()
    E = torch.randn(BATCH, N, D, dtype=torch.float64)
    y = torch.randn(BATCH, dtype=torch.float64)
    return model, E, y


def train_step(model: torch.nn.Module, E: torch.Tensor, y: torch.Tensor) -> None:
    loss = torch.nn.functional.mse_loss(model(E), y)  # a mean over the batch: DDP averages it
    loss.backward()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, E, y = make_model_and_data()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        train_step(ddp, E[part], y[part])
        torch.save({name: p.grad for name, p in model.named_parameters()}, f"{out_dir}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_gradients_equal_one_process_on_the_full_batch(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    model, E, y = make_model_and_data()
    train_step(model, E, y)
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12)
    # the gradient reached the scorer through the operator's scores (its bias shifts every score
    # alike, which changes no weight: exactly 0 there)
    assert model.scorer.weight.grad.abs().min() > 0
