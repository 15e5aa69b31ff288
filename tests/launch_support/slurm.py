"""A real one-host Slurm cluster on 127.0.0.1 for the Slurm tests: munged, slurmctld and
slurmd from Debian's slurm-wlm, a generated slurm.conf with one node of this machine's
CPUs, all state in a temporary folder; started once per test session, stopped after.

    with LocalSlurm(workdir) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env)

Needs root (slurmd runs jobs as their user, munged needs its key): tests skip with
:func:`slurm_missing_reason` elsewhere. Every daemon listens on 127.0.0.1 only
(``NodeAddr``, ``SlurmctldHost``), on free ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")


def slurm_missing_reason() -> str:
    """Why the Slurm tests cannot run here, or "" if they can."""
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd and munged); tests/run.sh as root"
    missing = [d for d in DAEMONS if not os.path.exists(d)]
    if missing or not shutil.which("sbatch"):
        return "slurm-wlm and munge are not installed (tests/run.sh installs them as root)"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY} (apt-get install munge creates it)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """The cluster; ``env`` is the environment sbatch/srun/scontrol need (SLURM_CONF)."""

    def __init__(self, workdir: Path, *, cpus: int | None = None):
        self.dir = Path(workdir)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname()
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.procs: list[subprocess.Popen] = []

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        d = self.dir
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=byzshield-test",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    "SlurmUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={d / 'munge' / 'munge.socket'}",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/backfill",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "KillWait=5",
                    "InactiveLimit=0",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                    "RealMemory=4000 State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
                    "OverSubscribe=FORCE:16",
                ]
            )
            + "\n"
        )

    def __enter__(self) -> LocalSlurm:
        self._write_conf()
        sock = self.dir / "munge" / "munge.socket"
        self.procs.append(
            subprocess.Popen(
                ["/usr/sbin/munged", "--foreground", "--force", f"--socket={sock}",
                 f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
                 f"--log-file={self.dir / 'munge' / 'munged.log'}",
                 f"--seed-file={self.dir / 'munge' / 'munged.seed'}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
            self.procs.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(self.conf)],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        log = (self.dir / "slurmctld.log").read_text()[-2000:] if self.conf.exists() else ""
        raise RuntimeError(f"the local Slurm cluster did not come up within 60 s: {log}")

    def __exit__(self, *exc) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    def wait(self, job: str, *, timeout: float = 300) -> str:
        """The job's final state (COMPLETED, FAILED, CANCELLED, ...) once it has ended."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["scontrol", "show", "job", "-o", job], env=self.env, capture_output=True, text=True
            ).stdout
            fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
            state = fields.get("JobState", "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                       "REQUEUED", "RESIZING", "SUSPENDED"):  # fmt: skip
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job} still {state} after {timeout:g} s")
