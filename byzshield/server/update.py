"""The robust update: omniscient attack simulation, majority vote, aggregation.

This is what decides the model's next gradient from what reached the parameter server,
and nothing else (no processes, no optimizer). Every engine calls it: the torchrun engine
on the copies it received over gloo, the simulate engine on the copies it computed in
process (each file once, plus the Byzantine copies). Given the same copies it returns the
same bits, whichever engine built them.

    received copies --(omniscient attack)--> copies --(vote)--> f winners
                    --(aggregation rule)--> gradient (d,)

:class:`RobustUpdate` runs the pieces in order and keeps nothing of a step but the
reused winners buffer: the copies and one step's receiving are
:mod:`byzshield.server.copies`, the omniscient attack and the digest lies
:mod:`byzshield.server.forgery`, the votes :func:`byzshield.server.vote.copy_classes`
with :func:`~byzshield.server.vote.decide_classes` (the full vote, each file as its last
copy arrives; one server's part of a sharded server's vote) and
:func:`byzshield.server.vote.digest_vote`, the rule :class:`byzshield.server.rule.StepRule`,
and what the step reports :func:`byzshield.server.metrics.step_metrics` (which defines
trusted, distorted and lost).

:func:`build_update` is the one builder of a run's update, from an :class:`UpdateSpec`
(:meth:`byzshield.config.Run.update_spec` makes a run's): one server's
:class:`RobustUpdate`, or with S servers those of :mod:`byzshield.server.sharded`, as
threads of this process or over a transport between processes (the torchrun engine's).
tests/test_step.py has examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators import Aggregator, ColumnShard, column_shard
from byzshield.attacks import Attack
from byzshield.design.placements import Placement
from byzshield.detection import lied_files
from byzshield.server.copies import PUSHED, Copies, Inbox, live_copies
from byzshield.server.erasures import erase
from byzshield.server.forgery import OmniscientAttack, digest_lie
from byzshield.server.metrics import Outcome, step_metrics
from byzshield.server.rule import StepRule, rule_threads
from byzshield.server.sharded import LeadUpdate, Peers, ShardedUpdate, ShardServer
from byzshield.server.vote import (
    Rows,
    VoteResult,
    copy_classes,
    decide_classes,
    digest_vote,
    file_pairs,
    same_bits,
)

__all__ = ["RobustUpdate", "UpdateSpec", "build_update"]


@dataclass(frozen=True)
class UpdateSpec:
    """What a run's robust update is built from (:func:`build_update`).

    Attributes:
        placement: who holds which file.
        attack: the run's attack; only attacks with ``needs_honest`` (omniscient: ALIE,
            IPM) are simulated in the update (:mod:`byzshield.server.forgery`), the
            others are already in the copies.
        build_rule: a fresh rule object (``rule(stack, f=, generator=)``, keeping its own
            state across steps: centered clipping's centre); each server of a sharded
            server builds its own, whose state is that server's columns.
        rule_f: the f the rule assumes.
        seed: the run's seed; per-step generators are derived from (seed, step).
        threads: the run's ``threads`` (None: every core); the rule's column threads
            follow from it and d (:func:`byzshield.server.rule.rule_threads`).
        outside_guarantee: the run was started outside the rule's guarantee on purpose.
        verify: vote=digest: how many copies of a winning digest are checked, ``first``
            or ``majority`` (:func:`byzshield.server.vote.digest_vote`).
        lie: ``adversary.digest_lie`` (:func:`byzshield.server.forgery.digest_lie`).
        num_servers: S, the servers of a sharded parameter server (``ps_shards``).
        evidence: report each step's disagreement pairs (``detect``).
        f_after: the rule's f with e workers excluded, index e (:mod:`~byzshield.server.evidence`).
        lie_on: ``adversary.lie_on`` (:func:`byzshield.detection.lied_files`).
    """

    placement: Placement
    attack: Attack
    build_rule: Callable[[], Aggregator]
    rule_f: int
    seed: int
    threads: int | None = None
    outside_guarantee: bool = False
    verify: str = "first"
    lie: str = "none"
    num_servers: int = 1
    evidence: bool = False
    f_after: tuple[int, ...] = ()
    lie_on: str = "all"


def build_update(
    spec: UpdateSpec, d: int, *, peers: Peers | None = None
) -> RobustUpdate | ShardedUpdate | LeadUpdate | ShardServer:
    """The robust update of a run of d parameters, the one builder every engine uses.

    One server (``spec.num_servers == 1``): a :class:`RobustUpdate`. S servers
    (:mod:`byzshield.server.sharded`), each with its own rule object: without ``peers``
    all S as threads of this process (:class:`~byzshield.server.sharded.ShardedUpdate`);
    with ``peers``, this process's server of S, server 0's
    (:class:`~byzshield.server.sharded.LeadUpdate`) or another's
    (:class:`~byzshield.server.sharded.ShardServer`).
    """
    threads = rule_threads(d, spec.threads)

    def build(shard: ColumnShard | None = None) -> RobustUpdate:
        return RobustUpdate(
            spec.placement,
            spec.attack,
            spec.build_rule(),
            rule_f=spec.rule_f,
            seed=spec.seed,
            threads=threads,
            outside_guarantee=spec.outside_guarantee,
            verify=spec.verify,
            lie=spec.lie,
            shard=shard,
            evidence=spec.evidence,
            f_after=spec.f_after,
            lie_on=spec.lie_on,
        )

    if spec.num_servers == 1:
        return build()
    if peers is None:
        return ShardedUpdate(spec.placement, d, spec.num_servers, build)
    if peers.server == 0:
        return LeadUpdate(peers, spec.placement, d, build)
    return ShardServer(peers, d, build)


class RobustUpdate:
    """Attack simulation, vote and aggregation for one run (built once, called per step).

    Args:
        placement: who holds which file.
        attack: the attack; only attacks with ``needs_honest`` (omniscient: ALIE, IPM)
            are simulated here (:mod:`byzshield.server.forgery`), the others are already in
            the copies.
        rule: the rule object (an :class:`~byzshield.aggregators.Aggregator`, called as
            ``rule(stack, f=, generator=)``), which keeps its own state across steps
            (centered clipping's centre).
        rule_f: the f the rule assumes.
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
        evidence, f_after, lie_on: as :class:`UpdateSpec`'s.
    """

    def __init__(
        self,
        placement: Placement,
        attack: Attack,
        rule,
        *,
        rule_f: int,
        seed: int,
        threads: int | None = None,
        outside_guarantee: bool = False,
        verify: str = "first",
        lie: str = "none",
        shard: ColumnShard | None = None,
        evidence: bool = False,
        f_after: tuple[int, ...] = (),
        lie_on: str = "all",
    ):
        self.placement, self.shard = placement, shard
        self.evidence, self.f_after, self.lie_on = evidence, f_after, lie_on
        self.verify, self.lie = verify, lie
        self.attack = attack
        self.rule = StepRule(rule, rule_f, seed, threads, outside_guarantee)
        self.omniscient = (
            OmniscientAttack(placement, attack, self.rule) if attack.needs_honest else None
        )
        self.holders = [list(ws) for ws in placement.file_workers]
        self._winners: Tensor | None = None  # reused (f, d) buffer: no page faults per step
        self.position = {(w, j): i for j, ws in enumerate(self.holders) for i, w in enumerate(ws)}

    def __call__(
        self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded: tuple = ()
    ) -> Outcome:
        """The step's gradient and metrics (:func:`~byzshield.server.metrics.step_metrics`);
        the workers ``excluded`` (``detect=exclude``) do not vote, and the rule assumes
        ``f_after[len(excluded)]`` when given. Worker ids here are roles.

        Times: ``attack_s``, ``vote_s`` and ``aggregation_s``; the first two without the
        waits for copies, which are ``receive_s`` (torchrun: the full vote's copies still
        on the wire, the digest vote's pulls; counted as communication). ``vote_tail_s``
        is the part of the vote after the last payload landed (the full vote over
        torchrun votes files while later copies arrive), else the whole vote.
        """
        erase(copies, self.placement, tuple(excluded))
        if self.f_after:
            self.rule.f = self.f_after[len(excluded)]
        with column_shard(self.shard):
            return self._update(copies, byzantine, step, tuple(excluded))

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

    def _update(self, copies: Copies, byzantine: tuple[int, ...], step: int, excluded) -> Outcome:
        bad = set(byzantine)
        lied = None
        if self.lie_on != "all":
            lied = lied_files(self.placement, bad, self.lie_on, excluded)
        inbox = Inbox(copies, self.holders)
        t0 = time.perf_counter()
        if copies.claims is not None:  # the pushed copies: already in when this starts
            inbox.pull(copies.rows, copies.index, self._pushed(live_copies(copies)))
        index, rows = self._attack(inbox, bad, step, lied)
        claims = self._claims(inbox, rows, index, bad)
        if self.lie != "none" and bad:  # a lie copies another holder's copy: all in first
            for _ in inbox.arrived():
                pass
        index = digest_lie(
            self.lie, self.placement, copies.index, copies.claims, index, claims, bad,
            omniscient=self.attack.needs_honest, live=live_copies(copies),
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
        return Outcome(gradient=gradient, metrics=metrics, disagreements=vote.pairs)

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

    def _attack(self, inbox: Inbox, bad: set[int], step: int, lied) -> tuple[Tensor, Rows]:
        """The omniscient attack (:mod:`byzshield.server.forgery`) on every honest copy it
        reads, received first. Returns the (possibly re-pointed) index and the rows."""
        copies = inbox.copies
        rows, index = copies.rows, copies.index
        if not bad or self.omniscient is None:
            return index, rows
        for _ in inbox.arrived():  # the attack reads every honest copy: all of them in
            pass
        if copies.claims is not None:  # vote=digest: pull the honest copies the attack needs
            picks = self.omniscient.honest_copies(bad, live_copies(copies))
            while True:
                inbox.pull(rows, index, picks)
                again = self.omniscient.honest_copies(bad, live_copies(copies))
                if again == picks:
                    break
                picks = again  # a worker asked was dropped: read another copy
            for j, i in picks:
                if self.holders[j][i] not in bad:  # verified in the vote, never pulled twice
                    inbox.known[(j, i)] = inbox.digest(rows, int(index[j, i]))
        return self.omniscient.forge(rows, index, bad, step, live=live_copies(copies), lied=lied)

    # ------------------------------------------------------------------ the full vote

    def _full_vote(self, inbox: Inbox, rows: Rows, index: Tensor, bad: set[int]) -> VoteResult:
        """Vote every file bit for bit, each as soon as all its present copies are in
        (torchrun: ``copies.arrivals``), writing winners into the reused buffer. Each copy
        is compared once, with the first member of each class of its file
        (:func:`~byzshield.server.vote.copy_classes`); the lost votes read the classes."""
        f, r = index.shape
        table, sent = index.tolist(), inbox.copies.index.tolist()  # rows: after, before the attack
        winners = self._buffer(rows)
        positions, agree, trusted = [0] * f, [0] * f, [False] * f
        classes: list[list[int]] = [[]] * f
        distorted: list[int] = []
        lost: dict[int, int] = {}

        def same_as_honest(j: int, k: int) -> bool:  # the winner vs copy k as received
            ref = sent[j][k]
            return ref == table[j][positions[j]] or same_bits(winners[j], rows[ref])

        def agrees(j: int, k: int) -> bool:
            return classes[j][k] == classes[j][positions[j]]

        for files in self._complete_files(inbox):
            present = inbox.copies.present  # as it is now: a worker may be dropped on the way
            live = live_copies(inbox.copies)
            mask = None if present is None else present[files]
            labels = copy_classes(rows, index[files], present=mask)
            picks, counts = decide_classes([labels])
            for j, i, c, lab in zip(files, picks, counts, labels, strict=True):
                positions[j], agree[j], trusted[j], classes[j] = i, c, 2 * c > r, lab
                winners[j].copy_(rows[table[j][i]])
            distorted += self._distorted(files, positions, trusted, bad, same_as_honest, live)
            self._lost_votes(files, positions, trusted, _voters(agree, live, r), agrees, lost)
        pairs = self._full_pairs(rows, index, agree, inbox.copies.present) if self.evidence else []
        lost = _by_worker(lost)
        return VoteResult(positions, trusted, winners, sorted(distorted), lost, {}, pairs)

    def _full_pairs(self, rows: Rows, index: Tensor, agree: list[int], present) -> list:
        """The full vote's disagreement pairs: the classes of the files whose voting
        copies were not unanimous (:func:`byzshield.server.vote.file_pairs`)."""
        live = None if present is None else present.tolist()
        voters = _voters(agree, live, index.shape[1])
        split = [j for j in range(index.shape[0]) if voters(j)]
        if not split:
            return []
        mask = None if present is None else present[split]
        labels = copy_classes(rows, index[split], present=mask)
        labels = [[x if x >= 0 else None for x in ls] for ls in labels]
        return file_pairs(self.holders, split, labels)

    def _sharded_full_vote(
        self, inbox: Inbox, rows: Rows, index: Tensor, bad: set[int]
    ) -> VoteResult:
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
        labels = [[k if k[0] >= 0 else None for k in keys[j]] for j in files]
        pairs = file_pairs(self.holders, files, labels) if self.evidence else []
        return VoteResult(positions, trusted, winners, distorted, _by_worker(lost), {}, pairs)

    def _complete_files(self, inbox: Inbox) -> Iterator[list[int]]:
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

    def _claims(self, inbox: Inbox, rows: Rows, index: Tensor, bad: set[int]):
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
        self, inbox: Inbox, rows: Rows, index: Tensor, claims: list[list[bytes]], bad: set[int]
    ) -> VoteResult:
        """The digest vote (:func:`byzshield.server.vote.digest_vote`) on ``claims``, each pull
        a round of ``inbox``'s. The pushed copies (as the attack and a digest lie left
        them: free when pushed) and those the attack simulation pulled are verified
        without asking. Distorted files and lost votes compare digests."""
        winners = self._buffer(rows)
        known = dict(inbox.known)  # the copies the attack simulation already pulled
        f, r = index.shape
        live = live_copies(inbox.copies) or [[True] * r for _ in range(f)]
        pushed = self._pushed(live)
        inbox.pull(rows, index, pushed)
        for j, i in pushed:
            known.setdefault((j, i), inbox.digest(rows, int(index[j, i])))

        def pull(requests: list[tuple[int, int]]) -> list[bytes]:
            inbox.pull(rows, index, requests)
            now = live_copies(inbox.copies)
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
        labels = [[votes[j].get(i) for i in range(r)] for j in files]
        pairs = file_pairs(self.holders, files, labels) if self.evidence else []
        liars = _by_worker(vote.liars)
        return VoteResult(positions, trusted, winners, distorted, _by_worker(lost), liars, pairs)

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
