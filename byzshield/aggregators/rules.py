"""The robust rules: one class per rule, registered by config name in :data:`RULES`.

A rule object holds its parameters (checked when it is built) and, for centered
clipping, its state. :class:`~byzshield.aggregators.Aggregator` runs it: the rule itself
only sees a NumPy view ``x`` of the (possibly pre-aggregated) stack, the finite rows
``rows`` to use and the effective ``f``, and returns ``(value (d,), selected rows or
None)``. The formulas, references and examples are in each class's docstring; the
requirement each rule's guarantee needs is ``requirement`` (checked by ``check``), and
what it does when asked to run outside it is ``defined_f`` (see docs/aggregators.md).

Length (about 900 lines): fourteen rules, one class each with its formula, reference,
example and nested Config; what they compute with is in ``_kernels``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators._checks import (
    PYTHON_ONLY,
    NoParams,
    check_count,
    check_positive,
    check_vector,
    config_for,
    vector_param,
)
from byzshield.aggregators._kernels import (
    _centred_gram,
    _chunk_width,
    _chunks,
    _closest_to_median_reduce,
    _dot,
    _krum_select,
    _local_columns,
    _mean_rows,
    _median_reduce,
    _order_statistics,
    _over_columns,
    _PairwiseDistances,
    _project,
    _selection_network,
    _sorting_network,
    _squared_distances_to,
    _unit_random,
    _weighted_row_sum,
)

__all__ = ["RULES", "Rule"]

# SMEA enumerates C(n, f) subsets: above this many it refuses rather than run for hours.
SMEA_MAX_SUBSETS = 2_000_000


class Rule:
    """A robust rule on the rows of an (n, d) stack; subclasses set the class attributes.

    A rule's parameters are its nested ``Config`` dataclass (torchtitan's pattern): the
    one place they and their defaults are declared; ``Rule(config)`` checks them (None:
    the defaults), :func:`byzshield.aggregators.build_aggregator` builds one from keyword
    parameters, and the config's ``mode/`` options are generated from it.

    Attributes:
        name: the config name.
        requirement: the n-vs-f condition the rule's guarantee needs, as text.
        reference: who proved it (short).
        uses_distances: the rule needs all pairwise distances (its Gram pass doubles as
            the non-finite scan when it sees the raw stack).
        takes_signs: the rule works on the signs of its inputs; pre-aggregations then
            see signs too (sign-majority: the original's workers sent signs).
    """

    name: ClassVar[str]
    requirement: ClassVar[str] = "n > 2f"
    reference: ClassVar[str] = "an honest majority"
    uses_distances: ClassVar[bool] = False
    takes_signs: ClassVar[bool] = False
    Config: ClassVar[type] = NoParams

    def __init__(self, config: object | None = None):
        self.config = config_for(self, config)

    @property
    def needs_generator(self) -> bool:
        return False

    def max_f(self, n: int) -> int:
        """Largest f the guarantee allows for n inputs (-1: none)."""
        return (n - 1) // 2

    def defined_f(self, n: int) -> int | None:
        """Largest f the formula is defined for with n inputs (None: f is not used)."""
        return self.max_f(n)

    def check(self, n: int, f: int) -> None:
        """Raise a one-line ValueError unless the guarantee holds for f of n inputs."""
        if f > self.max_f(n):
            raise ValueError(
                f"{self.name} needs {self.requirement} ({self.reference}), got n={n}, f={f}"
            )
        self.check_params(n, f)

    def check_params(self, n: int, f: int) -> None:
        """Parameters whose range depends on n and f (nothing by default)."""

    def core(
        self,
        x: np.ndarray,
        rows: Sequence[int],
        f: int,
        *,
        dist: _PairwiseDistances | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, list[int] | None]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    def observe(self, value: Tensor) -> None:
        """Called with the final aggregate of each step (stateful rules update here)."""


def _distances(x, rows, dist: _PairwiseDistances | None) -> _PairwiseDistances:
    """The distances between ``rows``: ``dist`` if it covers exactly them, else new."""
    if dist is not None and dist.rows.tolist() == list(rows):
        return dist
    return _PairwiseDistances(x, rows)


def _coordinate_median(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    k = len(rows)
    outputs, reduce = _median_reduce(k)
    return _order_statistics(x, [(i,) for i in rows], _selection_network(k, outputs), reduce)


# --------------------------------------------------------------------------------------
# Order statistics per coordinate
# --------------------------------------------------------------------------------------


class CoordinateMedian(Rule):
    """Coordinate-wise median: out[c] = median_i x_i[c].

    Yin et al., "Byzantine-robust distributed learning: towards optimal statistical
    rates", ICML 2018. An even count's median is the mean of its two middle values
    (numpy's and ByzFL's convention; ``torch.median`` returns the lower one). Needs
    n > 2f. f does not enter the formula. Median of means is this rule after the
    ``bucketing`` pre-aggregation.

    Example::

        >>> build_aggregator("coord-median")(torch.tensor([[1.0], [5.0], [2.0], [100.0]]),
        ...                                  f=1).value.tolist()
        [3.5]
    """

    name = "coord-median"

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        return _coordinate_median(x, rows), None


class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values, average.

    out[c] = (1 / (n - 2f)) sum_{j=f}^{n-f-1} x_(j)[c], x_(j) the j-th smallest
    (Yin et al., ICML 2018). Needs n > 2f; outside it f is clamped to (n - 1) // 2.

    Example: f=1 on (-50, 1, 2, 3, 50) gives 2.
    """

    name = "trimmed-mean"

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        kept = tuple(range(f, k - f))

        def reduce(sorted_rows: list[np.ndarray]) -> np.ndarray:
            acc = sorted_rows[kept[0]].astype(np.float64)
            for pos in kept[1:]:
                acc += sorted_rows[pos]
            acc /= len(kept)
            return acc

        network = _selection_network(k, kept)
        return _order_statistics(x, [(i,) for i in rows], network, reduce), None


class Meamed(Rule):
    """Mean around the median: per coordinate the mean of the n - f values closest to it.

    out[c] = mean of the n - f values x_i[c] nearest to median_i x_i[c] (Xie, Koyejo &
    Gupta, "Generalized Byzantine-tolerant SGD", 2018; ByzFL's Meamed). Equal distances
    keep the lower value (ByzFL: whatever ``torch.topk`` returns). Needs n > 2f; outside
    it the formula runs as is up to f = n - 1.

    Example: f=1 on (0, 1, 2, 10): median 1.5, the 3 closest 0, 1, 2 -> 1.
    """

    name = "meamed"

    def defined_f(self, n):
        return n - 1

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        reduce = _closest_to_median_reduce(k, k - f)
        return _order_statistics(x, [(i,) for i in rows], _sorting_network(k), reduce), None


class Mean(Rule):
    """Coordinate-wise mean (1/n) sum_i x_i; float64 accumulation.

    Not robust: one input can move it anywhere. ``f`` is accepted (any f >= 0) so that
    the DRACO-style ``maj_vote`` approach can pass the same arguments as the robust rules;
    it only decides how many non-finite rows count as expected. ``max_f(n)`` is n.

    Example: (1, 2) and (3, 4) give (2, 3).
    """

    name = "mean"
    requirement = "n >= 1"
    reference = "f is not used"

    def max_f(self, n):
        return n

    def defined_f(self, n):
        return None

    def check(self, n, f):
        pass  # any f: it does not enter the mean

    def core(self, x, rows, f, *, dist=None, generator=None):
        return _mean_rows(x, rows), None


class SignMajority(Rule):
    """signSGD with majority vote: out[c] = sign(sum_i sign(x_i[c])).

    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with majority vote is
    communication efficient and fault tolerant", ICLR 2019. Output entries are -1, 0 (a
    tied vote) or +1. The rule takes signs first, so pre-aggregations see signs: after
    ``bucketing`` it is the original ByzShield/DETOX rule, whose workers sent int8 signs,
    sign(sum_b sign(sum_{i in B_b} sign(x_i))). Needs n > 2f; f does not enter.

    Example: rows (0.5, -2), (3, -1), (-9, 4) give (1, -1).
    """

    name = "sign-majority"
    takes_signs = True

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        out = np.empty(x.shape[1], dtype=x.dtype)

        def body(lo: int, hi: int) -> None:
            for a, c in _chunks(lo, hi, _chunk_width(len(rows))):
                votes = np.zeros(c - a, dtype=np.float64)
                for i in rows:
                    votes += np.sign(x[i, a:c].astype(np.float64))
                out[a:c] = np.sign(votes)

        _over_columns(x.shape[1], body)
        return out, None


# --------------------------------------------------------------------------------------
# Distance-based selection
# --------------------------------------------------------------------------------------

_M_FORM = re.compile(r"n-f(?:-(\d+))?")


class MultiKrum(Rule):
    """Multi-Krum: the mean of the m inputs with the lowest Krum scores.

    score(i) = sum of |x_i - x_j|^2 over the k nearest other inputs j, k = n - f - 2
    (Blanchard et al., "Machine learning with adversaries: Byzantine tolerant gradient
    descent", NeurIPS 2017); out = mean of the m lowest-scoring inputs. Equal scores are
    ordered by the sum over k + 1 neighbours, k + 2, ..., then by the lower row. Needs
    n > 2f + 2. The selection is exact: distances come from a float64 Gram matrix with a
    certified error bound, and near ties are recomputed exactly. Outside the guarantee
    the formula runs as is while k >= 1 (f <= n - 3) and f is clamped beyond.

    Args:
        m: inputs averaged: an int in [1, n - f], None = n - f, or the text "n-f-j"
            (the original DETOX code averaged n - f - 2 in each bucket).
        num_neighbours: k, in [1, n - 1]; None = n - f - 2 (ByzFL scores n - f - 1).

    Example: f=1 on (0, 1, 2, 3, 100): scores 5, 2, 2, 5, huge; the mean of 0..3 is 1.5.
    """

    name = "multi-krum"
    requirement = "n > 2f + 2"
    reference = "Blanchard et al."
    uses_distances = True

    @dataclass(frozen=True)
    class Config:
        m: int | str | None = None
        num_neighbours: int | None = None

    def __init__(self, config: MultiKrum.Config | None = None):
        super().__init__(config)
        self._setup(self.config.m, self.config.num_neighbours)

    def _setup(self, m: int | str | None, num_neighbours: int | None) -> None:
        self._m_offset: int | None = None
        if isinstance(m, str):
            match = _M_FORM.fullmatch(m.replace(" ", ""))
            if match is None:
                raise ValueError(f"{self.name}: m must be an integer, None or 'n-f-j', got {m!r}")
            self._m_offset = int(match.group(1) or 0)
        elif m is not None:
            m = check_count(m, f"{self.name}: m", 1)
        self.m = m
        if num_neighbours is not None:
            num_neighbours = check_count(num_neighbours, f"{self.name}: num_neighbours", 1)
        self.num_neighbours = num_neighbours

    def max_f(self, n):
        return (n - 3) // 2

    def defined_f(self, n):
        return n - 3

    def check_params(self, n, f):
        if isinstance(self.m, int):
            check_count(self.m, f"{self.name}: m", 1, n - f)
        elif self._m_offset and n - f - self._m_offset < 1:
            raise ValueError(f"{self.name}: m = {self.m} must be >= 1, got n={n}, f={f}")
        if self.num_neighbours is not None:
            check_count(self.num_neighbours, f"{self.name}: num_neighbours", 1, n - 1)

    def _m(self, k: int, f: int) -> int:
        if self._m_offset is not None:
            return max(k - f - self._m_offset, 1)
        return k - f if self.m is None else min(self.m, k - f)

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        m = self._m(k, f)
        neighbours = k - f - 2 if self.num_neighbours is None else min(self.num_neighbours, k - 1)
        local = _krum_select(_distances(x, rows, dist), range(k), neighbours, m)
        chosen = [rows[i] for i in local]
        return _mean_rows(x, chosen), chosen

    def describe(self):
        m = "n-f" if self.m is None else self.m
        k = "" if self.num_neighbours is None else f", k={self.num_neighbours}"
        return f"{self.name}(m={m}{k})"


class Krum(MultiKrum):
    """Krum: the input with the lowest Krum score (multi-Krum with m = 1).

    Blanchard et al., NeurIPS 2017. score(i) as in :class:`MultiKrum`, k = n - f - 2
    (ByzFL's Krum scores n - f - 1: ``num_neighbours`` overrides). Needs n > 2f + 2.

    Example: f=1 on (0, 1, 2, 3, 100) gives 2 (rows 1 and 2 tie on 2 and 3 neighbours;
    the fourth neighbour decides).
    """

    name = "krum"

    @dataclass(frozen=True)
    class Config:
        num_neighbours: int | None = None

    def __init__(self, config: Krum.Config | None = None):
        Rule.__init__(self, config)
        self._setup(1, self.config.num_neighbours)

    def check_params(self, n, f):
        if self.num_neighbours is not None:
            check_count(self.num_neighbours, f"{self.name}: num_neighbours", 1, n - 1)

    def describe(self):
        return self.name if self.num_neighbours is None else f"{self.name}(k={self.num_neighbours})"


class Bulyan(Rule):
    """Bulyan: iterated Krum selection, then a trimmed mean around the median.

    El Mhamdi, Guerraoui & Rouault, "The hidden vulnerability of distributed learning in
    Byzantium", ICML 2018, Algorithm 1: select theta = n - 2f inputs, each time taking the
    Krum winner (score over |R| - f - 2 neighbours, R the inputs left) and removing it;
    then per coordinate average the beta = theta - 2f selected values closest to their
    median (equal distances prefer the lower value). Needs n >= 4f + 3; outside it f is
    clamped to (n - 3) // 4. When |R| - f - 2 drops below 1 (|R| ends at 2f + 1) the
    rounds score the nearest neighbour.

    Example: f=1 on (0, 1, 2, 4, 8, 9, 1e6): selects 4, 2, 8, 1, 9, keeps 4, 2, 1 -> 7/3.
    """

    name = "bulyan"
    requirement = "n >= 4f + 3"
    reference = "El Mhamdi et al."
    uses_distances = True

    def max_f(self, n):
        return (n - 3) // 4

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        theta = k - 2 * f
        if theta == k:
            chosen = list(rows)
        else:
            dist = _distances(x, rows, dist)
            active, local = list(range(k)), []
            while len(local) < theta:
                # Krum on what is left, same f (Algorithm 1). |R| ends at 2f + 1, where
                # |R| - f - 2 < 1: score at least the nearest neighbour there.
                neighbours = max(len(active) - f - 2, 1)
                (winner,) = _krum_select(dist, active, neighbours, 1)
                local.append(winner)
                active.remove(winner)
            chosen = sorted(rows[i] for i in local)
        reduce = _closest_to_median_reduce(theta, theta - 2 * f)
        value = _order_statistics(x, [(i,) for i in chosen], _sorting_network(theta), reduce)
        return value, chosen


class MoNNA(Rule):
    """MoNNA: the mean of the n - f inputs nearest to a trusted input x_idx.

    out = mean_{j in N(idx)} x_j, N(idx) the n - f inputs nearest to x_idx, itself
    included (Farhadkhani et al., "Robust collaborative learning with linear gradient
    overhead", ICML 2023). Equal distances prefer the lower row; distances to x_idx come
    from exact differences in float64 (one pass, no Gram matrix). Needs n > 2f; outside
    it the formula runs as is up to f = n - 1. If row idx is non-finite, the lowest finite
    row is the reference.

    Args:
        idx: the trusted row (the caller's own vector in decentralised learning), >= 0.

    Example: idx=0, f=1 on (0, 1, 5): the two nearest to 0 are 0 and 1 -> 0.5.
    """

    name = "monna"

    @dataclass(frozen=True)
    class Config:
        idx: int = 0

    def __init__(self, config: MoNNA.Config | None = None):
        super().__init__(config)
        self.idx = check_count(self.config.idx, f"{self.name}: idx", 0)

    def defined_f(self, n):
        return n - 1

    def check_params(self, n, f):
        check_count(self.idx, f"{self.name}: idx", 0, n - 1)

    def core(self, x, rows, f, *, dist=None, generator=None):
        if self.idx >= x.shape[0]:
            raise ValueError(f"{self.name}: idx must be in [0, {x.shape[0] - 1}], got {self.idx}")
        rows = list(rows)
        ref = rows[rows.index(self.idx)] if self.idx in rows else rows[0]
        # Distances to one row, from exact differences (float64): one pass, no Gram.
        sq = _squared_distances_to(x, rows, x[ref].astype(np.float64))
        order = np.lexsort((np.arange(len(rows)), sq))
        chosen = sorted(rows[i] for i in order[: len(rows) - f])
        return _mean_rows(x, chosen), chosen

    def describe(self):
        return f"{self.name}(idx={self.idx})"


def _cover_exists(adj: list[int], alive: int, keep: int, budget: int) -> bool:
    """Can removing <= budget vertices of ``alive`` outside ``keep`` cover every edge?

    Vertex cover by the classic bounded search (Downey & Fellows): take a vertex v of
    largest degree; either v goes, or all its neighbours go. O(2^budget n^2) at worst.
    Graphs are bitmasks: adj[v] has bit u set when (u, v) is an edge.
    """
    best, best_deg, rest = -1, 0, alive
    while rest:
        low = rest & -rest
        v = low.bit_length() - 1
        rest ^= low
        deg = (adj[v] & alive).bit_count()
        if deg > best_deg:
            best, best_deg = v, deg
    if best_deg == 0:
        return True
    if budget == 0:
        return False
    nb = adj[best] & alive
    keep_v = (keep >> best) & 1
    if not keep_v and _cover_exists(adj, alive & ~(1 << best), keep, budget - 1):
        return True
    if nb & keep or best_deg > budget:
        return False
    return _cover_exists(adj, alive & ~nb, keep | (1 << best), budget - best_deg)


def _min_diameter_subset(sq: np.ndarray, size: int) -> tuple[list[int], float]:
    """The lexicographically first subset of ``size`` rows whose diameter is minimal.

    ``sq`` is the (k, k) squared-distance matrix. The minimal diameter is one of the
    pairwise distances: binary search the smallest threshold t for which removing
    k - size rows leaves no pair farther apart than t (a vertex cover of the graph of
    pairs farther than t), then keep rows 0, 1, ... greedily whenever a cover still
    exists. itertools.combinations order, as ByzFL's enumeration. Returns the rows and t.
    """
    k = len(sq)
    budget = k - size
    values = np.unique(sq[np.triu_indices(k, 1)])

    def graph(t: float) -> list[int]:
        far = sq > t
        return [int(sum(1 << int(j) for j in np.flatnonzero(far[i]))) for i in range(k)]

    everyone = (1 << k) - 1
    lo, hi = 0, len(values) - 1  # the largest value is always feasible
    while lo < hi:
        mid = (lo + hi) // 2
        if _cover_exists(graph(values[mid]), everyone, 0, budget):
            hi = mid
        else:
            lo = mid + 1
    t = float(values[lo]) if len(values) else 0.0
    adj = graph(t)
    alive, keep, kept = everyone, 0, 0
    for i in range(k):
        if kept == size:
            break
        if _cover_exists(adj, alive, keep | (1 << i), budget):
            keep |= 1 << i
            kept += 1
        else:
            alive &= ~(1 << i)
            budget -= 1
    return [i for i in range(k) if (keep >> i) & 1], t


class MDA(Rule):
    """Minimum-diameter averaging: the mean of the n - f inputs of smallest diameter.

    S* = argmin over |S| = n - f of max_{i, j in S} |x_i - x_j|, out = mean_{i in S*} x_i
    (El Mhamdi, Guerraoui, Guirguis, Hoang & Rouault, "Genuinely distributed Byzantine
    machine learning", PODC 2020). Among equal diameters the first subset in
    ``itertools.combinations`` order wins, as in ByzFL. ByzFL enumerates all C(n, f)
    subsets; here the minimal diameter is found by binary search over the pairwise
    distances with a bounded vertex-cover search (O(2^f n^2) at worst, microseconds in
    practice), on certified distances (undecided comparisons are recomputed exactly).
    Needs n > 2f; outside it the formula runs as is up to f = n - 1.

    Example: f=1 on (0, 1, 3): diameters {0,1} 1, {0,3} 3, {1,3} 2 -> 0.5.
    """

    name = "mda"
    uses_distances = True

    def defined_f(self, n):
        return n - 1

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        if f == 0:
            return _mean_rows(x, rows), list(rows)
        dist = _distances(x, rows, dist)
        while True:
            local, t = _min_diameter_subset(dist.dist, k - f)
            # Every decision compared some distance with t: certify them all.
            pairs = np.argwhere(np.isclose(dist.dist, t, rtol=0, atol=0) & ~np.eye(k, dtype=bool))
            p = pairs[0]
            lo_t, hi_t = dist.lo[p[0], p[1]], dist.hi[p[0], p[1]]
            unsure = (dist.lo <= hi_t) & (dist.hi >= lo_t) & ~np.eye(k, dtype=bool)
            unsure[p[0], p[1]] = unsure[p[1], p[0]] = False  # t itself
            todo = sorted({int(i) for i in np.flatnonzero(unsure.any(axis=1))} | {int(p[0])})
            todo = [i for i in todo if not dist.exact_rows[i]]
            if not todo or not unsure.any():
                break
            dist.refine(todo)
        chosen = [rows[i] for i in local]
        return _mean_rows(x, chosen), chosen


# --------------------------------------------------------------------------------------
# Spectral filters (computed on the n x n centred Gram matrix)
# --------------------------------------------------------------------------------------


class _Spectral(Rule):
    """Shared by CAF and SMEA: the top eigenpair of a (weighted) covariance.

    By default exactly, from the n x n centred Gram matrix G (the covariance's nonzero
    spectrum is that of the Gram matrix: no d x d matrix, no randomness). With
    ``power_iterations=T`` it instead runs T power iterations from a random unit vector
    drawn from the generator, exactly as ByzFL (T = 1) does, for comparisons.
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
        center = _coordinate_median(x, rows).astype(np.float64)
        return center, _centred_gram(x, rows, center)

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

    Example: f=1 on (0, 0), (1, 0), (0, 1), (50, 50): the outlier's weight drops to 0 and
    the result is near (1/3, 1/3).
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
                v0 = _unit_random(d, generator)
                p = _project(x, rows, v0) - _dot(center, v0)  # (x_i - center) . v0
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
        return _weighted_row_sum(x, rows, best_w).astype(x.dtype), None


class SMEA(_Spectral):
    """Smallest maximum eigenvalue averaging: the mean of the n - f inputs whose
    covariance has the smallest top eigenvalue.

    S* = argmin over |S| = n - f of lambda_max(sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T),
    out = mu_{S*} (Allouah, Guerraoui, Gupta, Pinot & Stephan, "On the privacy-
    robustness-utility trilemma in distributed learning", ICML 2023; ByzFL's SMEA). All
    C(n, f) subsets are enumerated, as in ByzFL, but each eigenvalue is exact and comes
    from the subset's (n - f) x (n - f) centred Gram block, batched (ByzFL: one power
    iteration per subset over d coordinates). Equal eigenvalues: the first subset in
    ``itertools.combinations`` order. Needs n > 2f and C(n, f) <= 2,000,000; outside
    the guarantee the formula runs as is up to f = n - 1.

    Example: f=1 on (0, 1, 2, 30): the subset (0, 1, 2) has the smallest spread -> 1.
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
            return _mean_rows(x, rows), list(rows)
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
            else:
                lam = np.empty(len(batch))
                for b, subset in enumerate(batch):
                    p = _project(x, [rows[i] for i in subset], _unit_random(d, generator))
                    a = p - p.mean()
                    for _ in range(self.power_iterations):
                        lam[b] = math.sqrt(max(float(a @ sub[b] @ a), 0.0))
                        a = sub[b] @ a / lam[b] if lam[b] > 0 else np.zeros(size)
            pos = int(np.argmin(lam))
            if lam[pos] < best_lam:
                best_lam, best = float(lam[pos]), batch[pos]
        chosen = [rows[i] for i in best]
        return _mean_rows(x, chosen), chosen


# --------------------------------------------------------------------------------------
# Iterative rules
# --------------------------------------------------------------------------------------


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

    Example: f=1 on (0,0), (1,0), (0,1), (100,100) gives (0.5, 0.5).
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
        z = vector_param(_local_columns(self.init, d), d, f"{self.name}: init")
        if z is None:
            z = _coordinate_median(x, rows).astype(np.float64)
        for _ in range(self.num_iterations):
            dists = np.sqrt(_squared_distances_to(x, rows, z))
            weights = 1.0 / np.maximum(dists, self.nu)
            weights /= weights.sum()
            new = _weighted_row_sum(x, rows, weights)
            diff = new - z
            step = math.sqrt(_dot(diff, diff))  # over every shard's columns
            z = new
            if step <= self.tol * math.sqrt(_dot(z, z)):
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

    Example: tau=1 on (1, 2, 3, 1000) from the median 2.5 gives 2.5.
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
        v = vector_param(_local_columns(self.center, d), d, f"{self.name}: center")
        if v is None:
            v = _coordinate_median(x, rows).astype(np.float64)
        k = len(rows)
        for _ in range(self.num_iterations):
            dists = np.sqrt(_squared_distances_to(x, rows, v))
            with np.errstate(divide="ignore"):
                scale = np.minimum(1.0, self.tau / dists)  # tau / 0 = inf -> 1
            # v + (1/k) sum_i c_i (x_i - v) = (1 - sum(c)/k) v + (1/k) sum_i c_i x_i
            v = (1.0 - scale.sum() / k) * v + _weighted_row_sum(x, rows, scale / k)
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


RULES: dict[str, type[Rule]] = {
    cls.name: cls
    for cls in (
        CoordinateMedian,
        MultiKrum,
        Bulyan,
        Mean,
        TrimmedMean,
        GeometricMedian,
        CenteredClipping,
        SignMajority,
        Krum,
        MDA,
        MoNNA,
        Meamed,
        CAF,
        SMEA,
    )
}
"""Config name -> rule class. The one registry: build rules through ``build_aggregator``."""
