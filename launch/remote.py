"""The Fabric side of the launcher: pinned SSH connections and the per-host work of
`fab setup`, `fab train`, `fab stop` and `fab fetch`, run on every host in parallel.

Connections accept only the host keys recorded at launch (paramiko's RejectPolicy plus
the keys from the state file): a host answering with another key is refused. They use
the run's private key only (no agent, no ~/.ssh/config), so what works in a test
against a local sshd works the same against EC2.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

import fabric
import paramiko

from launch.bundle import extract_tarball, source_files, write_tarball
from launch.commands import (
    DEFAULT_MASTER_PORT,
    DEFAULT_MODULE,
    DEFAULT_TORCH_INDEX,
    pack_outputs_command,
    setup_script,
    stop_command,
    torch_pins,
    train_command,
    unpack_command,
)
from launch.errors import LaunchError
from launch.hostkeys import host_key_name, pkey_from_line
from launch.state import ClusterState, Node

T = TypeVar("T")
Log = Callable[[str], None]

CONNECT_TIMEOUT = 20.0
STOP_GRACE = 60.0


def connection(
    state: ClusterState, node: Node, connect_timeout: float = CONNECT_TIMEOUT
) -> fabric.Connection:
    """A Fabric connection to ``node`` that trusts only its recorded host keys."""
    if not node.host_keys:
        raise LaunchError(f"{node.name}: no SSH host key recorded in the state file; relaunch")
    config = fabric.Config(ssh_config=paramiko.SSHConfig())  # ignore ~/.ssh/config
    conn = fabric.Connection(
        host=node.public_ip,
        user=state.ssh_user,
        port=state.ssh_port,
        config=config,
        connect_timeout=int(connect_timeout),
        connect_kwargs={
            "key_filename": [state.key_file],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
        },
    )
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    known = conn.client.get_host_keys()
    for line in node.host_keys:
        key = pkey_from_line(line)
        known.add(host_key_name(node.public_ip, state.ssh_port), key.get_name(), key)
    return conn


def ssh_problem(node: Node, exc: BaseException) -> str:
    """One line for an SSH failure on ``node``."""
    where = f"{node.name} ({node.public_ip})"
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"{where}: host key differs from the one recorded at launch; refusing to connect "
            "(if the instance was replaced, relaunch)"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: the run's key was not accepted ({exc})"
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return f"{where}: offered no host key recorded at launch; refusing to connect"
    if isinstance(exc, LaunchError):
        return str(exc)
    if isinstance(exc, RemoteCommandFailed):
        return f"{where}: {exc}"
    if isinstance(exc, (OSError, paramiko.SSHException, EOFError)):
        return f"{where}: SSH failed ({type(exc).__name__}: {exc})"
    return f"{where}: {type(exc).__name__}: {exc}"


def for_each_node(nodes: Sequence[Node], work: Callable[[Node], T]) -> dict[str, T | BaseException]:
    """``work(node)`` on every node at once; each result, or the exception it raised."""
    results: dict[str, T | BaseException] = {}
    with futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(nodes)))) as pool:
        jobs = {pool.submit(work, node): node for node in nodes}
        for job in futures.as_completed(jobs):
            node = jobs[job]
            try:
                results[node.name] = job.result()
            except Exception as e:  # noqa: BLE001 - reported per node by the caller
                results[node.name] = e
    return results


def _raise_failures(what: str, nodes: Sequence[Node], results: dict, log_dir: Path | None) -> None:
    failed = [(n, results[n.name]) for n in nodes if isinstance(results[n.name], BaseException)]
    if not failed:
        return
    node, exc = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    logs = f"; logs in {log_dir}/" if log_dir else ""
    raise LaunchError(
        f"{what} failed on {len(failed)} of {len(nodes)} hosts: "
        f"{ssh_problem(node, exc)}{more}{logs}"
    )


def _remote_home(conn: fabric.Connection) -> str:
    return conn.run('printf %s "$HOME"', hide=True, in_stream=False).stdout.strip()


def _tail(text: str) -> str:
    """The line of a log most worth showing: the last error, else the last real line."""
    rows = [r.strip() for r in text.splitlines() if r.strip().strip("=-*~ ")]
    if not rows:
        return "(no output)"
    errors = [r for r in rows if re.search(r"(Error|Exception)\b|^error:|exitcode\s*:", r)]
    return " ".join((errors or rows)[-1].split())


class RemoteCommandFailed(Exception):
    pass


# ----------------------------------------------------------------------------- setup


def setup_cluster(
    state: ClusterState,
    source_root: str | os.PathLike,
    log_dir: Path,
    *,
    python: str = "python3",
    system_site_packages: bool = False,
    pip_args: str = "",
    torch_index: str = DEFAULT_TORCH_INDEX,
    efs_dns: str = "",
    timeout: float = 3600.0,
    log: Log = print,
) -> None:
    """Ship this checkout to every host and install it there, all hosts at once."""
    root = Path(source_root)
    files = source_files(root)
    if "requirements.txt" not in files:
        raise LaunchError(f"{root} has no requirements.txt: is it the byzshield checkout?")
    script = setup_script(
        python=python,
        system_site_packages=system_site_packages,
        pip_args=pip_args,
        torch_pins=torch_pins((root / "requirements.txt").read_text()),
        torch_index=torch_index,
        efs_dns=efs_dns,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="byzshield-setup-") as tmp:
        archive = Path(tmp) / "src.tar.gz"
        size = write_tarball(root, files, archive)
        log(f"setup: {len(files)} files ({size / 1e6:.1f} MB) to {len(state.nodes)} hosts")

        def work(node: Node) -> str:
            with (
                connection(state, node) as conn,
                open(log_dir / f"setup-{node.name}.log", "w") as out,
            ):
                remote_archive = f"{_remote_home(conn)}/.byzshield-src.tar.gz"
                conn.put(str(archive), remote_archive)
                conn.run(unpack_command(remote_archive), hide=True, in_stream=False)
                result = conn.run(
                    f"bash -c {shlex.quote(script)}",
                    warn=True,
                    in_stream=False,
                    out_stream=out,
                    err_stream=out,
                    timeout=timeout,
                )
                if result.exited != 0:
                    raise RemoteCommandFailed(
                        f"exit {result.exited}: {_tail(result.stderr or result.stdout)}"
                    )
                return _tail(result.stdout)

        results = for_each_node(state.nodes, work)
    for node in state.nodes:
        outcome = results[node.name]
        if not isinstance(outcome, BaseException):
            log(f"  {node.name:<10} {node.public_ip:<15} {outcome}")
    _raise_failures("setup", state.nodes, results, log_dir)


# ----------------------------------------------------------------------------- train


def train_cluster(
    state: ClusterState,
    nodes: Sequence[Node],
    log_dir: Path,
    *,
    overrides: Sequence[str] = (),
    nproc_per_node: int = 1,
    master_port: int = DEFAULT_MASTER_PORT,
    module: str = DEFAULT_MODULE,
    timeout: float = 0.0,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    log: Log = print,
) -> None:
    """Run torchrun on every node (static rendezvous at node 0, the parameter server),
    stream node 0's output, and stop every node as soon as one fails.

    Raises LaunchError (exit 130 after Ctrl-C) unless every node exits 0 within
    ``timeout`` seconds (0: no limit).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    log_dir.mkdir(parents=True, exist_ok=True)
    master = nodes[0].private_ip
    commands = [
        train_command(
            private_ip=node.private_ip,
            run=state.run,
            node_rank=rank,
            num_nodes=len(nodes),
            nproc_per_node=nproc_per_node,
            master_addr=master,
            master_port=master_port,
            module=module,
            overrides=list(overrides),
        )
        for rank, node in enumerate(nodes)
    ]
    log(
        f"train: {len(nodes)} nodes x {nproc_per_node} processes, parameter server "
        f"{nodes[0].name} {master}:{master_port}; other nodes log to {log_dir}/"
    )
    conns = [connection(state, node) for node in nodes]

    def work(rank: int) -> int:
        command = f"bash -c {shlex.quote(commands[rank])}"
        if rank == 0:
            return (
                conns[0]
                .run(command, warn=True, in_stream=False, out_stream=out, err_stream=err)
                .exited
            )
        with open(log_dir / f"train-{nodes[rank].name}.log", "w") as f:
            return (
                conns[rank]
                .run(command, warn=True, in_stream=False, out_stream=f, err_stream=f)
                .exited
            )

    pool = futures.ThreadPoolExecutor(max_workers=len(nodes))
    jobs = {pool.submit(work, rank): rank for rank in range(len(nodes))}
    deadline = time.monotonic() + timeout if timeout > 0 else None
    failure, failed_rank = "", -1
    stop_deadline: float | None = None
    killed = False
    try:
        pending = set(jobs)
        while pending:
            done, pending = futures.wait(pending, timeout=1.0, return_when=futures.FIRST_COMPLETED)
            for job in done:
                rank = jobs[job]
                try:
                    code = job.result()
                    problem = f"exited with code {code}" if code != 0 else ""
                except Exception as e:  # noqa: BLE001 - reported below
                    problem = ssh_problem(nodes[rank], e)
                if problem and not failure:
                    node = nodes[rank]
                    failure, failed_rank = (
                        f"node {rank} ({node.name} {node.public_ip}) {problem}",
                        rank,
                    )
            now = time.monotonic()
            if not failure and deadline is not None and now > deadline:
                failure = f"time limit of {timeout:.0f}s reached"
            if failure and pending and stop_deadline is None:
                _stop(state, [nodes[jobs[j]] for j in pending])
                stop_deadline = now + STOP_GRACE
            elif stop_deadline is not None and pending and now > stop_deadline:
                if killed:  # SIGKILL and closed connections did not end them: give up
                    break
                _stop(state, [nodes[jobs[j]] for j in pending], signal="KILL")
                for job in pending:
                    conns[jobs[job]].close()
                stop_deadline, killed = now + STOP_GRACE, True
    except KeyboardInterrupt:
        _stop(state, nodes)
        raise LaunchError(
            "interrupted (Ctrl-C): sent SIGTERM to torchrun on every node", code=130
        ) from None
    finally:
        for conn in conns:
            conn.close()
        pool.shutdown(wait=not killed, cancel_futures=True)
    if failure:
        detail = ""
        log_file = log_dir / f"train-{nodes[failed_rank].name}.log"
        if failed_rank > 0 and log_file.exists():
            detail = f"; its log: {_tail(log_file.read_text())[:300]}"
        raise LaunchError(
            f"training failed: {failure}{detail}; other nodes stopped; logs in {log_dir}/"
        )


def _stop(state: ClusterState, nodes: Sequence[Node], signal: str = "TERM") -> dict:
    def work(node: Node) -> str:
        with connection(state, node) as conn:
            return conn.run(
                stop_command(state.run, signal), hide=True, in_stream=False
            ).stdout.strip()

    return for_each_node(nodes, work)


def stop_cluster(state: ClusterState, log: Log = print) -> None:
    """Send SIGTERM to the run's torchrun on every host (a no-op where none runs)."""
    results = _stop(state, state.nodes)
    for node in state.nodes:
        outcome = results[node.name]
        if not isinstance(outcome, BaseException):
            log(f"  {node.name:<10} {outcome or 'not training'}")
    _raise_failures("stop", state.nodes, results, None)


# ----------------------------------------------------------------------------- fetch


def fetch_outputs(
    state: ClusterState,
    nodes: Sequence[Node],
    train_dir: str,
    dest: Path,
    log: Log = print,
) -> list[Path]:
    """Copy ``train_dir`` (relative to the remote checkout, or absolute) from each of
    ``nodes`` to ``dest/<node name>/``; returns the local folders."""

    def work(node: Node) -> Path:
        with connection(state, node) as conn, tempfile.TemporaryDirectory() as tmp:
            remote_archive = f"{_remote_home(conn)}/.byzshield-fetch-{state.run}.tar.gz"
            result = conn.run(
                pack_outputs_command(train_dir, remote_archive),
                hide=True,
                warn=True,
                in_stream=False,
            )
            if result.exited != 0:
                raise RemoteCommandFailed(_tail(result.stderr or result.stdout))
            local_archive = Path(tmp) / "outputs.tar.gz"
            try:
                conn.get(remote_archive, str(local_archive))
            finally:
                conn.run(
                    f"rm -f {shlex.quote(remote_archive)}", hide=True, warn=True, in_stream=False
                )
            target = dest / node.name
            extract_tarball(local_archive, target)
            return target / Path(train_dir).name

    results = for_each_node(nodes, work)
    _raise_failures("fetch", nodes, results, None)
    paths = [results[n.name] for n in nodes]
    for node, path in zip(nodes, paths, strict=True):
        log(f"  {node.name:<10} -> {path}")
    return paths  # type: ignore[return-value]
