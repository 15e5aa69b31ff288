"""Spectral filters: rules that look for the direction in which the inputs spread
most, on the n x n centred Gram matrix: covariance-aware filtering (Allouah, Guerraoui
& Stephan 2025) and smallest-maximum-eigenvalue averaging (Allouah et al. 2023).

The covariance sum_i w_i (x_i - mu)(x_i - mu)^T of d x d has the nonzero spectrum of the
n x n Gram matrix of the centred inputs, so no d x d matrix is formed and, by default,
nothing is random: the top eigenpair is exact.

``power_iterations=T`` runs ByzFL's estimate instead, T power iterations from a random
unit vector v0 of R^d. CAF draws v0 as ByzFL does, from the same generator stream, and
reproduces it. SMEA draws a new v0 for each of its C(n, f) subsets; drawing them in R^d
and projecting the inputs on each costs O(C(n, f) n d) (11.5 s at n = 25, f = 2,
d = 10^6), so it draws, for each subset, the inputs' projections on such a v0 directly,
with their exact joint law, from the n x n Gram matrix (:func:`span_projections`): the
same estimator as ByzFL's, in O(C(n, f) n^2), but not its random numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from byzshield.aggregators._checks import check_count
from byzshield.aggregators.order import coordinate_median
from byzshield.aggregators.reductions import dot, total_columns, unit_random
from byzshield.aggregators.rows import centred_gram, mean_rows, project, weighted_row_sum
from byzshield.aggregators.rule import Rule

__all__ = ["CAF", "SMEA", "SMEA_MAX_SUBSETS", "span_projections"]

SMEA_MAX_SUBSETS = 2_000_000
"""SMEA enumerates C(n, f) subsets: above this many it refuses rather than run for hours."""


def span_projections(gram: np.ndarray, d: int, draws: int, generator) -> np.ndarray:
    """(draws, k): row b holds (x_i - c) . v_b for the k inputs whose centred Gram matrix
    is ``gram`` (G_ij = (x_i - c) . (x_j - c)), v_b independent uniform random unit
    vectors of R^d, drawn without forming any v_b.

    With G = A A^T (A = U sqrt(Lambda) from G's eigenpairs, rank r) the centred inputs
    are A Q^T for an orthonormal d x r basis Q of their span. A Gaussian g of R^d splits
    into Q z + g_perp with z ~ N(0, I_r) and |g_perp|^2 ~ chi^2(d - r) independent of z,
    so for v = g / |g| (uniform on the sphere, ByzFL's ``randn(d) / norm``)::

        (x_i - c) . v = (A z)_i / sqrt(|z|^2 + chi^2(d - r))

    exactly in law, jointly over i (Muller 1959: a normalised Gaussian is uniform on the
    sphere). z comes from ``generator``; the chi-squares from a NumPy generator seeded by
    one draw of it.
    """
    lam, vecs = np.linalg.eigh(gram)
    keep = lam > max(float(lam[-1]), 0.0) * len(lam) * np.finfo(np.float64).eps
    factor = vecs[:, keep] * np.sqrt(lam[keep])  # (k, r)
    r = factor.shape[1]
    z = torch.randn(draws, r, generator=generator, dtype=torch.float64).numpy()
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    rest = total_columns(d) - r
    chi = np.random.default_rng(seed).chisquare(rest, draws) if rest > 0 else np.zeros(draws)
    return (z @ factor.T) / np.sqrt((z * z).sum(axis=1) + chi)[:, None]


class _Spectral(Rule):
    """Shared by CAF and SMEA: the top eigenpair of a (weighted) covariance.

    By default exactly, from the n x n centred Gram matrix G (the covariance's nonzero
    spectrum is that of the Gram matrix: no d x d matrix, no randomness). With
    ``power_iterations=T`` it instead runs T power iterations from a random unit vector
    drawn from the generator, as ByzFL (T = 1) does, for comparisons (the module
    docstring says how each rule draws it).
    """

    @dataclass(frozen=True)
    class Config:
        power_iterations: int | None = None

    def __init__(self, config: _Spectral.Config | None = None):
        super().__init__(config)
        power_iterations = self.config.power_iterations
        if power_iterations is not None:
            power_iterations = check_count(power_iterations, f"{self.name}: power_iterations", 1)
        self.power_iterations = power_iterations

    @property
    def needs_generator(self) -> bool:
        return self.power_iterations is not None

    def _gram(self, x, rows):
        center = coordinate_median(x, rows).astype(np.float64)
        return center, centred_gram(x, rows, center)

    def describe(self):
        if self.power_iterations is None:
            return self.name
        return f"{self.name}(power_iterations={self.power_iterations})"


class CAF(_Spectral):
    """Covariance-aware filtering: down-weight inputs along the top covariance direction.

    With weights c (start 1) and mu_c = sum c_i x_i / sum c: take the top eigenpair
    (lambda, v) of the weighted covariance sum c_i (x_i - mu_c)(x_i - mu_c)^T / sum c,
    remember mu_c if lambda is the smallest seen, set tau_i = ((x_i - mu_c) . v)^2 and
    c_i <- c_i (1 - tau_i / max tau); repeat while sum c > n - 2f; return the remembered
    mu_c (Allouah, Guerraoui & Stephan, "Towards trustworthy federated learning with
    untrusted participants", ICML 2025; ByzFL's CAF). The eigenpair is exact here (ByzFL:
    one power iteration from torch's global RNG; ``power_iterations=1`` with a
    generator reproduces it). Needs n > 2f; outside it f is clamped to (n - 1) // 2.

    Example (the outlier's weight drops to 0; the result is near (1/3, 1/3))::

        >>> stack = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
        >>> [round(v, 2) for v in aggregate("caf", stack, f=1).value.tolist()]
        [0.33, 0.33]
    """

    name = "caf"

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        center, gram = self._gram(x, rows)
        c = np.ones(k)
        best_w, best_lam = np.full(k, 1.0 / k), math.inf
        d = x.shape[1]
        while c.sum() > k - 2 * f:
            total = c.sum()
            w = c / total
            gw = gram @ w
            ddt = gram - gw[:, None] - gw[None, :] + w @ gw  # (x_i - mu).(x_j - mu)
            if self.power_iterations is None:
                s = np.sqrt(w)
                lam_all, vecs = np.linalg.eigh(s[:, None] * ddt * s[None, :])
                lam = float(lam_all[-1])
                proj = ddt @ (s * vecs[:, -1]) / math.sqrt(lam) if lam > 0 else np.zeros(k)
            else:
                v0 = unit_random(d, generator)
                p = project(x, rows, v0) - dot(center, v0)  # (x_i - center) . v0
                proj = p - w @ p  # (x_i - mu) . v0
                lam = 0.0
                for _ in range(self.power_iterations):
                    wa = w * proj
                    lam = math.sqrt(max(float(wa @ ddt @ wa), 0.0))
                    proj = ddt @ wa / lam if lam > 0 else np.zeros(k)
            if lam < best_lam:
                best_lam, best_w = lam, w
            tau = proj**2
            if lam <= 0 or tau.max() <= 0:
                break  # no spread left along any direction: every weighted row is mu
            before = total
            c = c * (1 - tau / tau.max())
            if not c.sum() < before:
                break
        return weighted_row_sum(x, rows, best_w).astype(x.dtype), None


class SMEA(_Spectral):
    """Smallest maximum eigenvalue averaging: the mean of the n - f inputs whose
    covariance has the smallest top eigenvalue.

    S* = argmin over |S| = n - f of lambda_max(sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T),
    out = mu_{S*} (Allouah, Guerraoui, Gupta, Pinot & Stephan, "On the privacy-
    robustness-utility trilemma in distributed learning", ICML 2023; ByzFL's SMEA). All
    C(n, f) subsets are enumerated, as in ByzFL, but each eigenvalue is exact and comes
    from the subset's (n - f) x (n - f) centred Gram block, batched (ByzFL: one power
    iteration per subset over d coordinates; ``power_iterations=T`` runs that estimate
    on the Gram blocks, from starts with ByzFL's law: :func:`span_projections`). Equal
    eigenvalues: the first subset in ``itertools.combinations`` order. Needs n > 2f and
    C(n, f) <= 2,000,000; outside the guarantee the formula runs as is up to f = n - 1.

    Example (the subset of rows 0, 1, 2 has the smallest spread)::

        >>> stack = torch.tensor([[0.0], [1.0], [2.0], [30.0]])
        >>> aggregate("smea", stack, f=1).value.tolist()
        [1.0]
    """

    name = "smea"

    def max_f(self, n):
        f = (n - 1) // 2
        while f > 0 and math.comb(n, f) > SMEA_MAX_SUBSETS:
            f -= 1
        return f

    def defined_f(self, n):
        f = n - 1
        while f > 0 and math.comb(n, f) > SMEA_MAX_SUBSETS:
            f -= 1
        return f

    def check(self, n, f):
        if f <= (n - 1) // 2 and math.comb(n, f) > SMEA_MAX_SUBSETS:
            raise ValueError(
                f"{self.name} enumerates C(n, f) subsets: C({n}, {f}) = {math.comb(n, f):,} "
                f"is above the {SMEA_MAX_SUBSETS:,} allowed"
            )
        super().check(n, f)

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        size = k - f
        if f == 0:
            return mean_rows(x, rows), list(rows)
        center, gram = self._gram(x, rows)
        best, best_lam = None, math.inf
        combos = itertools.combinations(range(k), size)
        d = x.shape[1]
        while True:
            batch = np.array(list(itertools.islice(combos, 8192)), dtype=np.intp)
            if len(batch) == 0:
                break
            sub = gram[batch[:, :, None], batch[:, None, :]]
            row_mean = sub.mean(axis=2, keepdims=True)  # centre the block on the subset mean
            grand = row_mean.mean(axis=1, keepdims=True)
            sub = sub - row_mean - np.swapaxes(row_mean, 1, 2) + grand
            if self.power_iterations is None:
                lam = np.linalg.eigvalsh(sub)[:, -1]
            else:  # ByzFL's estimate, its start drawn in the span (module docstring)
                p = span_projections(gram, d, len(batch), generator)
                a = np.take_along_axis(p, batch, axis=1)
                a -= a.mean(axis=1, keepdims=True)  # projections of x_i - mu_S
                for _ in range(self.power_iterations):
                    step = np.matmul(sub, a[:, :, None])[:, :, 0]  # Sigma_S a, batched
                    lam = np.sqrt(np.maximum((a * step).sum(axis=1), 0.0))
                    a = np.divide(
                        step, lam[:, None], out=np.zeros_like(step), where=lam[:, None] > 0
                    )
            pos = int(np.argmin(lam))
            if lam[pos] < best_lam:
                best_lam, best = float(lam[pos]), batch[pos]
        chosen = [rows[i] for i in best]
        return mean_rows(x, chosen), chosen
