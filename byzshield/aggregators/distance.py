"""Rules that select inputs by their pairwise distances: multi-Krum and Krum
(Blanchard et al. 2017), Bulyan (El Mhamdi et al. 2018), MoNNA (Farhadkhani et al.
2023) and minimum-diameter averaging (El Mhamdi et al. 2020).

Each selection is exact: the distances come from a float64 Gram matrix with a certified
error bound and near ties are recomputed from exact differences
(:mod:`byzshield.aggregators.pairwise`); the selected rows are reported in
``AggregateResult.selected``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from byzshield.aggregators._checks import check_count
from byzshield.aggregators.order import closest_to_median_reduce, order_statistics, sorting_network
from byzshield.aggregators.pairwise import distances_for, krum_select
from byzshield.aggregators.rows import mean_rows, squared_distances_to
from byzshield.aggregators.rule import Rule
from byzshield.design.covers import cover_exists

__all__ = ["MDA", "Bulyan", "Krum", "MoNNA", "MultiKrum"]

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

    Example (scores 5, 2, 2, 5 and huge: the mean of 0..3)::

        >>> stack = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
        >>> aggregate("multi-krum", stack, f=1).value.tolist()
        [1.5]
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
        local = krum_select(distances_for(x, rows, dist), range(k), neighbours, m)
        chosen = [rows[i] for i in local]
        return mean_rows(x, chosen), chosen

    def describe(self):
        m = "n-f" if self.m is None else self.m
        k = "" if self.num_neighbours is None else f", k={self.num_neighbours}"
        return f"{self.name}(m={m}{k})"


class Krum(MultiKrum):
    """Krum: the input with the lowest Krum score (multi-Krum with m = 1).

    Blanchard et al., NeurIPS 2017. score(i) as in :class:`MultiKrum`, k = n - f - 2
    (ByzFL's Krum scores n - f - 1: ``num_neighbours`` overrides). Needs n > 2f + 2.

    Example (rows 1 and 2 tie on 2 and 3 neighbours; the fourth decides)::

        >>> stack = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
        >>> aggregate("krum", stack, f=1).value.tolist()
        [2.0]
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

    Example (selects 4, 2, 8, 1, 9, then keeps 4, 2, 1 around the median 4)::

        >>> stack = torch.tensor([[0.0], [1.0], [2.0], [4.0], [8.0], [9.0], [1e6]])
        >>> aggregate("bulyan", stack, f=1).value.tolist()
        [2.3333332538604736]
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
            dist = distances_for(x, rows, dist)
            active, local = list(range(k)), []
            while len(local) < theta:
                # Krum on what is left, same f (Algorithm 1). |R| ends at 2f + 1, where
                # |R| - f - 2 < 1: score at least the nearest neighbour there.
                neighbours = max(len(active) - f - 2, 1)
                (winner,) = krum_select(dist, active, neighbours, 1)
                local.append(winner)
                active.remove(winner)
            chosen = sorted(rows[i] for i in local)
        reduce = closest_to_median_reduce(theta, theta - 2 * f)
        value = order_statistics(x, [(i,) for i in chosen], sorting_network(theta), reduce)
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

    Example (the two inputs nearest to row 0 are 0 and 1)::

        >>> stack = torch.tensor([[0.0], [1.0], [5.0]])
        >>> aggregate("monna", stack, f=1, idx=0).value.tolist()
        [0.5]
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
        sq = squared_distances_to(x, rows, x[ref].astype(np.float64))
        order = np.lexsort((np.arange(len(rows)), sq))
        chosen = sorted(rows[i] for i in order[: len(rows) - f])
        return mean_rows(x, chosen), chosen

    def describe(self):
        return f"{self.name}(idx={self.idx})"


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
        if cover_exists(graph(values[mid]), everyone, 0, budget):
            hi = mid
        else:
            lo = mid + 1
    t = float(values[lo]) if len(values) else 0.0
    adj = graph(t)
    alive, keep, kept = everyone, 0, 0
    for i in range(k):
        if kept == size:
            break
        if cover_exists(adj, alive, keep | (1 << i), budget):
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

    Example (diameters: {0, 1} 1, {0, 3} 3, {1, 3} 2)::

        >>> stack = torch.tensor([[0.0], [1.0], [3.0]])
        >>> aggregate("mda", stack, f=1).value.tolist()
        [0.5]
    """

    name = "mda"
    uses_distances = True

    def defined_f(self, n):
        return n - 1

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        if f == 0:
            return mean_rows(x, rows), list(rows)
        dist = distances_for(x, rows, dist)
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
        return mean_rows(x, chosen), chosen
