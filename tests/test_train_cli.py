"""`python -m byzshield.train` (simulate engine): bad input is one line and leaves no
folder; in a multirun a job that cannot start is reported and the sweep goes on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def train(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "byzshield.train", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lr=nan"], "error: lr must be a finite number > 0, got nan"),
        (["+foo=1"], "error: unknown key foo; the top level takes"),
        (["attack=constant", "attack.value=1e39"], "error: attack.value must be a finite"),
        (["train_dir="], "error: train_dir is empty"),
        (["train_dir='runs/a,b'"], "error: train_dir must not contain a comma"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, args, message):
    if not any(a.startswith("train_dir") for a in args):
        args = [*args, f"train_dir={tmp_path / 'run'}"]
    proc = train(*args, "max_steps=1", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even into the cwd


def test_a_multirun_job_that_cannot_start_is_reported_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m", "lr=-1,0.1", "max_steps=1", "eval_freq=0", f"train_dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "job 0 (lr=-1" in proc.stderr and "lr must be a finite number > 0" in proc.stderr
    assert "1 job(s) of the sweep failed" in proc.stderr
    assert "test accuracy" in proc.stdout  # job 1 ran
    assert (sweep / "1" / "metrics.jsonl").exists()
