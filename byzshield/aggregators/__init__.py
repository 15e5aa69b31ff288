"""The aggregators layer: robust rules on an (n, d) stack of vote winners, and the
pre-aggregations that feed them (docs/design.md, section 5; docs/aggregators.md).

Rules know nothing of workers, ranks or steps. The layer imports NumPy and torch; of
byzshield it may import only the layers below it (design, compute, attacks), never the
server, config, training, engines or front ends.

- :mod:`~byzshield.aggregators.aggregator`: the registry :data:`RULES`,
  :func:`build_aggregator` (an :class:`Aggregator`, built once per run), :func:`aggregate`
  and :func:`preaggregate` (one call), the non-finite and outside-the-guarantee rules.
- the rules by family, one class each with its formula and reference:
  :mod:`~byzshield.aggregators.coordinate` (median, trimmed mean, meamed, mean, sign
  majority), :mod:`~byzshield.aggregators.distance` (multi-Krum, Krum, Bulyan, MoNNA,
  MDA), :mod:`~byzshield.aggregators.iterative` (geometric median, centered clipping),
  :mod:`~byzshield.aggregators.spectral` (CAF, SMEA); their base
  :mod:`~byzshield.aggregators.rule`.
- :mod:`~byzshield.aggregators.pre`: bucketing, NNM, clipping, ARC.
- what they compute with: :mod:`~byzshield.aggregators.columns` (column chunks over
  threads), :mod:`~byzshield.aggregators.reductions` (sums over columns, on one server
  or across the shards of a sharded one), :mod:`~byzshield.aggregators.rows` (passes
  over rows), :mod:`~byzshield.aggregators.order` (comparator networks),
  :mod:`~byzshield.aggregators.pairwise` (certified distances, Krum's selection).

Example::

    >>> import torch
    >>> from byzshield.aggregators import aggregate
    >>> aggregate("coord-median", torch.tensor([[1.0], [2.0], [1e30]]), f=1).value.tolist()
    [2.0]
"""

from byzshield.aggregators.aggregator import (
    AGGREGATORS,
    RULES,
    AggregateResult,
    Aggregator,
    aggregate,
    build_aggregator,
    norm,
    preaggregate,
)
from byzshield.aggregators.columns import column_threads
from byzshield.aggregators.pre import PRE_AGGREGATIONS, PreAggregation, split_rows
from byzshield.aggregators.reductions import (
    ColumnShard,
    column_shard,
    local_columns,
    reduce_columns,
    reduction_block,
    total_columns,
)
from byzshield.aggregators.rule import Rule

__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATIONS",
    "RULES",
    "AggregateResult",
    "Aggregator",
    "ColumnShard",
    "PreAggregation",
    "Rule",
    "aggregate",
    "build_aggregator",
    "column_shard",
    "column_threads",
    "local_columns",
    "norm",
    "preaggregate",
    "reduce_columns",
    "reduction_block",
    "split_rows",
    "total_columns",
]
