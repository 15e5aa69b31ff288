"""What the adversary does about the evidence: where its workers lie
(``adversary.lie_on``) and, when it knows detection exists, whether they lie at all
(``adversary.evade``).

- ``lie_on=all`` (the default): a Byzantine worker sends its attack for every file it
  holds. Where its side cannot win the vote, the lie changes nothing but leaves evidence.
- ``lie_on=won``: the Byzantine workers lie only on the files they win (at least
  r' = floor(r/2) + 1 of the file's r copies come from Byzantine workers not excluded
  from the vote) and send honest copies elsewhere: the omniscient adversary's choice,
  the only lies that do damage.
- ``evade=true``: the adversary knows the server's disagreement graph
  (:class:`byzshield.detection.DisagreementGraph`) and lets a Byzantine worker lie
  this step only if the lies it would add keep every Byzantine worker out of the
  certain set. Precisely (:func:`evading_liars`): the Byzantine workers not excluded,
  in id order, are added one by one to the step's liars whenever the disagreements
  that the liars so far would cause (each lying holder of a lied file against each
  other holder of it, as the vote's classes would show: all Byzantine copies of a file
  are equal) certify no worker the graph has not certified already; the others send
  honest copies. The prediction covers every disagreement the step can show, so an
  evading adversary is never caught; what it can still do is measured in
  docs/results/detection/.

    >>> from byzshield.design.placements import detox
    >>> lied_files(detox(6, 3), [0], "all"), lied_files(detox(6, 3), [0], "won")
    ([0], [])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from byzshield.design.placements import Placement
from byzshield.detection.graph import DisagreementGraph
from byzshield.detection.relabel import inverse

__all__ = ["LIE_ON", "evading_liars", "lie_pairs", "lied_files"]

LIE_ON = ("all", "won")
"""``adversary.lie_on``: all (every file a Byzantine worker holds) or won (only the
files its side wins)."""


def lied_files(
    placement: Placement, liars: Iterable[int], lie_on: str, excluded: Iterable[int] = ()
) -> list[int]:
    """The files the ``liars`` (placement worker ids: roles) send a lie for, in order:
    every file one of them holds (``all``), or only those where the liars that are not
    ``excluded`` hold at least r' of the r copies (``won``)."""
    bad, gone = set(liars), set(excluded)
    if lie_on == "all":
        return [j for j, ws in enumerate(placement.file_workers) if any(w in bad for w in ws)]
    t = placement.threshold
    return [
        j
        for j, ws in enumerate(placement.file_workers)
        if sum(w in bad and w not in gone for w in ws) >= t
    ]


def lie_pairs(
    placement: Placement, liars: Iterable[int], lie_on: str, excluded: Iterable[int] = ()
) -> list[tuple[int, int]]:
    """The disagreements the lies of ``liars`` (roles) cause: each liar holding a lied
    file against each holder that tells the truth, the ``excluded`` (whose copies do not
    vote) left out."""
    bad, gone = set(liars), set(excluded)
    pairs = []
    for j in lied_files(placement, bad, lie_on, gone):
        voters = [w for w in placement.file_workers[j] if w not in gone]
        pairs += [(b, h) for b in voters if b in bad for h in voters if h not in bad]
    return pairs


def evading_liars(
    graph: DisagreementGraph,
    placement: Placement,
    byzantine: Sequence[int],
    *,
    lie_on: str,
    roles: Sequence[int] | None = None,
    excluded: Iterable[int] = (),
) -> tuple[int, ...]:
    """The Byzantine workers (physical ids) that lie this step under ``evade`` (see the
    module docstring): added in id order while the step's predicted disagreements
    certify nobody new. ``roles[w]``: the role physical worker w plays this step (None:
    its own); ``excluded``: physical workers whose copies do not vote."""
    role = list(range(placement.num_workers)) if roles is None else list(roles)
    who = inverse(tuple(role))
    gone = set(excluded)
    known = set(graph.caught)
    chosen: list[int] = []
    for b in sorted(byzantine):
        if b in gone:
            continue  # its copies do not vote: a lie changes nothing
        trial = [*chosen, b]
        pairs = lie_pairs(placement, [role[w] for w in trial], lie_on, [role[w] for w in gone])
        certain = graph.certain_with([(who[a], who[c]) for a, c in pairs])
        if certain is not None and certain <= known:
            chosen = trial
    return tuple(chosen)
