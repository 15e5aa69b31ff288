"""Real multi-process runs of `torchrun -m byzshield.train` (gloo on 127.0.0.1): what only
processes can show. The engines' bit-identity is in test_engines.py; server logic is
tested in process (test_step.py, test_trainer.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, read_metrics, run_env, torchrun_cmd

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


def test_bad_override_is_one_line_from_rank_0_only(torchrun):
    proc, _ = torchrun(10, *RAMA, "lr=abc", check=False, timeout=120)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert ours == [
        "error: bad config override: Error merging override lr=abc (Value 'abc' "
        "of type 'str' could not be converted to Float)"
    ]


def test_wrong_process_count_stops_with_one_line_naming_nproc_per_node(torchrun):
    proc, _ = torchrun(3, *RAMA, check=False, timeout=120)
    assert proc.returncode != 0
    assert "run torchrun --nproc-per-node 10" in proc.stderr
    assert "Traceback" not in proc.stderr.split("run torchrun --nproc-per-node 10")[0]


def test_hydra_multirun_runs_every_job_in_its_own_folder(tmp_path):
    folder = tmp_path / "sweep"
    proc = subprocess.run(
        torchrun_cmd(
            10,
            "-m",
            f"train_dir={folder}",
            *RAMA,
            "mode=coord-median,mean",
            "max_steps=2",
            "eval_freq=0",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        steps, evals = read_metrics(folder / job)
        assert len(steps) == 2 and len(evals) == 1
    assert (folder / "0" / ".hydra" / "overrides.yaml").read_text().count("mode=coord-median")
    assert "mode=mean" in (folder / "1" / ".hydra" / "overrides.yaml").read_text()


def test_two_torchrun_agents_form_one_multi_node_job(tmp_path):
    port = free_port()
    folder = tmp_path / "mn"
    common = (
        "approach=baseline",
        "approach.K=3",
        "batch_size=30",
        "mode=mean",
        "attack=none",
        "max_steps=3",
        "eval_freq=0",
        f"train_dir={folder}",
    )
    procs = [
        subprocess.Popen(
            torchrun_cmd(
                2,
                *common,
                standalone=False,
                extra=(
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(i),
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    "--rdzv-id",
                    "mn-test",
                ),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=run_env(),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    steps, _ = read_metrics(folder)
    assert len(steps) == 3
    assert "test accuracy" in outs[0][0]


def _rank_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the byzshield.train processes whose command line has ``marker``."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if marker not in cmd or "byzshield.train" not in cmd or "torch.distributed.run" in cmd:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(pid)
    return found


@pytest.mark.parametrize("fault", ["hang", "crash"])
def test_a_hung_or_crashed_worker_stops_the_run_naming_its_rank(tmp_path, fault):
    folder = tmp_path / f"fault-{fault}"
    proc = subprocess.Popen(
        torchrun_cmd(
            10, f"train_dir={folder}", *RAMA, "max_steps=100000", "eval_freq=2", "timeout=5"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=run_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ckpts = list((folder / "checkpoints").glob("step_*.pt"))
            if len(ckpts) >= 2:
                break
            time.sleep(0.5)
        pids = _rank_pids(str(folder))
        assert 4 in pids and 0 in pids, pids
        os.kill(pids[4], signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
        t0 = time.monotonic()
        if fault == "hang":
            while time.monotonic() - t0 < 60:  # the server gives up after timeout=5 s
                try:
                    os.kill(pids[0], 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            os.kill(pids[4], signal.SIGCONT)  # let torchrun's SIGTERM reach it
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert elapsed < 60
    if fault == "hang":
        assert "rank 4 (worker 3) did not answer within 5 s" in err
    else:
        assert "rank 4" in err or "rank: 4" in err
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(last, weights_only=True)  # the last checkpoint is intact
    assert state["step"] >= 2
