"""The ``network/`` and ``dataset/`` groups: :class:`NetworkOption` and
:class:`DatasetOption`, and the per-process cache of loaded datasets (``cached_dataset``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from omegaconf import MISSING

from byzshield.config.base import ConfigError, _int, _Option, _positive


@dataclass
class NetworkOption(_Option):
    """A network of :data:`byzshield.compute.networks.NETWORKS`; classes and input size come
    from the dataset."""

    name: str = MISSING
    group: ClassVar[str] = "network"

    def __post_init__(self) -> None:
        from byzshield.compute.networks import NETWORKS

        if self.name not in NETWORKS:
            raise ConfigError(f"unknown network {self.name!r}; choose one of {', '.join(NETWORKS)}")

    def build(self, data) -> torch.nn.Module:
        from byzshield.compute.networks import build_network

        return build_network(
            self.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            spatial_dims=data.spatial_dims,
        )


@dataclass
class DatasetOption(_Option):
    """A dataset of :data:`byzshield.compute.datasets.DATASETS`, read from ``root`` (``download``
    fetches it where that is possible; the embedded ones ignore both), and how each step's
    batch is cut into files: ``partition`` (:data:`byzshield.compute.partition.PARTITIONS`:
    ``iid`` slices, class mixes drawn from Dir(``alpha``), or ``classes_per_file`` classes
    per file)."""

    name: str = MISSING
    root: str = "data"
    download: bool = False
    partition: str = "iid"  # iid, dirichlet (alpha), classes (classes_per_file)
    alpha: float = 1.0  # dirichlet: the concentration of each class, > 0 (small: skewed)
    classes_per_file: int = 2  # classes: the classes in every file, 1..the dataset's classes
    group: ClassVar[str] = "dataset"

    def __post_init__(self) -> None:
        from byzshield.compute.datasets import DATASETS
        from byzshield.compute.partition import PARTITIONS

        if self.name not in DATASETS:
            raise ConfigError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"unknown dataset.partition {self.partition!r}; choose one of "
                f"{', '.join(PARTITIONS)}"
            )
        _positive("dataset.", "alpha", self.alpha)
        num_classes = DATASETS[self.name].num_classes
        _int("dataset.", "classes_per_file", self.classes_per_file, 1, num_classes)

    def build_partition(self):
        """The :class:`byzshield.compute.sampling.Partition` every engine cuts the step's
        batch with."""
        from byzshield.compute.partition import make_partition

        return make_partition(
            self.partition, alpha=self.alpha, classes_per_file=self.classes_per_file
        )

    def build(self, *, train: bool):
        return cached_dataset(self.name, self.root, self.download, train)


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, root: str, download: bool, train: bool):
    """Datasets are read once per process (a sweep composes hundreds of runs); the
    tensors are never written to."""
    from byzshield.compute.datasets import load_dataset

    return load_dataset(name, root=root, download=download, train=train)
