"""byzshield.compute.datasets: the embedded digits and MNIST-1D, torchvision datasets read
from small files in their real on-disk formats."""

import gzip
import hashlib
import pickle
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
    generate_mnist1d,
    load_dataset,
    write_mnist1d,
)
from byzshield.compute.sampling import batch_indices, eval_batches, file_batch


def _digits(train: bool) -> ImageDataset:
    return load_dataset("digits", root="does-not-matter", download=False, train=train)


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
