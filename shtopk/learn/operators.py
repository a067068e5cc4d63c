"""The selection operators compared by the learning benchmark.

Every operator maps items ``E`` (B, n, d) and their scores ``v`` (B, n) to
pooled rows (B, k', d) that the downstream model sums; gradients must reach
``v`` for the scorer to learn. The comparators that are not part of shtopk's
API (straight-through, perturbed top-k, softmax pooling, the scale-free prototype and the
opt-in prototypes: annealed, capped scale-free and learnt boosts) live here, in the benchmark,
on purpose.

The successive-halving settings that may become the default (the
*candidates*, see :mod:`shtopk.learn.report`) are the softmax boosts and the
scale-free prototype's boosts; the power weighting is compared but is not a
candidate (it is not shift-invariant: a constant added to every score, such
as the bias of the scorer's last layer, changes its weights and can silence
its gradient; see the docs page "Choosing boost").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

import shtopk

Pool = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Operator:
    """A named comparator: ``pool(E, v, k) -> (B, k', d)`` used for training.

    An annealed operator also has ``at``: the training progress in [0, 1]
    (step / steps) -> the pool to use at that step; ``pool`` is then the
    final one (``at(1.0)``), which the "as trained" evaluation uses.

    An operator with parameters of its own (a learnt boost) has ``fresh``: a
    new ``(pool, parameters)`` per training run; the runner trains the
    parameters with the models' (:meth:`instance`).
    """

    name: str
    family: str
    pool: Pool
    note: str = ""
    at: Callable[[float], Pool] | None = None
    fresh: Callable[[], tuple[Pool, list[torch.nn.Parameter]]] | None = None

    def pool_at(self, progress: float) -> Pool:
        """The pool of training step ``progress`` (the only one unless annealed)."""
        return self.pool if self.at is None else self.at(progress)

    def instance(self) -> tuple[Operator, list[torch.nn.Parameter]]:
        """The operator for one training run and the parameters it trains (none unless ``fresh``)."""
        if self.fresh is None:
            return self, []
        pool, params = self.fresh()
        return dataclasses.replace(self, pool=pool, fresh=None), params


def successive_halving(boost: float, weighting: str = "softmax") -> Pool:
    """shtopk's operator at a fixed ``boost`` and ``weighting``."""

    def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        return shtopk.successive_halving_topk(E, v, k, boost=boost, weighting=weighting).values

    return pool


def scale_free(boost: float) -> Pool:
    """Prototype: softmax weighting on scores divided by their row's standard deviation (a constant).

    The pair gap is then measured in units of the row's score spread, so the
    boost is unitless. Benchmark-side only: it rescales the scores before the
    library's operator; the spread is treated as a constant (no gradient
    through it).
    """

    def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        spread = v.detach().std(dim=-1, keepdim=True).clamp_min(1e-6)
        return shtopk.successive_halving_topk(E, v / spread, k, boost=boost).values

    return pool


def annealed(start: float, stop: float) -> Operator:
    """Prototype: softmax weighting, boost annealed geometrically from ``start`` to ``stop`` over training."""

    def at(progress: float) -> Pool:
        return successive_halving(start * (stop / start) ** progress)

    name = f"sh-anneal-{start:g}-{stop:g}"
    return Operator(name, "prototype", at(1.0), f"softmax, boost {start:g} -> {stop:g} geometrically", at)


def learnt_boost(start: float, rate: float) -> Operator:
    """Prototype: softmax weighting whose boost is learnt with the models: ``boost = start *
    exp(rate * theta)``, ``theta`` a scalar parameter starting at 0, trained by the same optimizer
    and learning rate. Under Adam (whose steps do not depend on the gradient's scale) the log of
    the boost moves about ``rate`` times the learning rate per step. The boost scales the scores
    before the library's operator (``boost=1``): under the softmax weighting the same values as
    ``boost=start * exp(rate * theta)`` on the scores themselves."""

    def fresh() -> tuple[Pool, list[torch.nn.Parameter]]:
        theta = torch.nn.Parameter(torch.zeros(()))

        def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
            boost = start * torch.exp(rate * theta)
            return shtopk.successive_halving_topk(E, v * boost.to(v.dtype), k, boost=1.0).values

        return pool, [theta]

    name = f"sh-learnt-{start:g}-{rate:g}"
    note = f"softmax, boost learnt from {start:g} (log-rate {rate:g})"
    return Operator(name, "prototype", fresh()[0], note, fresh=fresh)


def capped_scale_free(boost: float, floor: float) -> Pool:
    """Prototype: softmax weighting on ``v / max(std(v), floor)`` (the spread a constant): the plain
    boost while the scores' spread is below ``floor``, the scale-free one above it."""

    def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        spread = v.detach().std(dim=-1, keepdim=True).clamp_min(floor)
        return shtopk.successive_halving_topk(E, v / spread, k, boost=boost).values

    return pool


def iterative(alpha: float = 1.0) -> Pool:
    """The iterative softmax baseline, :func:`shtopk.iterative_softmax_topk`."""

    def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        return shtopk.iterative_softmax_topk(E, v, k, alpha=alpha).values

    return pool


def straight_through(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Straight-through hard top-k: the exact rows forward, ``softmax(v)``'s gradient backward.

    Each kept row is multiplied by ``1 + p_i - stop_gradient(p_i)`` with
    ``p = softmax(v)``: the value is exactly the kept row, the gradient to
    ``v`` is that of softmax-weighted rows.
    """
    idx = torch.topk(v.detach(), k, dim=-1).indices
    p = torch.softmax(v, dim=-1)
    gate = (1.0 + p - p.detach()).gather(-1, idx)
    rows = E.gather(-2, idx[..., None].expand(-1, -1, E.shape[-1]))
    return rows * gate[..., None]


class _PerturbedTopK(torch.autograd.Function):
    """Perturbed top-k indicators (Berthet et al. 2020; as in Cordonnier et al. 2021).

    Forward: the mean over ``samples`` draws of ``Z ~ N(0, I)`` of the one-hot
    indicators (k, n) of the top-k of ``v + sigma Z`` (slots by descending
    perturbed score). Backward: the Monte-Carlo estimate of the Jacobian,
    ``E[indicator(v + sigma Z) Z^T] / sigma``.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, k: int, samples: int, sigma: float) -> torch.Tensor:
        B, n = v.shape
        noise = torch.randn(B, samples, n, dtype=v.dtype, device=v.device)
        idx = torch.topk(v[:, None, :] + sigma * noise, k, dim=-1).indices  # (B, M, k)
        ind = torch.zeros(B, k, n, dtype=v.dtype, device=v.device)
        ind.scatter_add_(-1, idx.transpose(1, 2), torch.full((B, k, samples), 1.0 / samples, dtype=v.dtype))
        ctx.save_for_backward(noise, idx)
        ctx.sigma = sigma
        return ind

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        noise, idx = ctx.saved_tensors
        samples = noise.shape[1]
        # sum over slots of grad[b, j, idx[b, m, j]]: the cotangent of each sample's indicator
        g = grad[:, None].expand(-1, samples, -1, -1).gather(-1, idx[..., None]).squeeze(-1).sum(-1)  # (B, M)
        dv = torch.einsum("bm,bmn->bn", g, noise) / (samples * ctx.sigma)
        return dv, None, None, None


def perturbed(sigma: float, samples: int = 64) -> Pool:
    """Perturbed top-k (Monte-Carlo, ``samples`` draws, noise scale ``sigma``)."""

    def pool(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
        return _PerturbedTopK.apply(v, k, samples, sigma) @ E

    return pool


def softmax_pooling(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Non-top-k control: one row, ``k * softmax(v) @ E`` (the mass of k kept rows)."""
    return k * (torch.softmax(v, dim=-1)[..., None, :] @ E)


def oracle_placeholder(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k of the scores it is given (the runner gives it the true relevance)."""
    return shtopk.hard_topk(E, v.detach(), k).values


def everything(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Reference without selection: all n rows (a ceiling, not a top-k)."""
    return E


#: Boosts of the softmax weighting compared (default candidates).
SOFTMAX_BOOSTS = (1.0, 1.5, 2.0, 3.0, 70.0)
#: Boosts of the scale-free prototype (softmax on ``v / std(v)``) compared (default candidates). Boosts 1 and 1.5
#: were dropped from the grid: at 600 steps they learnt the sequence task on 1 of 6 seeds at n = 64 and on none at
#: n = 256, and trailed every other candidate on digits.
SCALE_FREE_BOOSTS = (3.0,)
#: Bases of the authors' power weighting compared (20 is theirs); not default candidates.
POWER_BASES = (2.0, 20.0)


def default_successive_halving(E: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """shtopk's operator at its default settings."""
    return shtopk.successive_halving_topk(E, v, k).values


def opt_in() -> list[Operator]:
    """Prototypes tried once on the selection seeds and not adopted (see the docs page "Training with
    shtopk"); not part of the full run, run them with ``--operators``."""
    return [
        learnt_boost(1.0, 10.0),
        learnt_boost(1.0, 1.0),
        annealed(1.0, 10.0),
        annealed(1.0, 30.0),
        annealed(3.0, 30.0),
        *(
            Operator(f"sh-sfcap-3-{c:g}", "prototype", capped_scale_free(3.0, c), f"softmax on v / max(std(v), {c:g})")
            for c in (0.3, 1.0)
        ),
    ]


def operators() -> list[Operator]:
    """All comparators, in table order (``sh-default`` is the library default, for the quick mode)."""
    ops = [Operator("sh-default", "successive halving", default_successive_halving, "library defaults")]
    ops += [Operator(f"sh-softmax-{b:g}", "successive halving", successive_halving(b)) for b in SOFTMAX_BOOSTS]
    ops += [Operator(f"sh-power-{b:g}", "successive halving", successive_halving(b, "power")) for b in POWER_BASES]
    ops += [
        Operator(f"sh-scalefree-{b:g}", "prototype", scale_free(b), f"softmax on v / std(v), boost {b:g}")
        for b in SCALE_FREE_BOOSTS
    ]
    ops += [
        Operator("iterative", "baseline", iterative(1.0), "alpha 1"),
        Operator("straight-through", "baseline", straight_through, "hard forward, softmax backward"),
        Operator("perturbed-0.5", "baseline", perturbed(0.5), "sigma 0.5, 64 samples"),
        Operator("softmax-pool", "control", softmax_pooling, "not a top-k"),
        Operator("oracle", "reference", oracle_placeholder, "true relevance, exact top-k"),
        Operator("all-items", "reference", everything, "no selection"),
    ]
    return ops
