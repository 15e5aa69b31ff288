#!/usr/bin/env bash
# Install everything the test suite needs, then run it. README's Quick start and
# .ci/run both call this script, so CI runs exactly what a new user runs.
#   bash tests/run.sh                # default suite, on pytest-xdist workers (below)
#   bash tests/run.sh -m slow -n 0   # extra arguments go to pytest (here: the slow
#                                    # tests, one at a time, as .ci/run runs them)
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenSSH server for the launcher's Fabric tests (started by a fixture on 127.0.0.x).
if ! command -v /usr/sbin/sshd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing openssh-server (Debian package) for the launcher tests"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client iproute2 >/dev/null
  else
    echo "tests/run.sh: openssh-server not installed and not root: SSH tests will be skipped"
  fi
fi

# A one-host Slurm cluster (munged, slurmctld, slurmd) for the Slurm tests, started by a
# fixture on 127.0.0.1 with a generated slurm.conf; installed the same way.
if ! command -v /usr/sbin/slurmctld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing slurm-wlm and munge (Debian packages) for the Slurm tests"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    echo "tests/run.sh: slurm-wlm not installed and not root: Slurm tests will be skipped"
  fi
fi

python -m pip install -q -r requirements.txt -e '.[test]'
export OMP_NUM_THREADS=1
# Two pytest-xdist workers per core, at most 4: most of a test's time is spent waiting
# (for processes to start, import torch and meet), not computing. Each process runs one thread;
# -n 0 among the arguments runs the suite in this process instead.
workers=$((2 * $(nproc 2>/dev/null || echo 1)))
[ "$workers" -gt 4 ] && workers=4
python -m pytest -n "$workers" --dist loadgroup "$@"
