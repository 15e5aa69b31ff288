"""Pre-aggregations: maps from an (n, d) stack to an (n', d) stack that any rule then reads.

Registered by name in :data:`PRE_AGGREGATIONS`; composed with a rule through
``build_aggregator(name, pre=[(pre_name, params), ...])``, applied in order (ByzFL's
pre-aggregators, with the same definitions). Each one sees only the finite rows and the
effective f, and returns a new stack (or the same one, unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from byzshield.aggregators._checks import NoParams, check_count, check_positive, config_for
from byzshield.aggregators.pairwise import PairwiseDistances, nearest
from byzshield.aggregators.rows import mixed_rows, row_means, row_norms, scaled_rows

__all__ = ["PRE_AGGREGATIONS", "PreAggregation", "split_rows"]


class PreAggregation:
    """A map from rows of a stack to rows of a new stack. Its parameters are its nested
    ``Config`` dataclass, as a rule's (:class:`byzshield.aggregators.rule.Rule`).

    Attributes:
        name: the config name.
        uses_distances: needs all pairwise distances (shares the rule's Gram pass).
        requirement / reference: what its own guarantee needs, when it uses f.
    """

    name: ClassVar[str]
    uses_distances: ClassVar[bool] = False
    requirement: ClassVar[str] = "n > 2f"
    reference: ClassVar[str] = ""
    Config: ClassVar[type] = NoParams

    def __init__(self, config: object | None = None):
        self.config = config_for(self, config)

    @property
    def needs_generator(self) -> bool:
        return False

    def n_out(self, n: int) -> int:
        """Rows out for n rows in."""
        return n

    def max_f(self, n: int) -> int | None:
        """Largest f its own guarantee allows (None: f is not used)."""
        return None

    def defined_f(self, n: int) -> int | None:
        """Largest f its formula is defined for (None: f is not used)."""
        return None

    def check(self, n: int, f: int) -> None:
        top = self.max_f(n)
        if top is not None and f > top:
            raise ValueError(
                f"{self.name} needs {self.requirement} ({self.reference}), got n={n}, f={f}"
            )

    def apply(
        self,
        x: np.ndarray,
        rows: Sequence[int],
        f: int,
        *,
        generator: torch.Generator | None,
        dist: PairwiseDistances | None,
    ) -> tuple[np.ndarray, list[int], list[int] | None]:
        """Returns (new x, its rows to use, origin): origin[p] is the row of the input x
        that output row p stands for (clipping, NNM), or None when outputs mix inputs."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def split_rows(
    rows: Sequence[int],
    generator: torch.Generator | None,
    *,
    num_buckets: int | None = None,
    bucket_size: int | None = None,
    shuffle: bool = True,
) -> list[tuple[int, ...]]:
    """Split rows into buckets: shuffled by ``torch.randperm(generator=...)`` first.

    ``num_buckets=b``: b buckets of sizes as ``np.array_split`` (the first len % b one
    larger: the ByzShield/DETOX code's ``--bucket-size``, which was a count). ``bucket_size
    =s``: consecutive buckets of s, the last one smaller if s does not divide the count
    (ByzFL's Bucketing). With b >= len(rows) or s = 1 every row is its own bucket, in
    order, and nothing is drawn. ``shuffle=False``: contiguous buckets, no generator.

    Example::

        >>> split_rows(range(7), None, num_buckets=3, shuffle=False)
        [(0, 1, 2), (3, 4), (5, 6)]
    """
    rows = list(rows)
    count = len(rows)
    if (num_buckets is not None and num_buckets >= count) or bucket_size == 1:
        return [(i,) for i in rows]
    if shuffle:
        if generator is None:
            raise ValueError(
                "bucketing shuffles the rows every step: pass generator= (a torch.Generator "
                "seeded from (seed, step)), or shuffle=False for fixed contiguous buckets"
            )
        perm = torch.randperm(count, generator=generator).tolist()
        rows = [rows[p] for p in perm]
    if num_buckets is not None:
        size, extra = divmod(count, num_buckets)
        sizes = [size + (1 if b < extra else 0) for b in range(num_buckets)]
    else:
        sizes = [bucket_size] * (count // bucket_size)
        if count % bucket_size:
            sizes.append(count % bucket_size)
    out, start = [], 0
    for size in sizes:
        out.append(tuple(rows[start : start + size]))
        start += size
    return out


class Bucketing(PreAggregation):
    """Bucketing: shuffle the n inputs, split them into buckets, average each bucket.

    y_b = mean_{i in B_b} x_{pi(i)}, pi a fresh permutation every step (Karimireddy, He &
    Jaggi, "Byzantine-robust learning on heterogeneous datasets via bucketing", ICLR
    2022; the ByzShield/DETOX median of means). Each Byzantine input spoils at most one
    bucket, so the rule after it sees ceil(n / s) (or b) inputs with the same f. Buckets
    as :func:`split_rows`. Shuffling needs the caller's generator, seeded per step.

    Args:
        bucket_size: s in [1, n] (ByzFL's ``s``), or
        num_buckets: b in [1, n] (the ByzShield code's ``--bucket-size``); exactly one.
        shuffle: False = fixed contiguous buckets (biased against the DETOX worst case,
            whose bad files are 0, 1, ...: they share one bucket).

    Example: s=2 on 5 inputs gives 3 bucket means (the last of one input).
    """

    name = "bucketing"

    @dataclass(frozen=True)
    class Config:
        bucket_size: int | None = None
        num_buckets: int | None = None
        shuffle: bool = True

    def __init__(self, config: Bucketing.Config | None = None):
        super().__init__(config)
        bucket_size, num_buckets, shuffle = (
            self.config.bucket_size,
            self.config.num_buckets,
            self.config.shuffle,
        )
        if (bucket_size is None) == (num_buckets is None):
            raise ValueError(
                f"bucketing takes exactly one of bucket_size and num_buckets, got "
                f"bucket_size={bucket_size!r}, num_buckets={num_buckets!r}"
            )
        if bucket_size is not None:
            bucket_size = check_count(bucket_size, "bucketing: bucket_size", 1)
        if num_buckets is not None:
            num_buckets = check_count(num_buckets, "bucketing: num_buckets", 1)
        if not isinstance(shuffle, bool):
            raise ValueError(f"bucketing: shuffle must be True or False, got {shuffle!r}")
        self.bucket_size, self.num_buckets, self.shuffle = bucket_size, num_buckets, shuffle

    @property
    def needs_generator(self) -> bool:
        return self.shuffle and self.bucket_size != 1  # buckets of one: nothing to shuffle

    def n_out(self, n):
        if self.num_buckets is not None:
            return min(self.num_buckets, n)
        return math.ceil(n / self.bucket_size)

    def check(self, n, f):
        if self.num_buckets is not None:
            check_count(self.num_buckets, "bucketing: num_buckets", 1, n)
        else:
            check_count(self.bucket_size, "bucketing: bucket_size", 1, n)

    def split(self, rows, generator):
        return split_rows(
            rows,
            generator,
            num_buckets=self.num_buckets,
            bucket_size=self.bucket_size,
            shuffle=self.shuffle,
        )

    def apply(self, x, rows, f, *, generator, dist):
        buckets = self.split(rows, generator)
        if all(len(b) == 1 for b in buckets):
            return x, [b[0] for b in buckets], [b[0] for b in buckets]
        return row_means(x, buckets), list(range(len(buckets))), None

    def describe(self):
        size = f"s={self.bucket_size}" if self.bucket_size is not None else f"b={self.num_buckets}"
        return f"{self.name}({size}{'' if self.shuffle else ', contiguous'})"


class NNM(PreAggregation):
    """Nearest-neighbour mixing: replace each input by the mean of its n - f nearest.

    y_i = mean_{j in N_i} x_j, N_i the n - f inputs nearest to x_i, itself included
    (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by mixing: a recipe
    for optimal Byzantine ML under heterogeneity", AISTATS 2023). Equal distances prefer
    the lower row; neighbour sets are certified against the distance bounds. The means
    are one float64 GEMM per column chunk (ByzFL gathers an (n, n - f, d) copy). The
    rule after it runs with the same f. Needs n > 2f; outside it f is clamped to n - 1.

    Example::

        >>> preaggregate("nnm", torch.tensor([[0.0], [1.0], [10.0]]), f=1).tolist()
        [[0.5], [0.5], [5.5]]
    """

    name = "nnm"
    uses_distances = True
    reference = "Allouah et al. 2023"

    def max_f(self, n):
        return (n - 1) // 2

    def defined_f(self, n):
        return n - 1

    def apply(self, x, rows, f, *, generator, dist):
        k = len(rows)
        if dist is None or dist.rows.tolist() != list(rows):
            dist = PairwiseDistances(x, rows)
        size = k - f
        weights = np.zeros((k, k))
        for i in range(k):
            weights[i, nearest(dist, i, range(k), size)] = 1.0 / size
        return mixed_rows(x, rows, weights), list(range(k)), list(rows)


class Clipping(PreAggregation):
    """Static clipping: y_i = min(1, c / |x_i|) x_i.

    Every input is scaled down to norm at most c (ByzFL's Clipping; the norm-bounding
    step of e.g. Karimireddy et al. 2021). f is not used. c = 0 sends zeros.

    Args:
        c: the clipping threshold, >= 0 (ByzFL's default 2.0).

    Example::

        >>> preaggregate("clipping", torch.tensor([[3.0, 4.0]]), f=0, c=1.0)
        tensor([[0.6000, 0.8000]])
    """

    name = "clipping"

    @dataclass(frozen=True)
    class Config:
        c: float = 2.0

    def __init__(self, config: Clipping.Config | None = None):
        super().__init__(config)
        self.c = check_positive(self.config.c, "clipping: c", allow_zero=True)

    def apply(self, x, rows, f, *, generator, dist):
        norms = row_norms(x, rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            scales = np.where(norms > self.c, self.c / norms, 1.0)
        return scaled_rows(x, rows, scales.tolist()), list(range(len(rows))), list(rows)

    def describe(self):
        return f"{self.name}(c={self.c:g})"


class ARC(PreAggregation):
    """Adaptive robust clipping: clip the k largest inputs to the (k+1)-th largest norm.

    k = floor(2 f (n - f) / n); the k inputs of largest norm (equal norms: the higher row
    is clipped first, as ByzFL's stable sort) are scaled to the norm of the largest one
    left alone (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, "The vital role of
    gradient clipping in Byzantine-resilient distributed learning", arXiv 2405.14432,
    2024). k is computed in integers; ByzFL's float ``int(2 f / n * (n - f))`` is one
    lower at (n, f) = (121, 66) and (150, 105), both outside the guarantee. Needs n > 2f.

    Example (k = 1: the largest is scaled to the norm of the next)::

        >>> stack = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
        >>> preaggregate("arc", stack, f=1).tolist()
        [[1.0], [2.0], [3.0], [3.0]]
    """

    name = "arc"
    reference = "Allouah et al. 2024"

    def max_f(self, n):
        return (n - 1) // 2

    def defined_f(self, n):
        return n

    def apply(self, x, rows, f, *, generator, dist):
        k = len(rows)
        num_clipped = (2 * f * (k - f)) // k
        if num_clipped == 0:
            return x, list(rows), list(rows)
        norms = row_norms(x, rows)
        order = np.lexsort((np.arange(k), norms))  # ascending norm, then row
        threshold = norms[order[k - num_clipped - 1]]
        scales = np.ones(k)
        for j in order[k - num_clipped :]:
            if norms[j] > threshold:
                scales[j] = threshold / norms[j]
        return scaled_rows(x, rows, scales.tolist()), list(range(k)), list(rows)


PRE_AGGREGATIONS: dict[str, type[PreAggregation]] = {
    cls.name: cls for cls in (Bucketing, NNM, Clipping, ARC)
}
"""Config name -> pre-aggregation class."""
