"""Distorted files, and upper bounds on how many of them q Byzantine workers can make.

A file is *distorted* when at least r' = floor(r / 2) + 1 of its r copies come from
Byzantine workers: its majority vote then outputs a Byzantine value. This is the vote's
own rule (:mod:`byzshield.server.update` trusts a file only with a strict majority of
agreeing copies and drops a tie), so the model and the vote are one definition.
c_max(q) is the largest number of distorted files over all Byzantine sets of q workers
(docs/design.md section 3); the bounds here hold for every design and prune the search
(:mod:`byzshield.design.search`):

- naive: q workers hand out q l copies and a distorted file takes r' of them, so
  c_max(q) <= floor(q l / r');
- spectral (Konstantinidis & Ramamoorthy, "ByzShield", MLSys 2021, arXiv:2010.04902):
  c_max(q) <= gamma from the second eigenvalue of H H^T / (l r), for odd r.

    >>> from byzshield.design.placements import mols
    >>> naive_bound(mols(5, 3), 4), spectral_bound(mols(5, 3), 4)
    (10, 6)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from byzshield.design.placements import Placement

__all__ = ["check_q", "distorted_files", "naive_bound", "spectral_bound", "upper_bounds"]


def check_q(placement: Placement, q: int, name: str = "q") -> int:
    """``q``, checked to be a number of Byzantine workers of ``placement`` (0..K)."""
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
    check_q(placement, q)
    return min(placement.num_files, q * placement.load // placement.threshold)


def spectral_bound(placement: Placement, q: int) -> int | None:
    """ByzShield's spectral bound gamma >= c_max(q) (Konstantinidis & Ramamoorthy 2021).

    mu1 is the second largest eigenvalue of H H^T / (l r) (H the K x f incidence);
    beta = (q l / r) / (mu1 + (1 - mu1) q / K); gamma = (q l - beta) / ((r - 1) / 2).
    The derivation assumes odd r (then r' - 1 = (r - 1) / 2); for even r it is not
    derived, so None is returned, as for r = 1. Returned as floor(gamma), capped by the naive bound.
    """
    check_q(placement, q)
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


def upper_bounds(placement: Placement, q: int) -> tuple[int, int, int | None]:
    """(the least of the two bounds, :func:`naive_bound`, :func:`spectral_bound`) at q."""
    naive = naive_bound(placement, q)
    spec = spectral_bound(placement, q)
    return (naive if spec is None else min(naive, spec)), naive, spec
