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


SLOW = pytest.mark.slow  # each is a process; their checks run in process in test_config.py


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lr=nan"], "error: lr must be a finite number > 0, got nan"),
        (["+foo=1"], "error: unknown key foo; the top level takes"),
        pytest.param(
            ["attack=constant", "attack.value=1e39"],
            "error: attack.value must be a finite",
            marks=SLOW,
        ),
        pytest.param(["train_dir="], "error: train_dir is empty", marks=SLOW),
        pytest.param(
            ["train_dir='runs/a,b'"], "error: train_dir must not contain a comma", marks=SLOW
        ),
        pytest.param(
            ["seed=99999999999999999999"],
            "error: seed must be an integer in 0..9223372036854775807",
            marks=SLOW,
        ),
        # refused once the data is read, after Hydra made the folder: it is removed
        (["batch_size=100000000"], "error: batch_size must be at most the 1438 training"),
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
    assert (sweep / "0" / "refused.txt").read_text().startswith("error: lr must be a finite")
    from byzshield.report import write_report

    rep = write_report([sweep], tmp_path / "report", plots=False, eps=False)
    assert sorted(r.describe_status() for r in rep.runs) == [
        "complete",
        "refused: error: lr must be a finite number > 0, got -1.0",
    ]


@SLOW
def test_a_sweep_value_that_does_not_compose_stops_it_before_any_job(tmp_path):
    """Hydra's validation, on jobs covering every value (byzshield/cli/sweep.py), still
    finds a bad value in the sweep's last job before the first job runs."""
    sweep = tmp_path / "sweep"
    proc = train("-m", "seed=0,1,2", "attack=alie,nonesuch", "max_steps=1", f"train_dir={sweep}",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert "Could not find 'attack/nonesuch'" in proc.stderr
    assert not (sweep / "0").exists()


def test_a_run_refused_after_hydra_made_its_folder_leaves_no_folder(tmp_path):
    """A cross-option error (found when the run is built, after Hydra wrote .hydra/)."""
    proc = train("batch_size=301", "max_steps=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: batch_size=301 must be a multiple")
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_a_run_with_the_default_train_dir_makes_exactly_one_folder(tmp_path):
    proc = train("max_steps=2", "eval_freq=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "runs").iterdir()  # the time is resolved once, not twice
    assert (folder / "metrics.jsonl").exists()


def _interrupt(args, *, when: str | None, tmp_path) -> subprocess.CompletedProcess:
    """Start training, send SIGINT (Ctrl-C) once stdout shows ``when`` (None: after a
    second, while torch loads)."""
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzshield.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    out = []
    if when is None:
        time.sleep(1.0)
    else:
        for line in proc.stdout:
            out.append(line)
            if when in line:
                break
    proc.send_signal(signal.SIGINT)
    try:
        rest, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread
        proc.send_signal(signal.SIGABRT)
        rest, err = proc.communicate(timeout=60)
        pytest.fail(f"still running 120 s after Ctrl-C; its threads:\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest, err)


@pytest.mark.parametrize("engine", ["simulate", pytest.param("lockstep", marks=pytest.mark.slow)])
def test_ctrl_c_prints_one_line_and_the_rerun_resumes(tmp_path, engine):
    folder = tmp_path / "run"
    args = [f"engine={engine}", f"train_dir={folder}", "max_steps=100000", "eval_freq=5"]
    proc = _interrupt([*args, "log_every=1"], when="step 12/", tmp_path=tmp_path)
    assert proc.returncode == 130
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    if engine == "simulate":
        assert lines[0].startswith("interrupted at step ")
        assert lines[0].endswith(
            f"rerun the same command to resume from {folder}/checkpoints/step_000010.pt"
        )
    else:
        assert lines[0].startswith("interrupted after ") and "rerun the same command" in lines[0]
    again = _interrupt([*args, "log_every=1"], when="resuming after step 10", tmp_path=tmp_path)
    assert again.returncode == 130


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = _interrupt([f"train_dir={tmp_path / 'run'}"], when=None, tmp_path=tmp_path)
    assert proc.returncode == 130
    assert proc.stderr.strip() == "interrupted during start-up; nothing was trained"


def test_missing_dataset_stops_before_anything_starts_with_one_line(tmp_path):
    proc = train(
        "dataset=mnist", f"dataset.root={tmp_path}", f"train_dir={tmp_path}/run", cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(tmp_path) in lines[0]
