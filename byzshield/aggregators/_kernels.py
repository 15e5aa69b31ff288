"""Kernels shared by the rules and pre-aggregations: NumPy on a zero-copy view of the stack.

Everything here works column chunk by column chunk (each chunk fits in cache), spread over
``torch.get_num_threads()`` threads (NumPy releases the GIL inside its loops). Column
blocks are fixed, so results do not depend on the thread count. Order statistics come
from comparator networks applied to whole rows; pairwise distances from a float64 Gram
matrix with a certified error bound (see :class:`_PairwiseDistances`). Every sum over
columns adds per-block partials in column order (:func:`reduction_block`), on one server
or, sharded, across servers. Nothing here copies the stack.

Length (about 800 lines): the private numeric kernels every rule and pre-aggregation
shares (comparator networks, certified Gram distances, column chunks over threads, the
reductions over columns that a sharded server adds across servers: :class:`ColumnShard`),
tested through the public rules and tests/test_shards.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

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


@functools.cache
def _per_thread_blas_limits() -> tuple[Callable[[int], int], ...]:
    """``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27) of every OpenBLAS mapped.

    numpy's wheel bundles one ``libscipy_openblas``, scipy's another: both are found
    among the shared objects this process has mapped. Empty elsewhere (MKL, older
    OpenBLAS, not Linux).
    """
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return ()
    paths = sorted({ln.split()[-1] for ln in maps if "openblas" in ln.split()[-1].lower()})
    limits = []
    for path in paths:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        limits.append(fn)
    return tuple(limits)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list[int] = []


@contextlib.contextmanager
def _blas_on_calling_threads():
    """While the column threads run, OpenBLAS runs each call on the thread that made it.

    Our column threads already use every core. Otherwise each of their GEMMs wakes
    OpenBLAS's own threads, which busy-wait for work: with 2 column threads x 2 BLAS
    threads on 2 cores the Gram pass cost ~1 s of CPU instead of ~55 ms, and much more
    wall time on a loaded machine. In numpy's OpenBLAS build the "local" setting is
    process-wide, so it is set for the duration of the parallel section only (nested
    and concurrent sections share one save/restore) and restored afterwards.
    """
    global _blas_users, _blas_saved
    limits = _per_thread_blas_limits()
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [limit(1) for limit in limits]
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for limit, previous in zip(limits, _blas_saved, strict=True):
                    limit(previous)


def _blas_single_threaded() -> bool:
    """Whether BLAS calls from the column threads stay on their thread (see above)."""
    np.dot(np.ones((1, 1)), np.ones((1, 1)))  # make sure numpy's BLAS is loaded
    return bool(_per_thread_blas_limits())


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


_threads = threading.local()


@contextlib.contextmanager
def column_threads(num_threads: int | None):
    """Within the block, rules on this thread use ``num_threads`` column threads instead
    of ``torch.get_num_threads()`` (None: no change). Results do not depend on it (the
    column blocks are fixed), so a trainer whose torch runs one intra-op thread, as
    bit-identical gradients require, can still aggregate on every core."""
    saved = getattr(_threads, "count", None)
    if num_threads is not None:
        _threads.count = num_threads
    try:
        yield
    finally:
        _threads.count = saved


def _over_columns(d: int, body: Callable[[int, int], object], width: int = _BLOCK_COLUMNS) -> list:
    """Run ``body(lo, hi)`` on fixed column blocks of ``width`` covering [0, d), on the
    torch threads (or as many as :func:`column_threads` says).

    NumPy releases the GIL inside its loops, so the threads overlap. Returns the bodies'
    results in column order; the blocks do not depend on the thread count.
    """
    blocks = list(_chunks(0, d, width))
    wanted = getattr(_threads, "count", None) or torch.get_num_threads()
    threads = min(wanted, len(blocks))
    if threads <= 1:
        return [body(lo, hi) for lo, hi in blocks]
    with _blas_on_calling_threads():
        return list(_executor(threads).map(lambda block: body(*block), blocks))


# --------------------------------------------------------------------------------------
# Reductions over columns, on one process's columns or on a sharded server's
# --------------------------------------------------------------------------------------

# A reduction over columns (a Gram matrix, distances, norms) is a sum of per-block
# partials, added one after another in column order. The blocks depend on the whole
# vector's length only, so a parameter server sharded by column blocks
# (:mod:`byzshield.server.sharded`) adds the very same partials in the very same order.
_REDUCTION_BLOCKS = 128  # at least this many blocks, so that shards can be balanced
_MIN_REDUCTION_BLOCK = 1024  # smaller blocks cost more in per-block overhead than they save


def reduction_block(total: int) -> int:
    """Columns per block of every reduction over a vector of ``total`` columns:
    ``_BLOCK_COLUMNS`` (65,536) for 8.4M columns and more, else halved until there are
    at least 128 blocks (not below 1,024 columns)."""
    block = _BLOCK_COLUMNS
    while block > _MIN_REDUCTION_BLOCK and total < _REDUCTION_BLOCKS * block:
        block //= 2
    return block


class ColumnShard:
    """The columns [offset, offset + width) of a ``total``-column vector that this
    thread's rules see, and the exchanges with the servers holding the other columns.

    ``reduce(partials, combine)`` takes this shard's per-block partials (NumPy arrays, in
    column order) and returns the total over every shard's blocks, combined in column
    order (shard 0's blocks first, then shard 1's, ...): each shard adds its partials to
    the running total of the shards before it, so every shard gets the float an
    unsharded sum gives. ``gather(items)`` returns every shard's list of arrays, in
    shard order. ``offset`` is a multiple of :func:`reduction_block` of ``total``.
    """

    def __init__(
        self,
        offset: int,
        total: int,
        reduce: Callable[[list, Callable], np.ndarray],
        gather: Callable[[list], list],
    ):
        block = reduction_block(total)
        if offset % block:
            raise ValueError(f"a shard's first column must be a multiple of {block}, got {offset}")
        self.offset, self.total, self.reduce, self.gather = offset, total, reduce, gather


@contextlib.contextmanager
def column_shard(shard: ColumnShard | None):
    """Within the block, rules on this thread work on one shard of the columns: every
    reduction gathers the other shards' partials (None: the whole vector is here)."""
    saved = getattr(_threads, "shard", None)
    _threads.shard = shard
    try:
        yield
    finally:
        _threads.shard = saved


def _shard() -> ColumnShard | None:
    return getattr(_threads, "shard", None)


def _total_columns(d: int) -> int:
    """The length of the whole vector whose ``d`` local columns a rule sees."""
    shard = _shard()
    return d if shard is None else shard.total


def _in_order(partials: list, combine=np.add):
    """partials[0] combined with partials[1], then [2], ...: one fixed order."""
    out = np.array(partials[0], copy=True)
    for part in partials[1:]:
        combine(out, part, out=out)
    return out


def _reduce_columns(d: int, body: Callable[[int, int], np.ndarray], combine=np.add):
    """``body(lo, hi)`` on every reduction block of the local [0, d) columns, then the
    partials of every shard (:func:`column_shard`) combined in column order."""
    shard = _shard()
    block = reduction_block(_total_columns(d))
    per_task = max(block, _BLOCK_COLUMNS // block * block)  # a thread's whole blocks

    def task(lo: int, hi: int) -> list:
        return [body(a, b) for a, b in _chunks(lo, hi, block)]

    partials = [p for part in _over_columns(d, task, per_task) for p in part]
    if shard is not None:
        return shard.reduce(partials, combine)
    return _in_order(partials, combine)


def _across_shards(local: np.ndarray, combine=np.add) -> np.ndarray:
    """A per-shard value combined over every shard, in shard order (itself unsharded)."""
    shard = _shard()
    return local if shard is None else shard.reduce([local], combine)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b over the whole vector (float64, per reduction block, in column order)."""
    return float(
        _reduce_columns(len(a), lambda lo, hi: np.array(np.dot(a[lo:hi], b[lo:hi]), np.float64))
    )


def _local_columns(value: torch.Tensor | None, d: int) -> torch.Tensor | None:
    """A whole-vector parameter (a starting point) cut to this shard's d columns; a
    rule's own state (already this shard's) and anything unsharded pass as they are."""
    shard = _shard()
    if value is None or shard is None or value.dim() != 1 or value.shape[0] != shard.total:
        return value
    return value[shard.offset : shard.offset + d]


def _unit_random(d: int, generator: torch.Generator) -> np.ndarray:
    """A random unit vector as ByzFL draws it: torch.randn(d) / its norm, in float32;
    drawn whole (the same on every shard) and cut to this shard's d columns."""
    total = _total_columns(d)
    v = torch.randn(total, generator=generator)
    v = (v / torch.linalg.norm(v)).double().numpy()
    shard = _shard()
    return v if shard is None else v[shard.offset : shard.offset + d]


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

    return _reduce_columns(d, body)


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
# OpenBLAS runs a GEMM with m n k <= 65536 * 4 on the calling thread: where the per-thread
# limit above is unavailable, Gram blocks stay under that size instead (slower per flop,
# but never the oversubscribed case).
_BLAS_SINGLE_THREAD_MNK = 65536 * 4


def _gram_columns(num_rows: int) -> int:
    if _blas_single_threaded():
        return _GRAM_COLUMNS
    return max(64, min(_GRAM_COLUMNS, _BLAS_SINGLE_THREAD_MNK // max(num_rows, 1) ** 2))


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
        gram_columns = _gram_columns(a)

        def body(lo: int, hi: int) -> np.ndarray:
            gram = np.zeros((a, a))
            width = min(gram_columns, hi - lo)
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

        g = _reduce_columns(d, body)
        d = _total_columns(d)  # the error bounds are those of the whole vector
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

        exact = _reduce_columns(d, body)
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


def _nearest(dist: _PairwiseDistances, i: int, candidates: Sequence[int], k: int) -> list[int]:
    """The k of ``candidates`` (local indices) nearest to local row i, ascending indices.

    Nearest by squared distance D_ij (D_ii = 0); equal distances prefer the lower index.
    Certified as :func:`_krum_select` is: when the bounds cannot separate the k-th from
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


def _closest_to_median_reduce(theta: int, beta: int):
    """Mean of the beta of theta sorted values closest to their median (per coordinate).

    The beta values closest to the median form a window sorted[s : s + beta]; with
    values sorted ascending, the window moves right past s while sorted[s + beta] is
    strictly closer to the median than sorted[s] (equal distances keep the lower value),
    so s = #{s < theta - beta : med - sorted[s] > sorted[s + beta] - med}. Distances are
    compared in float64 (as sorted[s] + sorted[s + beta] < 2 med); the window is summed
    in ascending order in float64 and divided by beta. Bulyan's second stage has
    beta = theta - 2f, Meamed's beta = n - f.
    """
    _, median_of = _median_reduce(theta)

    def reduce(sorted_rows: list[np.ndarray]) -> np.ndarray:
        width = sorted_rows[0].shape[0]
        # med - a > b - med  <=>  a + b < 2 med, exact in float64 for float32 a, b, med
        twice_med = np.multiply(median_of(sorted_rows), 2.0, dtype=np.float64)
        start = np.zeros(width, dtype=np.intp)
        pair = np.empty(width, dtype=np.float64)
        for s in range(theta - beta):
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


# --------------------------------------------------------------------------------------
# Whole-stack passes: non-finite scan, norms, centred Gram, new stacks from old rows
# --------------------------------------------------------------------------------------


def _nonfinite_rows(x: np.ndarray) -> list[int]:
    """Rows holding NaN or +-Inf, ascending; one multi-threaded pass.

    A row sum is non-finite when the row holds NaN/Inf, or (rarely) when finite values
    overflow the sum: suspects are confirmed exactly.
    """

    def body(lo: int, hi: int) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: errstate is local
            return np.isfinite(x[:, lo:hi].sum(axis=1))

    finite = _reduce_columns(x.shape[1], body, np.logical_and)
    suspects = np.flatnonzero(~finite).tolist()
    if not suspects:
        return []
    local = np.array([not np.isfinite(x[i]).all() for i in suspects])
    confirmed = _across_shards(local, np.logical_or)
    return [i for i, bad in zip(suspects, confirmed.tolist(), strict=True) if bad]


def _row_norms(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """|x_i| (Euclidean, float64) for i in rows, shape (len(rows),)."""
    return np.sqrt(_squared_distances_to(x, rows, np.zeros(x.shape[1])))


def _centred_gram(x: np.ndarray, rows: Sequence[int], center: np.ndarray) -> np.ndarray:
    """G_ij = (x_i - c) . (x_j - c) in float64 for i, j in rows, shape (k, k).

    Centring on a robust centre (the coordinate median) keeps the Gram formula's
    cancellation small for the honest rows even when outliers are huge.
    """
    idx = np.asarray(rows)
    k = len(idx)

    def body(lo: int, hi: int) -> np.ndarray:
        gram = np.zeros((k, k))
        for a, b in _chunks(lo, hi, _chunk_width(k)):
            block = x[idx, a:b].astype(np.float64)
            block -= center[a:b]
            gram += block @ block.T
        return gram

    return _reduce_columns(x.shape[1], body)


def _project(x: np.ndarray, rows: Sequence[int], vector: np.ndarray) -> np.ndarray:
    """x_i . vector in float64 for i in rows, shape (len(rows),)."""
    idx = np.asarray(rows)

    def body(lo: int, hi: int) -> np.ndarray:
        acc = np.zeros(len(idx))
        for a, b in _chunks(lo, hi, _chunk_width(len(idx))):
            acc += x[idx, a:b].astype(np.float64) @ vector[a:b]
        return acc

    return _reduce_columns(x.shape[1], body)


def _row_means(x: np.ndarray, sources: Sequence[Sequence[int]]) -> np.ndarray:
    """out[b] = mean of the rows sources[b] of x, shape (len(sources), d), x's dtype.

    Each mean adds its rows in the given order in float64, divides by their count and
    rounds once to x's dtype: a 1-row source is copied exactly.
    """
    d = x.shape[1]
    out = np.empty((len(sources), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        width = min(16384, hi - lo)
        acc_buf = np.empty(width, dtype=np.float64)
        for a, b in _chunks(lo, hi, width):
            acc = acc_buf[: b - a]
            for pos, src in enumerate(sources):
                if len(src) == 1:
                    out[pos, a:b] = x[src[0], a:b]
                    continue
                np.copyto(acc, x[src[0], a:b])
                for i in src[1:]:
                    np.add(acc, x[i, a:b], out=acc)
                acc /= len(src)
                np.copyto(out[pos, a:b], acc, casting="same_kind")

    _over_columns(d, body)
    return out


def _scaled_rows(x: np.ndarray, rows: Sequence[int], scales: Sequence[float]) -> np.ndarray:
    """out[p] = scales[p] * x[rows[p]] (float64 product, rounded once), shape (k, d)."""
    d = x.shape[1]
    out = np.empty((len(rows), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for a, b in _chunks(lo, hi, 16384):
            for pos, (i, s) in enumerate(zip(rows, scales, strict=True)):
                if s == 1.0:
                    out[pos, a:b] = x[i, a:b]
                else:
                    np.copyto(out[pos, a:b], x[i, a:b] * np.float64(s), casting="same_kind")

    _over_columns(d, body)
    return out


def _mixed_rows(x: np.ndarray, rows: Sequence[int], weights: np.ndarray) -> np.ndarray:
    """out = weights @ x[rows] in float64 (GEMM per column chunk), rounded once.

    weights is (m, k); used where every output mixes many rows (nearest-neighbour
    mixing), where a GEMM beats row-by-row sums many times over.
    """
    idx = np.asarray(rows)
    d = x.shape[1]
    out = np.empty((weights.shape[0], d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for a, b in _chunks(lo, hi, _chunk_width(len(idx))):
            block = x[idx, a:b].astype(np.float64)
            np.copyto(out[:, a:b], weights @ block, casting="same_kind")

    _over_columns(d, body)
    return out


def _sign_rows(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """np.sign of the rows (values -1, 0, +1 in x's dtype), shape (len(rows), d)."""
    d = x.shape[1]
    out = np.empty((len(rows), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for pos, i in enumerate(rows):
            np.sign(x[i, lo:hi], out=out[pos, lo:hi])

    _over_columns(d, body)
    return out
