"""Robust aggregation rules on an (n, d) stack of vote winners (ByzShield section 5).

Every rule is a pure function ``rule(stack, *, f, **params) -> Tensor`` of shape (d,):
``stack`` holds the n inputs (after the vote: one row per file, n = number of files) as
rows, ``f`` is the number of inputs the rule must tolerate being arbitrary (ByzShield
passes c_max(q) of its placement, DETOX q // r', the baseline q). Rules know nothing of
workers or ranks.

=================  ==========================================  ===================
config name        rule                                         requirement
=================  ==========================================  ===================
coord-median       coordinate-wise median (of bucket means)     n > 2f, buckets > 2f
multi-krum         Blanchard et al. 2017                        n > 2f + 2
bulyan             El Mhamdi et al. 2018                        n >= 4f + 3
mean               plain average (not robust; f is ignored)    n >= 1
trimmed-mean       Yin et al. 2018                              n > 2f
geometric-median   smoothed Weiszfeld (Pillutla et al. 2022)    n > 2f
centered-clipping  Karimireddy, He & Jaggi 2021                 n > 2f
sign-majority      signSGD with majority vote (Bernstein 2019)  n > 2f, buckets > 2f
=================  ==========================================  ===================

Conventions (see docs/aggregators.md for where libraries disagree):

- Median of an even count is the mean of the two middle values (numpy, ByzFL's
  ``torch.quantile``); ``torch.median`` returns the lower one instead.
- Krum's score sums the squared distances to the n - f - 2 nearest other inputs
  (Blanchard et al.); ByzFL uses n - f - 1. ``num_neighbours`` overrides.
- Non-finite input: a row holding NaN or +-Inf is treated as Byzantine. It is dropped,
  the rule runs on the k remaining finite rows with f' = max(f - k_bad, 0), and
  :func:`aggregate` reports the dropped rows. If more rows are non-finite than f (the
  declared bound is already broken) and fewer finite rows remain than the rule needs
  with f' = 0 (3 for Krum and Bulyan), their mean is returned; with no finite row at all,
  zeros. So a non-finite input never produces a non-finite output, and all reductions
  accumulate in float64, so finite inputs near the float32 limit do not overflow either.
- Deterministic: no global random state; bucketing takes an optional explicit
  ``torch.Generator``. Ties are broken by the lower row index.

Implementation: rules run on a zero-copy NumPy view of the stack, column chunk by
column chunk (each chunk fits in cache), spread over ``torch.get_num_threads()``
threads. Order statistics come from comparator networks (Batcher's odd-even merge sort,
pruned to the outputs needed) applied to whole rows with ``np.minimum``/``np.maximum``,
which beats ``torch.median(dim=0)`` many times over. Pairwise distances for Krum and
Bulyan come from a float64 Gram matrix with a certified error bound; any decision the
bound cannot certify is recomputed from exact row differences. No rule copies the stack.

Example::

    >>> import torch
    >>> from byzshield.aggregators import aggregate, coordinate_median
    >>> stack = torch.tensor([[1.0, 10.0], [2.0, 20.0], [1e30, -1e30]])
    >>> coordinate_median(stack, f=1).tolist()
    [2.0, 10.0]
    >>> aggregate("mean", torch.tensor([[1.0], [float("nan")], [3.0]]), f=1).value.tolist()
    [2.0]

Benchmark: ``python benchmarks/aggregators.py``; tests:
``OMP_NUM_THREADS=1 python -m pytest tests/test_aggregators.py``.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AGGREGATORS",
    "AggregateResult",
    "aggregate",
    "bulyan",
    "centered_clipping",
    "check_requirement",
    "coordinate_median",
    "geometric_median",
    "mean",
    "multi_krum",
    "multi_krum_select",
    "sign_majority",
    "trimmed_mean",
]


@dataclass(frozen=True)
class AggregateResult:
    """Output of :func:`aggregate`.

    Attributes:
        value: the aggregate, shape (d,), same dtype as the stack; always finite.
        nonfinite_rows: rows of the stack that held NaN or +-Inf and were treated as
            Byzantine (dropped), ascending.
        selected: for multi-krum and bulyan, the rows the Krum stage selected
            (ascending); None for the other rules.
    """

    value: Tensor
    nonfinite_rows: list[int]
    selected: list[int] | None = None


# --------------------------------------------------------------------------------------
# Column-chunked, multi-threaded execution
# --------------------------------------------------------------------------------------

# Elements per (rows x columns) chunk a thread works on: small enough to stay in cache.
_CHUNK_ELEMENTS = 1 << 18
# Columns per block handed to a thread. Fixed, so per-block partial sums (distances) are
# combined in the same order whatever the thread count: results are bit-identical.
_BLOCK_COLUMNS = 1 << 16

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (process id, threads): a forked child needs its own


def _chunk_width(num_rows: int) -> int:
    return max(1024, _CHUNK_ELEMENTS // max(num_rows, 1))


def _executor(num_threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    key = (os.getpid(), num_threads)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            # A pool inherited through fork() has no threads left: never reuse it.
            _pool = ThreadPoolExecutor(num_threads, thread_name_prefix="byzshield-agg")
            _pool_key = key
        return _pool


def _over_columns(d: int, body: Callable[[int, int], object]) -> list:
    """Run ``body(lo, hi)`` on fixed column blocks covering [0, d), on the torch threads.

    NumPy releases the GIL inside its loops, so the threads overlap. Returns the bodies'
    results in column order; the blocks do not depend on the thread count.
    """
    blocks = list(_chunks(0, d, _BLOCK_COLUMNS))
    threads = min(torch.get_num_threads(), len(blocks))
    if threads <= 1:
        return [body(lo, hi) for lo, hi in blocks]
    return list(_executor(threads).map(lambda block: body(*block), blocks))


def _chunks(lo: int, hi: int, width: int):
    for start in range(lo, hi, width):
        yield start, min(start + width, hi)


def _weighted_row_sum(
    x: np.ndarray, rows: Sequence[int], weights: Sequence[float] | None = None
) -> np.ndarray:
    """sum_i w_i x[rows[i]] in float64, rows added in the given order; shape (d,).

    Weights default to 1. Sequential accumulation per coordinate keeps the result
    independent of threads and chunking.
    """
    d = x.shape[1]
    out = np.empty(d, dtype=np.float64)
    scale = [1.0] * len(rows) if weights is None else [float(w) for w in weights]

    def body(lo: int, hi: int) -> None:
        width = min(16384, hi - lo)  # a float64 accumulator chunk that stays in cache
        tmp = np.empty(width, dtype=np.float64)
        for a, b in _chunks(lo, hi, width):
            acc = out[a:b]
            for pos, (i, w) in enumerate(zip(rows, scale, strict=True)):
                if pos == 0:
                    np.multiply(x[i, a:b], w, out=acc, dtype=np.float64)
                elif w == 1.0:
                    np.add(acc, x[i, a:b], out=acc)
                else:
                    np.multiply(x[i, a:b], w, out=tmp[: b - a], dtype=np.float64)
                    acc += tmp[: b - a]

    _over_columns(d, body)
    return out


def _mean_rows(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Coordinate-wise mean of x[rows] (float64 accumulation, cast to x's dtype)."""
    total = _weighted_row_sum(x, rows)
    total /= len(rows)
    return total.astype(x.dtype)


def _squared_distances_to(x: np.ndarray, rows: Sequence[int], center: np.ndarray) -> np.ndarray:
    """||x_i - center||^2 for i in rows, float64, shape (len(rows),)."""
    d = x.shape[1]
    idx = np.asarray(rows)

    def body(lo: int, hi: int) -> np.ndarray:
        acc = np.zeros(len(rows))
        for a, b in _chunks(lo, hi, _chunk_width(len(rows))):
            diff = x[idx, a:b].astype(np.float64)
            diff -= center[a:b]
            acc += np.einsum("ij,ij->i", diff, diff)
        return acc

    return np.sum(_over_columns(d, body), axis=0)


# --------------------------------------------------------------------------------------
# Comparator networks (order statistics over rows, vectorised over coordinates)
# --------------------------------------------------------------------------------------


@functools.cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on n wires (Knuth, TAOCP vol. 3, 5.3.4).

    Built for the next power of two and pruned: the padding wires hold +inf, and a
    comparator (i, j) with i < j never moves the +inf at j >= n, so those are dropped.
    Comparator (i, j) puts the smaller value on wire i.
    """
    size = 1
    while size < n:
        size *= 2
    network = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        network.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in network if b < n)


@functools.cache
def _selection_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`_sorting_network` that affect the wires ``outputs``.

    Walking backwards, a comparator is needed when it touches a needed wire; its other
    wire becomes needed too. The kept comparators leave the outputs exactly as the full
    sort would (113 of 140 comparators for the median of 25).
    """
    needed = set(outputs)
    kept = []
    for a, b in reversed(_sorting_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


def _apply_network(
    rows: list[np.ndarray], spare: np.ndarray, network: Sequence[tuple[int, int]]
) -> None:
    """Run the comparators on equal-length rows in place: rows[k] ends as order stat k."""
    for a, b in network:
        np.minimum(rows[a], rows[b], out=spare)
        np.maximum(rows[a], rows[b], out=rows[b])
        rows[a], spare = spare, rows[a]


def _order_statistics(
    x: np.ndarray,
    sources: Sequence[Sequence[int]],
    network: Sequence[tuple[int, int]],
    reduce: Callable[[list[np.ndarray]], np.ndarray],
) -> np.ndarray:
    """out[c] = reduce(order statistics of the sources at coordinate c), shape (d,).

    Each source is a tuple of row indices; its value is the mean of those rows (a
    bucket; float64 accumulation) or the row itself for a 1-tuple. ``reduce`` receives
    the len(sources) rows after ``network`` (row k = k-th smallest where the network
    sorts) and returns the chunk of the output.
    """
    d = x.shape[1]
    k = len(sources)
    out = np.empty(d, dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        width = min(_chunk_width(k), hi - lo)
        buf = np.empty((k, width), dtype=x.dtype)
        spare_buf = np.empty(width, dtype=x.dtype)
        acc_buf = np.empty(width, dtype=np.float64)
        for a, b in _chunks(lo, hi, width):
            w = b - a
            rows = [buf[i, :w] for i in range(k)]
            for row, src in zip(rows, sources, strict=True):
                if len(src) == 1:
                    np.copyto(row, x[src[0], a:b])
                else:
                    acc = acc_buf[:w]
                    np.copyto(acc, x[src[0], a:b])
                    for i in src[1:]:
                        np.add(acc, x[i, a:b], out=acc)
                    acc /= len(src)
                    np.copyto(row, acc, casting="same_kind")
            _apply_network(rows, spare_buf[:w], network)
            out[a:b] = reduce(rows)

    _over_columns(d, body)
    return out


def _buckets(
    rows: Sequence[int], num_buckets: int, generator: torch.Generator | None
) -> list[tuple[int, ...]]:
    """Split rows into num_buckets contiguous buckets (sizes as np.array_split).

    With a generator the rows are first permuted by ``torch.randperm(generator=...)``.
    """
    rows = list(rows)
    if generator is not None:
        perm = torch.randperm(len(rows), generator=generator).tolist()
        rows = [rows[p] for p in perm]
    size, extra = divmod(len(rows), num_buckets)
    out, start = [], 0
    for b in range(num_buckets):
        stop = start + size + (1 if b < extra else 0)
        out.append(tuple(rows[start:stop]))
        start = stop
    return out


def _median_reduce(k: int) -> tuple[tuple[int, ...], Callable[[list[np.ndarray]], np.ndarray]]:
    if k % 2 == 1:
        return (k // 2,), lambda rows: rows[k // 2]

    def even(rows: list[np.ndarray]) -> np.ndarray:
        # 0.5 * a + 0.5 * b cannot overflow (a + b can, near the float32 limit).
        out = rows[k // 2 - 1] * 0.5
        out += rows[k // 2] * 0.5
        return out

    return (k // 2 - 1, k // 2), even


# --------------------------------------------------------------------------------------
# Pairwise distances with a certified error bound (Krum, Bulyan)
# --------------------------------------------------------------------------------------

_UNIT_ROUNDOFF = 2.0**-53
# Columns per float64 block of the Gram matrix (measured best on 2 cores, n = 25).
_GRAM_COLUMNS = 4096


def _gamma(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k float64 ops."""
    return k * _UNIT_ROUNDOFF / (1 - k * _UNIT_ROUNDOFF)


class _PairwiseDistances:
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

        def body(lo: int, hi: int) -> np.ndarray:
            gram = np.zeros((a, a))
            width = min(_GRAM_COLUMNS, hi - lo)
            buf = np.empty((a, width))
            with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf rows: see above
                for c0, c1 in _chunks(lo, hi, width):
                    block = buf[:, : c1 - c0]
                    if everything:
                        np.copyto(block, x[:, c0:c1])
                    else:  # only the finite rows (rare)
                        np.copyto(block, x[self.rows, c0:c1])
                    gram += block @ block.T
            return gram

        g = np.sum(_over_columns(d, body), axis=0)
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
            for c0, c1 in _chunks(lo, hi, _chunk_width(a)):
                block = x[self.rows, c0:c1].astype(np.float64)
                for pos, i in enumerate(local):
                    diff = block - block[i]
                    acc[pos] += np.einsum("ij,ij->i", diff, diff)
            return acc

        exact = np.sum(_over_columns(d, body), axis=0)
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


def _krum_select(
    dist: _PairwiseDistances, active: Sequence[int], num_neighbours: int, m: int
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


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _as_count(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _check_count(value: object, what: str, lo: int, hi: int | None = None) -> int:
    count = _as_count(value, what)
    if count < lo or (hi is not None and count > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{what} must be {allowed}, got {count}")
    return count


def _check_positive(value: object, what: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {allowed}, got {value!r}")
    return float(value)


def _check_majority(name: str, n: int, f: int) -> None:
    if not n > 2 * f:
        raise ValueError(f"{name} needs n > 2f (an honest majority), got n={n}, f={f}")


def _check_buckets(name: str, n: int, f: int, num_buckets: int | None) -> None:
    if num_buckets is None:
        return
    b = _check_count(num_buckets, f"{name}: num_buckets", 1, n)
    if not b > 2 * f:
        raise ValueError(
            f"{name} needs num_buckets > 2f (each Byzantine input can spoil one bucket "
            f"mean), got num_buckets={b}, f={f}; num_buckets=None means one bucket per input"
        )


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")


def _check_vector(value: object, what: str) -> None:
    if value is not None and not isinstance(value, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (d,) or None, got {value!r}")


def _check_coord_median(n, f, num_buckets=None, generator=None):
    _check_majority("coord-median", n, f)
    _check_buckets("coord-median", n, f, num_buckets)
    _check_generator(generator)


def _check_multi_krum(n, f, m=None, num_neighbours=None):
    if not n > 2 * f + 2:
        raise ValueError(f"multi-krum needs n > 2f + 2 (Blanchard et al.), got n={n}, f={f}")
    if m is not None:
        _check_count(m, "multi-krum: m", 1, n - f)
    if num_neighbours is not None:
        _check_count(num_neighbours, "multi-krum: num_neighbours", 1, n - 1)


def _check_bulyan(n, f):
    if not n >= 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f + 3 (El Mhamdi et al.), got n={n}, f={f}")


def _check_mean(n, f):
    pass  # any n >= 1 (checked for every rule); f does not enter the mean


def _check_trimmed_mean(n, f):
    _check_majority("trimmed-mean", n, f)


def _check_geometric_median(n, f, num_iterations=10, nu=1e-6, tol=1e-7, init=None):
    _check_majority("geometric-median", n, f)
    _check_count(num_iterations, "geometric-median: num_iterations", 1)
    _check_positive(nu, "geometric-median: nu")
    _check_positive(tol, "geometric-median: tol", allow_zero=True)
    _check_vector(init, "geometric-median: init")


def _check_centered_clipping(n, f, tau=100.0, num_iterations=1, center=None):
    _check_majority("centered-clipping", n, f)
    _check_positive(tau, "centered-clipping: tau")
    _check_count(num_iterations, "centered-clipping: num_iterations", 1)
    _check_vector(center, "centered-clipping: center")


def _check_sign_majority(n, f, num_buckets=None, generator=None):
    _check_majority("sign-majority", n, f)
    _check_buckets("sign-majority", n, f, num_buckets)
    _check_generator(generator)


# --------------------------------------------------------------------------------------
# Rule cores: x is the (n, d) NumPy view, rows the finite rows, f the effective f.
# Each returns (value (d,) of x's dtype, selected rows or None).
# --------------------------------------------------------------------------------------


def _vector_param(value: Tensor | None, d: int, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if value.shape != (d,):
        raise ValueError(f"{what} must have shape ({d},), got {tuple(value.shape)}")
    out = value.detach().cpu().numpy().astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} must be finite")
    return out


def _coord_median_core(x, rows, f, num_buckets=None, generator=None):
    b = len(rows) if num_buckets is None else min(num_buckets, len(rows))
    sources = _buckets(rows, b, generator) if b < len(rows) else [(i,) for i in rows]
    outputs, reduce = _median_reduce(len(sources))
    return _order_statistics(x, sources, _selection_network(len(sources), outputs), reduce), None


def _trimmed_mean_core(x, rows, f):
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


def _distances(x, rows, dist: _PairwiseDistances | None) -> _PairwiseDistances:
    """The distances between ``rows``: ``dist`` if it covers exactly them, else new."""
    if dist is not None and dist.rows.tolist() == list(rows):
        return dist
    return _PairwiseDistances(x, rows)


def _multi_krum_core(x, rows, f, m=None, num_neighbours=None, *, dist=None):
    k = len(rows)
    m = k - f if m is None else min(m, k - f)
    neighbours = k - f - 2 if num_neighbours is None else min(num_neighbours, k - 1)
    local = _krum_select(_distances(x, rows, dist), range(k), neighbours, m)
    chosen = [rows[i] for i in local]
    return _mean_rows(x, chosen), chosen


def _bulyan_window_reduce(theta: int, f: int):
    """Mean of the beta = theta - 2f sorted values closest to the median (per coordinate).

    The beta values closest to the median form a window sorted[s : s + beta]; with
    values sorted ascending, the window moves right past s while sorted[s + beta] is
    strictly closer to the median than sorted[s] (equal distances keep the lower value),
    so s = #{s < 2f : med - sorted[s] > sorted[s + beta] - med}. Distances are compared in
    float64 (as sorted[s] + sorted[s + beta] < 2 med); the window is summed in ascending
    order in float64 and divided by beta.
    """
    beta = theta - 2 * f
    _, median_of = _median_reduce(theta)

    def reduce(sorted_rows: list[np.ndarray]) -> np.ndarray:
        width = sorted_rows[0].shape[0]
        # med - a > b - med  <=>  a + b < 2 med, exact in float64 for float32 a, b, med
        twice_med = np.multiply(median_of(sorted_rows), 2.0, dtype=np.float64)
        start = np.zeros(width, dtype=np.intp)
        pair = np.empty(width, dtype=np.float64)
        for s in range(2 * f):
            np.add(sorted_rows[s], sorted_rows[s + beta], out=pair, dtype=np.float64)
            start += pair < twice_med
        flat = np.stack(sorted_rows).ravel()  # row s of the window at flat[s * width + c]
        index = start * width + np.arange(width)
        acc = np.zeros(width, dtype=np.float64)
        for _ in range(beta):
            acc += flat[index]
            index += width
        acc /= beta
        return acc

    return reduce


def _bulyan_core(x, rows, f, *, dist=None):
    k = len(rows)
    theta = k - 2 * f
    if theta == k:
        chosen = list(rows)
    else:
        dist = _distances(x, rows, dist)
        active, local = list(range(k)), []
        while len(local) < theta:
            # Krum on what is left, same f (El Mhamdi et al., Algorithm 1). |R| ends at
            # 2f + 1, where |R| - f - 2 < 1: score at least the nearest neighbour there
            # rather than pick arbitrarily.
            neighbours = max(len(active) - f - 2, 1)
            (winner,) = _krum_select(dist, active, neighbours, 1)
            local.append(winner)
            active.remove(winner)
        chosen = sorted(rows[i] for i in local)
    network = _sorting_network(theta)
    value = _order_statistics(x, [(i,) for i in chosen], network, _bulyan_window_reduce(theta, f))
    return value, chosen


def _mean_core(x, rows, f):
    return _mean_rows(x, rows), None


def _geometric_median_core(x, rows, f, num_iterations=10, nu=1e-6, tol=1e-7, init=None):
    d = x.shape[1]
    z = _vector_param(init, d, "geometric-median: init")
    if z is None:
        z = _coord_median_core(x, rows, f)[0].astype(np.float64)
    for _ in range(num_iterations):
        dists = np.sqrt(_squared_distances_to(x, rows, z))
        weights = 1.0 / np.maximum(dists, nu)
        weights /= weights.sum()
        new = _weighted_row_sum(x, rows, weights)
        step = np.linalg.norm(new - z)
        z = new
        if step <= tol * np.linalg.norm(z):
            break
    return z.astype(x.dtype), None


def _centered_clipping_core(x, rows, f, tau=100.0, num_iterations=1, center=None):
    d = x.shape[1]
    v = _vector_param(center, d, "centered-clipping: center")
    if v is None:
        v = _coord_median_core(x, rows, f)[0].astype(np.float64)
    k = len(rows)
    for _ in range(num_iterations):
        dists = np.sqrt(_squared_distances_to(x, rows, v))
        with np.errstate(divide="ignore"):
            scale = np.minimum(1.0, tau / dists)  # tau / 0 = inf -> 1
        # v + (1/k) sum_i c_i (x_i - v) = (1 - sum(c)/k) v + (1/k) sum_i c_i x_i
        v = (1.0 - scale.sum() / k) * v + _weighted_row_sum(x, rows, scale / k)
    return v.astype(x.dtype), None


def _sign_majority_core(x, rows, f, num_buckets=None, generator=None):
    b = len(rows) if num_buckets is None else min(num_buckets, len(rows))
    sources = _buckets(rows, b, generator) if b < len(rows) else [(i,) for i in rows]
    d = x.shape[1]
    out = np.empty(d, dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for a, c in _chunks(lo, hi, _chunk_width(len(sources))):
            votes = np.zeros(c - a, dtype=np.float64)
            for src in sources:
                total = x[src[0], a:c].astype(np.float64)
                for i in src[1:]:
                    total += x[i, a:c]
                votes += np.sign(total)
            out[a:c] = np.sign(votes)

    _over_columns(d, body)
    return out, None


@dataclass(frozen=True)
class _Rule:
    check: Callable[..., None]
    core: Callable[..., tuple[np.ndarray, list[int] | None]]
    min_rows_without_f: int  # rows the rule needs with f = 0
    uses_distances: bool = False  # core takes dist=: the Gram pass replaces the scan


_RULES: dict[str, _Rule] = {
    "coord-median": _Rule(_check_coord_median, _coord_median_core, 1),
    "multi-krum": _Rule(_check_multi_krum, _multi_krum_core, 3, uses_distances=True),
    "bulyan": _Rule(_check_bulyan, _bulyan_core, 3, uses_distances=True),
    "mean": _Rule(_check_mean, _mean_core, 1),
    "trimmed-mean": _Rule(_check_trimmed_mean, _trimmed_mean_core, 1),
    "geometric-median": _Rule(_check_geometric_median, _geometric_median_core, 1),
    "centered-clipping": _Rule(_check_centered_clipping, _centered_clipping_core, 1),
    "sign-majority": _Rule(_check_sign_majority, _sign_majority_core, 1),
}


def _rule(name: str) -> _Rule:
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown aggregator {name!r}; choose one of {', '.join(sorted(_RULES))}"
        ) from None


def check_requirement(name: str, n: int, f: int, **params: object) -> None:
    """Refuse, before any data exists, a rule that cannot tolerate f of n inputs.

    Checks the rule name, n >= 1, f >= 0, the rule's n-vs-f requirement (the table in
    the module docstring) and, when given, the rule's parameters (names and ranges).

    Raises:
        ValueError: naming the offending value and what is allowed.
    """
    rule = _rule(name)
    n = _check_count(n, f"{name}: n (number of inputs)", 1)
    f = _check_count(f, f"{name}: f (number of Byzantine inputs)", 0)
    allowed = list(inspect.signature(rule.check).parameters)[2:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name} has no parameter {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )
    rule.check(n, f, **params)


def _check_stack(stack: object, name: str) -> Tensor:
    if not isinstance(stack, Tensor):
        raise ValueError(f"{name}: stack must be a torch.Tensor of shape (n, d), got {type(stack)}")
    if stack.dim() != 2 or stack.shape[0] < 1 or stack.shape[1] < 1:
        raise ValueError(
            f"{name}: stack must have shape (n, d) with n, d >= 1, got {tuple(stack.shape)}"
        )
    if stack.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: stack must be float32 or float64, got {stack.dtype}")
    if stack.device.type != "cpu":
        raise ValueError(f"{name}: stack must be on the CPU, got {stack.device}")
    return stack.detach().contiguous()


def _nonfinite_rows(x: np.ndarray) -> list[int]:
    # A row sum is non-finite when the row holds NaN/Inf, or (rarely) when finite values
    # overflow the sum: suspects are confirmed exactly. One multi-threaded pass.
    def body(lo: int, hi: int) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: errstate is local
            return np.isfinite(x[:, lo:hi].sum(axis=1))

    partial = _over_columns(x.shape[1], body)
    suspects = np.flatnonzero(~np.logical_and.reduce(partial, axis=0)).tolist()
    return [i for i in suspects if not np.isfinite(x[i]).all()]


def aggregate(name: str, stack: Tensor, *, f: int, **params: object) -> AggregateResult:
    """Run the rule registered as ``name`` on ``stack`` and report non-finite rows.

    Args:
        name: a key of :data:`AGGREGATORS` (config name, e.g. ``"coord-median"``).
        stack: (n, d) float32 (or float64) CPU tensor of inputs, one per row.
        f: number of Byzantine inputs to tolerate.
        **params: the rule's parameters (see each rule's function).

    Returns:
        :class:`AggregateResult` with ``value`` (d,), ``nonfinite_rows`` and, for Krum-type
        rules, ``selected``.

    Raises:
        ValueError: unknown rule or parameter, bad shape/dtype, or the rule's n-vs-f
            requirement fails for the stack's n (see :func:`check_requirement`).
    """
    rule = _rule(name)
    stack = _check_stack(stack, name)
    n, d = stack.shape
    check_requirement(name, n, f, **params)
    x = stack.numpy()
    dist = None
    if rule.uses_distances and f > 0:  # with f = 0 both rules keep every row
        dist = _PairwiseDistances(x, range(n))
        bad = dist.nonfinite
    else:
        bad = _nonfinite_rows(x)
    rows = sorted(set(range(n)) - set(bad))
    f_eff = max(f - len(bad), 0)
    selected = None
    if not rows:
        value = np.zeros(d, dtype=x.dtype)
    elif f_eff == 0 and len(rows) < rule.min_rows_without_f:
        value = _mean_rows(x, rows)  # the declared f is already exceeded; see module doc
    elif dist is not None:
        value, selected = rule.core(x, rows, f_eff, dist=dist, **params)
    else:
        value, selected = rule.core(x, rows, f_eff, **params)
    return AggregateResult(torch.from_numpy(value), bad, selected)


# --------------------------------------------------------------------------------------
# Public rules
# --------------------------------------------------------------------------------------


def coordinate_median(
    stack: Tensor,
    *,
    f: int,
    num_buckets: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Coordinate-wise median, optionally of bucket means ("median of means").

    out[c] = median_b( mean_{i in B_b} x_i[c] ), the buckets B_1..B_b splitting the n
    rows into num_buckets contiguous groups of sizes as ``np.array_split`` (the first
    n mod b buckets one larger); with a ``generator`` the rows are permuted first. An
    even count's median is the mean of its two middle values (numpy's convention).
    Yin et al., "Byzantine-robust distributed learning: towards optimal statistical
    rates", ICML 2018; bucketing as in the ByzShield code (there called bucket size).

    Args:
        stack: (n, d) inputs.
        f: Byzantine inputs tolerated; needs n > 2f and num_buckets > 2f.
        num_buckets: number of buckets b in [1, n]; None (default) = n, one input per
            bucket, the plain median. b = 1 would be the mean.
        generator: permutes the rows before bucketing when given.

    Returns:
        (d,) tensor.

    Example::

        >>> coordinate_median(torch.tensor([[1.0], [5.0], [2.0], [100.0]]), f=1).tolist()
        [3.5]
    """
    return aggregate("coord-median", stack, f=f, num_buckets=num_buckets, generator=generator).value


def multi_krum(
    stack: Tensor, *, f: int, m: int | None = None, num_neighbours: int | None = None
) -> Tensor:
    """Multi-Krum: the mean of the m inputs with the lowest Krum scores.

    score(i) = sum of |x_i - x_j|^2 over the k nearest other inputs j, k = n - f - 2
    (Blanchard et al., "Machine learning with adversaries: Byzantine tolerant gradient
    descent", NeurIPS 2017); out = mean of the m lowest-scoring inputs. Equal scores are
    ordered by the sum over k + 1 neighbours, k + 2, ..., then by the lower row. Needs
    n > 2f + 2. The selection is exact: distances come from a float64 Gram
    matrix with a certified error bound, and near ties are recomputed exactly.

    Args:
        stack: (n, d) inputs.
        f: Byzantine inputs tolerated.
        m: inputs averaged, in [1, n - f]; None = n - f.
        num_neighbours: k, in [1, n - 1]; None = n - f - 2 (ByzFL's MultiKrum uses
            n - f - 1).

    Returns:
        (d,) tensor. :func:`multi_krum_select` gives the selected rows.

    Example::

        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
        >>> multi_krum(x, f=1).tolist()  # drops 100, averages 0..3
        [1.5]
    """
    return aggregate("multi-krum", stack, f=f, m=m, num_neighbours=num_neighbours).value


def multi_krum_select(
    stack: Tensor, *, f: int, m: int | None = None, num_neighbours: int | None = None
) -> list[int]:
    """The rows :func:`multi_krum` averages (ascending row indices)."""
    result = aggregate("multi-krum", stack, f=f, m=m, num_neighbours=num_neighbours)
    assert result.selected is not None or len(result.nonfinite_rows) == stack.shape[0]
    return result.selected or []


def bulyan(stack: Tensor, *, f: int) -> Tensor:
    """Bulyan: iterated Krum selection, then a trimmed mean around the median.

    El Mhamdi, Guerraoui & Rouault, "The hidden vulnerability of distributed learning in
    Byzantium", ICML 2018, Algorithm 1: select theta = n - 2f inputs, each time taking the
    Krum winner (score over |R| - f - 2 neighbours, R the inputs left) and removing it;
    then per coordinate average the beta = theta - 2f selected values closest to their
    median (equal distances prefer the lower value). Needs n >= 4f + 3. When |R| - f - 2
    drops below 1 (|R| ends at 2f + 1) the rounds score the nearest neighbour; Krum ties
    are broken as in :func:`multi_krum`.

    The original ByzShield code instead took the theta lowest Krum scores at once and
    averaged the beta values centred in sorted order; we follow the paper.

    Args:
        stack: (n, d) inputs.
        f: Byzantine inputs tolerated.

    Returns:
        (d,) tensor.

    Example::

        >>> x = torch.tensor([[0.0], [1.0], [2.0], [4.0], [8.0], [9.0], [1e6]])
        >>> bulyan(x, f=1).tolist()  # selects 4, 2, 8, 1, 9; keeps 4, 2, 1 (median 4)
        [2.3333332538604736]
    """
    return aggregate("bulyan", stack, f=f).value


def mean(stack: Tensor, *, f: int) -> Tensor:
    """Coordinate-wise mean (1/n) sum_i x_i; float64 accumulation.

    Not robust: a single input can move it anywhere. ``f`` is accepted (any f >= 0) so
    that the DRACO-style ``maj_vote`` approach can pass the same arguments as the robust
    rules, and it only decides how many non-finite rows count as expected.

    Example::

        >>> mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), f=0).tolist()
        [2.0, 3.0]
    """
    return aggregate("mean", stack, f=f).value


def trimmed_mean(stack: Tensor, *, f: int) -> Tensor:
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values, average.

    out[c] = (1 / (n - 2f)) sum_{j=f}^{n-f-1} x_(j)[c], x_(j) the j-th smallest
    (Yin et al., ICML 2018). Needs n > 2f.

    Example::

        >>> trimmed_mean(torch.tensor([[-50.0], [1.0], [2.0], [3.0], [50.0]]), f=1).tolist()
        [2.0]
    """
    return aggregate("trimmed-mean", stack, f=f).value


def geometric_median(
    stack: Tensor,
    *,
    f: int,
    num_iterations: int = 10,
    nu: float = 1e-6,
    tol: float = 1e-7,
    init: Tensor | None = None,
) -> Tensor:
    """Approximate geometric median argmin_z sum_i |z - x_i| by smoothed Weiszfeld.

    z_{t+1} = sum_i w_i x_i / sum_i w_i with w_i = 1 / max(nu, |x_i - z_t|) (Weiszfeld
    1937; smoothing as in Pillutla, Kakade & Harchaoui, "Robust aggregation for federated
    learning", IEEE TSP 2022). Stops after num_iterations or when |z_{t+1} - z_t| <=
    tol |z_{t+1}|. Needs n > 2f (breakdown point 1/2).

    Args:
        stack: (n, d) inputs.
        f: Byzantine inputs tolerated.
        num_iterations: at most this many Weiszfeld steps (>= 1).
        nu: smoothing, > 0 (same units as the inputs' norms).
        tol: relative stopping tolerance, >= 0 (0: always num_iterations steps).
        init: z_0, shape (d,); None = the coordinate-wise median, which is already
            robust, so few steps suffice (ByzFL starts from zeros).

    Example::

        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
        >>> geometric_median(x, f=1).tolist()  # unit vectors to the 4 points cancel
        [0.5, 0.5]
    """
    return aggregate(
        "geometric-median",
        stack,
        f=f,
        num_iterations=num_iterations,
        nu=nu,
        tol=tol,
        init=init,
    ).value


def centered_clipping(
    stack: Tensor,
    *,
    f: int,
    tau: float = 100.0,
    num_iterations: int = 1,
    center: Tensor | None = None,
) -> Tensor:
    """Centered clipping: v_{l+1} = v_l + (1/n) sum_i clip_tau(x_i - v_l).

    clip_tau(y) = y min(1, tau / |y|) (Karimireddy, He & Jaggi, "Learning from history
    for Byzantine robust optimization", ICML 2021); returns v_L. Needs n > 2f.

    Args:
        stack: (n, d) inputs.
        f: Byzantine inputs tolerated.
        tau: clipping radius, > 0 (ByzFL's default 100).
        num_iterations: L >= 1 (the paper uses 1 with the previous momentum as center).
        center: v_0, shape (d,); None = the coordinate-wise median (ByzFL: zeros). A
            trainer keeping momentum passes the previous aggregate here.

    Example::

        >>> x = torch.tensor([[1.0], [2.0], [3.0], [1000.0]])
        >>> centered_clipping(x, f=1, tau=1.0).tolist()  # from the median 2.5
        [2.5]
    """
    return aggregate(
        "centered-clipping",
        stack,
        f=f,
        tau=tau,
        num_iterations=num_iterations,
        center=center,
    ).value


def sign_majority(
    stack: Tensor,
    *,
    f: int,
    num_buckets: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """signSGD with majority vote: out[c] = sign(sum_b sign(sum_{i in B_b} x_i[c])).

    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with majority vote is
    communication efficient and fault tolerant", ICLR 2019. Output entries are -1, 0
    (a tied vote) or +1. Buckets as in :func:`coordinate_median` (None: one input per
    bucket, the plain vote). Needs n > 2f and num_buckets > 2f.

    Example::

        >>> sign_majority(torch.tensor([[0.5, -2.0], [3.0, -1.0], [-9.0, 4.0]]), f=1).tolist()
        [1.0, -1.0]
    """
    return aggregate(
        "sign-majority", stack, f=f, num_buckets=num_buckets, generator=generator
    ).value


AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "coord-median": coordinate_median,
    "multi-krum": multi_krum,
    "bulyan": bulyan,
    "mean": mean,
    "trimmed-mean": trimmed_mean,
    "geometric-median": geometric_median,
    "centered-clipping": centered_clipping,
    "sign-majority": sign_majority,
}
"""Config name -> rule function ``rule(stack, *, f, **params) -> Tensor (d,)``."""
