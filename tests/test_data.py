"""byzshield.compute.datasets: the embedded digits and MNIST-1D, torchvision datasets read
from small files in their real on-disk formats, and the (seed, step, file) -> samples map
every replica must share."""

import gzip
import hashlib
import pickle
import subprocess
import sys
import textwrap
from importlib import resources
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision import datasets as tv

from byzshield.compute.datasets import (
    DATASETS,
    DIGITS_NUM_TEST,
    MNIST1D_FILE,
    DatasetNotFound,
    ImageDataset,
    augment_crop_flip,
    batch_indices,
    derive_seed,
    epoch_permutation,
    eval_batches,
    file_batch,
    file_batches,
    file_slice,
    generate_mnist1d,
    load_dataset,
    step_batch,
    write_mnist1d,
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


# ---------------------------------------------------------------------------------------
# The embedded digits
# ---------------------------------------------------------------------------------------


def test_digits_loads_offline_with_all_1797_samples():
    train, test = _digits(True), _digits(False)
    assert (len(train), len(test)) == (1797 - DIGITS_NUM_TEST, DIGITS_NUM_TEST) == (1438, 359)
    for split in (train, test):
        assert split.images.shape[1:] == (1, 8, 8) and split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert (split.num_classes, split.in_channels, split.image_size) == (10, 1, 8)
        assert int(split.images.max()) == 16 and split.max_value == 16
        assert set(split.labels.tolist()) == set(range(10))
        assert not split.augment
    # the fixed split (pinned so it never changes silently)
    assert torch.bincount(test.labels).tolist() == [27, 35, 36, 29, 30, 40, 44, 39, 38, 41]


def test_digits_split_partitions_the_shipped_file():
    source = resources.files("byzshield.compute").joinpath("assets").joinpath("digits.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    assert table.shape == (1797, 65)
    rows = []
    for split in (_digits(True), _digits(False)):
        pixels = split.images.reshape(len(split), 64).numpy().astype(np.int64)
        rows += [tuple(p) + (y,) for p, y in zip(pixels, split.labels.tolist(), strict=True)]
    assert sorted(rows) == sorted(map(tuple, table.tolist()))


def test_digits_attribution_ships_next_to_the_data():
    text = resources.files("byzshield.compute").joinpath("assets").joinpath("README.md").read_text()
    for needle in ("UCI", "Alpaydin", "Kaynak", "CC BY 4.0", "scikit-learn"):
        assert needle in text


def test_digits_normalisation_constants_are_its_training_statistics():
    train = _digits(True)
    pixels = train.images.double() / 16
    assert pixels.mean().item() == pytest.approx(DATASETS["digits"].mean[0], abs=1e-4)
    assert pixels.std(unbiased=False).item() == pytest.approx(DATASETS["digits"].std[0], abs=1e-4)
    x = torch.cat([x for x, _ in eval_batches(train, 500)])
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3


def test_registry_info_matches_loaded_dataset():
    info, train = DATASETS["digits"], _digits(True)
    assert (info.num_classes, info.in_channels, info.image_size) == (
        train.num_classes,
        train.in_channels,
        train.image_size,
    )
    assert set(DATASETS) == {"digits", "mnist1d", "mnist", "cifar10", "cifar100", "svhn"}
    assert [n for n, i in DATASETS.items() if i.augment] == ["cifar10", "cifar100"]
    assert [n for n, i in DATASETS.items() if i.spatial_dims == 1] == ["mnist1d"]


# ---------------------------------------------------------------------------------------
# The embedded MNIST-1D
# ---------------------------------------------------------------------------------------


def _mnist1d(train: bool) -> ImageDataset:
    return load_dataset("mnist1d", root="does-not-matter", download=False, train=train)


def _shipped_mnist1d() -> dict[str, np.ndarray]:
    source = resources.files("byzshield.compute").joinpath("assets").joinpath(MNIST1D_FILE)
    with source.open("rb") as raw, np.load(raw, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def test_mnist1d_loads_offline_as_the_papers_4000_1000_split_of_length_40_signals():
    train, test = _mnist1d(True), _mnist1d(False)
    assert (len(train), len(test)) == (4000, 1000)
    info = DATASETS["mnist1d"]
    for split in (train, test):
        assert split.images.shape[1:] == (1, 40) and split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert (split.spatial_dims, split.sample_shape, split.image_size) == (1, (1, 40), 40)
        assert split.sample_shape == info.sample_shape and split.in_channels == info.in_channels
        assert set(split.labels.tolist()) == set(range(10)) and not split.augment
    # pinned so that the shipped data never changes silently
    assert torch.bincount(test.labels).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    assert torch.bincount(train.labels).tolist() == [
        398,
        396,
        411,
        394,
        394,
        402,
        401,
        404,
        402,
        398,
    ]


def test_mnist1d_batches_are_the_stored_standardised_values_unchanged():
    train = _mnist1d(True)
    pixels = train.images.double()
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 5e-3
    assert torch.equal(torch.cat([x for x, _ in eval_batches(train, 999)]), train.images)
    x, y = file_batch(train, seed=0, step=3, batch_size=300, num_files=3, file=1)
    idx = batch_indices(len(train), 300, seed=0, step=3)[100:200]
    assert x.shape == (100, 1, 40) and torch.equal(x, train.images[idx])
    assert torch.equal(y, train.labels[idx])


def test_mnist1d_attribution_and_checksum_ship_next_to_the_data():
    text = resources.files("byzshield.compute").joinpath("assets").joinpath("README.md").read_text()
    for needle in ("MNIST-1D", "Greydanus", "Kobak", "Apache License 2.0", "0.0.2.post1"):
        assert needle in text
    data = (
        resources.files("byzshield.compute").joinpath("assets").joinpath(MNIST1D_FILE).read_bytes()
    )
    assert hashlib.sha256(data).hexdigest() in text
    assert f"{len(data):,} bytes" in text


def test_mnist1d_shipped_arrays_equal_a_fresh_generation(tmp_path):
    pytest.importorskip("mnist1d", reason="regenerating MNIST-1D needs `pip install mnist1d`")
    numpy_state = np.random.get_state()
    fresh = generate_mnist1d()
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])  # global state restored
    shipped = _shipped_mnist1d()
    assert set(fresh) == set(shipped) == {"x_train", "y_train", "x_test", "y_test"}
    for key, array in fresh.items():
        assert array.dtype == shipped[key].dtype and np.array_equal(array, shipped[key]), key
    write_mnist1d(tmp_path / "again.npz")
    with np.load(tmp_path / "again.npz", allow_pickle=False) as again:
        for key, array in shipped.items():
            assert np.array_equal(again[key], array), key


def test_signals_are_normalised_per_channel():
    data = ImageDataset(
        name="signals",
        images=torch.arange(24, dtype=torch.float32).view(3, 2, 4),
        labels=torch.zeros(3, dtype=torch.int64),
        num_classes=2,
        mean=(1.0, -1.0),
        std=(2.0, 4.0),
        augment=False,
        max_value=1.0,
    )
    out = data.normalize(data.images)
    assert torch.equal(out[:, 0], (data.images[:, 0] - 1) / 2)
    assert torch.equal(out[:, 1], (data.images[:, 1] + 1) / 4)
    x, _ = file_batch(data, seed=0, step=0, batch_size=2, num_files=2, file=1)
    assert x.shape == (1, 2, 4)


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        load_dataset("imagenet", root=".", download=False, train=True)
    for name in DATASETS:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------
# Seeds and the sample map
# ---------------------------------------------------------------------------------------


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
    """What the vote relies on: a fresh interpreter computes the same bytes."""
    code = textwrap.dedent(
        """
        import hashlib, torch
        from byzshield.compute.datasets import ImageDataset, file_batch
        gen = torch.Generator().manual_seed(0)
        data = ImageDataset(
            name="cifar-like",
            images=torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen),
            labels=torch.arange(40) % 10, num_classes=10,
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=True)
        x, y = file_batch(data, seed=4, step=9, batch_size=8, num_files=2, file=1)
        print(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    x, y = file_batch(_cifar_like(), seed=4, step=9, batch_size=8, num_files=2, file=1)
    assert out == hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": torch.zeros(4, 1, 8, 7, dtype=torch.uint8)}, "images"),
        ({"images": torch.zeros(4, 1, 8, 8, 8, dtype=torch.uint8)}, "images"),
        ({"images": torch.zeros(4, 1, 8), "augment": True}, "augment=True"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, "labels"),
        ({"labels": torch.zeros(4, dtype=torch.int32)}, "labels"),
        ({"labels": torch.tensor([0, 1, 2, 10])}, r"\[0, 10\)"),
        ({"mean": (0.5, 0.5)}, "mean and std"),
        ({"std": (0.0,)}, "positive"),
    ],
)
def test_image_dataset_rejects_inconsistent_fields(change, message):
    fields = {
        "name": "tiny",
        "images": torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        "labels": torch.zeros(4, dtype=torch.int64),
        "num_classes": 10,
        "mean": (0.5,),
        "std": (0.5,),
        "augment": False,
    }
    with pytest.raises(ValueError, match=message):
        ImageDataset(**{**fields, **change})


# ---------------------------------------------------------------------------------------
# torchvision datasets from small files in their real on-disk formats
# ---------------------------------------------------------------------------------------


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_idx(path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _images(n, *shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, *shape)).astype(np.uint8)


def test_mnist_reads_idx_files_through_torchvision(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, test_x = _images(5, 28, 28, seed=1), _images(3, 28, 28, seed=2)
    train_y, test_y = np.array([0, 9, 3, 3, 7]), np.array([1, 2, 8])
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", train_y)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    for train, x, y in ((True, train_x, train_y), (False, test_x, test_y)):
        data = load_dataset("mnist", root=tmp_path, download=False, train=train)
        assert data.images.shape == (len(y), 1, 28, 28) and data.images.dtype == torch.uint8
        assert np.array_equal(data.images[:, 0].numpy(), x)
        assert data.labels.tolist() == y.tolist()
        assert (data.num_classes, data.mean, data.augment) == (10, (0.1307,), False)


def _write_cifar(folder, files, label_key: str, meta_name: str, meta: dict, num_classes: int):
    """CIFAR's python version: pickled dicts with 'data' (N, 3072) uint8 rows (1024 red,
    1024 green, 1024 blue values, each row-major) and a list of labels."""
    folder.mkdir(parents=True)
    written = {}
    for k, name in enumerate(files):
        x = _images(2, 3072, seed=k)
        y = [(3 * k + i) % num_classes for i in range(2)]
        entry = {"data": x, label_key: y, "batch_label": name}
        if label_key == "fine_labels":
            entry["coarse_labels"] = [v // 5 for v in y]
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = (x, y)
    (folder / meta_name).write_bytes(pickle.dumps(meta))
    return written


@pytest.mark.parametrize(
    ("name", "cls", "folder", "label_key", "meta_name", "meta_key", "num_classes"),
    [
        ("cifar10", tv.CIFAR10, "cifar-10-batches-py", "labels", "batches.meta", "label_names", 10),
        (
            "cifar100",
            tv.CIFAR100,
            "cifar-100-python",
            "fine_labels",
            "meta",
            "fine_label_names",
            100,
        ),
    ],
)
def test_cifar_reads_pickled_batches_through_torchvision(
    tmp_path, monkeypatch, name, cls, folder, label_key, meta_name, meta_key, num_classes
):
    """torchvision checks every file's md5 against the real archive's. The tiny files fail
    that check (first assertion: the check is live); then we give torchvision the md5s of
    the generated files, exactly as it would see a genuine download, and it loads them."""
    train_files = [f for f, _ in cls.train_list]
    test_files = [f for f, _ in cls.test_list]
    meta = {meta_key: [f"class{i}" for i in range(num_classes)]}
    written = _write_cifar(
        tmp_path / folder, train_files + test_files, label_key, meta_name, meta, num_classes
    )
    with pytest.raises(DatasetNotFound, match="corrupted"):
        load_dataset(name, root=tmp_path, download=False, train=True)

    md5 = {f: _md5(tmp_path / folder / f) for f in [*train_files, *test_files, meta_name]}
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f in test_files])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[meta_name]})
    for train, files in ((True, train_files), (False, test_files)):
        data = load_dataset(name, root=tmp_path, download=False, train=train)
        x = np.concatenate([written[f][0] for f in files])
        y = [v for f in files for v in written[f][1]]
        assert data.images.shape == (len(y), 3, 32, 32) and data.images.dtype == torch.uint8
        assert np.array_equal(data.images.reshape(len(y), 3072).numpy(), x)  # channel planes
        assert data.labels.tolist() == y
        assert data.num_classes == num_classes and data.augment == train
        xb, yb = file_batch(data, seed=0, step=0, batch_size=4, num_files=2, file=1)
        assert xb.shape == (2, 3, 32, 32) and yb.shape == (2,)


def test_svhn_reads_mat_files_through_torchvision(tmp_path, monkeypatch):
    """SVHN's .mat: X (32, 32, 3, N) uint8, y (N, 1) with digit 0 stored as 10."""
    savemat = pytest.importorskip("scipy.io").savemat
    written = {}
    for split, n in (("train", 4), ("test", 3)):
        x = _images(n, 32, 32, 3, seed=n).transpose(1, 2, 3, 0).copy()  # (32, 32, 3, n)
        y = np.array([[10], [1], [9], [5]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    with pytest.raises(DatasetNotFound, match="corrupted"):
        load_dataset("svhn", root=tmp_path, download=False, train=True)

    split_list = {
        split: [url, filename, _md5(tmp_path / filename) if split in written else md5]
        for split, (url, filename, md5) in tv.SVHN.split_list.items()
    }
    monkeypatch.setattr(tv.SVHN, "split_list", split_list)
    for train, split in ((True, "train"), (False, "test")):
        data = load_dataset("svhn", root=tmp_path, download=False, train=train)
        x, y = written[split]
        assert data.images.shape == (len(y), 3, 32, 32)
        assert np.array_equal(data.images.numpy(), x.transpose(3, 2, 0, 1))  # (n, c, h, w)
        assert data.labels.tolist() == [0, 1, 9, 5][: len(y)]  # 10 means digit 0
        assert not data.augment


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn"])
def test_missing_files_raise_one_line_saying_where_and_how(tmp_path, name):
    with pytest.raises(DatasetNotFound) as err:
        load_dataset(name, root=tmp_path, download=False, train=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: ")
    assert f"expected {tmp_path / DATASETS[name].files} " in message
    assert "dataset.download=true" in message
    assert isinstance(err.value, ValueError)


def test_failed_download_raises_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFound, match="download failed") as err:
        load_dataset("cifar10", root=tmp_path, download=True, train=True)
    assert "\n" not in str(err.value) and "name resolution" in str(err.value)
