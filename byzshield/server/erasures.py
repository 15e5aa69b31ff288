"""Erasures: the copies of a step that do not vote, and what is left to vote.

Two kinds, one mask (:attr:`byzshield.server.copies.Copies.present`, (f, r) bool, False
for an erasure):

- stragglers (``stragglers=N``): workers whose replies miss the step's deadline,
  simulated, drawn from (seed, step), so the same in every engine and on every server
  (:func:`stragglers`);
- the workers the torchrun engine dropped for the rest of the run: a malformed or late
  message, a closed connection (:class:`byzshield.engines.torchrun.TorchrunEngine`,
  docs/faults.md).

A file is trusted only with a strict majority of all its r copies, so a file that keeps
r/2 of its holders or fewer can never be trusted again (:func:`voteable_files`); when no
file is left, the run cannot go on (:func:`unvoteable`).

    >>> from byzshield.design.placements import detox
    >>> voteable_files(detox(6, 3), dropped=[0, 1])  # files: holders (0, 1, 2) and (3, 4, 5)
    1
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from byzshield.aggregators import Aggregator
from byzshield.design.placements import Placement
from byzshield.design.selection import random_selection
from byzshield.server.copies import Copies

__all__ = ["drop_line", "erase", "present_copies", "stragglers", "unvoteable", "voteable_files"]


def present_copies(placement: Placement, gone_workers: Iterable[int]) -> torch.Tensor:
    """(f, r) bool: which copies arrive when the workers ``gone_workers`` do not."""
    gone = set(gone_workers)
    return torch.tensor([[w not in gone for w in ws] for ws in placement.file_workers])


def erase(copies: Copies, placement: Placement, gone_workers: tuple[int, ...]) -> None:
    """Mark the copies of the workers ``gone_workers`` absent, on top of those the engine has
    marked (a dropped worker's)."""
    if gone_workers:
        present = present_copies(placement, gone_workers)
        copies.present = present if copies.present is None else copies.present & present


def stragglers(placement: Placement, count: int, *, seed: int, step: int) -> tuple[int, ...]:
    """The ``count`` workers whose replies miss this step's deadline (``stragglers``),
    drawn from (seed, step): the same in every engine and on every server."""
    if not count:
        return ()
    K = placement.num_workers
    return tuple(random_selection(K, count, seed=seed, step=step, stragglers=True))


def voteable_files(placement: Placement, dropped: Iterable[int]) -> int:
    """Files that keep more than r/2 holders once the workers ``dropped`` are gone: the
    only ones whose vote can still have a strict majority."""
    gone, r = set(dropped), placement.replication
    return sum(2 * sum(w not in gone for w in ws) > r for ws in placement.file_workers)


def drop_line(
    placement: Placement,
    rule: Aggregator,
    rule_f: int,
    step: int,
    w: int,
    why: str,
    dropped: Iterable[int],
) -> str:
    """The console line for worker w, dropped at ``step`` for ``why``: what is left to
    vote with every worker ``dropped`` gone, and whether ``rule`` still has its guarantee
    at ``rule_f`` on that many files (the steps say so in ``outside_guarantee``, as with
    stragglers)."""
    left = voteable_files(placement, dropped)
    line = (
        f"step {step}: {why}; worker {w} is dropped for the rest of the run: its files vote "
        f"among their other holders ({left} of {placement.num_files} files can still "
        f"have a strict majority)"
    )
    try:
        rule.check(left, rule_f)
    except ValueError:
        line += (
            f"; {left} files are too few for the rule with f={rule_f}: steps run "
            "outside its guarantee (outside_guarantee in metrics.jsonl)"
        )
    return line


def unvoteable(placement: Placement, step: int, dropped: Iterable[int]) -> str | None:
    """Why the run cannot go on once the workers ``dropped`` are gone (no file can have a
    strict majority of its holders again), or None while some file can."""
    dropped = sorted(dropped)
    if not dropped or voteable_files(placement, dropped):
        return None
    r = placement.replication
    return (
        f"step {step}: workers {dropped} are dropped and no file keeps more than {r}/2 of "
        f"its {r} holders, so no vote can be trusted; stopping"
    )
