"""Redraw a report's figures from its own tables, without the run folders
(``python -m byzshield.report --redraw REPORT_DIR``):

    python -m byzshield.report --redraw docs/results/paper_mnist1d --figures q,drop,paired

report.csv holds what the final accuracy against q needs (each group's mean, std and
number of complete runs, so the 95 % interval too) and the approaches for eps(q);
paired.csv, with report.csv's distorted fractions, what the drop and A - B figures need.
Accuracy against step needs every evaluation of every run: it is not redrawn (nor the
c_max the runs reported, marked in eps_vs_q.png when drawn from the runs).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from byzshield.report.eps import eps_curve, placement_of
from byzshield.report.groups import Summary
from byzshield.report.load import ReportError, _natural
from byzshield.report.plots import (
    FIGURES,
    _comparisons,
    diff_figure,
    drop_figure,
    eps_figure,
    pyplot,
    q_figure,
    save_figure,
)
from byzshield.report.points import DiffPoint, DropPoint, Look, QPoint
from byzshield.report.write import check_writable

REDRAWN = ("q", "eps", "drop", "paired")
"""The figures a report's tables suffice for."""


def _read(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None


def _float(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def _extras(rows: Sequence[dict]) -> list[str]:
    """report.csv's columns of the settings that vary (between q and runs)."""
    header = list(rows[0]) if rows else []
    if "q" not in header or "runs" not in header:
        raise ReportError("report.csv has no q and runs columns: not a report's table")
    return header[header.index("q") + 1 : header.index("runs")]


def _q(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _q_points(rows: Sequence[dict]) -> list[QPoint]:
    extras = _extras(rows)
    points = []
    for r in rows:
        q, mean = _q(r["q"]), _float(r.get("final_top1_mean"))
        if q is None or mean is None:
            continue
        n = int(r.get("final_top1_n") or r.get("complete") or 0)
        stat = Summary.of(mean, _float(r.get("final_top1_std")), n)
        extra = tuple((k, r[k]) for k in extras)
        points.append(QPoint(r["approach"], r["mode"], r["attack"], q, extra, stat))
    return points


def _selected(rows: Sequence[dict], specs: Sequence[str], path: Path) -> list[dict]:
    """paired.csv's rows of the comparisons ``specs`` (all when none is given)."""
    have = list(dict.fromkeys(r["pair"] for r in rows))
    unknown = [s for s in specs if s not in have]
    if unknown:
        raise ReportError(
            f"--paired {unknown[0]!r} is not in {path}; it has: {'; '.join(have) or 'none'}"
        )
    return [r for r in rows if not specs or r["pair"] in specs]


def _drop_points(paired: Sequence[dict], report: Sequence[dict]) -> list[DropPoint]:
    extras = _extras(report)

    def key(label, mode, attack, q, extra):
        return (label, mode, attack, q, tuple(extra.get(k, "") for k in extras))

    groups = {key(r["approach"], r["mode"], r["attack"], r["q"], r): r for r in report}
    files: dict[str, int | None] = {}
    points, seen = [], set()
    for r in paired:
        extra = json.loads(r["extras"])
        for side in ("a", "b"):
            label, mode = r[side], r[f"mode_{side}"]
            k = key(label, mode, r["attack"], r["q"], extra)
            mean = _float(r[f"drop_{side}_mean"])
            if mean is None or k in seen or k not in groups:
                continue
            seen.add(k)
            if label not in files:
                placement = placement_of(label)
                files[label] = placement.num_files if placement is not None else None
            frac = _float(groups[k].get("distorted_frac_mean"))
            if frac is None or not files[label]:
                continue
            x = frac * files[label] / math.sqrt(files[label])  # c / sqrt(f)
            low, high = _float(r[f"drop_{side}_low"]), _float(r[f"drop_{side}_high"])
            points.append(DropPoint(label, mode, tuple(extra.items()), x, mean, low, high))
    return points


def _diff_points(paired: Sequence[dict]) -> list[DiffPoint]:
    from byzshield.report.paired import parse_pair

    points = []
    for r in paired:
        q, mean = _q(r["q"]), _float(r["diff_mean"])
        if q is None or mean is None:
            continue
        side_a, side_b = parse_pair(r["pair"])
        shared = [] if side_a.mode or side_b.mode else [("mode", r["mode_a"])]
        panel = (*shared, ("attack", r["attack"]), *json.loads(r["extras"]).items())
        low, high = _float(r["diff_low"]), _float(r["diff_high"])
        points.append(
            DiffPoint(
                r["pair"], r["a"], r["mode_a"], r["b"], r["mode_b"], panel, q, mean, low, high
            )
        )
    return points


def redraw(
    folder: Path | str,
    out: Path | str | None = None,
    *,
    figures: Sequence[str] = REDRAWN,
    paired: Sequence[str] = (),
    spread: str = "ci",
    eps_q_max: int | None = None,
    eps_work: int = 200_000,
    say=None,
) -> list[str]:
    """Redraw the figures ``figures`` of the report in ``folder`` from its report.csv
    (and paired.csv: the comparisons ``paired``, default all) into ``out`` (default
    ``folder``); the names written. Raises :class:`ReportError` on bad input."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ReportError(f"--figures takes {', '.join(FIGURES)}; got {', '.join(unknown)}")
    if "step" in figures:
        raise ReportError(
            "--redraw draws q, eps, drop and paired: accuracy against step needs the runs"
        )
    if not (folder / "report.csv").is_file():
        raise ReportError(f"no report.csv in {folder} (--redraw takes a folder the report wrote)")
    check_writable(out)
    if pyplot() is None:
        raise ReportError("--redraw draws figures: matplotlib is not installed")
    report = _read(folder / "report.csv")
    rows: list[dict] = []
    wants_pairs = {"drop", "paired"} & set(figures)
    if paired or (wants_pairs and (folder / "paired.csv").is_file()):
        rows = _selected(_read(folder / "paired.csv"), paired, folder / "paired.csv")
    curves = []
    if "eps" in figures:
        ran: dict[str, list[int]] = {}
        for r in report:
            q = _q(r["q"])
            ran.setdefault(r["approach"], []).extend([] if q is None else [q])
        for label in sorted(ran, key=_natural):
            placement = placement_of(label)
            if placement is not None:
                curves.append(
                    eps_curve(label, placement, ran[label], q_max=eps_q_max, work=eps_work, say=say)
                )
    labels = [r["approach"] for r in report] + [r[s] for r in rows for s in ("a", "b")]
    look = Look(labels + [x for c in curves for x in (c.label, *_comparisons(c)) if x])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    drawings = {
        "q": ("accuracy_vs_q.png", lambda: q_figure(_q_points(report), look, spread)),
        "eps": ("eps_vs_q.png", lambda: eps_figure(curves, look) if curves else None),
        "drop": ("drop_vs_bias.png", lambda: drop_figure(_drop_points(rows, report), look)),
        "paired": ("paired_vs_q.png", lambda: diff_figure(_diff_points(rows), look)),
    }
    for kind in (k for k in REDRAWN if k in figures):
        name, draw = drawings[kind]
        fig = draw()
        if fig is not None:
            save_figure(fig, out / name)
            written.append(name)
    return written
