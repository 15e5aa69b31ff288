"""The strongest omniscient attacks of the literature: Min-Max and Min-Sum (Shejwalkar &
Houmansadr, NDSS 2021) and Fang et al.'s full-knowledge attack on trimmed mean and median
(USENIX Security 2020).

Like ALIE they read the (f, d) stack of the files' honest gradients, so the parameter
server simulates them (:func:`byzshield.attacks.forge`, docs/design.md section 6).
Min-Max and Min-Sum send one vector for every Byzantine copy; Fang sends one draw per
attacked file, from that file's generator (:func:`byzshield.attacks.attack_generator`),
so the copies of a file collude and every engine draws the same numbers.

Their sums over columns (norms, Gram matrices) and Fang's random vector are whole-vector
quantities: the server passes a :class:`Columns` that adds per-block partials in column
order and cuts a whole vector to the columns it holds, so a sharded parameter server
forges the bits one server does (docs/design.md section 7). Called directly, an attack
sees the whole vector (:data:`WHOLE`).

    >>> honest = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # mu = (2, 1)
    >>> MinMax(direction="sign").forge(honest, [0]).tolist()  # p = -(1, 1), gamma = 1
    [[1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from byzshield.attacks._checks import check_honest, check_own, finite
from byzshield.attacks.worker import attack_generator

__all__ = [
    "DIRECTIONS",
    "WHOLE",
    "Columns",
    "Fang",
    "MinMax",
    "MinSum",
    "deviation",
    "fang_bounds",
    "largest_root",
]

DIRECTIONS = ("unit_vec", "sign", "std")
"""Min-Max's and Min-Sum's deviation directions p (``attack.direction``)."""

Body = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class Columns:
    """The columns an attack sees of the whole gradient vector.

    ``reduce(d, body)``: the sum over the whole vector of ``body(lo, hi)``, a float64
    array computed on the local columns [lo, hi) (the server's
    :func:`byzshield.aggregators.reduce_columns`: per-block partials added in column
    order, across shards). ``total(d)``: the whole vector's length; ``cut(v, d)``: a
    whole-vector tensor cut to the local ``d`` columns."""

    reduce: Callable[[int, Body], np.ndarray]
    total: Callable[[int], int]
    cut: Callable[[Tensor, int], Tensor]


WHOLE = Columns(
    reduce=lambda d, body: np.asarray(body(0, d), dtype=np.float64),
    total=lambda d: d,
    cut=lambda v, d: v,
)
"""Every column is here (an attack called outside a server)."""


def deviation(honest: Tensor, direction: str, columns: Columns = WHOLE) -> Tensor:
    """Shejwalkar & Houmansadr's deviation p of an (n, d) float64 stack.

    ``unit_vec``: p = -mu / ||mu||; ``sign``: p = -sign(mu); ``std``: p = -sigma, the
    coordinate-wise standard deviation with ddof 1 (their code's ``torch.std``), 0 for a
    single row. mu = 0 gives p = 0 for ``unit_vec``.
    """
    mu = honest.mean(dim=0)
    d = honest.shape[1]
    mu_np = mu.numpy()
    if direction == "unit_vec":  # ||mu|| is a sum over the whole vector
        mu_norm = math.sqrt(
            float(columns.reduce(d, lambda lo, hi: np.dot(mu_np[lo:hi], mu_np[lo:hi])))
        )
        p = -mu / mu_norm if mu_norm > 0 else torch.zeros_like(mu)
    elif direction == "sign":
        p = -torch.sign(mu)
    elif direction == "std":
        n = honest.shape[0]
        p = -honest.std(dim=0, correction=1) if n > 1 else torch.zeros_like(mu)
    else:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return p


def largest_root(a: float, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The largest gamma with a gamma^2 + b gamma + c <= 0, for a > 0 and c <= 0 (so that
    gamma = 0 is feasible): (-b + sqrt(b^2 - 4 a c)) / (2 a), in the form without
    cancellation, -2 c / (b + sqrt(b^2 - 4 a c)), where b > 0."""
    c = np.minimum(c, 0.0)
    root = np.sqrt(b * b - 4.0 * a * c)
    with np.errstate(divide="ignore", invalid="ignore"):
        plus = np.where(b > 0, -2.0 * c / (b + root), (root - b) / (2.0 * a))
    return np.where(np.isfinite(plus), np.maximum(plus, 0.0), 0.0)


def _statistics(
    honest: Tensor, p: Tensor, columns: Columns
) -> tuple[np.ndarray, np.ndarray, float]:
    """The whole-vector sums Min-Max and Min-Sum need, from one reduction: the Gram
    matrix G of the centred rows c_i = g_i - mu, the projections c_i . p and p . p."""
    x = (honest - honest.mean(dim=0)).numpy()
    pv = p.numpy()
    n, d = x.shape

    def body(lo: int, hi: int) -> np.ndarray:
        block, pb = x[:, lo:hi], pv[lo:hi]
        return np.concatenate([(block @ block.T).ravel(), block @ pb, [pb @ pb]])

    sums = columns.reduce(d, body)
    return sums[: n * n].reshape(n, n), sums[n * n : n * n + n], float(sums[-1])


def min_max_gamma(honest: Tensor, p: Tensor, columns: Columns = WHOLE) -> float:
    """Min-Max's gamma: the largest gamma >= 0 with
    max_i ||mu + gamma p - g_i||^2 <= max_{i,j} ||g_i - g_j||^2 = T.

    Per honest gradient i, with c_i = g_i - mu the constraint is the quadratic
    (p.p) gamma^2 - 2 (c_i.p) gamma + ||c_i||^2 - T <= 0, feasible at 0 (mu is in the
    convex hull of the g_i, so ||c_i||^2 <= T); gamma is the smallest of the per-i
    largest roots (:func:`largest_root`). Exact (no search); 0 when p = 0.
    """
    gram, proj, pp = _statistics(honest, p, columns)
    if not pp > 0 or not math.isfinite(pp):
        return 0.0
    sq = np.diag(gram)
    dist = np.clip(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0, None)
    bound = float(dist.max())
    gamma = float(largest_root(pp, -2.0 * proj, sq - bound).min())
    return gamma if math.isfinite(gamma) else 0.0


def min_sum_gamma(honest: Tensor, p: Tensor, columns: Columns = WHOLE) -> float:
    """Min-Sum's gamma: the largest gamma >= 0 with
    sum_i ||mu + gamma p - g_i||^2 <= max_i sum_j ||g_i - g_j||^2 = S.

    The constraint is one quadratic, n (p.p) gamma^2 - 2 (sum_i c_i.p) gamma +
    sum_i ||c_i||^2 - S <= 0 (the linear term is 0 up to rounding: the c_i sum to 0),
    solved exactly (:func:`largest_root`); so gamma = max_i ||g_i - mu|| / ||p||. 0 when
    p = 0. The paper's bound is the largest sum (Shejwalkar & Houmansadr, eq. 6); their
    released code compares with the smallest.
    """
    gram, proj, pp = _statistics(honest, p, columns)
    if not pp > 0 or not math.isfinite(pp):
        return 0.0
    n = gram.shape[0]
    sq = np.diag(gram)
    dist = np.clip(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0, None)
    bound = float(dist.sum(axis=1).max())
    root = largest_root(n * pp, np.array([-2.0 * proj.sum()]), np.array([sq.sum() - bound]))
    gamma = float(root[0])
    return gamma if math.isfinite(gamma) else 0.0


def _check_direction(name: str, direction: object) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(
            f"{name}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
        )


@dataclass(frozen=True)
class MinMax:
    """Min-Max (Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model
    poisoning attacks and defenses for federated learning", NDSS 2021): every Byzantine
    copy is v = mu + gamma p, gamma the largest value with

        max_i ||v - g_i|| <= max_{i,j} ||g_i - g_j||

    over the honest file gradients g_i (mean mu): v is no farther from any honest gradient
    than two honest gradients are from each other, so distance-based rules cannot tell it
    apart. p is ``direction`` (:func:`deviation`: -mu/||mu||, -sign(mu) or -sigma).
    gamma is computed exactly from the quadratic constraints (:func:`min_max_gamma`), where
    the authors' code bisects from 10 with a cap of 20; it is 0 (v = mu) when p = 0, for a
    single honest gradient or when all are equal. ``last_factor`` is the gamma of the
    most recent step (metrics.jsonl's ``attack_factor``).

    Example (mu = (2, 1), p = -(1, 1); the largest honest distance is sqrt(10), and
    v = (1, 0) is at sqrt(10) from (2, 3))::

        >>> honest = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
        >>> attack = MinMax(direction="sign")
        >>> attack(honest[0], honest=honest).tolist(), attack.last_factor
        ([1.0, 0.0], 1.0)
    """

    direction: str = "unit_vec"
    name: ClassVar[str] = "min_max"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    gamma: ClassVar[Callable] = staticmethod(min_max_gamma)

    def __post_init__(self):
        _check_direction(self.name, self.direction)
        object.__setattr__(self, "last_factor", None)

    def vector(self, honest: Tensor, columns: Columns = WHOLE) -> Tensor:
        """v = mu + gamma p of the (n, d) honest stack, float64."""
        stats = honest.to(torch.float64)
        p = deviation(stats, self.direction, columns)
        gamma = type(self).gamma(stats, p, columns)
        object.__setattr__(self, "last_factor", gamma)
        return stats.mean(dim=0) + gamma * p

    def __call__(self, own, *, honest=None, generator=None):
        own = check_own(self.name, own)
        honest = check_honest(self.name, own, honest, min_rows=1)
        flat = honest.reshape(honest.shape[0], -1)
        return self.vector(flat).reshape(own.shape).to(own.dtype)

    def forge(self, honest: Tensor, files: list[int], *, columns: Columns = WHOLE, **_) -> Tensor:
        """One (1, d) row for every Byzantine copy."""
        return self.vector(honest, columns).to(honest.dtype).unsqueeze(0)


@dataclass(frozen=True)
class MinSum(MinMax):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): every Byzantine copy is
    v = mu + gamma p, gamma the largest value with

        sum_i ||v - g_i||^2 <= max_i sum_j ||g_i - g_j||^2

    over the honest file gradients g_i: v's summed squared distance to the honest
    gradients is no larger than an honest gradient's (Krum's score, without the
    neighbour cut). p as for :class:`MinMax`; gamma exact (:func:`min_sum_gamma`:
    max_i ||g_i - mu|| / ||p||), 0 when p = 0.

    Example (mu = (2, 1); the farthest honest gradient, (2, 3), is at 2 from mu and
    p = -(2, 1) / sqrt(5) has norm 1, so gamma = 2)::

        >>> honest = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
        >>> attack = MinSum(direction="unit_vec")
        >>> _ = attack(honest[0], honest=honest)
        >>> round(attack.last_factor, 6)
        2.0
    """

    name: ClassVar[str] = "min_sum"
    gamma: ClassVar[Callable] = staticmethod(min_sum_gamma)


def fang_bounds(honest: Tensor, b: float | Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """The interval [lo_j, hi_j] each of Fang's crafted coordinates is drawn from, for an
    (n, d) float64 honest stack and b > 1 (or stacks along ``dim``, with b broadcast to
    the result: the lockstep engine's runs).

    s_j = sign(mean_j) is the sign of the honest gradient; the model moves by -lr g, so
    parameter j changes in direction -s_j and the attack pushes it the other way. With
    g_max,j and g_min,j the honest maximum and minimum of coordinate j:

    - s_j >= 0: below the minimum, [g_min / b, g_min] when g_min > 0, else
      [b g_min, g_min];
    - s_j < 0: above the maximum, [g_max, b g_max] when g_max > 0, else
      [g_max, g_max / b] (both above the maximum).

    This is Fang et al.'s case split for local models (their s_j is the parameter's
    direction of change, -s_j here; a model above w_max is a gradient below g_min).
    """
    mean = honest.mean(dim=dim)
    top, bottom = honest.amax(dim=dim), honest.amin(dim=dim)
    low_side = mean >= 0
    lo = torch.where(
        low_side,
        torch.where(bottom > 0, bottom / b, bottom * b),
        top,
    )
    hi = torch.where(
        low_side,
        bottom,
        torch.where(top > 0, top * b, top / b),
    )
    return lo, hi


@dataclass(frozen=True)
class Fang:
    """Fang et al.'s full-knowledge attack on trimmed mean and median (Fang, Cao, Jia &
    Gong, "Local model poisoning attacks to Byzantine-robust federated learning", USENIX
    Security 2020, section 4.2), on gradients: each crafted coordinate is

        v_j = lo_j + u_j (hi_j - lo_j),   u_j ~ U[0, 1)

    with [lo_j, hi_j] from :func:`fang_bounds` (just beyond the honest extreme that
    opposes the honest direction, stretched by ``b`` > 1; the paper's b = 2). Every
    Byzantine copy of a file draws u from that file's generator
    (:func:`byzshield.attacks.attack_generator`, the whole vector at once), so the copies
    of a file agree and different files get independent draws, as the paper's c
    compromised devices.

    Example (mean > 0: v in [min / 2, min] = [0.5, 1] and [-2, -1])::

        >>> honest = torch.tensor([[1.0, -1.0], [3.0, 2.0]])
        >>> v = Fang()(honest[0], honest=honest, generator=torch.Generator().manual_seed(0))
        >>> bool(0.5 <= v[0] <= 1.0 and -2.0 <= v[1] <= -1.0)
        True
    """

    b: float = 2.0
    name: ClassVar[str] = "fang"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        if not finite(self.b, "fang: b") > 1:
            raise ValueError(f"fang: b must be > 1, got {self.b}")

    def craft(
        self, honest: Tensor, generators: list[torch.Generator], columns: Columns = WHOLE
    ) -> Tensor:
        """(len(generators), d) float64 crafted vectors of the (n, d) honest stack."""
        lo, hi = fang_bounds(honest.to(torch.float64), self.b)
        d = honest.shape[1]
        total = columns.total(d)
        u = torch.stack(
            [
                columns.cut(torch.rand(total, generator=g, dtype=torch.float64), d)
                for g in generators
            ]
        )
        return lo + u * (hi - lo)

    def __call__(self, own, *, honest=None, generator=None):
        own = check_own(self.name, own)
        honest = check_honest(self.name, own, honest, min_rows=1)
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "fang needs an explicit torch.Generator (seeded from (seed, step, file)), "
                f"got {generator!r}"
            )
        flat = honest.reshape(honest.shape[0], -1)
        return self.craft(flat, [generator])[0].reshape(own.shape).to(own.dtype)

    def forge(
        self, honest: Tensor, files: list[int], *, seed: int, step: int, columns=WHOLE, **_
    ) -> Tensor:
        """Row k: the copy of ``files[k]``, drawn from (seed, step, files[k])."""
        generators = [attack_generator(seed, step, j) for j in files]
        return self.craft(honest, generators, columns).to(honest.dtype)
