"""What the report's figures draw, apart from accuracy against step: plain points
(:class:`QPoint`, :class:`DropPoint`, :class:`DiffPoint`) built from the run folders
here, or from a report's CSVs (:mod:`byzshield.report.redraw`), and the names and
colours of the approaches they show (:class:`Look`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from byzshield.report.groups import Grouping, Summary, summarize
from byzshield.report.load import _number
from byzshield.report.names import approach_colors, approach_name, approach_names
from byzshield.report.pairs import PairedCell, _bias


@dataclass(frozen=True)
class QPoint:
    """Final top-1 of one group: an approach, in a panel (mode, extras, attack), at q."""

    approach: str
    mode: str
    attack: str
    q: int
    extras: tuple
    stat: Summary  # of the top-1 fractions over seeds


@dataclass(frozen=True)
class DropPoint:
    """A scheme's drop from its no-attack reference (fractions) at c / sqrt(f) = x."""

    approach: str
    mode: str
    extras: tuple
    x: float
    mean: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class DiffPoint:
    """A - B (fractions) of one --paired cell at q, with its paired 95 % interval."""

    pair: str  # the --paired spec
    a: str  # A's approach label
    a_mode: str
    b: str
    b_mode: str
    panel: tuple  # what the cell shares apart from q: ((key, value), ...)
    q: int
    mean: float
    low: float | None
    high: float | None


class Look:
    """Display names and colours of every approach label a report's figures show."""

    def __init__(self, labels: Iterable[str]) -> None:
        labels = list(dict.fromkeys(labels))
        self.names = approach_names(labels)
        self.colors = approach_colors(labels)

    def name(self, label: str) -> str:
        return self.names.get(label) or approach_name(label)

    def color(self, label: str) -> str:
        return self.colors.get(label, "k")


def q_points(grouping: Grouping) -> list[QPoint]:
    """Each group's final top-1 over its complete runs (groups with a numeric q)."""
    points = []
    for g in grouping.groups:
        stat = summarize(r.final.get("top1") for r in g.complete)
        if stat.n and _number(g.q):
            extras = tuple(g.extras.items())
            points.append(QPoint(g.approach, g.mode, g.attack, g.q, extras, stat))
    return points


def drop_points(tables: Sequence[Sequence[PairedCell]]) -> list[DropPoint]:
    """Each side's drop of the --paired cells, once per group, at its c / sqrt(f)."""
    points, seen = [], set()
    for cells in tables:
        for c in cells:
            for g, drop in ((c.a, c.drop_a), (c.b, c.drop_b)):
                if drop is None or id(g) in seen:
                    continue
                seen.add(id(g))
                x = _bias(g)
                if x is not None:
                    extras = tuple(g.extras.items())
                    points.append(
                        DropPoint(g.approach, g.mode, extras, x, drop.mean, drop.low, drop.high)
                    )
    return points


def diff_points(specs: Sequence[str], tables: Sequence[Sequence[PairedCell]]) -> list[DiffPoint]:
    """A - B of every --paired cell."""
    points = []
    for spec, cells in zip(specs, tables, strict=True):
        for c in cells:
            if not _number(c.a.q):
                continue
            panel = _cell_panel(c)
            d = c.diff
            points.append(
                DiffPoint(
                    spec,
                    c.a.approach,
                    c.a.mode,
                    c.b.approach,
                    c.b.mode,
                    panel,
                    c.a.q,
                    d.mean,
                    d.low,
                    d.high,
                )  # fmt: skip
            )
    return points


def _cell_panel(c: PairedCell) -> tuple:
    """What a cell shares apart from q, as ((key, value), ...): its mode when the spec
    names none, its attack and its extras."""
    shared = [("mode", c.a.mode)] if len(c.key) == 4 else []
    return (*shared, ("attack", c.a.attack), *c.key[-1])
