"""The majority vote as the tests state it: one file's copies stacked, f files' winners
stacked, built on the server's own vote (:func:`byzshield.server.vote.vote_positions`),
so that a test reads as the definition (docs/design.md section 3) and checks the
server's code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from byzshield.server.vote import Rows, vote_positions


@dataclass(frozen=True)
class VoteResult:
    """The vote over one file's r copies.

    Attributes:
        winner: the winning copy (a view of ``copies[index]``).
        index: the lowest index in the winning group of agreeing copies.
        count: how many copies are bit-identical to the winner (1 <= count <= r).
        strict: ``count > r / 2``: a strict majority of the replicas decided the file.
        num_copies: r.
    """

    winner: Tensor
    index: int
    count: int
    strict: bool
    num_copies: int


@dataclass(frozen=True)
class VoteBatch:
    """The vote over f files: ``winners`` (f, d); ``counts``, ``strict`` and ``indices``
    (the winning copy of each file), each (f,)."""

    winners: Tensor
    counts: Tensor
    strict: Tensor
    indices: Tensor

    @property
    def all_strict(self) -> bool:
        return bool(self.strict.all())

    @property
    def num_files(self) -> int:
        return int(self.counts.numel())


def majority_vote(copies: Tensor) -> VoteResult:
    """The vote over one file's (r, ...) copies, each row compared whole, bit for bit:
    the largest group of agreeing copies wins, the one whose first member has the
    lowest index among equally large ones."""
    if not isinstance(copies, Tensor):
        raise ValueError(f"copies must be a torch.Tensor of shape (r, d), got {type(copies)}")
    if copies.dim() < 1 or copies.shape[0] == 0:
        raise ValueError(f"copies must have shape (r, d) with r >= 1, got {tuple(copies.shape)}")
    r = copies.shape[0]
    flat = copies.reshape(r, -1) if copies.dim() > 1 else copies.reshape(r, 1)
    (index,), (count,) = vote_positions(flat, torch.arange(r)[None, :])
    return VoteResult(copies[index], index, count, 2 * count > r, r)


def vote_files(copies: Sequence[Tensor]) -> VoteBatch:
    """:func:`majority_vote` of each of f files (``copies[j]``: file j's (r_j, d) copies;
    r_j may differ between files, d and the dtype may not)."""
    if len(copies) == 0:
        raise ValueError("vote_files needs at least one file, got an empty sequence")
    first = copies[0]
    results = []
    for j, file_copies in enumerate(copies):
        if file_copies.shape[1:] != first.shape[1:] or file_copies.dtype != first.dtype:
            raise ValueError(
                f"file {j} has copies of shape {tuple(file_copies.shape)} and dtype "
                f"{file_copies.dtype}; every file needs rows of shape {tuple(first.shape[1:])} "
                f"and dtype {first.dtype}"
            )
        results.append(majority_vote(file_copies))
    return VoteBatch(
        winners=torch.stack([res.winner for res in results]),
        counts=torch.tensor([res.count for res in results], dtype=torch.long),
        strict=torch.tensor([res.strict for res in results], dtype=torch.bool),
        indices=torch.tensor([res.index for res in results], dtype=torch.long),
    )


def vote_rows(rows: Tensor, groups: Tensor) -> VoteBatch:
    """The vote of each file over copies given as row indices (``groups[j, i]``: the row
    of file j's i-th copy), as the server votes them, with the winners gathered."""
    positions, agree = vote_positions(rows, groups)
    winner_rows = [g[i] for g, i in zip(groups.tolist(), positions, strict=True)]
    counts = torch.tensor(agree, dtype=torch.long)
    return VoteBatch(
        winners=Rows(rows).gather(winner_rows),
        counts=counts,
        strict=2 * counts > groups.shape[1],
        indices=torch.tensor(positions, dtype=torch.long),
    )
