"""Start-up of ``python -m byzshield.train``: the overrides composed and checked before
anything is written, once.

A single run (no Hydra flag, no sweep) is composed here as ``@hydra.main`` composes it,
checked (one line and no folder left behind for a bad key or value), and then run on
that very composition the way Hydra runs a single job (:func:`run_composed`: its run
folder, ``.hydra/``, logging and ``HydraConfig``), so Hydra does not compose it again.
Everything else (``-m`` sweeps and their launchers, an experiment that is a sweep,
``--cfg``, ``--help``, ``--hydra-help``, ``hydra.verbose``) is checked as far as it can
be and goes through the Hydra ``main``, which composes it itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from byzshield.cli.launcher import (
    FAILED_JOBS,
    check_train_dir,
    fail,
    quiet_when_stdout_closes,
    sweep_status,
    train_help,
)
from byzshield.config.overrides import UsageError, compose

__all__ = ["check_train_overrides", "entry_point", "refuse_start", "run_composed"]

APP = "train"
"""The job's name, as Hydra's main names it after ``byzshield.train`` (``hydra.job.name``)."""

WORKER_OVERRIDES = (
    "hydra.run.dir=.",
    "hydra.sweep.dir=.",
    "hydra.sweep.subdir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
)
"""What every rank but 0 adds: only rank 0 writes Hydra's folders."""


def entry_point(main: Callable[[], None], *, job=None, after=None) -> int:
    """``python -m byzshield.train``: check the overrides (one line, no folder), keep
    Hydra's folders to rank 0, run the job, then ``after()`` (the lockstep engine trains
    the multirun jobs it collected; it returns the lines of runs that failed); the exit
    status. A single run composed and checked here is handed to ``job`` (its checked
    :class:`~byzshield.config.TrainConfig`); anything else goes through the Hydra
    ``main``."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        return quiet_when_stdout_closes(lambda: print(train_help()) or 0)
    from byzshield.compute.memory import keep_freed_memory

    keep_freed_memory()  # a step's buffers reused, not faulted in again every step
    extra = list(WORKER_OVERRIDES) if int(os.environ.get("RANK", "0")) != 0 else []
    single = check_train_overrides(sys.argv[1:], extra if job is not None else None)
    sys.argv += extra
    from byzshield.training.records import interrupted_line

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here: KeyboardInterrupt
    try:
        if single is not None:
            cfg, config = single
            run_composed(cfg, lambda: job(config))
        else:
            from byzshield.cli.sweep import install

            install()  # a sweep's jobs composed once each, not twice
            main()
        if after is not None:
            FAILED_JOBS.extend(after())
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are kept)
        print(f"\n{interrupted_line()}", file=sys.stderr, flush=True)
        return 130
    return sweep_status()


def check_train_overrides(argv: Sequence[str], hydra_overrides: Sequence[str] | None = None):
    """Compose and check before anything is written, so that a bad key or value is one
    line, from rank 0, and leaves no folder behind.

    With ``hydra_overrides`` (a list, maybe empty: what this rank adds for Hydra), a
    single run is composed with them as Hydra's main composes it and returned with its
    checked config, ``(cfg, config)``, for :func:`run_composed`. None when Hydra must
    compose the job itself (a sweep, Hydra's own flags, ``hydra.verbose``)."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return None
    whole, swept = True, set()
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(argv))
        # a sweep without -m (an experiment with hydra.mode: MULTIRUN): check the rest here
        kept = [a for a, o in zip(argv, parsed, strict=True) if not o.is_sweep_override()]
        swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
        whole, argv = len(kept) == len(argv), kept
    except Exception:  # noqa: BLE001  (unparsable: compose below says why in one line)
        pass
    try:
        if not whole or hydra_overrides is None:
            cfg = compose("config", argv)
        else:
            cfg = compose("config", [*argv, *hydra_overrides], job=APP)
        if not whole:  # the sweep's values are Hydra's to expand
            return None
        from byzshield.config import load_config
        from byzshield.config.run import check_world_size

        config = load_config(_task(cfg))
        raw_dir = str(cfg._get_node("train_dir")._value())  # before it is resolved here
        train_dir = config.train_dir  # the default holds the time: resolved once, here
        cfg.train_dir = train_dir
        if "WORLD_SIZE" in os.environ:  # under torchrun: the process count, before data
            check_world_size(
                config.approach.build(), config.ps_shards, int(os.environ["WORLD_SIZE"])
            )
        check_train_dir(train_dir)
        given = any(a.startswith(("train_dir=", "+train_dir=")) for a in argv)
        if hydra_overrides is None or cfg.hydra.mode is not None or cfg.hydra.verbose:
            if not given:  # Hydra composes again: it must use this value, not a later time
                _check_not_swept(raw_dir, cfg, swept)
                sys.argv.append(f"train_dir={train_dir}")
            return None
        if not given:  # recorded as the Hydra path records it (.hydra/overrides.yaml)
            _record_override(cfg, f"train_dir={train_dir}")
        return cfg, config
    except (UsageError, ValueError) as exc:
        refuse_start(f"error: {exc}")


def _check_not_swept(raw: str, cfg: DictConfig, swept: set[str]) -> None:
    """A sweep writes its jobs into one folder, ``train_dir`` resolved once before the
    first job: refuse a ``train_dir`` (``raw``: as written, unresolved) that interpolates a
    key the sweep varies (it would take the key's default, not each job's value)."""
    import re

    params = cfg.hydra.sweeper.get("params") or {}  # not applied yet: even one value
    varied = swept | {str(k) for k in params}
    used = sorted(set(re.findall(r"\$\{([\w.]+)\}", raw)) & varied)
    if used:
        raise UsageError(
            f"train_dir={raw} interpolates {used[0]}, which this sweep varies; a sweep writes "
            "into one folder, resolved once: give train_dir on the command line or sweep "
            f"{used[0]} in separate commands"
        )


def _task(cfg: DictConfig) -> DictConfig:
    """The job's own config: ``cfg`` without the ``hydra`` node (what the job reads)."""
    import copy

    from omegaconf import open_dict

    if "hydra" not in cfg:
        return cfg
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    return task


def _record_override(cfg: DictConfig, line: str) -> None:
    """Add ``line`` to the composed run's task overrides, as if it had been given (its
    ``.hydra/overrides.yaml`` and ``hydra.job.override_dirname`` then read as they did
    when Hydra composed the run with it)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg.hydra.overrides.task.append(line)
    parsed = OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task))
    names = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(
        overrides=parsed,
        exclude_keys=list(names.exclude_keys),
        item_sep=names.item_sep,
        kv_sep=names.kv_sep,
    )


def run_composed(cfg: DictConfig, task: Callable[[], None]) -> None:
    """Run ``task`` as Hydra's main runs a single job, on the run ``cfg`` composed by
    :func:`check_train_overrides`: the run folder created, ``.hydra/`` written, the job's
    logging configured, ``HydraConfig`` set and Hydra's callbacks called; an unexpected
    error is reported as Hydra reports it."""
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.utils import run_and_report
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode

    cfg.hydra.mode = RunMode.RUN  # as Hydra's main records a run not told its mode
    cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    with initialize_config_module(config_module="byzshield.conf", job_name=APP, version_base="1.3"):
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="config")
        loader = GlobalHydra.instance().config_loader()
        ret = run_job(
            hydra_context=HydraContext(config_loader=loader, callbacks=callbacks),
            task_function=lambda _cfg: task(),
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
        callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
        run_and_report(lambda: ret.return_value)


def refuse_start(message: str) -> None:
    """Stop a command refused before it starts (one line, exit status 2). Under torchrun
    on one node rank 0 says it and every other rank exits quietly with status 0 at once,
    so that torchrun's closing report lists one failed rank (not K + 1 of them); rank 0
    gives them a second to be gone before it exits (a rank still running when the agent
    sees rank 0 fail is stopped with SIGTERM and listed too)."""
    rank = int(os.environ.get("RANK", "0"))
    one_node = os.environ.get("LOCAL_WORLD_SIZE", "") == os.environ.get("WORLD_SIZE")
    if "WORLD_SIZE" not in os.environ or not one_node:
        fail(message, 2)
    if rank != 0:
        sys.exit(0)
    print(message, file=sys.stderr, flush=True)
    time.sleep(1.0)
    fail(message, 2, console=False)
