"""A sharded parameter server: S servers, each owning a contiguous slice of the columns.

``ps_shards=S`` splits the flattened parameters into S contiguous slices of whole
reduction blocks (:func:`byzshield.aggregators.reduction_block`), balanced by bytes.
Every worker sends each server only that server's slice of each file gradient, so the
gradient bytes into one server are the total divided by S. The servers decide exactly
what one server holding whole vectors decides, bit for bit:

- **The vote, per slice, decided together.** Each server puts each file's copies into
  classes of bit-equal copies on its slice (:func:`byzshield.server.vote.copy_classes`); the
  servers exchange these classes, an (f, r) int16 table each, and a copy agrees with
  another only when they are in one class on every slice
  (:func:`byzshield.server.vote.decide_classes`): a file is trusted only when the same strict
  majority agrees on every slice. A Byzantine worker that sends one server an honest
  slice and another a forged one is therefore one whose whole vector is forged.
- **Rules across slices.** Coordinate-wise rules run on each slice alone. Every sum over
  columns (Gram matrices, distances, norms, projections, the non-finite scan) is a sum of
  per-block partials added in column order; each server computes its blocks' partials,
  the servers exchange them (an n x n matrix or n numbers per block, never gradients) and
  every server adds the same partials in the same order, in float64
  (:class:`byzshield.aggregators.ColumnShard`). So every server makes the same
  selection, and the result is the one an unsharded server gets.
- **Omniscient attacks** (ALIE, IPM) forge from per-slice statistics, which are the
  coordinate-wise statistics of the whole vector; an optimised attack's objective is a
  norm, reduced as above.

This module holds the slices, :class:`ThreadPeers` (the exchange between servers run as
threads of one process) and :class:`ShardedUpdate` (the robust update of S servers in
one process, as the simulate engine runs it); the torchrun engine runs the same
exchanges between processes (:class:`byzshield.engines.torchrun.TorchrunPeers`). Not
sharded: the digest vote.

    >>> from byzshield.server.sharded import shard_bounds
    >>> shard_bounds(131_080, 4)  # LeNet: 129 blocks of 1,024 columns
    [(0, 32768), (32768, 65536), (65536, 98304), (98304, 131080)]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators import ColumnShard, reduction_block
from byzshield.design.placements import Placement
from byzshield.server.copies import Copies
from byzshield.server.metrics import Outcome
from byzshield.server.update import RobustUpdate
from byzshield.server.vote import Rows
from byzshield.server.wire import ReplyLayout

__all__ = ["Aborted", "ShardedUpdate", "ThreadPeers", "shard_bounds", "slice_copies"]


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


class Aborted(Exception):
    """Another server of the step failed: this one stops waiting for it."""


class ThreadPeers:
    """The exchanges between S servers run as threads of one process.

    :meth:`shard` is server s's :class:`~byzshield.aggregators.ColumnShard`. Its
    ``reduce`` is a chain in server order: server 0 adds its per-block partials in
    column order and passes the running total to server 1, which adds its own and
    passes it on; the last server sends the total to every other. Its ``gather`` hands
    every server every server's arrays. Every server takes part in every exchange in
    the same order (they run the same code on the same decisions). ``sent[s]`` counts
    the bytes server s sent to the others. When one server fails, :meth:`abort`
    releases the others (:class:`Aborted`).
    """

    def __init__(self, num_shards: int):
        self.num_shards = num_shards
        self.sent = [0] * num_shards
        self.reset()

    def reset(self) -> None:
        """Fresh channels (after a failed step)."""
        S = self.num_shards
        self._chain = [queue.SimpleQueue() for _ in range(S)]  # the running total into s
        self._total = [queue.SimpleQueue() for _ in range(S)]  # the total, from the last
        self._slots: list[list[np.ndarray]] = [[] for _ in range(S)]
        self._barrier = threading.Barrier(S)
        self._aborted = threading.Event()

    def abort(self) -> None:
        self._aborted.set()
        self._barrier.abort()

    def _get(self, channel: queue.SimpleQueue) -> np.ndarray:
        while True:
            try:
                return channel.get(timeout=0.05)
            except queue.Empty:
                if self._aborted.is_set():
                    raise Aborted from None

    def _wait(self) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise Aborted from None

    def shard(self, s: int, offset: int, total: int) -> ColumnShard:
        last = self.num_shards - 1

        def reduce(partials: list, combine: Callable) -> np.ndarray:
            if s == 0:
                acc, rest = np.array(partials[0], copy=True), partials[1:]
            else:
                acc, rest = self._get(self._chain[s]), partials
            for part in rest:
                combine(acc, part, out=acc)
            if s < last:
                self._chain[s + 1].put(acc)
                self.sent[s] += acc.nbytes
                return self._get(self._total[s])
            for t in range(last):
                self._total[t].put(acc.copy())
            self.sent[s] += last * acc.nbytes
            return acc

        def gather(items: list) -> list:
            arrays = [np.asarray(a) for a in items]
            self.sent[s] += last * sum(a.nbytes for a in arrays)
            self._slots[s] = arrays
            self._wait()
            out = [a for slot in self._slots for a in slot]
            self._wait()  # everyone has read before anyone writes the next
            return out

        return ColumnShard(offset, total, reduce, gather)


def slice_copies(copies: Copies, lo: int, hi: int) -> Copies:
    """What server [lo, hi) receives of ``copies``: each row's columns lo..hi (copied
    contiguous, as a server's receive buffer is), the same index, losses and erasures.
    The full vote only (no digests, nothing still on the wire)."""
    if copies.claims is not None or copies.arrivals is not None or copies.fetch is not None:
        raise ValueError("a sharded server takes the full vote's copies, every row received")
    blocks = [b[:, lo:hi].contiguous() for b in copies.rows.blocks]
    return Copies(Rows(*blocks), copies.index, copies.losses, copies.present)


class ShardedUpdate:
    """The robust update of a parameter server sharded S ways, its servers run as
    threads of this process: each server's :class:`~byzshield.server.update.RobustUpdate` sees
    only its columns of every copy, exchanges what :mod:`byzshield.server.sharded` says, and
    the step's gradient is the servers' slices put together.

    Args:
        placement: who holds which file.
        d: the number of parameters.
        num_shards: S.
        build_update: ``build_update(shard)``, a :class:`RobustUpdate` for one server
            (each with its own rule object: its state is that server's columns).

    The step's metrics are server 0's (every server decides the same files and
    selections), with ``bytes_per_server`` what each server receives from the workers
    (every worker's reply header and its slice of each gradient,
    :class:`~byzshield.server.wire.ReplyLayout`), ``bytes_received`` their sum,
    ``control_bytes`` what the servers sent each other this step (vote classes, partial
    sums), and ``slice_bytes`` what servers 1..S-1 sent server 0 (each its gradient slice
    and rule state, which the torchrun engine's server 0 puts together).
    """

    def __init__(
        self,
        placement: Placement,
        d: int,
        num_shards: int,
        build_update: Callable[[ColumnShard], RobustUpdate],
    ):
        self.d, self.bounds = d, shard_bounds(d, num_shards)
        self.per_server = bytes_per_server(placement, self.bounds)
        self.peers = ThreadPeers(num_shards)
        self.updates = [
            build_update(self.peers.shard(s, lo, d)) for s, (lo, _) in enumerate(self.bounds)
        ]
        self.pool = ThreadPoolExecutor(num_shards, thread_name_prefix="byzshield-shard")

    @property
    def num_shards(self) -> int:
        return len(self.bounds)

    def __call__(self, copies: Copies, byzantine: tuple[int, ...], step: int) -> Outcome:
        sent = sum(self.peers.sent)
        parts = [slice_copies(copies, lo, hi) for lo, hi in self.bounds]

        def serve(s: int) -> Outcome:
            try:
                return self.updates[s](parts[s], byzantine, step)
            except BaseException:
                self.peers.abort()  # the others would wait for this server forever
                raise

        futures = [self.pool.submit(serve, s) for s in range(self.num_shards)]
        outcomes, failure = [], None
        for future in futures:
            try:
                outcomes.append(future.result())
            except Aborted:
                pass  # released because another server failed: that one's error is raised
            except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                failure = failure or exc
        if failure is not None:
            self.peers.reset()
            raise failure
        gradient = torch.cat([o.gradient for o in outcomes])
        metrics = dict(outcomes[0].metrics)
        metrics["bytes_received"] = sum(self.per_server)
        metrics["bytes_per_server"] = list(self.per_server)
        metrics["control_bytes"] = sum(self.peers.sent) - sent
        metrics["slice_bytes"] = sum(  # servers 1..S-1 to 0: counts, slice, rule state
            _SLICE_HEADER + 4 * (o.gradient.numel() + _state_values(u))
            for o, u in zip(outcomes[1:], self.updates[1:], strict=True)
        )
        return Outcome(gradient=gradient, metrics=metrics)

    def state_dict(self) -> dict[str, Tensor]:
        """The rule's state of the whole vector: every server's columns, put together."""
        states = [u.state_dict() for u in self.updates]
        return {k: torch.cat([st[k] for st in states]) for k in states[0]}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for update, (lo, hi) in zip(self.updates, self.bounds, strict=True):
            update.load_state_dict({k: v[lo:hi].clone() for k, v in state.items()})

    def start(self) -> None:
        """Nothing to tell: the servers are threads holding the rule's state."""

    def close(self) -> None:
        self.pool.shutdown(wait=True)


_SLICE_HEADER = 16
"""Bytes of the (2,) int64 message before each slice: control bytes sent, state values."""


def _state_values(update: RobustUpdate) -> int:
    return sum(t.numel() for t in update.state_dict().values())
