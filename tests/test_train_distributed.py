"""Real multi-process runs of `torchrun -m byzshield.train` (gloo on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, read_metrics, run_env, torchrun_cmd
from hydra import compose, initialize_config_module

from byzshield.adversary import distorted_files, worst_case
from byzshield.aggregators import aggregate
from byzshield.config import register_schema, validate
from byzshield.data import load_dataset
from byzshield.networks import build_network
from byzshield.worker import file_gradients, flat_params

register_schema()
RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


def spec_of(*overrides: str):
    with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
        return validate(compose(config_name="config", overrides=list(overrides)))


def test_one_distributed_step_equals_the_single_process_computation(torchrun):
    overrides = (*RAMA, "attack=none", "mode=coord-median", "max_steps=1", "eval_freq=0", "seed=3")
    _, folder = torchrun(10, *overrides)
    state = torch.load(next((folder / "checkpoints").glob("step_*.pt")), weights_only=False)

    spec = spec_of(*overrides)
    torch.set_num_threads(1)
    data = load_dataset("digits", root="data", download=False, train=True)
    torch.manual_seed(3)
    model = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    grads, _ = file_gradients(
        model, data, tuple(range(9)), seed=3, step=0, batch_size=90, num_files=9
    )
    value = aggregate("coord-median", grads, f=spec.aggregator_f).value
    opt = torch.optim.SGD(model.parameters(), lr=spec.train.lr, momentum=spec.train.momentum)
    offset = 0
    for p in model.parameters():
        p.grad = value[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    opt.step()
    reference = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    reference.load_state_dict(state["model"])
    assert torch.equal(flat_params(model), flat_params(reference))


def test_worst_case_attack_distorts_exactly_c_max_files_every_step(torchrun):
    proc, folder = torchrun(
        10, *RAMA, "attack=rev_grad", "attack.q=3", "max_steps=4", "eval_freq=0"
    )
    steps, evals = read_metrics(folder)
    spec = spec_of(*RAMA, "attack=rev_grad", "attack.q=3")
    c_max = worst_case(spec.placement, 3).c_max
    assert c_max == 3 and len(steps) == 4 and len(evals) == 1
    for row in steps:
        assert row["distorted"] == c_max
        # the vote removed everything it should have: only the files the Byzantine set
        # controls reached the aggregator corrupted
        assert row["distorted_files"] == distorted_files(spec.placement, row["byzantine"])
        assert row["all_strict"] and row["bytes_received"] > 0
        for key in ("compute_s", "communication_s", "vote_s", "aggregation_s", "update_s"):
            assert row[key] >= 0
    assert "test accuracy: top-1" in proc.stdout


def test_short_training_under_attack_beats_chance_by_far(torchrun):
    proc, folder = torchrun(
        10, *RAMA, "attack=alie", "attack.q=3", "max_steps=60", "eval_freq=30", timeout=400
    )
    _, evals = read_metrics(folder)
    assert [e["step"] for e in evals] == [30, 60]
    assert evals[-1]["top1"] > 0.6, evals  # chance is 0.1
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "step_000030.pt",
        "step_000060.pt",
    ]
    assert (folder / "rank0.log").exists() and (folder / "rank9.log").exists()
    # the separate evaluator reproduces the in-run evaluation from the checkpoints
    from byzshield.evaluate import checkpoints, evaluate_checkpoint

    again = [evaluate_checkpoint(p) for p in checkpoints(folder)]
    assert [(e["step"], e["top1"]) for e in again] == [(e["step"], e["top1"]) for e in evals]


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
    state = torch.load(last, weights_only=False)  # the last checkpoint is intact
    assert state["step"] >= 2
