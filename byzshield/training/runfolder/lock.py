"""One run per folder: ``train_dir/.lock``, an ``flock`` on a file naming its holder.

    lock = RunLock(Path("runs/a"))
    note = lock.acquire()   # FolderInUse naming the holder, or a note on a stale lock
    ...
    lock.release()

:func:`byzshield.training.runfolder.prepare` takes it and keeps it in this process's registry
until :func:`release` (or the process's end, SIGTERM included).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from byzshield.training.runfolder.files import FolderInUse

LOCK = ".lock"
"""The lock file in a run folder."""


def _host() -> str:
    return socket.gethostname()


def _slurm() -> tuple[str | None, int]:
    """This process's Slurm job id and how often Slurm requeued it (None, 0 outside)."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return os.environ.get("SLURM_JOB_ID"), int(restarts) if restarts.isdigit() else 0


@dataclass(frozen=True)
class _Holder:
    """What a lock file says about the run holding it."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None
    slurm_job: str | None = None
    slurm_restart: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> _Holder | None:
        """None for an empty file (just created); fields None when unreadable."""
        if not raw.strip():
            return None
        try:
            data = json.loads(raw)
            pid, restart = data.get("pid"), data.get("slurm_restart")
            return cls(
                pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                str(data["host"]) if data.get("host") else None,
                str(data["since"]) if data.get("since") else None,
                str(data["slurm_job"]) if data.get("slurm_job") else None,
                restart if isinstance(restart, int) and not isinstance(restart, bool) else 0,
            )
        except (ValueError, AttributeError):
            return cls()

    @classmethod
    def read(cls, path: Path) -> _Holder | None:
        try:
            return cls.parse(path.read_bytes())
        except OSError:
            return None

    @property
    def here(self) -> bool:
        return self.host is None or self.host == _host()

    @property
    def requeued(self) -> bool:
        """Whether this process is the same Slurm job, requeued since the holder wrote
        the lock: Slurm runs a job once at a time, so that holder has ended."""
        job, restart = _slurm()
        return self.slurm_job is not None and self.slurm_job == job and restart > self.slurm_restart

    def describe(self) -> str:
        parts = [f"pid {self.pid if self.pid is not None else '?'}"]
        parts.append(f"on host {self.host or '?'}")
        if self.since:
            parts.append(f"since {self.since}")
        return " ".join(parts)


def _in_use(folder: Path, holder: _Holder | None) -> str:
    lock = folder / LOCK
    if holder is None:
        return f"train_dir {folder} is in use by another run (its lock {lock} is held)"
    if holder.here and holder.pid == os.getpid():
        return (
            f"train_dir {folder} is in use by another run of this process (pid "
            f"{holder.pid}); two runs cannot share a folder"
        )
    if holder.here:
        return (
            f"train_dir {folder} is in use by another run ({holder.describe()}); wait for "
            f"it to end, or use another train_dir"
        )
    return (
        f"train_dir {folder} is in use by a run on another host ({holder.describe()}), "
        f"which cannot be checked from {_host()}; if that run has ended, remove {lock} "
        f"and start again"
    )


def _flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder unlinks it on release)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock of one run folder, ``folder/.lock``: an exclusive ``flock`` on the file,
    whose content (JSON: pid, host, since, command; under Slurm the job id and its
    requeue count) names the holder. The kernel frees an flock when its process ends
    however it ends, so a lock file whose flock is free is stale; on a shared file
    system (NFS) the flock is a lock of the server's lock manager, and a file naming
    another host is not taken over, unless it was written by this very Slurm job
    before Slurm requeued it (possibly onto another node)."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / LOCK
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when it took over a dead holder's lock file.
        Raises FolderInUse naming the holder."""
        busy = 0
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                got = _flock(fd, fcntl.LOCK_EX)
                if got and _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if got:  # the holder released (unlinked) the file meanwhile: the next one
                continue
            busy += 1
            if busy >= 5:  # held: a probe (check_free) holds it for microseconds only
                raise FolderInUse(_in_use(self.folder, _Holder.read(self.path)))
            time.sleep(0.1)
        try:
            old = _Holder.parse(os.pread(fd, 1 << 16, 0))
            if old is not None and not old.here and not old.requeued:
                raise FolderInUse(_in_use(self.folder, old))
            job, restart = _slurm()
            record = {
                "pid": os.getpid(),
                "host": _host(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.orig_argv)[:500],
                **({"slurm_job": job, "slurm_restart": restart} if job else {}),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # frees the flock; the file stays as it was found
            raise
        self.fd = fd
        if old is None:
            return None
        if not old.here:
            ended = f"Slurm requeued (job {old.slurm_job})"
        else:
            ended = "has ended" if old.pid is None or not _alive(old.pid) else "no longer holds it"
        return (
            f"note: {self.path} was left by a run that {ended} ({old.describe()}); "
            f"taking the folder over"
        )

    def release(self) -> None:
        """Remove the lock file and free the lock (at most once)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a read-only folder: the flock is freed all the same
        finally:
            os.close(self.fd)
            self.fd = None


def check_free(folder: Path) -> None:
    """Raise FolderInUse when a live run holds ``folder`` (or a run on another host may):
    a read-only look, without taking the lock (the command line asks before Hydra
    writes into the folder; :func:`prepare` takes the lock)."""
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        held = not _flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    holder = _Holder.read(path)
    if held or (holder is not None and not holder.here and not holder.requeued):
        raise FolderInUse(_in_use(folder, holder))


_HELD: dict[Path, RunLock] = {}
_SIGTERM = None  # the handler in place before ours, while a lock is held


def _release_all() -> None:
    for folder in list(_HELD):
        release(folder)


def _on_sigterm(signum, frame) -> None:  # pragma: no cover - the process ends here
    """SIGTERM (torchrun stopping its ranks, Slurm's scancel): remove the lock files,
    then end as SIGTERM ends a process (the kernel frees the flocks anyway)."""
    _release_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def keep(folder: Path, lock: RunLock) -> None:
    """Hold ``lock`` (taken on ``folder``) until :func:`release` or the process's end;
    SIGTERM then removes the lock file before the process ends."""
    global _SIGTERM
    _HELD[folder.resolve()] = lock
    main = threading.current_thread() is threading.main_thread()
    if _SIGTERM is None and main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _SIGTERM = signal.signal(signal.SIGTERM, _on_sigterm)


def release(folder: Path) -> None:
    """Give back the lock :func:`prepare` took on ``folder`` (the process's end gives
    back the rest)."""
    global _SIGTERM
    lock = _HELD.pop(Path(folder).resolve(), None)
    if lock is not None:
        lock.release()
    if not _HELD and _SIGTERM is not None:
        with contextlib.suppress(ValueError):  # not the main thread: leave it
            signal.signal(signal.SIGTERM, _SIGTERM)
            _SIGTERM = None


atexit.register(_release_all)
