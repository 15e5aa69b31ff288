"""Coordinate-wise rules: each output coordinate depends on that coordinate only.

The coordinate median and the trimmed mean (Yin et al. 2018), the mean around the
median (Xie et al. 2018), the plain mean and signSGD's majority vote (Bernstein et al.
2019). Order statistics come from comparator networks
(:mod:`byzshield.aggregators.order`); no distance is computed, so a sharded server
needs only its own columns.
"""

from __future__ import annotations

import numpy as np

from byzshield.aggregators.columns import chunk_width, chunks, over_columns
from byzshield.aggregators.order import (
    closest_to_median_reduce,
    coordinate_median,
    order_statistics,
    selection_network,
    sorting_network,
)
from byzshield.aggregators.rows import mean_rows
from byzshield.aggregators.rule import Rule

__all__ = ["CoordinateMedian", "Mean", "Meamed", "SignMajority", "TrimmedMean"]


class CoordinateMedian(Rule):
    """Coordinate-wise median: out[c] = median_i x_i[c].

    Yin et al., "Byzantine-robust distributed learning: towards optimal statistical
    rates", ICML 2018. An even count's median is the mean of its two middle values
    (numpy's and ByzFL's convention; ``torch.median`` returns the lower one). Needs
    n > 2f. f does not enter the formula. Median of means is this rule after the
    ``bucketing`` pre-aggregation.

    Example::

        >>> stack = torch.tensor([[1.0], [5.0], [2.0], [100.0]])
        >>> aggregate("coord-median", stack, f=1).value.tolist()
        [3.5]
    """

    name = "coord-median"

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        return coordinate_median(x, rows), None


class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values, average.

    out[c] = (1 / (n - 2f)) sum_{j=f}^{n-f-1} x_(j)[c], x_(j) the j-th smallest
    (Yin et al., ICML 2018). Needs n > 2f; outside it f is clamped to (n - 1) // 2.

    Example::

        >>> stack = torch.tensor([[-50.0], [1.0], [2.0], [3.0], [50.0]])
        >>> aggregate("trimmed-mean", stack, f=1).value.tolist()
        [2.0]
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

        network = selection_network(k, kept)
        return order_statistics(x, [(i,) for i in rows], network, reduce), None


class Meamed(Rule):
    """Mean around the median: per coordinate the mean of the n - f values closest to it.

    out[c] = mean of the n - f values x_i[c] nearest to median_i x_i[c] (Xie, Koyejo &
    Gupta, "Generalized Byzantine-tolerant SGD", 2018; ByzFL's Meamed). Equal distances
    keep the lower value (ByzFL: whatever ``torch.topk`` returns). Needs n > 2f; outside
    it the formula runs as is up to f = n - 1.

    Example (median 1.5, the three values closest to it 0, 1, 2)::

        >>> stack = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
        >>> aggregate("meamed", stack, f=1).value.tolist()
        [1.0]
    """

    name = "meamed"

    def defined_f(self, n):
        return n - 1

    def core(self, x, rows, f, *, dist=None, generator=None):
        k = len(rows)
        reduce = closest_to_median_reduce(k, k - f)
        return order_statistics(x, [(i,) for i in rows], sorting_network(k), reduce), None


class Mean(Rule):
    """Coordinate-wise mean (1/n) sum_i x_i; float64 accumulation.

    Not robust: one input can move it anywhere. ``f`` is accepted (any f >= 0) so that
    the DRACO-style ``maj_vote`` approach can pass the same arguments as the robust rules;
    it only decides how many non-finite rows count as expected. ``max_f(n)`` is n.

    Example::

        >>> aggregate("mean", torch.tensor([[1.0, 2.0], [3.0, 4.0]]), f=0).value.tolist()
        [2.0, 3.0]
    """

    name = "mean"
    requirement = "n >= 1"
    reference = "f is not used"
    propagates_nonfinite = True  # a NaN or Inf row makes the float64 sum non-finite

    def max_f(self, n):
        return n

    def defined_f(self, n):
        return None

    def check(self, n, f):
        pass  # any f: it does not enter the mean

    def core(self, x, rows, f, *, dist=None, generator=None):
        return mean_rows(x, rows), None


class SignMajority(Rule):
    """signSGD with majority vote: out[c] = sign(sum_i sign(x_i[c])).

    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with majority vote is
    communication efficient and fault tolerant", ICLR 2019. Output entries are -1, 0 (a
    tied vote) or +1. The rule takes signs first, so pre-aggregations see signs: after
    ``bucketing`` it is the original ByzShield/DETOX rule, whose workers sent int8 signs,
    sign(sum_b sign(sum_{i in B_b} sign(x_i))). Needs n > 2f; f does not enter.

    Example::

        >>> stack = torch.tensor([[0.5, -2.0], [3.0, -1.0], [-9.0, 4.0]])
        >>> aggregate("sign-majority", stack, f=1).value.tolist()
        [1.0, -1.0]
    """

    name = "sign-majority"
    takes_signs = True

    def defined_f(self, n):
        return None

    def core(self, x, rows, f, *, dist=None, generator=None):
        out = np.empty(x.shape[1], dtype=x.dtype)

        def body(lo: int, hi: int) -> None:
            for a, c in chunks(lo, hi, chunk_width(len(rows))):
                votes = np.zeros(c - a, dtype=np.float64)
                for i in rows:
                    votes += np.sign(x[i, a:c].astype(np.float64))
                out[a:c] = np.sign(votes)

        over_columns(x.shape[1], body)
        return out, None
