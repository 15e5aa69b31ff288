"""Summarise training runs and Hydra sweeps: a Markdown table, CSVs and PNG plots.

    python -m byzshield.report multirun/2026-11-25/17-33-10          # a sweep
    python -m byzshield.report runs/a runs/b --out results            # several folders
    python -m byzshield.report SWEEP --stale-after 30 --ignore threads,log_every
    python -m byzshield.report SWEEP --no-plots                       # tables only
    python -m byzshield.report SWEEP --pivot attack --where approach=mols,draco_lite_attack
    python -m byzshield.report REPORT_DIR --redraw                    # figures from its CSVs
    python -m byzshield.report SWEEP --worst-over attack              # each rule's worst attack
    python -m byzshield.report --help

Every folder under each DIR holding ``metrics.jsonl``, ``run.json`` or ``.hydra/`` is a
run (a Hydra multirun's jobs are the sub-folders ``0/``, ``1/``, ... of the sweep). Each
run gets one status, and every run is shown, whatever its status:

* **complete**: ``metrics.jsonl`` has the final evaluation (``step == max_steps``);
* **running**: not complete, and a file in the folder changed within the last
  ``--stale-after`` minutes (default 10; the trainer appends a line every step);
* **died**: not complete, stale, with at least one step recorded ("died at step N/M");
* **failed to start**: not complete, stale, and no step recorded;
* **refused**: a multirun job whose config could not run (``refused.txt`` says why);
* **queued**: a job of an ``engine=lockstep`` multirun that has its folder but no step
  yet while another job of the sweep is running (lockstep trains the sweep's groups one
  after another).

In a sweep folder (``multirun.yaml``), jobs of the sweep that have no folder yet are
listed as **not started** (Hydra stops a sweep at the first job that exits).

An evaluation value that cannot be right (top-1 or top-5 outside [0, 1], a negative
test loss, anything not a finite number: what a damaged or hand-edited metrics.jsonl
holds) is left out of every statistic, table and figure, and said: per run on stderr and
in report.md's notes, in total on the summary line, per run in runs.csv (``left_out``).

Runs are grouped by every setting that differs between them apart from ``seed`` and
``train_dir`` (``--ignore`` adds keys): approach (with its parameters), mode and attack
(with the parameters that differ between runs of the same name), q, and any other key
that varies (dataset, network, lr, ...), so a row never mixes runs that differ in more
than the seed. A row's statistics are over its complete runs only: each cell is the mean
with its 95 % interval over seeds (Student's t, n - 1 degrees of freedom; ``--spread
std`` shows the sample standard deviation instead), and a single run says ``(n=1)``.
Tables and figures name an approach the same way (:mod:`~byzshield.report.names`:
``mols(l=5, r=3)`` is ``MOLS K=15``, ``draco_lite_attack(K=15, r=3)`` is ``DETOX (worst)
K=15 r=3``), and either form selects it in ``--paired`` and ``--where``. Train time is
the sum of the per-step ``step_s`` (training steps only); wall time is from file
modification times (``run.json`` is written at the start, ``metrics.jsonl`` at the last
record), so it includes evaluations and checkpoints, and means nothing for folders
copied without their times. The time split is the mean per step of each ``*_s`` column.

Outputs, in ``--out`` (default ``report/`` inside the first DIR; checked before any
work): ``report.md``, ``report.csv`` (one row per group: mean, std, n and the interval
of every measure), ``runs.csv`` (one row per run; with ``detect``, ``caught``: when
each worker became certainly Byzantine, ``worker@step``), and with matplotlib (``pip install
'byzshield[report]'``) ``accuracy_vs_step_<mode>_q<q>.png`` (one panel per attack, one
line per approach), ``accuracy_vs_q.png`` (final accuracy against q: where each defence
breaks) and ``eps_vs_q.png`` (eps(q) = c_max(q) / f of each placement found, against
DETOX and the baseline at the same K, from :func:`byzshield.design.search.worst_case_table`
with a work budget); with ``--paired``, ``drop_vs_bias.png`` and ``paired_vs_q.png``.
Each approach has one colour in all of them; ``--redraw`` draws them again from a
report's report.csv and paired.csv (all but accuracy against step, which needs the runs).
With ``--worst-over attack``, ``worst.md`` and ``worst.csv``: per rule, placement, q and
setting (the data partition and its alpha among them), the lowest mean accuracy over the
attacks swept and the attack that achieved it (ByzFL's protocol), and the heatmaps
``worst_rule_vs_q.png`` and, when the partition varies, ``worst_rule_vs_heterogeneity.png``
(:mod:`~byzshield.report.worst`). Under ``attack=backdoor`` the tables also show the
final attack success rate (``backdoor_asr``).

The package, one concern a module: :mod:`~byzshield.report.load` (run folders,
statuses, sweeps and their pending jobs), :mod:`~byzshield.report.groups` (rows and
their statistics), :mod:`~byzshield.report.names` (approaches' names and colours),
:mod:`~byzshield.report.eps` (eps(q) of the placements), :mod:`~byzshield.report.tables`
(report.md, the CSVs, pivot.md), :mod:`~byzshield.report.where` (``--where``),
:mod:`~byzshield.report.pairs` (``--paired``), :mod:`~byzshield.report.points` (what the
figures draw), :mod:`~byzshield.report.plots` (the figures),
:mod:`~byzshield.report.worst` (``--worst-over``),
:mod:`~byzshield.report.archive` (``runs.jsonl.gz``: the runs a report read, to
rewrite it from), :mod:`~byzshield.report.write` (:func:`write_report`),
:mod:`~byzshield.report.redraw`
(``--redraw``) and :mod:`~byzshield.report.cli` (the command line). The public names of
all of them, and ``group_stats``, are imported here, so ``from
byzshield.report import X`` works as it did when the report was one module.
"""

from __future__ import annotations

# Re-exports: the names of __all__, and (noqa) the other names byzshield.report had as one
# module that tests and other modules import (EpsCurve, eps_figure, pivot_table, ...).
from byzshield.report.archive import ARCHIVE, is_archive, read_archive, read_runs, write_archive
from byzshield.report.cli import cli, main  # noqa: F401
from byzshield.report.eps import EpsCurve, eps_curves  # noqa: F401
from byzshield.report.groups import (  # noqa: F401
    GROUPS,
    Group,
    Grouping,
    Summary,
    group_runs,
    group_stats,
    summarize,
)
from byzshield.report.load import (  # noqa: F401
    DEFAULT_IGNORE,
    SKIP_DIRS,
    STATUSES,
    TIME_COLUMNS,
    PendingJob,
    ReportError,
    RunFolder,
    discover,
    pending_jobs,
    plural,
    read_run,
)
from byzshield.report.names import approach_colors, approach_name, approach_names  # noqa: F401
from byzshield.report.pairs import PairedCell, paired_cells  # noqa: F401
from byzshield.report.plots import (  # noqa: F401
    FIGURES,
    PLOTS_SKIPPED,
    eps_figure,
    save_figure,
)
from byzshield.report.tables import PIVOT_KEYS, pivot_table  # noqa: F401
from byzshield.report.where import parse_where  # noqa: F401
from byzshield.report.write import Report, write_report  # noqa: F401

__all__ = [
    "ARCHIVE",
    "is_archive",
    "STATUSES",
    "Group",
    "RunFolder",
    "discover",
    "group_runs",
    "main",
    "pending_jobs",
    "read_archive",
    "read_run",
    "read_runs",
    "write_archive",
    "write_report",
]
