"""Slurm, against a real one-host cluster (tests/launch_support/slurm.py, started once per
session; skipped unless root with slurm-wlm installed): sweeps through Hydra's submitit
launcher, one run across Slurm tasks (python -m byzshield.slurm) equal to a local
torchrun run bit for bit, scancel leaving nothing running, and a requeued job resuming
to the same bits. The plans of --dry-run need no cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_env
from launch_support.slurm import LocalSlurm, slurm_missing_reason

from byzshield.slurm import plan_ranks

MOLS6 = ("approach=mols", "approach.l=3", "approach.r=2", "batch_size=90", "adversary.q=1")
ON_ONE_HOST = ("--tasks-per-node", "2", "--cpus-per-task", "1", "--gloo-socket-ifname", "lo")


def _params(folder: Path) -> dict:
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def _same_params(a: Path, b: Path) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = slurm_missing_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _run(cmd, env, timeout=300, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _submit(slurm, folder: Path, *args: str) -> str:
    env = {**run_env(), **slurm.env}
    proc = _run([sys.executable, "-m", "byzshield.slurm", *args, f"train_dir={folder}"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("submitted batch job ")
    return proc.stdout.split()[3].rstrip(":")


# ------------------------------------------------------------------ plans (no cluster)


def test_ranks_are_split_as_evenly_as_they_go_with_the_server_on_node_0():
    assert plan_ranks(16, 1) == [16]
    assert plan_ranks(16, 4) == [4, 4, 4, 4]
    assert plan_ranks(7, 2) == [4, 3]
    assert plan_ranks(26, 4) == [7, 7, 6, 6]
    with pytest.raises(ValueError, match="--nodes 9 is more than the run's 7 ranks"):
        plan_ranks(7, 9)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path, nodes):
    proc = _run(
        [sys.executable, "-m", "byzshield.slurm", "--nodes", str(nodes), "--dry-run",
         "--partition", "debug", f"train_dir={tmp_path / 'run'}"],
        run_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"16 ranks in {nodes} task" in out and "(rank 0: the parameter server)" in out
    assert f"#SBATCH --ntasks={nodes}" in out and "#SBATCH --partition=debug" in out
    assert f"srun --kill-on-bad-exit=1 --ntasks={nodes}" in out
    assert out.count("--nproc-per-node") == nodes
    assert not (tmp_path / "run").exists()


def test_a_sharded_server_adds_its_ranks_to_the_plan(tmp_path):
    proc = _run(
        [sys.executable, "-m", "byzshield.slurm", "--nodes", "2", "--dry-run",
         "ps_shards=3", f"train_dir={tmp_path / 'run'}"],
        run_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "18 ranks in 2 tasks" in proc.stdout  # K = 15 workers and 3 servers
    assert "ranks 0..8, --nproc-per-node 9 (ranks 0..2: parameter servers, ps_shards=3)" in (
        proc.stdout
    )


def test_bad_slurm_options_are_one_line(tmp_path):
    proc = _run([sys.executable, "-m", "byzshield.slurm", "--dry-run"], run_env())
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: give --nodes N (the tasks the run's ranks are spread over)"
    )
    proc = _run(
        [sys.executable, "-m", "byzshield.slurm", "--nodes", "2", "--dry-run", "engine=simulate"],
        run_env(),
    )
    assert proc.returncode == 2 and "hydra/launcher=submitit_slurm" in proc.stderr


# ------------------------------------------------------------------ a real cluster


@pytest.mark.slow
def test_a_run_across_slurm_tasks_equals_the_local_torchrun_run(slurm, tmp_path):
    """7 ranks (MOLS l=3 r=2) as 4 + 3 over two tasks placed by Slurm, gloo on loopback."""
    common = (*MOLS6, "max_steps=3", "eval_freq=3")
    job = _submit(slurm, tmp_path / "slurm", "--nodes", "2", *ON_ONE_HOST, *common)
    assert slurm.wait(job) == "COMPLETED", (tmp_path / "slurm" / f"slurm-{job}.out").read_text()
    log = (tmp_path / "slurm" / f"slurm-{job}.out").read_text()
    assert "slurm task 0 on " in log and "slurm task 1 on " in log
    local = _run(
        [sys.executable, "-m", "byzshield.train", "engine=torchrun", *common,
         f"train_dir={tmp_path / 'local'}"],
        run_env(),
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-2000:]
    assert _same_params(tmp_path / "slurm", tmp_path / "local")
    a, b = read_metrics(tmp_path / "slurm")[0], read_metrics(tmp_path / "local")[0]
    assert [r["distorted_files"] for r in a] == [r["distorted_files"] for r in b]


def _processes() -> list[tuple[int, int, str]]:
    """(pid, ppid, full command line) of every process; -ww, or ps cuts lines at 80
    columns when its output is not a terminal and a folder at the end goes unseen."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in out.stdout.splitlines()[1:]]
    return [(int(r[0]), int(r[1]), r[2]) for r in rows if len(r) == 3 and "ps -ww" not in r[2]]


def _ranks_of(folder: Path) -> list[str]:
    return [args for _, _, args in _processes() if str(folder) in args]


@pytest.mark.slow
def test_scancel_stops_every_rank_and_leaves_nothing_running(slurm, tmp_path):
    folder = tmp_path / "long"
    job = _submit(slurm, folder, "--nodes", "2", *ON_ONE_HOST, *MOLS6, "max_steps=100000")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # training has started on every rank
        metrics = folder / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail((folder / f"slurm-{job}.out").read_text()[-2000:])
    running = _ranks_of(folder)
    assert sum("byzshield.comm" in args for args in running) == 2, running  # one per task
    assert sum("-m byzshield.train" in args for args in running) >= 2, running
    subprocess.run(["scancel", job], env=slurm.env, check=True)
    assert slurm.wait(job, timeout=120) == "CANCELLED"
    deadline = time.monotonic() + 30
    while _ranks_of(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ranks_of(folder) == []


@pytest.mark.slow
def test_a_requeued_job_resumes_from_its_checkpoint_to_the_same_bits(slurm, tmp_path):
    folder = tmp_path / "requeued"
    common = (*MOLS6, "max_steps=60", "eval_freq=10")
    job = _submit(slurm, folder, "--nodes", "2", "--requeue", *ON_ONE_HOST, *common)
    deadline = time.monotonic() + 120
    while not (folder / "checkpoints" / "step_000010.pt").exists():
        assert time.monotonic() < deadline, (folder / f"slurm-{job}.out").read_text()[-2000:]
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], env=slurm.env, check=True)
    assert slurm.wait(job, timeout=300) == "COMPLETED"
    out = (folder / f"slurm-{job}.out").read_text()
    assert "resuming after step" in out, out[-2000:]
    ref = _run(
        [sys.executable, "-m", "byzshield.train", "engine=simulate", *common,
         f"train_dir={tmp_path / 'ref'}"],
        run_env(),
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert _same_params(folder, tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_slurm", "submitit_local"])
def test_a_sweep_through_the_submitit_launcher_runs_resumes_and_reports(
    request, tmp_path, launcher
):
    """One Slurm job per run (or one local process per run), the simulate engine in each."""
    env = run_env()
    if launcher == "submitit_slurm":
        env = {**env, **request.getfixturevalue("slurm").env}
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "byzshield.train", "-m", f"hydra/launcher={launcher}",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
        "approach=mols,draco_lite", "adversary.q=1", "seed=0,1", "max_steps=3", "eval_freq=3",
        f"train_dir={sweep}",
    ]  # fmt: skip
    if launcher == "submitit_slurm":
        cmd.insert(5, "hydra.launcher.partition=debug")
    first = _run(cmd, env, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) == 4
    for job in jobs:
        assert json.loads((job / "run.json").read_text())["engine"] == "simulate"
        assert read_metrics(job)[1][-1]["step"] == 3
    stamps = [(job / "metrics.jsonl").stat().st_mtime for job in jobs]
    again = _run(cmd, env, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [(job / "metrics.jsonl").stat().st_mtime for job in jobs] == stamps  # nothing redone
    report = _run([sys.executable, "-m", "byzshield.report", str(sweep), "--no-plots"], run_env())
    assert report.returncode == 0 and "4 runs in 2 groups (4 complete)" in report.stdout


@pytest.mark.slow
def test_a_requeued_submitit_job_resumes_to_the_same_bits(slurm, tmp_path):
    """A sweep job that Slurm requeues (preemption) reruns, and its run resumes from the
    newest checkpoint: the same bits as a run never interrupted."""
    sweep = tmp_path / "sweep"
    common = ("max_steps=400", "eval_freq=10", "seed=0")
    cmd = [
        sys.executable, "-m", "byzshield.train", "-m", "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
        "+hydra.launcher.additional_parameters={requeue: true}", *common,
        f"train_dir={sweep}",
    ]  # fmt: skip
    env = {**run_env(), **slurm.env}
    launcher = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = sweep / "0" / "checkpoints" / "step_000010.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
        time.sleep(0.2)
    job = subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=slurm.env, capture_output=True, text=True
    )
    subprocess.run(["scontrol", "requeue", job.stdout.split()[0]], env=slurm.env, check=True)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, out[-2000:] + err[-2000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "resuming after step" in logs
    ref = _run(
        [sys.executable, "-m", "byzshield.train", *common, f"train_dir={tmp_path / 'ref'}"],
        run_env(),
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert _same_params(sweep / "0", tmp_path / "ref")


@pytest.mark.slow
def test_a_node_that_dies_stops_the_run_with_a_line_naming_it(slurm, tmp_path):
    """Task 1's torchrun and its ranks are killed (the node is gone): a line names task 1
    (the server's, or srun's when it stops task 0 first), the job fails and nothing of it
    is left running."""
    import signal

    folder = tmp_path / "dies"
    job = _submit(
        slurm, folder, "--nodes", "2", *ON_ONE_HOST, *MOLS6, "max_steps=100000", "timeout=20"
    )
    deadline = time.monotonic() + 120
    while not ((folder / "metrics.jsonl").exists() and (folder / "metrics.jsonl").stat().st_size):
        assert time.monotonic() < deadline, (folder / f"slurm-{job}.out").read_text()[-2000:]
        time.sleep(0.5)
    rows = _processes()
    agent = next(
        pid
        for pid, _, args in rows
        if "byzshield.comm" in args and "--node-rank 1 " in args and str(folder) in args
    )
    doomed = {agent} | {pid for pid, ppid, _ in rows if ppid == agent}
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    assert slurm.wait(job, timeout=180) in ("FAILED", "CANCELLED")
    log = (folder / f"slurm-{job}.out").read_text()
    # The server names a rank of task 1 when it sees the dead sockets first; when srun's
    # --kill-on-bad-exit stops task 0 first, srun's own line names the task and node.
    named = [ln for ln in log.splitlines() if ln.startswith("error (rank 0): rank ")]
    by_srun = [
        ln for ln in log.splitlines() if ln.startswith("srun: error: ") and ": task 1: " in ln
    ]
    assert (named and " on task 1 on " in named[0]) or by_srun, log[-3000:]
    deadline = time.monotonic() + 30
    while _ranks_of(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ranks_of(folder) == []
