"""The attacks layer: what Byzantine workers send (docs/design.md, sections 4 and 6).

Every attack is a small frozen dataclass built from its parameters and called as::

    attack(own, *, honest=None, generator=None) -> Tensor   # same shape and dtype as own

- ``own``: the gradient the Byzantine worker computed honestly for one file.
- ``honest``: (m, *own.shape) stack of honest gradients, only for attacks with
  ``needs_honest = True`` (ALIE, IPM, mimic, the optimised forms, Min-Max, Min-Sum,
  Fang). Those model an
  **omniscient** adversary that sees what honest workers send; the parameter server
  simulates it in one explicit place (after gathering and before the vote) through
  :func:`forge`.
- ``generator``: an explicit ``torch.Generator`` (seeded from (seed, step, file) by
  :func:`attack_generator`). Attacks are deterministic given it; only ``gaussian`` and
  ``fang`` draw from it and they refuse to run without one. No attack touches global
  random state.

The output always has ``own``'s shape and dtype (a gradient that changes size would
crash the transport). ``label_flip`` is a data-side attack: its gradient transform is
the identity and ``flips_labels = True`` tells the worker to compute its gradients on
:func:`byzshield.compute.gradients.flip_labels` applied to the labels. ``backdoor`` is
another: its ``poison`` (a :class:`byzshield.compute.poison.Poison`) tells the worker to
compute its gradients on triggered, relabelled samples.

The attacks, each with its formula and reference in its docstring:
:mod:`~byzshield.attacks.worker` (what a worker does to its own gradient),
:mod:`~byzshield.attacks.omniscient` (from the honest gradients: ALIE, IPM, mimic),
:mod:`~byzshield.attacks.optimal` (ALIE and IPM with the factor searched every step),
:mod:`~byzshield.attacks.strongest` (Min-Max, Min-Sum, Fang),
:mod:`~byzshield.attacks.backdoor` (the backdoor: a data-side attack).
This package holds the protocol, the registry :data:`ATTACKS`, :func:`make_attack`
and :func:`forge` (and re-exports :func:`attack_generator`). Attacks know nothing of ranks or the
server; the layer imports only torch and the layers below it (design, compute).

============  ===================================  =====================================
name          sends                                reference
============  ===================================  =====================================
none          own                                  -
rev_grad      -scale * own (scale = 100)           ByzShield / DETOX code
constant      value everywhere (value = -100)      ByzShield / DETOX code
alie          mu + z * sigma of honest             Baruch et al. 2019 (z from n and q)
ipm           -eps * mu of honest (eps = 100)      Xie et al. 2019 ("Fall of Empires")
sign_flip     -own                                 e.g. Allen-Zhu et al. 2021
gaussian      N(mean, std^2) noise (0, 200)        e.g. ByzFL's Gaussian (std 1)
label_flip    own, computed on labels C - 1 - y    Allen-Zhu et al. 2021; ByzFL
infinity      +inf everywhere                      ByzFL's Inf
mimic         the honest gradient of one file      Karimireddy et al. 2022
optimal_alie  mu + z* sigma, z* searched           ByzFL's Optimal_ALittleIsEnough
optimal_ipm   -eps* mu, eps* searched              ByzFL's Optimal_InnerProductManipulation
min_max       mu + gamma p, max distance bounded   Shejwalkar & Houmansadr 2021 (NDSS)
min_sum       mu + gamma p, summed sq. distance    Shejwalkar & Houmansadr 2021 (NDSS)
fang          beyond the honest min/max, factor b  Fang et al. 2020 (USENIX Security)
backdoor      own, on triggered relabelled data    Bagdasaryan et al. 2020; Gu et al. 2017
============  ===================================  =====================================

Example::

    >>> import torch
    >>> from byzshield.attacks import make_attack
    >>> attack = make_attack("rev_grad", scale=2.0)
    >>> attack(torch.tensor([1.0, -3.0])).tolist()
    [-2.0, 6.0]

Tests: ``OMP_NUM_THREADS=1 python -m pytest tests/test_attacks.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from byzshield.attacks.backdoor import Backdoor
from byzshield.attacks.omniscient import (
    ALittleIsEnough,
    InnerProductManipulation,
    Mimic,
    alie_z,
)
from byzshield.attacks.optimal import OptimalALIE, OptimalIPM, line_search
from byzshield.attacks.strongest import WHOLE, Columns, Fang, MinMax, MinSum
from byzshield.attacks.worker import (
    Constant,
    Gaussian,
    Inf,
    LabelFlip,
    NoAttack,
    ReverseGradient,
    SignFlip,
    attack_generator,
)
from byzshield.compute.poison import Poison

__all__ = [
    "ATTACKS",
    "ALittleIsEnough",
    "Attack",
    "Backdoor",
    "Columns",
    "Constant",
    "Fang",
    "Gaussian",
    "Inf",
    "InnerProductManipulation",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "NoAttack",
    "OptimalALIE",
    "OptimalIPM",
    "ReverseGradient",
    "SignFlip",
    "alie_z",
    "attack_generator",
    "data_poison",
    "forge",
    "line_search",
    "make_attack",
]


class Attack(Protocol):
    """What the trainer relies on: a name, two flags and the uniform call."""

    name: ClassVar[str]
    needs_honest: ClassVar[bool]
    flips_labels: ClassVar[bool]

    def __call__(
        self,
        own: Tensor,
        *,
        honest: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


def data_poison(attack: Attack | None) -> Poison | None:
    """The data change a Byzantine worker applies before computing its gradients (the
    backdoor's :class:`~byzshield.compute.poison.Poison`), or None: every other attack
    sends a function of the gradient (label flip is ``flips_labels``)."""
    return getattr(attack, "poison", None)


Objective = Callable[[Tensor], float]
"""damage(v): how far the aggregate moves when every distorted file's vote winner is v."""


def forge(
    attack: Attack,
    honest: Tensor,
    files: list[int],
    *,
    seed: int,
    step: int,
    weights: Tensor | None = None,
    objective: Objective | None = None,
    columns: Columns = WHOLE,
) -> Tensor:
    """The omniscient adversary's copies of ``files``, from the (f, d) honest stack.

    Returns an (m, d) tensor: row k is the copy of ``files[k]``, or a single row
    (m = 1) shared by every file when the attack sends the same vector everywhere
    (ALIE and IPM: their statistics are computed once per step, not once per copy).
    ``weights`` (f,) counts the honest copies of each file (IPM averages over honest
    copies, as the original code). ``objective`` scores a candidate vector by the damage
    that survives the vote and the configured rule (the optimised attacks maximise it).
    ``columns`` says which columns of the whole vector ``honest`` holds and how to sum
    over all of them (a sharded server's; :class:`~byzshield.attacks.strongest.Columns`).
    An attack may define ``forge(honest, files, seed=, step=, weights=, objective=,
    columns=)`` itself; otherwise each file's copy is ``attack(honest[j], honest=honest,
    generator=(seed, step, j))``.
    """
    own = getattr(attack, "forge", None)
    if own is not None:
        return own(
            honest,
            files,
            seed=seed,
            step=step,
            weights=weights,
            objective=objective,
            columns=columns,
        )
    return torch.stack(
        [attack(honest[j], honest=honest, generator=attack_generator(seed, step, j)) for j in files]
    )


ATTACKS: dict[str, type] = {
    cls.name: cls
    for cls in (
        NoAttack,
        ReverseGradient,
        Constant,
        ALittleIsEnough,
        InnerProductManipulation,
        SignFlip,
        Gaussian,
        LabelFlip,
        Inf,
        Mimic,
        OptimalALIE,
        OptimalIPM,
        MinMax,
        MinSum,
        Fang,
        Backdoor,
    )
}
"""Config name -> attack class; build instances with :func:`make_attack`."""


def make_attack(name: str, **params: object) -> Attack:
    """Build the attack registered as ``name`` from its parameters.

    Raises:
        ValueError: unknown name, unknown parameter, or an invalid parameter value.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    cls = ATTACKS[name]
    allowed = [fl.name for fl in fields(cls) if fl.init]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"attack {name} has no parameter {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )
    return cls(**params)
