"""docs/results/paper_tables.py: the committed paper_mnist1d tables in docs/results/README.md
are what it prints from the committed paired.csv and report.csv, and its distinct
comparisons count a repeated cell once, mark marginal intervals and score c/√f and the
distorted fraction as a hand count does."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _script():
    spec = importlib.util.spec_from_file_location("paper_tables", RESULTS / "paper_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str) -> list[str]:
    """The printed output cut at its bold headings: each table (or summary) with its title."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("**") and current:
            blocks.append("\n".join(current).strip())
            current = []
        current.append(line)
    blocks.append("\n".join(current).strip())
    return blocks


def test_the_results_readme_holds_what_the_script_prints(capsys):
    assert _script().main([str(RESULTS / "paper_mnist1d" / "paired.csv")]) == 0
    printed = capsys.readouterr().out
    readme = (RESULTS / "README.md").read_text()
    blocks = _blocks(printed)
    assert len(blocks) == 8  # six tables, the distinct comparisons, who loses more
    for block in blocks:
        assert block in readme, block[:200]


def _row(a, b, rule, q, acc, diff, low, high, drop=None):
    """One paired.csv row: ByzShield `a` (rule "mom" or "median") against DETOX `b`."""
    buckets = 5 if rule == "mom" else "null"
    return {
        "a": a,
        "b": b,
        "mode_a": f"coord-median(num_buckets={buckets})",
        "mode_b": "coord-median(num_buckets=null)",
        "attack": "alie",
        "q": str(q),
        "extras": json.dumps({"batch_size": "750"}),
        "acc_a": str(acc + diff),
        "acc_b": str(acc),
        "diff_mean": str(diff),
        "diff_low": str(low),
        "diff_high": str(high),
        "diff_distinguishable": str(low > 0 or high < 0),
        "drop_diff_mean": "" if drop is None else str(drop),
        "drop_diff_distinguishable": str(drop is not None),
    }


def _summary(text: str, heading: str) -> dict:
    """The rows of the summary table under `heading`, by (rule, comparison)."""
    lines = text[text.index(heading) :].splitlines()
    table = [line for line in lines[2:] if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        rows[(cells["rule"], cells["comparison"])] = cells
        if cells["comparison"] == "all" and cells["rule"] == "median of means":
            break
    return rows


def test_repeated_cells_count_once_and_marginal_cells_are_marked(tmp_path, capsys):
    mols, detox15 = "mols(l=5, r=3)", "draco_lite_attack(K=15, r=3)"
    rama, detox25 = "rama_two(m=5, s=5)", "draco_lite_attack(K=25, r=5)"
    rows = [
        _row(mols, detox15, "mom", 0, 0.9, 0.001, -0.01, 0.012),  # no attack
        _row(mols, detox15, "mom", 1, 0.9, 0.001, -0.01, 0.012),  # = q 0: no file lost
        _row(mols, detox15, "mom", 2, 0.5, 0.3, 0.25, 0.35, drop=-0.3),  # ahead
        _row(mols, detox15, "mom", 3, 0.5, 0.05, -0.005, 0.1),  # marginal, a tie
        _row(mols, detox15, "mom", 4, 0.4, -0.1, -0.15, -0.05, drop=0.1),  # behind
        _row(rama, detox25, "mom", 0, 0.9, 0.001, -0.01, 0.012),  # = MOLS q 0
        _row(rama, detox25, "mom", 3, 0.5, 0.3, 0.25, 0.35, drop=-0.3),  # = MOLS q 2
        _row(rama, detox25, "mom", 5, 0.5, 0.1, 0.05, 0.15, drop=-0.1),  # ahead, new
    ]
    fracs = {  # (approach, q) -> distorted fraction c/f (f: 25 for MOLS and Ramanujan, 5 DETOX)
        (mols, 2): 0.04,  # c/√f 0.2 against DETOX's 0.45: both predict DETOX loses more
        (detox15, 2): 0.2,
        (mols, 4): 0.2,  # c/√f 1.0 against 0.89 (MOLS loses more), c/f 0.2 against 0.4
        (detox15, 4): 0.4,
        (rama, 5): 0.08,  # c/√f 0.4 against 0.45, c/f 0.08 against 0.2: DETOX loses more
        (detox25, 5): 0.2,
    }
    out = tmp_path / "paired.csv"
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["approach", "mode", "attack", "q", "batch_size", "distorted_frac_mean"])
        for r in rows:
            for side in ("a", "b"):
                frac = fracs.get((r[side], int(r["q"])), 0.0)
                writer.writerow([r[side], r[f"mode_{side}"], "alie", r["q"], "750", frac])

    assert _script().main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 3 | — | 55.0 | 50.0 | — | +5.0 [-0.5, +10.0] (m) |" in text
    assert "| 2 | — | 80.0 | 50.0 | — | +30.0 [+25.0, +35.0] * |" in text

    counts = _summary(text, "**Distinct comparisons.**")
    mom = "median of means"
    assert counts[(mom, f"{mols} vs {detox15}")] | {} == {
        "rule": mom,
        "comparison": f"{mols} vs {detox15}",
        "cells": "5",
        "distinct": "4",
        "no attack": "1",
        "under attack": "3",
        "distinguishable": "2",
        "ByzShield ahead": "1",
        "DETOX ahead": "1",
        "marginal (m)": "1",
    }
    k25 = counts[(mom, f"{rama} vs {detox25}")]
    assert (k25["cells"], k25["distinct"], k25["no attack"], k25["ByzShield ahead"]) == (
        "3",
        "1",
        "0",
        "1",
    )
    assert counts[(mom, "all")]["distinct"] == "5"
    assert "**Distinct comparisons.** 8 cells, 5 distinct" in text

    losers = _summary(text, "**Which side loses more**")
    k15 = losers[(mom, f"{mols} vs {detox15}")]
    assert (k15["larger c/√f loses more"], k15["larger c/f loses more"]) == ("2 of 2", "1 of 2")
    total = losers[(mom, "all")]
    assert (total["larger c/√f loses more"], total["larger c/f loses more"]) == ("3 of 3", "2 of 3")
