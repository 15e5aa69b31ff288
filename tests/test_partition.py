"""byzshield.compute.partition: heterogeneous files (Dirichlet class mixes, k classes per
file) as a pure function of (seed, step, file), checked against the documented streams
written out here, and label_tv, the heterogeneity every step records."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import pytest
import torch

from byzshield.compute.datasets import ImageDataset, load_dataset
from byzshield.compute.partition import (
    PARTITIONS,
    ClassesPerFile,
    Dirichlet,
    class_counts,
    label_tv,
    make_partition,
)
from byzshield.compute.sampling import (
    IID,
    batch_indices,
    derive_seed,
    file_batch,
    file_batches,
    step_files,
    step_labels,
)

PARTS = {
    "iid": IID(),
    "dirichlet-0.3": Dirichlet(0.3),
    "dirichlet-5": Dirichlet(5.0),
    "classes-1": ClassesPerFile(1),
    "classes-3": ClassesPerFile(3),
}


@pytest.fixture(scope="module")
def mnist1d() -> ImageDataset:
    return load_dataset("mnist1d", root="data", download=False, train=True)


def _toy(num_samples: int = 90, num_classes: int = 6, augment: bool = False) -> ImageDataset:
    """Unbalanced classes (class c has about c + 1 shares), images that name their index."""
    gen = torch.Generator().manual_seed(1)
    weights = torch.arange(1, num_classes + 1, dtype=torch.float64)
    labels = torch.multinomial(weights, num_samples, replacement=True, generator=gen)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    images = torch.arange(num_samples, dtype=torch.uint8)[:, None, None, None]
    return ImageDataset(
        name="toy",
        images=images.expand(num_samples, 3, 32, 32).contiguous(),
        labels=labels,
        num_classes=num_classes,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=augment,
    )


# ---------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", list(PARTS))
def test_every_copy_of_a_file_is_the_same_samples_whatever_else_is_computed(mnist1d, name):
    part = PARTS[name]
    args = {"seed": 7, "step": 11, "batch_size": 150, "num_files": 25, "partition": part}
    x, y = step_files(mnist1d, **args)
    assert x.shape == (25, 6, 1, 40) and y.shape == (25, 6)
    for files in ([3], [24, 0, 3], None):  # what different workers hold
        got = file_batches(mnist1d, **args, files=files)
        for j, (xj, yj) in zip(files or range(25), got, strict=True):
            assert torch.equal(xj, x[j]) and torch.equal(yj, y[j])
            x1, y1 = file_batch(mnist1d, **args, file=j)
            assert x1.numpy().tobytes() == xj.numpy().tobytes() and torch.equal(y1, yj)
    assert torch.equal(step_labels(mnist1d, **args), y)
    other = step_files(mnist1d, **{**args, "step": 12})[1]
    assert not torch.equal(other, y)
    assert not torch.equal(step_files(mnist1d, **{**args, "seed": 8})[1], y)


@pytest.mark.parametrize("augment", [False, True])
def test_partitioned_files_are_augmented_and_normalised_like_iid_files(augment):
    data = _toy(augment=augment)
    args = {"seed": 2, "step": 5, "batch_size": 24, "num_files": 4}
    for part in (Dirichlet(0.5), ClassesPerFile(2)):
        x, y = step_files(data, **args, partition=part)
        for j in range(4):
            idx = x[j, :, 0, 0, 0] if not augment else None
            xj, yj = file_batch(data, **args, file=j, partition=part)
            assert torch.equal(xj, x[j]) and torch.equal(yj, y[j])
            if not augment:  # the images name their sample: labels and pixels agree
                samples = torch.round(idx * 0.25 * 255 + 0.5 * 255).long()
                assert torch.equal(data.labels[samples], yj)


def test_a_step_s_files_do_not_depend_on_earlier_steps_or_the_cache(mnist1d):
    part = Dirichlet(0.2)
    args = {"seed": 3, "batch_size": 300, "num_files": 25, "partition": part}
    late = step_labels(mnist1d, step=10_000, **args)  # no earlier step drawn first
    for step in range(40):  # more steps than the cache holds
        step_labels(mnist1d, step=step, **args)
    assert torch.equal(step_labels(mnist1d, step=10_000, **args), late)


# ---------------------------------------------------------------------- the documented streams


def _reference_table(data, counts: torch.Tensor, *, seed: int, step: int, batch_size: int):
    """The module docstring, position by position: class c's stream is the concatenation of
    randperm(n_c, derive_seed("class-epoch", seed, c, e)) over its samples in ascending
    order; step t owns positions [t b, (t + 1) b); files take them in file order and list
    their samples class by class."""
    num_files, num_classes = counts.shape
    pools = [torch.nonzero(data.labels == c).flatten().tolist() for c in range(num_classes)]
    files = [[] for _ in range(num_files)]
    for c in range(num_classes):
        position, n = step * batch_size, len(pools[c])
        for j in range(num_files):
            for _ in range(int(counts[j, c])):
                gen = torch.Generator().manual_seed(
                    derive_seed("class-epoch", seed, c, position // n)
                )
                files[j].append(pools[c][int(torch.randperm(n, generator=gen)[position % n])])
                position += 1
    return torch.tensor(files)


@pytest.mark.parametrize(
    ("part", "batch_size", "num_files", "step"),
    [
        (Dirichlet(0.1), 60, 6, 0),
        (Dirichlet(2.0), 60, 6, 37),  # the step's slots span several epochs of small classes
        (ClassesPerFile(2), 48, 8, 5),
        (ClassesPerFile(5), 20, 4, 3),
    ],
)
def test_files_are_filled_from_the_documented_class_streams(part, batch_size, num_files, step):
    data = _toy()
    m = batch_size // num_files
    counts = part.counts(num_classes=6, num_files=num_files, file_size=m, seed=4, step=step)
    labels = step_labels(
        data, seed=4, step=step, batch_size=batch_size, num_files=num_files, partition=part
    )
    assert torch.equal(class_counts(labels, 6), counts)
    expected = _reference_table(data, counts, seed=4, step=step, batch_size=batch_size)
    assert torch.equal(data.labels[expected], labels)
    x, _ = step_files(
        data, seed=4, step=step, batch_size=batch_size, num_files=num_files, partition=part
    )
    samples = torch.round(x[:, :, 0, 0, 0] * 0.25 * 255 + 0.5 * 255).long()
    assert torch.equal(samples, expected)


def _reference_largest_remainder(mix: list[float], total: int) -> list[int]:
    raw = [Fraction(p) * total for p in mix]
    base = [math.floor(v) for v in raw]
    order = sorted(range(len(mix)), key=lambda c: (-(raw[c] - base[c]), c))
    for c in order[: total - sum(base)]:
        base[c] += 1
    return base


@pytest.mark.parametrize("alpha", [0.05, 0.7, 30.0])
def test_dirichlet_counts_are_the_documented_draw_rounded_by_largest_remainder(alpha):
    num_files, num_classes, m = 7, 10, 13
    counts = Dirichlet(alpha).counts(
        num_classes=num_classes, num_files=num_files, file_size=m, seed=9, step=21
    )
    gen = torch.Generator().manual_seed(derive_seed("dirichlet", 9, 21))
    shape = (num_files, num_classes)
    g = torch._standard_gamma(torch.full(shape, alpha + 1.0, dtype=torch.float64), generator=gen)
    u = 1.0 - torch.rand(shape, generator=gen, dtype=torch.float64)
    log_x = g.log() + u.log() / alpha
    for j in range(num_files):
        weights = [math.exp(v - max(log_x[j].tolist())) for v in log_x[j].tolist()]
        mix = [w / sum(weights) for w in weights]
        got = counts[j].tolist()
        assert sum(got) == m
        assert all(abs(n - p * m) < 1 for n, p in zip(got, mix, strict=True))
        # rounding: the reference on the module's own mix (float ties aside, the same)
        assert got == _reference_largest_remainder(mix, m)


def test_dirichlet_mixes_have_beta_marginals_and_extreme_alphas_stay_finite():
    """A Dir(alpha) component is Beta(alpha, (C - 1) alpha): mean 1/C, variance
    (C - 1) / (C^2 (C alpha + 1)); files of 10,000 samples make the rounding negligible."""
    num_classes, m = 10, 10_000
    for alpha in (0.1, 1.0):
        mixes = (
            torch.cat(
                [
                    Dirichlet(alpha).counts(
                        num_classes=num_classes, num_files=100, file_size=m, seed=0, step=t
                    )
                    for t in range(30)
                ]
            ).double()
            / m
        )
        var = (num_classes - 1) / (num_classes**2 * (num_classes * alpha + 1))
        assert mixes.mean().item() == pytest.approx(1 / num_classes, rel=1e-9)
        assert mixes[:, 0].mean().item() == pytest.approx(0.1, abs=4 * math.sqrt(var / 3000))
        assert mixes.var().item() == pytest.approx(var, rel=0.1)
    one_class = Dirichlet(1e-4).counts(num_classes=10, num_files=50, file_size=12, seed=1, step=0)
    assert (one_class.max(dim=1).values == 12).float().mean() > 0.95  # files of one class
    flat = Dirichlet(1e6).counts(num_classes=10, num_files=50, file_size=100, seed=1, step=0)
    assert torch.equal(flat, torch.full((50, 10), 10))  # the uniform mix


@pytest.mark.parametrize(
    ("k", "num_files", "m"), [(1, 25, 12), (2, 25, 12), (3, 4, 7), (10, 3, 10)]
)
def test_classes_files_hold_exactly_k_classes_and_the_batch_is_balanced(k, num_files, m):
    counts = ClassesPerFile(k).counts(
        num_classes=10, num_files=num_files, file_size=m, seed=5, step=2
    )
    assert ((counts > 0).sum(dim=1) == k).all()
    assert (counts.sum(dim=1) == m).all()
    per_file = counts[counts > 0]
    assert per_file.max() - per_file.min() <= 1
    files_per_class = (counts > 0).sum(dim=0)
    low = num_files * k // 10
    assert files_per_class.min() >= low and files_per_class.max() <= low + 1
    later = ClassesPerFile(k).counts(
        num_classes=10, num_files=num_files, file_size=m, seed=5, step=3
    )
    assert k == 10 or not torch.equal(later > 0, counts > 0)  # the classes move each step


@pytest.mark.parametrize(
    "part", [Dirichlet(0.01), Dirichlet(3.0), ClassesPerFile(1), ClassesPerFile(7)]
)
def test_every_file_holds_exactly_its_size_and_its_class_counts(mnist1d, part):
    for batch_size, num_files in ((300, 25), (91, 13), (70, 10), (100, 1)):
        m = batch_size // num_files
        counts = part.counts(num_classes=10, num_files=num_files, file_size=m, seed=1, step=3)
        assert (counts.sum(dim=1) == m).all() and (counts >= 0).all()
        labels = step_labels(
            mnist1d, seed=1, step=3, batch_size=batch_size, num_files=num_files, partition=part
        )
        assert torch.equal(class_counts(labels, 10), counts)


def test_the_iid_partition_is_today_s_sampler_bit_for_bit(mnist1d):
    idx = batch_indices(mnist1d.num_samples, 300, seed=3, step=17)
    assert hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16] == "d33352300294acd7"
    for part in (None, IID()):
        x, y = step_files(mnist1d, seed=3, step=17, batch_size=300, num_files=25, partition=part)
        # hashes of the files before partitions existed
        assert hashlib.sha256(y.numpy().tobytes()).hexdigest()[:16] == "b1c54bc8691b15b0"
        assert hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16] == "9d7803e3555b687a"
    assert torch.equal(
        IID().step_indices(mnist1d, seed=3, step=17, batch_size=300, num_files=25).reshape(-1), idx
    )


# ---------------------------------------------------------------------- label_tv


def _reference_label_tv(labels: torch.Tensor, num_classes: int) -> float:
    rows = labels.tolist()
    batch = [sum(r.count(c) for r in rows) / labels.numel() for c in range(num_classes)]
    tv = [sum(abs(r.count(c) / len(r) - batch[c]) for c in range(num_classes)) / 2 for r in rows]
    return sum(tv) / len(tv)


def test_label_tv_is_the_mean_total_variation_to_the_batch_mix():
    gen = torch.Generator().manual_seed(0)
    for shape in ((25, 12), (3, 1), (1, 9)):
        labels = torch.randint(0, 7, shape, generator=gen)
        assert label_tv(labels, 7) == pytest.approx(_reference_label_tv(labels, 7), abs=1e-12)
    assert label_tv(torch.tensor([[0, 1, 2]] * 4), 3) == 0.0  # identical mixes
    one_class = torch.arange(5)[:, None].expand(5, 4)
    assert label_tv(one_class, 5) == pytest.approx(1 - 1 / 5)  # the largest it can be
    with pytest.raises(ValueError, match="files, samples"):
        label_tv(torch.tensor([1, 2]), 3)


def test_label_tv_orders_the_partitions_as_their_skew(mnist1d):
    """Measured over 20 steps of MNIST-1D cut into 25 files of 12: Dirichlet files are the
    more alike the larger alpha (approaching stratified files, more alike than iid
    draws), k-class files the more different the fewer classes."""

    def measured(part):
        values = [
            label_tv(
                step_labels(mnist1d, seed=0, step=t, batch_size=300, num_files=25, partition=part),
                10,
            )
            for t in range(20)
        ]
        return sum(values) / len(values)

    tv = {"iid": measured(make_partition("iid"))}
    tv.update({f"a={a}": measured(Dirichlet(a)) for a in (1000.0, 1.0, 0.05)})
    tv.update({f"k={k}": measured(ClassesPerFile(k)) for k in (1, 2, 5)})
    assert tv["a=1000.0"] < tv["a=1.0"] < tv["a=0.05"]
    assert tv["a=1000.0"] < 0.15 < tv["iid"] < 0.5  # iid files differ by chance
    assert tv["k=5"] < tv["k=2"] < tv["k=1"]
    assert tv["k=1"] == pytest.approx(1 - 65 / 625)  # one class of ten, in 2 or 3 files each


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_partition("noniid"), "unknown partition 'noniid'; choose one of iid"),
        (lambda: Dirichlet(0.0), "alpha must be a finite number > 0, got 0.0"),
        (lambda: Dirichlet(float("nan")), "alpha must be a finite number > 0, got nan"),
        (lambda: Dirichlet(-1), "got -1"),
        (lambda: ClassesPerFile(0), "classes_per_file must be an integer >= 1, got 0"),
    ],
)
def test_bad_partitions_are_one_line(build, message):
    with pytest.raises(ValueError) as info:
        build()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_files_too_small_for_their_classes_are_refused_by_name(mnist1d):
    args = {"seed": 0, "step": 0, "batch_size": 30, "num_files": 10}
    with pytest.raises(ValueError, match="classes_per_file=4 needs files of at least 4"):
        step_labels(mnist1d, **args, partition=ClassesPerFile(4))
    with pytest.raises(ValueError, match=r"classes_per_file must be in 1\.\.10"):
        step_labels(mnist1d, **{**args, "num_files": 1}, partition=ClassesPerFile(11))
    assert set(PARTITIONS) == {"iid", "dirichlet", "classes"}


# ---------------------------------------------------------------------- in a run


def _run_lines(folder) -> list[dict]:
    from conftest import read_metrics

    from byzshield.server.metrics import TIME_KEYS

    times = {*TIME_KEYS, "step_s", "other_s", "vote_tail_s"}
    return [{k: v for k, v in r.items() if k not in times} for r in read_metrics(folder)[0]]


def test_a_partitioned_run_records_label_tv_and_resumes_to_the_same_bits(tmp_path):
    from byzshield.engines.simulate import simulate

    small = ("dataset=mnist1d", "network=cnn1d", "batch_size=150", "threads=1", "eval_freq=2")
    run = (*small, "attack=alie", "dataset.partition=classes", "dataset.classes_per_file=1")
    simulate([*run, "max_steps=4"], tmp_path / "whole")
    simulate([*run, "max_steps=2"], tmp_path / "resumed")
    simulate([*run, "max_steps=4"], tmp_path / "resumed")  # resumes after step 2
    whole, resumed = _run_lines(tmp_path / "whole"), _run_lines(tmp_path / "resumed")
    assert whole == resumed and len(whole) == 4
    a, b = (
        torch.load(p / "checkpoints" / "step_000004.pt", weights_only=True)["model"]
        for p in (tmp_path / "whole", tmp_path / "resumed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    # files of one class of ten, five classes in 2 files and five in 3 of the 25:
    # 1 - sum_c (n_c / 25)^2 = 1 - 65 / 625
    assert all(line["label_tv"] == pytest.approx(1 - 65 / 625) for line in whole)
    simulate([*small, "attack=alie", "max_steps=1"], tmp_path / "iid")
    (iid,) = _run_lines(tmp_path / "iid")
    assert 0.3 < iid["label_tv"] < 0.7  # iid files of 6 differ by chance (about 0.5)
