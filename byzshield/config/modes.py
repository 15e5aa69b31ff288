"""The ``mode/`` group, the aggregation rule: :class:`ModeOption` (pre-aggregations,
DETOX's hierarchical form) and one option dataclass per rule of
:data:`byzshield.aggregators.RULES` (:class:`CoordMedianMode`, :class:`MultiKrumMode`, ...,
all in :data:`MODES`), generated from the rule's nested ``Config``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from byzshield.aggregators import RULES
from byzshield.config.base import ConfigError, _generated_option, _Option


@dataclass
class ModeOption(_Option):
    """A robust aggregation rule on the f vote winners (docs/design.md, section 5), built
    with :func:`byzshield.aggregators.build_aggregator`.

    ``pre``: pre-aggregations applied first, in order, each a name (``nnm``, ``arc``) or
    a mapping such as ``{name: bucketing, bucket_size: 2}``. ``hierarchical_buckets``:
    DETOX's hierarchical form (the rule inside each of that many shuffled buckets, then
    the mean of the bucket results).
    """

    name: str = MISSING
    pre: list[Any] = field(default_factory=list)
    hierarchical_buckets: int | None = None
    group: ClassVar[str] = "mode"
    rule_keys: ClassVar[tuple[str, ...]] = ()  # the fields of the rule's own Config

    def __post_init__(self) -> None:
        self._check_name()
        try:
            self.build()
        except ValueError as exc:
            text = str(exc)  # the rules' messages start with their name already
            raise ConfigError(
                text if text.startswith(self.name) else f"mode {self.name}: {text}"
            ) from None

    def params(self) -> dict:
        """The rule's own parameters (None means the rule's default)."""
        return {k: getattr(self, k) for k in self.rule_keys if getattr(self, k) is not None}

    def pre_aggregations(self) -> list:
        return [dict(p) if isinstance(p, Mapping) else p for p in self.pre]

    def build(self):
        """The rule object, built once per run (it keeps its own state across steps)."""
        from byzshield.aggregators import build_aggregator

        hierarchical = None
        if self.hierarchical_buckets is not None:
            hierarchical = {"num_buckets": self.hierarchical_buckets}
        return build_aggregator(
            self.option, pre=self.pre_aggregations(), hierarchical=hierarchical, **self.params()
        )


@dataclass
class _BucketedMode(ModeOption):
    """A rule with the original's ``num_buckets`` shorthand: the median (or sign vote)
    of the means of that many shuffled buckets (``pre=[{name: bucketing, num_buckets}]``)."""

    num_buckets: int | None = None

    def pre_aggregations(self) -> list:
        pre = super().pre_aggregations()
        if self.num_buckets is not None:
            pre = [{"name": "bucketing", "num_buckets": self.num_buckets}, *pre]
        return pre


def _mode_option(name: str) -> type[ModeOption]:
    """The ``mode/<name>`` option of the rule ``RULES[name]``: ``name``, ``pre``,
    ``hierarchical_buckets`` (and ``num_buckets`` for the median and the sign vote) plus
    the config keys of the rule's own ``Config``, with its defaults; the rule's one
    declaration of them. The class is named from the option (``multi-krum`` ->
    ``MultiKrumMode``)."""
    rule = RULES[name]
    keys = [fl for fl in dataclasses.fields(rule.Config) if fl.metadata.get("config_key", True)]
    base = _BucketedMode if name in _BUCKETED else ModeOption
    return _generated_option(rule, rule.Config, keys, base, suffix="Mode", keys_attr="rule_keys")


_BUCKETED = ("coord-median", "sign-majority")

CoordMedianMode = _mode_option("coord-median")
MultiKrumMode = _mode_option("multi-krum")
BulyanMode = _mode_option("bulyan")
MeanMode = _mode_option("mean")
TrimmedMeanMode = _mode_option("trimmed-mean")
GeometricMedianMode = _mode_option("geometric-median")
CenteredClippingMode = _mode_option("centered-clipping")
SignMajorityMode = _mode_option("sign-majority")
KrumMode = _mode_option("krum")
MdaMode = _mode_option("mda")
MonnaMode = _mode_option("monna")
MeamedMode = _mode_option("meamed")
CafMode = _mode_option("caf")
SmeaMode = _mode_option("smea")

MODES: dict[str, type[ModeOption]] = {
    cls.option: cls
    for cls in (
        CoordMedianMode,
        MultiKrumMode,
        BulyanMode,
        MeanMode,
        TrimmedMeanMode,
        GeometricMedianMode,
        CenteredClippingMode,
        SignMajorityMode,
        KrumMode,
        MdaMode,
        MonnaMode,
        MeamedMode,
        CafMode,
        SmeaMode,
    )
}
"""Config name -> ``mode/`` option class, one per rule of
:data:`byzshield.aggregators.RULES` (a test checks that none is missing)."""
