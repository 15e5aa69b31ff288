"""The training configuration as typed options that build the run's objects.

Hydra composes ``conf/config.yaml`` over :class:`TrainConfig`. Every group option
(``conf/approach/mols.yaml``, ``conf/mode/bulyan.yaml``, ...) extends a dataclass schema
registered in Hydra's ConfigStore (:func:`register_schema`), so:

- each default is written once, in the option's dataclass (the YAML files only
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
    >>> from byzshield.config.overrides import compose_config
    >>> run = build_run(compose_config(["approach=mols", "adversary.q=2"]))
    >>> run.placement.num_workers, run.rule_f
    (15, 1)

The package, one concern a module: :mod:`~byzshield.config.base` (:class:`ConfigError`
and the checks every option shares), :mod:`~byzshield.config.approaches` (``approach/``,
the placement; :data:`APPROACHES`, the one registry of designs, and
:func:`build_placement`), :mod:`~byzshield.config.modes` (``mode/``, the aggregation
rule), :mod:`~byzshield.config.attacks` (``attack/``, what Byzantine workers send),
:mod:`~byzshield.config.adversary` (``adversary``: how many, who, the digest lie),
:mod:`~byzshield.config.data` (``network/`` and ``dataset/``),
:mod:`~byzshield.config.schema` (:class:`TrainConfig`, :data:`KEY_HELP`,
:func:`register_schema`, :func:`load_config`) and
:mod:`~byzshield.config.run` (:class:`Run`, :func:`build_run`). Every name they define is
imported here, so ``from byzshield.config import X`` works as it did when the config was
one module.
"""

from __future__ import annotations

# Re-exports: the names of __all__, and (noqa) every other name byzshield.config defined as
# one module (the option dataclasses, the constants, the private helpers tests import).
from byzshield.config.adversary import DIGEST_LIES, AdversaryOption  # noqa: F401
from byzshield.config.approaches import (  # noqa: F401
    APPROACHES,
    ApproachOption,
    BaselineApproach,
    CustomApproach,
    DetoxApproach,
    DracoLiteApproach,
    DracoLiteAttackApproach,
    MajVoteApproach,
    MolsApproach,
    RamaOneApproach,
    RamaTwoApproach,
    build_placement,
)
from byzshield.config.attacks import (  # noqa: F401
    ALIE_DEFAULT_Z,
    ATTACK_OPTIONS,
    AlieAttack,
    AttackOption,
    BackdoorAttack,
    ConstantAttack,
    FangAttack,
    GaussianAttack,
    InfinityAttack,
    IpmAttack,
    LabelFlipAttack,
    MimicAttack,
    MinMaxAttack,
    MinSumAttack,
    NoAttackOption,
    OptimalAlieAttack,
    OptimalIpmAttack,
    RevGradAttack,
    SignFlipAttack,
)
from byzshield.config.base import (  # noqa: F401
    F32_MAX,
    ConfigError,
)
from byzshield.config.data import DatasetOption, NetworkOption  # noqa: F401
from byzshield.config.modes import (  # noqa: F401
    MODES,
    BulyanMode,
    CafMode,
    CenteredClippingMode,
    CoordMedianMode,
    GeometricMedianMode,
    KrumMode,
    MdaMode,
    MeamedMode,
    MeanMode,
    ModeOption,
    MonnaMode,
    MultiKrumMode,
    SignMajorityMode,
    SmeaMode,
    TrimmedMeanMode,
)
from byzshield.config.run import (  # noqa: F401
    Run,
    add_server_parts,
    build_run,
)
from byzshield.config.schema import (  # noqa: F401
    DEVICES,
    DIGEST_VERIFY,
    ENGINES,
    KEY_HELP,
    OPTIONS,
    VOTES,
    TrainConfig,
    load_config,
    register_schema,
)

__all__ = [
    "APPROACHES",
    "AdversaryOption",
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
    "build_placement",
    "build_run",
    "load_config",
    "register_schema",
]
