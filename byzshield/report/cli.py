"""The command line: ``python -m byzshield.report`` (:mod:`byzshield.report.__main__`)
and the ``byzshield-report`` console script (:func:`cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from byzshield.report.load import STATUSES, ReportError, plural
from byzshield.report.plots import FIGURES
from byzshield.report.tables import PIVOT_KEYS, SPREADS
from byzshield.report.where import parse_where
from byzshield.report.worst import WORST_OVER
from byzshield.report.write import write_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m byzshield.report",
        description=(
            "Summarise run folders and Hydra sweeps: report.md (tables), report.csv (one "
            "row per group of runs differing only in the seed), runs.csv (one row per "
            "run) and PNG plots (accuracy vs step, final accuracy vs q, eps(q) vs q). Each "
            "cell is the mean over seeds with its 95 % interval (Student's t)."
        ),
        epilog=(
            "Status of a run: complete (final evaluation at max_steps), running (not "
            "complete, a file changed within --stale-after minutes), died (stale, some "
            "steps recorded), failed to start (stale, no step), queued (a lockstep "
            "sweep's job waiting while another runs), refused. Jobs of a sweep with no "
            "folder are listed as not started."
        ),
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="run or sweep folders (searched recursively); with --redraw, one folder the "
        "report wrote",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: report/ inside the first DIR; with --redraw, DIR); "
        "checked first",
    )
    p.add_argument(
        "--redraw",
        action="store_true",
        help="redraw the figures of the report in DIR from its report.csv and paired.csv, "
        "without the run folders: q, eps, drop and paired (accuracy against step needs the "
        "runs)",
    )
    p.add_argument(
        "--spread",
        choices=SPREADS,
        default="ci",
        help="what a cell and a figure's bars show beside the mean: ci, the 95%% interval "
        "over seeds (Student's t, n - 1 degrees of freedom; default), or std, the sample "
        "standard deviation",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=10.0,
        metavar="MIN",
        help="a run without its final evaluation is running if a file in its folder "
        "changed within MIN minutes, else died (default: 10)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="config keys that do not separate rows (e.g. --ignore threads,log_every; "
        "repeatable); seed and train_dir never do",
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument(
        "--figures",
        default=",".join(FIGURES),
        metavar="KIND[,KIND]",
        help="which figures: step (accuracy against step, one per rule, q and setting), q "
        "(final accuracy against q), eps (eps(q) of the placements), drop and paired (with "
        "--paired: drop against c / sqrt(f), and A - B against q); default: all",
    )
    p.add_argument(
        "--no-eps", action="store_true", help="skip the eps(q) table and plot (no c_max search)"
    )
    p.add_argument(
        "--eps-q-max",
        type=int,
        metavar="Q",
        help="largest q of the eps(q) curves (default: max(K // 2, largest q run))",
    )
    p.add_argument(
        "--eps-work",
        type=int,
        default=200_000,
        metavar="N",
        help="work budget of each placement's worst-case search (default: 200000, as "
        "training's adversary.search_work); rows it cannot finish say not certified",
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="on sweeps of more than N runs, print progress every N runs read (default: 100)",
    )
    p.add_argument(
        "--pivot",
        metavar="COLUMN",
        choices=PIVOT_KEYS,
        help="also write pivot.md: final top-1 (as the tables' cells) with one column per "
        "value of COLUMN (approach, mode, attack or q) and a row per value of the others",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=V[,V]",
        help="with --pivot: keep the groups whose KEY is one of the values (repeatable; "
        "all must hold). KEY: approach, mode, attack, q, their config names (approach.name, "
        "adversary.q, ...), a group's parameter (approach.l, mode.num_buckets) or a setting "
        "that varies (batch_size); an approach by config name (mols), label "
        "('mols(l=5, r=3)') or display name ('MOLS K=15'). E.g. --where q=0,3 --where "
        "approach=mols,draco_lite_attack. A KEY or value that matches nothing is an error",
    )
    p.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="'A vs B'",
        help="also write paired.md, paired.csv, drop_vs_bias.png and paired_vs_q.png: per "
        "cell, A - B over the seeds both ran with a 95%% interval, and each side's drop "
        "from its own q = 0 reference; A and B are approaches as report.md names them "
        "(label or display name), optionally with ' / MODE' (e.g. --paired 'mols(l=5, "
        "r=3) vs draco_lite_attack(K=15, r=3)'; repeatable); with --redraw, which of "
        "paired.csv's comparisons to draw (default: all)",
    )
    p.add_argument(
        "--worst-over",
        choices=WORST_OVER,
        metavar="attack",
        help="also write worst.md, worst.csv and heatmaps (worst_rule_vs_q.png, and "
        "worst_rule_vs_heterogeneity.png when the data partition varies): per rule, "
        "placement, q and setting, the lowest mean top-1 over the attacks swept and the "
        "attack that achieved it (ByzFL's protocol; attack=none and q = 0 are the "
        "no-attack reference, not attacks)",
    )
    p.add_argument(
        "--last-evals",
        type=int,
        default=1,
        metavar="N",
        help="a run's accuracy for --paired (and a last-N column in report.md) is its "
        "mean top-1 over its last N evaluations (default: 1, the final one)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.stale_after < 0 or args.progress_every < 1 or args.eps_work < 1 or args.last_evals < 1:
        print(
            "error: --stale-after must be >= 0, --progress-every, --eps-work and --last-evals >= 1",
            file=sys.stderr,
        )
        return 2
    if args.eps_q_max is not None and args.eps_q_max < 0:
        print("error: --eps-q-max must be >= 0", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    figures = [k for k in args.figures.split(",") if k]
    try:
        if args.redraw:
            return _redraw(args, figures, say)
        report = write_report(
            args.dirs,
            args.out,
            stale_after=args.stale_after * 60,
            ignore=[k for arg in args.ignore for k in arg.split(",") if k],
            plots=not args.no_plots,
            eps=not args.no_eps,
            eps_q_max=args.eps_q_max,
            eps_work=args.eps_work,
            progress_every=args.progress_every,
            say=say,
            paired=args.paired,
            last_evals=args.last_evals,
            figures=figures,
            pivot=args.pivot,
            where=parse_where(args.where),
            spread=args.spread,
            worst_over=args.worst_over,
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {s: sum(r.status == s for r in report.runs) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if report.pending:
        summary += f"; {plural(len(report.pending), 'sweep job')} not started"
    if report.left_out:
        runs = sum(bool(r.left_out) for r in report.runs)
        summary += (
            f"; left out {plural(report.left_out, 'impossible evaluation value')} in "
            f"{plural(runs, 'run')}"
        )
    n, k = len(report.runs), len(report.grouping.groups)
    print(
        f"{plural(n, 'run')} in {plural(k, 'group')} ({summary}); "
        f"wrote {', '.join(report.files)} to {report.out}"
    )
    return 0


def _redraw(args, figures: list[str], say) -> int:
    from byzshield.report.redraw import REDRAWN, redraw

    if len(args.dirs) != 1:
        raise ReportError(f"--redraw takes one report folder, got {len(args.dirs)}")
    if args.pivot or args.where or args.no_plots or args.worst_over:
        raise ReportError(
            "--redraw draws figures only: no --pivot, --where, --no-plots or --worst-over"
        )
    chosen = [k for k in figures if k in REDRAWN] if args.figures == ",".join(FIGURES) else figures
    if args.no_eps:
        chosen = [k for k in chosen if k != "eps"]
    folder = Path(args.dirs[0])
    out = args.out if args.out is not None else folder
    written = redraw(
        folder,
        out,
        figures=chosen,
        paired=args.paired,
        spread=args.spread,
        eps_q_max=args.eps_q_max,
        eps_work=args.eps_work,
        say=say,
    )
    print(f"redrew {', '.join(written) or 'no figure'} to {out}")
    return 0


def cli() -> None:
    """The ``byzshield-report`` console script: ``python -m byzshield.report``."""
    sys.exit(main())
