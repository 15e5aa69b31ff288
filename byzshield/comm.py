"""The only module that talks to torch.distributed (gloo).

Rank 0 is the parameter server, ranks 1..K the workers. Every step the server sends a
small control vector and the flat parameters to each worker and receives one flat
message per worker, all point to point under one deadline, so that a worker that
crashes or stays silent is named by its rank (a collective could only say "something
failed"). With a sharded server (``ps_shards=S``, ``num_servers``) ranks 0..S-1 are the
servers and ranks S..S+K-1 the workers: rank 0 still sends control and parameters, each
server receives its slice of every reply, and the servers exchange small messages
(:meth:`Comm.send_to_server`, :meth:`Comm.receive_from_server` with a server rank).

With no WORLD_SIZE in the environment, :func:`init` returns a single-process
:class:`Comm` whose collectives are no-ops, so server and worker code can be called and
tested in one process.

What listens on the network: gloo's one socket per rank, on the interface named by
``GLOO_SOCKET_IFNAME`` (:func:`init` sets it to the loopback interface when every rank
is on this machine; otherwise gloo uses the address the hostname resolves to), and the
rendezvous stores (unauthenticated TCP key-value stores). torchrun's own stores listen
on every interface whatever address they are given; ``python -m byzshield.comm`` is
torchrun with each store bound to the IP address it is given, and 127.0.0.1 for a
single-node run (:func:`torchrun`)::

    python -m byzshield.comm --standalone --nproc-per-node 16 -m byzshield.train
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Comm", "RankFailure", "init", "torchrun"]


class RankFailure(RuntimeError):
    """A peer rank crashed, closed its connection or stayed silent past the timeout
    (``timed_out``); ``rank`` is the peer's."""

    def __init__(self, rank: int, what: str, *, timed_out: bool = False):
        self.rank = rank
        self.timed_out = timed_out
        super().__init__(what)


@dataclass
class Comm:
    """This process's view of the process group."""

    rank: int = 0
    world_size: int = 1
    timeout: float = 300.0
    group: object = None  # the gloo process group (a torch ProcessGroup or Backend)
    owns_default: bool = False  # init() made torch.distributed's default group
    num_servers: int = 1  # ranks 0..num_servers-1 are the (sharded) parameter server
    _waiters: _Waiters | None = field(default=None, repr=False, compare=False)

    @property
    def distributed(self) -> bool:
        return self.group is not None

    @classmethod
    def local_group(
        cls, store, rank: int, world_size: int, *, timeout: float, num_servers: int = 1
    ) -> Comm:
        """This rank's Comm over its own gloo process group on ``store`` (a
        ``torch.distributed.HashStore`` shared by threads of one process, or a TCPStore):
        several ranks as threads in one process, for tests of the server and workers
        without processes (torchft's pattern). Blocks until all ``world_size`` ranks
        have joined."""
        group = dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout))
        return cls(
            rank=rank, world_size=world_size, timeout=timeout, group=group, num_servers=num_servers
        )

    @property
    def is_server(self) -> bool:
        """The parameter server, or with a sharded one its server 0 (the trainer)."""
        return self.rank == 0

    @property
    def is_shard_server(self) -> bool:
        """One of servers 1..S-1 of a sharded parameter server."""
        return 0 < self.rank < self.num_servers

    def worker_rank(self, w: int) -> int:
        """The rank of worker w (0-based): the servers come first."""
        return self.num_servers + w

    @property
    def worker(self) -> int:
        """This worker's index (its rank less the servers')."""
        return self.rank - self.num_servers

    def broadcast(self, tensor: torch.Tensor) -> None:
        """In place: every rank ends with rank 0's ``tensor``."""
        if not self.distributed:
            return
        try:
            self.group.broadcast(tensor, 0).wait(timedelta(seconds=self.timeout))
        except RuntimeError as exc:
            raise _server_failure(exc, self.timeout) from None

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's string on every rank (e.g. the output folder rank 0 chose)."""
        if not self.distributed:
            return text or ""
        data = torch.zeros(4096, dtype=torch.uint8)
        if self.rank == 0:
            raw = (text or "").encode()
            if len(raw) > data.numel():
                raise ValueError(f"text of {len(raw)} bytes is too long to broadcast (max 4096)")
            if raw:
                data[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        self.broadcast(data)
        return bytes(data.tolist()).rstrip(b"\0").decode()

    def send_to_workers(self, tensor: torch.Tensor) -> None:
        """Rank 0: send ``tensor`` to every worker, naming any that does not take it."""
        if not self.distributed:
            return
        ranks = list(range(self.num_servers, self.world_size))
        self._wait_each([self._send(tensor, r) for r in ranks], ranks)

    def receive_from_server(self, tensor: torch.Tensor, server: int = 0) -> None:
        """Fill ``tensor`` with rank 0's next message to this rank (or server
        ``server``'s, between the servers of a sharded parameter server)."""
        if not self.distributed:
            return
        try:
            self._wait(self._recv(tensor, server))
        except RuntimeError as exc:
            raise _server_failure(exc, self.timeout, server) from None

    def send_to_server(self, tensor: torch.Tensor, server: int = 0) -> None:
        """A message to rank 0 (or to server ``server`` of a sharded parameter server,
        from a worker or from another server)."""
        if not self.distributed:
            return
        try:
            self._wait(self._send(tensor, server))
        except RuntimeError as exc:
            raise _server_failure(exc, self.timeout, server) from None

    def receive_from_workers(self, buffers) -> None:
        """Rank 0: fill ``buffers[w]`` (a tensor's rows, or a list of tensors) with worker
        rank w+1's next message, naming any worker that fails."""
        if not self.distributed:
            return
        ranks = [self.worker_rank(w) for w in range(len(buffers))]
        self._wait_each([self._recv(buffers[w], r) for w, r in enumerate(ranks)], ranks)

    def receive_as_completed(self, buffers) -> Iterator[int]:
        """Rank 0: as :meth:`receive_from_workers`, yielding each worker index w as its
        message lands in ``buffers[w]``, in arrival order, so that the server can work
        on what arrived while the rest is on the wire. Every receive is posted at once
        under one deadline; a worker that fails or stays silent is named when its turn
        comes. Consume it to the end (a gloo receive cannot be polled: one waiting
        thread per worker hands each arrival over)."""
        if not self.distributed:
            yield from range(len(buffers))
            return
        works = [self._recv(buffers[w], self.worker_rank(w)) for w in range(len(buffers))]
        deadline = time.monotonic() + self.timeout
        arrived: queue.SimpleQueue = queue.SimpleQueue()

        def wait(w: int) -> None:
            try:
                left = max(0.001, deadline - time.monotonic())
                ok = works[w].wait(timedelta(seconds=left))
                arrived.put((w, None if ok is not False else TimeoutError("timed out")))
            except Exception as exc:  # noqa: BLE001 - every failure reaches the server thread
                arrived.put((w, exc))

        if self._waiters is None:
            self._waiters = _Waiters()
        for w in range(len(works)):
            self._waiters.run(w, wait, w)
        for _ in works:
            w, exc = arrived.get()
            if exc is not None:
                raise _worker_failure(self.worker_rank(w), exc, self.timeout, w)
            yield w

    def send_each(self, messages: dict[int, torch.Tensor]) -> None:
        """Rank 0: send ``messages[w]`` to worker w only."""
        if not self.distributed:
            return
        ranks = [self.worker_rank(w) for w in messages]
        works = [self._send(t, r) for r, t in zip(ranks, messages.values(), strict=True)]
        self._wait_each(works, ranks)

    def receive_each(self, buffers: dict[int, torch.Tensor]) -> None:
        """Rank 0: fill ``buffers[w]`` with worker w's next message."""
        if not self.distributed:
            return
        ranks = [self.worker_rank(w) for w in buffers]
        works = [self._recv(t, r) for r, t in zip(ranks, buffers.values(), strict=True)]
        self._wait_each(works, ranks)

    def _send(self, tensor: torch.Tensor, rank: int):
        return self.group.send([tensor], rank, 0)

    def _recv(self, tensor: torch.Tensor, rank: int):
        return self.group.recv([tensor], rank, 0)

    def _wait(self, work) -> None:
        """Wait for one operation; a timeout raises (gloo's own error names it)."""
        if work.wait(timedelta(seconds=self.timeout)) is False:
            raise RuntimeError(f"timed out after {self.timeout:g} s")

    def _wait_each(self, works: list, ranks: list[int]) -> None:
        """Wait for per-worker operations (works[i] is rank ``ranks[i]``'s) under one
        deadline."""
        deadline = time.monotonic() + self.timeout
        for work, rank in zip(works, ranks, strict=True):
            w = rank - self.num_servers
            left = max(0.001, deadline - time.monotonic())
            try:
                ok = work.wait(timedelta(seconds=left))
            except RuntimeError as exc:
                raise _worker_failure(rank, exc, self.timeout, w) from None
            if ok is False:
                raise _worker_failure(rank, TimeoutError("timed out"), self.timeout, w)

    def close(self) -> None:
        if self.owns_default and dist.is_initialized():
            dist.destroy_process_group()
        self.group, self.owns_default = None, False


class _Waiters:
    """One daemon thread per worker index, kept across steps, each running the jobs it is
    given in order. Daemon threads: a wait left behind by a failed step (a silent worker)
    never holds up the process's exit."""

    def __init__(self) -> None:
        self.inboxes: list[queue.SimpleQueue] = []

    def run(self, w: int, job, *args) -> None:
        while len(self.inboxes) <= w:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(inbox,), daemon=True, name="receive").start()
            self.inboxes.append(inbox)
        self.inboxes[w].put((job, args))


def _serve(inbox: queue.SimpleQueue) -> None:
    while True:
        job, args = inbox.get()
        job(*args)


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _node_of(rank: int) -> str:
    """ " on task 1 on node7" when the run spans Slurm tasks (byzshield.slurm says where
    every rank runs), else ""."""
    names = os.environ.get("BYZSHIELD_RANK_NODES")
    if not names:
        return ""
    try:
        return f" on {json.loads(names)[rank]}"
    except (ValueError, IndexError, TypeError):
        return ""


def _worker_failure(rank: int, exc: BaseException, timeout: float, w: int) -> RankFailure:
    who = f"rank {rank} (worker {w}){_node_of(rank)}"
    if _timed_out(exc):
        return RankFailure(
            rank, f"{who} did not answer within {timeout:g} s (timeout)", timed_out=True
        )
    return RankFailure(rank, f"{who} failed or closed its connection: {_short(exc)}")


def _server_failure(exc: BaseException, timeout: float, rank: int = 0) -> RankFailure:
    """What a worker says when a server fails: a hung server is named by no one else."""
    who = "the parameter server (rank 0)" if rank == 0 else f"parameter server rank {rank}"
    if _timed_out(exc):
        return RankFailure(
            rank, f"{who} did not answer within {timeout:g} s (timeout)", timed_out=True
        )
    lost = "the parameter server (rank 0)" if rank == 0 else f"parameter server rank {rank}"
    return RankFailure(rank, f"lost {lost}: {_short(exc)}")


def init(*, timeout: float, job: int = 0, num_servers: int = 1) -> Comm:
    """Join the process group that torchrun describes in the environment.

    Ranks 0..``num_servers``-1 are the parameter server's (``ps_shards``), the rest the
    workers. Each Hydra multirun job passes its own ``job`` number: its process group lives under
    its own key prefix of the rendezvous store, so consecutive jobs never see each
    other's keys. When every rank runs on this machine (LOCAL_WORLD_SIZE = WORLD_SIZE)
    and GLOO_SOCKET_IFNAME is unset, gloo is bound to the loopback interface.
    """
    if "WORLD_SIZE" not in os.environ:
        return Comm(timeout=timeout, num_servers=num_servers)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.environ.get("LOCAL_WORLD_SIZE") == str(world):
        loopback = _loopback_interface()
        if loopback:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback  # read by gloo's device: no other door
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = _tcp_store(
        host,
        port,
        None if agent_store else world,
        rank == 0 and not agent_store,
        timedelta(seconds=timeout),
        wait_for_workers=False,
    )
    # a restarted attempt (torchrun --max-restarts) must not read the dead attempt's keys
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"byzshield/job{job}/attempt{attempt}/", store)
    dist.init_process_group(
        "gloo",
        store=prefixed,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout),
    )
    group = dist.distributed_c10d._get_default_group()
    return Comm(
        rank=rank,
        world_size=world,
        timeout=timeout,
        group=group,
        owns_default=True,
        num_servers=num_servers,
    )


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else next((n for n in names if n.startswith("lo")), None)


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


def torchrun(argv: Sequence[str]) -> None:
    """torchrun (``torch.distributed.run``, same arguments) whose rendezvous stores,
    given an IP address (the rendezvous endpoint, ``--master-addr``, ``--local-addr``),
    listen on that address only. A single-node run (``--standalone``, or no rendezvous
    arguments) uses 127.0.0.1 throughout: nothing listens beyond loopback."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import record
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
    try:
        record(run.run)(args)
    except SignalException as exc:  # the agent has stopped every rank: one line, no traceback
        print(f"torchrun: stopped by {exc.sigval.name}; every rank has exited", file=sys.stderr)
        sys.exit(128 + exc.sigval)


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


if __name__ == "__main__":
    torchrun(sys.argv[1:])
