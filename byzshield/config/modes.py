"""The ``mode/`` group, the aggregation rule: :class:`ModeOption` (pre-aggregations,
DETOX's hierarchical form) and one dataclass per rule of
:func:`byzshield.aggregators.build_aggregator`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from byzshield.config.base import ConfigError, _Option


@dataclass
class ModeOption(_Option):
    """A robust aggregation rule on the f vote winners (BYZSHIELD.md section 5), built
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

    def __post_init__(self) -> None:
        self._check_name()
        try:
            self.build()
        except ValueError as exc:
            raise ConfigError(f"mode {self.name}: {exc}") from None

    def params(self) -> dict:
        """The rule's own parameters (None means the rule's default)."""
        skip = {"name", "pre", "hierarchical_buckets", "num_buckets"}
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in skip and not k.startswith("_") and v is not None
        }

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


@dataclass
class CoordMedianMode(_BucketedMode):
    """Coordinate-wise median; ``num_buckets`` averages shuffled buckets first (median
    of means, the original's --bucket-size)."""

    name: str = "coord-median"
    option: ClassVar[str] = "coord-median"


@dataclass
class SignMajorityMode(_BucketedMode):
    """signSGD with majority vote (Bernstein et al. 2019); with ``num_buckets`` each
    bucket votes with the sum of its signs."""

    name: str = "sign-majority"
    option: ClassVar[str] = "sign-majority"


@dataclass
class MultiKrumMode(ModeOption):
    """Multi-Krum (Blanchard et al. 2017): mean of the m lowest Krum scores. m: null is
    n - f; an integer, or "n-f-2" (what the original DETOX code averaged)."""

    name: str = "multi-krum"
    m: Any = None
    option: ClassVar[str] = "multi-krum"


@dataclass
class KrumMode(ModeOption):
    """Krum (Blanchard et al. 2017): the input with the lowest Krum score."""

    name: str = "krum"
    option: ClassVar[str] = "krum"


@dataclass
class BulyanMode(ModeOption):
    """Bulyan (El Mhamdi et al. 2018); needs n >= 4f + 3."""

    name: str = "bulyan"
    option: ClassVar[str] = "bulyan"


@dataclass
class MeanMode(ModeOption):
    """Plain mean (no robustness)."""

    name: str = "mean"
    option: ClassVar[str] = "mean"


@dataclass
class TrimmedMeanMode(ModeOption):
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values."""

    name: str = "trimmed-mean"
    option: ClassVar[str] = "trimmed-mean"


@dataclass
class MeamedMode(ModeOption):
    """Mean around the median (Xie et al. 2018): per coordinate, the mean of the n - f
    values closest to the median."""

    name: str = "meamed"
    option: ClassVar[str] = "meamed"


@dataclass
class GeometricMedianMode(ModeOption):
    """Geometric median by smoothed Weiszfeld iterations (Pillutla et al. 2022)."""

    name: str = "geometric-median"
    num_iterations: int = 10
    nu: float = 1e-6
    option: ClassVar[str] = "geometric-median"


@dataclass
class CenteredClippingMode(ModeOption):
    """Centered clipping (Karimireddy et al. 2021) around the previous aggregate."""

    name: str = "centered-clipping"
    tau: float = 100.0
    num_iterations: int = 1
    option: ClassVar[str] = "centered-clipping"


@dataclass
class MdaMode(ModeOption):
    """Minimum-diameter averaging (El Mhamdi et al. 2020): the mean of the n - f inputs
    of smallest diameter."""

    name: str = "mda"
    option: ClassVar[str] = "mda"


@dataclass
class MonnaMode(ModeOption):
    """MoNNA (Farhadkhani et al. 2023): the mean of the n - f nearest neighbours of a
    trusted input (``idx``)."""

    name: str = "monna"
    idx: int = 0
    option: ClassVar[str] = "monna"


@dataclass
class CafMode(ModeOption):
    """Covariance-aware filtering (Allouah et al. 2025)."""

    name: str = "caf"
    option: ClassVar[str] = "caf"


@dataclass
class SmeaMode(ModeOption):
    """Smallest maximum-eigenvalue averaging (Allouah et al. 2023); enumerates subsets."""

    name: str = "smea"
    option: ClassVar[str] = "smea"
