"""byzshield.comm with real processes over gloo on 127.0.0.1: what gloo does with a
message of the wrong length, and what listens on the network.

Sockets are read with `ss -ltnp` (iproute2); no traffic is sent anywhere but loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, run_env

from byzshield.server.wire import SLACK

needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")

# Both ranks join and print "ready"; once the test has read their sockets (the release
# file exists), rank 1 sends one message per EXTRA given, of N + EXTRA values and END,
# and rank 0 receives each into the same Slot of N values and prints what it made of it.
PAIR = r"""
import sys, time, torch
from pathlib import Path
from byzshield.engines.torchrun.comm import init
from byzshield.server.wire import END, Slot

release, n, extras = Path(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
comm = init(timeout=60)
comm.broadcast(torch.zeros(1))
print("ready", flush=True)
deadline = time.monotonic() + 120
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
slot = Slot(torch.empty(Slot.capacity(n)), n)
for extra in extras:
    if comm.rank == 0:
        slot.arm()
        failure = comm.receive_each({0: slot.buffer}).get(0)
        try:
            if failure is not None:
                raise failure
            slot.check("rank 1 (worker 0)", "payload")
            print("accepted", flush=True)
        except ValueError as exc:
            print(exc, flush=True)
    else:
        comm.send_to_server(torch.cat([torch.ones(n + extra), torch.tensor([END])]))
comm.close()
"""
N = 50_000


def _pair_env(rank: int, port: int, world: int = 2) -> dict:
    env = run_env()
    env.pop("GLOO_SOCKET_IFNAME", None)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    return env


@needs_ss
def test_a_pair_listens_on_loopback_and_names_each_message_of_the_wrong_length(tmp_path):
    """Two ranks started by hand (comm.init creates the store). gloo itself, measured
    with torch 2.14: a message shorter than the posted buffer is accepted silently, one
    longer aborts the receiving process ("op.preamble.length <= op.nbytes"); the Slot,
    twice the message and its END plus the slack, turns both into a line naming the rank
    (the same values as float64 included: N + 1 values more), and only an overrun beyond
    it still aborts. Message boundaries survive: the message after a bad one reads intact."""
    port = free_port()
    extras = [0, -10, 0, 10, 0, SLACK, 0, N + 1, 0, -N, 0, N + 1 + SLACK, 0, N + 2 + SLACK]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PAIR, str(tmp_path / "release"), str(N), *map(str, extras)],
            env=_pair_env(rank, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        addresses = listening({p.pid for p in procs})
        (tmp_path / "release").touch()
        out, err = procs[0].communicate(timeout=120)
        procs[1].communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert f"127.0.0.1:{port}" in addresses  # rank 0's store, on the address it was given
    assert len(addresses) == 3 and only_loopback(addresses), addresses  # + one gloo per rank
    short = (
        f"rank 1 (worker 0) sent a payload without the end marker after value {N}: shorter "
        f"than the {N} values expected, or a wrong marker"
    )
    long = f"rank 1 (worker 0) sent a payload longer than the {N} values expected"
    verdicts = out.splitlines()
    ok = "accepted"
    assert verdicts == [ok, short, ok, long, ok, long, ok, long, ok, short, ok, long, ok]
    assert procs[0].returncode == -signal.SIGABRT, err[-2000:]  # the overrun: inside gloo
    assert "Received data size doesn't match expected size" in err


# Rank 0 receives one message from each of 3 workers in arrival order; worker w sends
# after DELAYS[w] seconds, or exits without sending when its delay is negative.
ARRIVALS = r"""
import os, sys, time, torch
from byzshield.engines.torchrun.comm import init

delays = [float(x) for x in sys.argv[1:]]
comm = init(timeout=20)
comm.broadcast(torch.zeros(1))
if comm.rank == 0:
    buffers = [torch.zeros(1000) for _ in delays]
    t0 = time.monotonic()
    for w, failure in comm.receive_as_completed(dict(enumerate(buffers))):
        if failure is not None:
            print("failure", failure.rank, failure, flush=True)
            print("after", round(time.monotonic() - t0, 1), flush=True)
            # leave at once: rank 3's message may land while gloo tears the group down,
            # which aborts the process (SIGABRT) on a loaded machine, after the line
            os._exit(1)
        print("arrived", w, int(buffers[w][0]), flush=True)
else:
    delay = delays[comm.rank - 1]
    if delay < 0:
        sys.exit(0)
    time.sleep(delay)
    comm.send_to_server(torch.full((1000,), float(comm.rank)))
    time.sleep(1)
comm.close()
"""


def test_receiving_as_completed_yields_workers_in_arrival_order():
    """Ranks as threads over one in-process store (the order needs no processes)."""
    import threading

    import torch
    import torch.distributed as dist

    from byzshield.engines.torchrun.comm import Comm

    delays = [1.5, 0.0, 0.7]
    store = dist.HashStore()
    arrived: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            comm = Comm.local_group(store, r, 4, timeout=20)
            comm.broadcast(torch.zeros(1))
            if r == 0:
                buffers = [torch.zeros(1000) for _ in delays]
                for w, failure in comm.receive_as_completed(dict(enumerate(buffers))):
                    assert failure is None, failure
                    arrived.append((w, int(buffers[w][0])))
            else:
                time.sleep(delays[r - 1])
                comm.send_to_server(torch.full((1000,), float(r)))
            comm.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and arrived == [(1, 2), (2, 3), (0, 1)], (arrived, errors)


@pytest.mark.parametrize(
    ("delays", "expected"),
    [([0.0, -1, 4.0], ["arrived 0 1", "failure 2"])],  # a rank that exits: real processes
)
def test_receiving_as_completed_names_a_dead_worker(delays, expected):
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ARRIVALS, *map(str, delays)],
            env=_pair_env(rank, port, world=4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(4)
    ]
    try:
        out, err = procs[0].communicate(timeout=120)
        for p in procs[1:]:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    lines = out.splitlines()
    took = None
    if lines and lines[-1].startswith("after "):  # seconds from the receive to the failure
        took = float(lines.pop().split()[1])
    assert len(lines) == len(expected), err[-2000:]
    assert all(
        line.startswith(e + " ") or line == e for line, e in zip(lines, expected, strict=True)
    ), lines
    if expected[-1].startswith("failure"):
        assert "rank 2 (worker 1)" in lines[-1] and procs[0].returncode == 1
        # named when it closed, not at the 20 s deadline (measured inside the server,
        # from its receive: process start-up under load does not count); no hang
        assert took is not None and took < 15, took


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parent.items() if p == pid and c not in found]
        found.update(kids)
        todo.extend(kids)
    return found


def listening(pids: set[int]) -> list[str]:
    """Local addresses (``host:port``) of the TCP sockets that ``pids`` listen on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3]
        for line in out.splitlines()
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids
    ]


def only_loopback(addresses: list[str]) -> bool:
    return all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in addresses)


def _listen_under(cmd: list[str], tmp_path: Path, *, ranks: int, env: dict | None = None):
    """Start ``cmd`` (the PAIR script in listen mode under a launcher); once every rank
    is ready, return the listening addresses of its whole process tree."""
    release = tmp_path / "release"
    proc = subprocess.Popen(
        [*cmd, str(release), "0"],
        env=env or run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        ready = 0
        deadline = time.monotonic() + 120
        while ready < ranks and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            ready += line.count("ready")  # ranks share stdout: "readyready" happens
        assert ready == ranks, proc.stderr.read() if proc.poll() is not None else "not ready"
        addresses = listening(descendants(proc.pid))
        release.touch()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, addresses


def _script(tmp_path: Path) -> str:
    path = tmp_path / "pair.py"
    path.write_text(PAIR)
    return str(path)


@pytest.mark.slow
@needs_ss
def test_plain_torchrun_standalone_stores_listen_on_every_interface(tmp_path):
    """What byzshield.comm fixes, measured (torch 2.14): torchrun's own stores bind to
    0.0.0.0 / :: whatever address they are given; gloo follows the hostname."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc, addresses = _listen_under([*cmd, _script(tmp_path)], tmp_path, ranks=2)
    assert proc.returncode == 0
    assert any(a.rsplit(":", 1)[0] in ("*", "0.0.0.0", "[::]") for a in addresses), addresses


@pytest.mark.slow
@needs_ss
def test_multi_node_store_listens_on_the_master_address_only(tmp_path):
    """Node 0 of a static rendezvous (as `fab train` runs it, GLOO_SOCKET_IFNAME set to
    the interface of the chosen address; here both nodes are this machine)."""
    port = free_port()
    env = dict(run_env(), GLOO_SOCKET_IFNAME="lo")
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1"]
    common += ["--master-port", str(port), "--rdzv-id", "mn-listen"]
    node1 = subprocess.Popen(
        [sys.executable, "-m", "byzshield.comm", *common, "--node-rank", "1", _script(tmp_path)]
        + [str(tmp_path / "release"), "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cmd = [sys.executable, "-m", "byzshield.comm", *common, "--node-rank", "0"]
        proc, addresses = _listen_under([*cmd, _script(tmp_path)], tmp_path, ranks=1, env=env)
        assert node1.wait(timeout=60) == 0, node1.stderr.read()
    finally:
        if node1.poll() is None:
            node1.kill()
    assert proc.returncode == 0
    assert f"127.0.0.1:{port}" in addresses and only_loopback(addresses), addresses


def test_torchruns_report_becomes_one_line_naming_the_rank_that_failed_first(tmp_path):
    """The agent stops every rank with SIGTERM once one fails: the line names the one
    that failed (killed, or exited with its own one-line error), not those it stopped."""
    import json

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from byzshield.engines.torchrun.comm import failure_line

    def failure(rank: int, exitcode: int, message: str | None = None) -> ProcessFailure:
        path = "<N/A>"
        if message is not None:
            path = str(tmp_path / f"error{rank}.json")
            Path(path).write_text(json.dumps({"message": message, "timestamp": 0}))
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=path)

    killed = ChildFailedError("byzshield.train", {0: failure(0, -15), 2: failure(2, -9)})
    assert failure_line(killed, "runs/a/torchrun.log") == (
        "torchrun: rank 2 was killed by SIGKILL; every rank was stopped (torchrun's report: "
        "runs/a/torchrun.log)"
    )
    line = "error (rank 0): the parameter server refused: ..."
    ours = ChildFailedError("byzshield.train", {1: failure(1, -15), 0: failure(0, 1, line)})
    assert failure_line(ours, "r.log") == (
        f"torchrun: rank 0 exited with code 1: {line}; every rank was stopped (torchrun's "
        "report: r.log)"
    )
