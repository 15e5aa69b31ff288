"""Reading every run under the folders and writing the report's files
(:func:`write_report`, what the command line runs)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from byzshield.report.archive import ARCHIVE, is_archive, read_archive, write_archive
from byzshield.report.eps import eps_curves
from byzshield.report.groups import Grouping, _value_str, group_runs, group_stats
from byzshield.report.load import (
    DEFAULT_IGNORE,
    PendingJob,
    ReportError,
    RunFolder,
    _mark_queued,
    discover,
    pending_jobs,
    plural,
    read_run,
)
from byzshield.report.pairs import _paired_csv, _paired_markdown, paired_cells
from byzshield.report.plots import FIGURES, PLOTS_SKIPPED, _plots
from byzshield.report.tables import (
    PIVOT_KEYS,
    SPREADS,
    _markdown,
    _report_csv,
    _runs_csv,
    pivot_table,
)
from byzshield.report.where import check_where, group_rows
from byzshield.report.worst import WORST_OVER, write_worst


@dataclass
class Report:
    """What :func:`write_report` produced."""

    out: Path
    files: list[str]
    runs: list[RunFolder]
    grouping: Grouping
    pending: list[PendingJob]
    warnings: list[str]

    @property
    def left_out(self) -> int:
        """Evaluation values left out as impossible, over all runs."""
        return sum(r.left_out for r in self.runs)


def check_writable(out: Path) -> None:
    """Raise :class:`ReportError` unless ``out`` is, or can be made, a folder this
    process can write in (tried in its nearest existing folder, creating nothing)."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ReportError(f"cannot write the report to {out}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ReportError(
            f"cannot write the report to {out}: {probe} is not writable ({exc.strerror}); "
            "choose another folder with --out"
        ) from None


def left_out_note(runs: Sequence[RunFolder]) -> str | None:
    """The report's line on evaluation values left out as impossible (None: none were)."""
    runs = [r for r in runs if r.left_out]
    if not runs:
        return None
    values = plural(sum(r.left_out for r in runs), "impossible evaluation value")
    return (
        f"left out {values} in {plural(len(runs), 'run')} (an accuracy outside [0, 1], a "
        "negative loss, or not a finite number): no statistic, table or figure uses them"
    )


def write_report(
    dirs: Sequence[Path | str],
    out: Path | str | None = None,
    *,
    stale_after: float = 600.0,
    ignore: Iterable[str] = (),
    plots: bool = True,
    eps: bool = True,
    eps_q_max: int | None = None,
    eps_work: int = 200_000,
    progress_every: int = 100,
    say=None,
    now: float | None = None,
    paired: Sequence[str] = (),
    last_evals: int = 1,
    figures: Sequence[str] = FIGURES,
    pivot: str | None = None,
    where: dict[str, set[str]] | None = None,
    spread: str = "ci",
    worst_over: str | None = None,
) -> Report:
    """Read every run under ``dirs`` and write the report into ``out`` (see the module
    docstring); ``say`` receives progress lines. ``pivot`` also writes pivot.md over the
    groups ``where`` selects (see :func:`~byzshield.report.where.parse_where`).
    ``worst_over="attack"`` also writes each rule's worst attack (worst.md, worst.csv and
    heatmaps: :mod:`~byzshield.report.worst`). Raises
    :class:`ReportError` on bad input, checked before the long parts (reading the runs,
    the eps search): ``figures``, ``spread``, ``pivot``, ``dirs``, ``out``, then ``where``."""
    say = say or (lambda message: None)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ReportError("give at least one run or sweep folder")
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ReportError(f"--figures takes {', '.join(FIGURES)}; got {', '.join(unknown)}")
    if spread not in SPREADS:
        raise ReportError(f"--spread takes {' or '.join(SPREADS)}; got {spread!r}")
    if pivot is not None and pivot not in PIVOT_KEYS:
        raise ReportError(f"--pivot takes {', '.join(PIVOT_KEYS)}; got {pivot!r}")
    if where and pivot is None:
        raise ReportError("--where selects the groups of --pivot's table: give --pivot too")
    if worst_over is not None and worst_over not in WORST_OVER:
        raise ReportError(f"--worst-over takes {', '.join(WORST_OVER)}; got {worst_over!r}")
    archives = [d for d in dirs if is_archive(d)]
    folders = [d for d in dirs if not is_archive(d)]
    paths, sweeps = discover(folders) if folders else ([], [])
    first = dirs[0].parent if is_archive(dirs[0]) else dirs[0]
    out = Path(out) if out is not None else first / "report"
    check_writable(out)
    large = len(paths) > progress_every
    if large:
        say(f"report: reading {len(paths)} runs")
    start = time.monotonic()
    now = time.time() if now is None else now
    runs = [run for a in archives for run in read_archive(a)]
    warnings: list[str] = []
    for k, path in enumerate(paths, 1):
        run = read_run(path, now=now, stale_after=stale_after)
        runs.append(run)
        for w in run.warnings:
            say(f"warning: {w}")
            warnings.append(w)
        if large and (k % progress_every == 0 or k == len(paths)):
            say(f"report: read {k}/{len(paths)} runs ({time.monotonic() - start:.0f} s)")
    _mark_queued(runs)
    grouping = group_runs(runs, (*DEFAULT_IGNORE, *ignore))
    if where:
        check_where(group_rows(grouping), where)
    tables = [paired_cells(grouping, spec, last=last_evals) for spec in paired]
    stats = [group_stats(g, last_evals) for g in grouping.groups]
    pending: list[PendingJob] = []
    sweep_sizes: dict[Path, int | None] = {}
    for sweep in sweeps:
        size, missing = pending_jobs(sweep, runs)
        sweep_sizes[sweep] = size
        pending += missing
    notes = list(warnings)
    note = left_out_note(runs)
    if note:
        say(f"warning: {note}")
        notes.append(note)
    curves = eps_curves(runs, q_max=eps_q_max, work=eps_work, say=say, notes=notes) if eps else []
    out.mkdir(parents=True, exist_ok=True)
    names = ["report.md", "report.csv", "runs.csv", ARCHIVE]
    drawn = (
        _plots(grouping, curves, out, notes, figures, spread=spread, paired=paired, tables=tables)
        if plots
        else []
    )
    if PLOTS_SKIPPED in notes:
        say(PLOTS_SKIPPED)
    _report_csv(grouping, stats, out / "report.csv")
    _runs_csv(runs, grouping, out / "runs.csv")
    write_archive(runs, out / ARCHIVE)
    text = _markdown(
        dirs, runs, grouping, stats, pending, sweep_sizes, curves, drawn, notes, stale_after,
        last_evals, spread,
    )  # fmt: skip
    (out / "report.md").write_text(text, encoding="utf-8")
    if pivot is not None:
        common = {k: _value_str(v) for k, v in grouping.common.items()}
        table = pivot_table(out / "report.csv", pivot, where or {}, spread, common)
        (out / "pivot.md").write_text(table, encoding="utf-8")
        names.append("pivot.md")
    if worst_over is not None:
        names += write_worst(
            grouping, out, over=worst_over, last=last_evals, spread=spread, plots=plots
        )
    if paired:
        (out / "paired.md").write_text(_paired_markdown(paired, tables, last_evals))
        _paired_csv(paired, tables, out / "paired.csv")
        names += ["paired.md", "paired.csv"]
    return Report(out, names + drawn, runs, grouping, pending, warnings)
