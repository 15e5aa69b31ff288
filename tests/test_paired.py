"""Paired comparisons (``python -m byzshield.report --paired``) against hand-computed
examples: the t interval, the matching of cells and seeds, the drops."""

from __future__ import annotations

import csv
import math

import pytest
from test_report import make_run

from byzshield.report import main, write_report
from byzshield.report.paired import paired_interval, parse_pair, tail_accuracy

MOLS = "mols(l=5, r=3)"
DETOX = "draco_lite_attack(K=15, r=3)"


def test_the_interval_is_students_t_on_the_differences():
    # d = 0.1, 0.15, 0.05: mean 0.1, sd 0.05, t(0.975, 2) = 4.302653 -> +-0.124207
    s = paired_interval([0.5, 0.6, 0.55], [0.4, 0.45, 0.5])
    assert s.mean == pytest.approx(0.1)
    assert s.sd == pytest.approx(0.05)
    assert (s.low, s.high) == pytest.approx((0.1 - 0.124207, 0.1 + 0.124207), abs=1e-6)
    assert s.n == 3 and not s.distinguishable
    # d = 0.10, 0.12, 0.11, 0.09, 0.10: mean 0.104, sd 0.011402, t(0.975, 4) = 2.776445
    t = paired_interval([0.6, 0.62, 0.61, 0.59, 0.6], [0.5] * 5)
    assert t.mean == pytest.approx(0.104)
    half = 2.776445 * 0.0114018 / math.sqrt(5)
    assert (t.low, t.high) == pytest.approx((0.104 - half, 0.104 + half), abs=1e-6)
    assert t.distinguishable
    one = paired_interval([0.7], [0.6])
    assert one.mean == pytest.approx(0.1) and one.low is None and not one.distinguishable


def test_bad_pairs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one pair"):
        paired_interval([], [])
    with pytest.raises(ValueError, match=r"--paired takes 'APPROACH\[ / MODE\] vs"):
        parse_pair("mols against detox")
    a, b = parse_pair("mols(l=5, r=3) / coord-median(num_buckets=5) vs detox")
    assert (a.approach, a.mode, b.approach, b.mode) == (
        MOLS,
        "coord-median(num_buckets=5)",
        "detox",
        None,
    )


def test_accuracy_over_the_last_evaluations():
    evals = [{"step": s, "top1": v} for s, v in ((10, 0.2), (20, 0.4), (30, 0.5), (40, 0.3))]
    assert tail_accuracy(evals, 1) == 0.3
    assert tail_accuracy(evals, 3) == pytest.approx(0.4)
    assert tail_accuracy(evals, 10) == pytest.approx(0.35)
    assert tail_accuracy([], 2) is None


# accuracies by (approach, q, seed); the final two evaluations are averaged (--last-evals 2)
TOP1 = {
    ("mols", 0, 0): (0.90, 0.92),
    ("mols", 0, 1): (0.88, 0.88),
    ("mols", 0, 2): (0.91, 0.93),
    ("mols", 3, 0): (0.60, 0.62),
    ("mols", 3, 1): (0.55, 0.57),
    ("mols", 3, 2): (0.70, 0.70),
    ("detox", 0, 0): (0.92, 0.92),
    ("detox", 0, 1): (0.90, 0.90),
    ("detox", 0, 2): (0.93, 0.93),
    ("detox", 3, 0): (0.80, 0.80),
    ("detox", 3, 1): (0.81, 0.79),
    ("detox", 3, 3): (0.85, 0.85),  # seed 3: no MOLS run, so not paired
}


@pytest.fixture
def sweep(tmp_path):
    for k, ((name, q, seed), (a, b)) in enumerate(TOP1.items()):
        approach = (
            {"name": "mols", "l": 5, "r": 3}
            if name == "mols"
            else {"name": "draco_lite_attack", "K": 15, "r": 3}
        )
        make_run(
            tmp_path / "sweep" / str(k),
            steps=30,
            top1={20: a, 30: b},
            approach=approach,
            **{"adversary.q": q, "seed": seed, "attack.name": "alie"},
        )
    return tmp_path / "sweep"


def test_paired_cells_match_seeds_and_subtract_the_hand_computed_values(sweep, tmp_path):
    report = write_report(
        [sweep], tmp_path / "out", plots=False, eps=False, paired=[f"{MOLS} vs {DETOX}"],
        last_evals=2,
    )  # fmt: skip
    assert "paired.md" in report.files and "paired.csv" in report.files
    rows = list(csv.DictReader((tmp_path / "out" / "paired.csv").read_text().splitlines()))
    by_q = {r["q"]: r for r in rows}
    assert set(by_q) == {"0", "3"}
    q3 = by_q["3"]
    # MOLS q=3: 0.61, 0.56, 0.70; DETOX q=3 seeds 0, 1: 0.80, 0.80 -> pairs on seeds 0, 1
    assert q3["seeds"] == "0 1" and q3["n"] == "2"
    assert float(q3["diff_mean"]) == pytest.approx(((0.61 - 0.80) + (0.56 - 0.80)) / 2)
    # drops: MOLS refs 0.91, 0.88 -> 0.30, 0.32; DETOX refs 0.92, 0.90 -> 0.12, 0.10
    assert float(q3["drop_a_mean"]) == pytest.approx(0.31)
    assert float(q3["drop_b_mean"]) == pytest.approx(0.11)
    assert float(q3["drop_diff_mean"]) == pytest.approx(0.20)
    # d = 0.18, 0.22: sd 0.028284, t(0.975, 1) = 12.706205 -> 0.20 +- 0.254124
    assert float(q3["drop_diff_low"]) == pytest.approx(0.20 - 0.254124, abs=1e-5)
    assert q3["drop_diff_distinguishable"] == "False"
    q0 = by_q["0"]
    assert q0["n"] == "3" and q0["drop_a_mean"] == ""
    # MOLS 0.91, 0.88, 0.92 against DETOX 0.92, 0.90, 0.93
    assert float(q0["diff_mean"]) == pytest.approx((-0.01 - 0.02 - 0.01) / 3)
    text = (tmp_path / "out" / "paired.md").read_text()
    assert f"## {MOLS} vs {DETOX}" in text
    assert "| coord-median | alie | 3 | 2 | 58.5 | 80.0 | -21.5 [" in text


def test_a_side_with_no_runs_names_what_the_report_has(sweep, tmp_path, capsys):
    code = main([str(sweep), "--out", str(tmp_path / "o"), "--no-plots", "--no-eps",
                 "--paired", "rama_two(m=5, s=5) vs " + DETOX])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --paired: no runs of rama_two(m=5, s=5); the report has")
    assert MOLS in err and len(err.splitlines()) == 1
