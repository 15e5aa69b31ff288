"""The optimised omniscient attacks: ALIE and IPM with the factor that does the most
damage through this step's vote and rule, found by ByzFL's line search.

Every step the server hands :func:`byzshield.attacks.forge` an objective,
damage(v) = how far the aggregate moves from the honest mean when every file the
Byzantine copies win carries v; the attack searches its factor (ALIE's z, IPM's eps)
with :func:`line_search` and sends the best vector (docs/design.md, section 6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzshield.attacks._checks import finite
from byzshield.attacks.omniscient import InnerProductManipulation, mean_std

__all__ = ["OptimalALIE", "OptimalIPM", "line_search"]


def line_search(
    objective: Callable[[float], float],
    *,
    evals: int,
    start: float,
    delta: float,
    ratio: float,
) -> tuple[float, float]:
    """Maximise a scalar ``objective`` with ``evals`` evaluations: expand from ``start``
    by steps ``delta``, doubling while it improves, then contract by ``ratio``.

    The search of ByzFL's Optimal_ALittleIsEnough / Optimal_InnerProductManipulation
    (defaults there: 20 evaluations, start 0, delta 10, ratio 0.8); returns (best x,
    best value).

    Example::

        >>> line_search(lambda x: -abs(x - 30.0), evals=20, start=0.0, delta=10.0, ratio=0.8)
        (30.0, -0.0)
    """
    best_x, best_y = start, objective(start)
    left = evals - 1
    while left > 0:  # expansion
        x = best_x + delta
        y = objective(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:  # contraction
        x = best_x + delta
        y = objective(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x, best_y


def _check_search(name: str, evals, start, delta, ratio) -> None:
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"{name}: evals must be an integer >= 1, got {evals!r}")
    finite(start, f"{name}: start")
    if finite(delta, f"{name}: delta") == 0:
        raise ValueError(f"{name}: delta must be non-zero")
    if not 0.5 < finite(ratio, f"{name}: ratio") < 1:
        raise ValueError(f"{name}: ratio must be in (0.5, 1), got {ratio}")


@dataclass(frozen=True)
class OptimalALIE:
    """ALIE with the z that does the most damage this step: v = mu + z* sigma,
    z* = argmax_z damage(mu + z sigma).

    damage(v) is the distance between the rule's output and the honest mean when every
    file the Byzantine copies win carries v (the vote decides which: the objective that
    :func:`byzshield.attacks.forge` passes). z* comes from ByzFL's line search
    (:func:`line_search`; its Optimal_ALittleIsEnough), on ALIE (Baruch et al., NeurIPS
    2019). ``last_factor`` is the z of the most recent step.

    Example (mu = 1, sigma = 1; a damage largest at v = 11 is found at z = 10)::

        >>> honest = torch.tensor([[0.0], [1.0], [2.0]])
        >>> OptimalALIE().forge(honest, [0], objective=lambda v: -abs(float(v) - 11)).tolist()
        [[11.0]]
    """

    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8
    ddof: int = 1
    name: ClassVar[str] = "optimal_alie"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    needs_objective: ClassVar[bool] = True

    def __post_init__(self):
        _check_search(self.name, self.evals, self.start, self.delta, self.ratio)
        if self.ddof not in (0, 1):
            raise ValueError(f"{self.name}: ddof must be 0 or 1, got {self.ddof!r}")
        object.__setattr__(self, "last_factor", None)

    def __call__(self, own, *, honest=None, generator=None):
        raise ValueError(f"{self.name} needs the vote and the rule: run it through a trainer")

    def forge(self, honest: Tensor, files: list[int], *, objective=None, **_) -> Tensor:
        if objective is None:
            raise ValueError(f"{self.name} needs an objective (the damage through the vote)")
        mu, sigma = mean_std(honest, self.ddof)

        def vector(z: float) -> Tensor:
            return (mu + z * sigma).to(honest.dtype)

        z, _ = line_search(
            lambda z: objective(vector(z)),
            evals=self.evals,
            start=self.start,
            delta=self.delta,
            ratio=self.ratio,
        )
        object.__setattr__(self, "last_factor", z)
        return vector(z).unsqueeze(0)


@dataclass(frozen=True)
class OptimalIPM:
    """IPM with the eps that does the most damage this step: v = -eps* mu,
    eps* = argmax_eps damage(-eps mu).

    The search as for :class:`OptimalALIE` (ByzFL's Optimal_InnerProductManipulation),
    on IPM (Xie, Koyejo & Gupta, UAI 2019); the mean is over the honest copies, as
    :class:`~byzshield.attacks.omniscient.InnerProductManipulation`. ``last_factor`` is
    the eps of the most recent step.

    Example (mu = 2; a damage largest at v = -20 is found at eps = 10)::

        >>> honest = torch.tensor([[1.0], [3.0]])
        >>> OptimalIPM().forge(honest, [0], objective=lambda v: -abs(float(v) + 20)).tolist()
        [[-20.0]]
    """

    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8
    name: ClassVar[str] = "optimal_ipm"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    needs_objective: ClassVar[bool] = True

    def __post_init__(self):
        _check_search(self.name, self.evals, self.start, self.delta, self.ratio)
        object.__setattr__(self, "last_factor", None)

    def __call__(self, own, *, honest=None, generator=None):
        raise ValueError(f"{self.name} needs the vote and the rule: run it through a trainer")

    def forge(self, honest: Tensor, files: list[int], *, weights=None, objective=None, **_):
        if objective is None:
            raise ValueError(f"{self.name} needs an objective (the damage through the vote)")
        mean = InnerProductManipulation(eps=-1.0).forge(honest, files, weights=weights)[0]
        mu = mean.to(torch.float64)

        def vector(eps: float) -> Tensor:
            return (mu * (-eps)).to(honest.dtype)

        eps, _ = line_search(
            lambda e: objective(vector(e)),
            evals=self.evals,
            start=self.start,
            delta=self.delta,
            ratio=self.ratio,
        )
        object.__setattr__(self, "last_factor", eps)
        return vector(eps).unsqueeze(0)
