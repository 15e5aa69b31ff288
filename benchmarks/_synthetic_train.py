"""``python -m byzshield.train`` with ``dataset=cifar10`` replaced by random 32x32x3
images (2,000 training, 500 test, seeded): for benchmarks/training.py's ResNet-18 table
on machines without CIFAR-10. Step time and traffic do not depend on the pixels; the
accuracies mean nothing. Run by torchrun in every rank:

    torchrun --standalone --nproc-per-node 16 benchmarks/_synthetic_train.py \\
        network=resnet18 dataset=cifar10 ...
"""

from __future__ import annotations

import dataclasses
import runpy

import torch

from byzshield import data


def _random_images(root, download, train):
    g = torch.Generator().manual_seed(0 if train else 1)
    n = 2000 if train else 500
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


data.DATASETS["cifar10"] = dataclasses.replace(
    data.DATASETS["cifar10"], files=None, read=_random_images
)
runpy.run_module("byzshield.train", run_name="__main__", alter_sys=True)
