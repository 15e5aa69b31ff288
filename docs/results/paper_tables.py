"""The summary tables of docs/results/README.md's paper_mnist1d section, from the report's
paired.csv (``python -m byzshield.report ... --paired ...``):

    python docs/results/paper_tables.py docs/results/paper_mnist1d/paired.csv

For each placement against its DETOX (K = 15, K = 25) and each batch size: per q, the
accuracy of the ByzShield design with the plain median and with the median of means,
DETOX's, and each paired difference with its 95 % interval (`*`: excludes 0).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict


def _pct(value: str) -> str:
    return f"{100 * float(value):.1f}" if value else "—"


def _diff(row: dict) -> str:
    if not row.get("diff_mean"):
        return "—"
    mark = " *" if row["diff_distinguishable"] == "True" else ""
    mean, low, high = (100 * float(row[k]) for k in ("diff_mean", "diff_low", "diff_high"))
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{mark}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/results/paper_tables.py PAIRED_CSV")
        return 2
    with open(argv[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    # (placement a, b, batch) -> q -> {"median": row, "mom": row}
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        batch = int(json.loads(row["extras"]).get("batch_size", 0))
        rule = "mom" if "num_buckets=5" in row["mode_a"] else "median"
        cells[(row["a"], row["b"], batch)][int(row["q"])][rule] = row
    for (a, b, batch), by_q in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        print(
            f"**{a} against {b}, batch {batch}** (files of {batch // 25} samples against "
            f"DETOX's {batch // 5}):\n"
        )
        print("| q | median | median of means | DETOX | median - DETOX | median of means - DETOX |")
        print("| --- | --- | --- | --- | --- | --- |")
        for q in sorted(by_q):
            med, mom = by_q[q].get("median", {}), by_q[q].get("mom", {})
            detox = (mom or med).get("acc_b", "")
            print(
                f"| {q} | {_pct(med.get('acc_a', ''))} | {_pct(mom.get('acc_a', ''))} | "
                f"{_pct(detox)} | {_diff(med)} | {_diff(mom)} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
