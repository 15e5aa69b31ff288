"""The copies of a step's files that reach the parameter server, and receiving the rest.

:class:`Copies` is what arrived: rows of one or more blocks
(:class:`byzshield.server.vote.Rows`) and an (f, r) index whose entry (j, i) is the row
of file j's copy from its i-th holder (``placement.file_workers[j][i]``), with the loss
reported along with every copy and which copies are erasures (``present``). Both engines
hand the robust update (:mod:`byzshield.server.update`) one per step: the torchrun engine
the copies it received over gloo (some still on the wire, :attr:`Copies.arrivals`; the
digest vote's pulled on demand, :attr:`Copies.fetch`), the simulate engine the copies it
computed in process. :class:`Inbox` is one step's receiving inside the update: the
pulls, the payloads still arriving, and what they cost in time and bytes.

Worker w's i-th file (``placement.worker_files[w][i]``) is row ``w * l + i`` of what
the workers send (:func:`copy_index`)::

    >>> from byzshield.design.placements import detox
    >>> copy_index(detox(6, 3)).tolist()  # files 0 (workers 0, 1, 2) and 1 (3, 4, 5)
    [[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from byzshield.design.placements import Placement
from byzshield.server.digest import digest
from byzshield.server.vote import Rows
from byzshield.server.wire import gradients_nbytes

__all__ = ["PUSHED", "Copies", "Inbox", "copy_index", "live_copies", "pushed_slots"]

PUSHED = 0
"""vote=digest: the holder position whose copy of a file rides along with its digests
(pushed, not pulled), so that an honest step needs no pull round at all."""


def copy_index(placement: Placement) -> Tensor:
    """(f, r) rows of each file's copies in a (K * l, d) stack of what workers send.

    Worker w's i-th file (``placement.worker_files[w][i]``) is row ``w * l + i``; entry
    (j, i) is the row of file j's copy from ``placement.file_workers[j][i]``.
    """
    pos = {(w, j): i for w, fs in enumerate(placement.worker_files) for i, j in enumerate(fs)}
    return torch.tensor(
        [
            [w * placement.load + pos[(w, j)] for w in ws]
            for j, ws in enumerate(placement.file_workers)
        ],
        dtype=torch.long,
    )


def pushed_slots(placement: Placement, w: int) -> list[int]:
    """vote=digest: the slots (positions in ``placement.worker_files[w]``) whose gradients
    worker w pushes right after its digests: the files it is the first holder of."""
    return [
        i for i, j in enumerate(placement.worker_files[w]) if placement.file_workers[j][PUSHED] == w
    ]


@dataclass
class Copies:
    """The copies of every file that reached the server in one step.

    Attributes:
        rows: the storage of every copy.
        index: (f, r) long; ``index[j, i]`` is the row of file j's copy from its i-th
            holder (``placement.file_workers[j][i]``).
        losses: (f, r) float64; the training loss reported with each copy.
        present: (f, r) bool, or None when every copy arrived: erasures (the copies of
            a straggler or a dead worker) are False and do not vote.
        claims: ``vote=digest`` only: ``claims[j][i]``, the digest the i-th holder of
            file j sent (:mod:`byzshield.server.digest`); None for the full vote.
        fetch: ``vote=digest`` with rows not yet received (torchrun): called with
            (file, holder position, row) triples, it receives those rows into ``rows``
            before they are read. None when every row is already there (simulate).
        bytes_in: bytes the server received for these copies so far (reply headers,
            and the payloads for the full vote); the digest vote adds what it pulls.
        arrivals: the full vote over torchrun: the workers whose payloads are still on
            the wire, yielded (worker index w) as each one's rows land, so that files
            are voted while later copies arrive; the robust update consumes it. None
            when every row is already there.
    """

    rows: Rows
    index: Tensor
    losses: Tensor
    present: Tensor | None = None
    claims: list[list[bytes]] | None = None
    fetch: Callable[[list[tuple[int, int, int]]], None] | None = None
    bytes_in: int = 0
    arrivals: Iterator[int] | None = None


@dataclass
class Inbox:
    """The copies one step receives inside the robust update, and what that costs: the
    digest vote's pulls (``copies.fetch``) and the full vote's payloads still on the wire
    (``copies.arrivals``). Made by :class:`byzshield.server.update.RobustUpdate` for one
    step, so that nothing of a step is left on the update.

    Attributes:
        copies: the step's copies.
        holders: ``holders[j][i]``, file j's i-th holder (who is asked for a pull).
        pulled: bytes of the copies pulled so far.
        receive_s: seconds spent waiting for copies (pulls and arrivals).
        last_copy: ``time.perf_counter()`` when the last payload landed, or None.
        known: vote=digest: the digests of honest copies the attack simulation pulled,
            (file, holder position) -> digest, verified by the vote without a pull.
    """

    copies: Copies
    holders: list[list[int]]
    pulled: int = 0
    receive_s: float = 0.0
    last_copy: float | None = None
    known: dict[tuple[int, int], bytes] = field(default_factory=dict)
    _digests: dict[int, bytes] = field(default_factory=dict)  # of rows: each hashed once
    _fetched: set[int] = field(default_factory=set)  # rows received (never twice)

    def pull(self, rows: Rows, index: Tensor, requests) -> None:
        """Receive the requested (file, holder position) copies (one round) and count
        their bytes: one message per worker asked, its copies and END; copies forged on
        the server, and copies already received this step, are free."""
        base = self.copies.rows.num_rows
        wire = []
        for j, i in requests:
            row = int(index[j, i])
            if row < base and row not in self._fetched:
                self._fetched.add(row)
                wire.append((j, i, row))
        if not wire:
            return
        if self.copies.fetch is not None:
            t0 = time.perf_counter()
            self.copies.fetch(wire)
            self.receive_s += time.perf_counter() - t0
        per_worker: dict[int, int] = {}
        for j, i, _ in wire:
            w = self.holders[j][i]
            per_worker[w] = per_worker.get(w, 0) + 1
        d = rows.blocks[0].shape[1]
        self.pulled += sum(gradients_nbytes(n, d) for n in per_worker.values())

    def arrived(self) -> Iterator[int]:
        """Drain ``copies.arrivals``, counting the time spent waiting on it as receiving,
        and set it to None at the end (every row is in)."""
        arrivals = self.copies.arrivals
        while arrivals is not None:
            t0 = time.perf_counter()
            w = next(arrivals, None)
            self.receive_s += time.perf_counter() - t0
            if w is None:
                self.copies.arrivals, self.last_copy = None, time.perf_counter()
                return
            yield w

    def digest(self, rows: Rows, row: int) -> bytes:
        """The digest of ``rows[row]`` (each row hashed once a step)."""
        if row not in self._digests:
            self._digests[row] = digest(rows[row])
        return self._digests[row]


def live_copies(copies: Copies) -> list[list[bool]] | None:
    """``copies.present`` as lists (which copies arrived), None when every copy did."""
    return None if copies.present is None else copies.present.tolist()
