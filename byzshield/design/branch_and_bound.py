"""The worst-case search for any design: branch and bound, started from a local search.

Designs without parallel classes (custom ones), or too large for the exhaustive
enumeration (:mod:`byzshield.design.exhaustive`), are searched per q by a depth-first
branch and bound under a budget, with a counting bound at every node and one worker per
orbit of the design's symmetries forced in. A greedy start improved by a local search
gives it a good set early, so it prunes more; when the budget runs out the answer says
``certified=False`` and gives the best set found and the best upper bound known
(docs/design.md section 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from byzshield.design.bounds import check_q, distorted_files, upper_bounds
from byzshield.design.budget import Budget
from byzshield.design.placements import Placement

__all__ = ["branch_and_bound", "greedy", "local_search"]


def branch_and_bound(
    placement: Placement,
    q: int,
    *,
    time_budget: float | None = None,
    work: int | None = None,
    initial: Sequence[int] | None = None,
    budget: Budget | None = None,
) -> tuple[int, tuple[int, ...], bool, int]:
    """Maximise distorted files over q-sets by depth-first branch and bound.

    Returns (best value, a set achieving it, certified, proven upper bound). The bound at
    a node counts what the remaining budget b can still buy: each not-yet-distorted file
    needs n_j more Byzantine holders among the undecided workers, b new workers bring at
    most the b largest useful incidences, and (designs where two workers share at most
    lambda files) at most lambda * C(b, 2) sharing pairs; files are bought cheapest first.
    Symmetry: one representative per orbit of ``placement.symmetries`` is forced in.
    The search stops when the budget (``work`` nodes and/or ``time_budget`` seconds;
    10 s when neither is given) runs out; the answer then says ``certified=False``.
    """
    check_q(placement, q)
    search = budget or Budget(work, time_budget if (time_budget or work) else 10.0)
    K, f, t = placement.num_workers, placement.num_files, placement.threshold
    wf = [list(fs) for fs in placement.worker_files]
    inc = placement.incidence().astype(np.int64)
    overlap = inc @ inc.T
    np.fill_diagonal(overlap, 0)
    lam = int(overlap.max()) if K > 1 else 0

    if initial is None:
        initial = local_search(placement, q, budget=search.share(10))
    init = list(initial)
    best_val = len(distorted_files(placement, init))
    best_set = tuple(sorted(init))
    if q == 0:
        return 0, (), True, 0
    root_bound = upper_bounds(placement, q)[0]
    if best_val >= root_bound:
        return best_val, best_set, True, best_val

    reps = _orbit_representatives(placement)
    counts = np.zeros(f, dtype=np.int64)
    chosen: list[int] = []
    timed_out = False
    max_open = 0  # largest bound of a node abandoned by the deadline

    def value() -> int:
        return int((counts >= t).sum())

    def bound(nxt: int, budget: int) -> int:
        cur = value()
        if budget == 0:
            return cur
        cand = inc[nxt:]
        need = t - counts
        open_files = need > 0
        avail = cand.sum(axis=0)
        reachable = open_files & (avail >= need)
        if not reachable.any():
            return cur
        useful = cand[:, reachable].sum(axis=1)
        inc_budget = int(np.sort(useful)[::-1][:budget].sum())
        pair_budget = lam * budget * (budget - 1) // 2 if lam else None
        needs = np.sort(need[reachable])
        extra = 0
        used_inc = used_pair = 0
        for n in needs:
            used_inc += int(n)
            used_pair += int(n) * (int(n) - 1) // 2
            if used_inc > inc_budget or (pair_budget is not None and used_pair > pair_budget):
                break
            extra += 1
        return cur + extra

    # Force one orbit representative in; search every set containing it.
    for rep in reps:
        counts[:] = 0
        chosen[:] = [rep]
        counts[wf[rep]] += 1

        def rec_rep(nxt: int, budget: int, skip: int = rep) -> None:
            nonlocal best_val, best_set, timed_out, max_open
            if nxt == skip:
                rec_rep(nxt + 1, budget)
                return
            if budget == 0 or nxt >= K:
                v = value()
                if v > best_val:
                    best_val, best_set = v, tuple(sorted(chosen))
                return
            b = bound_excluding(nxt, budget, skip)
            if b <= best_val:
                return
            if not search.spend():
                timed_out = True
                max_open = max(max_open, b)
                return
            counts[wf[nxt]] += 1
            chosen.append(nxt)
            rec_rep(nxt + 1, budget - 1)
            chosen.pop()
            counts[wf[nxt]] -= 1
            rec_rep(nxt + 1, budget)

        def bound_excluding(nxt: int, budget: int, skip: int) -> int:
            if skip < nxt:
                return bound(nxt, budget)
            saved = inc[skip].copy()
            inc[skip] = 0
            try:
                return bound(nxt, budget)
            finally:
                inc[skip] = saved

        rec_rep(0, q - 1)
    certified = not timed_out
    upper = best_val if certified else max(best_val, min(root_bound, max_open))
    return best_val, best_set, certified, upper


def _orbit_representatives(placement: Placement) -> list[int]:
    """Smallest worker of each orbit under the group the symmetries generate."""
    K = placement.num_workers
    parent = list(range(K))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in placement.symmetries:
        for w in range(K):
            a, b = find(w), find(g[w])
            if a != b:
                parent[max(a, b)] = min(a, b)
    return sorted({find(w) for w in range(K)})


def greedy(placement: Placement, q: int) -> list[int]:
    """A good Byzantine set fast: add the worker that most raises (distorted, progress)."""
    t = placement.threshold
    counts = np.zeros(placement.num_files, dtype=np.int64)
    inc = placement.incidence().astype(np.int64)
    chosen: list[int] = []
    free = np.ones(placement.num_workers, dtype=bool)
    for _ in range(q):
        after = counts[None, :] + inc
        score = (after >= t).sum(axis=1) * 10_000 + np.minimum(after, t).sum(axis=1)
        score[~free] = -1
        w = int(np.argmax(score))
        chosen.append(w)
        free[w] = False
        counts += inc[w]
    return chosen


def local_search(
    placement: Placement,
    q: int,
    seconds: float | None = None,
    seed: int = 0,
    *,
    budget: Budget | None = None,
) -> list[int]:
    """Greedy start, then best-improving single swaps with seeded random restarts.

    Stops when the budget runs out (``seconds``, or a :class:`Budget` counting one unit
    per move) or after 50 restarts in a row that found nothing better.

    Used where the exact search cannot finish: a better set found early lets branch and
    bound prune more, and is what an uncertified row reports.
    """
    start = greedy(placement, q)
    K = placement.num_workers
    if q == 0 or q == K:
        return start
    t = placement.threshold
    inc = placement.incidence().astype(np.int64)
    big = 10 * placement.num_files * t + 1

    def score(counts: np.ndarray) -> np.ndarray:  # counts (..., f)
        return (counts >= t).sum(axis=-1) * big + np.minimum(counts, t).sum(axis=-1)

    rng = np.random.default_rng(seed)
    cur = np.zeros(K, dtype=bool)
    cur[start] = True
    best = cur.copy()
    best_val = int(score(inc[best].sum(axis=0)) // big)
    if budget is None:
        budget = Budget(seconds=seconds if seconds is not None else 1.0)
    stale = 0  # restarts since the best set last improved
    while stale < 50 and budget.spend():
        counts = inc[cur].sum(axis=0)
        ins, outs = np.flatnonzero(~cur), np.flatnonzero(cur)
        # every swap (out, in) at once: counts - inc[out] + inc[in]
        trial = counts[None, None, :] - inc[outs][:, None, :] + inc[ins][None, :, :]
        vals = score(trial)
        i, j = np.unravel_index(int(np.argmax(vals)), vals.shape)
        if vals[i, j] > score(counts):
            cur[outs[i]], cur[ins[j]] = False, True
            val = int(vals[i, j] // big)
            if val > best_val:
                best, best_val, stale = cur.copy(), val, 0
            continue
        stale += 1
        # local optimum: restart from the best set with two random members replaced
        cur = best.copy()
        out = rng.choice(np.flatnonzero(cur), size=min(2, q), replace=False)
        into = rng.choice(np.flatnonzero(~cur), size=min(2, q, K - q), replace=False)
        cur[out], cur[into] = False, True
    return [int(w) for w in np.flatnonzero(best)]
