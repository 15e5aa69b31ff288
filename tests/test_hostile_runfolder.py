"""Hostile and unlucky run folders: two runs in one folder, checkpoints that load but are
wrong, a full disk, torn metrics lines, and what a run says about itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_env

from byzshield.engines import lockstep as lockstep_engine
from byzshield.engines.simulate import SimulateEngine, simulate
from byzshield.evaluate import evaluate_checkpoint
from byzshield.evaluate import main as evaluate_main
from byzshield.training.records import interrupted_line
from byzshield.training.runfolder import (
    LOCK,
    PROGRESS,
    CheckpointError,
    FolderInUse,
    check_free,
    save_checkpoint,
)

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9
RUN = (*RAMA, "max_steps=6", "eval_freq=2")  # checkpoints at steps 2, 4 and 6
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 6-step run (checkpoints 2, 4, 6); copy it, never change it."""
    folder = tmp_path_factory.mktemp("base") / "run"
    simulate(RUN, folder)
    return folder


def copy(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    return to


def digest(folder: Path) -> dict:
    return {
        p.relative_to(folder): hashlib.md5(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def model_at(folder: Path, step: int) -> dict:
    path = folder / "checkpoints" / f"step_{step:06d}.pt"
    return torch.load(path, weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_cli(folder: Path, *overrides: str, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "byzshield.train", f"train_dir={folder}", *overrides],
        capture_output=True,
        text=True,
        env=run_env(),
        cwd=folder.parent,
        timeout=timeout,
    )


@pytest.fixture
def holder():
    """Start a process that holds a folder's lock (as a running run does); yields a
    function folder -> its Popen. Killed with SIGKILL at the end."""
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        code = (
            "import sys, time; from pathlib import Path; "
            "from byzshield.training.runfolder import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def fresh_progress():
    PROGRESS.clear()
    yield
    PROGRESS.clear()


# --------------------------------------------------------------------------------------
# Two runs in one folder


def test_a_start_into_a_folder_in_use_is_refused_in_one_line_and_changes_nothing(
    base, tmp_path, holder
):
    folder = copy(base, tmp_path / "run")
    running = holder(folder)
    before = digest(folder)
    in_use = f"train_dir {folder} is in use by another run (pid {running.pid} on host {HOST} since "
    with pytest.raises(FolderInUse, match="^" + in_use.replace("(", r"\(")):
        simulate((*RUN[:-2], "max_steps=8", "eval_freq=2"), folder)
    with pytest.raises(FolderInUse, match="wait for it to end, or use another train_dir"):
        lockstep_engine.lockstep([([*RUN], folder)])
    proc = train_cli(folder, *RUN)  # the command line: refused before Hydra writes there
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {in_use}"), proc.stderr
    assert digest(folder) == before  # metrics, checkpoints, config.json, .hydra, lock


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(base, tmp_path, holder):
    folder = copy(base, tmp_path / "run")
    killed = holder(folder)
    killed.kill()
    killed.wait()
    assert str(killed.pid) in (folder / LOCK).read_text()  # kill -9 leaves the file
    proc = train_cli(folder, *RAMA, "max_steps=8", "eval_freq=2")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(
        f"note: {folder / LOCK} was left by a run that has ended (pid {killed.pid} on host "
        f"{HOST} since "
    )
    assert first.endswith("); taking the folder over")
    assert not (folder / LOCK).exists()  # released at the end
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(8))
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    # what the run says is in its log; Hydra's job log, which nothing writes, is gone
    log = (folder / "rank0.log").read_text()
    assert f"resuming after step 6 from {folder}/checkpoints/step_000006.pt" in log
    assert "test accuracy: top-1" in log and "after 8 steps" in log
    assert not (folder / "train.log").exists()


@contextlib.contextmanager
def _held_run(monkeypatch, folder):
    """A run of RUN into ``folder`` on a thread, held inside its first step while the
    block runs (it holds the folder's lock); yields what it returns once released."""
    started, go = threading.Event(), threading.Event()
    gather = SimulateEngine.gather

    def held_gather(self, step, params, byzantine):
        started.set()
        assert go.wait(120)
        return gather(self, step, params, byzantine)

    monkeypatch.setattr(SimulateEngine, "gather", held_gather)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(result=simulate(RUN, folder)))
    thread.start()
    assert started.wait(120)
    try:
        yield first
    finally:
        go.set()
        thread.join(120)


def test_two_runs_started_at_once_into_one_folder_train_once(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    refused = pytest.raises(FolderInUse, match="in use by another run of this process")
    with _held_run(monkeypatch, folder) as first, refused:
        simulate(RUN, folder)
    assert "result" in first
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(6))  # each step once, in order
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert not (folder / LOCK).exists()


def test_a_lock_naming_another_host_is_refused_with_how_to_remove_it(base, tmp_path):
    folder = copy(base, tmp_path / "run")
    lock = {"pid": 4242, "host": "node-elsewhere", "since": "2026-12-07 10:00:00"}
    (folder / LOCK).write_text(json.dumps(lock))
    before = digest(folder)
    expected = (
        f"train_dir {folder} is in use by a run on another host (pid 4242 on host "
        f"node-elsewhere since 2026-12-07 10:00:00), which cannot be checked from {HOST}; "
        f"if that run has ended, remove {folder / LOCK} and start again"
    )
    with pytest.raises(FolderInUse) as info:
        check_free(folder)  # what the command line asks first
    assert str(info.value) == expected
    with pytest.raises(FolderInUse) as info:
        simulate(RUN, folder)
    assert str(info.value) == expected
    assert digest(folder) == before


def test_a_slurm_job_requeued_onto_another_node_takes_its_own_lock_over(
    base, tmp_path, monkeypatch, capsys
):
    folder = copy(base, tmp_path / "run")
    lock = {"pid": 4242, "host": "node-1", "since": "2026-12-07 10:00:00"}
    (folder / LOCK).write_text(json.dumps({**lock, "slurm_job": "777", "slurm_restart": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # not requeued: another run of the job?
    with pytest.raises(FolderInUse, match="is in use by a run on another host"):
        simulate(RUN, folder)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: the holder was this job
    simulate(RUN, folder, quiet=False)
    assert capsys.readouterr().out.startswith(
        f"note: {folder / LOCK} was left by a run that Slurm requeued (job 777) (pid 4242 on "
        "host node-1 since 2026-12-07 10:00:00); taking the folder over"
    )
    assert not (folder / LOCK).exists()


def test_the_torchrun_server_takes_the_lock_and_every_rank_stops_when_it_is_held(tmp_path, holder):
    from threaded import run_threaded

    tiny = (*RAMA, "max_steps=2", "eval_freq=0", "timeout=20")
    folder = tmp_path / "run"
    folder.mkdir()
    running = holder(folder)
    result, errors = run_threaded(tiny, folder, timeout=20)
    assert isinstance(result, Exception) and "is in use by another run" in str(result), result
    assert f"pid {running.pid}" in str(result)
    assert errors and all("is in use by another run" in str(e) for e in errors.values())
    assert not (folder / "metrics.jsonl").exists()
    running.kill()
    running.wait()
    result, errors = run_threaded(tiny, tmp_path / "free", timeout=20)
    assert not errors and isinstance(result, dict), (result, errors)
    assert not (tmp_path / "free" / LOCK).exists()  # the server gave it back


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_gives_its_folder_back(tmp_path, signum):
    folder = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzshield.train", f"train_dir={folder}", *RAMA]
        + ["max_steps=100000", "eval_freq=2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 240
    while not (folder / "checkpoints" / "step_000002.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (folder / LOCK).exists()
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    assert proc.returncode == (-signal.SIGTERM if signum == signal.SIGTERM else 130)
    assert not (folder / LOCK).exists()


def test_a_lockstep_sweep_job_whose_folder_is_in_use_is_refused_without_marking_it(
    tmp_path, holder
):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    running = holder(sweep / "0")
    proc = subprocess.run(
        [sys.executable, "-m", "byzshield.train", "-m", "engine=lockstep", *RAMA]
        + ["seed=0,1", "max_steps=2", "eval_freq=0", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        env=run_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"is in use by another run (pid {running.pid}" in proc.stderr
    assert not (sweep / "0" / "refused.txt").exists()  # the running job's folder
    assert not (sweep / "0" / "metrics.jsonl").exists()
    assert read_metrics(sweep / "1")[1][-1]["step"] == 2  # the other job trained
    assert f"{sweep / '1'}: test accuracy: top-1" in proc.stdout  # a line per run


# --------------------------------------------------------------------------------------
# Checkpoints that load but are wrong


def _first(state: dict) -> str:
    return next(iter(state["model"]))


def _other_model(state):
    state["model"][_first(state)] = torch.zeros(3, 3)


def _nan_weights(state):
    state["model"][_first(state)].fill_(float("nan"))


def _inf_momentum(state):
    next(iter(state["optimizer"]["state"].values()))["momentum_buffer"].fill_(float("inf"))


def _step_unlike_name(state):
    state["step"] = 1000


def _no_optimizer(state):
    del state["optimizer"]


def _missing_weight(state):
    del state["model"][_first(state)]


DAMAGE = {
    "another model": (_other_model, "does not fit the model (conv1.weight is 3x3 there, 20x"),
    "NaN weights": (_nan_weights, "holds non-finite values (model.conv1.weight)"),
    "Inf momentum": (_inf_momentum, "holds non-finite values (optimizer.state.0.momentum"),
    "step unlike its name": (_step_unlike_name, "says step 1000 but its name says step 6"),
    "no optimizer": (_no_optimizer, "holds no optimizer"),
    "a missing weight": (_missing_weight, "does not fit the model (LeNet: it lacks conv1.w"),
    "truncated": (None, "is unreadable ("),
}


def damage(path: Path, how) -> None:
    if how is None:
        path.write_bytes(path.read_bytes()[:1000])
        return
    state = torch.load(path, weights_only=True)
    how(state)
    torch.save(state, path)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_bad_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(
    base, tmp_path, capsys, case
):
    how, reason = DAMAGE[case]
    folder = copy(base, tmp_path / "run")
    newest = folder / "checkpoints" / "step_000006.pt"
    damage(newest, how)
    capsys.readouterr()
    simulate(RUN, folder, quiet=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"warning: checkpoint {newest} {reason}"), out[0]
    assert out[0].endswith("; renamed step_000006.pt.corrupt, trying the previous one")
    assert f"resuming after step 4 from {folder}/checkpoints/step_000004.pt" in out
    assert out[-1].endswith("after 6 steps")
    assert (folder / "checkpoints" / "step_000006.pt.corrupt").exists()
    assert same(model_at(folder, 6), model_at(base, 6))  # retrained to the same bits
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(6))
    assert [e["step"] for e in evals] == [2, 4, 6]


def test_a_non_finite_checkpoint_is_never_called_the_last_good_one(base, tmp_path, capsys):
    folder = copy(base, tmp_path / "run")
    damage(folder / "checkpoints" / "step_000006.pt", _nan_weights)
    simulate((*RAMA, "max_steps=8", "eval_freq=2"), folder, quiet=False)
    out = capsys.readouterr().out
    assert "became non-finite" not in out and "after 8 steps" in out


def test_evaluate_names_each_bad_checkpoint_in_one_line_and_goes_on(base, tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(base / "checkpoints" / "step_000002.pt", folder)
    expected = []
    for k, case in enumerate(("another model", "NaN weights", "step unlike its name"), 2):
        how, reason = DAMAGE[case]
        path = folder / f"step_{2 * k:06d}.pt"
        state = torch.load(base / "checkpoints" / "step_000006.pt", weights_only=True)
        state["step"] = 2 * k
        how(state)
        torch.save(state, path)
        expected.append(f"error: {path} {reason.replace('step 6', f'step {2 * k}')}")
        with pytest.raises(ValueError, match="^" + str(path)):
            evaluate_checkpoint(path)
    assert evaluate_main([str(folder.parent)]) == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(folder / "step_000002.pt")]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(a.startswith(b) for a, b in zip(lines, expected, strict=True))


def test_a_lowered_max_steps_reports_the_model_as_it_is_and_trains_nothing(base, tmp_path, capsys):
    folder = copy(base, tmp_path / "run")
    before = digest(folder)
    result = simulate((*RAMA, "max_steps=4", "eval_freq=2"), folder, quiet=False)
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == (
        "the run is complete: its model has 6 steps, beyond max_steps=4; nothing to do (a "
        "run is never trained backwards; raise max_steps to train on)"
    )
    assert out[-1].startswith("test accuracy: top-1") and out[-1].endswith("after 6 steps")
    final = read_metrics(base)[1][-1]
    assert result == {k: final[k] for k in ("top1", "top5", "test_loss")}
    changed = {k for k in before if before[k] != digest(folder).get(k)}
    assert changed <= {Path("run.json")}  # the command's record (max_steps=4); nothing else


# --------------------------------------------------------------------------------------
# A full disk


def test_checkpoints_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(a, b):
        synced.append(("rename", Path(a).name, Path(b).name))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path, 3, {"step": 3, "model": {"w": torch.ones(2)}})
    assert synced == [
        str(tmp_path / ".step_000003.pt.tmp"),
        ("rename", ".step_000003.pt.tmp", "step_000003.pt"),
        str(tmp_path),
    ]


def test_a_half_written_checkpoint_of_a_crash_is_removed_at_the_next_start(base, tmp_path, capsys):
    folder = copy(base, tmp_path / "run")
    leftover = folder / "checkpoints" / ".step_000008.pt.tmp"
    leftover.write_bytes(b"PK" * 100)
    simulate((*RAMA, "max_steps=8", "eval_freq=2"), folder, quiet=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"note: removed {leftover}, a checkpoint left half-written by a crash"
    assert not leftover.exists() and (folder / "checkpoints" / "step_000008.pt").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MB tmpfs: one LeNet checkpoint (1.05 MB) fits, two do not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill ({exc}); needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_goes_on(small_disk):
    folder = small_disk / "run"
    ovs = (*RAMA, "max_steps=4", "eval_freq=2")
    for _ in range(2):  # the rerun fails at the same place, not on a leftover
        with pytest.raises(CheckpointError) as info:
            simulate(ovs, folder)
        message = str(info.value)
        assert message.startswith(f"cannot write {folder}/checkpoints/step_000004.pt: ")
        assert "free there; a checkpoint needs about 1.1 MB" in message and "\n" not in message
        assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step_000002.pt"]
        assert not (folder / LOCK).exists()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    simulate(ovs, folder)  # room again: resumes from step 2 and finishes
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(4)) and [e["step"] for e in evals] == [2, 4]


# --------------------------------------------------------------------------------------
# Metrics files


def test_an_evaluation_lost_with_a_torn_line_is_written_back_on_resume(base, tmp_path, capsys):
    folder = copy(base, tmp_path / "run")
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 6, "event": "eval", **json.loads(lines[-1])}
    (folder / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    simulate((*RAMA, "max_steps=8", "eval_freq=2"), folder, quiet=False)
    assert (
        f"note: metrics.jsonl had lost the evaluation at step 6; written back from "
        f"{folder}/checkpoints/step_000006.pt" in capsys.readouterr().out
    )
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(8))
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    assert evals[2] == json.loads(lines[-1])


# --------------------------------------------------------------------------------------
# What an interrupted start says


def test_ctrl_c_while_a_resumed_run_starts_says_where_it_stands(base, tmp_path, monkeypatch):
    folder = copy(base, tmp_path / "run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SimulateEngine, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate((*RAMA, "max_steps=8", "eval_freq=2"), folder)
    assert interrupted_line() == (
        f"interrupted during start-up; nothing new was trained ({folder} stays at step 6, "
        f"{folder}/checkpoints/step_000006.pt); rerun the same command to resume"
    )
    assert not (folder / LOCK).exists()


def test_ctrl_c_while_python_loads_names_the_step_a_resumed_folder_stays_at(base, tmp_path):
    folder = copy(base, tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzshield.train", f"train_dir={folder}", *RAMA, "max_steps=8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
        cwd=tmp_path,
    )
    time.sleep(1.0)  # torch and Hydra still loading
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip() == (
        f"interrupted during start-up; nothing new was trained ({folder} stays at step 6, "
        f"{folder}/checkpoints/step_000006.pt); rerun the same command to resume"
    )


def test_a_sweep_job_refused_by_the_lock_puts_back_the_holders_hydra_folder(tmp_path, monkeypatch):
    """A job of a sweep started into a folder another run holds: Hydra rewrote .hydra/
    before the lock was checked; the refusal puts back the holder's (a report reads the
    run's config from there)."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- adversary.q=2\n")
    with _held_run(monkeypatch, folder):
        (folder / ".hydra" / "overrides.yaml").write_text("- adversary.q=4\n")  # Hydra's
        with pytest.raises(FolderInUse, match="in use by another run of this process"):
            simulate(RUN, folder)
        assert (folder / ".hydra" / "overrides.yaml").read_text() == "- adversary.q=2\n"
