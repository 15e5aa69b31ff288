"""Byzantine selections: which workers are Byzantine at each step of a run.

Built on the worst-case search (:mod:`byzshield.design.search`): ``worst_case`` fixes
the set that distorts c_max(q) files. The others are a seeded random set (new every
step, or fixed for the run), an explicit list, and the strategies of the original DETOX
experiments (docs/design.md section 3). Whatever the selection, the search's c_max(q)
(or its proven upper bound) is the f the rule assumes.

    >>> from byzshield.design.placements import detox
    >>> build_selection(detox(9, 3), 2, "detox_worst", seed=0, work=1000).workers(5)
    (0, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from byzshield.design.bounds import check_q
from byzshield.design.placements import Placement
from byzshield.design.search import WorstCase, worst_case

__all__ = [
    "SELECTIONS",
    "Selection",
    "build_selection",
    "detox_selection",
    "random_selection",
]


def detox_selection(placement: Placement, q: int, strategy: str = "worst") -> list[int]:
    """Byzantine sets of the original DETOX experiments, for group placements.

    * ``worst``: fill r' members of group 0, then of group 1, ... (leftovers go to the
      next group), which distorts min(q // r', K / r) files.
    * ``benign``: one worker per group, round-robin (distorts nothing while q < groups
      * r').
    * ``whole_group``: workers 0..q-1.
    """
    check_q(placement, q)
    r = placement.replication
    groups = placement.num_files
    if placement.load != 1 or any(
        placement.file_workers[g] != tuple(range(g * r, g * r + r)) for g in range(groups)
    ):
        raise ValueError(
            f"the DETOX strategies need a DETOX group placement (draco_lite, "
            f"draco_lite_attack, maj_vote), got {placement.approach}"
        )
    if strategy == "whole_group":
        return list(range(q))
    if strategy == "benign":
        order = [g * r + i for i in range(r) for g in range(groups)]
        return sorted(order[:q])
    if strategy == "worst":
        t = placement.threshold
        order = [g * r + i for g in range(groups) for i in range(t)]
        order += [g * r + i for g in range(groups) for i in range(t, r)]
        return sorted(order[:q])
    raise ValueError(f"unknown DETOX strategy {strategy!r}; choose worst, benign or whole_group")


def random_selection(
    num_workers: int, q: int, *, seed: int, step: int | None = None, stragglers: bool = False
) -> list[int]:
    """q workers drawn without replacement from a generator seeded by (seed, step).

    With ``step=None`` the set is fixed for the whole run; otherwise it changes per step.
    ``stragglers`` draws from a stream of its own (the simulated erasures), unrelated to
    the Byzantine sets of the same seed and step.
    """
    if not 0 <= q <= num_workers:
        raise ValueError(f"q must be in 0..K={num_workers}, got {q}")
    kind = 2 if stragglers else (0 if step is None else 1)
    rng = np.random.default_rng([seed, kind, 0 if step is None else step])
    return sorted(int(w) for w in rng.choice(num_workers, size=q, replace=False))


@dataclass(frozen=True)
class Selection:
    """Which workers are Byzantine at every step of a run (0-based ids).

    Built once per run, on the parameter server only. ``kind`` names the rule,
    ``search`` is the worst-case search result when one ran (it also gives the f the
    aggregator assumes), ``fixed`` the set when it does not change between steps.
    """

    kind: str
    num_workers: int
    q: int
    seed: int = 0
    fixed: tuple[int, ...] | None = None
    search: WorstCase | None = None

    def workers(self, step: int) -> tuple[int, ...]:
        """The Byzantine workers at ``step``."""
        if self.fixed is not None:
            return self.fixed
        return tuple(random_selection(self.num_workers, self.q, seed=self.seed, step=step))

    def describe(self) -> str:
        """One line for the start of a run."""
        if self.q == 0:
            return "no Byzantine workers"
        if self.kind == "worst_case" and self.search is not None:
            s = self.search
            how = "certified" if s.certified else f"not certified, c_max <= {s.upper_bound}"
            return (
                f"worst case for q={self.q}: workers {list(self.fixed or ())} distort "
                f"{s.c_max} file{'' if s.c_max == 1 else 's'} ({how})"
            )
        if self.fixed is None:
            return f"{self.q} random Byzantine workers, drawn anew every step (seed {self.seed})"
        return f"Byzantine workers {list(self.fixed)} ({self.kind}), fixed for the run"

    def info(self) -> dict:
        """What run.json stores about the selection."""
        out: dict = {"kind": self.kind, "q": self.q, "workers": None}
        if self.fixed is not None:
            out["workers"] = list(self.fixed)
        if self.search is not None:
            out.update(
                c_max=self.search.c_max,
                certified=self.search.certified,
                upper_bound=self.search.upper_bound,
                method=self.search.method,
            )
        return out


SELECTIONS = (
    "worst_case",
    "random",
    "random_fixed",
    "detox_worst",
    "detox_benign",
    "detox_whole_group",
)
"""Names of the selection rules; a list of worker ids is accepted as well."""


def build_selection(
    placement: Placement, q: int, rule: str | Sequence[int], *, seed: int, work: int
) -> Selection:
    """The selection ``rule`` for q Byzantine workers of ``placement``.

    ``rule`` is ``worst_case`` (the set the search finds, fixed), ``random`` (a new
    seeded set every step), ``random_fixed`` (one seeded set for the run),
    ``detox_worst`` / ``detox_benign`` / ``detox_whole_group`` (the original DETOX
    experiments' strategies, :func:`detox_selection`, fixed) or a list of q distinct
    worker ids. The worst-case search runs once, bounded by ``work`` search
    steps so that it picks the same set on any machine; its c_max (or proven upper
    bound) is the f the aggregator assumes whatever the rule.
    """
    K = placement.num_workers
    check_q(placement, q)
    search = worst_case(placement, q, work=work) if q > 0 else None
    if not isinstance(rule, str):
        ids = tuple(rule)
        if (
            len(set(ids)) != len(ids)
            or len(ids) != q
            or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < K for w in ids)
        ):
            raise ValueError(
                f"adversary.selection as a list needs q={q} distinct worker ids in 0..{K - 1}, "
                f"got {list(ids)}"
            )
        return Selection("list", K, q, seed, tuple(sorted(ids)), search)
    if rule not in SELECTIONS:
        raise ValueError(
            f"adversary.selection must be one of {', '.join(SELECTIONS)} or a list of worker "
            f"ids, got {rule!r}"
        )
    if q == 0:
        return Selection(rule, K, 0, seed, (), None)
    if rule == "worst_case":
        return Selection(rule, K, q, seed, tuple(search.byzantine), search)
    if rule == "random_fixed":
        return Selection(rule, K, q, seed, tuple(random_selection(K, q, seed=seed)), search)
    if rule.startswith("detox_"):
        ids = detox_selection(placement, q, rule.removeprefix("detox_"))
        return Selection(rule, K, q, seed, tuple(ids), search)
    return Selection(rule, K, q, seed, None, search)
