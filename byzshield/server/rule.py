"""The run's aggregation rule as every step applies it (:class:`StepRule`).

A rule object (:mod:`byzshield.aggregators`) takes the (n, d) stack of vote winners and
the f it must tolerate. A step adds what the rule needs from the run: the f the
placement lets through (c_max(q) for ByzShield's designs, docs/design.md section 5), a
generator seeded from (seed, step) when the rule draws random numbers, the column
threads it runs on (its result does not depend on them), and whether it runs outside
its guarantee. The robust update (:mod:`byzshield.server.update`) and the omniscient
attack's objective (:mod:`byzshield.server.forgery`) both call it.

    >>> import torch
    >>> from byzshield.aggregators import build_aggregator
    >>> rule = StepRule(build_aggregator("coord-median"), f=1, seed=0)
    >>> stack = torch.tensor([[1.0], [2.0], [100.0]])
    >>> rule(stack, step=0, outside=rule.outside(3)).value.tolist()
    [2.0]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from byzshield.aggregators import AggregateResult, Aggregator
from byzshield.aggregators.columns import column_threads
from byzshield.compute.sampling import derive_seed

__all__ = ["StepRule", "rule_threads"]


@dataclass
class StepRule:
    """The run's aggregation rule as every step applies it: with the f it assumes, a
    generator seeded from (seed, step) when it draws random numbers, on ``threads``
    column threads (its result does not depend on them; None: torch's intra-op thread
    count), outside its guarantee when told so. The robust update and the omniscient
    attack's objective (:mod:`byzshield.server.forgery`) both call it.

    Attributes:
        aggregator: the rule object (``aggregator(stack, f=, generator=,
            outside_guarantee=)``), which keeps its own state across steps (centered
            clipping's centre).
        f: the f the rule assumes.
        seed: the run's seed.
        threads: column threads of the rule.
        outside_guarantee: the run was started outside the rule's guarantee on purpose.
    """

    aggregator: Aggregator
    f: int
    seed: int
    threads: int | None = None
    outside_guarantee: bool = False

    def beyond(self, n: int) -> bool:
        """Whether n inputs are too few for the rule's guarantee at its f."""
        try:
            self.aggregator.check(n, self.f)
        except ValueError:
            return True
        return False

    def outside(self, n: int) -> bool:
        """Whether the rule runs outside its guarantee on n inputs: on purpose, or
        because n is too few (see :mod:`byzshield.aggregators`)."""
        return self.outside_guarantee or self.beyond(n)

    def __call__(self, stack: Tensor, step: int, *, outside: bool) -> AggregateResult:
        """The rule's result on the (n, d) ``stack`` of ``step``."""
        generator = None
        if getattr(self.aggregator, "needs_generator", False):
            generator = torch.Generator().manual_seed(derive_seed("aggregate", self.seed, step))
        with column_threads(self.threads):
            return self.aggregator(stack, f=self.f, generator=generator, outside_guarantee=outside)


def rule_threads(d: int, threads: int | None) -> int | None:
    """Column threads for the rule on d parameters: every core (``threads``, None: all
    of them) for large models, as workers idle while the server aggregates and the
    rule's result does not depend on the count; None (torch's intra-op count) below a
    million parameters, where thread hand-offs cost more than they save (measured:
    coord-median of 25 x 131k, 8 ms on one thread, 13 ms on two)."""
    return (threads or os.cpu_count() or 1) if d >= 1 << 20 else None
