"""The training configuration: typed schema, and its validation into a RunSpec.

Hydra composes ``conf/config.yaml`` (groups approach/ mode/ attack/ network/ dataset/)
over the :class:`TrainConfig` schema registered in Hydra's ConfigStore, so unknown
top-level keys and wrongly typed values are refused by Hydra itself. :func:`validate`
then checks everything the schema cannot express (group keys, combinations such as
Bulyan with too few files for the assumed f) and returns a :class:`RunSpec`: the plain,
fully-resolved description of one run that the server and workers execute. Every
check raises :class:`ConfigError`, a ValueError whose message is one line naming the
value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from byzshield.placement import Placement, build_placement

__all__ = ["ConfigError", "RunSpec", "TrainConfig", "register_schema", "validate"]


class ConfigError(ValueError):
    """A configuration value that cannot run; the message is one line."""


@dataclass
class TrainConfig:
    """Top-level keys of ``conf/config.yaml`` (the groups are validated in validate())."""

    approach: Any = MISSING
    mode: Any = MISSING
    attack: Any = MISSING
    network: Any = MISSING
    dataset: Any = MISSING
    lr: float = 0.05
    momentum: float = 0.9
    gamma: float = 0.1
    lr_step: int = 10_000
    batch_size: int = 300
    max_steps: int = 300
    epochs: float | None = None
    eval_freq: int = 50
    seed: int = 0
    train_dir: str = MISSING
    aggregator_f: int | None = None
    timeout: float = 300.0
    checkpoint: bool = True
    bn_batches: int = 8
    eval_batch_size: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:  # runs in OmegaConf.to_object and direct use
        _positive("lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma (LR decay factor) must be in (0, 1], got {self.gamma}")
        _positive("lr_step", self.lr_step)
        _positive("batch_size", self.batch_size)
        _positive("max_steps", self.max_steps)
        if self.epochs is not None:
            _positive("epochs", self.epochs)
        if self.eval_freq < 0:
            raise ConfigError(
                f"eval_freq must be >= 0 (0: evaluate only at the end), got {self.eval_freq}"
            )
        _positive("timeout", self.timeout)
        _positive("bn_batches", self.bn_batches)
        _positive("eval_batch_size", self.eval_batch_size)
        _positive("log_every", self.log_every)
        if self.aggregator_f is not None and self.aggregator_f < 0:
            raise ConfigError(f"aggregator_f must be >= 0 or null, got {self.aggregator_f}")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def register_schema() -> None:
    """Register :class:`TrainConfig` as ``train_schema`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, resolved and checked (plain values, no OmegaConf)."""

    placement: Placement
    approach: str
    aggregator: str
    aggregator_params: dict
    aggregator_f: int
    attack: str
    attack_params: dict
    q: int
    selection: str | tuple[int, ...]
    network: str
    dataset: str
    dataset_root: str
    download: bool
    num_classes: int
    train: TrainConfig
    max_steps: int
    worst_case: Any = field(repr=False, default=None)  # adversary.WorstCase for q
    notes: tuple[str, ...] = ()  # things the user should know (printed at start)

    @property
    def world_size(self) -> int:
        """K + 1 processes: the parameter server and K workers."""
        return self.placement.num_workers + 1

    @property
    def vote(self) -> bool:
        """Whether the server majority-votes the copies of each file."""
        return self.placement.replication > 1


SELECTIONS = ("worst_case", "random", "random_fixed")


def _group(cfg: DictConfig, key: str) -> dict:
    node = cfg.get(key)
    if node is None:
        raise ConfigError(f"config group {key} is missing; pick one with {key}=NAME")
    out = OmegaConf.to_container(node, resolve=True)
    if not isinstance(out, dict) or "name" not in out:
        raise ConfigError(f"config group {key} must be chosen with {key}=NAME")
    return out


def validate(cfg: DictConfig, *, world_size: int | None = None) -> RunSpec:
    """Check a composed config and resolve it into a RunSpec (raises ConfigError)."""
    from byzshield import aggregators, attacks
    from byzshield.adversary import worst_case
    from byzshield.data import DATASETS
    from byzshield.networks import NETWORKS

    try:
        top = {
            k: v
            for k, v in OmegaConf.to_container(cfg, resolve=True).items()
            if k in TrainConfig.__dataclass_fields__
        }
        train = TrainConfig(**top)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None

    approach = _group(cfg, "approach")
    name = approach.pop("name")
    try:
        placement = build_placement(name, **approach)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    K = placement.num_workers
    if world_size is not None and world_size != K + 1:
        raise ConfigError(
            f"approach {placement.describe()} needs K+1 = {K + 1} processes "
            f"(1 parameter server + {K} workers), but WORLD_SIZE is {world_size}: "
            f"run torchrun --nproc-per-node {K + 1}"
        )

    mode = _group(cfg, "mode")
    agg = mode.pop("name")
    if agg not in aggregators.AGGREGATORS:
        raise ConfigError(
            f"unknown mode {agg!r}; choose one of {', '.join(aggregators.AGGREGATORS)}"
        )
    agg_params = {k: v for k, v in mode.items() if v is not None}
    notes = []
    if name == "maj_vote" and agg != "mean":
        notes.append(
            f"approach maj_vote takes a plain mean of the vote winners; mode={agg} is not used"
        )
        agg, agg_params = "mean", {}

    atk = _group(cfg, "attack")
    attack = atk.pop("name")
    if attack not in attacks.ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose one of {', '.join(attacks.ATTACKS)}")
    q = atk.pop("q", 0)
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= K:
        raise ConfigError(f"attack.q must be an integer in 0..K={K}, got {q!r}")
    if attack == "none":
        q = 0
    selection = atk.pop("selection", "worst_case")
    if isinstance(selection, list):
        ids = tuple(selection)
        if (
            len(set(ids)) != len(ids)
            or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < K for w in ids)
            or len(ids) != q
        ):
            raise ConfigError(
                f"attack.selection as a list needs q={q} distinct worker ids in "
                f"0..{K - 1}, got {list(ids)}"
            )
        selection = ids
    elif selection not in SELECTIONS:
        raise ConfigError(
            f"attack.selection must be one of {', '.join(SELECTIONS)} or a list "
            f"of worker ids, got {selection!r}"
        )
    attack_params = {k: v for k, v in atk.items() if v is not None}

    if q > 0:
        wc = worst_case(placement, q, time_budget=30.0)
        c_max = wc.upper_bound  # the proven bound when the search is not certified
    else:
        wc, c_max = None, 0
    f_assumed = c_max if train.aggregator_f is None else train.aggregator_f
    n = placement.num_files
    try:
        aggregators.check_requirement(agg, n, f_assumed, **agg_params)
    except ValueError as exc:
        raise ConfigError(
            f"mode {agg} with {n} files and f={f_assumed} (c_max for q={q}): {exc}"
        ) from None
    if attack == "alie":
        attack_params.setdefault("n", n)
        attack_params.setdefault("q", f_assumed)
    try:
        attacks.make_attack(attack, **attack_params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"attack {attack}: {exc}") from None

    net = _group(cfg, "network")
    if net["name"] not in NETWORKS:
        raise ConfigError(f"unknown network {net['name']!r}; choose one of {', '.join(NETWORKS)}")
    if set(net) - {"name"}:
        raise ConfigError(f"network takes only name; unknown key(s) {sorted(set(net) - {'name'})}")
    ds = _group(cfg, "dataset")
    if ds["name"] not in DATASETS:
        raise ConfigError(f"unknown dataset {ds['name']!r}; choose one of {', '.join(DATASETS)}")
    extra = set(ds) - {"name", "root", "download"}
    if extra:
        raise ConfigError(f"dataset takes name, root, download; unknown key(s) {sorted(extra)}")
    info = DATASETS[ds["name"]]

    if train.batch_size % n:
        raise ConfigError(
            f"batch_size={train.batch_size} must be a multiple of the number of "
            f"files f={n} (each file is an equal slice of the batch)"
        )
    per_file = train.batch_size // n
    if per_file < 2 and net["name"] != "lenet":
        raise ConfigError(
            f"network {net['name']} uses BatchNorm and needs >= 2 samples per file;"
            f" batch_size={train.batch_size} gives {per_file} for f={n} files"
        )
    max_steps = train.max_steps
    if train.epochs is not None:
        from byzshield.data import load_dataset

        size = load_dataset(
            ds["name"], root=ds.get("root", "data"), download=bool(ds.get("download")), train=True
        ).num_samples
        max_steps = max(1, int(train.epochs * size // train.batch_size))

    return RunSpec(
        placement=placement,
        approach=name,
        aggregator=agg,
        aggregator_params=agg_params,
        aggregator_f=f_assumed,
        attack=attack,
        attack_params=attack_params,
        q=q,
        selection=selection,
        network=net["name"],
        dataset=ds["name"],
        dataset_root=str(ds.get("root", "data")),
        download=bool(ds.get("download", False)),
        num_classes=info.num_classes,
        train=train,
        max_steps=max_steps,
        worst_case=wc,
        notes=tuple(notes),
    )
