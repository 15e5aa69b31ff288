"""Redundant gradient-task placements: which worker computes which file's gradient.

A placement is a bipartite graph workers x files (docs/design.md section 2). Every file is
held by ``replication`` workers and every worker holds ``load`` files, so
``num_files * replication == num_workers * load``. Workers and files are numbered from 0.

Builders, named as in the original system's ``--approach`` values:

==================  =========================  ======  ======  ====  ===========
approach            parameters                 K       f       load  replication
==================  =========================  ======  ======  ====  ===========
baseline            K                          K       K       1     1
draco_lite (detox)  K, r (r divides K)         K       K/r     1     r
mols                l (prime power), r <= l-1  r*l     l^2     l     r
rama_one            m = r < s, s prime         m*s     s^2     s     m
rama_two            m >= s, s | m, s prime     s^2     m*s     m     s
custom              path (JSON worker->files)  any     any     any   any
==================  =========================  ======  ======  ====  ===========

Every built-in design is *resolvable*: its workers split into ``replication`` parallel
classes, and the workers of one class hold disjoint files that together cover every file
once. Builders record the classes and a few *symmetries* (worker permutations that map
the design onto itself and each class onto itself); the worst-case search
(:mod:`byzshield.design.search`) uses both to search exactly and fast.

Run ``python -m byzshield.placement approach=mols approach.l=7 approach.r=5 q_max=13``
to print the worst-case table of a design (``--help`` lists the options).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from byzshield.design.fields import galois_field, is_prime, prime_power

__all__ = [
    "Placement",
    "baseline",
    "detox",
    "from_file",
    "mols",
    "rama_one",
    "rama_two",
]


@dataclass(frozen=True)
class Placement:
    """A validated worker x file assignment.

    Attributes:
        approach: name of the design (for messages and reports).
        worker_files: ``worker_files[w]`` is the sorted tuple of file ids worker w holds.
        num_files: f, the number of files (gradient tasks) per step.
        classes: optional resolution into parallel classes (tuples of worker ids); the
            workers of one class hold disjoint files covering all files exactly once.
        symmetries: optional worker permutations ``p`` (``p[w]`` is the image of ``w``)
            that are automorphisms of the design and map every class onto itself.
        params: the builder parameters, e.g. ``{"l": 5, "r": 3}``.
    """

    approach: str
    worker_files: tuple[tuple[int, ...], ...]
    num_files: int
    classes: tuple[tuple[int, ...], ...] | None = None
    symmetries: tuple[tuple[int, ...], ...] = ()
    params: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        wf = tuple(tuple(sorted(int(j) for j in files)) for files in self.worker_files)
        object.__setattr__(self, "worker_files", wf)
        name = self.approach
        if not wf:
            raise ValueError(f"placement {name!r}: needs at least one worker, got none")
        f = self.num_files
        if not isinstance(f, int) or f < 1:
            raise ValueError(f"placement {name!r}: num_files must be a positive integer, got {f!r}")
        entries = sum(len(files) for files in wf)
        if f > entries:  # checked before anything of size f is allocated
            raise ValueError(
                f"placement {name!r}: num_files={f}, but the {len(wf)} workers hold {entries} "
                f"files in all; every file needs a holder, so num_files <= {entries}"
            )
        holders = [0] * f
        for w, files in enumerate(wf):
            if len(set(files)) != len(files):
                raise ValueError(f"placement {name!r}: worker {w} lists a file twice: {files}")
            for j in files:
                if not 0 <= j < f:
                    raise ValueError(
                        f"placement {name!r}: worker {w} holds file {j}; file ids must be "
                        f"in 0..{f - 1}"
                    )
                holders[j] += 1
        loads = {len(files) for files in wf}
        if len(loads) != 1 or 0 in loads:
            raise ValueError(
                f"placement {name!r}: every worker must hold the same positive number of "
                f"files, got loads {sorted(loads)}"
            )
        if len(set(holders)) != 1 or holders[0] == 0:
            bad = [j for j, h in enumerate(holders) if h != holders[0] or h == 0][:5]
            raise ValueError(
                f"placement {name!r}: every file must be held by the same positive number of "
                f"workers; file counts differ (e.g. files {bad}: "
                f"{[holders[j] for j in bad]} vs file 0: {holders[0]})"
            )
        if self.classes is not None:
            self._check_classes()
        for p in self.symmetries:
            self._check_symmetry(p)

    # -- derived quantities -------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """K, the number of workers."""
        return len(self.worker_files)

    @property
    def load(self) -> int:
        """l, the number of files each worker holds."""
        return len(self.worker_files[0])

    @property
    def replication(self) -> int:
        """r, the number of workers holding each file."""
        return self.num_workers * self.load // self.num_files

    @property
    def threshold(self) -> int:
        """r' = floor(r / 2) + 1: a strict majority of a file's r copies.

        The vote trusts a file only when a strict majority of its copies agree (a tie is
        dropped from the step, see :mod:`byzshield.server.update`), so r' colluding Byzantine
        copies are exactly what it takes to distort a file. For odd r this is the
        paper's (r + 1) / 2; for even r it is r / 2 + 1, because r / 2 Byzantine copies
        only tie with the honest ones.
        """
        return self.replication // 2 + 1

    @cached_property
    def file_workers(self) -> tuple[tuple[int, ...], ...]:
        """``file_workers[j]``: the sorted workers holding file j."""
        out: list[list[int]] = [[] for _ in range(self.num_files)]
        for w, files in enumerate(self.worker_files):
            for j in files:
                out[j].append(w)
        return tuple(tuple(ws) for ws in out)

    def incidence(self):
        """The (K, f) 0/1 worker x file incidence matrix as a NumPy int8 array."""
        import numpy as np

        h = np.zeros((self.num_workers, self.num_files), dtype=np.int8)
        for w, files in enumerate(self.worker_files):
            h[w, list(files)] = 1
        return h

    def to_json(self) -> str:
        """The worker->files assignment as JSON, readable by :func:`from_file`."""
        return json.dumps({"worker_files": [list(fs) for fs in self.worker_files]})

    def describe(self) -> str:
        """One line: approach, parameters and the four sizes."""
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{self.approach}({ps}): K={self.num_workers} workers, f={self.num_files} files, "
            f"load l={self.load}, replication r={self.replication}"
        )

    # -- validation helpers ---------------------------------------------------------
    def _check_classes(self) -> None:
        seen: set[int] = set()
        for c, members in enumerate(self.classes or ()):
            covered: list[int] = []
            for w in members:
                if not 0 <= w < self.num_workers or w in seen:
                    raise ValueError(f"placement {self.approach!r}: class {c} has bad worker {w}")
                seen.add(w)
                covered.extend(self.worker_files[w])
            if sorted(covered) != list(range(self.num_files)):
                raise ValueError(
                    f"placement {self.approach!r}: class {c} does not cover every file once"
                )
        if len(seen) != self.num_workers:
            raise ValueError(f"placement {self.approach!r}: classes do not cover every worker")

    def _check_symmetry(self, perm: Sequence[int]) -> None:
        if sorted(perm) != list(range(self.num_workers)):
            raise ValueError(f"placement {self.approach!r}: symmetry is not a worker permutation")
        holder_sets = sorted(self.file_workers)
        images = sorted(tuple(sorted(perm[w] for w in ws)) for ws in self.file_workers)
        if images != holder_sets:
            raise ValueError(f"placement {self.approach!r}: a listed symmetry is no automorphism")
        for members in self.classes or ():
            if {perm[w] for w in members} != set(members):
                raise ValueError(f"placement {self.approach!r}: a symmetry moves a class")


# --------------------------------------------------------------------------------------
# Builders.


def _check_int(name: str, value, low: int, approach: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{approach}: {name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{approach}: {name} must be an integer >= {low}, got {value}")
    return value


def baseline(K: int) -> Placement:
    """Plain data parallelism: worker w computes file w alone (no redundancy, no vote)."""
    K = _check_int("K", K, 1, "baseline")
    shift = tuple((w + 1) % K for w in range(K))
    return Placement(
        "baseline",
        tuple((w,) for w in range(K)),
        K,
        classes=(tuple(range(K)),),
        symmetries=(shift,),
        params={"K": K},
    )


def detox(K: int, r: int, *, approach: str = "draco_lite") -> Placement:
    """DETOX (Rajput et al. 2019): groups of r consecutive workers share one file.

    Group g = workers g*r .. g*r + r - 1 computes file g; f = K / r, load 1.
    """
    K = _check_int("K", K, 1, approach)
    r = _check_int("r", r, 1, approach)
    if K % r:
        raise ValueError(f"{approach}: the group size r={r} must divide K={K}")
    groups = K // r
    classes = tuple(tuple(g * r + i for g in range(groups)) for i in range(r))
    shift = tuple((w + r) % K for w in range(K))
    return Placement(
        approach,
        tuple((w // r,) for w in range(K)),
        groups,
        classes=classes,
        symmetries=(shift,),
        params={"K": K, "r": r},
    )


def mols(l: int, r: int) -> Placement:  # noqa: E741 - l is the paper's name
    """ByzShield's MOLS placement: r mutually orthogonal Latin squares of order l.

    Over GF(l) (:mod:`byzshield.design.fields`), L_k(i, j) = a_k * i + j with a_k the
    nonzero field elements (a_k = k for prime l, giving the paper's (k*i + j) mod l).
    File (i, j) has id i*l + j. Worker (c, s), id c*l + s, holds every cell where
    L_{c+1}(i, j) = s. Workers of one square share no file; workers of different squares
    share exactly one.
    K = r*l, f = l^2, load l, replication r. Requires l a prime power and 1 <= r <= l-1.
    """
    l = _check_int("l", l, 2, "mols")  # noqa: E741
    r = _check_int("r", r, 1, "mols")
    if prime_power(l) is None:
        raise ValueError(f"mols: l must be a prime power (2, 3, 4, 5, 7, 8, 9, 11, ...), got {l}")
    if r > l - 1:
        raise ValueError(
            f"mols: r must be at most l-1={l - 1} (orthogonal squares of order {l}), got r={r}"
        )
    add, mul = galois_field(l)
    files: list[list[int]] = [[] for _ in range(r * l)]
    for c in range(r):
        a = c + 1
        for i in range(l):
            for j in range(l):
                files[c * l + add[mul[a][i]][j]].append(i * l + j)
    classes = tuple(tuple(c * l + s for s in range(l)) for c in range(r))
    # Translations (i, j) -> (i, j + e) and (i + e, j) shift symbol s of square c by e
    # and a_c * e respectively; e over an additive basis of GF(l) generates them all.
    p, k = prime_power(l)  # type: ignore[misc]
    basis = [p**t for t in range(k)]
    syms = []
    for e in basis:
        syms.append(tuple(c * l + add[s][e] for c in range(r) for s in range(l)))
        syms.append(tuple(c * l + add[s][mul[c + 1][e]] for c in range(r) for s in range(l)))
    return Placement(
        "mols",
        tuple(tuple(fs) for fs in files),
        l * l,
        classes=classes,
        symmetries=tuple(syms),
        params={"l": l, "r": r},
    )


def _ramanujan_incidence(m: int, s: int) -> list[tuple[int, int]]:
    """Nonzero (row, column) entries of B (s*s x m*s): block (a, b) = P^(a*b mod s).

    P is the s x s cyclic shift with P[x, (x-1) mod s] = 1, so P^k[x, (x-k) mod s] = 1:
    row a*s + x meets column b*s + (x - a*b) mod s.
    """
    return [
        (a * s + x, b * s + (x - a * b) % s) for a in range(s) for x in range(s) for b in range(m)
    ]


def rama_one(m: int, s: int) -> Placement:
    """Ramanujan bigraph, case 1 (m = r < s, s prime): worker x file incidence is B^T.

    Worker (b, y), id b*s + y, holds file (a, x) = a*s + x whenever x = y + a*b mod s.
    K = m*s, f = s^2, load s, replication m. It is the MOLS design up to file labels.
    """
    m = _check_int("m", m, 1, "rama_one")
    s = _check_int("s", s, 2, "rama_one")
    if not is_prime(s):
        raise ValueError(f"rama_one: s must be a prime (2, 3, 5, 7, 11, ...), got {s}")
    if m >= s:
        raise ValueError(f"rama_one: case 1 needs m < s, got m={m}, s={s} (use rama_two)")
    return _ramanujan("rama_one", m, s, workers_are_columns=True)


def rama_two(m: int, s: int) -> Placement:
    """Ramanujan bigraph, case 2 (m >= s, s | m, s prime): worker x file incidence is B.

    Worker (a, x), id a*s + x, holds file (b, y) = b*s + y whenever y = x - a*b mod s.
    K = s^2, f = m*s, load m, replication s.
    """
    m = _check_int("m", m, 1, "rama_two")
    s = _check_int("s", s, 2, "rama_two")
    if not is_prime(s):
        raise ValueError(f"rama_two: s must be a prime (2, 3, 5, 7, 11, ...), got {s}")
    if m < s or m % s:
        raise ValueError(f"rama_two: case 2 needs m >= s and s dividing m, got m={m}, s={s}")
    return _ramanujan("rama_two", m, s, workers_are_columns=False)


def _ramanujan(name: str, m: int, s: int, *, workers_are_columns: bool) -> Placement:
    """The placement whose workers are the columns (case 1) or rows (case 2) of B.

    Either way worker c*s + y lies in class c (block column b = c in case 1, block row
    a = c in case 2), the workers of a class hold disjoint files, and y -> y + 1 and
    y -> y + c (within class c) are automorphisms that keep every class in place.
    """
    cells = _ramanujan_incidence(m, s)
    if workers_are_columns:
        num_workers, num_files = m * s, s * s
        cells = [(col, row) for row, col in cells]
    else:
        num_workers, num_files = s * s, m * s
    files: list[list[int]] = [[] for _ in range(num_workers)]
    for worker, file in cells:
        files[worker].append(file)
    n_classes = num_workers // s
    classes = tuple(tuple(c * s + y for y in range(s)) for c in range(n_classes))
    shift = tuple(c * s + (y + 1) % s for c in range(n_classes) for y in range(s))
    skew = tuple(c * s + (y + c) % s for c in range(n_classes) for y in range(s))
    return Placement(
        name,
        tuple(tuple(fs) for fs in files),
        num_files,
        classes=classes,
        symmetries=(shift, skew),
        params={"m": m, "s": s},
    )


def from_file(path: str | Path) -> Placement:
    """A user-supplied placement: JSON ``[[files of worker 0], [files of worker 1], ...]``.

    An object ``{"worker_files": [...], "num_files": f}`` is accepted too (``num_files``
    defaults to 1 + the largest file id). The result is validated like any placement.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"custom placement: file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"custom placement: cannot read {str(p)!r} as JSON ({exc})") from None
    num_files = None
    if isinstance(data, dict):
        num_files = data.get("num_files")
        data = data.get("worker_files")
    if (
        not isinstance(data, list)
        or not data
        or not all(isinstance(fs, list) and fs for fs in data)
        or not all(isinstance(j, int) and not isinstance(j, bool) for fs in data for j in fs)
    ):
        raise ValueError(
            f"custom placement {str(p)!r}: expected a JSON list of non-empty lists of integer "
            'file ids, one list per worker (or {"worker_files": [...]})'
        )
    if num_files is None:
        top = max(max(fs) for fs in data)
        entries = sum(len(fs) for fs in data)
        if top >= entries:  # some file below it would have no holder
            worker = next(w for w, fs in enumerate(data) if top in fs)
            raise ValueError(
                f"custom placement {str(p)!r}: worker {worker} holds file {top}, but the "
                f"{len(data)} workers hold {entries} files in all, so file ids must lie in "
                f"0..{entries - 1} (every file needs a holder)"
            )
        num_files = top + 1
    return Placement("custom", tuple(tuple(fs) for fs in data), num_files, params={"path": str(p)})
