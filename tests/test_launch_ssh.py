"""`fab setup`, `fab train`, `fab fetch` over real SSH to two loopback "hosts".

A fixture starts one OpenSSH server per address (127.0.0.2 and 127.0.0.3, one port),
each with its own generated host key and its own HOME, and writes the state file
`fab launch` would have written for them (host keys read by the launcher's own
scanner). The tasks then run as `fab` subprocesses, exactly as a user runs them:
setup ships this checkout and installs it into a virtualenv per host (offline: the
venv sees this interpreter's packages), train starts a real two-node torchrun.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
import pytest
from launch_support.moto_server import NO_AWS_ENV
from launch_support.sshd import LoopbackSshd, free_port, generate_key, sshd_missing_reason

from launch import remote
from launch import state as state_io
from launch.hostkeys import scan_host_keys
from launch.plan import node_name

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[1]
ADDRESSES = ["127.0.0.2", "127.0.0.3"]
PROBE = "tests.launch_support.gloo_probe"
OFFLINE_SETUP = [
    "--python",
    sys.executable,
    "--system-site-packages",
    "--pip-args",
    "--no-index --no-build-isolation",
    "--torch-index=",
]


@dataclass
class LoopbackCluster:
    cwd: Path
    hosts: list[LoopbackSshd]
    state: state_io.ClusterState


def fab(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `fab <args>` from ``cwd`` with this checkout's fabfile, as a user would;
    `fab train` on a free master port (tests running beside it may hold 29500)."""
    if args[:1] == ("train",):
        args = ("train", "--master-port", str(free_port(ADDRESSES)), *args[1:])
    env = {k: v for k, v in os.environ.items() if k not in NO_AWS_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "fabric", "--search-root", str(ROOT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _probe_importable() -> str:
    """Why `python -m tests.launch_support.gloo_probe` would not find this checkout's probe
    (an installed distribution shipping its own top-level `tests` package), or ""."""
    check = (
        "import importlib.util as u; s = u.find_spec('tests.launch_support.gloo_probe'); "
        "print(s.origin if s else '')"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    expected = ROOT / "tests" / "launch_support" / "gloo_probe.py"
    return "" if found == str(expected) else f"`tests` resolves outside this checkout ({found!r})"


def _loopback_usable() -> str:
    for address in ADDRESSES:
        with socket.socket() as s:
            try:
                s.bind((address, 0))
            except OSError as e:
                return f"cannot bind {address} ({e}): loopback aliases unavailable"
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LoopbackCluster:
    reason = sshd_missing_reason() or _loopback_usable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("loopback")
    client_key = generate_key(base / "client_key")
    port = free_port(ADDRESSES)
    hosts: list[LoopbackSshd] = []
    state = None
    try:
        for index, address in enumerate(ADDRESSES):
            hosts.append(
                LoopbackSshd(address, port, base / f"host{index}", Path(f"{client_key}.pub"))
            )
            hosts[-1].start()
        nodes = [
            state_io.Node(
                name=node_name(i),
                role="server" if i == 0 else "worker",
                instance_id=f"loopback-{i}",
                instance_type="loopback",
                public_ip=host.address,
                private_ip=host.address,
                host_keys=scan_host_keys(host.address, port),
                host_key_source="first-contact",
            )
            for i, host in enumerate(hosts)
        ]
        cwd = base / "project"
        cwd.mkdir()
        state = state_io.ClusterState(
            run="loop",
            region="eu-west-1",
            status="ready",
            key_file=str(client_key),
            ssh_user=_login_user(),
            ssh_port=port,
            nodes=nodes,
        )
        state_io.save(state, cwd / ".byzshield")
        state_io.write_hostfile(state, cwd / "hostfile")
        yield LoopbackCluster(cwd=cwd, hosts=hosts, state=state)
    finally:
        if state is not None:
            with contextlib.suppress(Exception):  # best effort: nothing may be running
                remote.stop_cluster(state, log=lambda _: None)
        for host in hosts:
            host.stop()


def _login_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def probe() -> str:
    """The module `fab train --module` runs in the probe tests (skips if unimportable)."""
    reason = _probe_importable()
    if reason:
        pytest.skip(reason)
    return PROBE


@pytest.fixture(scope="module")
def installed(cluster) -> subprocess.CompletedProcess:
    """`fab setup` once for the module (the train tests need the hosts installed)."""
    return fab(cluster.cwd, "setup", *OFFLINE_SETUP, timeout=600)


def test_launch_scanner_records_each_hosts_own_key(cluster):
    recorded = [node.host_keys for node in cluster.state.nodes]
    assert recorded == [[host.host_key_line] for host in cluster.hosts]
    assert recorded[0] != recorded[1]


def test_connection_refuses_a_host_whose_key_differs_from_the_recorded_one(cluster):
    server, worker = cluster.state.nodes
    impostor = replace(server, host_keys=worker.host_keys)
    with (
        pytest.raises(paramiko.BadHostKeyException) as e,
        remote.connection(cluster.state, impostor) as conn,
    ):
        conn.run("true", hide=True, in_stream=False)
    assert "differs from the one recorded at launch" in remote.ssh_problem(impostor, e.value)
    with remote.connection(cluster.state, server) as conn:
        assert conn.run("echo $HOME", hide=True, in_stream=False).stdout.strip() == str(
            cluster.hosts[0].home
        )


@pytest.mark.slow  # fab setup installs this checkout on every host
def test_fab_setup_installs_this_checkout_on_every_host(cluster, installed):
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "setup done on 2 hosts" in installed.stdout
    for host in cluster.hosts:
        project = host.home / "byzshield"
        assert (project / "requirements.txt").is_file() and (
            project / "launch" / "plan.py"
        ).is_file()
        assert not (project / ".byzshield").exists() and not (project / ".git").exists()
        python = host.home / "byzshield-venv" / "bin" / "python"
        where = subprocess.run(
            [str(python), "-c", "import launch; print(launch.__file__)"],
            cwd=host.home,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert where.stdout.strip() == str(project / "launch" / "__init__.py")


@pytest.mark.slow  # fab setup installs this checkout on every host
def test_fab_train_runs_two_node_torchrun_and_fetch_brings_outputs_back(cluster, installed, probe):
    assert installed.returncode == 0, installed.stderr
    train = fab(
        cluster.cwd,
        "train",
        "--module",
        probe,
        "--nproc-per-node",
        "2",
        "--",
        "train_dir=probe_out",
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    # GLOO_SOCKET_IFNAME comes from `ip` (iproute2); without it gloo resolves the hostname.
    ifname = "lo" if shutil.which("ip") else ""
    assert f"gloo_probe: world_size=4 sum=6 expected=6 ifname={ifname}\n" in train.stdout
    assert "training finished on all 2 nodes" in train.stdout
    worker_log = cluster.cwd / ".byzshield" / "loop" / "logs" / "train-worker-1.log"
    assert worker_log.exists()

    fetched = fab(cluster.cwd, "fetch", "--train-dir", "probe_out")
    assert fetched.returncode == 0, fetched.stderr
    copied = cluster.cwd / "fetched" / "loop" / "server" / "probe_out" / "probe.txt"
    assert "world_size=4" in copied.read_text()


@pytest.mark.slow  # fab setup installs this checkout on every host
def test_fab_train_fails_in_one_line_and_stops_every_node_when_one_fails(cluster, installed, probe):
    assert installed.returncode == 0, installed.stderr
    train = fab(cluster.cwd, "train", "--module", probe, "--", "fail_rank=1")
    assert train.returncode == 1
    last = train.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "fab train: training failed: node 1 (worker-1 127.0.0.3) exited with code"
    )
    for host in cluster.hosts:
        pid = int((host.home / ".byzshield-train-loop.pid").read_text())
        assert (
            not Path(f"/proc/{pid}").exists()
            or "byzshield.comm" not in Path(f"/proc/{pid}/cmdline").read_text()
        )


@pytest.mark.skipif(
    importlib.util.find_spec("byzshield.train") is None,
    reason="byzshield.train (the training entry point) is not written yet",
)
@pytest.mark.slow  # fab setup installs this checkout on every host
def test_fab_train_runs_byzshield_train_on_two_loopback_nodes(cluster, installed, tmp_path):
    assert installed.returncode == 0, installed.stderr
    train = fab(
        cluster.cwd,
        "train",
        "--nproc-per-node",
        "2",
        "--",
        "approach=baseline",
        "approach.K=3",
        "attack=none",
        "dataset=digits",
        "network=lenet",
        "max_steps=3",
        "eval_freq=0",
        f"train_dir={tmp_path / 'runs'}",
        timeout=300,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "training finished on all 2 nodes" in train.stdout
    outputs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert outputs, "the parameter server wrote nothing to train_dir"

    fetched = fab(cluster.cwd, "fetch", "--train-dir", str(tmp_path / "runs"), "--dest", "copy")
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in (cluster.cwd / "copy" / "server" / "runs").iterdir()) == outputs


def test_fab_stop_with_nothing_running_reports_each_host_idle(cluster):
    result = fab(cluster.cwd, "stop")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["server", "worker-1"]
