"""Passes over the rows of a stack: sums and means, the non-finite scan, norms,
distances to a point, projections, a centred Gram matrix, and new stacks made of old
rows (bucket means, scaled rows, mixed rows, signs).

Each pass reads x[rows] column chunk by column chunk (:mod:`byzshield.aggregators.columns`)
and never copies the stack. Sums along a row run in the given row order in float64, so
the result does not depend on threads or chunks; sums over columns go through
:func:`~byzshield.aggregators.reductions.reduce_columns`, so a sharded server gets the
same floats (docs/design.md, section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from byzshield.aggregators.columns import chunk_width, chunks, over_columns
from byzshield.aggregators.reductions import across_shards, reduce_columns

__all__ = [
    "centred_gram",
    "mean_rows",
    "mixed_rows",
    "nonfinite_rows",
    "project",
    "row_means",
    "row_norms",
    "scaled_rows",
    "sign_rows",
    "squared_distances_to",
    "weighted_row_sum",
]


def weighted_row_sum(
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
        for a, b in chunks(lo, hi, width):
            acc = out[a:b]
            for pos, (i, w) in enumerate(zip(rows, scale, strict=True)):
                if pos == 0 and w == 1.0:
                    acc[:] = x[i, a:b]  # exact: float32 -> float64, as a product by 1.0
                elif pos == 0:
                    np.multiply(x[i, a:b], w, out=acc, dtype=np.float64)
                elif w == 1.0:
                    np.add(acc, x[i, a:b], out=acc)
                else:
                    np.multiply(x[i, a:b], w, out=tmp[: b - a], dtype=np.float64)
                    acc += tmp[: b - a]

    over_columns(d, body)
    return out


def mean_rows(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Coordinate-wise mean of x[rows] (float64 accumulation, cast to x's dtype)."""
    total = weighted_row_sum(x, rows)
    total /= len(rows)
    return total.astype(x.dtype)


def squared_distances_to(x: np.ndarray, rows: Sequence[int], center: np.ndarray) -> np.ndarray:
    """||x_i - center||^2 for i in rows, float64, shape (len(rows),)."""
    d = x.shape[1]
    idx = np.asarray(rows)

    def body(lo: int, hi: int) -> np.ndarray:
        acc = np.zeros(len(rows))
        for a, b in chunks(lo, hi, chunk_width(len(rows))):
            diff = x[idx, a:b].astype(np.float64)
            diff -= center[a:b]
            acc += np.einsum("ij,ij->i", diff, diff)
        return acc

    return reduce_columns(d, body)


def nonfinite_rows(x: np.ndarray) -> list[int]:
    """Rows holding NaN or +-Inf, ascending; one multi-threaded pass.

    A row sum is non-finite when the row holds NaN/Inf, or (rarely) when finite values
    overflow the sum: suspects are confirmed exactly.
    """

    def body(lo: int, hi: int) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: errstate is local
            return np.isfinite(x[:, lo:hi].sum(axis=1))

    finite = reduce_columns(x.shape[1], body, np.logical_and)
    suspects = np.flatnonzero(~finite).tolist()
    if not suspects:
        return []
    local = np.array([not np.isfinite(x[i]).all() for i in suspects])
    confirmed = across_shards(local, np.logical_or)
    return [i for i, bad in zip(suspects, confirmed.tolist(), strict=True) if bad]


def row_norms(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """|x_i| (Euclidean, float64) for i in rows, shape (len(rows),)."""
    return np.sqrt(squared_distances_to(x, rows, np.zeros(x.shape[1])))


def centred_gram(x: np.ndarray, rows: Sequence[int], center: np.ndarray) -> np.ndarray:
    """G_ij = (x_i - c) . (x_j - c) in float64 for i, j in rows, shape (k, k).

    Centring on a robust centre (the coordinate median) keeps the Gram formula's
    cancellation small for the honest rows even when outliers are huge.
    """
    idx = np.asarray(rows)
    k = len(idx)

    def body(lo: int, hi: int) -> np.ndarray:
        gram = np.zeros((k, k))
        for a, b in chunks(lo, hi, chunk_width(k)):
            block = x[idx, a:b].astype(np.float64)
            block -= center[a:b]
            gram += block @ block.T
        return gram

    return reduce_columns(x.shape[1], body)


def project(x: np.ndarray, rows: Sequence[int], vector: np.ndarray) -> np.ndarray:
    """x_i . vector in float64 for i in rows, shape (len(rows),)."""
    idx = np.asarray(rows)

    def body(lo: int, hi: int) -> np.ndarray:
        acc = np.zeros(len(idx))
        for a, b in chunks(lo, hi, chunk_width(len(idx))):
            acc += x[idx, a:b].astype(np.float64) @ vector[a:b]
        return acc

    return reduce_columns(x.shape[1], body)


def row_means(x: np.ndarray, sources: Sequence[Sequence[int]]) -> np.ndarray:
    """out[b] = mean of the rows sources[b] of x, shape (len(sources), d), x's dtype.

    Each mean adds its rows in the given order in float64, divides by their count and
    rounds once to x's dtype: a 1-row source is copied exactly.
    """
    d = x.shape[1]
    out = np.empty((len(sources), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        width = min(16384, hi - lo)
        acc_buf = np.empty(width, dtype=np.float64)
        for a, b in chunks(lo, hi, width):
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

    over_columns(d, body)
    return out


def scaled_rows(x: np.ndarray, rows: Sequence[int], scales: Sequence[float]) -> np.ndarray:
    """out[p] = scales[p] * x[rows[p]] (float64 product, rounded once), shape (k, d)."""
    d = x.shape[1]
    out = np.empty((len(rows), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for a, b in chunks(lo, hi, 16384):
            for pos, (i, s) in enumerate(zip(rows, scales, strict=True)):
                if s == 1.0:
                    out[pos, a:b] = x[i, a:b]
                else:
                    np.copyto(out[pos, a:b], x[i, a:b] * np.float64(s), casting="same_kind")

    over_columns(d, body)
    return out


def mixed_rows(x: np.ndarray, rows: Sequence[int], weights: np.ndarray) -> np.ndarray:
    """out = weights @ x[rows] in float64 (GEMM per column chunk), rounded once.

    weights is (m, k); used where every output mixes many rows (nearest-neighbour
    mixing), where a GEMM beats row-by-row sums many times over.
    """
    idx = np.asarray(rows)
    d = x.shape[1]
    out = np.empty((weights.shape[0], d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for a, b in chunks(lo, hi, chunk_width(len(idx))):
            block = x[idx, a:b].astype(np.float64)
            np.copyto(out[:, a:b], weights @ block, casting="same_kind")

    over_columns(d, body)
    return out


def sign_rows(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """np.sign of the rows (values -1, 0, +1 in x's dtype), shape (len(rows), d)."""
    d = x.shape[1]
    out = np.empty((len(rows), d), dtype=x.dtype)

    def body(lo: int, hi: int) -> None:
        for pos, i in enumerate(rows):
            np.sign(x[i, lo:hi], out=out[pos, lo:hi])

    over_columns(d, body)
    return out
