"""The ``network/`` and ``dataset/`` groups: :class:`NetworkOption` and
:class:`DatasetOption`, and the per-process cache of loaded datasets (``cached_dataset``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from omegaconf import MISSING

from byzshield.config.base import ConfigError, _Option


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
    fetches it where that is possible; the embedded ones ignore both)."""

    name: str = MISSING
    root: str = "data"
    download: bool = False
    group: ClassVar[str] = "dataset"

    def __post_init__(self) -> None:
        from byzshield.compute.datasets import DATASETS

        if self.name not in DATASETS:
            raise ConfigError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")

    def build(self, *, train: bool):
        return cached_dataset(self.name, self.root, self.download, train)


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, root: str, download: bool, train: bool):
    """Datasets are read once per process (a sweep composes hundreds of runs); the
    tensors are never written to."""
    from byzshield.compute.datasets import load_dataset

    return load_dataset(name, root=root, download=download, train=train)
