"""``python -m byzshield.train`` with ``dataset=cifar10`` (and ``mnist``) replaced by
random images of their shape (2,000 training, 500 test, seeded): for
benchmarks/training.py's ResNet-18 table and cost estimates on machines without them.
Step time and traffic do not depend on the pixels; the accuracies mean nothing. Run by
torchrun in every rank:

    torchrun --standalone --nproc-per-node 16 benchmarks/_synthetic_train.py \\
        network=resnet18 dataset=cifar10 ...
"""

from __future__ import annotations

import dataclasses
import runpy

import torch

from byzshield.compute import datasets as data


def _random_images(shape):
    def read(root, download, train):
        g = torch.Generator().manual_seed(0 if train else 1)
        n = 2000 if train else 500
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        return images, torch.randint(0, 10, (n,), generator=g)

    return read


for name, shape in (("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))):
    data.DATASETS[name] = dataclasses.replace(
        data.DATASETS[name], files=None, read=_random_images(shape)
    )
runpy.run_module("byzshield.train", run_name="__main__", alter_sys=True)
