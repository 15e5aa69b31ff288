"""Start-up of ``python -m byzshield.train``: the overrides composed and checked before
Hydra runs (a bad key or value is one line and leaves no folder behind), Hydra's folders
kept to rank 0, then the Hydra ``main``."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from byzshield.cli.launcher import (
    FAILED_JOBS,
    check_train_dir,
    fail,
    quiet_when_stdout_closes,
    sweep_status,
    train_help,
)
from byzshield.config.overrides import UsageError, compose

__all__ = ["check_train_overrides", "entry_point", "refuse_start"]

WORKER_OVERRIDES = (
    "hydra.run.dir=.",
    "hydra.sweep.dir=.",
    "hydra.sweep.subdir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
)
"""What every rank but 0 adds: only rank 0 writes Hydra's folders."""


def entry_point(main: Callable[[], None], *, after=None) -> int:
    """``python -m byzshield.train``: check the overrides (one line, no folder), keep
    Hydra's folders to rank 0, run the Hydra ``main``, then ``after()`` (the lockstep
    engine trains the multirun jobs it collected; it returns the lines of runs that
    failed); the exit status."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        return quiet_when_stdout_closes(lambda: print(train_help()) or 0)
    check_train_overrides(sys.argv[1:])
    if int(os.environ.get("RANK", "0")) != 0:
        sys.argv += WORKER_OVERRIDES
    from byzshield.training.loop import interrupted_line

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here: KeyboardInterrupt
    try:
        main()
        if after is not None:
            FAILED_JOBS.extend(after())
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are kept)
        print(f"\n{interrupted_line()}", file=sys.stderr, flush=True)
        return 130
    return sweep_status()


def check_train_overrides(argv: Sequence[str]) -> None:
    """Compose and check once before Hydra does, so that a bad key or value is one line,
    from rank 0, and leaves no folder behind."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return
    whole = True
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(argv))
        # a sweep without -m (an experiment with hydra.mode: MULTIRUN): check the rest here
        kept = [a for a, o in zip(argv, parsed, strict=True) if not o.is_sweep_override()]
        whole, argv = len(kept) == len(argv), kept
    except Exception:  # noqa: BLE001  (unparsable: compose below says why in one line)
        pass
    try:
        cfg = compose("config", argv)
        if whole:  # one job (or an experiment's sweep base): check it entirely
            from byzshield.config import load_config
            from byzshield.config.run import check_world_size

            config = load_config(cfg)
            if "WORLD_SIZE" in os.environ:  # under torchrun: the process count, before data
                check_world_size(
                    config.approach.build(), config.ps_shards, int(os.environ["WORLD_SIZE"])
                )
            train_dir = str(cfg.train_dir)
            check_train_dir(train_dir)
            if not any(a.startswith(("train_dir=", "+train_dir=")) for a in argv):
                # the default holds the time: Hydra must use this value, not resolve the
                # time again a second later (that left an empty sibling folder behind)
                sys.argv.append(f"train_dir={train_dir}")
    except (UsageError, ValueError) as exc:
        refuse_start(f"error: {exc}")


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
