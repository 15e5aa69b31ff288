"""Nothing lost: resume bit-identical to an uninterrupted run, refusing another config,
corrupt and unwritable checkpoints, a model that becomes non-finite."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_env, torchrun_cmd

from byzshield.config import ConfigError
from byzshield.engines.simulate import simulate
from byzshield.training.runfolder import CheckpointError, RunFolderError

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9
RUN = (*RAMA, "mode=centered-clipping", "attack=alie", "max_steps=30", "eval_freq=10")


def params(folder: Path, step: int) -> dict:
    return torch.load(folder / "checkpoints" / f"step_{step:06d}.pt", weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(folder: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "byzshield.train", f"train_dir={folder}", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
        cwd=folder.parent,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_killed_run_resumes_bit_identical_to_an_uninterrupted_one(tmp_path):
    simulate(RUN, tmp_path / "whole")
    folder = tmp_path / "killed"
    proc = train(folder, *RUN)
    wait_for(folder / "checkpoints" / "step_000020.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = train(folder, *RUN)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming after step" in out
    assert same(params(folder, 30), params(tmp_path / "whole", 30))
    steps, evals = read_metrics(folder)
    assert [s["step"] for s in steps] == list(range(30))  # no step twice
    assert [e["step"] for e in evals] == [10, 20, 30]
    whole, _ = read_metrics(tmp_path / "whole")
    drop = {"compute_s", "communication_s", "attack_s", "vote_s", "aggregation_s"}
    drop |= {"update_s", "step_s", "other_s", "vote_tail_s"}
    strip = [{k: v for k, v in r.items() if k not in drop} for r in steps]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in whole]


def test_a_complete_run_rerun_does_nothing_and_overwrites_nothing(tmp_path):
    ovs = (*RAMA, "max_steps=4", "eval_freq=2")
    simulate(ovs, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = simulate(ovs, tmp_path)
    assert result["top1"] == read_metrics(tmp_path)[1][-1]["top1"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_another_config_into_a_used_folder_is_refused_and_changes_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "byzshield.train", f"train_dir={tmp_path}", *RAMA, "max_steps=2"],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    digest = {
        p: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "byzshield.train",
            f"train_dir={tmp_path}",
            *RAMA,
            "max_steps=2",
            "lr=0.1",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lr: 0.05 -> 0.1" in lines[0] and "start_over=true" in lines[0]
    after = {
        p: hashlib.md5(p.read_bytes()).hexdigest()
        for p in tmp_path.rglob("*")
        if p.is_file() and ".hydra-first" not in p.parts
    }
    assert {p: h for p, h in digest.items() if ".hydra-first" not in p.parts} == after


def test_start_over_writes_a_new_sub_folder(tmp_path):
    simulate((*RAMA, "max_steps=2", "eval_freq=0"), tmp_path)
    with pytest.raises(RunFolderError):
        simulate((*RAMA, "max_steps=2", "eval_freq=0", "seed=1"), tmp_path)
    simulate((*RAMA, "max_steps=2", "eval_freq=0", "seed=1", "start_over=true"), tmp_path)
    assert read_metrics(tmp_path / "restart-1")[1] and read_metrics(tmp_path)[1]


def test_a_folder_written_before_a_key_existed_resumes_with_its_old_value_only(tmp_path):
    """config.json of runs written before dataset.partition existed lacks it (and alpha,
    classes_per_file), and before detection, the detect, placement and adversary.lie_on /
    evade keys: the run had today's defaults, so rerunning it resumes."""
    simulate((*RAMA, "max_steps=2", "eval_freq=2"), tmp_path / "whole")
    saved = tmp_path / "whole" / "config.json"
    record = json.loads(saved.read_text())
    for key in ("partition", "alpha", "classes_per_file"):
        del record["dataset"][key]
    del record["detect"], record["placement"]
    del record["adversary"]["lie_on"], record["adversary"]["evade"]
    saved.write_text(json.dumps(record))
    simulate((*RAMA, "max_steps=4", "eval_freq=2"), tmp_path / "whole")
    assert [s["step"] for s in read_metrics(tmp_path / "whole")[0]] == [0, 1, 2, 3]
    with pytest.raises(RunFolderError, match=r"dataset\.partition: iid -> dirichlet"):
        simulate((*RAMA, "max_steps=6", "dataset.partition=dirichlet"), tmp_path / "whole")
    with pytest.raises(RunFolderError, match=r"placement\.relabel: none -> step"):
        simulate((*RAMA, "max_steps=6", "placement.relabel=step"), tmp_path / "whole")


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, capsys):
    ovs = (*RAMA, "max_steps=6", "eval_freq=2")
    simulate(ovs, tmp_path / "whole")
    simulate((*RAMA, "max_steps=4", "eval_freq=2"), tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "step_000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    simulate(ovs, tmp_path / "run", quiet=False)
    out = capsys.readouterr().out
    assert "warning: checkpoint" in out and "step_000004.pt.corrupt" in out
    assert "resuming after step 2" in out
    assert same(params(tmp_path / "run", 6), params(tmp_path / "whole", 6))


# what torch.save raises on a full disk: an OSError, or (the zip writer) a RuntimeError
FULL_DISK = [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 530112 vs 530016"),
]


@pytest.mark.parametrize("error", FULL_DISK, ids=["OSError", "RuntimeError"])
def test_an_unwritable_checkpoint_is_one_line_naming_the_path_and_keeps_the_previous(
    tmp_path, monkeypatch, error
):
    real = torch.save
    calls = []

    def full_disk(obj, f):
        calls.append(f)
        if len(calls) > 1:
            f.write(b"PK" * 1000)  # what it wrote before the disk filled up
            raise error
        real(obj, f)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        simulate((*RAMA, "max_steps=4", "eval_freq=2"), tmp_path)
    message = str(info.value)
    assert "\n" not in message and "step_000004.pt" in message and "free there" in message
    assert ("No space left" if isinstance(error, OSError) else "unexpected pos") in message
    assert "a checkpoint needs about" in message and "previous checkpoints are intact" in message
    state = torch.load(tmp_path / "checkpoints" / "step_000002.pt", weights_only=True)
    assert state["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert not (tmp_path / ".lock").exists()  # released on the error


def test_a_model_that_becomes_non_finite_stops_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "byzshield.train",
            f"train_dir={tmp_path}",
            "attack=constant",
            "attack.value=-1e38",
            "aggregator_f=0",
            "mode=mean",
            "max_steps=50",
            "eval_freq=1",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "became non-finite" in lines[0] and "last good checkpoint" in lines[0]
    )
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values())
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # valid JSON: no bare NaN or Infinity


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc to find the ranks")
def test_torchrun_restarts_after_a_killed_worker_and_resumes_to_the_same_bits(tmp_path):
    overrides = (*RUN, "timeout=10")
    simulate(overrides, tmp_path / "whole")
    folder = tmp_path / "restarted"
    proc = subprocess.Popen(
        torchrun_cmd(10, f"train_dir={folder}", *overrides, extra=("--max-restarts", "1")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=run_env(),
    )
    wait_for(folder / "checkpoints" / "step_000010.pt", proc, timeout=200)
    victim = None
    for pid in os.listdir("/proc"):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in cmd and b"RANK=4" in env and b"torch.distributed.run" not in cmd:
            victim = int(pid)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming after step" in out
    assert same(params(folder, 30), params(tmp_path / "whole", 30))


def test_config_error_is_still_the_one_line_kind():
    assert issubclass(RunFolderError, ValueError) and issubclass(ConfigError, ValueError)
