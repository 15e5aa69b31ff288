"""What each `fab` task does, with plain arguments; fabfile.py only declares the flags.

Every task turns a LaunchError (and the usual botocore failures) into one line on
stderr and a non-zero exit, never a traceback. `install_remainder_executor` lets
`fab train -- approach=mols ...` hand the text after ``--`` to the task as Hydra
overrides (Fabric would otherwise try to run it as a shell command on ``-H`` hosts).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from fabric.executor import Executor
from invoke.exceptions import Exit

from launch import aws, remote
from launch import state as state_io
from launch.commands import (
    DEFAULT_MASTER_PORT,
    DEFAULT_MODULE,
    DEFAULT_TRAIN_DIR,
    EFS_MOUNT_POINT,
    valid_module,
)
from launch.errors import LaunchError, UsageError
from launch.plan import (
    DEFAULT_HOSTFILE,
    DEFAULT_STATE_DIR,
    LaunchOptions,
    check_servers,
    check_workers,
    describe_plan,
)


@contextlib.contextmanager
def one_line_errors(task: str) -> Iterator[None]:
    """Report failures of ``fab <task>`` as one line on stderr with a non-zero exit."""
    try:
        yield
    except LaunchError as e:
        raise Exit(f"fab {task}: {e}", code=e.code) from None
    except (ClientError, BotoCoreError) as e:
        raise Exit(f"fab {task}: {' '.join(aws.explain(e).split())}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(f"fab {task}: interrupted (Ctrl-C)", code=130) from None
    except OSError as e:  # this machine's side: a file we cannot read or write, a dead link
        raise Exit(f"fab {task}: {e}", code=1) from None


class RemainderExecutor(Executor):
    """Fabric's executor, except that the text after ``--`` goes to a task marked
    ``takes_remainder`` (as its ``overrides`` argument) when no ``-H`` hosts are given."""

    def expand_calls(self, calls, apply_hosts=True):
        remainder = self.core.remainder
        takers = [c for c in calls if getattr(getattr(c, "task", c), "takes_remainder", False)]
        if not remainder or not takers or self.core[0].args.hosts.value:
            return super().expand_calls(calls, apply_hosts)
        for call in takers:
            if call.kwargs.get("overrides"):
                raise Exit(
                    f"fab {call.task.name}: give Hydra overrides after -- or with --overrides, "
                    "not both",
                    code=2,
                )
            call.kwargs["overrides"] = remainder
        self.core.remainder = ""
        try:
            return super().expand_calls(calls, apply_hosts)
        finally:
            self.core.remainder = remainder


def install_remainder_executor() -> None:
    """Make the running ``fab`` program use RemainderExecutor (called by fabfile.py)."""
    import fabric.main

    fabric.main.program.executor_class = RemainderExecutor


class QuietStdout:
    """``sys.stdout`` for the running ``fab``: once the reader of a pipe has gone (``fab
    --list | head``), the rest of the output goes to /dev/null and fab carries on to
    its usual exit status, instead of ending in invoke's BrokenPipeError traceback."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered goes there too
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def install_quiet_stdout() -> None:
    """Give the running ``fab`` a :class:`QuietStdout` (called by fabfile.py)."""
    if not isinstance(sys.stdout, QuietStdout):
        sys.stdout = QuietStdout(sys.stdout)


def whole_number(value: int | str, flag: str) -> int:
    """A numeric flag's value (fab hands them over as strings), or a one-line UsageError."""
    try:
        return int(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {value!r}") from None


def default_run_name() -> str:
    return "bz-" + datetime.now(timezone.utc).strftime("%m%d-%H%M%S")


def _load(state_dir: str, run: str) -> state_io.ClusterState:
    state = state_io.load(state_dir, state_io.resolve_run(state_dir, run))
    if state.status != "ready" or not state.nodes:
        raise UsageError(
            f"run {state.run} is {state.status}, not ready: `fab terminate --run {state.run}` "
            "and launch again"
        )
    return state


def _log_dir(state_dir: str, run: str) -> Path:
    return state_io.run_dir(state_dir, run) / "logs"


# ----------------------------------------------------------------------------- tasks


def do_launch(
    *,
    workers: int | str,
    servers: int | str = 1,
    run: str = "",
    market: str = "on-demand",
    server_type: str,
    worker_type: str,
    region: str = "",
    zone: str = "",
    ami: str = "",
    ami_parameter: str = "",
    key_name: str = "",
    key_file: str = "",
    volume_size: int | str,
    ssh_from: str = "",
    ssh_user: str,
    hostfile: str = DEFAULT_HOSTFILE,
    state_dir: str = DEFAULT_STATE_DIR,
    dry_run: bool = False,
    wait_timeout: int | str = 600,
    ssh_timeout: int | str = 600,
) -> state_io.ClusterState | None:
    workers = whole_number(workers, "--workers")
    check_workers(workers)  # before any AWS lookup: a bad flag is the first thing said
    servers = whole_number(servers, "--servers")
    check_servers(servers)
    volume_size = whole_number(volume_size, "--volume-size")
    wait_timeout = whole_number(wait_timeout, "--wait-timeout")
    ssh_timeout = whole_number(ssh_timeout, "--ssh-timeout")
    session = aws.make_session(region)
    resolved = region or session.region_name or ""
    note = ""
    if dry_run and not resolved:  # a dry run calls nothing, so it needs no region
        resolved, note = "us-east-1", "not set (pass --region or set AWS_DEFAULT_REGION)"
    opts = LaunchOptions(
        workers=workers,
        servers=servers,
        run=run or default_run_name(),
        region=aws.resolve_region(session, resolved),
        zone=zone,
        market=market,
        server_type=server_type,
        worker_type=worker_type,
        ami=ami,
        ami_parameter=ami_parameter,
        key_name=key_name,
        key_file=key_file,
        volume_size=volume_size,
        ssh_from=ssh_from,
        ssh_user=ssh_user,
        state_dir=state_dir,
        hostfile=hostfile,
    )
    if dry_run:
        print(describe_plan(opts, region_note=note))
        return None
    aws.require_credentials(session)
    print(describe_plan(opts).replace(" (dry run: nothing was called or created)", ""))
    state = aws.launch_cluster(session, opts, wait_timeout=wait_timeout, ssh_timeout=ssh_timeout)
    print(
        f"ready: run {state.run}, {len(state.nodes)} nodes in {state.zone}. Next: `fab setup`, "
        f"then `fab train -- <overrides>`; they bill until `fab terminate --run {state.run}`"
    )
    return state


def do_setup(
    *,
    run: str = "",
    state_dir: str = DEFAULT_STATE_DIR,
    source_root: str | Path,
    python: str = "python3",
    system_site_packages: bool = False,
    pip_args: str = "",
    torch_index: str = "",
    efs: bool = False,
    timeout: int | str = 3600,
) -> None:
    timeout = whole_number(timeout, "--timeout")
    state = _load(state_dir, run)
    efs_dns = ""
    if efs:
        session = aws.make_session(state.region)
        state.efs_id = aws.ensure_efs(session, state)
        state_io.save(state, state_dir)
        efs_dns = aws.efs_dns_name(state.efs_id, state.region)
    remote.setup_cluster(
        state,
        source_root,
        _log_dir(state_dir, state.run),
        python=python,
        system_site_packages=system_site_packages,
        pip_args=pip_args,
        torch_index=torch_index,
        efs_dns=efs_dns,
        timeout=timeout,
    )
    mounted = f"; EFS mounted at {EFS_MOUNT_POINT}" if efs_dns else ""
    print(f"setup done on {len(state.nodes)} hosts{mounted}")


def do_train(
    *,
    run: str = "",
    state_dir: str = DEFAULT_STATE_DIR,
    hostfile: str = DEFAULT_HOSTFILE,
    overrides: str = "",
    nproc_per_node: int | str = 1,
    master_port: int | str = DEFAULT_MASTER_PORT,
    module: str = DEFAULT_MODULE,
    timeout: int | str = 0,
) -> None:
    nproc_per_node = whole_number(nproc_per_node, "--nproc-per-node")
    master_port = whole_number(master_port, "--master-port")
    timeout = whole_number(timeout, "--timeout")
    if nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    if not 1024 <= master_port <= 65535:
        raise UsageError(f"--master-port must be 1024..65535, got {master_port}")
    if not valid_module(module):
        raise UsageError(f"--module {module!r} is not a Python module name")
    try:
        args = shlex.split(overrides)
    except ValueError as e:
        raise UsageError(f"cannot parse the overrides ({e})") from None
    state_io.read_hostfile(hostfile)  # a missing hostfile is the first thing to report
    state = _load(state_dir, run)
    nodes = state_io.nodes_from_hostfile(state, hostfile)
    args = with_servers(args, nodes, nproc_per_node)
    remote.train_cluster(
        state,
        nodes,
        _log_dir(state_dir, state.run),
        overrides=args,
        nproc_per_node=nproc_per_node,
        master_port=master_port,
        module=module,
        timeout=timeout,
    )
    print(f"training finished on all {len(nodes)} nodes; `fab fetch` copies the outputs back")


def with_servers(args: list[str], nodes, nproc_per_node: int) -> list[str]:
    """The overrides, with ``ps_shards=S`` added for a cluster launched with
    ``--servers S`` (S > 1, one process per node) unless they set it already."""
    servers = sum(node.role == "server" for node in nodes)
    if servers <= 1 or nproc_per_node != 1 or any(a.startswith("ps_shards=") for a in args):
        return args
    return [*args, f"ps_shards={servers}"]


def do_stop(*, run: str = "", state_dir: str = DEFAULT_STATE_DIR) -> None:
    remote.stop_cluster(_load(state_dir, run))


def do_fetch(
    *,
    run: str = "",
    state_dir: str = DEFAULT_STATE_DIR,
    train_dir: str = DEFAULT_TRAIN_DIR,
    dest: str = "",
    all_nodes: bool = False,
) -> list[Path]:
    state = _load(state_dir, run)
    nodes = state.nodes if all_nodes else [state.server]
    target = Path(dest) if dest else Path("fetched") / state.run
    try:
        return remote.fetch_outputs(state, nodes, train_dir, target)
    except ValueError as e:
        raise UsageError(str(e)) from None


def do_status(*, run: str = "", region: str = "", state_dir: str = DEFAULT_STATE_DIR) -> None:
    run = state_io.resolve_run(state_dir, run)
    local = state_io.state_path(state_dir, run)
    state = state_io.load(state_dir, run) if local.exists() else None
    session = aws.make_session(region or (state.region if state else ""))
    region = state.region if state else aws.resolve_region(session, region)
    print(aws.format_status(run, region, aws.describe_run(session, region, run)))
    if state:
        print(f"  local state: {local} ({state.status}); hostfile: {state.hostfile}")


def do_terminate(
    *,
    run: str = "",
    region: str = "",
    state_dir: str = DEFAULT_STATE_DIR,
    wait_timeout: float = 600.0,
) -> aws.TerminateReport:
    run = state_io.resolve_run(state_dir, run)
    local = state_io.state_path(state_dir, run)
    state = state_io.load(state_dir, run) if local.exists() else None
    if state and region and region != state.region:
        raise UsageError(f"run {run} was launched in {state.region} (its state file), not {region}")
    session = aws.make_session(region or (state.region if state else ""))
    region = state.region if state else aws.resolve_region(session, region)
    report = aws.terminate_run(
        session,
        region,
        run,
        instance_ids=[n.instance_id for n in state.nodes] if state else (),
        wait_timeout=wait_timeout,
    )
    left = aws.describe_run(session, region, run)
    live = [i for i in left["instances"] if i["State"]["Name"] in aws.LIVE_STATES]
    if live or left["security_groups"] or left["key_pairs"]:
        raise LaunchError(
            f"run {run}: some resources remain ({len(live)} instances, "
            f"{len(left['security_groups'])} groups, {len(left['key_pairs'])} key pairs): "
            "run `fab terminate` again"
        )
    if state:
        hostfile = Path(state.hostfile)
        if hostfile.exists() and hostfile.read_text() == state_io.hostfile_text(state):
            hostfile.unlink()
        state_io.remove(state_dir, run)
    print(f"run {run} in {region}: {report.summary()}; AWS lists no instance, group or key of it")
    return report
