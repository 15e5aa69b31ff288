"""The training configuration as typed options that build the run's objects.

Hydra composes ``conf/config.yaml`` over :class:`TrainConfig`. Every group option
(``conf/approach/mols.yaml``, ``conf/mode/bulyan.yaml``, ...) extends a dataclass schema
registered in Hydra's ConfigStore (:func:`register_schema`), so:

- each default is written once, in the option's dataclass below (the YAML files only
  pick the schema and describe the option; ``--cfg job`` prints the composed values);
- an unknown key or a value of the wrong type fails when Hydra composes, and a bad
  value when :func:`load_config` turns the composition into dataclasses (each
  ``__post_init__`` raises :class:`ConfigError`, one line naming key, value and what is
  allowed);
- per-option behaviour is data on the option (``ApproachOption.forced_mode``,
  ``AttackOption.honest``), not a check of its name.

:func:`build_run` then builds the objects one run needs, once: the placement, the
attack, the datasets and the network, and on the parameter server also the Byzantine
selection (whose worst-case search runs once, bounded by work) and the aggregation
rule. Cross-option checks (batch size vs files, the rule's n-vs-f requirement, BatchNorm
vs file size, process count vs K) happen there, before any process group starts.

    >>> from byzshield.config import build_run
    >>> from byzshield.overrides import compose_config
    >>> run = build_run(compose_config(["approach=mols", "attack.q=2"]))
    >>> run.placement.num_workers, run.aggregator_f
    (15, 1)
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from byzshield import attacks, placement
from byzshield.adversary import SELECTIONS, Selection, build_selection
from byzshield.placement import Placement

__all__ = [
    "KEY_HELP",
    "ApproachOption",
    "AttackOption",
    "ConfigError",
    "DatasetOption",
    "ModeOption",
    "NetworkOption",
    "Run",
    "TrainConfig",
    "add_server_parts",
    "build_run",
    "load_config",
    "register_schema",
]


class ConfigError(ValueError):
    """A configuration value that cannot run; the message is one line."""


def _int(owner: str, key: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{owner}{key} must be an integer {allowed}, got {value!r}")
    return value


def _positive(owner: str, key: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{owner}{key} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return float(value)


class _Option:
    """Shared by every group option: ``name`` must be the option's own name."""

    group: ClassVar[str] = ""
    option: ClassVar[str] = ""

    def _check_name(self) -> None:
        if self.name != self.option:  # type: ignore[attr-defined]
            raise ConfigError(
                f"{self.group}.name is {self.name!r} but the chosen option is "  # type: ignore[attr-defined]
                f"{self.option!r}; pick another option with {self.group}=NAME"
            )


# --------------------------------------------------------------------------------------
# approach/: the placement


@dataclass
class ApproachOption(_Option):
    """A placement design (BYZSHIELD.md section 2). ``build()`` returns the Placement."""

    name: str = MISSING
    group: ClassVar[str] = "approach"
    forced_mode: ClassVar[str | None] = None  # the aggregation rule the approach implies
    # what attack.selection=auto means for this approach (the original code's default)
    default_selection: ClassVar[str] = "worst_case"

    def __post_init__(self) -> None:
        self._check_name()
        try:
            self._placement = self._build()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def build(self) -> Placement:
        return self._placement

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


# --------------------------------------------------------------------------------------
# mode/: the aggregation rule


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


# --------------------------------------------------------------------------------------
# attack/: what Byzantine workers send, how many there are and who

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
        gradients; see :mod:`byzshield.step`)."""
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


# --------------------------------------------------------------------------------------
# network/ and dataset/


@dataclass
class NetworkOption(_Option):
    """A network of :data:`byzshield.networks.NETWORKS`; classes and input size come
    from the dataset."""

    name: str = MISSING
    group: ClassVar[str] = "network"

    def __post_init__(self) -> None:
        from byzshield.networks import NETWORKS

        if self.name not in NETWORKS:
            raise ConfigError(f"unknown network {self.name!r}; choose one of {', '.join(NETWORKS)}")

    def build(self, data) -> torch.nn.Module:
        from byzshield.networks import build_network

        return build_network(
            self.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            spatial_dims=data.spatial_dims,
        )


@dataclass
class DatasetOption(_Option):
    """A dataset of :data:`byzshield.data.DATASETS`, read from ``root`` (``download``
    fetches it where that is possible; the embedded ones ignore both)."""

    name: str = MISSING
    root: str = "data"
    download: bool = False
    group: ClassVar[str] = "dataset"

    def __post_init__(self) -> None:
        from byzshield.data import DATASETS

        if self.name not in DATASETS:
            raise ConfigError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")

    def build(self, *, train: bool):
        return _load_dataset(self.name, self.root, self.download, train)


@functools.lru_cache(maxsize=8)
def _load_dataset(name: str, root: str, download: bool, train: bool):
    """Datasets are read once per process (a sweep composes hundreds of runs); the
    tensors are never written to."""
    from byzshield.data import load_dataset

    return load_dataset(name, root=root, download=download, train=train)


# --------------------------------------------------------------------------------------
# The top level


ENGINES = ("auto", "torchrun", "simulate", "lockstep")
DEVICES = ("cpu", "cuda")
VOTES = ("full", "digest")
DIGEST_VERIFY = ("first", "majority")


@dataclass
class TrainConfig:
    """Top-level keys (``python -m byzshield.train --cfg job`` prints them all)."""

    approach: ApproachOption = MISSING
    mode: ModeOption = MISSING
    attack: AttackOption = MISSING
    network: NetworkOption = MISSING
    dataset: DatasetOption = MISSING
    # engine: torchrun (rank 0 server + K worker processes over gloo), simulate (one
    # process, each file computed once), lockstep (one process; in a multirun, the jobs
    # of one shape trained together, batched; close to simulate but not its bits), auto
    # (torchrun under torchrun, else simulate)
    engine: str = "auto"
    device: str = "cpu"  # simulate only: cuda where a GPU exists
    threads: int | None = None  # simulate: threads computing file gradients (null: CPUs)
    lr: float = 0.05  # SGD learning rate lr0; lr = lr0 * gamma^(step // lr_step)
    momentum: float = 0.9  # SGD momentum (PyTorch form, no dampening)
    gamma: float = 0.1  # LR decay factor
    lr_step: int = 10_000  # decay every lr_step steps
    batch_size: int = 300  # samples per step, cut into f equal files (a multiple of f)
    max_steps: int = 200  # training steps (epochs wins when set)
    epochs: float | None = None  # passes over the training set
    eval_freq: int = 50  # evaluate + checkpoint every eval_freq steps (0: at the end)
    seed: int = 0  # data order, augmentation, model init, random Byzantine sets
    train_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}"  # output folder
    aggregator_f: int | None = None  # f the rule assumes (null: c_max(q) of the placement)
    # run even when the rule's n-vs-f requirement fails (to show where a defence breaks):
    # warns once and marks every step outside_guarantee in metrics.jsonl
    outside_guarantee: bool = False
    # a train_dir that holds a run of another config: start over in train_dir/restart-N
    # (a rerun of the same config resumes from its newest checkpoint)
    start_over: bool = False
    # simulated erasures: this many workers per step (drawn from (seed, step)) miss the
    # step's deadline; their copies do not vote (a file needs a strict majority of all r)
    stragglers: int = 0
    # the vote: full (every copy of every file reaches the server and is compared bit for
    # bit) or digest (workers send a BLAKE3 digest of each copy and each file's first
    # holder pushes its copy; the server votes on the digests and checks one copy per
    # trusted file against its digest, the pushed one or else one it pulls)
    vote: str = "full"
    # vote=digest: pull the first holder of the winning digest (first; exact whenever a
    # worker's digest is that of the copy it sends) or a strict majority of holders
    # (majority; the full vote's winners whatever a worker claims, at ~r/2 the bytes)
    digest_verify: str = "first"
    timeout: float = 300.0  # torchrun: seconds before a silent rank is declared dead
    checkpoint: bool = True  # write checkpoints/step_NNNNNN.pt at every evaluation
    bn_batches: int = 8  # training batches to recompute BatchNorm statistics on the PS
    eval_batch_size: int = 500
    log_every: int = 10  # steps between progress lines when stdout is not a terminal

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None:
            _int("", "threads", self.threads, 1)
        _positive("", "lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma (LR decay factor) must be in (0, 1], got {self.gamma}")
        _int("", "lr_step", self.lr_step, 1)
        _int("", "batch_size", self.batch_size, 1)
        _int("", "max_steps", self.max_steps, 1)
        if self.epochs is not None:
            _positive("", "epochs", self.epochs)
        if isinstance(self.eval_freq, bool) or self.eval_freq < 0:
            raise ConfigError(
                f"eval_freq must be >= 0 (0: evaluate only at the end), got {self.eval_freq}"
            )
        _positive("", "timeout", self.timeout)
        _int("", "bn_batches", self.bn_batches, 1)
        _int("", "eval_batch_size", self.eval_batch_size, 1)
        _int("", "log_every", self.log_every, 1)
        if self.aggregator_f is not None:
            _int("", "aggregator_f", self.aggregator_f, 0)
        _int("", "stragglers", self.stragglers, 0)
        if self.vote not in VOTES:
            raise ConfigError(f"vote must be one of {', '.join(VOTES)}, got {self.vote!r}")
        if self.digest_verify not in DIGEST_VERIFY:
            raise ConfigError(
                f"digest_verify must be one of {', '.join(DIGEST_VERIFY)}, "
                f"got {self.digest_verify!r}"
            )


KEY_HELP: dict[str, str] = {
    "engine": "auto (torchrun under torchrun, else simulate), torchrun, simulate, lockstep",
    "device": "cpu, or cuda (simulate engine)",
    "threads": "simulate: gradient threads; lockstep: intra-op threads (null: one per CPU)",
    "lr": "SGD learning rate lr0; lr = lr0 * gamma^(step // lr_step)",
    "momentum": "SGD momentum (PyTorch form, no dampening)",
    "gamma": "learning-rate decay factor",
    "lr_step": "decay the learning rate every lr_step steps",
    "batch_size": "samples per step, a multiple of the files f (cut into f equal files)",
    "max_steps": "steps to train",
    "epochs": "passes over the training set; wins over max_steps when set",
    "eval_freq": "evaluate and checkpoint every N steps (0: only at the end)",
    "seed": "data order, augmentation, initialisation, random Byzantine sets",
    "train_dir": "the run's folder (a rerun with the same config resumes from it)",
    "aggregator_f": "the f the rule assumes (null: c_max(q) of the placement)",
    "outside_guarantee": "run even where the rule's n-versus-f requirement fails",
    "start_over": "a train_dir holding another config: start over in train_dir/restart-N",
    "stragglers": "workers per step whose replies miss the deadline (erasures)",
    "vote": "full (every copy, bit for bit) or digest (BLAKE3 digests, copies on demand)",
    "digest_verify": "vote=digest: first (one holder's copy checked) or majority",
    "timeout": "torchrun: seconds before a silent rank is declared dead",
    "checkpoint": "write checkpoints/step_NNNNNN.pt at every evaluation",
    "bn_batches": "training batches BatchNorm statistics are recomputed on before evaluating",
    "eval_batch_size": "test samples per forward pass when evaluating",
    "log_every": "steps between progress lines when stdout is not a terminal",
}
"""One line per top-level key for ``python -m byzshield.train --help`` (a test checks that
every key of :class:`TrainConfig` has one and that docs/configuration.md's table names it)."""

_OPTIONS: tuple[type[_Option], ...] = (
    BaselineApproach,
    DracoLiteApproach,
    DracoLiteAttackApproach,
    MajVoteApproach,
    MolsApproach,
    RamaOneApproach,
    RamaTwoApproach,
    CustomApproach,
    CoordMedianMode,
    MultiKrumMode,
    KrumMode,
    BulyanMode,
    MeanMode,
    TrimmedMeanMode,
    MeamedMode,
    GeometricMedianMode,
    CenteredClippingMode,
    SignMajorityMode,
    MdaMode,
    MonnaMode,
    CafMode,
    SmeaMode,
    NoAttackOption,
    RevGradAttack,
    ConstantAttack,
    AlieAttack,
    IpmAttack,
    SignFlipAttack,
    GaussianAttack,
    LabelFlipAttack,
    InfAttack,
    MimicAttack,
    OptimalAlieAttack,
    OptimalIpmAttack,
)


def register_schema() -> None:
    """Register the schemas in Hydra's ConfigStore: ``train_schema`` for the top level,
    ``<group>/<option>_schema`` for every option, ``network/network_schema`` and
    ``dataset/dataset_schema``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for cls in _OPTIONS:
        cs.store(group=cls.group, name=f"{cls.option}_schema", node=cls)
    cs.store(group="network", name="network_schema", node=NetworkOption)
    cs.store(group="dataset", name="dataset_schema", node=DatasetOption)


def load_config(cfg: DictConfig) -> TrainConfig:
    """The composed config as typed dataclasses; bad values raise one-line ConfigErrors."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        out = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or str(exc).split(":")[-1].strip()
        raise ConfigError(f"{key} has no value; set it with {key}=...") from None
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    if not isinstance(out, TrainConfig):
        raise ConfigError("the config is not a training config (compose conf/config.yaml)")
    _refuse_added_keys(cfg, out, "")
    return out


def _refuse_added_keys(node, obj, prefix: str) -> None:
    """A key added with ``+key=value`` that no option has (Hydra lets ``+`` through the
    schema, and the typed config would drop it silently)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(obj)}
    for key in node:
        if prefix == "" and key == "hydra":
            continue
        if key not in fields:
            allowed = ", ".join(sorted(f for f in fields if not f.startswith("_")))
            raise ConfigError(
                f"unknown key {prefix}{key}; {prefix[:-1] or 'the top level'} takes {allowed}"
            )
        value = getattr(obj, key)
        if dataclasses.is_dataclass(value) and OmegaConf.is_dict(node[key]):
            _refuse_added_keys(node[key], value, f"{prefix}{key}.")


# --------------------------------------------------------------------------------------
# Building a run


@dataclass
class Run:
    """The objects one run needs, built once from a :class:`TrainConfig`.

    ``selection``, ``aggregator`` and ``aggregator_f`` exist on the parameter server only
    (``build_run(..., server=True)``): workers never run the worst-case search.
    """

    config: TrainConfig
    placement: Placement
    attack: Any
    q: int
    train_data: Any
    test_data: Any
    max_steps: int
    selection: Selection | None = None
    aggregator: Any = None
    aggregator_f: int = 0
    notes: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)
    outside_guarantee: bool = False  # the rule runs although its requirement fails
    mode_option: Any = field(default=None, repr=False)  # the rule actually used

    @property
    def batched_files(self) -> bool:
        """Whether a worker computes its files in one batched pass (the network's
        ``NetworkInfo.batched_files``, on the CPU): both engines ask this, so both make
        the same choice."""
        from byzshield.networks import NETWORKS

        return NETWORKS[self.config.network.name].batched_files and self.config.device == "cpu"

    @property
    def world_size(self) -> int:
        """K + 1 processes under torchrun: the parameter server and K workers."""
        return self.placement.num_workers + 1

    def build_model(self) -> torch.nn.Module:
        """A fresh network, initialised from ``seed`` (identical in every process, and in
        every thread: initialisation draws from torch's global generator, so builds are
        serialised)."""
        with _BUILD_LOCK:
            torch.manual_seed(self.config.seed)
            return self.config.network.build(self.train_data)


_BUILD_LOCK = threading.Lock()


def build_run(config: TrainConfig, *, server: bool = True, world_size: int | None = None) -> Run:
    """Build and cross-check everything a run needs (raises one-line ConfigErrors)."""
    from byzshield.data import DatasetNotFound

    cfg = config
    p = cfg.approach.build()
    K, f = p.num_workers, p.num_files
    if world_size is not None and world_size != K + 1:
        raise ConfigError(
            f"approach {p.describe()} needs K+1 = {K + 1} processes (1 parameter server + "
            f"{K} workers), but WORLD_SIZE is {world_size}: run torchrun --nproc-per-node {K + 1}"
        )
    q = cfg.attack.effective_q
    if q > K:
        raise ConfigError(f"attack.q must be an integer in 0..K={K}, got {q}")
    if cfg.stragglers >= K:
        raise ConfigError(f"stragglers must be in 0..K-1={K - 1}, got {cfg.stragglers}")
    if cfg.batch_size % f:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be a multiple of the number of files f={f} "
            f"(each file is an equal slice of the batch)"
        )
    if cfg.device == "cuda":
        if cfg.engine == "torchrun" or (cfg.engine == "auto" and world_size is not None):
            raise ConfigError("device=cuda needs engine=simulate; the torchrun engine runs on CPUs")
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA GPU here; use device=cpu")
    try:
        train_data, test_data = cfg.dataset.build(train=True), cfg.dataset.build(train=False)
    except DatasetNotFound as exc:
        raise ConfigError(str(exc)) from None
    model = _model_probe(cfg, train_data)
    per_file = cfg.batch_size // f
    if per_file < 2 and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            f"network {cfg.network.name} uses BatchNorm and needs >= 2 samples per file; "
            f"batch_size={cfg.batch_size} gives {per_file} for f={f} files"
        )
    max_steps = cfg.max_steps
    if cfg.epochs is not None:
        max_steps = max(1, int(cfg.epochs * train_data.num_samples // cfg.batch_size))
    notes = []
    mode = cfg.mode
    forced = cfg.approach.forced_mode
    if forced is not None and mode.name != forced:
        notes.append(
            f"approach {cfg.approach.name} takes a plain {forced} of the vote winners; "
            f"mode={mode.name} is not used"
        )
        mode = next(c for c in _OPTIONS if issubclass(c, ModeOption) and c.option == forced)()
    run = Run(cfg, p, cfg.attack.worker_attack(), q, train_data, test_data, max_steps)
    run.notes, run.mode_option = tuple(notes), mode
    if server:
        add_server_parts(run)
    return run


def add_server_parts(run: Run) -> None:
    """Build what only the parameter server needs: the Byzantine selection (running the
    worst-case search, once), the f the rule assumes, the rule, the full attack."""
    cfg, p, q, mode = run.config, run.placement, run.q, run.mode_option
    f = p.num_files
    try:
        rule = cfg.attack.selection
        if rule == "auto":
            rule = cfg.approach.default_selection
        run.selection = build_selection(p, q, rule, seed=cfg.seed, work=cfg.attack.search_work)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    c_max = run.selection.search.upper_bound if run.selection.search else 0
    run.aggregator_f = c_max if cfg.aggregator_f is None else cfg.aggregator_f
    run.aggregator = mode.build()
    try:
        run.aggregator.check(f, run.aggregator_f)
    except ValueError as exc:
        what = f"mode {mode.name} with {f} files and f={run.aggregator_f} (c_max for q={q}): {exc}"
        if not cfg.outside_guarantee:
            raise ConfigError(f"{what}; outside_guarantee=true runs it anyway") from None
        run.outside_guarantee = True
        run.notes = (*run.notes, f"warning: {what}; running outside the rule's guarantee")
    try:
        run.attack = cfg.attack.build(num_files=f, aggregator_f=run.aggregator_f)
    except ValueError as exc:
        raise ConfigError(f"attack {cfg.attack.name}: {exc}") from None
    run.info = {
        "placement": p.describe(),
        "K": p.num_workers,
        "f": f,
        "r": p.replication,
        "load": p.load,
        "mode": run.aggregator.describe(),
        "aggregator_f": run.aggregator_f,
        "outside_guarantee": run.outside_guarantee,
        "attack": cfg.attack.info(run.attack),
        "selection": run.selection.info(),
        "max_steps": run.max_steps,
    }


def _model_probe(cfg: TrainConfig, data) -> torch.nn.Module:
    try:
        with _BUILD_LOCK:  # it draws from the global generator too
            return cfg.network.build(data)
    except ValueError as exc:
        raise ConfigError(
            f"network={cfg.network.name} with dataset={cfg.dataset.name}: {exc}"
        ) from None
