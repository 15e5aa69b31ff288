"""The report's rows: runs grouped by every setting but the seed (:func:`group_runs`),
and each row's statistics over its complete runs."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from byzshield.report.load import (
    DEFAULT_IGNORE,
    STATUSES,
    TIME_COLUMNS,
    RunFolder,
    _natural,
    _number,
)
from byzshield.report.names import approach_names

GROUPS = ("approach", "mode", "attack")
"""Config groups shown as their own columns."""


# --------------------------------------------------------------------------------------
# Grouping


def _value_str(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return f"[{','.join(value)}]"  # pre=[nnm]
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs that differ in the seed only (and in ignored keys)."""

    key: tuple
    approach: str
    mode: str
    attack: str
    q: object
    extras: dict
    runs: list[RunFolder] = field(default_factory=list)
    name: str = ""  # the approach's display name (tables and figures), see names.py

    def with_status(self, status: str) -> list[RunFolder]:
        return [r for r in self.runs if r.status == status]

    @property
    def complete(self) -> list[RunFolder]:
        return self.with_status("complete")

    def label(self, *, q: bool = True) -> str:
        parts = [self.name or self.approach, self.mode, self.attack]
        if q:
            parts.append(f"q={self.q}")
        parts += [f"{k}={v}" for k, v in self.extras.items()]
        return " ".join(parts)

    def status_text(self) -> str:
        """e.g. "2 complete, 1 died at step 7/30"."""
        out = []
        for status in STATUSES:
            runs = self.with_status(status)
            if not runs:
                continue
            if status in ("running", "died"):
                details = ", ".join(r.progress() for r in runs)
                word = "running" if status == "running" else "died at"
                out.append(f"{len(runs)} {word} {details}")
            else:
                out.append(f"{len(runs)} {status}")
        return ", ".join(out)


@dataclass
class Grouping:
    """Groups in report order, the keys that vary, and what all runs share."""

    groups: list[Group]
    extra_keys: list[str]
    common: dict
    ignored: tuple[str, ...]


def _group_label(cfg: dict, group: str, varying: set[str], *, all_params: bool) -> str:
    name = cfg.get(f"{group}.name")
    prefix = f"{group}."
    params = [
        (k[len(prefix) :], v)
        for k, v in cfg.items()
        if k.startswith(prefix) and k != f"{group}.name"
        if all_params or k in varying
        if not (k == f"{group}.pre" and v == [])  # no pre-aggregation: nothing to say
    ]
    base = "?" if name is None else str(name)
    if not params:
        return base
    return f"{base}({', '.join(f'{k}={_value_str(v)}' for k, v in params)})"


def _column_name(key: str) -> str:
    return key[: -len(".name")] if key.endswith(".name") else key


def group_runs(runs: Sequence[RunFolder], ignore: Iterable[str] = DEFAULT_IGNORE) -> Grouping:
    """Group ``runs`` by every config key apart from ``ignore``.

    Approach labels show all the approach's parameters; mode and attack labels show the
    parameters that differ between runs of the same mode or attack; other keys that vary
    between runs become extra columns."""
    ignored = tuple(dict.fromkeys(ignore))

    def kept(k: str) -> bool:
        return not any(k == i or k.startswith(i + ".") for i in ignored)

    configs = [{k: v for k, v in r.config.items() if kept(k)} for r in runs]
    all_keys = sorted({k for c in configs for k in c})
    values: dict[str, set[str]] = {
        k: {_canon(c[k]) if k in c else "<missing>" for c in configs} for k in all_keys
    }
    # mode/attack parameters that differ between runs of the same name
    varying_in_group: set[str] = set()
    for group in ("mode", "attack"):
        by_name: dict[str, list[dict]] = defaultdict(list)
        for c in configs:
            by_name[_canon(c.get(f"{group}.name"))].append(c)
        for members in by_name.values():
            keys = {k for c in members for k in c if k.startswith(group + ".")}
            for k in keys:
                if len({_canon(c[k]) if k in c else "<missing>" for c in members}) > 1:
                    varying_in_group.add(k)
    extra_keys = [
        k
        for k in all_keys
        if not k.startswith(tuple(g + "." for g in GROUPS))
        and k not in ("max_steps", "adversary.q")  # always shown, as "steps" and "q"
        and len(values[k]) > 1
    ]
    common = {
        k: configs[0][k]
        for k in all_keys
        if len(values[k]) == 1 and "<missing>" not in values[k] and not k.startswith("approach.")
    }
    groups: dict[tuple, Group] = {}
    for run, c in zip(runs, configs, strict=True):
        key = tuple(sorted((k, _canon(v)) for k, v in c.items()))
        if key not in groups:
            groups[key] = Group(
                key,
                _group_label(c, "approach", set(), all_params=True),
                _group_label(c, "mode", varying_in_group, all_params=False),
                _group_label(c, "attack", varying_in_group, all_params=False),
                c.get("adversary.q", run.q),
                {_column_name(k): _value_str(c[k]) if k in c else "?" for k in extra_keys},
            )
        groups[key].runs.append(run)
    ordered = sorted(
        groups.values(),
        key=lambda g: (
            _natural(g.approach),
            _natural(g.mode),
            _natural(g.attack),
            _natural(g.q),
            [_natural(v) for v in g.extras.values()],
        ),
    )
    names = approach_names(g.approach for g in ordered)
    for g in ordered:
        g.runs.sort(key=lambda r: (_natural(r.seed), _natural(r.path)))
        g.name = names[g.approach]
    return Grouping(ordered, [_column_name(k) for k in extra_keys], common, ignored)


# --------------------------------------------------------------------------------------
# Statistics


class Summary(NamedTuple):
    """The statistics of one cell over seeds: the mean, the sample standard deviation
    (n - 1), n, and the 95 % interval of the mean (Student's t, n - 1 degrees of
    freedom); std, low and high are None for fewer than two values, everything but n
    for none."""

    mean: float | None
    std: float | None
    n: int
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, mean: float | None, std: float | None, n: int) -> Summary:
        """The summary of n values with this mean and std (a report.csv row read back)."""
        from byzshield.report.paired import t_half_width

        if mean is None or std is None or n < 2:
            return cls(mean, None if n < 2 else std, n)
        half = t_half_width(std, n)
        return cls(mean, std, n, mean - half, mean + half)


def summarize(values: Iterable[float | None]) -> Summary:
    """The :class:`Summary` of the finite values (others are left out)."""
    vals = [float(v) for v in values if _number(v)]
    if not vals:
        return Summary(None, None, 0)
    mean = math.fsum(vals) / len(vals)
    return Summary.of(mean, statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def group_stats(g: Group, last: int = 1) -> dict:
    from byzshield.report.paired import tail_accuracy

    done = g.complete
    out: dict = {}
    for name, values in (
        ("final_top1", [r.final.get("top1") for r in done]),
        ("tail_top1", [tail_accuracy(r.evals, last) for r in done]),
        ("best_top1", [r.best_top1 for r in done]),
        ("final_top5", [r.final.get("top5") for r in done]),
        ("final_test_loss", [r.final.get("test_loss") for r in done]),
        ("final_backdoor_asr", [r.final.get("backdoor_asr") for r in done]),
        ("train_s", [r.train_s for r in done]),
        ("wall_s", [r.wall_s for r in done]),
        ("distorted_frac", [r.distorted_frac for r in done]),
    ):
        out[name] = summarize(values)
    for k in TIME_COLUMNS:
        out[k] = summarize(r.time_split.get(k) for r in done)
    return out
