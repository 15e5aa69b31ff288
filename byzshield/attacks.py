"""What Byzantine workers send (ByzShield section 6).

Every attack is a small frozen dataclass built from its parameters and called as::

    attack(own, *, honest=None, generator=None) -> Tensor   # same shape and dtype as own

- ``own``: the gradient the Byzantine worker computed honestly for one file.
- ``honest``: (m, *own.shape) stack of honest gradients, only for attacks with
  ``needs_honest = True`` (ALIE, IPM). Those model an **omniscient** adversary that sees
  what honest workers send; the trainer simulates that in one explicit place (the
  parameter server, after gathering and before the vote) and passes the stack here.
- ``generator``: an explicit ``torch.Generator`` (seeded from (seed, step, file) by the
  caller). Attacks are deterministic given it; only ``gaussian`` draws from it and it
  refuses to run without one. No attack touches global random state.

The output always has ``own``'s shape and dtype (a gradient that changes size would
crash the transport). ``label_flip`` is a data-side attack: its gradient transform is
the identity and ``flips_labels = True`` tells the worker to compute its gradients on
:func:`byzshield.compute.gradients.flip_labels` applied to the labels.

=========  =====================================  =====================================
name       sends                                  reference
=========  =====================================  =====================================
none       own                                    -
rev_grad   -scale * own (scale = 100)             ByzShield / DETOX code
constant   value everywhere (value = -100)        ByzShield / DETOX code
alie       mu + z * sigma of honest               Baruch et al. 2019 (z from n and q)
ipm        -eps * mu of honest (eps = 100)        Xie et al. 2019 ("Fall of Empires")
sign_flip  -own                                   e.g. Allen-Zhu et al. 2021
gaussian   N(mean, std^2) noise (0, 200)          e.g. ByzFL's Gaussian (std 1)
label_flip own, computed on labels C - 1 - y      Allen-Zhu et al. 2021; ByzFL
=========  =====================================  =====================================

Example::

    >>> import torch
    >>> from byzshield.attacks import make_attack
    >>> attack = make_attack("rev_grad", scale=2.0)
    >>> attack(torch.tensor([1.0, -3.0])).tolist()
    [-2.0, 6.0]

Tests: ``OMP_NUM_THREADS=1 python -m pytest tests/test_attacks.py``.

Length (about 630 lines): twelve attacks, one small dataclass each with its reference,
and the optimised attacks' line search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import ClassVar, Protocol

import torch
from torch import Tensor

__all__ = [
    "ATTACKS",
    "ALittleIsEnough",
    "Attack",
    "Constant",
    "Gaussian",
    "Inf",
    "InnerProductManipulation",
    "LabelFlip",
    "Mimic",
    "NoAttack",
    "OptimalALIE",
    "OptimalIPM",
    "ReverseGradient",
    "SignFlip",
    "alie_z",
    "attack_generator",
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


def attack_generator(seed: int, step: int, file: int) -> torch.Generator:
    """The generator a Byzantine copy of ``file`` at ``step`` draws from.

    Seeded from (seed, step, file) only, so all Byzantine copies of a file agree (they
    collude), both engines draw the same numbers, and a rerun reproduces them.
    """
    from byzshield.compute.sampling import derive_seed

    return torch.Generator().manual_seed(derive_seed("attack", seed, step, file))


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
) -> Tensor:
    """The omniscient adversary's copies of ``files``, from the (f, d) honest stack.

    Returns an (m, d) tensor: row k is the copy of ``files[k]``, or a single row
    (m = 1) shared by every file when the attack sends the same vector everywhere
    (ALIE and IPM: their statistics are computed once per step, not once per copy).
    ``weights`` (f,) counts the honest copies of each file (IPM averages over honest
    copies, as the original code). ``objective`` scores a candidate vector by the damage
    that survives the vote and the configured rule (the optimised attacks maximise it).
    An attack may define ``forge(honest, files, seed=, step=, weights=, objective=)``
    itself; otherwise each file's copy is ``attack(honest[j], honest=honest,
    generator=(seed, step, j))``.
    """
    own = getattr(attack, "forge", None)
    if own is not None:
        return own(honest, files, seed=seed, step=step, weights=weights, objective=objective)
    return torch.stack(
        [attack(honest[j], honest=honest, generator=attack_generator(seed, step, j)) for j in files]
    )


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _check_own(name: str, own: object) -> Tensor:
    if not isinstance(own, Tensor):
        raise ValueError(f"{name}: own must be a torch.Tensor, got {type(own)}")
    return own


def _check_honest(name: str, own: Tensor, honest: object, min_rows: int) -> Tensor:
    if not isinstance(honest, Tensor):
        raise ValueError(
            f"{name} needs the honest gradients: pass honest=Tensor of shape "
            f"(m, {', '.join(map(str, own.shape))}) (the omniscient simulation), got {honest!r}"
        )
    if honest.dim() != own.dim() + 1 or honest.shape[1:] != own.shape:
        raise ValueError(
            f"{name}: honest must have shape (m, {', '.join(map(str, own.shape))}), "
            f"got {tuple(honest.shape)}"
        )
    if honest.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} honest rows, got {honest.shape[0]}")
    return honest


@dataclass(frozen=True)
class NoAttack:
    """Sends its honest gradient unchanged (returns ``own`` itself, no copy)."""

    name: ClassVar[str] = "none"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return _check_own(self.name, own)


@dataclass(frozen=True)
class ReverseGradient:
    """Sends -scale * own (the ByzShield/DETOX ``rev_grad`` error mode, scale 100)."""

    scale: float = 100.0
    name: ClassVar[str] = "rev_grad"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        _finite(self.scale, "rev_grad: scale")

    def __call__(self, own, *, honest=None, generator=None):
        return _check_own(self.name, own) * (-self.scale)


@dataclass(frozen=True)
class Constant:
    """Sends ``value`` in every coordinate (the ByzShield/DETOX ``constant`` mode, -100)."""

    value: float = -100.0
    name: ClassVar[str] = "constant"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        _finite(self.value, "constant: value")

    def __call__(self, own, *, honest=None, generator=None):
        return torch.full_like(_check_own(self.name, own), self.value)


def alie_z(n: int, q: int) -> float:
    """The ALIE paper's z for n workers of which q are Byzantine.

    s = floor(n/2 + 1) - q honest workers must be won over; z = Phi^-1((n - q - s) /
    (n - q)), Phi the standard normal CDF (Baruch, Baruch & Goldberg, "A little is
    enough: circumventing defenses for distributed learning", NeurIPS 2019, Algorithm 3).
    For example n = 25, q = 5 gives z = Phi^-1(0.6) = 0.2533.

    Raises:
        ValueError: unless 0 <= q < n and 0 < (n - q - s) / (n - q) < 1 (when q >=
            floor(n/2 + 1) the Byzantine workers are a majority and z would be +inf).
    """
    if (
        isinstance(n, bool)
        or isinstance(q, bool)
        or not (isinstance(n, int) and isinstance(q, int))
    ):
        raise ValueError(f"alie: n and q must be integers, got n={n!r}, q={q!r}")
    if not 0 <= q < n:
        raise ValueError(f"alie: needs 0 <= q < n, got n={n}, q={q}")
    s = math.floor(n / 2 + 1) - q
    ratio = (n - q - s) / (n - q)
    if not 0.0 < ratio < 1.0:
        raise ValueError(
            f"alie: z = Phi^-1((n - q - s) / (n - q)) with s = floor(n/2 + 1) - q is "
            f"undefined for n={n}, q={q} (ratio {ratio:.3g} not in (0, 1)); pass z explicitly"
        )
    return NormalDist().inv_cdf(ratio)


@dataclass(frozen=True)
class ALittleIsEnough:
    """ALIE: every Byzantine copy becomes mu + z * sigma of the honest gradients.

    mu and sigma are the coordinate-wise mean and standard deviation of ``honest``
    (sigma with ``ddof`` = 1 by default, as Baruch et al.'s code and ByzFL; the original
    ByzShield simulation used numpy's ddof = 0). The sign is the original ByzShield and
    DETOX code's (mu + z * sigma, ``byzshield_master.py``); Baruch et al. write the same
    attack with the sign chosen against the defence. Give ``z`` (the training config's
    default is 1.0, the original code's) or ``n`` and ``q`` for :func:`alie_z`, the
    paper's formula (``attack.z=paper`` passes n = files and q = the rule's f). Output
    dtype follows ``own``.
    """

    n: int | None = None
    q: int | None = None
    z: float | None = None
    ddof: int = 1
    name: ClassVar[str] = "alie"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    z_used: float = field(init=False)

    def __post_init__(self):
        if self.z is None:
            if self.n is None or self.q is None:
                raise ValueError("alie needs n and q (to compute z) or an explicit z")
            z = alie_z(self.n, self.q)
        else:
            z = _finite(self.z, "alie: z")
        if self.ddof not in (0, 1):
            raise ValueError(f"alie: ddof must be 0 or 1, got {self.ddof!r}")
        object.__setattr__(self, "z_used", z)

    def __call__(self, own, *, honest=None, generator=None):
        own = _check_own(self.name, own)
        honest = _check_honest(self.name, own, honest, min_rows=1 + self.ddof)
        stats = honest.to(torch.float64)
        mu = stats.mean(dim=0)
        sigma = stats.std(dim=0, correction=self.ddof)
        return (mu + self.z_used * sigma).to(own.dtype)

    def forge(self, honest: Tensor, files: list[int], **_) -> Tensor:
        """One (1, d) row for every Byzantine copy: the statistics are computed once.

        Every file has r copies, all honest at this point, so the statistics over the
        files equal those over all copies with ddof = 0 (the original simulation)."""
        return self(honest[0], honest=honest).unsqueeze(0)


@dataclass(frozen=True)
class InnerProductManipulation:
    """IPM / "Fall of Empires": sends -eps * mu, mu the mean of the honest gradients.

    Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner
    product manipulation", UAI 2019. Default eps = 100 as in the ByzShield code (the
    paper studies small eps such as 0.1 and 0.5; ByzFL's default is 2).
    """

    eps: float = 100.0
    over: str = "copies"
    name: ClassVar[str] = "ipm"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        _finite(self.eps, "ipm: eps")
        if self.over not in ("copies", "files"):
            raise ValueError(f"ipm: over must be copies or files, got {self.over!r}")

    def __call__(self, own, *, honest=None, generator=None):
        own = _check_own(self.name, own)
        honest = _check_honest(self.name, own, honest, min_rows=1)
        return (honest.to(torch.float64).mean(dim=0) * (-self.eps)).to(own.dtype)

    def forge(self, honest: Tensor, files: list[int], *, weights=None, **_) -> Tensor:
        """One (1, d) row for every Byzantine copy: the mean is computed once, over the
        honest copies (file j weighted by its number of honest holders, ``weights``) as
        the original simulation, or over the files with ``over="files"``."""
        if self.over == "files" or weights is None or float(weights.sum()) == 0:
            return self(honest[0], honest=honest).unsqueeze(0)
        w = weights.to(torch.float64)
        mu = (honest.to(torch.float64) * w[:, None]).sum(dim=0) / w.sum()
        return (mu * (-self.eps)).to(honest.dtype).unsqueeze(0)


@dataclass(frozen=True)
class SignFlip:
    """Sends -own (rev_grad with scale 1; ByzFL's SignFlipping is IPM with eps 1)."""

    name: ClassVar[str] = "sign_flip"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return -_check_own(self.name, own)


@dataclass(frozen=True)
class Gaussian:
    """Sends N(mean, std^2) noise of own's shape, drawn from the given generator."""

    mean: float = 0.0
    std: float = 200.0
    name: ClassVar[str] = "gaussian"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        _finite(self.mean, "gaussian: mean")
        if _finite(self.std, "gaussian: std") < 0:
            raise ValueError(f"gaussian: std must be >= 0, got {self.std}")

    def __call__(self, own, *, honest=None, generator=None):
        own = _check_own(self.name, own)
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "gaussian needs an explicit torch.Generator (seeded from (seed, step, file)), "
                f"got {generator!r}"
            )
        dtype = own.dtype if own.dtype.is_floating_point else torch.float32
        noise = torch.empty(own.shape, dtype=dtype, device=own.device)
        noise.normal_(self.mean, self.std, generator=generator)
        return noise.to(own.dtype)


@dataclass(frozen=True)
class LabelFlip:
    """Data-side attack: the worker trains on labels y -> C - 1 - y
    (:func:`byzshield.compute.gradients.flip_labels`).

    The gradient transform is the identity: with ``flips_labels = True`` the worker
    computes ``own`` on flipped labels, and this call returns it unchanged.
    """

    name: ClassVar[str] = "label_flip"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = True

    def __call__(self, own, *, honest=None, generator=None):
        return _check_own(self.name, own)


@dataclass(frozen=True)
class Inf:
    """Sends +inf in every coordinate (ByzFL's Inf). The vote may let it win a file, the
    rule then drops the non-finite winner: it tests the NaN/Inf handling end to end."""

    name: ClassVar[str] = "infinity"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return torch.full_like(_check_own(self.name, own), math.inf)


@dataclass(frozen=True)
class Mimic:
    """Every Byzantine copy is the honest gradient of one other file (Karimireddy, He &
    Jaggi, "Byzantine-robust learning on heterogeneous datasets via bucketing", ICLR
    2022; ByzFL's Mimic): it over-weights one honest direction instead of sending noise.

    ``target``: the file to mimic; None picks the lowest-numbered file without a
    Byzantine holder (file 0 when every file has one). Omniscient: simulated on the
    server.
    """

    target: int | None = None
    name: ClassVar[str] = "mimic"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        if self.target is not None and (
            isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0
        ):
            raise ValueError(
                f"mimic: target must be a file index >= 0 or None, got {self.target!r}"
            )

    def pick(self, num_files: int, attacked: list[int]) -> int:
        if self.target is not None:
            if self.target >= num_files:
                raise ValueError(f"mimic: target {self.target} is not a file (0..{num_files - 1})")
            return self.target
        hit = set(attacked)
        return next((j for j in range(num_files) if j not in hit), 0)

    def __call__(self, own, *, honest=None, generator=None):
        own = _check_own(self.name, own)
        honest = _check_honest(self.name, own, honest, min_rows=1)
        return honest[self.pick(honest.shape[0], [])].clone()

    def forge(self, honest: Tensor, files: list[int], **_) -> Tensor:
        return honest[self.pick(honest.shape[0], files)].unsqueeze(0).clone()


def line_search(
    objective: Callable[[float], float],
    *,
    evals: int,
    start: float,
    delta: float,
    ratio: float,
) -> tuple[float, float]:
    """Maximise a scalar ``objective`` with ``evals`` evaluations: expand from ``start``
    by steps ``delta``, doubling while it improves, then contract by ``ratio``.

    The search of ByzFL's Optimal_ALittleIsEnough / Optimal_InnerProductManipulation
    (defaults there: 20 evaluations, start 0, delta 10, ratio 0.8); returns (best x,
    best value).
    """
    best_x, best_y = start, objective(start)
    left = evals - 1
    while left > 0:  # expansion
        x = best_x + delta
        y = objective(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:  # contraction
        x = best_x + delta
        y = objective(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x, best_y


def _check_search(name: str, evals, start, delta, ratio) -> None:
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"{name}: evals must be an integer >= 1, got {evals!r}")
    _finite(start, f"{name}: start")
    if _finite(delta, f"{name}: delta") == 0:
        raise ValueError(f"{name}: delta must be non-zero")
    if not 0.5 < _finite(ratio, f"{name}: ratio") < 1:
        raise ValueError(f"{name}: ratio must be in (0.5, 1), got {ratio}")


@dataclass(frozen=True)
class OptimalALIE:
    """ALIE with the z that does the most damage this step: z maximises the distance
    between the rule's output and the honest mean, measured through the vote (only the
    files the Byzantine copies win carry the candidate), with ByzFL's line search
    (:func:`line_search`; Optimal_ALittleIsEnough). ``last_factor`` is the z of the most
    recent step."""

    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8
    ddof: int = 1
    name: ClassVar[str] = "optimal_alie"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    needs_objective: ClassVar[bool] = True

    def __post_init__(self):
        _check_search(self.name, self.evals, self.start, self.delta, self.ratio)
        if self.ddof not in (0, 1):
            raise ValueError(f"{self.name}: ddof must be 0 or 1, got {self.ddof!r}")
        object.__setattr__(self, "last_factor", None)

    def __call__(self, own, *, honest=None, generator=None):
        raise ValueError(f"{self.name} needs the vote and the rule: run it through a trainer")

    def forge(self, honest: Tensor, files: list[int], *, objective=None, **_) -> Tensor:
        if objective is None:
            raise ValueError(f"{self.name} needs an objective (the damage through the vote)")
        stats = honest.to(torch.float64)
        mu, sigma = stats.mean(dim=0), stats.std(dim=0, correction=self.ddof)

        def vector(z: float) -> Tensor:
            return (mu + z * sigma).to(honest.dtype)

        z, _ = line_search(
            lambda z: objective(vector(z)),
            evals=self.evals,
            start=self.start,
            delta=self.delta,
            ratio=self.ratio,
        )
        object.__setattr__(self, "last_factor", z)
        return vector(z).unsqueeze(0)


@dataclass(frozen=True)
class OptimalIPM:
    """IPM with the eps that does the most damage this step, found as for
    :class:`OptimalALIE` (ByzFL's Optimal_InnerProductManipulation); the mean is over
    the honest copies, as :class:`InnerProductManipulation`."""

    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8
    name: ClassVar[str] = "optimal_ipm"
    needs_honest: ClassVar[bool] = True
    flips_labels: ClassVar[bool] = False
    needs_objective: ClassVar[bool] = True

    def __post_init__(self):
        _check_search(self.name, self.evals, self.start, self.delta, self.ratio)
        object.__setattr__(self, "last_factor", None)

    def __call__(self, own, *, honest=None, generator=None):
        raise ValueError(f"{self.name} needs the vote and the rule: run it through a trainer")

    def forge(self, honest: Tensor, files: list[int], *, weights=None, objective=None, **_):
        if objective is None:
            raise ValueError(f"{self.name} needs an objective (the damage through the vote)")
        mean = InnerProductManipulation(eps=-1.0).forge(honest, files, weights=weights)[0]
        mu = mean.to(torch.float64)

        def vector(eps: float) -> Tensor:
            return (mu * (-eps)).to(honest.dtype)

        eps, _ = line_search(
            lambda e: objective(vector(e)),
            evals=self.evals,
            start=self.start,
            delta=self.delta,
            ratio=self.ratio,
        )
        object.__setattr__(self, "last_factor", eps)
        return vector(eps).unsqueeze(0)


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
