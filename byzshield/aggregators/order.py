"""Order statistics per coordinate, from comparator networks applied to whole rows.

A comparator (i, j) puts min(r_i, r_j) on wire i and max(r_i, r_j) on wire j, for every
coordinate at once (``np.minimum``/``np.maximum`` on rows). Batcher's odd-even merge
sort (:func:`sorting_network`), pruned backwards to the comparators that reach the
wanted outputs (:func:`selection_network`: 113 of 140 for the median of 25), gives the
median, the trimmed mean and Bulyan's second stage without sorting the slow axis of the
stack (``torch.median(dim=0)`` does). :func:`order_statistics` runs a network column
chunk by column chunk and hands the sorted rows to a reduction (:func:`median_reduce`,
:func:`closest_to_median_reduce`).

Example::

    >>> x = np.array([[3.0, 0.0], [1.0, 5.0], [2.0, 4.0]], dtype=np.float32)
    >>> coordinate_median(x, [0, 1, 2]).tolist()
    [2.0, 4.0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from byzshield.aggregators.columns import chunk_width, chunks, over_columns

__all__ = [
    "apply_network",
    "closest_to_median_reduce",
    "coordinate_median",
    "median_reduce",
    "order_statistics",
    "selection_network",
    "sorting_network",
]


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
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
def selection_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`sorting_network` that affect the wires ``outputs``.

    Walking backwards, a comparator is needed when it touches a needed wire; its other
    wire becomes needed too. The kept comparators leave the outputs exactly as the full
    sort would (113 of 140 comparators for the median of 25).
    """
    needed = set(outputs)
    kept = []
    for a, b in reversed(sorting_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


def apply_network(
    rows: list[np.ndarray], spare: np.ndarray, network: Sequence[tuple[int, int]]
) -> None:
    """Run the comparators on equal-length rows in place: rows[k] ends as order stat k."""
    for a, b in network:
        np.minimum(rows[a], rows[b], out=spare)
        np.maximum(rows[a], rows[b], out=rows[b])
        rows[a], spare = spare, rows[a]


def order_statistics(
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
        width = min(chunk_width(k), hi - lo)
        buf = np.empty((k, width), dtype=x.dtype)
        spare_buf = np.empty(width, dtype=x.dtype)
        acc_buf = np.empty(width, dtype=np.float64)
        for a, b in chunks(lo, hi, width):
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
            apply_network(rows, spare_buf[:w], network)
            out[a:b] = reduce(rows)

    over_columns(d, body)
    return out


def median_reduce(k: int) -> tuple[tuple[int, ...], Callable[[list[np.ndarray]], np.ndarray]]:
    """The wires a median of k sorted rows reads, and the reduction that reads them:
    row k // 2 for odd k, 0.5 row (k/2 - 1) + 0.5 row k/2 for even k."""
    if k % 2 == 1:
        return (k // 2,), lambda rows: rows[k // 2]

    def even(rows: list[np.ndarray]) -> np.ndarray:
        # 0.5 * a + 0.5 * b cannot overflow (a + b can, near the float32 limit).
        out = rows[k // 2 - 1] * 0.5
        out += rows[k // 2] * 0.5
        return out

    return (k // 2 - 1, k // 2), even


def closest_to_median_reduce(theta: int, beta: int):
    """Mean of the beta of theta sorted values closest to their median (per coordinate).

    The beta values closest to the median form a window sorted[s : s + beta]; with
    values sorted ascending, the window moves right past s while sorted[s + beta] is
    strictly closer to the median than sorted[s] (equal distances keep the lower value),
    so s = #{s < theta - beta : med - sorted[s] > sorted[s + beta] - med}. Distances are
    compared in float64 (as sorted[s] + sorted[s + beta] < 2 med); the window is summed
    in ascending order in float64 and divided by beta. Bulyan's second stage has
    beta = theta - 2f, Meamed's beta = n - f.
    """
    _, median_of = median_reduce(theta)

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


def coordinate_median(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """out[c] = median_i x[rows[i], c], shape (d,), x's dtype (an even count's median is
    the mean of its two middle values)."""
    k = len(rows)
    outputs, reduce = median_reduce(k)
    return order_statistics(x, [(i,) for i in rows], selection_network(k, outputs), reduce)
