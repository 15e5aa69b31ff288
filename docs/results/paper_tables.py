"""The summary tables of docs/results/README.md's paper_mnist1d section, from the report's
paired.csv and report.csv (``python -m byzshield.report ... --paired ...``):

    python docs/results/paper_tables.py docs/results/paper_mnist1d/paired.csv

For each placement against its DETOX (K = 15, K = 25) and each batch size: per q, the
accuracy of the ByzShield design with the plain median and with the median of means,
DETOX's, and each paired difference with its 95 % interval (`*`: excludes 0; `(m)`:
marginal, an end of the printed interval within 1 point of 0).

Then the distinct comparisons. With a fixed Byzantine set and files redrawn every step,
two designs that distort as many files of the same size give the rule the same input bit
for bit, so some cells repeat others (Ramanujan K = 25 at q = 3-4 is MOLS K = 15 at
q = 2). A cell counts once: when its (ByzShield accuracy, DETOX accuracy, difference,
interval) equals an earlier cell's of the same rule (K = 15 first, then batch, then q),
it is left out. Per rule, the script counts the distinct cells, how many are
distinguishable and which side is ahead, and, among the distinct cells whose drops (each
side's loss from its own no-attack run) differ distinguishably, how often the side with
the larger c/√f loses more and how often the side with the larger distorted fraction
c/f does (c: files the adversary won per step, measured, from report.csv beside
paired.csv; f: the design's number of files).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from byzshield.report.eps import placement_of

MARGIN = 1.0  # points: an interval end this close to 0 makes a cell marginal
RULES = {"median": "plain median", "mom": "median of means"}


def _pct(value: str) -> str:
    return f"{100 * float(value):.1f}" if value else "—"


def _ends(row: dict) -> tuple[float, float]:
    """The interval's ends in points, as printed (one decimal)."""
    return tuple(float(f"{100 * float(row[k]):.1f}") for k in ("diff_low", "diff_high"))


def _marginal(row: dict) -> bool:
    return bool(row.get("diff_low")) and min(abs(end) for end in _ends(row)) <= MARGIN


def _diff(row: dict) -> str:
    if not row.get("diff_mean"):
        return "—"
    mark = " *" if row["diff_distinguishable"] == "True" else ""
    mark += " (m)" if _marginal(row) else ""
    mean = 100 * float(row["diff_mean"])
    low, high = _ends(row)
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{mark}"


def _rule(row: dict) -> str:
    return "mom" if "num_buckets=5" in row["mode_a"] else "median"


def _batch(row: dict) -> int:
    return int(json.loads(row["extras"]).get("batch_size", 0))


def _fractions(report_csv: Path) -> dict:
    """(approach, mode, attack, q, extras) -> the runs' mean distorted fraction c/f."""
    if not report_csv.is_file():
        return {}
    with open(report_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        (r["approach"], r["mode"], r["attack"], r["q"], r["batch_size"]): float(
            r["distorted_frac_mean"]
        )
        for r in rows
        if r.get("distorted_frac_mean")
    }


def _side(row: dict, side: str, fractions: dict, files: dict) -> tuple[float, float] | None:
    """(c/√f, c/f) of one side of a cell, None when unknown."""
    label = row[side]
    frac = fractions.get((label, row[f"mode_{side}"], row["attack"], row["q"], str(_batch(row))))
    if label not in files:
        placement = placement_of(label)
        files[label] = placement.num_files if placement is not None else None
    if frac is None or not files[label]:
        return None
    return frac * math.sqrt(files[label]), frac


def _tables(rows: list[dict]) -> list[tuple]:
    """[(a, b, batch, {q: {rule: row}})], K = 15 first, then batch."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[(row["a"], row["b"], _batch(row))][int(row["q"])][_rule(row)] = row
    ordered = sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2]))
    return [(a, b, batch, by_q) for (a, b, batch), by_q in ordered]


def _print_tables(tables: list[tuple]) -> None:
    for a, b, batch, by_q in tables:
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


def _count(tables: list[tuple], rule: str, fractions: dict) -> list[dict]:
    """One dict of counts per comparison (a against b) of one rule, over its distinct
    cells; a cell equal to an earlier one (this comparison's or an earlier one's) is
    left out."""
    seen: set = set()
    files: dict = {}
    counts: dict = {}
    for a, b, _, by_q in tables:
        c = counts.setdefault((a, b), defaultdict(int, a=a, b=b))
        for q in sorted(by_q):
            row = by_q[q].get(rule)
            if not row or not row.get("diff_mean"):
                continue
            c["cells"] += 1
            key = tuple(row[k] for k in ("acc_a", "acc_b", "diff_mean", "diff_low", "diff_high"))
            if key in seen:
                continue
            seen.add(key)
            c["distinct"] += 1
            if q == 0:
                c["no attack"] += 1
                continue
            c["under attack"] += 1
            if row["diff_distinguishable"] == "True":
                c["distinguishable"] += 1
                c["ahead" if float(row["diff_mean"]) > 0 else "behind"] += 1
            c["marginal"] += _marginal(row)
            if row.get("drop_diff_distinguishable") != "True":
                continue
            sides = _side(row, "a", fractions, files), _side(row, "b", fractions, files)
            if None in sides:
                continue
            c["drops differ"] += 1
            a_loses_more = float(row["drop_diff_mean"]) > 0
            for i, name in enumerate(("c/√f", "c/f")):
                if sides[0][i] != sides[1][i]:
                    c[f"{name} decided"] += 1
                    c[name] += (sides[0][i] > sides[1][i]) == a_loses_more
    return list(counts.values())


def _count_rows(per_rule: dict):
    """(rule, comparison, counts) for every comparison of each rule, then the rule's total."""
    for rule, counts in per_rule.items():
        for c in [*counts, _total(counts)]:
            yield rule, (f"{c['a']} vs {c['b']}" if c["b"] else "all"), c


def _total(counts: list[dict]) -> dict:
    total: dict = defaultdict(int, a="all", b="")
    for c in counts:
        for k, v in c.items():
            if isinstance(v, int):
                total[k] += v
    return total


def _of(c: dict, name: str) -> str:
    return f"{c[name]} of {c[name + ' decided']}"


def _print_distinct(tables: list[tuple], fractions: dict) -> None:
    per_rule = {rule: _count(tables, rule, fractions) for rule in RULES}
    cells = sum(_total(c)["cells"] for c in per_rule.values())
    distinct = sum(_total(c)["distinct"] for c in per_rule.values())
    print(
        f"**Distinct comparisons.** {cells} cells, {distinct} distinct: a cell equal to an "
        "earlier one of the same rule in ByzShield's and DETOX's accuracy, the difference "
        "and its interval is counted once (the first, K = 15 before K = 25). No attack: "
        "q = 0 and the q that distort no file. The last columns count the distinct cells "
        f"under attack; (m): an interval end within {MARGIN:.0f} point of 0.\n"
    )
    print(
        "| rule | comparison | cells | distinct | no attack | under attack | "
        "distinguishable | ByzShield ahead | DETOX ahead | marginal (m) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rule, what, c in _count_rows(per_rule):
        print(
            f"| {RULES[rule]} | {what} | {c['cells']} | {c['distinct']} | "
            f"{c['no attack']} | {c['under attack']} | {c['distinguishable']} | "
            f"{c['ahead']} | {c['behind']} | {c['marginal']} |"
        )
    print()
    if not fractions:
        print("(no report.csv beside paired.csv: the drop ordering is left out)\n")
        return
    print(
        "**Which side loses more**, among the distinct cells under attack whose drops "
        "differ distinguishably: how often the side with the larger c/√f loses more, and "
        "how often the side with the larger distorted fraction c/f does.\n"
    )
    print("| rule | comparison | drops differ | larger c/√f loses more | larger c/f loses more |")
    print("| --- | --- | --- | --- | --- |")
    for rule, what, c in _count_rows(per_rule):
        print(
            f"| {RULES[rule]} | {what} | {c['drops differ']} | {_of(c, 'c/√f')} | {_of(c, 'c/f')} |"
        )
    print()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/results/paper_tables.py PAIRED_CSV")
        return 2
    path = Path(argv[0])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    tables = _tables(rows)
    _print_tables(tables)
    _print_distinct(tables, _fractions(path.parent / "report.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
