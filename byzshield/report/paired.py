"""Paired comparisons of two schemes over the same seeds: differences with confidence
intervals (``python -m byzshield.report --paired``).

Runs of two schemes (say MOLS and DETOX) with the same seed share their initial model
and data order, so comparing them seed by seed removes that variation: for a cell
(rule, attack, q, batch size, ...) with seeds s = 1..n,

    d_s = acc_A(s) - acc_B(s),   mean = (1/n) sum d_s,   sd = sample std of d_s (n - 1)
    95 % interval = mean +- t_{0.975, n-1} * sd / sqrt(n)          (Student's t)

and the difference is *distinguishable from zero* when the interval excludes 0 (a
two-sided paired t-test at the 5 % level). The same for each scheme's drop from its own
no-attack reference, drop_X(s) = acc_X(q=0, s) - acc_X(q, s), and for the difference of
drops. With many cells, about 1 in 20 cells whose true difference is zero is marked
anyway: read a single mark with that in mind.

Accuracy is a run's mean top-1 over its last ``last`` evaluations (1: the final one).

    >>> from byzshield.report.paired import paired_interval
    >>> s = paired_interval([0.5, 0.6, 0.55], [0.4, 0.45, 0.5])
    >>> round(s.mean, 4), round(s.low, 4), round(s.high, 4), s.n, s.distinguishable
    (0.1, -0.0242, 0.2242, 3, False)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PairedInterval",
    "Side",
    "paired_interval",
    "parse_pair",
    "t_half_width",
    "tail_accuracy",
]


@dataclass(frozen=True)
class PairedInterval:
    """mean of the paired differences a - b, its ``level`` interval [low, high], n pairs
    and the sample std of the differences (None when n < 2: no interval)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None
    level: float = 0.95

    @property
    def distinguishable(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_half_width(sd: float, n: int, level: float = 0.95) -> float:
    """Half the width of Student's t interval of a mean of ``n`` values whose sample
    std (n - 1) is ``sd``: t_{(1 + level) / 2, n - 1} * sd / sqrt(n) (n >= 2)."""
    if n < 2:
        raise ValueError(f"a t interval needs at least two values, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def paired_interval(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95
) -> PairedInterval:
    """Student's t interval of the mean of a[i] - b[i] (see the module docstring)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not len(a):
        raise ValueError("paired values: need at least one pair")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = math.fsum(d) / n
    if n < 2:
        return PairedInterval(mean, None, None, n, None, level)
    sd = statistics.stdev(d)
    half = t_half_width(sd, n, level)
    return PairedInterval(mean, mean - half, mean + half, n, sd, level)


def tail_accuracy(evals: Sequence[dict], last: int = 1) -> float | None:
    """Mean top-1 over the last ``last`` evaluations (None without any)."""
    values = [e["top1"] for e in evals if _finite(e.get("top1"))]
    if not values:
        return None
    tail = values[-last:]
    return math.fsum(tail) / len(tail)


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: groups whose approach label is ``approach`` and, when
    given, whose mode label is ``mode`` (labels as the report prints them, e.g.
    ``mols(l=5, r=3)`` and ``coord-median(num_buckets=5)``)."""

    approach: str
    mode: str | None = None

    def describe(self) -> str:
        return self.approach if self.mode is None else f"{self.approach} / {self.mode}"


def parse_pair(text: str) -> tuple[Side, Side]:
    """``"A vs B"``, each side ``APPROACH`` or ``APPROACH / MODE``; raises ValueError with
    what is allowed."""
    parts = text.split(" vs ")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(
            f"--paired takes 'APPROACH[ / MODE] vs APPROACH[ / MODE]' (labels as in "
            f"report.md), got {text!r}"
        )
    sides = []
    for part in parts:
        approach, _, mode = part.partition(" / ")
        sides.append(Side(approach.strip(), mode.strip() or None))
    return sides[0], sides[1]
