"""Process plumbing of ``python -m byzshield.train``: one-line failures, the override
check before Hydra runs, launching torchrun, and per-rank log files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from byzshield.overrides import UsageError, compose

__all__ = ["check_train_overrides", "fail", "launch_torchrun", "log_to_folder"]


def fail(message: str, code: int, *, console: bool | None = None) -> None:
    """Exit with ``code`` after writing ``message`` (one line, no traceback) to this
    rank's log, once it has one, and to stderr: by rank 0 only unless ``console``."""
    if any(isinstance(h, logging.FileHandler) for h in logging.getLogger("byzshield").handlers):
        logging.getLogger("byzshield.launcher").error(message)
    if console if console is not None else int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def check_train_overrides(argv: Sequence[str]) -> None:
    """Compose once before Hydra does, so a bad key or value is one line, from rank 0."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return
    try:
        compose("config", argv)
    except UsageError as exc:
        fail(f"error: {exc}", 2)


def launch_torchrun(world_size: int) -> int:
    """Re-run this Hydra job under `torchrun --standalone` with ``world_size`` processes."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.mode.name == "MULTIRUN":
        fail(
            f"error: a multirun needs torchrun: torchrun --standalone --nproc-per-node "
            f"{world_size} -m byzshield.train -m ...",
            2,
        )
    overrides = [o for o in hc.overrides.task if not o.startswith("train_dir=")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(world_size),
        "-m",
        "byzshield.train",
        *overrides,
        f"train_dir={hc.runtime.output_dir}",
    ]
    print(
        f"launching {world_size} processes: torchrun --standalone --nproc-per-node "
        f"{world_size} -m byzshield.train {' '.join(overrides)}",
        flush=True,
    )
    try:
        return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except KeyboardInterrupt:
        return 130


def log_to_folder(folder: Path, rank: int) -> None:
    """Each rank logs to rank<N>.log in the run folder; only rank 0 talks to the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("byzshield")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
