"""The (seed, step, file) -> samples map every replica of a file shares.

    >>> from byzshield.compute.datasets import load_dataset
    >>> from byzshield.compute.sampling import file_batch
    >>> train = load_dataset("digits", root="data", download=False, train=True)
    >>> x, y = file_batch(train, seed=0, step=0, batch_size=60, num_files=5, file=2)
    >>> tuple(x.shape), tuple(y.shape)
    ((12, 1, 8, 8), (12,))

Every replica of a file must see the same samples in the same order (the vote compares
bytes), so batches are a pure function of (seed, step), never of the rank
(docs/design.md section 8):

    position p = step * batch_size + i                  for i in 0 .. batch_size-1
    sample(p)  = perm(seed, p // N)[p % N]              N = number of samples
    perm(seed, e) = torch.randperm(N, generator=manual_seed(derive_seed("epoch", seed, e)))

Consecutive steps walk through one random permutation per epoch, so each epoch visits
every sample exactly once; a batch that crosses an epoch boundary takes the end of one
permutation and the start of the next (no dropped or short batches). The step's batch is
split into ``num_files`` equal contiguous files (:func:`file_slice`), normalised by the
dataset (:meth:`byzshield.compute.datasets.ImageDataset.normalize`), and, for a dataset
with ``augment`` (CIFAR-10/100 training), augmented per file (:func:`augment_crop_flip`)
from a generator seeded with ``derive_seed("augment", seed, step, j)``.
:func:`derive_seed` is BLAKE2b of the purpose and the integers, so streams for different
purposes or arguments are unrelated and stable across processes and Python versions. The
global torch/numpy/random generators are never touched. Identical bytes across processes
still need the same torch build (``randperm``'s algorithm is torch's), as docs/design.md
section 8 requires anyway.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F

from byzshield.compute.datasets import ImageDataset

__all__ = [
    "AUGMENT_PADDING",
    "IID",
    "SEED_MAX",
    "Partition",
    "augment_crop_flip",
    "batch_indices",
    "derive_seed",
    "epoch_permutation",
    "eval_batches",
    "file_batch",
    "file_batches",
    "file_slice",
    "seeded_generator",
    "step_batch",
    "step_files",
    "step_labels",
]

SEED_MAX = 2**63 - 1
"""The largest run seed: :func:`derive_seed` packs each value as 8 signed bytes, and
``torch.manual_seed`` and NumPy's generators take every integer in 0..SEED_MAX."""
AUGMENT_PADDING = 4
"""Reflect padding, in pixels, before the random crop of the CIFAR augmentation."""


def derive_seed(purpose: str, *values: int) -> int:
    """A 63-bit seed that is a stable function of ``purpose`` and integer ``values``.

    ``BLAKE2b-64(b"byzshield/" + purpose + b"/" + v_1 + ... + v_k)`` with each value as 8
    little-endian signed bytes, read little-endian and masked to 63 bits. Unlike ``hash()``
    or ``seed * 1000 + step`` it is the same in every process and never collides in
    practice (e.g. (seed=1, step=0) vs (seed=0, step=1000)).

        >>> derive_seed("epoch", 0, 0) == derive_seed("epoch", 0, 0) != derive_seed("epoch", 0, 1)
        True
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(b"byzshield/" + purpose.encode() + b"/")
    for value in values:
        try:
            digest.update(int(value).to_bytes(8, "little", signed=True))
        except OverflowError:
            raise ValueError(f"seed values must fit in 64 bits, got {value}") from None
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def seeded_generator(purpose: str, *values: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``derive_seed(purpose, *values)``."""
    return torch.Generator().manual_seed(derive_seed(purpose, *values))


PERMUTATION_CACHE_SIZE = 8
"""How many epoch permutations :func:`batch_indices` keeps (a step touches one or two)."""


@functools.lru_cache(maxsize=PERMUTATION_CACHE_SIZE)
def _shared_epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """:func:`epoch_permutation` memoised for the many files of one step.

    The tensor is shared by every caller: only read it (slice, index, copy), never mutate
    it or hand it out. ``randperm`` from a freshly seeded generator is a pure function of
    its arguments, so a cached permutation is bit-identical to a recomputed one.
    """
    return torch.randperm(num_samples, generator=seeded_generator("epoch", seed, epoch))


def epoch_permutation(num_samples: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The (num_samples,) int64 visiting order of epoch ``epoch``: ``randperm`` seeded by
    ``derive_seed("epoch", seed, epoch)``. The caller owns the returned tensor."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return _shared_epoch_permutation(int(num_samples), int(seed), int(epoch)).clone()


def batch_indices(num_samples: int, batch_size: int, *, seed: int, step: int) -> torch.Tensor:
    """The (batch_size,) int64 sample indices of step ``step`` (0-based).

    Positions ``step * batch_size + i`` of the endless stream formed by concatenating
    :func:`epoch_permutation` for epochs 0, 1, 2... (see the module docstring), so steps
    ``0 .. N // batch_size - 1`` visit distinct samples and each epoch covers all N. The
    last :data:`PERMUTATION_CACHE_SIZE` permutations are kept, so the f files of a step
    (each calling this) draw them once; the returned tensor is always a fresh copy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    start = step * batch_size
    chunks = []
    position, end = start, start + batch_size
    while position < end:  # one chunk per epoch the batch touches
        epoch, offset = divmod(position, num_samples)
        take = min(end - position, num_samples - offset)
        perm = _shared_epoch_permutation(int(num_samples), int(seed), int(epoch))
        chunks.append(perm[offset : offset + take])
        position += take
    return torch.cat(chunks)


def file_slice(batch_size: int, num_files: int, file: int) -> slice:
    """Rows of the step's batch that make up file ``file``: the ``file``-th of
    ``num_files`` equal contiguous slices."""
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    if batch_size < 1 or batch_size % num_files != 0:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of the number of "
            f"files ({num_files})"
        )
    if not 0 <= file < num_files:
        raise ValueError(f"file must be in [0, {num_files}), got {file}")
    size = batch_size // num_files
    return slice(file * size, (file + 1) * size)


def augment_crop_flip(
    images: torch.Tensor, *, generator: torch.Generator, padding: int = AUGMENT_PADDING
) -> torch.Tensor:
    """Reflect-pad by ``padding``, crop back to (H, W) at a random offset, flip half.

    ``images`` is a float (B, C, H, W) batch. Draws, in this order, B vertical and B
    horizontal offsets in [0, 2 * padding] and B flip bits from ``generator`` only. As
    torchvision's ``Pad(reflect) + RandomCrop + RandomHorizontalFlip``, applied per sample;
    the original applied them before normalisation, which commutes with reflection.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    flips = torch.randint(0, 2, (b,), generator=generator).bool()
    rows = offsets[0, :, None] + torch.arange(h)  # (b, h)
    cols = offsets[1, :, None] + torch.arange(w)  # (b, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class Partition(Protocol):
    """How a step's batch is cut into files: the samples of every file of step ``step``.

    ``step_indices`` returns the (num_files, batch_size // num_files) int64 indices into
    ``data``, row j being file j's samples in order; it must be a pure function of its
    arguments (never of the rank, the process or the global generators), so that every
    copy of a file is the same samples. :class:`IID` is the default;
    :mod:`byzshield.compute.partition` has the heterogeneous ones. Callers only read the
    returned tensor (it may be cached and shared)."""

    name: ClassVar[str]

    def step_indices(
        self, data: ImageDataset, *, seed: int, step: int, batch_size: int, num_files: int
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class IID:
    """``dataset.partition=iid``: file j is the j-th of ``num_files`` equal contiguous
    slices of :func:`batch_indices` (the module docstring), so every file is an iid draw
    of the dataset's samples."""

    name: ClassVar[str] = "iid"

    def step_indices(
        self, data: ImageDataset, *, seed: int, step: int, batch_size: int, num_files: int
    ) -> torch.Tensor:
        file_slice(batch_size, num_files, 0)  # validates
        indices = batch_indices(data.num_samples, batch_size, seed=seed, step=step)
        return indices.view(num_files, batch_size // num_files)


def _indices(
    data: ImageDataset,
    partition: Partition | None,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
) -> torch.Tensor:
    return (partition or IID()).step_indices(
        data, seed=seed, step=step, batch_size=batch_size, num_files=num_files
    )


def file_batch(
    data: ImageDataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    file: int,
    partition: Partition | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """File ``file`` of step ``step``: x float32 (batch_size / num_files, *sample_shape),
    y int64.

    The samples are row ``file`` of the partition's ``step_indices`` (by default
    :class:`IID`: ``batch_indices(...)[file_slice(...)]``), normalised; with
    ``data.augment`` they are augmented from ``derive_seed("augment", seed, step, file)``.
    Every call with the same arguments returns bit-identical tensors, in any process.
    """
    (batch,) = file_batches(
        data,
        seed=seed,
        step=step,
        batch_size=batch_size,
        num_files=num_files,
        files=[file],
        partition=partition,
    )
    return batch


def file_batches(
    data: ImageDataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    files: Sequence[int] | None = None,
    partition: Partition | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[file_batch(..., file=j) for j in files]`` (all ``num_files`` files by default),
    bit-identical to it, with the step's sample indices computed once for all of them: for
    a worker holding several files and for an engine that computes every file of a step.
    """
    files = list(range(num_files) if files is None else files)
    for j in files:  # validates before sampling
        file_slice(batch_size, num_files, j)
    table = _indices(
        data, partition, seed=seed, step=step, batch_size=batch_size, num_files=num_files
    )
    out = []
    for j in files:
        idx = table[j]
        x = data.normalize(data.images[idx])
        if data.augment:
            x = augment_crop_flip(x, generator=seeded_generator("augment", seed, step, j))
        out.append((x, data.labels[idx]))
    return out


def step_files(
    data: ImageDataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    partition: Partition | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every file of step ``step`` stacked: x (num_files, batch_size / num_files,
    *sample_shape), y (num_files, batch_size / num_files); bit-identical to stacking
    :func:`file_batches`, with one gather and one normalisation for the whole batch when
    there is no augmentation (the lockstep engine's input)."""
    if data.augment:
        parts = file_batches(
            data,
            seed=seed,
            step=step,
            batch_size=batch_size,
            num_files=num_files,
            partition=partition,
        )
        return torch.stack([x for x, _ in parts]), torch.stack([y for _, y in parts])
    table = _indices(
        data, partition, seed=seed, step=step, batch_size=batch_size, num_files=num_files
    )
    idx = table.reshape(-1)
    x = data.normalize(data.images[idx])
    return x.view(*table.shape, *x.shape[1:]), data.labels[idx].view(table.shape)


def step_labels(
    data: ImageDataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    partition: Partition | None = None,
) -> torch.Tensor:
    """The (num_files, batch_size / num_files) labels of step ``step``'s files, without
    touching the samples (what the server needs to measure how heterogeneous the files
    were: :func:`byzshield.compute.partition.label_tv`)."""
    table = _indices(
        data, partition, seed=seed, step=step, batch_size=batch_size, num_files=num_files
    )
    return data.labels[table]


def step_batch(
    data: ImageDataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    partition: Partition | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of step ``step``: the ``num_files`` file batches concatenated in order
    (for single-process references and BatchNorm re-estimation)."""
    parts = file_batches(
        data,
        seed=seed,
        step=step,
        batch_size=batch_size,
        num_files=num_files,
        partition=partition,
    )
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def eval_batches(
    data: ImageDataset, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive, unaugmented, normalised batches covering ``data`` once, in order;
    the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, data.num_samples, batch_size):
            stop = start + batch_size
            yield data.normalize(data.images[start:stop]), data.labels[start:stop]

    return batches()
