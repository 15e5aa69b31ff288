"""byzshield/compute/memory.py: glibc's thresholds fixed so that a step's freed buffers
are reused rather than faulted in again (counted in page faults, not timed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from byzshield.compute import memory

LOOP = textwrap.dedent(
    """
    import resource, sys, torch
    if sys.argv[1] == "keep":
        from byzshield.compute.memory import keep_freed_memory
        assert keep_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):  # a step's pattern: buffers of a few MiB, allocated and freed
        x = torch.ones(300_000)
        y = torch.ones(2_000_000)
        (x.sum() + y.sum()).item()
        del x, y
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    assert kept < default / 2, (default, kept)  # measured: 43,000 against 10,000


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert memory.keep_freed_memory() is False
