"""Building a run: :class:`Run` (the objects one run needs, frozen), :func:`build_run`
(builds and cross-checks them, once) and :func:`add_server_parts` (the same run with what
only the parameter server needs: the Byzantine selection, the rule, the full attack)."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from byzshield.config.base import ConfigError
from byzshield.config.modes import MODES
from byzshield.config.schema import TrainConfig
from byzshield.design.placements import Placement
from byzshield.design.search import worst_case_table
from byzshield.design.selection import Selection, build_selection
from byzshield.server.evidence import Detector
from byzshield.server.sharded import shard_bounds
from byzshield.server.update import UpdateSpec


@dataclass(frozen=True)
class Run:
    """The objects one run needs, built once from a :class:`TrainConfig` and not changed
    after (frozen: :func:`add_server_parts` returns a new one).

    ``selection``, ``rule`` (the built ``mode``: an :class:`~byzshield.aggregators.Aggregator`)
    and ``rule_f`` (the f it assumes; ``f_after[e]`` with e workers excluded, under
    ``detect=exclude``) exist on the parameter server only (``build_run(..., server=True)``):
    workers never run the worst-case search. ``partition`` is how every step's batch is
    cut into files (``dataset.partition``; None: iid), the same object for every engine and
    process.
    """

    config: TrainConfig
    placement: Placement
    attack: Any
    q: int
    train_data: Any
    test_data: Any
    max_steps: int
    num_params: int  # d, the network's trainable parameters
    selection: Selection | None = None
    rule: Any = None
    rule_f: int = 0
    notes: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)
    outside_guarantee: bool = False  # the rule runs although its requirement fails
    mode_option: Any = field(default=None, repr=False)  # the rule actually used
    partition: Any = None  # a byzshield.compute.sampling.Partition; None: iid
    f_after: tuple[int, ...] = ()

    @property
    def batched_files(self) -> bool:
        """Whether a worker computes its files in one batched pass (the network's
        ``NetworkInfo.batched_files``, on the CPU): both engines ask this, so both make
        the same choice."""
        from byzshield.compute.networks import NETWORKS

        return NETWORKS[self.config.network.name].batched_files and self.config.device == "cpu"

    @property
    def worker_attack(self) -> Any:
        """What a Byzantine worker applies itself: the attack, or None for an omniscient
        one (``needs_honest``), which the parameter server simulates (the workers then
        send honest gradients; :mod:`byzshield.server.forgery`)."""
        attack = self.attack
        return None if attack is None or attack.needs_honest else attack

    def label_tv(self, step: int) -> float:
        """How heterogeneous step ``step``'s files are (:func:`byzshield.compute.partition.label_tv`
        of their labels): the files are a pure function of (seed, step), so the server
        knows their labels without receiving them."""
        from byzshield.compute.partition import label_tv
        from byzshield.compute.sampling import step_labels

        cfg, data = self.config, self.train_data
        labels = step_labels(
            data,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            num_files=self.placement.num_files,
            partition=self.partition,
        )
        return label_tv(labels, data.num_classes)

    @property
    def world_size(self) -> int:
        """K + S processes under torchrun: the parameter server's S = ``ps_shards``
        servers and K workers."""
        return self.placement.num_workers + self.config.ps_shards

    def build_model(self) -> torch.nn.Module:
        """A fresh network, initialised from ``seed``: identical in every process and
        thread. PyTorch's initialisers draw from the global generator only, so the build
        seeds it inside :func:`torch.random.fork_rng` (its state is restored afterwards:
        building a model changes no other random stream) and builds are serialised."""
        with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self.config.network.build(self.train_data)

    def build_rule(self) -> Any:
        """A fresh rule object of the run's mode (each server of a sharded parameter
        server holds its own, whose state is that server's columns)."""
        return self.mode_option.build()

    def update_spec(self) -> UpdateSpec:
        """What the parameter server's robust update is built from
        (:func:`byzshield.server.update.build_update`); a server run only."""
        cfg = self.config
        return UpdateSpec(
            self.placement,
            self.attack,
            self.build_rule,
            rule_f=self.rule_f,
            seed=cfg.seed,
            threads=cfg.threads,
            outside_guarantee=self.outside_guarantee,
            verify=cfg.digest_verify,
            lie=cfg.adversary.digest_lie,
            num_servers=cfg.ps_shards,
            evidence=cfg.detect != "off",
            f_after=self.f_after,
            lie_on=cfg.adversary.lie_on,
        )

    def detector(self) -> Detector:
        """The run's detection, relabelling and evasion
        (:class:`byzshield.server.evidence.Detector`); a server run only."""
        cfg = self.config
        return Detector(
            self.placement,
            self.q,
            cfg.detect,
            seed=cfg.seed,
            relabel=cfg.placement.relabel,
            lie_on=cfg.adversary.lie_on,
            evade=cfg.adversary.evade,
            f_after=self.f_after,
        )


_BUILD_LOCK = threading.Lock()


def check_world_size(placement: Placement, ps_shards: int, world_size: int) -> None:
    """Refuse a process group of any size but K + ps_shards (one ConfigError line saying
    what ``--nproc-per-node`` should be)."""
    K, S = placement.num_workers, ps_shards
    if world_size != K + S:
        servers = "1 parameter server" if S == 1 else f"{S} parameter servers (ps_shards)"
        raise ConfigError(
            f"approach {placement.describe()} needs K+{S} = {K + S} processes ({servers} + "
            f"{K} workers), but WORLD_SIZE is {world_size}: run torchrun --nproc-per-node {K + S}"
        )


def build_run(config: TrainConfig, *, server: bool = True, world_size: int | None = None) -> Run:
    """Build and cross-check everything a run needs (raises one-line ConfigErrors)."""
    from byzshield.compute.datasets import DatasetNotFound
    from byzshield.compute.partition import check_partition

    cfg = config
    p = cfg.approach.build()
    K, f = p.num_workers, p.num_files
    if world_size is not None:
        check_world_size(p, cfg.ps_shards, world_size)
    q = 0 if cfg.attack.honest else cfg.adversary.q
    if q > K:
        raise ConfigError(f"adversary.q must be an integer in 0..K={K}, got {q}")
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
    cfg.attack.check_dataset(cfg.dataset.name, train_data.num_classes)
    if cfg.batch_size > train_data.num_samples:  # a larger batch repeats samples in a step
        raise ConfigError(
            f"batch_size must be at most the {train_data.num_samples} training samples of "
            f"dataset {cfg.dataset.name}, got {cfg.batch_size}"
        )
    partition = cfg.dataset.build_partition()
    try:
        check_partition(
            partition, num_classes=train_data.num_classes, file_size=cfg.batch_size // f
        )
    except ValueError as exc:
        raise ConfigError(
            f"dataset.partition={cfg.dataset.partition} with batch_size={cfg.batch_size} and "
            f"f={f} files: {exc}"
        ) from None
    model = _model_probe(cfg, train_data)
    d = sum(t.numel() for t in model.parameters())
    if cfg.ps_shards > 1:
        try:
            shard_bounds(d, cfg.ps_shards)
        except ValueError as exc:
            raise ConfigError(f"network {cfg.network.name}: {exc}") from None
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
        steps = cfg.epochs * train_data.num_samples // cfg.batch_size
        if not math.isfinite(steps):  # the product overflowed
            limit = sys.float_info.max / train_data.num_samples * cfg.batch_size
            raise ConfigError(
                f"epochs must be at most {limit:.4g} ({train_data.num_samples} samples, "
                f"batch_size={cfg.batch_size}), got {cfg.epochs}"
            )
        max_steps = max(1, int(steps))
    notes = []
    mode = cfg.mode
    forced = cfg.approach.forced_mode
    if forced is not None and mode.name != forced:
        notes.append(
            f"approach {cfg.approach.name} takes a plain {forced} of the vote winners; "
            f"mode={mode.name} is not used"
        )
        mode = MODES[forced]()
    run = Run(
        cfg,
        p,
        cfg.attack.worker_attack(),
        q,
        train_data,
        test_data,
        max_steps,
        d,
        notes=tuple(notes),
        mode_option=mode,
        partition=partition,
    )
    return add_server_parts(run) if server else run


def add_server_parts(run: Run, *, rule_f: int | None = None) -> Run:
    """The run with what only the parameter server needs: the Byzantine selection
    (running the worst-case search, once), the f the rule assumes, the rule, the full
    attack. ``run`` itself is not changed. Servers 1..S-1 of a sharded server are given
    the ``rule_f`` server 0 found: they build no selection (server 0 says who is
    Byzantine each step)."""
    cfg, p, q, mode = run.config, run.placement, run.q, run.mode_option
    f = p.num_files
    selection = None
    if rule_f is None:
        try:
            which = cfg.adversary.selection
            if which == "auto":
                which = cfg.approach.default_selection
            selection = build_selection(p, q, which, seed=cfg.seed, work=cfg.adversary.search_work)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.detect != "off" and selection.fixed is None:
            raise ConfigError(
                f"detect={cfg.detect} needs Byzantine workers fixed for the run, but "
                f"adversary.selection={selection.kind} draws a new set every step (over a run "
                "more than q workers lie, and the certificate's bound fails): use worst_case, "
                "random_fixed, a detox_* strategy or a list"
            )
        c_max = selection.search.upper_bound if selection.search else 0
        rule_f = c_max if cfg.aggregator_f is None else cfg.aggregator_f
    rule = mode.build()
    outside, notes = False, run.notes
    try:
        rule.check(f, rule_f)
    except ValueError as exc:
        what = f"mode {mode.name} with {f} files and f={rule_f} (c_max for q={q}): {exc}"
        if not cfg.outside_guarantee:
            raise ConfigError(f"{what}; outside_guarantee=true runs it anyway") from None
        outside = True
        notes = (*notes, f"warning: {what}; running outside the rule's guarantee")
    f_after = ()
    if cfg.detect == "exclude" and cfg.aggregator_f is None and selection is not None and q:
        f_after = _f_after(p, q, rule_f, cfg.adversary.search_work)
    if cfg.detect != "off" and p.replication == 1:
        notes = (
            *notes,
            f"detect={cfg.detect} with r = 1: no two workers compute the same "
            "file, so the vote sees no disagreement and nobody can be certified",
        )
    try:
        attack = cfg.attack.build(num_files=f, rule_f=rule_f)
    except ValueError as exc:
        raise ConfigError(f"attack {cfg.attack.name}: {exc}") from None
    info = {
        "placement": p.describe(),
        "K": p.num_workers,
        "f": f,
        "r": p.replication,
        "load": p.load,
        "mode": rule.describe(),
        "aggregator_f": rule_f,
        "outside_guarantee": outside,
        "attack": cfg.attack.info(attack),
        "selection": None if selection is None else selection.info(),
        "max_steps": run.max_steps,
    }
    adv = cfg.adversary
    if (cfg.detect, cfg.placement.relabel, adv.lie_on, adv.evade) != ("off", "none", "all", False):
        info["detection"] = {
            "detect": cfg.detect,
            "relabel": cfg.placement.relabel,
            "lie_on": adv.lie_on,
            "evade": adv.evade,
            "f_after": list(f_after),
        }
    return dataclasses.replace(
        run,
        selection=selection,
        rule=rule,
        rule_f=rule_f,
        attack=attack,
        outside_guarantee=outside,
        notes=notes,
        info=info,
        f_after=f_after,
    )


def _f_after(placement: Placement, q: int, rule_f: int, work: int) -> tuple[int, ...]:
    """The f the rule assumes with e = 0..q workers excluded: c_max(q - e) (its proven
    upper bound), never above the f before (:mod:`byzshield.server.evidence`)."""
    table = worst_case_table(placement, q, work=work)
    out = [rule_f]
    for e in range(1, q + 1):
        out.append(min(out[-1], table[q - e].upper_bound))
    return tuple(out)


def _model_probe(cfg: TrainConfig, data) -> torch.nn.Module:
    """The network built once to check it against the dataset, before anything starts
    (its size, its BatchNorm layers); each process then builds the model it trains with
    :meth:`Run.build_model`."""
    try:
        with _BUILD_LOCK:  # it draws from the global generator too
            return cfg.network.build(data)
    except ValueError as exc:
        raise ConfigError(
            f"network={cfg.network.name} with dataset={cfg.dataset.name}: {exc}"
        ) from None
