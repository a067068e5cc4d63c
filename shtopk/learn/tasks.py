"""The learning tasks: a scorer must learn which k of n items to keep.

Each task builds items ``E`` (B, n, d) from an input, a scorer that maps the
input to scores ``v`` (B, n), and a head that predicts the target from the
*sum* of the pooled rows. Only the pooled rows reach the head, so the scorer
learns only through the gradient the operator passes to ``v``.

- :class:`Digits`: pixel selection on scikit-learn's bundled 8x8 digits
  (1797 images, no download). Item i is pixel i: its value times the one-hot
  of its position, and that one-hot (so the pooled sum is the masked image and
  the mask). The scorer sees the whole image; the classifier sees only the
  pooled pixels. Metric: test accuracy. No known relevant set.
- :class:`Needles`: a synthetic long sequence of n tokens with 8 features.
  Exactly k tokens are relevant, by a non-linear (XOR) rule on two "key"
  features that a linear scorer cannot express; the target is a fixed linear
  function of the relevant tokens' 6 "content" features, summed. Metric: test
  R^2; recall of the relevant tokens is defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

LEARN_EXTRA = 'the learning benchmark needs scikit-learn and matplotlib: pip install "shtopk[learn]"'


def _mlp(n_in: int, hidden: int, n_out: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))


@dataclass
class Batch:
    """Inputs ``x``, targets ``y`` and, where known, the relevant items (B, n)."""

    x: torch.Tensor
    y: torch.Tensor
    relevant: torch.Tensor | None = None


@dataclass
class Digits:
    """Keep k of the 64 pixels of a digit, classify from them."""

    k: int
    n: int = 64
    d: int = 128
    batch_size: int = 64
    metric_name: str = "accuracy"
    chance: float = 0.1
    data: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"digits n={self.n} k={self.k}"

    def load(self) -> None:
        """The bundled data set, split 2:1 into train and test once (same split for every seed)."""
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(LEARN_EXTRA) from e
        if self.data:
            return
        X, y = load_digits(return_X_y=True)
        X = torch.as_tensor(X, dtype=torch.float32) / 16.0
        y = torch.as_tensor(y)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        cut = (2 * len(y)) // 3
        self.data = {"train": Batch(X[perm[:cut]], y[perm[:cut]]), "test": Batch(X[perm[cut:]], y[perm[cut:]])}

    def models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Scorer (image -> 64 scores) and classifier (pooled sum -> 10 logits)."""
        return _mlp(64, 64, 64), _mlp(self.d, 64, 10)

    def sample(self, gen: torch.Generator) -> Batch:
        train = self.data["train"]
        idx = torch.randint(len(train.y), (self.batch_size,), generator=gen)
        return Batch(train.x[idx], train.y[idx])

    def test(self) -> Batch:
        return self.data["test"]

    def items(self, x: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=x.dtype)
        return torch.cat([x[:, :, None] * eye, eye.expand(len(x), -1, -1)], dim=-1)

    def scores(self, scorer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return scorer(x)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(pred, y)

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> float:
        return float((pred.argmax(-1) == y).float().mean())


@dataclass
class Needles:
    """Find the k relevant tokens of n (XOR rule on two key features); regress a sum of their content."""

    n: int
    k: int
    d: int = 8
    batch_size: int = 32
    test_size: int = 512
    metric_name: str = "R2"
    chance: float = 0.0
    data: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"needles n={self.n} k={self.k}"

    def load(self) -> None:
        if self.data:
            return
        gen = torch.Generator().manual_seed(1234)
        w = torch.randn(self.d - 2, generator=gen)
        self.data = {"w": w / w.norm()}
        self.data["test"] = self._draw(self.test_size, gen)

    def _draw(self, size: int, gen: torch.Generator) -> Batch:
        n, k = self.n, self.k
        x = torch.randn(size, n, self.d, generator=gen)
        # the two key features: magnitudes in [0.5, 1.5]; relevant iff their signs agree
        magnitude = 0.5 + torch.rand(size, n, 2, generator=gen)
        relevant = torch.zeros(size, n, dtype=torch.bool)
        relevant.scatter_(1, torch.rand(size, n, generator=gen).argsort(dim=1)[:, :k], True)
        s1 = torch.where(torch.rand(size, n, generator=gen) < 0.5, -1.0, 1.0)
        s2 = torch.where(relevant, s1, -s1)
        x[..., 0], x[..., 1] = s1 * magnitude[..., 0], s2 * magnitude[..., 1]
        y = (x[..., 2:] @ self.data["w"] * relevant).sum(-1) / math.sqrt(k)
        return Batch(x, y, relevant)

    def models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Token scorer (8 -> 32 -> 1, shared over tokens) and a linear head on the pooled sum."""
        return _mlp(self.d, 32, 1), torch.nn.Linear(self.d, 1)

    def sample(self, gen: torch.Generator) -> Batch:
        return self._draw(self.batch_size, gen)

    def test(self) -> Batch:
        return self.data["test"]

    def items(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scores(self, scorer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return scorer(x).squeeze(-1)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(pred.squeeze(-1), y)

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> float:
        residual = ((pred.squeeze(-1) - y) ** 2).mean()
        return float(1.0 - residual / y.var(unbiased=False))


Task = Digits | Needles
