"""The command line: ``python -m byzshield.report`` (:mod:`byzshield.report.__main__`)
and the ``byzshield-report`` console script (:func:`cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from byzshield.report.load import STATUSES, ReportError
from byzshield.report.plots import FIGURES
from byzshield.report.tables import PIVOT_KEYS, pivot_table
from byzshield.report.write import write_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m byzshield.report",
        description=(
            "Summarise run folders and Hydra sweeps: report.md (tables), report.csv (one "
            "row per group of runs differing only in the seed), runs.csv (one row per "
            "run) and PNG plots (accuracy vs step, final accuracy vs q, eps(q) vs q)."
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
        "dirs", nargs="+", metavar="DIR", help="run or sweep folders (searched recursively)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: report/ inside the first DIR)")
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
        "(final accuracy against q), eps (eps(q) of the placements), drop (with --paired: "
        "drop against c / sqrt(f)); default: all",
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
        help="also write pivot.md: final top-1 (mean +- std over seeds) with one column per "
        "value of COLUMN (approach, mode, attack or q) and a row per value of the others",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=V[,V]",
        help="with --pivot: keep the groups whose KEY (approach, mode, attack, q) is one of "
        "the values, e.g. --where q=0,3 (repeatable)",
    )
    p.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="'A vs B'",
        help="also write paired.md, paired.csv and drop_vs_bias.png: per cell, A - B over "
        "the seeds both ran with a 95%% interval, and each side's drop from its own q = 0 "
        "reference; A and B are approach labels as in report.md, optionally with ' / MODE' "
        "(e.g. --paired 'mols(l=5, r=3) vs draco_lite_attack(K=15, r=3)'; repeatable)",
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
    where: dict[str, set[str]] = {}
    for item in args.where:
        key, _, values = item.partition("=")
        if key not in PIVOT_KEYS or not values or not args.pivot:
            print(
                f"error: --where takes KEY=VALUE[,VALUE] with KEY one of "
                f"{', '.join(PIVOT_KEYS)}, after --pivot; got {item!r}",
                file=sys.stderr,
            )
            return 2
        where[key] = set(values.split(","))

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
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
            figures=[k for k in args.figures.split(",") if k],
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pivot:
        table = pivot_table(report.out / "report.csv", args.pivot, where)
        (report.out / "pivot.md").write_text(table)
        report.files.append("pivot.md")
    counts = {s: sum(r.status == s for r in report.runs) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if report.pending:
        summary += f"; {len(report.pending)} sweep jobs not started"
    n, k = len(report.runs), len(report.grouping.groups)
    print(
        f"{n} run{'s' if n != 1 else ''} in {k} group{'s' if k != 1 else ''} ({summary}); "
        f"wrote {', '.join(report.files)} to {report.out}"
    )
    return 0


def cli() -> None:
    """The ``byzshield-report`` console script: ``python -m byzshield.report``."""
    sys.exit(main())
