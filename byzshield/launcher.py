"""Process plumbing of ``python -m byzshield.train``: one-line failures, the override
check before Hydra runs, launching torchrun, and per-rank log files."""

from __future__ import annotations

import logging
import os
import signal
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
    if console is None:
        console = int(os.environ.get("RANK", "0")) == 0
    if console:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def check_train_overrides(argv: Sequence[str]) -> None:
    """Compose once before Hydra does, so a bad key or value is one line, from rank 0."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(argv))
        # a sweep without -m (an experiment with hydra.mode: MULTIRUN): check the rest here
        argv = [a for a, o in zip(argv, parsed, strict=True) if not o.is_sweep_override()]
    except Exception:  # noqa: BLE001  (unparsable: compose below says why in one line)
        pass
    try:
        compose("config", argv)
    except UsageError as exc:
        fail(f"error: {exc}", 2)


def launch_torchrun(world_size: int) -> int:
    """Re-run this Hydra job under torchrun with ``world_size`` processes on this machine,
    everything listening on 127.0.0.1 only (``python -m byzshield.comm --standalone``).

    torchrun runs in its own session, so a terminal's Ctrl-C reaches this process alone;
    SIGINT, SIGTERM and SIGHUP are passed on to torchrun as one SIGTERM, which stops every
    rank, and the exit code is then 128 + the signal's number."""
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
        "byzshield.comm",  # torchrun, its stores bound to 127.0.0.1
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
    torchrun: subprocess.Popen | None = None
    stopped: list[int] = []
    sent: list[bool] = []

    def terminate() -> None:
        if torchrun is not None and stopped and not sent:  # once: a second cuts its cleanup
            sent.append(True)
            torchrun.send_signal(signal.SIGTERM)

    def stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        terminate()

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in caught}  # before torchrun: no orphan
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        torchrun = subprocess.Popen(cmd, env=env, start_new_session=True)
        terminate()  # for a signal that came while it started
        code = torchrun.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        name = signal.Signals(stopped[0]).name
        print(f"stopped by {name}: torchrun and every rank have exited", file=sys.stderr)
        return 128 + stopped[0]
    return code


def log_to_folder(folder: Path, rank: int) -> None:
    """Each rank logs to rank<N>.log in the run folder; only rank 0 talks to the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("byzshield")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
