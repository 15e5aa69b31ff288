"""Argument checks shared by the attacks: one-line ValueErrors."""

from __future__ import annotations

import math

from torch import Tensor


def finite(value: object, what: str) -> float:
    """``value`` as a float, refused unless it is a finite number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_own(name: str, own: object) -> Tensor:
    """The Byzantine worker's own gradient, refused unless it is a tensor."""
    if not isinstance(own, Tensor):
        raise ValueError(f"{name}: own must be a torch.Tensor, got {type(own)}")
    return own


def check_honest(name: str, own: Tensor, honest: object, min_rows: int) -> Tensor:
    """The (m, *own.shape) stack of honest gradients an omniscient attack reads."""
    if not isinstance(honest, Tensor):
        raise ValueError(
            f"{name} needs the honest gradients: pass honest=Tensor of shape "
            f"(m, {', '.join(map(str, own.shape))}) (the omniscient simulation), got {honest!r}"
        )
    if honest.dim() != own.dim() + 1 or honest.shape[1:] != own.shape:
        raise ValueError(
            f"{name}: honest must have shape (m, {', '.join(map(str, own.shape))}), "
            f"got {tuple(honest.shape)}"
        )
    if honest.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} honest rows, got {honest.shape[0]}")
    return honest
