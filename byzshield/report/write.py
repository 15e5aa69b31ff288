"""Reading every run under the folders and writing the report's files
(:func:`write_report`, what the command line runs)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from byzshield.report.eps import eps_curves
from byzshield.report.groups import Grouping, _group_stats, group_runs
from byzshield.report.load import (
    DEFAULT_IGNORE,
    PendingJob,
    ReportError,
    RunFolder,
    _mark_queued,
    discover,
    pending_jobs,
    read_run,
)
from byzshield.report.pairs import _paired_csv, _paired_markdown, paired_cells
from byzshield.report.plots import FIGURES, PLOTS_SKIPPED, _drop_figure, _plots, _save_figure
from byzshield.report.tables import _markdown, _report_csv, _runs_csv


@dataclass
class Report:
    """What :func:`write_report` produced."""

    out: Path
    files: list[str]
    runs: list[RunFolder]
    grouping: Grouping
    pending: list[PendingJob]
    warnings: list[str]


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
) -> Report:
    """Read every run under ``dirs`` and write the report into ``out`` (see the module
    docstring); ``say`` receives progress lines. Raises :class:`ReportError` on bad input."""
    say = say or (lambda message: None)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ReportError("give at least one run or sweep folder")
    paths, sweeps = discover(dirs)
    out = Path(out) if out is not None else dirs[0] / "report"
    large = len(paths) > progress_every
    if large:
        say(f"report: reading {len(paths)} runs")
    start = time.monotonic()
    now = time.time() if now is None else now
    runs = []
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
    stats = [_group_stats(g, last_evals) for g in grouping.groups]
    pending: list[PendingJob] = []
    sweep_sizes: dict[Path, int | None] = {}
    for sweep in sweeps:
        size, missing = pending_jobs(sweep, runs)
        sweep_sizes[sweep] = size
        pending += missing
    notes = list(warnings)
    curves = eps_curves(runs, q_max=eps_q_max, work=eps_work, say=say, notes=notes) if eps else []
    out.mkdir(parents=True, exist_ok=True)
    names = ["report.md", "report.csv", "runs.csv"]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ReportError(f"--figures takes {', '.join(FIGURES)}; got {', '.join(unknown)}")
    drawn = _plots(grouping, curves, out, notes, figures) if plots else []
    if PLOTS_SKIPPED in notes:
        say(PLOTS_SKIPPED)
    _report_csv(grouping, stats, out / "report.csv")
    _runs_csv(runs, grouping, out / "runs.csv")
    text = _markdown(
        dirs, runs, grouping, stats, pending, sweep_sizes, curves, drawn, notes, stale_after,
        last_evals,
    )  # fmt: skip
    (out / "report.md").write_text(text, encoding="utf-8")
    if paired:
        tables = [paired_cells(grouping, spec, last=last_evals) for spec in paired]
        (out / "paired.md").write_text(_paired_markdown(paired, tables, last_evals))
        _paired_csv(paired, tables, out / "paired.csv")
        names += ["paired.md", "paired.csv"]
        drop = plots and "drop" in figures
        if drop and _save_figure(
            out, "drop_vs_bias.png", _drop_figure, tables, grouping, last_evals
        ):
            drawn.append("drop_vs_bias.png")
    return Report(out, names + drawn, runs, grouping, pending, warnings)
