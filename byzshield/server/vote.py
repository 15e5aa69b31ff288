"""Majority vote over the r replicas of each file (ByzShield section 3, DETOX section 3).

The parameter server receives r copies of every file's gradient, one from each worker
that holds the file. Honest replicas are bit-identical (same samples, same order, same
torch build, one thread per worker), so the vote compares **bits**, never values with a
tolerance:

- Two copies agree exactly when their bit patterns are equal. Copies are compared
  through an integer view of the same element size (``float32 -> int32``) with
  ``torch.equal``: NaN payloads agree with identical NaN payloads, ``-0.0`` and ``0.0``
  disagree, and no rounding enters.
- Why no digest (hash) first: a digest costs a full read of every copy at about 1 GB/s
  (blake2b) and still needs a verification; a bit comparison is exact by itself and runs
  at memory speed (about 5x faster here). Copies are grouped by comparing each copy with
  the first member of every existing group, after a cheap strided pre-check that rejects
  most different copies without a full read. With r copies and g distinct groups this is
  at most r * g comparisons; honest files (g = 1) cost r - 1 full comparisons.

The policy (docs/design.md section 3): the largest group of agreeing copies wins; among
equally large groups the one whose first member has the lowest copy index wins. The
winner is trusted only when its group is a strict majority of all r copies
(``count > r / 2``); the robust update (:mod:`byzshield.server.update`) drops the other
files from the step and counts them. The rule is deterministic and depends only on the
copies and their order (the order the placement lists the file's workers in). It
replaces the original research code's Boyer-Moore pass, which returned whichever
candidate survived last.

The server's votes, each on copies given as row indices (nothing is gathered):
:func:`copy_classes` and :func:`decide_classes` (the full vote, on the files whose copies
are in: each copy's class, which the robust update also reads for the copies that lost
their vote; a sharded server's servers classify their columns and decide together),
:func:`vote_positions` (the same decision, without the classes), and :func:`digest_vote`
(``vote=digest``: it votes on the digests the workers send,
:mod:`byzshield.server.digest`, and reads only as many full copies as it takes to check
the winning digest; the same policy decides it, and a copy whose bytes do not match its
sender's digest votes with the digest of what was sent).

Example: file 0's copies are rows 0, 1, 2 and file 1's rows 3, 1, 4::

    >>> import torch
    >>> honest = torch.tensor([1.0, 2.0])
    >>> rows = torch.stack([honest, -100 * honest, honest, honest, -honest])
    >>> vote_positions(rows, torch.tensor([[0, 1, 2], [3, 1, 4]]))  # (positions, counts)
    ([0, 0], [2, 1])

Run the tests: ``OMP_NUM_THREADS=1 python -m pytest tests/test_vote.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "DigestVote",
    "Rows",
    "VoteResult",
    "class_pairs",
    "copy_classes",
    "decide_classes",
    "digest_vote",
    "file_pairs",
    "same_bits",
    "vote_positions",
]

# Integer dtypes with the same element size as a tensor's dtype: comparing through
# them compares bit patterns (torch.equal on floats would say NaN != NaN).
_BIT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Elements sampled by the cheap pre-check before a full comparison.
_PRECHECK_SAMPLES = 4096


def _bits(x: Tensor) -> Tensor:
    """A flat integer view of ``x``'s bit pattern (no copy for contiguous tensors)."""
    x = x.detach().reshape(-1)
    if x.dtype.is_complex:
        x = torch.view_as_real(x).reshape(-1)
    dtype = _BIT_VIEW.get(x.element_size())
    if dtype is None:  # pragma: no cover - every torch dtype has size 1, 2, 4 or 8
        return x.contiguous().view(torch.uint8)
    return x if x.dtype == dtype else x.view(dtype)


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors have the same shape, dtype and bit pattern.

    Exact: NaN payloads compare as bits (identical NaNs agree), and ``-0.0 != 0.0``.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ab, bb = _bits(a), _bits(b)
    step = max(1, ab.numel() // _PRECHECK_SAMPLES)
    if step > 1 and not torch.equal(ab[::step], bb[::step]):
        return False
    return torch.equal(ab, bb)


def _largest_class(row, r: int, key=None) -> tuple[int, int]:
    """(index, count) of the winning class among copies ``row(0) .. row(r-1)``.

    ``key(i)``, when given, names the storage of copy i: copies with equal keys are the
    same memory and agree without being compared.
    """
    firsts: list[int] = []  # first member (lowest index) of each class, in creation order
    sizes: list[int] = []
    for i in range(r):
        for g, first in enumerate(firsts):
            if (key is not None and key(first) == key(i)) or same_bits(row(first), row(i)):
                sizes[g] += 1
                break
        else:
            firsts.append(i)
            sizes.append(1)
    # Classes are created in order of their first member, so the first maximum is the
    # class with the lowest first index among the largest ones.
    best = max(range(len(sizes)), key=lambda g: (sizes[g], -firsts[g]))
    return firsts[best], sizes[best]


class Rows:
    """Rows of one or more (n_k, d) blocks, addressed by one running index.

    Row ``i`` of the first block is index i, row 0 of the second block is index n_0,
    and so on. Lets a vote run over what arrived plus copies made afterwards (e.g. an
    omniscient attack's rows) without concatenating them.

        >>> rows = Rows(torch.zeros(2, 3), torch.ones(1, 3))
        >>> rows.gather([2, 0]).tolist()
        [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """

    def __init__(self, *blocks: Tensor):
        if not blocks:
            raise ValueError("Rows needs at least one (n, d) block")
        d = blocks[0].shape[1] if blocks[0].dim() == 2 else None
        for b in blocks:
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != d:
                raise ValueError(f"every block must be an (n, {d}) tensor, got {tuple(b.shape)}")
        self.blocks = list(blocks)
        self.starts = []
        total = 0
        for b in self.blocks:
            self.starts.append(total)
            total += b.shape[0]
        self.num_rows = total

    def append(self, block: Tensor) -> int:
        """Add a block; returns the index of its first row."""
        if block.dim() != 2 or block.shape[1] != self.blocks[0].shape[1]:
            raise ValueError(f"block must be (n, {self.blocks[0].shape[1]}), got {block.shape}")
        start = self.num_rows
        self.blocks.append(block)
        self.starts.append(start)
        self.num_rows += block.shape[0]
        return start

    def _locate(self, i: int) -> tuple[int, int]:
        for k in range(len(self.blocks) - 1, -1, -1):
            if i >= self.starts[k]:
                return k, i - self.starts[k]
        raise IndexError(i)  # pragma: no cover - callers check the range

    def __getitem__(self, i: int) -> Tensor:
        k, local = self._locate(int(i))
        return self.blocks[k][local]

    def gather(self, indices, out: Tensor | None = None) -> Tensor:
        """The given rows, in order, as a (len(indices), d) tensor (``out`` if given)."""
        indices = [int(i) for i in indices]
        shape = (len(indices), self.blocks[0].shape[1])
        if out is None:
            out = torch.empty(shape, dtype=self.blocks[0].dtype)
        elif out.shape != shape or out.dtype != self.blocks[0].dtype:
            raise ValueError(f"out must be {shape} {self.blocks[0].dtype}, got {out.shape}")
        if len(self.blocks) == 1:
            torch.index_select(self.blocks[0], 0, torch.tensor(indices), out=out)
            return out
        for pos, i in enumerate(indices):
            out[pos] = self[i]
        return out


def vote_positions(
    rows: Tensor | Rows, groups: Tensor, *, present: Tensor | None = None
) -> tuple[list[int], list[int]]:
    """The majority vote of each file over copies given as row indices, compared in place
    (copies naming the same row agree without a comparison: the simulate engine's honest
    copies are one row per file). The robust update calls it on the files whose copies
    have arrived while other copies are still on the wire.

    Args:
        rows: (N, d) tensor of every received copy, or :class:`Rows` over several blocks.
        groups: (f, r) integer tensor; ``groups[j, i]`` is the row of file j's i-th copy.
        present: optional (f, r) bool: which copies arrived (erasures: a straggler's or a
            dropped worker's copies are missing). Only present copies vote, but a strict
            majority is still more than half of all r copies. A file with no copy at all
            gets position 0 and count 0.

    Returns:
        Per file, the position in ``groups[j]`` that won and the number of copies that
        agree with it (strict when ``2 * count > r``).

    Raises:
        ValueError: ``groups`` is not (f, r) with f, r >= 1, indexes a row out of range,
            or ``present`` has another shape.
    """
    rows = _as_rows(rows)
    if not isinstance(groups, Tensor) or groups.dim() != 2 or 0 in groups.shape:
        raise ValueError("groups must be an (f, r) integer tensor with f >= 1 and r >= 1")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= rows.num_rows):
        raise ValueError(f"groups index rows 0..{rows.num_rows - 1}; got out-of-range indices")
    table = groups.tolist()
    r = groups.shape[1]
    if present is None:
        picks = [
            _largest_class(lambda i, g=g: rows[g[i]], r, key=lambda i, g=g: g[i]) for g in table
        ]
    else:
        if tuple(present.shape) != tuple(groups.shape):
            raise ValueError(f"present must be {tuple(groups.shape)}, got {tuple(present.shape)}")
        picks = []
        for g, mask in zip(table, present.tolist(), strict=True):
            idx = [i for i in range(r) if mask[i]]
            if not idx:
                picks.append((0, 0))
                continue
            k, count = _largest_class(
                lambda i, g=g, idx=idx: rows[g[idx[i]]],
                len(idx),
                key=lambda i, g=g, idx=idx: g[idx[i]],
            )
            picks.append((idx[k], count))
    return [i for i, _ in picks], [c for _, c in picks]


def copy_classes(
    rows: Tensor | Rows, groups: Tensor, *, present: Tensor | None = None
) -> list[list[int]]:
    """Each copy's class in its file: ``labels[j][i]`` is the lowest position k of file
    j whose copy is bit-equal to copy i (itself when none before it is), -1 for an
    absent copy. The part of the vote a sharded server (:mod:`byzshield.server.sharded`) computes
    on its slice of the columns; :func:`decide_classes` decides from every slice's
    labels. Copies naming the same row agree without a comparison."""
    rows = _as_rows(rows)
    table = groups.tolist()
    live = None if present is None else present.tolist()
    labels = []
    for j, g in enumerate(table):
        firsts: list[int] = []
        out = []
        for i, row in enumerate(g):
            if live is not None and not live[j][i]:
                out.append(-1)
                continue
            for k in firsts:
                if g[k] == row or same_bits(rows[g[k]], rows[row]):
                    out.append(k)
                    break
            else:
                firsts.append(i)
                out.append(i)
        labels.append(out)
    return labels


def decide_classes(labels: Sequence[Sequence[Sequence[int]]]) -> tuple[list[int], list[int]]:
    """The vote from :func:`copy_classes` of every slice (``labels[s][j][i]``): copies
    agree when they share a class on every slice, that is, bit for bit over the whole
    vector. Returns, as :func:`vote_positions`, the winning position and the copies
    agreeing with it per file: the largest class wins, the lowest first member among
    equally large ones; a file with no copy present gets (0, 0)."""
    positions, counts = [], []
    for j in range(len(labels[0])):
        classes: dict[tuple[int, ...], list[int]] = {}  # key -> [first member, size]
        for i in range(len(labels[0][j])):
            key = tuple(part[j][i] for part in labels)
            if key[0] < 0:
                continue  # absent: no slice has it
            entry = classes.setdefault(key, [i, 0])
            entry[1] += 1
        if not classes:
            positions.append(0)
            counts.append(0)
            continue
        first, size = max(classes.values(), key=lambda e: (e[1], -e[0]))
        positions.append(first)
        counts.append(size)
    return positions, counts


def class_pairs(holders: Sequence[int], labels: Sequence) -> list[tuple[int, int]]:
    """The disagreement pairs of one file: (holders[a], holders[b]) for every two copies
    whose class ``labels`` differ (a class is any comparable label: a first member, a
    tuple of them, a digest; None for a copy that did not vote), a < b by position. At
    least one worker of each pair is Byzantine: honest copies are bit-identical.

        >>> class_pairs([4, 7, 9], [0, 1, 0])
        [(4, 7), (7, 9)]
    """
    out = []
    for a in range(len(holders)):
        if labels[a] is None:
            continue
        for b in range(a + 1, len(holders)):
            if labels[b] is not None and labels[b] != labels[a]:
                out.append((holders[a], holders[b]))
    return out


def file_pairs(holders: Sequence[Sequence[int]], files, labels) -> list[tuple[int, int]]:
    """:func:`class_pairs` of each of ``files`` (``labels[k]``: the classes of
    ``files[k]``'s copies), in file order; ``holders[j]``: file j's holders."""
    return [p for j, ls in zip(files, labels, strict=True) for p in class_pairs(holders[j], ls)]


@dataclass
class VoteResult:
    """What a vote decided in one step, and what it saw (the robust update's).

    Attributes:
        positions: per file, the holder position whose copy won.
        trusted: per file, whether a strict majority decided it (else it is dropped).
        winners: (f, d) each file's winning copy (the update's reused buffer).
        distorted: the distorted files, in file order.
        lost: {worker: copies of it that lost their file's vote}, in worker order.
        liars: vote=digest: {worker: copies whose bytes did not match its digest}.
        pairs: the disagreement pairs (:func:`file_pairs`), when asked for.
    """

    positions: list[int]
    trusted: list[bool]
    winners: Tensor
    distorted: list[int]
    lost: dict[str, int]
    liars: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[int, int]] = field(default_factory=list)


def _as_rows(rows) -> Rows:
    if isinstance(rows, Tensor):
        if rows.dim() != 2:
            raise ValueError(f"rows must be an (N, d) tensor, got {tuple(rows.shape)}")
        return Rows(rows)
    if not isinstance(rows, Rows):
        raise ValueError(f"rows must be an (N, d) tensor or Rows, got {type(rows)}")
    return rows


@dataclass(frozen=True)
class DigestVote:
    """Outcome of the digest-first vote over f files (:func:`digest_vote`).

    Attributes:
        positions: per file, the holder position whose copy won (trusted files: a
            verified copy; the others: the first of the largest group of digests).
        trusted: per file, whether a strict majority of its r digests agreed and enough
            copies of the winning digest were verified.
        votes: per file, {holder position: digest} of the copies that voted, as the
            vote ended (a verified copy votes with the digest of its bytes).
        liars: {worker: copies whose bytes did not match the digest it sent}.
    """

    positions: list[int]
    trusted: list[bool]
    votes: list[dict[int, bytes]]
    liars: dict[int, int]


def digest_vote(
    claims: Sequence[Sequence[bytes]],
    holders: Sequence[Sequence[int]],
    known: Mapping[tuple[int, int], bytes],
    pull: Callable[[list[tuple[int, int]]], Sequence[bytes]],
    *,
    verify: str = "first",
    present: Sequence[Sequence[bool]] | None = None,
) -> DigestVote:
    """Vote on digests, then verify the winner: pull copies of the winning digest until
    ``verify`` holders' bytes match it, one (``"first"``) or a strict majority of r
    (``"majority"``). ``"majority"`` also pulls every copy of a file without a strict
    majority of digests. A verified copy that does not match its sender's digest is
    recorded against the sender and votes with the digest of its bytes from then on.

    The digests play the copies' part in :func:`vote_positions`'s policy: the largest
    group wins, ties go to the group whose first member has the lowest position, and
    only a strict majority of all r copies (``count > r / 2``) is trusted.

    Args:
        claims: ``claims[j][i]``, the digest the i-th holder of file j sent (f x r).
        holders: ``holders[j][i]``, that holder's worker id (to name liars).
        known: (file, holder position) -> the digest of that copy's bytes, for copies
            already read (verified without a pull).
        pull: reads the requested (file, holder position) copies, one round, and
            returns the digests of their bytes in the same order.
        verify: ``"first"`` or ``"majority"``.
        present: ``present[j][i]``, whether that copy arrived (erasures do not vote);
            None when every copy did.

    Returns:
        A :class:`DigestVote`.
    """
    f = len(claims)
    r = len(claims[0]) if f else 0
    need = 1 if verify == "first" else r // 2 + 1
    known = dict(known)
    liars: dict[int, int] = {}

    def caught(j: int, i: int) -> None:
        w = holders[j][i]
        liars[w] = liars.get(w, 0) + 1

    for (j, i), actual in known.items():
        if present is not None and not present[j][i]:
            continue  # an erased copy does not vote
        if actual != claims[j][i]:
            caught(j, i)
    positions, trusted, votes = [0] * f, [False] * f, [dict() for _ in range(f)]
    open_files = list(range(f))
    while open_files:
        requests: list[tuple[int, int]] = []
        still = []
        for j in open_files:
            live = [i for i in range(r) if present is None or present[j][i]]
            vote = {i: known.get((j, i), claims[j][i]) for i in live}
            members = _largest_group(vote)
            votes[j] = vote
            unknown = [i for i in live if (j, i) not in known]
            if 2 * len(members) <= r:  # no strict majority of all r copies
                if verify == "majority" and unknown:
                    requests += [(j, i) for i in unknown]
                    still.append(j)
                else:
                    positions[j] = members[0] if members else 0
                continue
            checked = [i for i in members if (j, i) in known]
            if len(checked) >= need:
                positions[j], trusted[j] = checked[0], True
                continue
            todo = [i for i in members if (j, i) not in known][: need - len(checked)]
            requests += [(j, i) for i in todo]
            still.append(j)
        if requests:
            for (j, i), actual in zip(requests, pull(requests), strict=True):
                known[(j, i)] = actual
                if actual != claims[j][i]:
                    caught(j, i)
        open_files = still
    return DigestVote(positions, trusted, votes, liars)


def _largest_group(vote: dict[int, bytes]) -> list[int]:
    """Positions of the largest group of equal digests, in position order; among
    groups of equal size the one with the lowest first position (as the full vote)."""
    groups: dict[bytes, list[int]] = {}
    for i in sorted(vote):
        groups.setdefault(vote[i], []).append(i)
    if not groups:
        return []
    return max(groups.values(), key=lambda g: (len(g), -g[0]))
