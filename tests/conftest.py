"""Shared helpers: composing the training config and launching real torchrun jobs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# tests/run.sh runs the suite on pytest-xdist workers (--dist loadgroup): the tests of
# these files share a session or module fixture worth starting once (a Slurm cluster,
# sshd hosts with this checkout installed, the moto server, both lockstep engines), so
# each file runs on one worker; the longest go first, so that no worker is left alone
# with one at the end. Every other test goes wherever a worker is free.
GROUPED = ["test_slurm.py", "test_launch_ssh.py", "test_lockstep.py", "test_launch_aws.py"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in GROUPED:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items.sort(key=lambda item: GROUPED.index(item.path.name) if item.path.name in GROUPED else 99)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(
    nproc: int, *overrides: str, standalone: bool = True, extra: tuple[str, ...] = ()
) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if standalone:
        cmd += ["--standalone"]
    return [*cmd, *extra, "--nproc-per-node", str(nproc), "-m", "byzshield.train", *overrides]


def run_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture
def torchrun(tmp_path):
    """Run `torchrun -m byzshield.train` to completion; returns (process, run folder)."""

    def run(nproc: int, *overrides: str, timeout: float = 240, check: bool = True):
        folder = tmp_path / "run"
        proc = subprocess.run(
            torchrun_cmd(nproc, f"train_dir={folder}", *overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=run_env(),
        )
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc, folder

    return run


def read_metrics(folder: Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], [r for r in rows if r.get("event") == "eval"]
