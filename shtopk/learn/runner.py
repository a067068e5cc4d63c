"""Train one (task, operator, seed) and evaluate it; run a whole grid."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import shtopk

from .operators import Operator
from .tasks import Batch, Task


@dataclass
class Result:
    """One training run: final test metrics and the learning curve."""

    task: str
    n: int
    k: int
    operator: str
    seed: int
    steps: int
    metric_name: str
    hard: float  # test metric when the head sees exactly the top-k of the learnt scores
    soft: float  # test metric through the operator it was trained with
    recall: float  # share of the relevant items among the top-k of the learnt scores (NaN if undefined)
    ms_per_step: float
    curve: list[tuple[int, float, float, float]]  # (step, hard, soft, recall)


def _forward(
    task: Task, op: Operator, scorer, head, batch: Batch, *, hard: bool, progress: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    E = task.items(batch.x)
    if op.name == "oracle":
        if batch.relevant is None:
            raise ValueError(f"the oracle needs a task whose relevant items are known, not {task.name!r}")
        v = batch.relevant.to(E.dtype)
    else:
        v = task.scores(scorer, batch.x)
    if hard and op.name != "all-items":
        pooled = shtopk.hard_topk(E, v, task.k).values
    else:
        pooled = op.pool_at(progress)(E, v, task.k)
    return head(pooled.sum(-2)), v


@torch.no_grad()
def evaluate(task: Task, op: Operator, scorer, head) -> tuple[float, float, float]:
    """(hard metric, soft metric, recall) on the task's test set."""
    test = task.test()
    pred_hard, v = _forward(task, op, scorer, head, test, hard=True)
    pred_soft, _ = _forward(task, op, scorer, head, test, hard=False)
    recall = float("nan")
    if test.relevant is not None:
        top = torch.topk(v, task.k, dim=-1).indices
        recall = float(test.relevant.gather(-1, top).float().mean())
    return task.metric(pred_hard, test.y), task.metric(pred_soft, test.y), recall


def train(task: Task, op: Operator, seed: int, steps: int, *, evals: int = 8, lr: float = 3e-3) -> Result:
    """Adam on scorer and head together, ``steps`` minibatches; the test set is scored ``evals`` times."""
    task.load()
    torch.manual_seed(seed)
    scorer, head = task.models()
    op, own = op.instance()  # a learnt boost: its parameter, fresh for this run
    params = list(scorer.parameters()) + list(head.parameters()) + own
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(10_000 + seed)
    checkpoints = {round(steps * (i + 1) / evals) for i in range(evals)}
    curve = [(0, *evaluate(task, op, scorer, head))]
    busy = 0.0
    for step in range(1, steps + 1):
        batch = task.sample(gen)
        start = time.perf_counter()
        pred, _ = _forward(task, op, scorer, head, batch, hard=False, progress=(step - 1) / max(1, steps - 1))
        loss = task.loss(pred, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        busy += time.perf_counter() - start
        if step in checkpoints:
            curve.append((step, *evaluate(task, op, scorer, head)))
    hard, soft, recall = curve[-1][1:]
    return Result(
        task=task.name.split()[0],
        n=task.n,
        k=task.k,
        operator=op.name,
        seed=seed,
        steps=steps,
        metric_name=task.metric_name,
        hard=hard,
        soft=soft,
        recall=recall,
        ms_per_step=1e3 * busy / steps,
        curve=curve,
    )
