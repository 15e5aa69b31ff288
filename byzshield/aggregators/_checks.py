"""Argument checks shared by the rules and pre-aggregations: one-line ValueErrors; and
what their nested ``Config`` dataclasses share (:class:`NoParams`, :data:`PYTHON_ONLY`,
:func:`config_for`)."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def as_count(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def check_count(value: object, what: str, lo: int, hi: int | None = None) -> int:
    count = as_count(value, what)
    if count < lo or (hi is not None and count > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{what} must be {allowed}, got {count}")
    return count


def check_positive(value: object, what: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {allowed}, got {value!r}")
    return float(value)


def check_generator(generator: object, what: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{what}: generator must be a torch.Generator or None, got {generator!r}")


def check_vector(value: object, what: str) -> Tensor | None:
    if value is not None and not (isinstance(value, Tensor) and value.dim() == 1):
        raise ValueError(f"{what} must be a torch.Tensor of shape (d,) or None, got {value!r}")
    return value


def vector_param(value: Tensor | None, d: int, what: str) -> np.ndarray | None:
    """A (d,) tensor parameter as finite float64 NumPy, or None."""
    if value is None:
        return None
    if value.shape != (d,):
        raise ValueError(f"{what} must have shape ({d},), got {tuple(value.shape)}")
    out = value.detach().cpu().numpy().astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} must be finite")
    return out


@dataclass(frozen=True)
class NoParams:
    """The ``Config`` of a rule or pre-aggregation without parameters."""


PYTHON_ONLY = {"config_key": False}
"""``field(metadata=PYTHON_ONLY)``: a parameter of the Python API only (a tensor, such as
a starting point), not offered as a config key."""


def config_for(owner: object, config: object | None) -> object:
    """``config``, checked to be ``owner``'s own ``Config`` (its defaults when None)."""
    cls = type(owner).Config  # type: ignore[attr-defined]
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise TypeError(
            f"{owner.name} takes a {type(owner).__name__}.Config, "  # type: ignore[attr-defined]
            f"got {type(config).__name__}"
        )
    return config
