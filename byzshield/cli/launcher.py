"""Process plumbing of ``python -m byzshield.train``: one-line failures, ``--help``, the
train_dir check, launching torchrun, and per-rank log files (the start-up itself:
:mod:`byzshield.cli.startup`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "check_out_dir",
    "check_train_dir",
    "fail",
    "fail_job",
    "drop_empty_job_log",
    "launch_torchrun",
    "log_to_folder",
    "quiet_when_stdout_closes",
    "sweep_status",
    "train_help",
]


def fail(message: str, code: int, *, console: bool | None = None) -> None:
    """Exit with ``code`` after writing ``message`` (one line, no traceback) to this
    rank's log, once it has one, and to stderr: by rank 0 only unless ``console``."""
    if any(isinstance(h, logging.FileHandler) for h in logging.getLogger("byzshield").handlers):
        logging.getLogger("byzshield.cli.launcher").error(message)
    if console is None:
        console = int(os.environ.get("RANK", "0")) == 0
    if console:
        print(message, file=sys.stderr, flush=True)
    _tell_torchrun(message)
    sys.exit(code)


def _tell_torchrun(message: str) -> None:
    """Under torchrun, write the line into the rank's error file: the elastic agent then
    prints it in its closing "Root Cause" block (the last lines on the console) instead
    of "To enable traceback see ...", so the fix is not buried under its report."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    try:
        with open(path, "w") as fh:
            json.dump({"message": message, "timestamp": int(time.time())}, fh)
    except OSError:
        pass  # the agent then reports the exit code alone


def quiet_when_stdout_closes(run: Callable[[], int]) -> int:
    """``run()``'s exit status; when the reader of stdout goes away first (``--help |
    head``), the command stops quietly with status 0, as the argparse front ends do,
    instead of ending in a BrokenPipeError traceback."""
    try:
        code = run()
        sys.stdout.flush()  # output that fit in the buffer meets the closed pipe here
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout once more at exit
        os.close(devnull)
        return 0
    return code


FAILED_JOBS: list[str] = []


REFUSED = "refused.txt"
"""A multirun job's folder holds this file, with the reason, when the job was refused
(the report shows it as refused, not as failed to start)."""

_HYDRA_ONLY = {".hydra", "train.log"}  # what Hydra writes into a job's folder by itself
CREATED: list[Path] = []  # train_dir when this command created it (removed if refused)


def fail_job(message: str, code: int = 2, *, mark: bool = True) -> None:
    """``fail`` for a job that cannot start; in a Hydra multirun the line names the job,
    the sweep goes on with the next one and the command exits 1 at the end. A single
    run's folder is removed when Hydra's files are all it holds; a multirun job's keeps
    the reason in ``refused.txt`` (unless not ``mark``: the folder is another run's)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    folder = Path(hc.runtime.output_dir) if hc is not None else None
    if hc is None or hc.mode.name != "MULTIRUN":
        ours = folder is not None and folder.is_dir() and folder.resolve() in CREATED
        if ours and {p.name for p in folder.iterdir()} <= _HYDRA_ONLY:
            import shutil

            logging.shutdown()  # train.log is open
            shutil.rmtree(folder, ignore_errors=True)
        fail(message, code)
    if mark and folder is not None and folder.is_dir():
        (folder / REFUSED).write_text(message + "\n")
    line = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): {message}"
    logging.getLogger("byzshield.cli.launcher").error(line)
    print(line, file=sys.stderr, flush=True)
    FAILED_JOBS.append(line)


def train_help() -> str:
    """``python -m byzshield.train --help``: the groups and their options, every key with
    its default and meaning (Hydra's own flags: --hydra-help)."""
    import dataclasses

    from byzshield.config import KEY_HELP, TrainConfig
    from byzshield.config.overrides import group_options, groups

    defaults = {"approach": "mols", "mode": "coord-median", "attack": "rev_grad"}
    defaults |= {"network": "lenet", "dataset": "digits"}
    lines = [
        "usage: python -m byzshield.train [GROUP=OPTION | KEY=VALUE ...]",
        "       python -m byzshield.train -m KEY=V1,V2 ...        (a sweep: one job per value)",
        "       torchrun --standalone --nproc-per-node K+1 -m byzshield.train ...",
        "",
        "Byzantine-robust training: K workers compute the gradients of the files the",
        "placement gives them, Byzantine workers lie, the server majority-votes each file's",
        "copies and aggregates the winners with a robust rule (README.md).",
        "",
        "groups (GROUP=OPTION; an option's own keys: GROUP.KEY=VALUE, listed by --cfg job):",
    ]
    for group in groups():
        if group == "paper":
            continue
        names = group_options(group)
        default = defaults.get(group)
        extra = f" (default {default})" if default else " (+experiment=NAME)"
        lines.append(f"  {group:<11}{', '.join(names)}{extra}")
    lines += ["", "keys (KEY=VALUE; default in brackets):"]
    for f in dataclasses.fields(TrainConfig):
        if f.name not in KEY_HELP:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # a node: its keys' defaults
            node = f.default_factory()
            default = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(node).items())
        if default is None:
            shown = "null"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default).replace("${now:%Y-%m-%d_%H-%M-%S}", "<time>")
        lines.append(f"  {f.name:<18}{KEY_HELP[f.name]} [{shown}]")
    lines += [
        "",
        "more: --cfg job (the composed config), --hydra-help (Hydra's flags),"
        " docs/configuration.md",
    ]
    return "\n".join(lines)


def sweep_status() -> int:
    """Exit status after Hydra returns: 1 when some multirun job could not start or (the
    lockstep engine) stopped with an error."""
    if FAILED_JOBS:
        print(f"{len(FAILED_JOBS)} job(s) of the sweep failed:", file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def check_train_dir(path: str) -> None:
    """Refuse, in one line, a train_dir that cannot be a run folder: empty, holding a
    comma (Hydra and the launcher would read it as a sweep), an existing file, or a
    place where the folder cannot be created. Creates the folder (Hydra would next)."""
    from pathlib import Path

    if not path.strip():
        raise ValueError("train_dir is empty; give the run's folder, e.g. train_dir=runs/a")
    if "," in path:
        raise ValueError(f"train_dir must not contain a comma, got {path!r}")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"train_dir {path} is an existing file, not a folder")
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun workers write no folder
        return
    if not folder.exists():
        CREATED.append(folder.resolve())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"train_dir {path} cannot be written: {exc.strerror or exc}") from None
    from byzshield.training.runfolder import check_free

    check_free(folder)  # another run's folder: refused before Hydra writes into it


def check_out_dir(path: str, key: str) -> Path:
    """Refuse, in one line (ValueError naming ``key``), an output folder that cannot be
    created or written, before any work: a file in its place or above it, or a
    read-only or unwritable parent. Creates nothing (a command stopped later leaves no
    empty folder)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{key}={path} is an existing file, not a folder")
    existing = folder
    while not existing.exists():  # the deepest part that exists: it must take the rest
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}={path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={path} cannot be written: {existing} is not writable")
    return folder


def launch_torchrun(world_size: int) -> int:
    """Re-run this Hydra job under torchrun with ``world_size`` processes on this machine,
    everything listening on 127.0.0.1 only (``python -m byzshield.comm --standalone``).

    torchrun's agent writes its log and, when a rank fails, its report of every rank to
    ``torchrun.log`` in the run folder; the console gets the ranks' own lines and one
    closing line naming the rank that failed (:func:`byzshield.engines.torchrun.comm.failure_line`).

    torchrun runs in its own session, so a terminal's Ctrl-C reaches this process alone;
    SIGINT, SIGTERM and SIGHUP are passed on to torchrun as one SIGTERM, which stops every
    rank, and the exit code is then 128 + the signal's number."""
    from hydra.core.hydra_config import HydraConfig

    from byzshield.engines.torchrun.comm import REPORT_ENV

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
        f"launching {world_size} processes: python -m byzshield.comm --standalone --nproc-per-node "
        f"{world_size} -m byzshield.train {' '.join(overrides)} "
        f"train_dir={hc.runtime.output_dir}",
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
        report = str(Path(hc.runtime.output_dir) / "torchrun.log")
        env = dict(os.environ, OMP_NUM_THREADS="1", **{REPORT_ENV: report})
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
    """Each rank logs to rank<N>.log in the run folder (created at its first line: the
    server's account of the run, a worker's stop and errors); only rank 0 talks to the
    terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("byzshield")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def drop_empty_job_log(folder: Path) -> None:
    """Close and remove Hydra's job log in ``folder`` (train.log) while it is empty:
    byzshield's loggers write to rank<N>.log (:func:`log_to_folder`), so it would stay
    empty."""
    root = logging.getLogger()
    for h in list(root.handlers):
        path = Path(getattr(h, "baseFilename", "") or ".")
        if isinstance(h, logging.FileHandler) and path.parent.resolve() == folder.resolve():
            try:
                empty = path.stat().st_size == 0
            except OSError:
                continue
            if empty:
                root.removeHandler(h)
                h.close()
                path.unlink(missing_ok=True)
