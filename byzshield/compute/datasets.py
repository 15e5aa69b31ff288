"""Datasets held in memory as tensors: the registry and the readers.

    >>> from byzshield.compute.datasets import load_dataset
    >>> train = load_dataset("digits", root="data", download=False, train=True)
    >>> train.num_samples, train.sample_shape, train.num_classes
    (1438, (1, 8, 8), 10)

Datasets (registry :data:`DATASETS`; :func:`load_dataset` returns an :class:`ImageDataset`):

- ``digits`` (default, embedded): the UCI ML hand-written digits (Alpaydin & Kaynak, 1998),
  1,797 8x8 grey images with pixel levels 0..16, 10 classes, in the copy scikit-learn ships
  (``byzshield/compute/assets/digits.csv.gz``; attribution and licence in
  ``byzshield/compute/assets/README.md``).
  It needs nothing but numpy and torch. Fixed split: the legacy NumPy stream
  ``RandomState(0).permutation(1797)`` (frozen by NumPy, so it never changes) puts its first
  359 indices (20 %) in the test set and the other 1,438 in the training set, each kept in
  file order.
- ``mnist1d`` (embedded): MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with
  MNIST-1D", ICML 2024; arXiv:2011.14439), 10 classes of 1-D signals of length 40, stored
  as (N, 1, 40) float32. The paper's dataset exactly: 4,000 training and 1,000 test samples
  as the ``mnist1d`` package generates them with its defaults (seed 42), shipped in
  ``byzshield/compute/assets/mnist1d.npz`` so that every machine of a run reads the same bytes and
  ``mnist1d`` is not needed at run time (:func:`generate_mnist1d` regenerates it; source,
  licence and attribution in ``byzshield/compute/assets/README.md``). The generator already
  standardised the whole dataset, so batches are the stored values unchanged.
- ``mnist``, ``cifar10``, ``cifar100``, ``svhn``: read with torchvision's dataset classes
  from ``root`` in torchvision's layout (downloaded there with ``dataset.download=true``; a
  download that fails removes what it created).

Missing or damaged files, shipped or downloaded, raise :class:`DatasetNotFound`: one line
naming the file (or the expected paths) and how to restore it.

Images stay uint8 in memory; batches are float32, scaled to [0, 1] and normalised per
channel with the dataset's training-set mean/std. CIFAR-10/100 training batches are
augmented (reflect-pad 4, random 32x32 crop, horizontal flip, as in the original
ByzShield code); SVHN, MNIST, digits and MNIST-1D are not (the original also cropped and
flipped SVHN, but a mirrored digit is not the same digit). Which samples make up a file
of a step, and how they are augmented, is :mod:`byzshield.compute.sampling`.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import random
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFound",
    "ImageDataset",
    "generate_mnist1d",
    "load_dataset",
    "write_mnist1d",
]

PathLike = str | os.PathLike[str]

DIGITS_SPLIT_SEED = 0
"""Seed of the legacy ``numpy.random.RandomState`` permutation that splits ``digits``."""
DIGITS_NUM_TEST = 359
"""Size of the ``digits`` test set: the first 359 (20 %) of the split permutation."""
MNIST1D_FILE = "mnist1d.npz"
"""The shipped MNIST-1D arrays, in ``byzshield/compute/assets/``."""
MNIST1D_ARGS = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": (36, 60),
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}
"""Generator arguments of the shipped MNIST-1D: the defaults of ``mnist1d.data.get_dataset_args``
(mnist1d 0.0.2.post1), which produce the paper's dataset, pinned here so that a change of
the package's defaults cannot change the data silently."""


class DatasetNotFound(ValueError):
    """A dataset's files are missing or corrupted under ``root`` (or could not be downloaded).

    The message is one line: where the files are expected and how to get them.
    """


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image (or 1-D signal) classification dataset held in memory.

    Attributes:
        name: registry name (``"digits"``, ``"cifar10"``, ``"mnist1d"``...).
        images: (N, C, H, W) images with H == W, pixel values in [0, max_value] (uint8 for
            the registered image datasets), or (N, C, L) one-dimensional signals (float32
            for ``mnist1d``). ``image_size`` is H, or L for signals; ``spatial_dims`` 2 or 1.
        labels: (N,) int64 tensor of classes in [0, num_classes).
        num_classes: number of classes (fixed by the dataset, not by the labels present).
        mean, std: per-channel statistics of the training set on the [0, 1] scale.
        augment: whether training batches get the random crop + flip augmentation
            (images only).
        max_value: pixel value that maps to 1.0 (255, or 16 for digits).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    max_value: float = 255.0

    def __post_init__(self) -> None:
        if self.images.dim() not in (3, 4) or self.images.shape[2] != self.images.shape[-1]:
            raise ValueError(
                f"{self.name}: images must be (N, C, H, H) or signals (N, C, L), "
                f"got {tuple(self.images.shape)}"
            )
        if self.augment and self.spatial_dims != 2:
            raise ValueError(f"{self.name}: augment=True needs (N, C, H, H) images, not signals")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"{self.name}: labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{self.name}: mean and std need one value per channel ({self.in_channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0 or self.max_value <= 0:
            raise ValueError(f"{self.name}: std and max_value must be positive")
        if len(self.labels):
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"{self.name}: labels must lie in [0, {self.num_classes}), got [{low}, {high}]"
                )

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """H of (N, C, H, H) images, L of (N, C, L) signals."""
        return self.images.shape[2]

    @property
    def spatial_dims(self) -> int:
        """2 for (N, C, H, H) images, 1 for (N, C, L) signals."""
        return self.images.dim() - 2

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, H) or (C, L): the shape of one sample, what a network takes without B."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.num_samples

    @functools.cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (C, 1, 1) (or (C, 1) for signals) mean and std, built once (private:
        never handed out)."""
        shape = (-1,) + (1,) * self.spatial_dims
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return mean, std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw pixels (or (B, C, L) signals) -> float32
        ``(images / max_value - mean) / std``, per channel."""
        mean, std = self._mean_std
        return (images.to(torch.float32) / self.max_value - mean) / std


# ---------------------------------------------------------------------------------------
# Readers: (root, download, train) -> (images (N, C, H, W) or (N, C, L), labels (N,) int64)
# ---------------------------------------------------------------------------------------

Reader = Callable[[Path, bool, bool], tuple[torch.Tensor, torch.Tensor]]


DIGITS_FILE = "digits.csv.gz"
"""The shipped UCI digits, in ``byzshield/compute/assets/``: 1,797 rows of 64 pixels and a label."""
DIGITS_NUM_SAMPLES = 1797
MNIST1D_NUM_TRAIN = 4000
"""Training signals of the shipped MNIST-1D (80 % of 5,000); the test set has 1,000."""


def _shipped(name: str):
    """The file ``name`` shipped in ``byzshield/compute/assets/`` (an importlib Traversable)."""
    return resources.files("byzshield.compute").joinpath("assets").joinpath(name)


def _read_shipped(dataset: str, name: str, read: Callable):
    """``read(binary file)`` on the shipped file ``name``. A missing or damaged copy (cut
    short, not gzip/zip, rows or shapes other than the dataset's) raises
    :class:`DatasetNotFound`: one line naming the file and how to restore it."""
    source = _shipped(name)
    try:
        with source.open("rb") as raw:
            return read(raw)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the parser raise
        detail = str(exc).strip().splitlines()
        reason = type(exc).__name__ + (f": {detail[0]}" if detail else "")
        raise DatasetNotFound(
            f"{dataset}: the shipped file {source} is missing or damaged ({reason}); "
            "restore it by reinstalling byzshield (pip install --force-reinstall --no-deps "
            f"byzshield; in a git checkout: git checkout -- byzshield/compute/assets/{name})"
        ) from exc


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(f"labels outside 0..{num_classes - 1}")


def _read_digits(root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits; ``root`` and ``download`` are ignored."""

    def read(raw) -> np.ndarray:
        with gzip.open(raw, "rt") as text, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": refused below
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
        if table.shape != (DIGITS_NUM_SAMPLES, 65):  # 64 pixels + label
            raise ValueError(f"expected {DIGITS_NUM_SAMPLES} rows of 65 values, got {table.shape}")
        _check_labels(table[:, 64], 10)
        return table

    table = _read_shipped("digits", DIGITS_FILE, read)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(table))
    rows = np.sort(order[DIGITS_NUM_TEST:] if train else order[:DIGITS_NUM_TEST])
    images = torch.from_numpy(table[rows, :64].astype(np.uint8)).view(-1, 1, 8, 8)
    return images, torch.from_numpy(table[rows, 64])


def _read_mnist1d(root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST-1D: (N, 1, 40) float32 signals; ``root`` and ``download`` are ignored."""
    split = "train" if train else "test"
    size = MNIST1D_NUM_TRAIN if train else MNIST1D_ARGS["num_samples"] - MNIST1D_NUM_TRAIN
    length = MNIST1D_ARGS["final_seq_length"]

    def read(raw) -> tuple[np.ndarray, np.ndarray]:
        with np.load(raw, allow_pickle=False) as arrays:
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape != (size, length) or x.dtype != np.float32 or y.shape != (size,):
            raise ValueError(
                f"expected x_{split} float32 {(size, length)} and y_{split} ({size},), got "
                f"{x.dtype} {x.shape} and {y.shape}"
            )
        _check_labels(y, 10)
        return x, y

    x, y = _read_shipped("mnist1d", MNIST1D_FILE, read)
    return torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(y.astype(np.int64))


def generate_mnist1d() -> dict[str, np.ndarray]:
    """MNIST-1D generated afresh by the ``mnist1d`` package (``pip install mnist1d``).

    ``mnist1d.data.make_dataset`` with :data:`MNIST1D_ARGS` (the paper's dataset: 5,000
    signals, 500 per class, from 10 templates padded, dilated, scaled, translated, noised
    with correlated and i.i.d. Gaussian noise, sheared and resampled to length 40, then
    standardised over all samples; the first 80 % are the training set). Returns
    ``x_train`` (4000, 40) and ``x_test`` (1000, 40) float32 (the generator's float64
    rounded once: what the paper's training code feeds the network), ``y_train`` and
    ``y_test`` uint8. The generator reseeds NumPy's and Python's global generators; their
    states are restored afterwards. Takes ~2 s.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(
            "generate_mnist1d needs the mnist1d package: pip install mnist1d"
        ) from None
    args = get_dataset_args()
    for key, value in MNIST1D_ARGS.items():
        setattr(args, key, value)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x_train": raw["x"].astype(np.float32),
        "y_train": raw["y"].astype(np.uint8),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.uint8),
    }


def write_mnist1d(path: PathLike) -> None:
    """Write :func:`generate_mnist1d`'s arrays to ``path`` as a compressed ``.npz``.

    Byte-reproducible (fixed member order and timestamps, deflate level 9), so a
    regeneration can be compared with the shipped file by its SHA-256; read it back with
    ``numpy.load(path, allow_pickle=False)``.
    """
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in generate_mnist1d().items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(
                member, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9
            )


def _read_mnist(root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's two files of the split, each read on its own so that a damaged one is
    named (torchvision checks only that they exist, and a download skips them then)."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    folder = root / "MNIST"
    split = "train" if train else "t10k"
    images, labels = (
        folder / "raw" / f"{split}-images-idx3-ubyte",
        folder / "raw" / f"{split}-labels-idx1-ubyte",
    )
    if not (images.is_file() and labels.is_file()):
        MNIST(root, train=train, download=download)  # fetches them, or says they are missing
    read = []
    for path, reader in ((images, read_image_file), (labels, read_label_file)):
        try:
            read.append(reader(str(path)))
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes it raise
            detail = str(exc).strip().splitlines()
            reason = type(exc).__name__ + (f": {detail[0]}" if detail else "")
            raise DatasetNotFound(
                f"mnist: {path} is damaged ({reason}); delete {folder} and run again with "
                "dataset.download=true, or put an intact copy there"
            ) from exc
    x, y = read
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DatasetNotFound(
            f"mnist: {images} and {labels} do not match (images {tuple(x.shape)}, "
            f"{len(y)} labels); delete {folder} and run again with dataset.download=true"
        )
    return x.unsqueeze(1).contiguous(), y.to(torch.int64)


def _read_cifar(cls_name: str) -> Reader:
    def read(root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import datasets

        ds = getattr(datasets, cls_name)(root, train=train, download=download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    return read


def _read_svhn(root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import SVHN

    ds = SVHN(root, split="train" if train else "test", download=download)
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # already (N, 3, 32, 32)
    return images, torch.from_numpy(ds.labels.astype(np.int64))


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before reading it, and how to read it.

    ``files`` names the expected files relative to ``root`` for error messages (None for
    the embedded datasets, shipped in ``byzshield/compute/assets/``: a damaged copy is one line
    naming it and how to restore it).
    ``spatial_dims`` is 2 for (C, H, H) images, 1 for (C, L) signals of length
    ``image_size``.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    max_value: float
    files: str | None
    read: Reader
    spatial_dims: int = 2

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(in_channels, image_size, image_size), or (in_channels, image_size) for signals."""
        return (self.in_channels,) + (self.image_size,) * self.spatial_dims


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        # Statistics: digits computed on its training split (tests/test_datasets.py checks
        # them); the others are the usual published training-set values. The original
        # normalised CIFAR-100 with CIFAR-10's values and SVHN with (0.4914, 0.4822,
        # 0.4465) / (0.2023, 0.1994, 0.2010); here each dataset uses its own.
        DatasetInfo(
            name="digits",
            num_classes=10,
            in_channels=1,
            image_size=8,
            mean=(0.3056,),
            std=(0.3763,),
            augment=False,
            max_value=16.0,
            files=None,
            read=_read_digits,
        ),
        DatasetInfo(  # standardised by its generator: batches are the stored values
            name="mnist1d",
            num_classes=10,
            in_channels=1,
            image_size=40,
            mean=(0.0,),
            std=(1.0,),
            augment=False,
            max_value=1.0,
            files=None,
            read=_read_mnist1d,
            spatial_dims=1,
        ),
        DatasetInfo(
            name="mnist",
            num_classes=10,
            in_channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            augment=False,
            max_value=255.0,
            files="MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
            read=_read_mnist,
        ),
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            in_channels=3,
            image_size=32,
            mean=(125.3 / 255, 123.0 / 255, 113.9 / 255),
            std=(63.0 / 255, 62.1 / 255, 66.7 / 255),
            augment=True,
            max_value=255.0,
            files="cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
            read=_read_cifar("CIFAR10"),
        ),
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            in_channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            augment=True,
            max_value=255.0,
            files="cifar-100-python/{train,test,meta}",
            read=_read_cifar("CIFAR100"),
        ),
        DatasetInfo(
            name="svhn",
            num_classes=10,
            in_channels=3,
            image_size=32,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            augment=False,
            max_value=255.0,
            files="{train,test}_32x32.mat",
            read=_read_svhn,
        ),
    )
}
"""Dataset name -> :class:`DatasetInfo`; the names are the config's ``dataset`` options."""


def load_dataset(name: str, *, root: PathLike, download: bool, train: bool) -> ImageDataset:
    """Read the training (``train=True``) or test split of dataset ``name`` into memory.

    ``root`` is the directory in torchvision's layout (see :data:`DATASETS` ``files``),
    created and filled by torchvision when ``download`` is true. ``digits`` and ``mnist1d``
    are embedded and ignore both. Raises ValueError for an unknown name and
    :class:`DatasetNotFound` (one line) when the files are missing, corrupted or could not
    be downloaded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = Path(root).expanduser()
    if info.files is None:
        images, labels = info.read(root, download, train)
    else:
        images, labels = _read_files(info, root, download, train)
    if tuple(images.shape[1:]) != info.sample_shape:
        raise DatasetNotFound(
            f"{name}: images under {root} have shape {tuple(images.shape[1:])}, expected "
            f"{info.sample_shape}"
        )
    return ImageDataset(
        name=name,
        images=images,
        labels=labels,
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        augment=info.augment and train,
        max_value=info.max_value,
    )


def _read_files(
    info: DatasetInfo, root: Path, download: bool, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``info.read`` with torchvision's missing/corrupted/download errors turned into one
    :class:`DatasetNotFound` line. A download that fails removes the files and folders
    it created under ``root`` (an empty ``root/MNIST/raw`` would look like a dataset)."""
    before = _tree(root) if download else set()
    try:
        return info.read(root, download, train)
    except DatasetNotFound:
        raise
    except Exception as err:  # noqa: BLE001 - URLError (an OSError), RuntimeError, parse errors
        if download:
            _remove_new(root, before)
        lines = str(err).strip().splitlines()
        reason = (lines[0] if lines else type(err).__name__).split(". ")[0].rstrip(".:")
        how = (
            "download failed: check the network, or place the files there yourself"
            if download
            else "run once with dataset.download=true on a machine with internet access "
            "(delete damaged files first), or place the files there yourself"
        )
        raise DatasetNotFound(
            f"{info.name}: files not found or corrupted ({reason}); expected "
            f"{root / str(info.files)} (torchvision's layout); {how}"
        ) from err


def _tree(root: Path) -> set[Path]:
    """``root`` and every path under it (none if it does not exist)."""
    if not root.exists():
        return set()
    found = {root}
    for folder, dirs, files in os.walk(root):
        found.update(Path(folder) / name for name in (*dirs, *files))
    return found


def _remove_new(root: Path, before: set[Path]) -> None:
    """Remove what appeared under ``root`` since ``before`` (``_tree``), deepest first."""
    for path in sorted(_tree(root) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # its new contents went first; anything else stays
            else:
                path.unlink()
        except OSError:
            pass
