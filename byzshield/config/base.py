"""What every option shares: :class:`ConfigError` (one-line messages), the number
checks ``_int`` and ``_positive``, and ``_Option`` (an option's ``name`` is its own)."""

from __future__ import annotations

import math
from typing import ClassVar


class ConfigError(ValueError):
    """A configuration value that cannot run; the message is one line."""


def _int(owner: str, key: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{owner}{key} must be an integer {allowed}, got {value!r}")
    return value


def _positive(owner: str, key: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{owner}{key} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return float(value)


class _Option:
    """Shared by every group option: ``name`` must be the option's own name."""

    group: ClassVar[str] = ""
    option: ClassVar[str] = ""

    def _check_name(self) -> None:
        if self.name != self.option:  # type: ignore[attr-defined]
            raise ConfigError(
                f"{self.group}.name is {self.name!r} but the chosen option is "  # type: ignore[attr-defined]
                f"{self.option!r}; pick another option with {self.group}=NAME"
            )
