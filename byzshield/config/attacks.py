"""The ``attack/`` group, what Byzantine workers send, how many there are and who:
:class:`AttackOption` (q, the selection, the digest lie; :data:`DIGEST_LIES`) and one
dataclass per attack of :mod:`byzshield.attacks` (ALIE's default z: :data:`ALIE_DEFAULT_Z`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from byzshield import attacks
from byzshield.adversary import SELECTIONS
from byzshield.config.base import ConfigError, _int, _Option

DIGEST_LIES = ("none", "honest_digest", "honest_tensor")
F32_MAX = 3.4028234663852886e38


@dataclass
class AttackOption(_Option):
    """An attack (BYZSHIELD.md section 6) with ``q`` Byzantine workers chosen by
    ``selection``: auto (the approach's default, as in the original code), worst_case,
    random (a new set every step), random_fixed, detox_worst / detox_benign /
    detox_whole_group (the original's DETOX strategies, DETOX placements only), or a
    list of 0-based worker ids."""

    name: str = MISSING
    q: int = 3
    selection: Any = "auto"
    search_work: int = 200_000
    # vote=digest liars: none (a Byzantine copy's digest is that of the copy it sends),
    # honest_digest (the honest copy's digest, its own copy sent when pulled) or
    # honest_tensor (its own copy's digest, the honest copy sent when pulled)
    digest_lie: str = "none"
    group: ClassVar[str] = "attack"
    honest: ClassVar[bool] = False  # no Byzantine workers whatever q says

    def __post_init__(self) -> None:
        self._check_name()
        _int("attack.", "q", self.q, 0)
        _int("attack.", "search_work", self.search_work, 1)
        for key, value in self.__dict__.items():  # what a worker sends is float32
            if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= F32_MAX):
                raise ConfigError(
                    f"attack.{key} must be a finite float32 (|x| <= {F32_MAX:.4g}), got {value}"
                )
        if self.digest_lie not in DIGEST_LIES:
            raise ConfigError(
                f"attack.digest_lie must be one of {', '.join(DIGEST_LIES)}, "
                f"got {self.digest_lie!r}"
            )
        sel = self.selection
        if isinstance(sel, str):
            if sel not in (*SELECTIONS, "auto"):
                raise ConfigError(
                    f"attack.selection must be one of auto, {', '.join(SELECTIONS)} or a list "
                    f"of worker ids, got {sel!r}"
                )
        elif not (
            isinstance(sel, Sequence)
            and all(isinstance(w, int) and not isinstance(w, bool) for w in sel)
        ):
            raise ConfigError(
                f"attack.selection must be one of auto, {', '.join(SELECTIONS)} or a list "
                f"of worker ids, got {sel!r}"
            )
        try:
            self._validate()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"attack {self.name}: {exc}") from None

    @property
    def effective_q(self) -> int:
        return 0 if self.honest else self.q

    def params(self) -> dict:
        return {}

    def _validate(self) -> None:
        self.build(num_files=1, aggregator_f=0)

    def build(self, *, num_files: int, aggregator_f: int):
        """The attack object; ``num_files`` and ``aggregator_f`` describe what the
        defence compares (ALIE's default z depends on them)."""
        return attacks.make_attack(self.option, **self.params())

    def worker_attack(self):
        """What a worker process applies itself: the attack, or None for an omniscient
        attack, which the parameter server simulates (workers then send honest
        gradients; see :mod:`byzshield.omniscient`)."""
        attack = self.build(num_files=1, aggregator_f=0)
        return None if attack.needs_honest else attack

    def info(self, attack) -> dict:
        return {"name": self.name, **self.params()}


@dataclass
class NoAttackOption(AttackOption):
    """Every worker is honest."""

    name: str = "none"
    q: int = 0
    option: ClassVar[str] = "none"
    honest: ClassVar[bool] = True


@dataclass
class RevGradAttack(AttackOption):
    """Byzantine workers send -scale * g."""

    name: str = "rev_grad"
    scale: float = attacks.ReverseGradient.scale
    option: ClassVar[str] = "rev_grad"

    def params(self) -> dict:
        return {"scale": self.scale}


@dataclass
class ConstantAttack(AttackOption):
    """Byzantine workers send ``value`` in every coordinate."""

    name: str = "constant"
    value: float = attacks.Constant.value
    option: ClassVar[str] = "constant"

    def params(self) -> dict:
        return {"value": self.value}


ALIE_DEFAULT_Z = 1.0
"""The original ByzShield code's z: a real attack whatever the design (the paper's formula
gives z = 0, no attack at all, whenever c_max <= 1)."""


@dataclass
class AlieAttack(AttackOption):
    """A Little Is Enough (Baruch et al. 2019): mu + z * sigma of the honest gradients,
    simulated on the parameter server.

    z: a number (default 1.0, the original ByzShield code's), or ``paper`` for Baruch et
    al.'s formula with n = files reaching the aggregator and q = the aggregator's f. A
    z <= 0 (the formula gives 0 whenever c_max <= 1) sends the honest mean or less: it
    is refused unless ``allow_nonpositive_z``. ddof: 0 (the original) or 1 (Baruch et
    al.'s code, ByzFL) for sigma.
    """

    name: str = "alie"
    z: Any = ALIE_DEFAULT_Z
    ddof: int = attacks.ALittleIsEnough.ddof
    allow_nonpositive_z: bool = False
    option: ClassVar[str] = "alie"

    def _validate(self) -> None:
        if self.z != "paper":
            attacks.make_attack("alie", z=self.z, ddof=self.ddof)
            self._check_z(float(self.z), "attack.z")
        else:
            attacks.make_attack("alie", z=1.0, ddof=self.ddof)  # checks ddof

    def _check_z(self, z: float, where: str) -> None:
        if z <= 0 and not self.allow_nonpositive_z:
            raise ValueError(
                f"{where} = {z:.4g} <= 0 is no attack (the Byzantine copies would sit at or "
                f"below the honest mean); use a z > 0 (default {ALIE_DEFAULT_Z}) or set "
                "attack.allow_nonpositive_z=true"
            )

    def build(self, *, num_files: int, aggregator_f: int):
        if self.z == "paper":
            attack = attacks.make_attack("alie", n=num_files, q=aggregator_f, ddof=self.ddof)
            self._check_z(attack.z_used, f"the paper's z for n={num_files} files, q={aggregator_f}")
            return attack
        return attacks.make_attack("alie", z=float(self.z), ddof=self.ddof)

    def worker_attack(self):
        return None

    def info(self, attack) -> dict:
        return {"name": self.name, "z": self.z, "z_used": attack.z_used, "ddof": self.ddof}


@dataclass
class IpmAttack(AttackOption):
    """Inner product manipulation (Xie et al. 2019): -eps * mean of the honest gradients;
    over: ``copies`` (each file weighted by its honest copies, as the original) or
    ``files``."""

    name: str = "ipm"
    eps: float = attacks.InnerProductManipulation.eps
    over: str = attacks.InnerProductManipulation.over
    option: ClassVar[str] = "ipm"

    def params(self) -> dict:
        return {"eps": self.eps, "over": self.over}


@dataclass
class InfAttack(AttackOption):
    """Byzantine workers send +inf in every coordinate."""

    name: str = "infinity"
    option: ClassVar[str] = "infinity"


@dataclass
class MimicAttack(AttackOption):
    """Every Byzantine copy is the honest gradient of one file (``target``; null: the
    first file without a Byzantine holder), simulated on the parameter server."""

    name: str = "mimic"
    target: int | None = attacks.Mimic.target
    option: ClassVar[str] = "mimic"

    def params(self) -> dict:
        return {"target": self.target}


@dataclass
class OptimalAlieAttack(AttackOption):
    """ALIE with the z that does the most damage each step through the vote and the
    configured rule (ByzFL's line search: evals, start, delta, ratio)."""

    name: str = "optimal_alie"
    evals: int = attacks.OptimalALIE.evals
    start: float = attacks.OptimalALIE.start
    delta: float = attacks.OptimalALIE.delta
    ratio: float = attacks.OptimalALIE.ratio
    ddof: int = attacks.OptimalALIE.ddof
    option: ClassVar[str] = "optimal_alie"

    def params(self) -> dict:
        keys = ("evals", "start", "delta", "ratio", "ddof")
        return {k: getattr(self, k) for k in keys}


@dataclass
class OptimalIpmAttack(AttackOption):
    """IPM with the eps that does the most damage each step through the vote and the
    configured rule (ByzFL's line search: evals, start, delta, ratio)."""

    name: str = "optimal_ipm"
    evals: int = attacks.OptimalIPM.evals
    start: float = attacks.OptimalIPM.start
    delta: float = attacks.OptimalIPM.delta
    ratio: float = attacks.OptimalIPM.ratio
    option: ClassVar[str] = "optimal_ipm"

    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("evals", "start", "delta", "ratio")}


@dataclass
class SignFlipAttack(AttackOption):
    """Byzantine workers send -g."""

    name: str = "sign_flip"
    option: ClassVar[str] = "sign_flip"


@dataclass
class GaussianAttack(AttackOption):
    """Byzantine workers send N(mean, std^2) noise seeded by (seed, step, file)."""

    name: str = "gaussian"
    mean: float = attacks.Gaussian.mean
    std: float = attacks.Gaussian.std
    option: ClassVar[str] = "gaussian"

    def params(self) -> dict:
        return {"mean": self.mean, "std": self.std}


@dataclass
class LabelFlipAttack(AttackOption):
    """Byzantine workers compute their gradients on labels C - 1 - y."""

    name: str = "label_flip"
    option: ClassVar[str] = "label_flip"
