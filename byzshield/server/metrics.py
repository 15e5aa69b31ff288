"""A step's outcome and metrics: the gradient the robust update decided on and what it
reports (:class:`Outcome`, :func:`step_metrics`), and the line of ``metrics.jsonl`` a
step writes (:func:`step_record`), one definition for every engine (the lockstep
engine's batched path reports the same keys).

The definitions (docs/design.md section 4):

- A file is **trusted** when a strict majority of its r copies agree bit for bit; a file
  without one (a tie between two groups, for even r) is dropped from the step's
  aggregation and counted. So colluding Byzantine copies win a file exactly when they
  hold r' = floor(r / 2) + 1 of its copies, the threshold the worst-case search
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

The time split (:data:`TIME_KEYS`) adds up to ``step_s`` with ``other_s``.

- ``label_tv``: how heterogeneous the step's files were, the mean over files of the
  total-variation distance between a file's label distribution and the batch's
  (:func:`byzshield.compute.partition.label_tv`; 0 when every file has the batch's mix).
  The server computes it from the labels alone (:meth:`byzshield.config.Run.label_tv`):
  the files are a pure function of (seed, step), whatever ``dataset.partition`` is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["SHARD_KEYS", "TIME_KEYS", "Outcome", "step_metrics", "step_record"]


@dataclass
class Outcome:
    """The gradient the robust update decided on, and what happened on the way.

    Attributes:
        gradient: (d,) the aggregate of the vote winners.
        metrics: the step's values for metrics.jsonl (:func:`step_metrics`).
        disagreements: worker pairs whose copies of a file differed (asked for by
            ``detect``: :mod:`byzshield.server.evidence`), else empty.
    """

    gradient: Tensor
    metrics: dict
    disagreements: list[tuple[int, int]] = field(default_factory=list)


TIME_KEYS = (
    "compute_s",
    "communication_s",
    "attack_s",
    "vote_s",
    "aggregation_s",
    "update_s",
)
"""The columns of the time split; they add up to ``step_s``."""


SHARD_KEYS = ("bytes_per_server", "control_bytes", "slice_bytes")
"""ps_shards > 1: what each server received from the workers, what the servers sent
each other, and the slices servers 1..S-1 sent server 0
(:class:`byzshield.server.sharded.ShardedUpdate`)."""


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
    """What the robust update reports of a step (the module docstring defines the
    terms), the one definition both :class:`byzshield.server.update.RobustUpdate` and the
    lockstep engine's batched path report:

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


def step_record(
    step: int,
    m: dict,
    lr: float,
    byzantine: tuple[int, ...],
    missing: tuple[int, ...],
    times: dict,
    update_s: float,
    step_s: float,
    dropped: Iterable[int] = (),
    *,
    label_tv: float,
) -> dict:
    """A step's line of metrics.jsonl from the robust update's metrics ``m``, the lr it
    was applied with, the gather's times (``compute_s``, ``communication_s``), this
    step's stragglers (``missing``), the workers dropped so far (``dropped``) and how
    heterogeneous its files were (``label_tv``, the module docstring)."""
    record = {
        "step": step,
        "loss": m["loss"],
        "lr": lr,
        "label_tv": label_tv,
        "byzantine": list(byzantine),
        "missing_workers": list(missing),
        "dropped_workers": sorted(dropped),
        "distorted": m["distorted"],
        "distorted_files": m["distorted_files"],
        "all_strict": m["all_strict"],
        "non_strict_files": m["non_strict_files"],
        "nonfinite_winners": m["nonfinite_winners"],
        "lost_votes": m["lost_votes"],
        "outside_guarantee": m["outside_guarantee"],
        "attack_factor": m["attack_factor"],
        "bytes_received": m["bytes_received"],
        "digest_liars": m["digest_liars"],
        **{k: m[k] for k in SHARD_KEYS if k in m},
        "compute_s": times["compute_s"],
        "communication_s": times["communication_s"] + m["receive_s"],
        "attack_s": m["attack_s"],
        "vote_s": m["vote_s"],
        "aggregation_s": m["aggregation_s"],
        "update_s": update_s,
        "step_s": step_s,
    }
    # what the gather and the update do not account for (copies, bookkeeping)
    record["other_s"] = max(0.0, step_s - sum(record[k] for k in TIME_KEYS))
    record["vote_tail_s"] = m["vote_tail_s"]  # not in the split: part of vote_s
    return record


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
