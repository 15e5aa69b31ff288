"""The convergence check of +experiment=paper_mnist1d: each no-attack run against the
same arm, batch size and seed trained twice as long (+experiment=paper_mnist1d_plateau).

    python docs/results/plateau_check.py runs/paper_mnist1d > docs/results/paper_mnist1d/plateau.md

Accuracy is the mean top-1 of the last 5 evaluations, as in the sweep's report. A run is
converged when it is within 2 points of its plateau run; the table prints the gap per
arm and batch size (mean over the seeds both ran) and the largest gap of any seed.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

import byzshield

LAST = 5
TOLERANCE = 2.0  # points


def _accuracy(run) -> float | None:
    tops = [e["top1"] for e in run.evals if isinstance(e.get("top1"), (int, float))]
    if run.status != "complete" or len(tops) < LAST:
        return None
    return 100.0 * statistics.fmean(tops[-LAST:])


def _arm(config: dict) -> str:
    mode = config.get("mode.name", "?")
    buckets = config.get("mode.num_buckets")
    rule = f"{mode}" + (f", {buckets} buckets" if buckets not in (None, "null") else "")
    name = config.get("approach.name", "?")
    params = ", ".join(
        f"{k.split('.', 1)[1]}={config[k]}"
        for k in sorted(config)
        if k.startswith("approach.") and k != "approach.name"
    )
    return f"{name}({params}) / {rule}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/results/plateau_check.py RUNS_DIR (with k15/ ... and plateau/)")
        return 2
    root = Path(argv[0])
    plateau_dir = root / "plateau"
    sweep = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name != "plateau"]
    if not plateau_dir.is_dir() or not sweep:
        print(f"error: {root} needs the sweep's folders and plateau/ beside them")
        return 2
    longer = {}
    for run in byzshield.load_sweep(plateau_dir):
        acc = _accuracy(run)
        if acc is not None:
            key = (_arm(run.config), run.config.get("batch_size"), run.seed)
            longer[key] = (acc, run.config.get("max_steps"))
    cells = defaultdict(list)
    for run in byzshield.load_sweep(*sweep):
        if run.q != 0:
            continue
        key = (_arm(run.config), run.config.get("batch_size"), run.seed)
        acc = _accuracy(run)
        if acc is None or key not in longer:
            continue
        cells[key[:2]].append((acc, *longer[key], run.config.get("max_steps")))
    print(
        f"Convergence: mean top-1 % of the last {LAST} evaluations of each no-attack run "
        f"against the same run trained twice as long (same schedule shape, same seed); "
        f"converged when within {TOLERANCE:g} points.\n"
    )
    print(
        "| arm | batch | steps | top-1 % | 2x steps | top-1 % | gap (mean) | largest gap "
        "| seeds | converged |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for (arm, batch), rows in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        gaps = [long - short for short, long, _, _ in rows]
        largest = max(gaps, key=abs)
        worst = max(worst, abs(largest))
        print(
            f"| {arm} | {batch} | {rows[0][3]} | {statistics.fmean(r[0] for r in rows):.1f} | "
            f"{rows[0][2]} | {statistics.fmean(r[1] for r in rows):.1f} | "
            f"{statistics.fmean(gaps):+.1f} | {largest:+.1f} | {len(rows)} | "
            f"{'yes' if abs(largest) <= TOLERANCE else 'no'} |"
        )
    print(f"\n{len(cells)} cells; the largest gap of any run is {worst:.1f} points.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
