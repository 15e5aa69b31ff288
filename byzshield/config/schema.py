"""The top level: :class:`TrainConfig` (the top-level keys and their checks),
:data:`KEY_HELP` (their ``--help`` lines), ``OPTIONS`` (every group option),
:func:`register_schema` (Hydra's ConfigStore) and :func:`load_config` (a composition as
typed dataclasses, refusing keys no option has)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig, OmegaConf

from byzshield.compute.sampling import SEED_MAX
from byzshield.config.adversary import AdversaryOption
from byzshield.config.approaches import APPROACHES, ApproachOption
from byzshield.config.attacks import ATTACK_OPTIONS, AttackOption
from byzshield.config.base import ConfigError, _float32, _int, _Option, _positive
from byzshield.config.data import DatasetOption, NetworkOption
from byzshield.config.modes import MODES, ModeOption
from byzshield.detection import RELABELS
from byzshield.server.evidence import DETECT

ENGINES = ("auto", "torchrun", "simulate", "lockstep")
DEVICES = ("cpu", "cuda")
VOTES = ("full", "digest")
TIMEOUT_MAX = 1e9
"""The longest ``timeout`` in seconds (~32 years: "never"), inside what timedelta and
gloo's millisecond clocks hold."""
DIGEST_VERIFY = ("first", "majority")


@dataclass
class PlacementOption:
    """The ``placement`` node: how the placement's roles meet the workers.
    ``relabel``: none (worker k plays role k all run) or step (a fresh secret
    permutation of the roles every step, :mod:`byzshield.detection.relabel`)."""

    relabel: str = "none"

    def __post_init__(self) -> None:
        if self.relabel not in RELABELS:
            raise ConfigError(
                f"placement.relabel must be one of {', '.join(RELABELS)}, got {self.relabel!r}"
            )


@dataclass
class TrainConfig:
    """Top-level keys (``python -m byzshield.train --cfg job`` prints them all)."""

    approach: ApproachOption = MISSING
    mode: ModeOption = MISSING
    attack: AttackOption = MISSING
    adversary: AdversaryOption = field(default_factory=AdversaryOption)  # q, who
    placement: PlacementOption = field(default_factory=PlacementOption)  # relabel
    network: NetworkOption = MISSING
    dataset: DatasetOption = MISSING
    # engine: torchrun (rank 0 server + K worker processes over gloo), simulate (one
    # process, each file computed once), lockstep (one process; in a multirun, the jobs
    # of one shape trained together, batched; close to simulate but not its bits), auto
    # (torchrun under torchrun, else simulate)
    engine: str = "auto"
    device: str = "cpu"  # simulate only: cuda where a GPU exists
    threads: int | None = None  # simulate: gradient threads (null: CPUs); lockstep: 1
    lr: float = 0.05  # SGD learning rate lr0; lr = lr0 * gamma^(step // lr_step)
    momentum: float = 0.9  # SGD momentum (PyTorch form, no dampening)
    gamma: float = 0.1  # LR decay factor
    lr_step: int = 10_000  # decay every lr_step steps
    batch_size: int = 300  # samples per step, cut into f equal files (a multiple of f, <= N)
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
    # a parameter server sharded ps_shards ways: S servers (torchrun: ranks 0..S-1), each
    # owning a contiguous slice of the parameters and receiving only that slice of each
    # copy; they exchange vote classes and partial sums, never gradients (same bits as 1)
    ps_shards: int = 1
    timeout: float = 300.0  # torchrun: seconds the server waits for a worker before dropping it
    checkpoint: bool = True  # write checkpoints/step_NNNNNN.pt at every evaluation
    bn_batches: int = 8  # training batches to recompute BatchNorm statistics on the PS
    eval_batch_size: int = 500
    log_every: int = 10  # steps between progress lines when stdout is not a terminal
    # certified detection from the vote's disagreements: off, flag (record the workers
    # certainly Byzantine), exclude (and drop their copies from every later vote)
    detect: str = "off"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None:
            _int("", "threads", self.threads, 1)
        _positive("", "lr", self.lr)
        _float32("", "lr", self.lr)  # SGD's step is a float32 value
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma (LR decay factor) must be in (0, 1], got {self.gamma}")
        _int("", "lr_step", self.lr_step, 1)
        _int("", "batch_size", self.batch_size, 1)
        _int("", "max_steps", self.max_steps, 1)
        _int("", "seed", self.seed, 0, SEED_MAX)  # what torch's and NumPy's generators take
        if self.epochs is not None:
            _positive("", "epochs", self.epochs)
        if isinstance(self.eval_freq, bool) or self.eval_freq < 0:
            raise ConfigError(
                f"eval_freq must be >= 0 (0: evaluate only at the end), got {self.eval_freq}"
            )
        _positive("", "timeout", self.timeout)
        if self.timeout > TIMEOUT_MAX:
            raise ConfigError(f"timeout must be at most {TIMEOUT_MAX:.0e} s, got {self.timeout}")
        _int("", "bn_batches", self.bn_batches, 1)
        _int("", "eval_batch_size", self.eval_batch_size, 1)
        _int("", "log_every", self.log_every, 1)
        if self.aggregator_f is not None:
            _int("", "aggregator_f", self.aggregator_f, 0)
        _int("", "stragglers", self.stragglers, 0)
        if self.vote not in VOTES:
            raise ConfigError(f"vote must be one of {', '.join(VOTES)}, got {self.vote!r}")
        _int("", "ps_shards", self.ps_shards, 1)
        if self.ps_shards > 1 and self.vote != "full":
            raise ConfigError(
                f"ps_shards={self.ps_shards} runs the full vote only (vote=full), "
                f"got vote={self.vote}"
            )
        if self.ps_shards > 1 and self.engine == "lockstep":
            raise ConfigError(
                f"ps_shards={self.ps_shards} runs in the simulate and torchrun engines, "
                "not engine=lockstep"
            )
        if self.detect not in DETECT:
            raise ConfigError(f"detect must be one of {', '.join(DETECT)}, got {self.detect!r}")
        if self.digest_verify not in DIGEST_VERIFY:
            raise ConfigError(
                f"digest_verify must be one of {', '.join(DIGEST_VERIFY)}, "
                f"got {self.digest_verify!r}"
            )


KEY_HELP: dict[str, str] = {
    "adversary": "adversary.q Byzantine workers, adversary.selection (auto, worst_case, "
    "random, random_fixed, detox_*, [ids]), adversary.search_work, adversary.digest_lie, "
    "adversary.lie_on (all, won), adversary.evade",
    "placement": "placement.relabel: none, or step (a secret permutation of roles every step)",
    "engine": "auto (torchrun under torchrun, else simulate), torchrun, simulate, lockstep",
    "device": "cpu, or cuda (simulate engine)",
    "threads": "simulate: gradient threads (null: one per CPU); lockstep: intra-op threads "
    "(null: 1)",
    "lr": "SGD learning rate lr0; lr = lr0 * gamma^(step // lr_step)",
    "momentum": "SGD momentum (PyTorch form, no dampening)",
    "gamma": "learning-rate decay factor",
    "lr_step": "decay the learning rate every lr_step steps",
    "batch_size": "samples per step, a multiple of the files f, at most the training set",
    "max_steps": "steps to train",
    "epochs": "passes over the training set; wins over max_steps when set",
    "eval_freq": "evaluate and checkpoint every N steps (0: only at the end)",
    "seed": "data order, augmentation, initialisation, random Byzantine sets (0..2^63-1)",
    "train_dir": "the run's folder (a rerun with the same config resumes from it)",
    "aggregator_f": "the f the rule assumes (null: c_max(q) of the placement)",
    "outside_guarantee": "run even where the rule's n-versus-f requirement fails",
    "start_over": "a train_dir holding another config: start over in train_dir/restart-N",
    "stragglers": "workers per step whose replies miss the deadline (erasures)",
    "vote": "full (every copy, bit for bit) or digest (BLAKE3 digests, copies on demand)",
    "digest_verify": "vote=digest: first (one holder's copy checked) or majority",
    "ps_shards": "parameter-server shards S (ranks 0..S-1 under torchrun; vote=full)",
    "timeout": "torchrun: seconds the server waits for a worker before dropping it (at most 1e9)",
    "checkpoint": "write checkpoints/step_NNNNNN.pt at every evaluation",
    "bn_batches": "training batches BatchNorm statistics are recomputed on before evaluating",
    "eval_batch_size": "test samples per forward pass when evaluating",
    "log_every": "steps between progress lines when stdout is not a terminal",
    "detect": "off, flag (record workers certainly Byzantine) or exclude (drop them from votes)",
}
"""One line per top-level key for ``python -m byzshield.train --help`` (a test checks that
every key of :class:`TrainConfig` has one and that docs/configuration.md's table names it)."""

OPTIONS: tuple[type[_Option], ...] = (
    *APPROACHES.values(),
    *MODES.values(),
    *ATTACK_OPTIONS.values(),
)


def register_schema() -> None:
    """Register the schemas in Hydra's ConfigStore: ``train_schema`` for the top level,
    ``<group>/<option>_schema`` for every option, ``network/network_schema`` and
    ``dataset/dataset_schema``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for cls in OPTIONS:
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
