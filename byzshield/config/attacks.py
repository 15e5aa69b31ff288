"""The ``attack/`` group, what the Byzantine workers send (who they are is the
``adversary`` node, :mod:`byzshield.config.adversary`): :class:`AttackOption` and one
option dataclass per attack of :mod:`byzshield.attacks` (:class:`RevGradAttack`,
:class:`IpmAttack`, ..., all in :data:`ATTACK_OPTIONS`), generated from the attack's own
dataclass (ALIE's default z: :data:`ALIE_DEFAULT_Z`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from byzshield import attacks
from byzshield.config.base import ConfigError, _float32, _generated_option, _Option


@dataclass
class AttackOption(_Option):
    """An attack (docs/design.md, sections 4 and 6): what the Byzantine workers send. How many
    there are and who is the ``adversary`` node (:mod:`byzshield.config.adversary`)."""

    name: str = MISSING
    group: ClassVar[str] = "attack"
    honest: ClassVar[bool] = False  # no Byzantine workers whatever adversary.q says
    attack_keys: ClassVar[tuple[str, ...]] = ()  # the attack dataclass's init fields

    def __post_init__(self) -> None:
        self._check_name()
        for key, value in self.__dict__.items():  # what a worker sends is float32
            if isinstance(value, float):
                _float32("attack.", key, value)
        try:
            self._validate()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"attack {self.name}: {exc}") from None

    def params(self) -> dict:
        return {k: getattr(self, k) for k in self.attack_keys}

    def _validate(self) -> None:
        self.build(num_files=1, rule_f=0)

    def build(self, *, num_files: int, rule_f: int):
        """The attack object; ``num_files`` and ``rule_f`` describe what the
        defence compares (ALIE's default z depends on them)."""
        return attacks.make_attack(self.option, **self.params())

    def worker_attack(self):
        """What a worker process applies itself: the attack, or None for an omniscient
        attack, which the parameter server simulates (workers then send honest
        gradients; see :mod:`byzshield.server.forgery`)."""
        attack = self.build(num_files=1, rule_f=0)
        return None if attack.needs_honest else attack

    def info(self, attack) -> dict:
        return {"name": self.name, **self.params()}

    def check_dataset(self, dataset: str, num_classes: int) -> None:
        """Refuse an attack that does not fit the dataset: a backdoor whose target is not
        one of its classes."""
        poison = attacks.data_poison(self.worker_attack())
        if poison is not None and not 0 <= poison.target < num_classes:
            raise ConfigError(
                f"attack.target={poison.target} is not a class of dataset {dataset} "
                f"(0..{num_classes - 1})"
            )


@dataclass
class NoAttackOption(AttackOption):
    """Every worker is honest (whatever adversary.q says)."""

    name: str = "none"
    option: ClassVar[str] = "none"
    honest: ClassVar[bool] = True


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

    def build(self, *, num_files: int, rule_f: int):
        if self.z == "paper":
            attack = attacks.make_attack("alie", n=num_files, q=rule_f, ddof=self.ddof)
            self._check_z(attack.z_used, f"the paper's z for n={num_files} files, q={rule_f}")
            return attack
        return attacks.make_attack("alie", z=float(self.z), ddof=self.ddof)

    def worker_attack(self):
        return None

    def info(self, attack) -> dict:
        return {"name": self.name, "z": self.z, "z_used": attack.z_used, "ddof": self.ddof}


def _attack_option(name: str) -> type[AttackOption]:
    """The ``attack/<name>`` option of the attack ``attacks.ATTACKS[name]``: its name plus
    the attack's own parameters, which are the init fields of its frozen dataclass, with
    its defaults: the attack's one declaration of them. The class is named from the
    option (``rev_grad`` -> ``RevGradAttack``)."""
    attack = attacks.ATTACKS[name]
    keys = [fl for fl in dataclasses.fields(attack) if fl.init]
    return _generated_option(
        attack, attack, keys, AttackOption, suffix="Attack", keys_attr="attack_keys"
    )


RevGradAttack = _attack_option("rev_grad")
ConstantAttack = _attack_option("constant")
IpmAttack = _attack_option("ipm")
SignFlipAttack = _attack_option("sign_flip")
GaussianAttack = _attack_option("gaussian")
LabelFlipAttack = _attack_option("label_flip")
InfinityAttack = _attack_option("infinity")
MimicAttack = _attack_option("mimic")
OptimalAlieAttack = _attack_option("optimal_alie")
OptimalIpmAttack = _attack_option("optimal_ipm")
MinMaxAttack = _attack_option("min_max")
MinSumAttack = _attack_option("min_sum")
FangAttack = _attack_option("fang")
BackdoorAttack = _attack_option("backdoor")

ATTACK_OPTIONS: dict[str, type[AttackOption]] = {
    cls.option: cls
    for cls in (
        NoAttackOption,
        RevGradAttack,
        ConstantAttack,
        AlieAttack,
        IpmAttack,
        SignFlipAttack,
        GaussianAttack,
        LabelFlipAttack,
        InfinityAttack,
        MimicAttack,
        OptimalAlieAttack,
        OptimalIpmAttack,
        MinMaxAttack,
        MinSumAttack,
        FangAttack,
        BackdoorAttack,
    )
}
"""Config name -> ``attack/`` option class, one per attack of :mod:`byzshield.attacks` (a
test checks that none is missing). Generated from the attacks' dataclasses, except none
(q = 0) and alie (z may be ``paper``), written here."""
