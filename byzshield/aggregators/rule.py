"""The base of every robust rule: what :class:`~byzshield.aggregators.Aggregator`
calls and what each rule declares.

A rule object holds its parameters (its nested ``Config``, checked when it is built)
and, for centered clipping, its state. The aggregator runs it: the rule itself only sees
a NumPy view ``x`` of the (possibly pre-aggregated) stack, the finite rows ``rows`` to
use and the effective ``f``, and returns ``(value (d,), selected rows or None)``. The
requirement its guarantee needs is ``requirement`` (checked by ``check``); what it does
when asked to run outside it is ``defined_f`` (docs/aggregators.md). The rules
themselves, by family: :mod:`~byzshield.aggregators.coordinate`,
:mod:`~byzshield.aggregators.distance`, :mod:`~byzshield.aggregators.iterative`,
:mod:`~byzshield.aggregators.spectral`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators._checks import NoParams, config_for
from byzshield.aggregators.pairwise import PairwiseDistances

__all__ = ["Rule"]


class Rule:
    """A robust rule on the rows of an (n, d) stack; subclasses set the class attributes.

    A rule's parameters are its nested ``Config`` dataclass (torchtitan's pattern): the
    one place they and their defaults are declared; ``Rule(config)`` checks them (None:
    the defaults), :func:`byzshield.aggregators.build_aggregator` builds one from keyword
    parameters, and the config's ``mode/`` options are generated from it.

    Attributes:
        name: the config name.
        requirement: the n-vs-f condition the rule's guarantee needs, as text.
        reference: who proved it (short).
        uses_distances: the rule needs all pairwise distances (its Gram pass doubles as
            the non-finite scan when it sees the raw stack).
        takes_signs: the rule works on the signs of its inputs; pre-aggregations then
            see signs too (sign-majority: the original's workers sent signs).
        propagates_nonfinite: a NaN or Inf in any row makes its value non-finite (the
            mean), so a finite value on every row proves every row finite: the
            aggregator then skips its separate non-finite scan (one pass over the stack).
    """

    name: ClassVar[str]
    requirement: ClassVar[str] = "n > 2f"
    reference: ClassVar[str] = "an honest majority"
    uses_distances: ClassVar[bool] = False
    takes_signs: ClassVar[bool] = False
    propagates_nonfinite: ClassVar[bool] = False
    Config: ClassVar[type] = NoParams

    def __init__(self, config: object | None = None):
        self.config = config_for(self, config)

    @property
    def needs_generator(self) -> bool:
        return False

    def max_f(self, n: int) -> int:
        """Largest f the guarantee allows for n inputs (-1: none)."""
        return (n - 1) // 2

    def defined_f(self, n: int) -> int | None:
        """Largest f the formula is defined for with n inputs (None: f is not used)."""
        return self.max_f(n)

    def check(self, n: int, f: int) -> None:
        """Raise a one-line ValueError unless the guarantee holds for f of n inputs."""
        if f > self.max_f(n):
            raise ValueError(
                f"{self.name} needs {self.requirement} ({self.reference}), got n={n}, f={f}"
            )
        self.check_params(n, f)

    def check_params(self, n: int, f: int) -> None:
        """Parameters whose range depends on n and f (nothing by default)."""

    def core(
        self,
        x: np.ndarray,
        rows: Sequence[int],
        f: int,
        *,
        dist: PairwiseDistances | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, list[int] | None]:
        """The rule on the rows ``rows`` of x with f: (value (d,), the rows of x it
        selected or None). ``dist`` holds the distances between exactly these rows when
        the aggregator computed them already; ``generator`` is the step's."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    def observe(self, value: Tensor) -> None:
        """Called with the final aggregate of each step (stateful rules update here)."""
