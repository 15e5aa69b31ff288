"""One robust update: omniscient attack simulation, majority vote, aggregation.

This is everything that decides the model's next gradient from what reached the
parameter server, and nothing else (no processes, no optimizer). Both engines call it:
the torchrun engine on the copies it received over gloo, the simulate engine on the
copies it computed in process (each file once, plus the Byzantine copies). Given the
same copies it returns the same bits, whichever engine built them.

    received copies --(omniscient attack)--> copies --(vote)--> f winners
                    --(aggregation rule)--> gradient (d,)

:class:`Copies` is what arrived: rows of one or more blocks (:class:`byzshield.server.vote.Rows`)
and an (f, r) index whose entry (j, i) is the row of file j's copy from its i-th holder
(``placement.file_workers[j][i]``), with the loss reported along with every copy.

:class:`RobustUpdate` runs the pieces in order and keeps nothing of a step but the
reused winners buffer: the omniscient attack and the digest lies are
:mod:`byzshield.server.forgery` (:func:`~byzshield.server.forgery.digest_lie`), the votes
are :func:`byzshield.server.vote.vote_positions` (the full vote, each file as its last copy
arrives) and :func:`byzshield.server.vote.digest_vote`, the rule runs as :class:`StepRule`, and
what the step receives inside the update (pulls, payloads still on the wire, their
time and bytes, :func:`byzshield.server.wire.gradients_nbytes`) is a per-step inbox.

Definitions the metrics use (BYZSHIELD.md section 7):

- A file is **trusted** when a strict majority of its r copies agree bit for bit; a file
  without one (a tie between two groups, for even r) is dropped from the step's
  aggregation and counted. So colluding Byzantine copies win a file exactly when they
  hold r' = floor(r / 2) + 1 of its copies, the threshold the worst-case adversary
  (:mod:`byzshield.design.search`) maximises over.
- A file is **distorted** when its vote winner was sent by a Byzantine worker and
  differs bit for bit from the file's honest gradient, or when no honest copy of the
  file exists to compare with (every holder is Byzantine and the attack is not
  omniscient).
- The step's **loss** is the mean over trusted files of the loss reported with each
  file's vote winner (so a worker cannot move it unless it wins a vote).
- When dropped files leave fewer inputs than the rule's guarantee needs for its f, or
  the run was started outside the guarantee on purpose (``outside_guarantee``), the rule
  runs anyway (see :mod:`byzshield.aggregators`) and the step says so.

    >>> from byzshield.server.update import RobustUpdate  # see tests/test_step.py for examples

Length (about 700 lines): RobustUpdate (with one server's part of a sharded server's
vote, :mod:`byzshield.server.sharded`), StepRule, the per-step inbox and the metrics; the votes,
the omniscient attack, the digest lies and the byte counts live in
:mod:`byzshield.server.vote`, :mod:`byzshield.server.forgery` and :mod:`byzshield.server.wire`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators import AggregateResult, Aggregator, ColumnShard, column_shard
from byzshield.aggregators.columns import column_threads
from byzshield.attacks import Attack
from byzshield.compute.sampling import derive_seed
from byzshield.design.placements import Placement
from byzshield.server.digest import digest
from byzshield.server.forgery import OmniscientAttack, digest_lie
from byzshield.server.vote import (
    Rows,
    copy_classes,
    decide_classes,
    digest_vote,
    same_bits,
    vote_positions,
)
from byzshield.server.wire import gradients_nbytes

__all__ = ["Copies", "Outcome", "RobustUpdate", "StepRule", "copy_index", "pushed_slots"]

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
class Outcome:
    """The gradient the robust update decided on, and what happened on the way.

    Attributes:
        gradient: (d,) the aggregate of the vote winners.
        metrics: per-step values for metrics.jsonl (see :meth:`RobustUpdate.__call__`).
    """

    gradient: Tensor
    metrics: dict


@dataclass
class _Inbox:
    """The copies one step receives inside the robust update, and what that costs: the
    digest vote's pulls (``copies.fetch``) and the full vote's payloads still on the wire
    (``copies.arrivals``). Made by :meth:`RobustUpdate.__call__` for one step, so that
    nothing of a step is left on the update.

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


@dataclass
class StepRule:
    """The run's aggregation rule as every step applies it: with the f it assumes, a
    generator seeded from (seed, step) when it draws random numbers, on ``threads``
    column threads (its result does not depend on them; None: torch's intra-op thread
    count), outside its guarantee when told so. The robust update and the omniscient
    attack's objective (:mod:`byzshield.server.forgery`) both call it.

    Attributes:
        aggregator: the rule object (``aggregator(stack, f=, generator=,
            outside_guarantee=)``), which keeps its own state across steps (centered
            clipping's centre).
        f: the f the rule assumes.
        seed: the run's seed.
        threads: column threads of the rule.
        outside_guarantee: the run was started outside the rule's guarantee on purpose.
    """

    aggregator: Aggregator
    f: int
    seed: int
    threads: int | None = None
    outside_guarantee: bool = False

    def beyond(self, n: int) -> bool:
        """Whether n inputs are too few for the rule's guarantee at its f."""
        try:
            self.aggregator.check(n, self.f)
        except ValueError:
            return True
        return False

    def outside(self, n: int) -> bool:
        """Whether the rule runs outside its guarantee on n inputs: on purpose, or
        because n is too few (see :mod:`byzshield.aggregators`)."""
        return self.outside_guarantee or self.beyond(n)

    def __call__(self, stack: Tensor, step: int, *, outside: bool) -> AggregateResult:
        """The rule's result on the (n, d) ``stack`` of ``step``."""
        generator = None
        if getattr(self.aggregator, "needs_generator", False):
            generator = torch.Generator().manual_seed(derive_seed("aggregate", self.seed, step))
        with column_threads(self.threads):
            return self.aggregator(stack, f=self.f, generator=generator, outside_guarantee=outside)


@dataclass
class _Votes:
    """What the vote decided in one step, and what it saw.

    Attributes:
        positions: per file, the holder position whose copy won.
        trusted: per file, whether a strict majority decided it (else it is dropped).
        winners: (f, d) each file's winning copy (the update's reused buffer).
        distorted: the distorted files, in file order.
        lost: {worker: copies of it that lost their file's vote}, in worker order.
        liars: vote=digest: {worker: copies whose bytes did not match its digest}.
    """

    positions: list[int]
    trusted: list[bool]
    winners: Tensor
    distorted: list[int]
    lost: dict[str, int]
    liars: dict[str, int] = field(default_factory=dict)


class RobustUpdate:
    """Attack simulation, vote and aggregation for one run (built once, called per step).

    Args:
        placement: who holds which file.
        attack: the attack; only attacks with ``needs_honest`` (omniscient: ALIE, IPM)
            are simulated here (:mod:`byzshield.server.forgery`), the others are already in
            the copies.
        aggregator: the rule object (``aggregator(stack, f=, generator=)``), which keeps
            its own state across steps (centered clipping's centre).
        aggregator_f: the f the rule assumes.
        seed: the run's seed; per-step generators are derived from (seed, step).
        threads: column threads of the rule (its result does not depend on them);
            None: torch's intra-op thread count.
        outside_guarantee: the run was started outside the rule's guarantee on purpose.
        verify: vote=digest: how many copies of a winning digest are checked, ``first``
            or ``majority`` (:func:`byzshield.server.vote.digest_vote`).
        lie: ``adversary.digest_lie`` (:func:`byzshield.server.forgery.digest_lie`).
        shard: one server of a sharded parameter server (:mod:`byzshield.server.sharded`): the
            copies hold its columns only, the rule's reductions and the vote's classes
            are exchanged with the other servers, and every server decides the same
            files, selections and metrics (the full vote only). None: unsharded.
    """

    def __init__(
        self,
        placement: Placement,
        attack: Attack,
        aggregator,
        *,
        aggregator_f: int,
        seed: int,
        threads: int | None = None,
        outside_guarantee: bool = False,
        verify: str = "first",
        lie: str = "none",
        shard: ColumnShard | None = None,
    ):
        self.placement, self.shard = placement, shard
        self.verify, self.lie = verify, lie
        self.attack = attack
        self.rule = StepRule(aggregator, aggregator_f, seed, threads, outside_guarantee)
        self.omniscient = (
            OmniscientAttack(placement, attack, self.rule) if attack.needs_honest else None
        )
        self.holders = [list(ws) for ws in placement.file_workers]
        self._winners: Tensor | None = None  # reused (f, d) buffer: no page faults per step
        self.position = {(w, j): i for j, ws in enumerate(self.holders) for i, w in enumerate(ws)}

    def __call__(self, copies: Copies, byzantine: tuple[int, ...], step: int) -> Outcome:
        """The step's gradient and metrics (:func:`_metrics` lists them).

        Times: ``attack_s``, ``vote_s`` and ``aggregation_s``; the first two without the
        waits for copies, which are ``receive_s`` (torchrun: the full vote's copies still
        on the wire, the digest vote's pulls; counted as communication). ``vote_tail_s``
        is the part of the vote after the last payload landed (the full vote over
        torchrun votes files while later copies arrive), else the whole vote.
        """
        with column_shard(self.shard):
            return self._update(copies, byzantine, step)

    def state_dict(self) -> dict[str, Tensor]:
        """The rule's state (this server's columns of it, when sharded)."""
        return self.rule.aggregator.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.rule.aggregator.load_state_dict(state)

    def start(self) -> None:
        """Nothing to tell anyone before the first step (a sharded server's server 0
        does; same interface)."""

    def close(self) -> None:
        """Nothing to release (a sharded update's threads are; same interface)."""

    def _update(self, copies: Copies, byzantine: tuple[int, ...], step: int) -> Outcome:
        bad = set(byzantine)
        inbox = _Inbox(copies, self.holders)
        t0 = time.perf_counter()
        if copies.claims is not None:  # the pushed copies: already in when this starts
            inbox.pull(copies.rows, copies.index, self._pushed(_live(copies)))
        index, rows = self._attack(inbox, bad, step)
        claims = self._claims(inbox, rows, index, bad)
        if self.lie != "none" and bad:  # a lie copies another holder's copy: all in first
            for _ in inbox.arrived():
                pass
        index = digest_lie(
            self.lie, self.placement, copies.index, copies.claims, index, claims, bad,
            omniscient=self.attack.needs_honest, live=_live(copies),
        )  # fmt: skip
        t1, attack_receive = time.perf_counter(), inbox.receive_s
        if claims is None and self.shard is not None:
            vote = self._sharded_full_vote(inbox, rows, index, bad)
        elif claims is None:
            vote = self._full_vote(inbox, rows, index, bad)
        else:
            vote = self._digest_vote(inbox, rows, index, claims, bad)
        kept = [j for j, ok in enumerate(vote.trusted) if ok]
        losses = [float(copies.losses[j, vote.positions[j]]) for j in kept]
        winners = vote.winners
        if len(kept) < len(vote.trusted):
            winners = winners.index_select(0, torch.tensor(kept, dtype=torch.long))
        t2 = time.perf_counter()
        gradient, nonfinite, outside = self._aggregate(winners, step)
        t3 = time.perf_counter()
        times = {
            "receive_s": inbox.receive_s,
            "attack_s": t1 - t0 - attack_receive,
            "vote_s": t2 - t1 - (inbox.receive_s - attack_receive),
            "vote_tail_s": t2 - max(t1, inbox.last_copy or t1),
            "aggregation_s": t3 - t2,
        }
        factor = getattr(self.attack, "last_factor", None) if bad else None
        nbytes = copies.bytes_in + inbox.pulled
        metrics = step_metrics(
            losses=losses,
            distorted=vote.distorted,
            dropped=len(vote.trusted) - sum(vote.trusted),
            lost=vote.lost,
            liars=vote.liars,
            nonfinite=nonfinite,
            outside=outside,
            factor=factor,
            nbytes=nbytes,
            times=times,
        )
        return Outcome(gradient=gradient, metrics=metrics)

    def _aggregate(self, winners: Tensor, step: int) -> tuple[Tensor, int, bool]:
        """The rule on the (n, d) trusted winners: (gradient, winners it dropped as
        non-finite, whether it ran outside its guarantee); with none, no update."""
        outside = self.rule.outside(winners.shape[0])
        if winners.shape[0] == 0:  # nothing trusted this step: no update
            return torch.zeros(winners.shape[1], dtype=winners.dtype), 0, outside
        result = self.rule(winners, step, outside=outside)
        return result.value, len(result.nonfinite_rows), result.outside_guarantee

    def _buffer(self, rows: Rows) -> Tensor:
        """The reused (f, d) winners buffer for rows like ``rows``."""
        block = rows.blocks[0]
        shape = (self.placement.num_files, block.shape[1])
        if self._winners is None or self._winners.shape != shape:
            self._winners = torch.empty(shape, dtype=block.dtype)
        return self._winners

    # ------------------------------------------------------------ the omniscient attack

    def _attack(self, inbox: _Inbox, bad: set[int], step: int) -> tuple[Tensor, Rows]:
        """The omniscient attack (:mod:`byzshield.server.forgery`) on every honest copy it
        reads, received first. Returns the (possibly re-pointed) index and the rows."""
        copies = inbox.copies
        rows, index = copies.rows, copies.index
        if not bad or self.omniscient is None:
            return index, rows
        for _ in inbox.arrived():  # the attack reads every honest copy: all of them in
            pass
        if copies.claims is not None:  # vote=digest: pull the honest copies the attack needs
            picks = self.omniscient.honest_copies(bad, _live(copies))
            while True:
                inbox.pull(rows, index, picks)
                again = self.omniscient.honest_copies(bad, _live(copies))
                if again == picks:
                    break
                picks = again  # a worker asked was dropped: read another copy
            for j, i in picks:
                if self.holders[j][i] not in bad:  # verified in the vote, never pulled twice
                    inbox.known[(j, i)] = inbox.digest(rows, int(index[j, i]))
        return self.omniscient.forge(rows, index, bad, step, live=_live(copies))

    # ------------------------------------------------------------------ the full vote

    def _full_vote(self, inbox: _Inbox, rows: Rows, index: Tensor, bad: set[int]) -> _Votes:
        """Vote every file bit for bit, each as soon as all its present copies are in
        (torchrun: ``copies.arrivals``), writing winners into the reused buffer."""
        f, r = index.shape
        original = inbox.copies.index
        winners = self._buffer(rows)
        positions, agree, trusted = [0] * f, [0] * f, [False] * f
        distorted: list[int] = []
        lost: dict[int, int] = {}

        def same_as_honest(j: int, k: int) -> bool:  # the winner vs copy k as received
            ref = int(original[j, k])
            return ref == int(index[j, positions[j]]) or same_bits(winners[j], rows[ref])

        def agrees(j: int, k: int) -> bool:
            row = int(index[j, k])
            return row == int(index[j, positions[j]]) or same_bits(rows[row], winners[j])

        for files in self._complete_files(inbox):
            present = inbox.copies.present  # as it is now: a worker may be dropped on the way
            live = _live(inbox.copies)
            mask = None if present is None else present[files]
            picks, counts = vote_positions(rows, index[files], present=mask)
            for j, i, c in zip(files, picks, counts, strict=True):
                positions[j], agree[j], trusted[j] = i, c, 2 * c > r
                winners[j].copy_(rows[int(index[j, i])])
            distorted += self._distorted(files, positions, trusted, bad, same_as_honest, live)
            self._lost_votes(files, positions, trusted, _voters(agree, live, r), agrees, lost)
        return _Votes(positions, trusted, winners, sorted(distorted), _by_worker(lost))

    def _sharded_full_vote(self, inbox: _Inbox, rows: Rows, index: Tensor, bad: set[int]) -> _Votes:
        """The full vote of one server of a sharded parameter server: each file's copies
        are put in classes of bit-equal copies on this server's columns, the servers
        exchange the classes (an (f, r) int16 table each), and copies agree when they
        agree on every server's columns, as in the unsharded vote. The comparisons the
        distorted count makes are exchanged the same way (a bool each)."""
        f, r = index.shape
        for _ in inbox.arrived():  # this server's columns of every copy, in
            pass
        original, present = inbox.copies.index, inbox.copies.present
        local = np.asarray(copy_classes(rows, index, present=present), dtype=np.int16)
        labels = [part.tolist() for part in self.shard.gather([local])]
        positions, agree = decide_classes(labels)
        trusted = [2 * c > r for c in agree]
        rows.gather([int(index[j, i]) for j, i in enumerate(positions)], out=self._buffer(rows))
        winners = self._winners
        keys = [list(zip(*(part[j] for part in labels), strict=True)) for j in range(f)]
        live = None if present is None else present.tolist()
        files = range(f)

        asked: dict[tuple[int, int], bool] = {}

        def ask(j: int, k: int) -> bool:  # this server's columns: the full vote's question
            ref = int(original[j, k])
            asked[(j, k)] = ref == int(index[j, positions[j]]) or same_bits(winners[j], rows[ref])
            return True

        self._distorted(files, positions, trusted, bad, ask, live)  # what it will ask, in order
        same = dict(asked)
        if asked:  # every server asks the same questions: AND over their columns
            local_same = np.array(list(asked.values()), dtype=bool)
            answers = self.shard.reduce([local_same], np.logical_and)
            same = dict(zip(asked, answers.tolist(), strict=True))
        distorted = self._distorted(files, positions, trusted, bad, lambda j, k: same[(j, k)], live)

        def agrees(j: int, k: int) -> bool:
            return keys[j][k] == keys[j][positions[j]]

        voters = _voters(agree, live, r)
        lost = self._lost_votes(files, positions, trusted, voters, agrees, {})
        return _Votes(positions, trusted, winners, distorted, _by_worker(lost))

    def _complete_files(self, inbox: _Inbox) -> Iterator[list[int]]:
        """Lists of files whose present copies are all in: every file at once when
        nothing is on the wire, else each file as its last holder's payload lands (a
        file with no present copy first)."""
        copies = inbox.copies
        f = copies.index.shape[0]
        if copies.arrivals is None:
            yield list(range(f))
            return
        present = None if copies.present is None else copies.present.tolist()
        need = [
            len(ws) if present is None else sum(present[j]) for j, ws in enumerate(self.holders)
        ]
        got = [0] * f
        empty = [j for j in range(f) if need[j] == 0]
        if empty:
            yield empty
        for w in inbox.arrived():
            ready = []
            for j in self.placement.worker_files[w]:
                if present is None or present[j][self.position[(w, j)]]:
                    got[j] += 1
                    if got[j] == need[j]:
                        ready.append(j)
            if ready:
                yield ready
        waited = [j for j in range(f) if got[j] < need[j]]
        if waited:  # files that waited for a worker dropped on the way: its copies erased
            yield waited

    # ---------------------------------------------------------------- the digest vote

    def _claims(self, inbox: _Inbox, rows: Rows, index: Tensor, bad: set[int]):
        """Each copy's digest as its sender claims it, after the attack: a Byzantine copy
        the server forged (omniscient attacks) claims its forged row's digest."""
        copies = inbox.copies
        if copies.claims is None:
            return None
        claims = [list(c) for c in copies.claims]
        base = copies.rows.num_rows  # rows from here on were forged on the server
        for w in bad:
            for j in self.placement.worker_files[w]:
                i = self.position[(w, j)]
                row = int(index[j, i])
                if row >= base:
                    claims[j][i] = inbox.digest(rows, row)
        return claims

    def _digest_vote(
        self, inbox: _Inbox, rows: Rows, index: Tensor, claims: list[list[bytes]], bad: set[int]
    ) -> _Votes:
        """The digest vote (:func:`byzshield.server.vote.digest_vote`) on ``claims``, each pull
        a round of ``inbox``'s. The pushed copies (as the attack and a digest lie left
        them: free when pushed) and those the attack simulation pulled are verified
        without asking. Distorted files and lost votes compare digests."""
        winners = self._buffer(rows)
        known = dict(inbox.known)  # the copies the attack simulation already pulled
        f, r = index.shape
        live = _live(inbox.copies) or [[True] * r for _ in range(f)]
        pushed = self._pushed(live)
        inbox.pull(rows, index, pushed)
        for j, i in pushed:
            known.setdefault((j, i), inbox.digest(rows, int(index[j, i])))

        def pull(requests: list[tuple[int, int]]) -> list[bytes]:
            inbox.pull(rows, index, requests)
            now = _live(inbox.copies)
            for row, arrived in zip(live, now or live, strict=True):
                row[:] = arrived  # a worker dropped during the pull: its copies are erasures
            # an erased copy's digest is never read: the vote skips it from now on
            return [
                inbox.digest(rows, int(index[j, i])) if live[j][i] else claims[j][i]
                for j, i in requests
            ]

        vote = digest_vote(claims, self.holders, known, pull, verify=self.verify, present=live)
        positions, trusted, votes = vote.positions, vote.trusted, vote.votes
        rows.gather([int(index[j, i]) for j, i in enumerate(positions)], out=winners)
        sent = inbox.copies.claims  # as the workers sent them: an honest one is true

        def same_as_honest(j: int, k: int) -> bool:
            return votes[j][positions[j]] == sent[j][k]

        def agrees(j: int, k: int) -> bool:
            return votes[j][k] == votes[j][positions[j]]

        files = range(len(positions))
        distorted = self._distorted(files, positions, trusted, bad, same_as_honest, live)
        lost = self._lost_votes(files, positions, trusted, lambda j: votes[j], agrees, {})
        return _Votes(
            positions, trusted, winners, distorted, _by_worker(lost), _by_worker(vote.liars)
        )

    def _pushed(self, live=None) -> list[tuple[int, int]]:
        """The pushed copies that arrived (``live``; None: every copy did)."""
        f = self.placement.num_files
        return [(j, PUSHED) for j in range(f) if live is None or live[j][PUSHED]]

    # ------------------------------------------------------------ the vote's tallies

    def _distorted(
        self, files, positions, trusted, bad: set[int], same_as_honest, live=None
    ) -> list[int]:
        """The distorted files among ``files`` (see the module docstring), in that
        order: a trusted winner from a Byzantine holder that is not
        ``same_as_honest(j, k)``, the copy file j's k-th holder sent honestly (its first
        honest holder whose copy arrived, ``live[j][k]``; for an omniscient attack
        without one, what the winner's own holder computed before forging). With neither
        there is nothing to compare with: distorted. The full vote compares bits, the
        digest vote digests."""
        if not bad:
            return []
        out = []
        for j in files:
            i, ws = positions[j], self.holders[j]
            if not trusted[j] or ws[i] not in bad:
                continue  # dropped (not aggregated), or an honest winner
            arrived = (k for k, w in enumerate(ws) if live is None or live[j][k])
            honest = next((k for k in arrived if ws[k] not in bad), None)
            if honest is None and not self.attack.needs_honest:
                out.append(j)  # nothing honest to compare with
            elif not same_as_honest(j, i if honest is None else honest):
                out.append(j)
        return out

    def _lost_votes(self, files, positions, trusted, voters, agrees, out: dict) -> dict:
        """Count into ``out`` {worker: copies of it that disagree with their file's
        trusted winner} over ``files``: what the vote can observe of a lying worker,
        whether or not it was flagged. ``voters(j)``: the holder positions of file j's
        copies that voted (erasures do not); ``agrees(j, k)``: whether copy k equals
        file j's winner (bits in the full vote, digests in the digest vote)."""
        for j in files:
            if not trusted[j]:
                continue  # dropped
            for k in voters(j):
                if not agrees(j, k):
                    w = self.holders[j][k]
                    out[w] = out.get(w, 0) + 1
        return out


def step_metrics(
    *,
    losses: list[float],
    distorted: list[int],
    dropped: int,
    lost: dict[str, int],
    liars: dict[str, int],
    nonfinite: int,
    outside: bool,
    factor: float | None,
    nbytes: int,
    times: dict[str, float],
) -> dict:
    """A step's metrics (BYZSHIELD.md section 7), the one definition both RobustUpdate
    and the lockstep engine's batched path report:

    ``loss`` (the mean loss reported with the trusted winners), ``distorted`` (count)
    and ``distorted_files``, ``all_strict`` and ``non_strict_files`` (files without a
    strict majority, dropped), ``nonfinite_winners`` (winners the rule dropped),
    ``lost_votes`` (copies that lost their file's vote, per worker, flagged or not),
    ``outside_guarantee`` (the rule ran with f above what its guarantee allows for the
    inputs it got), ``attack_factor`` (the factor an optimised attack chose this step, z
    or eps, else None), ``bytes_received`` (this step's reply headers, payloads or the
    copies the digest vote pulled; copies forged on the server cost none),
    ``digest_liars`` (vote=digest: copies whose bytes did not match the digest their
    sender sent, per worker; always {} for the full vote), then the ``times``.
    """
    return {
        "loss": _mean(losses),
        "distorted": len(distorted),
        "distorted_files": distorted,
        "all_strict": dropped == 0,
        "non_strict_files": dropped,
        "nonfinite_winners": nonfinite,
        "lost_votes": lost,
        "outside_guarantee": outside,
        "attack_factor": factor,
        "bytes_received": nbytes,
        "digest_liars": liars,
        **times,
    }


def _live(copies: Copies) -> list[list[bool]] | None:
    """``copies.present`` as lists (which copies arrived), None when every copy did."""
    return None if copies.present is None else copies.present.tolist()


def _voters(agree: list[int], live: list[list[bool]] | None, r: int):
    """The full vote's ``voters(j)``: the positions of file j's copies that voted, none
    when they were unanimous (no copy lost its vote)."""

    def voters(j: int) -> list[int]:
        ks = list(range(r)) if live is None else [k for k in range(r) if live[j][k]]
        return [] if agree[j] == len(ks) else ks

    return voters


def _by_worker(counts: dict) -> dict[str, int]:
    """A per-worker count in worker order, keyed by worker id as a string (for JSON)."""
    return {str(w): c for w, c in sorted(counts.items(), key=lambda kv: int(kv[0]))}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
