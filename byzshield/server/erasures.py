"""Erasures: the copies of a step that do not vote, and what is left to vote.

Two kinds, one mask (:attr:`byzshield.server.update.Copies.present`, (f, r) bool, False for an
erasure):

- stragglers (``stragglers=N``): workers whose replies miss the step's deadline,
  simulated, drawn from (seed, step), so the same in every engine and on every server
  (:func:`erasures`);
- the workers the torchrun engine dropped for the rest of the run: a malformed or late
  message, a closed connection (:class:`byzshield.engines.torchrun.TorchrunEngine`,
  docs/faults.md).

A file is trusted only with a strict majority of all its r copies, so a file that keeps
r/2 of its holders or fewer can never be trusted again (:func:`voteable_files`); when no
file is left, the run cannot go on (:func:`unvoteable`).

    >>> from byzshield.config import build_run
    >>> from byzshield.config.overrides import compose_config
    >>> ovs = ["approach=draco_lite", "approach.K=6", "approach.r=3", "mode=mean"]
    >>> run = build_run(compose_config(ovs))
    >>> voteable_files(run, dropped=[0, 1])  # files: holders (0, 1, 2) and (3, 4, 5)
    1
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from byzshield.config import Run
from byzshield.server.update import Copies

__all__ = ["drop_line", "erase", "erasures", "present_copies", "unvoteable", "voteable_files"]


def present_copies(run: Run, missing: Iterable[int]) -> torch.Tensor:
    """(f, r) bool: which copies arrive when the workers ``missing`` do not."""
    gone = set(missing)
    return torch.tensor([[w not in gone for w in ws] for ws in run.placement.file_workers])


def erase(copies: Copies, run: Run, missing: tuple[int, ...]) -> None:
    """Mark the copies of the workers ``missing`` absent, on top of those the engine has
    marked (a dropped worker's)."""
    if missing:
        present = present_copies(run, missing)
        copies.present = present if copies.present is None else copies.present & present


def erasures(run: Run, step: int) -> tuple[int, ...]:
    """The workers whose replies miss this step's deadline (``stragglers``, drawn from
    (seed, step), the same in both engines and on every server)."""
    count = run.config.stragglers
    if not count:
        return ()
    from byzshield.design.selection import random_selection

    K = run.placement.num_workers
    return tuple(random_selection(K, count, seed=run.config.seed, step=step, stragglers=True))


def voteable_files(run: Run, dropped: Iterable[int]) -> int:
    """Files that keep more than r/2 holders once the workers ``dropped`` are gone: the
    only ones whose vote can still have a strict majority."""
    gone, r = set(dropped), run.placement.replication
    return sum(2 * sum(w not in gone for w in ws) > r for ws in run.placement.file_workers)


def drop_line(run: Run, step: int, w: int, why: str, dropped: Iterable[int]) -> str:
    """The console line for worker w, dropped at ``step`` for ``why``: what is left to
    vote with every worker ``dropped`` gone, and whether the rule still has its guarantee
    on that many files (the steps say so in ``outside_guarantee``, as with stragglers)."""
    left = voteable_files(run, dropped)
    line = (
        f"step {step}: {why}; worker {w} is dropped for the rest of the run: its files vote "
        f"among their other holders ({left} of {run.placement.num_files} files can still "
        f"have a strict majority)"
    )
    try:
        run.aggregator.check(left, run.aggregator_f)
    except ValueError:
        line += (
            f"; {left} files are too few for the rule with f={run.aggregator_f}: steps run "
            "outside its guarantee (outside_guarantee in metrics.jsonl)"
        )
    return line


def unvoteable(run: Run, step: int, dropped: Iterable[int]) -> str | None:
    """Why the run cannot go on once the workers ``dropped`` are gone (no file can have a
    strict majority of its holders again), or None while some file can."""
    dropped = sorted(dropped)
    if not dropped or voteable_files(run, dropped):
        return None
    r = run.placement.replication
    return (
        f"step {step}: workers {dropped} are dropped and no file keeps more than {r}/2 of "
        f"its {r} holders, so no vote can be trusted; stopping"
    )
