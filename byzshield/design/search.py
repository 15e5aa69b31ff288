"""The certified worst case: c_max(q) and a Byzantine set that achieves it.

c_max(q) is the largest number of files q Byzantine workers can distort
(:func:`byzshield.design.bounds.distorted_files`), over all C(K, q) sets, and
eps(q) = c_max(q) / f the worst-case fraction of corrupted inputs that reaches the rule
(docs/design.md section 3). Under the worst-case selection every step distorts exactly
c_max(q) files, for odd and even r.

:func:`worst_case_table` computes c_max(q) for every q up to ``q_max`` at once:

* exactly and certified, by the exhaustive search over parallel classes
  (:mod:`byzshield.design.exhaustive`), for the resolvable designs every builder
  produces (``Placement.classes``);
* otherwise (custom designs, or too large for the enumeration) by a budgeted branch and
  bound per q (:mod:`byzshield.design.branch_and_bound`) with a counting bound; when the
  budget (:class:`byzshield.design.budget.Budget`) runs out the answer says
  ``certified=False`` and gives the best set found and the best upper bound known,
  never a silent guess.

DETOX has a closed form, c_max(q) = min(floor(q / r'), K / r) (:func:`detox_eps`).

    >>> from byzshield.design.placements import mols
    >>> row = worst_case(mols(5, 3), 4)
    >>> row.c_max, row.certified
    (5, True)

Run ``python -m byzshield.placement --help`` for the command line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from byzshield.design.bounds import check_q, distorted_files, upper_bounds
from byzshield.design.branch_and_bound import branch_and_bound, local_search
from byzshield.design.budget import Budget, Progress
from byzshield.design.exhaustive import ClassSolver
from byzshield.design.placements import Placement

__all__ = ["WorstCase", "detox_eps", "worst_case", "worst_case_table"]


@dataclass(frozen=True)
class WorstCase:
    """The worst case for q Byzantine workers.

    Attributes:
        q: number of Byzantine workers.
        c_max: most distorted files found (c_max(q) itself when ``certified``).
        byzantine: a Byzantine set (0-based worker ids) distorting ``c_max`` files.
        certified: True when ``c_max`` is proven optimal.
        upper_bound: proven upper bound on c_max(q) (equals c_max when certified).
        naive_bound: floor(q * l / r'), from counting copies.
        spectral_bound: floor of ByzShield's gamma (None where undefined, r = 1).
        seconds: time spent on this q (shared work is split evenly over the q's).
        method: "exhaustive-classes" or "branch-and-bound" (how it was found).
    """

    q: int
    c_max: int
    byzantine: tuple[int, ...]
    certified: bool
    upper_bound: int
    naive_bound: int
    spectral_bound: int | None
    seconds: float
    method: str


def _pad(placement: Placement, byzantine: Sequence[int], q: int) -> tuple[int, ...]:
    """``byzantine`` filled up to q workers (the lowest ids not in it): once c_max
    saturates more workers add nothing, but the set must still have q members. Adding
    Byzantine workers never undoes a distorted file, so the count stays c_max."""
    chosen = set(byzantine)
    for w in range(placement.num_workers):
        if len(chosen) >= q:
            break
        chosen.add(w)
    return tuple(sorted(chosen))


def worst_case_table(
    placement: Placement,
    q_max: int,
    *,
    time_budget: float | None = None,
    work: int | None = None,
    progress: Progress | None = None,
    q_min: int = 0,
) -> list[WorstCase]:
    """c_max(q) for q = q_min..q_max, each with a maximising set, bounds and certification.

    Exhaustive over parallel classes where the design has them and the search fits;
    otherwise branch and bound per q, sharing the budget over the q's. The budget is
    ``work`` search steps and/or ``time_budget`` seconds (60 s when neither is given);
    a budget of work alone gives the same answer on every machine (see :class:`Budget`).
    Rows are indexed by q - q_min.
    """
    check_q(placement, q_max, "q_max")
    check_q(placement, q_min, "q_min")
    if time_budget is None and work is None:
        time_budget = 60.0
    budget = Budget(work, time_budget)
    start = time.monotonic()
    qs = range(q_min, q_max + 1)
    solver = ClassSolver(placement) if placement.classes else None
    if solver is not None and solver.feasible():
        best, sets, complete = solver.solve(q_max, budget, progress)
        per_q = (time.monotonic() - start) / len(qs)
        rows = []
        for q in qs:
            upper, naive, spec = upper_bounds(placement, q)
            value = best[q]
            byz = _pad(placement, sets[q], q)
            if not complete:  # keep a heuristic answer if it beats the partial search
                g = local_search(placement, q, budget=Budget(work=200, seconds=time_budget))
                gv = len(distorted_files(placement, g))
                if gv > value:
                    value, byz = gv, _pad(placement, g, q)
            rows.append(
                WorstCase(
                    q,
                    value,
                    byz,
                    complete,
                    value if complete else max(value, upper),
                    naive,
                    spec,
                    per_q,
                    "exhaustive-classes",
                )
            )
        return rows
    rows = []
    for k, q in enumerate(qs):
        t0 = time.monotonic()
        share = budget.share(len(qs) - k)
        value, byz, certified, upper = branch_and_bound(placement, q, budget=share)
        byz = _pad(placement, byz, q)
        _, naive, spec = upper_bounds(placement, q)
        rows.append(
            WorstCase(
                q,
                value,
                byz,
                certified,
                upper,
                naive,
                spec,
                time.monotonic() - t0,
                "branch-and-bound",
            )
        )
        if progress:
            progress(k + 1, len(qs))
    return rows


def worst_case(
    placement: Placement, q: int, *, time_budget: float | None = None, work: int | None = None
) -> WorstCase:
    """c_max(q) and one Byzantine set achieving it (see :func:`worst_case_table`)."""
    check_q(placement, q)
    solver = ClassSolver(placement) if placement.classes else None
    if solver is not None and solver.feasible():  # one pass solves every q <= q anyway
        return worst_case_table(placement, q, time_budget=time_budget, work=work)[q]
    return worst_case_table(placement, q, time_budget=time_budget, work=work, q_min=q)[0]


def detox_eps(K: int, r: int, q_max: int) -> tuple[int | None, list[float] | None]:
    """(group size, eps(q) for q = 0..q_max) of DETOX with K workers, from its closed
    form: groups of r if r divides K, else of 3, 5 or 2 (the first that does); c_max(q) =
    min(q // r', K / r) with r' = r // 2 + 1, a strict majority as the vote needs (a test
    checks it against the exhaustive search). (None, None) when no size divides K."""
    for size in (r, 3, 5, 2):
        if size >= 2 and K % size == 0:
            groups, rp = K // size, size // 2 + 1
            return size, [min(q // rp, groups) / groups for q in range(q_max + 1)]
    return None, None
