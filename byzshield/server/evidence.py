"""Certified detection on the parameter server (``detect=flag|exclude``), the moving
placement (``placement.relabel=step``) and the adversary's answer to them
(``adversary.lie_on``, ``adversary.evade``): what a step's vote proves, and what the
server does about it.

- The evidence: the disagreement pairs of each step, from the vote's classes of
  bit-equal copies (the full vote's, the digest vote's equal digests, a sharded
  server's combined classes): every two holders of a file in different classes
  (:func:`byzshield.server.vote.class_pairs`; the robust update reports them).
- :class:`StepPlan`: who does what at one step: the Byzantine workers (the
  selection's, physical ids), those that lie (all of them, unless the adversary
  evades), each worker's role (relabelling), the workers excluded from the vote.
- :class:`Detector`: the run's :class:`~byzshield.detection.DisagreementGraph`, built
  from every step's pairs, and what follows from it: the workers certainly Byzantine,
  those excluded from every later vote (``exclude``; the robust update then assumes
  ``f_after[e]``), the lines a run prints and the keys of its metrics.

The robust update works on roles (the placement's worker ids, what the copies are
indexed by); a plan maps them to physical workers and back. Without relabelling the
two are the same.

Exclusion. An excluded worker's copies are erasures (:mod:`byzshield.server.erasures`):
its files vote among their other holders and a file still needs a strict majority of
all r copies. So an excluded worker can no longer distort a file, and with e workers
excluded at most q - e Byzantine workers still vote: the files they can win are at
most c_max(q - e) (the worst case over every set of q - e workers bounds the sets that
avoid the excluded ones). With ``aggregator_f`` left to the placement (null), the rule
then assumes f = c_max(q - e): floor((q - e) / r') for DETOX, q - e for the baseline
(which never excludes anyone: with r = 1 there is nothing to compare). An explicit
``aggregator_f`` is kept as given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from byzshield.design.placements import Placement
from byzshield.detection import (
    DisagreementGraph,
    evading_liars,
    inverse,
    lied_files,
    relabel_roles,
)

__all__ = ["DETECT", "Detector", "StepPlan"]

DETECT = ("off", "flag", "exclude")
"""``detect``: off (no evidence kept, today's bits), flag (the certainly Byzantine
workers are recorded), exclude (and their copies leave every later vote)."""


@dataclass(frozen=True)
class StepPlan:
    """Who does what at one step (physical worker ids).

    Attributes:
        step: the step.
        byzantine: the Byzantine workers (the selection's).
        liars: those that send their attack this step (``adversary.evade``: a subset).
        roles: ``roles[w]``, the role physical worker w plays (relabelling), or None:
            every worker its own.
        excluded: the workers whose copies leave this step's vote (``detect=exclude``).
        lie_on: ``adversary.lie_on``, where the liars lie (all or won files).
    """

    step: int
    byzantine: tuple[int, ...]
    liars: tuple[int, ...]
    roles: tuple[int, ...] | None = None
    excluded: tuple[int, ...] = ()
    lie_on: str = "all"

    def as_roles(self, workers: Iterable[int]) -> tuple[int, ...]:
        """The roles of physical ``workers``, sorted."""
        if self.roles is None:
            return tuple(sorted(workers))
        return tuple(sorted(self.roles[w] for w in workers))

    def as_workers(self, roles: Iterable[int]) -> list[int]:
        """The physical workers playing ``roles``, in the same order."""
        if self.roles is None:
            return list(roles)
        who = inverse(self.roles)
        return [who[k] for k in roles]

    def lied(self, placement: Placement) -> list[int] | None:
        """The files the liars lie on (:func:`byzshield.detection.lied_files`), None
        when they lie on every file they hold (``lie_on=all``)."""
        if self.lie_on == "all":
            return None
        return lied_files(
            placement, self.as_roles(self.liars), self.lie_on, self.as_roles(self.excluded)
        )


@dataclass
class Detector:
    """The run's detection, relabelling and evasion (see the module docstring).

    Args:
        placement: who holds which file (the roles).
        q: the most Byzantine workers (the certificate's bound).
        detect: off, flag or exclude.
        seed: the run's seed (the relabelling's stream).
        relabel: none or step.
        lie_on: where the liars lie, all or won.
        evade: the adversary lies only where it stays uncertified.
        f_after: with ``exclude``, the rule's f with e workers excluded (index e); empty:
            the rule's f never changes.
    """

    placement: Placement
    q: int
    detect: str = "off"
    seed: int = 0
    relabel: str = "none"
    lie_on: str = "all"
    evade: bool = False
    f_after: tuple[int, ...] = ()
    graph: DisagreementGraph | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.detect != "off":
            self.graph = DisagreementGraph(self.placement.num_workers, self.q)

    @property
    def on(self) -> bool:
        return self.graph is not None

    @property
    def excluding(self) -> list[int]:
        """The workers excluded from the next vote: the certain ones (``exclude``), none
        once the evidence showed more than q liars."""
        if self.detect != "exclude" or self.graph.refuted is not None:
            return []
        return self.graph.suspects

    def plan(self, step: int, byzantine: tuple[int, ...]) -> StepPlan:
        """The step's :class:`StepPlan` for the selection's ``byzantine`` workers."""
        K = self.placement.num_workers
        roles = relabel_roles(K, seed=self.seed, step=step) if self.relabel == "step" else None
        excluded = tuple(self.excluding) if self.on else ()
        liars = byzantine
        if self.evade and self.on and byzantine:
            liars = evading_liars(
                self.graph,
                self.placement,
                byzantine,
                lie_on=self.lie_on,
                roles=roles,
                excluded=excluded,
            )
        return StepPlan(step, byzantine, liars, roles, excluded, self.lie_on)

    def observe(self, plan: StepPlan, pairs: Iterable[tuple[int, int]]) -> list[str]:
        """Add the step's disagreement ``pairs`` (roles, as the update reports them);
        returns the lines to say (workers caught, or the certificate refuted)."""
        if not self.on:
            return []
        graph, step = self.graph, plan.step
        refuted = graph.refuted
        caught = graph.add(step, [tuple(plan.as_workers(p)) for p in pairs])
        lines = []
        if caught:
            who = f"worker {caught[0]} is" if len(caught) == 1 else f"workers {caught} are"
            line = (
                f"step {step}: {who} certainly Byzantine (in every set of at most q={self.q} "
                f"workers that touches the {len(graph.edges)} disagreements so far)"
            )
            if self.detect == "exclude":
                line += f"; their copies leave the vote from step {step + 1} on"
                if self.f_after:
                    line += f", where the rule assumes f={self.f_after[len(graph.caught)]}"
            lines.append(line)
        if refuted is None and graph.refuted is not None:
            lines.append(
                f"step {step}: {graph.why}; the certificate no longer holds, so nobody more "
                "is accused" + (" and every worker votes again" if self.detect == "exclude" else "")
            )
        return lines

    def annotate(self, record: dict, plan: StepPlan) -> dict:
        """A step's metrics record with physical worker ids where the update reported
        roles (``lost_votes``, ``digest_liars``), and with detection on ``suspects`` (the
        workers certain so far) and ``excluded`` (this step's); with ``adversary.evade``
        ``liars`` (who lied)."""
        if plan.roles is not None:
            for key in ("lost_votes", "digest_liars"):
                counts = {plan.as_workers([int(k)])[0]: v for k, v in record[key].items()}
                record[key] = {str(w): counts[w] for w in sorted(counts)}
        if self.on:
            record["suspects"] = self.graph.suspects
            record["excluded"] = list(plan.excluded)
        if self.evade:
            record["liars"] = list(plan.liars)
        return record

    def describe(self) -> list[str]:
        """The start banner's lines about detection (none when everything is off)."""
        lines = []
        if self.on:
            what = {"flag": "recorded", "exclude": "excluded from every later vote"}
            line = (
                f"detect={self.detect}: workers certainly Byzantine (in every cover of size "
                f"<= q={self.q} of the disagreements) are {what[self.detect]}"
            )
            if self.placement.replication == 1:
                line += "; with r = 1 no two workers compute the same file: there is no evidence"
            lines.append(line)
            if self.graph.caught:
                caught = ", ".join(f"{w} at step {s}" for w, s in self.graph.caught.items())
                lines.append(f"detect: caught so far: worker {caught}")
            if self.graph.refuted is not None:
                lines.append(f"detect: step {self.graph.refuted}: {self.graph.why}")
        if self.relabel == "step":
            lines.append("placement.relabel=step: a fresh secret permutation of roles every step")
        if self.lie_on != "all" or self.evade:
            how = "only on the files they win" if self.lie_on == "won" else "on every file"
            evade = ", and only where no liar becomes certain (evade)" if self.evade else ""
            lines.append(f"adversary: Byzantine workers lie {how}{evade}")
        return lines

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps (the graph), None with detection off."""
        return None if self.graph is None else self.graph.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.graph is not None and state:
            self.graph.load_state_dict(state)
