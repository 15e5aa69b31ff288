"""A model's trainable parameters as one flat vector, the form the server works in.

The order is ``model.parameters()``'s, each tensor flattened row-major: the layout of
every gradient a worker sends and of the (d,) vector the server updates.

    >>> from byzshield.compute.networks import build_network
    >>> model = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    >>> load_flat(model, flat_params(model) * 0)
    >>> num_params(model) == flat_params(model).numel() and not flat_params(model).any()
    True
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["flat_params", "load_flat", "num_params"]


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one float32 vector (d,), on the CPU."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def num_params(model: nn.Module) -> int:
    """d, the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a (d,) vector into the model's parameters (inverse of :func:`flat_params`)."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
