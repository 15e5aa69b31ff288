"""The ``approach/`` group, the placement: :class:`ApproachOption` and one dataclass per
design (baseline, DETOX and its variants, MOLS, the Ramanujan cases, a custom JSON).

:data:`APPROACHES` is the one registry of designs (name -> option class, whose fields are
the design's parameters); :func:`build_placement` builds one by name for the front ends
that read designs outside the training config (``python -m byzshield.placement
designs=[...]``, the report's eps curves)::

    >>> build_placement("mols", l=5, r=3).num_workers
    15
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from omegaconf import MISSING

from byzshield.config.base import ConfigError, _Option
from byzshield.design import placements as placement
from byzshield.design.placements import Placement


@dataclass
class ApproachOption(_Option):
    """A placement design (docs/design.md, section 2). ``build()`` returns the Placement."""

    name: str = MISSING
    group: ClassVar[str] = "approach"
    forced_mode: ClassVar[str | None] = None  # the aggregation rule the approach implies
    # what adversary.selection=auto means for this approach (the original code's default)
    default_selection: ClassVar[str] = "worst_case"

    def __post_init__(self) -> None:
        self._check_name()
        try:
            self._placement = self._build()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def build(self) -> Placement:
        return self._placement

    @classmethod
    def param_keys(cls) -> tuple[str, ...]:
        """The design's parameters: the option's fields but ``name`` (``("l", "r")``)."""
        return tuple(f.name for f in fields(cls) if f.name != "name")

    def _build(self) -> Placement:  # pragma: no cover - every option overrides it
        raise NotImplementedError


@dataclass
class BaselineApproach(ApproachOption):
    """Plain data parallelism: K workers, one file each, no vote."""

    name: str = "baseline"
    K: int = 15
    option: ClassVar[str] = "baseline"

    def _build(self) -> Placement:
        return placement.baseline(self.K)


@dataclass
class DracoLiteApproach(ApproachOption):
    """DETOX: groups of r consecutive workers compute the same file (f = K / r)."""

    name: str = "draco_lite"
    K: int = 15
    r: int = 3
    option: ClassVar[str] = "draco_lite"
    default_selection: ClassVar[str] = "random"  # a new random set every step

    def _build(self) -> Placement:
        return placement.detox(self.K, self.r, approach=self.option)


@dataclass
class DracoLiteAttackApproach(DracoLiteApproach):
    """DETOX under the original's attack strategies (the ``draco_lite_attack`` runs)."""

    name: str = "draco_lite_attack"
    option: ClassVar[str] = "draco_lite_attack"
    default_selection: ClassVar[str] = "detox_worst"  # --detox-attack worst


@dataclass
class DetoxApproach(DracoLiteApproach):
    """DETOX's groups under the DETOX paper's name, for placement tables (``python -m
    byzshield.placement designs=[{approach: detox, K: 15, r: 3}]``); training runs the
    same design as draco_lite, so conf/approach/ has no detox.yaml."""

    name: str = "detox"
    option: ClassVar[str] = "detox"


@dataclass
class MajVoteApproach(DracoLiteApproach):
    """DRACO-style repetition: DETOX groups, vote, then a plain mean (mode is ignored)."""

    name: str = "maj_vote"
    option: ClassVar[str] = "maj_vote"
    forced_mode: ClassVar[str | None] = "mean"


@dataclass
class MolsApproach(ApproachOption):
    """ByzShield MOLS: r orthogonal Latin squares of order l (prime power); K = r*l."""

    name: str = "mols"
    l: int = 5  # noqa: E741 - the paper's name
    r: int = 3
    option: ClassVar[str] = "mols"

    def _build(self) -> Placement:
        return placement.mols(self.l, self.r)


@dataclass
class RamaOneApproach(ApproachOption):
    """ByzShield Ramanujan bigraph, case 1: m = r < s, s prime; K = m*s, f = s^2."""

    name: str = "rama_one"
    m: int = 3
    s: int = 5
    option: ClassVar[str] = "rama_one"

    def _build(self) -> Placement:
        return placement.rama_one(self.m, self.s)


@dataclass
class RamaTwoApproach(ApproachOption):
    """ByzShield Ramanujan bigraph, case 2: m >= s, s | m, s prime; K = s^2, f = m*s."""

    name: str = "rama_two"
    m: int = 5
    s: int = 5
    option: ClassVar[str] = "rama_two"

    def _build(self) -> Placement:
        return placement.rama_two(self.m, self.s)


@dataclass
class CustomApproach(ApproachOption):
    """A placement read from JSON: ``[[files of worker 0], [files of worker 1], ...]``."""

    name: str = "custom"
    path: str = MISSING
    option: ClassVar[str] = "custom"

    def _build(self) -> Placement:
        return placement.from_file(self.path)


APPROACHES: dict[str, type[ApproachOption]] = {
    cls.option: cls
    for cls in (
        BaselineApproach,
        DracoLiteApproach,
        DracoLiteAttackApproach,
        DetoxApproach,
        MajVoteApproach,
        MolsApproach,
        RamaOneApproach,
        RamaTwoApproach,
        CustomApproach,
    )
}
"""Every placement design: approach name -> option class (in ``--help``'s order). The
training config registers each class's schema; conf/approach/ has one YAML per trainable
design."""


def build_placement(name: str, **params: object) -> Placement:
    """The placement of approach ``name`` from all of its parameters (``param_keys()``).

    Raises:
        ValueError: unknown approach, an unknown or missing (None) parameter, or the
            design's own check of its values.
    """
    if name not in APPROACHES:
        raise ValueError(f"unknown approach {name!r}; choose one of {', '.join(APPROACHES)}")
    option = APPROACHES[name]
    keys = option.param_keys()
    unknown = sorted(set(params) - set(keys))
    missing = [k for k in keys if params.get(k) is None]
    if unknown:
        raise ValueError(f"approach {name} takes {', '.join(keys)}; unknown key(s) {unknown}")
    if missing:
        raise ValueError(f"approach {name} needs {', '.join(keys)}; missing {missing}")
    return option(**params).build()
