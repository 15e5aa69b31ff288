"""What every option shares: :class:`ConfigError` (one-line messages), the number
checks ``_int``, ``_positive`` and ``_float32``, ``_Option`` (an option's ``name`` is its own) and
``_generated_option`` (an option made from the class that declares its parameters)."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from typing import Any, ClassVar


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


F32_MAX = 3.4028234663852886e38
"""The largest finite float32: a config value that becomes a float32 tensor value (the
learning rate, an attack's scale) must not exceed it in magnitude."""


def _float32(owner: str, key: str, value: object) -> float:
    """A number that becomes a float32 value: finite, and |value| <= :data:`F32_MAX`
    (a larger float64 would overflow where torch converts it)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and abs(value) <= F32_MAX):
        raise ConfigError(
            f"{owner}{key} must be a finite float32 (|x| <= {F32_MAX:.4g}), got {value!r}"
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


def _hydra_type(hint: object) -> object:
    """The annotation a structured config can hold: plain types and ``X | None`` as
    they are, anything wider (``int | str | None``) as Any, checked by the class."""
    plain = (int, float, bool, str)
    if hint in plain:
        return hint
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args and all(a in (*plain, type(None)) for a in args):
        return hint
    return Any


def _generated_option(
    source: type, declared: type, keys: list, base: type, *, suffix: str, keys_attr: str
) -> type:
    """The ``<group>/<source.name>`` option: a dataclass over ``base`` with ``name`` and
    the fields ``keys`` of ``declared`` (the dataclass declaring ``source``'s
    parameters), their defaults as declared there; ``keys_attr`` lists them. The class
    is named from the option (``multi-krum`` -> ``MultiKrum`` + ``suffix``) and lives in
    ``base``'s module."""
    hints = typing.get_type_hints(declared, vars(sys.modules[source.__module__]))
    title = "".join(part.capitalize() for part in re.split(r"[-_]", source.name)) + suffix
    names = tuple(fl.name for fl in keys)
    cls = dataclasses.make_dataclass(
        title,
        [("name", str, dataclasses.field(default=source.name))]
        + [
            (fl.name, _hydra_type(hints[fl.name]), dataclasses.field(default=fl.default))
            for fl in keys
        ],
        bases=(base,),
        namespace={"option": source.name, keys_attr: names},
    )
    cls.__module__, cls.__qualname__ = base.__module__, title
    summary = " ".join((source.__doc__ or source.name).strip().split("\n\n")[0].split())
    cls.__doc__ = (
        f"{base.group}={source.name}: {summary} Keys of its own: {', '.join(names) or 'none'}."
    )
    return cls
