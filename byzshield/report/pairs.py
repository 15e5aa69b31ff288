"""Paired comparisons (``--paired``): per cell, A - B over the seeds both sides ran and
each side's drop from its own no-attack reference, written as paired.md and
paired.csv. The statistics themselves are :mod:`byzshield.report.paired`'s."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from byzshield.report.groups import Group, Grouping, _canon
from byzshield.report.load import ReportError, _natural, _number, plural
from byzshield.report.tables import _md_table


@dataclass
class PairedCell:
    """One cell of a --paired comparison: the matched groups of both sides, their
    no-attack references, and the per-seed statistics (see :mod:`byzshield.report.paired`)."""

    key: tuple
    a: Group
    b: Group
    seeds: list
    acc_a: list[float]
    acc_b: list[float]
    diff: object  # PairedInterval of acc_a - acc_b
    drop_a: object = None  # PairedInterval of ref_a - acc_a (vs 0)
    drop_b: object = None
    drop_diff: object = None  # PairedInterval of drop_a - drop_b


def _named(g: Group) -> str:
    """A group's approach as --paired takes it: ``MOLS K=15 (mols(l=5, r=3))``."""
    return g.approach if g.name in ("", g.approach) else f"{g.name} ({g.approach})"


def _by_seed(g: Group | None, last: int) -> dict:
    from byzshield.report.paired import tail_accuracy

    if g is None:
        return {}
    out = {}
    for r in g.complete:
        acc = tail_accuracy(r.evals, last)
        if acc is not None:
            out[_canon(r.seed)] = acc
    return out


def paired_cells(grouping: Grouping, spec: str, *, last: int = 1) -> list[PairedCell]:
    """The cells of ``spec`` ("A vs B", see :func:`byzshield.report.paired.parse_pair`): groups
    of both sides that agree on everything but the approach (and the mode, when a side
    names one), each with its q = 0 reference of the same approach, mode and extras."""
    from byzshield.report.paired import paired_interval, parse_pair

    try:
        side_a, side_b = parse_pair(spec)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    with_mode = side_a.mode is not None or side_b.mode is not None

    def key(g: Group) -> tuple:
        extras = tuple(g.extras.items())
        return (
            (g.attack, _canon(g.q), extras)
            if with_mode
            else (g.mode, g.attack, _canon(g.q), extras)
        )

    def side(sd) -> dict[tuple, Group]:
        chosen: dict[tuple, Group] = {}
        for g in grouping.groups:
            if sd.approach not in (g.approach, g.name):
                continue
            if sd.mode is not None and g.mode != sd.mode:
                continue
            k = key(g)
            if k in chosen:
                raise ReportError(
                    f"--paired: {sd.describe()} has several groups for one cell (modes "
                    f"{chosen[k].mode} and {g.mode}); name the mode as 'APPROACH / MODE'"
                )
            chosen[k] = g
        if not chosen:
            labels = sorted({f"{_named(g)} / {g.mode}" for g in grouping.groups})
            raise ReportError(
                f"--paired: no runs of {sd.describe()}; the report has {'; '.join(labels)}"
            )
        return chosen

    groups_a, groups_b = side(side_a), side(side_b)

    def reference(g: Group) -> Group | None:
        for other in grouping.groups:
            if (
                other.approach == g.approach
                and other.mode == g.mode
                and other.extras == g.extras
                and _number(other.q)
                and other.q == 0
            ):
                return other
        return None

    cells = []
    for k in [k for k in groups_a if k in groups_b]:
        ga, gb = groups_a[k], groups_b[k]
        acc_a, acc_b = _by_seed(ga, last), _by_seed(gb, last)
        seeds = sorted(set(acc_a) & set(acc_b), key=_natural)
        if not seeds:
            continue
        a = [acc_a[s] for s in seeds]
        b = [acc_b[s] for s in seeds]
        cell = PairedCell(k, ga, gb, seeds, a, b, paired_interval(a, b))
        if _number(ga.q) and ga.q != 0:
            ref_a, ref_b = _by_seed(reference(ga), last), _by_seed(reference(gb), last)
            both = [s for s in seeds if s in ref_a and s in ref_b]
            if both:
                da = [ref_a[s] - acc_a[s] for s in both]
                db = [ref_b[s] - acc_b[s] for s in both]
                zero = [0.0] * len(both)
                cell.drop_a = paired_interval(da, zero)
                cell.drop_b = paired_interval(db, zero)
                cell.drop_diff = paired_interval(da, db)
        cells.append(cell)
    cells.sort(key=lambda c: [_natural(x) for x in c.key])
    return cells


def _interval_text(stat, scale: float = 100.0) -> str:
    if stat is None:
        return "—"
    if stat.low is None:
        return f"{stat.mean * scale:+.1f}"
    mark = " *" if stat.distinguishable else ""
    return f"{stat.mean * scale:+.1f} [{stat.low * scale:+.1f}, {stat.high * scale:+.1f}]{mark}"


def _paired_markdown(specs: Sequence[str], tables: list[list[PairedCell]], last: int) -> str:
    what = "the final evaluation" if last == 1 else f"the mean of the last {last} evaluations"
    lines = [
        "# Paired comparisons",
        "",
        f"Accuracy: top-1 % of {what}. Per cell, over the seeds both sides ran (paired): "
        "the mean difference A - B and its 95 % interval (Student's t, n - 1 degrees of "
        "freedom); `*` marks an interval that excludes 0. Drop: a scheme's loss from its "
        "own no-attack (q = 0) reference of the same rule and settings, same seeds; "
        "drop A - drop B > 0 means A loses more to the attack. About 1 cell in 20 with no "
        "true difference is marked by chance.",
        "",
    ]
    for spec, cells in zip(specs, tables, strict=True):
        lines += [f"## {spec}", ""]
        if not cells:
            lines += ["No cell has complete runs of both sides with a common seed.", ""]
            continue
        extra_names = [k for k, _ in cells[0].key[-1]]
        head = (["mode"] if len(cells[0].key) == 4 else []) + ["attack", "q", *extra_names]
        header = [*head, "n", "A %", "B %", "A - B", "drop A", "drop B", "drop A - drop B"]
        header += ["c/√f A", "c/√f B"]
        rows = []
        agree = decided = 0
        for c in cells:
            fixed = list(c.key[:-1])
            fixed[-1] = c.a.q  # q as shown
            values = [*fixed, *(v for _, v in c.key[-1])]
            bias_a, bias_b = _bias(c.a), _bias(c.b)
            rows.append(
                [
                    *values,
                    c.diff.n,
                    f"{100 * math.fsum(c.acc_a) / len(c.acc_a):.1f}",
                    f"{100 * math.fsum(c.acc_b) / len(c.acc_b):.1f}",
                    _interval_text(c.diff),
                    _interval_text(c.drop_a),
                    _interval_text(c.drop_b),
                    _interval_text(c.drop_diff),
                    "—" if bias_a is None else f"{bias_a:.2f}",
                    "—" if bias_b is None else f"{bias_b:.2f}",
                ]
            )
            d = c.drop_diff
            known = None not in (bias_a, bias_b) and bias_a != bias_b
            if known and d is not None and d.distinguishable:
                decided += 1
                agree += (d.mean > 0) == (bias_a > bias_b)
        marked = sum(c.diff.distinguishable for c in cells)
        a, b = cells[0].a, cells[0].b
        lines += [
            f"A = {_named(a)} / {a.mode}, B = {_named(b)} / {b.mode}; "
            f"{plural(len(cells), 'cell')}, {marked} with A - B distinguishable from 0. Where "
            f"the drops differ distinguishably and c/√f differs, the side with the larger "
            f"c/√f loses more in {agree} of {plural(decided, 'cell')}.",
            "",
            _md_table(header, rows),
        ]
    lines += [
        "c/√f: the mean number of files a Byzantine copy won per step (c, measured), over "
        "the square root of the number of files f. At a fixed batch a file of b/f samples "
        "has a gradient spread of about σ·√(f/b), ALIE shifts each file it wins by z times "
        "that spread, so a mean-like rule moves by about (c/f)·z·σ·√(f/b) = z·σ·c/√(f·b): "
        "the model predicts the larger drop for the larger c/√f.",
        "",
    ]
    return "\n".join(lines)


def _bias(g: Group) -> float | None:
    """c / sqrt(f) of a group: its runs' mean distorted files per step over sqrt(files)."""
    fracs = [r.distorted_frac for r in g.complete if _number(r.distorted_frac)]
    f = _files(g)
    if not fracs or not f:
        return None
    return math.fsum(fracs) / len(fracs) * f / math.sqrt(f)


def _paired_csv(specs: Sequence[str], tables: list[list[PairedCell]], out: Path) -> None:
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["pair", "a", "b", "mode_a", "mode_b", "attack", "q", "extras", "n", "seeds",
             "acc_a", "acc_b"]
            + [f"{name}_{part}" for name in ("diff", "drop_a", "drop_b", "drop_diff")
               for part in ("mean", "low", "high", "distinguishable")]
        )  # fmt: skip
        for spec, cells in zip(specs, tables, strict=True):
            for c in cells:
                row = [
                    spec, c.a.approach, c.b.approach, c.a.mode, c.b.mode, c.a.attack, c.a.q,
                    json.dumps(dict(c.key[-1]), sort_keys=True), c.diff.n,
                    " ".join(map(str, c.seeds)),
                    math.fsum(c.acc_a) / len(c.acc_a), math.fsum(c.acc_b) / len(c.acc_b),
                ]  # fmt: skip
                for stat in (c.diff, c.drop_a, c.drop_b, c.drop_diff):
                    if stat is None:
                        row += ["", "", "", ""]
                        continue
                    low = "" if stat.low is None else stat.low
                    high = "" if stat.high is None else stat.high
                    row += [stat.mean, low, high, stat.distinguishable]
                w.writerow(row)


def _files(g: Group) -> int | None:
    for r in g.runs:
        f = r.info.get("f")
        if isinstance(f, int) and f > 0:
            return f
    return None
