"""The step-time attack simulation: the one place where Byzantine copies are computed
from honest gradients (docs/design.md, section 6). Which workers are Byzantine is the
worst-case search's (:mod:`byzshield.design.search`); what they send is decided here.

Attacks that read the other workers' honest gradients (ALIE, IPM and their optimised
forms, ``attack.needs_honest``) cannot run on a worker, which sees only its own files.
The parameter server simulates them instead, after the honest copies have arrived and
before the vote (:class:`byzshield.server.update.RobustUpdate` calls it, in every engine): every
copy a Byzantine worker sends of one of its files becomes the attack's forged vector,
computed by :func:`byzshield.attacks.forge` from the (f, d) stack of the files' honest
gradients. An optimised attack (``needs_objective``) picks its factor by the damage
that survives the vote and the run's rule, :meth:`OmniscientAttack.damage`.

    >>> import torch
    >>> from byzshield.aggregators import build_aggregator
    >>> from byzshield.attacks import make_attack
    >>> from byzshield.design.placements import detox
    >>> from byzshield.server.copies import copy_index
    >>> from byzshield.server.rule import StepRule
    >>> from byzshield.server.vote import Rows
    >>> p = detox(6, 3)  # files 0 (workers 0, 1, 2) and 1 (workers 3, 4, 5)
    >>> rule = StepRule(build_aggregator("mean"), f=0, seed=0)
    >>> adversary = OmniscientAttack(p, make_attack("ipm", eps=1.0), rule)
    >>> honest = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)  # row w: worker w's copy
    >>> index, rows = adversary.forge(Rows(honest), copy_index(p), {0}, step=0)
    >>> rows[int(index[0, 0])].tolist()  # -(2 * file 0 + 3 * file 1) / 5 honest copies
    [-0.4000000059604645, -0.6000000238418579]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from byzshield.aggregators import local_columns, norm, reduce_columns, total_columns
from byzshield.attacks import Attack, Columns, forge
from byzshield.design.placements import Placement
from byzshield.server.rule import StepRule
from byzshield.server.vote import Rows

__all__ = ["SERVER_COLUMNS", "OmniscientAttack"]

SERVER_COLUMNS = Columns(reduce=reduce_columns, total=total_columns, cut=local_columns)
"""How an attack sees the server's columns: its sums over the whole vector are the
rules' reductions (per-block partials in column order, across a sharded server's
shards), and a whole-vector draw is cut to this server's columns."""


class OmniscientAttack:
    """Forges the Byzantine copies of an attack that needs the honest gradients.

    Args:
        placement: who holds which file.
        attack: an attack with ``needs_honest``.
        rule: the run's aggregation as a step applies it; an optimised attack scores
            its candidates with it (:meth:`damage`).
    """

    def __init__(self, placement: Placement, attack: Attack, rule: StepRule):
        self.placement, self.attack, self.rule = placement, attack, rule
        self.holders = [list(ws) for ws in placement.file_workers]
        self.position = {(w, j): i for j, ws in enumerate(self.holders) for i, w in enumerate(ws)}

    def honest_position(self, j: int, bad: set[int], live=None) -> int | None:
        """The holder position of the copy of file j the attack reads: its first honest
        holder whose copy arrived (``live[j][i]``; None: every copy did), else its first
        holder whose copy arrived (a Byzantine worker under an omniscient attack sends
        its honest gradient too); None when no copy of file j arrived."""
        arrived = [i for i in range(len(self.holders[j])) if live is None or live[j][i]]
        honest = (i for i in arrived if self.holders[j][i] not in bad)
        return next(honest, arrived[0] if arrived else None)

    def honest_copies(self, bad: set[int], live=None) -> list[tuple[int, int]]:
        """(file, holder position) of the copy the attack reads for each file of which
        some copy arrived (:meth:`honest_position`)."""
        picks = ((j, self.honest_position(j, bad, live)) for j in range(len(self.holders)))
        return [(j, i) for j, i in picks if i is not None]

    def forge(
        self, rows: Rows, index: Tensor, bad: set[int], step: int, live=None, lied=None
    ) -> tuple[Tensor, Rows]:
        """Every Byzantine copy re-pointed at its forged row. Returns the new (f, r)
        index and the rows with the forged block appended (``rows`` is left as it was);
        every honest copy the attack reads (:meth:`honest_copies`) must be in ``rows``.
        ``live[j][i]``: whether file j's i-th copy arrived (None: every copy did); a file
        none of whose copies arrived is left out of the attack's honest gradients (the
        server never had it), and its Byzantine copies, erasures too, are not forged.
        ``lied``: the only files whose Byzantine copies are forged (``adversary.lie_on``;
        None: every file a Byzantine worker holds); the others stay honest."""
        picks = self.honest_copies(bad, live)
        readable = [j for j, _ in picks]
        at = {j: k for k, j in enumerate(readable)}  # file -> its row of the honest stack
        honest = self.honest_stack(rows, index, bad, picks)
        files = sorted({j for w in bad for j in self.placement.worker_files[w] if j in at})
        if lied is not None:
            files = [j for j in files if j in set(lied)]
            if not files:
                return index, rows  # nothing won: every copy stays honest
        counts = [sum(w in bad for w in self.holders[j]) for j in readable]
        weights = torch.tensor([len(self.holders[j]) - counts[k] for k, j in enumerate(readable)])
        objective = None
        if getattr(self.attack, "needs_objective", False):
            objective = self.damage(honest, counts, step)
        forged = forge(
            self.attack,
            honest,
            [at[j] for j in files],
            seed=self.rule.seed,
            step=step,
            weights=weights.to(torch.float64),
            objective=objective,
            columns=SERVER_COLUMNS,
        )
        rows = Rows(*rows.blocks)
        start = rows.append(forged)
        row_of = {j: start + (k if forged.shape[0] > 1 else 0) for k, j in enumerate(files)}
        index = index.clone()
        for w in bad:
            for j in self.placement.worker_files[w]:
                if j in row_of:
                    index[j, self.position[(w, j)]] = row_of[j]
        return index, rows

    def damage(self, honest: Tensor, counts: list[int], step: int) -> Callable[[Tensor], float]:
        """The objective of the optimised attacks: ||rule(winners) - honest mean|| when
        every file the Byzantine copies win (a strict majority of its copies) carries the
        candidate vector v and ties are dropped, exactly as the vote will decide. Each
        evaluation leaves the rule's state as it found it.

        Args:
            honest: (f, d) each file's honest gradient.
            counts: each file's number of Byzantine holders.
        """
        r, t = self.placement.replication, self.placement.threshold
        keep = [j for j, c in enumerate(counts) if 2 * c != r]  # ties are dropped
        won = [k for k, j in enumerate(keep) if counts[j] >= t]
        base = honest[keep].clone()
        mean = honest.to(torch.float64).mean(dim=0)
        outside = self.rule.outside(len(keep))
        state = self.rule.aggregator.state_dict()

        def damage(v: Tensor) -> float:
            if not keep:
                return 0.0
            base[won] = v
            value = self.rule(base, step, outside=outside).value
            self.rule.aggregator.load_state_dict(state)
            return norm(value.to(torch.float64) - mean)  # over every shard's columns

        return damage

    def honest_stack(self, rows: Rows, index: Tensor, bad: set[int], picks=None) -> Tensor:
        """(f, d): each file's gradient as an honest holder sent it (for an omniscient
        attack Byzantine workers send honest gradients too, so any holder will do); with
        ``picks`` (:meth:`honest_copies`), those files' only."""
        picks = [int(index[j, i]) for j, i in (self.honest_copies(bad) if picks is None else picks)]
        first = rows.blocks[0]
        if picks == list(range(len(picks))) and first.shape[0] >= len(picks):
            return first[: len(picks)]  # the simulator's honest rows: no copy
        return rows.gather(picks)


def digest_lie(
    lie: str,
    placement: Placement,
    original: Tensor,
    original_claims: list[list[bytes]] | None,
    index: Tensor,
    claims: list[list[bytes]] | None,
    bad: set[int],
    *,
    omniscient: bool,
    live=None,
) -> Tensor:
    """``adversary.digest_lie`` (vote=digest): Byzantine copies whose claimed digest and the
    copy they send when pulled disagree. ``honest_digest``: a Byzantine holder claims the
    digest of the file's first honest copy (``claims`` is changed in place) and sends its
    own; ``honest_tensor``: it claims its own digest and sends that honest copy (the
    returned ``index`` points at it; the full vote sees it too). A file with no honest
    holder is left as it is, unless the attack is omniscient: the Byzantine worker then
    computed the honest copy itself. ``original`` and ``original_claims`` are the copies
    as the workers sent them, ``index`` and ``claims`` as the attack left them; only
    copies that arrived (``live[j][k]``; None: every copy did) are read."""
    if lie == "none" or not bad:
        return index
    index = index.clone() if lie == "honest_tensor" else index
    for w in sorted(bad):
        for j in placement.worker_files[w]:
            holders = list(placement.file_workers[j])
            i = holders.index(w)
            honest = next(
                (k for k, v in enumerate(holders) if v not in bad and (live is None or live[j][k])),
                None,
            )
            if honest is None and not omniscient:
                continue
            ref = i if honest is None else honest
            if lie == "honest_tensor":
                index[j, i] = int(original[j, ref])
            elif claims is not None and original_claims is not None:
                claims[j][i] = original_claims[j][ref]
    return index
