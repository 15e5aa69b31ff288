"""The only module that talks to torch.distributed (gloo).

Rank 0 is the parameter server, ranks 1..K the workers. Every step the server sends a
small control vector and the flat parameters to each worker and receives one flat
message per worker, all point to point under one deadline, so that a worker that
crashes or stays silent is named by its rank (a collective could only say "something
failed").

With no WORLD_SIZE in the environment, :func:`init` returns a single-process
:class:`Comm` whose collectives are no-ops, so server and worker code can be called and
tested in one process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Comm", "RankFailure", "init"]


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
    distributed: bool = False

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    def broadcast(self, tensor: torch.Tensor) -> None:
        """In place: every rank ends with rank 0's ``tensor``."""
        if not self.distributed:
            return
        try:
            dist.broadcast(tensor, src=0)
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
        self._wait_each([dist.isend(tensor, dst=r) for r in range(1, self.world_size)])

    def receive_from_server(self, tensor: torch.Tensor) -> None:
        """A worker: fill ``tensor`` with rank 0's next message."""
        if not self.distributed:
            return
        try:
            dist.recv(tensor, src=0)
        except RuntimeError as exc:
            raise _server_failure(exc, self.timeout) from None

    def send_to_server(self, tensor: torch.Tensor) -> None:
        """A worker's message to rank 0."""
        if not self.distributed:
            return
        try:
            dist.send(tensor, dst=0)
        except RuntimeError as exc:
            raise _server_failure(exc, self.timeout) from None

    def receive_from_workers(self, buffers) -> None:
        """Rank 0: fill ``buffers[w]`` (a tensor's rows, or a list of tensors) with worker
        rank w+1's next message, naming any worker that fails."""
        if not self.distributed:
            return
        self._wait_each([dist.irecv(buffers[w], src=w + 1) for w in range(len(buffers))])

    def _wait_each(self, works: list) -> None:
        """Wait for per-worker operations (works[i] is rank i+1's) under one deadline."""
        deadline = time.monotonic() + self.timeout
        for i, work in enumerate(works):
            rank = i + 1
            left = max(0.001, deadline - time.monotonic())
            try:
                ok = work.wait(timedelta(seconds=left))
            except RuntimeError as exc:
                raise _worker_failure(rank, exc, self.timeout) from None
            if ok is False:
                raise _worker_failure(rank, TimeoutError("timed out"), self.timeout)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
            self.distributed = False


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _worker_failure(rank: int, exc: BaseException, timeout: float) -> RankFailure:
    who = f"rank {rank} (worker {rank - 1})"
    if _timed_out(exc):
        return RankFailure(
            rank, f"{who} did not answer within {timeout:g} s (timeout)", timed_out=True
        )
    return RankFailure(rank, f"{who} failed or closed its connection: {_short(exc)}")


def _server_failure(exc: BaseException, timeout: float) -> RankFailure:
    """What a worker says when rank 0 fails: a hung server is named by no one else."""
    if _timed_out(exc):
        return RankFailure(
            0,
            f"the parameter server (rank 0) did not answer within {timeout:g} s (timeout)",
            timed_out=True,
        )
    return RankFailure(0, f"lost the parameter server (rank 0): {_short(exc)}")


def init(*, timeout: float, job: int = 0) -> Comm:
    """Join the process group that torchrun describes in the environment.

    Each Hydra multirun job passes its own ``job`` number: its process group lives under
    its own key prefix of the rendezvous store, so consecutive jobs never see each
    other's keys.
    """
    if "WORLD_SIZE" not in os.environ:
        return Comm(timeout=timeout)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        host,
        port,
        world_size=None if agent_store else world,
        is_master=(rank == 0 and not agent_store),
        timeout=timedelta(seconds=timeout),
        wait_for_workers=False,
    )
    prefixed = dist.PrefixStore(f"byzshield/job{job}/", store)
    dist.init_process_group(
        "gloo",
        store=prefixed,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout),
    )
    return Comm(rank=rank, world_size=world, timeout=timeout, distributed=True)
