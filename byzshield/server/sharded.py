"""A sharded parameter server: S servers, each owning a contiguous slice of the columns.

``ps_shards=S`` splits the flattened parameters into S contiguous slices of whole
reduction blocks (:func:`byzshield.aggregators.reduction_block`), balanced by bytes.
Every worker sends each server only that server's slice of each file gradient, so the
gradient bytes into one server are the total divided by S. The servers decide exactly
what one server holding whole vectors decides, bit for bit (docs/design.md section 7):

- **The vote, per slice, decided together.** Each server puts each file's copies into
  classes of bit-equal copies on its slice (:func:`byzshield.server.vote.copy_classes`);
  the servers exchange these classes, an (f, r) int16 table each, and a copy agrees with
  another only when they are in one class on every slice
  (:func:`byzshield.server.vote.decide_classes`): a file is trusted only when the same
  strict majority agrees on every slice. A Byzantine worker that sends one server an
  honest slice and another a forged one is therefore one whose whole vector is forged.
- **Rules across slices.** Coordinate-wise rules run on each slice alone. Every sum over
  columns (Gram matrices, distances, norms, projections, the non-finite scan) is a sum of
  per-block partials added in column order; each server computes its blocks' partials,
  the servers pass a running total from server 0 to server S - 1 (an n x n matrix or n
  numbers per block, never gradients), and the last sends the total to every other, in
  float64 (:class:`byzshield.aggregators.ColumnShard`). So every server makes the same
  selection, and the result is the one an unsharded server gets.
- **Omniscient attacks** (ALIE, IPM) forge from per-slice statistics, which are the
  coordinate-wise statistics of the whole vector; an optimised attack's objective is a
  norm, reduced as above.

The exchanges are written once, over :class:`Peers` (ordered messages of small arrays
between the servers), with two transports: :class:`ThreadPeers` (the servers as threads
of one process) and the torchrun engine's gloo
(:class:`byzshield.engines.torchrun.TorchrunPeers`). Over either, server 0 is a
:class:`LeadUpdate` (it tells the others the start-up state, :func:`receive_start`, and
puts the step's slices together) and each of servers 1..S-1 is a :class:`ShardServer`;
:class:`ShardedUpdate` runs all S as threads (the simulate engine). Not sharded: the
digest vote. Messages and measurements: docs/shards.md.

    >>> shard_bounds(131_080, 4)  # LeNet: 129 blocks of 1,024 columns
    [(0, 32768), (32768, 65536), (65536, 98304), (98304, 131080)]
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators import ColumnShard, reduction_block
from byzshield.compute.threads import started_pool
from byzshield.design.placements import Placement
from byzshield.server.copies import Copies
from byzshield.server.metrics import Outcome
from byzshield.server.rule import StepRule
from byzshield.server.vote import Rows
from byzshield.server.wire import ReplyLayout

__all__ = [
    "Aborted",
    "Exchange",
    "LeadUpdate",
    "Peers",
    "ServerUpdate",
    "ShardServer",
    "ShardedUpdate",
    "StartUp",
    "ThreadPeers",
    "bytes_per_server",
    "receive_start",
    "shard_bounds",
    "slice_copies",
]


def shard_bounds(d: int, num_shards: int) -> list[tuple[int, int]]:
    """S contiguous column ranges covering [0, d), balanced by columns: boundary s is
    s d / S rounded to the nearest multiple of the reduction block (so every server's
    blocks are whole blocks of the unsharded reductions): each within one block of d / S
    columns once d / S is a few blocks (at least 128 blocks: within 3.2 % for S = 4).

    Raises:
        ValueError: S < 1, or more shards than reduction blocks.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"ps_shards must be an integer >= 1, got {num_shards!r}")
    block = reduction_block(d)
    blocks = -(-d // block)
    if num_shards > blocks:
        raise ValueError(
            f"ps_shards={num_shards} is more than the {blocks} blocks of {block} columns "
            f"a {d:,}-parameter model splits into: use at most {blocks}"
        )
    cuts = [0]
    for s in range(1, num_shards):
        cut = round(s * d / num_shards / block) * block
        cuts.append(min(max(cut, cuts[-1] + block), (blocks - num_shards + s) * block))
    cuts.append(d)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def bytes_per_server(placement: Placement, bounds: list[tuple[int, int]]) -> list[int]:
    """What each server receives from the workers in a step: every worker's reply
    header and its columns of each gradient (:class:`~byzshield.server.wire.ReplyLayout`)."""
    K, load = placement.num_workers, placement.load
    return [K * ReplyLayout(load, hi - lo).nbytes() for lo, hi in bounds]


def slice_copies(copies: Copies, lo: int, hi: int) -> Copies:
    """What server [lo, hi) receives of ``copies``: each row's columns lo..hi (copied
    contiguous, as a server's receive buffer is), the same index, losses and erasures.
    The full vote only (no digests, nothing still on the wire)."""
    if copies.claims is not None or copies.arrivals is not None or copies.fetch is not None:
        raise ValueError("a sharded server takes the full vote's copies, every row received")
    blocks = [b[:, lo:hi].contiguous() for b in copies.rows.blocks]
    return Copies(Rows(*blocks), copies.index, copies.losses, copies.present)


# --------------------------------------------------------------------------------------
# The exchanges between the servers, over any transport


class Peers(Protocol):
    """This server's end of the channels between the S servers: messages of small NumPy
    arrays, delivered between each pair in the order sent. Every server takes part in
    every exchange in the same order (they run the same code on the same decisions), so
    the receiver always knows the shape and dtype of what comes (``like``)."""

    server: int  # this server, 0..S-1
    num_servers: int  # S

    def send(self, array: np.ndarray, to: int) -> None:
        """Send ``array`` to server ``to``."""
        ...

    def receive(self, like: np.ndarray, source: int) -> np.ndarray:
        """The next array from server ``source``, of ``like``'s shape and dtype."""
        ...


class Exchange:
    """Server s's exchanges with the other servers, over its :class:`Peers`.

    :meth:`reduce` is a chain in server order: server 0 adds its per-block partials in
    column order and passes the running total to server 1, which adds its own and passes
    it on; the last server sends the total to every other. :meth:`gather` hands every
    server every server's arrays, in server order (server t sends its arrays to every
    other, t = 0..S-1). :meth:`shard` is the :class:`~byzshield.aggregators.ColumnShard`
    the rules use. ``sent`` counts the bytes of the arrays this server sent, as it holds
    them (``control_bytes``).
    """

    def __init__(self, peers: Peers):
        self.peers, self.sent = peers, 0

    def shard(self, offset: int, total: int) -> ColumnShard:
        return ColumnShard(offset, total, self.reduce, self.gather)

    def _send(self, array: np.ndarray, to: int) -> None:
        self.sent += array.nbytes
        self.peers.send(array, to)

    def reduce(self, partials: list, combine: Callable) -> np.ndarray:
        s, last = self.peers.server, self.peers.num_servers - 1
        if s == 0:
            acc, rest = np.array(partials[0], copy=True), partials[1:]
        else:
            acc, rest = self.peers.receive(np.asarray(partials[0]), s - 1), partials
        for part in rest:
            combine(acc, part, out=acc)
        if s < last:
            self._send(acc, s + 1)
            return self.peers.receive(acc, last)
        for t in range(last):
            self._send(acc, t)
        return acc

    def gather(self, items: list) -> list:
        s, S = self.peers.server, self.peers.num_servers
        arrays = [np.ascontiguousarray(a) for a in items]
        out: list[list[np.ndarray]] = [[] for _ in range(S)]
        out[s] = arrays
        for t in range(S):  # in server order: t sends, then everyone else
            if t == s:
                for other in range(S):
                    if other != s:
                        for a in arrays:
                            self._send(a, other)
            else:
                out[t] = [self.peers.receive(a, t) for a in arrays]
        return [a for part in out for a in part]


class Aborted(Exception):
    """Another server of the step failed: this one stops waiting for it."""


class ThreadPeers:
    """The channels between S servers run as threads of one process: a queue for each
    (sender, receiver) pair; :meth:`group` makes every server's end. When one server
    fails, :meth:`abort` releases the others waiting on a channel (:class:`Aborted`);
    :meth:`reset` gives fresh channels (after a failed step)."""

    def __init__(self, server: int, channels: _Channels):
        self.server, self.num_servers, self._channels = server, channels.num_servers, channels

    @classmethod
    def group(cls, num_servers: int) -> list[ThreadPeers]:
        channels = _Channels(num_servers)
        return [cls(s, channels) for s in range(num_servers)]

    def send(self, array: np.ndarray, to: int) -> None:
        self._channels.queues[(self.server, to)].put(np.array(array, copy=True))

    def receive(self, like: np.ndarray, source: int) -> np.ndarray:
        channels = self._channels
        while True:
            try:
                return channels.queues[(source, self.server)].get(timeout=0.05)
            except queue.Empty:
                if channels.aborted.is_set():
                    raise Aborted from None

    def abort(self) -> None:
        self._channels.aborted.set()

    def reset(self) -> None:
        self._channels.reset()


class _Channels:
    def __init__(self, num_servers: int):
        self.num_servers = num_servers
        self.reset()

    def reset(self) -> None:
        S = self.num_servers
        self.queues = {(a, b): queue.SimpleQueue() for a in range(S) for b in range(S) if a != b}
        self.aborted = threading.Event()


# --------------------------------------------------------------------------------------
# Server 0 and servers 1..S-1, over any transport


class ServerUpdate(Protocol):
    """The robust update of one server's columns
    (:class:`byzshield.server.update.RobustUpdate` over a
    :class:`~byzshield.aggregators.ColumnShard`)."""

    rule: StepRule

    def __call__(
        self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded: tuple = ()
    ) -> Outcome: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


@dataclass
class StartUp:
    """What server 0 tells the other servers before the first step: the f the rule
    assumes (server 0 ran the worst-case search), whether the rule runs outside its
    guarantee, the rule's state (a resumed run's) cut to the receiver's columns, and the
    f it assumes with e workers excluded (``f_after[e]``, ``detect=exclude``)."""

    rule_f: int
    outside_guarantee: bool
    state: dict[str, Tensor]
    f_after: tuple[int, ...] = ()


_TEXT_BYTES = 4096


def receive_start(peers: Peers, width: int) -> StartUp:
    """Servers 1..S-1: the :class:`StartUp` server 0's :meth:`LeadUpdate.start` sends, its
    state ``width`` columns (this server's)."""
    text = peers.receive(np.zeros(_TEXT_BYTES, dtype=np.uint8), 0)
    told = json.loads(bytes(text).rstrip(b"\0").decode())
    state = {}
    for key in sorted(told["state"]):
        state[key] = torch.from_numpy(peers.receive(np.empty(width, dtype=np.float32), 0))
    f_after = tuple(told.get("f_after", ()))
    return StartUp(told["aggregator_f"], bool(told["outside_guarantee"]), state, f_after)


def _text(text: str) -> np.ndarray:
    raw = text.encode()
    if len(raw) > _TEXT_BYTES:
        raise ValueError(f"start-up message of {len(raw)} bytes (max {_TEXT_BYTES})")
    out = np.zeros(_TEXT_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


class LeadUpdate:
    """Server 0 of a sharded parameter server: its own columns' robust update (built by
    ``build`` over its :class:`Exchange`), then every other server's gradient slice and
    rule state (:class:`ShardServer`), put together.

    :meth:`start` tells the other servers the :class:`StartUp`. Metrics are server 0's
    (every server decides the same files and selections), with ``bytes_per_server``
    what each server receives from the workers (:func:`bytes_per_server`),
    ``bytes_received`` their sum, ``control_bytes`` what the servers sent each other this
    step (vote classes, partial sums) and ``slice_bytes`` what servers 1..S-1 sent
    server 0 (each a (2,) int64 of its control bytes and state values, then its gradient
    slice and rule state).
    """

    def __init__(
        self,
        peers: Peers,
        placement: Placement,
        d: int,
        build: Callable[[ColumnShard], ServerUpdate],
    ):
        self.peers, self.exchange = peers, Exchange(peers)
        self.bounds = shard_bounds(d, peers.num_servers)
        self.update = build(self.exchange.shard(0, d))
        self.state: dict[str, Tensor] = {}  # the whole vector's, from every server
        self.per_server = bytes_per_server(placement, self.bounds)

    def start(self) -> None:
        rule = self.update.rule
        text = json.dumps(
            {
                "aggregator_f": rule.f,
                "outside_guarantee": rule.outside_guarantee,
                "f_after": list(self.update.f_after),
                "state": {k: list(v.shape) for k, v in self.state.items()},
            }
        )
        for server, (lo, hi) in enumerate(self.bounds[1:], start=1):
            self.peers.send(_text(text), server)
            for key in sorted(self.state):
                self.peers.send(self.state[key][lo:hi].contiguous().numpy(), server)

    def __call__(
        self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded: tuple = ()
    ) -> Outcome:
        sent = self.exchange.sent
        outcome = self.update(copies, byzantine, step, excluded)
        own = self.update.state_dict()
        parts, states, control = [outcome.gradient], [own], self.exchange.sent - sent
        slices = 0
        for server, (lo, hi) in enumerate(self.bounds[1:], start=1):
            counts = self.peers.receive(np.zeros(2, dtype=np.int64), server)
            values = hi - lo + int(counts[1])  # the slice, then the rule's state
            message = torch.from_numpy(self.peers.receive(np.empty(values, np.float32), server))
            slices += counts.nbytes + message.nbytes
            parts.append(message[: hi - lo])
            states.append(_split_state(own, message[hi - lo :], hi - lo))
            control += int(counts[0])
        self.state = {k: torch.cat([st[k] for st in states]) for k in own}
        metrics = dict(outcome.metrics)
        metrics["bytes_received"] = sum(self.per_server)
        metrics["bytes_per_server"] = list(self.per_server)
        metrics["control_bytes"] = control
        metrics["slice_bytes"] = slices
        return Outcome(torch.cat(parts), metrics, outcome.disagreements)

    def state_dict(self) -> dict[str, Tensor]:
        """The rule's state of the whole vector: every server's columns, put together."""
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """The whole vector's rule state: server 0's columns now, the others' at
        :meth:`start`."""
        self.state = {k: v.clone() for k, v in state.items()}
        lo, hi = self.bounds[0]
        self.update.load_state_dict({k: v[lo:hi].clone() for k, v in state.items()})

    def close(self) -> None:
        """Nothing to release (the other servers stop when their engine says so)."""


class ShardServer:
    """Server s of a sharded parameter server (0 < s < S): its columns' robust update
    (built by ``build`` over its :class:`Exchange`); each step it sends server 0 the
    control bytes it sent and its state values (a (2,) int64), then its gradient slice
    and the rule's state (float32)."""

    def __init__(self, peers: Peers, d: int, build: Callable[[ColumnShard], ServerUpdate]):
        self.peers, self.exchange = peers, Exchange(peers)
        self.lo, self.hi = shard_bounds(d, peers.num_servers)[peers.server]
        self.update = build(self.exchange.shard(self.lo, d))

    def __call__(
        self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded: tuple = ()
    ) -> Outcome:
        sent = self.exchange.sent
        outcome = self.update(copies, byzantine, step, excluded)
        state = self.update.state_dict()
        flat = [state[k].reshape(-1) for k in sorted(state)]
        counts = np.array([self.exchange.sent - sent, sum(t.numel() for t in flat)], np.int64)
        self.peers.send(counts, 0)
        self.peers.send(torch.cat([outcome.gradient, *flat]).numpy(), 0)
        return outcome

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """The rule's state of this server's columns (:attr:`StartUp.state`)."""
        if state:
            self.update.load_state_dict(state)


def _split_state(like: dict[str, Tensor], flat: Tensor, width: int) -> dict:
    """A server's rule state from its flat message: ``like``'s keys in sorted order,
    each a vector of ``width`` columns (the only state a rule keeps: a centre)."""
    out, offset = {}, 0
    for key in sorted(like):
        out[key] = flat[offset : offset + width].clone()
        offset += width
    return out


# --------------------------------------------------------------------------------------
# All S servers as threads of this process


class ShardedUpdate:
    """The robust update of a parameter server sharded S ways, its servers run as
    threads of this process over :class:`ThreadPeers`: server 0 a :class:`LeadUpdate`,
    each of servers 1..S-1 a :class:`ShardServer`, each seeing only its columns of every copy
    (:func:`slice_copies`). The step's gradient, metrics and rule state are server 0's,
    as with S processes.

    Args:
        placement: who holds which file.
        d: the number of parameters.
        num_shards: S.
        build: ``build(shard)``, the robust update of one server (each with its own rule
            object: its state is that server's columns).
    """

    def __init__(
        self,
        placement: Placement,
        d: int,
        num_shards: int,
        build: Callable[[ColumnShard], ServerUpdate],
    ):
        self.bounds = shard_bounds(d, num_shards)
        self.peers = ThreadPeers.group(num_shards)
        self.lead = LeadUpdate(self.peers[0], placement, d, build)
        self.servers = [ShardServer(peers, d, build) for peers in self.peers[1:]]
        self.pool = started_pool(num_shards, "byzshield-shard")
        self.started = False

    def start(self) -> None:
        """Server 0 tells the others the start-up state (again after a load)."""
        self.lead.start()
        for server in self.servers:
            told = receive_start(server.peers, server.hi - server.lo)
            server.load_state_dict(told.state)
        self.started = True

    def __call__(
        self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded: tuple = ()
    ) -> Outcome:
        if not self.started:
            self.start()
        parts = [slice_copies(copies, lo, hi) for lo, hi in self.bounds]
        serves = [self.lead, *self.servers]

        def serve(s: int) -> Outcome:
            try:
                return serves[s](parts[s], byzantine, step, excluded)
            except BaseException:
                self.peers[s].abort()  # the others would wait for this server forever
                raise

        futures = [self.pool.submit(serve, s) for s in range(len(serves))]
        outcomes, failure = [], None
        for future in futures:
            try:
                outcomes.append(future.result())
            except Aborted:
                pass  # released because another server failed: that one's error is raised
            except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                failure = failure or exc
        if failure is not None:
            self.peers[0].reset()
            raise failure
        return outcomes[0]

    def state_dict(self) -> dict[str, Tensor]:
        return self.lead.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.lead.load_state_dict(state)
        self.started = False  # the other servers learn it at the next start

    def close(self) -> None:
        self.pool.shutdown(wait=True)
