"""The only package that talks to torch.distributed (gloo): this module, the process
group, and :mod:`byzshield.engines.torchrun.launch`, torchrun with its stores bound.

Rank 0 is the parameter server, ranks 1..K the workers. Every step the server sends a
small control vector and the flat parameters to each worker and receives one flat
message per worker, all point to point under one deadline, so that a worker that
crashes or stays silent is named by its rank (a collective could only say "something
failed"). With a sharded server (``ps_shards=S``, ``num_servers``) ranks 0..S-1 are the
servers and ranks S..S+K-1 the workers: rank 0 still sends control and parameters, each
server receives its slice of every reply, and the servers exchange small messages
(:meth:`Comm.send_to_server`, :meth:`Comm.receive_from_server` with a server rank).

A server's exchanges with the workers (:meth:`Comm.send_each`, :meth:`Comm.receive_each`,
:meth:`Comm.receive_as_completed`) never raise for a worker: they return each worker
that failed, with a :class:`RankFailure`, and the server drops it
(:mod:`byzshield.engines.torchrun`). What gloo allows, measured with torch 2.14's gloo:

- a worker that crashes or closes its connection fails its own operations only: the
  other ranks' connections go on;
- gloo's own timeout is fatal to everyone: a receive that times out in gloo closes the
  connection to every rank. So a server never lets gloo time an operation out: each
  is waited for, without a limit, on a thread of its worker's, and the server stops
  waiting at ``timeout``. An operation abandoned so stays posted: gloo may still write
  a late message into its buffer, so it is kept (:attr:`Comm.abandoned`) and its buffer
  is never read or given to anyone else (the engine keeps every worker's buffers to
  itself);
- a message shorter than the posted buffer is accepted, one longer aborts the receiving
  process: see :class:`byzshield.server.wire.Slot`.

A worker, or another server, waits up to twice ``timeout`` for a server, which may be
waiting ``timeout`` for a late worker before it answers. A worker the server dropped
learns it from the rendezvous store (:meth:`Comm.dropped_note`) when its own wait ends,
and returns quietly.

With no WORLD_SIZE in the environment, :func:`init` returns a single-process
:class:`Comm` whose collectives are no-ops, so server and worker code can be called and
tested in one process.

What listens on the network: gloo's one socket per rank, on the interface named by
``GLOO_SOCKET_IFNAME`` (:func:`init` sets it to the loopback interface when every rank
is on this machine; otherwise gloo uses the address the hostname resolves to), and the
rendezvous stores, bound where they are told by :mod:`byzshield.engines.torchrun.launch`
(``python -m byzshield.comm``, torchrun with its stores bound, and its failures said in
one line)::

    python -m byzshield.comm --standalone --nproc-per-node 16 -m byzshield.train
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from byzshield.engines.torchrun.launch import REPORT_ENV, _tcp_store, failure_line, torchrun

__all__ = ["REPORT_ENV", "Comm", "RankFailure", "failure_line", "init", "torchrun"]


_TWICE = "2 x timeout"
_FOREVER = timedelta(seconds=4e9)
"""What a server passes to gloo as an operation's timeout: never reached (gloo's timeout
would close every connection); the server's own deadline is ``timeout``. About 127
years: beyond the longest ``timeout`` (1e9 s) and twice it (a wait for a server), and
within gloo's clock (nanoseconds in 64 bits: about 292 years)."""


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
    store: object = None  # the rendezvous store (a dropped worker's note is left there)
    abandoned: list = field(default_factory=list, repr=False, compare=False)
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
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            group=group,
            num_servers=num_servers,
            store=store,
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

    @property
    def server_timeout(self) -> float:
        """How long a worker or another server waits for a server: twice ``timeout``
        (the server may itself be waiting ``timeout`` for a late worker)."""
        return 2 * self.timeout

    def send_to_workers(
        self, tensor: torch.Tensor, workers: Sequence[int]
    ) -> dict[int, RankFailure]:
        """A server: send ``tensor`` to each of ``workers``; those that did not take it
        (:meth:`send_each`)."""
        return self.send_each({w: tensor for w in workers})

    def receive_from_server(self, tensor: torch.Tensor, server: int = 0) -> None:
        """Fill ``tensor`` with rank 0's next message to this rank (or server
        ``server``'s, between the servers of a sharded parameter server)."""
        if not self.distributed:
            return
        try:
            self._wait(self._recv(tensor, server))
        except RuntimeError as exc:
            raise _server_failure(exc, self.server_timeout, server, _TWICE) from None

    def send_to_server(self, tensor: torch.Tensor, server: int = 0) -> None:
        """A message to rank 0 (or to server ``server`` of a sharded parameter server,
        from a worker or from another server)."""
        if not self.distributed:
            return
        try:
            self._wait(self._send(tensor, server))
        except RuntimeError as exc:
            raise _server_failure(exc, self.server_timeout, server, _TWICE) from None

    def receive_as_completed(
        self, buffers: dict[int, torch.Tensor]
    ) -> Iterator[tuple[int, RankFailure | None]]:
        """A server: receive worker w's next message into ``buffers[w]`` for every w, all
        posted at once under one deadline; yields (w, None) as each lands, in arrival
        order, so that the server can work on what arrived while the rest is on the
        wire, and (w, failure) for a worker that failed or was not heard from within
        ``timeout`` (:meth:`_settle`). Consume it to the end."""
        if not self.distributed:
            yield from ((w, None) for w in buffers)
            return
        yield from self._settle({w: self._post(self._recv, t, w) for w, t in buffers.items()})

    def send_each(self, messages: dict[int, torch.Tensor]) -> dict[int, RankFailure]:
        """A server: send ``messages[w]`` to worker w, under one deadline; the workers
        that did not take theirs, each with its failure."""
        if not self.distributed:
            return {}
        works = {w: self._post(self._send, t, w) for w, t in messages.items()}
        return {w: failure for w, failure in self._settle(works) if failure is not None}

    def receive_each(self, buffers: dict[int, torch.Tensor]) -> dict[int, RankFailure]:
        """A server: fill ``buffers[w]`` with worker w's next message, under one deadline;
        the workers that failed, each with its failure."""
        return {w: failure for w, failure in self.receive_as_completed(buffers) if failure}

    def tell_dropped(self, w: int, why: str) -> None:
        """A server: leave worker w a note that it was dropped (best effort)."""
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.set(_dropped_key(self.worker_rank(w)), why)

    def dropped_note(self) -> str | None:
        """A worker: why a server dropped it, or None (not dropped, or no store left to
        ask)."""
        key = _dropped_key(self.rank)
        try:
            if self.store is None or not self.store.check([key]):
                return None
            return self.store.get(key).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the store went with the server: no note
            return None

    def _send(self, tensor: torch.Tensor, rank: int):
        return self.group.send([tensor], rank, 0)

    def _recv(self, tensor: torch.Tensor, rank: int):
        return self.group.recv([tensor], rank, 0)

    def _post(self, op, tensor: torch.Tensor, w: int):
        """Post ``op`` (``_send`` or ``_recv``) with worker w: its work, or the error gloo
        raised at once (a connection already closed)."""
        try:
            return op(tensor, self.worker_rank(w)), tensor
        except RuntimeError as exc:
            return exc

    def _wait(self, work) -> None:
        """Wait for one operation with a server (twice ``timeout``); a timeout raises
        (gloo's own error names it)."""
        if work.wait(timedelta(seconds=self.server_timeout)) is False:
            raise RuntimeError(f"timed out after {self.server_timeout:g} s")

    def _settle(self, posted: dict) -> Iterator[tuple[int, RankFailure | None]]:
        """Each of a server's operations with the workers (``posted[w]``: worker w's
        (work, tensor), or the error posting it raised) as it completes, in completion
        order: (w, None), or (w, failure). One deadline, ``timeout`` from now; gloo is
        never allowed to time out (it would close every connection): each operation is
        waited for without a limit on worker w's own thread, and one not done by the
        deadline is abandoned, kept in :attr:`abandoned` with its tensor (gloo may
        still write into it), and named as timed out."""
        deadline = time.monotonic() + self.timeout
        done: queue.SimpleQueue = queue.SimpleQueue()
        if self._waiters is None:
            self._waiters = _Waiters()
        pending = {}
        for w, item in posted.items():
            if isinstance(item, BaseException):
                yield w, _worker_failure(self.worker_rank(w), item, self.timeout, w)
            else:
                pending[w] = item
                self._waiters.run(w, _complete, item[0], w, done)
        while pending:
            try:
                w, exc = done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                for w in sorted(pending):
                    self.abandoned.append(pending[w])
                    late = TimeoutError("timed out")
                    yield w, _worker_failure(self.worker_rank(w), late, self.timeout, w)
                return
            del pending[w]
            yield (
                w,
                None if exc is None else _worker_failure(self.worker_rank(w), exc, self.timeout, w),
            )

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


def _complete(work, w: int, done: queue.SimpleQueue) -> None:
    """Wait for ``work`` without a limit and put (w, None or its error) in ``done``."""
    try:
        work.wait(_FOREVER)
        done.put((w, None))
    except Exception as exc:  # noqa: BLE001 - every failure reaches the server thread
        done.put((w, exc))


def _dropped_key(rank: int) -> str:
    return f"byzshield/dropped/{rank}"


def _short(exc: BaseException) -> str:
    """The gist of an error: its first sentence, without gloo's ``[file:line]`` prefix."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return text.split(". ")[0][:200]


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


def _server_failure(
    exc: BaseException, seconds: float, rank: int = 0, limit: str = "timeout"
) -> RankFailure:
    """What a worker says when a server fails: a hung server is named by no one else.
    ``limit`` says what ``seconds`` is."""
    who = "the parameter server (rank 0)" if rank == 0 else f"parameter server rank {rank}"
    if _timed_out(exc):
        return RankFailure(
            rank, f"{who} did not answer within {seconds:g} s ({limit})", timed_out=True
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
        store=prefixed,
    )


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else next((n for n in names if n.startswith("lo")), None)
