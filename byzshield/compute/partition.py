"""Heterogeneous files: how a step's files are filled when they are not iid slices.

    python -m byzshield.train dataset=mnist1d network=cnn1d dataset.partition=dirichlet
    python -m byzshield.train dataset.partition=classes dataset.classes_per_file=1
    python -m byzshield.train dataset.partition=dirichlet dataset.alpha=0.1

Robustness papers sweep how different the honest gradients are by giving each worker a
skewed class mix: a Dirichlet draw (Hsu, Qi & Brown, "Measuring the effects of
non-identical data distribution for federated visual classification", 2019; the sweeps of
ByzFL, Blades and FLPoison) or a few classes per worker (McMahan et al., "Communication-
efficient learning of deep networks from decentralized data", AISTATS 2017, the
"pathological non-IID" split). Here the unit that holds data is the *file* (every holder
of a file computes the same samples), so the skew is per file, and it stays a pure
function of (seed, step, file) like :class:`byzshield.compute.sampling.IID`:

- :class:`Dirichlet` (``dataset.partition=dirichlet``, ``dataset.alpha``): file j's class
  mix p_j ~ Dir(alpha, ..., alpha) over the C classes (concentration alpha per class;
  Hsu et al. write Dir(alpha' p) with a prior p, which is alpha' = C alpha for a uniform
  p). Small alpha: files of one or two classes; large alpha: every file near the
  uniform mix, so the files approach iid draws of a balanced dataset.
- :class:`ClassesPerFile` (``dataset.partition=classes``, ``dataset.classes_per_file``=k):
  every file holds samples of exactly k classes, in near-equal numbers.

Counts. A file of m = batch_size / f samples gets n_jc samples of class c: for Dirichlet
the largest-remainder rounding of m p_jc (floor every m p_jc, then one more to the
classes with the largest fractional parts, ties to the lower class, so sum_c n_jc = m
exactly); for k classes m // k each, plus one for the first m mod k of the file's classes.

Samples. Class c's samples are read from its own endless stream, the concatenation of
per-class epoch permutations ``randperm(n_c, derive_seed("class-epoch", seed, c, e))`` of
its n_c training samples (ascending index order before permuting). Step t owns
positions [t b, (t + 1) b) of every class's stream (b = batch_size, the most one class
can be asked for in a step); the step's files take, in file order, the first
D_c(t) = sum_j n_jc of them, and a file lists its samples class by class, classes in
ascending order. So a step's files are a pure function of (seed, step): no file depends
on an earlier step's draws (a resumed run and every worker find them without replaying
the past); within a step no sample appears twice unless the step asks a class for more
than it holds or its slot crosses a class epoch (as the iid stream at an epoch
boundary); two steps share no sample within a class epoch; and every sample of a class
is equally likely to be used. Unlike the iid stream a class epoch is not visited
exhaustively: the positions of a step's slot past D_c(t) are skipped, the price of not
depending on earlier steps. The augmentation and the normalisation are the iid files'.

What a step's files came to is measured by :func:`label_tv`, recorded in every step's
line of ``metrics.jsonl``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from byzshield.compute.datasets import ImageDataset
from byzshield.compute.sampling import IID, Partition, file_slice, seeded_generator

__all__ = [
    "PARTITIONS",
    "ClassesPerFile",
    "Dirichlet",
    "check_partition",
    "class_counts",
    "label_tv",
    "make_partition",
]

STEP_CACHE_SIZE = 16
"""How many steps' index tables are kept: the simulate engine's threads and the
server's ``label_tv`` ask for the same step."""


def _largest_remainder(raw: torch.Tensor, total: int) -> torch.Tensor:
    """(f, C) int64 counts, each row summing to ``total``: floor(raw), then one more to
    the ``total - sum floor`` entries with the largest fractional parts (stable: ties to
    the lower index)."""
    base = raw.floor()
    counts = base.long()
    missing = total - counts.sum(dim=1, keepdim=True)
    order = torch.argsort(raw - base, dim=1, descending=True, stable=True)
    extra = (torch.arange(raw.shape[1]) < missing).long()  # to the first `missing` in order
    counts.scatter_add_(1, order, extra)
    assert bool((counts.sum(dim=1) == total).all()), "largest remainder lost samples"
    return counts


@dataclass(frozen=True)
class _ByClass:
    """A partition that fills file j with n_jc samples of each class c (the module
    docstring): subclasses say how many (:meth:`counts`), this walks the class pools."""

    name: ClassVar[str] = ""

    def counts(self, *, num_classes: int, num_files: int, file_size: int, seed: int, step: int):
        """(num_files, num_classes) int64 samples of each class in each file."""
        raise NotImplementedError

    def check(self, *, num_classes: int, file_size: int) -> None:
        """Raise a one-line ValueError when files of ``file_size`` samples of a dataset of
        ``num_classes`` classes cannot hold this partition's class mix."""

    def step_indices(
        self, data: ImageDataset, *, seed: int, step: int, batch_size: int, num_files: int
    ) -> torch.Tensor:
        file_slice(batch_size, num_files, 0)  # validates
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.check(num_classes=data.num_classes, file_size=batch_size // num_files)
        return _step_table(data, self, int(seed), int(step), int(batch_size), int(num_files))


@dataclass(frozen=True)
class Dirichlet(_ByClass):
    """Each file's class mix drawn from Dir(alpha, ..., alpha) (Hsu et al. 2019), counts
    rounded by largest remainder (module docstring).

    The f mixes of step t come from one generator, ``derive_seed("dirichlet", seed, t)``,
    as normalised Gamma(alpha) variables drawn in log space: with G ~ Gamma(alpha + 1)
    and U ~ Uniform(0, 1], G U^(1/alpha) ~ Gamma(alpha) (Marsaglia & Tsang 2000), so
    log X = log G + log(U) / alpha and p = softmax(log X). Unlike normalising Gamma(alpha)
    draws directly this does not underflow to 0/0 for small alpha (float64 Gamma(0.001)
    draws are 0 about half the time).

        >>> Dirichlet(0.1).counts(num_classes=4, num_files=2, file_size=10, seed=0, step=0).sum(1)
        tensor([10, 10])
    """

    alpha: float = 1.0
    name: ClassVar[str] = "dirichlet"

    def __post_init__(self) -> None:
        ok = isinstance(self.alpha, int | float) and not isinstance(self.alpha, bool)
        if not (ok and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"dirichlet alpha must be a finite number > 0, got {self.alpha!r}")

    def counts(self, *, num_classes: int, num_files: int, file_size: int, seed: int, step: int):
        g = seeded_generator("dirichlet", seed, step)
        shape = (num_files, num_classes)
        concentration = torch.full(shape, float(self.alpha) + 1.0, dtype=torch.float64)
        gamma = torch._standard_gamma(concentration, generator=g)
        uniform = 1.0 - torch.rand(shape, generator=g, dtype=torch.float64)  # (0, 1]
        mix = torch.softmax(gamma.log() + uniform.log() / self.alpha, dim=1)
        return _largest_remainder(mix * file_size, file_size)


@dataclass(frozen=True)
class ClassesPerFile(_ByClass):
    """Each file holds samples of exactly k = ``classes_per_file`` classes (McMahan et al.
    2017's pathological split, per file).

    Which classes: step t draws one order sigma_t of the C classes
    (``randperm(C, derive_seed("classes", seed, t))``) and file j takes the k consecutive
    entries sigma_t[(j k + i) mod C], i = 0..k-1 (distinct, since k <= C): a rotation
    through a fresh random order each step. Rather than an independent draw per file this
    keeps the step's batch balanced (every class is in floor or ceil of f k / C files, so
    with f k >= C no class is missing from a step, and the aggregate gradient sees every
    class), while which classes share a file and which file holds them change every step
    (a fixed Byzantine set does not always hold the same classes). Counts: m // k of each,
    one more for the first m mod k of the file's classes in that order.

        >>> counts = ClassesPerFile(2).counts(num_classes=10, num_files=3, file_size=5,
        ...                                   seed=0, step=0)
        >>> (counts > 0).sum(1), counts.max(1).values
        (tensor([2, 2, 2]), tensor([3, 3, 3]))
    """

    classes_per_file: int = 2
    name: ClassVar[str] = "classes"

    def __post_init__(self) -> None:
        k = self.classes_per_file
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"classes_per_file must be an integer >= 1, got {k!r}")

    def check(self, *, num_classes: int, file_size: int) -> None:
        k = self.classes_per_file
        if k > num_classes:
            raise ValueError(
                f"classes_per_file must be in 1..{num_classes} (the dataset's classes), got {k}"
            )
        if k > file_size:
            raise ValueError(
                f"classes_per_file={k} needs files of at least {k} samples (one of each "
                f"class), but the files hold {file_size}"
            )

    def counts(self, *, num_classes: int, num_files: int, file_size: int, seed: int, step: int):
        k = self.classes_per_file
        self.check(num_classes=num_classes, file_size=file_size)
        order = torch.randperm(num_classes, generator=seeded_generator("classes", seed, step))
        slots = torch.arange(num_files)[:, None] * k + torch.arange(k)  # (f, k)
        classes = order[slots % num_classes]
        per_class = torch.full((k,), file_size // k, dtype=torch.int64)
        per_class[: file_size % k] += 1
        counts = torch.zeros(num_files, num_classes, dtype=torch.int64)
        counts.scatter_(1, classes, per_class.expand(num_files, k).contiguous())
        return counts


PARTITIONS = {"iid": IID, "dirichlet": Dirichlet, "classes": ClassesPerFile}
"""``dataset.partition``'s choices."""


def make_partition(name: str, *, alpha: float = 1.0, classes_per_file: int = 2) -> Partition:
    """The partition ``name`` of :data:`PARTITIONS` with its parameter (the others are
    ignored); a one-line ValueError for an unknown name or a bad parameter."""
    if name not in PARTITIONS:
        raise ValueError(f"unknown partition {name!r}; choose one of {', '.join(PARTITIONS)}")
    build = {
        "iid": IID,
        "dirichlet": lambda: Dirichlet(alpha),
        "classes": lambda: ClassesPerFile(classes_per_file),
    }
    return build[name]()


def check_partition(partition: Partition, *, num_classes: int, file_size: int) -> None:
    """Raise a one-line ValueError when files of ``file_size`` samples cannot hold
    ``partition``'s class mix (nothing to check for iid and Dirichlet files)."""
    check = getattr(partition, "check", None)
    if check is not None:
        check(num_classes=num_classes, file_size=file_size)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(f, C) int64: how many of each file's labels are of each class (labels (f, m))."""
    f = labels.shape[0]
    offsets = torch.arange(f)[:, None] * num_classes
    flat = torch.bincount((labels + offsets).reshape(-1), minlength=f * num_classes)
    return flat.view(f, num_classes)


def label_tv(labels: torch.Tensor, num_classes: int) -> float:
    """How heterogeneous a step's files are: the mean over its files of the total-variation
    distance between the file's label distribution and the whole batch's,

        label_tv = (1 / f) sum_j (1/2) sum_c |P_j(c) - Q(c)|,   P_j(c) = n_jc / m,
        Q(c) = sum_j n_jc / (f m),

    from the (f, m) labels of the step's files. 0 when every file has the batch's mix;
    at most 1 - 1/f. Iid files are small but not 0 by chance (about 0.3 for files of 12
    samples of 10 classes).

        >>> label_tv(torch.tensor([[0, 0], [1, 1]]), 2), label_tv(torch.tensor([[0, 1], [1, 0]]), 2)
        (0.5, 0.0)
    """
    if labels.dim() != 2 or labels.shape[1] == 0:
        raise ValueError(f"labels must be (files, samples), got {tuple(labels.shape)}")
    counts = class_counts(labels, num_classes).double()
    files = counts / labels.shape[1]
    batch = files.mean(dim=0, keepdim=True)
    return float((files - batch).abs().sum(dim=1).mean() / 2)


# --------------------------------------------------------------------------------------
# The class streams


@functools.lru_cache(maxsize=8)
def _class_pools(data: ImageDataset) -> tuple[torch.Tensor, list[int], list[int]]:
    """Every class's samples in ascending index order, as one tensor sorted by class, and
    each class's start and size in it. Cached per dataset (the object: datasets are
    loaded once per process and never written to)."""
    sizes = torch.bincount(data.labels, minlength=data.num_classes).tolist()
    empty = [c for c, n in enumerate(sizes) if n == 0]
    if empty:
        raise ValueError(
            f"dataset {data.name}: class {empty[0]} has no training samples; heterogeneous "
            "partitions fill files from every class's samples (use dataset.partition=iid)"
        )
    order = torch.argsort(data.labels, stable=True)
    starts = [0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]]
    return order, starts, sizes


@functools.lru_cache(maxsize=256)
def _class_permutation(size: int, seed: int, cls: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch`` of class ``cls``'s stream: shared, read-only."""
    return torch.randperm(size, generator=seeded_generator("class-epoch", seed, cls, epoch))


def _class_stream(size: int, seed: int, cls: int, start: int, count: int) -> torch.Tensor:
    """Positions start .. start + count - 1 of class ``cls``'s stream, as offsets into
    the class's pool (one chunk per class epoch the range touches)."""
    chunks = []
    position, end = start, start + count
    while position < end:
        epoch, offset = divmod(position, size)
        take = min(end - position, size - offset)
        chunks.append(_class_permutation(size, seed, cls, epoch)[offset : offset + take])
        position += take
    if len(chunks) == 1:
        return chunks[0]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64)


@functools.lru_cache(maxsize=STEP_CACHE_SIZE)
def _step_table(
    data: ImageDataset, partition: _ByClass, seed: int, step: int, batch_size: int, num_files: int
) -> torch.Tensor:
    """The (f, m) sample indices of a step (the module docstring): shared, read-only."""
    num_classes, m = data.num_classes, batch_size // num_files
    order, starts, sizes = _class_pools(data)
    counts = partition.counts(
        num_classes=num_classes, num_files=num_files, file_size=m, seed=seed, step=step
    )
    demand = counts.sum(dim=0).tolist()  # D_c(t)
    picked = []
    for c in range(num_classes):  # class-major: class c's samples, files in order
        offsets = _class_stream(sizes[c], seed, c, step * batch_size, demand[c])
        picked.append(order[starts[c] + offsets])
    samples = torch.cat(picked)
    # the file of each picked sample, class-major; a stable sort makes it file-major with
    # each file's classes in ascending order
    owner = torch.arange(num_files).repeat(num_classes)
    file_of = torch.repeat_interleave(owner, counts.t().reshape(-1))
    table = samples[torch.argsort(file_of, stable=True)].view(num_files, m)
    return table
