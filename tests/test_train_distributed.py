"""Real multi-process runs of `torchrun -m byzshield.train` (gloo on 127.0.0.1): what only
processes can show (a failing, hung or lying rank; signals; sockets). The engines'
bit-identity is in test_engines.py; server logic is tested in process (test_step.py,
test_trainer.py); the wire format in test_protocol.py and test_comm.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, read_metrics, run_env, torchrun_cmd
from test_comm import descendants, listening, only_loopback

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


@pytest.mark.slow  # in process: test_startup.py, test_train_cli.py
def test_bad_override_is_one_line_from_rank_0_only(torchrun):
    proc, _ = torchrun(10, *RAMA, "lr=abc", check=False, timeout=120)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert ours == [
        "error: bad config override: Error merging override lr=abc (Value 'abc' "
        "of type 'str' could not be converted to Float)"
    ]


@pytest.mark.slow
def test_wrong_process_count_stops_with_one_line_naming_nproc_per_node(torchrun):
    proc, _ = torchrun(3, *RAMA, check=False, timeout=120)
    assert proc.returncode != 0
    assert "run torchrun --nproc-per-node 10" in proc.stderr
    assert "Traceback" not in proc.stderr.split("run torchrun --nproc-per-node 10")[0]
    # torchrun's own report ends with the root cause: the same line, not a traceback hint
    tail = [ln for ln in proc.stderr.strip().splitlines() if not set(ln) <= {"="}][-1]
    assert "run torchrun --nproc-per-node 10" in tail
    # and lists rank 0 as the only rank that failed by itself: the others exit quietly (it
    # used to list all ten). On a loaded machine a rank still importing when rank 0 ends
    # is stopped by torchrun and listed with SIGTERM, which is torchrun's doing, not a failure.
    others = proc.stderr.split("Root Cause")[0]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", others)
    # (a rank that reached the same refusal before rank 0's note exits 2 with the same line)
    assert "<NO_OTHER_FAILURES>" in others or set(codes) <= {"-15", "2"}, proc.stderr[-4000:]
    assert not (proc.stdout + proc.stderr).count("Traceback") > 1  # torchrun's own only


@pytest.mark.slow
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


@pytest.mark.slow
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
            if marker not in cmd or "byzshield.train" not in cmd or "distributed.run" in cmd:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Run:
    """A training command started in the background, its output in files (readable at
    any time, for assertion messages), found by its run folder."""

    def __init__(self, cmd: list[str], folder: Path, cwd: Path, **env: str):
        self.folder = folder
        self.out, self.err = cwd / "stdout.txt", cwd / "stderr.txt"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, text=True, cwd=cwd, env={**run_env(), **env}
            )

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, what: str, condition, timeout: float = 240):
        """Poll ``condition()`` until it is truthy; fail with the run's stderr if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            value = condition()
            if value:
                return value
            if exited:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"{what}: not seen (exit {self.proc.poll()}); stderr:\n" + self.stderr()[-4000:]
        )

    def ranks(self, world: int) -> dict[int, int]:
        def found() -> dict[int, int] | None:
            pids = _rank_pids(str(self.folder))
            return pids if len(pids) == world else None

        return self.wait_for(f"{world} rank processes", found)

    def checkpoints(self, count: int) -> list[Path]:
        def found() -> list[Path] | None:
            paths = sorted(self.folder.glob("checkpoints/step_*.pt"))
            return paths if len(paths) >= count else None

        return self.wait_for(f"{count} checkpoints", found)

    def steps(self, count: int) -> None:
        metrics = self.folder / "metrics.jsonl"

        def found() -> bool:
            return metrics.exists() and len(metrics.read_text().splitlines()) >= count

        self.wait_for(f"{count} steps", found)

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


DETOX = ("approach=draco_lite", "approach.K=6", "approach.r=3", "batch_size=60", "mode=mean")
TINY = ("approach=baseline", "approach.K=3", "batch_size=30", "mode=mean", "attack=none")


@pytest.mark.slow  # tests/test_hostile_workers.py has the late worker in-process
def test_a_hung_worker_is_dropped_and_the_run_finishes(tmp_path):
    """A worker stopped (SIGSTOP) is dropped at the server's deadline and the run goes on
    to the end; once resumed, the stopped worker learns it was dropped and exits 0, so
    torchrun succeeds: processes that hang are what the server can drop (a process that
    dies is torchrun's agent's to see: it stops every rank)."""
    folder = tmp_path / "run"
    run = Run(
        torchrun_cmd(7, f"train_dir={folder}", *DETOX, "max_steps=40", "eval_freq=0", "timeout=10"),
        folder,
        tmp_path,
    )
    try:
        pids = run.ranks(7)
        run.steps(2)
        os.kill(pids[2], signal.SIGSTOP)  # worker 1
        run.wait_for("the server's end", lambda: not _alive(pids[0]), 180)
        os.kill(pids[2], signal.SIGCONT)
        code = run.finish(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[2], signal.SIGCONT)
        if run.proc.poll() is None:
            run.proc.kill()
    out, err = run.out.read_text(), run.stderr()
    assert code == 0, err[-4000:]
    dropped = [ln for ln in out.splitlines() if "is dropped" in ln]
    assert len(dropped) == 1 and re.match(
        r"step \d+: rank 2 \(worker 1\) did not answer within 10 s \(timeout\); worker 1 is "
        r"dropped for the rest of the run",
        dropped[0],
    ), out[-4000:]
    steps, _ = read_metrics(folder)
    assert len(steps) == 40 and steps[-1]["dropped_workers"] == [1]
    assert "did not answer within 10 s" in (folder / "rank0.log").read_text()
    assert "the parameter server dropped this worker" in (folder / "rank2.log").read_text()


@pytest.mark.slow
def test_a_killed_worker_ends_the_launcher_run_with_one_line_naming_its_rank(tmp_path):
    """torchrun's agent stops every rank when one dies; `python -m byzshield.train
    engine=torchrun` ends with one line naming it, torchrun's report in the run folder."""
    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "byzshield.train", "engine=torchrun", f"train_dir={folder}"]
    run = Run([*cmd, *TINY, "max_steps=100000", "eval_freq=0"], folder, tmp_path)
    try:
        pids = run.ranks(4)
        run.steps(2)
        os.kill(pids[2], signal.SIGKILL)
        code = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    err = run.stderr().strip().splitlines()
    report = folder / "torchrun.log"
    assert code == 1 and err == [
        f"torchrun: rank 2 was killed by SIGKILL; every rank was stopped (torchrun's report: "
        f"{report})"
    ], err
    assert "byzshield.train FAILED" in report.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("message", "extra"), [("payload", -10), ("header", 10), ("float64", 0)])
def test_a_worker_reply_of_the_wrong_length_is_dropped_and_the_run_finishes(
    tmp_path, message, extra
):
    """A payload's header announces the right length (a lying worker); gloo alone would
    accept a short message with stale memory in the rest and abort the server on a long
    one (float64: the same values, twice the bytes). The server drops the worker and
    finishes; the dropped worker exits 0 when the server is gone."""
    folder = tmp_path / "run"
    cmd = torchrun_cmd(4, f"train_dir={folder}", *TINY, "max_steps=5", "eval_freq=0")
    script = str(Path(__file__).with_name("faulty_train.py"))
    cmd[cmd.index("-m", cmd.index("--nproc-per-node")) : cmd.index("byzshield.train") + 1] = [
        script
    ]
    faulty = {"FAULTY_RANK": "2", "FAULTY_EXTRA": str(extra), "FAULTY_MESSAGE": message}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**run_env(), **faulty}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    what = {"payload": "payload without the end marker", "header": "reply header longer"}
    dropped = [ln for ln in proc.stdout.splitlines() if "is dropped" in ln]
    assert len(dropped) == 1, proc.stdout[-4000:]
    assert dropped[0].startswith(
        f"step 0: rank 2 (worker 1) sent a {what.get(message, 'payload longer')}"
    ), dropped
    steps, _ = read_metrics(folder)
    assert [s["dropped_workers"] for s in steps] == [[1]] * 5
    assert "SIGABRT" not in proc.stderr and "exitcode  : -6" not in proc.stderr


@pytest.mark.slow
def test_a_hung_server_is_named_by_every_worker_with_the_timeout(tmp_path):
    folder = tmp_path / "run"
    run = Run(
        torchrun_cmd(
            4, f"train_dir={folder}", *TINY, "max_steps=100000", "eval_freq=0", "timeout=5"
        ),
        folder,
        tmp_path,
    )
    try:
        pids = run.ranks(4)
        run.steps(2)
        os.kill(pids[0], signal.SIGSTOP)
        t0 = time.monotonic()
        run.wait_for("the workers' exit", lambda: not any(_alive(pids[r]) for r in (1, 2, 3)), 60)
        elapsed = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGCONT)  # torchrun's SIGTERM then ends it
        run.finish()
    err = run.stderr()
    assert run.proc.returncode != 0 and elapsed < 30, err[-4000:]
    for rank in (1, 2, 3):  # twice the timeout: the server may be waiting for a late worker
        line = f"error (rank {rank}): the parameter server (rank 0) did not answer within 10 s"
        assert f"{line} (2 x timeout)" in err, err[-4000:]  # on the console (torchrun's stderr)
        assert line in (folder / f"rank{rank}.log").read_text()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """`python -m byzshield.train engine=torchrun` (it starts torchrun itself), running
    with a checkpoint written; stopped at the end if a test has not stopped it."""
    tmp = tmp_path_factory.mktemp("launched")
    folder = tmp / "run"
    cmd = [sys.executable, "-m", "byzshield.train", "engine=torchrun", f"train_dir={folder}"]
    run = Run([*cmd, *TINY, "max_steps=100000", "eval_freq=5"], folder, tmp)
    tree: set[int] = set()
    try:
        run.pids = run.ranks(4)
        tree = descendants(run.proc.pid)
        run.checkpoints(1)
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            run.finish(timeout=60)
        for pid in tree:  # whatever a failed test left behind, if still this run's
            with contextlib.suppress(OSError):
                if _alive(pid) and str(folder) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_launcher_run_listens_on_loopback_only(launched):
    torchrun = descendants(launched.proc.pid) - {launched.proc.pid} - set(launched.pids.values())
    pids = descendants(launched.proc.pid)
    addresses = listening(pids)
    assert torchrun and set(launched.pids.values()) <= pids
    assert len(addresses) == 2 + 4 and only_loopback(addresses), addresses  # stores + gloo


@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_torchrun_and_every_rank_keeping_the_checkpoint(launched):
    everything = descendants(launched.proc.pid)
    launched.proc.send_signal(signal.SIGTERM)
    code = launched.finish(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in everything):
        time.sleep(0.2)
    err = launched.stderr()
    assert code == 128 + signal.SIGTERM, err[-4000:]
    assert not [p for p in everything if _alive(p)], err[-4000:]
    assert not _rank_pids(str(launched.folder))
    assert "stopped by SIGTERM: torchrun and every rank have exited" in err
    newest = sorted(launched.folder.glob("checkpoints/step_*.pt"))[-1]
    assert torch.load(newest, weights_only=True)["step"] >= 5


@pytest.mark.slow
def test_plain_torchrun_with_the_default_train_dir_makes_exactly_one_folder(tmp_path):
    """Every rank resolves the default runs/<time> itself, seconds apart; only the server
    writes a folder (workers used to leave empty siblings)."""
    proc = subprocess.run(
        torchrun_cmd(10, *RAMA, "max_steps=2", "eval_freq=0"),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "metrics.jsonl").exists()
