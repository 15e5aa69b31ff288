"""The omniscient adversary: distorted files, worst-case Byzantine sets and bounds.

A file is *distorted* when at least r' = floor(r / 2) + 1 of its r copies come from
Byzantine workers: its majority vote then outputs a Byzantine value. This is the vote's
own rule (:mod:`byzshield.server.update` trusts a file only with a strict majority of agreeing
copies and drops a tie), so the model and the vote are one definition: under the
worst-case selection every step distorts exactly c_max(q) files, for odd and even r.
c_max(q) is the largest number of distorted files over all Byzantine sets of q workers
(BYZSHIELD.md section 3).

:func:`worst_case_table` computes c_max(q) for every q up to ``q_max`` at once, exactly
and certified, for the resolvable designs every builder produces (``Placement.classes``):

* The workers split into r parallel classes; a class's workers hold disjoint files. So
  a Byzantine set is one subset per class, and the count of a file is the number of
  classes whose chosen subset covers it.
* The *last* class is solved greedily and exactly: once the other classes are fixed,
  each of its workers adds independently the files it holds whose count is r' - 1, so
  the best b workers are the b largest gains.
* The one or two classes before it are enumerated in one vectorised NumPy block (every
  pair of subsets at once), which gives the best value for every remaining budget.
* The remaining *outer* classes are enumerated subset by subset, keeping one choice per
  orbit of the design's symmetries (``Placement.symmetries``: for MOLS the translations
  of the affine plane, which shift each class independently). For MOLS l=7, r=5 (K=35)
  that is ~400 outer choices instead of 16,384, each finishing 16,384 x 128 completions
  in a few milliseconds.

Designs without classes (custom ones), or too large for the enumeration, fall back to a
time-budgeted branch and bound (:func:`branch_and_bound`) with a counting bound; when
the budget runs out the answer says ``certified=False`` and gives the best set found and
the best upper bound known, never a silent guess.

Run ``python -m byzshield.placement --help`` for the command line.

Length (about 900 lines): one algorithm. The certified worst-case search (bounds, branch
and bound, the closed forms for DETOX and the greedy start) and the selections built on
it share their bounds and state; split in two, each half would need the other's insides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from byzshield.design.placements import Placement

__all__ = [
    "SELECTIONS",
    "detox_eps",
    "Budget",
    "Selection",
    "WorstCase",
    "build_selection",
    "branch_and_bound",
    "detox_selection",
    "distorted_files",
    "naive_bound",
    "random_selection",
    "spectral_bound",
    "worst_case",
    "worst_case_table",
]

Progress = Callable[[int, int], None]  # (done, total)


class Budget:
    """A search budget in work units, in seconds, or both (whichever runs out first).

    A work unit is one node of the branch and bound, one vectorised block of the class
    search, or one move of the local search. A budget of work alone makes the search do
    the same steps on any machine, so the Byzantine set it picks does not depend on the
    machine's speed or load (training uses that); seconds suit an interactive table.
    """

    def __init__(self, work: int | None = None, seconds: float | None = None):
        if work is not None and (isinstance(work, bool) or not isinstance(work, int) or work < 1):
            raise ValueError(f"work must be a positive integer (search steps), got {work!r}")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
        ):
            raise ValueError(f"time_budget must be a positive number of seconds, got {seconds!r}")
        self.work = work
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.used = 0

    def share(self, parts: int) -> Budget:
        """A budget for one of ``parts`` remaining pieces of the search (split evenly)."""
        work = None if self.work is None else max(1, (self.work - self.used) // max(parts, 1))
        seconds = None
        if self.deadline is not None:
            seconds = max(0.01, (self.deadline - time.monotonic()) / max(parts, 1))
        child = Budget(work, seconds)
        child.parent = self
        return child

    def spend(self, units: int = 1) -> bool:
        """Record ``units`` of work; False once the budget is exhausted."""
        self.used += units
        parent = getattr(self, "parent", None)
        if parent is not None:
            parent.used += units
        if self.work is not None and self.used > self.work:
            return False
        return self.deadline is None or time.monotonic() <= self.deadline


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
        method: "exhaustive-classes", "branch-and-bound" or "closed-form".
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


def _check_q(placement: Placement, q: int, name: str = "q") -> int:
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= placement.num_workers:
        raise ValueError(
            f"{name} must be an integer in 0..K={placement.num_workers} "
            f"(number of Byzantine workers), got {q!r}"
        )
    return q


def distorted_files(placement: Placement, byzantine: Iterable[int]) -> list[int]:
    """Files whose vote the Byzantine set wins: at least r' of their copies are Byzantine.

    >>> from byzshield.design.placements import mols
    >>> distorted_files(mols(3, 2), [0, 3])  # workers of two squares meet in one file
    [0]
    """
    bad = set()
    for w in byzantine:
        if (
            isinstance(w, bool)
            or not isinstance(w, int | np.integer)
            or not (0 <= w < placement.num_workers)
        ):
            raise ValueError(
                f"Byzantine worker ids must be integers in 0..{placement.num_workers - 1}, "
                f"got {w!r}"
            )
        bad.add(int(w))
    t = placement.threshold
    return [j for j, ws in enumerate(placement.file_workers) if sum(w in bad for w in ws) >= t]


def naive_bound(placement: Placement, q: int) -> int:
    """floor(q * l / r'), capped at f: q workers hand out q*l copies, r' per distorted file."""
    _check_q(placement, q)
    return min(placement.num_files, q * placement.load // placement.threshold)


def spectral_bound(placement: Placement, q: int) -> int | None:
    """ByzShield's spectral bound gamma >= c_max(q) (Konstantinidis & Ramamoorthy 2021).

    mu1 is the second largest eigenvalue of H H^T / (l r) (H the K x f incidence);
    beta = (q l / r) / (mu1 + (1 - mu1) q / K); gamma = (q l - beta) / ((r - 1) / 2).
    The derivation assumes odd r (then r' - 1 = (r - 1) / 2); for even r it is not
    derived, so None is returned, as for r = 1. Returned as floor(gamma), capped by the naive bound.
    """
    _check_q(placement, q)
    K, l, r = placement.num_workers, placement.load, placement.replication
    if r < 3 or r % 2 == 0:
        return None
    if q == 0:
        return 0
    mu1 = _second_eigenvalue(placement)
    beta = (q * l / r) / (mu1 + (1 - mu1) * q / K)
    gamma = (q * l - beta) / ((r - 1) / 2)
    return max(0, min(naive_bound(placement, q), math.floor(gamma + 1e-9)))


_EIG_CACHE: dict[tuple, float] = {}


def _second_eigenvalue(placement: Placement) -> float:
    key = placement.worker_files
    if key not in _EIG_CACHE:
        h = placement.incidence().astype(np.float64)
        ev = np.linalg.eigvalsh(h @ h.T / (placement.load * placement.replication))
        _EIG_CACHE[key] = float(ev[-2]) if len(ev) > 1 else 0.0
    return _EIG_CACHE[key]


def _upper(placement: Placement, q: int) -> tuple[int, int, int | None]:
    naive = naive_bound(placement, q)
    spec = spectral_bound(placement, q)
    return (naive if spec is None else min(naive, spec)), naive, spec


# --------------------------------------------------------------------------------------
# Selection strategies (the original DETOX experiments, and seeded random sets).


def detox_selection(placement: Placement, q: int, strategy: str = "worst") -> list[int]:
    """Byzantine sets of the original DETOX experiments, for group placements.

    * ``worst``: fill r' members of group 0, then of group 1, ... (leftovers go to the
      next group), which distorts min(q // r', K / r) files.
    * ``benign``: one worker per group, round-robin (distorts nothing while q < groups
      * r').
    * ``whole_group``: workers 0..q-1.
    """
    _check_q(placement, q)
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


# --------------------------------------------------------------------------------------
# Exact search over resolvable designs.


def _popcount(masks: np.ndarray) -> np.ndarray:
    out = np.zeros(masks.shape, dtype=np.int64)
    m = masks.astype(np.int64).copy()
    while m.any():
        out += m & 1
        m >>= 1
    return out


class _ClassSolver:
    """Exhaustive search over parallel classes (see the module docstring)."""

    MAX_BLOCK = 1 << 23  # elements of the vectorised block (rows x files), ~8 MB of int8
    MAX_CLASS = 24  # workers per enumerated class: 2^24 subsets, the most worth listing

    def __init__(self, placement: Placement):
        p = placement
        self.p = p
        self.f = p.num_files
        self.t = p.threshold
        classes = [list(c) for c in p.classes or ()]
        # Largest classes go to the vectorised/greedy end; outer classes are the rest.
        classes.sort(key=len)
        self.greedy = classes[-1]
        rest = classes[:-1]
        self.block: list[list[int]] = []
        while (
            rest
            and (1 << sum(len(c) for c in [*self.block, rest[-1]])) * self.f <= (self.MAX_BLOCK)
            and len(self.block) < 2
        ):
            self.block.insert(0, rest.pop())
        self.outer = rest
        inc = p.incidence().astype(np.int8)
        self.inc = inc
        self.greedy_inc = inc[self.greedy]  # (n_G, f)
        # Coverage of every subset of every outer/block class: (2^n, f) int8. A class too
        # large to enumerate makes the whole search infeasible (branch and bound instead).
        self.cover: dict | None = {}
        if any(len(c) > self.MAX_CLASS for c in [*self.outer, *self.block]):
            self.cover, self.group = None, []
            return
        for c in [*self.outer, *self.block]:
            self.cover[tuple(c)] = self._subset_cover(c)
        self.group = _group_tables(p, self.outer)

    def _subset_cover(self, members: list[int]) -> np.ndarray:
        n = len(members)
        masks = np.arange(1 << n)
        bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.int8)
        return bits @ self.inc[members]

    def outer_choices(self) -> int:
        return math.prod(1 << len(c) for c in self.outer)

    def feasible(self) -> bool:
        if self.cover is None:
            return False
        # Work ~ outer choices (before symmetry) x block rows x files.
        rows = 1 << sum(len(c) for c in self.block)
        reduction = max(1, len(self.group[0])) if self.group else 1
        return self.outer_choices() / reduction * rows * self.f <= 2e11

    def solve(self, q_max: int, budget: Budget, progress: Progress | None):
        f, t = self.f, self.t
        # Block rows: all combinations of subsets of the block classes, sorted by size.
        if self.block:
            cov = np.zeros((1, f), dtype=np.int8)
            size = np.zeros(1, dtype=np.int64)
            masks = [np.zeros(1, dtype=np.int64)]
            for c in self.block:
                cc = self.cover[tuple(c)]
                n = cc.shape[0]
                cov = (cov[:, None, :] + cc[None, :, :]).reshape(-1, f)
                size = (size[:, None] + _popcount(np.arange(n))[None, :]).reshape(-1)
                masks = [np.repeat(m, n) for m in masks] + [np.tile(np.arange(n), len(masks[0]))]
            order = np.argsort(size, kind="stable")
            block_cov, block_size = cov[order], size[order]
            block_masks = np.stack([m[order] for m in masks[1:]], axis=1)
        else:
            block_cov = np.zeros((1, f), dtype=np.int8)
            block_size = np.zeros(1, dtype=np.int64)
            block_masks = np.zeros((1, 0), dtype=np.int64)
        size_end = np.searchsorted(block_size, np.arange(q_max + 2), side="right")
        greedy_inc_t = self.greedy_inc.T.astype(np.float32)  # (f, n_G)
        n_g = len(self.greedy)

        best = [-1] * (q_max + 1)
        witness: list[tuple | None] = [None] * (q_max + 1)
        total = 1 << len(self.outer[0]) if self.outer else 1
        done = 0
        complete = True

        def finish(counts: np.ndarray, used: int, outer_masks: tuple[int, ...]) -> None:
            room = q_max - used
            if room < 0:
                return
            nrows = int(size_end[min(room, q_max + 1)])
            cnt = counts[None, :] + block_cov[:nrows]
            base = (cnt >= t).sum(axis=1)
            near = (cnt == t - 1).astype(np.float32)
            gains = near @ greedy_inc_t  # (rows, n_G)
            gains_sorted = -np.sort(-gains, axis=1)
            pref = np.zeros((nrows, n_g + 1), dtype=np.int64)
            pref[:, 1:] = np.cumsum(gains_sorted, axis=1)
            sizes = block_size[:nrows] + used
            for q in range(used, q_max + 1):
                valid = int(size_end[min(q - used, q_max + 1)])
                if valid == 0:
                    continue
                k = np.minimum(q - sizes[:valid], n_g)
                vals = base[:valid] + pref[np.arange(valid), k]
                i = int(np.argmax(vals))
                if vals[i] > best[q]:
                    best[q] = int(vals[i])
                    witness[q] = (outer_masks, i, int(k[i]), gains[i])

        def rec(level: int, counts: np.ndarray, used: int, masks: tuple[int, ...], tied):
            nonlocal done, complete
            if level == len(self.outer):
                finish(counts, used, masks)
                return
            c = self.outer[level]
            cover = self.cover[tuple(c)]
            for m in range(1 << len(c)):
                if level == 0:
                    if not budget.spend():
                        complete = False
                        return
                    done += 1
                    if progress:
                        progress(done, total)
                k = int(m).bit_count()
                if used + k > q_max:
                    continue
                still = []
                ok = True
                for g in tied:
                    img = g[level][m]
                    if img < m:
                        ok = False
                        break
                    if img == m:
                        still.append(g)
                if not ok:
                    continue
                rec(level + 1, counts + cover[m], used + k, (*masks, m), still)

        rec(0, np.zeros(f, dtype=np.int8), 0, (), self.group)
        sets = []
        for q in range(q_max + 1):
            w = witness[q]
            if w is None:  # pragma: no cover - q=0 always has the empty set
                sets.append(())
                continue
            outer_masks, row, k, gains = w
            chosen = [
                c[i]
                for c, m in zip(self.outer, outer_masks, strict=False)
                for i in range(len(c))
                if m >> i & 1
            ]
            for c, m in zip(self.block, block_masks[row], strict=False):
                chosen += [c[i] for i in range(len(c)) if int(m) >> i & 1]
            top = np.argsort(-gains, kind="stable")[:k]
            chosen += [self.greedy[i] for i in top]
            sets.append(tuple(sorted(chosen)))
        return best, sets, complete


def _group_tables(placement: Placement, outer: list[list[int]], cap: int = 20000):
    """For each symmetry-group element g: per outer class, the image of every subset mask.

    The group is generated by ``placement.symmetries``; the identity is left out (it ties
    with everything). Closure stops at ``cap`` elements, which stays correct: canonical
    pruning against any subset of the group keeps every orbit's minimum.
    """
    if not outer or not placement.symmetries:
        return []
    K = placement.num_workers
    ident = tuple(range(K))
    elems = {ident}
    frontier = [ident]
    gens = [tuple(g) for g in placement.symmetries]
    while frontier and len(elems) < cap:
        nxt = []
        for e in frontier:
            for g in gens:
                h = tuple(g[e[w]] for w in range(K))
                if h not in elems:
                    elems.add(h)
                    nxt.append(h)
        frontier = nxt
    elems.discard(ident)
    tables = []
    for e in sorted(elems):
        per_class = []
        for c in outer:
            pos = {w: i for i, w in enumerate(c)}
            n = len(c)
            masks = np.arange(1 << n)
            img = np.zeros(1 << n, dtype=np.int64)
            for i, w in enumerate(c):
                img |= ((masks >> i) & 1) << pos[e[w]]
            per_class.append(img.tolist())
        tables.append(per_class)
    return tables


# --------------------------------------------------------------------------------------
# Branch and bound (any design).


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
    _check_q(placement, q)
    search = budget or Budget(work, time_budget if (time_budget or work) else 10.0)
    K, f, t = placement.num_workers, placement.num_files, placement.threshold
    wf = [list(fs) for fs in placement.worker_files]
    inc = placement.incidence().astype(np.int64)
    overlap = inc @ inc.T
    np.fill_diagonal(overlap, 0)
    lam = int(overlap.max()) if K > 1 else 0

    if initial is None:
        initial = _local_search(placement, q, budget=search.share(10))
    init = list(initial)
    best_val = len(distorted_files(placement, init))
    best_set = tuple(sorted(init))
    if q == 0:
        return 0, (), True, 0
    root_bound = _upper(placement, q)[0]
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


def _greedy(placement: Placement, q: int) -> list[int]:
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


def _local_search(
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
    start = _greedy(placement, q)
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


# --------------------------------------------------------------------------------------
# Public entry points.


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
    _check_q(placement, q_max, "q_max")
    _check_q(placement, q_min, "q_min")
    if time_budget is None and work is None:
        time_budget = 60.0
    budget = Budget(work, time_budget)
    start = time.monotonic()
    qs = range(q_min, q_max + 1)
    solver = _ClassSolver(placement) if placement.classes else None
    if solver is not None and solver.feasible():
        best, sets, complete = solver.solve(q_max, budget, progress)
        per_q = (time.monotonic() - start) / len(qs)
        rows = []
        for q in qs:
            upper, naive, spec = _upper(placement, q)
            value = best[q]
            byz = _pad(placement, sets[q], q)
            if not complete:  # keep a heuristic answer if it beats the partial search
                g = _local_search(placement, q, budget=Budget(work=200, seconds=time_budget))
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
        _, naive, spec = _upper(placement, q)
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
    _check_q(placement, q)
    solver = _ClassSolver(placement) if placement.classes else None
    if solver is not None and solver.feasible():  # one pass solves every q <= q anyway
        return worst_case_table(placement, q, time_budget=time_budget, work=work)[q]
    return worst_case_table(placement, q, time_budget=time_budget, work=work, q_min=q)[0]


# --------------------------------------------------------------------------------------
# Byzantine selections: which workers are Byzantine at each step of a run.


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
    _check_q(placement, q)
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
