"""byzshield/compute/memory.py: glibc's thresholds fixed so that a step's freed buffers
are reused rather than faulted in again (counted in page faults, not timed)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from byzshield.compute import memory

SWEEP = ["-m", "engine=lockstep", "dataset=mnist1d", "network=cnn1d", "attack=alie",
         "mode=trimmed-mean", "max_steps=30", "eval_freq=0", "seed=0,1,2,3,4"]  # fmt: skip


def _faults(tmp_path, **env) -> int:
    """Minor page faults of a 5-seed, 30-step lockstep sweep of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    folder = tmp_path / f"sweep{len(env)}"
    subprocess.run(
        [sys.executable, "-m", "byzshield.train", *SWEEP, f"train_dir={folder}"],
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        check=True,
    )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_lockstep_sweep_reuses_its_freed_buffers_instead_of_faulting_them_in(tmp_path):
    """With glibc's own thresholds (MALLOC_TOP_PAD_ set to glibc's default value: the
    command then leaves malloc alone) the sweep faults its buffers in every step."""
    glibc = _faults(tmp_path, MALLOC_TOP_PAD_="131072")
    kept = _faults(tmp_path)
    assert kept < glibc / 2, (glibc, kept)  # measured: 608,000 against 96,000


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert memory.keep_freed_memory() is False
