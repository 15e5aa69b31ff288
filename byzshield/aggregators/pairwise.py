"""Pairwise squared distances with a certified error bound, and the selections made
on them (Krum's lowest scores, nearest neighbours).

D_ij = |x_i - x_j|^2 comes first from a float64 Gram matrix, fast, with a bound on its
error; a selection (Krum, Bulyan, NNM, MDA) is accepted only when the bounds separate
what it chose from what it left, and the rows the bounds cannot separate are recomputed
from exact differences (:meth:`PairwiseDistances.refine`). So the selection is the one
exact distances make, whatever the rounding of the fast path.

Example::

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=np.float32)
    >>> krum_select(PairwiseDistances(x, range(5)), range(5), num_neighbours=2, m=4)
    [0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from byzshield.aggregators.columns import blas_single_threaded, chunk_width, chunks
from byzshield.aggregators.reductions import reduce_columns, total_columns

__all__ = ["PairwiseDistances", "distances_for", "krum_select", "nearest"]

_UNIT_ROUNDOFF = 2.0**-53
# Columns per float64 block of the Gram matrix (measured best on 2 cores, n = 25).
_GRAM_COLUMNS = 4096
# OpenBLAS runs a GEMM with m n k <= 65536 * 4 on the calling thread: where the per-thread
# limit (columns.blas_single_threaded) is unavailable, Gram blocks stay under that size
# instead (slower per flop, but never the oversubscribed case).
_BLAS_SINGLE_THREAD_MNK = 65536 * 4


def _gram_columns(num_rows: int) -> int:
    if blas_single_threaded():
        return _GRAM_COLUMNS
    return max(64, min(_GRAM_COLUMNS, _BLAS_SINGLE_THREAD_MNK // max(num_rows, 1) ** 2))


def _gamma(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k float64 ops."""
    return k * _UNIT_ROUNDOFF / (1 - k * _UNIT_ROUNDOFF)


class PairwiseDistances:
    """Squared Euclidean distances between the rows ``rows`` of x, with error bounds.

    First from a float64 Gram matrix G (chunked GEMM on our column threads, fast):
    D_ij = G_ii + G_jj - 2 G_ij, whose error is at most gamma_(d+3) (|x_i| + |x_j|)^2
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1; float32 products are
    exact in float64). That is tight when inputs are far apart and useless when they
    are nearly identical, so :meth:`refine` recomputes whole rows from exact
    differences (sum of squares of x_i - x_j in float64: relative error gamma_(d+2)).
    ``lo``/``hi`` bracket the exact distances.

    The Gram pass doubles as the non-finite scan: float32 squares cannot overflow a
    float64 sum, so G_ii is non-finite exactly when row i holds NaN or +-Inf
    (:attr:`nonfinite`). Such an object is only good for finding those rows.
    """

    def __init__(self, x: np.ndarray, rows: Sequence[int]):
        self.x = x
        self.rows = np.asarray(rows)
        a, d = len(rows), x.shape[1]
        everything = a == x.shape[0]
        gram_columns = _gram_columns(a)

        def body(lo: int, hi: int) -> np.ndarray:
            gram = np.zeros((a, a))
            width = min(gram_columns, hi - lo)
            buf = np.empty((a, width))
            with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf rows: see above
                for c0, c1 in chunks(lo, hi, width):
                    block = buf[:, : c1 - c0]
                    if everything:
                        np.copyto(block, x[:, c0:c1])
                    else:  # only the finite rows (rare)
                        np.copyto(block, x[self.rows, c0:c1])
                    gram += block @ block.T
            return gram

        g = reduce_columns(d, body)
        d = total_columns(d)  # the error bounds are those of the whole vector
        diag = np.diag(g).copy()
        self.nonfinite = self.rows[~np.isfinite(diag)].tolist()
        if self.nonfinite:
            return
        sq = np.clip(diag, 0.0, None)
        norms = np.sqrt(sq)
        dist = sq[:, None] + sq[None, :] - 2.0 * g
        np.clip(dist, 0.0, None, out=dist)
        np.fill_diagonal(dist, 0.0)
        err = 2.0 * _gamma(d + 3) * (norms[:, None] + norms[None, :]) ** 2
        np.fill_diagonal(err, 0.0)
        self.dist, self.err = dist, err
        self.exact_rows = np.zeros(a, dtype=bool)
        self._exact_gamma = 2.0 * _gamma(d + 2)

    @property
    def lo(self) -> np.ndarray:
        return np.clip(self.dist - self.err, 0.0, None)

    @property
    def hi(self) -> np.ndarray:
        return self.dist + self.err

    def refine(self, local: Sequence[int]) -> None:
        """Recompute rows (and the matching columns) ``local`` from exact differences."""
        local = [i for i in local if not self.exact_rows[i]]
        if not local:
            return
        x, d = self.x, self.x.shape[1]
        a = len(self.rows)

        def body(lo: int, hi: int) -> np.ndarray:
            acc = np.zeros((len(local), a))
            for c0, c1 in chunks(lo, hi, chunk_width(a)):
                block = x[self.rows, c0:c1].astype(np.float64)
                for pos, i in enumerate(local):
                    diff = block - block[i]
                    acc[pos] += np.einsum("ij,ij->i", diff, diff)
            return acc

        exact = reduce_columns(d, body)
        for pos, i in enumerate(local):
            self.dist[i, :] = self.dist[:, i] = exact[pos]
            self.err[i, :] = self.err[:, i] = self._exact_gamma * exact[pos]
            self.dist[i, i] = self.err[i, i] = 0.0
            self.exact_rows[i] = True


def _smallest_sums(values: np.ndarray, k: int) -> np.ndarray:
    """Column j - k of the result: per row, the sum of the j + 1 smallest entries, for
    j = k - 1 .. a - 2 (a = row length; the last entry, the +inf diagonal, is excluded).

    Sums run in ascending order, so rows with equal multisets give bit-equal sums.
    """
    part = np.sort(values, axis=1)[:, :-1]
    sums = np.cumsum(part, axis=1)  # sequential along each row
    return sums[:, k - 1 :]


def _sum_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the sum of the k smallest entries (ascending order)."""
    return _smallest_sums(values, k)[:, 0]


def krum_select(
    dist: PairwiseDistances, active: Sequence[int], num_neighbours: int, m: int
) -> list[int]:
    """The m inputs of ``active`` (local indices) with the lowest Krum scores.

    score(i) = sum of the num_neighbours smallest D_ij, j in active, j != i. Exact ties
    (e.g. two mutual nearest neighbours scored on one neighbour) are broken by the sum
    over one more neighbour, then two more, ..., then by the lower index, so that the
    choice does not depend on the input order for distinct inputs. The choice is
    certified against the distance error bounds; rows the bounds cannot separate are
    refined (exact distances) until they can, or until they are exact, after which the
    computed float64 scores decide.
    """
    active = np.asarray(active)
    if m >= len(active):
        return sorted(active.tolist())
    while True:
        sub = np.ix_(active, active)
        inf_diag = np.where(np.eye(len(active), dtype=bool), np.inf, 0.0)
        keys = _smallest_sums(dist.dist[sub] + inf_diag, num_neighbours)
        lo = _sum_smallest(dist.lo[sub] + inf_diag, num_neighbours)
        hi = _sum_smallest(dist.hi[sub] + inf_diag, num_neighbours)
        # np.lexsort: last key is the primary one; the position breaks full ties.
        order = np.lexsort((np.arange(len(active)), *keys.T[::-1]))
        chosen, rest = order[:m], order[m:]
        worst_chosen, best_rest = hi[chosen].max(), lo[rest].min()
        if worst_chosen < best_rest:
            break
        unsure = np.concatenate([chosen[hi[chosen] >= best_rest], rest[lo[rest] <= worst_chosen]])
        to_refine = [int(active[u]) for u in unsure if not dist.exact_rows[active[u]]]
        if not to_refine:
            break
        dist.refine(to_refine)
    return sorted(active[chosen].tolist())


def nearest(dist: PairwiseDistances, i: int, candidates: Sequence[int], k: int) -> list[int]:
    """The k of ``candidates`` (local indices) nearest to local row i, ascending indices.

    Nearest by squared distance D_ij (D_ii = 0); equal distances prefer the lower index.
    Certified as :func:`krum_select` is: when the bounds cannot separate the k-th from
    the (k+1)-th, row i is recomputed from exact differences and its float64 values decide.
    """
    candidates = np.asarray(candidates)
    if k >= len(candidates):
        return sorted(candidates.tolist())
    while True:
        order = np.lexsort((candidates, dist.dist[i, candidates]))
        chosen, rest = candidates[order[:k]], candidates[order[k:]]
        if dist.hi[i, chosen].max() < dist.lo[i, rest].min() or dist.exact_rows[i]:
            return sorted(chosen.tolist())
        dist.refine([i])


def distances_for(x: np.ndarray, rows: Sequence[int], dist: PairwiseDistances | None):
    """The distances between ``rows`` of x: ``dist`` if it covers exactly them, else new."""
    if dist is not None and dist.rows.tolist() == list(rows):
        return dist
    return PairwiseDistances(x, rows)
