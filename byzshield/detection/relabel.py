"""A moving placement (``placement.relabel=step``): every step a fresh secret
permutation of the workers' roles.

Role k is the placement's worker k: whoever plays it computes the files
``placement.worker_files[k]``. With a fixed placement (roles[w] = w) an adversary that
lies only on the files it wins can frame honest workers symmetrically: on MOLS at q = 3
the honest minority holders of the distorted files cover every disagreement as well as
the liars do, so the certificate (:mod:`byzshield.detection.cover`) names nobody.
Relabelling every step keeps the Byzantine workers (physical ones) but changes whom they
share files with, so the intersection of the covers shrinks to the liars.

The permutation is drawn on the parameter server from ``derive_seed("relabel", seed,
step)``, a stream no attack, selection or sampling draws from; workers learn only
their own role, when the step starts. The adversary chooses its workers before the run
(from the placement) and learns their roles of a step when the step starts, as they do.

    >>> roles = relabel_roles(6, seed=0, step=3)
    >>> sorted(roles) == list(range(6)), inverse(roles)[roles[2]]
    (True, 2)
"""

from __future__ import annotations

import torch

from byzshield.compute.sampling import derive_seed

__all__ = ["RELABELS", "inverse", "relabel_roles"]

RELABELS = ("none", "step")
"""``placement.relabel``: none (every worker keeps its role) or step (a new permutation
every step)."""


def relabel_roles(K: int, *, seed: int, step: int) -> tuple[int, ...]:
    """roles[w]: the role physical worker w plays at ``step`` (a permutation of 0..K-1,
    ``torch.randperm`` from ``derive_seed("relabel", seed, step)``)."""
    generator = torch.Generator().manual_seed(derive_seed("relabel", seed, step))
    return tuple(torch.randperm(K, generator=generator).tolist())


def inverse(roles: tuple[int, ...]) -> tuple[int, ...]:
    """who[k]: the physical worker playing role k."""
    who = [0] * len(roles)
    for w, k in enumerate(roles):
        who[k] = w
    return tuple(who)
