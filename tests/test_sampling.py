"""byzshield.compute.sampling: the (seed, step, file) -> samples map every replica must
share, its seeds and the augmentation."""

import hashlib
import subprocess
import sys
import textwrap

import pytest
import torch

from byzshield.compute.datasets import ImageDataset, load_dataset
from byzshield.compute.sampling import (
    augment_crop_flip,
    batch_indices,
    derive_seed,
    epoch_permutation,
    eval_batches,
    file_batch,
    file_batches,
    file_slice,
    step_batch,
)


def _digits(train: bool) -> ImageDataset:
    return load_dataset("digits", root="does-not-matter", download=False, train=train)


def _cifar_like(num_samples: int = 40, augment: bool = True) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    return ImageDataset(
        name="cifar-like",
        images=torch.randint(0, 256, (num_samples, 3, 32, 32), dtype=torch.uint8, generator=gen),
        labels=torch.arange(num_samples) % 10,
        num_classes=10,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=augment,
    )


def test_derive_seed_is_the_documented_blake2b():
    packed = b"".join(v.to_bytes(8, "little", signed=True) for v in (1, 2, 3))
    digest = hashlib.blake2b(b"byzshield/augment/" + packed, digest_size=8).digest()
    assert derive_seed("augment", 1, 2, 3) == int.from_bytes(digest, "little") & (2**63 - 1)
    assert derive_seed("epoch", 0, 0) == 6702993381424469217  # pinned across versions
    assert derive_seed("epoch", 1, 0) != derive_seed("epoch", 0, 1000)
    assert derive_seed("epoch", 0, 1) != derive_seed("augment", 0, 1)
    with pytest.raises(ValueError, match="64 bits"):
        derive_seed("epoch", 2**64)


def test_batch_indices_same_seed_and_step_are_identical_and_steps_differ():
    a = batch_indices(1000, 32, seed=5, step=7)
    assert a.dtype == torch.int64 and a.shape == (32,)
    assert torch.equal(a, batch_indices(1000, 32, seed=5, step=7))
    assert not torch.equal(a, batch_indices(1000, 32, seed=5, step=8))
    assert not torch.equal(a, batch_indices(1000, 32, seed=6, step=7))


@pytest.mark.parametrize(("num_samples", "batch_size"), [(10, 4), (12, 4), (7, 3), (5, 12)])
def test_every_sample_is_visited_once_per_epoch(num_samples, batch_size):
    num_epochs = 3
    num_steps = -(-num_epochs * num_samples // batch_size)
    stream = torch.cat(
        [batch_indices(num_samples, batch_size, seed=1, step=t) for t in range(num_steps)]
    )
    for epoch in range(num_epochs):
        visited = stream[epoch * num_samples : (epoch + 1) * num_samples]
        assert sorted(visited.tolist()) == list(range(num_samples))
        assert torch.equal(visited, epoch_permutation(num_samples, seed=1, epoch=epoch))


def test_batch_crossing_an_epoch_boundary_joins_two_permutations():
    perm0, perm1 = (epoch_permutation(10, seed=2, epoch=e) for e in (0, 1))
    batch = batch_indices(10, 4, seed=2, step=2)  # positions 8..11
    assert batch.tolist() == perm0[8:].tolist() + perm1[:2].tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 10, "batch_size": 0, "seed": 0, "step": 0}, "batch_size"),
        ({"num_samples": 10, "batch_size": 4, "seed": 0, "step": -1}, "step"),
        ({"num_samples": 0, "batch_size": 4, "seed": 0, "step": 0}, "num_samples"),
    ],
)
def test_batch_indices_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        batch_indices(**kwargs)


def test_file_slices_partition_the_batch_into_equal_contiguous_parts():
    slices = [file_slice(12, 4, j) for j in range(4)]
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    covered = [i for s in slices for i in range(12)[s]]
    assert covered == list(range(12))


def test_file_slice_names_batch_size_and_file_count_when_not_divisible():
    with pytest.raises(ValueError, match=r"batch_size \(10\).*files \(4\)"):
        file_slice(10, 4, 0)
    with pytest.raises(ValueError, match="file must be in"):
        file_slice(12, 4, 4)
    with pytest.raises(ValueError, match="num_files"):
        file_slice(12, 0, 0)


def test_file_batch_is_the_file_slice_of_the_step_batch_normalised():
    train = _digits(True)
    idx = batch_indices(len(train), 60, seed=3, step=11)
    for j in range(5):
        x, y = file_batch(train, seed=3, step=11, batch_size=60, num_files=5, file=j)
        rows = idx[12 * j : 12 * (j + 1)]
        assert x.shape == (12, 1, 8, 8) and x.dtype == torch.float32
        assert torch.equal(y, train.labels[rows])
        assert torch.equal(x, (train.images[rows].float() / 16 - 0.3056) / 0.3763)
    x_all, y_all = step_batch(train, seed=3, step=11, batch_size=60, num_files=5)
    assert x_all.shape == (60, 1, 8, 8) and torch.equal(y_all, train.labels[idx])


@pytest.mark.parametrize("augment", [False, True])
def test_file_batch_is_bit_identical_for_same_seed_step_file(augment):
    data = _cifar_like(augment=augment)
    args = {"seed": 4, "step": 9, "batch_size": 8, "num_files": 2}
    x1, y1 = file_batch(data, **args, file=1)
    torch.manual_seed(12345)  # the global generator must not matter
    torch.rand(10)
    x2, y2 = file_batch(data, **args, file=1)
    assert x1.numpy().tobytes() == x2.numpy().tobytes() and torch.equal(y1, y2)
    x3, _ = file_batch(data, **{**args, "step": 10}, file=1)
    assert not torch.equal(x1, x3)


def _reference_indices(num_samples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The module docstring's formula, with a fresh randperm for every position."""
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        gen = torch.Generator().manual_seed(derive_seed("epoch", seed, p // num_samples))
        out.append(int(torch.randperm(num_samples, generator=gen)[p % num_samples]))
    return torch.tensor(out)


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "step"), [(1438, 60, 23), (10, 4, 2), (3, 40, 1), (7, 7, 0)]
)
def test_cached_permutations_give_the_documented_indices(num_samples, batch_size, step):
    # (3, 40, 1) spans 14 epochs, more than the permutation cache holds
    expected = _reference_indices(num_samples, batch_size, seed=5, step=step)
    assert torch.equal(batch_indices(num_samples, batch_size, seed=5, step=step), expected)


def test_mutating_returned_indices_does_not_change_later_batches():
    perm = epoch_permutation(50, seed=1, epoch=0)
    idx = batch_indices(50, 10, seed=1, step=0)  # inside epoch 0: one chunk
    perm.zero_()
    idx.zero_()
    assert torch.equal(epoch_permutation(50, seed=1, epoch=0), _reference_indices(50, 50, 1, 0))
    assert torch.equal(batch_indices(50, 10, seed=1, step=0), _reference_indices(50, 10, 1, 0))


@pytest.mark.parametrize("augment", [False, True])
def test_file_batches_equal_file_batch_for_any_files_in_any_order(augment):
    data = _cifar_like(augment=augment)
    args = {"seed": 2, "step": 13, "batch_size": 12, "num_files": 6}
    for files in (None, [4], [5, 0, 3], [1, 1]):
        got = file_batches(data, **args, files=files)
        wanted = [file_batch(data, **args, file=j) for j in (files or range(6))]
        assert len(got) == len(wanted)
        for (x, y), (xw, yw) in zip(got, wanted, strict=True):
            assert x.numpy().tobytes() == xw.numpy().tobytes() and torch.equal(y, yw)
    with pytest.raises(ValueError, match="file must be in"):
        file_batches(data, **args, files=[0, 6])


def test_digits_batches_are_bit_identical_to_the_uncached_sampler():
    """SHA-256 of digits file and step batches as computed before permutations were cached
    and files cut from one index draw (torch 2.14.1's randperm, as requirements.txt pins)."""
    digest = hashlib.sha256()
    for train in (True, False):
        data = _digits(train)
        for step in (0, 1, 7, 123):
            for batch_size, num_files in ((60, 5), (1210, 121), (3000, 10)):
                for j in sorted({0, num_files // 2, num_files - 1}):
                    x, y = file_batch(
                        data, seed=3, step=step, batch_size=batch_size, num_files=num_files, file=j
                    )
                    digest.update(x.numpy().tobytes() + y.numpy().tobytes())
            x, y = step_batch(data, seed=3, step=step, batch_size=60, num_files=5)
            digest.update(x.numpy().tobytes() + y.numpy().tobytes())
    expected = "c4f5b4dfb6fc4569e50fb149e362d19a85c9d2d0db1c78357f052c961a83d4b6"
    assert digest.hexdigest() == expected


def test_file_batch_leaves_global_generator_alone():
    data = _cifar_like()
    state = torch.get_rng_state()
    file_batch(data, seed=0, step=0, batch_size=8, num_files=2, file=0)
    assert torch.equal(state, torch.get_rng_state())


def test_file_batch_is_identical_in_another_process():
    """What the vote relies on: a fresh interpreter computes the same bytes, for every
    partition (heterogeneous files too: nothing cached or drawn before counts)."""
    from byzshield.compute.partition import ClassesPerFile, Dirichlet

    code = textwrap.dedent(
        """
        import hashlib, torch
        from byzshield.compute.datasets import ImageDataset
        from byzshield.compute.partition import ClassesPerFile, Dirichlet
        from byzshield.compute.sampling import file_batch
        gen = torch.Generator().manual_seed(0)
        data = ImageDataset(
            name="cifar-like",
            images=torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen),
            labels=torch.arange(40) % 10, num_classes=10,
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=True)
        for part in (None, Dirichlet(0.5), ClassesPerFile(2)):
            x, y = file_batch(data, seed=4, step=9, batch_size=8, num_files=2, file=1,
                              partition=part)
            print(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    here = []
    for part in (None, Dirichlet(0.5), ClassesPerFile(2)):
        x, y = file_batch(
            _cifar_like(), seed=4, step=9, batch_size=8, num_files=2, file=1, partition=part
        )
        here.append(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
    assert out == here and len(set(here)) == 3


def test_augmentation_is_seeded_per_file_not_shared_across_files():
    base = _cifar_like()
    same = ImageDataset(  # every sample is the same image: only the augmentation differs
        name="one-image",
        images=base.images[:1].expand(40, -1, -1, -1).contiguous(),
        labels=torch.zeros(40, dtype=torch.int64),
        num_classes=10,
        mean=base.mean,
        std=base.std,
        augment=True,
    )
    x0, _ = file_batch(same, seed=0, step=0, batch_size=16, num_files=2, file=0)
    x1, _ = file_batch(same, seed=0, step=0, batch_size=16, num_files=2, file=1)
    assert not torch.equal(x0, x1)
    assert not torch.equal(x0, same.normalize(same.images[:8]))


def test_augment_crop_flip_outputs_a_flipped_or_plain_crop_of_the_reflected_image():
    images = torch.randn(16, 3, 8, 8)
    out = augment_crop_flip(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    seen_flip, seen_offsets = set(), set()
    for k in range(16):
        found = False
        for dy in range(9):
            for dx in range(9):
                crop = padded[k, :, dy : dy + 8, dx : dx + 8]
                for flip in (False, True):
                    if torch.equal(out[k], crop.flip(-1) if flip else crop):
                        found = True
                        seen_flip.add(flip)
                        seen_offsets.add((dy, dx))
        assert found, f"sample {k} is not a crop of its padded image"
    assert seen_flip == {False, True} and len(seen_offsets) > 4


def test_augment_crop_flip_is_deterministic_given_the_generator():
    images = torch.randn(6, 3, 32, 32)
    a = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    b = augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    c = augment_crop_flip(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_batches_cover_the_data_in_order_without_augmentation():
    data = _cifar_like(num_samples=23, augment=True)
    batches = list(eval_batches(data, 10))
    assert [len(y) for _, y in batches] == [10, 10, 3]
    assert torch.equal(torch.cat([x for x, _ in batches]), data.normalize(data.images))
    assert torch.equal(torch.cat([y for _, y in batches]), data.labels)
    with pytest.raises(ValueError, match="batch_size"):
        eval_batches(data, 0)
