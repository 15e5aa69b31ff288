"""The exact worst-case search over a resolvable design's parallel classes.

For the resolvable designs every builder produces (``Placement.classes``), c_max(q) for
every q up to ``q_max`` comes out of one exhaustive, hence certified, enumeration
(docs/design.md section 3):

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

A class too large to enumerate makes :meth:`ClassSolver.feasible` false; the search
then falls back to branch and bound (:mod:`byzshield.design.branch_and_bound`).
"""

from __future__ import annotations

import math

import numpy as np

from byzshield.design.budget import Budget, Progress
from byzshield.design.placements import Placement

__all__ = ["ClassSolver"]


def _popcount(masks: np.ndarray) -> np.ndarray:
    out = np.zeros(masks.shape, dtype=np.int64)
    m = masks.astype(np.int64).copy()
    while m.any():
        out += m & 1
        m >>= 1
    return out


class ClassSolver:
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
        """How many subset choices the outer classes have, before symmetry."""
        return math.prod(1 << len(c) for c in self.outer)

    def feasible(self) -> bool:
        """Whether the enumeration fits: every class listable and the work bounded."""
        if self.cover is None:
            return False
        # Work ~ outer choices (before symmetry) x block rows x files.
        rows = 1 << sum(len(c) for c in self.block)
        reduction = max(1, len(self.group[0])) if self.group else 1
        return self.outer_choices() / reduction * rows * self.f <= 2e11

    def solve(self, q_max: int, budget: Budget, progress: Progress | None):
        """(best, sets, complete): ``best[q]`` distorted files by ``sets[q]`` for
        q = 0..q_max; ``complete`` is False when the budget ran out first."""
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
