"""``python -m byzshield.comm``: torchrun whose rendezvous stores listen where they are
told, and whose failures end in one line.

What listens on the network: the rendezvous stores (unauthenticated TCP key-value
stores: whoever reaches them can join or disrupt the run) and gloo's one socket per
rank (:func:`byzshield.engines.torchrun.comm.init`). torchrun's own stores listen on every interface
whatever address they are given; :func:`torchrun` here is torchrun with each store
bound to the IP address it is given, and 127.0.0.1 for a single-node run::

    python -m byzshield.comm --standalone --nproc-per-node 16 -m byzshield.train

When a rank fails, torchrun's agent stops every rank and prints a report of each; here
the console gets one line instead (:func:`failure_line`) and the report goes to a file.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["REPORT_ENV", "failure_line", "torchrun"]


def _tcp_store(
    host_name: str,
    port: int,
    world_size: int | None = None,
    is_master: bool = False,
    timeout: timedelta = timedelta(seconds=300),
    wait_for_workers: bool = True,
    multi_tenant: bool = False,
    master_listen_fd: int | None = None,
    use_libuv: bool = True,
) -> dist.TCPStore:
    """``dist.TCPStore`` (same arguments), except that a server given an IP address
    listens on that address only; TCPStore's own server listens on every interface
    (0.0.0.0 and ::). A host name is left to TCPStore: it may resolve to a different
    address here (e.g. 127.0.1.1) than on the nodes that connect to it."""
    if is_master and master_listen_fd is None and _is_ip(host_name):
        listener = _listen(host_name, port)
        port = listener.getsockname()[1]
        master_listen_fd = listener.detach()  # the store's server owns it from here
    return dist.TCPStore(
        host_name,
        port,
        world_size,
        is_master,
        timeout,
        wait_for_workers,
        multi_tenant,
        master_listen_fd,
        use_libuv,
    )


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (RuntimeError, like TCPStore's, if not)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def _shared_store_server(_handler, master_addr: str, master_port: int) -> dist.TCPStore:
    return _tcp_store(master_addr, master_port, is_master=True, multi_tenant=True)


REPORT_ENV = "BYZSHIELD_TORCHRUN_LOG"
"""Where :func:`torchrun` writes its agent's log and report (the launcher sets it to the
run folder's ``torchrun.log``)."""


def torchrun(argv: Sequence[str]) -> None:
    """torchrun (``torch.distributed.run``, same arguments) whose rendezvous stores,
    given an IP address (the rendezvous endpoint, ``--master-addr``, ``--local-addr``),
    listen on that address only. A single-node run (``--standalone``, or no rendezvous
    arguments) uses 127.0.0.1 throughout: nothing listens beyond loopback.

    When a rank fails, torchrun's agent stops every rank and reports each of them; here
    the console gets one line, which rank and why, and the report goes to a file:
    ``$BYZSHIELD_TORCHRUN_LOG`` (the launcher's ``torchrun.log`` in the run folder, which
    also gets the agent's own log lines), else ``torchrun-<pid>.log`` in the temporary
    folder."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.elastic.rendezvous import (
        c10d_rendezvous_backend,
        dynamic_rendezvous,
        static_tcp_rendezvous,
    )

    args = run.parse_args(list(argv))
    _check_ports(args)
    # The three places torchrun's agent creates a store server (read in torch 2.14).
    handler = dynamic_rendezvous.DynamicRendezvousHandler
    for owner, name in (
        (c10d_rendezvous_backend, "TCPStore"),
        (static_tcp_rendezvous, "TCPStore"),
        (handler, "_create_tcp_store_server"),
    ):
        if not hasattr(owner, name):
            raise RuntimeError(
                f"torch {torch.__version__} has no {owner.__name__}.{name}: byzshield.comm "
                "cannot bind torchrun's stores; use torchrun itself (stores on every interface)"
            )
    c10d_rendezvous_backend.TCPStore = _tcp_store
    static_tcp_rendezvous.TCPStore = _tcp_store
    handler._create_tcp_store_server = _shared_store_server
    one_node = args.rdzv_backend == "static" and not args.rdzv_endpoint
    one_node = one_node and args.master_port is None
    if args.standalone or (one_node and run.parse_min_max_nnodes(args.nnodes)[1] == 1):
        # what torchrun does for these, with 127.0.0.1 in place of localhost and the FQDN
        args.standalone = False
        args.rdzv_backend, args.rdzv_endpoint = "c10d", "127.0.0.1:0"
        args.rdzv_id = str(uuid.uuid4())
        args.local_addr = args.local_addr or "127.0.0.1"
    report = os.environ.get(REPORT_ENV)
    if report:
        _agent_log_to(report)
    try:
        record(run.run)(args)
    except SignalException as exc:  # the agent has stopped every rank: one line, no traceback
        print(f"torchrun: stopped by {exc.sigval.name}; every rank has exited", file=sys.stderr)
        sys.exit(128 + exc.sigval)
    except ChildFailedError as exc:  # the agent has stopped every rank: one line, the report
        report = _write_report(exc, report or _temporary_log())
        print(failure_line(exc, report), file=sys.stderr, flush=True)
        sys.exit(1)


def failure_line(exc, report: str) -> str:
    """The one line for torchrun's ``ChildFailedError``: the rank that failed first (not
    one the agent stopped with SIGTERM because another failed), and why."""
    import signal

    def stopped(failure) -> bool:  # by the agent, after another rank failed
        return failure.exitcode == -signal.SIGTERM and failure.error_file == "<N/A>"

    rank, failure = min(
        exc.failures.items(), key=lambda kv: (stopped(kv[1]), kv[1].timestamp, kv[0])
    )
    if failure.exitcode < 0:
        why = f"was killed by {failure.signal_name()}"
    elif failure.error_file != "<N/A>" and isinstance(failure.message, str):
        why = f"exited with code {failure.exitcode}: {failure.message.strip().splitlines()[0]}"
    else:
        why = f"exited with code {failure.exitcode} (its log: rank{rank}.log in the run folder)"
    return f"torchrun: rank {rank} {why}; every rank was stopped (torchrun's report: {report})"


def _temporary_log() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"torchrun-{os.getpid()}.log")


def _agent_log_to(path: str) -> None:
    """Send the torchrun agent's log lines (torch.distributed's loggers) to ``path``,
    made when the first line is written."""
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    agent = logging.getLogger("torch.distributed")
    agent.handlers[:] = [handler]
    agent.propagate = False


def _write_report(exc, path: str) -> str:
    """Append torchrun's report of the failed ranks to ``path``; returns the path."""
    with open(path, "a") as out:
        out.write(exc.format_msg() + "\n")
    return path


def _check_ports(args) -> None:
    """``--master-port`` must be a TCP port (1..65535) and the port of
    ``--rdzv-endpoint`` one or 0 (any free port, one node): one line and exit 2, not
    torch's traceback."""
    ports = [("--master-port", args.master_port, 1)]
    endpoint = args.rdzv_endpoint or ""
    if ":" in endpoint and not endpoint.endswith("]"):  # host:port, [v6]:port
        ports.append(("--rdzv-endpoint", endpoint.rpartition(":")[2], 0))
    for flag, port, low in ports:
        if port is not None and not (str(port).isdigit() and low <= int(port) <= 65535):
            print(f"error: {flag} needs a TCP port in {low}..65535, got {port}", file=sys.stderr)
            sys.exit(2)
