"""Reductions over columns, on one process's columns or on a sharded server's.

A reduction over columns (a Gram matrix, distances, norms, a dot product) is a sum of
per-block partials, added one after another in column order:
sum_c g(c) = (...((p_0 + p_1) + p_2) + ...) + p_(B-1), p_b the float64 partial of block b
of :func:`reduction_block` columns. The blocks depend on the whole vector's length
only, so a parameter server sharded by column blocks (:mod:`byzshield.server.sharded`)
adds the very same partials in the very same order: inside :func:`column_shard`, a rule
sees its shard's columns and every reduction passes the running total from shard to
shard (:class:`ColumnShard`), so each shard holds the float one server holding the whole
vector computes (docs/design.md, section 7).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import numpy as np
import torch

from byzshield.aggregators.columns import BLOCK_COLUMNS, chunks, over_columns

__all__ = [
    "ColumnShard",
    "across_shards",
    "column_shard",
    "dot",
    "local_columns",
    "reduce_columns",
    "reduction_block",
    "total_columns",
    "unit_random",
]

_REDUCTION_BLOCKS = 128  # at least this many blocks, so that shards can be balanced
_MIN_REDUCTION_BLOCK = 1024  # smaller blocks cost more in per-block overhead than they save


def reduction_block(total: int) -> int:
    """Columns per block of every reduction over a vector of ``total`` columns:
    ``BLOCK_COLUMNS`` (65,536) for 8.4M columns and more, else halved until there are
    at least 128 blocks (not below 1,024 columns)."""
    block = BLOCK_COLUMNS
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


_threads = threading.local()


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


def total_columns(d: int) -> int:
    """The length of the whole vector whose ``d`` local columns a rule sees."""
    shard = _shard()
    return d if shard is None else shard.total


def _in_order(partials: list, combine=np.add):
    """partials[0] combined with partials[1], then [2], ...: one fixed order."""
    out = np.array(partials[0], copy=True)
    for part in partials[1:]:
        combine(out, part, out=out)
    return out


def reduce_columns(d: int, body: Callable[[int, int], np.ndarray], combine=np.add):
    """``body(lo, hi)`` on every reduction block of the local [0, d) columns, then the
    partials of every shard (:func:`column_shard`) combined in column order."""
    shard = _shard()
    block = reduction_block(total_columns(d))
    per_task = max(block, BLOCK_COLUMNS // block * block)  # a thread's whole blocks

    def task(lo: int, hi: int) -> list:
        return [body(a, b) for a, b in chunks(lo, hi, block)]

    partials = [p for part in over_columns(d, task, per_task) for p in part]
    if shard is not None:
        return shard.reduce(partials, combine)
    return _in_order(partials, combine)


def across_shards(local: np.ndarray, combine=np.add) -> np.ndarray:
    """A per-shard value combined over every shard, in shard order (itself unsharded)."""
    shard = _shard()
    return local if shard is None else shard.reduce([local], combine)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b over the whole vector (float64, per reduction block, in column order)."""
    return float(
        reduce_columns(len(a), lambda lo, hi: np.array(np.dot(a[lo:hi], b[lo:hi]), np.float64))
    )


def local_columns(value: torch.Tensor | None, d: int) -> torch.Tensor | None:
    """A whole-vector parameter (a starting point) cut to this shard's d columns; a
    rule's own state (already this shard's) and anything unsharded pass as they are."""
    shard = _shard()
    if value is None or shard is None or value.dim() != 1 or value.shape[0] != shard.total:
        return value
    return value[shard.offset : shard.offset + d]


def unit_random(d: int, generator: torch.Generator) -> np.ndarray:
    """A random unit vector as ByzFL draws it: torch.randn(d) / its norm, in float32;
    drawn whole (the same on every shard) and cut to this shard's d columns."""
    total = total_columns(d)
    v = torch.randn(total, generator=generator)
    v = (v / torch.linalg.norm(v)).double().numpy()
    shard = _shard()
    return v if shard is None else v[shard.offset : shard.offset + d]
