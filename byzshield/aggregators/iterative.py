"""Rules that move a centre z iteratively by its distances to the inputs: the
geometric median by smoothed Weiszfeld (Pillutla et al. 2022) and centered clipping
(Karimireddy, He & Jaggi 2021), the one rule with a state (its centre).

Both start from the coordinate median unless given a starting point; every distance
and norm is a reduction over columns (:mod:`byzshield.aggregators.reductions`), so a
sharded server iterates through the same centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from byzshield.aggregators._checks import (
    PYTHON_ONLY,
    check_count,
    check_positive,
    check_vector,
    vector_param,
)
from byzshield.aggregators.order import coordinate_median
from byzshield.aggregators.reductions import dot, local_columns
from byzshield.aggregators.rows import squared_distances_to, weighted_row_sum
from byzshield.aggregators.rule import Rule

__all__ = ["CenteredClipping", "GeometricMedian"]


class GeometricMedian(Rule):
    """Approximate geometric median argmin_z sum_i |z - x_i| by smoothed Weiszfeld.

    z_{t+1} = sum_i w_i x_i / sum_i w_i with w_i = 1 / max(nu, |x_i - z_t|) (Weiszfeld
    1937; smoothing as in Pillutla, Kakade & Harchaoui, "Robust aggregation for federated
    learning", IEEE TSP 2022). Stops after num_iterations or when |z_{t+1} - z_t| <=
    tol |z_{t+1}|. Needs n > 2f (breakdown point 1/2); f does not enter the formula.

    Args:
        num_iterations: at most this many Weiszfeld steps (>= 1).
        nu: smoothing, > 0 (same units as the inputs' norms).
        tol: relative stopping tolerance, >= 0 (0: always num_iterations steps).
        init: z_0, shape (d,); None = the coordinate-wise median, which is already
            robust, so few steps suffice (ByzFL starts from zeros).

    Example::

        >>> stack = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
        >>> aggregate("geometric-median", stack, f=1).value.tolist()
        [0.5, 0.5]
    """

    name = "geometric-median"

    @dataclass(frozen=True)
    class Config:
        num_iterations: int = 10
        nu: float = 1e-6
        tol: float = 1e-7
        init: Tensor | None = field(default=None, metadata=PYTHON_ONLY)

    def __init__(self, config: GeometricMedian.Config | None = None):
        super().__init__(config)
        c = self.config
        self.num_iterations = check_count(c.num_iterations, f"{self.name}: num_iterations", 1)
        self.nu = check_positive(c.nu, f"{self.name}: nu")
        self.tol = check_positive(c.tol, f"{self.name}: tol", allow_zero=True)
        self.init = check_vector(c.init, f"{self.name}: init")

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        d = x.shape[1]
        z = vector_param(local_columns(self.init, d), d, f"{self.name}: init")
        if z is None:
            z = coordinate_median(x, rows).astype(np.float64)
        for _ in range(self.num_iterations):
            dists = np.sqrt(squared_distances_to(x, rows, z))
            weights = 1.0 / np.maximum(dists, self.nu)
            weights /= weights.sum()
            new = weighted_row_sum(x, rows, weights)
            diff = new - z
            step = math.sqrt(dot(diff, diff))  # over every shard's columns
            z = new
            if step <= self.tol * math.sqrt(dot(z, z)):
                break
        return z.astype(x.dtype), None

    def describe(self):
        return f"{self.name}(T={self.num_iterations}, nu={self.nu:g}, tol={self.tol:g})"


class CenteredClipping(Rule):
    """Centered clipping: v_{l+1} = v_l + (1/n) sum_i clip_tau(x_i - v_l), l < L.

    clip_tau(y) = y min(1, tau / |y|) (Karimireddy, He & Jaggi, "Learning from history
    for Byzantine robust optimization", ICML 2021); returns v_L. The rule keeps its
    centre: v_0 is the previous step's aggregate (its state, :meth:`state_dict`
    ``{"center": (d,)}``); before the first step, ``center`` if given, else the
    coordinate-wise median (ByzFL: zeros). A step with no finite input leaves it as is.
    Needs n > 2f; f does not enter the formula.

    Args:
        tau: clipping radius, > 0 (ByzFL's default 100).
        num_iterations: L >= 1 (the paper uses 1 with the previous momentum as centre).
        center: v_0 for the first step, shape (d,), or None.

    Example (from the median 2.5, every input is clipped to within 1 of it)::

        >>> stack = torch.tensor([[1.0], [2.0], [3.0], [1000.0]])
        >>> aggregate("centered-clipping", stack, f=1, tau=1.0).value.tolist()
        [2.5]
    """

    name = "centered-clipping"

    @dataclass(frozen=True)
    class Config:
        tau: float = 100.0
        num_iterations: int = 1
        center: Tensor | None = field(default=None, metadata=PYTHON_ONLY)

    def __init__(self, config: CenteredClipping.Config | None = None):
        super().__init__(config)
        c = self.config
        self.tau = check_positive(c.tau, f"{self.name}: tau")
        self.num_iterations = check_count(c.num_iterations, f"{self.name}: num_iterations", 1)
        self.center = check_vector(c.center, f"{self.name}: center")

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        d = x.shape[1]
        v = vector_param(local_columns(self.center, d), d, f"{self.name}: center")
        if v is None:
            v = coordinate_median(x, rows).astype(np.float64)
        k = len(rows)
        for _ in range(self.num_iterations):
            dists = np.sqrt(squared_distances_to(x, rows, v))
            with np.errstate(divide="ignore"):
                scale = np.minimum(1.0, self.tau / dists)  # tau / 0 = inf -> 1
            # v + (1/k) sum_i c_i (x_i - v) = (1 - sum(c)/k) v + (1/k) sum_i c_i x_i
            v = (1.0 - scale.sum() / k) * v + weighted_row_sum(x, rows, scale / k)
        return v.astype(x.dtype), None

    def describe(self):
        return f"{self.name}(tau={self.tau:g}, L={self.num_iterations})"

    def state_dict(self):
        return {} if self.center is None else {"center": self.center.detach().clone()}

    def load_state_dict(self, state):
        unknown = sorted(set(state) - {"center"})
        if unknown:
            raise ValueError(f"{self.name} state has only 'center', got keys {unknown}")
        self.center = check_vector(state.get("center"), f"{self.name}: state center")

    def observe(self, value):
        self.center = value.detach().clone()
