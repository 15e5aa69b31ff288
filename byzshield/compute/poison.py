"""The backdoor's data: a fixed trigger stamped on samples relabelled to a target class.

A Byzantine worker under ``attack=backdoor`` computes its files' gradients on a poisoned
copy of their samples (:class:`Poison`, applied by
:func:`byzshield.compute.gradients.file_gradients` as label flipping is): the first
ceil(fraction * s) of a file's s samples get the dataset's trigger (:func:`stamp`) and the
label ``target``. A file's samples are a random draw in random order
(:mod:`byzshield.compute.sampling`), so that is a random subset of the file, the same for
every copy of the file. Evaluation measures the attack success rate on the triggered test
set (:func:`attack_success`).

The trigger of each dataset, on its normalised samples:

- images (digits, MNIST, CIFAR-10/100, SVHN): a bright square in the bottom-right corner,
  every channel at the dataset's largest pixel value; side max(2, round(H / 8)) pixels
  (2 for digits' 8x8, 4 for 28x28 and 32x32 images), the pixel-pattern backdoor of Gu,
  Dolan-Gavitt & Garg, "BadNets", 2017;
- signals (MNIST-1D, length 40): the last :data:`BUMP_LENGTH` normalised values replaced
  by the fixed bump pattern :data:`BUMP` (+-3 standard deviations, alternating), a shape
  no digit template has at the end of the sequence.

    >>> from byzshield.compute.datasets import load_dataset
    >>> data = load_dataset("digits", root="data", download=False, train=False)
    >>> x = stamp(data.normalize(data.images[:2]), data)
    >>> white = data.normalize(torch.tensor([16.0])).item()  # digits' largest pixel
    >>> x[0, 0, -2:, -2:].tolist() == [[white, white], [white, white]]
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from byzshield.compute.datasets import ImageDataset
from byzshield.compute.sampling import eval_batches

__all__ = ["BUMP", "BUMP_LENGTH", "Poison", "attack_success", "stamp", "trigger_side"]

BUMP = (3.0, -3.0, 3.0, -3.0, 3.0, -3.0)
"""The 1-D trigger: the last values of a signal, in units of the dataset's std."""
BUMP_LENGTH = len(BUMP)


def trigger_side(image_size: int) -> int:
    """The side of the image trigger's square: max(2, round(image_size / 8))."""
    return max(2, round(image_size / 8))


def stamp(x: Tensor, data: ImageDataset) -> Tensor:
    """A copy of the normalised samples ``x`` (..., C, H, W) or (..., C, L) of ``data``
    with the dataset's trigger stamped on (see the module docstring)."""
    out = x.clone()
    if data.spatial_dims == 2:
        side = trigger_side(data.image_size)
        white = torch.full((data.in_channels, 1, 1), data.max_value)  # the largest pixel
        out[..., -side:, -side:] = data.normalize(white).to(x.dtype)
    else:
        out[..., -BUMP_LENGTH:] = torch.tensor(BUMP, dtype=x.dtype)  # normalised: std units
    return out


@dataclass(frozen=True)
class Poison:
    """What a backdoor worker does to a file's samples: the first ceil(fraction * s) of its
    s samples get the trigger (:func:`stamp`) and the label ``target``.

    Args:
        target: the class the trigger should make the model predict.
        fraction: the share of a file's samples poisoned, in (0, 1].
    """

    target: int
    fraction: float

    def __post_init__(self):
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"target must be a class index >= 0, got {self.target!r}")
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")

    def check(self, num_classes: int) -> None:
        """Refuse a target that is not a class of a dataset of ``num_classes``."""
        if self.target >= num_classes:
            raise ValueError(
                f"target must be a class of the dataset (0..{num_classes - 1}), got {self.target}"
            )

    def count(self, size: int) -> int:
        """How many of a file's ``size`` samples are poisoned: ceil(fraction * size)."""
        return min(size, math.ceil(self.fraction * size - 1e-9))

    def __call__(self, x: Tensor, y: Tensor, data: ImageDataset) -> tuple[Tensor, Tensor]:
        """The poisoned copies of one file's samples x (s, ...) and labels y (s,), or of
        several files' (..., s, *sample_shape) and (..., s): the first samples of each."""
        self.check(data.num_classes)
        k = self.count(y.shape[-1])
        first = (Ellipsis, slice(0, k), *[slice(None)] * (x.dim() - y.dim()))
        x, y = x.clone(), y.clone()
        x[first] = stamp(x[first], data)
        y[..., :k] = self.target
        return x, y


@torch.no_grad()
def attack_success(model: torch.nn.Module, test: ImageDataset, target: int, batch_size: int):
    """The backdoor's attack success rate: the share of the test samples whose label is
    not ``target`` that ``model`` (eval mode) classifies as ``target`` once triggered
    (None when every test sample is of class ``target``)."""
    model.eval()
    device = next(model.parameters()).device
    hits = total = 0
    for x, y in eval_batches(test, batch_size):
        keep = y != target
        if not bool(keep.any()):
            continue
        out = model(stamp(x[keep], test).to(device))
        hits += int((out.argmax(dim=1) == target).sum())
        total += int(keep.sum())
    return hits / total if total else None
